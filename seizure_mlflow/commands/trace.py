"""A trace command, in two named steps: plan (every check, before any work), then run.

* :func:`plan_trace` lists the videos, checks each (decodable, frame rate, at least one window long),
  the output folder (new or empty), the true masks and truth files when given, and loads the model, so
  that bad input fails before a frame is analysed and leaves no MLflow run behind;
* :func:`run_trace` traces every video into a staged folder (moved into place only when every video
  succeeded: nothing half-written) and records the run in MLflow: parameters, counts and scores, and
  ``trace.csv``, ``events.json``, ``trace.png``, never a frame, a file name or a path.

Outputs: one video -> ``OUTPUT/trace.csv``, ``events.json``, ``trace.png`` (``overlay.mp4``); a folder of
videos -> the same under ``OUTPUT/<video name>/``, plus ``OUTPUT/summary.json``. In MLflow the files of
several videos go under ``video_01/``, ``video_02/``..., numbered in sorted file-name order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from seizure_mlflow.commands.requests import TraceRequest
from seizure_mlflow.config import is_number
from seizure_mlflow.outputs.staging import check_output_folder, check_replaceable, staged_folder
from seizure_mlflow.data.video import check_video_readable, frame_count, frame_rate, list_videos
from seizure_mlflow.errors import UserError
from seizure_mlflow.motion.pipeline import TraceOptions, check_traceable, finish_trace, trace_video
from seizure_mlflow.motion.sources import ModelSource, TrueMaskSource

logger = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
TRACE_COMMAND = "trace"
TRUE_MASKS = "true masks"


@dataclass
class TracePlan:
    request: TraceRequest
    videos: list[Path]
    sources: list  # one callable per video
    truth: dict[str, list[tuple[float, float]]] | None
    model_version: tuple[str, str] | None


def read_truth(path: str, videos: list[Path]) -> dict[str, list[tuple[float, float]]]:
    """The truth file, checked: every video named (by file name without suffix), every interval start < end."""
    from seizure_mlflow.user_files import read_json

    document = read_json(path, param="truth")
    if not isinstance(document, dict):
        raise UserError(f"{path}: expected an object {{video name: [intervals]}}, got {type(document).__name__}",
                        param="truth")
    missing = [v.stem for v in videos if v.stem not in document]
    if missing:
        raise UserError(f"{path} has no entry for {missing[:5]} (an empty list means: no seizure in that video)",
                        param="truth")
    truth = {}
    for video in videos:
        intervals, items = [], document[video.stem]
        if not isinstance(items, list):
            raise UserError(f"{path}: {video.stem} must be a list of intervals ([] for no seizure), got {items!r}",
                            param="truth")
        for k, item in enumerate(items):
            if isinstance(item, dict):
                start, end = item.get("start"), item.get("end")
            else:
                start, end = (list(item) + [None, None])[:2] if isinstance(item, list) and len(item) == 2 else (None, None)
            if not all(is_number(x) for x in (start, end)) or not 0 <= start < end:
                raise UserError(f"{path}: {video.stem}[{k}] = {item!r} is not an interval of seconds with 0 <= start < end",
                                param="truth")
            intervals.append((float(start), float(end)))
        truth[video.stem] = intervals
    return truth


def _mask_files(masks: str, videos: list[Path]) -> list[Path]:
    p = Path(masks)
    if p.is_file() and len(videos) == 1:
        return [p]
    if p.is_dir():
        files = [p / f"{v.stem}.json" for v in videos]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{p} lacks {missing[:5]}: give one NAME.json of true masks per video NAME", param="masks")
        return files
    raise UserError(f"{p}: no such {'file or ' if len(videos) == 1 else ''}folder (with several videos, give a "
                    "folder holding NAME.json per video)", param="masks")




def plan_trace(request: TraceRequest) -> TracePlan:
    options = request.options
    options.rhythm.check()
    options.carry.check(options.method)
    if request.engine == "ray":
        from seizure_mlflow.motion.ray_engine import check_ray_address, import_ray

        import_ray()  # installed, before any work
        check_ray_address(request.ray_address)
    elif request.ray_address or request.ray_workers:
        raise UserError("is for --engine ray only", param="ray_address" if request.ray_address else "ray_workers")
    videos = list_videos(request.input)
    out = Path(request.output)
    check_replaceable(out, TRACE_COMMAND)
    check_output_folder(out, "output")
    for video in videos:
        check_video_readable(video)
        check_traceable(video, options)
    truth = read_truth(request.truth, videos) if request.truth else None
    if request.masks:
        sources = [TrueMaskSource(f) for f in _mask_files(request.masks, videos)]
        for video, source in zip(videos, sources):
            source.check_video(video)
        return TracePlan(request, videos, sources, truth, None)
    from seizure_mlflow.registry.uris import detector_from_uri, registered_version

    version = registered_version(request.model_uri)
    detector = detector_from_uri(request.model_uri)
    detector.batch_size = request.options.batch_size
    return TracePlan(request, videos, [ModelSource(detector)] * len(videos), truth, version)


def run_trace(plan: TracePlan) -> dict:
    """Trace every video of the plan; returns the summary (also written as ``summary.json`` for a folder)."""
    request = plan.request
    if not request.log_to_mlflow:
        return _trace_all(plan)
    from seizure_mlflow.tracking.run import active_run
    from seizure_mlflow.tracking.trace import log_trace, trace_params

    with active_run(run_name="trace", rename=True):
        import mlflow

        mlflow.log_params(trace_params(plan))
        summary = _trace_all(plan)
        log_trace(summary, Path(request.output))
    return summary


def traced(plan: TracePlan):
    """Each video's :class:`~seizure_mlflow.motion.pipeline.TraceResult`, in the plan's order: one after another
    here, or measured on a Ray cluster (in segments) and finished here."""
    request, options = plan.request, plan.request.options
    if request.engine == "serial":
        for video, source in zip(plan.videos, plan.sources):
            yield trace_video(video, source, options, keep_masks=request.overlay)
        return
    from seizure_mlflow.motion.ray_engine import measure_on_ray

    checked = [check_traceable(video, options) for video in plan.videos]
    for video, (_, warning) in zip(plan.videos, checked):
        if warning:
            logger.warning("%s: %s", video.name, warning)
    frames = [analysed_frames(video, options) for video in plan.videos]
    segments = [round(request.segment_seconds * (options.fps or frame_rate(video))) for video in plan.videos]
    measured = measure_on_ray(plan.videos, plan.sources, options, frames, segments, request.ray_address,
                              request.ray_workers, keep_masks=request.overlay)
    for video, (settings, warning), part in zip(plan.videos, checked, measured):
        yield finish_trace(video, part, options, settings, warning)


def analysed_frames(video: Path, options: TraceOptions) -> int | None:
    """How many frames a trace of ``video`` analyses, as its container declares (None when it does not say)."""
    declared, source_fps = frame_count(video), frame_rate(video)
    return int(declared * (options.fps or source_fps) / source_fps) if declared else None


def _trace_all(plan: TracePlan) -> dict:
    from seizure_mlflow.motion.outputs import OVERLAY, write_overlay, write_threshold_curve, write_trace
    from seizure_mlflow.motion.scoring import ScoreBoard

    request, single = plan.request, len(plan.videos) == 1
    board = (ScoreBoard(request.options.rhythm.threshold, request.target_false_alarms_per_hour)
             if plan.truth is not None else None)
    videos = []
    with staged_folder(request.output, TRACE_COMMAND) as tmp:
        for number, (video, result) in enumerate(zip(plan.videos, traced(plan)), start=1):
            folder = tmp if single else tmp / video.stem
            truth = plan.truth[video.stem] if plan.truth is not None else None
            document = write_trace(result, folder, request.options.method, truth)
            if request.overlay:
                write_overlay(video, result, folder / OVERLAY)
            if board is not None:
                board.add(result, truth)
            videos.append({"number": number, "folder": "." if single else video.stem,
                           "seconds": document["seconds"], "frames": document["frames"],
                           "processing_seconds": round(result.processing_seconds, 3),
                           "events": len(document["events"]), "max_index": document["max_index"],
                           "patient_found_fraction": document["patient_found_fraction"]})
            logger.info("%s: %d candidate interval(s), max rhythm index %s", video.name, len(document["events"]),
                        document["max_index"])
        scored = {}
        if board is not None:
            scored, curve = board.summary()
            write_threshold_curve(curve, tmp, board.threshold, scored["thresholds"]["chosen"]["threshold"])
        summary = {"videos": videos, "scores": None, **scored,
                   "source": TRUE_MASKS if request.masks else request.model_uri,
                   "model_version": list(plan.model_version) if plan.model_version else None}
        if not single:
            (tmp / SUMMARY_JSON).write_text(json.dumps(summary, indent=2))
    return summary


def run_command(request: TraceRequest) -> int:
    """``seizure-mlflow trace``: plan, trace, and say what was found (and how it scored against ``--truth``)."""
    summary = run_trace(plan_trace(request))
    events = sum(v["events"] for v in summary["videos"])
    print(f"{len(summary['videos'])} video(s), {sum(v['seconds'] for v in summary['videos']):.0f} s: {events} "
          f"candidate interval(s) -> {request.output}")
    if summary["scores"]:
        s = summary["scores"]
        sensitivity = "n/a" if s["sensitivity"] is None else f"{s['sensitivity']:.0%}"
        latency = "n/a" if s["mean_latency_s"] is None else f"{s['mean_latency_s']:.1f} s"
        print(f"sensitivity {sensitivity} ({s['detected']}/{s['events']}), {s['false_alarms']} false alarm(s) "
              f"({s['false_alarms_per_hour']:.1f}/h), mean latency {latency}")
        z, chosen = summary["szcore"], summary["thresholds"]["chosen"]
        print(f"SzCORE: sensitivity {z.get('sensitivity', float('nan')):.0%}, precision "
              f"{z.get('precision', float('nan')):.0%}, {z['fp_per_24h']:.1f} false detections per 24 h")
        print(f"threshold curve: {chosen['rule']}: " + (f"threshold {chosen['threshold']:g}" if chosen["threshold"]
                                                       is not None else "no threshold of the range meets it"))
    return 0
