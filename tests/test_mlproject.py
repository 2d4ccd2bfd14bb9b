"""`mlflow run .` end to end: parameters reach the config, validation points land, bad input fails early."""

from __future__ import annotations

import subprocess

import pytest
from mlflow import MlflowClient

from conftest import REPO, TINY_OPTS, TINY_SPEC, venv_env
from seizure_mlflow.sample.scenes import write_sample_exports

pytestmark = pytest.mark.slow  # `mlflow run` subprocesses


def _mlflow_run(tracking, cwd, *params: str, timeout: int = 600, entry_point: str = "main") -> subprocess.CompletedProcess:
    cmd = ["mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local", "--experiment-name", "mlproject-test"]
    for p in params:
        cmd += ["-P", p]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=venv_env(MLFLOW_TRACKING_URI=tracking))


def _data_params(tiny_data) -> list[str]:
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    return [f"train_json={tj}", f"train_images={ti}", f"val_json={vj}", f"val_images={vi}"]


def _runs():
    client = MlflowClient()
    experiment = client.get_experiment_by_name("mlproject-test")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_prepare_then_main_round_trip(tracking, tmp_path):
    """Per-video exports (videos + COCO) -> `-e prepare` -> `main` trains on its output."""
    exports = write_sample_exports(tmp_path / "exports", TINY_SPEC)
    prepared = tmp_path / "prepared"
    proc = _mlflow_run(tracking, tmp_path, f"input={exports}", f"output={prepared}", entry_point="prepare")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "split  videos  frames  instances" in proc.stdout
    [prepare_run] = _runs()
    assert prepare_run.data.metrics["train/videos"] == 3

    data = [f"train_json={prepared / 'train.json'}", f"train_images={prepared / 'images'}",
            f"val_json={prepared / 'val.json'}", f"val_images={prepared / 'images'}"]
    proc = _mlflow_run(tracking, tmp_path, "lr=0.001", "max_iter=12", "eval_period=4", "min_size=64", "device=cpu",
                       "model_name=mlproject-detector", f"opts={' '.join(TINY_OPTS)}", f"output_dir={tmp_path / 'out'}",
                       *data)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = next(r for r in _runs() if r.info.run_id != prepare_run.info.run_id)
    client = MlflowClient()
    assert run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001"  # logged by `mlflow run` itself
    assert run.data.params["SOLVER.BASE_LR"] == "0.001"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/total_loss")] == [4, 8, 12]
    assert "eta:" in proc.stderr + proc.stdout  # console progress with an ETA
    version = client.get_model_version_by_alias("mlproject-detector", "champion")
    assert version.tags["run_id"] == run.info.run_id


@pytest.mark.parametrize("bad,message", [
    ("lr=abc", "lr must be a number, got 'abc'"),
    ("eval_period=0", "eval_period must be a positive integer, got 0"),
    ("train_json=/no/such/train.json", "/no/such/train.json: COCO file not found"),
])
def test_bad_parameters_fail_before_training(tiny_data, tracking, tmp_path, bad, message):
    params = dict(p.split("=", 1) for p in _data_params(tiny_data))
    key, value = bad.split("=", 1)
    params[key] = value
    proc = _mlflow_run(tracking, tmp_path, *(f"{k}={v}" for k, v in params.items()), "device=cpu", timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Starting training" not in proc.stderr
    assert "Traceback" not in proc.stderr.split("=== Run (ID")[0]
    [run] = _runs()
    assert run.info.status == "FAILED"
