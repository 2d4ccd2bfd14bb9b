"""A Detectron2 ``EventWriter`` that sends training and validation scalars to an MLflow run, off the training thread.

Use it on the main process only (Detectron2 builds writers there). At each ``write()`` every value that
entered the event storage since the previous write is queued once, unsmoothed, with ``step = iteration + 1``
(iterations completed); a background thread delivers the queue in ``log_batch`` requests (see
``delivery.py``: ordered, bounded memory, retries with backoff, stops on a permanent refusal):

* ``total_loss``, ``loss_*`` and ``lr`` become ``train/total_loss``, ``train/loss_*``, ``train/lr``;
* ``val/*`` and ``val_full/*`` (put by :class:`~seizure_mlflow.engine.validation.Validation`) are sent as
  they are.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

from detectron2.utils.events import EventWriter, get_event_storage
from mlflow import MlflowClient
from mlflow.entities import Metric

from seizure_mlflow.tracking.delivery import MetricDelivery, batch_sender, spooled_steps
from seizure_mlflow.metrics.names import TOTAL_LOSS, TRAIN, is_validation, without_prefix

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 600  # at the end of training, how long to wait for the server


def mlflow_metric_name(storage_key: str) -> str | None:
    """The MLflow name of an event-storage key, or None for keys that are not logged."""
    if is_validation(storage_key):
        return storage_key
    if storage_key in (TOTAL_LOSS, "lr") or storage_key.startswith("loss_"):
        return TRAIN + storage_key
    return None


def storage_key(metric: str) -> str:
    """The event-storage key an MLflow metric name comes from (inverse of :func:`mlflow_metric_name`)."""
    return without_prefix(metric, TRAIN)


class MlflowWriter(EventWriter):
    """Args:
        run_id: the run to log into.
        skip_logged: do not send steps the run already has (a resumed run recomputes the iterations between
            its checkpoint and the kill; their values were logged before), nor steps waiting in the spool.
        spool_dir: where values wait on disk beyond ``memory_limit`` queued values, and where a drain that
            timed out leaves them (default: a temporary folder).

    ``write()`` only queues: a :class:`~seizure_mlflow.tracking.delivery.MetricDelivery` thread sends. Call
    :meth:`finish` when training ends.
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None, skip_logged: bool = False,
                 spool_dir: str | os.PathLike | None = None, memory_limit: int = 20_000,
                 tracking_uri: str | None = None) -> None:
        self._run_id = run_id
        self._client = client or MlflowClient(tracking_uri)
        self._last_sent: dict[str, int] = {}
        if spool_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mlflow-metrics-")
            spool_dir = self._tmp.name
        if skip_logged:
            for name in self._client.get_run(run_id).data.metrics:
                if mlflow_metric_name(storage_key(name)) == name:
                    steps = [m.step for m in self._client.get_metric_history(run_id, name)]
                    self._last_sent[storage_key(name)] = max(steps) - 1
            for name, step in spooled_steps(spool_dir).items():
                key = storage_key(name)
                self._last_sent[key] = max(self._last_sent.get(key, -1), step - 1)
        self.delivery = MetricDelivery(batch_sender(run_id, tracking_uri or self._client.tracking_uri), spool_dir,
                                       memory_limit=memory_limit)

    def pending_metrics(self) -> list[Metric]:
        """Values in the current event storage that have not been queued yet, and mark them queued."""
        storage = get_event_storage()
        timestamp = int(time.time() * 1000)
        metrics = []
        for key, history in storage.histories().items():
            name = mlflow_metric_name(key)
            if name is None:
                continue
            last = self._last_sent.get(key, -1)
            new = []
            for value, iteration in reversed(history.values()):  # only the end is new: no pass over the whole run
                if iteration <= last:
                    break
                new.append(Metric(name, float(value), timestamp, int(iteration) + 1))
            metrics.extend(reversed(new))
            if new:
                self._last_sent[key] = new[0].step - 1
        return metrics

    def write(self) -> None:
        """Queue the new values; never waits on the server."""
        self.delivery.put(self.pending_metrics())

    def make_durable(self) -> None:
        """Put every value queued so far on disk in the spool folder (called before a checkpoint is saved: a
        run killed after it and resumed delivers them from there; never waits on the server)."""
        self.delivery.persist()

    def finish(self, timeout_s: float = DRAIN_TIMEOUT_S, failed: bool = False) -> None:
        """Wait up to ``timeout_s`` for every queued value to reach the server. After a successful training a
        timeout is an error (the values are kept in the spool folder for ``--resume``); after a failed one
        (``failed``) it is only logged, so that the training's own exception reaches the user."""
        delivered = self.delivery.close(timeout_s)
        if not delivered and not failed and self.delivery.stopped_reason is None:
            raise RuntimeError(f"MLflow tracking server unreachable: {self.delivery.pending or 'some'} metric values "
                               f"not delivered within {timeout_s:.0f} s; the checkpoints and the values are on disk: "
                               "run the same command with --resume to deliver them and finish the run")
