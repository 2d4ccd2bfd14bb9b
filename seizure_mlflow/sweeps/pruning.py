"""The link from a training run to a sweep's pruner."""

from __future__ import annotations

from detectron2.engine import HookBase

from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.engine.stopping import PRUNED, StopTraining


class ReportToTrial(HookBase):
    """After each validation that measured the monitored metric, report its value to an Optuna trial at the
    iteration it was computed (the study's direction is the monitor's); stop training with :class:`StopTraining`
    (``pruned``) when the pruner says so.

    Register it after the validation hook (it reads ``trainer.last_validation``) and the best-checkpoint hook
    (see :class:`~seizure_mlflow.engine.trainer.Trainer`'s ``extra_hooks``).
    """

    def __init__(self, trial, monitor: Monitor | None = None) -> None:
        self._trial, self.monitor = trial, monitor or Monitor()

    def after_step(self) -> None:
        value = self.monitor.value_now(self.trainer)
        if value is None:
            return
        step = self.trainer.iter + 1
        self._trial.report(value, step)
        if self._trial.should_prune():
            raise StopTraining(PRUNED, f"the pruner stopped trial {self._trial.number} at iteration {step} "
                                       f"({self.monitor.metric} {value:.4f})")
