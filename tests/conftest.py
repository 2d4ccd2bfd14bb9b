"""Shared fixtures: a tiny sample dataset, a tiny Mask R-CNN, and a private MLflow store per test.

Everything is real: real Detectron2 training steps, a real SQLite-backed MLflow tracking store and model
registry, real files. The model is only made small (ResNet-18, narrow heads, 64 px images) so that a
training iteration takes well under a second on a laptop CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import mlflow
import pytest
from hypothesis import settings

from seizure_mlflow.config import TrainParams
from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

# Property-based tests (tests/test_fuzz.py): the same inputs on every run unless HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]

# Detectron2 overrides that shrink the bundled CPU demo model further for tests.
TINY_OPTS = (
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "4",
)
TINY_SPEC = SampleSpec(num_videos=5, frames_per_video=2, width=96, height=72, seed=3)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """``{split: (json, image_root)}`` of a 5-video, 10-frame sample dataset (3/1/1 videos)."""
    root = write_sample_dataset(tmp_path_factory.mktemp("data") / "sample", TINY_SPEC)
    return sample_paths(root)


def tiny_params(tiny_data, tmp_path, **changes) -> TrainParams:
    (train_json, train_images), (val_json, val_images) = tiny_data["train"], tiny_data["val"]
    base = dict(train_json=train_json, train_images=train_images, val_json=val_json, val_images=val_images,
                lr=0.01, ims_per_batch=2, max_iter=6, eval_period=2, min_size=64, device="cpu", seed=1,
                model_name="test-detector", opts=TINY_OPTS, output_dir=str(tmp_path / "output"),
                val_max_images="0")  # the whole set: runs compared with each other validate on the same frames
    base.update(changes)
    return TrainParams(**base)


_EMPTY_STORE: list[Path] = []


def _new_store(path: Path) -> None:
    """An empty MLflow store at ``path``, its Default experiment's artifacts in ``path``'s folder/mlruns: a copy of
    one store made (and migrated, about 1 s) once per test session, as MLflow would make it in that folder."""
    if not _EMPTY_STORE:
        folder = Path(tempfile.mkdtemp(prefix="empty-mlflow-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
        _EMPTY_STORE.append(folder / "mlflow.db")
    shutil.copyfile(_EMPTY_STORE[0], path)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(path.parent / "mlruns" / "0"),))


@contextlib.contextmanager
def private_tracking_store(root: Path) -> Iterator[str]:
    """For the block: a private SQLite tracking store + registry in ``root`` (artifacts in root/mlruns), the
    working folder ``root``; MLflow's URIs, the environment and the folder are restored afterwards."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    if not (root / "mlflow.db").exists():
        _new_store(root / "mlflow.db")
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])


@pytest.fixture
def tracking(tmp_path) -> Iterator[str]:
    """A private store for one test (see :func:`private_tracking_store`). Returns its URI."""
    with private_tracking_store(tmp_path) as uri:
        yield uri


def venv_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess that runs this venv's commands."""
    # mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_*_URI; a subprocess gets only what it is given.
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.update(extra)
    return env
