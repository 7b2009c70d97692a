"""The user path against the bench path: data-based methods on a text zoo's models.

1. The text zoo (built with ``pooling="cls"``) is exported as Hugging Face classifiers with
   JSONL files of the test texts (``mdamerge.textzoo.export``).
2. **bench path**: each method runs on the zoo itself, as ``mdamerge bench`` runs it
   (the zoo's budget, ``ADAPTIVE_DEFAULTS``), tested on the zoo's test split.
3. **CLI path**: ``mdamerge adapt adapt.yaml --out ...`` on the exported folders, its
   unlabeled inputs and evaluation split read from the JSONL files.

Each path runs in its own process; wall time and peak RSS are that process's. The table
(method, per-task accuracy, average, seconds, peak MiB, for both paths) goes to stdout and
``--json``.

    python benchmarks/adapt_cli_parity.py --zoo CACHE/textzoo-cls --tasks wn_gloss_pos,fortune_topic,bible_group \\
        --methods adamerging_task,mda_feature,mda_am --threads 1 --work /tmp/parity
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads({threads})
start = time.perf_counter()
out = {{}}
try:
{body}
finally:
    out["seconds"] = time.perf_counter() - start
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))
"""

BENCH_BODY = """
    from mdamerge.evaluation.bench import _adaptive_row, adaptive_methods, zoo_adaptive_defaults
    from mdamerge.textzoo.build import TextZoo
    zoo = TextZoo({zoo!r})
    fn = adaptive_methods()[{method!r}]
    row = _adaptive_row({method!r}, fn, zoo, {tasks!r}, "cpu", 0, zoo_adaptive_defaults(zoo, fn))
    out["accuracy"] = row.accuracies
"""

CLI_BODY = """
    from mdamerge.cli import main
    try:
        main(["adapt", {config!r}, "--out", {out!r}, "--quiet", "--overwrite"])
    except SystemExit as exc:
        if exc.code:
            raise
    info = json.load(open({out!r} + "/adaptation.json"))
    out["accuracy"] = info["accuracy"]["merged"]
"""


def run_child(body: str, threads: int) -> dict:
    code = CHILD.format(threads=threads, body=body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"child failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", required=True)
    parser.add_argument("--tasks", required=True)
    parser.add_argument("--methods", default="adamerging_task,adamerging_layer,mda_feature,mda_ta,mda_am,mda_am_norot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", required=True, help="folder for the export and the CLI outputs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    work = Path(args.work)
    export = work / "export"
    if not export.exists():
        from mdamerge.textzoo.build import TextZoo
        from mdamerge.textzoo.export import export_text_zoo

        export_text_zoo(TextZoo(args.zoo), tasks, export)
    from mdamerge.evaluation.bench import adaptive_methods

    rows = []
    for method in args.methods.split(","):
        config = yaml.safe_load((export / "adapt.yaml").read_text())
        config["method"] = method
        options = adaptive_methods()[method].options  # the zoo's budget, limited to the method's options as bench does
        config["parameters"] = {k: v for k, v in config["parameters"].items() if k in options}
        path = export / f"adapt_{method}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        bench = run_child(BENCH_BODY.format(zoo=args.zoo, method=method, tasks=tasks), args.threads)
        cli = run_child(CLI_BODY.format(config=str(path), out=str(work / f"out_{method}")), args.threads)
        for label, res in (("bench", bench), ("cli", cli)):
            acc = res["accuracy"]
            rows.append({"method": method, "path": label, **{t: acc[t] for t in tasks},
                         "average": sum(acc[t] for t in tasks) / len(tasks), "seconds": res["seconds"],
                         "peak_mib": res["peak_mib"]})
        print(f"{method}: bench {rows[-2]['average']:.4f}, cli {rows[-1]['average']:.4f}", flush=True)
    header = "| method | path | " + " | ".join(tasks) + " | avg | seconds | peak MiB |"
    print(header + "\n" + "|---" * (len(tasks) + 5) + "|")
    for r in rows:
        print(f"| {r['method']} | {r['path']} | " + " | ".join(f"{100 * r[t]:.1f}" for t in tasks)
              + f" | {100 * r['average']:.2f} | {r['seconds']:.0f} | {r['peak_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "threads": args.threads, "time": time.ctime()}, indent=1))


if __name__ == "__main__":
    main()
