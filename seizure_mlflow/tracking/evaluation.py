"""An evaluation result in an MLflow run: AP metrics, predictions, per-category AP and the PR plot."""

from __future__ import annotations

import os
import tempfile
import time

from mlflow import MlflowClient
from mlflow.entities import Metric

from seizure_mlflow.evaluation import EvaluationResult

PER_CATEGORY = "per_category_ap.csv"
PR_PLOT = "plots/precision_recall.png"


def log_evaluation(result: EvaluationResult, run_id: str, client: MlflowClient | None = None) -> None:
    """Metrics, ``predictions.json``, ``per_category_ap.csv`` and ``plots/precision_recall.png`` in a run."""
    from seizure_mlflow.tracking.plots import plot_precision_recall

    client = client or MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in result.metrics.items()])
    client.log_artifact(run_id, result.predictions_path)
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = os.path.join(tmp, PER_CATEGORY)
        result.per_category.to_csv(csv_path, index=False)
        client.log_artifact(run_id, csv_path)
        png = os.path.join(tmp, os.path.basename(PR_PLOT))
        plot_precision_recall(result, png)
        client.log_artifact(run_id, png, artifact_path=os.path.dirname(PR_PLOT))
