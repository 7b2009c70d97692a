"""SIGTERM handled like SIGINT, for every command that writes an output.

Both unwind the command -- so the atomic output folder it was writing is removed -- and
end in one line, ``error: interrupted by SIGTERM; ...``, with exit status 2 (see
docs/safety.md). Lives outside :mod:`mdamerge.cli` so that command modules can use it
at import time without importing the CLI.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from pathlib import Path
from typing import Callable

from .errors import MergeError


@contextlib.contextmanager
def interrupts_as_errors(out_dir=None):
    """SIGTERM is handled like SIGINT: both unwind the run, so its partial output is removed,
    and end in one :class:`MergeError` naming ``out_dir`` (when there is one)."""
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except KeyboardInterrupt as exc:
        name = "SIGTERM" if str(exc) == "SIGTERM" else "SIGINT"
        what = f"the partial output of {out_dir} was removed" if out_dir is not None else "partial outputs were removed"
        raise MergeError(f"interrupted by {name}; {what}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def interruptible(output: str | Callable[[dict], str | Path | None] | None = None):
    """Decorator for a click command callback: run it under :func:`interrupts_as_errors`.

    ``output`` names the option holding the output path (e.g. ``"out_dir"``), or is a
    function of the callback's keyword arguments returning it.
    """
    def decorate(callback):
        @functools.wraps(callback)
        def run(*args, **kwargs):
            out = output(kwargs) if callable(output) else kwargs.get(output) if output else None
            with interrupts_as_errors(out):
                return callback(*args, **kwargs)
        return run
    return decorate
