"""Prediction over files: images, folders of images, and video streams, to COCO-style result lists."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from pycocotools import mask as mask_util
from tqdm import tqdm

from seizure_mlflow.data.video import VIDEO_SUFFIXES, VideoWriter, iter_frames
from seizure_mlflow.errors import UserError
from seizure_mlflow.inference.predictor import decode_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{p}: not a PNG or JPEG image (or a {'/'.join(VIDEO_SUFFIXES)} video)")
        return [p]
    if p.is_dir():
        images = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"{p}: no .png/.jpg/.jpeg images in this folder")
        return images
    raise UserError(f"{p}: no such file or folder")


def check_images(paths: list[Path]) -> None:
    """Before any work: every file's header reads as an image; all problems listed at once."""
    from seizure_mlflow.data.checks import MAX_REPORTED
    from seizure_mlflow.data.frames import FrameError, read_header

    problems = []
    for path in paths:
        try:
            read_header(path, where=str(path))
        except (FrameError, OSError) as exc:
            problems.append(str(exc))
    if problems:
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise UserError(f"{len(problems)} input file(s) are not images:\n  - " + "\n  - ".join(problems[:MAX_REPORTED]) + more,
                        param="input")


def is_video(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() in VIDEO_SUFFIXES


def predict_images(detector, paths: list[Path], root: Path, batch_size: int = 8) -> list[dict]:
    """COCO results for image files; ``image_id`` is the 1-based position, ``file_name`` relative to ``root``."""
    results = []
    for start in tqdm(range(0, len(paths), batch_size), desc="predict", unit="batch"):
        batch = paths[start:start + batch_size]
        images = [decode_image(p.read_bytes(), where=str(p)) for p in batch]
        for k, (path, detections) in enumerate(zip(batch, detector.predict(images))):
            results += [{"image_id": start + k + 1, "file_name": str(path.relative_to(root)), **d} for d in detections]
    return results


def _batches(frames: Iterator, size: int):
    batch = []
    for item in frames:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(detector, path: Path, batch_size: int = 8, overlay: str | None = None,
                  accept_short: bool = False) -> list[dict]:
    """COCO results per frame of a video decoded as a stream, with ``frame_index`` and ``timestamp`` (s).

    ``image_id`` is ``frame_index + 1``. With ``overlay``, a copy of the video with the masks and boxes
    drawn is written there. A video cut short is refused at its end, nothing written, unless ``accept_short``
    (see :func:`~seizure_mlflow.data.video.iter_frames`).
    """
    frames, total, fps = iter_frames(path, accept_short=accept_short)
    partial = Path(overlay).with_name(f".{Path(overlay).stem}.partial{Path(overlay).suffix}") if overlay else None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
    writer = VideoWriter(partial, fps) if partial else None
    results = []
    try:
        with tqdm(total=total, desc=f"predict {path.name}", unit="frame") as bar:
            for batch in _batches(frames, batch_size):
                detections = detector.predict([bgr for _, _, bgr in batch])
                for (index, timestamp, bgr), dets in zip(batch, detections):
                    results += [{"image_id": index + 1, "frame_index": index, "timestamp": timestamp, **d} for d in dets]
                    if writer is not None:
                        writer.write(draw_detections(bgr, dets)[:, :, ::-1])
                bar.update(len(batch))
    except BaseException:
        if writer is not None:
            writer.close()
            partial.unlink(missing_ok=True)  # no half-written overlay
        raise
    if writer is not None:
        writer.close()
        os.replace(partial, overlay)
    return results


def draw_detections(bgr: np.ndarray, detections: list[dict], min_score: float = 0.5) -> np.ndarray:
    """A copy of the frame with each detection's mask tinted and its box and label drawn."""
    out = bgr.copy()
    for det in detections:
        if det["score"] < min_score:
            continue
        colour = (60, 60, 230) if det["category_name"] == "patient" else (230, 160, 40)
        if "segmentation" in det:
            rle = {"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode()}
            mask = mask_util.decode(rle).astype(bool)
            out[mask] = (0.5 * out[mask] + 0.5 * np.array(colour)).astype(np.uint8)
        x, y, w, h = (int(round(v)) for v in det["bbox"])
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, 1)
        cv2.putText(out, f"{det['category_name']} {det['score']:.2f}", (x, max(10, y - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, colour, 1, cv2.LINE_AA)
    return out
