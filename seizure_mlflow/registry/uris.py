"""Model URIs: which registered version a URI names, and the detector it loads.

Every form MLflow accepts is understood, parsed by MLflow itself: ``models:/NAME/VERSION``,
``models:/NAME@ALIAS``, ``models:/NAME/latest``, ``models:/NAME/STAGE``, ``models:/m-ID`` (a logged model),
and ``runs:/RUN_ID/PATH``.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import get_model_name_and_version

from seizure_mlflow.errors import UserError


def registered_version(model_uri: str, client: MlflowClient | None = None) -> tuple[str, str] | None:
    """``(name, version)`` of the registered version a URI points at, or None when it names no single
    registered version (e.g. a ``runs:/`` model that was never registered, or was registered twice)."""
    client = client or MlflowClient()
    if model_uri.startswith("models:/"):
        try:
            found = get_model_name_and_version(client, model_uri)
        except MlflowException as exc:
            raise UserError(f"{model_uri!r}: {str(exc).splitlines()[0]}", param="model_uri") from None
        if len(found) == 2:
            return found[0], str(found[1])
        model_id = found[0]
        return _only_version(client, lambda v: model_id in (v.model_id, v.source.removeprefix("models:/")),
                             client.get_logged_model(model_id).source_run_id)
    if model_uri.startswith("runs:/"):
        run_id = model_uri[len("runs:/"):].split("/", 1)[0]
        if not (run_id.isascii() and run_id.isalnum()):  # MLflow's run ids are hex; anything else breaks its filters
            raise UserError(f"{model_uri!r}: {run_id!r} is not a run id (letters and digits, as MLflow shows them)",
                            param="model_uri")
        return _only_version(client, lambda v: True, run_id)
    return None


def _only_version(client: MlflowClient, matches, run_id: str | None) -> tuple[str, str] | None:
    if not run_id:
        return None
    versions = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if matches(v)]
    return (versions[0].name, str(versions[0].version)) if len(versions) == 1 else None


def registered_model_version(model_uri: str, client: MlflowClient | None = None):
    """The ``ModelVersion`` a URI names, or None (see :func:`registered_version`)."""
    client = client or MlflowClient()
    found = registered_version(model_uri, client)
    return client.get_model_version(*found) if found else None


def downloaded_model(model_uri: str, dst_path: str) -> str:
    """The model's files in ``dst_path``, checked against the digests recorded when it was registered (see
    :mod:`seizure_mlflow.registry.integrity`) before anything in them is imported or read. Returns the folder."""
    from seizure_mlflow.registry.integrity import verified_download

    version = registered_model_version(model_uri)
    try:
        return verified_download(model_uri, dst_path, version)
    except UserError:
        raise
    except Exception as exc:  # MLflow raises several types for a bad URI
        raise UserError(f"cannot load model {model_uri!r}: {str(exc).splitlines()[0]}", param="model_uri") from None


def detector_from_uri(model_uri: str):
    """The :class:`~seizure_mlflow.inference.predictor.Detector` inside a registered pyfunc model, its files checked
    first (:func:`downloaded_model`). The model's files are downloaded into a temporary folder that is gone once
    the detector holds its weights (MLflow's own default folder is never removed: about 50 MB left in the temp
    folder by every command that loads a model)."""
    import tempfile

    import mlflow.pyfunc

    from seizure_mlflow.registry.model import SeizureDetectorModel

    with tempfile.TemporaryDirectory(prefix="seizure-model-") as tmp:
        local = downloaded_model(model_uri, tmp)
        try:
            model = mlflow.pyfunc.load_model(local)
        except Exception as exc:  # a model of another kind, or broken
            raise UserError(f"cannot load model {model_uri!r}: {str(exc).splitlines()[0]}",
                            param="model_uri") from None
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, SeizureDetectorModel):
        raise UserError(f"{model_uri} is not a seizure-mlflow detector (it is {type(python_model).__name__})",
                        param="model_uri")
    return python_model.detector


def logged_model_id(version) -> str:
    """The id of the logged model a registered version was made from (its source is ``models:/m-ID``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = str(version.source)
    if not source.startswith("models:/m-"):
        raise ValueError(f"version {version.version} of {version.name} was not registered from a logged model: {source}")
    return source.removeprefix("models:/")
