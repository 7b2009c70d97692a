"""Measure how long the offline zoo takes to build, and the machine load while it did.

    .venv/bin/python benchmarks/zoo_build_time.py --suite tasks8            # fresh temporary cache
    .venv/bin/python benchmarks/zoo_build_time.py --suite tasks20 --cache ~/.cache/mdamerge --keep

Prints one JSON object: wall seconds, the recorded per-stage seconds (pretraining, then
each task's head + fine-tuning + evaluation), torch threads and the 1-minute load average
before and after. The machine's other users slow the build; compare runs at similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


from mdamerge.zoo.build import Zoo
from mdamerge.zoo.tasks import SUITES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="tasks8", choices=sorted(SUITES))
    parser.add_argument("--cache", default=None, help="cache folder to build into (default: a fresh temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: what the load leaves free)")
    args = parser.parse_args()
    root = Path(args.cache).expanduser() if args.cache else Path(tempfile.mkdtemp(prefix="mdamerge-zoo-"))
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    zoo = Zoo(root / "zoo")
    timings = zoo.build(args.suite, progress=True, threads=args.threads)
    wall = time.perf_counter() - start
    report = {
        "suite": args.suite, "tasks": len(SUITES[args.suite]), "wall_seconds": round(wall, 1),
        "stage_seconds": {k: round(v, 1) for k, v in timings.items()}, "threads_per_stage": {"pretrained": zoo.pretrain_record.get("threads"),
                              **{t: zoo.records[t].get("threads") for t in SUITES[args.suite]}},
        "cpus": os.cpu_count(), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "finetuned_test_accuracy": {t: zoo.records[t]["finetuned"]["test"] for t in SUITES[args.suite]},
        "pretrained_test_accuracy": {t: zoo.records[t]["pretrained"]["test"] for t in SUITES[args.suite]},
        "cache": str(root),
    }
    print(json.dumps(report, indent=2))
    if not args.cache and not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
