"""Masks carried from one frame to the next by the motion already measured, so that the detector need not run on
every frame (``trace --detect-every K``).

Between two frames 40 ms apart a patient barely changes shape, and the dense flow that the motion signal needs
anyway says where every pixel of a mask went: a mask of the previous frame, moved by the flow (and by the camera's
own motion, when it is removed), is this frame's mask. Carrying drifts, so it is trusted only within bounds
(:class:`CarryRules`); outside them the frame is detected instead (see :class:`~.analyser.FrameAnalyser`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from seizure_mlflow.errors import UserError


# trace's --detect-every: the largest K measured whose scores equal every frame's on the sample videos, still and
# moving camera, with the model (benchmarks/bench_trace.py; the table in docs/motion-trace.md)
DEFAULT_DETECT_EVERY = 10


@dataclass(frozen=True)
class CarryRules:
    """When the detector runs.

    ``every``: on every K-th analysed frame (counted from the video's first, so that segments of a video agree);
    in between, masks are carried. A carried frame is detected instead when
    - its patient's area differs from the area at the last detection by more than ``max_area_change`` (relative);
    - the camera's motion could not be fitted because the view changed or is mostly hidden (a featureless
      background, which shows no camera motion, is not a reason: nothing is removed, and the flow moves the masks);
    and after a detection whose patient mask overlaps the carried one by less than ``min_agreement`` (IoU), the
    frames up to the next scheduled detection are detected too. While the patient is not found, frames in between
    detections stay without a patient (a gap of at most K-1 frames when they come back).
    """

    every: int = DEFAULT_DETECT_EVERY
    max_area_change: float = 0.25
    min_agreement: float = 0.6

    def check(self, method: str) -> None:
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1:
            raise UserError(f"must be a whole number >= 1, got {self.every!r}", param="detect_every")
        if self.every > 1 and method != "flow":
            raise UserError(f"{self.every} carries the masks by the optical flow between detections, which needs --method flow "
                            f"(got {method})", param="detect_every")

    def area_trusted(self, area: float, detected_area: float | None) -> bool:
        if detected_area is None or not detected_area:
            return True
        return abs(area / detected_area - 1.0) <= self.max_area_change


@dataclass(frozen=True)
class Carried:
    """The previous frame's masks moved into this one, at the analysis size (``scale`` of the frame's size)."""

    patient: np.ndarray | None
    others: np.ndarray
    camera_fitted: bool  # False: the view changed or is hidden (see .camera), so where the masks went is not known
    scale: float

    @property
    def patient_area(self) -> float:
        return float(np.count_nonzero(self.patient)) / self.scale ** 2 if self.patient is not None else 0.0


def carry_mask(mask: np.ndarray, flow: np.ndarray, camera: np.ndarray | None = None) -> np.ndarray:
    """``mask`` of the earlier frame moved into the later one.

    ``flow`` is the dense flow from the earlier frame to the later one *stabilized* (warped back into the earlier
    frame's place by the camera's 2x3 motion ``camera``; None: no camera motion removed). Every pixel at ``x`` is
    pushed to ``x + flow(x)`` (splatted onto its four neighbours); a pixel of the later frame is in the mask when at
    least half a pixel of the mask landed on it. The moving patient covers what it moves over, whatever of the
    background landed there too, so the leading edge moves with the patient (pulling each pixel back along the flow
    found at its target would not: ahead of a moving edge the target is background, whose flow is zero). Where
    little landed at all (the flow spreads apart), the pixel is pulled back along the flow instead. The result is
    then moved by the camera."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return np.zeros_like(mask, dtype=bool)
    # only the mask's surroundings: as far as it can move and its edge be read from inside
    reach = int(np.ceil(np.abs(flow[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]).max())) + EDGE_REACH + EDGE_PX + 2
    top, left = max(0, rows[0] - reach), max(0, cols[0] - reach)
    bottom, right = min(height, rows[-1] + reach + 1), min(width, cols[-1] + reach + 1)
    moved = np.zeros((height, width), np.float32)
    moved[top:bottom, left:right] = _pushed(mask[top:bottom, left:right], flow[top:bottom, left:right])
    if camera is not None:
        moved = cv2.warpAffine(moved, camera, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=0)
    return moved >= 0.5


def _pushed(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """The mask's share of each pixel after its pixels are pushed along the flow (see :func:`carry_mask`)."""
    height, width = mask.shape
    flow = _edges_from_inside(mask, flow)
    ys, xs = np.indices((height, width), dtype=np.float32)
    to_x, to_y = (xs + flow[..., 0]).ravel(), (ys + flow[..., 1]).ravel()
    left, top = np.floor(to_x), np.floor(to_y)
    right, low = to_x - left, to_y - top
    # each pixel's four neighbours where it lands, and its share of each (bilinear)
    column = np.concatenate([left, left + 1, left, left + 1])
    row = np.concatenate([top, top, top + 1, top + 1])
    share = np.concatenate([(1 - right) * (1 - low), right * (1 - low), (1 - right) * low, right * low])
    inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    index = (row * width + column).astype(np.int64)
    weight = np.bincount(index[inside], weights=share[inside], minlength=height * width).reshape(height, width)
    of_mask = inside & np.tile(mask.ravel(), 4)
    landed = np.bincount(index[of_mask], weights=share[of_mask], minlength=height * width).reshape(height, width)
    pulled = cv2.remap(mask.astype(np.float32), xs - flow[..., 0], ys - flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.where(weight >= 0.5, landed, np.maximum(landed, pulled)).astype(np.float32)


EDGE_PX = 4  # the dense flow's window (Farnebäck's) blurs motion across a mask's edge this far
EDGE_REACH = 8  # px: how far inside the mask its edge's motion is read (a box average)


def _edges_from_inside(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``flow`` with the mask's edge band (``EDGE_PX`` wide) given the mean motion of the mask's inside within
    ``EDGE_REACH``: across an edge the dense flow blends the moving patient with the still background behind it, and
    an edge carried by that blend lags the patient (by about a third of its motion, measured on a textured disc)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * EDGE_PX + 1, 2 * EDGE_PX + 1))
    inside = cv2.erode(mask.astype(np.uint8), kernel).astype(np.float32)
    if not inside.any():
        return flow
    box = (2 * EDGE_REACH + 1, 2 * EDGE_REACH + 1)
    share = cv2.blur(inside, box)
    near = cv2.blur(flow * inside[..., None], box) / np.maximum(share, 1e-6)[..., None]
    edge = (mask & (inside == 0) & (share > 1e-3))[..., None]
    return np.where(edge, near, flow).astype(np.float32)
