"""Run every benchmark script in this folder (``make bench``); each prints a table and writes JSON.

``bench_gpu.py`` is left out: it needs a GPU, and ``benchmarks/gpu.sh`` runs it there."""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
failed = 0
for script in sorted(here.glob("bench_*.py")):
    if script.name == "bench_gpu.py":
        continue
    print(f"\n== {script.name}", flush=True)
    failed += subprocess.call([sys.executable, str(script)]) != 0
sys.exit(1 if failed else 0)
