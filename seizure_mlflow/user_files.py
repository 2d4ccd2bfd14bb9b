"""Reading a file the user gave us: weights, configs, search spaces, truth and masks files.

Nothing in such a file runs as code, by construction:

* weights: ``.pkl`` files (the Detectron1/Caffe2 and model-zoo format: dicts of NumPy arrays) go through
  :class:`WeightsUnpickler`, which builds only dicts, lists, tuples, strings, numbers, NumPy arrays and dtypes
  and refuses any other type by name; ``.pth``/``.pyth`` files go through ``torch.load(weights_only=True)``;
* YAML (configs and every ``_BASE_`` they include, sweep spaces) is read with ``yaml.safe_load`` only; a
  Python tag (``!!python/object``, ``!!python/name``) is refused with the file and line;
* JSON is JSON: :func:`read_json` only adds a message naming the file and the parameter.

Every refusal is a :class:`~seizure_mlflow.errors.UserError` (exit 2) raised before the file's content is used.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import yaml

from seizure_mlflow.errors import ConfigError, UserError

WEIGHTS_SUFFIXES = (".pkl", ".pth", ".pyth", ".pt")

# What a weights pickle may build: NumPy arrays, dtypes and scalars, ordered dicts, and the byte-string helper
# that protocol-2 pickles of arrays use. Nothing here runs a command, opens a file or imports a module.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}
_ALLOWED_DTYPE_MODULES = ("numpy", "numpy.core.numerictypes", "numpy._core.numerictypes")


class WeightsUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals a weights file needs (see ``_ALLOWED_GLOBALS``)."""

    def __init__(self, file, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str):
        numpy_scalar_type = module in _ALLOWED_DTYPE_MODULES and name in _NUMPY_SCALAR_TYPES
        if (module, name) in _ALLOWED_GLOBALS or numpy_scalar_type:
            return super().find_class(module, name)
        raise UnsafeFileError(f"{self._source}: refused to load it: it asks for {module}.{name}, which a weights file "
                              "never holds (only dicts, lists, tuples, strings, numbers and NumPy arrays are allowed); "
                              "a pickle that names a function or class can run code as you. Use the file's author's "
                              "weights as a .pth state dict, or convert them where the file is trusted",
                              param="weights")


_NUMPY_SCALAR_TYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                       "uint32", "uint64", "bool_"}


class UnsafeFileError(UserError):
    """A file the user gave us asks for code to run (a pickle global, a Python YAML tag)."""


def read_weights_pickle(path: str | os.PathLike) -> dict:
    """The content of a ``.pkl`` weights file, built by :class:`WeightsUnpickler` (``latin1`` strings, as
    Detectron2 reads Python 2 pickles). Raises :class:`UnsafeFileError` for anything but data."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            data = WeightsUnpickler(fh, source, encoding="latin1").load()
    except UnsafeFileError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{source}: not a readable weights pickle ({type(exc).__name__}: {exc})",
                        param="weights") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: a weights pickle holds a dict of arrays, this one holds a {type(data).__name__}",
                        param="weights")
    return data


def check_weights_file(path: str | os.PathLike, param: str = "weights") -> None:
    """Before any run exists: a local weights file is one that loads as data. ``.pkl`` through
    :func:`read_weights_pickle`; torch formats with ``weights_only=True`` (tensors memory-mapped, not read). A file
    that passed is not read again while it is unchanged (the trainer's loader refuses a payload on its own)."""
    source = str(path)
    try:
        stat = os.stat(source)
    except OSError as exc:
        raise UserError(f"{source}: cannot read it ({exc.strerror or exc})", param=param) from None
    seen = (os.path.realpath(source), stat.st_mtime_ns, stat.st_size)
    if seen in _CHECKED_WEIGHTS:  # one read per file: a sweep builds a config at every dimension's edges
        return
    _check_weights_content(source, param)
    _CHECKED_WEIGHTS.add(seen)


_CHECKED_WEIGHTS: set[tuple[str, int, int]] = set()  # (real path, mtime, size) of weights files that passed


def fetch_weights(url: str, param: str = "weights") -> str:
    """Before any run exists: download weights given as a URL into the cache Detectron2's checkpointer reads
    (``PathManager``; a second call reads the cached file), and check them as :func:`check_weights_file` does.
    Returns the local path. An unreachable address is a :class:`UserError` naming it without credentials."""
    import urllib.parse

    from detectron2.utils.file_io import PathManager

    parsed = urllib.parse.urlsplit(url)
    shown = f"{parsed.scheme}://{parsed.hostname or ''}{':' + str(parsed.port) if parsed.port else ''}{parsed.path}"
    try:
        local = PathManager.get_local_path(url)
    except Exception as exc:  # iopath raises what urllib, requests or a handler raise: all mean "not fetched"
        raise UserError(f"could not download {shown} ({type(exc).__name__}: {str(exc)[:200]}); check the address and "
                        "the network, or download the file and give its path", param=param) from None
    check_weights_file(local, param=param)
    return local


def _check_weights_content(source: str, param: str) -> None:
    import torch

    if source.endswith(".pkl"):
        try:
            read_weights_pickle(source)
        except UserError as exc:
            raise type(exc)(exc.detail, param=param) from None
        return
    for mmap in (True, False):  # tensors memory-mapped, not read; an old (non-zip) torch file cannot be mapped
        try:
            torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
            return
        except pickle.UnpicklingError as exc:
            raise UnsafeFileError(f"{source}: refused to load it: it holds more than tensors and numbers "
                                  f"({str(exc).splitlines()[0][:200]}); a pickled object can run code as you",
                                  param=param) from None
        except RuntimeError as exc:
            if not mmap or ("mmap" not in str(exc) and "zip" not in str(exc)):
                raise UserError(f"{source}: not a readable weights file ({str(exc).splitlines()[0]})",
                                param=param) from None
        except (OSError, EOFError, ValueError) as exc:
            raise UserError(f"{source}: not a readable weights file ({exc})", param=param) from None


def read_yaml(path: str | os.PathLike, param: str) -> Any:
    """A YAML file through ``yaml.safe_load``; a Python tag or bad YAML is a :class:`UserError` naming the file."""
    source = str(path)
    try:
        content = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"{source}: cannot read it ({exc.strerror or exc})", param=param) from None
    try:
        return yaml.safe_load(content)
    except yaml.constructor.ConstructorError as exc:
        raise UnsafeFileError(_python_tag_message(source, exc), param=param) from None
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML ({exc})", param=param) from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply (lists or mappings inside each other thousands of times)",
                        param=param) from None


def _python_tag_message(source: str, exc: yaml.constructor.ConstructorError) -> str:
    mark = exc.problem_mark
    where = f" line {mark.line + 1}" if mark is not None else ""
    return (f"{source}{where}: refused: {exc.problem} (a Python tag builds objects and can run code as you; "
            "configs are plain YAML: write the value itself)")


def merge_config_file(cfg, path: str | os.PathLike) -> None:
    """Merge a Detectron2 YAML config (and its ``_BASE_`` chain) into ``cfg``, every file read with
    ``yaml.safe_load`` (fvcore would fall back to ``yaml.unsafe_load`` on a Python tag)."""
    try:
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        source = mark.name if mark is not None and mark.name not in (None, "<file>") else str(path)
        raise UnsafeFileError(_python_tag_message(source, exc), param="config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path}: not valid YAML ({exc})", param="config") from None


def read_json(path: str | os.PathLike, param: str) -> Any:
    """A JSON file (JSON builds only data); unreadable or malformed files are a :class:`UserError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({exc})", param=param) from None


def is_inside(path: str | os.PathLike, root_real: str) -> bool:
    """Whether ``path``, with every symbolic link and ``..`` resolved, lies inside the real folder ``root_real``."""
    real = os.path.realpath(path)
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)
