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
from mlflow.utils.mlflow_tags import MLFLOW_GIT_REPO_URL, MLFLOW_RUN_NAME, MLFLOW_SOURCE_NAME, MLFLOW_USER

from seizure_mlflow.config import flatten_config
from seizure_mlflow.metrics.names import SE_SUFFIX, TRAIN, VAL_AP_STATS, is_loss, is_validation

logger = logging.getLogger(__name__)

LOSSES_CSV = "losses.csv"
LOSS_PLOT = "plots/loss_curves.png"
CONFIG_YAML = "config.yaml"


# Tags that MLflow fills from the machine: the user name, the script's path, a local git remote's path.
USER_TAG = MLFLOW_USER
PATH_TAGS = (MLFLOW_SOURCE_NAME, MLFLOW_GIT_REPO_URL)
USER_ENV = "SEIZURE_MLFLOW_USER"


def context_tags(current: dict[str, str]) -> dict[str, str]:
    """Replacements for the tags MLflow took from this machine: no user name, no local path.

    ``mlflow.user`` becomes ``$SEIZURE_MLFLOW_USER``, else the tracking server's login
    (``MLFLOW_TRACKING_USERNAME``), else ``unknown``; a local path (``/...``, ``file:...``) keeps only its last
    part (``seizure_mlflow``, ``seizure-mlflow``). URLs of remote repositories are kept.
    """
    user = os.environ.get(USER_ENV) or os.environ.get("MLFLOW_TRACKING_USERNAME") or "unknown"
    replaced = {USER_TAG: user} if current.get(USER_TAG, user) != user else {}
    for key in PATH_TAGS:
        value = current.get(key, "")
        if value.startswith(("/", "file:")):
            replaced[key] = os.path.basename(value.rstrip("/")) or "local"
    return replaced


def remove_machine_context(run_id: str, client: MlflowClient | None = None) -> None:
    """Overwrite the run's tags that carry this machine's user name or paths (see :func:`context_tags`)."""
    client = client or MlflowClient()
    for key, value in context_tags(client.get_run(run_id).data.tags).items():
        client.set_tag(run_id, key, value)


def remove_machine_context_from_model(model_id: str, client: MlflowClient | None = None) -> None:
    """The same for a logged model's tags (MLflow copies the user and source into them)."""
    client = client or MlflowClient()
    replaced = context_tags(client.get_logged_model(model_id).tags)
    if replaced:
        client.set_logged_model_tags(model_id, replaced)


@contextlib.contextmanager
def active_run(run_name: str | None = None, tags: dict[str, str] | None = None, run_id: str | None = None,
               log_system_metrics: bool | None = None, rename: bool = False) -> Iterator[mlflow.ActiveRun]:
    """Attach to ``run_id`` or ``MLFLOW_RUN_ID``, or start a run; end it FINISHED, FAILED, or KILLED
    (Ctrl-C / SIGTERM). The machine's user name and paths are taken out of the run's tags first.

    ``run_name`` names a new run; with ``rename`` it also renames an attached one (``mlflow run`` names its
    runs at random). ``log_system_metrics`` samples CPU, memory (and GPU) use while the run is active.
    """
    attached = bool(run_id or os.environ.get("MLFLOW_RUN_ID"))
    run = mlflow.start_run(run_id=run_id, run_name=None if attached else run_name, tags=tags,
                           log_system_metrics=log_system_metrics)
    try:
        remove_machine_context(run.info.run_id)
        if attached and rename and run_name:
            MlflowClient().set_tag(run.info.run_id, MLFLOW_RUN_NAME, run_name)
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def shareable_path(path: str) -> str:
    """A local path as a tracking server may see it: relative to the working folder when inside it,
    else only its last part (``<local>/NAME``). Never the machine's absolute path."""
    if not path or "://" in path:
        return path
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute, os.getcwd())
    return relative if not relative.startswith("..") else f"<local>/{os.path.basename(absolute)}"


def shareable_config(cfg):
    """A copy of ``cfg`` whose local paths (``OUTPUT_DIR``, a local ``MODEL.WEIGHTS``) are shareable."""
    shared = cfg.clone()
    shared.defrost()
    shared.OUTPUT_DIR = shareable_path(cfg.OUTPUT_DIR)
    shared.MODEL.WEIGHTS = shareable_path(cfg.MODEL.WEIGHTS)
    shared.freeze()
    return shared


def log_config(cfg) -> None:
    """The merged Detectron2 config, its local paths made shareable: flattened as params, and whole as
    ``config.yaml``.

    Re-logging the same values (a resumed run) is fine; a changed value is a :class:`ConfigError`.
    """
    from mlflow.exceptions import MlflowException

    from seizure_mlflow.errors import ConfigError

    cfg = shareable_config(cfg)
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


def _is_curve(metric: str) -> bool:
    """A training or validation curve of ``losses.csv``: a loss, a validation AP, or a standard error of one."""
    if metric.startswith(TRAIN):
        return is_loss(metric)
    ap = metric.removesuffix(SE_SUFFIX).endswith(tuple(f"/{stat}" for stat in VAL_AP_STATS))
    return is_validation(metric) and (is_loss(metric) or ap)


def log_losses(run_id: str, best_iteration: int | None, client: MlflowClient | None = None,
               monitor=None) -> pd.DataFrame:
    """``losses.csv`` and ``plots/loss_curves.png`` built from the metrics the run holds: train and validation
    losses, validation AP, and the standard errors of the sample's values (``val/*_se``); the plot marks the best
    checkpoint on ``monitor``'s curve (a :class:`~seizure_mlflow.metrics.monitor.Monitor`; default the loss)."""
    from seizure_mlflow.tracking.plots import plot_loss_curves

    client = client or MlflowClient()
    keys = sorted(m for m in client.get_run(run_id).data.metrics if _is_curve(m))
    table = metric_table(run_id, keys, client)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = os.path.join(tmp, LOSSES_CSV)
        table.to_csv(csv_path, index=False)
        client.log_artifact(run_id, csv_path)
        png_path = os.path.join(tmp, os.path.basename(LOSS_PLOT))
        plot_loss_curves(table, png_path, best_iteration=best_iteration, monitor=monitor)
        client.log_artifact(run_id, png_path, artifact_path=os.path.dirname(LOSS_PLOT))
    return table

