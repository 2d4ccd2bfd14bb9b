"""One patient track per video: in each frame, the patient instance that continues the track.

Input per frame: a list of :class:`Instance` (a category name, a score and a boolean mask), from the model or
from true masks. Output per frame: the patient's mask (or None: a gap, never interpolated) and the union of
every other person's mask, so that their motion can be kept out of the patient's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATIENT = "patient"


@dataclass(frozen=True)
class Instance:
    category: str
    score: float
    mask: np.ndarray  # bool, the frame's height x width


@dataclass(frozen=True)
class TrackedFrame:
    patient: np.ndarray | None  # None: the patient was not found in this frame
    others: np.ndarray  # every other person (and every other patient-class instance), bool


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


class PatientTrack:
    """Follows one patient through a video, frame by frame.

    The instance that continues the track is the ``patient`` instance with the highest mask IoU with the
    previous patient mask (at least ``min_iou``), ties and new tracks decided by score. After a gap, the
    track restarts from the highest-scoring patient instance.
    """

    def __init__(self, min_score: float = 0.5, min_iou: float = 0.1) -> None:
        self.min_score = min_score
        self.min_iou = min_iou
        self._previous: np.ndarray | None = None

    def update(self, instances: list[Instance], shape: tuple[int, int]) -> TrackedFrame:
        candidates = [i for i in instances if i.category == PATIENT and i.score >= self.min_score]
        chosen = None
        if candidates:
            if self._previous is not None:
                overlaps = [(mask_iou(c.mask, self._previous), c.score, k) for k, c in enumerate(candidates)]
                best = max(overlaps)
                if best[0] >= self.min_iou:
                    chosen = candidates[best[2]]
            if chosen is None:
                chosen = max(candidates, key=lambda c: c.score)
        others = np.zeros(shape, bool)
        for instance in instances:
            if instance is not chosen and instance.score >= self.min_score:
                others |= instance.mask
        patient = None if chosen is None else chosen.mask & ~others
        self._previous = patient if patient is not None and patient.any() else None
        return TrackedFrame(patient=self._previous, others=others)

    def carry(self, patient: np.ndarray | None, others: np.ndarray) -> TrackedFrame:
        """A frame whose masks were carried from the previous one (see :mod:`.carry`): the track continues with them."""
        self._previous = patient if patient is not None and patient.any() else None
        return TrackedFrame(patient=self._previous, others=others)
