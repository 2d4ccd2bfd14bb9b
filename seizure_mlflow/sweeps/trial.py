"""The finish of a child run of a shared study (see :mod:`seizure_mlflow.commands.finish`): a sweep's trial or a
cross-validation fold. The run is a child of the study's parent run; a trial's pruner hook reports each
validation to the study, and its best checkpoint is logged as a model (unless the trial was pruned) but not
registered: only the sweep's best trial is (:func:`seizure_mlflow.sweeps.tune.close_sweep`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from seizure_mlflow.commands.finish import TrainResult, log_checkpoint, result_of
from seizure_mlflow.engine.stopping import PRUNED
from seizure_mlflow.tracking.datasets import VALIDATION, coco_dataset


@dataclass
class TrialFinish:
    """``parent_run_id``: the sweep's parent run; ``hooks`` makes the trainer hooks of the trial (the pruner's);
    ``trial_tags`` are added to the run's; ``on_start`` is told the child run's id as soon as it exists;
    ``log_model``: whether the best checkpoint becomes a logged model (a cross-validation fold's does not: it
    is measured, never used)."""

    parent_run_id: str
    hooks: Callable[[], list] | None = None
    trial_tags: dict[str, str] = field(default_factory=dict)
    on_start: Callable[[str], None] = lambda run_id: None
    log_model: bool = True

    @property
    def tags(self) -> dict[str, str]:
        return {MLFLOW_PARENT_RUN_ID: self.parent_run_id, **self.trial_tags}

    def started(self, run_id: str) -> None:
        self.on_start(run_id)

    def __call__(self, run, stop: tuple[str, int], best) -> TrainResult:
        logged = self.log_model and stop[0] != PRUNED
        model_uri = log_checkpoint(run, best.weights, best.iteration) if logged else ""
        run.record(best, model_id=model_uri.removeprefix("models:/") or None,
                   dataset=coco_dataset(run.plan.datasets.val, VALIDATION))
        return result_of(run, stop, best, model_uri=model_uri)
