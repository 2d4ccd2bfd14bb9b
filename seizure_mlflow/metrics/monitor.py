"""The one validation metric a run is judged by: ``monitor``.

A :class:`Monitor` names a validation metric and knows its direction (losses down, APs up). Everything that
chooses by validation reads it from one object: the best checkpoint, early stopping (``patience``, ``min_delta``),
a sweep's pruner and its study's direction, the ``best/*`` metric and the version tags, the run's description,
the model card and the loss plot's marker. Pure Python (the parameter rule needs it before Detectron2 loads).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from seizure_mlflow.metrics.names import BEST, DEFAULT_MONITOR, TOTAL_LOSS, VAL, VAL_AP_METRICS

AP_METRICS = VAL_AP_METRICS
_LOSS = re.compile(rf"^{re.escape(VAL)}({TOTAL_LOSS}|loss_[a-z_]+)$")


def is_monitor_name(name: object) -> bool:
    """``val/total_loss``, a validation loss component (``val/loss_mask``) or a validation AP."""
    return isinstance(name, str) and (name in AP_METRICS or bool(_LOSS.match(name)))


MONITOR_CHOICES = f"{DEFAULT_MONITOR}, a {VAL}loss_* component, or " + ", ".join(AP_METRICS)


@dataclass(frozen=True)
class Monitor:
    """A validation metric and its direction. ``metric`` is a name :func:`is_monitor_name` accepts."""

    metric: str = DEFAULT_MONITOR

    def __post_init__(self) -> None:
        if not is_monitor_name(self.metric):
            raise ValueError(f"monitor must be {MONITOR_CHOICES}; got {self.metric!r}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric in AP_METRICS

    @property
    def mode(self) -> str:
        """Detectron2's ``BestCheckpointer`` mode: ``max`` or ``min``."""
        return "max" if self.higher_is_better else "min"

    @property
    def direction(self) -> str:
        """Optuna's study direction: ``maximize`` or ``minimize``."""
        return "maximize" if self.higher_is_better else "minimize"

    @property
    def needs_ap(self) -> bool:
        return self.metric in AP_METRICS

    @property
    def key(self) -> str:
        """The metric as one word: ``val_total_loss``, ``val_segm_AP`` (a version tag's key; ``best/<key>``)."""
        return self.metric.replace("/", "_")

    @property
    def best_metric(self) -> str:
        """The run's metric holding the best checkpoint's value: ``best/val_total_loss``, ``best/val_segm_AP``."""
        return BEST + self.key

    @property
    def words(self) -> str:
        """``lowest val/total_loss``, ``highest val/segm/AP``."""
        return f"{'highest' if self.higher_is_better else 'lowest'} {self.metric}"

    def improves(self, value: float, best: float | None, min_delta: float = 0.0) -> bool:
        """Whether ``value`` is finite and better than ``best`` (None: nothing yet) by more than ``min_delta``."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + min_delta if self.higher_is_better else value < best - min_delta

    def value_now(self, trainer) -> float | None:
        """The metric's value when the trainer's last validation (``trainer.last_validation``, put by the
        validation hook) ran at this iteration and measured it; else None."""
        validated = getattr(trainer, "last_validation", None)
        if validated is None or validated.iteration != trainer.iter:
            return None
        return validated.values.get(self.metric)

    def best_of(self, values):
        """The best of ``values`` (numbers)."""
        return max(values) if self.higher_is_better else min(values)
