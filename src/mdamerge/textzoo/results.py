"""Regenerate ``docs/results_text.md``: the text benchmark on all-MiniLM-L6-v2 (``make results`` runs it).

Builds the text zoo of a recipe (``additive`` by default, in ``CACHE/textzoo-additive``;
timed, with the machine's load), runs every method (data-free with validation-chosen
settings, then the data-based ones), and writes the table, the share of the
pretrained-to-fine-tuned gap each method recovers with each method's difference from TSV-M
and task arithmetic and its paired bootstrap interval, the task list with class balance, a
comparison with the vision zoo's ``tasks8`` (from ``docs/results.json`` and the vision zoo's
checkpoints when they are built), and one paragraph on the stored recipe's run before
(``docs/results_text_stored.json``). ``docs/results.md`` embeds the page.

    python -m mdamerge.textzoo.results [--suite text8] [--recipe additive] [--methods all] [--render-only]
    python -m mdamerge.textzoo.results --add-methods iso_c,iso_cts   # bench only these, join them into the saved JSON
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path

import torch

from ..errors import ConfigError, run_script
from ..evaluation.bench import MDA_OPTIONS, BenchResult, adaptive_methods, add_rows, resolve_methods, run_bench
from ..evaluation.tables import chosen_params_table, display_name, gap_recovered, interval_section, markdown_table, pct, regime_figures
from ..zoo.build import Zoo, default_cache_dir
from ..zoo.tasks import SUITES
from .build import TEXT_RECIPES, TextZoo, recipe_subdir
from .tasks import TEXT_TASKS

PAGE = "results_text.md"
STORED_PAGE_JSON = "results_text_stored.json"  # the stored recipe's text8 run (lr 3e-4, 80 steps), kept for comparison
VISION_SUITE = "tasks8"
COMMAND = "python -m mdamerge.textzoo.results --suite text8 --methods all"  # pages saved before "command" was
POOLING_TEXT = {"mean": "features = attention-masked mean of the last hidden states",
                "cls": "features = BERT's pooler output (tanh dense layer on the [CLS] state), what "
                       "BertForSequenceClassification feeds its classifier"}


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def task_vector_cosines(zoo: Zoo, tasks: list[str]) -> dict[str, float]:
    """Mean and max |cosine| between the flattened task vectors of every pair of tasks (all float tensors)."""
    base = zoo.base_state_dict()
    flat = []
    for t in tasks:
        ft = zoo.finetuned_state_dict(t)
        flat.append(torch.cat([(ft[k].double() - v.double()).reshape(-1) for k, v in base.items() if v.is_floating_point()]))
    stack = torch.stack(flat)
    norms = stack.norm(dim=1)
    cos = (stack @ stack.T) / torch.outer(norms, norms)
    off = cos[~torch.eye(len(tasks), dtype=torch.bool)].abs()
    rel = (norms / base_norm(base)).tolist()
    return {"mean_abs_cos": float(off.mean()), "max_abs_cos": float(off.max()),
            "relative_norm": sum(rel) / len(rel)}


def base_norm(base: dict[str, torch.Tensor]) -> float:
    return float(torch.cat([v.double().reshape(-1) for v in base.values() if v.is_floating_point()]).norm())


def build_and_bench(suite: str, methods: str, zoo: TextZoo, device: str, val_limit: int | None, log,
                    jobs: int = 1, method_options: dict | None = None) -> dict:
    """Build the zoo (timed), then benchmark; ``jobs=2`` runs the data-free and the data-based
    methods in two processes (one torch thread each) and joins their rows."""
    load_before = _load()
    start = time.perf_counter()
    timings = zoo.build(suite, progress=True, device=device, threads=1)
    build = {"wall_seconds": round(time.perf_counter() - start, 1), "built": sorted(timings),
             "load_before": load_before, "load_after": _load()}
    log(f"[{suite}] text zoo ready ({len(timings)} new parts, {build['wall_seconds']} s); benchmarking ...")
    start = time.perf_counter()
    names = resolve_methods(methods)
    adaptive = adaptive_methods()
    halves = [[m for m in names if m not in adaptive], [m for m in names if m in adaptive]]
    halves = [h for h in halves if h]
    args = [(suite, h, str(zoo.root), device, val_limit, method_options) for h in halves]
    if jobs > 1 and len(halves) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(halves), mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_bench_part, args))
    else:
        parts = [_bench_part(a) for a in args]
    result = join_results([BenchResult.from_dict(p) for p in parts])
    result.save(default_cache_dir() / "results")
    return {"build": build, "bench_seconds": round(time.perf_counter() - start, 1), "bench_load_after": _load(),
            "jobs": jobs, "result": result.to_dict()}


def _bench_part(args) -> dict:
    suite, methods, root, device, val_limit, method_options = args
    result = run_bench(suite, methods, zoo=TextZoo(root), device=device, val_limit=val_limit, progress=False,
                       log=lambda m: print(m, flush=True), threads=1, method_options=method_options)
    return result.to_dict()


def join_results(parts: list[BenchResult]) -> BenchResult:
    """One table from benchmarks of the same suite with disjoint methods (reference rows from the first)."""
    first = parts[0]
    rows = [r for r in first.rows if r.kind == "reference"]
    rows += [r for p in parts for r in p.rows if r.kind != "reference"]
    meta = dict(first.meta)
    meta["seconds"] = [p.meta.get("seconds") for p in parts]
    return BenchResult(first.suite, first.tasks, rows, meta)


def add_methods(saved: dict, methods: str, zoo: TextZoo, device: str, log, method_options: dict | None = None,
                save=None) -> dict:
    """Bench ``methods`` on the zoo of a saved page (its validation limit, its reference rows) and join
    each row into ``saved`` as soon as it is done (``save(saved)`` after each, so that a long run that is
    stopped keeps its finished rows). A row of a method already in the table is replaced."""
    result = BenchResult.from_dict(saved["result"])
    stored_settings = result.meta.get("zoo_settings")
    if stored_settings is not None and stored_settings != zoo.settings.to_dict():
        raise ConfigError(f"the saved table was made on a zoo with other settings than the one at {zoo.root} "
                          f"(fingerprint {zoo.settings.fingerprint()}); pick its --recipe / --cache")
    missing = zoo.missing(result.tasks)
    if missing:
        raise ConfigError(f"task '{missing[0]}' is not built in the zoo at {zoo.root}; --add-methods adds rows "
                          "to a table whose zoo is built")
    names = resolve_methods(methods)
    val_limit = result.meta.get("val_limit")
    references = [r for r in result.rows if r.kind == "reference"]
    record = {"methods": names, "started": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "seconds": {},
              "load_after": None}
    saved.setdefault("added", []).append(record)
    for name in names:
        start = time.perf_counter()
        new = run_bench(result.suite, [name], zoo=zoo, device=device, val_limit=val_limit, progress=False,
                        log=log, threads=1, method_options=method_options, reference_rows=references)
        result = add_rows(result, new)
        record["seconds"][name] = round(time.perf_counter() - start, 1)
        record["load_after"] = _load()
        saved["result"] = result.to_dict()
        if save is not None:
            save(saved)
    return saved


def vision_reference(docs: Path, cache: Path) -> dict:
    """The vision zoo's tasks8 table (docs/results.json) and task-vector cosines (if its zoo is built)."""
    out: dict = {}
    saved = docs / "results.json"
    if saved.is_file():
        suites = json.loads(saved.read_text()).get("suites", {})
        if VISION_SUITE in suites:
            out["result"] = suites[VISION_SUITE]
    zoo = Zoo(cache / "zoo")
    if not zoo.missing(VISION_SUITE):
        out["cosines"] = task_vector_cosines(zoo, SUITES[VISION_SUITE])
    return out


def task_table(zoo: TextZoo, tasks: list[str]) -> str:
    lines = ["| Task | Kind | Classes | Description | Train / val / test | Test examples per class (min-max) "
             "| Probe (test) | Fine-tuned (test) | Build s |",
             "| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: |"]
    for t in tasks:
        spec, r = TEXT_TASKS[t], zoo.records[t]
        bal = r["class_balance"]
        sizes = " / ".join(str(sum(bal[s])) for s in ("train", "val", "test"))
        lines.append(f"| {t} | {spec.kind} | {len(spec.class_names)} | {spec.description} | {sizes} | "
                     f"{min(bal['test'])}-{max(bal['test'])} | {pct(r['pretrained']['test'])} | "
                     f"{pct(r['finetuned']['test'])} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def gap_table(text: BenchResult, vision: BenchResult | None) -> str:
    names = [r.name for r in text.rows if r.kind != "reference"]
    lines = [f"| Method | {text.suite} Avg | {text.suite} gap recovered | "
             + (f"{VISION_SUITE} Avg | {VISION_SUITE} gap recovered |" if vision else ""),
             "| --- | ---: | ---: |" + (" ---: | ---: |" if vision else "")]
    vnames = {r.name for r in vision.rows} if vision else set()
    for n in names:
        cells = [pct(text.row(n).average), pct(gap_recovered(text, n))]
        if vision:
            cells += [pct(vision.row(n).average), pct(gap_recovered(vision, n))] if n in vnames else ["-", "-"]
        lines.append(f"| {display_name(n)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison(text: BenchResult, vision: BenchResult | None, cos_text: dict, cos_vision: dict | None) -> str:
    """Generated sentences: interference (task-vector cosines) and how far apart the methods land."""
    def spread(res: BenchResult, kind: str) -> tuple[float, str, str]:
        rows = [r for r in res.rows if r.kind == kind]
        best, worst = max(rows, key=lambda r: r.average), min(rows, key=lambda r: r.average)
        return 100 * (best.average - worst.average), best.name, worst.name

    out = []
    gap_t = 100 * (text.finetuned.average - text.row("pretrained").average)
    s_t, b_t, w_t = spread(text, "data-free")
    line = (f"- Fine-tuning gains {gap_t:.1f} points over the probe on {text.suite}. Data-free methods span {s_t:.1f} points "
            f"(best {display_name(b_t)}, {pct(gap_recovered(text, b_t), 0)}% of the gap; worst {display_name(w_t)}, "
            f"{pct(gap_recovered(text, w_t), 0)}%).")
    if vision is not None:
        gap_v = 100 * (vision.finetuned.average - vision.row("pretrained").average)
        s_v, b_v, w_v = spread(vision, "data-free")
        line += (f" On the vision zoo's {VISION_SUITE} the gap is {gap_v:.1f} points and the data-free methods span "
                 f"{s_v:.1f} points (best {display_name(b_v)}, {pct(gap_recovered(vision, b_v), 0)}% of the gap).")
    out.append(line)
    line = (f"- Task vectors: mean |cosine| between two tasks' vectors {cos_text['mean_abs_cos']:.3f} "
            f"(max {cos_text['max_abs_cos']:.3f}); a task vector's norm is {100 * cos_text['relative_norm']:.2f}% of the "
            f"pretrained weights' norm on {text.suite}")
    if cos_vision:
        line += (f", against {cos_vision['mean_abs_cos']:.3f} (max {cos_vision['max_abs_cos']:.3f}) and "
                 f"{100 * cos_vision['relative_norm']:.2f}% on the vision zoo's {VISION_SUITE}")
    out.append(line + ".")
    data_based = [r for r in text.rows if r.kind == "data-based"]
    if data_based:
        best = max(data_based, key=lambda r: r.average)
        out.append(f"- Best data-based method on {text.suite}: {display_name(best.name)} ({pct(best.average)}%, "
                   f"{pct(gap_recovered(text, best.name), 0)}% of the gap).")
    return "\n".join(out) + "\n"


def build_sentence(suite: str, build: dict, recorded: float) -> str:
    text = (f"Build time of the {suite} zoo, the recorded per-part times summed: **{recorded:.0f} s** "
            f"({recorded / 60:.1f} min, 1 torch thread; the first task includes reading the Debian sources). ")
    if build["built"]:
        text += (f"Wall time of the build in this run: {build['wall_seconds']:.0f} s (load average before / after: "
                 f"{build['load_before']} / {build['load_after']}).")
    else:
        text += "The zoo was already built when this page was generated."
    return text + "\n"


def render(saved: dict, zoo: TextZoo, vision: dict, stored: dict | None = None) -> str:
    result = BenchResult.from_dict(saved["result"])
    vres = BenchResult.from_dict(vision["result"]) if "result" in vision else None
    build, s = saved["build"], zoo.settings
    ft = s.finetune
    recorded = (zoo.pretrain_record.get("seconds") or 0) + sum(zoo.records[t]["seconds"] for t in result.tasks)
    cos_text = saved.get("cosines") or task_vector_cosines(zoo, result.tasks)
    parts = [
        f"# Text benchmark: all-MiniLM-L6-v2 on {result.suite}\n",
        f"Generated by `{saved.get('command', COMMAND)}` (part of `make results`); do not edit by hand.\n",
        f"Run started {saved['started']}; torch {torch.__version__}, 1 torch thread, {os.cpu_count()} CPUs "
        f"({platform.machine()}), shared with other jobs (load averages below).\n",
        f"Encoder: {s.encoder} ({zoo.pretrain_record.get('num_parameters')} parameters), sentences cut to "
        f"{s.max_length} tokens, {POOLING_TEXT[s.pooling]}. Per task (FusionBench's "
        f"GLUE protocol): a linear probe is fitted on the frozen pretrained features ({s.probe_steps} full-batch Adam "
        f"steps); then the whole encoder and a head initialised from the probe are fine-tuned together "
        f"({ft.steps} steps, batch {ft.batch_size}, AdamW lr {ft.lr}, weight decay {ft.weight_decay}, "
        f"{int(100 * ft.warmup)}% warm-up, cosine decay). The **Pretrained** row is the frozen encoder with the probes; "
        "fine-tuned and merged encoders are evaluated with each task's own fine-tuned head.\n",
        f"Data-based methods run {zoo.ADAPTIVE_DEFAULTS['steps']} steps of batch {zoo.ADAPTIVE_DEFAULTS['batch_size']} "
        f"per task (FusionBench: 1000 of 16; a CPU budget), MDA's rotation start on "
        f"{zoo.ADAPTIVE_DEFAULTS['init_samples']} examples per task, on each task's unlabeled test texts.\n",
        "## Zoo build\n",
        build_sentence(result.suite, build, recorded),
        task_table(zoo, result.tasks),
        "\nSplits: a seeded hash of each normalised text puts it in train (70%), val (10%) or test (20%); a pair goes "
        "where both its texts go (else it is dropped), so no test or validation text of any task occurs in any "
        "task's training data; each split is then sampled class-balanced (round robin over the classes while they "
        "last; the table's min-max column shows the classes that run short).\n",
        f"## Results ({len(result.tasks)} tasks, test accuracy %)\n",
        f"Benchmark time {saved['bench_seconds'] / 60:.0f} min in {saved.get('jobs', 1)} process(es) "
        f"(load average after: {saved['bench_load_after']}); validation searches use the first "
        f"{result.meta.get('val_limit') or 'all'} validation examples of each task. "
        "**Avg** = mean over tasks; **Norm.** = mean of merged / fine-tuned accuracy.\n",
        markdown_table(result),
        added_sentence(saved),
        mda_sentence(saved, result),
        ("" if not saved.get("mda_options") else
         f"\nMDA's options were fixed (`{saved['mda_options']}`, the winner of the stored text8's validation search) "
         "to fit the CPU budget; only its scaling was chosen on validation here.\n"),
        "\nChosen on validation:\n",
        chosen_params_table(result),
        "\n## Differences from TSV-M and task arithmetic\n",
        interval_section(result) or "_The saved rows predate per-example results; no intervals._\n",
        ("\nPer method (test average, share of the pretrained-to-fine-tuned gap, differences with their 95% "
         "intervals):\n\n" + method_statements(result)) if result.intervals() else "",
        "\n## Share of the pretrained-to-fine-tuned gap recovered\n",
        "(method avg - pretrained avg) / (fine-tuned avg - pretrained avg), test averages"
        + (f"; the vision zoo's {VISION_SUITE} from [results.md](results.md) beside it.\n" if vres else ".\n"),
        gap_table(result, vres),
        "\n## Compared with the vision zoo\n",
        comparison(result, vres, cos_text, vision.get("cosines")),
    ]
    if stored:
        parts += ["\n## Before: the stored recipe\n", stored_paragraph(stored)]
    return "\n".join(p for p in parts if p)


def method_statements(result: BenchResult) -> str:
    """One plain line per method: its test average, the share of the gap it recovers, and its difference
    from TSV-M and from task arithmetic with the paired bootstrap interval, said resolved or not."""
    intervals = result.intervals()
    pre = result.row("pretrained").average
    lines = []
    for r in result.rows:
        if r.kind == "reference":
            continue
        name = display_name(r.name)
        kind = "" if r.kind in name else f" ({r.kind})"  # "MDA (data-free)" says it already
        text = f"- **{name}**{kind}: {pct(r.average)}, {pct(gap_recovered(result, r.name), 0)}% of the gap"
        if r.average < pre:
            text += " (below the pretrained row)"
        for ref in ("tsv", "task_arithmetic"):
            i = intervals.get(r.name, {}).get(ref)
            if i is None:
                continue
            verdict = ("resolved, above" if i.low > 0 else "resolved, below") if i.resolved else "not resolved"
            text += (f"; minus {display_name(ref)} {100 * i.diff:+.1f} [{100 * i.low:+.1f}, {100 * i.high:+.1f}] "
                     f"({verdict})")
        lines.append(text + ".")
    return "\n".join(lines) + "\n" if lines else ""


def added_sentence(saved: dict) -> str:
    """When rows were added to the saved table later (``--add-methods``): which, when, and each one's time."""
    added = saved.get("added") or []
    if not added:
        return ""
    parts = []
    for rec in added:
        times = ", ".join(f"{display_name(m)} {s / 60:.1f} min" for m, s in rec["seconds"].items())
        left = [m for m in rec["methods"] if m not in rec["seconds"]]
        parts.append(f"started {rec['started']}: {times or 'none finished'}"
                     + (f" (not finished: {', '.join(display_name(m) for m in left)})" if left else "")
                     + (f"; load average after: {rec['load_after']}" if rec.get("load_after") else ""))
    return ("\nRows added to the saved table later with `--add-methods` (same zoo, the same reference rows and "
            "validation limit, 1 torch thread; bench time per method): " + "; ".join(parts) + ".\n")


def mda_sentence(saved: dict, result: BenchResult) -> str:
    """MDA's options as its validation search chose them (when they were searched, not fixed)."""
    if saved.get("mda_options"):
        return ""
    try:
        row = result.row("mda")
    except KeyError:
        return ""
    sets = {tuple((k, t.params.get(k)) for k in MDA_OPTIONS) for t in row.trials}
    if len(sets) < 2:
        return ""
    chosen = ", ".join(f"{k}={row.params.get(k)}" for k in MDA_OPTIONS)
    return (f"\nMDA's options were searched on validation ({len(sets)} option sets, each with its scaling "
            f"search; {len(row.trials)} configurations): chosen {chosen}, scaling {row.params.get('scaling')}.\n")


def stored_paragraph(saved: dict) -> str:
    """One paragraph of the stored recipe's text8 figures (its saved page JSON), so the change of regime shows."""
    res = BenchResult.from_dict(saved["result"])
    ft = res.meta.get("zoo_settings", {}).get("finetune", {})
    based = [r for r in res.rows if r.kind == "data-based"]
    pre = res.row("pretrained").average
    fig = regime_figures(res)
    text = (f"The text8 of before ({ft.get('steps')} steps at lr {ft.get('lr')}, "
            f"{res.meta.get('zoo_settings', {}).get('pooling', 'mean')} pooling, "
            f"{res.meta.get('zoo_settings', {}).get('test_size')} test examples per task; [{STORED_PAGE_JSON}]"
            f"({STORED_PAGE_JSON})): fine-tuning gained {100 * fig['gain']:.1f} points over the probe; "
            f"validation chose task arithmetic's scaling {fig['ta_scaling']} ({pct(fig['ta_share'], 0)}% of the gap); "
            f"the best data-free merge, {fig['best']}, recovered {pct(fig['best_share'], 0)}%")
    if based:
        below = sum(r.average < pre for r in based)
        text += f"; {below} of {len(based)} data-based methods ended below the pretrained row"
    return text + ".\n"


def mda_method_options(text: str | None) -> dict | None:
    """``etf_side=both,etf_over=tasks,polar=true`` -> ``{"mda": {...}}`` for run_bench (None: search them)."""
    if not text:
        return None
    options = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key.strip() not in MDA_OPTIONS:
            raise ConfigError(f"unknown MDA option '{key.strip()}'; options: {', '.join(MDA_OPTIONS)}")
        allowed = {str(v).lower(): v for v in MDA_OPTIONS[key.strip()]}
        if value.strip().lower() not in allowed:
            raise ConfigError(f"MDA option {key.strip()} takes {', '.join(allowed)}, not '{value.strip()}'")
        options[key.strip()] = allowed[value.strip().lower()]
    return {"mda": options}


def main(argv: list[str] | None = None) -> None:
    """The command line; a mistake in its input is one line, ``error: ...``, and exit status 2."""
    run_script(_main, argv)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="text8")
    parser.add_argument("--recipe", default="additive", choices=list(TEXT_RECIPES),
                        help="the zoo's recipe (textzoo/build.py TEXT_RECIPES); a zoo already built keeps its own")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--cache", default=None, help="cache folder (default: $MDAMERGE_CACHE or ~/.cache/mdamerge)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--val-limit", type=int, default=64, help="validation examples per task in the search (0: all)")
    parser.add_argument("--jobs", type=int, default=2, help="2: data-free and data-based methods in two processes")
    parser.add_argument("--out", default=f"docs/{PAGE}")
    parser.add_argument("--render-only", action="store_true", help="rewrite the page from its saved JSON")
    parser.add_argument("--add-methods", default=None, metavar="LIST",
                        help="bench only these methods (one process, 1 torch thread) on the saved JSON's zoo, with "
                             "its reference rows and validation limit, and join them into it (a method already "
                             "there is replaced); the JSON is saved after each method; then the page is rewritten")
    parser.add_argument("--mda-options", default=None,
                        help="fix MDA's options instead of searching them on validation, e.g. "
                             "etf_side=both,etf_over=tasks,polar=true (a CPU budget; stated on the page)")
    args = parser.parse_args(argv)
    if args.add_methods and args.render_only:
        raise ConfigError("--add-methods and --render-only exclude each other")
    cache = Path(args.cache).expanduser() if args.cache else default_cache_dir()
    root = cache / recipe_subdir(args.recipe)
    zoo = TextZoo(root, settings=None if (root / "zoo.json").exists() else TEXT_RECIPES[args.recipe])
    out = Path(args.out)
    saved_path = out.with_suffix(".json")
    options = mda_method_options(args.mda_options)
    if args.render_only or args.add_methods:
        if not saved_path.is_file():
            raise ConfigError(f"no saved table at {saved_path}; run without --render-only / --add-methods first")
        saved = json.loads(saved_path.read_text())
    if args.add_methods:
        if saved["result"]["suite"] != args.suite:
            raise ConfigError(f"{saved_path} holds the {saved['result']['suite']} table, not {args.suite}")
        names = resolve_methods(args.add_methods)
        if "mda" in names:  # the MDA row is replaced: its options are now fixed as given, or searched
            saved["mda_options"] = args.mda_options
        saved["command"] = (saved.get("command", COMMAND) + f"; then --add-methods {','.join(names)}"
                            + (f" --mda-options {args.mda_options}" if args.mda_options and "mda" in names else ""))

        def save(data: dict) -> None:
            saved_path.write_text(json.dumps(data, indent=1) + "\n")

        add_methods(saved, ",".join(names), zoo, args.device, log=print, method_options=options, save=save)
    elif not args.render_only:
        started = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        command = (f"python -m mdamerge.textzoo.results --suite {args.suite} --recipe {args.recipe} "
                   f"--methods {args.methods}" + (f" --mda-options {args.mda_options}" if args.mda_options else ""))
        saved = {"started": started, "command": command, "mda_options": args.mda_options, **build_and_bench(args.suite, args.methods, zoo, args.device,
                                                          args.val_limit or None, log=print, jobs=args.jobs,
                                                          method_options=options)}
        saved["cosines"] = task_vector_cosines(zoo, saved["result"]["tasks"])
        out.parent.mkdir(parents=True, exist_ok=True)
        saved_path.write_text(json.dumps(saved, indent=1) + "\n")
    stored_path = out.parent / STORED_PAGE_JSON
    stored = json.loads(stored_path.read_text()) if stored_path.is_file() and stored_path != saved_path else None
    out.write_text(render(saved, zoo, vision_reference(out.parent, cache), stored))
    print(f"wrote {out} and {saved_path}")


if __name__ == "__main__":
    main()
