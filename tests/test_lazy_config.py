"""LazyConfig models (Detectron2's new baselines) through the package's hooks, and the rule that a config which is
code runs only when it is the package's, the model zoo's, or trusted by name."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import cv2
import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from conftest import REPO, tiny_params, venv_env
from helpers.servers import free_port, wait_until_answers
from seizure_mlflow.config import build_config, flatten_config
from seizure_mlflow.errors import ConfigError
from seizure_mlflow.lazy.network import build_network, lazy_spec
from seizure_mlflow.lazy.sources import PACKAGE_CONFIGS

LSJ = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
LAZY_CPU = "cpu_lazy.py"
# every region the weak test models propose is kept, so that served and in-process answers have something to compare
KEEP_ALL = "model.roi_heads.box_predictor.test_score_thresh=0.0"


def _payload_config(tmp_path: Path, mark: Path) -> Path:
    """A user's LazyConfig: the package's CPU config plus a line that leaves ``mark`` when it runs."""
    config = tmp_path / "my_lazy.py"
    config.write_text(f"import pathlib\npathlib.Path({str(mark)!r}).write_text('ran')\n"
                      + (PACKAGE_CONFIGS / LAZY_CPU).read_text())
    return config


def test_a_users_python_config_is_refused_unrun_and_runs_only_when_trusted(tiny_data, tmp_path, tracking):
    mark = tmp_path / "the_config_ran"
    config = _payload_config(tmp_path, mark)
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    refused = subprocess.run([sys.executable, "-m", "seizure_mlflow", "train", "--config", str(config),
                              "--train-json", tj, "--train-images", ti, "--val-json", vj, "--val-images", vi],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path,
                             env=venv_env(MLFLOW_TRACKING_URI=tracking))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "--trust-config-code" in refused.stderr and "Traceback" not in refused.stderr
    assert not mark.exists()
    assert MlflowClient().search_runs(["0"]) == []  # refused before any run exists

    with pytest.raises(ConfigError, match="trust_config_code"):
        build_config(tiny_params(tiny_data, tmp_path, config=str(config)), num_classes=2, output_dir="")
    assert not mark.exists()
    cfg = build_config(tiny_params(tiny_data, tmp_path, config=str(config), trust_config_code=True, opts=()),
                       num_classes=2, output_dir="")
    assert mark.read_text() == "ran" and lazy_spec(cfg)["model"]["roi_heads"]["num_classes"] == 2


def test_a_lazy_yaml_is_refused_unread_without_the_option(tiny_data, tmp_path):
    mark = tmp_path / "the_yaml_ran"
    config = tmp_path / "my_lazy.yaml"
    config.write_text(f"model:\n  _target_: detectron2.modeling.GeneralizedRCNN\n"
                      f"hook: !!python/object/apply:os.system [\"touch {mark}\"]\n")
    with pytest.raises(ConfigError, match="trust_config_code"):
        build_config(tiny_params(tiny_data, tmp_path, config=str(config)), num_classes=2, output_dir="")
    assert not mark.exists()


def test_a_spec_that_names_code_outside_detectron2_and_torch_is_refused_unbuilt(tiny_data, tmp_path):
    cfg = build_config(tiny_params(tiny_data, tmp_path, config=LAZY_CPU, opts=()), num_classes=2, output_dir="")
    mark = tmp_path / "built"
    spec = lazy_spec(cfg)
    spec["model"]["roi_heads"]["mask_head"]["conv_norm"] = {"_target_": "os.system", "command": f"touch {mark}"}
    tampered = cfg.clone()
    tampered.defrost()
    tampered.LAZY.SPEC = json.dumps(spec)
    with pytest.raises(ConfigError, match="'os.system'"):
        build_network(tampered)
    assert not mark.exists()
    assert type(build_network(cfg)).__name__ == "GeneralizedRCNN"


def test_the_runs_parameters_act_on_a_zoo_lazy_config_and_are_logged_as_its_values(tiny_data, tmp_path):
    params = tiny_params(tiny_data, tmp_path, config=LSJ, lr=0.005, ims_per_batch=4, max_iter=1000, min_size=96,
                         opts=("optimizer.weight_decay=0.001", "SOLVER.CHECKPOINT_PERIOD=7"))
    cfg = build_config(params, num_classes=2, output_dir="")
    spec = lazy_spec(cfg)
    assert spec["optimizer"]["lr"] == 0.005 and spec["optimizer"]["weight_decay"] == 0.001
    assert spec["model"]["roi_heads"]["num_classes"] == 2
    assert spec["model"]["roi_heads"]["mask_head"]["num_classes"] == 2  # the interpolation followed
    # the 100-epoch step schedule (184,375 iterations, steps at 163,889 and 177,546) stretched to 1,000
    scheduler = spec["lr_multiplier"]["scheduler"]
    assert scheduler["num_updates"] == 1000 and scheduler["milestones"] == [889, 963]
    scale, crop = spec["augmentations"][:2]
    assert (scale["target_height"], scale["target_width"], crop["crop_size"]) == (96, 96, [96, 96])
    assert spec["recompute_boxes"] is True
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD) == (4, 1000, 7)
    flat = flatten_config(cfg)
    assert flat["lazy.optimizer.weight_decay"] == "0.001" and flat["lazy.model.backbone.bottom_up.stages.depth"] == "50"
    assert "MODEL.RESNETS.DEPTH" not in flat  # Detectron2's yacs model keys do not describe this model
    assert not any(str(tmp_path) in value for value in flat.values())  # no local path in the params
    with pytest.raises(ConfigError, match="no key optimizer.nesterov_typo"):
        build_config(params.replace(opts=("optimizer.nesterov_typo=1",)), num_classes=2, output_dir="")


@pytest.mark.slow
def test_a_zoo_lsj_config_builds_and_trains_a_few_iterations_on_the_cpu(tiny_data, tmp_path):
    """Detectron2's R50-FPN new baseline as it ships (SyncBN, a lambda norm in its heads, large-scale jitter), at
    64 px: planned by the package (the config run when planned, then carried as data) and trained by its trainer."""
    from seizure_mlflow.commands.train import build_trainer, plan_run

    params = tiny_params(tiny_data, tmp_path, config=LSJ, max_iter=4, eval_period=4, opts=(), min_size=64)
    with pytest.raises(ConfigError, match="max_iter: 4 iterations are too short for the LR steps"):
        build_config(params, num_classes=2, output_dir="")
    # the 100-epoch schedule's two steps cannot fall apart in 4 iterations: one step, given in opts, at 3
    params = params.replace(opts=("lr_multiplier.scheduler.milestones=[3]", "lr_multiplier.scheduler.values=[1.0,0.1]"))
    plan = plan_run(params, tracking=False)
    cfg = plan.cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(tmp_path / "lsj")
    trainer = build_trainer(cfg, plan.datasets)
    trainer.resume_or_load(resume=False)
    trainer.train()
    lr = {iteration: value for value, iteration in trainer.storage.history("lr").values()}
    assert lr[3] == pytest.approx(0.1 * lr[1])  # the step at 3
    assert [iteration for _, iteration in trainer.storage.history("val/total_loss").values()] == [3]
    assert type(trainer.model.roi_heads.mask_head.mask_fcn1.norm).__name__ == "NaiveSyncBatchNorm"


def _serve(model_uri: str, cwd: Path, tracking: str):
    port = free_port()
    log = cwd / "serve.log"
    server = subprocess.Popen(["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "--host",
                               "127.0.0.1", "-p", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd,
                              env=venv_env(MLFLOW_TRACKING_URI=tracking), start_new_session=True)
    wait_until_answers(f"http://127.0.0.1:{port}/ping", server, log)
    return server, f"http://127.0.0.1:{port}/invocations"


@pytest.mark.slow
def test_mlflow_run_with_the_lazy_cpu_config_trains_registers_predicts_evaluates_and_serves(tiny_data, tmp_path,
                                                                                            tracking):
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    (test_json, test_images) = tiny_data["test"]
    cmd = ["mlflow", "run", str(REPO), "--env-manager", "local", "--experiment-name", "lazy"]
    for param in (f"config={LAZY_CPU}", "max_iter=12", "eval_period=4", "min_size=64", "device=cpu", "lr=0.01",
                  "model_name=lazy-detector", f"opts={KEEP_ALL} SOLVER.CHECKPOINT_PERIOD=4", "val_max_images=0",
                  f"train_json={tj}", f"train_images={ti}", f"val_json={vj}", f"val_images={vi}"):
        cmd += ["-P", param]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=venv_env(MLFLOW_TRACKING_URI=tracking))
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name("lazy").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/total_loss")] == [4, 8, 12]
    assert run.data.params["lazy.model.backbone.bottom_up.stages.depth"] == "18"
    assert "plots/loss_curves.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    version = client.get_model_version_by_alias("lazy-detector", "champion")
    assert version.run_id == run.info.run_id
    uri = "models:/lazy-detector@champion"

    predictions = tmp_path / "predictions.json"
    predicted = subprocess.run([sys.executable, "-m", "seizure_mlflow", "predict", "--model-uri", uri, "--input",
                                test_images, "--output", str(predictions)], capture_output=True, text=True,
                               timeout=300, cwd=tmp_path, env=venv_env(MLFLOW_TRACKING_URI=tracking))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert json.loads(predictions.read_text()), "no detection kept at score threshold 0"
    evaluated = subprocess.run([sys.executable, "-m", "seizure_mlflow", "evaluate", "--model-uri", uri,
                                "--test-json", test_json, "--test-images", test_images], capture_output=True,
                               text=True, timeout=300, cwd=tmp_path, env=venv_env(MLFLOW_TRACKING_URI=tracking))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    evaluation_run = client.get_model_version("lazy-detector", version.version).tags["evaluation_run_id"]
    assert "test/segm/AP" in client.get_run(evaluation_run).data.metrics

    frame = cv2.imread(str(next(Path(test_images).rglob("*.png"))))
    png = cv2.imencode(".png", frame)[1].tobytes()
    in_process = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [png]}))
    server, url = _serve(uri, tmp_path, tracking)
    try:
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(png).decode()]]}})
        request = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    def boxes(answer):
        return [value for detection in answer for value in detection["bbox"]]

    assert served[0] and boxes(served[0]) == pytest.approx(boxes(in_process[0]), abs=1e-3)

    # a copy of the model whose network spec names other code: MLflow's own loader refuses it unbuilt
    copy = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "copy")))
    mark = tmp_path / "tampered_model_ran"
    config_file = next(copy.rglob("config.yaml"))
    content = yaml.safe_load(config_file.read_text())
    spec = json.loads(content["LAZY"]["SPEC"])
    spec["model"]["backbone"]["top_block"] = {"_target_": "subprocess.call", "args": ["touch", str(mark)]}
    content["LAZY"]["SPEC"] = json.dumps(spec)
    config_file.write_text(yaml.safe_dump(content))
    with pytest.raises(Exception, match="subprocess.call"):
        mlflow.pyfunc.load_model(str(copy))
    assert not mark.exists()
    assert not list(copy.rglob("*.pkl")) and not list(copy.rglob("*.pickle"))  # nothing pickled


@pytest.mark.slow
def test_tune_searches_over_the_config_itself(tiny_data, tmp_path):
    """A grid over two configs, the yacs CPU demo and the LazyConfig: both train as trials of one sweep."""
    from conftest import private_tracking_store, TINY_OPTS

    space = tmp_path / "space.yaml"
    space.write_text(f"config: {{type: categorical, choices: [cpu_demo.yaml, {LAZY_CPU}]}}\n")
    (tj, ti), (vj, vi) = tiny_data["train"], tiny_data["val"]
    with private_tracking_store(tmp_path) as uri:
        done = subprocess.run(
            [sys.executable, "-m", "seizure_mlflow", "tune", "--trials", "2", "--space", str(space), "--study", "cfg",
             "--sampler", "grid", "--max-iter", "4", "--eval-period", "2", "--min-size", "64", "--device", "cpu",
             "--model-name", "config-sweep", "--opts", " ".join(TINY_OPTS), "--train-json", tj, "--train-images", ti,
             "--val-json", vj, "--val-images", vi, "--output-dir", str(tmp_path / "out")],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
            env=venv_env(MLFLOW_TRACKING_URI=uri, SEIZURE_OPTUNA_STORAGE=f"sqlite:///{tmp_path}/optuna.db"))
        assert done.returncode == 0, done.stderr[-3000:]
        client = MlflowClient()
        runs = client.search_runs(["0"])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert sorted(c.data.params["config"] for c in children) == ["cpu_demo.yaml", LAZY_CPU]
        for child in children:
            assert child.info.status == "FINISHED"
            assert ("lazy.model.backbone.bottom_up.stages.depth" in child.data.params) == (
                child.data.params["config"] == LAZY_CPU)
        [version] = client.search_model_versions("name = 'config-sweep'")
        assert version.run_id in {c.info.run_id for c in children}
