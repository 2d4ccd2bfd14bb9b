"""Plots of runs: loss curves of a training run, precision-recall curves of an evaluation (matplotlib, Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from seizure_mlflow.evaluation import TASKS, EvaluationResult, metric_name  # noqa: E402


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    return pd.Series(values).rolling(window, min_periods=1).mean().to_numpy()


def plot_loss_curves(losses: pd.DataFrame, path: str, best_iteration: int | None = None,
                     title: str = "Training and validation loss") -> None:
    """Train (raw and smoothed) and validation total loss on one iteration axis; components below.

    ``losses`` is the ``losses.csv`` table: an ``iteration`` column and ``train/*`` / ``val/*`` columns (and
    ``val_full/*``, the whole validation set's loss when ``val/*`` is a sample's, drawn as diamonds).
    """
    fig, (ax_total, ax_parts) = plt.subplots(2, 1, figsize=(9, 8), sharex=True,
                                             gridspec_kw={"height_ratios": [3, 2]})
    train = losses.dropna(subset=["train/total_loss"]) if "train/total_loss" in losses else losses.iloc[0:0]
    val = losses.dropna(subset=["val/total_loss"]) if "val/total_loss" in losses else losses.iloc[0:0]
    if len(train):
        window = max(1, min(20, len(train) // 10))
        ax_total.plot(train["iteration"], train["train/total_loss"], color="tab:blue", alpha=0.25, lw=1,
                      label="train (per iteration)")
        ax_total.plot(train["iteration"], _smooth(train["train/total_loss"].to_numpy(), window), color="tab:blue",
                      lw=2, label=f"train (mean of {window})")
    if len(val):
        ax_total.plot(val["iteration"], val["val/total_loss"], color="tab:orange", lw=2, marker="o", ms=4,
                      label="validation")
    full = losses.dropna(subset=["val_full/total_loss"]) if "val_full/total_loss" in losses else losses.iloc[0:0]
    if len(full):
        ax_total.scatter(full["iteration"], full["val_full/total_loss"], color="tab:red", marker="D", s=36, zorder=6,
                         label="validation, whole set")
    if best_iteration is not None and len(val):
        best = val.loc[val["iteration"] == best_iteration, "val/total_loss"]
        if len(best):
            ax_total.axvline(best_iteration, color="tab:green", ls="--", lw=1)
            ax_total.scatter([best_iteration], [best.iloc[0]], color="tab:green", zorder=5,
                             label=f"best checkpoint (iteration {best_iteration}, {best.iloc[0]:.3f})")
    ax_total.set_ylabel("total loss")
    ax_total.set_title(title)
    ax_total.grid(alpha=0.3)
    ax_total.legend(loc="upper right")

    components = sorted({c.split("/", 1)[1] for c in losses.columns if c.startswith(("train/loss_", "val/loss_"))})
    colours = plt.get_cmap("tab10")
    for k, comp in enumerate(components):
        if f"train/{comp}" in losses:
            t = losses.dropna(subset=[f"train/{comp}"])
            ax_parts.plot(t["iteration"], _smooth(t[f"train/{comp}"].to_numpy(), max(1, min(20, len(t) // 10))),
                          color=colours(k), lw=1.5, label=f"train {comp}")
        if f"val/{comp}" in losses:
            v = losses.dropna(subset=[f"val/{comp}"])
            ax_parts.plot(v["iteration"], v[f"val/{comp}"], color=colours(k), lw=1.5, ls="--", marker="o", ms=3,
                          label=f"val {comp}")
    ax_parts.set_xlabel("iteration")
    ax_parts.set_ylabel("loss component")
    ax_parts.grid(alpha=0.3)
    if components:
        ax_parts.legend(loc="upper right", ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        ax.set_title(f"{task}: AP {result.metrics[metric_name(task, 'AP')]:.1f}")
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
