#!/usr/bin/env bash
# GPU benchmark in one unattended command (<= 8 minutes on one NVIDIA GPU, set-up included):
#   benchmarks/gpu.sh [--dry-run] [--out FILE]
# Builds the project's venv if this clone has none (`make setup`: torch's PyPI wheels are CUDA builds), checks
# that a GPU is visible, then runs benchmarks/bench_gpu.py: R50-FPN at 800 px on synthetic frames, training
# images/s with AMP off and on at batch 2, 4 and 8, a validation image's cost against a training image's, and the
# registered model's pyfunc latency. JSON to --out (default benchmarks/results/gpu.json).
# --dry-run runs the same steps on the CPU with a tiny model (a check of the script; the tests run it).
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=""
out="benchmarks/results/gpu.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run="--dry-run"; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "gpu.sh: unknown argument $1 (use --dry-run, --out FILE)" >&2; exit 2 ;;
  esac
done
started=$(date +%s)
if [ -z "$dry_run" ] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu.sh: no NVIDIA GPU here (nvidia-smi -L failed); run benchmarks/gpu.sh --dry-run to check it on a CPU" >&2
  exit 2
fi
if [ ! -f .venv/.setup-done ]; then
  echo "gpu.sh: building .venv (make setup)" >&2
  make setup >&2
fi
export MLFLOW_DISABLE_TELEMETRY=true
[ -z "$dry_run" ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
(cd benchmarks && ../.venv/bin/python bench_gpu.py $dry_run --out "$out")
echo "gpu.sh: done in $(( $(date +%s) - started )) s; results in $out" >&2
