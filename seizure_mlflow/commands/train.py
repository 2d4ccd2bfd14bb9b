"""``train`` (the ``main`` entry point): plan -> open the run -> train -> finish.

* :func:`plan_run` checks every input (datasets, parameters, config, weights, the tracking server, the output
  folder, what to resume) *before* an MLflow run is started or attached: bad input fails fast, no run behind;
* :class:`~seizure_mlflow.tracking.run_scope.TrainingRun` opens the run and writes its start;
* :func:`train` runs the hooked trainer in one process or several (Detectron2's ``launch``);
* the caller's *finish* decides what the best checkpoint becomes (``main`` registers it, a sweep trial logs
  it; see :mod:`seizure_mlflow.commands.finish`).

In a job of several processes only global rank 0 leads (plans, records, writes checkpoints); the others follow
(:func:`follow_training`); the dispatch is :func:`seizure_mlflow.distributed.run_as_job`. Under ``mlflow run``
the run already exists, and ``mlflow run`` marks it FAILED when this command exits non-zero.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import mlflow

from seizure_mlflow.commands.finish import Finish, RegisterModel, TrainResult
from seizure_mlflow.config import TRAIN_DATASET, VAL_DATASET, TrainParams, build_config, opts_items
from seizure_mlflow.data.checks import CocoSummary, check_coco, check_same_categories
from seizure_mlflow.sample.datasets import Datasets, check_datasets
from seizure_mlflow.sample.scenes import DEFAULT_SAMPLE_DIR
from seizure_mlflow.outputs.staging import check_output_folder
from seizure_mlflow.distributed import Job, run_as_job
from seizure_mlflow.engine.memory import raise_named
from seizure_mlflow.engine.checkpoint import check_weights_fit
from seizure_mlflow.errors import UserError
from seizure_mlflow.outputs.training_folder import METRIC_SPOOL, check_no_other_run, path_in, run_to_resume, write_stop
from seizure_mlflow.tracking.run_scope import TrainingRun, with_output_dir
from seizure_mlflow.tracking.stores import check_tracking_server
from seizure_mlflow.user_files import fetch_weights

logger = logging.getLogger(__name__)

FAILED_DRAIN_TIMEOUT_S = 30

__all__ = ["Plan", "TrainResult", "plan_run", "run_training", "build_trainer", "train"]


@dataclass(frozen=True)
class Plan:
    """Everything checked before a run exists."""

    params: TrainParams
    datasets: Datasets
    test: CocoSummary | None
    cfg: object  # the frozen Detectron2 config, OUTPUT_DIR still unset
    categories: list[dict]
    resume_run_id: str | None


def run_training(params: TrainParams, sample_dir: str = DEFAULT_SAMPLE_DIR,
                 finish: Finish | None = None) -> TrainResult | None:
    """Train one run and ``finish`` it (default: ``main``'s :class:`~seizure_mlflow.commands.finish.RegisterModel`).
    With ``params.resume``, continue the run whose checkpoints are in ``params.output_dir``, in the same MLflow
    run. Returns the result on global rank 0, None on the other processes of a job."""
    return run_as_job(params, lead=lambda job: lead_training(params, sample_dir, job, finish or RegisterModel()),
                      follow=lambda job: follow_training(params, sample_dir, job))


def lead_training(params: TrainParams, sample_dir: str, job: Job, finish: Finish) -> TrainResult:
    """Global rank 0: plan, open the run, train, record how it ended, finish."""
    plan = plan_with_the_job(params, sample_dir, job)
    with TrainingRun(plan, job, finish.tags) as run:
        finish.started(run.run_id)
        try:
            train(run.cfg, plan, run.run_id, extra_hooks=finish.hooks, job=job)
        except BaseException as exc:
            run.record_failure(exc)  # a failed run keeps its curves
            raise_named(exc, run.cfg)  # memory exhaustion says which setting to lower
        finally:  # the sample it validated on, whether training finished or not
            run.log_validation_sample()
        stop = run.record_stop()
        return finish(run, stop, run.require_best())


def follow_training(params: TrainParams, sample_dir: str, job: Job) -> None:
    """Every process but global rank 0: check the inputs, then train beside rank 0, never talking to the
    tracking server."""
    plan = plan_with_the_job(params, sample_dir, job, tracking=False)
    # under a launcher: rank 0's folder (on shared storage each rank's log lands beside its checkpoints)
    output_dir = job.hear_leader() or params.output_dir or os.path.join("output", f"machine-{params.machine_rank}")
    logger.info("Training as %s; rank 0 logs to MLflow and writes the checkpoints", job.describe())
    train(with_output_dir(plan.cfg, output_dir), plan, run_id="", job=job)


def plan_run(params: TrainParams, sample_dir: str = DEFAULT_SAMPLE_DIR, tracking: bool = True) -> Plan:
    """Check the tracking server, the data, the parameters, the config and the output folder; nothing is
    started. A process other than rank 0 plans with ``tracking=False``: it never talks to the tracking server."""
    if tracking:
        check_tracking_server()
    check_output_folder(params.output_dir or "output", "output_dir")
    if tracking and params.output_dir and not params.resume:
        check_no_other_run(params.output_dir)
    datasets = check_datasets(params.train_json, params.train_images, params.val_json, params.val_images, sample_dir,
                              shared_frames=params.val_on_training_frames)
    test = check_coco(params.test_json, params.test_images) if params.test_json else None
    if test is not None:
        check_same_categories(datasets.train, test)
    resume_run_id = run_to_resume(params.output_dir) if params.resume and tracking else None
    cfg = build_config(params, num_classes=len(datasets.train.categories), output_dir="")
    weights_param = "opts" if "MODEL.WEIGHTS" in dict(opts_items(params.opts)) else "weights"
    if cfg.MODEL.WEIGHTS and not params.resume:
        local = fetch_weights(cfg.MODEL.WEIGHTS, weights_param) if "://" in cfg.MODEL.WEIGHTS else cfg.MODEL.WEIGHTS
        check_weights_fit(cfg, local, weights_param)
    categories = [{"id": cid, "name": name} for cid, name in datasets.train.categories]
    return Plan(params, datasets, test, cfg, categories, resume_run_id)


def plan_with_the_job(params: TrainParams, sample_dir: str, job: Job, tracking: bool = True) -> Plan:
    """:func:`plan_run`; under a launcher, every process then says whether its checks passed and all stop if
    one failed (see :func:`~seizure_mlflow.distributed.agree_to_start`)."""
    try:
        plan = plan_run(params, sample_dir, tracking=tracking)
    except BaseException as exc:
        job.agree_to_start(exc)
        raise
    job.agree_to_start(None)
    return plan


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


def train(cfg, plan: Plan, run_id: str, extra_hooks=None, job: Job | None = None) -> None:
    """Train with ``cfg`` (its OUTPUT_DIR set), logging to ``run_id`` from global rank 0: in this process when a
    launcher started it or the job has one process, else in ``num_processes`` processes on this machine
    (Detectron2's ``launch``, joining ``num_machines`` machines at ``dist_url``). ``extra_hooks`` (one process
    only) makes extra trainer hooks."""
    from detectron2.engine import launch

    params = plan.params
    launcher = job.launcher if job is not None else None
    worker_args = (cfg, run_id, mlflow.get_tracking_uri(), plan.datasets, params.resume,
                   params.log_checkpoints == "improvements")
    if extra_hooks is not None and (launcher is not None or params.num_processes * params.num_machines > 1):
        raise UserError("a sweep's trials run in one process each (use tune --workers N for several GPUs)",
                        param="num_processes")
    if launcher is not None or params.num_processes * params.num_machines == 1:
        _train_worker(*worker_args, extra_hooks=extra_hooks)
    else:
        launch(_launched_worker, params.num_processes, num_machines=params.num_machines,
               machine_rank=params.machine_rank, dist_url=params.dist_url, args=worker_args)


def _launched_worker(*args) -> None:
    """:func:`_train_worker` in a process Detectron2's ``launch`` started; the process group is then taken down in
    order (see :func:`~seizure_mlflow.distributed.leave_process_group`)."""
    from detectron2.utils import comm

    from seizure_mlflow.distributed import leave_process_group

    _train_worker(*args)
    comm.synchronize()
    leave_process_group()


def _train_worker(cfg, run_id: str, tracking_uri: str, datasets: Datasets, resume: bool = False,
                  keep_improvements: bool = False, extra_hooks=None) -> None:
    """Runs in every training process (one, or one per GPU under Detectron2's ``launch``)."""
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    from seizure_mlflow.tracking.writer import MlflowWriter

    mlflow.set_tracking_uri(tracking_uri)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="detectron2", abbrev_name="d2")
    mlflow_writer = MlflowWriter(run_id, skip_logged=resume, spool_dir=path_in(cfg.OUTPUT_DIR, METRIC_SPOOL),
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
        write_stop(cfg.OUTPUT_DIR, trainer.stop_reason, trainer.stopped_at)


def run_command(params: TrainParams) -> int:
    """``seizure-mlflow train``: train, then say what was registered (exit status 130 when interrupted, 1 when the
    loss diverged)."""
    try:
        result = run_training(params)
    except KeyboardInterrupt as exc:
        logger.error("Training interrupted (%s); the MLflow run is KILLED. Continue with: seizure-mlflow train "
                     "--resume --output-dir %s (and the same parameters)", exc or "Ctrl-C",
                     params.output_dir or "output/RUN_ID")
        return 130
    except FloatingPointError as exc:
        logger.error("Training stopped: %s\nCheckpoints saved before this point are kept; try a lower --lr.",
                     str(exc).splitlines()[0])
        return 1
    if result is None:  # a process other than rank 0 of a job: rank 0 reports the run
        print("Training finished (this process is not rank 0: the MLflow run is rank 0's)")
        return 0
    print(f"Run {result.run_id}: best {result.monitor} {result.best_value:.4f} at iteration "
          f"{result.best_iteration}; registered models:/{result.model_name}/{result.model_version} "
          f"(@{result.model_alias})")
    return 0
