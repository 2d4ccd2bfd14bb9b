"""Train the detector that ``bench_trace.py --model-uri`` measures: Mask R-CNN on frames of the trace scenes.

The sample trace videos (``bench_trace.py`` writes them with seed 0) are not its training data: this writes other
trace videos of the same scenes (seed 11, still camera; seed 12, the moving camera), takes every 5th frame's true
masks as per-video exports, splits them by video with ``seizure-mlflow prepare`` and trains through ``train`` (the
bundled CPU config, 900 iterations: about 6 minutes on this 2-core CPU), registering ``trace-detector`` in the
tracking store of ``MLFLOW_TRACKING_URI`` (default: a SQLite file under ``--root``). Then:

    MLFLOW_TRACKING_URI=sqlite:///ROOT/mlflow.db python benchmarks/bench_trace.py --model-uri models:/trace-detector@champion
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from seizure_mlflow.sample.scenes import TraceSpec, write_trace_exports

# other seeds than the sample trace videos' (seed 0), which bench_trace.py traces
TRAINING_SCENES = {"still": TraceSpec(seed=11, seconds=30), "cam": TraceSpec(seed=12, seconds=30, camera=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="benchmarks/results/trace-detector", help="new folder for data and runs")
    parser.add_argument("--max-iter", type=int, default=900)
    args = parser.parse_args()
    root = Path(args.root).resolve()
    if root.exists():
        sys.exit(f"{root} exists: give a new --root")
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")}
    cli = [sys.executable, "-m", "seizure_mlflow"]
    prepared = root / "prepared"
    exports = write_trace_exports(root / "exports", TRAINING_SCENES)
    subprocess.run([*cli, "prepare", "--input", str(exports), "--output", str(prepared), "--no-mlflow"],
                   check=True, env=env)
    data = [f"--{part}-{kind}" for part in ("train", "val", "test") for kind in ("json", "images")]
    values = [str(prepared / f"{part}.json") if kind == "json" else str(prepared / "images")
              for part in ("train", "val", "test") for kind in ("json", "images")]
    subprocess.run([*cli, "train", *[x for pair in zip(data, values) for x in pair], "--max-iter", str(args.max_iter),
                    "--eval-period", "150", "--model-name", "trace-detector", "--output-dir", str(root / "output"),
                    "--system-metrics", "false"], check=True, env=env)
    print(f"registered models:/trace-detector (tracking store {env['MLFLOW_TRACKING_URI']})")


if __name__ == "__main__":
    main()
