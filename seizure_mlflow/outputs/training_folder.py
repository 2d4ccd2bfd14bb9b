"""The training output folder (``OUTPUT_DIR``): every file name in it, its lock, its owner and the resume rule.

What a training writes there, and who reads it:

* ``last_checkpoint`` names the newest periodic checkpoint (``model_NNNNNNN.pth``; Detectron2's convention,
  written atomically by :class:`~seizure_mlflow.engine.checkpoint.SafeCheckpointer`); ``model_final.pth`` at the end;
* ``model_best.pth``: the best checkpoint so far by ``monitor`` (``ResumableBestCheckpointer``), and with
  ``log_checkpoints=improvements`` each improvement as ``model_improvement_NNNNNNN.pth``;
* ``mlflow_run.json``: the owner, the MLflow run these checkpoints belong to (:func:`check_no_other_run`,
  :func:`run_to_resume`);
* ``.seizure-mlflow.lock`` while a training runs (:class:`OutputFolderLock`);
* ``stop.json`` (why and when training ended: :func:`write_stop`), ``validation_sample.json`` (the validation
  sample's image ids), ``metrics.json`` (Detectron2's JSON writer) and ``metrics_spool/`` (values waiting for the
  tracking server).

Every other module asks this one for these names and rules.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from seizure_mlflow.errors import UserError

LAST_CHECKPOINT = "last_checkpoint"
FINAL_CHECKPOINT = "model_final"
BEST_CHECKPOINT = "model_best"  # model_best.pth: see ResumableBestCheckpointer for what it holds
IMPROVEMENT_PREFIX = "model_improvement_"
RUN_FILE = "mlflow_run.json"  # which MLflow run these checkpoints belong to
STOP_FILE = "stop.json"  # why and when the training processes stopped
VALIDATION_SAMPLE_FILE = "validation_sample.json"  # the validation sample's image ids, see Validation
METRICS_JSON = "metrics.json"  # Detectron2's JSONWriter
METRIC_SPOOL = "metrics_spool"  # metric values waiting for the tracking server (see tracking.delivery)


def path_in(output_dir: str | os.PathLike, name: str) -> str:
    """``output_dir/name`` (``name`` one of this module's file names)."""
    return os.path.join(output_dir, name)


def best_checkpoint_path(output_dir: str) -> str:
    return path_in(output_dir, f"{BEST_CHECKPOINT}.pth")


def improvement_checkpoint_path(output_dir: str, iterations: int) -> str:
    """``model_improvement_NNNNNNN.pth`` (iterations completed)."""
    return path_in(output_dir, f"{IMPROVEMENT_PREFIX}{iterations:07d}.pth")


def improvement_checkpoints(output_dir: str) -> list[Path]:
    return sorted(Path(output_dir).glob(f"{IMPROVEMENT_PREFIX}*.pth"))


def write_stop(output_dir: str, reason: str, stopped_at: int) -> None:
    """Rank 0's record of how training ended, for the process that records the run (see :func:`read_stop`)."""
    with open(path_in(output_dir, STOP_FILE), "w") as fh:
        json.dump({"reason": reason, "stopped_at": stopped_at}, fh)


def read_stop(output_dir: str) -> tuple[str, int]:
    """``(reason, stopped_at)`` as :func:`write_stop` left them."""
    with open(path_in(output_dir, STOP_FILE)) as fh:
        stop = json.load(fh)
    return stop["reason"], int(stop["stopped_at"])


def write_owner(output_dir: str, run_id: str) -> None:
    """Record which MLflow run the checkpoints in ``output_dir`` belong to."""
    with open(path_in(output_dir, RUN_FILE), "w") as fh:
        json.dump({"run_id": run_id}, fh)


def check_no_other_run(output_dir: str) -> None:
    """A folder that holds another run's checkpoints is not trained into again (that would overwrite them)."""
    owner = path_in(output_dir, RUN_FILE)
    if os.path.isfile(owner) or os.path.isfile(path_in(output_dir, LAST_CHECKPOINT)):
        try:
            with open(owner) as fh:
                which = f"run {json.load(fh)['run_id']}"
        except (OSError, ValueError, KeyError):
            which = "another run"
        raise UserError(f"{output_dir} holds the checkpoints of {which}; continue it with resume (--resume), or train "
                        "into a new folder", param="output_dir")


def run_to_resume(output_dir: str) -> str:
    """The MLflow run id that the checkpoints in ``output_dir`` belong to; a clear error if none can be resumed.
    The checkpoint that ``last_checkpoint`` names is checked to load as data (see :mod:`seizure_mlflow.user_files`)."""
    from seizure_mlflow.user_files import check_weights_file

    last = path_in(output_dir, LAST_CHECKPOINT)
    if not os.path.isfile(last):
        raise UserError(f"no checkpoint in {output_dir} (no {LAST_CHECKPOINT} file); nothing to resume",
                        param="output_dir")
    with open(last) as fh:
        checkpoint = path_in(output_dir, fh.read().strip())
    if not os.path.isfile(checkpoint):
        raise UserError(f"{last} names {os.path.basename(checkpoint)}, which is not there; nothing to resume",
                        param="output_dir")
    check_weights_file(checkpoint, param="output_dir")
    try:
        with open(path_in(output_dir, RUN_FILE)) as fh:
            return json.load(fh)["run_id"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{output_dir}/{RUN_FILE} is missing or unreadable; which MLflow run is this?",
                        param="output_dir") from None


LOCK_FILE = ".seizure-mlflow.lock"  # in a training's output folder while it trains: {"pid", "host", "started"}


class OutputFolderLock:
    """One training per output folder: a lock file naming the process and host, made with ``O_EXCL``.

    A lock whose process is gone (same host, no such pid) is stale: it is taken over with a warning. A lock
    held by a live process, or by another host (whose processes cannot be seen from here), is refused with a
    message naming them. Used as a context manager; the lock file is removed on exit.
    """

    def __init__(self, folder: str | os.PathLike, param: str = "output_dir") -> None:
        self.path = Path(folder) / LOCK_FILE
        self._param = param
        self._held = False

    def __enter__(self) -> "OutputFolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._refuse_or_clear()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(mine, fh)
            self._held = True
            return self
        raise UserError(f"{self.path.parent} is being locked by another training at this moment; try again",
                        param=self._param)

    def _refuse_or_clear(self) -> None:
        import logging

        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, None, ""
        if pid is not None and host == socket.gethostname() and not _process_alive(pid):
            logging.getLogger(__name__).warning("%s: taking over a stale lock of process %d, which is gone",
                                                self.path.parent, pid)
            self.path.unlink(missing_ok=True)
            return
        who = f"process {pid} on {host}, started {holder.get('started', '?')}" if pid is not None else "an unreadable lock"
        raise UserError(f"{self.path.parent} is in use by another training ({who}); wait for it, train into another "
                        f"folder, or, if that training is gone, remove {self.path}", param=self._param)

    def __exit__(self, *exc) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
