"""Many videos, and long videos in segments, measured on a Ray cluster (``trace --engine ray``).

The driver (the ``trace`` command) plans the segments, ships the sources once, and joins what comes back:

* **Segments.** A video is cut into segments of ``segment_frames`` analysed frames, each starting on the detection
  schedule. A worker measures its segment with :func:`~.pipeline.measure_frames`, which analyses a lead-in before
  the segment's first frame and drops it, so that every frame is measured as in one pass; the driver joins the
  segments (:func:`~.pipeline.join_measured`) and takes the rhythm over the whole video
  (:func:`~.pipeline.finish_trace`): the windows across a segment boundary are those of one pass.
* **Workers.** One actor per slot: a GPU where the cluster has them, else a CPU. Each receives the sources once,
  through Ray's object store, and so holds the detector in memory from its start: no worker loads the model from the
  registry. Workers never talk to the tracking server: their ``MLFLOW_TRACKING_URI`` is a scheme MLflow does not
  know, so any tracking call on a worker would fail loudly. The driver records the one MLflow run, as the serial
  path does.
* **Failures.** An actor whose process dies (killed, out of memory, its node lost) is restarted by Ray and the
  segment it was measuring is measured again from its start (``max_restarts``, ``max_task_retries``): the result is
  the same.

Ray is an optional extra (``pip install 'seizure-mlflow[ray]'``); only this module imports it, and only when called.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from seizure_mlflow.errors import UserError
from seizure_mlflow.motion.pipeline import MeasuredFrames, TraceOptions, join_measured

logger = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'seizure-mlflow[ray]'"
WORKER_TRACKING_URI = "no-tracking-on-trace-workers://"  # any tracking call on a worker fails, naming why
RETRIES = 3  # per actor and per segment


@dataclass(frozen=True)
class Segment:
    video: int  # position in the plan's videos
    first: int  # analysed frames first..stop-1 (stop None: to the video's end)
    stop: int | None


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray, an optional extra: {RAY_EXTRA}", param="engine") from None
    return ray


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Before any work: an explicit cluster address (``HOST:PORT``, ``ray://HOST:PORT``) takes a TCP connection.
    Empty (a local cluster) and ``auto`` (the cluster this machine belongs to) are Ray's to resolve."""
    if address in ("", "auto"):
        return
    host, colon, port = address.split("://", 1)[-1].rpartition(":")
    if not colon or not host or not port.isdigit():
        raise UserError(f"expected HOST:PORT, ray://HOST:PORT or auto, got {address!r}", param="ray_address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"nothing answers at {address} ({exc.strerror or exc}); is the cluster up (ray start --head "
                        "on its head node)?", param="ray_address") from None


def plan_segments(frames: list[int | None], segment_frames: list[int], every: int) -> list[Segment]:
    """Each video's segments: ``frames[v]`` analysed frames (None: unknown, one segment), cut every
    ``segment_frames[v]`` rounded up to the detection schedule (a multiple of ``every``); a last piece shorter than
    half a segment joins the one before it."""
    segments = []
    for video, (count, wanted) in enumerate(zip(frames, segment_frames)):
        size = -(-max(1, wanted) // every) * every
        starts = [0] if count is None else list(range(0, count, size))
        if len(starts) > 1 and count - starts[-1] < size / 2:
            starts.pop()
        segments += [Segment(video, a, b) for a, b in zip(starts, starts[1:] + [None])]
    return segments


def measure_on_ray(paths: list[Path], sources: list, options: TraceOptions, frames: list[int | None],
                   segment_frames: list[int], address: str = "", workers: int = 0,
                   keep_masks: bool = False) -> Iterator[MeasuredFrames]:
    """Every video's :class:`~.pipeline.MeasuredFrames`, in the order of ``paths``, each yielded as soon as it and the
    videos before it are complete. ``address``: an existing cluster (``auto``, ``ray://HOST:10001``...); empty:
    a local one of ``workers`` CPUs (default: this machine's). ``workers``: actors (default: one per GPU of the
    cluster, else one per CPU)."""
    ray = import_ray()
    from tqdm import tqdm

    started_here = not ray.is_initialized()
    if started_here:  # else: the caller's cluster, as the caller configured it (see ray_init_options)
        ray.init(**ray_init_options(address, workers))
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = workers or gpus or int(resources.get("CPU", 1))
        per_actor = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        worker_class = _worker_class(ray)
        shared = ray.put(sources)
        actors = [worker_class.options(**per_actor).remote(shared, bool(gpus)) for _ in range(count)]
        segments = plan_segments(frames, segment_frames, options.carry.every)
        logger.info("trace on Ray: %d video(s) in %d segment(s) over %d worker(s) (%s each)", len(paths),
                    len(segments), count, "a GPU" if gpus else "a CPU")
        pending, parts = {}, {v: [] for v in range(len(paths))}
        waiting = {v: sum(1 for s in segments if s.video == v) for v in range(len(paths))}
        for k, segment in enumerate(segments):  # Ray queues an actor's calls; round robin spreads them
            ref = actors[k % count].measure.remote(str(paths[segment.video]), segment.video, segment.first,
                                                   segment.stop, options, keep_masks)
            pending[ref] = segment
        ready_video = 0
        total = sum(f for f in frames if f is not None) if all(f is not None for f in frames) else None
        with tqdm(total=total, desc="trace on Ray", unit="frame") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                segment = pending.pop(done[0])
                measured = ray.get(done[0])
                bar.update(len(measured))
                parts[segment.video].append(measured)
                waiting[segment.video] -= 1
                while ready_video < len(paths) and waiting[ready_video] == 0:
                    yield join_measured(parts.pop(ready_video))
                    ready_video += 1
    finally:
        if started_here:
            ray.shutdown()


def ray_init_options(address: str = "", workers: int = 0) -> dict:
    """``ray.init`` keywords: join ``address``, or start a local cluster of ``workers`` CPUs (default: this
    machine's); either way this job's workers get :data:`WORKER_TRACKING_URI` as their tracking URI."""
    where = {"address": address} if address else {"num_cpus": workers or os.cpu_count(), "include_dashboard": False}
    return {**where, "logging_level": logging.WARNING, "log_to_driver": False,
            "runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": WORKER_TRACKING_URI}}}


def _worker_class(ray):
    @ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES)
    class TraceWorker:
        """Holds the sources (the detector loaded once); measures one segment per call."""

        def __init__(self, sources: list, gpu: bool) -> None:
            self.sources = sources
            if gpu:
                for source in {id(s): s for s in sources}.values():
                    if hasattr(source, "detector"):
                        source.detector.to("cuda")

        def measure(self, path: str, video: int, first: int, stop: int | None, options: TraceOptions,
                    keep_masks: bool) -> MeasuredFrames:
            from seizure_mlflow.motion.pipeline import measure_frames

            return measure_frames(path, self.sources[video], options, keep_masks, first=first, stop=stop,
                                  progress=False)

    return TraceWorker
