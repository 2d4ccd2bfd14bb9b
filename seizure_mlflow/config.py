"""Training parameters and the Detectron2 configuration they build.

``TrainParams`` holds the typed, validated parameters of the ``main`` entry point. ``build_config`` turns
them into a frozen Detectron2 ``CfgNode`` in a fixed order: base config (a model-zoo name or a YAML file),
then the typed parameters, then ``opts`` (``KEY VALUE ...``) last, so that ``opts`` always wins.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seizure_mlflow.errors import ConfigError

BUNDLED_CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "cpu_demo.yaml"
DEFAULT_MODEL_NAME = "seizure-patient-detector"
TRAIN_DATASET = "seizure_train"
VAL_DATASET = "seizure_val"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainParams:
    """Parameters of a training run; names match the MLproject ``main`` entry point."""

    train_json: str = ""
    train_images: str = ""
    val_json: str = ""
    val_images: str = ""
    test_json: str = ""
    test_images: str = ""
    config: str = DEFAULT_CONFIG
    weights: str = ""
    lr: float = 0.02
    ims_per_batch: int = 2
    max_iter: int = 800
    eval_period: int = 50
    min_size: int = 128
    num_workers: int = 0
    device: str = "auto"
    seed: int = 7
    model_name: str = DEFAULT_MODEL_NAME
    opts: tuple[str, ...] = field(default_factory=tuple)
    output_dir: str = ""
    log_images: bool = False  # upload a few validation frames with predictions drawn (patient data: opt-in)

    def __post_init__(self) -> None:
        _require(isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
                 f"lr must be a positive number, got {self.lr!r}")
        for name in ("ims_per_batch", "max_iter", "eval_period", "min_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        _require(isinstance(self.num_workers, int) and self.num_workers >= 0,
                 f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        _require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        _require(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        _require(bool(self.model_name.strip()), "model_name must not be empty")
        _require(len(self.opts) % 2 == 0,
                 f"opts must be KEY VALUE pairs; got an odd number of items: {' '.join(self.opts)!r}")
        for json_key, images_key in (("train_json", "train_images"), ("val_json", "val_images"),
                                     ("test_json", "test_images")):
            has_json, has_images = bool(getattr(self, json_key)), bool(getattr(self, images_key))
            _require(has_json == has_images,
                     f"{json_key} and {images_key} go together: give both, or neither to use the sample data")
        _require(bool(self.train_json) == bool(self.val_json),
                 "give both a training set (train_json) and a validation set (val_json), or neither "
                 "to use the sample data")

    def replace(self, **changes: Any) -> "TrainParams":
        return dataclasses.replace(self, **changes)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def parse_int(name: str, text: str) -> int:
    """Parse an integer parameter given as text, with a message naming the parameter."""
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None


def parse_float(name: str, text: str) -> float:
    """Parse a number parameter given as text (``0.01``, ``1e-2``), with a message naming the parameter."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    return value


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but no CUDA GPU is available; use device=auto or cpu")
    return device


def resolve_config_source(config: str) -> tuple[str, str | None]:
    """Where a ``config`` parameter points: ``(yaml_path, model_zoo_name or None)``.

    Looked up in order: an existing YAML path, a config bundled with this package, a Detectron2
    model-zoo name such as ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``.
    """
    path = Path(config).expanduser()
    if path.is_file():
        return str(path), None
    bundled = BUNDLED_CONFIG_DIR / config
    if bundled.is_file():
        return str(bundled), None
    zoo_path = _model_zoo_config_file(config)
    if zoo_path is not None:
        return zoo_path, config
    bundled_names = ", ".join(sorted(p.name for p in BUNDLED_CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(
        f"config {config!r} is neither a YAML file, a bundled config ({bundled_names}) nor a Detectron2 "
        "model-zoo name such as 'COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml'"
    )


def _model_zoo_config_file(name: str) -> str | None:
    from detectron2 import model_zoo

    try:
        return model_zoo.get_config_file(name)
    except RuntimeError:
        return None


def load_base_config(config: str):
    """A mutable Detectron2 config from a model-zoo name or YAML file.

    A YAML file may set ``_BASE_`` to a model-zoo name (as the bundled configs do); any other ``_BASE_``
    is resolved by Detectron2 relative to the file.
    """
    from detectron2.config import CfgNode, get_cfg

    yaml_path, _ = resolve_config_source(config)
    cfg = get_cfg()
    with open(yaml_path) as fh:
        try:
            content = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {yaml_path}: not valid YAML: {exc}") from None
    base = content.get("_BASE_") if isinstance(content, dict) else None
    try:
        if isinstance(base, str) and not (Path(yaml_path).parent / base).is_file():
            zoo_base = _model_zoo_config_file(base)
            if zoo_base is None:
                raise ConfigError(f"config {yaml_path}: _BASE_ {base!r} is neither a file nor a model-zoo name")
            cfg.merge_from_file(zoo_base)
            content.pop("_BASE_")
            cfg.merge_from_other_cfg(CfgNode(content))
        else:
            cfg.merge_from_file(yaml_path)
    except (KeyError, ValueError, AssertionError) as exc:
        raise ConfigError(f"config {yaml_path}: {exc}") from None
    return cfg


def resolve_weights(weights: str, config: str) -> str:
    """``""`` (from scratch), a path, a URL, or ``model-zoo`` for the config's COCO checkpoint."""
    if weights == "":
        return ""
    if weights == "model-zoo":
        _, zoo_name = resolve_config_source(config)
        if zoo_name is None:
            from detectron2 import model_zoo

            base = _yaml_base(config)
            try:
                return model_zoo.get_checkpoint_url(base)
            except RuntimeError:
                raise ConfigError(
                    f"weights=model-zoo needs a model-zoo config (or a YAML whose _BASE_ is one); {config!r} is not"
                ) from None
        from detectron2 import model_zoo

        return model_zoo.get_checkpoint_url(zoo_name)
    if "://" in weights:
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {weights} does not exist; give a path, a URL, 'model-zoo' or ''")
    return str(path.resolve())


def _yaml_base(config: str) -> str:
    yaml_path, _ = resolve_config_source(config)
    with open(yaml_path) as fh:
        content = yaml.safe_load(fh) or {}
    return str(content.get("_BASE_", ""))


def build_config(params: TrainParams, num_classes: int, output_dir: str):
    """The frozen Detectron2 config of a run: base config, then typed parameters, then ``opts``."""
    cfg = load_base_config(params.config)
    cfg.DATASETS.TRAIN = (TRAIN_DATASET,)
    cfg.DATASETS.TEST = (VAL_DATASET,)
    cfg.MODEL.WEIGHTS = resolve_weights(params.weights, params.config)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = resolve_device(params.device)
    cfg.SOLVER.BASE_LR = float(params.lr)
    cfg.SOLVER.IMS_PER_BATCH = params.ims_per_batch
    cfg.SOLVER.MAX_ITER = params.max_iter
    cfg.TEST.EVAL_PERIOD = params.eval_period
    cfg.INPUT.MIN_SIZE_TRAIN = (params.min_size,)
    cfg.INPUT.MIN_SIZE_TEST = params.min_size
    cfg.DATALOADER.NUM_WORKERS = params.num_workers
    cfg.SEED = params.seed
    cfg.OUTPUT_DIR = output_dir
    if params.opts:
        try:
            cfg.merge_from_list(list(params.opts))
        except (KeyError, ValueError, AssertionError, TypeError) as exc:
            raise ConfigError(f"opts {' '.join(params.opts)!r}: {exc}") from None
    cfg.freeze()
    return cfg


def flatten_config(cfg, prefix: str = "") -> dict[str, str]:
    """``{"SOLVER.BASE_LR": "0.001", ...}``: every leaf of a config, as MLflow params."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat
