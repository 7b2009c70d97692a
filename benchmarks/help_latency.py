"""Wall time of ``mdamerge <command> --help`` for every sub-command (goal: < 0.5 s), and whether it imports torch.

    python benchmarks/help_latency.py [--repeat 3]

Each measurement is a fresh ``python -m mdamerge`` process; the best of ``--repeat`` runs is
printed (the others measure the machine's load), with the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = ("import sys, runpy\nsys.argv = ['mdamerge', *sys.argv[1:]]\ntry:\n    runpy.run_module('mdamerge', run_name='__main__')\n"
         "except SystemExit:\n    pass\nprint('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n")


def commands() -> list[str]:
    sys.path.insert(0, str(REPO / "src"))
    from mdamerge.cli import main

    return sorted(main.list_commands(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    print(f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("| command | best of runs (s) | torch imported |\n|---|---|---|")
    for name in commands():
        times, torch_line = [], ""
        for _ in range(args.repeat):
            begin = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", PROBE, name, "--help"], env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - begin)
            torch_line = proc.stderr.strip().splitlines()[-1]
        print(f"| {name} --help | {min(times):.2f} | {'yes' if torch_line == 'torch imported' else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
