"""Cross-validation folds: whole videos (or patients) on one side only, every video held out exactly once, the
fold files a trainer reads, and membership that names no video. Pure data: no model."""

from __future__ import annotations

import json
import os

import pytest

from seizure_mlflow.data.checks import check_coco
from seizure_mlflow.data.folds import make_folds, pool_datasets
from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset
from seizure_mlflow.errors import UserError


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = write_sample_dataset(tmp_path_factory.mktemp("cv") / "sample",
                                SampleSpec(num_videos=7, frames_per_video=2, width=48, height=36, seed=5))
    paths = sample_paths(root)
    return pool_datasets([check_coco(*paths["train"]), check_coco(*paths["val"])])


@pytest.mark.parametrize("folds", [2, 3])
def test_folds_are_disjoint_cover_every_video_and_are_balanced(pool, folds):
    parts = make_folds(pool, folds, seed=0).parts
    held_out = [v for part in parts for v in part]
    assert sorted(held_out) == pool.videos and len(set(held_out)) == len(held_out)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert make_folds(pool, folds, seed=0).parts == parts  # the same seed, the same folds, on any machine


def test_as_many_folds_as_videos_is_leave_one_out(pool):
    parts = make_folds(pool, len(pool.videos), seed=1).parts
    assert sorted(len(p) for p in parts) == [1] * len(pool.videos)


def test_a_patients_videos_stay_in_one_fold(pool, tmp_path):
    videos = pool.videos
    patient_map = tmp_path / "patients.csv"
    patient_map.write_text("video,patient\n" + "".join(f"{v},p{i // 2}\n" for i, v in enumerate(videos)))
    folds = make_folds(pool, 3, seed=0, patient_map=str(patient_map))
    fold_of = {v: k for k, part in enumerate(folds.parts) for v in part}
    for i in range(0, len(videos) - 1, 2):
        assert fold_of[videos[i]] == fold_of[videos[i + 1]], "one patient's videos were split across folds"
    assert folds.grouped_by == "patients" and folds.groups == (len(videos) + 1) // 2
    with pytest.raises(UserError, match=r"5 folds need at least 5 patients.*hold 3"):
        make_folds(pool, 5, seed=0, patient_map=str(patient_map))


def test_too_many_or_too_few_folds_are_refused_with_the_fix(pool):
    with pytest.raises(UserError, match=rf"need at least {len(pool.videos) + 1} videos.*--folds {len(pool.videos)}"):
        make_folds(pool, len(pool.videos) + 1, seed=0)
    with pytest.raises(UserError, match="at least 2"):
        make_folds(pool, 1, seed=0)


def test_a_folds_files_hold_out_its_videos_and_train_on_the_rest(pool, tmp_path):
    folds = make_folds(pool, 3, seed=0)
    for k, part in enumerate(folds.parts):
        train_json, val_json = folds.write(k, tmp_path / f"fold_{k}")
        train, val = (json.loads(open(p).read()) for p in (train_json, val_json))
        assert {i["video_id"] for i in val["images"]} == set(part)
        assert {i["video_id"] for i in train["images"]} == set(pool.videos) - set(part)
        for doc in (train, val):
            ids = {i["id"] for i in doc["images"]}
            assert all(a["image_id"] in ids for a in doc["annotations"]) and doc["annotations"]
            assert all(os.path.isfile(os.path.join(pool.image_root, i["file_name"])) for i in doc["images"])
        summary = check_coco(val_json, pool.image_root)  # the package's own checks accept what it wrote
        assert summary.num_videos == len(part)


def test_membership_gives_counts_and_digests_never_a_video_name(pool):
    folds = make_folds(pool, 3, seed=0)
    membership = folds.membership
    text = json.dumps(membership)
    assert not any(v in text for v in pool.videos)
    assert [m["videos"] for m in membership] == [len(p) for p in folds.parts]
    assert sum(m["frames"] for m in membership) == len(pool.images)
    assert len({m["digest"] for m in membership}) == 3
