"""Which frames of unlabelled videos are worth drawing, within a budget per video.

Strategies (``choose``):

* ``even``: frames spread evenly in time (the default: what a careful annotator does without a model);
* ``random``: frames drawn at random (a baseline), no two closer than the window;
* ``uncertainty``: the frames where the model is least sure (:func:`uncertainty`): its best score is low, or its
  mask disagrees with the mask the optical flow carries from the previous analysed frame, taken greedily from the
  most uncertain, no two closer than the window (so that the budget is spread in time, not spent on one hard
  second).

Nothing here writes a file or talks to MLflow.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np

from seizure_mlflow.annotation.prelabels import carried_shapes, shapes_of

STRATEGIES = ("even", "random", "uncertainty")


@dataclass(frozen=True)
class Candidate:
    frame: int
    uncertainty: float = 0.0


def _iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None and b is None:
        return 1.0
    if a is None or b is None:
        return 0.0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def uncertainty(score: float, agreement: float) -> float:
    """How unsure the model is on a frame, 0 to 1: half the shortfall of its best score from 1, half the shortfall of
    its mask's IoU with the mask carried from the previous analysed frame."""
    return 0.5 * (1.0 - score) + 0.5 * (1.0 - agreement)


def score_frames(detector, frames: Iterable[tuple[int, np.ndarray]], min_score: float = 0.05) -> list[Candidate]:
    """Each analysed frame's :func:`uncertainty` (``frames``: ``(frame number, bgr)`` in time order)."""
    candidates, previous, previous_gray = [], [], None
    for index, bgr in frames:
        height, width = bgr.shape[:2]
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        shapes = sorted(shapes_of(detector.predict([bgr])[0], height, width, min_score), key=lambda s: -s.score)
        best = shapes[0] if shapes else None
        if previous_gray is not None:
            carried = carried_shapes(previous[:1], previous_gray, gray)
            agreement = _iou(carried[0].mask if carried else None, best.mask if best is not None else None)
        else:
            agreement = 1.0
        candidates.append(Candidate(index, uncertainty(best.score if best is not None else 0.0, agreement)))
        previous, previous_gray = shapes, gray
    return candidates


def choose(candidates: list[Candidate], budget: int, window: int, strategy: str, seed: int = 0) -> list[Candidate]:
    """At most ``budget`` candidates, no two closer than ``window`` frames, by ``strategy``; in time order."""
    if strategy == "even":
        ordered = _evenly(candidates, budget)
    elif strategy == "random":
        ordered = random.Random(seed).sample(candidates, len(candidates))
    else:
        ordered = sorted(candidates, key=lambda c: (-c.uncertainty, c.frame))
    chosen: list[Candidate] = []
    for candidate in ordered:
        if len(chosen) == budget:
            break
        if all(abs(candidate.frame - c.frame) >= window for c in chosen):
            chosen.append(candidate)
    return sorted(chosen, key=lambda c: c.frame)


def _evenly(candidates: list[Candidate], budget: int) -> list[Candidate]:
    """The candidates at ``budget`` evenly spaced positions first (the middle of each of ``budget`` equal parts),
    then the rest (used only where the window ruled a position out)."""
    n = len(candidates)
    picks = sorted({min(n - 1, int((k + 0.5) * n / budget)) for k in range(min(budget, n))})
    return [candidates[p] for p in picks] + [c for k, c in enumerate(candidates) if k not in set(picks)]
