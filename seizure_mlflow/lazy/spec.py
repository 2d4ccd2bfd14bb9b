"""A LazyConfig as plain data, and plain data back to objects (only from named, allowed places).

A Detectron2 LazyConfig is Python: its values may be classes, functions, dataclass instances and lambdas. The
package runs a config only where a run is planned (see :mod:`seizure_mlflow.lazy.sources`), and from then on
carries it as a *spec*: JSON-able dicts and lists in which every object to build is a dict with a ``_target_``
naming its class or function as ``module.name``. A spec is what the training processes, the logged params and
the registered model hold; building from it (:func:`build`) imports only the ``_target_``\\ s whose module is
on the caller's allow-list, so a changed spec cannot name ``os.system`` or an unpickler.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from seizure_mlflow.errors import ConfigError

TARGET = "_target_"


def to_spec(node: Any, key: str = "") -> Any:
    """``node`` (a LazyConfig node, resolved) as plain data. A norm given as code (a function or lambda that
    makes a normalisation layer, as the new baselines' heads do) becomes the name Detectron2's ``get_norm``
    gives the same layer; any other value that is code is a :class:`ConfigError` naming its key."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig):
        structured = OmegaConf.get_type(node)
        items = {name: node[name] for name in node}  # node[name] resolves ${...} interpolations
        if dataclasses.is_dataclass(structured) and structured is not dict:
            items = {TARGET: _name_of(structured), **items}
        return {name: to_spec(value, _join(key, name)) for name, value in items.items()} if items else {}
    if isinstance(node, dict):
        return {str(name): to_spec(value, _join(key, str(name))) for name, value in node.items()}
    if isinstance(node, (ListConfig, list, tuple)):
        return [to_spec(value, f"{key}[{i}]") for i, value in enumerate(node)]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
        return {TARGET: _name_of(type(node)), **{n: to_spec(v, _join(key, n)) for n, v in fields.items()}}
    if key.rsplit(".", 1)[-1] == TARGET and callable(node):
        return _name_of(node)
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if callable(node) and key.endswith("norm"):
        return _norm_name(node, key)
    raise ConfigError(f"config key {key} holds Python code or an object ({node!r}) that cannot be kept as data; "
                      "write it as a LazyCall (L(...)(...)), a norm name, or a plain value")


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _name_of(target: Any) -> str:
    from detectron2.utils.registry import _convert_target_to_string

    return _convert_target_to_string(target)


def _norm_name(make_norm: Any, key: str) -> str:
    """The ``get_norm`` name whose layer is the one ``make_norm`` makes (same class, same settings)."""
    from detectron2.layers.batch_norm import get_norm

    made = make_norm(64)
    for name in ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN"):
        reference = get_norm(name, 64)
        if type(reference) is type(made) and vars(reference).get("_stats_mode") == vars(made).get("_stats_mode"):
            return name
    raise ConfigError(f"config key {key} is a function making {type(made).__name__}, which no norm name of "
                      "Detectron2 makes; give a norm name (BN, SyncBN, FrozenBN, GN, naiveSyncBN_N, LN)")


def targets(spec: Any) -> Iterable[str]:
    """Every ``_target_`` named in ``spec``."""
    if isinstance(spec, dict):
        if isinstance(spec.get(TARGET), str):
            yield spec[TARGET]
        for value in spec.values():
            yield from targets(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from targets(value)


def check_targets(spec: Any, allowed: tuple[str, ...], what: str) -> None:
    """Every ``_target_`` of ``spec`` is in a module under one of ``allowed`` (``"detectron2.modeling."`` ...)."""
    for target in targets(spec):
        if not any(target.startswith(prefix) for prefix in allowed):
            raise ConfigError(f"{what} names {target!r}, which is outside what it may build "
                              f"({', '.join(p.rstrip('.') for p in allowed)}); it is refused unbuilt")


def build(spec: Any, allowed: tuple[str, ...], what: str) -> Any:
    """The objects ``spec`` describes, once every ``_target_`` has passed :func:`check_targets`."""
    from detectron2.config import instantiate

    check_targets(spec, allowed, what)
    return instantiate(spec)
