"""Bad input to `train`, `predict`, `evaluate` and `promote`: a clear message and exit 2 before any work; no
MLflow run, no output written, nothing read from outside the data, no input changed."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from conftest import TINY_OPTS
from seizure_mlflow.cli import main


@pytest.fixture
def data(tiny_data, tmp_path) -> dict[str, tuple[str, str]]:
    """A private copy of the tiny sample data, to break."""
    source = Path(tiny_data["train"][0]).parent
    copy = Path(shutil.copytree(source, tmp_path / "data"))
    return {split: (str(copy / Path(j).name), str(copy / "images")) for split, (j, _) in tiny_data.items()}


def _train(data, tmp_path, *extra: str) -> list[str]:
    (tj, ti), (vj, vi) = data["train"], data["val"]
    return ["train", "--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi, "--device", "cpu",
            "--max-iter", "2", "--eval-period", "2", "--min-size", "64", "--opts", " ".join(TINY_OPTS),
            "--output-dir", str(tmp_path / "out"), *extra]


def _no_run_exists() -> bool:
    experiments = MlflowClient().search_experiments()
    return not MlflowClient().search_runs([e.experiment_id for e in experiments]) if experiments else True


def _first_train_image(data) -> tuple[dict, Path]:
    coco = json.loads(Path(data["train"][0]).read_text())
    return coco, Path(data["train"][1]) / coco["images"][0]["file_name"]


@pytest.mark.parametrize("how,message", [
    ("text", "frame_000000.png: not a readable image (its bytes are no PNG, JPEG"),
    ("empty", "is empty (0 bytes)"),
    ("outside", "leads outside the image folder"),
])
def test_train_refuses_bad_frames_before_a_run_exists(data, tmp_path, tracking, capsys, how, message):
    coco, frame = _first_train_image(data)
    if how == "text":
        frame.write_text("frame,notes\n1,hello\n")
    elif how == "empty":
        frame.write_bytes(b"")
    else:
        (tmp_path / "other.csv").write_text("x")
        coco["images"][0]["file_name"] = "../../other.csv"
        Path(data["train"][0]).write_text(json.dumps(coco))
    started = time.time()
    assert main(_train(data, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"error: {data['train'][0]}" in err and f"images[0] (id {coco['images'][0]['id']})" in err, err
    assert message in err, err
    assert "Traceback" not in err and time.time() - started < 30
    assert _no_run_exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("opts,message", [
    ("SOLVER.MAX_ITER 0", "SOLVER.MAX_ITER must be a positive integer, got 0 (set by opts)"),
    ("TEST.EVAL_PERIOD 0", "TEST.EVAL_PERIOD must be a positive integer, got 0 (set by opts)"),
    ("SOLVER.BASE_LR -0.5", "SOLVER.BASE_LR must be a positive number, got -0.5 (set by opts)"),
    ("SOLVER.IMS_PER_BATCH 0", "SOLVER.IMS_PER_BATCH must be a positive integer, got 0 (set by opts)"),
    ("INPUT.MIN_SIZE_TEST 0", "INPUT.MIN_SIZE_TEST must be a positive size, got 0 (set by opts)"),
    ("SOLVER.CHECKPOINT_PERIOD 0", "SOLVER.CHECKPOINT_PERIOD must be a positive integer, got 0 (set by opts)"),
])
def test_opts_are_checked_like_the_typed_parameters(data, tmp_path, tracking, capsys, opts, message):
    args = _train(data, tmp_path)
    args[args.index("--opts") + 1] += " " + opts
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: --opts: " in err and message in err, err
    assert _no_run_exists() and not (tmp_path / "out").exists()


def test_train_output_dir_that_is_a_file_fails_before_a_run(data, tmp_path, tracking, capsys):
    args = _train(data, tmp_path)
    target = tmp_path / "out"
    target.write_text("keep")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: --output-dir: " in err and "is a file; give a folder" in err
    assert target.read_text() == "keep" and _no_run_exists()


def test_predict_outputs_and_inputs_are_checked_before_the_model_is_loaded(data, tmp_path, tracking, capsys):
    _, frame = _first_train_image(data)
    folder = tmp_path / "frames"
    folder.mkdir()
    shutil.copy(frame, folder / "good.png")
    cases = [
        (["--input", str(folder), "--output", str(folder)], "error: --output: ", "is a folder; give a file name"),
        (["--input", str(folder), "--output", str(folder / "good.png" / "r.json")], "error: --output: ",
         "is a file, not a folder"),
    ]
    (folder / "bad.png").write_text("not an image")
    cases.append((["--input", str(folder), "--output", str(tmp_path / "r.json")], "error: --input: ",
                  "bad.png: not a readable image"))
    for args, prefix, message in cases:
        # A model URI that does not exist: had the command got as far as loading it, it would say so instead.
        assert main(["predict", "--model-uri", "models:/no-such-model@champion", *args]) == 2
        err = capsys.readouterr().err
        assert prefix in err and message in err, err
    assert not (tmp_path / "r.json").exists() and sorted(p.name for p in folder.iterdir()) == ["bad.png", "good.png"]


def _dead_server() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("command", [
    ["evaluate", "--model-uri", "models:/m@champion"],
    ["predict", "--model-uri", "models:/m@champion", "--input", "{photo}", "--output", "{tmp}/r.json"],
    ["promote", "--model-name", "m"],
])
def test_commands_fail_fast_when_the_tracking_server_does_not_answer(command, tmp_path, monkeypatch, capsys, data):
    uri = _dead_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _, frame = _first_train_image(data)
    started = time.time()
    code = main([a.format(photo=frame, tmp=tmp_path) for a in command])
    err = capsys.readouterr().err
    assert code == 2 and f"MLflow tracking server {uri} is unreachable" in err, err
    assert time.time() - started < 20 and not (tmp_path / "r.json").exists()
