"""A registered model that runs where the project is not installed: served from a venv holding only MLflow
and uv (`--env-manager uv` builds its environment from the model alone), its Docker build context, and an
offline bundle installed with `pip --no-index`. Each must give the detections the project's own venv gives."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import matplotlib
import mlflow
import pandas as pd
import pytest

from conftest import REPO, TINY_OPTS, private_tracking_store, tiny_params, venv_env
from helpers.servers import free_port
from seizure_mlflow.commands.train import run_training

pytestmark = pytest.mark.slow
MLFLOW_ONLY = REPO / ".venv-mlflow-only"
NAME = "anywhere"
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
needs_mlflow_only = pytest.mark.skipif(not (MLFLOW_ONLY / "bin" / "uv").exists(),
                                       reason="no venv with only mlflow and uv: `make mlflow-only-env` builds it")


@pytest.fixture(scope="module")
def registered(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("anywhere")
    with private_tracking_store(root) as uri:
        # Every detection kept (a 10-iteration model is not confident): there must be something to compare.
        opts = TINY_OPTS + ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10")
        run_training(tiny_params(tiny_data, root, model_name=NAME, max_iter=10, eval_period=5, system_metrics=False,
                                 opts=opts))
        images = [PHOTO.read_bytes(), Path(tiny_data["test"][1], "video_04", "frame_000000.png").read_bytes()]
        expected = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(pd.DataFrame({"image": images}))
        yield {"root": root, "uri": uri, "images": images, "expected": expected}


def _bare_env(registered, tmp_path) -> dict[str, str]:
    """A process that has MLflow and uv and nothing of this project."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=os.pathsep.join([str(MLFLOW_ONLY / "bin"), *path]), MLFLOW_TRACKING_URI=registered["uri"],
               MLFLOW_ENV_ROOT=str(tmp_path / "envs"), MLFLOW_DISABLE_TELEMETRY="true")
    return env


def _serve_and_ask(cmd: list[str], env: dict, cwd: Path, port: int, images: list[bytes], wait_s: int) -> list:
    log = open(cwd / "serve.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        deadline = time.time() + wait_s
        while True:
            assert server.poll() is None, (cwd / "serve.log").read_text()[-4000:]
            assert time.time() < deadline, (cwd / "serve.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(2)
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(i).decode()] for i in images]}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())["predictions"]
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        except ProcessLookupError:
            pass
        server.wait(timeout=60)


def _same_detections(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for image_got, image_expected in zip(got, expected):
        assert len(image_got) == len(image_expected)
        for a, b in zip(image_got, image_expected):
            assert (a["category_id"], a["segmentation"]) == (b["category_id"], b["segmentation"])
            assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["score"] == pytest.approx(b["score"], abs=1e-5)


@pytest.fixture(scope="module")
def registered_lazy(tiny_data, tmp_path_factory):
    """A LazyConfig model (the package's cpu_lazy.py): its network travels as data in its config."""
    root = tmp_path_factory.mktemp("anywhere-lazy")
    with private_tracking_store(root) as uri:
        opts = ("model.roi_heads.box_predictor.test_score_thresh=0.0",
                "model.roi_heads.box_predictor.test_topk_per_image=10")
        run_training(tiny_params(tiny_data, root, model_name=NAME, max_iter=10, eval_period=5, system_metrics=False,
                                 config="cpu_lazy.py", opts=opts))
        images = [PHOTO.read_bytes(), Path(tiny_data["test"][1], "video_04", "frame_000000.png").read_bytes()]
        expected = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(pd.DataFrame({"image": images}))
        yield {"root": root, "uri": uri, "images": images, "expected": expected}


@needs_mlflow_only
@pytest.mark.parametrize("model", ["registered", "registered_lazy"])
def test_served_with_uv_from_a_python_without_the_project_gives_the_same_detections(model, request, tmp_path):
    registered = request.getfixturevalue(model)
    env = _bare_env(registered, tmp_path)
    cannot = subprocess.run([str(MLFLOW_ONLY / "bin" / "python"), "-c", "import seizure_mlflow"], capture_output=True,
                            text=True, cwd=tmp_path, env=env)
    assert cannot.returncode != 0 and "No module named 'seizure_mlflow'" in cannot.stderr
    port = free_port()
    got = _serve_and_ask([str(MLFLOW_ONLY / "bin" / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
                          "--env-manager", "uv", "--host", "127.0.0.1", "-p", str(port)], env, tmp_path, port,
                         registered["images"], wait_s=1500)
    assert any(registered["expected"]), "the tiny model found nothing: nothing to compare"
    _same_detections(got, registered["expected"])


@needs_mlflow_only
def test_docker_build_context_installs_the_model_with_its_detectron2_wheel(registered, tmp_path):
    env = _bare_env(registered, tmp_path)
    proc = subprocess.run([str(MLFLOW_ONLY / "bin" / "mlflow"), "models", "generate-dockerfile", "-m",
                           f"models:/{NAME}@champion", "-d", str(tmp_path / "docker")], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dockerfile = (tmp_path / "docker" / "Dockerfile").read_text()
    model = tmp_path / "docker" / "model_dir"
    requirements = next(model.rglob("requirements.txt")).read_text().split()
    assert "artifacts/sal_detectron2-0.7.2-py3-none-any.whl" in requirements and "torch==2.14.1" in requirements
    assert next(model.rglob("sal_detectron2-0.7.2-py3-none-any.whl")).stat().st_size > 1_000_000
    assert next(model.rglob("code")).is_dir() and "model_dir" in dockerfile
    staged = [p for p in model.rglob("seizure_mlflow")]
    assert staged and not any((p / "commands").exists() or (p / "engine").exists() for p in staged)  # inference only


def test_offline_bundle_installs_without_an_index_and_serves(registered, tmp_path):
    bundle = tmp_path / "bundle"
    made = subprocess.run([sys.executable, "-m", "seizure_mlflow", "bundle", "--model-uri", f"models:/{NAME}@champion",
                           "--output", str(bundle)], capture_output=True, text=True, timeout=1200, cwd=tmp_path,
                          env=venv_env(MLFLOW_TRACKING_URI=registered["uri"]))
    assert made.returncode == 0, made.stderr[-3000:]
    assert (bundle / "model" / "MLmodel").exists() and any((bundle / "wheels").glob("torch-2.14.1-*.whl"))
    offline = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MLFLOW_", "VIRTUAL_ENV"))}
    offline.update(PIP_CONFIG_FILE=os.devnull, PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                                      if ".venv" not in p))
    port = free_port()
    got = _serve_and_ask(["bash", str(bundle / "install.sh"), "--serve"], {**offline, "PORT": str(port)}, tmp_path,
                         port, registered["images"], wait_s=1200)
    _same_detections(got, registered["expected"])
