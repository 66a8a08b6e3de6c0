"""Typed errors. Every error a user can cause is a ``TaskVecError``.

Each subclass also derives from the matching built-in exception, so callers can
catch ``ValueError`` / ``FileNotFoundError`` / ``KeyError`` as usual. Messages are
one line: what is wrong, and how to fix it. The CLI prints them and exits with 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TaskVecError(Exception):
    """Base class of all errors caused by user input or files."""

    exit_code = 2


class UserInputError(TaskVecError, ValueError):
    """A bad argument or option value."""


class UnknownNameError(TaskVecError, LookupError):
    """A name (task, model, method, ...) that no registry knows."""


class TaskFileError(TaskVecError, ValueError):
    """A malformed task definition (YAML) or data file (JSON Lines)."""


class ModelLoadError(TaskVecError, OSError):
    """A model that cannot be found or loaded."""


class FileFormatError(TaskVecError, ValueError):
    """A file that is not a valid taskvec file (truncated, corrupted, wrong kind)."""


class UnsafeFileError(FileFormatError):
    """A file that would execute code when loaded (e.g. a pickle with a payload)."""


class FingerprintMismatchError(TaskVecError, ValueError):
    """A vector made for a different base model than the one given."""


class ShapeMismatchError(TaskVecError, ValueError):
    """Tensors whose names or shapes do not agree."""


class NonFiniteError(TaskVecError, ValueError):
    """NaN or Inf found where finite numbers are required."""


class MissingFileError(TaskVecError, FileNotFoundError):
    """A file or directory that does not exist."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest choice, or '' if none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Build the standard 'unknown X' error listing the known names."""
    choices = sorted(choices)
    return UnknownNameError(
        f'unknown {kind} "{name}".{did_you_mean(name, choices)} Known {kind}s: {", ".join(choices)}.'
    )


class TaskVecWarning(UserWarning):
    """Base class of taskvec's warnings (the CLI prints each as one line on stderr)."""


class SubsetWarning(TaskVecWarning):
    """A first-N subset whose label distribution is far from its split's."""


class ProtocolWarning(TaskVecWarning):
    """A selection (lambda, coefficient, layer) made on examples it should not see."""
