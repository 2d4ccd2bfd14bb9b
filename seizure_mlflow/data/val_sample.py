"""Which validation frames a validation sample holds: evenly across videos, evenly in time within each.

Frames of one video are strongly correlated, so a fixed sample spread over every video estimates the whole
set's loss at a fraction of the cost. The choice depends only on the COCO ``images`` list, the sample size
and the seed: the same frames at every validation period, on every process, after a resume.

A frame's video comes from the package's one rule (:mod:`seizure_mlflow.data.video_identity`); when the frames'
videos are unknown, the whole list is one sequence.
"""

from __future__ import annotations

import math
import random

from seizure_mlflow.data.video_identity import grouped_by_video

def video_groups(images: list[dict]) -> dict[str, list[dict]]:
    """``{video: frames in time order}`` (see :mod:`~seizure_mlflow.data.video_identity`); one group ``""`` in list
    order when the frames' videos are unknown."""
    return grouped_by_video(images) or {"": list(images)}


def quotas(sizes: dict[str, int], count: int, rng: random.Random) -> dict[str, int]:
    """``count`` frames shared as evenly as the videos' lengths allow (a short video gives all it has, the
    others share the rest); the last few go to videos drawn with ``rng``."""
    left = {video: size for video, size in sizes.items() if size > 0}
    share = {video: 0 for video in sizes}
    remaining = min(count, sum(left.values()))
    while remaining and left:
        each = remaining // len(left)
        if each == 0:
            for video in rng.sample(sorted(left), remaining):
                share[video] += 1
            break
        for video in sorted(left):
            take = min(each, left[video])
            share[video] += take
            left[video] -= take
            remaining -= take
        left = {video: size for video, size in left.items() if size > 0}
    return share


def evenly_in_time(frames: list[dict], count: int, offset: float) -> list[dict]:
    """``count`` frames at equal spacing through ``frames``, the first ``offset`` (0-1) of a spacing in."""
    if count >= len(frames):
        return list(frames)
    step = len(frames) / count
    return [frames[int((k + offset) * step)] for k in range(count)]


def select_validation_sample(images: list[dict], count: int, seed: int) -> list[int]:
    """The image ids of a ``count``-frame sample (all of them when ``count`` is 0 or at least the set's size),
    in the order of the COCO file."""
    if count <= 0 or count >= len(images):
        return [image["id"] for image in images]
    rng = random.Random(seed)
    groups = video_groups(images)
    share = quotas({video: len(frames) for video, frames in groups.items()}, count, rng)
    chosen = {image["id"] for video, frames in groups.items()
              for image in evenly_in_time(frames, share[video], rng.random())}
    return [image["id"] for image in images if image["id"] in chosen]


def pilot_size(images: list[dict], floor: int = 8) -> int:
    """How many frames the timed first pass of ``val_max_images=auto`` uses: one per video, at least ``floor``."""
    return min(len(images), max(len(video_groups(images)), floor))


def replicate_groups(image_ids: list[int], batch_size: int, replicates: int = 20) -> dict[int, int]:
    """``{image id: group}`` for a sample's standard errors (see :mod:`seizure_mlflow.engine.measures`):
    consecutive blocks of ``batch_size`` frames of ``image_ids`` (the sample in COCO-file order: video by video,
    in time, for files ``prepare`` and the sample generator write), dealt round-robin into ``min(replicates,
    blocks)`` groups. A block is one validation batch, whose loss is one number."""
    size = max(batch_size, 1)
    count = max(1, min(replicates, math.ceil(len(image_ids) / size)))
    return {int(image_id): (position // size) % count for position, image_id in enumerate(image_ids)}
