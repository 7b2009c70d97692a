"""Regenerate docs/scale_trend.md: tasks8 on the small and the 2x wider ``base`` zoo backbone, side by side.

    python benchmarks/scale_trend.py --steps 100 --threads 1                  # both backbones (builds what is missing)
    python benchmarks/scale_trend.py --backbones base --steps 100 --threads 1  # one backbone; the page shows all stored
    python benchmarks/scale_trend.py --render-only                             # rebuild the page from the JSON
    python benchmarks/scale_trend.py --step-costs --threads 1                  # time candidate widths/depths first

Per backbone: the data-free methods with the protocol of docs/results.md (`mdamerge bench`:
each method's scaling, and MDA's options, chosen on validation, 250 validation images per
task; test accuracy reported), then the data-based methods of docs/results_adaptive.md at
``--steps`` optimisation steps each (the same for both backbones), evaluated on the test
split exactly as `mdamerge bench --methods data-based` does. Results accumulate per backbone
in docs/scale_trend.json, written after every stage (a crash keeps what is done).

The question (issue 13, item 2): does MDA's difference from TSV-M and from AdaMerging grow
with width, as the MDA paper reports from CLIP ViT-B/32 to ViT-L/14?
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from mdamerge.adaptation import ADAPTIVE_METHODS
from mdamerge.evaluation.bench import BenchResult, Row, resolve_methods, run_bench
from mdamerge.evaluation.evaluate import average, evaluate_backbone, normalized
from mdamerge.evaluation.tables import display_name
from mdamerge.zoo.build import BACKBONES, vision_zoo
from mdamerge.zoo.tasks import SUITES

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tasks8"
ADAPTIVE = ["adamerging_task", "adamerging_layer", "mda_feature", "mda_ta", "mda_am", "mda_am_norot"]
# (minuend, subtrahend) pairs of the difference table: MDA against TSV-M (data-free) and against AdaMerging.
DIFFERENCES = [
    ("mda", "tsv"), ("mda", "task_arithmetic"),
    ("mda", "adamerging_task"), ("mda", "adamerging_layer"),
    ("mda_feature", "adamerging_task"), ("mda_feature", "adamerging_layer"),
    ("mda_ta", "adamerging_task"), ("mda_ta", "adamerging_layer"),
    ("mda_am", "adamerging_task"), ("mda_am", "adamerging_layer"),
]
# A change of a difference smaller than this (points) is called a tie: one seed, 7500 test images in all
# (1000 per task, 500 for digits8x8); two methods' accuracies on the same images differ by less noise
# than this, but data-based runs move by about this much with the seed.
TIE_POINTS = 0.5
# The differences the plain statements are about (issue 13 item 2): MDA vs TSV-M, MDA's data-based forms vs AdaMerging.
HEADLINE = [("mda", "tsv"), ("mda_ta", "adamerging_task"), ("mda_ta", "adamerging_layer"),
            ("mda_am", "adamerging_task"), ("mda_am", "adamerging_layer")]
NAMES = {"mda": "MDA (data-free)", "mda_feature": "MDA feature (from MDA)", "mda_ta": "MDA-TA", "mda_am": "MDA-AM",
         "mda_am_norot": "MDA-AM without rotation", "adamerging_task": "AdaMerging (task-wise)",
         "adamerging_layer": "AdaMerging (layer-wise)"}


# Candidate shapes timed by --step-costs (width, blocks, heads; MLP = 2 x width, head width 48 except 288).
CANDIDATES = [(192, 4, 4), (384, 6, 8), (384, 4, 8), (320, 4, 8), (288, 4, 6)]


def step_costs(repeats: int = 4, steps: int = 3) -> dict:
    """Best-of-``repeats`` seconds per AdamW step of each candidate at the zoo's batch sizes (pretraining 128,
    fine-tuning 64), interleaved so that a change in the machine's load hits every candidate alike."""
    import torch.nn.functional as F
    from torch import nn

    from mdamerge.zoo.model import TinyViT, ViTConfig

    models = {}
    for dim, depth, heads in CANDIDATES:
        model = TinyViT(ViTConfig(dim=dim, depth=depth, heads=heads, mlp_dim=2 * dim))
        head = nn.Linear(model.feature_dim, 120)
        models[(dim, depth, heads)] = (model, head, torch.optim.AdamW([*model.parameters(), *head.parameters()]))
    best = {k: {"pretrain": float("inf"), "finetune": float("inf")} for k in models}
    for _ in range(repeats):
        for key, (model, head, opt) in models.items():
            for stage, batch in (("pretrain", 128), ("finetune", 64)):
                x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 120, (batch,))
                start = time.perf_counter()
                for _ in range(steps):
                    loss = F.cross_entropy(head(model(x)), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                best[key][stage] = min(best[key][stage], (time.perf_counter() - start) / steps)
    ref = best[CANDIDATES[0]]
    return {f"{d}x{b} (heads {h})": {"parameters": models[(d, b, h)][0].num_parameters(),
                                     **{f"{st}_step_s": round(v, 3) for st, v in best[(d, b, h)].items()},
                                     **{f"{st}_ratio": round(v / ref[st], 2) for st, v in best[(d, b, h)].items()}}
            for (d, b, h) in best} | {"load": load_average(), "date": time.strftime("%Y-%m-%d %H:%M")}


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def name_of(method: str) -> str:
    return NAMES.get(method) or display_name(method)


def build_record(zoo) -> dict:
    """What the zoo recorded when it was built: seconds per stage, threads, parameters."""
    tasks = SUITES[SUITE]
    pre = zoo.pretrain_record
    stages = {"pretrained": pre.get("seconds"), **{t: zoo.records[t]["seconds"] for t in tasks if t in zoo.records}}
    return {
        "stage_seconds": stages, "total_seconds": round(sum(v for v in stages.values() if v), 1),
        "threads": sorted({pre.get("threads"), *(zoo.records[t].get("threads") for t in tasks if t in zoo.records)} - {None}),
        "num_parameters": pre.get("num_parameters"), "model": zoo.settings.to_dict()["model"],
        "fingerprint": zoo.settings.fingerprint(),
        "finetuned_test": {t: zoo.records[t]["finetuned"]["test"] for t in tasks if t in zoo.records},
    }


def run_backbone(backbone: str, args, store: dict, save) -> None:
    """Build (if needed) and benchmark one backbone; ``save()`` after every stage."""
    entry = store.setdefault(backbone, {})
    zoo = vision_zoo(backbone=backbone, recipe="stored")  # the page's zoos (CACHE/zoo, CACHE/zoo-base)
    missing = zoo.missing(SUITE)
    if missing:
        print(f"[{backbone}] building {len(missing)} task(s) in {zoo.root} ...", flush=True)
        before = load_average()
        start = time.perf_counter()
        zoo.build(SUITE, progress=False, device=args.device, threads=args.threads, log=print)
        entry["build_wall"] = {"seconds": round(time.perf_counter() - start, 1), "load_before": before,
                               "load_after": load_average()}
    if args.build_wall is not None:
        before, _, after = (args.build_load or "-").partition(" / ")
        entry["build_wall"] = {"seconds": args.build_wall, "load_before": before.strip(), "load_after": after.strip() or "-",
                               **({"cpu_seconds": args.build_cpu} if args.build_cpu is not None else {})}
    entry["build"] = build_record(zoo)
    entry["machine"] = (f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads() if not args.threads else args.threads}"
                        f" torch threads, torch {torch.__version__}")
    save()
    wanted = resolve_methods(args.data_free) if args.data_free != "none" else []
    stored = entry.get("data_free")
    done = {r["name"] for r in stored["result"]["rows"]} if stored and not args.rerun else set()
    todo = [m for m in wanted if m not in done]
    if todo:
        before, start = load_average(), time.perf_counter()
        result = run_bench(SUITE, ",".join(todo), zoo=zoo, device=args.device, search=True, val_limit=args.val_limit,
                           seed=args.seed, build=False, progress=False, threads=args.threads,
                           log=lambda m: print(f"[{backbone}] {m}", flush=True))
        part = {"result": result.to_dict(), "seconds": round(time.perf_counter() - start, 1),
                "load_before": before, "load_after": load_average(), "date": time.strftime("%Y-%m-%d %H:%M")}
        if done:  # add these methods' rows to the ones stored (the reference rows are the same models)
            stored["result"]["rows"] += [r for r in part["result"]["rows"] if r["name"] not in done]
            stored["seconds"] = round(stored["seconds"] + part["seconds"], 1)
            stored.update(load_after=part["load_after"], date=part["date"])
        else:
            entry["data_free"] = part
        save()
    rows = entry.setdefault("data_based", {})
    if args.steps != entry.get("steps"):
        rows.clear()  # rows of another step count are not comparable
    entry["steps"] = args.steps
    tasks = list(SUITES[SUITE])
    for method in args.methods:
        if method in rows and not args.rerun:
            continue
        before, start = load_average(), time.perf_counter()
        result = ADAPTIVE_METHODS[method](zoo, tasks, device=args.device, seed=args.seed, steps=args.steps,
                                          progress=False)
        merge_seconds = time.perf_counter() - start
        acc = evaluate_backbone(result.state_dict, zoo, tasks, "test", args.device,
                                feature_transforms=result.feature_transforms)
        rows[method] = {"accuracies": acc, "seconds": round(merge_seconds, 1), "steps": result.info.get("steps"),
                        "am_steps": (result.info.get("adamerging") or {}).get("steps"),
                        "load_before": before, "load_after": load_average()}
        print(f"[{backbone}] {method}: average {100 * average(acc):.2f}% in {merge_seconds:.0f} s", flush=True)
        save()


def table_rows(entry: dict) -> tuple[BenchResult, dict[str, dict]]:
    """The backbone's bench result plus its data-based rows as one :class:`BenchResult`."""
    result = BenchResult.from_dict(entry["data_free"]["result"])
    stored = entry.get("data_based", {})
    for method in sorted(stored, key=lambda m: ADAPTIVE.index(m) if m in ADAPTIVE else len(ADAPTIVE)):
        result.rows.append(Row(method, "data-based", stored[method]["accuracies"], seconds=stored[method]["seconds"]))
    return result, entry.get("data_based", {})


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def signed(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}"


def difference(res: BenchResult, a: str, c: str) -> float | None:
    have = {r.name for r in res.rows}
    return res.row(a).average - res.row(c).average if a in have and c in have else None


def statements(results: dict[str, BenchResult]) -> list[str]:
    """One plain sentence per headline difference: does it grow from the small to the base backbone?"""
    if not {"small", "base"} <= set(results):
        return ["- Not measured yet: both backbones' rows are needed (run the command above)."]
    out, changes = [], []
    for a, c in HEADLINE:
        small, base = difference(results["small"], a, c), difference(results["base"], a, c)
        if small is None or base is None:
            out.append(f"- {name_of(a)} - {name_of(c)}: not measured on both backbones.")
            continue
        change = 100 * (base - small)
        changes.append(change)
        verdict = ("grows with width" if change >= TIE_POINTS else "shrinks with width" if change <= -TIE_POINTS
                   else f"does not change with width beyond {TIE_POINTS} points (a tie)")
        out.append(f"- {name_of(a)} - {name_of(c)}: {signed(small)} points on small, {signed(base)} on base "
                   f"(change {change:+.1f}): the difference {verdict}.")
    if changes:
        grow = sum(c >= TIE_POINTS for c in changes)
        shrink = sum(c <= -TIE_POINTS for c in changes)
        trend = ("the paper's scale trend is not reproduced here" if grow == 0 else
                 "the paper's scale trend is reproduced in every one" if grow == len(changes) else
                 "the paper's scale trend is reproduced only in part")
        out.insert(0, f"- **Of {len(changes)} headline differences, {grow} grow from the small to the 2x wider backbone, "
                      f"{shrink} shrink and {len(changes) - grow - shrink} are ties (change below {TIE_POINTS} points): "
                      f"{trend}.**")
    return out


def render(store: dict, steps_note: str) -> str:
    backbones = [b for b in BACKBONES if b in store and "data_free" in store[b]]
    results = {b: table_rows(store[b])[0] for b in backbones}
    lines = [
        "# Scale trend: the tasks8 benchmark on a 2x wider zoo backbone",
        "",
        "Generated by `python benchmarks/scale_trend.py --steps 100 --threads 1` (page only: `--render-only`);",
        "do not edit by hand. The results are kept in [scale_trend.json](scale_trend.json).",
        "",
        "The MDA paper reports that MDA's advantage grows with model size (CLIP ViT-B/32 to ViT-L/14). Here the",
        "same tasks8 zoo is built twice with the same data, recipe and seeds, once on each backbone, and every",
        "method is run on both with the same protocol: data-free methods with their scaling (and MDA's",
        "`etf_side`, `etf_over`, `polar`) chosen on validation as in [results.md](results.md); data-based",
        f"methods with {steps_note} (FusionBench: 1000) as in [results_adaptive.md](results_adaptive.md).",
        "Numbers are test accuracy (%); **Norm.** = mean over tasks of merged / fine-tuned accuracy of the",
        "same backbone.",
        "",
        "## Backbones",
        "",
        "| Backbone | Width | Blocks | Heads | MLP | Parameters | Build (s, 1 thread, as recorded) | Pretraining (s) | Fine-tuning 8 tasks (s) | Fine-tuned avg (%) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b in backbones:
        bl = store[b]["build"]
        m = bl["model"]
        fine = sum(v for k, v in bl["stage_seconds"].items() if k != "pretrained")
        lines.append(f"| {b} | {m['dim']} | {m['depth']} | {m['heads']} | {m['mlp_dim']} | {bl['num_parameters']:,} | "
                     f"{bl['total_seconds']:.0f} | {bl['stage_seconds']['pretrained']:.0f} | {fine:.0f} | "
                     f"{100 * average(bl['finetuned_test']):.1f} |")
    lines += ["", "Build seconds are wall time at the machine's load then (2 cores shared by several jobs; see the end of",
              "the page); the CPU seconds, where recorded, are what the build itself used.",
              "", *why_this_backbone(store), "", "## Average accuracy per method", "",
              "| Method | kind | " + " | ".join(f"{b} Avg | {b} Norm." for b in backbones) + " |",
              "| --- | --- | " + " | ".join("---: | ---:" for _ in backbones) + " |"]
    names = list(dict.fromkeys(r.name for b in backbones for r in results[b].rows))
    for name in names:
        cells = []
        kind = next(r.kind for b in backbones for r in results[b].rows if r.name == name)
        for b in backbones:
            res = results[b]
            if any(r.name == name for r in res.rows):
                cells += [pct(res.row(name).average), pct(res.normalized_average(name))]
            else:
                cells += ["-", "-"]
        lines.append(f"| {name_of(name)} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "## MDA's differences (percentage points of Avg; Norm. in brackets)", "",
              "| Difference | " + " | ".join(backbones) + " | change with width |",
              "| --- | " + " | ".join("---:" for _ in backbones) + " | ---: |"]
    for a, c in DIFFERENCES:
        diffs, cells = [], []
        for b in backbones:
            res = results[b]
            have = {r.name for r in res.rows}
            if a in have and c in have:
                d = res.row(a).average - res.row(c).average
                dn = res.normalized_average(a) - res.normalized_average(c)
                diffs.append(d)
                cells.append(f"{signed(d)} ({signed(dn)})")
            else:
                diffs.append(None)
                cells.append("-")
        change = signed(diffs[-1] - diffs[0]) if len(diffs) > 1 and None not in (diffs[0], diffs[-1]) else "-"
        lines.append(f"| {name_of(a)} - {name_of(c)} | " + " | ".join(cells) + f" | {change} |")
    lines += ["", "### Plain statements", "", *statements(results), "",
              f"A change below {TIE_POINTS} points is called a tie: one seed per backbone, 7500 test images in all."]
    missing = [(b, name) for b in backbones for name in names if not any(r.name == name for r in results[b].rows)]
    if missing:
        lines += ["", "## Not measured (time budget)", "",
                  "These rows ran on one backbone but not on the other before the session's deadline; the same",
                  "command completes them (rows already stored are kept):", ""]
        for b in backbones:
            gone = [name_of(n) for bb, n in missing if bb == b]
            if gone:
                lines.append(f"- **{b}**: {', '.join(gone)} (`python benchmarks/scale_trend.py --backbones {b} "
                             f"--steps {store[b].get('steps') or 100} --threads 1`)")
    lines += ["", "## Runs and machine load", "",
              "| Backbone | Data-free bench (s) | load before / after | Data-based (s, all methods) | steps | 1-min load around the data-based runs | machine |",
              "| --- | ---: | --- | ---: | ---: | --- | --- |"]
    for b in backbones:
        e = store[b]
        df = e["data_free"]
        rows = e.get("data_based", {})
        db_seconds = sum(r["seconds"] for r in rows.values())
        loads = [float(r[k].split("/")[0]) for r in rows.values() for k in ("load_before", "load_after")]
        load_range = f"{min(loads):.2f} to {max(loads):.2f}" if loads else "-"
        steps = e.get("steps")
        lines.append(f"| {b} | {df['seconds']:.0f} | {df['load_before']} / {df['load_after']} | {db_seconds:.0f} | "
                     f"{steps} | {load_range} | {e.get('machine', '-')} |")
    lines += ["", "Build stages as recorded in each zoo's `zoo.json` (seconds; head fitting + fine-tuning + evaluation per task):", ""]
    for b in backbones:
        bl = store[b]["build"]
        wall = store[b].get("build_wall")
        order = ["pretrained", *SUITES[SUITE]]
        stages = ", ".join(f"{k} {bl['stage_seconds'][k]:.0f}" for k in order if bl["stage_seconds"].get(k) is not None)
        lines.append(f"- **{b}** (settings fingerprint `{bl['fingerprint']}`, threads {bl['threads']}): {stages}"
                     + (f"; wall {wall['seconds']:.0f} s, load {wall['load_before']} / {wall['load_after']}" if wall else "")
                     + (f", {wall['cpu_seconds']:.0f} CPU seconds (the rest of the wall time the core served other jobs)"
                        if wall and wall.get("cpu_seconds") else ""))
    lines.append("")
    lines += ["Chosen on validation (data-free):", "", "| Method | " + " | ".join(backbones) + " |",
              "| --- | " + " | ".join("---" for _ in backbones) + " |"]
    for name in names:
        cells = []
        for b in backbones:
            try:
                params = results[b].row(name).params
            except KeyError:
                params = {}
            cells.append(", ".join(f"{k}={v}" for k, v in params.items()) or "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {name_of(name)} | " + " | ".join(cells) + " |")
    lines.append("")
    tasks = results[backbones[0]].tasks if backbones else []
    for b in backbones:
        res = results[b]
        lines += [f"## Per task ({b})", "", "| Method | " + " | ".join(tasks) + " |", "| --- | " + " | ".join("---:" for _ in tasks) + " |"]
        for r in res.rows:
            lines.append(f"| {name_of(r.name)} | " + " | ".join(pct(r.accuracies.get(t)) for t in tasks) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def why_this_backbone(store: dict) -> list[str]:
    """Why ``base`` is 384 wide with 4 blocks, from the timed candidate steps (``--step-costs``)."""
    lines = ["Why 384 wide with 4 blocks (the issue suggested 6): one training step of each candidate shape,",
             "timed at 1 thread before the build (`--step-costs`; ratio to the small backbone):", ""]
    costs = store.get("step_costs")
    if not costs:
        return lines[:1] + ["_step costs not measured yet (run `--step-costs`)._"]
    lines += ["| Shape (width x blocks) | Parameters | Pretraining step (s) | ratio | Fine-tuning step (s) | ratio |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for shape, c in costs.items():
        if isinstance(c, dict):
            lines.append(f"| {shape} | {c['parameters']:,} | {c['pretrain_step_s']:.3f} | {c['pretrain_ratio']:.2f} | "
                         f"{c['finetune_step_s']:.3f} | {c['finetune_ratio']:.2f} |")
    lines += ["", f"Measured {costs.get('date')} at load {costs.get('load')} (1-, 5-, 15-minute load averages on 2 cores; "
              "the core was shared with another zoo build, so the absolute times are high, the ratios are what counts).",
              "Six blocks cost about 1.5x the 4-block step again: with the pretraining, 8 fine-tunes, the data-free",
              "search and six data-based methods on both backbones, the 6-block version did not fit the",
              "session's budget of one shared CPU core (about 110 min for everything); 4 blocks was estimated to fit",
              "(in the event the core was shared more than planned, and not every row fitted: see \"Not measured\" below).",
              "Four blocks also keep the comparison to one variable, width (heads grow with it, so each head stays 48 wide)."]
    return lines


def steps_note(store: dict) -> str:
    steps = sorted({store[b].get("steps") for b in BACKBONES if b in store and store[b].get("steps")})
    if not steps:
        return "(no data-based runs yet)"
    note = f"**{steps[0]} steps** each" if len(steps) == 1 else f"steps {steps} (differ between backbones!)"
    if steps != [200]:
        note += " (results_adaptive.md's tasks8 table uses 200; fewer here so that both backbones fit one shared core)"
    return note


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated: small, base")
    parser.add_argument("--steps", type=int, default=100, help="optimisation steps of every data-based method")
    parser.add_argument("--methods", default=",".join(ADAPTIVE), help="data-based methods ('' for none)")
    parser.add_argument("--data-free", default="data-free",
                        help="data-free methods ('data-free' = all, a comma-separated list, or 'none'); rows already stored are kept")
    parser.add_argument("--val-limit", type=int, default=250, help="validation examples per task in the search")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rerun", action="store_true", help="recompute rows already stored")
    parser.add_argument("--render-only", action="store_true", help="rebuild the page from the JSON store")
    parser.add_argument("--build-wall", type=float, default=None,
                        help="wall seconds of a build run outside this script (e.g. `mdamerge zoo build --backbone base`), recorded with --build-load")
    parser.add_argument("--build-load", default=None, help="load averages before and after that build: 'BEFORE / AFTER'")
    parser.add_argument("--build-cpu", type=float, default=None, help="CPU seconds that build used (e.g. from ps), recorded with --build-wall")
    parser.add_argument("--step-costs", action="store_true", help="time one training step of each candidate shape, store it, and stop")
    parser.add_argument("--out", default=str(ROOT / "docs" / "scale_trend.md"))
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in ADAPTIVE_METHODS]
    if unknown:
        parser.error(f"unknown data-based method '{unknown[0]}'")
    backbones = [b for b in args.backbones.split(",") if b]
    for b in backbones:
        if b not in BACKBONES:
            parser.error(f"unknown backbone '{b}'; available: {', '.join(BACKBONES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    store_path = out.with_suffix(".json")
    store = json.loads(store_path.read_text()) if store_path.exists() else {}

    def save() -> None:
        # runs of different backbones may overlap: keep what another process stored for the others
        on_disk = json.loads(store_path.read_text()) if store_path.exists() else {}
        # each mode writes back only what it computed (render-only: nothing)
        mine = [] if args.render_only else ["step_costs"] if args.step_costs else backbones
        on_disk.update({k: v for k, v in store.items() if k in mine})
        store.update(on_disk)
        store_path.write_text(json.dumps(on_disk, indent=1, sort_keys=True) + "\n")
        out.write_text(render(on_disk, steps_note(on_disk)))

    if args.step_costs:
        store["step_costs"] = step_costs()
        print(json.dumps(store["step_costs"], indent=1))
    elif not args.render_only:
        for b in backbones:
            run_backbone(b, args, store, save)
    save()
    print(f"wrote {out} and {store_path}")


if __name__ == "__main__":
    main()
