"""Metric delivery off the training thread: an ordered queue that spills to disk, drained by one thread.

Training puts values into a :class:`MetricDelivery` and goes on at once; its background thread sends them in
order, in ``log_batch`` requests, and decides what a failure means:

* transient (no connection, a timeout, HTTP 5xx or 429, a locked database): the values stay queued and the
  request is retried with an exponential backoff (1 s doubling to 30 s), for as long as the run lasts;
* permanent (HTTP 4xx, the run deleted or finished): delivery stops with one clear message and training goes
  on (the values are still in ``OUTPUT_DIR/metrics.json``); nothing is retried.

Memory is bounded: past ``memory_limit`` queued values, the queue is written to JSON-lines files in
``spool_dir`` (in order), so an outage of any length costs disk, not memory. A spool left by an earlier
process (a drain that timed out) is delivered first.

HTTP requests carry their own retry count and timeout: no process-wide ``MLFLOW_HTTP_*`` variable is changed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

logger = logging.getLogger(__name__)

MAX_METRICS_PER_REQUEST = 1000  # MLflow's log_batch limit
REQUEST_TIMEOUT_S = 10
BACKOFF_S = (1.0, 30.0)  # first wait, longest wait
LOG_BATCH_ENDPOINT = "/api/2.0/mlflow/runs/log-batch"
# Store errors that retrying cannot mend (a SQL or file store says so with these codes).
_PERMANENT_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "INVALID_STATE", "PERMISSION_DENIED",
                    "UNAUTHENTICATED", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS"}


class TransientFailure(Exception):
    """The server may take the same values later: keep them and retry."""


class PermanentFailure(Exception):
    """The server will never take these values (e.g. the run was deleted): stop delivering."""


Sender = Callable[[list[Metric]], None]


def batch_sender(run_id: str, tracking_uri: str | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> Sender:
    """A function that logs one batch (at most :data:`MAX_METRICS_PER_REQUEST` values) into ``run_id`` and raises
    :class:`TransientFailure` or :class:`PermanentFailure`. Over HTTP: one try with ``timeout_s``, no
    client-side retries (the delivery thread retries); with a local store: the store's ``log_batch``."""
    from mlflow.store.tracking.rest_store import RestStore

    store = MlflowClient(tracking_uri)._tracking_client.store
    if isinstance(store, RestStore):
        return _rest_sender(run_id, store.get_host_creds, timeout_s)

    def send(metrics: list[Metric]) -> None:
        try:
            store.log_batch(run_id, metrics=metrics, params=[], tags=[])
        except MlflowException as exc:
            kind = PermanentFailure if exc.error_code in _PERMANENT_CODES else TransientFailure
            raise kind(f"{exc.error_code}: {exc.message}") from exc
        except Exception as exc:  # e.g. sqlite3.OperationalError: database is locked
            raise TransientFailure(f"{type(exc).__name__}: {exc}") from exc

    return send


def _rest_sender(run_id: str, host_creds: Callable, timeout_s: float) -> Sender:
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.rest_utils import http_request

    def send(metrics: list[Metric]) -> None:
        body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics])))
        try:
            response = http_request(host_creds(), LOG_BATCH_ENDPOINT, "POST", max_retries=0, timeout=timeout_s,
                                    raise_on_status=False, json=body)
        except Exception as exc:  # refused, reset, timed out (MLflow wraps requests' errors)
            raise TransientFailure(f"no answer ({type(exc).__name__})") from exc
        if response.status_code == 200:
            return
        detail = f"HTTP {response.status_code}: {response.text[:300]}"
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientFailure(detail)
        raise PermanentFailure(detail)

    return send


class SpillQueue:
    """A FIFO of metric values holding at most about ``memory_limit`` of them in memory; the rest wait, in
    order, in JSON-lines files in ``spool_dir``, named in queue order. A file is removed only once all its values
    were popped, so after :meth:`persist` every queued value is on disk until delivered: a process killed then
    and started again over the same folder loses none (it may send a few twice; MLflow's stores drop a value
    identical to one they hold). Not thread-safe (:class:`MetricDelivery` locks around it)."""

    def __init__(self, spool_dir: str | os.PathLike, memory_limit: int = 20_000) -> None:
        self._dir = Path(spool_dir)
        self._limit = memory_limit
        self._head: deque[Metric] = deque()  # the oldest values, being delivered
        self._head_file: Path | None = None  # where the head's values are on disk (None: in memory only)
        self._head_name: Path | None = None  # the file name kept for a head taken from memory
        self._tail: list[Metric] = []  # the newest values
        self._segments: deque[Path] = deque(sorted(self._dir.glob("*.jsonl"))) if self._dir.is_dir() else deque()
        self._next_segment = int(self._segments[-1].stem) + 1 if self._segments else 0
        self._spilled = sum(self._count(path) for path in self._segments)

    @staticmethod
    def _count(path: Path) -> int:
        with path.open() as fh:
            return sum(1 for _ in fh)

    def __len__(self) -> int:
        return len(self._head) + self._spilled + len(self._tail)

    @property
    def on_disk(self) -> int:
        return self._spilled

    def put(self, metrics: list[Metric]) -> None:
        self._tail.extend(metrics)
        if len(self._tail) > self._limit:
            self._write(self._new_name(), self._tail)
            self._tail = []

    def peek(self, count: int) -> list[Metric]:
        """Up to ``count`` of the oldest values (left in the queue until :meth:`pop`)."""
        if not self._head:
            if self._segments:
                self._head_file = self._segments.popleft()
                with self._head_file.open() as fh:
                    self._head.extend(Metric(**json.loads(line)) for line in fh)
                self._spilled -= len(self._head)
            elif self._tail:
                self._head.extend(self._tail)
                self._tail = []
                self._head_name = self._new_name()  # before any later spill, so its values sort first
        return [self._head[k] for k in range(min(count, len(self._head)))]

    def pop(self, count: int) -> None:
        for _ in range(count):
            self._head.popleft()
        if not self._head:
            if self._head_file is not None:
                self._head_file.unlink(missing_ok=True)
            self._head_file = self._head_name = None

    def persist(self) -> int:
        """Put every value that is only in memory on disk too (in queue order); returns how many are queued."""
        if self._head and self._head_file is None:
            self._head_file = self._head_name
            self._write(self._head_file, list(self._head), segment=False)
        if self._tail:
            self._write(self._new_name(), self._tail)
            self._tail = []
        return len(self)

    def clear(self) -> None:
        self._head.clear()
        self._tail = []
        for path in [*self._segments, *([self._head_file] if self._head_file else [])]:
            path.unlink(missing_ok=True)
        self._segments.clear()
        self._head_file = self._head_name = None
        self._spilled = 0

    def _new_name(self) -> Path:
        name = self._dir / f"{self._next_segment:08d}.jsonl"
        self._next_segment += 1
        return name

    def _write(self, path: Path, values: list[Metric], segment: bool = True) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            for m in values:
                fh.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
        tmp.rename(path)
        if segment:
            self._segments.append(path)
            self._spilled += len(values)


def spooled_steps(spool_dir: str | os.PathLike) -> dict[str, int]:
    """``{metric: highest step}`` of the values waiting in a spool folder."""
    steps: dict[str, int] = {}
    for path in sorted(Path(spool_dir).glob("*.jsonl")) if Path(spool_dir).is_dir() else []:
        with path.open() as fh:
            for line in fh:
                record = json.loads(line)
                steps[record["key"]] = max(steps.get(record["key"], 0), record["step"])
    return steps


class MetricDelivery:
    """Sends queued values in order from one background thread; :meth:`put` never waits on the server.

    Call :meth:`close` at the end: it waits (at most ``timeout_s``) until everything is delivered, and
    otherwise leaves the rest in the spool folder.
    """

    def __init__(self, send: Sender, spool_dir: str | os.PathLike, memory_limit: int = 20_000,
                 backoff_s: tuple[float, float] = BACKOFF_S) -> None:
        self._send = send
        self._queue = SpillQueue(spool_dir, memory_limit)
        self._spool_dir = Path(spool_dir)
        self._backoff = backoff_s
        self._cond = threading.Condition()
        self._closing = False
        self._abandoned = False
        self.stopped_reason: str | None = None  # set when a permanent failure stopped delivery
        self.failing_since: float | None = None
        self.delivered = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-metric-delivery", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def put(self, metrics: list[Metric]) -> None:
        if not metrics:
            return
        with self._cond:
            if self.stopped_reason is None and not self._abandoned:
                self._queue.put(metrics)
                self._cond.notify_all()

    def persist(self) -> None:
        """Put every queued value on disk too (see :meth:`SpillQueue.persist`); the thread goes on delivering."""
        with self._cond:
            if self.stopped_reason is None and not self._abandoned:
                self._queue.persist()

    def close(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the queue to empty; True when everything was delivered. Values left are
        written to the spool folder (a later run over the same output folder sends them first)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            if self._thread.is_alive():
                self._abandoned = True
                left = self._queue.persist()
                logger.error("MLflow tracking server: %d metric values not delivered after waiting %.0f s; kept in %s "
                             "(run again with --resume to deliver them)", left, timeout_s, self._spool_dir)
                return False
            return self.stopped_reason is None

    def _run(self) -> None:
        wait = 0.0
        while True:
            with self._cond:
                while not len(self._queue) and not self._closing:
                    self._cond.wait()
                if self._abandoned or not len(self._queue):
                    return
                batch = self._queue.peek(MAX_METRICS_PER_REQUEST)
            try:
                self._send(batch)
            except TransientFailure as exc:
                with self._cond:
                    if self._abandoned:
                        return
                    if self.failing_since is None:
                        self.failing_since = time.time()
                        logger.warning("MLflow tracking server unreachable (%s); training goes on and %d metric "
                                       "values are kept until it is back", exc, len(self._queue))
                    wait = min(max(wait * 2, self._backoff[0]), self._backoff[1])
                    self._cond.wait(wait)  # a close() wakes it for one more try at once
                continue
            except PermanentFailure as exc:
                with self._cond:
                    self.stopped_reason = str(exc)
                    dropped = len(self._queue)
                    self._queue.clear()
                logger.error("MLflow refused the run's metrics (%s): metric delivery stops here and %d values are not "
                             "sent; training goes on, and every value is in metrics.json in the output folder",
                             exc, dropped)
                return
            with self._cond:
                if self._abandoned:
                    return
                self._queue.pop(len(batch))
                self.delivered += len(batch)
                wait = 0.0
                if self.failing_since is not None:
                    logger.warning("MLflow tracking server is back after %.0f s; queued metrics delivered (%d still "
                                   "queued)", time.time() - self.failing_since, len(self._queue))
                    self.failing_since = None
