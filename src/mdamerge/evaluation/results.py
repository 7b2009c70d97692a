"""Regenerate ``docs/results.md``: every data-free method on the 8-, 14- and 20-task suites.

``make results`` runs ``python -m mdamerge.evaluation.results``; it builds whatever part
of the zoo is missing (the 20-task zoo included), benchmarks each suite, and rewrites the
Markdown file with the tables, the hyperparameters chosen on validation, MDA's option
search and the zoo build times. ``--update --suites tasks8`` benchmarks only the suites named
and puts them into the saved ``docs/results.json`` (the other suites' rows stay as saved);
``--add-methods data-based --suites tasks8`` adds rows to a saved suite benched on this zoo.
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
from ..zoo.build import (DEFAULT_VISION_RECIPE, VISION_RECIPE_NAMES, Zoo, ZooSettings, default_cache_dir, recipe_name,
                         vision_zoo)
from ..zoo.tasks import SUITES, TASKS
from .bench import BenchResult, adaptive_methods, add_rows, mda_option_summary, resolve_methods, run_bench
from .tables import chosen_params_table, display_name, interval_section, markdown_table, mda_options_table, pct, regime_figures

DEFAULT_SUITES = ("tasks8", "tasks14", "tasks20")
NO_INTERVALS = ("_No intervals: this suite's saved rows predate the per-example test results that the paired "
                "bootstrap needs (`make results` records them when it benchmarks the suite again)._\n")
COMPARED = ("task_arithmetic", "tsv", "iso_cts", "mda")


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def build_and_bench(suites, methods: str, zoo: Zoo, device: str, val_limit: int | None, log,
                    threads: int | None = None) -> tuple[dict, dict]:
    """Build each suite's missing models (timed), then benchmark it; returns (results, build info).
    ``threads``: torch CPU threads for both (default: as many as the machine's load leaves free)."""
    results: dict[str, BenchResult] = {}
    builds: dict[str, dict] = {}
    for suite in suites:
        load_before = _load()
        start = time.perf_counter()
        timings = zoo.build(suite, progress=True, device=device, threads=threads)
        builds[suite] = {"wall_seconds": round(time.perf_counter() - start, 1), "built": sorted(timings),
                         "load_before": load_before, "load_after": _load()}
        log(f"[{suite}] zoo ready ({len(timings)} new parts, {builds[suite]['wall_seconds']} s); benchmarking ...")
        results[suite] = run_bench(suite, methods, zoo=zoo, out_dir=default_cache_dir() / "results", device=device,
                                   val_limit=val_limit, progress=True, log=log, threads=threads)
    return results, builds


class SavedZoo:
    """What the page reads of a zoo (settings, pretraining and per-task records), as saved in results.json:
    lets ``--render-only`` rewrite the page on a machine where that zoo is not built."""

    def __init__(self, settings: ZooSettings, facts: dict):
        self.settings = settings
        self.pretrain_record = facts["pretrain"]
        self.records = facts["tasks"]


def zoo_facts(zoo: Zoo, suites) -> dict:
    """The zoo records the page shows, for results.json (see :class:`SavedZoo`)."""
    tasks = dict.fromkeys(t for s in suites for t in SUITES[s])
    return {"pretrain": dict(zoo.pretrain_record), "tasks": {t: zoo.records[t] for t in tasks}}


def page_zoo(zoo: Zoo, saved: dict, results: dict[str, BenchResult]) -> Zoo | SavedZoo:
    """The zoo itself when it holds every task of the saved suites, else its facts saved with the results."""
    if not any(zoo.missing(s) for s in results) or "zoo" not in saved:
        return zoo
    meta = next(iter(results.values())).meta
    return SavedZoo(ZooSettings.from_dict(meta["zoo_settings"]), saved["zoo"])


def recorded_build_seconds(zoo: Zoo, suite: str) -> float:
    """Pretraining plus each task's head + fine-tuning + evaluation time, as recorded when built."""
    return (zoo.pretrain_record.get("seconds") or 0.0) + sum(zoo.records[t]["seconds"] for t in SUITES[suite])


def comparison_table(results: dict[str, BenchResult]) -> str:
    suites = list(results)
    lines = ["| Method | " + " | ".join(f"{s} Avg | {s} Norm." for s in suites) + " |",
             "| --- | " + " | ".join("---: | ---:" for _ in suites) + " |"]
    names = list(dict.fromkeys(r.name for res in results.values() for r in res.rows))
    for name in names:
        cells = []
        for s in suites:
            res = results[s]
            present = any(r.name == name for r in res.rows)
            cells += [pct(res.row(name).average), pct(res.normalized_average(name))] if present else ["-", "-"]
        lines.append(f"| {display_name(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mda_verdict(results: dict[str, BenchResult]) -> list[str]:
    """Sentences comparing MDA with TSV-M, Iso-CTS and task arithmetic (test averages, points)."""
    out = []
    for suite, res in results.items():
        names = {r.name for r in res.rows}
        if "mda" not in names:
            continue
        mda = res.row("mda").average
        diffs = [f"{display_name(m)} {100 * (mda - res.row(m).average):+.1f}" for m in COMPARED[:-1] if m in names]
        best = max((r for r in res.rows if r.kind == "data-free"), key=lambda r: r.average)
        out.append(f"- **{suite}**: MDA {pct(mda)}% average; MDA minus " + ", ".join(diffs)
                   + f" points. Best data-free method: {display_name(best.name)} ({pct(best.average)}%).")
    return out


def mda_defaults(results: dict[str, BenchResult]) -> list[str]:
    lines = []
    for suite, res in results.items():
        summary = mda_option_summary(res)
        if summary:
            top = summary[0]
            lines.append(f"- {suite}: etf_side={top['etf_side']}, etf_over={top['etf_over']}, polar={top['polar']} "
                         f"(scaling {top['scaling']}, validation average {pct(top['val_average'], 2)}%)")
    return lines


def zoo_tables(zoo: Zoo, suites, builds: dict) -> str:
    biggest = max(suites, key=lambda s: len(SUITES[s]))
    lines = ["| Suite | Tasks | Recorded build time (s) | Wall time of this run (s) | Load average before / after |",
             "| --- | ---: | ---: | ---: | --- |"]
    for s in suites:
        b = builds.get(s, {})
        lines.append(f"| {s} | {len(SUITES[s])} | {recorded_build_seconds(zoo, s):.0f} | {b.get('wall_seconds', '-')} "
                     f"| {b.get('load_before', '-')} / {b.get('load_after', '-')} |")
    lines += ["", f"Pretraining: {zoo.pretrain_record.get('seconds')} s, "
              f"{zoo.pretrain_record.get('num_parameters')} parameters, "
              f"{zoo.pretrain_record.get('num_classes')} glyph classes.", "",
              "| Task | Classes | Description | Train size | Pretrained + head (test) | Fine-tuned (test) | Build s |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for t in SUITES[biggest]:
        r = zoo.records[t]
        lines.append(f"| {t} | {len(TASKS[t].class_names)} | {TASKS[t].description} | {r['train_size']} | "
                     f"{pct(r['pretrained']['test'])} | {pct(r['finetuned']['test'])} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


ADAPTIVE_PAGE = "results_adaptive.md"
ADAPTIVE_COMMAND = "python benchmarks/adaptive_results.py --suites tasks8,tasks14,tasks20 --threads 1"


def data_based_section(adaptive_page: Path) -> str:
    """The data-based results page (written by benchmarks/adaptive_results.py), headings demoted one level.

    Embedded rather than linked so that ``docs/results.md`` holds every table; a missing page
    is reported in its place, with the command that makes it.
    """
    intro = (f"\n## Data-based methods (AdaMerging, MDA feature alignment)\n\n"
             f"Copied from [{ADAPTIVE_PAGE}]({ADAPTIVE_PAGE}), which `{ADAPTIVE_COMMAND}` regenerates "
             "(then `make results` or `python -m mdamerge.evaluation.results --render-only` refreshes this page). "
             "Its data-free rows use the published default hyperparameters, not the validation search above. "
             "It was made on the stored recipe's zoo (CACHE/zoo, `--recipe stored`: the zoo of before, outside "
             "the additive regime); data-based rows on the additive zoo are in the suite tables above where "
             "`--add-methods` joined them.\n")
    if not adaptive_page.is_file():
        return intro + f"\n_Not generated yet: {adaptive_page} is missing._\n"
    lines = adaptive_page.read_text().splitlines()
    body = [("#" + line if line.startswith("#") else line) for line in lines[1:]]
    return intro + "\n".join(body) + "\n"


def zoo_threads_line(zoo: Zoo) -> str:
    """The torch thread counts the zoo was trained with (zoo.json): training is bit-reproducible only at the same count."""
    counts = {zoo.pretrain_record.get("threads"), *(r.get("threads") for r in zoo.records.values())} - {None}
    if not counts:
        return "Zoo training threads: not recorded (zoo built before they were).\n"
    shown = ", ".join(str(c) for c in sorted(counts))
    return (f"Zoo trained with {shown} torch thread(s) (zoo.json); the same zoo numbers to the last digit need the "
            "same count (`mdamerge zoo build --threads N`).\n")


PAPER_PAGE = "paper_experiments.md"
PAPER_COMMAND = ("python benchmarks/paper_experiments.py --suite tasks8 "
                 "--sections compute,angles,unseen,defaults,signs,sensitivity --steps 100 --threads 1")


def paper_experiments_section(page: Path) -> str:
    """The plain statements of docs/paper_experiments.md (benchmarks/paper_experiments.py), with a link to its tables."""
    intro = (f"\n## The paper's remaining experiments\n\n"
             f"Generalisation to unseen tasks, compute, Delta_ETF, CKA, subspace angles before/after alignment, "
             f"MDA's defaults and sign convention, loss-weight sensitivity: tables in [{PAPER_PAGE}]({PAPER_PAGE}), "
             f"which `{PAPER_COMMAND}` regenerates (each section there names its own command). Its statements:\n")
    if not page.is_file():
        return intro + f"\n_Not generated yet: {page} is missing._\n"
    return intro + "\n".join(plain_statements(page, section_titles=True)) + "\n"


def plain_statements(page: Path, section_titles: bool = False) -> list[str]:
    """The lines under every ``### Plain statements`` heading of a generated page (a note after a list
    as its own paragraph); with ``section_titles`` each ``## `` section's title in bold before its own."""
    keep, out = False, []
    for line in page.read_text().splitlines():
        if line.startswith("## ") and section_titles:
            out += ["", f"**{line[3:]}**", ""]
        if line.startswith("#"):
            keep = line == "### Plain statements"
        elif keep and line.strip():
            out += [line] if line.startswith("- ") or not out or not out[-1] else ["", line]
    return out


SCALE_PAGE = "scale_trend.md"
SCALE_COMMAND = "python benchmarks/scale_trend.py --steps 100 --threads 1"


def scale_trend_section(page: Path) -> str:
    """The plain statements of docs/scale_trend.md (small vs the 2x wider ``base`` backbone), with a link."""
    intro = ("\n## Scale trend (wider backbone)\n\n"
             f"tasks8 on the small and the 2x wider `base` zoo backbone (`--backbone base`), data-free and data-based "
             f"rows side by side: tables, build times and machine load in [{SCALE_PAGE}]({SCALE_PAGE}), which "
             f"`{SCALE_COMMAND}` (or `make results-base`) regenerates. Its statements:\n")
    if not page.is_file():
        return intro + f"\n_Not generated yet: {page} is missing._\n"
    return intro + "\n" + "\n".join(plain_statements(page)) + "\n"


TEXT_PAGE = "results_text.md"
REGIME_PAGES = ("results_text_recipe.md", "results_vision_regime.md")
REGIME_COMMAND = "python benchmarks/regime.py"


def regime_section(docs: Path) -> str:
    """The recipe comparisons on validation (benchmarks/regime.py: does a zoo's task arithmetic add?), embedded."""
    intro = ("\n## Regime: do the zoos' task vectors add? (validation only)\n\n"
             "Fine-tuning gain over the pretrained row and the share of it that task arithmetic and TSV-M recover at "
             f"their best validation scaling, per fine-tuning recipe; `{REGIME_COMMAND}` regenerates each page "
             "(its command is on it).\n")
    parts = [intro]
    for name in REGIME_PAGES:
        page = docs / name
        parts.append(embedded_page(page, "###") if page.is_file() else f"\n_Not generated yet: {page} is missing._\n")
    return "".join(parts)


def embedded_page(page: Path, heading: str) -> str:
    """``page`` under a ``heading``-level title of its own title, linked to it, its body as it is."""
    lines = page.read_text().splitlines()
    return f"\n{heading} {lines[0].lstrip('# ')} ([{page.name}]({page.name}))\n\n" + "\n".join(lines[1:]).strip() + "\n"


STORED_RESULTS = "results_stored.json"  # the vision suites benched on the stored recipe's zoo, kept for comparison


def stored_regime_section(docs: Path) -> str:
    """One paragraph of the stored recipe's figures (its saved results JSON), so the change of regime shows."""
    path = docs / STORED_RESULTS
    if not path.is_file():
        return ""
    saved = json.loads(path.read_text())
    suites = {s: BenchResult.from_dict(r) for s, r in saved["suites"].items()}
    first = next(iter(suites.values()))
    settings = first.meta.get("zoo_settings", {})
    per_suite = []
    for suite, res in suites.items():
        fig = regime_figures(res)
        per_suite.append(
            f"{suite}: fine-tuning {100 * fig['gain']:.1f} points over the probes, task arithmetic's scaling "
            f"{fig['ta_scaling']} ({pct(fig['ta_share'], 0)}% of the gap), best data-free merge {fig['best']} "
            f"{pct(fig['best_share'], 0)}%")
    return (f"\n**Before (the stored recipe, `--recipe stored`).** The zoo of before "
            f"({settings.get('pretrain', {}).get('steps')} pretraining steps, fine-tuning lr "
            f"{settings.get('finetune', {}).get('lr')}; [{STORED_RESULTS}]({STORED_RESULTS})) was outside the "
            f"regime where task vectors add: " + "; ".join(per_suite) + ".\n")


SEEDS_PAGE = "results_seeds.md"


def seeds_section(docs: Path) -> str:
    """The fine-tuning seed spread of tasks8's differences (benchmarks/seeds.py), embedded after the suites."""
    page = docs / SEEDS_PAGE
    return embedded_page(page, "##") if page.is_file() else ""


def text_section(text_page: Path) -> str:
    """The text benchmark's page (``python -m mdamerge.textzoo.results``, run first by ``make results``), embedded."""
    intro = (f"\n## Text benchmark: all-MiniLM-L6-v2 on 8 offline text tasks\n\n"
             f"Copied from [{TEXT_PAGE}]({TEXT_PAGE}), which `python -m mdamerge.textzoo.results` regenerates.\n")
    if not text_page.is_file():
        return intro + f"\n_Not generated yet: {text_page} is missing._\n"
    lines = text_page.read_text().splitlines()
    return intro + "\n".join(("#" + line if line.startswith("#") else line) for line in lines[1:]) + "\n"


def benchmark_threads(results: dict[str, BenchResult]) -> str:
    """The torch thread count(s) the suites were benchmarked with, as recorded in each one's meta
    (a re-render runs in another process, whose own count says nothing about the run)."""
    counts = sorted({r.meta.get("torch_threads") for r in results.values()} - {None})
    return "/".join(map(str, counts)) if counts else "unrecorded"


def update_sentences(updates: list[dict], zoo_tables_of: str = "the earlier run's zoo") -> str:
    """What ``--update`` re-benchmarked, when, on which zoo, and whether its rows' test averages equal the
    rows they replaced (a rebuilt zoo is bit-identical only with the same settings and thread count)."""
    out = []
    for u in updates:
        suites = ", ".join(u["suites"])
        text = (f"- {suites}: benchmarked again with `--update` (started {u['started']}, took "
                f"{u['seconds'] / 60:.0f} min) on the zoo at `{u['zoo']}` (settings fingerprint {u['fingerprint']}")
        text += ", the same as the earlier rows'" if u.get("same_settings") else ""
        text += ")"
        zoo_build = u.get("zoo_build")
        if zoo_build:
            text += (f", whose zoo.json records a build of {zoo_build['seconds']:.0f} s for {suites} (pretraining "
                     f"{zoo_build['pretrain_seconds']:.0f} s) at {zoo_build['threads']} torch thread(s)")
        text += ". "
        changed = []
        for suite, before in (u.get("previous") or {}).items():
            after = u.get("averages", {}).get(suite, {})
            changed += [f"{suite} {display_name(n)} {pct(a, 2)} -> {pct(after[n], 2)}" for n, a in before.items()
                        if n in after and round(100 * a, 2) != round(100 * after[n], 2)]
            gone = [n for n in before if n not in after]
            changed += [f"{suite} {display_name(n)} no longer benchmarked" for n in gone]
        if u.get("previous"):
            text += ("Every row's test average equals the replaced row's to 0.01 point."
                     if not changed else "Test averages that differ from the replaced rows': " + "; ".join(changed) + ".")
        out.append(text)
    return ("Suites benchmarked again later (the other suites' rows are from the run above):\n\n" + "\n".join(out)
            + f"\n\nThe zoo tables below describe {zoo_tables_of}.\n")


def added_sentences(added: list[dict]) -> str:
    """Rows added to a saved suite later with ``--add-methods``: which, when, and each one's bench time."""
    out = []
    for rec in added:
        times = ", ".join(f"{display_name(m)} {sec / 60:.1f} min" for m, sec in rec["seconds"].items())
        left = [display_name(m) for m in rec["methods"] if m not in rec["seconds"]]
        out.append(f"- {rec['suite']}: {times or 'none finished'}" + (f" (not finished: {', '.join(left)})" if left else "")
                   + f"; started {rec['started']}, {rec.get('threads') or 'auto'} torch thread(s)"
                   + (f", data-based methods at {rec['adaptive_steps']} steps" if rec.get("adaptive_steps") else ""))
    return ("Rows added to a saved suite later with `--add-methods` (same zoo, reference rows and validation limit; "
            "bench time per method):\n\n" + "\n".join(out) + "\n")


def render(results: dict[str, BenchResult], zoo: Zoo, builds: dict, started: str, seconds: float,
           adaptive_page: Path | None = None, updates: list[dict] | None = None, added: list[dict] | None = None) -> str:
    s = zoo.settings
    parts = [
        "# Benchmark results (offline zoo)\n",
        "Generated by `make results` (`python -m mdamerge.evaluation.results`); do not edit by hand. "
        "See [benchmark.md](benchmark.md) for the protocol.\n",
        f"Run started {started}, took {seconds / 60:.0f} min; torch {torch.__version__}, "
        f"{benchmark_threads(results)} threads, {os.cpu_count()} CPUs ({platform.machine()}); "
        "the machine is shared, so times depend on its load (load averages below).\n",
        update_sentences(updates, "the earlier run's zoo (its facts saved in results.json)" if isinstance(zoo, SavedZoo)
                         else f"the zoo at `{zoo.root}`") if updates else "",
        added_sentences(added) if added else "",
        zoo_threads_line(zoo),
        f"Backbone: TinyViT dim {s.model.dim}, depth {s.model.depth}, patch {s.model.patch_size}, "
        f"{zoo.pretrain_record.get('num_parameters')} parameters. Fine-tuning: {s.finetune.steps} steps, batch "
        f"{s.finetune.batch_size}, AdamW lr {s.finetune.lr}, heads frozen (linear probes of the pretrained backbone); "
        f"pretraining {s.pretrain.steps} steps ({recipe_name(s)} recipe).\n",
        "Numbers are test accuracy (%). **Avg** = mean over tasks; **Norm.** = mean over tasks of merged / "
        "individually fine-tuned accuracy. Each method's `scaling` (and MDA's `etf_side`, `etf_over`, `polar`) "
        "is chosen on the validation split.\n",
        "## Summary\n",
        comparison_table(results),
        stored_regime_section(adaptive_page.parent) if adaptive_page is not None else "",
        "\n### MDA compared with TSV-M, Iso-CTS and task arithmetic\n",
        "\n".join(mda_verdict(results)) + "\n",
        "\n### MDA options that won on validation\n",
        "\n".join(mda_defaults(results)) + "\n",
    ]
    for suite, res in results.items():
        parts += [f"\n## {suite} ({len(res.tasks)} tasks)\n", markdown_table(res),
                  "\nChosen on validation:\n", chosen_params_table(res),
                  f"\nDifferences from TSV-M and task arithmetic on {suite}:\n",
                  interval_section(res) or NO_INTERVALS]
        mda = mda_options_table(res)
        if mda:
            parts += ["\nMDA option search (best scaling of each option set, validation average %):\n", mda]
    if adaptive_page is not None:
        parts.append(seeds_section(adaptive_page.parent))
    parts += ["\n## Zoo build\n", zoo_tables(zoo, list(results), builds)]
    if adaptive_page is not None:
        parts.append(data_based_section(adaptive_page))
        parts.append(paper_experiments_section(adaptive_page.parent / PAPER_PAGE))
        parts.append(scale_trend_section(adaptive_page.parent / SCALE_PAGE))
        parts.append(text_section(adaptive_page.parent / TEXT_PAGE))
        parts.append(regime_section(adaptive_page.parent))
    return "\n".join(p for p in parts if p)


def main(argv: list[str] | None = None) -> None:
    """The command line; a mistake in its input is one line, ``error: ...``, and exit status 2."""
    run_script(_main, argv)


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES))
    parser.add_argument("--methods", default="data-free")
    parser.add_argument("--cache", default=None, help="cache folder (default: $MDAMERGE_CACHE or ~/.cache/mdamerge)")
    parser.add_argument("--recipe", default=DEFAULT_VISION_RECIPE, choices=VISION_RECIPE_NAMES,
                        help="the vision zoo's training recipe (CACHE/zoo-additive, or CACHE/zoo for stored); "
                             "a zoo already built keeps its own settings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--val-limit", type=int, default=250, help="validation examples per task in the search (0: all)")
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--render-only", action="store_true",
                        help="rebuild the page from the saved JSON (e.g. after the data-based page changed)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for building and benchmarking (default: the cores the machine's load "
                             "leaves free; the zoo is bit-reproducible only at the same count)")
    parser.add_argument("--add-methods", default=None, metavar="LIST",
                        help="bench only these methods on each of --suites as saved (their reference rows and "
                             "validation limit, on the zoo they were benched on) and join the rows in (a method "
                             "already there is replaced); the JSON is saved after each method")
    parser.add_argument("--adaptive-steps", type=int, default=None,
                        help="with --add-methods: optimisation steps of the data-based methods (default: theirs)")
    parser.add_argument("--update", action="store_true",
                        help="benchmark only --suites and put them into the saved JSON (the other suites' rows are "
                             "kept as saved; the zoo must have the settings the saved rows were made with)")
    args = parser.parse_args(argv)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite {unknown[0]!r}; suites: {', '.join(SUITES)}")
    zoo = vision_zoo(cache=args.cache, recipe=args.recipe)
    out = Path(args.out)
    adaptive_page = out.parent / ADAPTIVE_PAGE
    if sum(map(bool, (args.render_only, args.update, args.add_methods))) > 1:
        raise ConfigError("--render-only, --update and --add-methods exclude each other")
    if args.adaptive_steps is not None and not args.add_methods:
        raise ConfigError("--adaptive-steps goes with --add-methods")
    if args.add_methods:
        add_methods(out, suites, args.add_methods, zoo, args.device, adaptive_page, threads=args.threads,
                    adaptive_steps=args.adaptive_steps)
        return
    if args.render_only:
        rerender(out, zoo, adaptive_page)
        return
    if args.update:
        update(out, suites, args.methods, zoo, args.device, args.val_limit or None, adaptive_page, threads=args.threads)
        return
    started = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    start = time.perf_counter()
    results, builds = build_and_bench(suites, args.methods, zoo, args.device, args.val_limit or None, log=print,
                                      threads=args.threads)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = {"started": started, "seconds": round(seconds, 1), "builds": builds,
             "suites": {s: r.to_dict() for s, r in results.items()}, "zoo": zoo_facts(zoo, results)}
    out.with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
    out.write_text(render(results, zoo, builds, started, seconds, adaptive_page))
    print(f"wrote {out} and {out.with_suffix('.json')}")


def load_saved(out: Path, option: str) -> dict:
    """The saved JSON beside ``out`` (ConfigError when missing or older than the per-suite layout)."""
    saved_path = out.with_suffix(".json")
    if not saved_path.is_file():
        raise ConfigError(f"{saved_path} not found; run without {option} first")
    saved = json.loads(saved_path.read_text())
    if "suites" not in saved:
        raise ConfigError(f"{saved_path} predates {option} (no 'suites' key); run without it")
    return saved


def rerender(out: Path, zoo: Zoo, adaptive_page: Path) -> None:
    """Rewrite ``out`` from its JSON without benchmarking again."""
    saved = load_saved(out, "--render-only")
    results = {s: BenchResult.from_dict(r) for s, r in saved["suites"].items()}
    out.write_text(render(results, page_zoo(zoo, saved, results), saved["builds"], saved["started"], saved["seconds"],
                          adaptive_page, saved.get("updates"), saved.get("added")))
    print(f"wrote {out}")


def check_update(saved: dict, suites: list[str], zoo: Zoo) -> None:
    """``--update`` puts new rows beside saved ones: the zoo must have the saved rows' settings, and the page
    must still be able to show the zoo facts of the suites it keeps (saved, or in this zoo)."""
    for suite in suites:
        stored = saved["suites"].get(suite, {}).get("meta", {}).get("zoo_settings")
        if stored is not None and stored != zoo.settings.to_dict():
            raise ConfigError(
                f"the saved {suite} rows were made on a zoo with other settings (fingerprint "
                f"{ZooSettings.from_dict(stored).fingerprint()}) than the one at {zoo.root} "
                f"(fingerprint {zoo.settings.fingerprint()}); pick its --cache")
    kept = [s for s in saved["suites"] if s not in suites]
    if "zoo" not in saved and any(zoo.missing(s) for s in kept):
        raise ConfigError(f"the saved JSON holds no zoo facts and the zoo at {zoo.root} lacks tasks of "
                          f"{', '.join(kept)}; run without --update")


def add_methods(out: Path, suites: list[str], methods: str, zoo: Zoo, device: str, adaptive_page: Path,
                log=print, threads: int | None = None, adaptive_steps: int | None = None) -> dict:
    """Bench ``methods`` on each saved suite of ``suites`` with its reference rows and validation limit and join
    the rows in, saving the JSON after each method (a stopped run keeps its finished rows); rewrite the page.

    The saved rows must have been benched on this very zoo (its folder): a zoo rebuilt with the same settings
    on another machine is not bit-identical, so its rows could not be compared with the saved ones."""
    saved = load_saved(out, "--add-methods")
    names = resolve_methods(methods)
    for suite in suites:
        if suite not in saved["suites"]:
            raise ConfigError(f"no saved {suite} rows to add to; run --update --suites {suite} first")
        meta = saved["suites"][suite].get("meta", {})
        if Path(meta.get("zoo", "")).expanduser().resolve() != zoo.root.resolve():
            raise ConfigError(f"the saved {suite} rows were benched on the zoo at {meta.get('zoo')}, not {zoo.root}; "
                              f"pick its --cache, or run --update --suites {suite} on this zoo first")
        check_update(saved, [suite], zoo)
        if zoo.missing(suite):
            raise ConfigError(f"task '{zoo.missing(suite)[0]}' is not built in the zoo at {zoo.root}")
    adaptive = adaptive_methods()
    options = {m: {"steps": adaptive_steps, "progress": False} for m in names if m in adaptive and adaptive_steps}
    saved_path = out.with_suffix(".json")
    for suite in suites:
        result = BenchResult.from_dict(saved["suites"][suite])
        references = [r for r in result.rows if r.kind == "reference"]
        record = {"suite": suite, "methods": names, "started": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
                  "seconds": {}, "threads": threads, "adaptive_steps": adaptive_steps}
        saved.setdefault("added", []).append(record)
        for name in names:
            start = time.perf_counter()
            new = run_bench(suite, [name], zoo=zoo, device=device, val_limit=result.meta.get("val_limit"),
                            progress=False, log=log, threads=threads, method_options=options,
                            reference_rows=references)
            result = add_rows(result, new)
            record["seconds"][name] = round(time.perf_counter() - start, 1)
            saved["suites"][suite] = result.to_dict()
            saved_path.write_text(json.dumps(saved, indent=1) + "\n")
    rerender(out, zoo, adaptive_page)
    return saved


def update(out: Path, suites: list[str], methods: str, zoo: Zoo, device: str, val_limit: int | None,
           adaptive_page: Path, log=print, threads: int | None = None) -> dict:
    """Benchmark ``suites`` again and put them into the saved JSON beside the suites it keeps; rewrite the page.

    The update is recorded (``updates`` in the JSON, a sentence on the page) with the replaced rows' test
    averages, so that the page says whether the new rows reproduce them.
    """
    saved = load_saved(out, "--update")
    check_update(saved, suites, zoo)
    started = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    start = time.perf_counter()
    results, builds = build_and_bench(suites, methods, zoo, device, val_limit, log=log, threads=threads)
    previous = {s: {r["name"]: r["average"] for r in saved["suites"][s]["rows"]} for s in suites if s in saved["suites"]}
    same = all(saved["suites"].get(s, {}).get("meta", {}).get("zoo_settings") == zoo.settings.to_dict()
               for s in previous) and bool(previous)
    if "zoo" not in saved:  # the zoo holds every saved suite (check_update): its facts serve the whole page
        saved["zoo"] = zoo_facts(zoo, list(saved["suites"]))
    for s, res in results.items():
        saved["suites"][s] = res.to_dict()
    threads_used = {zoo.pretrain_record.get("threads")} | {zoo.records[t].get("threads") for s in suites for t in SUITES[s]}
    saved.setdefault("updates", []).append({
        "suites": suites, "started": started, "seconds": round(time.perf_counter() - start, 1), "zoo": str(zoo.root),
        "fingerprint": zoo.settings.fingerprint(), "same_settings": same, "previous": previous,
        "averages": {s: {r.name: r.average for r in res.rows} for s, res in results.items()}, "builds": builds,
        "zoo_build": {"seconds": round((zoo.pretrain_record.get("seconds") or 0.0) + sum(
                          zoo.records[t]["seconds"] for t in dict.fromkeys(t for s in suites for t in SUITES[s])), 1),
                      "pretrain_seconds": zoo.pretrain_record.get("seconds") or 0.0,
                      "threads": "/".join(str(t) for t in sorted(threads_used - {None})) or "unrecorded"}})
    out.with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
    rerender(out, zoo, adaptive_page)
    return saved


if __name__ == "__main__":
    main()
