"""Nothing in a data file runs as code; nothing of the user's is deleted or overwritten; one training per output
folder; checkpoints written whole or not at all.

Each payload below would write a marker file if it ran: the test asserts exit 2, a message naming the file, no
MLflow run, and no marker.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY_OPTS, TINY_SPEC, tiny_params
from seizure_mlflow.cli import main
from seizure_mlflow.sample.scenes import write_sample_dataset
from seizure_mlflow.outputs.staging import OUTPUT_MARKER
from seizure_mlflow.outputs.training_folder import LOCK_FILE, OutputFolderLock
from seizure_mlflow.errors import UserError


class _WritesAMarker:
    """A pickle whose loading runs ``open(marker, "w")``: what an attacker's weights file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": {"w": _WritesAMarker(marker)}, "__author__": "me"}, protocol=2))
    return path


def _evil_yaml(marker: Path) -> str:
    return f"SOLVER:\n  BASE_LR: !!python/object/apply:os.system ['touch {marker}']\n"


@pytest.fixture
def data(tiny_data, tmp_path) -> dict[str, tuple[str, str]]:
    source = Path(tiny_data["train"][0]).parent
    copy = Path(shutil.copytree(source, tmp_path / "data"))
    return {split: (str(copy / Path(j).name), str(copy / "images")) for split, (j, _) in tiny_data.items()}


def _train_args(data, out: Path, *extra: str) -> list[str]:
    (tj, ti), (vj, vi) = data["train"], data["val"]
    return ["train", "--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi, "--device", "cpu",
            "--max-iter", "2", "--eval-period", "2", "--min-size", "64", "--opts", " ".join(TINY_OPTS),
            "--output-dir", str(out), *extra]


def _no_run_exists() -> bool:
    experiments = MlflowClient().search_experiments()
    return not MlflowClient().search_runs([e.experiment_id for e in experiments]) if experiments else True


def _refused(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("how", ["weights", "opts", "resume"])
def test_a_pickle_payload_is_refused_whichever_way_it_arrives(how, data, tmp_path, tracking, capsys):
    marker = tmp_path / "PWNED"
    evil = _evil_pickle(tmp_path / "backbone.pkl", marker)
    out = tmp_path / "out"
    args = _train_args(data, out)
    if how == "weights":
        args += ["--weights", str(evil)]
    elif how == "opts":
        args[args.index("--opts") + 1] += f" MODEL.WEIGHTS {evil}"
    else:
        out.mkdir()
        shutil.copy(evil, out / "model_0000003.pkl")
        (out / "last_checkpoint").write_text("model_0000003.pkl")
        (out / "mlflow_run.json").write_text(json.dumps({"run_id": "0" * 32}))
        args += ["--resume"]
    assert main(args) == 2
    _refused(capsys, "refused to load it", "it asks for io.open", "backbone.pkl" if how != "resume" else "model_0000003.pkl")
    assert not marker.exists(), "the payload ran"
    assert _no_run_exists()


def test_weights_named_in_a_base_config_are_never_loaded(tiny_data, tmp_path):
    """A config's MODEL.WEIGHTS gives way to the ``weights`` parameter ('' = from scratch), so a payload that a
    shared config names is not read; with ``weights`` given it is checked like any weights file."""
    from detectron2 import model_zoo

    from seizure_mlflow.config import build_config

    marker = tmp_path / "PWNED"
    evil = _evil_pickle(tmp_path / "backbone.pkl", marker)
    zoo = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    (tmp_path / "base.yaml").write_text(f"_BASE_: {zoo}\nMODEL:\n  WEIGHTS: {evil}\n")
    (tmp_path / "top.yaml").write_text("_BASE_: base.yaml\n")
    params = tiny_params(tiny_data, tmp_path, config=str(tmp_path / "top.yaml"))
    assert build_config(params, num_classes=2, output_dir="").MODEL.WEIGHTS == ""
    with pytest.raises(UserError, match="backbone.pkl: refused to load it: it asks for io.open"):
        build_config(params.replace(weights=str(evil)), num_classes=2, output_dir="")
    assert not marker.exists()


def test_a_python_tag_in_a_base_config_is_refused(data, tmp_path, tracking, capsys):
    marker = tmp_path / "PWNED"
    (tmp_path / "base.yaml").write_text(_evil_yaml(marker))
    (tmp_path / "top.yaml").write_text("_BASE_: base.yaml\n")
    assert main(_train_args(data, tmp_path / "out", "--config", str(tmp_path / "top.yaml"))) == 2
    _refused(capsys, "error: --config: ", "base.yaml line 2: refused", "python/object/apply:os.system")
    assert not marker.exists() and _no_run_exists()


def test_a_python_tag_in_a_sweep_space_is_refused(data, tmp_path, tracking, capsys):
    marker = tmp_path / "PWNED"
    space = tmp_path / "space.yaml"
    space.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    (tj, ti), (vj, vi) = data["train"], data["val"]
    code = main(["tune", "--space", str(space), "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--train-json", tj,
                 "--train-images", ti, "--val-json", vj, "--val-images", vi, "--device", "cpu"])
    assert code == 2
    _refused(capsys, "error: --space: ", "space.yaml line 1: refused")
    assert not marker.exists() and _no_run_exists() and not (tmp_path / "optuna.db").exists()


def test_truth_and_masks_files_go_through_the_json_reader(tmp_path):
    """Truth and masks are JSON (which builds data only), read by the one reader: a broken file is a clear error
    naming it and the parameter."""
    from seizure_mlflow.commands.trace import read_truth
    from seizure_mlflow.motion.sources import TrueMaskSource

    (tmp_path / "masks.json").write_text("{'not': json}")
    with pytest.raises(UserError, match=r"^masks: .*masks.json: cannot read it as JSON"):
        TrueMaskSource(tmp_path / "masks.json")
    (tmp_path / "truth.json").write_text("[" * 100_000)  # nested past the parser's recursion limit
    with pytest.raises(UserError, match=r"^truth: .*truth.json: cannot read it as JSON"):
        read_truth(str(tmp_path / "truth.json"), [tmp_path / "clip.mp4"])


def _model_zoo_style_pickle(state: dict[str, torch.Tensor], path: Path, caffe2: bool) -> None:
    """Weights as the model zoo writes them: Detectron2's {"model": arrays, "__author__"} or Caffe2's {"blobs"}."""
    arrays = {k: v.numpy() for k, v in state.items()}
    document = {"blobs": {**arrays, "conv1_w_momentum": np.zeros(1)}} if caffe2 else {"model": arrays,
                                                                                       "__author__": "Detectron2"}
    with open(path, "wb") as fh:
        pickle.dump(document, fh, protocol=2)


@pytest.mark.parametrize("caffe2", [False, True])
def test_real_detectron2_pkl_weights_still_load(tiny_data, tmp_path, caffe2):
    from detectron2.modeling import build_model

    from seizure_mlflow.config import build_config
    from seizure_mlflow.engine.checkpoint import SafeCheckpointer
    from seizure_mlflow.user_files import check_weights_file

    cfg = build_config(tiny_params(tiny_data, tmp_path), num_classes=2, output_dir=str(tmp_path))
    source = build_model(cfg)
    path = tmp_path / "weights.pkl"
    _model_zoo_style_pickle(source.state_dict(), path, caffe2)
    check_weights_file(path)
    if caffe2:  # Caffe2 names are matched by Detectron2's heuristics; what the reader hands over is the arrays
        loaded = SafeCheckpointer(build_model(cfg))._load_file(str(path))
        assert loaded["matching_heuristics"] and set(loaded["model"]) == set(source.state_dict())
        return
    target = build_model(cfg)
    torch.nn.init.zeros_(target.backbone.bottom_up.stem.conv1.weight)
    SafeCheckpointer(target).load(str(path))
    assert torch.equal(target.backbone.bottom_up.stem.conv1.weight, source.backbone.bottom_up.stem.conv1.weight)


def test_a_torch_checkpoint_with_an_object_is_refused(tmp_path):
    from seizure_mlflow.user_files import check_weights_file

    marker = tmp_path / "PWNED"
    torch.save({"model": {}, "evil": _WritesAMarker(marker)}, tmp_path / "model.pth")
    with pytest.raises(UserError, match="model.pth: refused to load it"):
        check_weights_file(tmp_path / "model.pth")
    assert not marker.exists()


# Nothing of the user's is deleted


def test_sample_data_rerun_keeps_the_users_files(tmp_path, tracking, capsys):
    root = tmp_path / "sample"
    write_sample_dataset(root, TINY_SPEC)
    (root / "notes.txt").write_text("mine")
    (root / "annotations").mkdir()
    (root / "annotations" / "ward3.json").write_text("{}")
    (root / "images" / "my_frame.png").write_bytes(b"mine too")
    other = ["sample-data", "--output", str(root), "--num-videos", "5", "--frames-per-video", "2", "--seed", "9"]
    assert main(other) == 2
    _refused(capsys, "holds an earlier output of sample-data", "--force")
    assert main([*other, "--force"]) == 0
    assert json.loads((root / "split.json").read_text())["seed"] == 9
    assert (root / "notes.txt").read_text() == "mine" and (root / "annotations" / "ward3.json").read_text() == "{}"
    assert (root / "images" / "my_frame.png").read_bytes() == b"mine too"
    written = set(json.loads((root / OUTPUT_MARKER).read_text())["files"])
    assert "notes.txt" not in written and "train.json" in written


def test_a_forged_sample_json_does_not_make_a_folder_replaceable(tmp_path, tracking, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "sample.json").write_text("{}")
    (folder / "notes.txt").write_text("keep")
    assert main(["sample-data", "--output", str(folder), "--force"]) == 2
    _refused(capsys, "is not an earlier output of sample-data")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sample.json"]


@pytest.mark.parametrize("command", ["bundle", "trace"])
def test_bundle_and_trace_never_write_into_a_folder_of_the_users(command, tmp_path, tracking, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    args = {"bundle": ["bundle", "--model-uri", "models:/none@champion", "--output", str(out)],
            "trace": ["trace", "--input", str(tmp_path / "missing.mp4"), "--output", str(out)]}[command]
    assert main(args) == 2
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep"


def test_predict_never_replaces_a_file_without_force(tmp_path, tracking, capsys):
    (tmp_path / "frames").mkdir()
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "notes.txt")
    (tmp_path / "results.json").write_text("the user's")
    args = ["predict", "--model-uri", "models:/none@champion", "--input", str(tmp_path / "frames"), "--output",
            str(tmp_path / "results.json")]
    assert main(args) == 2
    _refused(capsys, "error: --output: ", "results.json exists", "--force")
    assert (tmp_path / "results.json").read_text() == "the user's" and (tmp_path / "notes.txt").exists()


# One training per output folder


def test_a_second_training_into_a_locked_folder_is_refused_naming_the_first(data, tmp_path, tracking, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                 "started": "2026-12-01 10:00:00"}))
        assert main(_train_args(data, out)) == 2
        _refused(capsys, "error: --output-dir: ", "is in use by another training", f"process {holder.pid} on "
                 f"{socket.gethostname()}")
        assert _no_run_exists() and (out / LOCK_FILE).exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "?"}))
    with OutputFolderLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"process {os.getpid()} on"):
            OutputFolderLock(tmp_path).__enter__()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_finished_runs_folder_is_refused_without_resume(data, tmp_path, tracking, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow_run.json").write_text(json.dumps({"run_id": "a" * 32}))
    (out / "last_checkpoint").write_text("model_final.pth")
    (out / "model_final.pth").write_bytes(b"their checkpoint")
    assert main(_train_args(data, out)) == 2
    _refused(capsys, "error: --output-dir: ", f"holds the checkpoints of run {'a' * 32}", "--resume")
    assert (out / "model_final.pth").read_bytes() == b"their checkpoint" and _no_run_exists()


# Checkpoints written whole


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path):
    from seizure_mlflow.engine.checkpoint import DiskFullError, save_atomically

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the disk-full path is untested on this machine")
    try:
        save_atomically({"w": torch.ones(1000)}, str(disk / "model_best.pth"))
        with pytest.raises(DiskFullError, match=r"disk full: could not write model_best.pth in .*free, a checkpoint "
                                                r"needs about 8 MB\); the previous checkpoint there is intact"):
            save_atomically({"w": torch.ones(2_000_000)}, str(disk / "model_best.pth"), expected_bytes=8 * 2**20)
        assert torch.equal(torch.load(disk / "model_best.pth", weights_only=True)["w"], torch.ones(1000))
        assert sorted(p.name for p in disk.iterdir()) == ["model_best.pth"]  # no temporary file left
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_training_checks_free_space_for_two_checkpoints(tmp_path):
    from seizure_mlflow.engine.checkpoint import DiskFullError, check_free_space

    free = shutil.disk_usage(tmp_path).free
    check_free_space(str(tmp_path), checkpoint_bytes=free // 4)
    with pytest.raises(DiskFullError, match="needs room for 2"):
        check_free_space(str(tmp_path), checkpoint_bytes=free // 2 + 2**20)


@pytest.mark.slow
def test_training_on_a_full_disk_ends_with_disk_full_and_the_last_good_checkpoint(tiny_data, tmp_path, tracking):
    """A small tmpfs: room for the up-front check (two checkpoints) but not for the run's later ones."""
    from detectron2.modeling import build_model

    from seizure_mlflow.commands.train import run_training
    from seizure_mlflow.config import build_config
    from seizure_mlflow.engine.checkpoint import DiskFullError, state_bytes

    params = tiny_params(tiny_data, tmp_path, max_iter=16, eval_period=2)
    model_bytes = state_bytes(build_model(build_config(params, num_classes=2, output_dir="")))
    disk = tmp_path / "disk"
    disk.mkdir()
    size = 5 * model_bytes + 2 * 2**20
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root); the full-disk training path is untested here")
    try:
        with pytest.raises(DiskFullError, match=r"disk full: could not write .*\.pth in .*; the previous checkpoint "
                                                r"there is intact"):
            run_training(params.replace(output_dir=str(disk / "out")))
        out = disk / "out"
        last = (out / "last_checkpoint").read_text().strip()
        state = torch.load(out / last, map_location="cpu", weights_only=True)
        assert "model" in state and state["iteration"] >= 1
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "a partial checkpoint was left"
        for checkpoint in out.glob("*.pth"):  # none truncated (model_best.pth included)
            assert "model" in torch.load(checkpoint, map_location="cpu", weights_only=True), checkpoint.name
        [run] = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()])
        assert run.info.status == "FAILED" and not (out / LOCK_FILE).exists()
    finally:  # lazily: Detectron2's logger keeps log.txt open there
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_yaml_file_nested_past_the_parsers_limit_is_refused_naming_it(tmp_path):
    from seizure_mlflow.user_files import read_yaml

    (tmp_path / "space.yaml").write_text("a: " + "[" * 20_000 + "]" * 20_000)
    with pytest.raises(UserError, match=r"^space: .*space.yaml: nested too deeply"):
        read_yaml(tmp_path / "space.yaml", param="space")
