"""Options declared once: a command's request type is the one source of its command line and its MLproject.

A request is a frozen dataclass whose fields are declared with :func:`option`: the field's name is the
parameter (``batch_size``), its type says how text is read (``int``, ``float``, ``bool``, ``str``, ``int | None``
for "empty means unset", ``tuple[str, ...]`` for a list of words), and the option carries the help text, the
:class:`Rule` the value must follow, the choices, the flag when it is not ``--batch-size``, and whether the
MLproject entry point exposes it. From that one declaration:

* :func:`add_options` builds the argparse options (every number read by :func:`read_number`: ASCII digits,
  finite values), and :func:`request_from_args` makes the request from the parsed arguments;
* :func:`check_options` checks every field's rule and choices (call it from ``__post_init__``), so a request
  made in Python is checked like one made on the command line, with a message naming the option;
* :func:`mlproject_parameters` lists what an MLproject entry point declares and passes (see
  :mod:`seizure_mlflow.commands.entry_points`, which writes the ``MLproject`` file).

Pure Python: the command line is built before torch or MLflow is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from dataclasses import dataclass
from typing import Any, Callable

from seizure_mlflow.errors import UserError


@dataclass(frozen=True)
class Rule:
    """What a value must be: ``holds(value)`` and the words for it (``"a positive integer"``)."""

    holds: Callable[[Any], bool]
    expected: str

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.holds(value))
        except (TypeError, ValueError):
            return False


def is_int(value: Any) -> bool:
    """An integer, and not a bool (JSON's and YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


POSITIVE_INT = Rule(lambda v: is_int(v) and v > 0, "a positive integer")
NON_NEGATIVE_INT = Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0")
POSITIVE_NUMBER = Rule(lambda v: is_number(v) and v > 0, "a positive number")
NON_NEGATIVE_NUMBER = Rule(lambda v: is_number(v) and v >= 0, "a number >= 0")
SEED = Rule(lambda v: is_int(v) and 0 <= v < 2**31, "an integer from 0 to 2**31 - 1")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
FRACTION = Rule(lambda v: is_number(v) and 0 < v < 1, "a number between 0 and 1")
SCORE = Rule(lambda v: is_number(v) and 0 <= v <= 1, "a score from 0 to 1")


def at_least(minimum: int | float) -> Rule:
    """``>= minimum`` (the words a command's count or number options use)."""
    return Rule(lambda v: is_number(v) and v >= minimum, f">= {minimum}")


def read_number(kind: type, text: str) -> int | float:
    """``text`` as an ``int`` or a ``float``, taking only what a person means by a number: ASCII digits
    (``int()`` also takes ``"٣"``) and finite values (``float()`` also takes ``"nan"``, ``"inf"``, ``"1e999"``).
    Raises ``ValueError("must be ..., got '...'")``. The one number parser of every command's options."""
    words = "an integer" if kind is int else "a number"
    stripped = str(text).strip()
    try:
        value = kind(stripped) if stripped.isascii() and len(stripped) <= 400 else None
    except ValueError:
        value = None
    if value is None:
        raise ValueError(f"must be {words}, got {text!r}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text!r}")
    return value


TRUE_FALSE = ("true", "false")


def read_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value not in TRUE_FALSE:
        raise ValueError(f"must be true or false, got {text!r}")
    return value == "true"


@dataclass(frozen=True)
class Option:
    """How a request field appears on the command line and in the MLproject (see :func:`option`)."""

    help: str
    rule: Rule | None = None
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    mlproject: bool = True
    hidden: bool = False
    required: bool = False
    metavar: str | None = None


def option(default: Any, help: str, *, rule: Rule | None = None, choices: tuple[str, ...] | None = None,
           flag: str | None = None, mlproject: bool = True, hidden: bool = False, required: bool = False,
           metavar: str | None = None, **metadata: Any) -> Any:
    """A request field that is a command-line option (``--name``, or ``flag``) and, with ``mlproject``, a
    parameter of the command's MLproject entry point. ``default`` may be a callable (a default factory);
    a ``required`` option has no default on the command line. ``metadata`` is kept beside the option (a
    training parameter's Detectron2 keys, whether a sweep may search it)."""
    spec = Option(help=help, rule=rule, choices=choices, flag=flag, mlproject=mlproject, hidden=hidden,
                  required=required, metavar=metavar)
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return dataclasses.field(metadata={"option": spec, **metadata}, **factory)


def option_fields(request_type: type) -> tuple[dataclasses.Field, ...]:
    """The fields of ``request_type`` that are options, in declaration order."""
    return tuple(f for f in dataclasses.fields(request_type) if "option" in f.metadata)


def spec_of(f: dataclasses.Field) -> Option:
    return f.metadata["option"]


def flag_of(f: dataclasses.Field) -> str:
    """``--batch-size`` for ``batch_size`` (or the option's own ``flag``)."""
    return spec_of(f).flag or "--" + f.name.replace("_", "-")


def kind_of(f: dataclasses.Field) -> str:
    """``str``, ``int``, ``float``, ``bool``, ``int?``/``float?`` (empty text: None) or ``words`` (a tuple)."""
    text = str(f.type).replace(" ", "")
    if text.startswith("tuple"):
        return "words"
    if text.endswith("|None"):
        return text.removesuffix("|None") + "?"
    return text


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def text_of(value: Any) -> str:
    """A value as a command line or ``mlflow run -P`` writes it (``0.02``, ``false``, ``""``, ``"A B"``)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return shlex.join(str(v) for v in value)
    return str(value)


def _words(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"must be words (quoted where they hold spaces): {exc}, got {text!r}") from None


_READERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": lambda text: read_number(int, text),
    "float": lambda text: read_number(float, text),
    "bool": read_bool,
    "int?": lambda text: None if str(text).strip() == "" else read_number(int, text),
    "float?": lambda text: None if str(text).strip() == "" else read_number(float, text),
    "words": _words,
}


def read_text(f: dataclasses.Field, text: str) -> Any:
    """A field's value from its text. Raises ``ValueError("must be ...")``."""
    return _READERS[kind_of(f)](text)


def argparse_type(f: dataclasses.Field) -> Callable[[str], Any]:
    """The argparse ``type`` of a field: :func:`read_text`, its error as argparse's."""
    read = _READERS[kind_of(f)]

    def parse(text: str) -> Any:
        try:
            return read(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind_of(f).rstrip("?")
    return parse


def add_options(parser: argparse.ArgumentParser, request_type: type, as_text: bool = False) -> None:
    """One argparse option per option field of ``request_type``.

    A ``bool`` takes ``--flag`` alone (true) or ``--flag true|false`` (what an MLproject passes); a ``words``
    field takes one or more words (``--ratios 0.6 0.2 0.2`` or ``--ratios "0.6 0.2 0.2"``). Values are read by
    argparse (an error names the option), unless ``as_text``: then each option keeps its text, and
    :func:`read_text` reads it later (``TrainParams``, whose messages name the MLproject parameter, as ``mlflow run
    -P`` users know it)."""
    for f in option_fields(request_type):
        spec, kind = spec_of(f), kind_of(f)
        extra: dict[str, Any] = {"nargs": "?", "const": "true" if as_text else True} if kind == "bool" else {}
        if kind == "words" and not as_text:
            extra["nargs"] = "+"
        if spec.required:
            extra["required"] = True
        else:
            extra["default"] = text_of(default_of(f)) if as_text else default_of(f)
        parser.add_argument(flag_of(f), dest=f.name, type=None if as_text else argparse_type(f), metavar=spec.metavar,
                            choices=spec.choices if as_text else None,
                            help=argparse.SUPPRESS if spec.hidden else spec.help, **extra)


def request_from_args(request_type: type, args: argparse.Namespace, **fields: Any) -> Any:
    """The request from parsed arguments (every option field of ``request_type``), plus ``fields``."""
    values = {}
    for f in option_fields(request_type):
        value = getattr(args, f.name)
        if kind_of(f) == "words" and isinstance(value, list):  # nargs="+": each word may hold several
            value = tuple(word for item in value for word in (item if isinstance(item, tuple) else (item,)))
        values[f.name] = value
    return request_type(**values, **fields)


def check_options(request: Any) -> None:
    """Every option field's choices and rule; raises :class:`UserError` naming the option (call from
    ``__post_init__``)."""
    for f in option_fields(type(request)):
        spec, value = spec_of(f), getattr(request, f.name)
        if value is None and kind_of(f).endswith("?"):
            continue
        if spec.choices is not None and value not in spec.choices:
            raise UserError(f"must be one of {', '.join(spec.choices)}; got {value!r}", param=f.name)
        if spec.rule is not None and not spec.rule(value):
            raise UserError(f"must be {spec.rule.expected}, got {value!r}", param=f.name)


def mlproject_parameters(request_type: type, only: tuple[str, ...] | None = None,
                         defaults: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    """``[(parameter, flag, default text or None)]``: the option fields an MLproject entry point exposes (the
    ``mlproject`` ones, or the names in ``only``), with ``defaults`` overriding some. The parameter is named as
    its flag (``--sampler-seed``: ``sampler_seed``); a required option without such a default has none."""
    defaults = defaults or {}
    chosen = [f for f in option_fields(request_type) if (f.name in only if only is not None else spec_of(f).mlproject)]
    rows = []
    for f in chosen:
        default = defaults.get(f.name, None if spec_of(f).required else default_of(f))
        rows.append((flag_of(f)[2:].replace("-", "_"), flag_of(f), None if default is None and spec_of(f).required
                     else text_of(default)))
    return rows
