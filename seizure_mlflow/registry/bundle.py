"""An offline bundle of a registered model, for a server without internet access.

``write_bundle(model_uri, output, torch="pypi")`` writes one folder:

* ``model/``: the MLflow model (its code, weights, config, Detectron2's wheel, ``requirements.txt``);
* ``wheels/``: every wheel its requirements need, transitively (``pip wheel``), for this machine's Python
  and platform; ``torch="cpu"`` takes torch and torchvision from PyTorch's CPU index (a much smaller
  bundle; needs that index reachable while bundling), ``pypi`` the PyPI builds (CUDA, which also run on a
  CPU);
* ``install.sh``: the one command that makes ``env/`` from ``wheels/`` alone (``pip --isolated --no-index``)
  and serves the model with ``mlflow models serve`` (``--serve`` is optional: ``bash install.sh`` only
  installs, ``bash install.sh --serve`` installs if needed and serves on ``$PORT``, default 5001).

The folder is written beside its destination and moved into place when complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from seizure_mlflow.outputs.staging import check_output_folder, check_replaceable, staged_folder
from seizure_mlflow.errors import UserError

TORCH_SOURCES = ("pypi", "cpu")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
INSTALL_SH = """#!/usr/bin/env bash
# Install this model's environment from wheels/ alone (no network), then optionally serve it.
#   bash install.sh            # make env/ (once)
#   bash install.sh --serve    # ... and serve on 127.0.0.1:${PORT:-5001} (POST /invocations)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x env/bin/mlflow ]; then
  "$PYTHON" -m venv env
  (cd model && ../env/bin/python -m pip install --isolated --no-index --find-links ../wheels -r requirements.txt)
fi
if [ "${1:-}" = "--serve" ]; then
  export PATH="$PWD/env/bin:$PATH"   # the server starts uvicorn from the environment
  exec env/bin/mlflow models serve -m model --env-manager local --host "${HOST:-127.0.0.1}" -p "${PORT:-5001}"
fi
echo "installed: env/ (serve with: bash install.sh --serve)"
"""


def write_bundle(model_uri: str, output: str | os.PathLike, torch: str = "pypi") -> Path:
    """Download ``model_uri`` and every wheel it needs into ``output``; returns the folder."""
    from seizure_mlflow.registry.uris import downloaded_model

    if torch not in TORCH_SOURCES:
        raise UserError(f"must be one of {', '.join(TORCH_SOURCES)}; got {torch!r}", param="torch")
    out = Path(output)
    check_output_folder(out, "output")
    check_replaceable(out, "bundle")
    with staged_folder(out, "bundle") as tmp:
        model = Path(downloaded_model(model_uri, str(tmp / "model")))  # checked against its registered digests
        if model != tmp / "model":
            model.rename(tmp / "model")
        index = ["--extra-index-url", CPU_INDEX] if torch == "cpu" else []
        # `pip wheel`, not `pip download`: what PyPI has only as source (fvcore, iopath) is built into a wheel
        # here, so the server needs no build tools. From the model folder, so that the Detectron2 wheel's path
        # in requirements.txt resolves.
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-r", "requirements.txt",
                        "-w", str(tmp / "wheels"), *index], cwd=tmp / "model", check=True)
        (tmp / "install.sh").write_text(INSTALL_SH)
        (tmp / "install.sh").chmod(0o755)
    return out
