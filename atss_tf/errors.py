"""The project's own exceptions: bad input named in one line.

Every error raised for something a user supplied (a config, a data file, a
checkpoint, an argument) derives from :class:`AtssError`; its message names
the file, key or value and says what to do. The command line prints it as one
line and exits with :attr:`AtssError.exit_code` (2 for usage and config
errors, 1 for the rest). They also derive from ``ValueError`` so library
callers may catch them as such.
"""

from __future__ import annotations


class AtssError(ValueError):
    """Base class of user-facing errors; ``exit_code`` 1 (runtime)."""

    exit_code = 1


class UsageError(AtssError):
    """A command-line argument is invalid (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value or key is invalid; the message names it."""


class DataError(AtssError):
    """Invalid input data; the message names the file and the field or item."""


class CheckpointError(AtssError):
    """A checkpoint or model file cannot be read or written; the message names it."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (TensorFlow and h5py
    messages run over many lines), or its type name."""
    message = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
