#!/usr/bin/env bash
# Install Detectron2 into the current Python environment.
#
# Default: the PyPI repackaging `sal-detectron2==0.7.2` (upstream Detectron2 main at a59f0563 plus a
# Python 3.11 fix). It is published only as a wheel tagged cp310, so we download it for 3.10, verify its
# sha256, re-tag it py3 and install it with the dependencies its metadata omits.
#
# Override: DETECTRON2_SOURCE=<pip requirement> installs that instead, e.g.
#   DETECTRON2_SOURCE='git+https://github.com/facebookresearch/detectron2.git' make setup
# --only-in-env (how the MLproject entry points call it): install only into a virtualenv or conda environment
# (the one `mlflow run` built), never into a system Python; there the entry point explains what is missing.
set -euo pipefail

PYTHON=${PYTHON:-python}
ONLY_IN_ENV=${1:-}
# What the wheel needs but its metadata omits or pins too tightly (numpy<2; tensorboard and black are
# only used by optional writers and LazyConfig formatting, which this project does not use).
EXTRA_DEPS=(fvcore==0.1.5.post20221221 iopath==0.1.9 opencv-python-headless==4.11.0.86 "setuptools<82"
  Pillow matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" "yacs>=0.1.8" tabulate cloudpickle "tqdm>4.29.0"
  "omegaconf>=2.1,<2.4" "hydra-core>=1.1" packaging)

# The checked wheel, re-tagged py3 with its metadata corrected (scripts/repack_detectron2_wheel.py), is kept in
# the environment (PREFIX/share/seizure-mlflow/wheels), so that each registered model carries the exact wheel
# its environment needs (see seizure_mlflow/registry/environment.py).
WHEEL_NAME=sal_detectron2-0.7.2-py3-none-any.whl
WHEEL_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
KEEP_DIR="$("$PYTHON" -c 'import sys; print(sys.prefix)')/share/seizure-mlflow/wheels"

fetch_wheel() {
  [ -f "$KEEP_DIR/$WHEEL_NAME" ] && return 0
  local wheeldir
  wheeldir=$(mktemp -d)
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.10 \
    sal-detectron2==0.7.2 -d "$wheeldir"
  local src="$wheeldir/sal_detectron2-0.7.2-cp310-none-any.whl"
  if [ ! -f "$src" ]; then
    echo "error: expected $src after download; found: $(ls "$wheeldir")" >&2
    exit 1
  fi
  local got
  got=$(sha256sum "$src" | cut -d' ' -f1)
  if [ "$got" != "$WHEEL_SHA256" ]; then
    echo "error: sha256 mismatch for sal-detectron2 wheel: expected $WHEEL_SHA256, got $got" >&2
    exit 1
  fi
  mkdir -p "$KEEP_DIR"
  "$PYTHON" "$(dirname "$0")/repack_detectron2_wheel.py" "$src" "$KEEP_DIR/$WHEEL_NAME"
  rm -rf "$wheeldir"
}

# Found without importing torch: this runs before every entry point.
if "$PYTHON" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('detectron2', 'fvcore', 'iopath')))" 2>/dev/null; then
  if [ -z "${DETECTRON2_SOURCE:-}" ] && [ "$ONLY_IN_ENV" != "--only-in-env" ]; then
    fetch_wheel  # an environment set up before wheels were kept
  fi
  exit 0
fi
if [ "$ONLY_IN_ENV" = "--only-in-env" ] && \
   ! "$PYTHON" -c "import os, sys; sys.exit(not (sys.prefix != sys.base_prefix or os.environ.get('CONDA_PREFIX')))"; then
  exit 0
fi

if [ -n "${DETECTRON2_SOURCE:-}" ]; then
  echo "Installing Detectron2 from DETECTRON2_SOURCE=${DETECTRON2_SOURCE}"
  "$PYTHON" -m pip install --no-build-isolation "${DETECTRON2_SOURCE}" "${EXTRA_DEPS[@]}"
  exit 0
fi

fetch_wheel
"$PYTHON" -m pip install --no-deps "$KEEP_DIR/$WHEEL_NAME"
"$PYTHON" -m pip install "${EXTRA_DEPS[@]}"
"$PYTHON" -c "import detectron2, detectron2.model_zoo; print('detectron2', detectron2.__version__)"
