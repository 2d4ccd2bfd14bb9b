"""Checkpoints that are read as data only and written whole or not at all.

:class:`SafeCheckpointer` is Detectron2's ``DetectionCheckpointer`` with two changes:

* ``.pkl`` weights (initial weights, or a file ``last_checkpoint`` names) are read through
  :func:`seizure_mlflow.user_files.read_weights_pickle`, never with plain ``pickle``;
* every checkpoint is written to a temporary file in the same folder and renamed over the old one
  (:func:`save_atomically`), so a full disk or a killed process leaves the previous good checkpoint; a failed
  write says "disk full" with the folder, the space free and the space needed.

:func:`check_free_space` runs before training: room for two checkpoints (a periodic one and the best one).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass

import torch
from detectron2.checkpoint import DetectionCheckpointer

from seizure_mlflow.outputs.staging import write_atomically
from seizure_mlflow.errors import UserError
from seizure_mlflow.metrics.names import DEFAULT_MONITOR
from seizure_mlflow.outputs.training_folder import LAST_CHECKPOINT, path_in

logger = logging.getLogger(__name__)


class DiskFullError(UserError):
    """A checkpoint could not be written for lack of space."""


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def _free_bytes(folder: str) -> int:
    return shutil.disk_usage(folder).free


def save_atomically(data, path: str, expected_bytes: int = 0) -> None:
    """``torch.save(data)`` to a temporary file beside ``path``, then renamed to ``path``: a reader sees the old
    file or the new one, never a part. On failure the temporary file is removed and ``path`` is as it was."""
    folder = os.path.dirname(path) or "."
    try:
        write_atomically(path, lambda fh: torch.save(data, fh))
    except (OSError, RuntimeError) as exc:
        if _looks_like_no_space(exc, folder, expected_bytes):
            raise DiskFullError(f"disk full: could not write {os.path.basename(path)} in {folder} "
                                f"({_megabytes(_free_bytes(folder))} free, a checkpoint needs about "
                                f"{_megabytes(expected_bytes)}); the previous checkpoint there is intact. Free some "
                                "space and continue with --resume, or train into a folder on a larger disk",
                                param="output_dir") from None
        raise


def _looks_like_no_space(exc: BaseException, folder: str, expected_bytes: int) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch's zip writer reports a failed write as a RuntimeError ("file write failed", "mmap", "unexpected pos")
    return _free_bytes(folder) < max(expected_bytes, 1 << 20)


def state_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's state dict: the size of its weights in a checkpoint."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if torch.is_tensor(t))


def check_free_space(folder: str, checkpoint_bytes: int, copies: int = 2) -> None:
    """Before training: ``folder`` has room for ``copies`` checkpoints of ``checkpoint_bytes`` each."""
    needed = copies * checkpoint_bytes
    free = _free_bytes(folder)
    if free < needed:
        raise DiskFullError(f"{folder} has {_megabytes(free)} free; training writes checkpoints of about "
                            f"{_megabytes(checkpoint_bytes)} and needs room for {copies} "
                            f"({_megabytes(needed)}); free some space or choose another folder",
                            param="output_dir")


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` reading ``.pkl`` as data only and writing every checkpoint atomically.

    ``checkpoint_bytes`` (model and optimizer state together) sizes the disk-full message; the trainer sets it
    once the optimizer exists.
    """

    checkpoint_bytes: int = 0

    def _load_file(self, filename):
        if not filename.endswith(".pkl"):
            return super()._load_file(filename)
        from seizure_mlflow.user_files import read_weights_pickle

        data = read_weights_pickle(filename)
        if "model" in data and "__author__" in data:  # Detectron2's model-zoo format
            return data
        if "blobs" in data:  # a Caffe2 / Detectron1 detection model (ImageNet backbones have no blobs)
            data = data["blobs"]
        return {"model": {k: v for k, v in data.items() if not k.endswith("_momentum")}, "__author__": "Caffe2",
                "matching_heuristics": True}

    def save(self, name: str, **kwargs) -> None:
        """Detectron2's ``save``, written through :func:`save_atomically`; ``last_checkpoint`` is updated only
        once the file is whole."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        save_atomically(data, save_file, self.checkpoint_bytes)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        write_atomically(path_in(self.save_dir, LAST_CHECKPOINT), lambda fh: fh.write(last_filename_basename),
                         binary=False)


def check_weights_fit(cfg, weights: str, param: str = "weights") -> None:
    """Before any run: load the initial ``weights`` (a local file) into the config's network the way training will
    (Detectron2's name matching, mismatched shapes skipped). None fitting is a :class:`UserError` (training would
    start from scratch without a word); a partial fit is logged with what starts fresh."""
    from seizure_mlflow.lazy.network import build_network

    local_cfg = cfg.clone()
    local_cfg.defrost()
    local_cfg.MODEL.DEVICE = "cpu"
    model = build_network(local_cfg)
    checkpointer = _FitRecordingCheckpointer(model)
    checkpointer.load(weights, checkpointables=[])
    incompatible = checkpointer.incompatible
    fresh = set(incompatible.missing_keys) | {key for key, *_ in incompatible.incorrect_shapes}
    names = [name for name, _ in model.named_parameters()]
    loaded = [name for name in names if name not in fresh]
    if not loaded:
        raise UserError(f"{os.path.basename(weights)}: none of its tensors fit this config's network (its "
                        f"{len(names)} weights, e.g. {names[0]}, would all start from scratch): give weights of this "
                        "architecture (weights=model-zoo for the config's own COCO weights), or '' to train from "
                        "scratch on purpose", param=param)
    if fresh:
        logger.info("Initial weights: %d of the network's %d weights loaded; %d start fresh (e.g. %s)", len(loaded),
                    len(names), len(set(names) & fresh), ", ".join(sorted(set(names) & fresh)[:3]))


class _FitRecordingCheckpointer(SafeCheckpointer):
    """Keeps what Detectron2's loading could not match (``load`` only logs it)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


@dataclass(frozen=True)
class BestCheckpoint:
    """What ``ResumableBestCheckpointer`` saved as ``model_best.pth``: its iteration (iterations completed when its
    validation value was computed), that value, the monitored metric's name and the model weights (memory-mapped,
    read when used)."""

    path: str
    iteration: int
    value: float
    weights: dict
    monitor: str = DEFAULT_MONITOR


def read_best_checkpoint(path: str) -> BestCheckpoint | None:
    """The best checkpoint at ``path``, or None when it does not exist (no finite validation value yet)."""
    if not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return BestCheckpoint(path=path, iteration=int(state["iteration"]) + 1, value=float(state["best_metric"]),
                          weights=state["model"], monitor=str(state.get("monitor", DEFAULT_MONITOR)))
