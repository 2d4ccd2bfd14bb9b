"""A run's parameters applied to a LazyConfig, the way a Detectron2 user expects them to act.

* ``lr`` -> ``optimizer.lr``; ``ims_per_batch`` -> ``dataloader.train.total_batch_size``; ``num_workers`` ->
  ``dataloader.train.num_workers``; the data's categories -> ``model.roi_heads.num_classes``;
* ``max_iter`` -> ``train.max_iter``, and the LR schedule stretched to it: a scheduler with ``num_updates``
  gets the new length, its ``milestones`` scaled in proportion (the new baselines' 100-epoch step schedule run for
  2,000 iterations steps at the same fractions of training);
* ``min_size`` -> the training augmentations' size: ``ResizeShortestEdge`` short side, large-scale jitter's
  square (``ResizeScale`` target and ``FixedSizeCrop``); test-time resizing is the run's ``INPUT.MIN_SIZE_TEST``.

``overrides`` (``key=value``, Detectron2's own syntax) come after, so they win.
"""

from __future__ import annotations

import math
from typing import Any

from seizure_mlflow.errors import ConfigError
from seizure_mlflow.lazy.spec import TARGET, to_spec

# What a run builds from a spec (training); the registered model builds only its network (see network.py).
TRAINING_MODULES = ("detectron2.modeling.", "detectron2.layers.", "detectron2.data.transforms.", "detectron2.solver.",
                    "fvcore.common.param_scheduler.", "torch.nn.", "torch.optim.")


def apply_run_values(lazy, *, lr: float, ims_per_batch: int, max_iter: int, min_size: int, num_workers: int,
                     num_classes: int) -> None:
    """Set the run's values on ``lazy`` in place (see the module's docstring)."""
    roi_heads = lazy.model.get("roi_heads")
    if roi_heads is None or roi_heads.get("mask_head") is None:
        raise ConfigError("the LazyConfig's model has no roi_heads.mask_head: the package trains Mask R-CNN "
                          "(instance masks); pick a mask_rcnn_* config", param="config")
    roi_heads.num_classes = num_classes
    lazy.optimizer.lr = lr
    train_loader = lazy.dataloader.train
    train_loader.total_batch_size = ims_per_batch
    train_loader.num_workers = num_workers
    if "train" in lazy:
        lazy.train.max_iter = max_iter
    _stretch_schedule(lazy.lr_multiplier, max_iter)
    for augmentation in train_loader.mapper.get("augmentations") or []:
        _resize(augmentation, min_size)


def _schedules(node, key: str = "lr_multiplier"):
    """``(key, node)`` of every scheduler node below ``node`` that has a length (``num_updates``)."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return
    if "num_updates" in node:
        yield key, node
    for name in node:
        yield from _schedules(node[name], f"{key}.{name}")


def _stretch_schedule(lr_multiplier, max_iter: int) -> None:
    for _, node in _schedules(lr_multiplier):
        if "milestones" in node and node.num_updates:
            node.milestones = [round(m * max_iter / node.num_updates) for m in node.milestones]
        node.num_updates = max_iter


def check_schedule(lr_multiplier) -> None:
    """Every step schedule in ``lr_multiplier`` steps at rising iterations below its length (after
    :func:`apply_run_values` stretched it and ``opts`` had their say); a :class:`ConfigError` with the numbers
    otherwise."""
    for key, node in _schedules(lr_multiplier):
        if "milestones" not in node or not node.num_updates:
            continue
        steps, length = list(node.milestones), node.num_updates
        if not all(a < b for a, b in zip([0] + steps, steps + [length])):
            raise ConfigError(f"{length} iterations are too short for the LR steps of this config: stretched to them, "
                              f"{key}.milestones fall on {steps}, which must rise and stay below {length}; train "
                              f"longer, or give the steps in opts ({key}.milestones=[...] and {key}.values=[...])",
                              param="max_iter")


def _resize(augmentation, size: int) -> None:
    target = str(to_spec(augmentation.get(TARGET), TARGET)).rsplit(".", 1)[-1]
    if target == "ResizeShortestEdge":
        shorts = augmentation.short_edge_length
        longest_short = max(shorts) if not isinstance(shorts, (int, float)) else shorts
        augmentation.short_edge_length = [size]
        augmentation.sample_style = "choice"
        if augmentation.get("max_size"):
            augmentation.max_size = math.ceil(size * augmentation.max_size / longest_short)
    elif target == "ResizeScale":
        augmentation.target_height = augmentation.target_width = size
    elif target == "FixedSizeCrop":
        augmentation.crop_size = [size, size]


def apply_overrides(lazy, overrides: list[str]) -> None:
    """Detectron2's ``key=value`` overrides (values read as Python literals); a key the config lacks is refused."""
    from detectron2.config import LazyConfig
    from omegaconf import OmegaConf

    for item in overrides:
        key = item.partition("=")[0]
        if OmegaConf.select(lazy, key, default=KeyError) is KeyError:
            raise ConfigError(f"opts {item!r}: the LazyConfig has no key {key}", param="opts")
        try:
            LazyConfig.apply_overrides(lazy, [item])
        except Exception as exc:  # omegaconf's errors for a value the key cannot take
            raise ConfigError(f"opts {item!r}: {type(exc).__name__}: {exc}", param="opts") from None


def training_spec(lazy) -> dict[str, Any]:
    """What training needs of ``lazy``, as data: the network, the optimizer (its ``params.model`` left for the
    trainer to fill), the LR multiplier, the training augmentations and whether boxes are recomputed from masks."""
    optimizer = to_spec(lazy.optimizer, "optimizer")
    if isinstance(optimizer.get("params"), dict):
        optimizer["params"].pop("model", None)
    mapper = lazy.dataloader.train.mapper
    return {"model": to_spec(lazy.model, "model"),
            "optimizer": optimizer,
            "lr_multiplier": to_spec(lazy.lr_multiplier, "lr_multiplier"),
            "augmentations": to_spec(mapper.get("augmentations") or [], "dataloader.train.mapper.augmentations"),
            "recompute_boxes": bool(mapper.get("recompute_boxes", False)),
            "checkpoint_period": int(lazy.get("train", {}).get("checkpointer", {}).get("period", 5000)),
            "input_format": str(lazy.model.get("input_format", "BGR"))}
