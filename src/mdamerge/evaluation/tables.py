"""Tables of benchmark results: Markdown (files, docs) and the same text for the terminal."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bench import BenchResult

DISPLAY_NAMES = {
    "pretrained": "Pretrained", "fine-tuned": "Fine-tuned (individual)", "average": "Simple average",
    "task_arithmetic": "Task arithmetic", "ties": "TIES", "dare": "DARE", "tsv": "TSV-M", "iso_c": "Iso-C",
    "iso_cts": "Iso-CTS", "mda": "MDA (data-free)",
}


def pct(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.{digits}f}"


def display_name(name: str) -> str:
    return DISPLAY_NAMES.get(name, name)


def gap_recovered(result: "BenchResult", name: str) -> float:
    """(method - pretrained) / (fine-tuned - pretrained), on the test averages."""
    pre, ft = result.row("pretrained").average, result.finetuned.average
    return (result.row(name).average - pre) / (ft - pre) if ft != pre else float("nan")


def regime_figures(result: "BenchResult") -> dict:
    """What says whether a suite's task vectors add: the fine-tuning gain over the pretrained row (fraction),
    task arithmetic's chosen scaling and share of the gap, and the best data-free merge with its share."""
    best = max((r for r in result.rows if r.kind == "data-free"), key=lambda r: r.average)
    return {"gain": result.finetuned.average - result.row("pretrained").average,
            "ta_scaling": result.row("task_arithmetic").params.get("scaling"),
            "ta_share": gap_recovered(result, "task_arithmetic"),
            "best": display_name(best.name), "best_share": gap_recovered(result, best.name)}


def format_interval(interval) -> str:
    """``+1.2 [+0.3, +2.1]`` in points; bold when the interval excludes 0 (the difference is resolved)."""
    text = f"{100 * interval.diff:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"
    return f"**{text}**" if interval.resolved else text


def interval_table(result: "BenchResult") -> str:
    """Each method's share of the pretrained-to-fine-tuned gap and its difference from TSV-M and from task
    arithmetic with the paired bootstrap 95% interval; empty when the rows kept no per-example results."""
    intervals = result.intervals()
    refs = [r for r in ("tsv", "task_arithmetic") if any(r in per for per in intervals.values())]
    if not refs:
        return ""
    lines = [_md_row(["Method", "Avg", "Gap recovered %", *[f"minus {display_name(r)} (95% CI, points)" for r in refs]]),
             _md_row(["---", "---:", "---:", *["---:"] * len(refs)])]
    for r in result.rows:
        if r.kind == "reference" or r.name not in intervals:
            continue
        cells = [format_interval(intervals[r.name][ref]) if ref in intervals[r.name] else "-" for ref in refs]
        lines.append(_md_row([display_name(r.name), pct(r.average), pct(gap_recovered(result, r.name)), *cells]))
    return "\n".join(lines) + "\n"


def interval_statements(result: "BenchResult") -> list[str]:
    """Plain sentences: which differences from TSV-M and from task arithmetic stand outside their intervals."""
    intervals = result.intervals()
    out = []
    for ref in ("tsv", "task_arithmetic"):
        pairs = [(r.name, intervals[r.name][ref]) for r in result.rows
                 if r.kind != "reference" and ref in intervals.get(r.name, {})]
        if not pairs:
            continue
        above = [f"{display_name(n)} ({100 * i.diff:+.1f})" for n, i in pairs if i.resolved and i.diff > 0]
        below = [f"{display_name(n)} ({100 * i.diff:+.1f})" for n, i in pairs if i.resolved and i.diff < 0]
        within = [display_name(n) for n, i in pairs if not i.resolved]
        out.append(f"- Against {display_name(ref)} on {result.suite}: resolved above: {', '.join(above) or 'none'}; "
                   f"resolved below: {', '.join(below) or 'none'}; not resolved (interval includes 0): "
                   f"{', '.join(within) or 'none'}.")
    return out


DISPLAY_ONLY = ("progress",)  # run options recorded with a row that do not change its result


def format_params(params: dict[str, Any]) -> str:
    """``k=v, ...`` of the parameters that shaped a row's result."""
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in DISPLAY_ONLY) if params else ""


def markdown_table(result: "BenchResult", transpose: bool | None = None) -> str:
    """Rows = methods, columns = tasks + Avg + Norm. (or the transpose, for many tasks)."""
    transpose = len(result.tasks) > 10 if transpose is None else transpose
    names = [r.name for r in result.rows]
    cells = {
        r.name: [pct(r.accuracies.get(t)) for t in result.tasks]
        + [pct(r.average), pct(result.normalized_average(r.name))]
        for r in result.rows
    }
    columns = [*result.tasks, "**Avg**", "**Norm.**"]
    if not transpose:
        header = ["Method", *columns]
        lines = [_md_row(header), _md_row(["---"] + ["---:"] * len(columns))]
        lines += [_md_row([display_name(n), *cells[n]]) for n in names]
    else:
        header = ["Task", *[display_name(n) for n in names]]
        lines = [_md_row(header), _md_row(["---"] + ["---:"] * len(names))]
        lines += [_md_row([col, *[cells[n][i] for n in names]]) for i, col in enumerate(columns)]
    return "\n".join(lines) + "\n"


def chosen_params_table(result: "BenchResult") -> str:
    """Hyperparameters each method ended up with, and the validation average that chose them."""
    lines = [_md_row(["Method", "Chosen on validation", "Val. avg", "Configs tried", "Seconds"]),
             _md_row(["---", "---", "---:", "---:", "---:"])]
    for r in result.rows:
        if r.kind == "reference":
            continue
        lines.append(_md_row([display_name(r.name), format_params(r.params) or "(defaults)", pct(r.val_average),
                              str(len(r.trials)), f"{r.seconds:.0f}"]))
    return "\n".join(lines) + "\n"


def mda_options_table(result: "BenchResult") -> str:
    from .bench import mda_option_summary

    summary = mda_option_summary(result)
    if not summary:
        return ""
    lines = [_md_row(["etf_side", "etf_over", "polar", "best scaling", "Val. avg"]),
             _md_row(["---", "---", "---", "---:", "---:"])]
    lines += [_md_row([str(s["etf_side"]), str(s["etf_over"]), str(s["polar"]), str(s["scaling"]), pct(s["val_average"], 2)])
              for s in summary]
    return "\n".join(lines) + "\n"


INTERVAL_NOTE = ("Differences of average test accuracy in points, with a paired bootstrap 95% interval over test "
                 "examples (2000 seeded resamples of each task's test examples, the same for both rows); **bold** = "
                 "the interval excludes 0. One fine-tuning seed: the intervals cover test-set noise, not "
                 "fine-tuning noise.\n")


def interval_section(result: "BenchResult") -> str:
    """The interval table with its note and plain statements ('' without per-example results)."""
    table = interval_table(result)
    if not table:
        return ""
    return INTERVAL_NOTE + "\n" + table + "\n" + "\n".join(interval_statements(result)) + "\n"


def seen_unseen_table(result: "BenchResult") -> str:
    """Average test accuracy over the merged tasks and over the held-out ones (``--unseen``)."""
    if not result.unseen:
        return ""
    seen = [t for t in result.tasks if t not in result.unseen]
    lines = [_md_row(["Method", f"Seen avg ({len(seen)} merged)", f"Unseen avg ({', '.join(result.unseen)})"]),
             _md_row(["---", "---:", "---:"])]
    for r in result.rows:
        split = result.split_averages(r.name)
        lines.append(_md_row([display_name(r.name), pct(split["seen"]), pct(split["unseen"])]))
    return "\n".join(lines) + "\n"


def markdown_report(result: "BenchResult") -> str:
    """The whole Markdown file that ``bench`` saves."""
    parts = [
        f"# Merging benchmark: {result.suite} ({len(result.tasks)} tasks)\n",
        "Test accuracy (%) per task; **Avg** = mean over tasks; **Norm.** = mean over tasks of "
        "merged / individually fine-tuned accuracy (%).\n",
        markdown_table(result),
    ]
    intervals = interval_section(result)
    if intervals:
        parts += ["\n## Differences from TSV-M and task arithmetic\n", intervals]
    if result.unseen:
        parts += ["\n## Generalisation: merged on the seen tasks, tested on all\n", seen_unseen_table(result)]
    parts += [
        "\n## Hyperparameters chosen on the validation split\n",
        chosen_params_table(result),
    ]
    mda = mda_options_table(result)
    if mda:
        parts += ["\n## MDA options on the validation split (best scaling for each)\n", mda]
    meta = result.meta
    parts.append(
        f"\nZoo: `{meta.get('zoo')}`; device {meta.get('device')}; torch threads {meta.get('torch_threads')}; "
        f"benchmark time {meta.get('seconds')} s.\n"
    )
    return "\n".join(parts)


def terminal_report(result: "BenchResult") -> str:
    """What ``mdamerge bench`` prints: the table and the chosen hyperparameters."""
    text = f"{result.suite}: test accuracy (%)\n\n" + markdown_table(result) + "\n" + chosen_params_table(result)
    if result.unseen:
        text += "\nMerged on the seen tasks only; held out: " + ", ".join(result.unseen) + "\n\n" + seen_unseen_table(result)
    mda = mda_options_table(result)
    if mda:
        text += "\nMDA options (validation):\n\n" + mda
    return text


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
