"""Which video a frame is from: the one rule every part of the package uses (dataset counts, the model card, the
validation sample, per-video results).

A frame's video is its ``video_id`` (as ``prepare`` and the sample generator write it); without one, the first
folder of its ``file_name`` (``clip03/frame_000012.png``), else the file name without its trailing frame number
(``clip03_000012.png``). When that does not group the frames (a frame that says nothing, or file names that
give every frame a video of its own), the frames' videos are unknown.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import PurePosixPath
from typing import Any

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


def frame_order(image: dict) -> tuple:
    return (image.get("frame_index", 0), str(image.get("file_name", "")), image["id"])


def grouped_by_video(images: list[Any]) -> dict[str, list[dict]] | None:
    """``{video: frames in time order}``, or None when the frames' videos are unknown (see the module)."""
    groups: dict[str | None, list[dict]] = defaultdict(list)
    for image in images:
        groups[video_key(image) if isinstance(image, dict) else None].append(image)
    if not groups or None in groups:
        return None
    named_by_file = not all(image.get("video_id") is not None for image in images)
    if named_by_file and len(groups) == len(images) > 1:
        return None
    return {key: sorted(frames, key=frame_order) for key, frames in sorted(groups.items())}


def video_label(video: str) -> str:
    """A video as records outside this machine name it: a digest of its key (``video 3f9a1c2e``), never the key
    itself, which may carry a patient's name or a path."""
    import hashlib

    return "video " + hashlib.sha256(video.encode()).hexdigest()[:8]


def count_videos(images: list[Any]) -> int:
    """How many videos the frames come from; 0 when unknown."""
    groups = grouped_by_video(images)
    return len(groups) if groups is not None else 0
