"""A whole training run, in four named steps: plan, train, record, register.

* :func:`plan_run` checks every input (datasets, parameters, config, the tracking server, what to resume)
  *before* an MLflow run is started or attached, so bad input fails fast and leaves no run behind;
* :func:`train` runs the hooked trainer in one process or several (Detectron2's ``launch``);
* :func:`record` builds ``losses.csv`` and the loss plot, and reads the best checkpoint (its iteration and
  validation loss come from the file itself);
* :func:`register` logs the best checkpoint as a pyfunc model, registers, tags and aliases it.

:func:`run_training` chains them inside one MLflow run (under ``mlflow run`` the run already exists, and
``mlflow run`` marks it FAILED when this command exits non-zero).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from seizure_mlflow.config import TRAIN_DATASET, VAL_DATASET, TrainParams, build_config
from seizure_mlflow.data.checks import CocoSummary, check_coco, check_same_categories
from seizure_mlflow.data.datasets import Datasets, check_datasets
from seizure_mlflow.data.sample import DEFAULT_SAMPLE_DIR
from seizure_mlflow.data.staging import check_output_folder
from seizure_mlflow.distributed import (LauncherProcess, agree_to_start, check_launcher_params, join_process_group,
                                        launcher_from_env, share)
from seizure_mlflow.engine.stopping import DIVERGED, MAX_ITER, PRUNED, SIGNAL
from seizure_mlflow.engine.trainer import VALIDATION_SAMPLE_FILE, best_checkpoint_path
from seizure_mlflow.errors import UserError
from seizure_mlflow.registry.register import CHALLENGER, CHAMPION
from seizure_mlflow.registry.uris import logged_model_id
from seizure_mlflow.tracking.datasets import (TESTING, TRAINING, VALIDATION, coco_dataset, log_datasets,
                                              log_validation_sample)
from seizure_mlflow.tracking.describe import MODEL_CARD, Outcome, model_card, result_paragraph, run_name
from seizure_mlflow.tracking.run import active_run, check_tracking_server, log_config, log_losses

logger = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"  # in OUTPUT_DIR: which MLflow run these checkpoints belong to
STOP_FILE = "stop.json"  # in OUTPUT_DIR: why and when the training processes stopped
METRIC_SPOOL = "metrics_spool"  # in OUTPUT_DIR: metric values waiting for the tracking server (see delivery.py)
FAILED_DRAIN_TIMEOUT_S = 30
STOP_REASON_TAG = "seizure.stop_reason"
STOPPED_AT_METRIC = "stopped_at"
BEST_VAL_METRIC = "best/val_total_loss"
BEST_ITER_METRIC = "best/iteration"


@dataclass(frozen=True)
class Plan:
    """Everything checked before a run exists."""

    params: TrainParams
    datasets: Datasets
    test: CocoSummary | None
    cfg: object  # the frozen Detectron2 config, OUTPUT_DIR still unset
    categories: list[dict]
    resume_run_id: str | None


@dataclass(frozen=True)
class BestCheckpoint:
    path: str
    iteration: int  # iterations completed when its validation loss was computed
    val_total_loss: float
    weights: dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    output_dir: str
    best_val_total_loss: float
    best_iteration: int
    model_name: str
    model_version: str  # "" for a sweep's trial (only the sweep's best is registered)
    model_alias: str
    stop_reason: str = MAX_ITER
    stopped_at: int = 0
    model_uri: str = ""  # the logged model of the best checkpoint ("" for a pruned trial)


@dataclass(frozen=True)
class SweepTrial:
    """What a sweep changes in a run: it is a child of ``parent_run_id``, ``hooks`` makes extra trainer hooks
    (the pruner's), and its best checkpoint is logged as a model but not registered."""

    parent_run_id: str
    hooks: Callable[[], list]
    tags: dict[str, str]
    started: Callable[[str], None] = lambda run_id: None  # told the child run's id as soon as it exists


def build_trainer(cfg, datasets: Datasets, extra_writers=None, validate: bool = True, keep_improvements: bool = False,
                  extra_hooks=None):
    """Register the datasets, seed every RNG from ``cfg.SEED`` (plus the rank), and build the trainer."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from seizure_mlflow.data.catalog import register_coco
    from seizure_mlflow.engine.trainer import Trainer

    register_coco(TRAIN_DATASET, datasets.train)
    register_coco(VAL_DATASET, datasets.val)
    seed_all_rng(cfg.SEED + comm.get_rank())
    return Trainer(cfg, extra_writers=extra_writers, validate=validate, keep_improvements=keep_improvements,
                   extra_hooks=extra_hooks)


def run_to_resume(output_dir: str) -> str:
    """The MLflow run id that the checkpoints in ``output_dir`` belong to; a clear error if none can be resumed."""
    if not os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        raise UserError(f"no checkpoint in {output_dir} (no last_checkpoint file); nothing to resume", param="output_dir")
    try:
        with open(os.path.join(output_dir, RUN_FILE)) as fh:
            return json.load(fh)["run_id"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{output_dir}/{RUN_FILE} is missing or unreadable; which MLflow run is this?",
                        param="output_dir") from None


def plan_run(params: TrainParams, sample_dir: str = DEFAULT_SAMPLE_DIR, tracking: bool = True) -> Plan:
    """Check the tracking server, the data, the parameters and the config; nothing is started. A process other
    than rank 0 plans with ``tracking=False``: it never talks to the tracking server."""
    if tracking:
        check_tracking_server()
    check_output_folder(params.output_dir or "output", "output_dir")
    datasets = check_datasets(params.train_json, params.train_images, params.val_json, params.val_images, sample_dir)
    test = check_coco(params.test_json, params.test_images) if params.test_json else None
    if test is not None:
        check_same_categories(datasets.train, test)
    resume_run_id = run_to_resume(params.output_dir) if params.resume and tracking else None
    cfg = build_config(params, num_classes=len(datasets.train.categories), output_dir="")
    categories = [{"id": cid, "name": name} for cid, name in datasets.train.categories]
    return Plan(params, datasets, test, cfg, categories, resume_run_id)


def plan_with_the_job(params: TrainParams, sample_dir: str, launcher: LauncherProcess | None,
                      tracking: bool = True) -> Plan:
    """:func:`plan_run`; under a launcher, every process then says whether its checks passed and all stop if
    one failed (see :func:`~seizure_mlflow.distributed.agree_to_start`)."""
    try:
        plan = plan_run(params, sample_dir, tracking=tracking)
    except BaseException as exc:
        if launcher is not None:
            agree_to_start(exc)
        raise
    if launcher is not None:
        agree_to_start(None)
    return plan


def _train_worker(cfg, run_id: str, tracking_uri: str, datasets: Datasets, resume: bool = False,
                  keep_improvements: bool = False, extra_hooks=None) -> None:
    """Runs in every training process (one, or one per GPU under Detectron2's ``launch``)."""
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    from seizure_mlflow.tracking.writer import MlflowWriter

    mlflow.set_tracking_uri(tracking_uri)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    mlflow_writer = MlflowWriter(run_id, skip_logged=resume, spool_dir=os.path.join(cfg.OUTPUT_DIR, METRIC_SPOOL),
                                 tracking_uri=tracking_uri) if comm.is_main_process() else None
    try:
        trainer = build_trainer(cfg, datasets, extra_writers=(lambda: [mlflow_writer]) if mlflow_writer else None,
                                keep_improvements=keep_improvements, extra_hooks=extra_hooks)
        trainer.resume_or_load(resume=resume)
        trainer.train()
    except BaseException:
        if mlflow_writer is not None:  # deliver what it can, briefly; the training's exception is what matters
            mlflow_writer.finish(timeout_s=FAILED_DRAIN_TIMEOUT_S, failed=True)
        raise
    if mlflow_writer is not None:
        mlflow_writer.finish()
    if comm.is_main_process():
        (Path(cfg.OUTPUT_DIR) / STOP_FILE).write_text(
            json.dumps({"reason": trainer.stop_reason, "stopped_at": trainer.stopped_at}))


def train(cfg, plan: Plan, run_id: str, extra_hooks=None, launcher: LauncherProcess | None = None) -> None:
    """Train with ``cfg`` (its OUTPUT_DIR set), logging to ``run_id`` from global rank 0: in this process when a
    ``launcher`` started it or the job has one process, else in ``num_processes`` processes on this machine
    (Detectron2's ``launch``, joining ``num_machines`` machines at ``dist_url``). ``extra_hooks`` (one process
    only) makes extra trainer hooks."""
    from detectron2.engine import launch

    params = plan.params
    worker_args = (cfg, run_id, mlflow.get_tracking_uri(), plan.datasets, params.resume,
                   params.log_checkpoints == "improvements")
    if extra_hooks is not None and (launcher is not None or params.num_processes * params.num_machines > 1):
        raise UserError("a sweep's trials run in one process each (use tune --workers N for several GPUs)",
                        param="num_processes")
    if launcher is not None or params.num_processes * params.num_machines == 1:
        _train_worker(*worker_args, extra_hooks=extra_hooks)
    else:
        launch(_train_worker, params.num_processes, num_machines=params.num_machines,
               machine_rank=params.machine_rank, dist_url=params.dist_url, args=worker_args)


def follow_training(params: TrainParams, sample_dir: str = DEFAULT_SAMPLE_DIR,
                    launcher: LauncherProcess | None = None) -> None:
    """The part of a job that is not global rank 0 (a machine with ``machine_rank`` > 0, or a launcher's process
    with ``RANK`` > 0): check the inputs, then train beside rank 0, never talking to the tracking server."""
    plan = plan_with_the_job(params, sample_dir, launcher, tracking=False)
    if launcher is not None:
        status, detail = share(None)[0]
        if status != "ok":
            raise UserError(f"rank 0 stopped before training: {detail}")
        output_dir = detail  # rank 0's folder: on shared storage, each rank's log lands beside its checkpoints
    else:
        output_dir = params.output_dir or os.path.join("output", f"machine-{params.machine_rank}")
    cfg = _with_output_dir(plan.cfg, output_dir)
    logger.info("Training as %s; rank 0 logs to MLflow and writes the checkpoints",
                f"rank {launcher.rank} of {launcher.world_size}" if launcher else f"machine {params.machine_rank}")
    train(cfg, plan, run_id="", launcher=launcher)


def read_best_checkpoint(output_dir: str) -> BestCheckpoint | None:
    """What ``ResumableBestCheckpointer`` saved, or None when no finite validation loss was computed."""
    path = best_checkpoint_path(output_dir)
    if not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors are read when used
    return BestCheckpoint(path=path, iteration=int(state["iteration"]) + 1, val_total_loss=float(state["best_metric"]),
                          weights=state["model"])


def record(run_id: str, output_dir: str, best: BestCheckpoint | None, model_id: str | None = None,
           dataset=None) -> None:
    """``losses.csv`` and the loss plot from the run's metrics; the best checkpoint's values as
    ``best/val_total_loss`` and ``best/iteration``, linked to its logged model and the validation set when given."""
    log_losses(run_id, best.iteration if best else None)
    if best is not None:
        mlflow.log_metrics({BEST_VAL_METRIC: best.val_total_loss, BEST_ITER_METRIC: best.iteration},
                           step=best.iteration, run_id=run_id, model_id=model_id, dataset=dataset)


def log_checkpoint(plan: Plan, cfg, weights, iteration: int, name: str = "model") -> str:
    """A checkpoint as a logged model of the active run at ``iteration``; returns the model's URI.

    MLflow links the run's metrics at that step to the model (its ``val/*`` and ``train/*`` losses).
    """
    from seizure_mlflow.registry.register import log_detector

    return log_detector(cfg, weights, plan.categories, step=iteration, name=name).model_uri


def log_improvements(plan: Plan, cfg, best: BestCheckpoint) -> int:
    """With ``log_checkpoints=improvements``: every earlier improvement as a logged model ``checkpoint-N``
    (the final best is logged by :func:`register`). Returns how many were logged."""
    from seizure_mlflow.engine.resume import IMPROVEMENT_PREFIX

    logged = 0
    for path in sorted(Path(cfg.OUTPUT_DIR).glob(f"{IMPROVEMENT_PREFIX}*.pth")):
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        iteration = int(state["iteration"]) + 1
        if iteration != best.iteration:
            log_checkpoint(plan, cfg, state["model"], iteration, name=f"checkpoint-{iteration}")
            logged += 1
    return logged


def register(plan: Plan, cfg, best: BestCheckpoint, run_id: str):
    """The best checkpoint as a logged model and a registered version, tagged and aliased; returns the version."""
    from seizure_mlflow.registry.register import register as register_model

    model_uri = log_checkpoint(plan, cfg, best.weights, best.iteration)
    return register_model(model_uri, plan.params.model_name, {
        "val_total_loss": f"{best.val_total_loss:.6g}",
        "best_iteration": str(best.iteration),
        "run_id": run_id,
        "config": plan.params.config,
    })


def describe(plan: Plan, cfg, best: BestCheckpoint, run_id: str, name: str, version, alias: str,
             test_metrics: dict[str, float] | None) -> None:
    """The result in one paragraph as the run's and the version's description; the model card beside the
    model and in the run."""
    from seizure_mlflow.registry.register import add_model_card

    outcome = Outcome(config=plan.params.config, run_name=name, train=plan.datasets.train,
                      val=plan.datasets.val, best_val_total_loss=best.val_total_loss, best_iteration=best.iteration,
                      max_iter=cfg.SOLVER.MAX_ITER, model_name=plan.params.model_name, version=str(version.version),
                      alias=alias, test_metrics=test_metrics)
    paragraph, card = result_paragraph(outcome), model_card(outcome, cfg)
    client = MlflowClient()
    client.set_tag(run_id, MLFLOW_RUN_NOTE, paragraph)
    client.update_model_version(plan.params.model_name, version.version, description=paragraph)
    add_model_card(logged_model_id(version), card)
    client.log_text(run_id, card, MODEL_CARD)


def run_training(params: TrainParams, sample_dir: str = DEFAULT_SAMPLE_DIR, trial: SweepTrial | None = None) -> TrainResult:
    """Plan, train, record and register in one MLflow run. With ``params.resume``, continue the run whose
    checkpoints are in ``params.output_dir`` from its last checkpoint, in the same MLflow run. A sweep's
    ``trial`` makes the run a child run whose best checkpoint is logged, not registered.

    In a job of several processes, only global rank 0 gets here past the checks (see ``distributed.py``); the
    others run :func:`follow_training` and return None."""
    launcher = launcher_from_env()
    if launcher is not None:
        check_launcher_params(params)
        join_process_group(launcher, params.device)
    if (launcher is not None and launcher.rank > 0) or params.machine_rank > 0:
        return follow_training(params, sample_dir, launcher)
    plan = plan_with_the_job(params, sample_dir, launcher)
    wrapper = os.environ.get("MLFLOW_RUN_ID")
    if plan.resume_run_id and wrapper and wrapper != plan.resume_run_id:
        # `mlflow run -P resume=true` made a new run for this command: point it at the run that continues.
        MlflowClient().set_tag(wrapper, "seizure.continues_run", plan.resume_run_id)
    tags = {
        "seizure.config": params.config,
        "seizure.dataset": "sample" if plan.datasets.is_sample else "custom",
        "seizure.train_digest": plan.datasets.train.digest,
        "seizure.val_digest": plan.datasets.val.digest,
    }
    if trial is not None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags.update({MLFLOW_PARENT_RUN_ID: trial.parent_run_id, **trial.tags})
    name = run_name(plan.cfg, params.run_name)
    followers_told = launcher is None
    try:
        with active_run(run_name=name, tags=tags, run_id=plan.resume_run_id, log_system_metrics=params.system_metrics,
                        rename=not plan.resume_run_id) as run:
            run_id = run.info.run_id
            if trial is not None:
                trial.started(run_id)
            cfg = _with_output_dir(plan.cfg, params.output_dir or os.path.join("output", run_id))
            (Path(cfg.OUTPUT_DIR) / RUN_FILE).write_text(json.dumps({"run_id": run_id}))
            log_config(cfg)
            log_datasets(run_id, {TRAINING: plan.datasets.train, VALIDATION: plan.datasets.val,
                                  **({TESTING: plan.test} if plan.test is not None else {})})
            logger.info("MLflow run %s (%s); checkpoints in %s", run_id, name, cfg.OUTPUT_DIR)
            if launcher is not None:
                share(("ok", cfg.OUTPUT_DIR))
                followers_told = True
            try:
                train(cfg, plan, run_id, extra_hooks=trial.hooks if trial is not None else None, launcher=launcher)
            except BaseException as exc:
                if isinstance(exc, (KeyboardInterrupt, FloatingPointError)):
                    mlflow.set_tag(STOP_REASON_TAG, SIGNAL if isinstance(exc, KeyboardInterrupt) else DIVERGED)
                record(run_id, cfg.OUTPUT_DIR, read_best_checkpoint(cfg.OUTPUT_DIR))  # a failed run keeps its curves
                raise
            finally:  # the sample it validated on, whether training finished or not
                log_validation_sample(run_id, os.path.join(cfg.OUTPUT_DIR, VALIDATION_SAMPLE_FILE), plan.datasets.val)
            stop = json.loads((Path(cfg.OUTPUT_DIR) / STOP_FILE).read_text())
            mlflow.set_tag(STOP_REASON_TAG, stop["reason"])
            mlflow.log_metric(STOPPED_AT_METRIC, stop["stopped_at"], step=stop["stopped_at"])
            best = read_best_checkpoint(cfg.OUTPUT_DIR)
            if best is None:
                record(run_id, cfg.OUTPUT_DIR, None)
                raise RuntimeError(f"no best checkpoint in {cfg.OUTPUT_DIR}: no finite validation loss was computed")
            if trial is not None:
                model_uri = "" if stop["reason"] == PRUNED else log_checkpoint(plan, cfg, best.weights, best.iteration)
                record(run_id, cfg.OUTPUT_DIR, best, model_id=model_uri.removeprefix("models:/") or None,
                       dataset=coco_dataset(plan.datasets.val, VALIDATION))
                return TrainResult(run_id=run_id, output_dir=cfg.OUTPUT_DIR, best_val_total_loss=best.val_total_loss,
                                   best_iteration=best.iteration, model_name=params.model_name, model_version="",
                                   model_alias="", stop_reason=stop["reason"], stopped_at=stop["stopped_at"],
                                   model_uri=model_uri)
            if params.log_checkpoints == "improvements":
                log_improvements(plan, cfg, best)
            version = register(plan, cfg, best, run_id)
            record(run_id, cfg.OUTPUT_DIR, best, model_id=logged_model_id(version),
                   dataset=coco_dataset(plan.datasets.val, VALIDATION))
            alias = CHAMPION if CHAMPION in version.aliases else CHALLENGER
            detector = None
            if params.log_images or plan.test is not None:
                from seizure_mlflow.inference.predictor import Detector

                detector = Detector(cfg, best.weights, plan.categories)
            if params.log_images:
                _log_validation_images(detector, plan.datasets.val, run_id)
            test_metrics = None
            if plan.test is not None:
                alias, test_metrics = _evaluate_and_promote(detector, plan.test, run_id, params.model_name, version)
            describe(plan, cfg, best, run_id, name, version, alias, test_metrics)
    except BaseException as exc:
        if not followers_told:  # they wait for rank 0's output folder: tell them it failed
            share(("error", f"{type(exc).__name__}: {exc}"))
        raise
    return TrainResult(run_id=run_id, output_dir=cfg.OUTPUT_DIR, best_val_total_loss=best.val_total_loss,
                       best_iteration=best.iteration, model_name=params.model_name,
                       model_version=str(version.version), model_alias=alias, stop_reason=stop["reason"],
                       stopped_at=stop["stopped_at"])


def _with_output_dir(cfg, output_dir: str):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = os.path.abspath(output_dir)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    return cfg


def _evaluate_and_promote(detector, test: CocoSummary, run_id: str, model_name: str, version) -> tuple[str, dict]:
    """Test AP of the best checkpoint on the training run, its logged model and its version; then
    champion/challenger promotion. Returns the alias the new version holds afterwards, and the test metrics.
    """
    from seizure_mlflow.evaluation import summary_line
    from seizure_mlflow.registry.evaluate import evaluate_and_record
    from seizure_mlflow.registry.promote import promote

    result = evaluate_and_record(detector, test, run_id, (model_name, str(version.version)))
    logger.info("Test set: %s", summary_line(result))
    decision = promote(model_name, test)
    logger.info("Promotion: %s", decision.message(model_name))
    aliases = MlflowClient().get_model_version(model_name, version.version).aliases
    return CHAMPION if CHAMPION in aliases else (CHALLENGER if CHALLENGER in aliases else ""), result.metrics


def _log_validation_images(detector, val: CocoSummary, run_id: str, count: int = 4) -> None:
    """Only with ``log_images``: a few validation frames with the best checkpoint's detections drawn,
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
