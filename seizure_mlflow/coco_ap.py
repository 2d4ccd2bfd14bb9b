"""COCO AP of detections on any part of a set of images, from one per-image evaluation (pycocotools).

``COCOeval.evaluate`` matches detections to ground truth image by image; ``accumulate`` turns the matches into
precision-recall curves. :class:`ImageMatches` runs the first once and the second on any multiset of the
evaluated images (a subset, or a resample in which an image appears twice and counts twice), so that AP on many
parts of a set (a jackknife, a bootstrap) costs an ``accumulate`` each, not another pass of inference.

pycocotools' own ``params.imgIds`` cannot select a part after ``evaluate`` (its ``accumulate`` indexes the
evaluated images by their position in the *new* list), so :meth:`ImageMatches.precision` rebuilds the per-image
list for the part it is given.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

TASKS = ("bbox", "segm")
# (key, IoU threshold index in COCOeval's precision array or None for the mean over 0.50:0.95)
SUMMARY = (("AP", None), ("AP50", 0))


def quiet_coco(dataset: dict) -> COCO:
    """A pycocotools ``COCO`` index over a COCO dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detections_coco(gt: COCO, detections: list[dict]) -> COCO:
    """The detections (COCO results: ``image_id``, ``category_id``, ``bbox``, ``score``, ``segmentation``) as a
    ``COCO`` index beside ``gt``; none at all is an empty index (pycocotools' ``loadRes`` refuses an empty list)."""
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(detections))
    return quiet_coco({"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []})


def summary_from_precision(precision: np.ndarray) -> dict[str, float]:
    """``{"AP": ..., "AP50": ...}`` in percent from COCOeval's precision array (all areas, 100 detections), as
    ``COCOeval.summarize`` computes them; NaN when no image of the part has ground truth."""
    out = {}
    for key, iou_index in SUMMARY:
        curve = precision[:, :, :, 0, -1] if iou_index is None else precision[iou_index, :, :, 0, -1]
        valid = curve[curve > -1]
        out[key] = float(np.mean(valid)) * 100 if valid.size else math.nan
    return out


@dataclass
class ImageMatches:
    """One task's (``bbox`` or ``segm``) per-image matches of detections to ground truth on ``image_ids``."""

    task: str
    evaluation: COCOeval

    @classmethod
    def evaluate(cls, gt: COCO, dt: COCO, task: str, image_ids: Sequence[int]) -> "ImageMatches":
        evaluation = COCOeval(gt, dt, task)
        evaluation.params.imgIds = sorted(set(int(i) for i in image_ids))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation.evaluate()
        return cls(task, evaluation)

    @property
    def image_ids(self) -> list[int]:
        """The evaluated images, in the order positions refer to."""
        return list(self.evaluation._paramsEval.imgIds)

    def precision(self, positions: Sequence[int] | None = None) -> np.ndarray:
        """COCOeval's precision array ``[T, R, K, A, M]`` over the images at ``positions`` of :attr:`image_ids`
        (repeats count as often as they appear; None: all of them)."""
        ev = self.evaluation
        pe = ev._paramsEval
        count = len(pe.imgIds)
        positions = list(range(count)) if positions is None else [int(p) for p in positions]
        categories = len(pe.catIds) if pe.useCats else 1
        areas = len(pe.areaRng)
        part = copy.copy(ev)
        part.evalImgs = [ev.evalImgs[k * areas * count + a * count + i]
                         for k in range(categories) for a in range(areas) for i in positions]
        part._paramsEval = copy.copy(pe)
        part._paramsEval.imgIds = [pe.imgIds[i] for i in positions]
        part.params = copy.copy(ev.params)
        part.params.imgIds = list(part._paramsEval.imgIds)
        with contextlib.redirect_stdout(io.StringIO()):
            part.accumulate()
        return part.eval["precision"]

    def summary(self, positions: Sequence[int] | None = None) -> dict[str, float]:
        """``{"AP", "AP50"}`` in percent on the images at ``positions`` (see :meth:`precision`)."""
        return summary_from_precision(self.precision(positions))
