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

# (key, IoU threshold index in COCOeval's precision array or None for the mean over 0.50:0.95)
SUMMARY = (("AP", None), ("AP50", 0), ("AP75", 5))


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
    """``{"AP": ..., "AP50": ..., "AP75": ...}`` in percent from COCOeval's precision array (all areas, 100 detections), as
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
        """``{"AP", "AP50", "AP75"}`` in percent on the images at ``positions`` (see :meth:`precision`)."""
        return summary_from_precision(self.precision(positions))


@dataclass
class _Category:
    """One category's detections over the evaluated images, in pycocotools' score order: true and false positives
    at each IoU threshold ``[T, D]`` (ignored detections are neither), the video of each detection, and the
    ground truth that counts, per video."""

    tp: np.ndarray
    fp: np.ndarray
    video: np.ndarray
    ground_truth: np.ndarray


class VideoMatches:
    """One task's per-image matches folded by video, for AP on a *resample of videos*: a video drawn twice counts
    twice (each of its frames, detections and ground truth), a video not drawn not at all.

    :meth:`summary` of ``counts`` (how often each video is drawn) equals pycocotools' AP on the set in which each
    video's frames appear that often (up to how detections of equal score are ordered among copies), at the cost
    of a few weighted cumulative sums, so that thousands of resamples take seconds: no ``accumulate`` per resample.
    All areas, at most 100 detections per image, as ``COCOeval.summarize``'s AP, AP50 and AP75.

    Args:
        matches: the task's :class:`ImageMatches`.
        video_of: ``{image id: video}`` for every evaluated image.
    """

    def __init__(self, matches: ImageMatches, video_of: dict[int, str]) -> None:
        ev = matches.evaluation
        pe = ev._paramsEval
        self.videos = sorted(set(video_of[i] for i in pe.imgIds))
        index = {video: k for k, video in enumerate(self.videos)}
        self.frames = [0] * len(self.videos)  # evaluated frames of each video
        for image_id in pe.imgIds:
            self.frames[index[video_of[image_id]]] += 1
        count, areas = len(pe.imgIds), len(pe.areaRng)
        self.recall_thresholds = np.asarray(pe.recThrs)
        self._categories: list[_Category] = []
        for k in range(len(pe.catIds) if pe.useCats else 1):
            entries = [(ev.evalImgs[k * areas * count + i], index[video_of[image_id]])
                       for i, image_id in enumerate(pe.imgIds)]
            entries = [(e, v) for e, v in entries if e is not None]
            thresholds = len(pe.iouThrs)
            ground_truth = np.zeros(len(self.videos))
            for e, v in entries:
                ground_truth[v] += np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            if not entries:
                self._categories.append(_Category(np.zeros((thresholds, 0)), np.zeros((thresholds, 0)),
                                                  np.zeros(0, dtype=int), ground_truth))
                continue
            scores = np.concatenate([e["dtScores"][:100] for e, _ in entries])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([e["dtMatches"][:, :100] for e, _ in entries], axis=1)[:, order]
            ignored = np.concatenate([e["dtIgnore"][:, :100] for e, _ in entries], axis=1)[:, order]
            video = np.concatenate([np.full(len(e["dtScores"][:100]), v) for e, v in entries]).astype(int)[order]
            counted = np.logical_not(ignored)
            self._categories.append(_Category(np.logical_and(matched, counted).astype(float),
                                              np.logical_and(np.logical_not(matched), counted).astype(float),
                                              video, ground_truth))

    def summary(self, counts: np.ndarray | None = None) -> dict[str, float]:
        """``{"AP", "AP50", "AP75"}`` in percent on the videos drawn ``counts`` times each (None: each once)."""
        counts = np.ones(len(self.videos)) if counts is None else np.asarray(counts, dtype=float)
        precision = []  # one [T, R] array per category with ground truth
        for category in self._categories:
            ground_truth = float(category.ground_truth @ counts)
            if ground_truth == 0:
                continue
            weights = counts[category.video]
            tp = np.cumsum(category.tp * weights, axis=1)
            fp = np.cumsum(category.fp * weights, axis=1)
            q = np.zeros((tp.shape[0], len(self.recall_thresholds)))
            for t in range(tp.shape[0]):
                if tp.shape[1] == 0:
                    continue
                recall = tp[t] / ground_truth
                prec = tp[t] / (tp[t] + fp[t] + np.spacing(1))
                prec = np.maximum.accumulate(prec[::-1])[::-1]  # precision made monotone from the right
                at = np.searchsorted(recall, self.recall_thresholds, side="left")
                found = at < len(recall)
                q[t, found] = prec[at[found]]
            precision.append(q)
        if not precision:
            return {key: math.nan for key, _ in SUMMARY}
        stacked = np.stack(precision)  # [K, T, R]
        return {key: float(stacked.mean() if t is None else stacked[:, t, :].mean()) * 100 for key, t in SUMMARY}

    def bootstrap(self, resamples: int = 1000, seed: int = 0) -> np.ndarray:
        """The video-count vectors of ``resamples`` bootstrap resamples (videos drawn with replacement, as many as
        there are), seeded: ``[resamples, videos]``. The same array serves two models' paired comparison."""
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(self.videos), size=(resamples, len(self.videos)))
        return np.stack([np.bincount(row, minlength=len(self.videos)) for row in draws])
