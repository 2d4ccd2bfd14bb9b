"""Validation loss during training: the hook, and the function it calls.

The widely copied ``LossEvalHook`` computes the validation loss with the *training* data pipeline (random
flips, multi-scale resizing), with gradients enabled, with the training RNG (so proposal sampling makes
the value random), in BatchNorm training mode (so validation images leak into the running statistics),
on the main process's share of the data only, and writes into the training event storage (so the
writers smooth it and the detector's own per-batch statistics are mixed into the training ones).

Here the loss of a model on a data set is a function of the weights and the data only:

* test-time preprocessing (``ResizeShortestEdge`` to ``INPUT.MIN_SIZE_TEST``, no flip);
* ``torch.no_grad()``; normalisation and dropout layers in eval mode (test-time statistics, no update);
* every RNG (Python, NumPy, torch CPU and CUDA) seeded per image (from the seed and the image id, so the
  value does not depend on how images are spread over processes) and restored afterwards;
* an image-weighted mean over the whole set, gathered across all processes;
* a private ``EventStorage``, so the detector's internal scalars do not reach the training storage.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from typing import Iterable, Iterator

import numpy as np
import torch
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn.parallel import DistributedDataParallel

VAL_PREFIX = "val/"
TOTAL_LOSS = "total_loss"
_TEST_TIME_LAYERS = (nn.modules.batchnorm._NormBase, nn.Dropout, nn.Dropout2d)


def build_validation_loader(cfg, dataset_name: str):
    """A loader over ``dataset_name`` that keeps annotations but uses test-time preprocessing.

    Sharded across processes by Detectron2's ``InferenceSampler``; batch size 1.
    """
    mapper = DatasetMapper(
        cfg,
        is_train=True,  # keep annotations: the loss needs them
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")],
    )
    return build_detection_test_loader(cfg, dataset_name, mapper=mapper)


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


@torch.no_grad()
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


class ValidationLoss(HookBase):
    """Puts ``val/total_loss`` and ``val/loss_*`` into the trainer's storage every ``eval_period``
    iterations and at the last iteration.

    Ordering: register it **before** ``BestCheckpointer`` (which reads ``val/total_loss``), the writers
    (so each value is written at its own iteration, unsmoothed) and ``PeriodicCheckpointer`` (so a
    checkpoint's state includes this iteration's validation). The values are put at the iteration that just ran
    (``trainer.iter``); writers report them as step ``trainer.iter + 1``, iterations completed.
    """

    def __init__(self, eval_period: int, data_loader: Iterable, seed: int = 0) -> None:
        self._period = eval_period
        self._loader = data_loader
        self._seed = seed

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period == 0 or next_iter == self.trainer.max_iter:
            losses = compute_validation_loss(self.trainer.model, self._loader, self._seed)
            self.trainer.storage.put_scalars(
                smoothing_hint=False, **{f"{VAL_PREFIX}{name}": value for name, value in losses.items()}
            )
