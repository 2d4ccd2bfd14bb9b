"""One rule for "which video is this frame from", used alike by the dataset counts, the model card and the
validation sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from seizure_mlflow.data.checks import check_coco
from seizure_mlflow.data.val_sample import select_validation_sample, video_groups
from seizure_mlflow.data.video_identity import count_videos, video_key
from seizure_mlflow.tracking.datasets import dataset_counts
from seizure_mlflow.tracking.describe import Outcome, model_card


def _flat_clip_names(tiny_data, tmp_path) -> tuple[Path, Path]:
    """The tiny training set with frames renamed ``clipNN_NNNNNN.png`` in one folder and no ``video_id``."""
    coco = json.loads(Path(tiny_data["train"][0]).read_text())
    images = tmp_path / "frames"
    images.mkdir()
    clips = {}
    for image in coco["images"]:
        clip = clips.setdefault(image.pop("video_id"), len(clips))
        name = f"clip{clip:02d}_{image['frame_index']:06d}.png"
        shutil.copy(Path(tiny_data["train"][1]) / image["file_name"], images / name)
        image["file_name"] = name
    path = tmp_path / "train.json"
    path.write_text(json.dumps(coco))
    return path, images


def test_file_name_keyed_frames_count_as_their_clips_everywhere(tiny_data, tmp_path):
    from seizure_mlflow.config import build_config
    from conftest import tiny_params

    path, images = _flat_clip_names(tiny_data, tmp_path)
    summary = check_coco(str(path), str(images))
    frames = json.loads(path.read_text())["images"]
    clips = {f["file_name"].split("_")[0] for f in frames}
    assert len(clips) == 3 and summary.num_videos == 3
    assert dataset_counts(summary)["videos"] == "3"
    cfg = build_config(tiny_params(tiny_data, tmp_path), num_classes=2, output_dir="")
    card = model_card(Outcome(config="cpu_demo.yaml", run_name="r", train=summary, val=summary,
                              best_value=1.0, best_iteration=2, max_iter=6, model_name="m", version="1",
                              alias="champion", test_metrics=None), cfg)
    assert f"| training | {summary.digest} | {summary.num_images} | {summary.num_annotations} | 3 |" in card
    assert sorted(video_groups(frames)) == sorted(clips)
    by_id = {f["id"]: f for f in frames}
    assert {by_id[i]["file_name"].split("_")[0] for i in select_validation_sample(frames, 3, seed=0)} == clips


def test_video_ids_win_and_unknown_frames_count_as_no_video():
    assert video_key({"file_name": "clip03_000012.png", "video_id": "bed4"}) == "bed4"
    one_per_video = [{"id": k, "file_name": f"f{k}.png", "video_id": f"v{k}"} for k in range(4)]
    assert count_videos(one_per_video) == 4  # ids are trusted even when each video gave one frame
    assert count_videos([{"id": k, "file_name": f"clip{k}_000001.png"} for k in range(4)]) == 0  # names alone: unknown
    assert count_videos([{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "clip1_000002.png"}]) == 0
