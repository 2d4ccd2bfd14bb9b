"""What validation measures: each measure is one callable over the validation batches.

A *measure* has a ``name``, ``every`` (it runs at every N-th validation, and always at the last iteration),
``gives(key)`` (whether it measures ``key``, e.g. ``segm/AP``) and
``__call__(model, batches, seed, groups) -> Measured``: values keyed without prefix (``total_loss``, ``segm/AP``),
and for each value its standard error as an estimate from the frames it saw (see below). It must leave the model's
weights, buffers, module modes and every RNG as they were, and be called by every process when running
distributed (it gathers across processes, and every process returns the same values).

* :class:`LossMeasure`: the validation loss of :func:`~seizure_mlflow.engine.validation.compute_validation_loss`,
  the same numbers bit for bit;
* :class:`APMeasure`: COCO box and mask AP and AP50 of eval-mode inference on the same batches (pycocotools),
  in percent as Detectron2 reports them.

**Standard errors.** ``groups`` maps each image id to a replicate group: the frames of the sample, in order, in
blocks of one validation batch, dealt round-robin into at most 20 groups (see
:func:`~seizure_mlflow.data.val_sample.replicate_groups`). A measure recomputes its value with each group left out, and the spread of those
values is the delete-a-group jackknife's standard error. Blocks keep neighbouring (correlated) frames together;
each group holds frames of every video. The validation hook multiplies it by the finite-population correction
``sqrt(1 - n/N)``: the result is how far the sample's value may lie from the whole validation set's.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seizure_mlflow.engine.validation import TOTAL_LOSS, isolated_rng, loss_sums

AP_KEYS = ("AP", "AP50")


@dataclass(frozen=True)
class Measured:
    """A measure's values and their standard errors (before the finite-population correction); a value whose error
    cannot be estimated (fewer than two groups) has none."""

    values: dict[str, float]
    errors: dict[str, float] = field(default_factory=dict)


def jackknife_se(replicates: Sequence[float]) -> float:
    """The delete-a-group jackknife standard error from the values with each group left out; NaN for fewer than
    two finite values."""
    values = [v for v in replicates if math.isfinite(v)]
    g = len(values)
    if g < 2:
        return math.nan
    mean = sum(values) / g
    return math.sqrt((g - 1) / g * sum((v - mean) ** 2 for v in values))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class LossMeasure:
    """``total_loss`` and each ``loss_*``: the image-weighted mean loss (see ``compute_validation_loss``)."""

    name = "loss"

    def __init__(self, every: int = 1) -> None:
        self.every = every

    @staticmethod
    def gives(key: str) -> bool:
        return key == TOTAL_LOSS or key.startswith("loss_")

    def __call__(self, model: nn.Module, batches: Iterable, seed: int = 0,
                 groups: Mapping[int, int] | None = None) -> Measured:
        sums, count, by_group = loss_sums(model, batches, seed, groups)
        values = {name: total / count for name, total in sums.items()}
        errors = {}
        if len(by_group) >= 2:
            for name, total in sums.items():
                errors[name] = jackknife_se([(total - g_sums.get(name, 0.0)) / (count - g_count)
                                             for g_sums, g_count in by_group.values() if g_count < count])
        return Measured(values, {k: v for k, v in errors.items() if math.isfinite(v)})


class APMeasure:
    """``bbox/AP``, ``bbox/AP50``, ``segm/AP``, ``segm/AP50`` of the model in eval mode on the validation batches,
    against the ground truth of ``gt_dataset`` (the validation COCO file's dict: boxes and masks in each frame's
    own pixels; the batches carry ``image_id``, ``height`` and ``width``, and the model scales its detections back
    to them). Detectron2's contiguous class ``k`` is the COCO file's ``k``-th category id in sorted order (its
    loader's rule)."""

    name = "ap"

    def __init__(self, gt_dataset: dict, every: int = 1) -> None:
        from seizure_mlflow.coco_ap import quiet_coco

        self.every = every
        self.keys = tuple(f"{task}/{key}" for task in ("bbox", "segm") for key in AP_KEYS)
        self._gt = quiet_coco(gt_dataset)
        self._category_ids = sorted(int(c["id"]) for c in gt_dataset["categories"])

    def __call__(self, model: nn.Module, batches: Iterable, seed: int = 0,
                 groups: Mapping[int, int] | None = None) -> Measured:
        from seizure_mlflow.coco_ap import TASKS, ImageMatches, detections_coco

        detections, image_ids = self.detect(model, batches)
        gathered = comm.all_gather((detections, image_ids))
        detections = [d for part, _ in gathered for d in part]
        image_ids = sorted({i for _, ids in gathered for i in ids})
        dt = detections_coco(self._gt, detections)
        values, errors = {}, {}
        for task in TASKS:
            matches = ImageMatches.evaluate(self._gt, dt, task, image_ids)
            whole = matches.summary()
            replicates = []
            if groups:
                members = defaultdict(list)
                for position, image_id in enumerate(matches.image_ids):
                    members[groups.get(image_id, 0)].append(position)
                if len(members) >= 2:
                    replicates = [matches.summary([p for g, ps in members.items() if g != left for p in ps])
                                  for left in sorted(members)]
            for key in AP_KEYS:
                values[f"{task}/{key}"] = whole[key] if math.isfinite(whole[key]) else 0.0
                se = jackknife_se([r[key] for r in replicates])
                if math.isfinite(se):
                    errors[f"{task}/{key}"] = se
        return Measured(values, errors)

    def gives(self, key: str) -> bool:
        return key in self.keys

    @torch.inference_mode()
    def detect(self, model: nn.Module, batches: Iterable) -> tuple[list[dict], list[int]]:
        """This process's detections in COCO results form (dataset category ids), and the image ids it saw.
        The model runs in eval mode; its module modes and every RNG are restored afterwards."""
        from detectron2.evaluation.coco_evaluation import instances_to_coco_json

        model = _unwrap(model)
        flags = {m: m.training for m in model.modules()}
        detections, image_ids = [], []
        model.eval()
        try:
            with isolated_rng():
                for batch in batches:
                    for item, output in zip(batch, model(batch)):
                        image_id = int(item["image_id"])
                        image_ids.append(image_id)
                        for result in instances_to_coco_json(output["instances"].to("cpu"), image_id):
                            result["category_id"] = self._category_ids[result["category_id"]]
                            detections.append(result)
        finally:
            for module, flag in flags.items():
                module.training = flag
        return detections, image_ids


