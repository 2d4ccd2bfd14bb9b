"""Evaluate a detector on a test set and record the result: metrics and files in a run, tags on its version.

The one path behind ``seizure-mlflow evaluate``, the end of a training run with a test set, and promotion.
"""

from __future__ import annotations

import tempfile

from mlflow import MlflowClient

from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.evaluation.detector import EvaluationResult, evaluate_detector
from seizure_mlflow.registry.register import tag_evaluation
from seizure_mlflow.registry.uris import logged_model_id
from seizure_mlflow.tracking.datasets import TESTING, coco_dataset
from seizure_mlflow.tracking.evaluation import log_evaluation


def evaluate_and_record(detector, test: CocoSummary, run_id: str, version: tuple[str, str] | None = None) -> EvaluationResult:
    """Evaluate, log everything in run ``run_id`` (the metrics linked to the version's logged model and to the
    test set), and tag the registered ``(name, version)`` if given."""
    client = MlflowClient()
    model_id = logged_model_id(client.get_model_version(*version)) if version is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate_detector(detector, test, tmp)
        log_evaluation(result, run_id, model_id=model_id, dataset=coco_dataset(test, TESTING))
    if version is not None:
        tag_evaluation(client, version[0], version[1], result.metrics, result.test_digest, run_id)
    return result
