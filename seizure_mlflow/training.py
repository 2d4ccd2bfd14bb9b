"""A whole training run, as one plain function: check data, build config, train, log, register.

Order matters for users: every input is checked (datasets, parameters, config) *before* an MLflow run is
started or attached, so bad input fails fast and leaves no run RUNNING. Under ``mlflow run`` the run
already exists; ``mlflow run`` marks it FAILED when this command exits non-zero.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from dataclasses import dataclass

import mlflow
import torch
from mlflow import MlflowClient

from seizure_mlflow.config import TRAIN_DATASET, VAL_DATASET, TrainParams, build_config
from seizure_mlflow.data.checks import CocoSummary, check_coco, check_same_categories, file_digest
from seizure_mlflow.data.sample import DEFAULT_SAMPLE_DIR, sample_paths, write_sample_dataset
from seizure_mlflow.errors import UserError
from seizure_mlflow.tracking.run import active_run, log_config, log_losses

logger = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # in OUTPUT_DIR: which MLflow run these checkpoints belong to
BEST_VAL_METRIC = "best/val_total_loss"
BEST_ITER_METRIC = "best/iteration"


@dataclass(frozen=True)
class Datasets:
    train: CocoSummary
    val: CocoSummary
    is_sample: bool


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    output_dir: str
    best_val_total_loss: float
    best_iteration: int
    model_name: str
    model_version: str
    model_alias: str


def check_datasets(params: TrainParams, sample_dir: str = DEFAULT_SAMPLE_DIR) -> Datasets:
    """Check the training and validation COCO files (writing the sample data first if none are given)."""
    if params.train_json:
        train = check_coco(params.train_json, params.train_images)
        val = check_coco(params.val_json, params.val_images)
        is_sample = False
    else:
        paths = sample_paths(write_sample_dataset(sample_dir))
        train, val = check_coco(*paths["train"]), check_coco(*paths["val"])
        is_sample = True
    check_same_categories(train, val)
    return Datasets(train=train, val=val, is_sample=is_sample)


def check_test_set(test_json: str, test_images: str, sample_dir: str = DEFAULT_SAMPLE_DIR) -> CocoSummary:
    """The given test COCO file, or the sample data's test split (written first if missing)."""
    if test_json:
        return check_coco(test_json, test_images)
    return check_coco(*sample_paths(write_sample_dataset(sample_dir))["test"])


def build_trainer(cfg, datasets: Datasets, extra_writers=None, validate: bool = True):
    """Register the datasets, seed every RNG from ``cfg.SEED`` (plus the rank), and build the trainer."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from seizure_mlflow.data.catalog import register_coco
    from seizure_mlflow.engine.trainer import Trainer

    register_coco(TRAIN_DATASET, datasets.train)
    register_coco(VAL_DATASET, datasets.val)
    seed_all_rng(cfg.SEED + comm.get_rank())
    return Trainer(cfg, extra_writers=extra_writers, validate=validate)


def _train_worker(cfg, run_id: str, tracking_uri: str, datasets: Datasets, resume: bool = False) -> None:
    """Runs in every training process (one, or one per GPU under Detectron2's ``launch``)."""
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    from seizure_mlflow.tracking.writer import MlflowWriter

    mlflow.set_tracking_uri(tracking_uri)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    mlflow_writer = MlflowWriter(run_id, skip_logged=resume) if comm.is_main_process() else None
    trainer = build_trainer(cfg, datasets, extra_writers=(lambda: [mlflow_writer]) if mlflow_writer else None)
    trainer.resume_or_load(resume=resume)
    try:
        trainer.train()
    finally:
        if mlflow_writer is not None:
            mlflow_writer.drain()


def best_checkpoint(output_dir: str) -> tuple[str, int]:
    """Path and iteration (iterations completed) of the best checkpoint a run saved."""
    path = os.path.join(output_dir, "model_best.pth")
    if not os.path.isfile(path):
        raise RuntimeError(f"no best checkpoint in {output_dir}: no finite validation loss was computed")
    iteration = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iteration"]  # no full read
    return path, int(iteration) + 1


def check_tracking_server(timeout_s: float = 5) -> None:
    """Fail fast, before any work, when the tracking URI is an HTTP server that does not answer."""
    import urllib.error
    import urllib.parse
    import urllib.request

    uri = mlflow.get_tracking_uri()
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https"):
        return
    shown = f"{parsed.scheme}://{parsed.hostname}{':' + str(parsed.port) if parsed.port else ''}"  # no credentials
    try:
        with urllib.request.urlopen(f"{shown}{parsed.path.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answers (an auth proxy may refuse /health without credentials)
    except OSError as exc:
        raise UserError(f"MLflow tracking server {shown} is unreachable ({getattr(exc, 'reason', exc)}); start it "
                        "(`make stack-up` for the local stack) or point MLFLOW_TRACKING_URI elsewhere") from None


def run_to_resume(output_dir: str) -> str:
    """The MLflow run id that the checkpoints in ``output_dir`` belong to; a clear error if none can be resumed."""
    if not output_dir:
        raise UserError("--resume needs the --output-dir of the run to continue")
    if not os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        raise UserError(f"--resume: no checkpoint in {output_dir} (no last_checkpoint file); nothing to continue")
    try:
        with open(os.path.join(output_dir, RUN_FILE)) as fh:
            return json.load(fh)["run_id"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"--resume: {output_dir}/{RUN_FILE} is missing or unreadable; which MLflow run is this?") from None


def run_training(params: TrainParams, num_processes: int = 1, sample_dir: str = DEFAULT_SAMPLE_DIR,
                 resume: bool = False) -> TrainResult:
    """Train, log and register. With ``resume``, continue the run whose checkpoints are in ``output_dir``
    from its last checkpoint, in the same MLflow run."""
    from detectron2.engine import launch

    from seizure_mlflow.inference.predictor import Detector
    from seizure_mlflow.registry.register import CHAMPION, log_and_register

    check_tracking_server()
    datasets = check_datasets(params, sample_dir)
    test = check_coco(params.test_json, params.test_images) if params.test_json else None
    if test is not None:
        check_same_categories(datasets.train, test)
    if num_processes < 1:
        raise UserError(f"num_processes must be >= 1, got {num_processes}")
    resume_run_id = run_to_resume(params.output_dir) if resume else None
    wrapper = os.environ.get("MLFLOW_RUN_ID")
    if resume_run_id and wrapper and wrapper != resume_run_id:
        # `mlflow run -P resume=true` made a new run for this command: point it at the run that continues.
        MlflowClient().set_tag(wrapper, "seizure.continues_run", resume_run_id)
    cfg = build_config(params, num_classes=len(datasets.train.categories), output_dir="")
    categories = [{"id": cid, "name": name} for cid, name in datasets.train.categories]

    tags = {
        "seizure.config": params.config,
        "seizure.dataset": "sample" if datasets.is_sample else "custom",
        "seizure.train_digest": file_digest(datasets.train.json_path),
        "seizure.val_digest": file_digest(datasets.val.json_path),
    }
    with active_run(run_name="train", tags=tags, run_id=resume_run_id) as run:
        run_id = run.info.run_id
        cfg = cfg.clone()
        cfg.defrost()
        cfg.OUTPUT_DIR = os.path.abspath(params.output_dir or os.path.join("output", run_id))
        cfg.freeze()
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, RUN_FILE), "w") as fh:
            json.dump({"run_id": run_id}, fh)
        log_config(cfg)
        logger.info("MLflow run %s; checkpoints in %s", run_id, cfg.OUTPUT_DIR)
        worker_args = (cfg, run_id, mlflow.get_tracking_uri(), datasets, resume)
        try:
            if num_processes == 1:
                _train_worker(*worker_args)
            else:
                launch(_train_worker, num_processes, dist_url="auto", args=worker_args)
        finally:
            # Even a failed run keeps the curves it got so far.
            has_best = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_best.pth"))
            best = best_checkpoint(cfg.OUTPUT_DIR) if has_best else None
            log_losses(run_id, best[1] if best else None)

        checkpoint, best_iteration = best or best_checkpoint(cfg.OUTPUT_DIR)
        weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]  # read once, used below
        val_history = {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "val/total_loss")}
        best_val = val_history[best_iteration]
        mlflow.log_metrics({BEST_VAL_METRIC: best_val, BEST_ITER_METRIC: best_iteration}, step=params.max_iter)
        version = log_and_register(cfg, weights, categories, params.model_name, {
            "val_total_loss": f"{best_val:.6g}",
            "best_iteration": str(best_iteration),
            "run_id": run_id,
            "config": params.config,
        })
        alias = CHAMPION if CHAMPION in version.aliases else "challenger"
        if params.log_images:
            _log_validation_images(Detector(cfg, weights, categories), datasets.val, run_id)
        if test is not None:
            alias = _evaluate_and_promote(Detector(cfg, weights, categories), test, run_id, params.model_name,
                                          str(version.version))
    return TrainResult(run_id=run_id, output_dir=cfg.OUTPUT_DIR, best_val_total_loss=best_val,
                       best_iteration=best_iteration, model_name=params.model_name,
                       model_version=str(version.version), model_alias=alias)


def _evaluate_and_promote(detector, test: CocoSummary, run_id: str, model_name: str, version: str) -> str:
    """Test AP of the best checkpoint on the training run and its version; then champion/challenger promotion.

    Returns the alias the new version holds afterwards.
    """
    from seizure_mlflow.evaluation import evaluate_and_record, summary_line
    from seizure_mlflow.registry.promote import promote

    result = evaluate_and_record(detector, test, run_id, (model_name, version))
    logger.info("Test set: %s", summary_line(result))
    decision = promote(model_name, test)
    logger.info("Promotion: %s", decision.message(model_name))
    aliases = MlflowClient().get_model_version(model_name, version).aliases
    return "champion" if "champion" in aliases else ("challenger" if "challenger" in aliases else "")


def _log_validation_images(detector, val: CocoSummary, run_id: str, count: int = 4) -> None:
    """Only with ``--log-images``: a few validation frames with the best checkpoint's detections drawn,
    as ``images/val_N.png``. These are patient frames: never uploaded unless asked for."""
    import tempfile

    import cv2

    from seizure_mlflow.inference.files import draw_detections

    images = json.loads(Path(val.json_path).read_text())["images"][:count]
    frames = [cv2.imread(os.path.join(val.image_root, img["file_name"]), cv2.IMREAD_COLOR) for img in images]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (frame, detections) in enumerate(zip(frames, detector.predict(frames))):
            path = os.path.join(tmp, f"val_{k}.png")
            cv2.imwrite(path, draw_detections(frame, detections))
        MlflowClient().log_artifacts(run_id, tmp, artifact_path="images")
