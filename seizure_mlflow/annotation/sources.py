"""Frames to annotate: a video (decoded as a stream), a folder of images, or a frame list (a text file of image
paths, one per line, as ``select-frames`` writes it). Each frame is ``(frame_index, file_name, bgr)``: a video's
frames are named ``frame_000123.png`` (CVAT's and ``prepare``'s convention); an image keeps its own name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from seizure_mlflow.data.video import VIDEO_SUFFIXES, check_video_readable, frame_count, iter_frames
from seizure_mlflow.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LIST_SUFFIX = ".txt"


def frame_file_name(index: int) -> str:
    return f"frame_{index:06d}.png"


@dataclass(frozen=True)
class FrameSource:
    """Where the frames come from: ``kind`` is ``video``, ``folder`` or ``list``; ``name`` names the exported
    video (the video's or folder's name, or the list's)."""

    path: Path
    kind: str
    images: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        return self.path.stem if self.kind != "folder" else self.path.name

    @property
    def consecutive(self) -> bool:
        """Whether neighbouring frames follow each other in time (masks can be carried between them)."""
        return self.kind == "video"

    def __len__(self) -> int:
        return (frame_count(self.path) or 0) if self.kind == "video" else len(self.images)

    def frames(self, accept_short: bool = False) -> Iterator[tuple[int, str, np.ndarray]]:
        if self.kind == "video":
            stream, _, _ = iter_frames(self.path, accept_short=accept_short)
            for index, _, bgr in stream:
                yield index, frame_file_name(index), bgr
            return
        from seizure_mlflow.data.frames import read_frame

        for position, image in enumerate(self.images):
            yield frame_number(image, position), image.name, read_frame(image.read_bytes(), where=str(image))


def frame_number(image: Path, position: int) -> int:
    """A frame's number: the last digits of its file name (``frame_000123.png``: 123), else its position."""
    import re

    digits = re.findall(r"\d+", image.stem)
    return int(digits[-1]) if digits else position


def frame_source(path: str | Path, param: str = "input") -> FrameSource:
    """The frames at ``path``, checked before any work: a readable video, a folder holding images, or a list
    whose every line is an image that exists (all problems named at once)."""
    from seizure_mlflow.inference.files import check_images

    p = Path(path)
    if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
        check_video_readable(p)
        return FrameSource(p, "video")
    if p.is_dir():
        images = tuple(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        if not images:
            raise UserError(f"{p}: no .png/.jpg/.jpeg images in this folder", param=param)
        kind = "folder"
    elif p.is_file() and p.suffix.lower() == LIST_SUFFIX:
        lines = [line.strip() for line in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        images = tuple((p.parent / line) for line in lines if line and not line.startswith("#"))
        if not images:
            raise UserError(f"{p}: the frame list names no image (one path per line, relative to the list)", param=param)
        kind = "list"
    else:
        raise UserError(f"{p}: not a video ({'/'.join(VIDEO_SUFFIXES)}), a folder of images or a frame list "
                        f"({LIST_SUFFIX})", param=param)
    check_images(list(images))
    return FrameSource(p, kind, images)
