"""Training parameters and the Detectron2 configuration they build.

``TrainParams`` holds the typed, validated parameters of the ``main`` entry point. ``build_config`` turns
them into a frozen Detectron2 ``CfgNode`` in a fixed order: base config (a model-zoo name or a YAML file),
then the typed parameters, then ``opts`` (``KEY VALUE ...``) last, so that ``opts`` always wins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from seizure_mlflow.metrics.names import DEFAULT_MONITOR
from seizure_mlflow.metrics.monitor import MONITOR_CHOICES, is_monitor_name
from seizure_mlflow.errors import ConfigError
from seizure_mlflow.lazy.apply import (TRAINING_MODULES, apply_overrides, apply_run_values, check_schedule,
                                      training_spec)
from seizure_mlflow.lazy.sources import PACKAGE_CONFIGS, is_lazy_file, load_lazy_config
from seizure_mlflow.lazy.spec import check_targets
from seizure_mlflow.options import (BOOL, FRACTION, NON_NEGATIVE_INT, NON_NEGATIVE_NUMBER, POSITIVE_INT,  # noqa: F401
                                    POSITIVE_NUMBER, SEED, Rule, default_of, is_number,
                                    option, option_fields, read_bool, read_number, read_text, spec_of, text_of)

BUNDLED_CONFIG_DIR = PACKAGE_CONFIGS
DEFAULT_CONFIG = "cpu_demo.yaml"
DEFAULT_MODEL_NAME = "seizure-patient-detector"
TRAIN_DATASET = "seizure_train"
VAL_DATASET = "seizure_val"
DEVICES = ("auto", "cpu", "cuda")
LOG_CHECKPOINTS = ("best", "improvements")


POSITIVE_SIZE = Rule(lambda v: is_number(v) and v > 0, "a positive size")
POSITIVE_SIZES = Rule(lambda v: len(v) > 0 and all(POSITIVE_SIZE(x) for x in v), "positive sizes")
FRAMES = Rule(lambda v: v == "auto" or (isinstance(v, str) and v.isascii() and v.isdigit()) or NON_NEGATIVE_INT(v),
              "auto, 0 (the whole set) or a number of frames")
MONITOR = Rule(is_monitor_name, MONITOR_CHOICES)


def is_model_name(value: Any) -> bool:
    """A name MLflow's registry accepts (its own rule: not empty, no '/' or ':', not a path such as '..')."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(value)
    except MlflowException:
        return False
    # quotes and backticks: MLflow's search filters (name = '...') have no way to write them inside a value
    return isinstance(value, str) and value == value.strip() and not any(q in value for q in "'\"`")


MODEL_NAME = Rule(is_model_name, "a registered model name (not empty, no '/' or ':', no quotes or backticks, not a "
                                 "path, no spaces around)")
DEVICE_KEY = Rule(lambda v: v == "cpu" or (isinstance(v, str) and v.split(":")[0] == "cuda" and _cuda_device_exists(v)),
                  "cpu, or cuda (or cuda:N) on a machine with that GPU")
# Memory model of a training batch: Mask R-CNN R50-FPN needs about 1.6 KB per input pixel per image in training
# (Detectron2's model zoo: 3.4 GB for two ~1 Mpx images); a quarter of it is a floor no model of this family stays
# under, so a batch whose floor exceeds the device's memory is refused before it is tried.
TRAINING_BYTES_PER_PIXEL_FLOOR = 400


def _param(default: Any, help: str, searchable: bool = True, keys: dict[str, Callable] | None = None,
           rule: Rule | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A ``main`` parameter (an :func:`~seizure_mlflow.options.option` of ``train``): its default, its ``--help``
    text, whether a sweep may search it (not where data and outputs are, how the run is recorded or how processes
    are laid out), the Detectron2 keys it sets (``{key: value -> config value}``, applied by :func:`build_config`)
    and the :class:`Rule` its value (and those keys' final values) must follow."""
    return option(default, help, rule=rule, choices=choices, searchable=searchable, keys=keys or {})


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class TrainParams:
    """The parameters of a training run, and the one source of ``main``'s parameters.

    Each field is a parameter of the MLproject ``main`` entry point and an option of ``seizure-mlflow train``
    (``lr`` -> ``--lr``, ``ims_per_batch`` -> ``--ims-per-batch``): names, types, defaults and help text come
    from here (see :func:`cli_options` and :func:`params_from_text`); a test keeps the MLproject and the
    README equal to them. Values are checked when the object is made.
    """

    train_json: str = _param("", "training COCO file (empty: the synthetic sample data)", searchable=False)
    train_images: str = _param("", "folder the training file_name entries are relative to", searchable=False)
    val_json: str = _param("", "validation COCO file", searchable=False)
    val_images: str = _param("", "validation image folder", searchable=False)
    test_json: str = _param("", "test COCO file: if given, the best checkpoint's COCO AP is logged and "
                                "champion/challenger promotion runs", searchable=False)
    test_images: str = _param("", "test image folder", searchable=False)
    config: str = _param(DEFAULT_CONFIG, "model-zoo name (e.g. COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml or "
                                         "the LazyConfig new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py), a bundled "
                                         "config (cpu_demo.yaml, cpu_lazy.py) or a config file (default: "
                                         "%(default)s)")
    trust_config_code: bool = _param(False, "run a LazyConfig (.py, or a lazy .yaml) that is neither the "
                                            "package's nor Detectron2's model zoo: loading one executes its code "
                                            "with your rights (refused otherwise)", searchable=False)
    weights: str = _param("", "'' from scratch, a path, a URL, or 'model-zoo' for the config's COCO checkpoint")
    lr: float = _param(0.02, "base learning rate (default %(default)s)", keys={"SOLVER.BASE_LR": float},
                       rule=POSITIVE_NUMBER)
    ims_per_batch: int = _param(2, "images per batch, all processes together (default %(default)s)",
                                keys={"SOLVER.IMS_PER_BATCH": _same}, rule=POSITIVE_INT)
    max_iter: int = _param(800, "training iterations (default %(default)s)", keys={"SOLVER.MAX_ITER": _same},
                           rule=POSITIVE_INT)
    eval_period: int = _param(50, "validation loss every N iterations (default %(default)s)",
                              keys={"TEST.EVAL_PERIOD": _same}, rule=POSITIVE_INT)
    min_size: int = _param(128, "shorter image side in pixels, train and test (default %(default)s)",
                           keys={"INPUT.MIN_SIZE_TRAIN": lambda v: (v,), "INPUT.MIN_SIZE_TEST": _same},
                           rule=POSITIVE_INT)
    num_workers: int = _param(0, "data-loader worker processes (default %(default)s)",
                              keys={"DATALOADER.NUM_WORKERS": _same}, rule=NON_NEGATIVE_INT)
    device: str = _param("auto", "auto, cpu or cuda (default %(default)s)", choices=DEVICES,
                         keys={"MODEL.DEVICE": lambda v: resolve_device(v)})
    seed: int = _param(7, "random seed (default %(default)s)", keys={"SEED": _same}, rule=SEED)
    model_name: str = _param(DEFAULT_MODEL_NAME, "registered model name (default %(default)s)", searchable=False,
                             rule=MODEL_NAME)
    opts: tuple[str, ...] = _param(tuple, "extra Detectron2 overrides, applied last: 'KEY VALUE ...' or 'key=value "
                                          "...' (a LazyConfig's keys are lower case, e.g. optimizer.weight_decay=1e-4; "
                                          "upper-case keys are the run's own, e.g. SOLVER.CHECKPOINT_PERIOD=100)",
                                   searchable=False)
    num_processes: int = _param(1, "training processes on this machine (one per GPU; Detectron2's launch)",
                                searchable=False, rule=POSITIVE_INT)
    output_dir: str = _param("", "checkpoint folder (default: output/RUN_ID)", searchable=False)
    resume: bool = _param(False, "continue the run whose checkpoints are in output_dir from its last checkpoint, "
                                 "in the same MLflow run", searchable=False)
    log_images: bool = _param(False, "also upload a few validation frames with the best model's detections drawn "
                                     "(patient data: off unless asked for)", searchable=False)
    run_name: str = _param("", "the run's name in MLflow (default: what differs between runs, e.g. "
                               "'r18 lr=0.02 b2 800it')", searchable=False)
    log_checkpoints: str = _param("best", "best: log only the final best checkpoint as a model; improvements: "
                                          "also each earlier improvement, as a logged model with its iteration "
                                          "(one model's size each)", choices=LOG_CHECKPOINTS, searchable=False)
    system_metrics: bool = _param(True, "log CPU, memory and GPU use as system metrics", searchable=False)
    monitor: str = _param(DEFAULT_MONITOR, "the validation metric that chooses the best checkpoint, stops early "
                                            "and ranks a sweep's trials: val/total_loss (lower is better; the "
                                            "default), a val/loss_* component, or val/segm/AP, val/segm/AP50, "
                                            "val/bbox/AP, val/bbox/AP50 (higher is better; computed on the "
                                            "validation sample)", searchable=False,
                          keys={"VALIDATION.MONITOR": _same}, rule=MONITOR)
    ap_period: int = _param(0, "validation COCO AP (val/bbox/*, val/segm/*) at every N-th validation; 0 (the "
                               "default): at every validation when monitor is an AP, never otherwise",
                            searchable=False, keys={"VALIDATION.AP_PERIOD": _same}, rule=NON_NEGATIVE_INT)
    patience: int = _param(0, "stop after this many validations without an improvement of monitor by more than "
                              "min_delta (0: off, the default)", keys={"EARLY_STOPPING.PATIENCE": _same},
                           rule=NON_NEGATIVE_INT)
    min_delta: float = _param(0.0, "the smallest change of monitor (a decrease of a loss, a rise of an AP) that "
                                   "counts as an improvement (default %(default)s)",
                              keys={"EARLY_STOPPING.MIN_DELTA": float}, rule=NON_NEGATIVE_NUMBER)
    val_on_training_frames: bool = _param(False, "let the validation set hold training frames (refused otherwise: "
                                                 "its loss is then a training loss, blind to overfitting); cv's "
                                                 "final model validates on every video this way", searchable=False)
    val_max_images: str = _param("auto", "validation frames per period: auto (the most that cost at most 5%% of "
                                         "training time), 0 (the whole set) or N; spread evenly over videos and "
                                         "time; the whole set is logged as val_full/* at the end",
                                 keys={"VALIDATION.MAX_IMAGES": _same}, rule=FRAMES)
    val_precision: float = _param(0.02, "with val_max_images=auto: stop growing the sample once monitor's "
                                        "standard error is this fraction of its value (default %(default)s, 2%%)",
                                  searchable=False, keys={"VALIDATION.PRECISION": float}, rule=FRACTION)
    full_val_period: int = _param(0, "also compute the whole validation set's loss (val_full/*) every N "
                                     "iterations (0: only at the end of training)",
                                 keys={"VALIDATION.FULL_PERIOD": _same}, rule=NON_NEGATIVE_INT)
    num_machines: int = _param(1, "machines taking part (Detectron2's launch; start the command on each)",
                               searchable=False, rule=POSITIVE_INT)
    machine_rank: int = _param(0, "this machine's rank, 0 to num_machines-1 (rank 0 logs to MLflow)", searchable=False)
    dist_url: str = _param("auto", "where the processes meet, e.g. tcp://HOST:PORT of machine 0 (auto: a free port "
                                   "on this machine, one machine only); ignored when a launcher (torchrun, srun, "
                                   "a PyTorchJob) sets RANK and WORLD_SIZE", searchable=False)
    amp: bool = _param(False, "mixed precision on CUDA (Detectron2's AMPTrainer: bfloat16 where the GPU supports "
                              "it, else float16 with a gradient scaler); refused on the CPU",
                        keys={"SOLVER.AMP.ENABLED": _same}, rule=BOOL)

    def __post_init__(self) -> None:
        for f in param_fields():  # each field's own rule, then the rules between fields
            rule, value = spec_of(f).rule, getattr(self, f.name)
            _require(rule is None or rule(value), f"{f.name} must be {rule.expected if rule else ''}, got {value!r}")
        _require(self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}; got {self.device!r}")
        _require(isinstance(self.machine_rank, int) and 0 <= self.machine_rank < self.num_machines,
                 f"machine_rank must be between 0 and num_machines-1 ({self.num_machines - 1}), got {self.machine_rank!r}")
        _require(self.num_machines == 1 or self.dist_url.startswith("tcp://"),
                 f"with num_machines > 1, dist_url must be machine 0's tcp://HOST:PORT (every machine gives the same "
                 f"one), got {self.dist_url!r}")
        _require(self.log_checkpoints in LOG_CHECKPOINTS,
                 f"log_checkpoints must be one of {', '.join(LOG_CHECKPOINTS)}; got {self.log_checkpoints!r}")
        opts_items(self.opts)  # KEY VALUE pairs and key=value items
        for json_key, images_key in (("train_json", "train_images"), ("val_json", "val_images"),
                                     ("test_json", "test_images")):
            has_json, has_images = bool(getattr(self, json_key)), bool(getattr(self, images_key))
            _require(has_json == has_images,
                     f"{json_key} and {images_key} go together: give both, or neither to use the sample data")
        _require(bool(self.train_json) == bool(self.val_json),
                 "give both a training set (train_json) and a validation set (val_json), or neither "
                 "to use the sample data")
        _require(not self.resume or bool(self.output_dir), "resume needs the output_dir of the run to continue")

    def replace(self, **changes: Any) -> "TrainParams":
        return dataclasses.replace(self, **changes)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def opts_items(opts: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``opts`` as ``(key, value)`` items, read left to right: ``key=value`` is one item, any other word is a key
    whose value is the next word. A key left without a value is a :class:`ConfigError`."""
    items, words = [], list(opts)
    while words:
        word = words.pop(0)
        key, equals, value = word.partition("=")
        if equals and key and key.replace(".", "").replace("_", "").isalnum():
            items.append((key, value))
        elif words:
            items.append((word, words.pop(0)))
        else:
            raise ConfigError(f"opts must be KEY VALUE pairs or key=value items; {word!r} has no value "
                              f"(in {' '.join(opts)!r})")
    return items


def parse_int(name: str, text: str) -> int:
    """Parse an integer parameter given as text, with a message naming the parameter."""
    try:
        return read_number(int, text)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}") from None


def parse_float(name: str, text: str) -> float:
    """Parse a number parameter given as text (``0.01``, ``1e-2``), with a message naming the parameter."""
    try:
        return read_number(float, text)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}") from None


def param_fields() -> tuple[dataclasses.Field, ...]:
    return option_fields(TrainParams)


def searchable_params() -> tuple[str, ...]:
    """The ``main`` parameters a sweep's space may name (the fields marked ``searchable``)."""
    return tuple(f.name for f in param_fields() if f.metadata["searchable"])


def default_text(f: dataclasses.Field) -> str:
    """A field's default as a command line or ``mlflow run -P`` writes it (``0.02``, ``false``, ``""``)."""
    return text_of(default_of(f))


def parse_bool(name: str, text: str) -> bool:
    try:
        return read_bool(text)
    except ValueError as exc:
        raise ConfigError(f"{name} {exc}") from None


def params_from_text(values: dict[str, str]) -> TrainParams:
    """``TrainParams`` from text values keyed by field name (what ``mlflow run -P`` and sweeps' spaces pass);
    a missing key takes the field's default. Each value is parsed with a message naming its parameter."""
    unknown = sorted(set(values) - {f.name for f in param_fields()})
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}")
    parsed = {}
    for f in param_fields():
        if f.name in values:
            try:
                parsed[f.name] = read_text(f, values[f.name])
            except ValueError as exc:
                raise ConfigError(f"{f.name} {exc}") from None
    return TrainParams(**parsed)


def _cuda_device_exists(device: str) -> bool:
    import torch

    index = device.partition(":")[2]
    if index and not (index.isascii() and index.isdigit()):
        return False
    return torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count()


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
    bundled_names = ", ".join(sorted(p.name for p in BUNDLED_CONFIG_DIR.iterdir() if p.suffix in (".yaml", ".py")))
    raise ConfigError(
        f"config {config!r} is neither a config file, a bundled config ({bundled_names}) nor a Detectron2 "
        "model-zoo name such as 'COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml' or "
        "'new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py'"
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

    from seizure_mlflow.user_files import merge_config_file, read_yaml

    yaml_path, _ = resolve_config_source(config)
    cfg = get_cfg()
    content = read_yaml(yaml_path, param="config") or {}
    base = content.get("_BASE_") if isinstance(content, dict) else None
    try:
        if isinstance(base, str) and not (Path(yaml_path).parent / base).is_file():
            zoo_base = _model_zoo_config_file(base)
            if zoo_base is None:
                raise ConfigError(f"config {yaml_path}: _BASE_ {base!r} is neither a file nor a model-zoo name")
            merge_config_file(cfg, zoo_base)
            content.pop("_BASE_")
            cfg.merge_from_other_cfg(CfgNode(content))
        else:
            merge_config_file(cfg, yaml_path)  # every _BASE_ file read safely too
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
    from seizure_mlflow.user_files import read_yaml

    yaml_path, _ = resolve_config_source(config)
    if is_lazy_file(yaml_path):
        return ""
    content = read_yaml(yaml_path, param="config") or {}
    return str(content.get("_BASE_", "")) if isinstance(content, dict) else ""


# Keys this project adds to Detectron2's config for training only; a model's serving config leaves them out,
# so that Detectron2's own get_cfg() reads it.
TRAINING_ONLY_KEYS = ("EARLY_STOPPING", "VALIDATION")


def build_config(params: TrainParams, num_classes: int, output_dir: str):
    """The frozen Detectron2 config of a run: base config, then the keys each typed parameter names (its
    ``keys`` metadata), then ``opts``; the final config is checked once (:func:`check_config`).

    A LazyConfig (see :mod:`seizure_mlflow.lazy`) is run here (and only here), if trusted; the run's parameters
    and its lower-case ``opts`` are applied to it, and the result rides in the config as data (``LAZY.SPEC``),
    beside Detectron2's defaults for what the package's hooks read (validation, checkpoints, test-time size)."""
    from detectron2.config import CfgNode, get_cfg

    path, _ = resolve_config_source(params.config)
    lazy = load_lazy_config(path, params.config, params.trust_config_code) if is_lazy_file(path) else None
    cfg = get_cfg() if lazy is not None else load_base_config(params.config)
    cfg.DATASETS.TRAIN = (TRAIN_DATASET,)
    cfg.DATASETS.TEST = (VAL_DATASET,)
    cfg.MODEL.WEIGHTS = resolve_weights(params.weights, params.config)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.OUTPUT_DIR = output_dir
    cfg.EARLY_STOPPING = type(cfg)({"PATIENCE": 0, "MIN_DELTA": 0.0})
    cfg.VALIDATION = type(cfg)({"MAX_IMAGES": "auto", "FULL_PERIOD": 0, "BATCH_SIZE": 4, "CACHE_MB": 1024,
                                "MONITOR": DEFAULT_MONITOR, "AP_PERIOD": 0, "PRECISION": 0.02})
    for f in param_fields():
        for key, to_config in f.metadata["keys"].items():
            _set_key(cfg, key, to_config(getattr(params, f.name)))
    items = opts_items(params.opts)
    if lazy is not None:
        cfg.LAZY = CfgNode({"SPEC": _lazy_spec_text(lazy, params, num_classes, cfg, items)})
        items = [(key, value) for key, value in items if key[:1].isupper()]
    if items:
        try:
            cfg.merge_from_list([word for item in items for word in item])
        except (KeyError, ValueError, AssertionError, TypeError) as exc:
            raise ConfigError(f"opts {' '.join(params.opts)!r}: {exc}") from None
    check_config(cfg, params)
    cfg.freeze()
    return cfg


def _lazy_spec_text(lazy, params: TrainParams, num_classes: int, cfg, items: list[tuple[str, str]]) -> str:
    """``lazy`` with the run's values and its lower-case ``opts`` applied, as the JSON text of its training spec;
    the run's own keys that the LazyConfig decides (learning rate, batch, length, image format, checkpoint
    period) are set from it on ``cfg``, so that the logged params say what trained."""
    import json

    apply_run_values(lazy, lr=params.lr, ims_per_batch=params.ims_per_batch, max_iter=params.max_iter,
                     min_size=params.min_size, num_workers=params.num_workers, num_classes=num_classes)
    apply_overrides(lazy, [f"{key}={value}" for key, value in items if not key[:1].isupper()])
    check_schedule(lazy.lr_multiplier)
    spec = training_spec(lazy)
    check_targets(spec, TRAINING_MODULES, f"config {params.config}")
    cfg.SOLVER.BASE_LR = float(lazy.optimizer.lr)
    cfg.SOLVER.IMS_PER_BATCH = int(lazy.dataloader.train.total_batch_size)
    cfg.DATALOADER.NUM_WORKERS = int(lazy.dataloader.train.get("num_workers", 0))
    cfg.SOLVER.MAX_ITER = int(lazy.train.max_iter) if "train" in lazy else params.max_iter
    cfg.SOLVER.CHECKPOINT_PERIOD = spec["checkpoint_period"]
    cfg.INPUT.FORMAT = spec["input_format"]
    cfg.MODEL.MASK_ON = True  # the validation loss needs the masks (the LazyConfig's model has a mask head)
    return json.dumps(spec, sort_keys=True)


def _set_key(cfg, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _get_key(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


# Final values whose form differs from the parameter that sets them, and keys no parameter sets (a config file or
# opts can): checked whatever set them.
_KEY_RULES: dict[str, Rule] = {
    "INPUT.MIN_SIZE_TRAIN": POSITIVE_SIZES,
    "INPUT.MIN_SIZE_TEST": POSITIVE_SIZE,
    "SOLVER.CHECKPOINT_PERIOD": POSITIVE_INT,
    "SOLVER.WARMUP_ITERS": NON_NEGATIVE_INT,
    "VALIDATION.BATCH_SIZE": POSITIVE_INT,
    "VALIDATION.CACHE_MB": NON_NEGATIVE_INT,
    "INPUT.MAX_SIZE_TRAIN": POSITIVE_SIZE,
    "INPUT.MAX_SIZE_TEST": POSITIVE_SIZE,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": POSITIVE_INT,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": POSITIVE_INT,
    "MODEL.DEVICE": DEVICE_KEY,
}


def config_rules() -> dict[str, tuple[Rule, str | None]]:
    """``{key: (rule, the parameter that sets it or None)}``: every key a parameter sets, with the parameter's rule
    (or the key's own in ``_KEY_RULES``), and the keys only configs and ``opts`` set."""
    rules: dict[str, tuple[Rule, str | None]] = {key: (rule, None) for key, rule in _KEY_RULES.items()}
    for f in param_fields():
        for key in f.metadata["keys"]:
            rule = _KEY_RULES.get(key, spec_of(f).rule)
            if rule is not None:
                rules[key] = (rule, f.name)
    return rules


def check_config(cfg, params: TrainParams) -> None:
    """The final config is checked, not only the typed parameters: ``opts`` or a YAML file can set anything.

    Raises :class:`ConfigError` naming the key, its value and what set it, before any run exists.
    """
    from_opts = {key for key, _ in opts_items(params.opts)}
    problems, keys = [], set()
    for key, (rule, param) in config_rules().items():
        value = _get_key(cfg, key)
        if not rule(value):
            source = "set by opts" if key in from_opts else (f"set by {param}" if param else f"from {params.config}")
            problems.append(f"{key} must be {rule.expected}, got {value!r} ({source})")
            keys.add(key)
    for key, named in (("DATASETS.TRAIN", (TRAIN_DATASET,)), ("DATASETS.TEST", (VAL_DATASET,))):
        if tuple(_get_key(cfg, key)) != named:  # e.g. training on the validation frames: silently wrong
            source = "set by opts" if key in from_opts else f"from {params.config}"
            problems.append(f"{key} must stay {named!r}, the data given by train_json/val_json, got "
                            f"{tuple(_get_key(cfg, key))!r} ({source}); give other data as train_json/val_json")
            keys.add(key)
    if cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        problems.append(f"mixed precision (amp, SOLVER.AMP.ENABLED) needs a CUDA GPU, and this run's device is "
                        f"{cfg.MODEL.DEVICE}; drop amp, or train on a GPU")
        keys.add("SOLVER.AMP.ENABLED")
    _check_weights(cfg.MODEL.WEIGHTS, "opts" if "MODEL.WEIGHTS" in from_opts else "weights")
    from seizure_mlflow.distributed import launcher_from_env, world_size

    processes = world_size(params, launcher_from_env())
    if not problems and cfg.SOLVER.IMS_PER_BATCH % processes:
        problems.append(f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} is not divisible by the job's {processes} "
                        "processes (num_processes x num_machines, or a launcher's WORLD_SIZE; each process takes an "
                        "equal share of a batch)")
    if not problems:
        problems += _batch_memory_problems(cfg, processes)
    if problems:
        raise ConfigError("; ".join(problems), param="opts" if keys & from_opts else None)


def _batch_memory_problems(cfg, processes: int) -> list[str]:
    """A training batch whose memory floor (:data:`TRAINING_BYTES_PER_PIXEL_FLOOR` per pixel of each image at the
    shortest training size) exceeds the memory of the device one process trains on."""
    per_process = cfg.SOLVER.IMS_PER_BATCH // processes
    short = max(cfg.INPUT.MIN_SIZE_TRAIN)
    floor = per_process * short * min(short, cfg.INPUT.MAX_SIZE_TRAIN) * TRAINING_BYTES_PER_PIXEL_FLOOR
    memory, what = device_memory(cfg.MODEL.DEVICE)
    if floor <= memory:
        return []
    return [f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} ({per_process} images per process at "
            f"{short} px) needs at least {floor / 2**30:.1f} GiB in training, and {what} has {memory / 2**30:.1f} GiB; "
            f"lower ims_per_batch (at most {max(1, int(memory // (floor / per_process)) * processes)} here) or min_size"]


def device_memory(device: str) -> tuple[int, str]:
    """``(bytes, words)``: the memory one process trains in (the GPU's, or this machine's RAM)."""
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        return torch.cuda.get_device_properties(index).total_memory, f"GPU {index}"
    import psutil

    return psutil.virtual_memory().total, "this machine's RAM"


def _check_weights(weights: str, param: str) -> None:
    """The final ``MODEL.WEIGHTS`` (a typed parameter, a config file or ``opts`` set it): a local file must load
    as data (see :mod:`seizure_mlflow.user_files`); a URL is fetched and checked the same way when loaded."""
    from seizure_mlflow.user_files import check_weights_file

    if not weights or "://" in weights:
        return
    if not Path(weights).expanduser().is_file():
        raise ConfigError(f"MODEL.WEIGHTS {weights}: no such file; give a path, a URL, 'model-zoo' or ''", param=param)
    check_weights_file(Path(weights).expanduser(), param=param)


def flatten_config(cfg) -> dict[str, str]:
    """``{"SOLVER.BASE_LR": "0.001", ...}``: every leaf of a config, as MLflow params. A LazyConfig run's model
    is its spec's (``lazy.model.backbone.bottom_up.stages.depth``, ...), not Detectron2's unused ``MODEL`` defaults
    (of which only the device and weights are kept)."""
    import json

    flat = _leaves(cfg, "")
    if not cfg.get("LAZY"):
        return flat
    flat = {key: value for key, value in flat.items()
            if not key.startswith(("LAZY.", "MODEL.")) or key in ("MODEL.DEVICE", "MODEL.WEIGHTS")}
    flat.update(_leaves(json.loads(cfg.LAZY.SPEC), "lazy."))
    return flat


def _leaves(node: Any, prefix: str) -> dict[str, str]:
    if isinstance(node, dict):
        return {key: value for name, child in node.items() for key, value in _leaves(child, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): str(node)}
