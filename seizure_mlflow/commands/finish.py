"""What a training run does with its best checkpoint: the :class:`Finish` that
:func:`~seizure_mlflow.commands.train.run_training` is given.

:class:`RegisterModel` is ``main``'s: log the best checkpoint as a model, register, tag and alias it (with
``log_checkpoints=improvements`` also each earlier improvement), then the optional validation images and the
test set's evaluation with champion/challenger promotion, then the run's description and model card. A sweep's
trial has its own (:class:`seizure_mlflow.sweeps.trial.TrialFinish`); the next kind of child run plugs in the same way.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.engine.checkpoint import BestCheckpoint
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.engine.stopping import MAX_ITER
from seizure_mlflow.registry.register import CHALLENGER, CHAMPION
from seizure_mlflow.registry.uris import logged_model_id
from seizure_mlflow.tracking.datasets import VALIDATION, coco_dataset
from seizure_mlflow.tracking.describe import MODEL_CARD, Outcome, model_card, result_paragraph
from seizure_mlflow.metrics.names import DEFAULT_MONITOR
from seizure_mlflow.outputs.training_folder import improvement_checkpoints

logger = logging.getLogger(__name__)

MONITOR_TAG = "monitor"  # a registered version's tag: the validation metric that chose its checkpoint


class Finish(Protocol):
    """What a training run does around and after training (``main``'s :class:`RegisterModel`; a sweep trial's or a
    cross-validation fold's :class:`~seizure_mlflow.sweeps.trial.TrialFinish`).

    * ``tags``: tags the run starts with (a sweep trial names its parent run);
    * ``hooks``: ``None`` or a callable making extra trainer hooks (a sweep's pruner), run in one process;
    * ``started(run_id)``: told the run's id as soon as it exists, before training;
    * ``__call__(run, stop, best) -> TrainResult``: called inside the run once training ended, with the
      :class:`~seizure_mlflow.tracking.run_scope.TrainingRun`, ``(reason, stopped_at)`` and the best checkpoint.
    """

    tags: dict[str, str]
    hooks: Callable[[], list] | None

    def started(self, run_id: str) -> None: ...

    def __call__(self, run, stop: tuple[str, int], best: BestCheckpoint) -> "TrainResult": ...


@dataclass(frozen=True)
class TrainResult:
    """What a training run ended with; ``best_value`` is the best checkpoint's value of ``monitor``."""

    run_id: str
    output_dir: str
    best_value: float
    best_iteration: int
    model_name: str
    model_version: str  # "" for a sweep's trial (only the sweep's best is registered)
    model_alias: str
    stop_reason: str = MAX_ITER
    stopped_at: int = 0
    model_uri: str = ""  # the logged model of the best checkpoint ("" for a pruned trial)
    monitor: str = DEFAULT_MONITOR

    @property
    def best_val_total_loss(self) -> float:
        """``best_value`` when the run monitored ``val/total_loss`` (the default), else NaN."""
        return self.best_value if self.monitor == DEFAULT_MONITOR else float("nan")


def result_of(run, stop: tuple[str, int], best: BestCheckpoint, **fields) -> TrainResult:
    """A :class:`TrainResult` from the run, how it stopped and its best checkpoint; ``fields`` fill the rest."""
    defaults = {"model_name": run.plan.params.model_name, "model_version": "", "model_alias": "", "model_uri": ""}
    return TrainResult(run_id=run.run_id, output_dir=run.cfg.OUTPUT_DIR, best_value=best.value,
                       best_iteration=best.iteration, stop_reason=stop[0], stopped_at=stop[1], monitor=best.monitor,
                       **{**defaults, **fields})


def log_checkpoint(run, weights, iteration: int, name: str = "model") -> str:
    """A checkpoint as a logged model of the run at ``iteration``; returns the model's URI. MLflow links the
    run's metrics at that step to the model (its ``val/*`` and ``train/*`` losses)."""
    from seizure_mlflow.registry.register import log_detector

    return log_detector(run.cfg, weights, run.plan.categories, step=iteration, name=name).model_uri


@dataclass
class RegisterModel:
    """``main``'s finish (see the module's docstring); ``version_tags`` are added to the registered version's
    (cross-validation's final model carries its cross-validated estimate)."""

    tags: dict[str, str] = field(default_factory=dict)
    hooks: Callable[[], list] | None = None
    version_tags: dict[str, str] = field(default_factory=dict)

    def started(self, run_id: str) -> None:
        pass

    def __call__(self, run, stop: tuple[str, int], best: BestCheckpoint) -> TrainResult:
        params = run.plan.params
        if params.log_checkpoints == "improvements":
            log_improvements(run, best)
        version = register_best(run, best, self.version_tags)
        run.record(best, model_id=logged_model_id(version), dataset=coco_dataset(run.plan.datasets.val, VALIDATION))
        alias = CHAMPION if CHAMPION in version.aliases else CHALLENGER
        detector = self._detector(run, best) if params.log_images or run.plan.test is not None else None
        if params.log_images:
            log_validation_images(detector, run.plan.datasets.val, run.run_id)
        test_metrics = None
        if run.plan.test is not None:
            alias, test_metrics = evaluate_and_promote(detector, run.plan.test, run.run_id, params.model_name, version)
        describe(run, best, version, alias, test_metrics)
        return result_of(run, stop, best, model_version=str(version.version), model_alias=alias)

    @staticmethod
    def _detector(run, best: BestCheckpoint):
        from seizure_mlflow.inference.predictor import Detector

        return Detector(run.cfg, best.weights, run.plan.categories)


def log_improvements(run, best: BestCheckpoint) -> int:
    """With ``log_checkpoints=improvements``: every earlier improvement as a logged model ``checkpoint-N`` (the
    final best is logged by :func:`register`). Returns how many were logged."""

    logged = 0
    for path in improvement_checkpoints(run.cfg.OUTPUT_DIR):
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        iteration = int(state["iteration"]) + 1
        if iteration != best.iteration:
            log_checkpoint(run, state["model"], iteration, name=f"checkpoint-{iteration}")
            logged += 1
    return logged


def register_best(run, best: BestCheckpoint, extra_tags: dict[str, str] | None = None):
    """The best checkpoint as a logged model and a registered version, tagged and aliased; returns the version."""
    from seizure_mlflow.registry.register import register as register_model

    params = run.plan.params
    model_uri = log_checkpoint(run, best.weights, best.iteration)
    return register_model(model_uri, params.model_name, {
        **best_tags(best.monitor, best.value), "best_iteration": str(best.iteration), "run_id": run.run_id,
        "config": params.config, **(extra_tags or {})})


def best_tags(monitor: str, value: float) -> dict[str, str]:
    """A registered version's tags for its best checkpoint's value: ``{"val_total_loss": "0.41"}`` or
    ``{"val_segm_AP": "37.2"}``, and ``monitor`` naming the metric."""
    return {Monitor(monitor).key: f"{value:.6g}", MONITOR_TAG: monitor}


def describe(run, best: BestCheckpoint, version, alias: str, test_metrics: dict[str, float] | None) -> None:
    """The result in one paragraph as the run's and the version's description; the model card beside the
    model and in the run."""
    from seizure_mlflow.registry.register import add_model_card

    plan = run.plan
    outcome = Outcome(config=plan.params.config, run_name=run.name, train=plan.datasets.train,
                      val=plan.datasets.val, best_value=best.value, monitor=best.monitor,
                      best_iteration=best.iteration,
                      max_iter=run.cfg.SOLVER.MAX_ITER, model_name=plan.params.model_name,
                      version=str(version.version), alias=alias, test_metrics=test_metrics)
    paragraph, card = result_paragraph(outcome), model_card(outcome, run.cfg)
    client = MlflowClient()
    client.set_tag(run.run_id, MLFLOW_RUN_NOTE, paragraph)
    client.update_model_version(plan.params.model_name, version.version, description=paragraph)
    add_model_card(logged_model_id(version), card)
    client.log_text(run.run_id, card, MODEL_CARD)


def evaluate_and_promote(detector, test: CocoSummary, run_id: str, model_name: str, version) -> tuple[str, dict]:
    """Test AP of the best checkpoint on the training run, its logged model and its version; then
    champion/challenger promotion. Returns the alias the new version holds afterwards, and the test metrics."""
    from seizure_mlflow.evaluation.detector import summary_line
    from seizure_mlflow.registry.evaluate import evaluate_and_record
    from seizure_mlflow.registry.promote import promote

    result = evaluate_and_record(detector, test, run_id, (model_name, str(version.version)))
    logger.info("Test set: %s", summary_line(result))
    decision = promote(model_name, test, run_id=run_id)
    logger.info("Promotion: %s", decision.message(model_name))
    aliases = MlflowClient().get_model_version(model_name, version.version).aliases
    return CHAMPION if CHAMPION in aliases else (CHALLENGER if CHALLENGER in aliases else ""), result.metrics


def log_validation_images(detector, val: CocoSummary, run_id: str, count: int = 4) -> None:
    """Only with ``log_images``: a few validation frames with the best checkpoint's detections drawn,
    as ``images/val_N.png``. These are patient frames: never uploaded unless asked for."""
    import tempfile

    import cv2

    from seizure_mlflow.data.frames import read_frame
    from seizure_mlflow.inference.files import draw_detections

    images = json.loads(Path(val.json_path).read_text())["images"][:count]
    frames = [read_frame(os.path.join(val.image_root, img["file_name"])) for img in images]
    with tempfile.TemporaryDirectory() as tmp:
        for k, (frame, detections) in enumerate(zip(frames, detector.predict(frames))):
            path = os.path.join(tmp, f"val_{k}.png")
            cv2.imwrite(path, draw_detections(frame, detections))
        MlflowClient().log_artifacts(run_id, tmp, artifact_path="images")
