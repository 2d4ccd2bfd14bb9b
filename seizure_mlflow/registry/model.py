"""The registered pyfunc model: a Detectron2 Mask R-CNN, loaded without unpickling code.

The MLflow model (logged "from code", see ``pyfunc_entry.py``) holds three artifacts:

* ``config``: the merged Detectron2 config as YAML (read with ``yaml.safe_load``); for a LazyConfig model it
  carries the network as data (``LAZY.SPEC``), built from Detectron2's and torch's modules only;
* ``weights``: the model's ``state_dict`` saved by ``torch.save`` and read with ``weights_only=True``;
* ``categories``: JSON list of ``{"id", "name"}`` in the model's class order.

Input: a DataFrame with a column ``image`` of encoded PNG/JPEG bytes (base64 text is accepted too).
Output: one list per row of COCO-style results (see :mod:`seizure_mlflow.inference.predictor`).
The device is CUDA when available, else CPU; ``SEIZURE_MLFLOW_DEVICE`` overrides it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys

import mlflow.pyfunc
import pandas as pd
import torch
import yaml

IMAGE_COLUMN = "image"
ARTIFACT_CONFIG, ARTIFACT_WEIGHTS, ARTIFACT_CATEGORIES = "config", "weights", "categories"


def load_config_yaml(path: str, device: str | None = None):
    """A Detectron2 config from a YAML dump, parsed with ``yaml.safe_load`` (never ``unsafe_load``)."""
    from detectron2.config import CfgNode, get_cfg

    from seizure_mlflow.lazy.network import LAZY_KEY

    with open(path) as fh:
        content = yaml.safe_load(fh)
    lazy = content.pop(LAZY_KEY, None)  # a LazyConfig's network as data (see seizure_mlflow.lazy.network)
    cfg = get_cfg()
    cfg.merge_from_other_cfg(CfgNode(content))
    if lazy is not None:
        cfg[LAZY_KEY] = CfgNode(lazy)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device or os.environ.get("SEIZURE_MLFLOW_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.freeze()
    return cfg


def load_detector(config_path: str, weights_path: str, categories_path: str):
    from seizure_mlflow.inference.predictor import Detector

    cfg = load_config_yaml(config_path)
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    with open(categories_path) as fh:
        categories = json.load(fh)
    return Detector(cfg, state_dict, categories)


def _image_bytes(value, row: int) -> bytes:
    where = f"row {row}, column '{IMAGE_COLUMN}'"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: text that is not base64; send encoded image bytes") from None
    raise ValueError(f"{where}: expected encoded image bytes, got {type(value).__name__}")


def drop_shadowing_copies() -> None:
    """Take off ``sys.path`` the code folders of MLflow models that hold another ``seizure_mlflow`` than the one
    in use.

    MLflow puts a model's code folder (``MODEL/code``, a small copy of this package for machines without it)
    first on ``sys.path`` when the model loads, and leaves it there. Where the project is installed, that copy
    is not the package in use, and processes started later (``multiprocessing`` passes ``sys.path`` on, as
    Detectron2's ``launch`` does) would import the copy, which lacks everything but inference code. Only
    folders beside an ``MLmodel`` file are touched: never site-packages or the project itself.
    """
    import seizure_mlflow

    in_use = os.path.realpath(os.path.dirname(os.path.dirname(seizure_mlflow.__file__)))

    def shadowing(entry: str) -> bool:
        folder = os.path.realpath(entry or ".")
        return (folder != in_use and os.path.isdir(os.path.join(folder, "seizure_mlflow"))
                and os.path.isfile(os.path.join(os.path.dirname(folder), "MLmodel")))

    sys.path[:] = [entry for entry in sys.path if not shadowing(entry)]


class SeizureDetectorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        drop_shadowing_copies()
        self.detector = load_detector(context.artifacts[ARTIFACT_CONFIG], context.artifacts[ARTIFACT_WEIGHTS],
                                      context.artifacts[ARTIFACT_CATEGORIES])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[list[dict]]:
        from seizure_mlflow.inference.predictor import decode_image

        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input.columns:
            columns = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
            raise ValueError(f"input must be a DataFrame with a column '{IMAGE_COLUMN}' of encoded images; got {columns}")
        images = [decode_image(_image_bytes(v, i), where=f"row {i}")
                  for i, v in enumerate(model_input[IMAGE_COLUMN].tolist())]
        return self.detector.predict(images)
