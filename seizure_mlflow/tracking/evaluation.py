"""An evaluation result in an MLflow run: AP metrics, predictions, per-category AP and the PR plot."""

from __future__ import annotations

import os
import tempfile

import mlflow
from mlflow import MlflowClient

from seizure_mlflow.evaluation.detector import EvaluationResult

PER_CATEGORY = "per_category_ap.csv"
PER_VIDEO = "per_video_ap.csv"  # one row per test video, named by a digest (see data.video_identity.video_label)
PR_PLOT = "plots/precision_recall.png"
PER_VIDEO_PLOT = "plots/per_video_ap.png"


def log_evaluation(result: EvaluationResult, run_id: str, model_id: str | None = None, dataset=None,
                   client: MlflowClient | None = None) -> None:
    """Metrics, ``predictions.json``, ``per_category_ap.csv``, ``per_video_ap.csv``, ``plots/precision_recall.png``
    and ``plots/per_video_ap.png`` in a run.

    With ``model_id`` (and ``dataset``, the test set's dataset entity) the metrics are linked to that logged
    model and data set too, so the MLflow UI shows them on the model and can rank models by them.
    """
    from seizure_mlflow.tracking.plots import plot_per_video_ap, plot_precision_recall

    client = client or MlflowClient()
    mlflow.log_metrics(result.metrics, step=0, run_id=run_id, model_id=model_id, dataset=dataset)
    client.log_artifact(run_id, result.predictions_path)
    with tempfile.TemporaryDirectory() as tmp:
        _log_table_and_plot(client, run_id, tmp, result.per_category, PER_CATEGORY, plot_precision_recall, result, PR_PLOT)
        if len(result.per_video):
            _log_table_and_plot(client, run_id, tmp, result.per_video, PER_VIDEO, plot_per_video_ap, result,
                                PER_VIDEO_PLOT)


def _log_table_and_plot(client: MlflowClient, run_id: str, tmp: str, table, table_name: str, plot, result,
                        plot_name: str) -> None:
    """``table`` as the artifact ``table_name`` (CSV) and ``plot(result, path)`` as ``plot_name``."""
    csv_path = os.path.join(tmp, table_name)
    table.to_csv(csv_path, index=False)
    client.log_artifact(run_id, csv_path)
    png = os.path.join(tmp, os.path.basename(plot_name))
    plot(result, png)
    client.log_artifact(run_id, png, artifact_path=os.path.dirname(plot_name))
