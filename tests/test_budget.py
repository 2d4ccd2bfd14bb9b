"""The annotation-budget curve: nested subsets of the training set, one child run per cell, test AP with
intervals, the parent's table, curve and answer, workers sharing one grid, bad grids refused before any run."""

from __future__ import annotations

import itertools
import json

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import TINY_OPTS
from seizure_mlflow.cli import main
from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

SPEC = SampleSpec(num_videos=10, frames_per_video=4, width=96, height=72, seed=5)  # 6 / 2 / 2 videos


@pytest.fixture(scope="module")
def budget_data(tmp_path_factory) -> dict[str, tuple[str, str]]:
    return sample_paths(write_sample_dataset(tmp_path_factory.mktemp("budget") / "sample", SPEC))


def _args(data, tmp_path, *extra: str) -> list[str]:
    (tj, ti), (vj, vi), (sj, si) = data["train"], data["val"], data["test"]
    return ["budget", "--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi,
            "--test-json", sj, "--test-images", si, "--max-iter", "4", "--eval-period", "2", "--min-size", "64",
            "--device", "cpu", "--lr", "0.01", "--val-max-images", "0", "--opts", " ".join(TINY_OPTS),
            "--output-dir", str(tmp_path / "out"), "--storage", f"sqlite:///{tmp_path}/optuna.db", "--study", "grid",
            "--model-name", "budget-test", *extra]


def test_cells_are_nested_along_their_rows_and_columns(budget_data):
    from seizure_mlflow.data.budget import make_grid, spread_order
    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.data.folds import pool_datasets

    assert spread_order(8)[:2] == [4, 2] and sorted(spread_order(13)) == list(range(13))
    grid = make_grid(pool_datasets([check_coco(*budget_data["train"])]), (1.0, 0.5, 0.25), (1.0, 0.5, 2), seed=3)
    assert grid.video_counts == (2, 3, 6) and grid.frame_shares == (0.25, 0.5, 1.0)
    frames = {cell: {(i["video_id"], i["frame_index"]) for i in grid.images(cell)} for cell in grid.cells}
    for small, large in itertools.permutations(grid.cells, 2):
        if small.videos <= large.videos and small.frames <= large.frames:
            assert frames[small] <= frames[large], (small, large)
    everything = next(c for c in grid.cells if c.videos == 6 and c.frames == 1.0)
    assert len(frames[everything]) == 6 * SPEC.frames_per_video
    quarter = next(c for c in grid.cells if c.videos == 2 and c.frames == 0.25)
    assert len(frames[quarter]) == 2 and grid.membership(quarter)["masks"] > 0


@pytest.mark.slow
def test_two_workers_share_one_grid_and_the_parent_holds_table_curve_and_answer(budget_data, tracking, tmp_path,
                                                                             capsys):
    assert main(_args(budget_data, tmp_path, "--frames", "1 0.5 0.25", "--videos", "1", "0.5", "--workers",
                      "2")) == 0, capsys.readouterr().err
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    cells = sorted(r.data.tags["seizure.budget_cell"] for r in children)
    assert cells == sorted(f"{v}x{f:g}" for v in (3, 6) for f in (1, 0.5, 0.25)), "one child per cell"
    for child in children:
        metrics = child.data.metrics
        assert "test/segm/AP" in metrics and metrics["test/segm/AP_ci_low"] <= metrics["test/segm/AP_ci_high"]
        assert child.info.status == "FINISHED" and int(child.data.params["budget.masks"]) > 0
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "budget")}
    assert {"budget/cells.csv", "budget/curve.png", "budget/answer.md", "budget/cells.json"} <= artifacts
    answer = parent.data.tags["mlflow.note.content"]
    assert answer.startswith("At the largest budget") and any(
        verdict in answer for verdict in ("as new videos", "as more frames", "cannot tell"))
    table = client.download_artifacts(parent.info.run_id, "budget/cells.csv", str(tmp_path))
    assert open(table).read().count("COMPLETE") == 6
    members = json.loads(open(client.download_artifacts(parent.info.run_id, "budget/cells.json", str(tmp_path))).read())
    assert all(set(m) == {"videos", "frame_share", "frames", "masks", "digest"} for m in members)
    assert parent.info.status == "FINISHED" and parent.data.metrics["budget/cells_complete"] == 6


@pytest.mark.parametrize("extra,message", [
    (("--frames", "1 0.1"), "--frames: 0.1 of the frames leaves a training video of 4 frames with none"),
    (("--videos", "1 9"), "--videos: 9 videos asked for, but the training set holds 6"),
    (("--videos", "0"), "--videos: 0 is neither a share"),
    (("--frames", "1.5"), "--frames: 1.5 is no share"),
    (("--seeds", "0"), "--seeds: must be >= 1"),
])
def test_bad_grids_are_refused_before_any_run_or_study_exists(budget_data, tracking, tmp_path, capsys, extra,
                                                              message):
    assert main(_args(budget_data, tmp_path, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists()
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")
