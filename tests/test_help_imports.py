"""`mdamerge COMMAND --help` must not wait for torch (issue 20: 2.5-5.3 s): the commands this
project keeps torch-free at import are checked in a fresh interpreter. (adapt, eval, bench and
zoo import their packages' torch modules at load time; benchmarks/help_latency.py times all.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PROBE = ("import sys\nsys.argv = ['mdamerge', *sys.argv[1:]]\nfrom mdamerge.cli import main\ntry:\n    main()\n"
         "except SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")


@pytest.mark.parametrize("command", ["merge", "methods", "lora", "analyze"])
def test_help_does_not_import_torch(command):
    proc = subprocess.run([sys.executable, "-c", PROBE, command, "--help"], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert "Usage: mdamerge" in proc.stdout and proc.stdout.strip().endswith("NO-TORCH"), proc.stdout + proc.stderr
