"""COCO AP of a detector on a held-out test set, through Detectron2's ``COCOEvaluator`` (pycocotools).

``evaluate_detector`` runs the detector over every test image and returns box and mask AP (in percent, as
Detectron2 reports them), per-category AP, the predictions in COCO results format (so anyone can
recompute AP), the precision-recall curves, and the evidence per video: box and mask AP (and AP50) of each test
video, and a 95% interval of the pooled AP from a bootstrap over *videos* (:func:`per_video_evidence`: videos
drawn with replacement, the pooled AP recomputed on the drawn videos' frames, a video drawn twice counting twice;
from the one pass of inference, on the cached per-image matches). Nothing here talks to MLflow: ``tracking.evaluation`` logs
a result, ``registry.evaluate`` evaluates a registered model and records the result on its run and version.
"""

from __future__ import annotations

import json
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

from seizure_mlflow.evaluation.coco_ap import ImageMatches, VideoMatches, detections_coco, quiet_coco
from seizure_mlflow.data.catalog import register_coco
from seizure_mlflow.data.checks import CocoSummary
from seizure_mlflow.data.frames import read_frame
from seizure_mlflow.data.video_identity import grouped_by_video, video_label
from seizure_mlflow.errors import DatasetError
from seizure_mlflow.metrics.names import AP_STATS as SUMMARY_KEYS, CI_HIGH, CI_LOW, TASKS, VAL_AP_STATS, test_metric

logger = logging.getLogger(__name__)

TEST_DATASET = "seizure_test"
PREDICTIONS = "predictions.json"
RESAMPLES = 1000  # bootstrap resamples of the test videos
BOOTSTRAP_SEED = 0




@dataclass
class EvaluationResult:
    metrics: dict[str, float]  # test/bbox/AP ... test/segm/AP75, percent
    per_category: pd.DataFrame  # category, bbox_AP, segm_AP
    predictions_path: str
    test_digest: str
    num_images: int
    precision: dict[str, np.ndarray] = field(default_factory=dict)  # task -> COCOeval precision [T,R,K,A,M]
    category_names: list[str] = field(default_factory=list)
    per_video: pd.DataFrame = field(default_factory=pd.DataFrame)  # video (a digest), frames, bbox_AP, ..., segm_AP50
    resamples: int = 0  # of the interval (0: fewer than two videos, no interval)


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
            metrics[test_metric(task, key)] = _finite(task_results.get(key))
        for name in test.category_names:
            rows[name][f"{task}_AP"] = _finite(task_results.get(f"AP-{name}"))
    per_video, intervals = per_video_evidence(test.json_path, json.loads(predictions.read_text()))
    metrics.update(intervals)
    return EvaluationResult(metrics=metrics, per_category=pd.DataFrame(list(rows.values())),
                            predictions_path=str(predictions), test_digest=test.digest,
                            num_images=len(records), precision=evaluator.precision,
                            category_names=test.category_names, per_video=per_video,
                            resamples=RESAMPLES if intervals else 0)


def video_matches(json_path: str, predictions: list[dict], tasks: tuple[str, ...] = TASKS) -> dict[str, VideoMatches]:
    """``{task: VideoMatches}`` of COCO results on a COCO file's frames, by the package's one video rule (all
    frames one video when their videos are unknown), the videos labelled by :func:`video_label`."""
    dataset = json.loads(Path(json_path).read_text())
    gt = quiet_coco(dataset)
    dt = detections_coco(gt, predictions)
    groups = grouped_by_video(dataset["images"]) or {"": dataset["images"]}
    video_of = {image["id"]: video_label(video) for video, frames in groups.items() for image in frames}
    ids = [image["id"] for image in dataset["images"]]
    return {task: VideoMatches(ImageMatches.evaluate(gt, dt, task, ids), video_of) for task in tasks}


def per_video_evidence(json_path: str, predictions: list[dict], resamples: int = RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[pd.DataFrame, dict[str, float]]:
    """AP and AP50 of each video (a table: ``video``, ``frames``, ``bbox_AP``, ``bbox_AP50``, ``segm_AP``,
    ``segm_AP50``), and ``{test/<task>/AP_ci_low, test/<task>/AP_ci_high}``: the 2.5th and 97.5th percentiles of
    the pooled AP over ``resamples`` bootstrap resamples of the videos (none with fewer than two videos: there is
    nothing to resample)."""
    by_task = video_matches(json_path, predictions)
    videos = by_task[TASKS[0]].videos
    table = pd.DataFrame({"video": videos, "frames": by_task[TASKS[0]].frames})
    intervals = {}
    for task, matches in by_task.items():
        alone = [matches.summary(np.eye(len(videos))[k]) for k in range(len(videos))]
        for key in VAL_AP_STATS:
            table[f"{task}_{key}"] = [_finite(a[key]) for a in alone]
        if len(videos) >= 2:
            values = [_finite(matches.summary(counts)["AP"]) for counts in matches.bootstrap(resamples, seed)]
            low, high = np.percentile(values, [2.5, 97.5])
            intervals[test_metric(task, CI_LOW)], intervals[test_metric(task, CI_HIGH)] = float(low), float(high)
    return table, intervals


def _finite(value) -> float:
    """NaN (no predictions at all) counts as 0 AP."""
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summary_line(result: EvaluationResult) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in result.metrics.items()) + f" on {result.num_images} images"
