"""Log checkpoints as MLflow pyfunc models, register the best one, tag it and give it an alias.

Aliases: the first version of a name becomes ``champion``; every later version becomes ``challenger``
until it is promoted (the alias moves to the newest challenger).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.types import ColSpec, Schema
from mlflow.types.schema import Array, Object, Property

from seizure_mlflow.registry.integrity import record_manifest
from seizure_mlflow.config import TRAINING_ONLY_KEYS
from seizure_mlflow.lazy.network import LAZY_KEY, lazy_spec
from seizure_mlflow.registry.environment import (WHEEL_ARTIFACT, detectron2_wheel, model_requirements,
                                                 stage_model_code)
from seizure_mlflow.registry.model import (ARTIFACT_CATEGORIES, ARTIFACT_CONFIG, ARTIFACT_WEIGHTS, IMAGE_COLUMN)
from seizure_mlflow.tracking.describe import MODEL_CARD
from seizure_mlflow.tracking.run import remove_machine_context_from_model

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
CHAMPION, CHALLENGER = "champion", "challenger"
TEST_DIGEST_TAG, EVALUATION_RUN_TAG = "test_digest", "evaluation_run_id"
ENTRY_POINT = str(Path(__file__).with_name("pyfunc_entry.py"))
# Optional at the schema level so that a wrong column reaches the model, which answers with a short message;
# MLflow's own schema errors quote the whole input (megabytes of base64 for images).
# The output: per image, a list of COCO-style detections.
DETECTION = Object([Property("category_id", "long"), Property("category_name", "string"),
                    Property("bbox", Array("double")), Property("score", "double"),
                    Property("segmentation", Object([Property("size", Array("long")), Property("counts", "string")]),
                             required=False)])
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("binary", IMAGE_COLUMN, required=False)]),
                           outputs=Schema([ColSpec(Array(DETECTION), "detections")]))


def synthetic_input_example() -> pd.DataFrame:
    """A plain grey PNG: the model's input example must never be a patient frame."""
    ok, png = cv2.imencode(".png", np.full((64, 64, 3), 127, np.uint8))
    assert ok
    return pd.DataFrame({IMAGE_COLUMN: [png.tobytes()]})


def log_detector(cfg, state_dict: dict[str, torch.Tensor], categories: list[dict], step: int,
                 name: str = MODEL_ARTIFACT):
    """Log the model ``state_dict`` (no optimizer or trainer state) as a pyfunc logged model of the active run,
    at ``step`` (the iteration its weights are from); returns MLflow's ``ModelInfo``."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "model_weights.pt")
        torch.save(state_dict, weights)
        config = os.path.join(tmp, "config.yaml")
        serving_cfg = cfg.clone()
        serving_cfg.defrost()
        serving_cfg.MODEL.WEIGHTS = ""
        serving_cfg.OUTPUT_DIR = ""
        for key in TRAINING_ONLY_KEYS:
            serving_cfg.pop(key, None)
        spec = lazy_spec(serving_cfg)
        if spec is not None:  # the network only: what serving builds
            serving_cfg[LAZY_KEY].SPEC = json.dumps({"model": spec["model"]}, sort_keys=True)
        Path(config).write_text(serving_cfg.dump())
        cats = os.path.join(tmp, "categories.json")
        Path(cats).write_text(json.dumps(categories))
        artifacts = {ARTIFACT_CONFIG: config, ARTIFACT_WEIGHTS: weights, ARTIFACT_CATEGORIES: cats}
        wheel = detectron2_wheel()
        if wheel is not None:
            artifacts[WHEEL_ARTIFACT] = str(wheel)
        else:
            logger.warning("Detectron2's wheel is not kept in this environment (installed another way?): the model "
                           "needs Detectron2 installed wherever it is loaded")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=ENTRY_POINT,
            artifacts=artifacts,
            code_paths=[str(stage_model_code(Path(tmp) / "code"))],
            signature=SIGNATURE,
            input_example=synthetic_input_example(),
            pip_requirements=model_requirements(wheel_in_model=wheel is not None),
            step=step,
        )
    remove_local_paths(info.model_id)
    return info


def register(model_uri: str, model_name: str, version_tags: dict[str, str]) -> ModelVersion:
    """Register a logged model, tag the version and give it its alias; returns the version."""
    client = MlflowClient()
    version = mlflow.register_model(model_uri, model_name)
    for key, value in version_tags.items():
        client.set_model_version_tag(model_name, version.version, key, value)
    record_manifest(client, model_name, version.version)  # before the alias: no one loads it unrecorded
    alias = assign_alias(client, model_name, version.version)
    logger.info("Registered %s version %s as @%s", model_name, version.version, alias)
    return client.get_model_version(model_name, version.version)


def add_model_card(model_id: str, text: str) -> None:
    """``model_card.md`` beside the model's ``MLmodel``."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, MODEL_CARD).write_text(text)
        MlflowClient().log_model_artifacts(model_id, tmp)


def remove_local_paths(model_id: str) -> None:
    """Rewrite a logged model's ``MLmodel`` and tags without this machine's paths and user name.

    MLflow records where the model code and artifacts were read from (``model_code_path``, each artifact's
    ``uri``) and where the model was stored (``artifact_path``); loading uses none of them (the code file is
    found by its name, artifacts by their ``path`` inside the model). They become the file's name, nothing,
    and the model's name.
    """
    model = Model.load(f"models:/{model_id}")
    pyfunc = model.flavors["python_function"]
    pyfunc["model_code_path"] = os.path.basename(pyfunc["model_code_path"])
    for artifact in pyfunc.get("artifacts", {}).values():
        artifact.pop("uri", None)
    model.artifact_path = MODEL_ARTIFACT
    with tempfile.TemporaryDirectory() as tmp:
        model.save(os.path.join(tmp, MLMODEL_FILE_NAME))
        MlflowClient().log_model_artifacts(model_id, tmp)
    remove_machine_context_from_model(model_id)


def assign_alias(client: MlflowClient, model_name: str, version: str) -> str:
    """``champion`` for the first version of a name, ``challenger`` otherwise; returns the alias set."""
    aliases = client.get_registered_model(model_name).aliases
    alias = CHALLENGER if CHAMPION in aliases else CHAMPION
    client.set_registered_model_alias(model_name, alias, version)
    return alias


def version_tag(metric: str) -> str:
    """``test/segm/AP`` -> ``test_segm_AP``: the model-version tag that holds a metric's value."""
    return metric.replace("/", "_")


def tag_evaluation(client: MlflowClient, model_name: str, version: str, metrics: dict[str, float], test_digest: str,
                   evaluation_run_id: str) -> None:
    """A version's test metrics as tags (``test_bbox_AP``, ``test_segm_AP``, ...), with the test set's digest
    and the evaluation run."""
    for key, value in metrics.items():
        client.set_model_version_tag(model_name, version, version_tag(key), f"{value:.4f}")
    client.set_model_version_tag(model_name, version, TEST_DIGEST_TAG, test_digest)
    client.set_model_version_tag(model_name, version, EVALUATION_RUN_TAG, evaluation_run_id)
