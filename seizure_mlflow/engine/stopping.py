"""Early stopping on the monitored validation metric.

:class:`EarlyStopping` counts validation periods without an improvement of the run's ``monitor`` (see
:class:`~seizure_mlflow.metrics.monitor.Monitor`: ``val/total_loss`` down, a validation AP up) by at least
``min_delta``; when the count reaches ``patience`` it ends training after that iteration, by raising
:class:`StopTraining`, which :class:`~seizure_mlflow.engine.trainer.Trainer` catches. The count and the
best value are part of the trainer's checkpoint, so they survive a resume. With several processes every
process computes the same (all-gathered) validation values, so all of them stop at the same iteration.
"""

from __future__ import annotations

import logging

from detectron2.engine import HookBase

from seizure_mlflow.metrics.monitor import Monitor

logger = logging.getLogger(__name__)

MAX_ITER, EARLY_STOPPING, PRUNED, DIVERGED, SIGNAL = "max_iter", "early_stopping", "pruned", "diverged", "signal"


class StopTraining(BaseException):
    """Ends the training loop after the current iteration (a ``BaseException``, so that Detectron2's loop
    does not log it as an error); ``reason`` is one of the stop reasons above (the tag ``seizure.stop_reason``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EarlyStopping(HookBase):
    """Stop after ``patience`` validations of the monitored metric without an improvement of more than
    ``min_delta`` (a validation that did not measure it, AP on every N-th validation only, does not count).

    Register it after the validation hook (it reads the value that hook handed on, ``trainer.last_validation``)
    and after the best-checkpoint hook (the best checkpoint of the last validation is then saved before training
    stops), and before the periodic checkpointer (a checkpoint then holds the count including its own iteration's
    validation). When it stops training, the writers write what is left when training ends.
    """

    def __init__(self, monitor: Monitor | str, patience: int, min_delta: float = 0.0) -> None:
        self.monitor = Monitor(monitor) if isinstance(monitor, str) else monitor
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.periods_without_improvement = 0

    def after_step(self) -> None:
        value = self.monitor.value_now(self.trainer)
        if value is None:
            return  # no validation of the metric at this iteration
        if self.monitor.improves(value, self.best, self.min_delta):
            self.best, self.periods_without_improvement = value, 0
            return
        self.periods_without_improvement += 1
        if self.periods_without_improvement >= self.patience:
            raise StopTraining(EARLY_STOPPING, f"{self.monitor.metric} has not improved by {self.min_delta:g} for "
                                               f"{self.periods_without_improvement} validation period(s) (best "
                                               f"{self.best}); stopping at iteration {self.trainer.iter + 1}")

    def state_dict(self) -> dict:
        return {"best": self.best, "periods_without_improvement": self.periods_without_improvement}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.periods_without_improvement = state.get("periods_without_improvement", 0)


class StopsEarly:
    """A mixin for a Detectron2 trainer (put it before the trainer class): a hook that raises
    :class:`StopTraining` ends training after the current iteration. ``stopping`` tells the ``after_train`` hooks
    that a hook ended training early; afterwards ``stop_reason`` says why training ended (``max_iter`` or the
    hook's reason) and ``stopped_at`` how many iterations were completed."""

    def after_step(self) -> None:
        try:
            super().after_step()
        except StopTraining:
            self.stopping = True
            raise

    def train(self, *args, **kwargs):
        self.stop_reason, self.stopped_at = MAX_ITER, self.max_iter
        try:
            return super().train(*args, **kwargs)
        except StopTraining as stop:
            logger.info("Training stopped early: %s", stop)
            self.stop_reason, self.stopped_at = stop.reason, self.iter + 1
