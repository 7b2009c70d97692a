"""Four merges started at once vs one alone, with default flags (issue 20).

    python benchmarks/concurrent_merges.py [--method tsv] [--runs 4]

Builds base + 3 fine-tunes of six 768 x 768 tensors (``safety_cases.SLOW``), times one
``mdamerge merge`` alone, then ``--runs`` of them started together (each into its own
folder), all with default flags -- so each picks its torch threads from the cores free when
it starts (``mdamerge.cpus``). Prints the wall times, the ratio of the slowest concurrent run
to the single one (the goal: about ``--runs`` x), and the load average before each phase.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from safety_cases import SLOW, config, toy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
ENV["PYTHONPATH"] = str(REPO / "src")


def start(cfg: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mdamerge", "merge", str(cfg), "--out", str(out), "--quiet"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_all(procs: list[subprocess.Popen], begin: float, timeout: float) -> list[float]:
    """Seconds from ``begin`` until each process ended (a run still going at ``timeout`` counts as ``inf``)."""
    ends: dict[int, float] = {}
    while len(ends) < len(procs) and time.time() - begin < timeout:
        for i, proc in enumerate(procs):
            if i not in ends and proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr.read())
                ends[i] = time.time() - begin
        time.sleep(0.05)
    for i, proc in enumerate(procs):
        if i not in ends:
            proc.kill()
    return [ends.get(i, float("inf")) for i in range(len(procs))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="tsv")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mdamerge-concurrent-") as tmp:
        t = toy(Path(tmp), shapes=SLOW, models=3)
        cfg = config(t, method=args.method)
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        begin = time.time()
        alone = wait_all([start(cfg, Path(tmp) / "alone")], begin, args.timeout)[0]
        load_together = "/".join(f"{x:.1f}" for x in os.getloadavg())
        begin = time.time()
        together = wait_all([start(cfg, Path(tmp) / f"run{i}") for i in range(args.runs)], begin, args.timeout)
    print(f"{args.method}, {os.cpu_count()} cores: one alone {alone:.1f} s (load {load}); {args.runs} at once "
          f"{', '.join(f'{s:.1f}' for s in together)} s (load {load_together}); slowest / alone = "
          f"{max(together) / alone:.1f}x (goal about {args.runs}x)")


if __name__ == "__main__":
    main()
