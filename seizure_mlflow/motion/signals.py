"""Per-frame motion signals of a tracked patient.

:class:`MotionMeter` takes the frames of a video in order, with each frame's :class:`~.track.TrackedFrame`,
and measures between consecutive frames:

- ``motion_inside``: mean motion magnitude on the patient (the pixels of the patient in either frame,
  less every other person's mask widened by the flow's smoothing radius);
- ``motion_outside``: the same outside the (widened) patient: caregivers, background;
- ``motion_frame``: the same over the whole frame (what whole-frame detectors measure);
- ``area`` (pixels), ``displacement`` (centroid shift / sqrt(area)), ``mask_change`` (1 - IoU of consecutive
  masks);
- ``camera_dx``, ``camera_dy``, ``camera_inliers``, ``camera_fitted``: the camera's own motion, removed from the
  frame before any of the above is measured (:mod:`.camera`; unless ``compensate_camera`` is off).

Motion is dense optical flow (OpenCV's Farnebäck; magnitude in pixels per frame at the analysis size) or,
the cheap option, the absolute frame difference. For the rhythm analysis each region also yields
*signed* components: the mean flow (x and y) or the mean signed intensity change in each cell of a grid.
Each component is a cell's share of the region's mean (its sum over the region's pixels in the cell,
divided by all the region's pixels), so that the components add up to the region's mean signed motion
and a cell holding a few pixels of the region weighs little. A limb that oscillates at f Hz moves its
cell's flow at f Hz, whereas the magnitude peaks twice a cycle (at 2f), so the spectrum is taken of the
components, not of the magnitude; and per cell, so that limbs moving in opposite directions do not cancel.
Frames are analysed at most ``max_width`` pixels wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from seizure_mlflow.motion.camera import fit_camera, stabilize
from seizure_mlflow.motion.patient_track import TrackedFrame, mask_iou

METHODS = ("flow", "diff")
REGIONS = ("patient", "outside", "frame")


@dataclass
class FrameMeasure:
    values: dict[str, float]  # the per-frame signals named in the module docstring
    components: dict[str, np.ndarray]  # region -> signed per-cell components (all NaN: no such region)


class MotionMeter:
    """Measures each frame against the previous one; call :meth:`measure` on every frame, in order."""

    def __init__(self, method: str = "flow", cells: int = 8, max_width: int = 320, compensate_camera: bool = True) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method, self.cells, self.max_width = method, cells, max_width
        self.compensate_camera = compensate_camera
        self._previous: tuple[np.ndarray, np.ndarray | None] | None = None
        self._cell_of: np.ndarray | None = None
        self._scale = 1.0

    @property
    def component_count(self) -> int:
        return self.cells * self.cells * (2 if self.method == "flow" else 1)

    def _analysis_size(self, gray: np.ndarray) -> np.ndarray:
        height, width = gray.shape
        if self._cell_of is None:
            self._scale = min(1.0, self.max_width / width)
            size = (max(8, round(width * self._scale)), max(8, round(height * self._scale)))
            rows = np.minimum(np.arange(size[1]) * self.cells // size[1], self.cells - 1)
            cols = np.minimum(np.arange(size[0]) * self.cells // size[0], self.cells - 1)
            self._cell_of = (rows[:, None] * self.cells + cols[None, :]).ravel()
            self._size = size
        return gray if self._scale == 1.0 else cv2.resize(gray, self._size, interpolation=cv2.INTER_AREA)

    def _mask(self, mask: np.ndarray | None) -> np.ndarray | None:
        if mask is None or self._scale == 1.0:
            return mask
        return cv2.resize(mask.astype(np.uint8), self._size, interpolation=cv2.INTER_NEAREST).astype(bool)

    def measure(self, bgr: np.ndarray, tracked: TrackedFrame) -> FrameMeasure:
        gray = self._analysis_size(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        patient, others = self._mask(tracked.patient), self._mask(tracked.others)
        values = {"area": float(np.count_nonzero(patient)) / self._scale ** 2 if patient is not None else np.nan,
                  "displacement": np.nan, "mask_change": np.nan,
                  "motion_inside": np.nan, "motion_outside": np.nan, "motion_frame": np.nan,
                  "camera_dx": np.nan, "camera_dy": np.nan, "camera_inliers": np.nan, "camera_fitted": np.nan}
        nan = np.full(self.component_count, np.nan)
        components = {region: nan for region in REGIONS}
        previous = self._previous
        self._previous = (gray, patient, others)
        if previous is None:
            return FrameMeasure(values, components)
        previous_gray, previous_patient, previous_others = previous
        if self.compensate_camera:  # this frame (and its masks) in the previous frame's place
            gray, patient, others = self._stabilized(previous, (gray, patient, others), values)

        if self.method == "flow":
            flow = cv2.calcOpticalFlowFarneback(previous_gray, gray, None, pyr_scale=0.5, levels=3, winsize=9,
                                                iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
            magnitude = np.hypot(flow[..., 0], flow[..., 1])
            signed = [flow[..., 0].ravel(), flow[..., 1].ravel()]
        else:
            change = gray.astype(np.float32) - previous_gray.astype(np.float32)
            magnitude = np.abs(change)
            signed = [change.ravel()]
        whole = np.ones(gray.shape, bool)
        values["motion_frame"], components["frame"] = self._region(whole, magnitude, signed)

        known = [m for m in (previous_patient, patient) if m is not None]
        near = _widen(known[0] | known[-1]) if known else np.zeros(gray.shape, bool)
        values["motion_outside"], components["outside"] = self._region(~near, magnitude, signed)
        if previous_patient is not None and patient is not None:
            on_patient = (previous_patient | patient) & ~_widen(previous_others | others)
            values["motion_inside"], components["patient"] = self._region(on_patient, magnitude, signed)
            values["mask_change"] = 1.0 - mask_iou(previous_patient, patient)
            if previous_patient.any() and patient.any():
                shift = np.subtract(_centroid(patient), _centroid(previous_patient))
                values["displacement"] = float(np.hypot(*shift) / np.sqrt(np.count_nonzero(patient)))
        return FrameMeasure(values, components)

    @staticmethod
    def _stabilized(previous: tuple, current: tuple, values: dict) -> tuple:
        """``current`` (grey frame, patient, others) warped back by the camera's motion since ``previous``, fitted
        on the background of both (see :mod:`.camera`); the fit goes into ``values``. A frame that cannot be fitted
        is returned as it is, marked ``camera_fitted = 0``."""
        anyone = np.zeros(current[0].shape, bool)
        for mask in (*previous[1:], *current[1:]):
            if mask is not None:
                anyone |= mask
        camera = fit_camera(previous[0], current[0], ~_widen(anyone, radius=2 * _FLOW_RADIUS))
        values.update(camera_dx=camera.dx, camera_dy=camera.dy, camera_inliers=camera.inliers,
                      camera_fitted=float(camera.fitted))
        gray, patient, others = current
        return (stabilize(gray, camera), None if patient is None else stabilize(patient, camera, nearest=True),
                None if others is None else stabilize(others, camera, nearest=True))

    def _region(self, region: np.ndarray, magnitude: np.ndarray, signed: list[np.ndarray]) -> tuple[float, np.ndarray]:
        flat = region.ravel()
        if not flat.any():
            return np.nan, np.full(self.component_count, np.nan)
        cells, pixels = self._cell_of[flat], np.count_nonzero(flat)
        parts = [np.bincount(cells, weights=s[flat], minlength=self.cells ** 2) / pixels for s in signed]
        return float(magnitude.ravel()[flat].mean()), np.concatenate(parts)


_FLOW_RADIUS = 4  # Farnebäck's window reaches this far across an edge


def _widen(mask: np.ndarray, radius: int = _FLOW_RADIUS) -> np.ndarray:
    """The mask grown by the flow's smoothing radius (Farnebäck's window), so that motion bleeding across
    its edge is not counted on the other side."""
    if not mask.any():
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())
