"""``cv``: cross-validation by video, folds as child runs of one parent, shared by workers through the study storage.

Real Detectron2 training of the tiny model for every fold, a real SQLite tracking store and Optuna storage, two
real worker processes."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from scipy import stats

from conftest import TINY_OPTS, private_tracking_store, venv_env
from seizure_mlflow.cli import main

TINY = ["--max-iter", "6", "--eval-period", "2", "--min-size", "64", "--system-metrics", "false",
        "--model-name", "cv-detector", "--opts", " ".join(TINY_OPTS)]


def _data(tiny_data) -> list[str]:
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    return ["--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi]


def _video_keys(tiny_data) -> list[str]:
    keys = set()
    for split in ("train", "val"):
        keys |= {str(i["video_id"]) for i in json.loads(Path(tiny_data[split][0]).read_text())["images"]}
    return sorted(keys)


@pytest.mark.parametrize("extra, message", [
    (["--folds", "5"], "5 folds need at least 5 videos, but the training and validation sets hold 4; use --folds 4"),
    (["--folds", "1"], "--folds: must be at least 2"),
    (["--folds", "2", "--patient-map", "{missing}"], "no such file"),
    (["--folds", "2", "--study", "../.."], "--study: must be a plain name"),  # it names a folder under output_dir
])
def test_bad_folds_are_refused_before_a_run_or_a_study_exists(tiny_data, tmp_path, capsys, extra, message):
    extra = [e.replace("{missing}", str(tmp_path / "none.csv")) for e in extra]
    with private_tracking_store(tmp_path):
        code = main(["cv", *extra, "--storage", f"sqlite:///{tmp_path}/optuna.db", *_data(tiny_data), *TINY])
        assert code == 2
        assert message in capsys.readouterr().err
        client = MlflowClient()
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not (tmp_path / "optuna.db").exists()


def test_a_patient_map_that_misses_a_video_is_refused(tiny_data, tmp_path, capsys):
    keys = _video_keys(tiny_data)
    patients = tmp_path / "patients.csv"
    patients.write_text("video,patient\n" + "".join(f"{v},p{i}\n" for i, v in enumerate(keys[:-1])))
    with private_tracking_store(tmp_path):
        assert main(["cv", "--folds", "2", "--patient-map", str(patients), "--storage",
                     f"sqlite:///{tmp_path}/optuna.db", *_data(tiny_data), *TINY]) == 2
    assert "no patient for video(s)" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_share_one_cv_study_and_the_final_model_carries_the_estimate(tiny_data, tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = [sys.executable, "-m", "seizure_mlflow", "cv", "--folds", "3", "--study", "shared-cv", "--register-final",
            "--output-dir", str(tmp_path / "out"), *_data(tiny_data), *TINY]
    with private_tracking_store(tmp_path) as uri:
        env = venv_env(MLFLOW_TRACKING_URI=uri, SEIZURE_OPTUNA_STORAGE=storage)
        logs = [open(tmp_path / f"worker{k}.log", "w") for k in range(2)]
        workers = [subprocess.Popen(args, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT) for log in logs]
        for k, worker in enumerate(workers):
            assert worker.wait(timeout=1500) == 0, (tmp_path / f"worker{k}.log").read_text()[-3000:]
        client = MlflowClient()
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        folds = sorted((r for r in children if "seizure.fold" in r.data.tags), key=lambda r: r.data.tags["seizure.fold"])
        (final,) = [r for r in children if "seizure.fold" not in r.data.tags]
        assert len(runs) == 5 and [r.data.tags["seizure.fold"] for r in folds] == ["0", "1", "2"]
        assert all(r.info.status == "FINISHED" for r in runs) and parent.data.tags["seizure.cv"] == "shared-cv"

        # every video held out exactly once, named by count and digest only
        membership = json.loads(Path(client.download_artifacts(parent.info.run_id, "cv/membership.json",
                                                               str(tmp_path))).read_text())
        assert sum(m["videos"] for m in membership) == 4 and len({m["digest"] for m in membership}) == 3
        assert [r.data.params["cv.fold_digest"] for r in folds] == [m["digest"] for m in membership]
        assert not any(key in json.dumps(membership) for key in _video_keys(tiny_data))
        assert not any(client.search_logged_models([r.info.experiment_id], filter_string=f"source_run_id = '{r.info.run_id}'")
                       for r in folds), "a fold's checkpoint was logged as a model: cv measures, it registers nothing"

        # the parent's estimate is the folds' values at their best checkpoints, recomputed here
        best = []
        for r in folds:
            at = int(r.data.metrics["best/iteration"])
            (value,) = [m.value for m in client.get_metric_history(r.info.run_id, "val/total_loss") if m.step == at]
            best.append(value)
        mean, sd = statistics.mean(best), statistics.stdev(best)
        half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
        got = parent.data.metrics
        assert got["cv/val/total_loss_mean"] == pytest.approx(mean, rel=1e-9)
        assert got["cv/val/total_loss_sd"] == pytest.approx(sd, rel=1e-9)
        assert (got["cv/val/total_loss_ci_low"], got["cv/val/total_loss_ci_high"]) == pytest.approx((mean - half, mean + half))
        artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "cv")}
        assert {"cv/folds.csv", "cv/folds.md", "cv/summary.csv", "cv/val_curves.png", "cv/membership.json"} <= artifacts

        # --register-final: one model, trained on every video, tagged with the estimate
        (version,) = client.search_model_versions("name = 'cv-detector'")
        assert version.run_id == final.info.run_id
        assert float(version.tags["cv_val_total_loss_mean"]) == pytest.approx(mean, rel=1e-5)
        assert version.tags["seizure.cv"] == "shared-cv" and version.tags["cv_folds"] == "3"
        (trained_on,) = [{t.key: t.value for t in i.tags} for i in final.inputs.dataset_inputs
                         if any(t.key == "mlflow.data.context" and t.value == "training" for t in i.tags)]
        assert trained_on["videos"] == "4"
        logs = [(tmp_path / f"worker{k}.log").read_text() for k in range(2)]
        assert all("folds done" in log for log in logs), "one worker trained every fold: nothing was shared"
        assert "2 of 3 folds done" in "".join(logs)
