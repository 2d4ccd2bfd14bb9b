"""Cross-validation folds by video (or by patient): the training and validation videos pooled, dealt into
``folds`` parts by :func:`~seizure_mlflow.data.grouping.assign_groups`, and each fold written as a COCO pair
(the other folds to train on, the held-out fold to validate on).

A fold is described outside this machine by counts and digests only (:meth:`Folds.membership`): video keys
come from folder and file names, which can name a patient.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from seizure_mlflow.data.checks import CocoSummary, load_coco_json
from seizure_mlflow.data.grouping import assign_groups, patient_groups
from seizure_mlflow.data.video_identity import grouped_by_video, video_label
from seizure_mlflow.errors import DatasetError, UserError


@dataclass(frozen=True)
class Pool:
    """The frames of several COCO files as one: ids renumbered, ``file_name`` relative to ``image_root`` (the
    files' common folder) and every image's ``video_id`` set, so that a frame keeps its video."""

    images: list[dict]
    annotations: list[dict]
    categories: list[dict]
    image_root: str

    @property
    def videos(self) -> list[str]:
        return sorted({str(image["video_id"]) for image in self.images})

    def subset(self, videos: set[str]) -> dict:
        """The COCO document of the frames of ``videos``."""
        images = [image for image in self.images if image["video_id"] in videos]
        ids = {image["id"] for image in images}
        return {"images": images, "annotations": [a for a in self.annotations if a["image_id"] in ids],
                "categories": self.categories}


def pool_datasets(sources: list[CocoSummary]) -> Pool:
    """One :class:`Pool` of checked COCO files (training and validation). Frames whose video cannot be told
    (see :mod:`~seizure_mlflow.data.video_identity`) are refused: a fold must hold whole videos."""
    root = os.path.commonpath([os.path.abspath(s.image_root) for s in sources])
    images, annotations, categories = [], [], None
    for source in sources:
        data = load_coco_json(source.json_path)
        categories = categories or data["categories"]
        videos = grouped_by_video(data["images"])
        if videos is None:
            raise DatasetError(f"{source.json_path}: cannot tell which video each frame is from; cross-validation "
                               "keeps videos whole, so give every image a video_id (as `prepare` writes) or one "
                               "folder per video")
        new_id = {}
        for video, frames in videos.items():
            for image in frames:
                new_id[image["id"]] = len(images) + 1
                path = os.path.join(os.path.abspath(source.image_root), image["file_name"])
                images.append({**image, "id": new_id[image["id"]], "video_id": video,
                               "file_name": os.path.relpath(path, root).replace(os.sep, "/")})
        for annotation in data["annotations"]:
            annotations.append({**annotation, "id": len(annotations) + 1, "image_id": new_id[annotation["image_id"]]})
    return Pool(images, annotations, categories or [], root)


def video_set_digest(videos: list[str]) -> str:
    """A short digest of a set of videos: the same set gives the same digest on every machine."""
    return hashlib.sha256("\n".join(sorted(videos)).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Folds:
    """``parts[k]``: the videos held out in fold k; ``grouped_by``: ``videos`` or ``patients``."""

    pool: Pool
    parts: list[list[str]]
    grouped_by: str
    groups: int

    def write(self, k: int, folder: str | os.PathLike) -> tuple[str, str]:
        """Fold ``k``'s training and validation COCO files in ``folder`` (paths relative to the pool's
        ``image_root``); returns their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        held_out = set(self.parts[k])
        paths = []
        for name, videos in (("train", set(self.pool.videos) - held_out), ("val", held_out)):
            path = folder / f"{name}.json"
            path.write_text(json.dumps(self.pool.subset(videos)))
            paths.append(str(path))
        return paths[0], paths[1]

    def write_all(self, folder: str | os.PathLike) -> str:
        """Every video in one COCO file (the final model's training set); returns its path."""
        path = Path(folder) / "all.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.pool.subset(set(self.pool.videos))))
        return str(path)

    @cached_property
    def membership(self) -> list[dict]:
        """Which videos each fold holds out, as counts and digests (never names)."""
        frames: dict[str, int] = {}
        for image in self.pool.images:
            frames[image["video_id"]] = frames.get(image["video_id"], 0) + 1
        return [{"fold": k, "videos": len(part), "frames": sum(frames[v] for v in part),
                 "digest": video_set_digest(part), "video_labels": [video_label(v) for v in part]}
                for k, part in enumerate(self.parts)]


def make_folds(pool: Pool, folds: int, seed: int, patient_map: str = "") -> Folds:
    """Deal the pool's videos (or, with a patient map, its patients) into ``folds`` parts; ``folds`` equal to
    the number of groups is leave-one-out."""
    groups = patient_groups(pool.videos, patient_map or None)
    what = "patients" if patient_map else "videos"
    if folds < 2:
        raise UserError(f"must be at least 2, got {folds}", param="folds")
    if folds > len(groups):
        raise UserError(f"{folds} folds need at least {folds} {what}, but the training and validation sets hold "
                        f"{len(groups)}; use --folds {len(groups)} for leave-one-out", param="folds")
    return Folds(pool, assign_groups(groups, [1.0] * folds, seed), what, len(groups))
