"""`mdamerge COMMAND --help` must not wait for torch (issue 20: 2.5-5.3 s): every command is
checked in a fresh interpreter (benchmarks/help_latency.py times them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PROBE = ("import sys\nsys.argv = ['mdamerge', *sys.argv[1:]]\nfrom mdamerge.cli import main\ntry:\n    main()\n"
         "except SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")


@pytest.mark.parametrize("command", ["merge", "methods", "lora", "analyze", "adapt", "eval", "bench", "zoo",
                                     "zoo build", "zoo list"])
def test_help_does_not_import_torch(command):
    proc = subprocess.run([sys.executable, "-c", PROBE, *command.split(), "--help"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert "Usage: mdamerge" in proc.stdout and proc.stdout.strip().endswith("NO-TORCH"), proc.stdout + proc.stderr
