"""What the benchmarks share: where they write their JSON (``benchmarks/results/`` unless an absolute ``--out``
is given), a private MLflow store, a printed table, and the test helpers (``tests/helpers``: servers, free
ports) on the import path."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))  # `from helpers.servers import ...`: one copy for tests and benchmarks


def write_results(out: str, payload: dict) -> Path:
    """Write ``payload`` as JSON to ``out`` (relative paths are taken from the repository root); print where."""
    path = Path(out) if Path(out).is_absolute() else REPO / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path


@contextlib.contextmanager
def private_store(root: Path):
    """A private SQLite tracking store and registry in ``root``, which is also the working folder, for the block."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.getcwd()
    os.chdir(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        os.chdir(old)


def print_table(rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(rows[0])
    print("\n" + " | ".join(columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")) for c in columns))
