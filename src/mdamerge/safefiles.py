"""Reading small input files (configs, indexes) without ever blocking on a special file.

``open()`` of a FIFO waits for a writer -- in a system call, where even SIGTERM's Python
handler cannot run -- and a device can stream forever. Every input a command opens is
therefore checked to be a regular file first, and small text files are opened with
``O_NONBLOCK`` and checked again on the open descriptor (the path may change in between).
Torch-free, so config checks stay fast.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import MergeError

KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``"a FIFO (named pipe)"``)."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def check_regular_file(path: str | Path, what: str, error: type[MergeError] = MergeError) -> os.stat_result:
    """``os.stat`` of ``path`` (links followed), or one-line ``error`` unless it is a regular file."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError:  # an embedded NUL byte
        raise error(f"{what} {path!r} is not a valid path (it contains a NUL byte)") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is {file_kind(info.st_mode)}, not a regular file")
    return info


def is_special(path: str | Path) -> bool:
    """True for an existing path that is neither a regular file nor a folder (FIFO, socket, device)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_text_file(path: str | Path, what: str, error: type[MergeError] = MergeError) -> str:
    """The UTF-8 text of the regular file ``path``; a special file, an unreadable or non-UTF-8 file is ``error``."""
    check_regular_file(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped for a special file since the check above
            raise error(f"{what} {path} is {file_kind(mode)}, not a regular file")
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
