"""Typed, user-facing errors.

Every error a user can cause by what they pass in (a bad eps, a corrupt file, an
unknown name) is a ``RobustOptError`` whose message is one line naming the problem
and the fix. The command line prints that line and exits with code 2; library
callers can catch the type.
"""


class RobustOptError(ValueError):
    """A problem with the caller's input, explained in one line."""


class DataError(RobustOptError):
    """A dataset is missing, truncated, corrupt or malformed."""


class ModelFileError(RobustOptError):
    """A model file or run directory cannot be loaded safely."""


class InputError(RobustOptError):
    """Images, labels or settings passed to an attack or model are invalid."""
