"""The link from a training run to a sweep's pruner."""

from __future__ import annotations

from detectron2.engine import HookBase

from seizure_mlflow.engine.stopping import PRUNED, StopTraining


class ReportToTrial(HookBase):
    """After each validation, report ``metric`` to an Optuna trial at the iteration it was computed; stop
    training with :class:`StopTraining` (``pruned``) when the pruner says so.

    Register it after the validation hook and the best-checkpoint hook (see
    :class:`~seizure_mlflow.engine.trainer.Trainer`'s ``extra_hooks``).
    """

    def __init__(self, trial, metric: str = "val/total_loss") -> None:
        self._trial, self._metric = trial, metric

    def after_step(self) -> None:
        latest = self.trainer.storage.latest().get(self._metric)
        if latest is None or latest[1] != self.trainer.iter:
            return
        step = self.trainer.iter + 1
        self._trial.report(latest[0], step)
        if self._trial.should_prune():
            raise StopTraining(PRUNED, f"the pruner stopped trial {self._trial.number} at iteration {step} "
                                       f"({self._metric} {latest[0]:.4f})")
