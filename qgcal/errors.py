"""Errors a user can cause, each carrying one line that names the thing and the fix.

The CLI prints ``qgcal: error: <message>`` for any :class:`QgcalError` and exits
non-zero; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ArtifactError",
    "ConfigError",
    "InputError",
    "QgcalError",
    "RunLockedError",
    "did_you_mean",
]


class QgcalError(Exception):
    """Base class: ``str(err)`` is the one-line message shown to the user."""

    exit_code = 1


class ConfigError(QgcalError, ValueError):
    """The YAML config is invalid or refers to something that does not exist."""

    exit_code = 2


class InputError(QgcalError):
    """An input ROOT file, tree or branch is missing or unreadable."""


class ArtifactError(QgcalError):
    """An intermediate artifact is missing, corrupt, or inconsistent with the config."""


class RunLockedError(QgcalError):
    """Another qgcal process is writing to the same output directory."""


def did_you_mean(name: str, candidates: Iterable[str], *, n: int = 3) -> str:
    """A short ``" (did you mean 'x'?)"`` suffix, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
