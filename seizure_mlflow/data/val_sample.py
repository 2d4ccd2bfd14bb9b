"""Which validation frames a validation sample holds: evenly across videos, evenly in time within each.

Frames of one video are strongly correlated, so a fixed sample spread over every video estimates the whole
set's loss at a fraction of the cost. The choice depends only on the COCO ``images`` list, the sample size
and the seed: the same frames at every validation period, on every process, after a resume.

A frame's video is its ``video_id`` (as ``prepare`` and the sample generator write it); without one, the first
folder of its ``file_name`` (``clip03/frame_000012.png``), else the file name without its trailing frame number
(``clip03_000012.png``); when that does not group the frames either, the whole list is one sequence.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import PurePosixPath

_TRAILING_NUMBER = re.compile(r"^(.*?)[_\-. ]*\d+$")


def video_key(image: dict) -> str | None:
    """The video a COCO image belongs to, or None when nothing says."""
    if image.get("video_id") is not None:
        return str(image["video_id"])
    name = PurePosixPath(str(image.get("file_name", "")).replace("\\", "/"))
    if len(name.parts) > 1:
        return name.parts[0]
    match = _TRAILING_NUMBER.match(name.stem)
    return match.group(1) if match and match.group(1) else None


def _frame_order(image: dict) -> tuple:
    return (image.get("frame_index", 0), str(image.get("file_name", "")), image["id"])


def video_groups(images: list[dict]) -> dict[str, list[dict]]:
    """``{video: frames in time order}``; one group ``""`` in list order when the frames cannot be grouped."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for image in images:
        groups[video_key(image)].append(image)
    if None in groups or len(groups) in (0, len(images)) and len(images) > 1:
        return {"": list(images)}
    return {key: sorted(frames, key=_frame_order) for key, frames in sorted(groups.items())}


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
