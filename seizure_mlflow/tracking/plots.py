"""Plots of runs: loss curves of a training run, precision-recall curves of an evaluation (matplotlib, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from seizure_mlflow.evaluation.detector import EvaluationResult  # noqa: E402
from seizure_mlflow.metrics.names import (CI_HIGH, CI_LOW, DEFAULT_MONITOR, TASKS, TRAIN, test_metric, TRAIN_TOTAL_LOSS, VAL, VAL_AP_METRICS,  # noqa: E402
                                         VAL_FULL_TOTAL_LOSS, is_standard_error, standard_error, task_metric,
                                         whole_set, without_prefix)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


def _column(table: pd.DataFrame, name: str) -> pd.DataFrame:
    return table.dropna(subset=[name]) if name in table else table.iloc[0:0]


def _validation_curve(ax, table: pd.DataFrame, name: str, colour: str, label: str) -> None:
    """``name`` at each validation, with two standard errors (``name_se``, on a sample) as error bars."""
    rows = _column(table, name)
    if not len(rows):
        return
    errors = rows[standard_error(name)] * 2 if standard_error(name) in rows else None
    if errors is not None and errors.notna().any():
        ax.errorbar(rows["iteration"], rows[name], yerr=errors.fillna(0).to_numpy(), color=colour, lw=2, marker="o",
                    ms=4, capsize=3, label=f"{label} (bars: 2 standard errors of the sample)")
    else:
        ax.plot(rows["iteration"], rows[name], color=colour, lw=2, marker="o", ms=4, label=label)


def _mark_best(ax, table: pd.DataFrame, name: str, best_iteration: int) -> None:
    best = _column(table, name)
    best = best.loc[best["iteration"] == best_iteration, name]
    if len(best):
        ax.axvline(best_iteration, color="tab:green", ls="--", lw=1)
        ax.scatter([best_iteration], [best.iloc[0]], color="tab:green", zorder=5,
                   label=f"best checkpoint (iteration {best_iteration}, {name} {best.iloc[0]:.3f})")


def plot_loss_curves(losses: pd.DataFrame, path: str, best_iteration: int | None = None,
                     title: str = "Training and validation loss", monitor=None) -> None:
    """Train (raw and smoothed) and validation total loss on one iteration axis; validation AP below it when the
    run measured it; loss components at the bottom. The best checkpoint is marked on ``monitor``'s curve (a
    :class:`~seizure_mlflow.metrics.monitor.Monitor`; default ``val/total_loss``).

    ``losses`` is the ``losses.csv`` table: an ``iteration`` column and ``train/*`` / ``val/*`` columns (and
    ``val_full/*``, the whole validation set's values when ``val/*`` is a sample's, drawn as diamonds;
    ``val/*_se``, the sample's standard errors, drawn as error bars of two standard errors).
    """
    monitored = monitor.metric if monitor is not None else DEFAULT_MONITOR
    ap_columns = [c for c in (task_metric(VAL, "segm", "AP"), task_metric(VAL, "bbox", "AP")) if c in losses]  # AP50 only when it is the monitor
    if monitored.endswith("AP50") and monitored in losses:
        ap_columns.append(monitored)
    panels = 3 if ap_columns else 2
    fig, axes = plt.subplots(panels, 1, figsize=(9, 4 + 3 * (panels - 1)), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 2][:panels]})
    _total_loss_panel(axes[0], losses)
    axes[0].set_title(title if not ap_columns or title != "Training and validation loss"
                      else "Training and validation loss, validation AP")
    if ap_columns:
        _ap_panel(axes[1], losses, ap_columns)
    if best_iteration is not None:
        _mark_best(axes[1] if monitored in ap_columns else axes[0], losses, monitored, best_iteration)
    axes[0].legend(loc="upper right", fontsize="small")
    if ap_columns:
        axes[1].legend(loc="best", fontsize="small")
    _components_panel(axes[-1], losses)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _total_loss_panel(ax, losses: pd.DataFrame) -> None:
    train = _column(losses, TRAIN_TOTAL_LOSS)
    if len(train):
        window = max(1, min(20, len(train) // 10))
        ax.plot(train["iteration"], train[TRAIN_TOTAL_LOSS], color="tab:blue", alpha=0.25, lw=1,
                label="train (per iteration)")
        ax.plot(train["iteration"], _smooth(train[TRAIN_TOTAL_LOSS].to_numpy(), window), color="tab:blue", lw=2,
                label=f"train (mean of {window})")
    _validation_curve(ax, losses, DEFAULT_MONITOR, "tab:orange", "validation")
    full = _column(losses, VAL_FULL_TOTAL_LOSS)
    if len(full):
        ax.scatter(full["iteration"], full[VAL_FULL_TOTAL_LOSS], color="tab:red", marker="D", s=36, zorder=6,
                   label="validation, whole set")
    ax.set_ylabel("total loss")
    ax.grid(alpha=0.3)


def _ap_panel(ax, losses: pd.DataFrame, columns: list[str]) -> None:
    colours = dict(zip(VAL_AP_METRICS, ("tab:brown", "tab:olive", "tab:purple", "tab:pink")))
    for name in columns:
        _validation_curve(ax, losses, name, colours[name], without_prefix(name, VAL))
        whole_name = whole_set(name)
        whole = _column(losses, whole_name)
        if len(whole):
            ax.scatter(whole["iteration"], whole[whole_name], color=colours[name], marker="D", s=36, zorder=6,
                       edgecolors="black", label=f"{without_prefix(name, VAL)}, whole set")
    ax.set_ylabel("validation AP (%)")
    ax.grid(alpha=0.3)


def _components_panel(ax, losses: pd.DataFrame) -> None:
    components = sorted({c.split("/", 1)[1] for c in losses.columns
                         if c.startswith((TRAIN + "loss_", VAL + "loss_")) and not is_standard_error(c)})
    colours = plt.get_cmap("tab10")
    for k, comp in enumerate(components):
        if TRAIN + comp in losses:
            t = _column(losses, TRAIN + comp)
            ax.plot(t["iteration"], _smooth(t[TRAIN + comp].to_numpy(), max(1, min(20, len(t) // 10))),
                    color=colours(k), lw=1.5, label=f"train {comp}")
        if VAL + comp in losses:
            v = _column(losses, VAL + comp)
            ax.plot(v["iteration"], v[VAL + comp], color=colours(k), lw=1.5, ls="--", marker="o", ms=3,
                    label=f"val {comp}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss component")
    ax.grid(alpha=0.3)
    if components:
        ax.legend(loc="upper right", ncol=2, fontsize="small")


def plot_precision_recall(result: EvaluationResult, path: str) -> None:
    """Precision against recall per category, at IoU 0.50 and 0.75, boxes and masks (all areas, 100 dets)."""
    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 4.5), sharey=True)
    recall = np.linspace(0, 1, 101)
    for ax, task in zip(axes, TASKS):
        precision = result.precision.get(task)
        for k, name in enumerate(result.category_names):
            for t, (iou, style) in enumerate(((0.5, "-"), (0.75, "--"))):
                if precision is None:
                    continue
                curve = precision[0 if iou == 0.5 else 5, :, k, 0, -1]
                ax.plot(recall, np.where(curve < 0, np.nan, curve), style, color=f"C{k}", label=f"{name} IoU={iou}")
        ax.set_title(f"{task}: AP {result.metrics[test_metric(task, 'AP')]:.1f}")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if precision is None:
            ax.text(0.5, 0.5, "no predictions", ha="center")
    axes[0].set_ylabel("precision")
    axes[-1].legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_video_ap(result: EvaluationResult, path: str) -> None:
    """Box and mask AP of each test video (one point each, in order of mask AP), the pooled AP and its 95% interval
    over videos (when there are two videos or more)."""
    table = result.per_video.sort_values("segm_AP").reset_index(drop=True)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 4.5), sharey=True)
    for ax, task in zip(axes, TASKS):
        ax.scatter(range(len(table)), table[f"{task}_AP"], color="tab:blue", zorder=3, label="one test video")
        pooled = result.metrics[test_metric(task, "AP")]
        ax.axhline(pooled, color="tab:orange", lw=2, label=f"pooled {pooled:.1f}")
        low, high = result.metrics.get(test_metric(task, CI_LOW)), result.metrics.get(test_metric(task, CI_HIGH))
        if low is not None:
            ax.axhspan(low, high, color="tab:orange", alpha=0.2,
                       label=f"95% interval over videos {low:.1f}-{high:.1f} ({result.resamples} resamples)")
        ax.set_title(f"{task}: AP of each of {len(table)} test videos")
        ax.set_xlabel("test video (ordered by mask AP)")
        ax.set_xticks(range(len(table)))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    axes[0].set_ylabel("AP (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
