"""The MLflow run of one training, from its start to its recorded end.

:class:`TrainingRun` is the one object that opens (or attaches) a training's run and writes what every run
writes at its start: tags, the checkpoint folder and its lock, ``mlflow_run.json``, the config, the dataset
inputs; under a launcher it tells the other processes the folder (or that it failed). After training it
records how training ended (``seizure.stop_reason``, ``stopped_at``), the validation sample, ``losses.csv`` and
the loss plot, and the best checkpoint's values; what a run does with its best checkpoint is the caller's
*finish* (see :mod:`seizure_mlflow.commands.finish`).
"""

from __future__ import annotations

import contextlib
import logging
import os

import mlflow
from mlflow import MlflowClient

from seizure_mlflow.engine.checkpoint import BestCheckpoint, read_best_checkpoint
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.engine.stopping import DIVERGED, SIGNAL

# A validation loss above this at its best is a diverged model's: Mask R-CNN's five losses start near 4 together and
# fall from there; a finite 1e33 passes the non-finite check of training but is no model to register.
DIVERGED_LOSS = 1e4
from seizure_mlflow.outputs.training_folder import (VALIDATION_SAMPLE_FILE, OutputFolderLock, best_checkpoint_path,
                                                    path_in, read_stop, write_owner)
from seizure_mlflow.tracking.datasets import TESTING, TRAINING, VALIDATION, log_datasets, log_validation_sample
from seizure_mlflow.tracking.describe import run_name
from seizure_mlflow.tracking.run import active_run, log_config, log_losses
from seizure_mlflow.metrics.names import BEST_ITERATION as BEST_ITER_METRIC, STOPPED_AT as STOPPED_AT_METRIC

logger = logging.getLogger(__name__)

STOP_REASON_TAG = "seizure.stop_reason"
MONITOR_RUN_TAG = "seizure.monitor"  # the validation metric the run chose its best checkpoint by
CONTINUES_TAG = "seizure.continues_run"


def with_output_dir(cfg, output_dir: str):
    """A frozen copy of ``cfg`` whose ``OUTPUT_DIR`` is ``output_dir`` (made absolute; the folder is created)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = os.path.abspath(output_dir)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    return cfg


class TrainingRun:
    """A context manager around one training's MLflow run (see the module's docstring).

    Args:
        plan: the checked plan (``params``, ``datasets``, ``test``, ``cfg``, ``resume_run_id``).
        job: this process's :class:`~seizure_mlflow.distributed.Job` (the leader's).
        tags: tags the caller's finish adds (a sweep trial's parent run, say).

    Inside the block: ``run_id``, ``name`` and ``cfg`` (its ``OUTPUT_DIR`` set: ``params.output_dir`` or
    ``output/RUN_ID``). The run ends FINISHED, FAILED or KILLED as the block ends; the folder's lock is taken
    before the run exists when the folder is given (a second training into it is refused with no run made).
    """

    def __init__(self, plan, job, tags: dict[str, str] | None = None) -> None:
        self.plan, self._job, self._extra_tags = plan, job, tags or {}
        self._stack = contextlib.ExitStack()
        self._announced = False

    def __enter__(self) -> "TrainingRun":
        params, plan = self.plan.params, self.plan
        try:
            if params.output_dir:
                self._stack.enter_context(OutputFolderLock(params.output_dir))
            self._point_wrapper_run_at_resumed()
            self.name = run_name(plan.cfg, params.run_name)
            run = self._stack.enter_context(active_run(
                run_name=self.name, tags={**self._start_tags(), **self._extra_tags}, run_id=plan.resume_run_id,
                log_system_metrics=params.system_metrics, rename=not plan.resume_run_id))
            self.run_id = run.info.run_id
            self.cfg = with_output_dir(plan.cfg, params.output_dir or os.path.join("output", self.run_id))
            if not params.output_dir:
                self._stack.enter_context(OutputFolderLock(self.cfg.OUTPUT_DIR))
            self._write_start()
            self._job.announce(self.cfg.OUTPUT_DIR)
            self._announced = True
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and not self._announced:  # the followers wait for the folder: tell them it failed
            self._announced = True
            self._job.announce_failure(exc)
        return self._stack.__exit__(exc_type, exc, tb)

    def _start_tags(self) -> dict[str, str]:
        datasets = self.plan.datasets
        return {"seizure.config": self.plan.params.config, MONITOR_RUN_TAG: self.plan.cfg.VALIDATION.MONITOR,
                "seizure.dataset": "sample" if datasets.is_sample else "custom",
                "seizure.train_digest": datasets.train.digest, "seizure.val_digest": datasets.val.digest}

    def _point_wrapper_run_at_resumed(self) -> None:
        wrapper, resumed = os.environ.get("MLFLOW_RUN_ID"), self.plan.resume_run_id
        if resumed and wrapper and wrapper != resumed:  # `mlflow run -P resume=true` made a new run for this command
            MlflowClient().set_tag(wrapper, CONTINUES_TAG, resumed)

    def _write_start(self) -> None:
        write_owner(self.cfg.OUTPUT_DIR, self.run_id)
        log_config(self.cfg)
        plan = self.plan
        log_datasets(self.run_id, {TRAINING: plan.datasets.train, VALIDATION: plan.datasets.val,
                                   **({TESTING: plan.test} if plan.test is not None else {})})
        logger.info("MLflow run %s (%s); checkpoints in %s", self.run_id, self.name, self.cfg.OUTPUT_DIR)

    # After training

    def record_failure(self, exc: BaseException) -> None:
        """Training raised: a signal or a non-finite loss is the stop reason; the curves so far are kept."""
        if isinstance(exc, (KeyboardInterrupt, FloatingPointError)):
            mlflow.set_tag(STOP_REASON_TAG, SIGNAL if isinstance(exc, KeyboardInterrupt) else DIVERGED)
        self.record(self.best())

    def log_validation_sample(self) -> None:
        log_validation_sample(self.run_id, path_in(self.cfg.OUTPUT_DIR, VALIDATION_SAMPLE_FILE),
                              self.plan.datasets.val)

    def record_stop(self) -> tuple[str, int]:
        """How training ended, as ``seizure.stop_reason`` and ``stopped_at``; returns ``(reason, stopped_at)``."""
        reason, stopped_at = read_stop(self.cfg.OUTPUT_DIR)
        mlflow.set_tag(STOP_REASON_TAG, reason)
        mlflow.log_metric(STOPPED_AT_METRIC, stopped_at, step=stopped_at)
        return reason, stopped_at

    def best(self) -> BestCheckpoint | None:
        return read_best_checkpoint(best_checkpoint_path(self.cfg.OUTPUT_DIR))

    def require_best(self) -> BestCheckpoint:
        """The best checkpoint; without one (no finite validation value was computed) the curves are recorded and
        the run fails."""
        best = self.best()
        if best is None:
            self.record(None)
            raise RuntimeError(f"no best checkpoint in {self.cfg.OUTPUT_DIR}: no finite {self.plan.cfg.VALIDATION.MONITOR} "
                               "was computed")
        if not Monitor(best.monitor).higher_is_better and best.value > DIVERGED_LOSS:
            diverged = FloatingPointError(f"the best validation {best.monitor} is {best.value:.3g} (at iteration "
                                          f"{best.iteration}): the model diverged, and is not registered")
            self.record_failure(diverged)
            raise diverged
        return best

    def record(self, best: BestCheckpoint | None, model_id: str | None = None, dataset=None) -> None:
        """``losses.csv`` and the loss plot from the run's metrics; the best checkpoint's values as
        ``best/<monitor>`` (``best/val_total_loss``, ``best/val_segm_AP``) and ``best/iteration``, linked to its
        logged model and the validation set when given."""
        monitor = Monitor(self.plan.cfg.VALIDATION.MONITOR)
        log_losses(self.run_id, best.iteration if best else None, monitor=monitor)
        if best is not None:
            mlflow.log_metrics({monitor.best_metric: best.value, BEST_ITER_METRIC: best.iteration},
                               step=best.iteration, run_id=self.run_id, model_id=model_id, dataset=dataset)
