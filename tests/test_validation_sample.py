"""The validation sample: which frames, how many under ``auto``, ``val_full/*`` beside ``val/*``, what MLflow holds."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import tiny_params
from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset
from seizure_mlflow.data.val_sample import select_validation_sample, video_groups
from seizure_mlflow.data.video_identity import video_key
from seizure_mlflow.engine.validation import auto_sample_size
from seizure_mlflow.errors import ConfigError
from seizure_mlflow.commands.train import run_training


def _images(videos: int, frames: int, with_video_id: bool = True) -> list[dict]:
    images, next_id = [], 1
    for v in range(videos):
        for t in range(frames):
            image = {"id": next_id, "file_name": f"clip{v:02d}/frame_{t:06d}.png", "frame_index": t}
            if with_video_id:
                image["video_id"] = f"clip{v:02d}"
            images.append(image)
            next_id += 1
    return images


def test_a_sample_is_spread_evenly_over_videos_and_time():
    images = _images(videos=5, frames=100)
    by_id = {image["id"]: image for image in images}
    ids = select_validation_sample(images, 50, seed=0)
    assert len(ids) == 50 == len(set(ids))
    per_video = Counter(by_id[i]["video_id"] for i in ids)
    assert set(per_video.values()) == {10}
    for video in per_video:
        times = sorted(by_id[i]["frame_index"] for i in ids if by_id[i]["video_id"] == video)
        gaps = {b - a for a, b in zip(times, times[1:])}
        assert gaps == {10}, (video, times)  # every tenth frame, whatever the offset
    assert select_validation_sample(images, 50, seed=0) == ids  # deterministic
    assert select_validation_sample(images, 50, seed=1) != ids  # the seed moves the offset
    assert select_validation_sample(images, 0, seed=0) == [image["id"] for image in images]
    assert select_validation_sample(images, 10_000, seed=0) == [image["id"] for image in images]


def test_short_videos_give_all_they_have_and_the_rest_is_shared():
    images = _images(videos=3, frames=40)[:40 + 40 + 2]  # the third video has 2 frames
    by_id = {image["id"]: image for image in images}
    per_video = Counter(by_id[i]["video_id"] for i in select_validation_sample(images, 22, seed=3))
    assert per_video == {"clip00": 10, "clip01": 10, "clip02": 2}


def test_frames_are_grouped_by_folder_or_file_name_prefix_or_taken_evenly_over_the_list():
    assert video_key({"file_name": "clip03/frame_000012.png"}) == "clip03"
    assert video_key({"file_name": "clip03_000012.png"}) == "clip03"
    assert video_key({"file_name": "a.png", "video_id": 7}) == "7"
    no_ids = _images(videos=4, frames=10, with_video_id=False)
    assert sorted(video_groups(no_ids)) == ["clip00", "clip01", "clip02", "clip03"]
    flat = [{"id": k, "file_name": f"{k}.png"} for k in range(30)]  # nothing groups them
    assert list(video_groups(flat)) == [""]
    ids = select_validation_sample(flat, 3, seed=0)
    assert [b - a for a, b in zip(ids, ids[1:])] == [10, 10]


def test_auto_takes_the_largest_sample_within_five_percent_of_training_time():
    # 100 iterations of 2 s between validations: 10 s of validation at 0.5 s a frame is 20 frames.
    assert auto_sample_size(2.0, 0.5, 100, smallest=5, full_size=1000) == 20
    assert auto_sample_size(2.0, 0.5, 100, smallest=30, full_size=1000) == 30  # at least a frame per video
    assert auto_sample_size(2.0, 0.001, 100, smallest=5, full_size=1000) == 1000  # never more than the set


def test_val_max_images_is_checked(tiny_data, tmp_path):
    for bad in ("-1", "some", "2.5"):
        with pytest.raises(ConfigError, match="val_max_images"):
            tiny_params(tiny_data, tmp_path, val_max_images=bad)
    with pytest.raises(ConfigError, match="full_val_period"):
        tiny_params(tiny_data, tmp_path, full_val_period=-2)


@pytest.fixture(scope="module")
def many_val_frames(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Two validation videos of 6 frames each (and 6 training videos)."""
    root = write_sample_dataset(tmp_path_factory.mktemp("data") / "sample",
                                SampleSpec(num_videos=10, frames_per_video=6, width=96, height=72, seed=3))
    return sample_paths(root)


def _metric(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_a_fixed_sample_gives_val_and_the_whole_set_gives_val_full(many_val_frames, tmp_path, tracking):
    val_images = json.loads(Path(many_val_frames["val"][0]).read_text())["images"]
    assert len(val_images) == 12
    result = run_training(tiny_params(many_val_frames, tmp_path, max_iter=4, eval_period=2, val_max_images="4",
                                      full_val_period=2))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.params["val_sample_size"] == "4"
    val, full = _metric(client, result.run_id, "val/total_loss"), _metric(client, result.run_id, "val_full/total_loss")
    assert sorted(val) == [2, 4] and sorted(full) == [2, 4]
    assert all(val[step] != full[step] for step in val)  # a sample of 4 is not the set of 12
    recorded = json.loads(Path(client.download_artifacts(result.run_id, "validation_sample.json")).read_text())
    by_id = {image["id"]: image for image in val_images}
    assert Counter(by_id[i]["video_id"] for i in recorded["image_ids"]) == {v: 2 for v in {i["video_id"] for i in val_images}}
    assert recorded["mode"] == "fixed" and recorded["full_size"] == 12
    assert not any(isinstance(v, str) and ".png" in v for v in recorded.values())  # ids, no file names
    contexts = {{t.key: t.value for t in d.tags}["mlflow.data.context"]: d for d in run.inputs.dataset_inputs}
    assert {"training", "validation", "validation_sample"} <= set(contexts)
    sample_tags = {t.key: t.value for t in contexts["validation_sample"].tags}
    assert sample_tags["images"] == "4" and sample_tags["of_images"] == "12"
    table = Path(client.download_artifacts(result.run_id, "losses.csv")).read_text()
    assert "val_full/total_loss" in table.splitlines()[0]


def test_auto_chooses_and_logs_a_size_and_repeats_it_at_every_period(many_val_frames, tmp_path, tracking):
    result = run_training(tiny_params(many_val_frames, tmp_path, max_iter=6, eval_period=2, val_max_images="auto"))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    recorded = json.loads(Path(client.download_artifacts(result.run_id, "validation_sample.json")).read_text())
    assert recorded["mode"] == "auto" and recorded["seconds_per_image"] > 0 and recorded["seconds_per_iteration"] > 0
    size = int(run.data.params["val_sample_size"])
    assert 2 <= size <= 12 and size == len(recorded["image_ids"])  # at least one frame per video
    assert sorted(_metric(client, result.run_id, "val/total_loss")) == [2, 4, 6]
    assert sorted(_metric(client, result.run_id, "val_full/total_loss")) == [6]


def test_the_sample_is_part_of_the_hook_state_so_a_resumed_run_keeps_it(tmp_path):
    from types import SimpleNamespace

    from seizure_mlflow.engine.validation import Validation

    images = _images(videos=3, frames=20)
    asked = []

    def loaders(image_ids, cached):
        asked.append(image_ids)
        return []

    first = Validation(10, loaders, images, seed=2, max_images=6, record_path=str(tmp_path / "sample.json"))
    first.trainer = SimpleNamespace(iter=0)
    first.before_train()
    state = first.state_dict()
    resumed = Validation(10, loaders, images, seed=9, max_images="auto")  # a resumed run does not choose again
    resumed.load_state_dict(state)
    resumed.trainer = SimpleNamespace(iter=40)
    resumed.before_train()
    assert resumed.choice == first.choice and len(first.choice.image_ids) == 6
    assert asked == [first.choice.image_ids, first.choice.image_ids]
    assert json.loads((tmp_path / "sample.json").read_text())["image_ids"] == first.choice.image_ids
