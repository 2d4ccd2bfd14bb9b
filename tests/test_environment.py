"""The project's environment: one set of pins across its files, and `mlflow run --env-manager uv` building it
from the project alone, from a venv that holds only MLflow and uv."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import REPO, TINY_OPTS
from seizure_mlflow.registry.environment import DETECTRON2_WHEEL, model_requirements

MLFLOW_ONLY = REPO / ".venv-mlflow-only"


def _conda_pins() -> dict[str, str]:
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    [pip] = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict)]
    pins = {}
    for line in pip:
        if line in (".", "pip"):
            continue
        req = Requirement(line)
        pins[req.name.lower()] = str(req.specifier)
    return pins


def _pins_in(text: str) -> dict[str, str]:
    return {m.group(1).lower(): f"=={m.group(2)}" for m in re.finditer(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"']*)", text)}


def test_conda_yaml_is_an_environment_every_manager_reads():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert conda["name"] == "seizure-mlflow" and "conda-forge" in conda["channels"]
    assert not any(isinstance(d, str) and d.startswith("python") for d in conda["dependencies"]), \
        "a python= pin would tie uv and virtualenv to one Python version"
    from mlflow.utils.environment import _PythonEnv

    python_env = _PythonEnv.from_conda_yaml(str(REPO / "conda.yaml"))
    assert "torch==2.14.1" in python_env.dependencies and "." in python_env.dependencies


def test_pins_agree_across_conda_yaml_pyproject_makefile_install_script_and_the_model():
    conda = _conda_pins()
    setup = _pins_in((REPO / "Makefile").read_text()) | _pins_in((REPO / "scripts" / "install_detectron2.sh").read_text())
    for name in ("torch", "torchvision", "fvcore", "iopath", "opencv-python-headless"):
        assert conda[name] == setup[name], f"{name}: conda.yaml {conda[name]} vs make setup {setup[name]}"
    pyproject = {Requirement(r).name.lower(): Requirement(r).specifier
                 for r in _pyproject()["project"]["dependencies"]}
    for name, spec in conda.items():
        if name in pyproject:
            version = spec.removeprefix("==")
            assert spec.startswith("==") and version in pyproject[name], f"{name}{spec} vs pyproject {pyproject[name]}"
    logged = model_requirements(wheel_in_model=True)  # what log_detector writes into requirements.txt
    assert f"artifacts/{DETECTRON2_WHEEL}" in logged
    model = {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in logged if not r.endswith(".whl")}
    for name in ("torch", "torchvision", "mlflow", "opencv-python-headless"):
        assert model[name] == conda[name], f"{name}: the registered model requires {model[name]}, conda.yaml {conda[name]}"


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.slow
@pytest.mark.skipif(not (MLFLOW_ONLY / "bin" / "uv").exists(),
                    reason="no venv with only mlflow and uv: `make mlflow-only-env` builds it (.ci/run does)")
def test_mlflow_run_with_uv_builds_the_environment_then_reuses_it(tiny_data, tmp_path):
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    system_path = [p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=os.pathsep.join([str(MLFLOW_ONLY / "bin"), *system_path]), MLFLOW_TRACKING_URI=uri,
               MLFLOW_ENV_ROOT=str(tmp_path / "envs"), MLFLOW_DISABLE_TELEMETRY="true")
    cmd = [str(MLFLOW_ONLY / "bin" / "mlflow"), "run", str(REPO), "--env-manager", "uv", "--experiment-name", "uv",
           "-P", "max_iter=4", "-P", "eval_period=2", "-P", "min_size=64", "-P", "device=cpu", "-P", "model_name=uv-model",
           "-P", f"train_json={tj}", "-P", f"train_images={ti}", "-P", f"val_json={vj}", "-P", f"val_images={vi}",
           "-P", f"opts={' '.join(TINY_OPTS)}"]
    seconds = []
    for attempt in range(2):
        started = time.time()
        proc = subprocess.run([*cmd, "-P", f"output_dir={tmp_path / f'out{attempt}'}"], capture_output=True, text=True,
                              timeout=1500, cwd=tmp_path, env=env)
        seconds.append(time.time() - started)
        assert proc.returncode == 0, proc.stderr[-5000:]
    assert "already exists" in proc.stderr  # the second run found the environment the first one built
    assert len(list((tmp_path / "envs").glob("*"))) == 1
    (tmp_path / "uv_times.json").write_text(json.dumps({"first_s": seconds[0], "second_s": seconds[1]}))
    print(f"mlflow run --env-manager uv: first {seconds[0]:.0f} s (builds the environment), second {seconds[1]:.0f} s")

    from mlflow import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("uv").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert all(r.data.tags["mlflow.project.env"] == "uv" for r in runs)
    assert all([m.step for m in client.get_metric_history(r.info.run_id, "val/total_loss")] == [2, 4] for r in runs)
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'uv-model'")) == ["1", "2"]
