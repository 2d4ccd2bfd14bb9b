"""What validation measures: each measure is one callable over the validation batches.

A *measure* has a ``name``, ``every`` (it runs at every N-th validation, and always at the last iteration),
``gives(key)`` (whether it measures ``key``, e.g. ``segm/AP``) and
``__call__(model, batches, seed, groups) -> Measured``: values keyed without prefix (``total_loss``, ``segm/AP``),
and for each value its standard error as an estimate from the frames it saw (see below). It must leave the model's
weights, buffers, module modes and every RNG as they were, and be called by every process when running
distributed (it gathers across processes, and every process returns the same values).

* :class:`LossMeasure`: the validation loss of :func:`compute_validation_loss`, the same numbers bit for bit;
* :class:`APMeasure`: COCO box and mask AP and AP50 of eval-mode inference on the same batches (pycocotools),
  in percent as Detectron2 reports them.

**Standard errors.** ``groups`` maps each image id to a replicate group: the frames of the sample, in order, in
blocks of one validation batch, dealt round-robin into at most 20 groups (see
:func:`~seizure_mlflow.data.val_sample.replicate_groups`). A measure recomputes its value with each group left out, and the spread of those
values is the delete-a-group jackknife's standard error. Blocks keep neighbouring (correlated) frames together;
each group holds frames of every video. The validation hook multiplies it by the finite-population correction
``sqrt(1 - n/N)``: the result is how far the sample's value may lie from the whole validation set's.

**The validation loss.** The widely copied ``LossEvalHook`` computes the validation loss with the *training* data pipeline (random
flips, multi-scale resizing), with gradients enabled, with the training RNG (so proposal sampling makes
the value random), in BatchNorm training mode (so validation images leak into the running statistics),
on the main process's share of the data only, and writes into the training event storage (so the
writers smooth it and the detector's own per-batch statistics are mixed into the training ones).

Here the loss of a model on a data set is a function of the weights and the data only:

* test-time preprocessing (``ResizeShortestEdge`` to ``INPUT.MIN_SIZE_TEST``, no flip);
* ``torch.inference_mode()``; normalisation and dropout layers in eval mode (test-time statistics, no update);
* every RNG (Python, NumPy, torch CPU and CUDA) seeded per image (from the seed and the image id, so the
  value does not depend on how images are spread over processes) and restored afterwards;
* an image-weighted mean over the whole set, gathered across all processes;
* a private ``EventStorage``, so the detector's internal scalars do not reach the training storage.

With ``VALIDATION.BATCH_SIZE`` > 1 several images go through one forward: each batch's loss is Detectron2's
loss of that batch (weighted by its size), so values are deterministic for a given batch size and number of
processes, and equal to the one-image-per-forward values up to how the heads normalise over a batch.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seizure_mlflow.metrics.names import TASKS, TOTAL_LOSS, VAL_AP_STATS


AP_KEYS = VAL_AP_STATS
_TEST_TIME_LAYERS = (nn.modules.batchnorm._NormBase, nn.Dropout, nn.Dropout2d)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Restore every RNG (Python, NumPy, torch CPU and CUDA) to its state before the block."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


@contextlib.contextmanager
def loss_mode(model: nn.Module) -> Iterator[None]:
    """Training-mode forward (it returns losses) with test-time normalisation and no dropout.

    Every module's ``training`` flag is restored on exit.
    """
    flags = {m: m.training for m in model.modules()}
    model.train()
    for module in model.modules():
        if isinstance(module, _TEST_TIME_LAYERS):
            module.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


@torch.inference_mode()
def loss_sums(model: nn.Module, data_loader: Iterable, seed: int = 0, groups: Mapping[int, int] | None = None
              ) -> tuple[dict[str, float], int, dict[int, tuple[dict[str, float], int]]]:
    """The validation loss's sums over every process: ``(sums, images, by_group)``. ``sums[name]`` is the sum over
    batches of (batch loss x batch size) for ``total_loss`` and each ``loss_*``; with ``groups`` (``{image id:
    replicate group}``), ``by_group[g]`` holds the same sums and the image count of the batches whose first image is
    in group ``g`` (see :mod:`seizure_mlflow.engine.measures`).

    Deterministic: the same weights on the same data give the same values. Leaves the model's module modes,
    buffers, gradients and every RNG state as they were. Must be called by every process when running distributed
    (it gathers the partial sums).
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    sums: dict[str, float] = defaultdict(float)
    by_group: dict[int, tuple[dict[str, float], list[int]]] = {}
    count = 0
    with loss_mode(model), isolated_rng(), EventStorage():
        for k, batch in enumerate(data_loader):
            seed_everything(seed * 1_000_003 + int(batch[0].get("image_id", k)))
            loss_dict = model(batch)
            n = len(batch)
            batch_sums = {name: float(value) * n for name, value in loss_dict.items()}
            batch_sums[TOTAL_LOSS] = float(sum(loss_dict.values())) * n
            for name, value in batch_sums.items():
                sums[name] += value
            count += n
            if groups is not None:
                group_sums, group_count = by_group.setdefault(groups.get(int(batch[0].get("image_id", k)), 0),
                                                              (defaultdict(float), [0]))
                for name, value in batch_sums.items():
                    group_sums[name] += value
                group_count[0] += n
    gathered = comm.all_gather((dict(sums), count, {g: (dict(s), c[0]) for g, (s, c) in by_group.items()}))
    total_count = sum(c for _, c, _ in gathered)
    if total_count == 0:
        raise RuntimeError("the validation set is empty")
    names = sorted({name for s, _, _ in gathered for name in s})
    totals = {name: sum(s.get(name, 0.0) for s, _, _ in gathered) for name in names}
    merged: dict[int, tuple[dict[str, float], int]] = {}
    for _, _, part in gathered:
        for g, (s, c) in part.items():
            old_sums, old_count = merged.get(g, ({}, 0))
            merged[g] = ({name: old_sums.get(name, 0.0) + s.get(name, 0.0) for name in names}, old_count + c)
    return totals, total_count, merged


def compute_validation_loss(model: nn.Module, data_loader: Iterable, seed: int = 0) -> dict[str, float]:
    """Mean loss per image over the whole data set, across all processes: ``{"total_loss": ..., "loss_*": ...}``
    (see :func:`loss_sums` for what it guarantees)."""
    totals, count, _ = loss_sums(model, data_loader, seed)
    return {name: total / count for name, total in totals.items()}


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
        from seizure_mlflow.evaluation.coco_ap import quiet_coco

        self.every = every
        self.keys = tuple(f"{task}/{key}" for task in ("bbox", "segm") for key in AP_KEYS)
        self._gt = quiet_coco(gt_dataset)
        self._category_ids = sorted(int(c["id"]) for c in gt_dataset["categories"])

    def __call__(self, model: nn.Module, batches: Iterable, seed: int = 0,
                 groups: Mapping[int, int] | None = None) -> Measured:
        from seizure_mlflow.evaluation.coco_ap import ImageMatches, detections_coco

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


