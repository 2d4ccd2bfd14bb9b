"""What a killed run needs to continue exactly where it stopped.

A Detectron2 checkpoint holds the model, optimizer, scheduler, iteration and each hook's ``state_dict``.
Continuing *exactly* (the same batches, the same random sampling, the same best checkpoint as an
uninterrupted run) also needs:

* :class:`RandomState`: the Python, NumPy and torch RNG states, saved with every checkpoint and restored
  in ``before_train`` (the training loader has a generator of its own, so nothing else draws from them);
* :class:`SkipSampler`: the training sampler's index stream, fast-forwarded past the indices consumed
  before the checkpoint (exact with one process, ``num_workers=0`` and one aspect-ratio group; close
  otherwise);
* :class:`ResumableBestCheckpointer`: Detectron2's ``BestCheckpointer`` whose best value survives a
  resume, so a worse checkpoint does not overwrite ``model_best.pth``;
* :class:`StopOnSignal`: SIGINT/SIGTERM stop training after the current iteration with a checkpoint that
  ``--resume`` continues from.
"""

from __future__ import annotations

import itertools
import logging
import random
import signal

import numpy as np
import torch
from detectron2.engine import HookBase, hooks

from seizure_mlflow.engine.checkpoint import save_atomically
from seizure_mlflow.metrics.monitor import Monitor
from seizure_mlflow.outputs.training_folder import BEST_CHECKPOINT, improvement_checkpoint_path

logger = logging.getLogger(__name__)



class SkipSampler(torch.utils.data.Sampler):
    """Yields what ``sampler`` yields, less its first ``skip`` indices."""

    def __init__(self, sampler, skip: int = 0) -> None:
        self._sampler = sampler
        self._skip = skip

    def __iter__(self):
        return itertools.islice(iter(self._sampler), self._skip, None)


class RandomState(HookBase):
    """Saves the RNG states with each checkpoint; restores them at ``before_train`` after a resume."""

    def __init__(self) -> None:
        self._pending: dict | None = None

    def state_dict(self) -> dict:
        version, internal, gauss = random.getstate()
        np_state = np.random.get_state()
        return {
            "python": [version, list(internal), gauss],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def before_train(self) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ResumableBestCheckpointer(hooks.BestCheckpointer):
    """Detectron2's ``BestCheckpointer`` on a :class:`~seizure_mlflow.metrics.monitor.Monitor`, with its best value
    and iteration in the trainer's checkpoint.

    The best checkpoint itself holds ``iteration`` (the iteration its metric was computed at), ``best_metric``
    (that value) and ``monitor`` (the metric's name), so what was best is read from the file, not from the tracking
    server. It reads the value the validation hook handed on (``trainer.last_validation``): register it after that
    hook. A validation that did not measure the metric (AP on every N-th validation only) is skipped.

    With ``keep_improvements``, each improvement's model weights are also kept as
    ``model_improvement_NNNNNNN.pth`` (iterations completed; model weights, iteration and value only), so that
    every step of progress can be logged as a model of its own after training.
    """

    def __init__(self, eval_period: int, checkpointer, monitor: Monitor | str, file_prefix: str = BEST_CHECKPOINT,
                 keep_improvements: bool = False) -> None:
        monitor = Monitor(monitor) if isinstance(monitor, str) else monitor
        super().__init__(eval_period, checkpointer, monitor.metric, mode=monitor.mode, file_prefix=file_prefix)
        self.monitor = monitor
        self._keep_improvements = keep_improvements

    def after_step(self) -> None:
        self._best_checking()  # at every validation, whatever its period: the value says whether there was one

    def after_train(self) -> None:
        pass  # the last iteration's validation was checked in its after_step

    def _best_checking(self) -> None:
        value = self.monitor.value_now(self.trainer)
        if value is None or not self.monitor.improves(value, self.best_metric):
            return
        iteration = self.trainer.iter
        # Updated before saving, so the checkpoint's copy of this hook's state includes this value.
        self.best_metric, self.best_iter = value, iteration
        self._checkpointer.save(self._file_prefix, iteration=iteration, best_metric=value,
                                monitor=self.monitor.metric)
        if self._keep_improvements and self._checkpointer.save_to_disk:
            path = improvement_checkpoint_path(self._checkpointer.save_dir, iteration + 1)
            save_atomically({"model": self._checkpointer.model.state_dict(), "iteration": iteration,
                             "best_metric": value, "monitor": self.monitor.metric}, path)
        logger.info("Saved best checkpoint: %s %.5f at iteration %d", self._val_metric, value, iteration + 1)

    def state_dict(self) -> dict:
        return {} if self.best_metric is None else {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric = state.get("best_metric")
        self.best_iter = state.get("best_iter")


class StopOnSignal(HookBase):
    """On SIGINT or SIGTERM, finish the current iteration, save a checkpoint, and stop with KeyboardInterrupt.

    Register it last: the checkpoint then holds everything the iteration's hooks did. The previous
    handlers are restored after training.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpointer) -> None:
        self._checkpointer = checkpointer
        self._received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self._received is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self._received = signum
        logger.warning("Received %s: stopping after this iteration with a checkpoint", signal.Signals(signum).name)

    def before_train(self) -> None:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                return

    def after_step(self) -> None:
        if self._received is None:
            return
        iteration = self.trainer.iter
        self._checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
        logger.warning("Saved checkpoint at iteration %d; continue with --resume", iteration + 1)
        raise KeyboardInterrupt(signal.Signals(self._received).name)

    def after_train(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
