"""Errors that a user can act on.

Every problem with user input is raised as :class:`UserError` (or a subclass) before any work starts.
The command line prints its message, without a traceback, and exits with status 2.
"""


class UserError(Exception):
    """A problem with the user's input: the message says what, where, and how to fix it."""


class DatasetError(UserError):
    """A COCO file or its images are unusable."""


class ConfigError(UserError):
    """A training parameter or configuration value is invalid."""
