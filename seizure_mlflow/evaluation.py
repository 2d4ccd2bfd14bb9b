"""COCO AP of a detector on a held-out test set, through Detectron2's ``COCOEvaluator`` (pycocotools).

``evaluate_detector`` runs the detector over every test image and returns box and mask AP (in percent, as
Detectron2 reports them), per-category AP, the predictions in COCO results format (so anyone can
recompute AP), and the precision-recall curves. ``log_evaluation`` records all of it in an MLflow run.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator
from tqdm import tqdm

from seizure_mlflow.data.catalog import register_coco
from seizure_mlflow.data.checks import CocoSummary, file_digest
from seizure_mlflow.errors import DatasetError

logger = logging.getLogger(__name__)

TEST_DATASET = "seizure_test"
TASKS = ("bbox", "segm")
SUMMARY_KEYS = ("AP", "AP50", "AP75")
PREDICTIONS = "predictions.json"
PER_CATEGORY = "per_category_ap.csv"
PR_PLOT = "plots/precision_recall.png"


def metric_name(task: str, key: str) -> str:
    return f"test/{task}/{key}"


def version_tag(metric: str) -> str:
    """``test/segm/AP`` -> ``test_segm_AP``: the model-version tag that holds a metric's value."""
    return metric.replace("/", "_")


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
        images = [cv2.imread(r["file_name"], cv2.IMREAD_COLOR) for r in chunk]
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
                            predictions_path=str(predictions), test_digest=file_digest(test.json_path),
                            num_images=len(records), precision=evaluator.precision,
                            category_names=test.category_names)


def _finite(value) -> float:
    """NaN (no predictions at all) counts as 0 AP."""
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def plot_precision_recall(result: EvaluationResult, path: str) -> None:
    """Precision against recall per category, at IoU 0.50 and 0.75, boxes and masks (all areas, 100 dets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def log_evaluation(result: EvaluationResult, run_id: str, client=None) -> None:
    """Metrics, ``predictions.json``, ``per_category_ap.csv`` and the precision-recall plot in a run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

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


def tag_version(client, model_name: str, version: str, result: EvaluationResult, evaluation_run_id: str) -> None:
    """The version's test metrics as tags (``test_bbox_AP``, ``test_segm_AP``, ...) and the test set's digest."""
    for key, value in result.metrics.items():
        client.set_model_version_tag(model_name, version, version_tag(key), f"{value:.4f}")
    client.set_model_version_tag(model_name, version, "test_digest", result.test_digest)
    client.set_model_version_tag(model_name, version, "evaluation_run_id", evaluation_run_id)


def evaluate_and_record(detector, test: CocoSummary, run_id: str, version: tuple[str, str] | None = None) -> EvaluationResult:
    """Evaluate, log everything in run ``run_id``, and tag the registered ``(name, version)`` if given.

    The one path behind ``evaluate``, the end of a training run with a test set, and promotion.
    """
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate_detector(detector, test, tmp)
        log_evaluation(result, run_id)
    if version is not None:
        tag_version(MlflowClient(), version[0], version[1], result, run_id)
    return result


def summary_line(result: EvaluationResult) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()) + f" on {result.num_images} images"


def detector_from_uri(model_uri: str):
    """The Detector inside a registered pyfunc model (``models:/NAME@ALIAS``, ``models:/NAME/V``, ``runs:/ID/model``)."""
    import mlflow.pyfunc

    from seizure_mlflow.errors import UserError
    from seizure_mlflow.registry.model import SeizureDetectorModel

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # MLflow raises several types for a bad URI
        raise UserError(f"cannot load model {model_uri!r}: {str(exc).splitlines()[0]}") from None
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, SeizureDetectorModel):
        raise UserError(f"{model_uri} is not a seizure-mlflow detector (it is {type(python_model).__name__})")
    return python_model.detector


def registered_version(model_uri: str):
    """``(name, version)`` of the registered version a URI points at, or None (e.g. ``runs:/`` not registered)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if model_uri.startswith("models:/"):
        ref = model_uri[len("models:/"):]
        if "@" in ref:
            name, alias = ref.split("@", 1)
            v = client.get_model_version_by_alias(name, alias)
            return name, str(v.version)
        name, _, version = ref.rpartition("/")
        if name and version.isdigit():
            return name, version
        return None
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/"):].split("/", 1)[0]
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        return (versions[0].name, str(versions[0].version)) if len(versions) == 1 else None
    return None
