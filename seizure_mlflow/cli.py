"""Command line: ``seizure-mlflow SUBCOMMAND`` (also ``python -m seizure_mlflow``).

A thin layer: it builds one subcommand per :data:`~seizure_mlflow.commands.entry_points.COMMANDS` entry from
its request type's options, makes the request, calls the command's function, and maps errors to exit codes:
0 success, 1 a failure during work (with its message), 2 bad input found before any work started.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
import threading
from typing import Sequence

from seizure_mlflow.errors import UserError

logger = logging.getLogger("seizure_mlflow")

_OPTION_OF_PARAM = {"input_dir": "--input"}  # library parameter names whose option differs


def cli_flag(param: str) -> str:
    """The command-line option of a parameter: ``output_dir`` -> ``--output-dir``."""
    return "--" + param.replace("_", "-")


def cli_option(param: str) -> str:
    """How the command line names a library function's parameter in an error message."""
    return _OPTION_OF_PARAM.get(param) or cli_flag(param)


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per command, its options built from its request type (and ``TrainParams``'s where the
    command trains)."""
    from seizure_mlflow.commands.entry_points import COMMANDS
    from seizure_mlflow.config import TrainParams
    from seizure_mlflow.options import add_options

    parser = argparse.ArgumentParser(prog="seizure-mlflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for command in COMMANDS:  # a training command's own options may not share a name with TrainParams' (one dest)
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        add_options(p, command.request, as_text=command.request is TrainParams)
        if command.train_options:
            add_options(p, TrainParams, as_text=True)
        p.set_defaults(command=command)
    return parser


def request_of(args: argparse.Namespace):
    """The parsed command's request (a training command's options as its ``base`` :class:`TrainParams`)."""
    from seizure_mlflow.config import TrainParams, param_fields, params_from_text
    from seizure_mlflow.options import request_from_args

    command = args.command
    if command.request is TrainParams or command.train_options:  # training options are read from their text
        params = params_from_text({f.name: getattr(args, f.name) for f in param_fields()})
        return params if command.request is TrainParams else request_from_args(command.request, args, base=params)
    return request_from_args(command.request, args)


REQUIRED_MODULES = ("torch", "detectron2", "mlflow", "cv2", "pycocotools", "av")


def missing_dependencies() -> list[str]:
    """The project's dependencies that this Python cannot import (found without importing them)."""
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    missing = missing_dependencies()
    if missing:
        print(f"error: this Python ({sys.executable}) cannot import {', '.join(missing)}: it is not the project's "
              "environment. Run `make setup`, then `source .venv/bin/activate` (or call .venv/bin/seizure-mlflow); "
              "`mlflow run . --env-manager local` runs its entry points with the `python` on PATH, so activate "
              "the venv first.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the error (or --help): its status, returned
        return exc.code if isinstance(exc.code, int) else 2
    on_main_thread = threading.current_thread() is threading.main_thread()  # where Python delivers signals
    # a SIGTERM (a scheduler, `kill`) ends a command's runs as Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        from seizure_mlflow.tracking.stores import bound_http_retries, check_tracking_server

        request = request_of(args)
        bound_http_retries()
        if getattr(request, "uses_tracking_server", False):
            check_tracking_server()
        return args.command.runner()(request)
    except UserError as exc:
        print(f"error: {exc.worded_for(cli_option)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"error: stopped ({exc or 'Ctrl-C'}); its MLflow runs ended KILLED. {args.command.after_interrupt}",
              file=sys.stderr)
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: a KeyboardInterrupt, which every command's runs end KILLED on (training stops after its
    iteration with a checkpoint: its own handler replaces this one while it trains)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    raise SystemExit(main())
