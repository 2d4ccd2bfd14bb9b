"""Validation loss during training: the hook, and the function it calls.

The widely copied ``LossEvalHook`` computes the validation loss with the *training* data pipeline (random
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

Validation may run on a fixed *sample* of the set (``val_max_images``, see :class:`ValidationLoss`): ``val/*``
is then the sample's loss, and the whole set's loss is logged as ``val_full/*`` at the end of training (and
every ``full_val_period`` iterations), so the estimate's error is visible in every run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from seizure_mlflow.data.mapper import FrameMapper
from seizure_mlflow.data.val_sample import pilot_size, select_validation_sample, video_groups

logger = logging.getLogger(__name__)

VAL_PREFIX = "val/"
VAL_FULL_PREFIX = "val_full/"
AUTO = "auto"
AUTO_BUDGET = 0.05  # val_max_images=auto: validation costs at most this share of training time
TOTAL_LOSS = "total_loss"
_TEST_TIME_LAYERS = (nn.modules.batchnorm._NormBase, nn.Dropout, nn.Dropout2d)


def build_validation_loader(cfg, dataset_name: str, image_ids: list[int] | None = None, batch_size: int = 1):
    """A loader over ``dataset_name`` (only ``image_ids`` when given) that keeps annotations but uses test-time
    preprocessing; ``batch_size`` images per forward on each process.

    Sharded across processes by Detectron2's ``InferenceSampler``.
    """
    mapper = FrameMapper(
        cfg,
        is_train=True,  # keep annotations: the loss needs them
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")],
    )
    dataset = DatasetCatalog.get(dataset_name)
    if image_ids is not None:
        wanted = set(image_ids)
        dataset = [record for record in dataset if record["image_id"] in wanted]
    return build_detection_test_loader(dataset, mapper=mapper, batch_size=batch_size,
                                       num_workers=cfg.DATALOADER.NUM_WORKERS)


class CachedBatches:
    """Iterates a loader; the first pass keeps its batches (decoded, resized images and annotations) when
    their images total at most ``budget_bytes``, and later passes iterate the kept batches: the preprocessing,
    which is deterministic at test time, is done once, not at every validation period."""

    def __init__(self, loader: Iterable, budget_bytes: int) -> None:
        self._loader = loader
        self._budget = budget_bytes
        self._kept: list | None = None

    @property
    def cached(self) -> bool:
        return self._kept is not None

    def __iter__(self) -> Iterator:
        if self._kept is not None:
            yield from self._kept
            return
        kept, size = [], 0
        for batch in self._loader:
            if kept is not None:
                size += sum(item["image"].numel() * item["image"].element_size() for item in batch)
                if size <= self._budget:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        self._kept = kept


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
def compute_validation_loss(model: nn.Module, data_loader: Iterable, seed: int = 0) -> dict[str, float]:
    """Mean loss per image over the whole data set, across all processes: ``{"total_loss": ..., "loss_*": ...}``.

    Deterministic: the same weights on the same data give the same values. Leaves the model's module
    modes, buffers, gradients and every RNG state as they were. Must be called by every process when
    running distributed (it gathers the partial sums).
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    sums: dict[str, float] = defaultdict(float)
    count = 0
    with loss_mode(model), isolated_rng(), EventStorage():
        for k, batch in enumerate(data_loader):
            seed_everything(seed * 1_000_003 + int(batch[0].get("image_id", k)))
            loss_dict = model(batch)
            n = len(batch)
            for name, value in loss_dict.items():
                sums[name] += float(value) * n
            sums[TOTAL_LOSS] += float(sum(loss_dict.values())) * n
            count += n
    gathered = comm.all_gather((dict(sums), count))
    total_count = sum(c for _, c in gathered)
    if total_count == 0:
        raise RuntimeError("the validation set is empty")
    names = sorted({name for s, _ in gathered for name in s})
    return {name: sum(s.get(name, 0.0) for s, _ in gathered) / total_count for name in names}


@dataclass(frozen=True)
class SampleChoice:
    """The validation sample a run uses: its image ids (in COCO-file order) and how its size was chosen."""

    image_ids: list[int]
    full_size: int
    mode: str  # "all", "fixed" or "auto"
    seconds_per_image: float = 0.0  # auto: the timed first pass
    seconds_per_iteration: float = 0.0  # auto: training, up to the first validation

    @property
    def size(self) -> int:
        return len(self.image_ids)

    @property
    def is_full_set(self) -> bool:
        return self.size == self.full_size


def auto_sample_size(seconds_per_iteration: float, seconds_per_image: float, eval_period: int, smallest: int,
                     full_size: int, budget: float = AUTO_BUDGET) -> int:
    """The largest sample whose validation costs at most ``budget`` of the training time between two
    validations (``eval_period`` iterations), but at least ``smallest`` frames (one per video) and at most the
    whole set."""
    affordable = int(budget * eval_period * seconds_per_iteration / max(seconds_per_image, 1e-9))
    return max(min(smallest, full_size), min(affordable, full_size))


class ValidationLoss(HookBase):
    """Puts ``val/total_loss`` and ``val/loss_*`` into the trainer's storage every ``eval_period``
    iterations and at the last iteration, computed on the validation sample; and ``val_full/*``, the whole
    set's, every ``full_period`` iterations (0: never) and once when training ends (at ``max_iter`` or when a
    hook stops it with :class:`~seizure_mlflow.engine.stopping.StopTraining`; not when it fails).

    The sample: ``max_images`` 0 is the whole set, N a fixed N-frame sample (see
    :func:`~seizure_mlflow.data.val_sample.select_validation_sample`), ``"auto"`` the largest sample whose
    cost stays within :data:`AUTO_BUDGET` of training time, from the training time up to the first validation
    and a timed pass over a pilot sample (one frame per video, at least 8). The choice is part of the hook's
    state (so of every checkpoint: a resumed run keeps its sample) and, on the main process, written to
    ``record_path`` as JSON, with the seconds spent validating (and, at the end, training) in this process.

    Ordering: register it **before** ``BestCheckpointer`` (which reads ``val/total_loss``), the writers
    (so each value is written at its own iteration, unsmoothed, and ``val_full/*`` before the writers' last
    write in ``after_train``) and ``PeriodicCheckpointer`` (so a checkpoint's state includes this iteration's
    validation). Values are put at the iteration that just ran (``trainer.iter``); writers report them as step
    ``trainer.iter + 1``, iterations completed.

    Args:
        loader_factory: ``(image_ids or None, cached) -> iterable of batches`` over the validation set.
        coco_images: the validation COCO file's ``images`` (for choosing frames by video and time).
    """

    def __init__(self, eval_period: int, loader_factory: Callable, coco_images: list[dict], seed: int = 0,
                 max_images: int | str = 0, full_period: int = 0, record_path: str | None = None) -> None:
        self._period = eval_period
        self._loader_factory = loader_factory
        self._images = coco_images
        self._seed = seed
        self._max_images = max_images
        self._full_period = full_period
        self._record_path = record_path
        self.choice: SampleChoice | None = None
        self._loader = None
        self._last_val: tuple[int, dict[str, float]] | None = None
        self._started = 0.0
        self._start_iter = 0
        # wall time of this process's training: validation passes on the sample, on the whole set, auto's pilot
        # pass, and ("training", at the end) the rest; written with the choice to record_path
        self.seconds = {"sample": 0.0, "full": 0.0, "pilot": 0.0}

    def before_train(self) -> None:
        self._started, self._start_iter = time.perf_counter(), self.trainer.iter
        if self.choice is None and self._max_images != AUTO:
            mode = "fixed" if 0 < int(self._max_images) < len(self._images) else "all"
            self._use(SampleChoice(select_validation_sample(self._images, int(self._max_images), self._seed),
                                   len(self._images), mode))

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        last = next_iter == self.trainer.max_iter
        if next_iter % self._period == 0 or last:
            if self.choice is None:
                self._choose_auto(next_iter)
            started = time.perf_counter()
            losses = compute_validation_loss(self.trainer.model, self._loader, self._seed)
            self.seconds["sample"] += time.perf_counter() - started
            self._last_val = (self.trainer.iter, losses)
            self._put(VAL_PREFIX, losses)
        if self._full_period and next_iter % self._full_period == 0 and not last:
            self._put_full(self.trainer.iter)

    def after_train(self) -> None:
        # Detectron2 counts one past the last iteration when training finished, not when a hook stopped it.
        finished = self.trainer.iter >= self.trainer.max_iter
        if (finished or getattr(self.trainer, "stopping", False)) and self.choice is not None:
            self._put_full(self.trainer.iter - 1 if finished else self.trainer.iter)
        total = time.perf_counter() - self._started
        self.seconds["training"] = total - self.seconds["sample"] - self.seconds["full"] - self.seconds["pilot"]
        self._write_record()

    def state_dict(self) -> dict:
        return {"choice": asdict(self.choice)} if self.choice is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if state.get("choice"):
            self._use(SampleChoice(**state["choice"]))

    def _put(self, prefix: str, losses: dict[str, float], iteration: int | None = None) -> None:
        storage = self.trainer.storage
        for name, value in losses.items():
            storage.put_scalar(f"{prefix}{name}", value, smoothing_hint=False, cur_iter=iteration)

    def _put_full(self, iteration: int) -> None:
        if self.choice.is_full_set and self._last_val is not None and self._last_val[0] == iteration:
            losses = self._last_val[1]  # the sample is the whole set: nothing to recompute
        else:
            started = time.perf_counter()
            losses = compute_validation_loss(self.trainer.model, self._loader_factory(None, False), self._seed)
            self.seconds["full"] += time.perf_counter() - started
        self._put(VAL_FULL_PREFIX, losses, iteration)

    def _use(self, choice: SampleChoice) -> None:
        self.choice = choice
        self._loader = self._loader_factory(None if self.choice.is_full_set else self.choice.image_ids, True)
        self._write_record()
        logger.info("Validation sample: %d of %d frames (%s)", choice.size, choice.full_size, choice.mode)

    def _write_record(self) -> None:
        if self._record_path and comm.is_main_process() and self.choice is not None:
            with open(self._record_path, "w") as fh:
                json.dump({**asdict(self.choice), "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}, fh)

    def _choose_auto(self, next_iter: int) -> None:
        seconds_per_iteration = (time.perf_counter() - self._started) / max(next_iter - self._start_iter, 1)
        pilot = select_validation_sample(self._images, pilot_size(self._images), self._seed)
        comm.synchronize()
        started = time.perf_counter()
        compute_validation_loss(self.trainer.model, self._loader_factory(pilot, False), self._seed)
        self.seconds["pilot"] = time.perf_counter() - started
        seconds_per_image = self.seconds["pilot"] / len(pilot)
        videos = len(video_groups(self._images))
        size = auto_sample_size(seconds_per_iteration, seconds_per_image, self._period, videos, len(self._images))
        size, seconds_per_iteration, seconds_per_image = comm.all_gather(
            (size, seconds_per_iteration, seconds_per_image))[0]  # every process takes the main process's choice
        self._use(SampleChoice(select_validation_sample(self._images, size, self._seed), len(self._images), AUTO,
                               seconds_per_image, seconds_per_iteration))
