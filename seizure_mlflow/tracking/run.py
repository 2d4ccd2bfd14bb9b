"""The MLflow run of a command: attach or start, record params and artifacts, end with the right status.

Under ``mlflow run`` the run already exists and ``MLFLOW_RUN_ID`` names it; ``mlflow.start_run()``
resumes it. Standalone, a new run is started in the active experiment. ``mlflow run`` logs each
entry-point parameter itself (``lr`` etc.); this module logs only the effective Detectron2 configuration
under its own dotted names (``SOLVER.BASE_LR``), so the two never collide.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Iterator

import mlflow
import pandas as pd
from mlflow import MlflowClient

from seizure_mlflow.config import flatten_config

logger = logging.getLogger(__name__)

LOSSES_CSV = "losses.csv"
LOSS_PLOT = "plots/loss_curves.png"
CONFIG_YAML = "config.yaml"


@contextlib.contextmanager
def active_run(run_name: str | None = None, tags: dict[str, str] | None = None,
               run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Attach to ``run_id`` or ``MLFLOW_RUN_ID``, or start a run; end it FINISHED, FAILED, or KILLED
    (Ctrl-C / SIGTERM)."""
    attached = bool(run_id or os.environ.get("MLFLOW_RUN_ID"))
    run = mlflow.start_run(run_id=run_id, run_name=None if attached else run_name, tags=tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def log_config(cfg) -> None:
    """The merged Detectron2 config: flattened as params, and whole as ``config.yaml``.

    Re-logging the same values (a resumed run) is fine; a changed value is a :class:`ConfigError`.
    """
    from mlflow.exceptions import MlflowException

    from seizure_mlflow.errors import ConfigError

    try:
        mlflow.log_params(flatten_config(cfg))
    except MlflowException as exc:
        raise ConfigError("this run already has different parameters (a resume must use the same ones): "
                          f"{str(exc).splitlines()[0][:300]}") from None
    mlflow.log_text(cfg.dump(), CONFIG_YAML)


def metric_table(run_id: str, keys: list[str], client: MlflowClient | None = None) -> pd.DataFrame:
    """One row per step that has any of ``keys``: ``iteration`` and one column per key (NaN where absent)."""
    client = client or MlflowClient()
    columns = {}
    for key in keys:
        history = client.get_metric_history(run_id, key)
        if history:
            columns[key] = pd.Series({m.step: m.value for m in history}, dtype=float)
    if not columns:
        return pd.DataFrame(columns=["iteration"])
    table = pd.DataFrame(columns).sort_index()
    table.index.name = "iteration"
    return table.reset_index()


def log_losses(run_id: str, best_iteration: int | None, client: MlflowClient | None = None) -> pd.DataFrame:
    """``losses.csv`` and ``plots/loss_curves.png`` built from the metrics the run holds."""
    from seizure_mlflow.tracking.plots import plot_loss_curves

    client = client or MlflowClient()
    keys = sorted(m for m in client.get_run(run_id).data.metrics
                  if m.startswith(("train/", "val/")) and (m.endswith("_loss") or "/loss_" in m))
    table = metric_table(run_id, keys, client)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = os.path.join(tmp, LOSSES_CSV)
        table.to_csv(csv_path, index=False)
        client.log_artifact(run_id, csv_path)
        png_path = os.path.join(tmp, os.path.basename(LOSS_PLOT))
        plot_loss_curves(table, png_path, best_iteration=best_iteration)
        client.log_artifact(run_id, png_path, artifact_path=os.path.dirname(LOSS_PLOT))
    return table
