"""One training job in several processes started three ways: Detectron2's launch on one machine, two
"machines" (two separately started commands, gloo on 127.0.0.1), and torchrun. One MLflow run each, every
step once, and the same validation losses whichever way the two processes were started."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY_OPTS, tiny_params, venv_env
from seizure_mlflow.distributed import launcher_from_env, run_as_job
from seizure_mlflow.errors import ConfigError
from helpers.servers import free_port
from seizure_mlflow.commands.train import run_training

DEAD_SERVER = "http://127.0.0.1:9"  # nothing answers: a process that talked to MLflow would fail


def _command(tiny_data, tmp_path, *extra) -> list[str]:
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    return ["-m", "seizure_mlflow", "train", "--train-json", tj, "--train-images", ti, "--val-json", vj,
            "--val-images", vi, "--min-size", "64", "--device", "cpu", "--lr", "0.01", "--seed", "1",
            "--max-iter", "4", "--eval-period", "2", "--ims-per-batch", "2", "--val-max-images", "0",
            "--system-metrics", "false", "--opts", " ".join(TINY_OPTS), *extra]


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def two_processes(tiny_data, tmp_path_factory):
    """The reference: Detectron2's launch, two processes on this machine."""
    from conftest import private_tracking_store

    root = tmp_path_factory.mktemp("reference")
    with private_tracking_store(root):
        result = run_training(tiny_params(tiny_data, root, max_iter=4, eval_period=2, ims_per_batch=2,
                                          num_processes=2, system_metrics=False, model_name="reference"))
        client = MlflowClient()
        return {key: _history(client, result.run_id, key) for key in ("val/total_loss", "val_full/total_loss",
                                                                       "train/lr")}


def _one_run(uri: str) -> tuple[MlflowClient, str]:
    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs(["0"])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    assert runs[0].info.status == "FINISHED"
    return client, runs[0].info.run_id


def _same_run_as_reference(client, run_id, reference) -> None:
    assert [s for s, _ in _history(client, run_id, "train/total_loss")] == [1, 2, 3, 4]  # every step once
    for key, expected in reference.items():
        got = _history(client, run_id, key)
        assert [s for s, _ in got] == [s for s, _ in expected], key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-5), key


@pytest.mark.slow
def test_two_machines_started_separately_train_one_run(tiny_data, tmp_path, two_processes):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    url = f"tcp://127.0.0.1:{free_port()}"
    machines = []
    for rank in (1, 0):  # the second machine may start first
        env = venv_env(MLFLOW_TRACKING_URI=uri if rank == 0 else DEAD_SERVER, MLFLOW_REGISTRY_URI=uri)
        log = open(tmp_path / f"machine{rank}.log", "w")
        machines.append((rank, log, subprocess.Popen(
            [sys.executable, *_command(tiny_data, tmp_path, "--num-machines", "2", "--machine-rank", str(rank),
                                       "--dist-url", url, "--output-dir", str(tmp_path / f"out{rank}"),
                                       "--model-name", "two-machines")],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)))
    for rank, log, proc in machines:
        assert proc.wait(timeout=600) == 0, (tmp_path / f"machine{rank}.log").read_text()[-3000:]
        log.close()
    client, run_id = _one_run(uri)
    _same_run_as_reference(client, run_id, two_processes)
    assert not list((tmp_path / "out1").glob("*.pth"))  # checkpoints come from rank 0 only
    assert (tmp_path / "out0" / "model_final.pth").is_file()


@pytest.mark.slow
def test_torchrun_starts_the_processes_and_rank_0_logs_one_run(tiny_data, tmp_path, two_processes):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    done = subprocess.run([*torchrun, *_command(tiny_data, tmp_path, "--output-dir", str(tmp_path / "out"),
                                                "--model-name", "torchrun")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          # torchrun sets OMP_NUM_THREADS=1; the reference's processes use torch's default, and
                          # another thread count sums the convolutions in another order (a 5e-4 difference)
                          env=venv_env(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri,
                                       OMP_NUM_THREADS=str(torch.get_num_threads())))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    client, run_id = _one_run(uri)
    _same_run_as_reference(client, run_id, two_processes)
    assert client.get_model_version_by_alias("torchrun", "champion").run_id == run_id


@pytest.mark.slow
def test_under_a_launcher_bad_input_on_one_rank_stops_every_rank_before_a_run(tiny_data, tmp_path):
    """Rank 1 cannot read its validation file: both processes exit with that message, none waits for a timeout."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = ("import os, sys; from seizure_mlflow.__main__ import main; "
              "os.environ['RANK'] == '1' and sys.argv.__setitem__(sys.argv.index('--val-json') + 1, '/no/such.json'); "
              "sys.exit(main(sys.argv[1:]))")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "--no-python", sys.executable, "-c",
                script]
    done = subprocess.run([*torchrun, *_command(tiny_data, tmp_path)[2:]], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env=venv_env(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri))
    assert done.returncode != 0
    assert "/no/such.json" in done.stderr and "process 1 of the job failed its checks" in done.stderr
    if (tmp_path / "mlflow.db").exists():
        assert not MlflowClient(uri).search_runs(["0"])  # no run was started


@pytest.mark.parametrize("part_fails", [False, True])
def test_a_launched_process_leaves_its_process_group_when_its_part_ends(monkeypatch, part_fails):
    """Left to the interpreter's exit, gloo's threads can abort a process that a launcher started (SIGABRT), and
    torchrun then kills the other ranks: the CI run that failed so had rank 1 abort while rank 0 registered."""
    import torch.distributed as dist
    from types import SimpleNamespace

    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    params = SimpleNamespace(num_processes=1, num_machines=1, machine_rank=0, device="cpu")
    seen = []

    def lead(job):
        seen.append(dist.is_initialized() and dist.get_world_size())
        if part_fails:
            raise RuntimeError("training failed")
        return "result"

    if part_fails:
        with pytest.raises(RuntimeError, match="training failed"):
            run_as_job(params, lead=lead, follow=None)
    else:
        assert run_as_job(params, lead=lead, follow=None) == "result"
    assert seen == [1]  # in the job while leading
    assert not dist.is_initialized()


def test_launcher_variables_are_read_and_checked(tiny_data, tmp_path):
    assert launcher_from_env({}) is None
    full = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "n0",
            "MASTER_PORT": "29500"}
    process = launcher_from_env(full)
    assert (process.rank, process.world_size, process.local_rank, process.local_world_size) == (1, 4, 1, 2)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        launcher_from_env({**full, "MASTER_ADDR": ""})
    with pytest.raises(ConfigError, match="integers"):
        launcher_from_env({**full, "RANK": "one"})
    with pytest.raises(ConfigError, match="out of range"):
        launcher_from_env({**full, "RANK": "4"})
    with pytest.raises(ConfigError, match="dist_url"):
        tiny_params(tiny_data, tmp_path, num_machines=2, machine_rank=1)
    with pytest.raises(ConfigError, match="machine_rank"):
        tiny_params(tiny_data, tmp_path, num_machines=2, machine_rank=2, dist_url="tcp://127.0.0.1:1234")


def test_the_cluster_examples_parse_and_give_every_launcher_variable():
    from conftest import REPO

    import yaml

    sbatch = REPO / "docs" / "cluster" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(sbatch)], capture_output=True).returncode == 0
    text = sbatch.read_text()
    for name in ("RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=", "MASTER_PORT="):
        assert name in text, name
    service, job = yaml.safe_load_all((REPO / "docs" / "cluster" / "train-job.yaml").read_text())
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"] for e in container["env"]}
    assert {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"} <= env
    assert job["spec"]["completions"] == int(next(e["value"] for e in container["env"] if e["name"] == "WORLD_SIZE"))
    assert not any(word in e["name"] for e in container["env"] for word in ("PASSWORD", "SECRET", "TRACKING"))
    assert container["envFrom"] == [{"secretRef": {"name": "seizure-mlflow-tracking"}}]  # credentials from a Secret
    assert container["command"][:2] == ["seizure-mlflow", "train"]
