"""What a trace run records in MLflow: its settings, counts and scores, and the trace files.

Never a frame, a file name or a path: per-video files are logged under ``video_NN/`` (numbered in sorted
order), and the overlay video stays local.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from seizure_mlflow.metrics.names import SZCORE
from seizure_mlflow.motion.outputs import EVENTS_JSON, THRESHOLD_CSV, THRESHOLD_PNG, TRACE_CSV, TRACE_PNG

PARAM_PREFIX = "trace."


def trace_params(plan) -> dict[str, str]:
    request, options = plan.request, plan.request.options
    settings = options.rhythm
    params = {"source": "true_masks" if request.masks else "model", "method": options.method,
              "region": options.region, "fps": str(options.fps or "video"), "window_s": settings.window_s,
              "step_s": settings.step_s, "band_hz": f"{settings.band[0]:g}-{settings.band[1]:g}",
              "total_hz": f"{settings.total[0]:g}-{settings.total[1]:g}", "threshold": settings.threshold,
              "min_duration_s": settings.min_duration_s, "min_score": options.min_score,
              "videos": len(plan.videos), "truth": bool(plan.truth),
              "camera_compensation": options.compensate_camera, "detect_every": options.carry.every,
              "engine": request.engine}
    if not request.masks:
        params["model_uri"] = request.model_uri
        if plan.model_version:
            params["model_name"], params["model_version"] = plan.model_version
    # namespaced: `mlflow run` has already logged the entry point's own parameters (fps='' etc.) under
    # their plain names, and a logged parameter cannot change
    return {f"{PARAM_PREFIX}{key}": value for key, value in params.items()}


def log_trace(summary: dict, output: Path) -> None:
    mlflow.log_metrics(overall(summary))
    for video in summary["videos"]:
        folder = output if video["folder"] == "." else output / video["folder"]
        where = None if video["folder"] == "." else f"video_{video['number']:02d}"
        for name in (TRACE_CSV, EVENTS_JSON, TRACE_PNG):
            mlflow.log_artifact(str(folder / name), artifact_path=where)
    if summary.get("thresholds"):  # over all videos, at the root
        for name in (THRESHOLD_CSV, THRESHOLD_PNG):
            mlflow.log_artifact(str(output / name))


def overall(summary: dict) -> dict[str, float]:
    """The run's metrics: counts over all videos, and the scores when there was a truth file."""
    videos = summary["videos"]
    seconds = sum(v["seconds"] for v in videos)
    frames = sum(v["frames"] for v in videos)
    processing = sum(v["processing_seconds"] for v in videos)
    maxima = [v["max_index"] for v in videos if v["max_index"] is not None]
    metrics = {"videos": len(videos), "events": sum(v["events"] for v in videos), "video_seconds": seconds,
               "processing_fps": frames / processing if processing else 0.0,
               "patient_found_fraction": sum(v["patient_found_fraction"] * v["frames"] for v in videos) / frames}
    if maxima:
        metrics["max_index"] = max(maxima)
    scores = summary.get("scores")
    if scores:
        metrics.update({"true_events": scores["events"], "false_alarms": scores["false_alarms"],
                        "false_alarms_per_hour": scores["false_alarms_per_hour"]})
        if scores["sensitivity"] is not None:
            metrics["sensitivity"] = scores["sensitivity"]
        if scores["mean_latency_s"] is not None:
            metrics["mean_latency_s"] = scores["mean_latency_s"]
        metrics.update({SZCORE + k: v for k, v in summary["szcore"].items()
                        if k in ("sensitivity", "precision", "f1", "fp_per_24h")})
        thresholds = summary["thresholds"]
        for name, value in (("chosen_threshold", thresholds["chosen"]["threshold"]),
                            ("weakest_detected_peak", thresholds["weakest_detected_peak"]),
                            ("threshold_margin", thresholds["margin"])):
            if value is not None:
                metrics[name] = value
    return metrics

