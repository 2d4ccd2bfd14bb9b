"""Motion trace on the sample trace videos: on the patient vs over the whole frame, and with vs without the camera's
motion removed, side by side.

Writes the sample trace videos twice (4 x 40 s at 25 frames/s: clonic episodes of known frequency, a caregiver
who walks past, pats the blanket or adjusts it at other times), once with a still camera and once with a camera
that shakes at 2-6 Hz (while the patient is still, and during an episode), pans and drifts. Traces them with
their *true masks* (the signal chain without the detector) and, with ``--model-uri``, with a registered detector
in place of the true masks; with the camera's motion removed and not. For each: sensitivity, false alarms per
hour, mean latency, frequency error, SzCORE's event scores, frames/s (what compensation costs).
Prints a table and writes benchmarks/results/trace.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from results import write_results  # benchmarks/results.py
from seizure_mlflow.data.sample import TraceSpec, write_trace_sample
from seizure_mlflow.motion.pipeline import TraceOptions, trace_video
from seizure_mlflow.motion.rhythm import Scores
from seizure_mlflow.motion.sources import ModelSource, TrueMaskSource


def frequency_errors(result, episodes: list[dict]) -> list[float]:
    errors = []
    for episode in episodes:
        hits = [i for i in result.intervals if i.start < episode["end"] and i.end > episode["start"]]
        if hits:
            errors.append(abs(hits[0].dominant_hz - episode["frequency_hz"]))
    return errors


def measure(name: str, sample: Path, source_of, truth: dict, options: TraceOptions,
            regions=("patient",)) -> list[dict]:
    from seizure_mlflow.motion.szcore import score_events

    rows = {region: {"scores": None, "szcore": None, "errors": [], "frames": 0, "seconds": 0.0} for region in regions}
    for video in sorted(truth):
        started = time.perf_counter()
        result = trace_video(sample / "videos" / f"{video}.mp4", source_of(video), options)
        elapsed = time.perf_counter() - started
        intervals = [(e["start"], e["end"]) for e in truth[video]]
        for region in regions:
            analysed = result.reanalysed(region=region)
            row = rows[region]
            scores = analysed.score(intervals)
            events = score_events([(i.start, i.end) for i in analysed.intervals], intervals, analysed.seconds)
            row["scores"] = scores if row["scores"] is None else row["scores"] + scores
            row["szcore"] = events if row["szcore"] is None else row["szcore"] + events
            row["errors"] += frequency_errors(analysed, truth[video])
            row["frames"] += len(result.table)
            row["seconds"] += elapsed
    out = []
    for region, row in rows.items():
        scores: Scores = row["scores"]
        szcore = row["szcore"].as_metrics()
        out.append({"masks": name, "region": region, "compensated": options.compensate_camera,
                    "sensitivity": scores.sensitivity,
                    "false_alarms": scores.false_alarms, "false_alarms_per_hour": round(scores.false_alarms_per_hour, 1),
                    "mean_latency_s": None if scores.mean_latency is None else round(scores.mean_latency, 2),
                    "max_frequency_error_hz": round(max(row["errors"]), 3) if row["errors"] else None,
                    **{f"szcore_{k}": round(v, 3) for k, v in szcore.items()},
                    "frames_per_s": round(row["frames"] / row["seconds"], 1)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="", help="also trace with this registered detector (e.g. "
                                                        "models:/seizure-patient-detector@champion)")
    parser.add_argument("--min-score", type=float, default=0.5)
    parser.add_argument("--out", default="benchmarks/results/trace.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    source = None
    if args.model_uri:
        from seizure_mlflow.registry.uris import detector_from_uri

        source = ModelSource(detector_from_uri(args.model_uri))
    with tempfile.TemporaryDirectory() as tmp:
        for camera in (False, True):
            sample = write_trace_sample(Path(tmp) / f"sample-{camera}", TraceSpec(camera=camera))
            truth = json.loads((sample / "truth.json").read_text())
            for compensate in (True, False):
                options = TraceOptions(min_score=args.min_score, compensate_camera=compensate)
                label = "moving camera" if camera else "still camera"
                rows += [{"camera": label, **row} for row in measure(
                    "true", sample, lambda v, s=sample: TrueMaskSource(s / "masks" / f"{v}.json"), truth, options,
                    regions=("patient", "frame"))]
                if source is not None:
                    rows += [{"camera": label, **row} for row in measure(
                        "model", sample, lambda v: source, truth, options, regions=("patient",))]
    header = ("camera", "masks", "region", "compensated", "sensitivity", "false_alarms", "false_alarms_per_hour",
              "mean_latency_s", "max_frequency_error_hz", "szcore_sensitivity", "szcore_precision", "szcore_fp_per_24h",
              "frames_per_s")
    print(f"\n{len(truth)} videos x {TraceSpec().seconds:.0f} s, "
          f"{sum(len(v) for v in truth.values())} clonic episodes")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row.get(h)) for h in header))
    write_results(args.out, {"videos": len(truth), "seconds_each": TraceSpec().seconds, "rows": rows})


if __name__ == "__main__":
    main()
