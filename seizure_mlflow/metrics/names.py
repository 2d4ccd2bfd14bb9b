"""Every metric name the package records, built in one place.

A run's metrics are ``PREFIX + name`` (+ ``SE_SUFFIX`` for a standard error):

* ``train/<loss>`` and ``train/lr``: the training losses (:data:`TRAIN`);
* ``val/<loss>`` (``val/total_loss``, ``val/loss_mask``...) and ``val/<task>/<stat>`` (``val/segm/AP``): the
  validation sample (:data:`VAL`); ``val_full/...`` the same on the whole validation set (:data:`VAL_FULL`);
  ``val/total_loss_se``: a value's standard error over the sample;
* ``best/<monitor key>`` and ``best/iteration``: the best checkpoint (:data:`BEST`);
* ``test/<task>/<stat>`` (``test/segm/AP``, ``test/segm/AP_ci_low``): a test set (:data:`TEST`).

The default monitor, the AP metrics a run may be judged by and the test statistics live here too; the
writer, the plots, cross-validation's tables, evaluation and promotion all ask this module. Pure Python.
"""

from __future__ import annotations

TRAIN = "train/"
VAL = "val/"
VAL_FULL = "val_full/"
TEST = "test/"
BEST = "best/"
LAST_VAL = "last_val/"  # cross-validation's table: a fold's validation values at its last iteration
SE_SUFFIX = "_se"  # val/total_loss_se: the standard error of val/total_loss over the validation sample

TOTAL_LOSS = "total_loss"
TASKS = ("bbox", "segm")  # COCO AP of boxes and of masks
AP_STATS = ("AP", "AP50", "AP75")  # the test statistics kept per task
VAL_AP_STATS = ("AP", "AP50")  # the validation statistics a run may be judged by
CI_LOW, CI_HIGH = "AP_ci_low", "AP_ci_high"  # test/segm/AP_ci_low: the 95% interval of test/segm/AP over videos

DEFAULT_MONITOR = VAL + TOTAL_LOSS
BEST_ITERATION = BEST + "iteration"
STOPPED_AT = "stopped_at"  # iterations completed when a training run ended
BEST_TRIAL = "best_trial"  # a sweep's parent: the number of its best trial
CV = "cv/"  # a cross-validation's parent: cv/val/total_loss_mean, cv/folds_complete
CV_FOLDS_COMPLETE = CV + "folds_complete"
SZCORE = "szcore/"  # a trace's SzCORE event scores: szcore/sensitivity, szcore/f1, ...
TRAIN_TOTAL_LOSS = TRAIN + TOTAL_LOSS
VAL_FULL_TOTAL_LOSS = VAL_FULL + TOTAL_LOSS


def task_metric(prefix: str, task: str, stat: str) -> str:
    """``val/segm/AP``, ``test/bbox/AP50``."""
    return f"{prefix}{task}/{stat}"


def test_metric(task: str, stat: str) -> str:
    """``test/segm/AP``: a test set's statistic."""
    return task_metric(TEST, task, stat)


test_metric.__test__ = False  # not a test (pytest collects test_* functions that tests import)

VAL_AP_METRICS = tuple(task_metric(VAL, t, s) for t in TASKS for s in VAL_AP_STATS)  # val/bbox/AP ... val/segm/AP50
TEST_METRICS = tuple(test_metric(t, s) for t in TASKS for s in AP_STATS)  # test/bbox/AP ... test/segm/AP75
DEFAULT_TEST_METRIC = test_metric("segm", "AP")


def sweep_best(monitor_key: str) -> str:
    """A sweep's parent: the best trial's value, ``best_val_total_loss``."""
    return f"best_{monitor_key}"


def cv_summary(metric: str, stat: str) -> str:
    """A cross-validation's parent: ``cv/val/total_loss_mean`` (``stat``: mean, sd, ci_low, ci_high)."""
    return f"{CV}{metric}_{stat}"


def standard_error(metric: str) -> str:
    """``val/total_loss`` -> ``val/total_loss_se``."""
    return metric + SE_SUFFIX


def is_standard_error(metric: str) -> bool:
    return metric.endswith(SE_SUFFIX)


def whole_set(metric: str) -> str:
    """A validation sample's metric on the whole validation set: ``val/segm/AP`` -> ``val_full/segm/AP``."""
    return VAL_FULL + metric.removeprefix(VAL)


def is_validation(metric: str) -> bool:
    """``val/...`` or ``val_full/...``."""
    return metric.startswith((VAL, VAL_FULL))


def is_loss(metric: str) -> bool:
    """A loss (``train/total_loss``, ``val/loss_mask``, ``val_full/total_loss_se``), not an AP or the LR."""
    name = metric.removesuffix(SE_SUFFIX)
    return name.endswith(TOTAL_LOSS) or "/loss_" in name


def without_prefix(metric: str, prefix: str) -> str:
    """``val/segm/AP`` without ``val/``: ``segm/AP``."""
    return metric[len(prefix):] if metric.startswith(prefix) else metric
