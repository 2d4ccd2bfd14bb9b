"""Errors that a user can act on.

Every problem with user input is raised as :class:`UserError` (or a subclass) before any work starts.
The command line prints its message, without a traceback, and exits with status 2.

A library function that rejects one of its parameters says so with ``param=``: the message then starts
with the parameter's name as the Python API spells it (``output_dir: ...``), and the command line words
it as its option (``--output-dir: ...``); see :meth:`UserError.worded_for`.
"""

from __future__ import annotations

from typing import Callable


class UserError(Exception):
    """A problem with the user's input: the message says what, where, and how to fix it.

    Args:
        message: what is wrong and how to fix it.
        param: the parameter at fault, if one is (its Python name, e.g. ``output_dir``).
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.param = param
        self.detail = message
        super().__init__(f"{param}: {message}" if param else message)

    def worded_for(self, name_of: Callable[[str], str]) -> str:
        """The message with the parameter named by ``name_of(param)`` (e.g. its command-line option)."""
        return f"{name_of(self.param)}: {self.detail}" if self.param else str(self)


class DatasetError(UserError):
    """A COCO file or its images are unusable."""


class ConfigError(UserError):
    """A training parameter or configuration value is invalid."""
