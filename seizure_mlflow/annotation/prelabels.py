"""A model's masks on frames to annotate: detected on every K-th frame of a video and carried by the optical flow in
between (the motion trace's :func:`~seizure_mlflow.motion.carry.carry_mask`), or detected on every frame.

A :class:`PreLabel` is one frame's masks, each marked ``carried`` or not; nothing here writes a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import cv2
import numpy as np
from pycocotools import mask as mask_util

from seizure_mlflow.data.masks import decode_segmentation


@dataclass
class Shape:
    """One pre-labelled object: its category, the model's score and its mask (``carried``: moved by the flow from
    the last detected frame, not detected here)."""

    category_id: int
    category_name: str
    score: float
    mask: np.ndarray
    carried: bool = False

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def bbox(self) -> list[float]:
        return [float(v) for v in mask_util.toBbox(mask_util.encode(np.asfortranarray(self.mask.astype(np.uint8))))]


@dataclass
class PreLabel:
    frame_index: int
    file_name: str
    width: int
    height: int
    shapes: list[Shape] = field(default_factory=list)
    detected: bool = True  # False: every shape of this frame was carried

    @property
    def carried(self) -> bool:
        return not self.detected


def shapes_of(detections: list[dict], height: int, width: int, min_score: float) -> list[Shape]:
    """The detector's COCO results on one frame as shapes (masks decoded), those under ``min_score`` left out."""
    return [Shape(d["category_id"], d["category_name"], float(d["score"]),
                  decode_segmentation(d["segmentation"], height, width))
            for d in detections if d["score"] >= min_score and "segmentation" in d]


def _flow(previous_gray: np.ndarray, gray: np.ndarray) -> np.ndarray:
    return cv2.calcOpticalFlowFarneback(previous_gray, gray, None, pyr_scale=0.5, levels=3, winsize=15,
                                        iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def carried_shapes(shapes: list[Shape], previous_gray: np.ndarray, gray: np.ndarray) -> list[Shape]:
    """``shapes`` of the previous frame moved into this one by the dense optical flow between them."""
    from seizure_mlflow.motion.carry import carry_mask

    flow = _flow(previous_gray, gray)
    moved = [Shape(s.category_id, s.category_name, s.score, carry_mask(s.mask, flow), carried=True) for s in shapes]
    return [s for s in moved if s.mask.any()]


def prelabel(detector, frames: Iterable[tuple[int, str, np.ndarray]], every: int = 1, min_score: float = 0.5,
             batch_size: int = 8) -> Iterator[PreLabel]:
    """Pre-labels of ``frames`` (``(frame_index, file_name, bgr)``, in order): the detector on every ``every``-th
    frame (counted from the first), the last detection's masks carried by the flow to each frame in between. With
    ``every`` 1 every frame is detected (in batches of ``batch_size``)."""
    if every == 1:
        yield from _detect_all(detector, frames, min_score, batch_size)
        return
    shapes: list[Shape] = []
    previous_gray = None
    for position, (index, name, bgr) in enumerate(frames):
        height, width = bgr.shape[:2]
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        if position % every == 0 or previous_gray is None:
            shapes = shapes_of(detector.predict([bgr])[0], height, width, min_score)
            yield PreLabel(index, name, width, height, shapes, detected=True)
        else:
            shapes = carried_shapes(shapes, previous_gray, gray)
            yield PreLabel(index, name, width, height, shapes, detected=False)
        previous_gray = gray


def _detect_all(detector, frames, min_score: float, batch_size: int) -> Iterator[PreLabel]:
    batch: list[tuple[int, str, np.ndarray]] = []

    def flush():
        for (index, name, bgr), detections in zip(batch, detector.predict([b for _, _, b in batch])):
            height, width = bgr.shape[:2]
            yield PreLabel(index, name, width, height, shapes_of(detections, height, width, min_score))

    for item in frames:
        batch.append(item)
        if len(batch) == batch_size:
            yield from flush()
            batch = []
    if batch:
        yield from flush()
