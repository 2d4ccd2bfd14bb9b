"""The data sets of a run, checked: given COCO files, or the synthetic sample data when none are given."""

from __future__ import annotations

from dataclasses import dataclass

from seizure_mlflow.data.checks import CocoSummary, check_coco, check_no_shared_frames, check_same_categories
from seizure_mlflow.sample.scenes import DEFAULT_SAMPLE_DIR, sample_paths, write_sample_dataset


@dataclass(frozen=True)
class Datasets:
    train: CocoSummary
    val: CocoSummary
    is_sample: bool


def check_datasets(train_json: str = "", train_images: str = "", val_json: str = "", val_images: str = "",
                   sample_dir: str = DEFAULT_SAMPLE_DIR, shared_frames: bool = False) -> Datasets:
    """Check the training and validation COCO files (writing the sample data first if none are given); the
    validation set may hold training frames only with ``shared_frames``."""
    if train_json:
        train, val, is_sample = check_coco(train_json, train_images), check_coco(val_json, val_images), False
    else:
        paths = sample_paths(write_sample_dataset(sample_dir))
        train, val, is_sample = check_coco(*paths["train"]), check_coco(*paths["val"]), True
    check_same_categories(train, val)
    if not shared_frames:
        check_no_shared_frames(train, val)
    return Datasets(train=train, val=val, is_sample=is_sample)


def check_test_set(test_json: str = "", test_images: str = "", sample_dir: str = DEFAULT_SAMPLE_DIR) -> CocoSummary:
    """The given test COCO file, or the sample data's test split (written first if missing)."""
    if test_json:
        return check_coco(test_json, test_images)
    return check_coco(*sample_paths(write_sample_dataset(sample_dir))["test"])
