"""The camera's motion read off the background: recovered where the background shows it, marked, never guessed,
where it does not."""

from __future__ import annotations

import cv2
import numpy as np

from seizure_mlflow.motion.camera import fit_camera, stabilize


def _room(seed: int = 0, size=(120, 160)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = cv2.GaussianBlur(rng.uniform(0, 255, size).astype(np.float32), (0, 0), 2.5)
    return cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    h, w = image.shape
    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REFLECT)


def test_a_shift_of_the_background_is_recovered_and_stabilizing_undoes_it():
    room = _room()
    background = np.ones(room.shape, bool)
    background[40:90, 50:120] = False  # where a person would be
    moved = _shifted(room, 1.7, -0.8)
    fit = fit_camera(room, moved, background)
    assert fit.fitted and abs(fit.dx - 1.7) < 0.1 and abs(fit.dy + 0.8) < 0.1 and fit.inliers > 0.8
    back = stabilize(moved, fit)
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(back[inner].astype(int) - room[inner]).mean() < 0.25 * np.abs(moved[inner].astype(int) - room[inner]).mean()


def test_a_still_camera_is_fitted_as_still():
    room = _room(1)
    fit = fit_camera(room, room.copy(), np.ones(room.shape, bool))
    assert fit.fitted and abs(fit.dx) < 0.02 and abs(fit.dy) < 0.02


def test_too_little_background_or_a_scene_change_is_marked_not_guessed():
    room = _room(2)
    mostly_people = np.zeros(room.shape, bool)
    mostly_people[:10, :] = True  # 8% of the frame
    little = fit_camera(room, _shifted(room, 1.0, 0.0), mostly_people)
    assert not little.fitted and np.isnan(little.dx)
    cut = fit_camera(room, _room(99), np.ones(room.shape, bool))  # another scene altogether
    assert not cut.fitted and np.isnan(cut.dx)
    assert stabilize(room, cut) is room  # nothing is warped by a guess
