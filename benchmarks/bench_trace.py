"""Motion trace on the sample trace videos: on the patient vs over the whole frame, and with vs without the camera's
motion removed, side by side.

Writes the sample trace videos twice (4 x 40 s at 25 frames/s: clonic episodes of known frequency, a caregiver
who walks past, pats the blanket or adjusts it at other times), once with a still camera and once with a camera
that shakes at 2-6 Hz (while the patient is still, and during an episode), pans and drifts. Traces them with
their *true masks* (the signal chain without the detector) and, with ``--model-uri``, with a registered detector
in place of the true masks; with the camera's motion removed and not. For each: sensitivity, false alarms per
hour, mean latency, frequency error, SzCORE's event scores, frames/s (what compensation costs).

With ``--parts schedule``: the detector on every K-th frame (``--detect-every``, masks carried in between) against
every frame: frames/s, the scores, and whether every video's detected episodes and false alarms are those of K = 1.
With ``--parts engine``: the still-camera folder traced serially and on a local two-worker Ray cluster, in
segments: wall time, and whether every ``events.json`` is the same.
Prints tables and writes benchmarks/results/trace.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from results import write_results  # benchmarks/results.py
from seizure_mlflow.sample.scenes import TraceSpec, write_trace_sample
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
            regions=("patient",), traced: dict | None = None) -> list[dict]:
    """One row per region; ``traced``, when given, receives each video's result."""
    from seizure_mlflow.motion.szcore import score_events

    rows = {region: {"scores": None, "szcore": None, "errors": [], "frames": 0, "seconds": 0.0} for region in regions}
    for video in sorted(truth):
        started = time.perf_counter()
        result = trace_video(sample / "videos" / f"{video}.mp4", source_of(video), options)
        elapsed = time.perf_counter() - started
        if traced is not None:
            traced[video] = result
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


def detection_schedule(sample: Path, truth: dict, source_of, name: str, everies: list[int], min_score: float) -> list[dict]:
    """The detector on every K-th frame against every frame: frames/s and scores per K, and whether each video's
    detected episodes and false alarms are those of K = 1."""
    from seizure_mlflow.motion.carry import CarryRules

    rows, reference = [], None
    for every in everies:
        options = TraceOptions(min_score=min_score, carry=CarryRules(every=every))
        traced = {}
        row = measure(name, sample, source_of, truth, options, traced=traced)[0]
        outcome, detected = {}, []
        for video, result in sorted(traced.items()):
            intervals = [(e["start"], e["end"]) for e in truth[video]]
            hits = tuple(any(i.start < b and i.end > a for i in result.intervals) for a, b in intervals)
            alarms = sum(1 for i in result.intervals if not any(i.start < b and i.end > a for a, b in intervals))
            outcome[video] = (hits, alarms)
            detected.append(float((result.table["mask_from"] == "detected").mean()))
        reference = outcome if reference is None else reference
        rows.append({**row, "detect_every": every, "detected_fraction": round(sum(detected) / len(detected), 3),
                     "same_as_every_frame": outcome == reference})
    return rows


def engines(sample: Path, min_score: float, model_uri: str, segment_seconds: float) -> list[dict]:
    """The folder of sample videos traced serially and on a local two-worker Ray cluster (videos split into
    segments): wall time, and whether every events.json is the same."""
    from seizure_mlflow.commands.trace import TraceRequest, plan_trace, run_trace

    rows, documents = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("serial", "ray"):
            request = TraceRequest(input=str(sample / "videos"), output=f"{tmp}/{engine}", model_uri=model_uri,
                                   masks="" if model_uri else str(sample / "masks"), truth=str(sample / "truth.json"),
                                   min_score=min_score, no_mlflow=True, engine=engine,
                                   ray_workers=2 if engine == "ray" else 0, segment_seconds=segment_seconds)
            started = time.perf_counter()
            summary = run_trace(plan_trace(request))
            wall = time.perf_counter() - started
            documents[engine] = {v.name: (v / "events.json").read_text() for v in sorted(Path(tmp, engine).iterdir())
                                 if v.is_dir()}
            rows.append({"engine": engine, "masks": "model" if model_uri else "true", "wall_s": round(wall, 1),
                         "frames": sum(v["frames"] for v in summary["videos"]),
                         "sensitivity": summary["scores"]["sensitivity"],
                         "false_alarms": summary["scores"]["false_alarms"]})
    for row in rows:
        row["events_json_same_as_serial"] = documents[row["engine"]] == documents["serial"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="", help="also trace with this registered detector (e.g. "
                                                        "models:/seizure-patient-detector@champion)")
    parser.add_argument("--min-score", type=float, default=0.5)
    parser.add_argument("--parts", nargs="+", choices=("camera", "schedule", "engine"),
                        default=["camera", "schedule", "engine"])
    parser.add_argument("--detect-every", type=int, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--segment-seconds", type=float, default=15.0, help="Ray segments (the videos last 40 s)")
    parser.add_argument("--out", default="benchmarks/results/trace.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    source = None
    if args.model_uri:
        from seizure_mlflow.registry.uris import detector_from_uri

        source = ModelSource(detector_from_uri(args.model_uri))
    schedule, engine_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for camera in (False, True):
            sample = write_trace_sample(Path(tmp) / f"sample-{camera}", TraceSpec(camera=camera))
            truth = json.loads((sample / "truth.json").read_text())
            label = "moving camera" if camera else "still camera"
            if "schedule" in args.parts:
                true_of = lambda v, s=sample: TrueMaskSource(s / "masks" / f"{v}.json")  # noqa: E731
                for name, of in (("true", true_of), ("model", (lambda v: source) if source else None)):
                    if of is not None:
                        schedule += [{"camera": label, **row} for row in detection_schedule(
                            sample, truth, of, name, args.detect_every, args.min_score)]
            if "engine" in args.parts and not camera:
                engine_rows = engines(sample, args.min_score, args.model_uri, args.segment_seconds)
            for compensate in (True, False):
                if "camera" not in args.parts:
                    break
                options = TraceOptions(min_score=args.min_score, compensate_camera=compensate)
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
    _table(header, rows)
    _table(("camera", "masks", "detect_every", "detected_fraction", "frames_per_s", "sensitivity", "false_alarms",
            "mean_latency_s", "max_frequency_error_hz", "same_as_every_frame"), schedule)
    _table(("engine", "masks", "frames", "wall_s", "sensitivity", "false_alarms", "events_json_same_as_serial"),
           engine_rows)
    write_results(args.out, {"videos": len(truth), "seconds_each": TraceSpec().seconds, "rows": rows,
                             "detection_schedule": schedule, "engines": engine_rows})


def _table(header, rows) -> None:
    if rows:
        print("\n" + " | ".join(header))
        for row in rows:
            print(" | ".join(str(row.get(h)) for h in header))


if __name__ == "__main__":
    main()
