"""Metric delivery off the training thread: order, exactly once, bounded memory, outages, refusals."""

from __future__ import annotations

import logging
import os
import time

import pytest
from detectron2.utils.events import EventStorage
from mlflow import MlflowClient
from mlflow.entities import Metric

from helpers.servers import FaultyProxy, local_server
from seizure_mlflow.tracking.delivery import MetricDelivery, PermanentFailure, SpillQueue, batch_sender
from seizure_mlflow.tracking.writer import MlflowWriter


def _values(n: int, key: str = "train/total_loss", first_step: int = 1) -> list[Metric]:
    return [Metric(key, float(step), 1000 + step, step) for step in range(first_step, first_step + n)]


def _wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _steps_delivered(queue: SpillQueue, batch_size: int) -> list[int]:
    """Empty the queue as the delivery thread does (peek a batch, pop it once sent); the steps in order."""
    steps = []
    while len(queue):
        batch = queue.peek(batch_size)
        steps.extend(m.step for m in batch)
        queue.pop(len(batch))
    return steps


def test_the_queue_keeps_order_and_spills_beyond_its_memory_bound(tmp_path):
    queue = SpillQueue(tmp_path / "spool", memory_limit=100)
    for chunk in range(10):
        queue.put(_values(60, first_step=1 + 60 * chunk))
    assert len(queue) == 600 and queue.on_disk >= 400  # at most about the bound stays in memory
    assert len(list((tmp_path / "spool").glob("*.jsonl"))) >= 4
    assert _steps_delivered(queue, batch_size=70) == list(range(1, 601))
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # delivered segments are removed


def test_persisted_values_survive_a_killed_process_in_order(tmp_path):
    """After persist(), a new queue over the same folder (the process was killed) holds every value not yet popped,
    in order, whether it was being delivered, spilled or only in memory."""
    queue = SpillQueue(tmp_path / "spool", memory_limit=50)
    queue.put(_values(30))
    queue.pop(len(queue.peek(10)))  # 10 delivered; 20 left in the head, only in memory
    queue.put(_values(60, first_step=31))  # spills 31-90 behind the head
    queue.put(_values(5, first_step=91))  # only in memory
    assert queue.persist() == 85
    again = SpillQueue(tmp_path / "spool", memory_limit=50)
    assert _steps_delivered(again, batch_size=7) == list(range(11, 96))
    assert not list((tmp_path / "spool").glob("*"))


def test_values_reach_a_local_store_in_order_exactly_once(tracking, tmp_path):
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    delivery = MetricDelivery(batch_sender(run_id), tmp_path / "spool", memory_limit=500)
    for chunk in range(5):
        delivery.put(_values(700, first_step=1 + 700 * chunk))  # beyond the memory bound, more than one request
    assert delivery.close(timeout_s=120)
    assert [m.step for m in client.get_metric_history(run_id, "train/total_loss")] == list(range(1, 3501))


def test_a_deleted_run_stops_delivery_with_one_message_and_no_retry(tracking, tmp_path, caplog):
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    client.delete_run(run_id)
    delivery = MetricDelivery(batch_sender(run_id), tmp_path / "spool")
    with caplog.at_level(logging.WARNING, logger="seizure_mlflow.tracking.delivery"):
        delivery.put(_values(5))
        _wait_for(lambda: delivery.stopped_reason is not None)
        delivery.put(_values(5, first_step=6))  # ignored, no second message
        assert not delivery.close(timeout_s=5)
    messages = [r.getMessage() for r in caplog.records if r.name == "seizure_mlflow.tracking.delivery"]
    assert len(messages) == 1 and "refused the run's metrics" in messages[0] and "training goes on" in messages[0]
    assert delivery.pending == 0


def test_writing_never_waits_on_a_server_that_does_not_answer_and_a_drain_is_bounded(tracking, tmp_path):
    """A black hole accepts connections and never answers: the training thread's write() returns at once,
    the drain gives up after its bound, and the values wait in the spool for the next process, which delivers
    them (no step lost or repeated)."""
    client = MlflowClient()
    run_id = client.create_run("0").info.run_id
    def environment_now() -> dict[str, str]:  # MLflow's own telemetry session id comes and goes
        return {k: v for k, v in os.environ.items() if not k.startswith("_MLFLOW_TELEMETRY")}

    environment = environment_now()
    with FaultyProxy(blackhole=True) as hole, EventStorage() as storage:
        writer = MlflowWriter(run_id, spool_dir=tmp_path / "spool", tracking_uri=hole.url)
        slowest = 0.0
        for it in range(60):
            storage.iter = it
            storage.put_scalars(total_loss=1.0 / (it + 1), smoothing_hint=False)
            if (it + 1) % 20 == 0:
                started = time.perf_counter()
                writer.write()
                slowest = max(slowest, time.perf_counter() - started)
        assert slowest < 0.5, f"write() waited {slowest:.1f} s on the server"
        started = time.perf_counter()
        with pytest.raises(RuntimeError, match="--resume"):
            writer.finish(timeout_s=2)
        assert time.perf_counter() - started < 5
        assert hole.requests >= 1
        failed = MlflowWriter(run_id, spool_dir=tmp_path / "spool-failed", tracking_uri=hole.url)
        storage.put_scalars(total_loss=0.5, smoothing_hint=False)
        failed.write()
        failed.finish(timeout_s=1, failed=True)  # after a failed training: logged, never raised over its error
    assert environment_now() == environment  # nothing process-wide was changed
    assert list((tmp_path / "spool").glob("*.jsonl"))
    again = MetricDelivery(batch_sender(run_id), tmp_path / "spool")
    assert again.close(timeout_s=60)
    assert [m.step for m in client.get_metric_history(run_id, "train/total_loss")] == list(range(1, 61))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with local_server(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.mark.slow
def test_http_503_and_429_are_retried_and_4xx_stops(server, tmp_path, caplog):
    client = MlflowClient(server)
    run_id = client.create_run("0").info.run_id
    for status in (503, 429):
        with FaultyProxy(server, fail_first=3, status=status) as proxy:
            delivery = MetricDelivery(batch_sender(run_id, proxy.url), tmp_path / f"spool{status}", backoff_s=(0.1, 0.2))
            key = f"m{status}"
            delivery.put(_values(10, key=key))
            assert delivery.close(timeout_s=30)
            assert proxy.requests == 4  # three refusals, then delivered
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, 11))
    client.delete_run(run_id)
    delivery = MetricDelivery(batch_sender(run_id, server), tmp_path / "spool400")
    delivery.put(_values(3, key="after_delete"))
    _wait_for(lambda: delivery.stopped_reason is not None)
    assert "HTTP 400" in delivery.stopped_reason
    with pytest.raises(PermanentFailure):
        batch_sender(run_id, server)(_values(1))


def test_workers_logging_the_same_new_dataset_at_once_all_record_it(tracking, tiny_data):
    """A sweep's workers log the same validation set to one experiment at the same moment: MLflow looks a dataset up,
    then inserts it, so all but one lose a race on its unique key (a trial failed so in CI). Every run records it."""
    import threading

    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.tracking.datasets import log_datasets

    val = check_coco(*tiny_data["val"])
    client = MlflowClient()
    experiment = client.create_experiment("race")
    for context in ("one", "two", "three"):  # a dataset new to the experiment each round
        runs = [client.create_run(experiment).info.run_id for _ in range(6)]
        start, errors = threading.Barrier(len(runs)), []

        def log(run_id):
            worker = MlflowClient()
            start.wait()
            try:
                log_datasets(run_id, {context: val}, client=worker)
            except Exception as exc:  # noqa: BLE001 - the test reports what failed
                errors.append(exc)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[:1]
        for run_id in runs:
            assert [i.dataset.name for i in client.get_run(run_id).inputs.dataset_inputs] == [f"seizure-{context}"]
