"""Which frames must stay together: videos, or the patients a patient map groups them into; and the one rule
that deals whole groups into parts (``prepare``'s train/val/test, cross-validation's folds).

Frames of one video (one patient, one room) are never independent of each other, so no split puts a video,
or with a patient map a patient, on both sides.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from seizure_mlflow.errors import UserError

logger = logging.getLogger(__name__)


def read_patient_map(path: str | os.PathLike, videos: list[str]) -> dict[str, str]:
    """``video -> patient`` from a CSV with columns ``video,patient``; every video must be listed."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such file", param="patient_map")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"video", "patient"} <= set(reader.fieldnames):
            raise UserError(f"{p}: needs a header row with columns 'video,patient'; got {reader.fieldnames}", param="patient_map")
        mapping: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            video, patient = (row.get("video") or "").strip(), (row.get("patient") or "").strip()
            if not video or not patient:
                raise UserError(f"{p}: line {line}: empty video or patient", param="patient_map")
            if mapping.get(video, patient) != patient:
                raise UserError(f"{p}: line {line}: video {video!r} is mapped to two patients", param="patient_map")
            mapping[video] = patient
    missing = sorted(set(videos) - set(mapping))
    if missing:
        raise UserError(f"{p}: no patient for video(s) {missing[:5]}; every video needs a row", param="patient_map")
    unknown = sorted(set(mapping) - set(videos))
    if unknown:
        logger.warning("patient map %s lists videos that are not in the input: %s", p, unknown[:5])
    return {v: mapping[v] for v in videos}


def patient_groups(videos: Sequence[str], patient_map: str | os.PathLike | None) -> dict[str, list[str]]:
    """``{patient: videos}`` from the patient map; without one, each video is its own group."""
    patients = read_patient_map(patient_map, list(videos)) if patient_map else {v: v for v in videos}
    groups: dict[str, list[str]] = defaultdict(list)
    for video in videos:
        groups[patients[video]].append(video)
    return dict(groups)


def assign_groups(groups: dict[str, list[str]], shares: Sequence[float], seed: int) -> list[list[str]]:
    """Whole groups into ``len(shares)`` parts, reproducibly from ``seed``; each part's videos, sorted.

    Groups are shuffled with the seed; the first ``len(shares)`` seed the parts in order (so none is empty when
    there are enough groups), then each next group goes to the part furthest below its share of videos (the
    first such part on a tie)."""
    total_share, n_videos = sum(shares), sum(len(v) for v in groups.values())
    order = [sorted(groups)[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    counts = [0] * len(shares)
    parts: list[list[str]] = [[] for _ in shares]
    for k, group in enumerate(order):
        part = k if k < len(shares) else max(range(len(shares)),
                                             key=lambda i: n_videos * shares[i] / total_share - counts[i])
        parts[part].extend(groups[group])
        counts[part] += len(groups[group])
    return [sorted(p) for p in parts]
