"""Parameters and config building: bad values are clear errors; ``opts`` wins; params are flattened."""

from __future__ import annotations

import pytest

from conftest import tiny_params
from seizure_mlflow.config import TrainParams, build_config, flatten_config, parse_float, parse_int, resolve_config_source
from seizure_mlflow.errors import ConfigError


@pytest.mark.parametrize("changes,message", [
    (dict(lr=0.0), "lr must be a positive number"),
    (dict(lr=float("nan")), "lr must be a positive number"),
    (dict(eval_period=0), "eval_period must be a positive integer"),
    (dict(max_iter=-3), "max_iter must be a positive integer"),
    (dict(num_workers=-1), "num_workers must be an integer >= 0"),
    (dict(device="tpu"), "device must be one of auto, cpu, cuda"),
    (dict(opts=("SOLVER.BASE_LR",)), "opts must be KEY VALUE pairs"),
    (dict(opts=("SOLVER.BASE_LR=0.1", "TEST.EVAL_PERIOD")), "'TEST.EVAL_PERIOD' has no value"),
    (dict(train_json="t.json"), "train_json and train_images go together"),
    (dict(train_json="t.json", train_images="imgs"), "give both a training set"),
    (dict(model_name=" "), "model_name must be a registered model name"),
    (dict(model_name="o'brien-detector"), r"model_name must be a registered model name \(.*no quotes or backticks"),
    (dict(model_name="team/probe"), r"model_name must be a registered model name \(not empty, no '/' or ':'.*got 'team/probe'"),
])
def test_invalid_params(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainParams(**changes)


def test_text_parsing_names_the_parameter():
    assert parse_float("lr", "1e-2") == 0.01
    assert parse_int("max_iter", " 12 ") == 12
    with pytest.raises(ConfigError, match="lr must be a number, got 'abc'"):
        parse_float("lr", "abc")
    with pytest.raises(ConfigError, match="eval_period must be an integer, got '2.5'"):
        parse_int("eval_period", "2.5")


def test_config_sources():
    assert resolve_config_source("cpu_demo.yaml")[1] is None
    path, zoo = resolve_config_source("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert zoo and path.endswith("mask_rcnn_R_50_FPN_3x.yaml")
    with pytest.raises(ConfigError, match="neither a config file, a bundled config .cpu_demo.yaml, cpu_lazy.py"):
        resolve_config_source("no/such_config.yaml")


def test_params_then_opts_last():
    params = TrainParams(lr=0.005, max_iter=12, eval_period=4, min_size=96, device="cpu",
                         opts=("SOLVER.IMS_PER_BATCH", "8", "MODEL.RESNETS.DEPTH", "34"))
    cfg = build_config(params, num_classes=2, output_dir="/tmp/x")
    assert cfg.is_frozen()
    assert cfg.SOLVER.BASE_LR == 0.005 and cfg.SOLVER.MAX_ITER == 12 and cfg.TEST.EVAL_PERIOD == 4
    assert cfg.INPUT.MIN_SIZE_TRAIN == (96,) and cfg.INPUT.MIN_SIZE_TEST == 96
    assert cfg.SOLVER.IMS_PER_BATCH == 8  # opts beat ims_per_batch
    assert cfg.MODEL.RESNETS.DEPTH == 34 and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2
    flat = flatten_config(cfg)
    assert flat["SOLVER.BASE_LR"] == "0.005" and flat["MODEL.RESNETS.NORM"] == "BN"


def test_unknown_opts_key_is_a_config_error():
    with pytest.raises(ConfigError, match="SOLVER.NO_SUCH_KEY"):
        build_config(TrainParams(device="cpu", opts=("SOLVER.NO_SUCH_KEY", "1")), num_classes=1, output_dir="")


def test_model_zoo_weights_resolve_to_the_coco_checkpoint():
    params = TrainParams(config="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", weights="model-zoo", device="cpu")
    cfg = build_config(params, num_classes=1, output_dir="")
    assert cfg.MODEL.WEIGHTS.startswith("https://") and cfg.MODEL.WEIGHTS.endswith(".pkl")
    with pytest.raises(ConfigError, match="weights file .* does not exist"):
        build_config(TrainParams(weights="/no/such.pth", device="cpu"), num_classes=1, output_dir="")


def test_amp_is_refused_on_the_cpu_before_anything_starts(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="mixed precision .* needs a CUDA GPU, and this run's device is cpu"):
        build_config(tiny_params(tiny_data, tmp_path, amp=True), num_classes=2, output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="opts: mixed precision"):  # however it is asked for
        build_config(tiny_params(tiny_data, tmp_path, opts=("SOLVER.AMP.ENABLED", "True")), 2, str(tmp_path))


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (mixed precision)")
def test_amp_trains_on_a_gpu(tiny_data, tmp_path, tracking):
    from mlflow import MlflowClient

    from seizure_mlflow.commands.train import run_training

    result = run_training(tiny_params(tiny_data, tmp_path, device="cuda", amp=True))
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["SOLVER.AMP.ENABLED"] == "True" and run.info.status == "FINISHED"


def test_every_parameter_sets_the_keys_it_names_and_opts_still_win():
    from seizure_mlflow.config import param_fields

    values = dict(lr=0.0123, ims_per_batch=4, max_iter=13, eval_period=3, min_size=77, num_workers=1, seed=5,
                  patience=2, min_delta=0.5, val_max_images="7", full_val_period=4, device="cpu", amp=False,
                  monitor="val/segm/AP", ap_period=3, val_precision=0.05)
    cfg = build_config(TrainParams(**values), num_classes=2, output_dir="")
    named = {f.name: f.metadata["keys"] for f in param_fields() if f.metadata["keys"]}
    assert set(named) == set(values), "a parameter names Detectron2 keys this test does not set"
    for name, keys in named.items():
        for key, to_config in keys.items():
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert node == to_config(values[name]), (name, key, node)
    assert build_config(TrainParams(**values, opts=("SEED", "9")), 2, "").SEED == 9


@pytest.mark.parametrize("changes,message", [
    (dict(seed=2**32), "seed must be an integer from 0 to 2**31 - 1"),
    (dict(val_max_images="\u00b2"), "val_max_images must be auto, 0 (the whole set) or a number of frames"),
    (dict(patience=True), "patience must be an integer >= 0"),
])
def test_each_parameter_carries_its_rule(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        TrainParams(**changes)
