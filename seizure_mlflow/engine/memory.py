"""Memory exhaustion in training, reported as what it is: the batch, the image size and the device's memory.

PyTorch says "DefaultCPUAllocator: can't allocate memory: you tried to allocate 891289600 bytes" (CPU) or raises
``torch.OutOfMemoryError`` (CUDA) from deep inside a convolution; the user needs to know which setting to lower.
:func:`raise_named` is called with the exception a training raised: memory exhaustion becomes :class:`OutOfMemory`
(a :class:`~seizure_mlflow.errors.UserError`: one message, exit 2, the run FAILED), anything else is raised as it is.
"""

from __future__ import annotations

from typing import NoReturn

from seizure_mlflow.config import device_memory
from seizure_mlflow.errors import UserError

_MESSAGES = ("can't allocate memory", "out of memory", "cannot allocate memory")


class OutOfMemory(UserError):
    """Training ran out of memory on its device."""


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MESSAGES)


def raise_named(exc: BaseException, cfg) -> NoReturn:
    """Raise :class:`OutOfMemory` (from ``exc``) if ``exc`` is memory exhaustion, else ``exc`` itself."""
    if not is_out_of_memory(exc):
        raise exc
    from detectron2.utils import comm

    memory, where = device_memory(str(cfg.MODEL.DEVICE))
    per_process = cfg.SOLVER.IMS_PER_BATCH // max(1, comm.get_world_size())
    raise OutOfMemory(
        f"out of memory in training on {cfg.MODEL.DEVICE} ({where}: {memory / 2**30:.1f} GiB): a batch of "
        f"{cfg.SOLVER.IMS_PER_BATCH} images ({per_process} per process) resized to a shorter side of "
        f"{max(cfg.INPUT.MIN_SIZE_TRAIN)} px (longer side at most {cfg.INPUT.MAX_SIZE_TRAIN} px) did not fit; "
        f"lower ims_per_batch or min_size (or VALIDATION.BATCH_SIZE {cfg.VALIDATION.BATCH_SIZE}, if it was "
        "validating); resume with --resume from the last checkpoint") from exc
