"""Regenerate docs/results_adaptive.md: data-based merging on the offline zoo.

For each suite: test accuracy, Delta_ETF (and prototype misalignment) and wall time of
the pretrained and fine-tuned models, every data-free method, a rank sweep of data-free
MDA (k = fraction * min(m, n) for fraction in {0.01, 0.1, 1/T, 0.5}) and the data-based
methods (task-wise and layer-wise AdaMerging, MDA feature alignment from MDA / TA / AM,
and MDA-AM without rotation).

    python benchmarks/adaptive_results.py --suites tasks8 --steps 200
    python benchmarks/adaptive_results.py --suites tasks14,tasks20 --steps 100   # adds to the same page

Results are kept per suite in docs/results_adaptive.json, so suites can be run one at a
time; the Markdown page is rebuilt from all of them. The step count used is recorded in
every row (FusionBench's default is 1000; CPU runs here use fewer).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from mdamerge import merge_state_dicts
from mdamerge.adaptation import ADAPTIVE_METHODS
from mdamerge.diagnostics.etf import class_means, delta_etf, prototype_misalignment
from mdamerge.zoo.build import Zoo
from mdamerge.zoo.tasks import resolve_tasks

ROOT = Path(__file__).resolve().parent.parent
DATA_FREE = ["average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts", "mda"]
ADAPTIVE = ["adamerging_task", "adamerging_layer", "mda_feature", "mda_ta", "mda_am", "mda_am_norot"]
# Sensitivity of MDA-TA to the loss / rotation settings (--variants); labels say what changed from
# the defaults (docs/feature_alignment.md). The first row is the formulation before the
# anti-collapse changes: no diversity term, R_t from the identity, per-batch Procrustes target,
# ||R - R*||^2 / d, rotation lr = lr.
VARIANTS = [
    ("mda_ta", {"diversity": 0.0, "rotation_init": "identity", "procrustes_momentum": 0.0, "gap_per_dim": True, "rotation_lr": 1e-3}),
    ("mda_ta", {"diversity": 0.0}),
    ("mda_ta", {"rotation_init": "identity"}),
    ("mda_ta", {"rotation_lr": 1e-4}),
    ("mda_ta", {"beta": 5.0}),
    ("mda_ta", {"alpha": 0.0}),
    ("mda_ta", {"pseudo_labels": "finetuned"}),
    ("mda_ta", {"use_rotation": False}),
    ("adamerging_layer", {"init": 0.125}),
]
# Overrides of the data-free methods' registered defaults: none. Every method runs with its
# published default -- Iso-C / Iso-CTS with alpha 1.0, the scaling_factor of FusionBench's
# iso_c.yaml / iso_cts.yaml (docs/method.md). Each row records the parameters it ran with.
DATA_FREE_PARAMS: dict[str, dict] = {}


@torch.no_grad()
def task_features(model, zoo, task: str, x, y, device: str, transforms=None):
    """Features of ``x`` (through ``transforms[task]`` if given), the task's head, and its accuracy on ``y``."""
    feats = torch.cat([model(x[i:i + 1024].to(device)) for i in range(0, len(x), 1024)])
    if transforms and task in transforms:
        feats = transforms[task](feats)
    head = zoo.head(task).to(device)
    acc = float((head(feats).argmax(-1).cpu() == y).float().mean())
    return feats, head, acc


class Evaluator:
    """Accuracy and Delta_ETF of a backbone state dict from one pass over each task's test set."""

    def __init__(self, zoo: Zoo, tasks: list[str], device: str, max_eval: int | None):
        self.zoo, self.tasks, self.device = zoo, tasks, device
        self.model = zoo.load_backbone().to(device).eval()
        self.data = {}
        for t in tasks:
            x, y = zoo.task_data(t).test
            self.data[t] = (x[:max_eval], y[:max_eval]) if max_eval else (x, y)

    @torch.no_grad()
    def __call__(self, state: dict[str, torch.Tensor], transforms=None, tasks=None) -> dict[str, dict[str, float]]:
        self.model.load_backbone_state(state)
        out = {}
        for t in tasks or self.tasks:
            x, y = self.data[t]
            feats, head, acc = task_features(self.model, self.zoo, t, x, y, self.device, transforms)
            means = class_means(feats.cpu(), y, head.out_features)
            mis = prototype_misalignment(means, head.weight.cpu()) if means.shape[0] == head.out_features else float("nan")
            out[t] = {"acc": acc, "delta_etf": delta_etf(means), "misalignment": mis}
        return out


def summarise(name: str, kind: str, per_task: dict, seconds: float | None, **extra) -> dict:
    n = len(per_task)
    return {
        "method": name, "kind": kind, "seconds": seconds,
        "acc": 100 * sum(v["acc"] for v in per_task.values()) / n,
        "delta_etf": sum(v["delta_etf"] for v in per_task.values()) / n,
        "misalignment": sum(v["misalignment"] for v in per_task.values()) / n,
        "per_task": {t: round(100 * v["acc"], 2) for t, v in per_task.items()},
        **extra,
    }


def data_free_row(method: str, base: dict, finetuned: list, evaluate: "Evaluator", device: str, **extra) -> dict:
    """One data-free method's table row: merged with :data:`DATA_FREE_PARAMS`, timed, evaluated."""
    params = DATA_FREE_PARAMS.get(method, {})
    start = time.perf_counter()
    merged = merge_state_dicts(base, finetuned, method, device=device, **params)
    seconds = time.perf_counter() - start
    return summarise(method, "data-free", evaluate(merged), seconds, params=params, **extra)


def comma_names(text: str, allowed: list[str], what: str) -> list[str]:
    """The comma-separated names in ``text``; exits with one line naming the first that is not ``allowed``."""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        sys.exit(f"error: unknown {what} '{unknown[0]}'; choose from {', '.join(allowed)}")
    return names


def run_suite(zoo: Zoo, suite: str, args) -> dict:
    tasks = resolve_tasks(suite)
    missing = zoo.missing(tasks)
    if missing and not args.build:
        sys.exit(f"error: the zoo at {zoo.root} lacks {', '.join(missing)}; run `mdamerge zoo build --suite {suite}` or pass --build")
    if missing:
        zoo.build(tasks, device=args.device)
    evaluate = Evaluator(zoo, tasks, args.device, args.max_eval)
    base = zoo.base_state_dict()
    finetuned = [zoo.finetuned_state_dict(t) for t in tasks]
    rows = [summarise("pretrained", "reference", evaluate(base), None)]
    own = {}
    for t, sd in zip(tasks, finetuned):
        own.update(evaluate(sd, tasks=[t]))
    rows.append(summarise("fine-tuned (individual)", "reference", own, None))
    for method in DATA_FREE:
        rows.append(data_free_row(method, base, finetuned, evaluate, args.device))
        print(f"[{suite}] {method}: {rows[-1]['acc']:.2f}% in {rows[-1]['seconds']:.1f}s", flush=True)
    sweep = []
    for label, fraction in (("0.01", 0.01), ("0.1", 0.1), ("1/T", 1.0 / len(tasks)), ("0.5", 0.5)):
        start = time.perf_counter()
        merged = merge_state_dicts(base, finetuned, "mda", device=args.device, rank_fraction=fraction)
        seconds = time.perf_counter() - start
        sweep.append(summarise(f"mda k={label}", "rank sweep", evaluate(merged), seconds, rank_fraction=fraction))
        print(f"[{suite}] mda rank_fraction={fraction:.3f}: {sweep[-1]['acc']:.2f}%", flush=True)
    del finetuned
    runs = [(m, {}) for m in args.methods] + (VARIANTS if args.variants else [])
    for method, overrides in runs:
        options = {"steps": args.steps, "progress": not args.quiet, **overrides}
        if args.max_unlabeled:
            options["max_unlabeled"] = args.max_unlabeled
        label = method + ("" if not overrides else " (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")")
        start = time.perf_counter()
        result = ADAPTIVE_METHODS[method](zoo, tasks, device=args.device, seed=args.seed, **options)
        seconds = time.perf_counter() - start
        history = result.info["history"]
        final = {k: round(v, 4) for k, v in history[-1].items() if k != "step"} if history else {}
        rows.append(summarise(label, "data-based" if not overrides else "variant",
                              evaluate(result.state_dict, result.feature_transforms), seconds,
                              steps=result.info["steps"], final_loss=final,
                              am_steps=result.info.get("adamerging", {}).get("steps")))
        print(f"[{suite}] {label}: {rows[-1]['acc']:.2f}% in {seconds:.1f}s ({result.info['steps']} steps)", flush=True)
    return {
        "suite": suite, "tasks": tasks, "rows": rows, "rank_sweep": sweep,
        "peak_rss_mb": peak_rss_mb(),
        "zoo_fingerprint": zoo.settings.fingerprint(),
        "settings": {"steps": args.steps, "max_unlabeled": args.max_unlabeled, "max_eval": args.max_eval,
                     "device": args.device, "seed": args.seed, "threads": torch.get_num_threads()},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
    }


def refresh_data_free(zoo: Zoo, entry: dict, methods: list[str], args) -> dict:
    """``entry`` (one suite's stored results) with the rows of the data-free ``methods`` recomputed at today's defaults.

    Everything else -- the references, the data-based rows, the rank sweep -- is kept. The
    stored rows must come from the same zoo (``ZooSettings.fingerprint()``); otherwise the
    refreshed rows would not be comparable with the kept ones.
    """
    fingerprint = zoo.settings.fingerprint()
    if entry.get("zoo_fingerprint") not in (None, fingerprint):
        sys.exit(f"error: {entry['suite']}'s stored rows come from zoo {entry['zoo_fingerprint']}, "
                 f"the zoo at {zoo.root} is {fingerprint}: rerun the suite instead of refreshing rows")
    stored = {row["method"]: i for i, row in enumerate(entry["rows"]) if row.get("kind") == "data-free"}
    absent = [m for m in methods if m not in stored]
    if absent:
        sys.exit(f"error: {entry['suite']} has no stored data-free row '{absent[0]}' to refresh")
    tasks = entry["tasks"]
    evaluate = Evaluator(zoo, tasks, args.device, entry["settings"].get("max_eval"))
    base = zoo.base_state_dict()
    finetuned = [zoo.finetuned_state_dict(t) for t in tasks]
    rows = list(entry["rows"])
    for method in methods:
        row = data_free_row(method, base, finetuned, evaluate, args.device, refreshed=time.strftime("%Y-%m-%d"))
        rows[stored[method]] = row
        print(f"[{entry['suite']}] {method} (refreshed): {row['acc']:.2f}% in {row['seconds']:.1f}s", flush=True)
    return {**entry, "rows": rows, "zoo_fingerprint": fingerprint}


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory so far (Linux: ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "-"
    return f"{value:.{digits}f}"


def suite_command(r: dict) -> str:
    """The command that regenerates one suite's entry, from its recorded settings."""
    s = r["settings"]
    parts = ["python benchmarks/adaptive_results.py", f"--suites {r['suite']}", f"--steps {s['steps']}"]
    if s.get("threads"):
        parts.append(f"--threads {s['threads']}")
    if s.get("max_unlabeled"):
        parts.append(f"--max-unlabeled {s['max_unlabeled']}")
    if s.get("max_eval"):
        parts.append(f"--max-eval {s['max_eval']}")
    if s.get("device", "cpu") != "cpu":
        parts.append(f"--device {s['device']}")
    if any(row["kind"] == "variant" for row in r["rows"]):
        parts.append("--variants")
    return " ".join(parts)


def overrides_note(rows: list[dict]) -> list[str]:
    """One line naming the data-free rows that ran with parameters other than their registered defaults."""
    changed = [f"{r['method']} {', '.join(f'{k}={v}' for k, v in r['params'].items())}"
               for r in rows if r.get("kind") == "data-free" and r.get("params")]
    refreshed = [f"{r['method']} ({r['refreshed']})" for r in rows if r.get("refreshed")]
    lines = []
    if changed:
        lines += ["", f"Data-free rows run with other than their published defaults: {'; '.join(changed)} (stored with the "
                  "rows; the script now runs every method at its default, Iso-C / Iso-CTS at alpha 1.0: rerun to "
                  "refresh them)."]
    if refreshed:
        lines += ["", f"Rows recomputed at their current defaults after the rest of the table "
                  f"(`--refresh-data-free`, same zoo): {', '.join(refreshed)}; their wall times come from that later run."]
    return lines


def render(results: dict) -> str:
    lines = [
        "# Data-based merging on the offline zoo",
        "",
        "Accuracy is the mean test accuracy over the suite's tasks (each merged backbone with the tasks' frozen",
        "heads, through the learned per-task rotations where the method has them). Delta_ETF (docs/diagnostics.md)",
        "is averaged over tasks: 0 means the class-mean features form a simplex ETF. Misalignment is",
        "mean(1 - cos(centred class mean, head-matched ETF prototype)), the quantity the rotations act on.",
        "Wall time is for the merge itself (data-based: loading the data and all optimisation steps, MDA-AM",
        "including its AdaMerging stage), on a shared 2-core CPU: treat it as indicative.",
        "",
        "Each suite's section names the command that regenerates it (results accumulate in",
        "docs/results_adaptive.json; the page is rebuilt from all suites there).",
        "",
    ]
    for suite in ("tiny3", "tasks8", "tasks14", "tasks20"):
        if suite not in results:
            continue
        r = results[suite]
        s = r["settings"]
        lines += [
            f"## {suite} ({len(r['tasks'])} tasks)",
            "",
            f"`{suite_command(r)}`",
            "",
            f"{r['date']}, {r['machine']}, zoo settings {r.get('zoo_fingerprint', '?')} (`ZooSettings.fingerprint()`)."
            f" Data-based methods: **{s['steps']} steps** (FusionBench: 1000), batch 16 per",
            f"task, unlabeled inputs = test images{' (first ' + str(s['max_unlabeled']) + ' per task)' if s['max_unlabeled'] else ''};"
            f" evaluation on {'the first ' + str(s['max_eval']) if s['max_eval'] else 'all'} test images per task."
            f" Peak memory of the whole run (all methods): {r.get('peak_rss_mb', 0):.0f} MB.",
            "",
            "| method | kind | steps | accuracy (%) | Delta_ETF | misalignment | wall time (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            steps = row.get("steps")
            if steps is not None and row.get("am_steps"):
                steps = f"{row['am_steps']}+{steps}"
            lines.append(
                f"| {row['method']} | {row['kind']} | {steps if steps is not None else '-'} | {fmt(row['acc'])} | "
                f"{fmt(row['delta_etf'], 3)} | {fmt(row['misalignment'], 3)} | {fmt(row['seconds'], 1)} |"
            )
        lines += overrides_note(r["rows"])
        lines += [
            "",
            "Rank sweep of data-free MDA (k = fraction x min(m, n) triplets per task; 1/T is the default):",
            "",
            "| k | accuracy (%) | Delta_ETF | wall time (s) |",
            "|---|---|---|---|",
        ]
        for row in r["rank_sweep"]:
            lines.append(f"| {row['method'].split('=')[1]} | {fmt(row['acc'])} | {fmt(row['delta_etf'], 3)} | {fmt(row['seconds'], 2)} |")
        lines += ["", "Per-task accuracy (%):", ""]
        tasks = r["tasks"]
        lines.append("| method | " + " | ".join(tasks) + " |")
        lines.append("|---|" + "---|" * len(tasks))
        for row in r["rows"]:
            lines.append(f"| {row['method']} | " + " | ".join(fmt(row["per_task"].get(t)) for t in tasks) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default="tasks8", help="comma-separated suites (tiny3, tasks8, tasks14, tasks20)")
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps of every data-based method")
    parser.add_argument("--methods", default=",".join(ADAPTIVE), help="data-based methods to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--zoo-root", default=None)
    parser.add_argument("--build", action="store_true", help="build missing zoo models first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest for this tiny model on a busy machine)")
    parser.add_argument("--max-unlabeled", type=int, default=None, help="cap on unlabeled test inputs per task")
    parser.add_argument("--max-eval", type=int, default=None, help="cap on evaluated test inputs per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--variants", action="store_true", help="also run MDA-TA's rotation-setting variants")
    parser.add_argument("--refresh-data-free", default="",
                        help="comma-separated data-free methods whose stored rows are recomputed at today's defaults "
                             "(everything else of the suites is kept)")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild the Markdown page from the JSON store (recording the zoo's settings fingerprint where missing)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results_adaptive.md"))
    args = parser.parse_args(argv)
    args.methods = comma_names(args.methods, list(ADAPTIVE_METHODS), "data-based method")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store = out.with_suffix(".json")
    results = json.loads(store.read_text()) if store.exists() else {}
    zoo = Zoo(args.zoo_root)
    if args.render_only:
        for entry in results.values():
            entry.setdefault("zoo_fingerprint", zoo.settings.fingerprint())
        store.write_text(json.dumps(results, indent=1) + "\n")
        out.write_text(render(results))
        print(f"wrote {out}")
        return
    refresh = comma_names(args.refresh_data_free, DATA_FREE, "data-free method")
    for suite in [s for s in args.suites.split(",") if s]:
        if refresh:
            if suite not in results:
                sys.exit(f"error: no stored results for suite '{suite}' in {store} to refresh")
            results[suite] = refresh_data_free(zoo, results[suite], refresh, args)
        else:
            results[suite] = run_suite(zoo, suite, args)
        store.write_text(json.dumps(results, indent=1) + "\n")  # after each suite: a crash keeps what is done
    out.write_text(render(results))
    print(f"wrote {out} and {store}")


if __name__ == "__main__":
    main()
