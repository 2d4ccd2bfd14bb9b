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
    ("DATASETS.TRAIN \"('seizure_val',)\"", "DATASETS.TRAIN must stay ('seizure_train',), the data given by train_json/"
                                        "val_json, got ('seizure_val',) (set by opts)"),
])
def test_opts_are_checked_like_the_typed_parameters(data, tmp_path, tracking, capsys, opts, message):
    args = _train(data, tmp_path)
    args[args.index("--opts") + 1] += " " + opts
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: --opts: " in err and message in err, err
    assert _no_run_exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("validation", ["the training file", "a copy naming the same frames"])
def test_validation_frames_that_are_training_frames_are_refused_before_a_run(data, tmp_path, tracking, capsys,
                                                                            validation):
    args = _train(data, tmp_path)
    train_json = data["train"][0]
    if validation == "the training file":
        args[args.index("--val-json") + 1] = train_json
    else:  # the validation file keeps its own frames and gains one training frame
        coco, train = json.loads(Path(data["val"][0]).read_text()), json.loads(Path(train_json).read_text())
        coco["images"].append({**train["images"][0], "id": 999})
        Path(data["val"][0]).write_text(json.dumps(coco))
    assert main(args) == 2
    err = capsys.readouterr().err
    frames = len(json.loads(Path(train_json).read_text())["images"])
    shared = f"{frames} of its {frames} frames" if validation == "the training file" else "1 of its"
    assert f"frames are training frames of {train_json}" in err and shared in err, err
    assert _no_run_exists() and not (tmp_path / "out").exists()
    from seizure_mlflow.sample.datasets import check_datasets

    (tj, ti), (vj, vi) = data["train"], data["val"]
    shared_ok = check_datasets(tj, ti, tj if validation == "the training file" else vj, vi, shared_frames=True)
    assert shared_ok.val.num_images > 0  # allowed when asked for (val_on_training_frames; cv's final model)


def test_weights_that_fit_nothing_in_the_network_are_refused_before_a_run(data, tmp_path, tracking, capsys):
    import torch

    weights = tmp_path / "other_network.pth"
    torch.save({"model": {"encoder.layer1.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)}}, weights)
    assert main(_train(data, tmp_path, "--weights", str(weights))) == 2
    err = capsys.readouterr().err
    assert "error: --weights: other_network.pth: none of its tensors fit this config's network" in err, err
    assert _no_run_exists() and not (tmp_path / "out").exists()


def test_a_run_id_that_would_break_mlflows_filter_is_refused_by_name(tracking):
    from seizure_mlflow.errors import UserError
    from seizure_mlflow.registry.uris import registered_version

    with pytest.raises(UserError, match=r"model_uri: .*OR name != .x. is not a run id \(letters and digits"):
        registered_version("runs:/ab' OR name != 'x/model")


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


VALUES = [
    (["--seed", str(2**32)], "seed must be an integer from 0 to 2**31 - 1, got 4294967296"),
    (["--val-max-images", "²"], "val_max_images must be auto, 0 (the whole set) or a number of frames"),
    (["--model-name", "team/probe"], "model_name must be a registered model name (not empty, no '/' or ':'"),
    (["--ims-per-batch", "100000"], "SOLVER.IMS_PER_BATCH 100000 (100000 images per process at 64 px) needs at least"),
    (["--weights", "https://127.0.0.1:9/weights.pkl"], "--weights: could not download https://127.0.0.1:9/weights.pkl"),
    (["--lr", "nan"], "lr must be a finite number, got 'nan'"),
    (["--seed", "٣"], "seed must be an integer, got '٣'"),
]


def test_values_are_refused_before_a_run_exists(data, tmp_path, tracking, capsys):
    """Values that used to be checked after the run existed (a traceback and a FAILED run), or never."""
    for extra, message in VALUES:  # one store for all: a fresh one per case costs more than the cases
        started = time.time()
        assert main(_train(data, tmp_path, *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
        assert _no_run_exists() and not (tmp_path / "out").exists() and time.time() - started < 30


def test_a_device_opts_set_that_this_machine_lacks_is_refused_before_a_run(data, tmp_path, tracking, capsys):
    import torch

    args = _train(data, tmp_path)
    device = f"cuda:{torch.cuda.device_count()}"  # one GPU more than there are: none on a CPU machine
    args[args.index("--opts") + 1] += f" MODEL.DEVICE {device}"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"MODEL.DEVICE must be cpu, or cuda (or cuda:N) on a machine with that GPU, got '{device}' (set by opts)" in err
    assert _no_run_exists()


STORES = [
    ("sqlite:/mlflow.db", "is not a SQLite store URI: write sqlite:///RELATIVE.db"),
    ("sqlite:////no/such/folder/mlflow.db", "the folder /no/such/folder does not exist"),
    ("postgresql://alice:s3cret@127.0.0.1:{port}/mlflow", "the postgresql tracking store postgresql://127.0.0.1:{port} does not answer"),
]


def test_a_store_that_cannot_answer_is_one_line_within_seconds(data, tmp_path, monkeypatch, capsys):
    port = _dead_server().rsplit(":", 1)[1]
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        _each_store_is_one_line(data, tmp_path, monkeypatch, capsys, port)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def _each_store_is_one_line(data, tmp_path, monkeypatch, capsys, port: str) -> None:
    for uri, message in STORES:
        uri = uri.format(port=port)
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            monkeypatch.setenv(key, uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        started = time.time()
        for command in (_train(data, tmp_path), ["evaluate", "--model-uri", "models:/m@champion"]):
            assert main(command) == 2
            err = capsys.readouterr().err
            assert message.format(port=port) in err and "Traceback" not in err, err
            assert "s3cret" not in err and "alice" not in err
        assert time.time() - started < 20 and not (tmp_path / "out").exists()


def test_a_deleted_experiment_is_one_line_for_train_and_evaluate(data, tmp_path, tracking, monkeypatch, capsys):
    experiment = MlflowClient().create_experiment("study")
    MlflowClient().delete_experiment(experiment)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study")
    (tj, ti) = data["test"]
    for command in (_train(data, tmp_path), ["evaluate", "--model-uri", "models:/m@champion", "--test-json", tj,
                                             "--test-images", ti]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"experiment 'study' (id {experiment}) was deleted: restore it" in err and "Traceback" not in err, err
    assert MlflowClient().search_runs([experiment]) == []


@pytest.mark.slow
def test_memory_exhaustion_in_training_names_the_batch_and_image_size(data, tmp_path):
    """A real out-of-memory (the process's address space capped at 5 GiB; a batch of 16 frames at 800 px needs
    more): one message naming the batch, the size and what to lower, exit 2, the run FAILED, no traceback."""
    import resource
    import subprocess
    import sys

    from conftest import venv_env

    limit = 5 * 2**30
    args = _train(data, tmp_path, "--ims-per-batch", "16")
    args[args.index("--min-size") + 1] = "800"
    args[args.index("--opts") + 1] += " INPUT.MAX_SIZE_TRAIN 1333"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "seizure_mlflow", *args], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=venv_env(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: out of memory in training on cpu" in proc.stderr
    assert "a batch of 16 images (16 per process) resized to a shorter side of 800 px" in proc.stderr
    assert "lower ims_per_batch or min_size" in proc.stderr and "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
