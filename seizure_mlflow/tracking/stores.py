"""Before any work: the tracking store and registry answer, and the experiment a run would go to exists.

A command that will talk to MLflow calls :func:`check_tracking_server` first, so that a store that is down, a
URI that cannot be a store, or an experiment that was deleted is one line and exit 2 within seconds, not a
traceback after MLflow's retries (minutes against a dead PostgreSQL) or after training. Messages name a store
by scheme, host and port (or a SQLite file's path) only: never a user name, password or query string.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.parse
import urllib.request

import mlflow
from mlflow.exceptions import MlflowException

from seizure_mlflow.errors import UserError

# MLflow's HTTP client retries 7 times with a backoff factor of 2 (minutes against a dead server); a command
# gives up after about 10 s instead. Values the user has set win.
BOUNDED_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
FIX = "start it (`make stack-up` for the local stack) or point MLFLOW_TRACKING_URI elsewhere"


def bound_http_retries() -> None:
    """Give this process a bounded retry budget for tracking-server requests (see ``BOUNDED_HTTP_RETRIES``)."""
    for key, value in BOUNDED_HTTP_RETRIES.items():
        os.environ.setdefault(key, value)


def check_tracking_server(timeout_s: float = 5) -> None:
    """The tracking and registry stores answer (HTTP servers, databases) or can be made (SQLite, folders), and the
    experiment named by ``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_EXPERIMENT_ID`` is not deleted; :class:`UserError` else."""
    for uri in dict.fromkeys((mlflow.get_tracking_uri(), mlflow.get_registry_uri())):
        parsed = urllib.parse.urlsplit(uri)
        scheme = parsed.scheme.split("+")[0]
        if scheme in ("http", "https"):
            _check_http(parsed, timeout_s)
        elif scheme == "sqlite":
            _check_sqlite(uri)
        elif scheme in DATABASE_PORTS:
            _check_database(parsed, scheme, timeout_s)
    check_experiment()


def _shown(parsed: urllib.parse.SplitResult) -> str:
    return f"{parsed.scheme}://{parsed.hostname}{':' + str(parsed.port) if parsed.port else ''}"


def _check_http(parsed: urllib.parse.SplitResult, timeout_s: float) -> None:
    shown = _shown(parsed)
    try:
        with urllib.request.urlopen(f"{shown}{parsed.path.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answers (an auth proxy may refuse /health without credentials)
    except OSError as exc:
        raise UserError(f"MLflow tracking server {shown} is unreachable ({getattr(exc, 'reason', exc)}); {FIX}") from None


def _check_sqlite(uri: str) -> None:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db``, in a folder that exists."""
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    if not path or path.startswith("?"):
        raise UserError(f"tracking URI {uri.split('?')[0]!r} is not a SQLite store URI: write sqlite:///RELATIVE.db "
                        "or sqlite:////ABSOLUTE/PATH.db (three slashes, then the path)")
    path = path.split("?")[0]
    if path == ":memory:":
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"tracking URI sqlite:///{path}: the folder {folder} does not exist; create it or give "
                        "another path")
    if os.path.isdir(path):
        raise UserError(f"tracking URI sqlite:///{path}: that path is a folder, not a database file")


def _check_database(parsed: urllib.parse.SplitResult, scheme: str, timeout_s: float) -> None:
    """A database server that does not accept a connection on its port (MLflow would retry it for minutes)."""
    try:
        host, port = parsed.hostname, parsed.port or DATABASE_PORTS[scheme]
    except ValueError:
        raise UserError(f"tracking URI {scheme}://...: its port is not a number") from None
    if not host or host.startswith("/"):
        return  # a Unix socket, or a host given in the query: the store itself tells
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise UserError(f"the {scheme} tracking store {scheme}://{host}:{port} does not answer "
                        f"({exc.strerror or exc}); {FIX}") from None


def check_experiment() -> None:
    """The experiment a new run goes to (``MLFLOW_EXPERIMENT_NAME`` or ``MLFLOW_EXPERIMENT_ID``) is not deleted."""
    name, experiment_id = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
    if not (name or experiment_id):
        return
    client = mlflow.MlflowClient()
    try:
        experiment = client.get_experiment_by_name(name) if name else client.get_experiment(experiment_id)
    except MlflowException as exc:
        if experiment_id and not name:
            raise UserError(f"MLFLOW_EXPERIMENT_ID {experiment_id}: no such experiment in the tracking store "
                            f"({exc.message.splitlines()[0]})") from None
        raise
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise UserError(f"experiment {experiment.name!r} (id {experiment.experiment_id}) was deleted: restore it "
                        f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or choose another "
                        "name (MLFLOW_EXPERIMENT_NAME, or --experiment-name with `mlflow run`)")
