"""A registered model proves it is the one registered: a file changed in the artifact store after registration is
refused, by name, before it is imported or read (issue 35's model integrity)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from conftest import private_tracking_store, tiny_params
from seizure_mlflow.cli import main

NAME = "integrity"
pytestmark = pytest.mark.slow  # a training run and a model load per case


@pytest.fixture(scope="module")
def registered(tiny_data, tmp_path_factory):
    from seizure_mlflow.commands.train import run_training

    root = tmp_path_factory.mktemp("integrity")
    with private_tracking_store(root):
        result = run_training(tiny_params(tiny_data, root, model_name=NAME, max_iter=4, eval_period=2))
        client = MlflowClient()
        version = client.get_model_version(NAME, result.model_version)
        model_id = version.source.removeprefix("models:/")
        folder = Path(urlparse(client.get_logged_model(model_id).artifact_location).path)
        yield {"root": root, "folder": folder, "version": version, "run_id": result.run_id}


def _predict(registered, tmp_path, uri: str = f"models:/{NAME}@champion") -> int:
    image = next(Path(registered["root"]).rglob("*.png"))
    return main(["predict", "--model-uri", uri, "--input", str(image), "--output", str(tmp_path / "out.json"),
                 "--force"])


PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('ran')\n"


@pytest.mark.parametrize("relative,change", [
    ("pyfunc_entry.py", "prefix"),
    ("code/seizure_mlflow/registry/model.py", "append"),
    ("code/seizure_mlflow/inference/predictor.py", "append"),
    ("artifacts/config.yaml", "append"),
    ("artifacts/model_weights.pt", "flip"),
    ("artifacts/categories.json", "replace"),
    ("MLmodel", "append"),
    ("requirements.txt", "append"),
    ("code/seizure_mlflow/sitecustomize.py", "add"),
    ("artifacts/categories.json", "remove"),
])
def test_a_model_changed_after_registration_is_refused_before_its_files_are_used(registered, tmp_path, capsys,
                                                                                 relative, change):
    path, marker = registered["folder"] / relative, tmp_path / "payload-ran"
    backup = tmp_path / "backup"
    if path.exists():
        shutil.copy(path, backup)
    payload = PAYLOAD.format(marker=str(marker))
    try:
        if change == "prefix":
            path.write_text(payload + path.read_text())
        elif change == "append":
            path.write_text(path.read_text() + "\n# " + payload if path.suffix != ".py" else path.read_text() + payload)
        elif change == "flip":
            data = bytearray(path.read_bytes())
            data[-20] ^= 0xFF
            path.write_bytes(bytes(data))
        elif change == "replace":
            path.write_text(json.dumps([{"id": 1, "name": "intruder"}]))
        elif change == "add":
            path.write_text(payload)
        elif change == "remove":
            path.unlink()
        for uri in (f"models:/{NAME}@champion", f"runs:/{registered['run_id']}/model"):
            assert _predict(registered, tmp_path, uri) == 2, uri
            err = capsys.readouterr().err
            assert relative in err and "not the ones registered" in err, err
            assert not marker.exists(), "the changed file ran"
            assert not (tmp_path / "out.json").exists()
    finally:
        if backup.exists():
            shutil.copy(backup, path)
        elif path.exists():
            path.unlink()
    assert _predict(registered, tmp_path) == 0, capsys.readouterr().err  # restored: loads again


def test_the_manifest_names_every_file_of_the_model_and_its_own_digest(registered):
    from seizure_mlflow.registry.integrity import MANIFEST_DIGEST_TAG, MANIFEST_TAG, manifest_digest

    tags = registered["version"].tags
    manifest = json.loads(tags[MANIFEST_TAG])
    assert {"pyfunc_entry.py", "MLmodel", "artifacts/config.yaml", "artifacts/model_weights.pt", "requirements.txt",
            "code/seizure_mlflow/registry/model.py"} <= set(manifest)
    assert "model_card.md" not in manifest and tags[MANIFEST_DIGEST_TAG] == manifest_digest(manifest)


def test_a_damaged_manifest_is_refused(registered, tmp_path, capsys):
    from seizure_mlflow.registry.integrity import MANIFEST_TAG

    client, version = MlflowClient(), registered["version"]
    original = version.tags[MANIFEST_TAG]
    manifest = json.loads(original)
    manifest["artifacts/config.yaml"] = "0" * 64  # someone with the registry's keys too: the manifest's own digest says so
    client.set_model_version_tag(NAME, version.version, MANIFEST_TAG, json.dumps(manifest))
    try:
        assert _predict(registered, tmp_path) == 2
        assert "recorded file digests are damaged" in capsys.readouterr().err
    finally:
        client.set_model_version_tag(NAME, version.version, MANIFEST_TAG, original)


def test_byte_code_beside_the_model_is_never_used(registered, tmp_path, capsys):
    """Python writes __pycache__ beside a model loaded in place; a .pyc compiled to skip its source check would be
    imported instead of the checked source. The downloaded copy keeps none."""
    import py_compile
    import sys

    marker = tmp_path / "payload-ran"
    source = tmp_path / "pyfunc_entry.py"
    source.write_text(PAYLOAD.format(marker=str(marker)))
    cache = registered["folder"] / "__pycache__"
    target = cache / f"pyfunc_entry.{sys.implementation.cache_tag}.pyc"
    py_compile.compile(str(source), cfile=str(target), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    try:
        assert _predict(registered, tmp_path) == 0, capsys.readouterr().err
        assert not marker.exists(), "the cached byte code ran"
    finally:
        import shutil

        shutil.rmtree(cache)
