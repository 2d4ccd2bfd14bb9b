"""`trace --engine ray`: a folder of sample videos on a local two-worker Ray cluster, each video in segments; the
same events and traces as the serial run, one MLflow run, workers with no way to the tracking server, and a worker
killed mid-segment retried by Ray to the same result."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow import MlflowClient

from conftest import private_tracking_store
from seizure_mlflow.cli import main
from seizure_mlflow.sample.scenes import TraceSpec, write_trace_sample
from seizure_mlflow.motion.carry import CarryRules
from seizure_mlflow.motion.pipeline import TraceOptions, measure_frames
from seizure_mlflow.motion.ray_engine import WORKER_TRACKING_URI, measure_on_ray, ray_init_options
from seizure_mlflow.motion.sources import TrueMaskSource



@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    return write_trace_sample(tmp_path_factory.mktemp("ray") / "sample",
                              TraceSpec(num_videos=2, seconds=30, width=96, height=72))


def _files(folder: Path) -> dict[str, str]:
    return {f"{v.name}/{name}": (v / name).read_text() for v in sorted(folder.iterdir()) if v.is_dir()
            for name in ("events.json", "trace.csv")}


@pytest.mark.slow
def test_ray_gives_the_serial_events_and_traces_in_one_mlflow_run(sample, tmp_path):
    given = ["--input", str(sample / "videos"), "--masks", str(sample / "masks"), "--truth",
             str(sample / "truth.json"), "--detect-every", "5"]
    assert main(["trace", "--no-mlflow", *given, "--output", str(tmp_path / "serial")]) == 0
    with private_tracking_store(tmp_path):
        assert main(["trace", *given, "--output", str(tmp_path / "ray"), "--engine", "ray", "--ray-workers", "2",
                     "--segment-seconds", "10"]) == 0  # 750 frames a video: 3 segments each
        client = MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    serial, on_ray = _files(tmp_path / "serial"), _files(tmp_path / "ray")
    assert len(serial) == 4 and on_ray == serial
    assert any(json.loads(text)["events"] for name, text in serial.items() if name.endswith("events.json"))
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["scores"] == json.loads((tmp_path / "serial" / "summary.json").read_text())["scores"]
    (run,) = runs  # the driver's, and no other: workers cannot reach the tracking server (below)
    assert run.data.params["trace.engine"] == "ray" and run.data.params["trace.detect_every"] == "5"
    assert run.data.metrics["videos"] == 2


class _MasksThatKillTheirWorker(TrueMaskSource):
    """True masks whose worker process is killed (SIGKILL) the first time a frame from ``at`` on is asked for."""

    def __init__(self, path: Path, marker: Path, at: int) -> None:
        super().__init__(path)
        self.marker, self.at = marker, at

    def __call__(self, frames):
        if self.marker.exists() and any(index >= self.at for index, _ in frames):
            self.marker.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(frames)


@pytest.mark.slow
def test_workers_cannot_reach_the_tracking_server_and_a_killed_one_is_retried_to_the_same_result(sample, tmp_path):
    video, masks = sample / "videos" / "trace_00.mp4", sample / "masks" / "trace_00.json"
    options = TraceOptions(carry=CarryRules(every=5))
    ray.init(**ray_init_options(workers=2))  # the engine's own cluster settings; measure_on_ray then uses it
    try:
        @ray.remote
        def reach_tracking() -> str:
            import mlflow

            try:
                mlflow.search_experiments()
            except Exception as exc:  # noqa: BLE001 -- any failure will do: the call did not get through
                return f"{os.environ['MLFLOW_TRACKING_URI']} {type(exc).__name__}"
            return "reached"

        assert ray.get(reach_tracking.remote()).startswith(WORKER_TRACKING_URI)

        marker = tmp_path / "kill-once"
        marker.touch()
        ray.cloudpickle.register_pickle_by_value(sys.modules[_MasksThatKillTheirWorker.__module__])
        dying = _MasksThatKillTheirWorker(masks, marker, at=400)  # inside the second of three segments
        (measured,) = measure_on_ray([video], [dying], options, [750], [250], workers=2)
        assert not marker.exists()  # a worker was killed
    finally:
        ray.shutdown()
    one_pass = measure_frames(video, TrueMaskSource(masks), options, progress=False)
    assert _same_rows(measured.rows, one_pass.rows)
    for region, components in one_pass.components.items():
        assert np.array_equal(np.array(measured.components[region]), np.array(components), equal_nan=True)


def _same_rows(a: list[dict], b: list[dict]) -> bool:
    """Rows equal, NaN equal to NaN."""
    return len(a) == len(b) and all(x.keys() == y.keys() and all(
        x[k] == y[k] or (isinstance(x[k], float) and np.isnan(x[k]) and np.isnan(y[k])) for k in x) for x, y in zip(a, b))


@pytest.mark.parametrize("where", ["trace.sbatch", "trace-rayjob.yaml"])
def test_the_cluster_examples_run_trace_on_ray_and_keep_the_tracking_login_on_the_driver(where):
    import shlex
    import subprocess

    import yaml

    from conftest import REPO
    from seizure_mlflow.cli import build_parser

    path = REPO / "docs" / "cluster" / where
    if where.endswith(".sbatch"):
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
        text = path.read_text()
        line = text[text.index("seizure-mlflow trace"):].split("\n\"$RAY\" stop")[0].replace("\\\n", " ")
        assert "team.env" in text and "PASSWORD=" not in text
    else:
        job = yaml.safe_load(path.read_text())
        assert job["kind"] == "RayJob"
        line = job["spec"]["entrypoint"]
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["envFrom"] == [{"secretRef": {"name": "seizure-mlflow-tracking"}}]
        for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                assert "envFrom" not in container and "env" not in container  # workers get no login
    args = build_parser().parse_args(shlex.split(line.replace("seizure-mlflow trace", "trace", 1).replace('"', "")))
    assert args.engine == "ray" and args.ray_address and args.detect_every >= 1
