"""The synthetic sample dataset: deterministic, split by video, valid COCO, and a patient that moves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_util

from seizure_mlflow.data.checks import check_coco
from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, split_counts, write_sample_dataset
from seizure_mlflow.errors import UserError

SMALL = SampleSpec(num_videos=6, frames_per_video=3, width=96, height=72, seed=5)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_sample_dataset(tmp_path / "a", SMALL)
    b = write_sample_dataset(tmp_path / "b", SMALL)
    c = write_sample_dataset(tmp_path / "c", SampleSpec(**{**SMALL.__dict__, "seed": 6}))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_split_by_video_and_valid_coco(tmp_path):
    root = write_sample_dataset(tmp_path / "s", SMALL)
    videos = {}
    for split, (json_path, image_root) in sample_paths(root).items():
        summary = check_coco(json_path, image_root)
        assert summary.category_names == ["patient", "caregiver"]
        images = json.loads(Path(json_path).read_text())["images"]
        videos[split] = {img["video_id"] for img in images}
        assert all(img["file_name"].startswith(img["video_id"] + "/") for img in images)
    assert not (videos["train"] & videos["val"]) and not (videos["train"] & videos["test"]) and not (videos["val"] & videos["test"])
    assert [len(videos[s]) for s in ("train", "val", "test")] == [4, 1, 1]
    assert json.loads((root / "split.json").read_text())["videos"]["val"] == sorted(videos["val"])


def test_default_dataset_resembles_the_study():
    spec = SampleSpec()
    assert spec.num_videos >= 12 and max(spec.width, spec.height) <= 320
    assert split_counts(spec.num_videos, spec.ratios) == (9, 3, 3)


@pytest.mark.parametrize("n,expected", [(3, (1, 1, 1)), (5, (3, 1, 1)), (10, (6, 2, 2)), (50, (30, 10, 10))])
def test_split_counts(n, expected):
    assert split_counts(n, (0.6, 0.2, 0.2)) == expected


def test_patient_moves_between_frames(tmp_path):
    root = write_sample_dataset(tmp_path / "s", SampleSpec(num_videos=3, frames_per_video=4, width=96, height=72))
    data = json.loads((root / "train.json").read_text())
    first_video = data["images"][0]["video_id"]
    masks = []
    for img in (i for i in data["images"] if i["video_id"] == first_video):
        ann = next(a for a in data["annotations"] if a["image_id"] == img["id"] and a["category_id"] == 1)
        rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], img["height"], img["width"]))
        masks.append(mask_util.decode(rle).astype(bool))
    changed = [np.logical_xor(a, b).sum() for a, b in zip(masks, masks[1:])]
    assert all(c > 0 for c in changed), changed


def test_existing_dataset_is_reused_and_foreign_folder_refused(tmp_path):
    root = write_sample_dataset(tmp_path / "s", SMALL)
    stamp = (root / "train.json").stat().st_mtime_ns
    write_sample_dataset(root, SMALL)
    assert (root / "train.json").stat().st_mtime_ns == stamp
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not an earlier output of sample-data"):
        write_sample_dataset(foreign, SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_too_few_videos_is_refused():
    with pytest.raises(UserError, match="num_videos must be >= 3"):
        SampleSpec(num_videos=2)
