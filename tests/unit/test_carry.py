"""Masks carried by the flow between detections (``trace --detect-every K``), and segments of a video planned on the
detection schedule: on synthetic frames, in seconds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from seizure_mlflow.errors import UserError
from seizure_mlflow.motion.carry import CarryRules, carry_mask
from seizure_mlflow.motion.patient_track import TrackedFrame, mask_iou
from seizure_mlflow.motion.ray_engine import plan_segments
from seizure_mlflow.motion.signals import MotionMeter

SIZE = (120, 160)


def _disc(centre: tuple[float, float], radius: float = 18) -> np.ndarray:
    ys, xs = np.mgrid[:SIZE[0], :SIZE[1]]
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius ** 2


def test_a_mask_moves_with_a_uniform_flow_and_then_with_the_camera():
    mask = _disc((60, 60))
    flow = np.zeros((*SIZE, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    assert np.array_equal(carry_mask(mask, flow), _disc((63, 58)))
    camera = np.float32([[1, 0, 2.0], [0, 1, 1.0]])  # the camera's own motion, earlier -> later frame
    assert np.array_equal(carry_mask(mask, flow, camera), _disc((65, 59)))


def test_carrying_with_no_motion_neither_erodes_nor_grows_a_mask():
    mask = _disc((80, 60), radius=11.3)
    still = np.zeros((*SIZE, 2), np.float32)
    carried = mask
    for _ in range(20):
        carried = carry_mask(carried, still)
    assert np.array_equal(carried, mask)


def _scene(shift: float, camera: float, rng_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A textured room filmed by a camera panned by ``camera`` px, with a textured patient moved by ``shift`` px."""
    rng = np.random.default_rng(rng_seed)
    room = cv2.GaussianBlur(rng.uniform(0, 255, (SIZE[0], SIZE[1] + 40)).astype(np.float32), (0, 0), 2.0)
    person = cv2.GaussianBlur(np.random.default_rng(1).uniform(0, 255, SIZE).astype(np.float32), (0, 0), 1.5)
    centre = (60 + shift, 60)
    moved = cv2.warpAffine(person, np.float32([[1, 0, shift], [0, 1, 0]]), (SIZE[1], SIZE[0]))
    frame = room[:, 20 + 0:20 + SIZE[1]].copy()
    patient = _disc(centre)
    frame[patient] = moved[patient]
    pan = np.float32([[1, 0, camera], [0, 1, 0]])
    frame = cv2.warpAffine(frame, pan, (SIZE[1], SIZE[0]), borderMode=cv2.BORDER_REFLECT)
    patient = cv2.warpAffine(patient.astype(np.uint8), pan, (SIZE[1], SIZE[0]), flags=cv2.INTER_NEAREST).astype(bool)
    bgr = cv2.cvtColor(cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    return bgr, patient


@pytest.mark.parametrize("compensate, pan", [(False, 0.0), (True, 0.0), (True, 1.5)])
def test_the_meter_carries_a_moving_patient_through_frames_it_never_saw_detected(compensate, pan):
    meter = MotionMeter(max_width=160, compensate_camera=compensate)
    first, patient = _scene(0, 0)
    meter.measure(first, TrackedFrame(patient, np.zeros(SIZE, bool)))
    for k in range(1, 6):  # the patient slides 1.5 px a frame while the camera pans
        bgr, truth = _scene(1.5 * k, pan * k)
        meter.look(bgr, None)
        carried = meter.carried()
        assert carried is not None and carried.camera_fitted
        meter.finish(TrackedFrame(carried.patient, carried.others), carried)
    assert mask_iou(carried.patient, truth) > 0.88  # left where it was: 0.75; carried by the blurred edge flow: 0.85
    assert abs(carried.patient_area / np.count_nonzero(truth) - 1) < 0.1


def test_detection_schedule_rules_are_checked_before_any_work():
    CarryRules(every=5).check("flow")
    with pytest.raises(UserError, match="whole number >= 1"):
        CarryRules(every=0).check("flow")
    with pytest.raises(UserError, match="needs --method flow"):
        CarryRules(every=2).check("diff")
    rules = CarryRules(max_area_change=0.25)
    assert rules.area_trusted(1200, 1000) and not rules.area_trusted(1300, 1000) and not rules.area_trusted(700, 1000)


@pytest.mark.parametrize("frames, size, every", [(1000, 250, 5), (1003, 250, 4), (260, 250, 1), (990, 100, 7)])
def test_segments_cover_every_frame_once_and_start_on_the_detection_schedule(frames, size, every):
    segments = plan_segments([frames, None], [size, size], every)
    mine = [s for s in segments if s.video == 0]
    assert mine[0].first == 0 and mine[-1].stop is None
    assert all(a.stop == b.first for a, b in zip(mine, mine[1:]))
    assert all(s.first % every == 0 for s in mine)
    assert frames - mine[-1].first >= size / 2 or len(mine) == 1  # no sliver of a last segment
    assert [(s.first, s.stop) for s in segments if s.video == 1] == [(0, None)]  # length unknown: one piece
