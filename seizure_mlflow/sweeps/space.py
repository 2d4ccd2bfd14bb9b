"""A sweep's search space, from a small YAML file, checked before anything starts.

```yaml
lr: {type: loguniform, low: 0.001, high: 0.2}
ims_per_batch: {type: categorical, choices: [2, 4]}
SOLVER.MOMENTUM: {type: uniform, low: 0.8, high: 0.95}
MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE: {type: int, low: 32, high: 128, step: 32}
```

A name is a ``main`` parameter (a field of :class:`~seizure_mlflow.config.TrainParams`) or a Detectron2
config key (dotted, upper case), which reaches the run through ``opts``. Types: ``loguniform`` and
``uniform`` (floats), ``int`` (``step``, ``log``), ``categorical`` (``choices``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seizure_mlflow.errors import UserError
from seizure_mlflow.lazy.network import lazy_spec

KINDS = ("loguniform", "uniform", "int", "categorical")


@dataclass(frozen=True)
class Dimension:
    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    @property
    def is_config_key(self) -> bool:
        return "." in self.name or self.name.isupper()

    def suggest(self, trial) -> Any:
        if self.kind == "loguniform":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def grid(self) -> list:
        """Values for the grid sampler: the choices, every step of an int range, else an error."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise UserError(f"{self.name}: a grid needs categorical or int dimensions; give {self.name} as "
                        f"{{type: categorical, choices: [...]}}", param="space")


def read_space(path: str | Path, base_config=None) -> list[Dimension]:
    """The dimensions of a space file, every one checked; ``base_config`` (a Detectron2 config) checks
    that config keys exist (a LazyConfig's lower-case keys are checked when every edge is built, see
    :func:`check_every_edge`)."""
    from seizure_mlflow.config import TrainParams, searchable_params
    from seizure_mlflow.user_files import read_yaml

    where = str(path)
    document = read_yaml(path, param="space")
    if not isinstance(document, dict) or not document:
        raise UserError(f"{where}: expected a mapping of parameter name -> {{type: ..., ...}}", param="space")
    fields = {f.name: f for f in dataclasses.fields(TrainParams)}
    dimensions = []
    for name, spec in document.items():
        name = str(name)
        is_key = "." in name or name.isupper()
        if not is_key and name not in fields:
            raise UserError(f"{where}: {name!r} is not a main parameter or a Detectron2 config key (main "
                            f"parameters: {', '.join(searchable_params())})", param="space")
        if not is_key and name not in searchable_params():
            raise UserError(f"{where}: {name} cannot be searched over (it says where data and outputs are, how the "
                            "run is recorded or how its processes are laid out); searchable main parameters: "
                            f"{', '.join(searchable_params())}", param="space")
        lazy_key = name[:1].islower() and base_config is not None and lazy_spec(base_config) is not None
        if is_key and base_config is not None and not lazy_key and not _has_key(base_config, name):
            raise UserError(f"{where}: {name} is not a key of the Detectron2 config", param="space")
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise UserError(f"{where}: {name} needs a type, one of {', '.join(KINDS)}; got {spec!r}", param="space")
        dimensions.append(_dimension(where, name, spec))
    return dimensions


def _dimension(where: str, name: str, spec: dict) -> Dimension:
    kind = spec["type"]
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: {name}: categorical needs a non-empty list of choices", param="space")
        return Dimension(name, kind, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise UserError(f"{where}: {name}: {kind} needs numbers low and high; got low={low!r}, high={high!r}",
                        param="space")
    if not low < high:
        raise UserError(f"{where}: {name}: empty range (low {low} is not below high {high})", param="space")
    log = kind == "loguniform" or bool(spec.get("log", False))
    if log and low <= 0:
        raise UserError(f"{where}: {name}: a log-uniform range must be positive; got low={low}", param="space")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}: {name}: int needs whole numbers; got low={low}, high={high}", param="space")
    step = spec.get("step")
    if step is not None and (kind != "int" or not _is_whole(step) or step < 1 or step > high - low):
        raise UserError(f"{where}: {name}: step must be a whole number from 1 to high - low ({high - low:g}) of an "
                        f"int range; got {step!r}" + ("" if kind == "int" else f" on a {kind} range, which has no step"),
                        param="space")
    if kind == "int" and log and step not in (None, 1):
        raise UserError(f"{where}: {name}: a log int range takes no step (Optuna's rule); got step={step!r}",
                        param="space")
    return Dimension(name, kind, low=low, high=high, step=step, log=log)


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
        float(value).is_integer()


def _has_key(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return False
        node = node[part]
    return True


def apply(params, dimensions: list[Dimension], values: dict[str, Any]):
    """``params`` with a trial's values: main parameters replaced, config keys appended to ``opts``."""
    changes = {d.name: values[d.name] for d in dimensions if not d.is_config_key}
    opts = list(params.opts)
    for d in dimensions:
        if d.is_config_key:
            opts += [d.name, repr(values[d.name]) if isinstance(values[d.name], str) else str(values[d.name])]
    return params.replace(**changes, opts=tuple(opts))


def values_to_check(dimension: Dimension) -> list:
    """The values of a dimension that a sweep may try at its edges: its bounds, or every choice."""
    if dimension.kind == "categorical":
        return list(dimension.choices)
    if dimension.kind == "int":
        return [int(dimension.low), int(dimension.high)]
    return [dimension.low, dimension.high]


def check_every_edge(where: str, base, dimensions: list[Dimension], num_classes: int) -> None:
    """Build the run's config at every dimension's bounds and choices (one dimension at a time, the others at the
    base values), so that a value no trial could train with (``device: cuda`` without a GPU, a batch size the
    processes cannot share) is refused before any study, storage file or run exists."""
    from seizure_mlflow.config import build_config

    for d in dimensions:
        for value in values_to_check(d):
            try:
                build_config(apply(base, [d], {d.name: value}), num_classes=num_classes, output_dir="")
            except UserError as exc:
                raise UserError(f"{where}: {d.name}={value!r} cannot be trained with: {exc.detail}",
                                param="space") from None
