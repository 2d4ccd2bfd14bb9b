"""A whole training run against a real MLflow store: metrics, params, artifacts, registry, loading, predict."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import matplotlib
import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import Model
from PIL import Image

from conftest import REPO, private_tracking_store, tiny_params, venv_env
from seizure_mlflow.commands.train import run_training

LOSS_PARTS = ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real photograph
MACHINE_USER = "zz-clinic-user"  # the user name the trained run sees


@dataclass(frozen=True)
class Trained:
    result: object
    root: Path
    uri: str

    def __getattr__(self, name):  # the TrainResult's fields
        return getattr(self.result, name)


@pytest.fixture(scope="module")
def trained_once(tiny_data, tmp_path_factory) -> Trained:
    """One training run for the whole module, in a store of its own."""
    root = tmp_path_factory.mktemp("trained")
    with private_tracking_store(root) as uri, pytest.MonkeyPatch.context() as mp:
        for variable in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # what getpass.getuser() reads first
            mp.setenv(variable, MACHINE_USER)
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # the tiny run lasts seconds
        return Trained(run_training(tiny_params(tiny_data, root, max_iter=6, eval_period=2)), root, uri)


@pytest.fixture
def trained(trained_once) -> Iterator[Trained]:
    """The module's trained run, its store made the active one for this test."""
    with private_tracking_store(trained_once.root):
        yield trained_once


def test_run_records_params_metrics_and_artifacts(trained):
    client = MlflowClient()
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["SOLVER.BASE_LR"] == "0.01" and params["SOLVER.MAX_ITER"] == "6" and params["TEST.EVAL_PERIOD"] == "2"

    def steps(key):
        return [m.step for m in client.get_metric_history(trained.run_id, key)]

    for part in ("total_loss",) + LOSS_PARTS:
        assert steps(f"train/{part}") == [1, 2, 3, 4, 5, 6], part
        assert steps(f"val/{part}") == [2, 4, 6], part
    assert steps("train/lr") == [1, 2, 3, 4, 5, 6]
    assert steps("val_full/total_loss") == [6]  # the whole set, at the end (auto chose a sample)
    val = {m.step: m.value for m in client.get_metric_history(trained.run_id, "val/total_loss")}
    assert run.data.metrics["best/val_total_loss"] == min(val.values()) == trained.best_val_total_loss
    assert run.data.metrics["best/iteration"] == trained.best_iteration == min(val, key=val.get)

    artifacts = {a.path for a in client.list_artifacts(trained.run_id)}
    assert {"config.yaml", "losses.csv", "plots"} <= artifacts
    assert "images" not in artifacts  # no patient frame leaves the machine unless --log-images
    logged = mlflow.search_logged_models(filter_string=f"source_run_id = '{trained.run_id}'", output_format="list")
    assert [m.name for m in logged] == ["model"]
    local = Path(client.download_artifacts(trained.run_id, "losses.csv"))
    table = pd.read_csv(local)
    assert table["iteration"].tolist() == [1, 2, 3, 4, 5, 6]
    assert table["val/total_loss"].notna().tolist() == [False, True, False, True, False, True]
    assert table.loc[table.iteration == 4, "val/total_loss"].item() == pytest.approx(val[4])
    png = Path(client.download_artifacts(trained.run_id, "plots/loss_curves.png"))
    assert Image.open(png).size[0] > 500
    config = Path(client.download_artifacts(trained.run_id, "config.yaml")).read_text()
    assert "BASE_LR: 0.01" in config


def test_registered_version_tags_and_aliases(trained, tiny_data, tmp_path):
    client = MlflowClient()
    version = client.get_model_version_by_alias("test-detector", "champion")
    assert str(version.version) == trained.model_version == "1"
    assert version.tags["run_id"] == trained.run_id
    assert version.tags["best_iteration"] == str(trained.best_iteration)
    assert float(version.tags["val_total_loss"]) == pytest.approx(trained.best_val_total_loss, rel=1e-5)
    assert version.tags["config"] == "cpu_demo.yaml"

    second = run_training(tiny_params(tiny_data, tmp_path, max_iter=2, eval_period=2, output_dir=str(tmp_path / "o2")))
    assert (second.model_version, second.model_alias) == ("2", "challenger")
    assert str(client.get_model_version_by_alias("test-detector", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("test-detector", "challenger").version) == "2"


@pytest.mark.slow
def test_champion_loads_in_a_fresh_process_and_predicts_on_a_photo(trained, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow.pyfunc, pandas as pd
        from pycocotools import mask as mask_util
        model = mlflow.pyfunc.load_model("models:/test-detector@champion")
        data = open({str(PHOTO)!r}, "rb").read()
        out = model.predict(pd.DataFrame({{"image": [data, data]}}))
        sizes = [list(mask_util.decode(r["segmentation"]).shape) for r in out[0]]
        json.dump({{"n": len(out), "first": out[0][:3], "sizes": sizes}}, sys.stdout)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=venv_env(MLFLOW_TRACKING_URI=trained.uri), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    height, width = Image.open(PHOTO).size[::-1]
    assert answer["n"] == 2
    assert answer["sizes"] and answer["first"], "no detection on the photo: the checks below would pass on nothing"
    assert all(size == [height, width] for size in answer["sizes"])
    for r in answer["first"]:
        assert set(r) == {"category_id", "category_name", "bbox", "score", "segmentation"}
        assert r["category_name"] in ("patient", "caregiver") and r["segmentation"]["size"] == [height, width]
        x, y, w, h = r["bbox"]
        assert 0 <= x <= width and 0 <= y <= height and w >= 0 and h >= 0


@pytest.mark.slow
def test_predict_command_writes_coco_results(trained, tmp_path, tiny_data):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(PHOTO.read_bytes())
    Image.open(PHOTO).convert("RGB").resize((80, 60)).save(folder / "small.png")
    out = tmp_path / "results" / "results.json"
    proc = subprocess.run([sys.executable, "-m", "seizure_mlflow", "predict", "--model-uri", "models:/test-detector@champion",
                           "--input", str(folder), "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env=venv_env(MLFLOW_TRACKING_URI=trained.uri), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {r["file_name"] for r in results} <= {"photo.jpg", "small.png"}
    assert results, "no detections: the checks below would pass on nothing"
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(r) for r in results)
    small = [r for r in results if r["file_name"] == "small.png"]
    assert small, "no detection on small.png"
    assert all(r["segmentation"]["size"] == [60, 80] for r in small)


@pytest.mark.slow
def test_predict_rejects_bad_input_before_loading(tracking, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "seizure_mlflow", "predict", "--model-uri", "models:/nope@champion",
                           "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=120, env=venv_env(MLFLOW_TRACKING_URI=tracking))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_pyfunc_input_errors_are_short(trained):
    model = mlflow.pyfunc.load_model("models:/test-detector@champion")
    with pytest.raises(Exception) as err:
        model.predict(pd.DataFrame({"image": [b"not an image" * 1000]}))
    assert "not a readable image" in str(err.value) and len(str(err.value)) < 500


def test_non_finite_loss_stops_training_and_fails_the_run(tiny_data, tmp_path, tracking):
    params = tiny_params(tiny_data, tmp_path, lr=1e5, max_iter=30, eval_period=10, model_name="diverges",
                         opts=("SOLVER.CLIP_GRADIENTS.ENABLED", "False", "SOLVER.WARMUP_ITERS", "0"))
    with pytest.raises(FloatingPointError):
        run_training(params)
    run = MlflowClient().search_runs([mlflow.get_experiment_by_name("Default").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert not MlflowClient().search_registered_models("name='diverges'")


@pytest.mark.slow
def test_a_model_whose_best_validation_loss_is_finite_but_huge_is_not_registered(tiny_data, tmp_path, tracking,
                                                                                  monkeypatch):
    """A loss of 1e33 passes training's non-finite check; its checkpoint stands for a diverged one (the value is
    what a run that blew up without overflowing keeps as its best)."""
    import dataclasses

    from seizure_mlflow.tracking import run_scope

    real = run_scope.read_best_checkpoint

    def blown_up(path):
        best = real(path)
        return dataclasses.replace(best, value=1e33) if best is not None else None

    monkeypatch.setattr(run_scope, "read_best_checkpoint", blown_up)
    with pytest.raises(FloatingPointError, match="the best validation val/total_loss is 1e.33 .* diverged"):
        run_training(tiny_params(tiny_data, tmp_path, model_name="blew-up"))
    [run] = MlflowClient().search_runs([mlflow.get_experiment_by_name("Default").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["seizure.stop_reason"] == "diverged"
    assert not MlflowClient().search_registered_models("name='blew-up'")


@pytest.mark.slow
def test_test_set_given_to_training_is_evaluated_and_promoted(tiny_data, tmp_path, tracking):
    test_json, test_images = tiny_data["test"]
    first = run_training(tiny_params(tiny_data, tmp_path, test_json=test_json, test_images=test_images,
                                     model_name="with-test", output_dir=str(tmp_path / "a")))
    second = run_training(tiny_params(tiny_data, tmp_path, test_json=test_json, test_images=test_images,
                                      model_name="with-test", output_dir=str(tmp_path / "b"), seed=2))
    client = MlflowClient()
    for result in (first, second):
        run = client.get_run(result.run_id)
        assert {"test/bbox/AP", "test/bbox/AP50", "test/bbox/AP75", "test/segm/AP", "test/segm/AP50",
                "test/segm/AP75"} <= set(run.data.metrics)
        assert "predictions.json" in {a.path for a in client.list_artifacts(result.run_id)}
        tags = client.get_model_version("with-test", result.model_version).tags
        assert float(tags["test_segm_AP"]) == pytest.approx(run.data.metrics["test/segm/AP"], abs=1e-4)
        [model] = mlflow.search_logged_models(filter_string=f"source_run_id = '{result.run_id}'", output_format="list")
        [ap] = [m for m in model.metrics if m.key == "test/segm/AP"]  # on the model, linked to the test set
        assert ap.dataset_name == "seizure-testing" and ap.value == pytest.approx(run.data.metrics["test/segm/AP"])
    assert first.model_alias == "champion"
    decision = client.get_model_version("with-test", second.model_version).tags["promotion_decision"]
    assert decision in ("promoted", "kept-worse", "kept-tie", "kept-not-significant")  # one test video: no interval
    champion = str(client.get_model_version_by_alias("with-test", "champion").version)
    assert champion == ("2" if decision == "promoted" else "1")
    assert second.model_alias == ("champion" if decision == "promoted" else "challenger")


def test_log_images_is_opt_in(tiny_data, tmp_path, tracking):
    result = run_training(tiny_params(tiny_data, tmp_path, max_iter=2, eval_period=2, log_images=True, model_name="imgs"))
    client = MlflowClient()
    names = sorted(a.path for a in client.list_artifacts(result.run_id, "images"))
    assert names == ["images/val_0.png", "images/val_1.png"]  # the tiny val split has 2 frames
    assert Image.open(client.download_artifacts(result.run_id, names[0])).size == (96, 72)


@pytest.mark.slow
def test_two_cpu_processes_train_log_once_and_register(tiny_data, tmp_path, tracking):
    """Detectron2's launch with 2 processes on the CPU (gloo, DDP without device ids): one writer, one model."""
    result = run_training(tiny_params(tiny_data, tmp_path, max_iter=4, eval_period=2, model_name="two-procs",
                                      ims_per_batch=4, num_processes=2))
    client = MlflowClient()
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "train/total_loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(result.run_id, "val/total_loss")] == [2, 4]
    assert client.get_run(result.run_id).data.params["SOLVER.IMS_PER_BATCH"] == "4"
    assert str(client.get_model_version_by_alias("two-procs", "champion").version) == result.model_version


def test_model_uris_name_their_registered_version(trained):
    from seizure_mlflow.errors import UserError
    from seizure_mlflow.registry.uris import registered_version

    client = MlflowClient()
    [model] = mlflow.search_logged_models(filter_string=f"source_run_id = '{trained.run_id}'", output_format="list")
    model_id = model.model_id
    latest = str(max(int(v.version) for v in client.search_model_versions("name = 'test-detector'")))
    assert registered_version("models:/test-detector/1") == ("test-detector", "1")
    assert registered_version("models:/test-detector@champion") == ("test-detector", "1")
    assert registered_version("models:/test-detector/latest") == ("test-detector", latest)
    assert registered_version(f"models:/{model_id}") == ("test-detector", "1")
    assert registered_version(f"runs:/{trained.run_id}/model") == ("test-detector", "1")
    with pytest.raises(UserError, match="model_uri: 'models:/test-detector@nope'"):
        registered_version("models:/test-detector@nope")


def _everything_the_server_holds(run_id: str, dst: Path) -> dict[str, str]:
    """Every param, tag, registered-version tag and description, and every text artifact of the run and of
    its logged model, as ``{where: text}``."""
    client = MlflowClient()
    run = client.get_run(run_id)
    texts = {f"param {k}": v for k, v in run.data.params.items()}
    texts.update({f"tag {k}": v for k, v in run.data.tags.items()})
    for version in client.search_model_versions(f"run_id = '{run_id}'"):
        texts.update({f"version tag {k}": v for k, v in version.tags.items()})
        texts[f"version {version.version} description"] = version.description or ""
    folders = [Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=str(dst / "run")))]
    for k, model in enumerate(mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")):
        texts.update({f"logged model tag {t}": v for t, v in model.tags.items()})
        folders.append(Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                                dst_path=str(dst / f"model{k}"))))
    for k, dataset_input in enumerate(run.inputs.dataset_inputs):
        texts[f"dataset input {k}"] = json.dumps({"dataset": dataset_input.dataset.to_dictionary(),
                                                  "tags": {t.key: t.value for t in dataset_input.tags}})
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix not in (".pt", ".pth", ".png", ".whl"):  # binary files
                texts[f"artifact {path.relative_to(folder)}"] = path.read_text(errors="replace")
    return texts


def test_no_path_user_or_host_of_this_machine_reaches_the_server(trained, tiny_data, tmp_path):
    texts = _everything_the_server_holds(trained.run_id, tmp_path / "downloaded")
    assert any(k == "artifact config.yaml" for k in texts) and any(k.endswith("MLmodel") for k in texts)
    assert any(k.startswith("param ") for k in texts) and any(k.startswith("tag mlflow.") for k in texts)
    data_root = str(Path(tiny_data["train"][0]).parent)
    paths = {p for p in (str(trained.root), data_root, str(REPO), sys.prefix, str(Path.home()), tempfile.gettempdir())}
    host = socket.gethostname()
    for where, text in texts.items():
        for path in paths:
            assert path not in text, f"{where} holds the local path {path}: {text[:300]!r}"
        assert MACHINE_USER not in text, f"{where} holds the user name: {text[:300]!r}"
        assert not re.search(rf"(?<![\w.-]){re.escape(host)}(?![\w.-])", text), f"{where} holds the host name {host}"


def test_the_ui_sees_a_named_described_run_with_datasets_system_metrics_and_a_model_card(trained):
    client = MlflowClient()
    run = client.get_run(trained.run_id)
    assert run.info.run_name == "r18 lr=0.01 b2 6it"
    description = run.data.tags["mlflow.note.content"]
    assert f"Best val/total_loss {trained.best_val_total_loss:.4f} at iteration {trained.best_iteration}" in description
    assert "registered as test-detector version 1 (@champion)" in description
    version = client.get_model_version("test-detector", "1")
    assert version.description == description
    card = Path(client.download_artifacts(trained.run_id, "model_card.md")).read_text()
    assert description in card and 'mlflow.pyfunc.load_model("models:/test-detector/1")' in card
    assert "seizure-mlflow predict" in card and "mlflow models serve" in card
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)

    inputs = {i.dataset.name: (i.dataset, {t.key: t.value for t in i.tags}) for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"seizure-training", "seizure-validation", "seizure-validation_sample"}
    assert inputs["seizure-validation_sample"][1]["images"] == run.data.params["val_sample_size"]
    (train, train_tags), (val, val_tags) = inputs["seizure-training"], inputs["seizure-validation"]
    assert train.digest == run.data.tags["seizure.train_digest"] and val.digest == run.data.tags["seizure.val_digest"]
    assert train_tags["mlflow.data.context"] == "training" and val_tags["mlflow.data.context"] == "validation"
    assert (train_tags["images"], train_tags["videos"], val_tags["videos"]) == ("6", "3", "1")
    assert json.loads(train.source) == {"tags": {"producer": "seizure-mlflow", "format": "COCO instances"}}

    [model] = mlflow.search_logged_models(filter_string=f"source_run_id = '{trained.run_id}'", output_format="list")
    [metric] = [m for m in model.metrics if m.key == "val/total_loss"]
    assert (metric.value, metric.step) == (pytest.approx(trained.best_val_total_loss), trained.best_iteration)
    [best] = [m for m in model.metrics if m.key == "best/val_total_loss"]
    assert best.value == pytest.approx(trained.best_val_total_loss) and best.step == trained.best_iteration
    assert best.dataset_name == "seizure-validation" and best.dataset_digest == val.digest
    assert [m.step for m in client.get_metric_history(trained.run_id, "val/total_loss")] == [2, 4, 6]  # not doubled
    signature = json.loads(Model.load(f"models:/{model.model_id}").signature.to_dict()["outputs"])
    assert signature[0]["name"] == "detections" and signature[0]["items"]["properties"]["bbox"]["type"] == "array"


def test_logged_models_rank_checkpoints_of_several_runs_by_validation_loss(trained, tiny_data, tmp_path):
    for k, lr in enumerate((0.002, 0.03)):
        run_training(tiny_params(tiny_data, tmp_path, lr=lr, max_iter=2, eval_period=2, model_name="ranked",
                                 output_dir=str(tmp_path / f"r{k}"), system_metrics=False))
    ranked = mlflow.search_logged_models(order_by=[{"field_name": "metrics.val/total_loss", "ascending": True}],
                                         output_format="list")
    losses = [next(m.value for m in model.metrics if m.key == "val/total_loss") for model in ranked]
    assert len(ranked) >= 3 and losses == sorted(losses)
    client = MlflowClient()
    for model in ranked:
        assert losses[ranked.index(model)] == pytest.approx(
            client.get_run(model.source_run_id).data.metrics["best/val_total_loss"])


def test_log_checkpoints_improvements_logs_each_new_best_with_its_iteration(tiny_data, tmp_path, tracking):
    result = run_training(tiny_params(tiny_data, tmp_path, max_iter=6, eval_period=2, model_name="each-best",
                                      log_checkpoints="improvements", system_metrics=False, lr=0.005))
    client = MlflowClient()
    history = {m.step: m.value for m in client.get_metric_history(result.run_id, "val/total_loss")}
    improvements = [step for step in sorted(history) if history[step] == min(v for s, v in history.items() if s <= step)]
    assert len(improvements) >= 2, history  # the setting must improve more than once to show anything
    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{result.run_id}'", output_format="list")
    steps = {}
    for model in models:
        [metric] = [m for m in model.metrics if m.key == "val/total_loss"]
        assert metric.value == pytest.approx(history[metric.step])
        steps[model.name] = metric.step
    assert steps["model"] == result.best_iteration
    assert sorted(steps.values()) == improvements
    assert {n for n in steps if n != "model"} == {f"checkpoint-{s}" for s in improvements if s != result.best_iteration}
    assert [str(v.version) for v in client.search_model_versions("name = 'each-best'")] == ["1"]  # only the best


def test_a_loaded_model_leaves_child_processes_importing_the_installed_package(trained):
    """MLflow puts the model's code copy on sys.path; processes started afterwards (Detectron2's launch) must
    still import the whole installed package, not that inference-only copy."""
    import multiprocessing

    import seizure_mlflow

    mlflow.pyfunc.load_model("models:/test-detector@champion")
    installed = Path(seizure_mlflow.__file__).resolve().parents[1]
    copies = [p for p in sys.path if Path(p or ".", "seizure_mlflow").is_dir() and Path(p or ".").resolve() != installed]
    assert not copies, copies
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(exec, ("import seizure_mlflow.commands.train",))  # raises here if the child cannot import it


def test_dropping_model_code_copies_keeps_site_packages_and_the_project(tmp_path, monkeypatch):
    """Where the project is also installed as a copy in site-packages (MLflow's uv environments install it),
    only MLflow model code folders go: site-packages, with every other library, stays on sys.path."""
    from seizure_mlflow.registry.model import drop_shadowing_copies

    model = tmp_path / "model"
    (model / "code" / "seizure_mlflow").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    site = tmp_path / "site-packages"
    (site / "seizure_mlflow").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(model / "code"), str(site), *sys.path])
    drop_shadowing_copies()
    assert str(model / "code") not in sys.path and str(site) in sys.path


def test_a_run_that_reaches_max_iter_says_so(trained):
    run = MlflowClient().get_run(trained.run_id)
    assert run.data.tags["seizure.stop_reason"] == "max_iter"
    assert run.data.metrics["stopped_at"] == 6


def test_early_stopping_ends_the_run_after_its_patience_and_registers_the_best(tiny_data, tmp_path, tracking):
    """A ``min_delta`` no loss decrease can reach: after the first validation (iteration 2) none counts as an
    improvement, so with patience 2 training stops at iteration 6 of 12. The best checkpoint is still the
    lowest loss of the three validations (min_delta is early stopping's, not the best checkpoint's)."""
    result = run_training(tiny_params(tiny_data, tmp_path, max_iter=12, eval_period=2, patience=2, min_delta=1e6))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags["seizure.stop_reason"] == "early_stopping"
    assert run.data.metrics["stopped_at"] == 6
    assert [m.step for m in client.get_metric_history(result.run_id, "val/total_loss")] == [2, 4, 6]
    assert max(m.step for m in client.get_metric_history(result.run_id, "train/total_loss")) == 6
    val = {m.step: m.value for m in client.get_metric_history(result.run_id, "val/total_loss")}
    assert result.best_iteration == min(val, key=val.get) and run.data.metrics["best/iteration"] == result.best_iteration
    version = client.get_model_version("test-detector", result.model_version)
    assert version.run_id == result.run_id and version.tags["best_iteration"] == str(result.best_iteration)
    assert run.data.params["EARLY_STOPPING.PATIENCE"] == "2"


def test_the_patience_count_is_part_of_the_checkpoint():
    from seizure_mlflow.engine.stopping import EarlyStopping

    hook = EarlyStopping("val/total_loss", patience=3, min_delta=0.1)
    hook.best, hook.periods_without_improvement = 1.25, 2
    resumed = EarlyStopping("val/total_loss", patience=3, min_delta=0.1)
    resumed.load_state_dict(hook.state_dict())
    assert (resumed.best, resumed.periods_without_improvement) == (1.25, 2)


@pytest.mark.slow
def test_early_stopping_on_an_overfitting_setting_keeps_the_full_runs_best(tmp_path, tracking):
    """The documented overfitting setting: the run with patience stops three validations after its best, and
    its registered best iteration and loss are the full-length run's (same data, same seed)."""
    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.sample.scenes import (OVERFITTING_OPTS, OVERFITTING_SEED, OVERFITTING_SPEC, sample_paths,
                                            write_sample_dataset)

    data = sample_paths(write_sample_dataset(tmp_path / "data", OVERFITTING_SPEC))
    base = TrainParams(train_json=data["train"][0], train_images=data["train"][1], val_json=data["val"][0],
                       val_images=data["val"][1], max_iter=200, eval_period=20, device="cpu", seed=OVERFITTING_SEED,
                       opts=OVERFITTING_OPTS, system_metrics=False, model_name="overfit", val_max_images="0")
    full = run_training(base.replace(output_dir=str(tmp_path / "full")))
    early = run_training(base.replace(output_dir=str(tmp_path / "early"), patience=3))
    assert full.stop_reason == "max_iter" and full.stopped_at == 200
    assert early.stop_reason == "early_stopping"
    assert early.stopped_at == early.best_iteration + 3 * 20
    assert early.best_iteration == full.best_iteration
    assert early.best_val_total_loss == full.best_val_total_loss
    client = MlflowClient()
    registered = client.get_model_version("overfit", early.model_version)
    assert registered.tags["best_iteration"] == str(full.best_iteration)


def test_the_registered_model_loads_with_detectron2s_own_config(trained):
    """The model's config holds Detectron2's keys only (training-only ones such as EARLY_STOPPING stay out),
    so that the pyfunc loads it with a plain get_cfg()."""
    import mlflow.pyfunc
    import yaml

    uri = f"models:/test-detector/{trained.result.model_version}"
    model = mlflow.pyfunc.load_model(uri)
    assert type(model.unwrap_python_model()).__name__ == "SeizureDetectorModel"
    config = Path(mlflow.artifacts.download_artifacts(f"{uri}/artifacts/config.yaml"))
    assert "EARLY_STOPPING" not in yaml.safe_load(config.read_text())
