"""Where benchmarks write their JSON: ``benchmarks/results/`` unless an absolute ``--out`` is given."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_results(out: str, payload: dict) -> Path:
    """Write ``payload`` as JSON to ``out`` (relative paths are taken from the repository root); print where."""
    path = Path(out) if Path(out).is_absolute() else REPO / out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
