"""Exceptions raised by mdamerge.

Every user-facing failure is a :class:`MergeError` whose message is one line that
names the culprit (a path, a tensor name, a parameter), so the CLI can print it
as-is without a traceback.
"""

from __future__ import annotations

import difflib
import reprlib
import sys
from typing import Any, Iterable


class MergeError(ValueError):
    """A problem with the user's input: configuration, checkpoints or parameters."""


class ConfigError(MergeError):
    """The merge configuration is malformed or names something unknown."""


class CheckpointError(MergeError):
    """A checkpoint is missing, unreadable, or inconsistent with the others."""


class OutputError(MergeError):
    """The output folder cannot be written (disk full, read-only, not a directory, ...)."""


def warn(message: str) -> None:
    """Print one ``warning: ...`` line on stderr (the run goes on)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = _SHORT_REPR.maxtuple = 4
_SHORT_REPR.maxlevel = 2


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for error messages: a huge or deeply nested value (a YAML alias
    bomb) must not make the message itself expensive or long."""
    return _SHORT_REPR.repr(value)


def closest_hint(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def preview(items: Iterable[str], limit: int = 3) -> str:
    """Comma-separated first ``limit`` items, with a count of the rest."""
    items = sorted(items)
    head = ", ".join(repr(i) for i in items[:limit])
    rest = len(items) - limit
    return head + (f" and {rest} more" if rest > 0 else "")


def run_script(command, argv: list[str] | None = None) -> None:
    """Run a ``python -m`` command: a mistake in its input (a :class:`MergeError`) is one line,
    ``error: ...``, and exit status 2, as in the CLI."""
    try:
        command(argv)
    except MergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
