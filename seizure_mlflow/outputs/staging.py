"""Outputs: checked for writability before any work, folders written completely or not at all, nothing of the
user's deleted, and one training per output folder at a time."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from seizure_mlflow.errors import UserError
from seizure_mlflow.user_files import is_inside


OUTPUT_MARKER = ".seizure-mlflow-output"  # in every folder a command wrote: the command and its files


def _read_marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), list):
        return None
    return marker


def check_replaceable(destination: str | os.PathLike, command: str, force: bool = False,
                      param: str = "output") -> None:
    """Before any work: ``destination`` is new or empty, or an earlier output of ``command`` and ``force`` is given.

    A folder is an earlier output when it holds the package's marker naming ``command`` (a file named like one
    of the package's outputs is not enough). Replacing it removes only the files the marker lists: whatever
    the user put there is kept (see :func:`staged_folder`).
    """
    target = Path(destination)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file; give a folder", param=param)
    if not target.is_dir() or not any(target.iterdir()):
        return
    marker = _read_marker(target)
    if marker is None or marker.get("command") != command:
        raise UserError(f"{target} exists and is not empty, and is not an earlier output of {command}; choose a new "
                        "or empty folder (nothing in it was changed)", param=param)
    if not force:
        raise UserError(f"{target} holds an earlier output of {command}; choose a new folder, or give --force to "
                        "replace it (only the files it wrote are replaced; files you added are kept)", param=param)


@contextlib.contextmanager
def staged_folder(destination: str | os.PathLike, command: str, force: bool = False,
                  param: str = "output") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; move its content into place when the block ends.

    ``destination`` must pass :func:`check_replaceable`. When the block ends normally: a new or empty
    destination becomes the staged folder (one rename); an earlier output of ``command`` loses the files its
    marker lists and gains the new ones, and every other file in it stays. A marker naming ``command`` and the
    files written goes in with them. When the block raises, the temporary folder is removed and
    ``destination`` is left as it was.
    """
    destination = Path(destination)
    check_replaceable(destination, command, force, param)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() or p.is_symlink())
        (tmp / OUTPUT_MARKER).write_text(json.dumps({"command": command, "files": files}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if destination.is_dir() and not any(destination.iterdir()):
        destination.rmdir()
    if not destination.exists():
        os.replace(tmp, destination)
        return
    _replace_own_files(destination, tmp, _read_marker(destination) or {"files": []})


def _replace_own_files(destination: Path, staged: Path, old_marker: dict) -> None:
    """Remove the files ``old_marker`` lists from ``destination`` (and folders they leave empty), then move the
    staged files in; the marker last, so that an interruption leaves the old marker over what it lists."""
    root_real = os.path.realpath(destination)
    for name in old_marker["files"]:
        path = destination / name
        if is_inside(path, root_real) and (path.is_file() or path.is_symlink()):
            path.unlink()
    for name in sorted({str(Path(n).parent) for n in old_marker["files"]}, key=lambda n: -n.count("/")):
        folder = destination / name
        while folder != destination and is_inside(folder, root_real) and folder.is_dir() \
                and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    for path in sorted(staged.rglob("*")):
        if path.is_file() and path.name != OUTPUT_MARKER:
            target = destination / path.relative_to(staged)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    os.replace(staged / OUTPUT_MARKER, destination / OUTPUT_MARKER)
    shutil.rmtree(staged, ignore_errors=True)


def write_atomically(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """``write(fh)`` into a temporary file beside ``path``, flushed to disk, then renamed to ``path``: a reader sees
    the old file or the new one, never a part. On failure the temporary file is removed, ``path`` is as it was
    and the error is raised."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
