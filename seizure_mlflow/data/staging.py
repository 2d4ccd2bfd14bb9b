"""Outputs: checked for writability before any work, and folders written completely or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from seizure_mlflow.errors import UserError


@contextlib.contextmanager
def staged_folder(destination: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``.

    When the block ends normally the folder replaces ``destination`` (whatever was there is removed);
    when it raises, the temporary folder is removed and ``destination`` is left as it was.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if destination.exists():
        shutil.rmtree(destination)
    os.replace(tmp, destination)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _check_can_create_in(folder: Path, target: Path, param: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{target} cannot be written: {folder} is a file, not a folder", param=param)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"{target} cannot be written ({folder}: {exc.strerror}); choose a writable location",
                        param=param) from None


def check_output_folder(path: str | os.PathLike, param: str) -> None:
    """Before any work: ``path`` is a folder that exists or can be made, and files can be written in it."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; give a folder", param=param)
    _check_can_create_in(target if target.is_dir() else _nearest_existing(target), target, param)


def check_output_file(path: str | os.PathLike, param: str) -> None:
    """Before any work: ``path`` is a file that can be written (its folder exists or can be made)."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target} is a folder; give a file name", param=param)
    _check_can_create_in(_nearest_existing(target.parent), target, param)
