"""A Detectron2 ``EventWriter`` that sends training and validation scalars to an MLflow run, in batches.

Use it on the main process only (Detectron2 builds writers there). At each ``write()`` every value that
entered the event storage since the previous write is sent once, unsmoothed, in ``log_batch`` requests of
up to 1000 metrics, with ``step = iteration + 1`` (iterations completed):

* ``total_loss``, ``loss_*`` and ``lr`` become ``train/total_loss``, ``train/loss_*``, ``train/lr``;
* ``val/*`` and ``val_full/*`` (put by :class:`~seizure_mlflow.engine.validation.ValidationLoss`) are sent as
  they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from detectron2.utils.events import EventWriter, get_event_storage
from mlflow import MlflowClient
from mlflow.entities import Metric

from seizure_mlflow.engine.validation import VAL_FULL_PREFIX, VAL_PREFIX

logger = logging.getLogger(__name__)

TRAIN_PREFIX = "train/"
MAX_METRICS_PER_REQUEST = 1000


@contextlib.contextmanager
def _fail_fast_http(timeout_s: int = 10):
    """MLflow's HTTP client retries a refused request for minutes; while training, one quick try is enough
    (the writer keeps what was not delivered and tries again at its next write)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def metric_name(storage_key: str) -> str | None:
    """The MLflow name of an event-storage key, or None for keys that are not logged."""
    if storage_key.startswith((VAL_PREFIX, VAL_FULL_PREFIX)):
        return storage_key
    if storage_key in ("total_loss", "lr") or storage_key.startswith("loss_"):
        return TRAIN_PREFIX + storage_key
    return None


def storage_key(metric: str) -> str:
    """The event-storage key an MLflow metric name comes from (inverse of :func:`metric_name`)."""
    return metric[len(TRAIN_PREFIX):] if metric.startswith(TRAIN_PREFIX) else metric


class MlflowWriter(EventWriter):
    """Args:
        run_id: the run to log into.
        skip_logged: do not send steps the run already has (a resumed run recomputes the iterations between
            its checkpoint and the kill; their values were logged before).
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None, skip_logged: bool = False) -> None:
        self._run_id = run_id
        self._client = client or MlflowClient()
        self._last_sent: dict[str, int] = {}
        self._queue: list[Metric] = []
        self._failing_since: float | None = None
        if skip_logged:
            for name in self._client.get_run(run_id).data.metrics:
                if metric_name(storage_key(name)) == name:
                    steps = [m.step for m in self._client.get_metric_history(run_id, name)]
                    self._last_sent[storage_key(name)] = max(steps) - 1

    def pending_metrics(self) -> list[Metric]:
        """Values in the current event storage that have not been sent yet, and mark them sent."""
        storage = get_event_storage()
        timestamp = int(time.time() * 1000)
        metrics = []
        for key, history in storage.histories().items():
            name = metric_name(key)
            if name is None:
                continue
            last = self._last_sent.get(key, -1)
            for value, iteration in history.values():
                if iteration > last:
                    metrics.append(Metric(name, float(value), timestamp, int(iteration) + 1))
                    last = int(iteration)
            self._last_sent[key] = last
        return metrics

    def write(self) -> None:
        self._queue.extend(self.pending_metrics())
        self._deliver()

    def _deliver(self) -> bool:
        """Send the queue in batches; stop at the first failure. True when the queue is empty."""
        with _fail_fast_http():
            while self._queue:
                batch = self._queue[:MAX_METRICS_PER_REQUEST]
                try:
                    self._client.log_batch(self._run_id, metrics=batch)
                except Exception as exc:  # the server is down, restarting, or unreachable
                    if self._failing_since is None:
                        self._failing_since = time.time()
                        logger.warning("MLflow tracking server unreachable (%s); training goes on and %d metric values "
                                       "are kept until it is back", type(exc).__name__, len(self._queue))
                    return False
                del self._queue[:len(batch)]
        if self._failing_since is not None:
            logger.warning("MLflow tracking server is back after %.0f s; queued metrics delivered",
                           time.time() - self._failing_since)
            self._failing_since = None
        return True

    def drain(self, timeout_s: float = 1800, poll_s: float = 5) -> None:
        """Block until every queued value is delivered (at the end of training), or raise after ``timeout_s``."""
        deadline = time.time() + timeout_s
        while not self._deliver():
            if time.time() > deadline:
                raise RuntimeError(f"MLflow tracking server unreachable for {timeout_s:.0f} s; {len(self._queue)} metric "
                                   "values not delivered (the checkpoints are on disk: continue later with --resume)")
            time.sleep(poll_s)
