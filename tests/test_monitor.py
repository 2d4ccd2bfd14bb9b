"""`monitor`: one validation metric chooses the registered checkpoint, names the `best/*` metric and the version's
tags, and ranks a sweep's trials; validation AP is Detectron2's COCOEvaluator's on the same frames.

The tiny model's mask AP stays 0 over the few iterations a test can afford, while its box AP rises and falls: the
runs that must tell checkpoints apart monitor `val/bbox/AP`, which goes through the same code as `val/segm/AP`
(one :class:`~seizure_mlflow.metrics.monitor.Monitor` for every AP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY_OPTS, tiny_params
from seizure_mlflow.commands.train import run_training
from seizure_mlflow.cli import main

pytestmark = pytest.mark.slow  # real training runs of 40 iterations with AP at every validation

AP_KEYS = ("val/bbox/AP", "val/bbox/AP50", "val/segm/AP", "val/segm/AP50")
STEPS = list(range(5, 41, 5))


def _history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_monitor_ap_logs_ap_at_every_validation_and_registers_the_highest(tiny_data, tmp_path, tracking):
    params = tiny_params(tiny_data, tmp_path, max_iter=40, eval_period=5, lr=0.02, monitor="val/bbox/AP")
    result = run_training(params)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    for key in AP_KEYS:
        assert sorted(_history(client, result.run_id, key)) == STEPS, key
        assert sorted(_history(client, result.run_id, key.replace("val/", "val_full/", 1))) == [40], key
    ap, loss = _history(client, result.run_id, "val/bbox/AP"), _history(client, result.run_id, "val/total_loss")
    best = min(step for step, value in ap.items() if value == max(ap.values()))  # the first of the highest
    assert result.best_iteration == best and result.best_value == ap[best] and result.monitor == "val/bbox/AP"
    assert best != min(loss, key=loss.get), "the loss would have chosen the same checkpoint: nothing is shown"
    assert run.data.metrics["best/val_bbox_AP"] == ap[best] and run.data.metrics["best/iteration"] == best
    assert "best/val_total_loss" not in run.data.metrics and run.data.tags["seizure.monitor"] == "val/bbox/AP"
    version = client.get_model_version("test-detector", result.model_version)
    # the tag holds six significant digits (see best_tags): 10.504950... is "10.505"
    assert version.tags["monitor"] == "val/bbox/AP" and float(version.tags["val_bbox_AP"]) == pytest.approx(ap[best],
                                                                                                          rel=1e-5)
    assert version.tags["best_iteration"] == str(best) and "val_total_loss" not in version.tags
    assert f"Best val/bbox/AP {ap[best]:.4f} at iteration {best}" in version.description
    card = Path(client.download_artifacts(result.run_id, "model_card.md")).read_text()
    assert "highest val/bbox/AP" in card
    table = Path(client.download_artifacts(result.run_id, "losses.csv")).read_text().splitlines()[0].split(",")
    assert {"val/bbox/AP", "val/segm/AP", "val_full/segm/AP", "val/total_loss"} <= set(table)
    registered = torch.load(Path(result.output_dir) / "model_best.pth", weights_only=True)
    assert registered["monitor"] == "val/bbox/AP" and registered["iteration"] + 1 == best

    # The AP of the final weights on the validation set is Detectron2's COCOEvaluator's (through `evaluate`).
    from seizure_mlflow.config import build_config
    from seizure_mlflow.data.checks import check_coco
    from seizure_mlflow.evaluation.detector import evaluate_detector
    from seizure_mlflow.inference.predictor import Detector

    val = check_coco(*tiny_data["val"])
    cfg = build_config(params, num_classes=2, output_dir=str(tmp_path / "eval"))
    final = torch.load(Path(result.output_dir) / "model_final.pth", weights_only=True)["model"]
    evaluated = evaluate_detector(Detector(cfg, final, [{"id": i, "name": n} for i, n in val.categories]), val,
                                  tmp_path / "eval", progress=False).metrics
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50"):
            assert run.data.metrics[f"val_full/{task}/{key}"] == pytest.approx(evaluated[f"test/{task}/{key}"], abs=1e-6)


def test_a_loss_monitored_run_measures_no_ap_unless_asked(tiny_data, tmp_path, tracking):
    result = run_training(tiny_params(tiny_data, tmp_path, max_iter=4, eval_period=2, ap_period=2))
    client = MlflowClient()
    assert sorted(_history(client, result.run_id, "val/segm/AP")) == [4]  # every 2nd validation (and the last)
    assert sorted(_history(client, result.run_id, "val/total_loss")) == [2, 4]
    run = client.get_run(result.run_id)
    assert "best/val_total_loss" in run.data.metrics and run.data.tags["seizure.monitor"] == "val/total_loss"
    plain = run_training(tiny_params(tiny_data, tmp_path / "plain", max_iter=2, eval_period=2))
    assert not any("AP" in key for key in client.get_run(plain.run_id).data.metrics)


def test_tune_with_an_ap_monitor_maximises_prunes_on_ap_and_registers_the_highest(tiny_data, tmp_path, tracking):
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: categorical, choices: [0.02, 0.0000001]}\n")
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    code = main(["tune", "--space", str(space), "--storage", storage, "--study", "by-ap", "--trials", "2",
                 "--sampler", "grid", "--pruner", "median", "--monitor", "val/bbox/AP", "--train-json", tj,
                 "--train-images", ti, "--val-json", vj, "--val-images", vi, "--max-iter", "30", "--eval-period", "5",
                 "--min-size", "64", "--system-metrics", "false", "--model-name", "by-ap", "--opts", " ".join(TINY_OPTS)])
    assert code == 0
    study = optuna.load_study(study_name="by-ap", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    client = MlflowClient()
    trials = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(trials) == 2
    for trial in trials:  # the pruner was told the AP of every validation
        ap = _history(client, trial.user_attrs["run_id"], "val/bbox/AP")
        assert trial.intermediate_values == ap and trial.value == max(ap.values())
    best = max(trials, key=lambda t: t.value)
    assert best.value > min(t.value for t in trials)
    (version,) = client.search_model_versions("name = 'by-ap'")
    assert version.run_id == best.user_attrs["run_id"] and version.tags["monitor"] == "val/bbox/AP"
    assert float(version.tags["val_bbox_AP"]) == pytest.approx(best.value, rel=1e-5)  # six significant digits
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["best_val_bbox_AP"] == pytest.approx(best.value)
    table = Path(client.download_artifacts(parent.info.run_id, "sweep/trials.csv")).read_text()
    assert "best_val_bbox_AP" in table.splitlines()[0]


def test_an_auto_sample_records_what_decided_its_size_and_every_value_has_its_error(tmp_path, tracking):
    """Ten validation videos of 6 frames (60 frames) at one frame per batch: ``auto`` sizes the sample from its
    pilot and sizing passes; a sample smaller than the set logs ``_se`` beside every ``val/*`` value, and the
    record names the limit that decided."""
    from seizure_mlflow.sample.scenes import SampleSpec, sample_paths, write_sample_dataset

    data = sample_paths(write_sample_dataset(tmp_path / "data", SampleSpec(num_videos=50, frames_per_video=6, width=96,
                                                                           height=72, seed=4)))
    result = run_training(tiny_params(data, tmp_path, max_iter=6, eval_period=3, val_max_images="auto",
                                      val_precision=0.05, opts=TINY_OPTS + ("VALIDATION.BATCH_SIZE", "1")))
    client = MlflowClient()
    record = json.loads(Path(client.download_artifacts(result.run_id, "validation_sample.json")).read_text())
    assert record["decided_by"] in ("precision", "time budget") and record["metric"] == "val/total_loss"
    assert record["precision"] == 0.05 and record["full_size"] == 60
    assert 10 <= len(record["image_ids"]) < 60  # a frame per video at least; 3 iterations afford far fewer than 60
    metrics = client.get_run(result.run_id).data.metrics
    values = [k for k in metrics if k.startswith("val/") and not k.endswith("_se")]
    assert values and all(f"{k}_se" in metrics for k in values)
    assert sorted(_history(client, result.run_id, "val/total_loss_se")) == [3, 6]
    assert not any(k.startswith("val_full/") and k.endswith("_se") for k in metrics)
    if record["decided_by"] == "precision":
        assert record["estimated_rse"] <= 0.05
    sample_input = [d for d in client.get_run(result.run_id).inputs.dataset_inputs
                    if {t.key: t.value for t in d.tags}["mlflow.data.context"] == "validation_sample"][0]
    assert {t.key: t.value for t in sample_input.tags}["decided_by"] == record["decided_by"]
