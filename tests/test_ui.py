"""The MLflow UI, seen in a real browser: `scripts/ui_screenshots.py` drives headless Chromium over a store with
two runs and a registered model; the pages must show what users look for."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, venv_env

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (`make ui-deps`: Debian's chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="Playwright is not installed (`make setup`)"),
]


def test_the_ui_shows_runs_datasets_curves_artifacts_versions_and_ranked_models(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "ui_screenshots.py"), "--out", str(tmp_path),
                           "--chromium", CHROMIUM], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=venv_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "pages.json").read_text())
    pages = {name: text.replace("\xa0", " ") for name, text in report["pages"].items()}
    for name in ("runs_table", "loss_charts", "run_artifacts", "model_version", "logged_models"):
        assert (tmp_path / f"ui_{name}.png").stat().st_size > 10_000, name
    assert "r18 lr=0.01 b2 30it" in pages["runs_table"] and "r18 lr=0.03 b2 30it" in pages["runs_table"]
    assert "seizure-training" in pages["runs_table"] and "seizure-patient-detector" in pages["runs_table"]
    assert "train/total_loss" in pages["loss_charts"] and "val/total_loss" in pages["loss_charts"]
    assert pages["loss_charts"].count("r18 lr=") >= 4  # both runs in both charts' legends
    assert "loss_curves.png" in pages["run_artifacts"] and "model_card.md" in pages["run_artifacts"]
    assert f"@ {report['store']['aliases'][1]}" in pages["model_version"] and "Best val/total_loss" in pages["model_version"]
    assert "val_total_loss" in pages["model_version"] and "test_segm_AP" in pages["model_version"]
    assert "best/val_total_loss" in pages["logged_models"] and "seizure-validation" in pages["logged_models"]
    assert "v1" in pages["logged_models"] and "v2" in pages["logged_models"]
