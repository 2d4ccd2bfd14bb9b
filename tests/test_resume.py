"""A run killed mid-way continues with --resume: same MLflow run, every metric step once, same best model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TINY_OPTS, venv_env

pytestmark = pytest.mark.slow  # killed and resumed training subprocesses

MAX_ITER, EVAL_PERIOD = 24, 4


# the yacs CPU demo made tiny, and the LazyConfig one (its random large-scale jitter resumed too)
CONFIGS = {"cpu_demo.yaml": " ".join(TINY_OPTS), "cpu_lazy.py": "SOLVER.CHECKPOINT_PERIOD=4"}


def _command(tiny_data, out: Path, model_name: str, *extra: str, config: str = "cpu_demo.yaml") -> list[str]:
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    return [sys.executable, "-m", "seizure_mlflow", "train", "--train-json", tj, "--train-images", ti, "--val-json", vj,
            "--val-images", vi, "--max-iter", str(MAX_ITER), "--eval-period", str(EVAL_PERIOD), "--min-size", "64",
            "--device", "cpu", "--lr", "0.01", "--seed", "1", "--model-name", model_name, "--output-dir", str(out),
            "--config", config, "--opts", CONFIGS[config],
            "--val-max-images", "0", *extra]  # a sample sized by timing would differ


def _run(cmd, tracking, cwd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=venv_env(MLFLOW_TRACKING_URI=tracking), **kw)


def _start(cmd, tracking, cwd, log: Path):
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd,
                            env=venv_env(MLFLOW_TRACKING_URI=tracking))


def _wait_for_checkpoint(out: Path, proc, at_least: int, log: Path) -> int:
    """Wait until the last checkpoint is at ``at_least`` iterations or more; return its iteration count."""
    deadline = time.time() + 300
    while time.time() < deadline:
        marker = out / "last_checkpoint"
        if marker.exists():
            name = marker.read_text().strip()
            if name.startswith("model_0") and int(name[6:13]) + 1 >= at_least:
                return int(name[6:13]) + 1
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def _steps(run_id: str, key: str) -> list[int]:
    return [m.step for m in MlflowClient().get_metric_history(run_id, key)]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_data, tracking, tmp_path, config):
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    proc = _start(_command(tiny_data, out, "resumed", config=config), tracking, tmp_path, log)
    checkpoint = _wait_for_checkpoint(out, proc, 8, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint < MAX_ITER, "the run finished before it could be killed"
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"  # what a SIGKILL leaves
    assert (out / ".seizure-mlflow.lock").exists()  # and its lock: a dead process's, taken over by the resume
    (out / "notes.txt").write_text("mine")

    resumed = _run(_command(tiny_data, out, "resumed", "--resume", config=config), tracking, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "notes.txt").read_text() == "mine" and not (out / ".seizure-mlflow.lock").exists()
    assert f"Run {run_id}" in resumed.stdout
    reference = _run(_command(tiny_data, tmp_path / "reference", "reference", config=config), tracking, tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    ref_id = json.loads((tmp_path / "reference" / "mlflow_run.json").read_text())["run_id"]

    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("train/total_loss", "train/loss_mask", "train/lr"):
        assert _steps(run_id, key) == list(range(1, MAX_ITER + 1)), key
    assert _steps(run_id, "val/total_loss") == list(range(EVAL_PERIOD, MAX_ITER + 1, EVAL_PERIOD))
    val = {m.step: m.value for m in client.get_metric_history(run_id, "val/total_loss")}
    ref_val = {m.step: m.value for m in client.get_metric_history(ref_id, "val/total_loss")}
    assert val == pytest.approx(ref_val, rel=1e-5)
    resumed_version = client.get_model_version_by_alias("resumed", "champion")
    reference_version = client.get_model_version_by_alias("reference", "champion")
    assert resumed_version.tags["best_iteration"] == reference_version.tags["best_iteration"]
    assert resumed_version.tags["run_id"] == run_id


def test_sigterm_saves_a_checkpoint_and_ends_the_run_killed(tiny_data, tracking, tmp_path):
    out, log = tmp_path / "stopped", tmp_path / "stopped.log"
    proc = _start(_command(tiny_data, out, "stopped"), tracking, tmp_path, log)
    _wait_for_checkpoint(out, proc, 4, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "continue with --resume" in text and "Traceback" not in text
    run_id = json.loads((out / "mlflow_run.json").read_text())["run_id"]
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    assert MlflowClient().get_run(run_id).data.tags["seizure.stop_reason"] == "signal"
    stopped_at = int((out / "last_checkpoint").read_text().strip()[6:13]) + 1
    assert 4 <= stopped_at < MAX_ITER
    train_steps = _steps(run_id, "train/total_loss")
    assert train_steps == list(range(1, stopped_at + 1))  # everything up to the stop was flushed

    resumed = _run(_command(tiny_data, out, "stopped", "--resume"), tracking, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert _steps(run_id, "train/total_loss") == list(range(1, MAX_ITER + 1))
    assert MlflowClient().get_run(run_id).data.tags["seizure.stop_reason"] == "max_iter"


@pytest.mark.parametrize("monitor", ["val/total_loss", "val/segm/AP"])
def test_the_patience_count_survives_a_kill_and_resume(tiny_data, tracking, tmp_path, monitor):
    """No change of the monitored metric reaches min_delta (a loss cannot fall, an AP cannot rise, by 1e6): after
    the first validation (4) none counts as an improvement, so with patience 3 training stops at 16.
    Killed after a checkpoint at 8 or 12 (one or two validations without improvement) and resumed, it stops
    at 16 still; a count that restarted would run to 24."""
    out, log = tmp_path / "patient", tmp_path / "patient.log"
    extra = ("--patience", "3", "--min-delta", "1e6", "--monitor", monitor)
    proc = _start(_command(tiny_data, out, "patient", *extra), tracking, tmp_path, log)
    checkpoint = _wait_for_checkpoint(out, proc, 8, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 8 <= checkpoint < 16, "killed too late to test the resume"
    resumed = _run(_command(tiny_data, out, "patient", *extra, "--resume"), tracking, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = MlflowClient().get_run(json.loads((out / "mlflow_run.json").read_text())["run_id"])
    assert run.data.tags["seizure.stop_reason"] == "early_stopping"
    assert run.data.metrics["stopped_at"] == 16
    assert _steps(run.info.run_id, monitor) == [4, 8, 12, 16] and run.data.tags["seizure.monitor"] == monitor
    assert f"best/{monitor.replace('/', '_')}" in run.data.metrics


def test_resume_without_checkpoint_is_a_clear_error(tiny_data, tracking, tmp_path):
    proc = _run(_command(tiny_data, tmp_path / "empty", "nothing", "--resume"), tracking, tmp_path)
    assert proc.returncode == 2 and "no checkpoint in" in proc.stderr
