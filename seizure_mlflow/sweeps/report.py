"""What a sweep's parent run shows: a comparison table (CSV and Markdown), every trial's validation curve on
one axis (pruned ones dashed), and Optuna's parameter-importance and optimisation-history plots."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from seizure_mlflow.metrics.names import sweep_best  # noqa: E402
from seizure_mlflow.metrics.monitor import Monitor  # noqa: E402

TABLE_CSV = "sweep/trials.csv"
TABLE_MD = "sweep/trials.md"
CURVES_PNG = "sweep/val_curves.png"
IMPORTANCE_PNG = "sweep/param_importances.png"
HISTORY_PNG = "sweep/optimization_history.png"


def trials_table(study, monitor: Monitor) -> pd.DataFrame:
    """One row per trial; ``best_<monitor key>`` (``best_val_total_loss``, ``best_val_segm_AP``) is its best
    checkpoint's value."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({"trial": t.number, **{f"param:{k}": v for k, v in t.params.items()},
                     "state": t.state.name, sweep_best(monitor.key): attrs.get("best_value"),
                     "best_iteration": attrs.get("best_iteration"),
                     "stop_reason": attrs.get("stop_reason", "lost" if t.state.name == "FAIL" else ""),
                     "stopped_at": attrs.get("stopped_at"), "wall_s": attrs.get("wall_s"), "run_id": attrs.get("run_id")})
    return pd.DataFrame(rows)


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    return header + "".join("| " + " | ".join("" if pd.isna(v) else (f"{v:.5g}" if isinstance(v, float) else str(v))
                                              for v in row) + " |\n" for row in table.itertuples(index=False))


def plot_run_curves(runs: list[tuple[str, str, bool]], metric: str, path: Path, title: str) -> None:
    """``metric``'s history of every run on one axis: ``runs`` are ``(label, run_id, dashed)``."""
    client = MlflowClient()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, run_id, dashed in runs:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))
        if history:
            steps, values = zip(*history)
            ax.plot(steps, values, ls="--" if dashed else "-", marker=".", label=label)
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_tables(run_id: str, folder_name: str, tables: dict[str, pd.DataFrame], draw=None) -> None:
    """Each table as ``<folder_name>/<name>`` (CSV) and the same name ``.md`` (Markdown) on the run, with what
    ``draw(folder)`` puts beside them (plots)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / folder_name
        folder.mkdir()
        for name, table in tables.items():
            table.to_csv(folder / name, index=False)
            (folder / name).with_suffix(".md").write_text(_markdown(table))
        if draw is not None:
            draw(folder)
        MlflowClient().log_artifacts(run_id, str(folder), folder_name)


def _optuna_plot(draw, study, path: Path) -> bool:
    """One of Optuna's matplotlib plots, or nothing where the study cannot make it yet (e.g. importances
    need two complete trials with different values)."""
    try:
        ax = draw(study)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return False
    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def log_report(study, parent_run_id: str, plan) -> pd.DataFrame:
    import warnings

    from optuna.visualization import matplotlib as optuna_plots

    monitor = plan.monitor
    table = trials_table(study, monitor)

    def draw(folder: Path) -> None:
        runs = [(f"trial {r.trial} ({r.stop_reason or r.state.lower()})", r.run_id, r.stop_reason == "pruned")
                for r in table.itertuples(index=False) if r.run_id]
        plot_run_curves(runs, monitor.metric, folder / Path(CURVES_PNG).name,
                        f"{monitor.metric} of every trial (dashed: pruned)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            _optuna_plot(optuna_plots.plot_param_importances, study, folder / Path(IMPORTANCE_PNG).name)
            _optuna_plot(optuna_plots.plot_optimization_history, study, folder / Path(HISTORY_PNG).name)

    log_tables(parent_run_id, "sweep", {Path(TABLE_CSV).name: table}, draw)
    return table
