"""The GPU benchmark script: it refuses clearly where there is no GPU, and its --dry-run runs every step on the CPU."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import REPO, venv_env


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: the refusal is for machines without")
def test_gpu_script_without_a_gpu_says_so_and_exits_2(tmp_path):
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--out", str(tmp_path / "gpu.json")], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=venv_env())
    assert done.returncode == 2 and "no NVIDIA GPU" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
def test_gpu_script_dry_run_measures_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=venv_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True
    measured = [r for r in result["training"] if not r.get("skipped")]
    assert [r["batch"] for r in measured] == [1, 2] and all(r["images_per_s"] > 0 for r in measured)
    assert [r["skipped"] for r in result["training"] if r.get("skipped")] == ["AMP needs CUDA"] * 2
    assert [r["validation_batch"] for r in result["validation"]] == [1, 4]
    assert all(r["s_per_image"] > 0 for r in result["validation"])
    assert result["pyfunc"]["pyfunc_ms_per_image"] > 0
