"""COCO AP of a detector on a held-out test set, through Detectron2's ``COCOEvaluator`` (pycocotools).

``evaluate_detector`` runs the detector over every test image and returns box and mask AP (in percent, as
Detectron2 reports them), per-category AP, the predictions in COCO results format (so anyone can
recompute AP), and the precision-recall curves. Nothing here talks to MLflow: ``tracking.evaluation`` logs
a result, ``registry.evaluate`` evaluates a registered model and records the result on its run and version.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator
from tqdm import tqdm

from seizure_mlflow.data.catalog import register_coco
from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.data.frames import read_frame
from seizure_mlflow.errors import DatasetError

logger = logging.getLogger(__name__)

TEST_DATASET = "seizure_test"
TASKS = ("bbox", "segm")
SUMMARY_KEYS = ("AP", "AP50", "AP75")
PREDICTIONS = "predictions.json"


def metric_name(task: str, key: str) -> str:
    return f"test/{task}/{key}"


METRICS = tuple(metric_name(t, k) for t in TASKS for k in SUMMARY_KEYS)  # test/bbox/AP ... test/segm/AP75


@dataclass
class EvaluationResult:
    metrics: dict[str, float]  # test/bbox/AP ... test/segm/AP75, percent
    per_category: pd.DataFrame  # category, bbox_AP, segm_AP
    predictions_path: str
    test_digest: str
    num_images: int
    precision: dict[str, np.ndarray] = field(default_factory=dict)  # task -> COCOeval precision [T,R,K,A,M]
    category_names: list[str] = field(default_factory=list)


class _PrecisionKeepingEvaluator(COCOEvaluator):
    """``COCOEvaluator`` that also keeps COCOeval's precision array, for the precision-recall plot."""

    def reset(self):
        super().reset()
        self.precision: dict[str, np.ndarray] = {}

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        if coco_eval is not None:
            self.precision[iou_type] = coco_eval.eval["precision"]
        return super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)


def check_categories_match(detector_categories: list[dict], test: CocoSummary) -> None:
    model = [(c["id"], c["name"]) for c in detector_categories]
    if model != list(test.categories):
        raise DatasetError(f"{test.json_path}: its categories {list(test.categories)} are not the model's {model}; "
                           "evaluate on a test set with the categories the model was trained on")


def evaluate_detector(detector, test: CocoSummary, output_dir: str | os.PathLike, progress: bool = True) -> EvaluationResult:
    """Box and mask AP of ``detector`` (a :class:`~seizure_mlflow.inference.predictor.Detector`) on ``test``."""
    check_categories_match(detector.categories, test)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    register_coco(TEST_DATASET, test)
    records = DatasetCatalog.get(TEST_DATASET)
    evaluator = _PrecisionKeepingEvaluator(TEST_DATASET, tasks=TASKS, distributed=False, output_dir=str(output_dir))
    evaluator.reset()
    batch = detector.batch_size
    for start in tqdm(range(0, len(records), batch), desc="evaluate", unit="batch", disable=not progress):
        chunk = records[start:start + batch]
        images = [read_frame(r["file_name"]) for r in chunk]
        instances = detector.predict_instances(images)
        evaluator.process(chunk, [{"instances": i} for i in instances])
    results = evaluator.evaluate() or {}
    predictions = output_dir / PREDICTIONS
    raw = output_dir / "coco_instances_results.json"
    if raw.exists():
        shutil.move(raw, predictions)
    else:  # no detections at all: an empty, valid results file
        predictions.write_text("[]")
    (output_dir / "instances_predictions.pth").unlink(missing_ok=True)

    metrics, rows = {}, {name: {"category": name} for name in test.category_names}
    for task in TASKS:
        task_results = results.get(task, {})
        for key in SUMMARY_KEYS:
            metrics[metric_name(task, key)] = _finite(task_results.get(key))
        for name in test.category_names:
            rows[name][f"{task}_AP"] = _finite(task_results.get(f"AP-{name}"))
    return EvaluationResult(metrics=metrics, per_category=pd.DataFrame(list(rows.values())),
                            predictions_path=str(predictions), test_digest=test.digest,
                            num_images=len(records), precision=evaluator.precision,
                            category_names=test.category_names)


def _finite(value) -> float:
    """NaN (no predictions at all) counts as 0 AP."""
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summary_line(result: EvaluationResult) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()) + f" on {result.num_images} images"
