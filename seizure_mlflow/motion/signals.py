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

from seizure_mlflow.motion.camera import CameraFit, fit_camera, stabilize
from seizure_mlflow.motion.carry import Carried, carry_mask
from seizure_mlflow.motion.patient_track import TrackedFrame, mask_iou

METHODS = ("flow", "diff")
REGIONS = ("patient", "outside", "frame")


@dataclass
class _Look:
    """What :meth:`MotionMeter.look` measured of a frame, for :meth:`MotionMeter.finish`."""

    gray: np.ndarray  # at the analysis size, as filmed
    camera: CameraFit | None = None  # None: compensation off, or the first frame
    flow: np.ndarray | None = None  # previous frame -> this one (stabilized), "flow" method only
    magnitude: np.ndarray | None = None
    signed: list[np.ndarray] | None = None


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
        self._look: _Look | None = None
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
        """:meth:`look` at the frame with its people known, then :meth:`finish` it."""
        self.look(bgr, _anyone(tracked.patient, tracked.others))
        return self.finish(tracked)

    def look(self, bgr: np.ndarray, people: np.ndarray | None) -> None:
        """Step 1 of a frame: its grey image at the analysis size, the camera's motion since the previous frame and the
        dense flow between them. The camera is fitted on the background: the frame less ``people`` (everyone's mask,
        at the frame's size) and less the previous frame's people. With ``people=None`` (not known yet: a frame whose
        masks are to be carried) the previous frame's people are widened further instead. Looking again at the same
        frame replaces the first look; nothing of the meter's state changes until :meth:`finish`."""
        gray = self._analysis_size(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        self._look = _Look(gray)
        if self._previous is None:
            return
        previous_gray, previous_patient, previous_others = self._previous
        look = self._look
        if self.compensate_camera:
            people = self._mask(people)
            anyone = _anyone(previous_patient, previous_others, people)
            anyone = np.zeros(gray.shape, bool) if anyone is None else anyone
            radius = 2 * _FLOW_RADIUS if people is not None else 2 * _FLOW_RADIUS + _CARRY_MARGIN
            look.camera = fit_camera(previous_gray, gray, ~_widen(anyone, radius=radius))
            gray = stabilize(gray, look.camera)
        if self.method == "flow":
            look.flow = cv2.calcOpticalFlowFarneback(previous_gray, gray, None, pyr_scale=0.5, levels=3, winsize=9,
                                                     iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
            look.magnitude = np.hypot(look.flow[..., 0], look.flow[..., 1])
            look.signed = [look.flow[..., 0].ravel(), look.flow[..., 1].ravel()]
        else:
            change = gray.astype(np.float32) - previous_gray.astype(np.float32)
            look.magnitude = np.abs(change)
            look.signed = [change.ravel()]

    def carried(self) -> Carried | None:
        """After :meth:`look`: the previous frame's masks moved into this frame by the motion just measured (the
        dense flow, then the camera's own motion), or None on a video's first frame. Needs ``method="flow"``."""
        look = self._look
        if self._previous is None or look.flow is None:
            return None
        _, patient, others = self._previous
        transform = look.camera.transform if look.camera is not None and look.camera.fitted else None
        patient = None if patient is None else carry_mask(patient, look.flow, transform)
        others = carry_mask(others, look.flow, transform)
        # a featureless background shows no camera motion, and none is removed: the flow alone moves the masks
        known = look.camera is None or look.camera.fitted or look.camera.unfitted_by == "corners"
        return Carried(patient if patient is not None and patient.any() else None, others, known, self._scale)

    def full_size(self, mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
        """A mask at the analysis size scaled back to the frame's ``(height, width)``."""
        if mask is None or self._scale == 1.0:
            return mask
        return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)

    def finish(self, tracked: TrackedFrame, carried: Carried | None = None) -> FrameMeasure:
        """Step 2, after :meth:`look`: the frame's signals with its people known (``tracked``; for a carried frame,
        ``carried`` gives the same masks at the analysis size, as moved). The frame becomes the previous one."""
        look = self._look
        if carried is not None:
            patient, others = carried.patient, carried.others
        else:
            patient, others = self._mask(tracked.patient), self._mask(tracked.others)
        values = {"area": float(np.count_nonzero(patient)) / self._scale ** 2 if patient is not None else np.nan,
                  "displacement": np.nan, "mask_change": np.nan,
                  "motion_inside": np.nan, "motion_outside": np.nan, "motion_frame": np.nan,
                  "camera_dx": np.nan, "camera_dy": np.nan, "camera_inliers": np.nan, "camera_fitted": np.nan}
        nan = np.full(self.component_count, np.nan)
        components = {region: nan for region in REGIONS}
        previous = self._previous
        self._previous = (look.gray, patient, others)
        if previous is None:
            return FrameMeasure(values, components)
        _, previous_patient, previous_others = previous
        if look.camera is not None:  # this frame's masks in the previous frame's place
            camera = look.camera
            values.update(camera_dx=camera.dx, camera_dy=camera.dy, camera_inliers=camera.inliers,
                          camera_fitted=float(camera.fitted))
            patient = None if patient is None else stabilize(patient, camera, nearest=True)
            others = None if others is None else stabilize(others, camera, nearest=True)

        magnitude, signed = look.magnitude, look.signed
        whole = np.ones(look.gray.shape, bool)
        values["motion_frame"], components["frame"] = self._region(whole, magnitude, signed)

        known = [m for m in (previous_patient, patient) if m is not None]
        near = _widen(known[0] | known[-1]) if known else np.zeros(look.gray.shape, bool)
        values["motion_outside"], components["outside"] = self._region(~near, magnitude, signed)
        if previous_patient is not None and patient is not None:
            on_patient = (previous_patient | patient) & ~_widen(previous_others | others)
            values["motion_inside"], components["patient"] = self._region(on_patient, magnitude, signed)
            values["mask_change"] = 1.0 - mask_iou(previous_patient, patient)
            if previous_patient.any() and patient.any():
                shift = np.subtract(_centroid(patient), _centroid(previous_patient))
                values["displacement"] = float(np.hypot(*shift) / np.sqrt(np.count_nonzero(patient)))
        return FrameMeasure(values, components)

    def _region(self, region: np.ndarray, magnitude: np.ndarray, signed: list[np.ndarray]) -> tuple[float, np.ndarray]:
        flat = region.ravel()
        if not flat.any():
            return np.nan, np.full(self.component_count, np.nan)
        cells, pixels = self._cell_of[flat], np.count_nonzero(flat)
        parts = [np.bincount(cells, weights=s[flat], minlength=self.cells ** 2) / pixels for s in signed]
        return float(magnitude.ravel()[flat].mean()), np.concatenate(parts)


_FLOW_RADIUS = 4  # Farnebäck's window reaches this far across an edge
_CARRY_MARGIN = 4  # px at the analysis size: how far people may move in one frame before their masks are known


def _anyone(*masks: np.ndarray | None) -> np.ndarray | None:
    """The union of the masks given (None among them ignored); None when all are None."""
    known = [m for m in masks if m is not None]
    if not known:
        return None
    union = known[0].copy()
    for mask in known[1:]:
        union |= mask
    return union


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
