"""The data sets of a run as MLflow dataset inputs: a name, a digest and counts, never a row of data.

Each checked COCO file becomes an MLflow ``MetaDataset`` (no rows) named ``seizure-<context>`` with the
same digest as the run's ``seizure.*_digest`` tags, logged with ``mlflow.log_input`` under its context
(``training``, ``validation``, ``validation_sample``, ``testing``). Counts of images, instances and videos
are the input's tags. No path, file name or image id is part of it: the source is a constant that names
the producer only.
"""

from __future__ import annotations

from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from seizure_mlflow.data.checks import CocoSummary, check_coco
from seizure_mlflow.outputs.training_folder import VALIDATION_SAMPLE_FILE

TRAINING, VALIDATION, VALIDATION_SAMPLE, TESTING = "training", "validation", "validation_sample", "testing"
_SOURCE = CodeDatasetSource({"producer": "seizure-mlflow", "format": "COCO instances"})


LOG_INPUT_ATTEMPTS = 3


def log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput]) -> None:
    """``client.log_inputs``, again when another process created the same dataset first. A dataset is one row per
    experiment, name and digest, which MLflow looks up and then inserts: the workers of a sweep or a cross-validation
    log the same validation sample at once, and the one that loses the race gets a unique-constraint error (SQLite's
    "UNIQUE constraint failed", PostgreSQL's "duplicate key value violates unique constraint"). Its transaction was
    rolled back whole; the next attempt finds the dataset and only links it to the run."""
    for attempt in range(1, LOG_INPUT_ATTEMPTS + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            if attempt == LOG_INPUT_ATTEMPTS or "unique constraint" not in str(exc).lower():
                raise


def coco_dataset(summary: CocoSummary, context: str) -> MetaDataset:
    """The dataset entity of a checked COCO file: name ``seizure-<context>``, the file's digest."""
    return MetaDataset(_SOURCE, name=f"seizure-{context}", digest=summary.digest)


def dataset_counts(summary: CocoSummary) -> dict[str, str]:
    return {"images": str(summary.num_images), "instances": str(summary.num_annotations),
            "videos": str(summary.num_videos), "categories": ",".join(summary.category_names)}


def log_datasets(run_id: str, datasets: dict[str, CocoSummary], client: MlflowClient | None = None) -> None:
    """Each ``{context: summary}`` as a dataset input of the run, its counts as input tags."""
    client = client or MlflowClient()
    inputs = []
    for context, summary in datasets.items():
        entity = coco_dataset(summary, context)._to_mlflow_entity()
        tags = [InputTag("mlflow.data.context", context)] + [InputTag(k, v) for k, v in dataset_counts(summary).items()]
        inputs.append(DatasetInput(dataset=entity, tags=tags))
    log_inputs(client, run_id, inputs)


SPLIT_CONTEXTS = {"train": TRAINING, "val": VALIDATION, "test": TESTING}


def log_prepared(result) -> None:
    """A ``prepare`` result in the active (or a new) MLflow run: counts per split as metrics, ``report.json``
    (counts only) and each split as a dataset input; never frames, video names or paths."""
    import mlflow

    from seizure_mlflow.tracking.run import active_run

    with active_run(run_name="prepare") as run:
        mlflow.log_metrics({f"{split}/{key}": float(value) for split, counts in result.report.items()
                            for key, value in counts.items() if key != "instances_per_category" and value is not None})
        mlflow.log_dict(result.report, "report.json")
        log_datasets(run.info.run_id, {context: check_coco(result.output / f"{split}.json", result.output / "images",
                                                           check_files=False)
                                       for split, context in SPLIT_CONTEXTS.items()})


SAMPLE_PARAM = "val_sample_size"
SAMPLE_ARTIFACT = VALIDATION_SAMPLE_FILE  # the artifact keeps the training folder file's name


def log_validation_sample(run_id: str, record_path: str, val: CocoSummary, client: MlflowClient | None = None) -> None:
    """The validation sample a training run chose (``OUTPUT_DIR/validation_sample.json``, written by the
    validation hook): its size as the param ``val_sample_size``, its image ids (numbers only, no file names)
    and how its size was chosen as the artifact ``validation_sample.json``, and the sample as the dataset input
    ``validation_sample`` (digest of the validation file's digest and the ids; counts as tags). Nothing when the
    run has not reached its first validation."""
    import hashlib
    import json
    import os

    if not os.path.isfile(record_path):
        return
    client = client or MlflowClient()
    with open(record_path) as fh:
        choice = json.load(fh)
    ids = choice["image_ids"]
    client.log_param(run_id, SAMPLE_PARAM, str(len(ids)))
    client.log_dict(run_id, choice, SAMPLE_ARTIFACT)
    digest = hashlib.sha256(json.dumps([val.digest, ids]).encode()).hexdigest()[:8]
    entity = MetaDataset(_SOURCE, name=f"seizure-{VALIDATION_SAMPLE}", digest=digest)._to_mlflow_entity()
    tags = [InputTag("mlflow.data.context", VALIDATION_SAMPLE), InputTag("images", str(len(ids))),
            InputTag("of_images", str(choice["full_size"])), InputTag("chosen", choice["mode"])]
    if choice.get("decided_by"):  # auto: which limit decided its size
        tags.append(InputTag("decided_by", choice["decided_by"]))
    log_inputs(client, run_id, [DatasetInput(dataset=entity, tags=tags)])
