"""Regenerate docs/paper_experiments.md: the MDA paper's remaining experiments and its reviewers' questions.

Sections (each stored per suite in docs/paper_experiments.json, so they can be run one at a time):

* ``compute``  -- every method on one suite, one process: merge wall time, peak memory,
  data-based steps x time per step; with each merged model's test accuracy, Delta_ETF and
  linear CKA per layer against the tasks' fine-tuned models (items 3 and 4);
* ``angles``   -- principal angles between the tasks' subspaces before alignment, after
  TSV-M's polar step and after MDA's ETF step, over every 2-D layer (item 3);
* ``unseen``   -- generalisation: merge on the seen tasks, test the held-out ones through
  their frozen heads (``run_bench(..., unseen=N)``; item 1);
* ``defaults`` -- MDA with its fixed defaults next to the validation-searched MDA and TSV-M (item 6);
* ``signs``    -- what MDA's sign convention does: relative change of the merged delta under
  LAPACK's raw / random / aligned signs on the zoo's layers and on synthetic 384- and
  768-wide layers, and the accuracy of each sign choice on validation and test (item 6);
* ``sensitivity`` -- alpha / beta of MDA's feature alignment, with and without the
  diversity term: the full 4 x 4 grid (``--sensitivity-grid full``) or one at a time (item 5);
* ``ranks``    -- rank sweep of data-free MDA, scaling chosen on validation (item 5);
* ``choice``   -- MDA's option set chosen by the mean validation average over every suite
  whose option search is saved (docs/results.json: tasks8/14/20; docs/results_text.json:
  text8), then confirmed against TSV-M and the fixed defaults on random task combinations
  of tasks20 that no suite names (item 6). Stored under "across suites".

    python benchmarks/paper_experiments.py --suite tasks8 --sections compute,angles,unseen,defaults,signs --steps 100 --threads 1
    python benchmarks/paper_experiments.py --sections choice --threads 1 --val-limit 250 --choice-subsets 3
    python benchmarks/paper_experiments.py --suite text8 --sections ranks --threads 1
    python benchmarks/paper_experiments.py --render-only

Suite-agnostic by construction: everything goes through a zoo object with the interface of
:class:`mdamerge.zoo.build.Zoo` (``base_state_dict``, ``finetuned_state_dict``, ``task_data``,
``head``, ``load_backbone``) and ``mdamerge.evaluation.bench.run_bench``; a suite whose zoo
provides that interface (e.g. the text suite) runs the same sections.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import re
import sys
import time
from statistics import median
from pathlib import Path

import torch

from mdamerge import merge_state_dicts
from mdamerge.diagnostics.alignment_angles import (
    STAGES, alignment_angles, mda_delta_with_signs, relative_change, summarize, task_triplets,
)
from mdamerge.diagnostics.cka import block_names, cka_by_layer, layer_features
from mdamerge.diagnostics.etf import class_means, delta_etf
from mdamerge.diagnostics.task_vectors import default_k
from mdamerge.evaluation.bench import MDA_OPTIONS, data_free_methods, run_bench, zoo_adaptive_defaults
from mdamerge.methods.linalg import polar_factor, rebuild
from mdamerge.zoo.tasks import resolve_tasks

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The sibling benchmark's evaluation pass, and its data-free parameters (the published defaults).
from adaptive_results import DATA_FREE_PARAMS, overrides_note, task_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA_BASED = ["adamerging_task", "adamerging_layer", "mda_feature", "mda_ta", "mda_am", "mda_am_norot"]
MDA_DEFAULTS = {"etf_side": "left", "etf_over": "directions", "polar": True}
SIGN_SCALINGS = (0.4, 0.5, 0.6, 0.8, 1.0)
# Data-based steps on a zoo without its own budget (the vision zoo; FusionBench: 1000). A zoo with
# ``ADAPTIVE_DEFAULTS`` (the text zoo: 30 steps of batch 8, lr 5e-3) runs its own budget, as the bench does.
PAPER_STEPS = 100


def default_steps(zoo) -> int:
    """Data-based steps when ``--steps`` is not given: the zoo's own budget, else :data:`PAPER_STEPS`."""
    return getattr(zoo, "ADAPTIVE_DEFAULTS", {}).get("steps", PAPER_STEPS)


def data_based_options(zoo, method: str, steps: int) -> dict:
    """Keyword options of a data-based method on ``zoo``: the zoo's budget (batch, lr, ... as the bench
    passes them, so the text zoo's methods run at its CPU-sized batch) with ``steps`` steps."""
    from mdamerge.adaptation import ADAPTIVE_METHODS

    return {**zoo_adaptive_defaults(zoo, ADAPTIVE_METHODS[method]), "steps": steps, "progress": False}


def method_default_batch() -> int:
    """The data-based methods' own batch size per task (what runs where the zoo sets none)."""
    from mdamerge.adaptation import adamerging

    return inspect.signature(adamerging).parameters["batch_size"].default


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------
def rss_kib(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


class PeakMemory:
    """Peak resident memory of a block, above what the process held when it started (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, value 5) on entry, so each
    block is measured on its own even in one process; ``None`` where that is not possible.
    """

    def __enter__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.start = rss_kib("VmRSS")
        except OSError:
            self.start = None
        return self

    def __exit__(self, *exc):
        self.peak_mb = None if self.start is None else rss_kib("VmHWM") / 1024
        self.extra_mb = None if self.start is None else (rss_kib("VmHWM") - self.start) / 1024
        return False


class StepTimer:
    """Times every optimisation step of the data-based methods (wraps ``CoefficientTrainer.step``)."""

    def __init__(self):
        from mdamerge.adaptation.coefficients import CoefficientTrainer

        self.cls, self.original, self.durations = CoefficientTrainer, CoefficientTrainer.step, []
        timer = self

        def timed(trainer, *a, **kw):
            t0 = time.perf_counter()
            out = timer.original(trainer, *a, **kw)
            timer.durations.append(time.perf_counter() - t0)
            return out

        CoefficientTrainer.step = timed

    def reset(self) -> None:
        self.durations = []

    def close(self) -> None:
        self.cls.step = self.original


class Evaluator:
    """Test accuracy, Delta_ETF and per-layer CKA (against each task's fine-tuned model) of a backbone."""

    def __init__(self, zoo, tasks: list[str], device: str, cka_samples: int):
        self.zoo, self.tasks, self.device = zoo, tasks, device
        self.model = zoo.load_backbone().to(device).eval()
        self.layers = block_names(self.model)
        self.data = {t: zoo.task_data(t).test for t in tasks}
        self.cka_inputs = {t: self.data[t][0][:cka_samples] for t in tasks}
        self.reference = {}
        for t in tasks if cka_samples else []:
            self.model.load_backbone_state(zoo.finetuned_state_dict(t))
            self.reference[t] = layer_features(self.model, self.cka_inputs[t], self.layers, device=device)

    @torch.no_grad()
    def __call__(self, state, transforms=None, tasks=None, cka=True) -> dict[str, dict]:
        self.model.load_backbone_state(state)
        out = {}
        for t in tasks or self.tasks:
            x, y = self.data[t]
            feats, head, acc = task_features(self.model, self.zoo, t, x, y, self.device, transforms)
            row = {"acc": acc, "delta_etf": delta_etf(class_means(feats.cpu(), y, head.out_features))}
            if cka and self.reference:
                mine = layer_features(self.model, self.cka_inputs[t], self.layers, device=self.device)
                row["cka"] = cka_by_layer(mine, self.reference[t])
            out[t] = row
        return out


def summarise(name: str, kind: str, per_task: dict, **extra) -> dict:
    n = len(per_task)
    row = {"method": name, "kind": kind, "acc": 100 * sum(v["acc"] for v in per_task.values()) / n,
           "delta_etf": sum(v["delta_etf"] for v in per_task.values()) / n,
           "per_task": {t: round(100 * v["acc"], 2) for t, v in per_task.items()}, **extra}
    if all("cka" in v for v in per_task.values()):
        layers = list(next(iter(per_task.values()))["cka"])
        row["cka"] = {l: sum(v["cka"][l] for v in per_task.values()) / n for l in layers}
    return row


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------
def section_compute(zoo, suite, tasks, args) -> dict:
    evaluate = Evaluator(zoo, tasks, args.device, args.cka_samples)
    base = zoo.base_state_dict()
    finetuned = [zoo.finetuned_state_dict(t) for t in tasks]
    rows = [summarise("pretrained", "reference", evaluate(base))]
    own = {}
    for t, sd in zip(tasks, finetuned):
        own.update(evaluate(sd, tasks=[t]))
    rows.append(summarise("fine-tuned (individual)", "reference", own))
    for method in data_free_methods():
        with PeakMemory() as mem:
            start = time.perf_counter()
            merged = merge_state_dicts(base, finetuned, method, device=args.device, **DATA_FREE_PARAMS.get(method, {}))
            seconds = time.perf_counter() - start
        rows.append(summarise(method, "data-free", evaluate(merged), seconds=seconds, peak_mb=mem.peak_mb,
                              extra_mb=mem.extra_mb, params=DATA_FREE_PARAMS.get(method, {})))
        log(f"[{suite}] {method}: {rows[-1]['acc']:.2f}% in {seconds:.2f}s, +{mem.extra_mb or 0:.0f} MB")
        del merged
    del finetuned
    from mdamerge.adaptation import ADAPTIVE_METHODS

    timer = StepTimer()
    try:
        for method in args.data_based:
            timer.reset()
            with PeakMemory() as mem:
                start = time.perf_counter()
                result = ADAPTIVE_METHODS[method](zoo, tasks, device=args.device, seed=args.seed,
                                                  **data_based_options(zoo, method, args.steps))
                seconds = time.perf_counter() - start
            steps = list(timer.durations)
            rows.append(summarise(method, "data-based", evaluate(result.state_dict, result.feature_transforms),
                                  seconds=seconds, peak_mb=mem.peak_mb, extra_mb=mem.extra_mb, steps=len(steps),
                                  step_seconds=sum(steps) / len(steps) if steps else None,
                                  setup_seconds=seconds - sum(steps)))
            log(f"[{suite}] {method}: {rows[-1]['acc']:.2f}% in {seconds:.1f}s ({len(steps)} steps)")
            del result
    finally:
        timer.close()
    budget = {k: v for k, v in getattr(zoo, "ADAPTIVE_DEFAULTS", {}).items() if k != "steps"}
    return {"rows": rows, "cka_samples": args.cka_samples, "steps": args.steps, "layers": evaluate.layers,
            "budget": {"batch_size": method_default_batch(), **budget},
            "parameters": sum(v.numel() for v in base.values() if v.is_floating_point()),
            "cka_used": sorted({len(x) for x in evaluate.cka_inputs.values()})}


def section_angles(zoo, suite, tasks, args) -> dict:
    base = zoo.base_state_dict()
    finetuned = [zoo.finetuned_state_dict(t) for t in tasks]
    layers, pooled, excluded = [], {s: {"subspace": [], "directions": []} for s in STAGES}, []
    for name, w0 in base.items():
        if w0.ndim != 2 or not w0.is_floating_point():
            continue
        deltas = [ft[name].double() - w0.double() for ft in finetuned]
        k = default_k(tuple(w0.shape), len(tasks), None)
        stages = alignment_angles(deltas, k)
        entry = {"name": name, "shape": list(w0.shape), "k": k}
        # T k > min(m, n) (e.g. a 2 x 384 token-type embedding, k = 1): the T k directions cannot be
        # orthonormal, so no polar step makes the tasks orthogonal; pooled, such a layer would
        # misreport every method's minimum angle
        degenerate = len(tasks) * k > min(w0.shape)
        if degenerate:
            excluded.append(name)
        for s in STAGES:
            entry[s] = {"subspace": summarize(stages[s].all_subspace()), "directions": summarize(stages[s].directions)}
            if not degenerate:
                pooled[s]["subspace"].append(stages[s].all_subspace())
                pooled[s]["directions"].append(stages[s].directions)
        layers.append(entry)
    overall = {s: {kind: summarize(torch.cat(v)) for kind, v in d.items()} for s, d in pooled.items()}
    return {"layers": layers, "overall": overall, "excluded": excluded}


def section_unseen(zoo, suite, tasks, args) -> dict:
    methods = ",".join(["data-free", *args.data_based])
    options = {"mda": dict(MDA_DEFAULTS), **{m: data_based_options(zoo, m, args.steps) for m in args.data_based}}
    res = run_bench(suite, methods, zoo=zoo, device=args.device, seed=args.seed, val_limit=args.val_limit,
                    progress=False, method_options=options, unseen=args.unseen, log=log)
    rows = [{"method": r.name, "kind": r.kind, "params": r.params, **res.split_averages(r.name),
             "per_task": {t: round(100 * a, 2) for t, a in r.accuracies.items()}, "seconds": r.seconds}
            for r in res.rows]
    return {"unseen": res.unseen, "seen": [t for t in res.tasks if t not in res.unseen], "rows": rows,
            "steps": args.steps, "val_limit": args.val_limit}


def section_defaults(zoo, suite, tasks, args) -> dict:
    """MDA: fixed defaults (scaling 1 and scaling searched) vs the 12-option search; TSV-M alike."""
    from mdamerge.evaluation.evaluate import average, evaluate_backbone

    rows = []
    base = zoo.base_state_dict()
    finetuned = [zoo.finetuned_state_dict(t) for t in tasks]
    for method in ("tsv", "mda"):
        merged = merge_state_dicts(base, finetuned, method, device=args.device)
        val = average(evaluate_backbone(merged, zoo, tasks, "val", args.device, limit=args.val_limit))
        test = average(evaluate_backbone(merged, zoo, tasks, "test", args.device))
        rows.append({"method": method, "choice": "published defaults (scaling 1.0)", "params": {}, "val": 100 * val,
                     "test": 100 * test})
    del finetuned, merged
    fixed = run_bench(suite, "tsv,mda", zoo=zoo, device=args.device, val_limit=args.val_limit, progress=False,
                      method_options={"mda": dict(MDA_DEFAULTS)})
    for name in ("tsv", "mda"):
        r = fixed.row(name)
        rows.append({"method": name, "choice": "defaults, scaling on validation", "params": r.params,
                     "val": 100 * r.val_average, "test": 100 * r.average})
    searched = run_bench(suite, "mda", zoo=zoo, device=args.device, val_limit=args.val_limit, progress=False)
    r = searched.row("mda")
    rows.append({"method": "mda", "choice": "12 option sets x scaling on validation", "params": r.params,
                 "val": 100 * r.val_average, "test": 100 * r.average})
    return {"rows": rows, "val_limit": args.val_limit}


# ---------------------------------------------------------------------------
# Choosing MDA's options on all suites together (item 6)
# ---------------------------------------------------------------------------
ACROSS = "across suites"  # the store's key for sections that span suites
CHOICE_SOURCES = ("docs/results.json", "docs/results_text.json")
CHOICE_POOL = "tasks20"
ACROSS_SECTIONS = ("choice",)
SUBSET_SEARCH = "MDA searched on this subset"  # the choice section's row label for --choice-search
VISION_SUITES = ("tasks8", "tasks14", "tasks20")


def option_key(params: dict) -> str:
    return ", ".join(f"{k}={params.get(k)}" for k in MDA_OPTIONS)


def searched_results(paths) -> dict[str, dict]:
    """``{suite: {"result": BenchResult, "source": path, "started": date}}`` of the saved benchmark pages.

    docs/results.json (``python -m mdamerge.evaluation.results``) holds one result per vision
    suite under ``suites``; docs/results_text.json (``python -m mdamerge.textzoo.results``)
    one under ``result``; a ``bench-<suite>.json`` of ``mdamerge bench`` is one result. Only
    results whose MDA row kept its option search count.
    """
    from mdamerge.evaluation.bench import BenchResult

    out = {}
    for path in paths:
        path = ROOT / path if not Path(path).is_absolute() else Path(path)
        if not path.is_file():
            log(f"choice: {path} not found, skipped")
            continue
        saved = json.loads(path.read_text())
        found = saved.get("suites") or ({saved["result"]["suite"]: saved["result"]} if "result" in saved else {})
        if "rows" in saved:  # one suite's `mdamerge bench` JSON (bench-<suite>.json)
            found = {saved["suite"]: saved}
        for suite, data in found.items():
            result = BenchResult.from_dict(data)
            if any(r.name == "mda" and len(r.trials) > 1 for r in result.rows):
                out[suite] = {"result": result, "source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
                              "started": saved.get("started") or time.strftime(
                                  "%Y-%m-%d %H:%M", time.gmtime(path.stat().st_mtime)) + " (file time)"}
    return out


def option_table(results: dict[str, dict]) -> dict[str, dict]:
    """Per MDA option set: its best validation average (scaling chosen per suite) on each suite."""
    from mdamerge.evaluation.bench import mda_option_summary

    table_ = {}
    for suite, entry in results.items():
        trials = next(r for r in entry["result"].rows if r.name == "mda").trials
        for o in mda_option_summary(entry["result"]):
            row = table_.setdefault(option_key(o), {"options": {k: o[k] for k in MDA_OPTIONS}, "suites": {}})
            grid = {str(t.params["scaling"]): 100 * t.val_average for t in trials
                    if option_key(t.params) == option_key(o) and "scaling" in t.params}
            row["suites"][suite] = {"val": 100 * o["val_average"], "scaling": o["scaling"], "by_scaling": grid}
    complete = {k: v for k, v in table_.items() if len(v["suites"]) == len(results)}
    for row in complete.values():
        row["mean"] = sum(v["val"] for v in row["suites"].values()) / len(row["suites"])
    return complete


def confirmation_subsets(pool: list[str], size: int, count: int, seed: int, exclude: list[list[str]]) -> list[list[str]]:
    """``count`` distinct random ``size``-task subsets of ``pool`` (in pool order), none equal to an excluded one."""
    import random

    rng, seen = random.Random(seed), {frozenset(e) for e in exclude}
    out = []
    for _ in range(1000):
        if len(out) == count:
            break
        pick = frozenset(rng.sample(pool, size))
        if pick not in seen:
            seen.add(pick)
            out.append([t for t in pool if t in pick])
    return out


def section_choice(zoo, suite, tasks, args) -> dict:
    """Choose MDA's options by the mean validation average over every searched suite; confirm on new task sets."""
    from mdamerge.zoo.tasks import SUITES

    results = searched_results(args.choice_from.split(","))
    if not results:
        sys.exit(f"error: no saved MDA option search in {args.choice_from}; run `python -m mdamerge.evaluation.results` first")
    options = option_table(results)
    ranked = sorted(options.values(), key=lambda r: -r["mean"])
    chosen = ranked[0]["options"]
    pool = list(SUITES[CHOICE_POOL])
    missing = zoo.missing(pool)
    if missing:
        sys.exit(f"error: the zoo at {zoo.root} lacks {', '.join(missing)}; run `mdamerge zoo build --suite {CHOICE_POOL}`")
    subsets = confirmation_subsets(pool, args.choice_size, args.choice_subsets, args.seed,
                                   exclude=[list(SUITES[s]) for s in SUITES if len(SUITES[s]) == args.choice_size])
    confirm = []
    for i, subset in enumerate(subsets):
        common = dict(zoo=zoo, device=args.device, val_limit=args.val_limit, progress=False, build=False, log=None)
        # one benchmark run per option set (its pretrained / fine-tuned rows are computed once per run)
        runs = [("tsv,mda", {"mda": dict(MDA_DEFAULTS)}, {"tsv": "TSV-M", "mda": "MDA fixed defaults"})]
        if chosen != MDA_DEFAULTS:
            runs.append(("mda", {"mda": dict(chosen)}, {"mda": "MDA all-suite choice"}))
        if args.choice_search:
            runs.append(("mda", None, {"mda": SUBSET_SEARCH}))
        rows = []
        for methods, options, labels in runs:
            start = time.perf_counter()
            res = run_bench(subset, methods, method_options=options, **common)
            for method, label in labels.items():
                r = res.row(method)
                rows.append({"label": label, "params": r.params, "val": 100 * r.val_average, "test": 100 * r.average,
                             "per_task": {t: round(100 * a, 2) for t, a in r.accuracies.items()},
                             "seconds": time.perf_counter() - start})
                log(f"[choice] subset {i}: {label} val {rows[-1]['val']:.2f} test {rows[-1]['test']:.2f} ({r.params})")
        confirm.append({"tasks": subset, "rows": rows})
    tsv_val = {}
    for s, e in results.items():
        r = next((r for r in e["result"].rows if r.name == "tsv" and r.val_average is not None), None)
        if r is not None:
            tsv_val[s] = {"val": 100 * r.val_average, "scaling": r.params.get("scaling")}
    return {"tsv_val": tsv_val, "sources": {s: {"source": e["source"], "started": e["started"],
                            "val_limit": e["result"].meta.get("val_limit")} for s, e in results.items()},
            "options": ranked, "chosen": chosen, "defaults": dict(MDA_DEFAULTS), "confirm": confirm,
            "pool": CHOICE_POOL, "size": args.choice_size, "seed": args.seed, "val_limit": args.val_limit}


def synthetic_task_vectors(t: int, d: int, seed: int) -> list[torch.Tensor]:
    """``t`` d x d task vectors: a shared low-rank part plus task-specific parts, power-law spectra (s_i ~ i^-1)."""
    g = torch.Generator().manual_seed(seed)
    r = d // 4
    spectrum = 1.0 / torch.arange(1, r + 1, dtype=torch.float64)
    shared_u = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64, generator=g))[0]
    out = []
    for _ in range(t):
        u = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64, generator=g) + 0.5 * shared_u)[0]
        v = torch.linalg.qr(torch.randn(d, r, dtype=torch.float64, generator=g))[0]
        out.append((u * spectrum) @ v.T)
    return out


def sign_changes(deltas: list[torch.Tensor], k: int, seeds: int) -> dict:
    trip = task_triplets(deltas, k)  # one SVD per task; the modes differ only in the signs
    mda = lambda mode, seed=0: mda_delta_with_signs(None, k, mode, seed=seed, triplets=trip)  # noqa: E731
    canonical = mda("canonical")
    random = [relative_change(mda("random", s), canonical) for s in range(seeds)]
    return {"K": len(deltas) * k, "lapack": relative_change(mda("lapack"), canonical),
            "aligned": relative_change(mda("aligned"), canonical),
            "random_mean": sum(random) / len(random), "random_max": max(random),
            "predicted_random": math.sqrt(2 / (len(deltas) * k - 1))}


def layerwise_merge(base: dict, finetuned: list[dict], merge_2d) -> dict:
    """``base + merge_2d(deltas, k)`` on 2-D tensors, ``base + mean delta`` elsewhere (unit scaling)."""
    out = {}
    for name, w0 in base.items():
        if not w0.is_floating_point():
            out[name] = w0
            continue
        deltas = [ft[name].double() - w0.double() for ft in finetuned]
        if w0.ndim == 2:
            delta = merge_2d(deltas, default_k(tuple(w0.shape), len(finetuned), None))
        else:
            delta = sum(deltas) / len(deltas)
        out[name] = delta.float()  # unit delta; scaled below
    return out


def section_signs(zoo, suite, tasks, args) -> dict:
    from mdamerge.evaluation.evaluate import average, evaluate_backbone

    base = zoo.base_state_dict()
    finetuned = [zoo.finetuned_state_dict(t) for t in tasks]
    t = len(tasks)
    changes = []
    zoo_layers = [n for n, w in base.items() if w.ndim == 2 and w.is_floating_point()]
    per_layer = []
    for name in zoo_layers:
        deltas = [ft[name].double() - base[name].double() for ft in finetuned]
        per_layer.append({"name": name, **sign_changes(deltas, default_k(tuple(base[name].shape), t, None), 3)})
    changes.append({"where": f"zoo {suite} layers (mean over {len(per_layer)})", "width": "x".join(
        sorted({str(min(base[n].shape)) for n in zoo_layers})), **{
        k: sum(l[k] for l in per_layer) / len(per_layer) for k in ("K", "lapack", "aligned", "random_mean", "random_max", "predicted_random")}})
    for d in (384, 768):
        c = [sign_changes(synthetic_task_vectors(8, d, seed), d // 8, 3) for seed in range(2)]
        changes.append({"where": f"synthetic {d}x{d}, T=8 (mean of 2 draws)", "width": str(d),
                        **{k: sum(x[k] for x in c) / len(c) for k in c[0]}})
    # accuracy of each sign choice (dense float64 SVDs for all, so only the signs differ)
    variants = {
        "TSV-M": lambda deltas, k: tsv_delta(deltas, k),
        "MDA canonical signs": lambda deltas, k: mda_delta_with_signs(deltas, k, "canonical"),
        "MDA LAPACK signs": lambda deltas, k: mda_delta_with_signs(deltas, k, "lapack"),
        "MDA aligned signs": lambda deltas, k: mda_delta_with_signs(deltas, k, "aligned"),
        **{f"MDA random signs (seed {s})": (lambda deltas, k, s=s: mda_delta_with_signs(deltas, k, "random", seed=s))
           for s in range(args.sign_seeds)},
    }
    accuracy = []
    for label, fn in variants.items():
        unit = layerwise_merge(base, finetuned, fn)
        scaled = lambda s: {n: (base[n] + s * d) if base[n].is_floating_point() else d for n, d in unit.items()}  # noqa: E731
        vals = {s: average(evaluate_backbone(scaled(s), zoo, tasks, "val", args.device, limit=args.val_limit))
                for s in SIGN_SCALINGS}
        best = max(vals, key=lambda s: (vals[s], -abs(s - 0.6)))
        test = evaluate_backbone(scaled(best), zoo, tasks, "test", args.device)
        accuracy.append({"variant": label, "scaling": best, "val": 100 * vals[best], "test": 100 * average(test),
                         "val_by_scaling": {str(s): 100 * v for s, v in vals.items()},
                         "per_task": {k: round(100 * v, 2) for k, v in test.items()}})
        log(f"[{suite}] {label}: val {100 * vals[best]:.2f} test {100 * average(test):.2f} (scaling {best})")
    return {"changes": changes, "per_layer": per_layer, "accuracy": accuracy, "val_limit": args.val_limit,
            "scalings": list(SIGN_SCALINGS)}


def tsv_delta(deltas: list[torch.Tensor], k: int) -> torch.Tensor:
    parts = [torch.linalg.svd(d, full_matrices=False) for d in deltas]
    u = torch.cat([p[0][:, :k] for p in parts], 1)
    s = torch.cat([p[1][:k] for p in parts])
    v = torch.cat([p[2][:k].mT for p in parts], 1)
    return rebuild(polar_factor(u), s, polar_factor(v))


RANK_FRACTIONS = ("0.01", "0.1", "1/T", "0.5")


def rank_fraction(label: str, t: int) -> float:
    return 1.0 / t if label == "1/T" else float(label)


def section_ranks(zoo, suite, tasks, args) -> dict:
    """Rank sweep of data-free MDA (fixed default options): k = fraction x min(m, n) per task, scaling on validation."""
    rows = []
    common = dict(zoo=zoo, device=args.device, val_limit=args.val_limit, progress=False, build=False)
    for label in RANK_FRACTIONS:
        start = time.perf_counter()
        options = {"mda": {**MDA_DEFAULTS, "rank_fraction": rank_fraction(label, len(tasks))}}
        r = run_bench(suite, "mda", method_options=options, **common).row("mda")
        rows.append({"k": label, "params": {"scaling": r.params.get("scaling")}, "val": 100 * r.val_average,
                     "test": 100 * r.average, "seconds": time.perf_counter() - start,
                     "per_task": {t: round(100 * a, 2) for t, a in r.accuracies.items()}})
        log(f"[{suite}] ranks k={label}: val {rows[-1]['val']:.2f} test {rows[-1]['test']:.2f}")
    res = run_bench(suite, "tsv", **common)
    r = res.row("tsv")
    return {"rows": rows, "tsv": {"params": r.params, "val": 100 * r.val_average, "test": 100 * r.average},
            "val_limit": args.val_limit, "pretrained": 100 * res.row("pretrained").average,
            "finetuned": 100 * res.row("fine-tuned").average}


def render_ranks(d: dict) -> list[str]:
    lines = [f"Data-free MDA with its fixed default options, k = fraction x min(m, n) triplets per task (1/T is the "
             f"default), scaling chosen on validation (first {d['val_limit']} examples per task); TSV-M (default k, "
             f"scaling on validation) for reference. Pretrained {d['pretrained']:.2f}%, fine-tuned {d['finetuned']:.2f}%.", ""]
    rows = [[f"MDA k = {r['k']}", r["params"]["scaling"], fmt(r["val"]), fmt(r["test"]), fmt(r["seconds"], 0)]
            for r in d["rows"]]
    rows.append(["TSV-M", d["tsv"]["params"].get("scaling"), fmt(d["tsv"]["val"]), fmt(d["tsv"]["test"]), "-"])
    lines += table(["row", "scaling", "val avg (%)", "test avg (%)", "wall time (s)"], rows)
    return lines


def ranks_statement(k: dict) -> str:
    best = max(k["rows"], key=lambda r: r["val"])
    default = next(r for r in k["rows"] if r["k"] == "1/T")
    tests = ", ".join(f"k={r['k']} {r['test']:.1f}%" for r in k["rows"])
    return (f"- **Rank sweep** (data-free MDA, scaling on validation): test {tests}; TSV-M {k['tsv']['test']:.1f}%. "
            f"Validation picks k={best['k']} ({best['test']:.1f}% on test); the default k = 1/T tests "
            f"{default['test'] - k['tsv']['test']:+.1f} points from TSV-M.")


ALPHAS, BETAS = (0.0, 0.4, 0.8, 1.6), (0.0, 0.2, 1.0, 5.0)


def sensitivity_configs(grid: str) -> list[tuple[float, float]]:
    """(alpha, beta) pairs: the full 4 x 4 grid, or one at a time around alpha = 0.8, beta = 0.2 ("axes")."""
    if grid == "full":
        return [(a, b) for a in ALPHAS for b in BETAS]
    return [(a, 0.2) for a in ALPHAS] + [(0.8, b) for b in BETAS if b != 0.2]


def reusable_rows(previous: dict | None, method: str, steps: int, fingerprint: str) -> dict[tuple, dict]:
    """Stored rows of an earlier run with the same method, steps and zoo, by (alpha, beta, diversity)."""
    if not previous or previous.get("method") != method or previous.get("steps") != steps \
            or previous.get("zoo_fingerprint") != fingerprint:
        return {}
    return {(r["alpha"], r["beta"], r["diversity"]): r for r in previous["rows"]}


def section_sensitivity(zoo, suite, tasks, args) -> dict:
    """alpha x beta (x diversity on / off) of MDA's feature alignment.

    With ``--sensitivity-reuse``, configurations already stored from an earlier run with the
    same method, steps and zoo are taken from it; the first reused one is run again and the
    two accuracies are recorded (the training is seeded, so they should agree at the same
    torch thread count).
    """
    from mdamerge.adaptation import ADAPTIVE_METHODS

    evaluate = Evaluator(zoo, tasks, args.device, cka_samples=0)
    previous = reusable_rows(getattr(args, "previous", None), args.sensitivity_method, args.sensitivity_steps,
                             zoo.settings.fingerprint()) if args.sensitivity_reuse else {}
    rows, recheck = [], None

    def run(alpha, beta, diversity):
        start = time.perf_counter()
        result = ADAPTIVE_METHODS[args.sensitivity_method](
            zoo, tasks, device=args.device, seed=args.seed, alpha=alpha, beta=beta, diversity=diversity,
            **data_based_options(zoo, args.sensitivity_method, args.sensitivity_steps))
        per_task = evaluate(result.state_dict, result.feature_transforms, cka=False)
        return {**summarise(args.sensitivity_method, "variant", per_task), "alpha": alpha, "beta": beta,
                "diversity": diversity, "seconds": time.perf_counter() - start}

    for diversity in [float(g) for g in args.sensitivity_diversity.split(",")]:
        for alpha, beta in sensitivity_configs(args.sensitivity_grid):
            old = previous.get((alpha, beta, diversity))
            if old is not None and recheck is None:
                fresh = run(alpha, beta, diversity)
                recheck = {"alpha": alpha, "beta": beta, "diversity": diversity, "stored": old["acc"],
                           "rerun": fresh["acc"], "stored_date": previous_date(args)}
                rows.append(fresh)
            elif old is not None:
                rows.append({**old, "reused": True})
            else:
                rows.append(run(alpha, beta, diversity))
            log(f"[{suite}] sensitivity alpha={alpha} beta={beta} diversity={diversity}: {rows[-1]['acc']:.2f}%"
                + (" (stored)" if rows[-1].get("reused") else ""))
    return {"rows": rows, "method": args.sensitivity_method, "steps": args.sensitivity_steps,
            "grid": args.sensitivity_grid, "recheck": recheck}


def previous_date(args) -> str:
    return (getattr(args, "previous", None) or {}).get("date", "?")


SECTIONS = {"compute": section_compute, "angles": section_angles, "unseen": section_unseen,
            "defaults": section_defaults, "signs": section_signs, "sensitivity": section_sensitivity,
            "choice": section_choice, "ranks": section_ranks}


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
def fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def table(headers, rows) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
            *["| " + " | ".join(str(c) for c in r) + " |" for r in rows], ""]


def budget_text(d: dict) -> str:
    """The data-based budget of a compute section: batch per task and the zoo's other settings."""
    budget = dict(d.get("budget") or {"batch_size": 16})  # sections stored before the budget was recorded: batch 16
    text = f"batch {budget.pop('batch_size')} per task"
    return text + "".join(f", {k} {v}" for k, v in budget.items())


def size_text(d: dict) -> str:
    if "parameters" not in d:  # stored before the size was recorded: the vision zoo
        return "the vision zoo's models are 1.2 M parameters, 5 MB each"
    return f"the zoo's backbone has {d['parameters'] / 1e6:.1f} M parameters, {4 * d['parameters'] / 2**20:.0f} MB in float32"


def cka_inputs_text(d: dict) -> str:
    used = d.get("cka_used")
    if used and max(used) < d["cka_samples"]:  # every task has fewer test inputs than the cap
        return f"all test inputs of each task ({'/'.join(map(str, used))}; the cap {d['cka_samples']} not reached)"
    return f"the first {d['cka_samples']} test inputs of each task"


def layer_label(name: str) -> str:
    """``encoder.layers.3`` / ``encoder.layer.3`` -> ``block 3``; other names unchanged."""
    return re.sub(r"^.*\.(\d+)$", r"block \1", name)


def render_compute(d: dict) -> list[str]:
    lines = [f"Data-based methods: **{d['steps']} steps** ({budget_text(d)}; FusionBench uses 1000 of batch 16). Data-free methods "
             "with their published defaults (no validation search). Merge wall time and peak memory are measured "
             "around the merge alone, in one process (peak resident memory above what the process held before the "
             "merge; the kernel's high-water mark is reset per method), with the base and fine-tuned state dicts "
             "already in memory. Data-based: total = setup (loading the unlabeled data, building the parameter space, "
             "Procrustes initialisation, MDA-AM's AdaMerging stage is counted in its steps) + steps x time per step. "
             "Caveat: memory the process freed earlier (evaluation, data) is reused by later allocations without "
             "raising the high-water mark, so the small data-free figures are lower bounds "
             f"({size_text(d)}); benchmarks/scale.py measures merge memory in fresh processes.", ""]
    rows = []
    for r in d["rows"]:
        if r["kind"] == "reference":
            continue
        rows.append([r["method"], r["kind"], fmt(r.get("seconds")), fmt(above_start(r.get("extra_mb")), 0), fmt(r.get("peak_mb"), 0),
                     r.get("steps", "-"), fmt(None if r.get("step_seconds") is None else 1000 * r["step_seconds"], 0),
                     fmt(r.get("setup_seconds"), 1), fmt(r["acc"])])
    lines += ["#### Compute", ""]
    lines += table(["method", "kind", "merge wall time (s)", "peak memory above start (MB)", "process peak (MB)",
                    "steps", "time per step (ms)", "setup (s)", "test acc. (%)"], rows)
    note = overrides_note(d["rows"])
    lines += [note[-1], ""] if note else []
    layers = d["layers"] + ["features"]
    lines += ["#### Delta_ETF and linear CKA with the fine-tuned models", "",
              f"Delta_ETF of the class-mean features (docs/diagnostics.md), mean over tasks. CKA: linear CKA between "
              f"the model's and the task's fine-tuned model's first-token features after each block (the class "
              f"token; [CLS] in a text encoder) and the output features (what the heads see), on {cka_inputs_text(d)}, "
              f"mean over tasks.", ""]
    lines += table(["model", "acc. (%)", "Delta_ETF", *[f"CKA {layer_label(l)}" for l in layers]],
                   [[r["method"], fmt(r["acc"]), fmt(r["delta_etf"], 3), *[fmt(r.get("cka", {}).get(l), 3) for l in layers]]
                    for r in d["rows"]])
    return lines


def render_angles(d: dict) -> list[str]:
    o = d["overall"]
    lines = ["Principal angles between task i's and task j's blocks of U = [U_1..U_T] (top-k left singular vectors "
             "per task, k = floor(min(m,n)/T)), all 2-D layers and task pairs pooled; direction angles: between "
             "single directions of different tasks."
             + (f" Left out of the pooled figures (listed per layer below): {', '.join(d['excluded'])}, where T k > "
                "min(m, n), so the T k directions cannot be orthonormal." if d.get("excluded") else ""), ""]
    lines += table(["stage", "subspace angle mean", "min", "q25", "median", "max", "direction angle min", "median", "max"],
                   [[s, *[fmt(o[s]["subspace"][q]) for q in ("mean", "min", "q25", "median", "max")],
                     *[fmt(o[s]["directions"][q], 3) for q in ("min", "median", "max")]] for s in STAGES])
    lines += ["Per layer (mean / min subspace angle, degrees):", ""]
    lines += table(["layer", "k", *STAGES],
                   [[l["name"], l["k"], *[f"{fmt(l[s]['subspace']['mean'])} / {fmt(l[s]['subspace']['min'])}" for s in STAGES]]
                    for l in d["layers"]])
    return lines


def render_unseen(d: dict) -> list[str]:
    lines = [f"Merged on {', '.join(d['seen'])}; held out (never merged, never seen by the data-based methods): "
             f"**{', '.join(d['unseen'])}**, tested through their frozen heads. Data-free scalings chosen on the "
             f"seen tasks' validation data ({d['val_limit']} per task), MDA with its fixed default options; "
             f"data-based methods {d['steps']} steps on the seen tasks' unlabeled test inputs.", ""]
    lines += table(["method", "kind", "seen avg (%)", "unseen avg (%)", *d["unseen"], "chosen"],
                   [[r["method"], r["kind"], fmt(100 * r["seen"]), fmt(100 * r["unseen"]),
                     *[fmt(r["per_task"][t]) for t in d["unseen"]],
                     ", ".join(f"{k}={v}" for k, v in r["params"].items() if k not in ("steps", "progress")) or "-"]
                    for r in d["rows"]])
    return lines


def render_defaults(d: dict) -> list[str]:
    lines = [f"Validation average over the first {d['val_limit']} validation examples per task; test on all.", ""]
    lines += table(["method", "how chosen", "chosen", "val avg (%)", "test avg (%)"],
                   [[r["method"], r["choice"], ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-",
                     fmt(r["val"]), fmt(r["test"])] for r in d["rows"]])
    return lines


def render_signs(d: dict) -> list[str]:
    lines = ["Relative change ||Delta_mode - Delta_canonical||_F / ||Delta_canonical||_F of data-free MDA's merged "
             "delta (defaults: polar, ETF over all K directions, left side; scaling 1). 'predicted' = sqrt(2/(K-1)), "
             "the expected change between two independent random sign patterns when the polar factors are "
             "orthonormal (docs/method.md).", ""]
    lines += table(["layers", "K", "LAPACK raw", "random (mean)", "random (max)", "predicted", "aligned"],
                   [[c["where"], fmt(c["K"], 0), fmt(100 * c["lapack"], 1) + "%", fmt(100 * c["random_mean"], 1) + "%",
                     fmt(100 * c["random_max"], 1) + "%", fmt(100 * c["predicted_random"], 1) + "%",
                     fmt(100 * c["aligned"], 1) + "%"] for c in d["changes"]])
    lines += [f"Accuracy of each sign choice (scaling chosen on validation from {d['scalings']}, "
              f"{d['val_limit']} validation examples per task; dense float64 SVDs for every row):", ""]
    lines += table(["variant", "scaling", "val avg (%)", "test avg (%)"],
                   [[a["variant"], a["scaling"], fmt(a["val"]), fmt(a["test"])] for a in d["accuracy"]])
    return lines


def render_sensitivity(d: dict) -> list[str]:
    rows = d["rows"]
    grid = d.get("grid", "axes")
    acc = {(r["alpha"], r["beta"], r["diversity"]): r["acc"] for r in rows}
    lines = [f"{d['method']}, {d['steps']} steps, test accuracy (%), "
             + ("the full 4 x 4 alpha x beta grid, with and without the diversity term."
                if grid == "full" and len({r["diversity"] for r in rows}) == 2 else
                "the full 4 x 4 alpha x beta grid." if grid == "full" else
                "one setting varied at a time around alpha = 0.8, beta = 0.2 (not the full grid)."), ""]
    reused = sum(1 for r in rows if r.get("reused"))
    rc = d.get("recheck")
    if reused:
        lines += [f"{reused} of the {len(rows)} cells are stored results of the earlier one-at-a-time run "
                  f"({rc['stored_date'] if rc else '?'}, same method, steps and zoo); the rest ran in this one."
                  + (f" Reproducibility check: alpha={rc['alpha']}, beta={rc['beta']}, diversity={rc['diversity']} "
                     f"rerun gives {rc['rerun']:.2f}% against the stored {rc['stored']:.2f}%." if rc else ""), ""]
    if grid == "full":
        present = {r["diversity"] for r in rows}
        for diversity, title in ((1.0, "with the diversity term (gamma = 1)"), (0.0, "without it (gamma = 0)")):
            if diversity not in present:
                lines += [f"Not run {title}.", ""]
                continue
            lines += [f"Test accuracy (%), {title}; rows alpha, columns beta:", ""]
            lines += table(["alpha \\ beta", *[str(b) for b in BETAS]],
                           [[str(a), *[fmt(acc.get((a, b, diversity))) for b in BETAS]] for a in ALPHAS])
        return lines
    lines += table(["alpha", "beta", "with diversity (gamma=1)", "without diversity (gamma=0)"],
                   [[a, b, fmt(acc.get((a, b, 1.0))), fmt(acc.get((a, b, 0.0)))]
                    for a, b in sensitivity_configs("axes")])
    return lines


def short_tasks(tasks: list[str]) -> str:
    return ", ".join(tasks)


def choice_confirm_diffs(d: dict, label: str) -> list[float]:
    out = []
    for c in d["confirm"]:
        rows = {r["label"]: r for r in c["rows"]}
        if label in rows and "TSV-M" in rows:
            out.append(rows[label]["test"] - rows["TSV-M"]["test"])
    return out


def above_start(extra_mb: float | None) -> float | None:
    """Peak memory above the start, floored at 0: the reset high-water mark can read a little below the
    resident size sampled before the merge when the merge frees more than it allocates (printed "-0")."""
    return None if extra_mb is None else max(0.0, extra_mb)


def render_choice(d: dict) -> list[str]:
    suites = list(d["sources"])
    src = "; ".join(f"{s} from {e['source']} (run started {e['started']}, first {e['val_limit']} validation examples "
                    f"per task)" for s, e in d["sources"].items())
    lines = [f"Validation averages of MDA's saved option searches: {src}. **Rule**: each of the {len(d['options'])} "
             "option sets keeps its best scaling on each suite (the benchmark's search), its validation averages "
             "are averaged over the suites with equal weight, and the highest mean is the all-suite choice. "
             "TSV-M's row (scaling chosen on validation, same runs) is the reference.", ""]
    tsv = d.get("tsv_val", {})
    rows = []
    if tsv:
        rows.append(["**TSV-M (reference)**", *[f"{fmt(tsv[s]['val'])} ({tsv[s]['scaling']})" for s in suites],
                     fmt(sum(tsv[s]["val"] for s in suites) / len(suites)), "-"])
    for rank, o in enumerate(d["options"], 1):
        name = option_key(o["options"])
        if o["options"] == d["defaults"]:
            name += " **(fixed defaults)**"
        if o["options"] == d["chosen"]:
            name += " **(all-suite choice)**"
        rows.append([name, *[f"{fmt(o['suites'][s]['val'])} ({o['suites'][s]['scaling']})" for s in suites],
                     fmt(o["mean"]), rank])
    lines += table(["option set", *[f"{s} val % (scaling)" for s in suites], "mean", "rank"], rows)
    searched = any(r["label"] == SUBSET_SEARCH for c in d["confirm"] for r in c["rows"])
    searched_note = f"; the row '{SUBSET_SEARCH}' also its option set, among the {len(d['options'])}" if searched else ""
    lines += [f"Confirmation on {len(d['confirm'])} random {d['size']}-task subsets of {d['pool']} (Python "
              f"`random.Random({d['seed']})`, none equal to a named suite): each row's scaling (and only the scaling"
              f"{searched_note}) chosen on the subset's validation data (first {d['val_limit']} examples per task), test on all. "
              f"Caveat: these task *combinations* were not used for choosing, but every task is in {d['pool']}, which "
              "was; the zoo has no other vision tasks.", ""]
    trows = []
    for i, c in enumerate(d["confirm"], 1):
        ref = next(r for r in c["rows"] if r["label"] == "TSV-M")
        for r in c["rows"]:
            trows.append([f"{i}: {short_tasks(c['tasks'])}" if r is c["rows"][0] else f"{i}", r["label"],
                          ", ".join(f"{k}={v}" for k, v in r["params"].items()), fmt(r["val"]), fmt(r["test"]),
                          "-" if r is ref else f"{r['test'] - ref['test']:+.2f}"])
    lines += table(["subset", "row", "chosen on validation", "val avg (%)", "test avg (%)", "test - TSV-M"], trows)
    return lines


def choice_statement(d: dict) -> str:
    suites = ", ".join(d["sources"])
    top, n = d["options"][0], len(d["options"])
    fixed = next((o for o in d["options"] if o["options"] == d["defaults"]), None)
    rank = d["options"].index(fixed) + 1 if fixed else None
    tsv = d.get("tsv_val", {})
    text = (f"- **MDA's options chosen on all suites together** (mean validation average over {suites}, scaling chosen "
            f"per suite): {option_key(top['options'])} (mean {top['mean']:.2f}%)")
    if fixed:
        text += (f"; the fixed defaults rank {rank} of {n} ({fixed['mean']:.2f}%, {fixed['mean'] - top['mean']:+.2f})"
                 if fixed is not top else "; that is the fixed defaults")
    spread = top["mean"] - d["options"][-1]["mean"]
    text += f"; the {n} option sets' means span {spread:.2f} points"
    gap = None
    if tsv and len(tsv) == len(d["sources"]):
        tsv_mean = sum(v["val"] for v in tsv.values()) / len(tsv)
        gap = top["mean"] - tsv_mean
        text += f", TSV-M's mean is {tsv_mean:.2f}% (best option set {gap:+.2f})"
    text += "."
    parts = []
    for label in ("MDA fixed defaults", "MDA all-suite choice", SUBSET_SEARCH):
        diffs = choice_confirm_diffs(d, label)
        if diffs:
            mean = sum(diffs) / len(diffs)
            parts.append(f"{label} {', '.join(f'{x:+.2f}' for x in diffs)} (mean {mean:+.2f})")
    if parts:
        text += (f" On {len(d['confirm'])} {d['size']}-task combinations not used for choosing, test minus TSV-M: "
                 + "; ".join(parts) + ".")
    diffs = choice_confirm_diffs(d, "MDA all-suite choice") or choice_confirm_diffs(d, "MDA fixed defaults")
    separates = (gap is not None and gap > 0.5 and diffs and all(x > 0.5 for x in diffs))
    text += (" **Plain statement: no MDA option set separates from TSV-M beyond noise** (a separation would need more "
             "than half a point on validation over the suites and on test on every new combination)."
             if not separates else
             " One option set beats TSV-M by more than half a point on validation over the suites and on test on "
             "every new combination.")
    return text


RENDER = {"compute": ("Compute, Delta_ETF and CKA (items 3, 4)", render_compute),
          "angles": ("Task-subspace angles before and after alignment (item 3)", render_angles),
          "unseen": ("Generalisation to unseen tasks (item 1)", render_unseen),
          "defaults": ("MDA's fixed defaults and the validation search (item 6)", render_defaults),
          "signs": ("Sign convention of the ETF step (item 6)", render_signs),
          "sensitivity": ("Loss-weight sensitivity of the feature alignment (item 5)", render_sensitivity),
          "ranks": ("Rank sweep of data-free MDA (item 5)", render_ranks),
          "choice": ("MDA's options chosen on all suites together, confirmed on new task combinations (item 6)",
                     render_choice)}


def span(values, digits: int, unit: str) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.{digits}f}{unit}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}{unit}"


def compute_statement(c: dict) -> str | None:
    """What the compute table says about cost: data-free vs data-based wall time, AdaMerging vs MDA's variants."""
    timed = [r for r in c["rows"] if r.get("seconds") is not None]
    free = [r for r in timed if r["kind"] == "data-free"]
    based = [r for r in timed if r["kind"] == "data-based"]
    if not free:
        return None
    rows = {r["method"]: r for r in timed}
    text = f"- **Compute** (merge wall time, one process): data-free merges take {span([r['seconds'] for r in free], 2, ' s')}"
    if "mda" in rows and "tsv" in rows:
        text += f" (data-free MDA {rows['mda']['seconds']:.2f} s, TSV-M {rows['tsv']['seconds']:.2f} s)"
    if based:
        slowest = max(based, key=lambda r: r["seconds"])
        text += f"; the data-based methods {span([r['seconds'] for r in based], 0, ' s')} at {c['steps']} steps"
        doubled = [r["method"] for r in based if r.get("steps") and r["steps"] != c["steps"]]
        if doubled:
            text += f" ({', '.join(doubled)}: their AdaMerging stage counted in their steps)"
        ada = [r for r in based if r["method"].startswith("adamerging")]
        mda = [r for r in based if r["method"].startswith("mda")]
        per_step = lambda rs: span([1000 * r["step_seconds"] for r in rs if r.get("step_seconds")], 0, " ms")  # noqa: E731
        if ada and mda:
            text += (f": AdaMerging {span([r['seconds'] for r in ada], 0, ' s')} ({per_step(ada)} per step), "
                     f"MDA's data-based variants {span([r['seconds'] for r in mda], 0, ' s')} ({per_step(mda)} per step, "
                     f"setup {span([r['setup_seconds'] for r in mda], 1, ' s')})")
        if "mda" in rows and rows["mda"]["seconds"] > 0:
            text += (f". The slowest, {slowest['method']}, takes {slowest['seconds'] / rows['mda']['seconds']:.0f}x "
                     "data-free MDA's merge time")
    return text + "."


def reversed_order(a: dict, b: dict) -> str:
    """A note when validation and test order two rows differently by 0.5 points or more (then neither is a separation)."""
    dv, dt = a["val"] - b["val"], a["test"] - b["test"]
    if dv * dt < 0 and max(abs(dv), abs(dt)) >= 0.5:
        return ", the reverse order, so the test gap is not a separation"
    return ""


def search_verdict(fixed: dict, searched: dict) -> str:
    """Whether the 12-option validation search paid on test against the fixed defaults."""
    dv, dt = searched["val"] - fixed["val"], searched["test"] - fixed["test"]
    if f"{dt:.1f}" in ("0.0", "-0.0"):
        return "On test the search and the fixed defaults tie."
    verb = "gains" if dt > 0 else "loses"
    text = f"The search {verb} {abs(dt):.1f} test points against the fixed defaults"
    if dv > 0 and dt < 0:
        text += f" despite its {dv:.1f}-point lead on validation"
    return text + "."


def sign_test_check(far: dict, tsv: dict) -> str:
    """The sign variant furthest from TSV-M on validation (more than half a point): does that carry over to test?"""
    dt = far["test"] - tsv["test"]
    return (f"{far['variant']} is {far['val'] - tsv['val']:+.2f} points from TSV-M on validation (more than half a "
            f"point) and {dt:+.1f} on test ({far['test']:.1f}%)"
            + (": the validation gap does not carry over to test." if abs(dt) < 0.5 else "."))


def scaling_note(a: dict, b: dict) -> str:
    """Where two rows ran at different validation-chosen scalings, say so (it moves a merge toward the pretrained one)."""
    sa, sb = a.get("params", {}).get("scaling"), b.get("params", {}).get("scaling")
    return f", at validation-chosen scalings {sa} vs {sb}" if sa is not None and sb is not None and sa != sb else ""


def statements(sections: dict) -> list[str]:
    """Plain statements computed from the stored numbers (so they stay true when the tables are regenerated)."""
    out = []
    c = sections.get("compute")
    if c:
        rows = {r["method"]: r for r in c["rows"]}
        merged = [r for r in c["rows"] if r["kind"] != "reference"]
        lo, hi = min(merged, key=lambda r: r["delta_etf"]), max(merged, key=lambda r: r["delta_etf"])
        mda_rows = [r for r in merged if r["method"].startswith("mda")]
        others = [r for r in merged if not r["method"].startswith("mda")]
        best_other = min(others, key=lambda r: r["delta_etf"])
        best_mda = min(mda_rows, key=lambda r: r["delta_etf"])
        gain = best_other["delta_etf"] - best_mda["delta_etf"]
        ft = rows["fine-tuned (individual)"]["delta_etf"]
        floor = min(r["delta_etf"] for r in c["rows"])
        out.append(
            f"- **Delta_ETF** (0 = simplex ETF, at most 2): every merged model measures {lo['delta_etf']:.3f}-{hi['delta_etf']:.3f} "
            f"(lowest {lo['method']}, highest {hi['method']}); the pretrained model {rows['pretrained']['delta_etf']:.3f}, "
            f"the fine-tuned models {ft:.3f}. "
            + (f"Data-free MDA {rows['mda']['delta_etf']:.3f}, TSV-M {rows['tsv']['delta_etf']:.3f}. "
               if "mda" in rows and "tsv" in rows else "")
            + f"The lowest MDA variant ({best_mda['method']}, {best_mda['delta_etf']:.3f}) is "
            + (f"{gain:.3f} below the lowest baseline ({best_other['method']}, {best_other['delta_etf']:.3f}). "
               if gain > 0 else f"not below the lowest baseline ({best_other['method']}, {best_other['delta_etf']:.3f}). ")
            + (f"No model's class-mean features are close to a simplex ETF (the lowest Delta_ETF of any model here, "
               f"the fine-tuned ones included, is {floor:.3f}), and " if floor > 0.25 else "")
            + (f"the merged models differ in Delta_ETF by at most {hi['delta_etf'] - lo['delta_etf']:.3f}: the paper's "
               "claim that MDA lowers Delta_ETF is not reproduced here in any meaningful sense." if gain < 0.01 else
               "MDA lowers Delta_ETF by at least 0.01 here."))
        layer = "features"
        ranked = sorted(merged, key=lambda r: -r.get("cka", {}).get(layer, 0))
        out.append(
            f"- **CKA** with the fine-tuned models at the output features: highest {ranked[0]['method']} "
            f"({ranked[0]['cka'][layer]:.3f}), lowest {ranked[-1]['method']} ({ranked[-1]['cka'][layer]:.3f}); "
            f"pretrained {rows['pretrained']['cka'][layer]:.3f}"
            + (f", TSV-M {rows['tsv']['cka'][layer]:.3f}, data-free MDA {rows['mda']['cka'][layer]:.3f}" if "mda" in rows else "")
            + ". Higher CKA goes with higher accuracy only loosely (see the table).")
        cost = compute_statement(c)
        if cost:
            out.append(cost)
    a = sections.get("angles")
    if a:
        o = a["overall"]
        out.append(
            f"- **Angles**: before alignment the tasks' top-k subspaces meet at a mean principal angle of "
            f"{o['before']['subspace']['mean']:.1f} deg (smallest {o['before']['subspace']['min']:.1f}). TSV-M's polar step "
            f"makes every pair orthogonal ({o['tsv']['subspace']['min']:.2f}-{o['tsv']['subspace']['max']:.2f} deg). MDA's ETF "
            f"step then moves one principal angle per task pair to {o['mda']['subspace']['min']:.1f} deg (arccos(1/(T-1))) and "
            f"leaves the rest at 90; single directions of different tasks go from 90 to "
            f"{o['mda']['directions']['median']:.3f} deg (arccos(-1/(K-1))). The ETF step is a rank-one change of TSV-M's "
            "geometry, which is why the two merges nearly coincide."
            + (f" (Pooled over the 2-D layers with T k <= min(m, n); left out: {', '.join(a['excluded'])}.)"
               if a.get("excluded") else ""))
    u = sections.get("unseen")
    if u:
        rows = {r["method"]: r for r in u["rows"]}
        free = [r for r in u["rows"] if r["kind"] == "data-free"]
        based = [r for r in u["rows"] if r["kind"] == "data-based"]
        best = max(free, key=lambda r: r["unseen"])
        text = (f"- **Unseen tasks** ({', '.join(u['unseen'])}): pretrained {100 * rows['pretrained']['unseen']:.1f}%, "
                f"best data-free {best['method']} {100 * best['unseen']:.1f}%")
        if "mda" in rows and "tsv" in rows:
            text += (f"; data-free MDA {100 * rows['mda']['unseen']:.1f}% vs TSV-M {100 * rows['tsv']['unseen']:.1f}% "
                     f"({100 * (rows['mda']['unseen'] - rows['tsv']['unseen']):+.1f} points"
                     + scaling_note(rows["mda"], rows["tsv"]) + ")")
        if based:
            bb = max(based, key=lambda r: r["unseen"])
            text += f"; best data-based {bb['method']} {100 * bb['unseen']:.1f}%"
        pre = rows["pretrained"]
        merged = free + based
        below = [r for r in merged if r["unseen"] < pre["unseen"]]
        if len(below) == len(merged):
            gaps = [100 * (r["unseen"] - pre["unseen"]) for r in merged]
            mid = median(gaps)
            top = max(merged, key=lambda r: r["seen"])
            top_gap = 100 * (top["unseen"] - pre["unseen"])
            text += (f". Every merged backbone is below the pretrained one on the held-out tasks ({min(gaps):+.1f} to "
                     f"{max(gaps):+.1f} points, median {mid:+.1f})"
                     + (" while all are above it on the merged tasks" if all(r["seen"] > pre["seen"] for r in merged) else "")
                     + ": on this zoo merging does not generalise to unseen tasks; the backbone that gains most on the "
                     f"seen tasks, {top['method']} ({100 * (top['seen'] - pre['seen']):+.1f} seen), loses {-top_gap:.1f} on "
                     "the unseen ones, " + ("about as much as the median or more" if top_gap <= mid + 0.5 else
                                            "less than the median"))
        else:
            text += f"; {len(merged) - len(below)} of {len(merged)} merged backbones are at or above the pretrained one on them"
        out.append(text + ".")
    d = sections.get("defaults")
    if d:
        get = lambda m, how: next((r for r in d["rows"] if r["method"] == m and r["choice"].startswith(how)), None)  # noqa: E731
        fixed, tsv, searched = get("mda", "defaults, scaling"), get("tsv", "defaults, scaling"), get("mda", "12 option")
        if fixed and tsv and searched:
            out.append(
                f"- **MDA's defaults**: the primary row, MDA with its fixed defaults (scaling chosen on validation), "
                f"tests {fixed['test']:.1f}% against TSV-M's {tsv['test']:.1f}% ({fixed['test'] - tsv['test']:+.1f} points; "
                f"validation {fixed['val']:.1f}% vs {tsv['val']:.1f}%{reversed_order(fixed, tsv)}); "
                f"the 12-option search picks {', '.join(f'{k}={v}' for k, v in searched['params'].items())} "
                f"(validation {searched['val']:.1f}% vs {fixed['val']:.1f}% for the defaults) and tests {searched['test']:.1f}% "
                f"({searched['test'] - tsv['test']:+.1f} vs TSV-M). " + search_verdict(fixed, searched))
    g = sections.get("signs")
    if g:
        acc = {r["variant"]: r for r in g["accuracy"]}
        tsv = acc.get("TSV-M")
        mdas = [r for k, r in acc.items() if k != "TSV-M"]
        zoo_change = g["changes"][0]
        wide = {c["width"]: c for c in g["changes"][1:]}
        text = (f"- **Sign convention**: with LAPACK's raw signs instead of the canonical ones, the default MDA delta moves "
                f"by {100 * zoo_change['lapack']:.1f}% of its norm on the zoo's layers (K = {zoo_change['K']:.0f})")
        if wide:
            text += ", " + ", ".join(f"{100 * c['lapack']:.1f}% on {w}-wide synthetic layers (K = {c['K']:.0f})" for w, c in wide.items())
        text += " -- the sqrt(2/(K-1)) of two unrelated sign patterns"
        if tsv and mdas:
            spread = max(r["test"] for r in mdas) - min(r["test"] for r in mdas)
            far = max(mdas, key=lambda r: abs(r["val"] - tsv["val"]))
            text += (f". In accuracy, the sign choices (canonical, LAPACK, aligned, random) span {spread:.1f} test points "
                     f"({min(r['test'] for r in mdas):.1f}-{max(r['test'] for r in mdas):.1f}%) around TSV-M's {tsv['test']:.1f}%; "
                     f"the largest validation difference from TSV-M is {far['val'] - tsv['val']:+.1f} points ({far['variant']}). ")
            text += ("No sign choice separates from TSV-M by more than half a point on validation."
                     if abs(far["val"] - tsv["val"]) <= 0.5 else
                     sign_test_check(far, tsv))
        out.append(text)
    k = sections.get("ranks")
    if k:
        out.append(ranks_statement(k))
    ch = sections.get("choice")
    if ch:
        out.append(choice_statement(ch))
    z = sections.get("sensitivity")
    if z:
        with_d = [r["acc"] for r in z["rows"] if r["diversity"] == 1.0]
        without = [r["acc"] for r in z["rows"] if r["diversity"] == 0.0]
        if with_d and without and z.get("grid") == "full" and len(without) < len(with_d):
            out.append(
                f"- **Loss weights** ({z['method']}, {z['steps']} steps): over the full 4 x 4 alpha x beta grid with the "
                f"diversity term the test accuracy spans {min(with_d):.2f}-{max(with_d):.2f}% ({max(with_d) - min(with_d):.2f} "
                f"points); without it only {len(without)} one-at-a-time cells exist, spanning {min(without):.2f}-"
                f"{max(without):.2f}%. The diversity term moves accuracy by about "
                f"{sum(with_d) / len(with_d) - sum(without) / len(without):.1f} points; alpha and beta barely matter with it.")
        elif with_d and not without:
            best = max((r for r in z["rows"] if r["diversity"] == 1.0), key=lambda r: r["acc"])
            worst = min((r for r in z["rows"] if r["diversity"] == 1.0), key=lambda r: r["acc"])
            out.append(
                f"- **Loss weights** ({z['method']}, {z['steps']} steps, the full 4 x 4 alpha x beta grid with the "
                f"diversity term; without it not run on the grid): test accuracy spans {worst['acc']:.2f}-{best['acc']:.2f}% "
                f"(best alpha={best['alpha']}, beta={best['beta']}; worst alpha={worst['alpha']}, beta={worst['beta']}), "
                f"a range of {best['acc'] - worst['acc']:.2f} points over the 16 settings.")
        elif with_d and without:
            out.append(
                f"- **Loss weights** ({z['method']}, {z['steps']} steps, "
                + ("the full 4 x 4 alpha x beta grid" if z.get("grid") == "full" else "alpha and beta varied one at a time")
                + "): with the "
                f"diversity term the test accuracy spans {min(with_d):.1f}-{max(with_d):.1f}% over alpha in "
                "{0, 0.4, 0.8, 1.6} and beta in {0, 0.2, 1, 5}; without it "
                f"{min(without):.1f}-{max(without):.1f}%. The diversity term moves accuracy by about "
                f"{sum(with_d) / len(with_d) - sum(without) / len(without):.1f} points; alpha and beta by at most "
                f"{max(with_d) - min(with_d):.1f} with it and {max(without) - min(without):.1f} without it.")
    return out


def not_covered(store: dict) -> str:
    """What the issue asks for that the store does not hold yet (so the page says it, and stops saying it once done)."""
    missing = ["the scale trend on a wider zoo backbone (not part of this page: see docs/results.md)"]
    if "choice" not in store.get(ACROSS, {}):
        missing.append("choosing MDA's options on all suites together and confirming them on new task combinations "
                       "(section `choice`)")
    grid = store.get("tasks8", {}).get("sensitivity", {}).get("grid")
    sens = store.get("tasks8", {}).get("sensitivity", {})
    if grid != "full":
        missing.append("the full 4 x 4 alpha/beta grid on tasks8 (`--sections sensitivity --sensitivity-grid full`)")
    elif sum(1 for r in sens.get("rows", []) if r["diversity"] == 0.0) < 16:
        missing.append("the 4 x 4 grid without the diversity term (only its one-at-a-time cells; "
                       "`--sections sensitivity --sensitivity-grid full --sensitivity-reuse`)")
    text = [s for s in store if s.startswith("text")]
    if not any("ranks" in store[s] for s in text):
        missing.append("the rank sweep on the text suite (`--suite text8 --sections ranks`)")
    absent = [k for k in ("compute", "angles", "unseen", "defaults", "signs") if not any(k in store[s] for s in text)]
    if absent:
        missing.append(f"the text suite's {', '.join(absent)} section{'s' if len(absent) > 1 else ''} "
                       f"(`--suite text8 --sections {','.join(absent)}`)")
    # item 3/4: Delta_ETF, CKA and compute on every suite
    without = [s for s in VISION_SUITES if "compute" not in store.get(s, {})]
    if without:
        missing.append("the compute table with Delta_ETF and CKA on " + ", ".join(without) + " ("
                       + "; ".join(f"`--suite {s} --sections compute --steps {PAPER_STEPS}`" for s in without) + ")")
    choice = store.get(ACROSS, {}).get("choice")
    if choice and not any(r["label"] == SUBSET_SEARCH for c in choice["confirm"] for r in c["rows"]):
        missing.append("the 12-option search on each confirmation combination beside the fixed and all-suite "
                       "choices (`--sections choice --choice-search`)")
    return "Not covered here yet: " + "; ".join(missing) + "."


def suite_order(suite: str) -> tuple:
    """Suites in the order mdamerge lists them (vision, then text), anything unknown after, the cross-suite part last."""
    from mdamerge.zoo.tasks import SUITES

    order = list(SUITES)
    return suite == ACROSS, order.index(suite) if suite in order else len(order), suite


def render(store: dict) -> str:
    lines = ["# The paper's remaining experiments (generated)", "",
             "Generated by `benchmarks/paper_experiments.py` (see its docstring); do not edit by hand. "
             "Each section names the command that regenerated it, the date and the machine's load. "
             "Plain statements about these numbers: [results.md](results.md#the-papers-remaining-experiments). "
             "Each section records the fingerprint of the zoo it ran on (docs/paper_experiments.json); the vision "
             "sections and results.md's data-free tables use the same zoo, built at 1 torch thread (training is "
             "bit-reproducible only at the same count). Protocols differ between pages (e.g. published default "
             "scalings in the compute table, validation-chosen ones in results.md), so compare methods within a table.", "",
             not_covered(store), ""]
    for suite, sections in sorted(store.items(), key=lambda item: suite_order(item[0])):
        lines += [f"## {suite}", "", "### Plain statements", "", *statements(sections), ""]
        for key, (title, fn) in RENDER.items():
            if key not in sections:
                continue
            d = sections[key]
            lines += [f"### {title}", "", f"`{d['command']}` -- {d['date']}, {d['machine']}, "
                      f"load average {d['load_before']} before / {d['load_after']} after, {fmt(d['seconds'], 0)} s.", ""]
            lines += fn(d)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return "/".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="tasks8")
    parser.add_argument("--sections", default="compute,angles,unseen,defaults,signs", help=f"comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"optimisation steps of the data-based methods (default: the zoo's own budget, "
                             f"the text zoo's 30; else {PAPER_STEPS})")
    parser.add_argument("--data-based", default=",".join(DATA_BASED), help="data-based methods (compute, unseen)")
    parser.add_argument("--unseen", default="2", help="held-out tasks: N (the suite's last N) or names")
    parser.add_argument("--val-limit", type=int, default=250, help="validation examples per task for searches")
    parser.add_argument("--cka-samples", type=int, default=500, help="test inputs per task for CKA")
    parser.add_argument("--sign-seeds", type=int, default=2, help="random sign patterns evaluated for accuracy")
    parser.add_argument("--sensitivity-method", default="mda_ta")
    parser.add_argument("--sensitivity-steps", type=int, default=50)
    parser.add_argument("--sensitivity-grid", choices=("full", "axes"), default="full",
                        help="full: the 4 x 4 alpha x beta grid; axes: one at a time around alpha 0.8, beta 0.2")
    parser.add_argument("--sensitivity-diversity", default="1,0",
                        help="weights of the diversity term to run (1: with it, 0: without it)")
    parser.add_argument("--sensitivity-reuse", action="store_true",
                        help="take configurations stored by an earlier run (same method, steps, zoo); one is rerun as a check")
    parser.add_argument("--choice-from", default=",".join(CHOICE_SOURCES),
                        help="saved benchmark results whose MDA option searches the choice section averages")
    parser.add_argument("--choice-size", type=int, default=8, help="tasks per confirmation subset")
    parser.add_argument("--choice-subsets", type=int, default=3, help="random confirmation subsets of tasks20")
    parser.add_argument("--choice-search", action="store_true",
                        help="also run the 12-option validation search on each confirmation subset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--zoo-root", default=None)
    # The page's sections ran on the zoos of before; the additive recipes' zoos are --recipe additive.
    parser.add_argument("--recipe", default="stored", choices=("stored", "additive"),
                        help="the zoo's training recipe (default: stored, the zoos this page was made on)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "paper_experiments.md"))
    args = parser.parse_args(argv)
    args.data_based = [m for m in args.data_based.split(",") if m]
    steps_given = args.steps
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    store_path = out.with_suffix(".json")
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    if not args.render_only:
        keys = [s for s in args.sections.split(",") if s]
        unknown = [k for k in keys if k not in SECTIONS]
        if unknown:
            sys.exit(f"error: unknown section '{unknown[0]}'; choose from {', '.join(SECTIONS)}")
        opened = {}
        for key in keys:
            # cross-suite sections work on the pool suite's zoo and are stored under ACROSS
            suite = CHOICE_POOL if key in ACROSS_SECTIONS else args.suite
            if suite not in opened:
                opened[suite] = open_suite(suite, args.zoo_root, args.recipe)
            zoo, tasks = opened[suite]
            args.steps = steps_given if steps_given is not None else default_steps(zoo)
            args.previous = store.get(ACROSS if key in ACROSS_SECTIONS else suite, {}).get(key)
            load_before, start = load_average(), time.perf_counter()
            data = SECTIONS[key](zoo, suite, tasks, args)
            data.update({
                "command": section_command(args, key), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
                "load_before": load_before, "load_after": load_average(), "seconds": time.perf_counter() - start,
                "zoo_fingerprint": zoo.settings.fingerprint(),
            })
            store.setdefault(ACROSS if key in ACROSS_SECTIONS else args.suite, {})[key] = data
            store_path.write_text(json.dumps(store, indent=1) + "\n")  # after each section: a crash keeps what is done
            log(f"[{suite}] section {key} done in {data['seconds']:.0f}s")
    out.write_text(render(store))
    print(f"wrote {out}")


def open_suite(suite: str, zoo_root: str | None, recipe: str = "stored"):
    """``(zoo, tasks)`` of a suite: the one place that knows which zoo serves which suite.

    The vision suites (tiny3, tasks8/14/20) live in :class:`mdamerge.zoo.build.Zoo`, the text
    suites (text8, text2) in its subclass ``TextZoo``; ``zoo_for_tasks`` picks by the tasks.
    A section needs ``base_state_dict``, ``finetuned_state_dict``, ``task_data``, ``head``,
    ``load_backbone``, ``missing`` and ``settings.fingerprint()``, and ``run_bench``.
    """
    from mdamerge.zoo.build import zoo_for_tasks
    from mdamerge.zoo.tasks import SUITES

    if suite not in SUITES:
        sys.exit(f"error: unknown suite '{suite}' (suites: {', '.join(SUITES)})")
    zoo = zoo_for_tasks(suite, root=zoo_root, recipe=recipe)  # the vision Zoo or the text zoo (TextZoo), by the suite's tasks
    tasks = resolve_tasks(suite)
    missing = zoo.missing(tasks)
    if missing:
        sys.exit(f"error: the zoo at {zoo.root} lacks {', '.join(missing)}; run `mdamerge zoo build --suite {suite}`")
    return zoo, tasks


def section_command(args, key: str) -> str:
    parts = ["python benchmarks/paper_experiments.py", f"--suite {args.suite}", f"--sections {key}",
             f"--threads {args.threads}"]
    if getattr(args, "recipe", "stored") != "stored":
        parts.append(f"--recipe {args.recipe}")
    if key in ("compute", "unseen"):
        parts.append(f"--steps {args.steps}")
        if args.data_based != DATA_BASED:
            parts.append(f"--data-based {','.join(args.data_based)}")
    if key == "unseen":
        parts.append(f"--unseen {args.unseen}")
    if key in ("unseen", "defaults", "signs", "ranks"):
        parts.append(f"--val-limit {args.val_limit}")
    if key == "compute":
        parts.append(f"--cka-samples {args.cka_samples}")
    if key == "signs":
        parts.append(f"--sign-seeds {args.sign_seeds}")
    if key == "choice":
        parts = ["python benchmarks/paper_experiments.py", f"--sections {key}", f"--threads {args.threads}",
                 f"--val-limit {args.val_limit}", f"--choice-subsets {args.choice_subsets}"]
        if args.choice_size != 8:
            parts.append(f"--choice-size {args.choice_size}")
        if args.choice_search:
            parts.append("--choice-search")
        if args.choice_from != ",".join(CHOICE_SOURCES):
            parts.append(f"--choice-from {args.choice_from}")
        if args.seed:
            parts.append(f"--seed {args.seed}")
    if key == "sensitivity":
        parts.append(f"--sensitivity-method {args.sensitivity_method} --sensitivity-steps {args.sensitivity_steps} "
                     f"--sensitivity-grid {args.sensitivity_grid}" + (" --sensitivity-reuse" if args.sensitivity_reuse else "")
                     + (f" --sensitivity-diversity {args.sensitivity_diversity}" if args.sensitivity_diversity != "1,0" else ""))
    if args.device != "cpu":
        parts.append(f"--device {args.device}")
    return " ".join(parts)


if __name__ == "__main__":
    main()
