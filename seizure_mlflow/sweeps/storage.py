"""Where a study lives: Optuna's RDB storage, a SQLite file locally or the team stack's PostgreSQL.

The URL comes from ``--storage``, else ``$SEIZURE_OPTUNA_STORAGE`` (``make stack-up`` writes it into the
stack's env file), else ``sqlite:///optuna.db`` in the working folder. It holds a password on the team
stack, so it is only ever shown with the password removed (:func:`redacted`).
"""

from __future__ import annotations

import os
import random
import time
import warnings

from optuna.exceptions import ExperimentalWarning

from seizure_mlflow.commands.requests import GRACE_S, HEARTBEAT_S
from seizure_mlflow.errors import UserError

# Heartbeats, stale-trial retries and their helpers are what distributed sweeps need; Optuna still marks
# them experimental, on every call.
warnings.filterwarnings("ignore", category=ExperimentalWarning)

STORAGE_ENV = "SEIZURE_OPTUNA_STORAGE"
DEFAULT_STORAGE = "sqlite:///optuna.db"
SCHEMA_RACE_RETRIES = 5


def storage_url(given: str = "") -> str:
    return given or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def redacted(url: str) -> str:
    """The URL without its password (``postgresql+psycopg://mlflow:***@host:port/optuna``)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a database URL at all: show only its scheme
        return url.split("://", 1)[0] + "://..."


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S):
    """Optuna's RDB storage with heartbeats (stale trials of a killed worker are failed, then retried
    once); a database that does not answer is a :class:`UserError` naming the host, not the password."""
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"{redacted(url)} is not a database URL (e.g. sqlite:///optuna.db or "
                        "postgresql+psycopg://USER:PASSWORD@HOST:PORT/optuna)", param="storage") from None
    engine_kwargs = {"connect_args": {"connect_timeout": 10}} if parsed.get_backend_name() == "postgresql" else {}
    try:
        for attempt in range(SCHEMA_RACE_RETRIES + 1):
            try:
                return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                  grace_period=grace_s, failed_trial_callback=RetryFailedTrialCallback(max_retry=1))
            except DBAPIError as exc:
                # Workers that open a new database at the same moment both create Optuna's tables: the later
                # one finds a table or row the other just made ("already exists", a unique key); a moment
                # later the schema is simply there.
                if attempt == SCHEMA_RACE_RETRIES or not (isinstance(exc, IntegrityError)
                                                          or "already exists" in str(exc)):
                    raise
                time.sleep(0.5 + random.random())
    except Exception as exc:  # SQLAlchemy's OperationalError and friends, whose text may hold the URL
        where = f"{parsed.host}:{parsed.port}" if parsed.host else redacted(url)
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        if parsed.password:
            reason = reason.replace(parsed.password, "***")
        raise UserError(f"the study storage at {where} does not answer ({reason}); is the database up "
                        f"(`make stack-up` for the team stack)?", param="storage") from None
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
