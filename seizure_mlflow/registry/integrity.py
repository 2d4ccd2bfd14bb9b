"""A registered model proves it is the one registered: the digest of each of its files is recorded in the registry
when the version is registered, and every load through the package checks the files against it first.

The model's files live in the artifact store (the team stack's S3 bucket); its version's tags live in the registry's
database, a separate store with its own credentials. At registration :func:`record_manifest` downloads the model
and records, as the version tag ``seizure.manifest``, a SHA-256 of every file (its code ``pyfunc_entry.py`` and
``code/``, ``MLmodel``, the environment files, the config, the weights, the categories, the Detectron2 wheel), and
the manifest's own digest as ``seizure.manifest_digest``. :func:`verified_download` downloads a version into a
local folder and compares every file with the manifest *before* anything in it is imported or read: a file
changed, missing or added is refused, naming it. ``model_card.md`` (documentation, added after registration) and
MLflow's own ``registered_model_meta`` are left out.

What this cannot cover is said in docs/security.md: a loader that does not call the check (``mlflow models serve``
on a registry URI, ``mlflow.pyfunc.load_model`` in your own code), and an attacker who can write the registry's
database too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from seizure_mlflow.errors import UserError

logger = logging.getLogger(__name__)

MANIFEST_TAG = "seizure.manifest"
MANIFEST_DIGEST_TAG = "seizure.manifest_digest"
# model_card.md: documentation, written after registration; registered_model_meta: what MLflow writes beside a model
# it downloads by a models:/ URI (the name and version asked for), not a file of the store. Neither is imported.
UNCHECKED = ("model_card.md", "registered_model_meta")
BYTECODE = "__pycache__"


def file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def manifest_of(folder: str | os.PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``folder`` but those in :data:`UNCHECKED` and Python's
    byte-code caches (see :func:`drop_bytecode`)."""
    root = Path(folder)
    return {path.relative_to(root).as_posix(): file_digest(path) for path in sorted(root.rglob("*"))
            if path.is_file() and path.relative_to(root).as_posix() not in UNCHECKED and BYTECODE not in path.parts}


def drop_bytecode(folder: str | os.PathLike) -> None:
    """Remove every ``__pycache__`` folder of a downloaded model. Python writes them beside a model's code when it
    is loaded in place (a local artifact store), and it would import a cached ``.pyc`` instead of its verified
    source: so none is kept, whoever wrote it, and the code is compiled again from the checked sources."""
    import shutil

    for cache in sorted(Path(folder).rglob(BYTECODE), reverse=True):
        if cache.is_dir():
            shutil.rmtree(cache)


def manifest_digest(manifest: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def record_manifest(client, name: str, version: str) -> dict[str, str]:
    """Download the registered version's files and record their digests as its tags (see the module)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="seizure-manifest-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        manifest = manifest_of(local)
    client.set_model_version_tag(name, version, MANIFEST_TAG, json.dumps(manifest, sort_keys=True))
    client.set_model_version_tag(name, version, MANIFEST_DIGEST_TAG, manifest_digest(manifest))
    return manifest


def recorded_manifest(version) -> dict[str, str] | None:
    """The manifest a version was registered with (None: registered before manifests were recorded). A manifest
    whose own digest does not match is refused."""
    text = version.tags.get(MANIFEST_TAG)
    if text is None:
        return None
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest_digest(manifest) != version.tags.get(MANIFEST_DIGEST_TAG):
        raise UserError(f"version {version.version} of {version.name}: its recorded file digests are damaged; "
                        "refusing to load it (register the model again)", param="model_uri")
    return manifest


def check_files(folder: str | os.PathLike, manifest: dict[str, str], what: str) -> None:
    """Every file below ``folder`` is the one the manifest names, with its digest; else a :class:`UserError` naming
    each file that changed, is missing or was added. Reads the files as bytes only."""
    found = manifest_of(folder)
    changed = sorted(p for p in manifest if p in found and found[p] != manifest[p])
    missing = sorted(p for p in manifest if p not in found)
    added = sorted(p for p in found if p not in manifest)
    if changed or missing or added:
        lines = ([f"changed since registration: {p}" for p in changed] + [f"missing: {p}" for p in missing]
                 + [f"not registered: {p}" for p in added])
        raise UserError(f"{what}: the model's files are not the ones registered; refusing to load it:\n  - "
                        + "\n  - ".join(lines[:20]) + "\nWhoever can write the artifact store may have changed "
                        "them: register the model again from a trusted run, or ask who changed them.",
                        param="model_uri")


def verified_download(model_uri: str, dst_path: str, version=None) -> str:
    """The model at ``model_uri`` downloaded into ``dst_path`` and checked against the manifest of its registered
    ``version`` (a ``ModelVersion``, or None when the URI names no registered version: nothing to check against,
    said in a warning). Returns the local model folder; nothing in it has been imported or read as a model."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_path)
    drop_bytecode(local)
    manifest = recorded_manifest(version) if version is not None else None
    if manifest is None:
        logger.warning("%s: no registered file digests to check it against (not a registered version, or registered "
                       "before digests were recorded); loading it unchecked", model_uri)
        return local
    check_files(local, manifest, model_uri)
    return local
