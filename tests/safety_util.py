"""Helpers shared by the tests/test_safety_*.py files: run the CLI, hash a folder tree."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mdamerge.cli import main


def write_config(toy, path: Path, **extra) -> Path:
    cfg = {"method": "task_arithmetic", "base_model": str(toy["base_dir"]), "models": [str(p) for p in toy["ft_dirs"]],
           **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_merge(*args):
    """``mdamerge merge ARGS --quiet`` in-process; returns the click result."""
    return CliRunner().invoke(main, ["merge", *map(str, args), "--quiet"])


def one_error(result) -> str:
    """The run failed with exit status 2 and printed exactly one line, ``error: ...``."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every file (content hash), link (target) and folder under ``root``, except ``skip``."""
    out = {}
    pending = [Path(root)]  # a stack, not os.walk: Python 3.11's os.walk recurses (1100 nested folders)
    while pending:
        here = pending.pop()
        if skip is not None and here == skip:
            continue
        for path in sorted(here.iterdir()):
            if path == skip:
                continue
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
                pending.append(path)
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "special"
    return out


def remove_deep_tree(top: Path) -> None:
    """Remove a folder tree without recursion: ``shutil.rmtree`` (and pytest's clean-up of old
    tmp folders) recurse once per level and fail on 1100 nested folders."""
    folders, pending = [], [Path(top)]
    while pending:
        folder = pending.pop()
        folders.append(folder)
        pending.extend(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    for folder in reversed(folders):
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler for a test that sends SIGINT: a shell starts background
    jobs (`make test &`, nohup) with SIGINT ignored, and Python then installs none."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
