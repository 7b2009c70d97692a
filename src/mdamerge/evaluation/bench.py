"""The offline merging benchmark: one table per suite, like the literature's CLIP table.

Rows: the pretrained backbone (with the frozen task heads), the individually fine-tuned
backbones (each on its own task), then every merging method. Columns: accuracy per task,
the average, and the normalised average (merged / fine-tuned, per task, then averaged).

Hyperparameters that the literature tunes -- each method's ``scaling`` and, for MDA, its
open options (``etf_side``, ``etf_over``, ``polar``) -- are chosen on the *validation*
split; the test split is only used for the reported numbers.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from ..engine import merge_state_dicts
from ..errors import ConfigError, closest_hint
from ..methods import available_methods, get_method
from ..zoo.build import Zoo, zoo_for_tasks
from ..zoo.finetune import cpu_threads
from ..zoo.tasks import SUITES, resolve_tasks
from .evaluate import accuracies, average, backbone_correct, evaluate_backbone, model_correct, normalized
from .intervals import Interval, pack_correct, row_intervals
from .tables import format_params

# Display order of the data-free methods; methods registered later are appended.
PREFERRED_ORDER = ("average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts", "mda")

# Validation grids of the scaling factor (extended automatically when the best value lies on an edge).
SCALING_GRIDS: dict[str, tuple[float, ...]] = {
    "task_arithmetic": (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0),
    "ties": (0.2, 0.3, 0.4, 0.6, 0.8, 1.0),
    "dare": (0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
    "tsv": (0.6, 0.8, 1.0, 1.2, 1.5),
    "iso_c": (0.6, 0.9, 1.2, 1.5, 1.8, 2.2),
    "iso_cts": (0.6, 0.9, 1.2, 1.5, 1.8, 2.2),
    "mda": (0.6, 0.8, 1.0, 1.2, 1.5),
}
MAX_EDGE_EXTENSIONS = 3
# Rows every other row is compared with, by a paired bootstrap over test examples (issue 19).
INTERVAL_REFERENCES = ("tsv", "task_arithmetic")
# MDA's open choices, decided by the benchmark on validation data.
MDA_OPTIONS = {"etf_side": ("left", "right", "both"), "etf_over": ("directions", "tasks"), "polar": (True, False)}


@dataclass
class Trial:
    """One validated configuration."""

    params: dict[str, Any]
    val_average: float


@dataclass
class Row:
    """One line of the table."""

    name: str
    kind: str  # "reference", "data-free" or "data-based"
    accuracies: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    val_average: float | None = None
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    # per task, which test examples the row got right (intervals.pack_correct): the paired bootstrap's input
    correct: dict[str, str] = field(default_factory=dict)

    @property
    def average(self) -> float:
        return average(self.accuracies)


def row_from_correct(name: str, kind: str, correct: dict[str, torch.Tensor], **fields: Any) -> Row:
    """A row whose test accuracies come from per-example correctness, which it keeps (packed)."""
    return Row(name, kind, accuracies(correct), correct={t: pack_correct(c) for t, c in correct.items()}, **fields)


@dataclass
class BenchResult:
    """The benchmark table of one suite, with how every number was obtained."""

    suite: str
    tasks: list[str]
    rows: list[Row]
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def finetuned(self) -> Row:
        return self.row("fine-tuned")

    def normalized(self, name: str) -> dict[str, float]:
        """Per-task accuracy of a row divided by the individually fine-tuned accuracy."""
        return normalized(self.row(name).accuracies, self.finetuned.accuracies)

    def normalized_average(self, name: str) -> float:
        return average(self.normalized(name))

    @property
    def unseen(self) -> list[str]:
        """Tasks held out of the merge (``--unseen``), evaluated with their frozen heads; empty by default."""
        return list(self.meta.get("unseen") or [])

    def split_averages(self, name: str) -> dict[str, float]:
        """Average test accuracy of a row over the merged (``seen``) and the held-out (``unseen``) tasks."""
        acc = self.row(name).accuracies
        held = set(self.unseen)
        return {"seen": average({t: a for t, a in acc.items() if t not in held}),
                "unseen": average({t: a for t, a in acc.items() if t in held})}

    def intervals(self, references: Sequence[str] = INTERVAL_REFERENCES) -> dict[str, dict[str, Interval]]:
        """``{row: {reference: Interval}}``: each row's average-accuracy difference from each reference row
        present (default TSV-M and task arithmetic), with its paired bootstrap 95% interval over test
        examples; empty for results saved before rows kept their per-example correctness."""
        return row_intervals({r.name: r.correct for r in self.rows}, self.tasks, references)

    def to_dict(self) -> dict:
        rows = []
        for row in self.rows:
            data = asdict(row)
            data["average"] = row.average
            data["normalized_average"] = self.normalized_average(row.name)
            rows.append(data)
        out = {"suite": self.suite, "tasks": self.tasks, "rows": rows, "meta": self.meta}
        intervals = self.intervals()
        if intervals:  # derived from the rows' correctness (seeded), written out for readers of the JSON
            out["intervals"] = {n: {ref: i.to_dict() for ref, i in refs.items()} for n, refs in intervals.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "BenchResult":
        rows = []
        for r in data["rows"]:
            r = {k: v for k, v in r.items() if k not in ("average", "normalized_average")}
            r["trials"] = [Trial(**t) for t in r.get("trials", [])]
            rows.append(Row(**r))
        return cls(data["suite"], list(data["tasks"]), rows, data.get("meta", {}))  # "intervals" is derived

    @property
    def file_stem(self) -> str:
        """``bench-<suite>``, plus ``-<backbone>`` for a vision zoo backbone other than the default (``small``)."""
        backbone = self.meta.get("backbone")
        return f"bench-{self.suite}" + (f"-{backbone}" if backbone and backbone != "small" else "")

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``<file_stem>.json`` and ``<file_stem>.md`` (e.g. ``bench-tasks8.json``) into ``out_dir``."""
        import json

        from .tables import markdown_report

        from ..io.writer import write_result_files

        files = write_result_files(out_dir, {f"{self.file_stem}.json": json.dumps(self.to_dict(), indent=2) + "\n",
                                             f"{self.file_stem}.md": markdown_report(self)})
        return dict(zip(("json", "markdown"), files.values()))


def add_rows(result: BenchResult, new: BenchResult) -> BenchResult:
    """``result`` with the method rows of ``new`` (same suite and tasks) put in: a row of the same name is
    replaced, others are appended; data-free rows stay before data-based ones. Reference rows are kept."""
    if new.suite != result.suite or list(new.tasks) != list(result.tasks):
        raise ConfigError(f"cannot join rows of {new.suite} ({', '.join(new.tasks)}) into a table of "
                          f"{result.suite} ({', '.join(result.tasks)})")
    added = {r.name: r for r in new.rows if r.kind != "reference"}
    rows = [added.pop(r.name, r) for r in result.rows]
    rows += list(added.values())
    order = {"reference": 0, "data-free": 1, "data-based": 2}
    rows = sorted(rows, key=lambda r: order.get(r.kind, 3))  # stable: keeps the order within a kind
    return BenchResult(result.suite, list(result.tasks), rows, dict(result.meta))


# ---------------------------------------------------------------------------
# Method selection
# ---------------------------------------------------------------------------
def data_free_methods() -> list[str]:
    # 'gta' is mergekit's formulation of methods already in the table (what mergekit configs run)
    names = [m for m in available_methods() if m != "gta"]
    return [m for m in PREFERRED_ORDER if m in names] + [m for m in names if m not in PREFERRED_ORDER]


def adaptive_methods() -> dict[str, Callable]:
    """The data-based methods of :mod:`mdamerge.adaptation`, if that package is available."""
    try:
        from ..adaptation import ADAPTIVE_METHODS
    except ImportError:
        return {}
    return dict(ADAPTIVE_METHODS)


def _distinct_adaptive(methods: dict[str, Callable]) -> list[str]:
    """Registry names minus aliases (two names for the same algorithm with the same fixed options)."""
    seen, out = set(), []
    for name, fn in methods.items():
        key = fn.__doc__ or name
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """``all``, ``data-free``, ``data-based`` or a comma-separated list -> method names, validated."""
    adaptive = adaptive_methods()
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    out: list[str] = []
    for m in methods:
        if m == "data-free":
            out += data_free_methods()
        elif m == "data-based":
            out += _distinct_adaptive(adaptive)
        elif m == "all":
            out += data_free_methods() + _distinct_adaptive(adaptive)
        elif m in available_methods() or m in adaptive:
            out.append(m)
        else:
            known = [*available_methods(), *adaptive, "all", "data-free", "data-based"]
            raise ConfigError(f"unknown method '{m}'" + closest_hint(m, known) + f"; available: {', '.join(known)}")
    if not out:
        raise ConfigError("no methods given (use e.g. --methods data-free)")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------
# Validation search
# ---------------------------------------------------------------------------
class ScaledMerge:
    """Merges of one method at several scaling factors for the price of one.

    The methods here return ``base + scaling * f(task vectors)``; this computes ``f`` once
    (with ``merge_state_dicts`` at ``scaling = 1``) and rescales it. The first rescaled
    merge is checked against a real merge at that scaling; if they differ (a method that
    is not linear in its scaling), every merge is computed in full instead.
    """

    def __init__(self, base: dict, finetuned: list[dict], method: str, params: dict, device: str, seed: int,
                 verified: bool = False):
        self.base, self.finetuned, self.method, self.params = base, finetuned, method, params
        self.device, self.seed = device, seed
        self.has_scaling = any(p.name == "scaling" for p in get_method(method).params)
        self._unit = None
        self._checked = verified or not self.has_scaling
        self.linear = self.has_scaling

    def _merge(self, **extra) -> dict[str, torch.Tensor]:
        return merge_state_dicts(self.base, self.finetuned, self.method, seed=self.seed, device=self.device,
                                 **{**self.params, **extra})

    def __call__(self, scaling: float | None = None) -> dict[str, torch.Tensor]:
        """The merge at ``scaling`` (``None``: the configured or default scaling, as with --no-search)."""
        if not self.has_scaling:
            return self._merge()
        if scaling is None:
            scaling = self.params.get("scaling", get_method(self.method).defaults()["scaling"])
        if not self.linear:
            return self._merge(scaling=scaling)
        if self._unit is None:
            merged = self._merge(scaling=1.0)
            self._unit = {k: (v.float() - self.base[k].float()) if v.is_floating_point() else None for k, v in merged.items()}
        out = {k: (self.base[k].float() + scaling * d).to(self.base[k].dtype) if d is not None else self.base[k]
               for k, d in self._unit.items()}
        if not self._checked:
            self._checked = True
            reference = self._merge(scaling=scaling)
            if not all(torch.allclose(out[k].float(), reference[k].float(), rtol=1e-4, atol=1e-6) for k in out):
                self.linear = False
                return reference
        return out


def search_scaling(
    scaled: ScaledMerge, grid: Sequence[float], score: Callable[[dict], float], fixed: dict[str, Any],
    prefer: float = 1.0,
) -> tuple[float, float, list[Trial]]:
    """Best scaling on validation, widening the grid while the best value sits on its edge.

    Ties go to the value closest to ``prefer`` (the method's default).
    """
    values = sorted(set(grid))
    scores: dict[float, float] = {}
    for _ in range(MAX_EDGE_EXTENSIONS + 1):
        for s in values:
            if s not in scores:
                scores[s] = score(scaled(s))
        best = max(values, key=lambda s: (scores[s], -abs(s - prefer)))
        if best == values[-1]:
            values.append(round(values[-1] * 1.3, 4))
        elif best == values[0] and values[0] > 0.02:
            values.insert(0, round(values[0] * 0.6, 4))
        else:
            break
    best = max(scores, key=lambda s: (scores[s], -abs(s - prefer)))
    trials = [Trial({**fixed, "scaling": s}, scores[s]) for s in sorted(scores)]
    return best, scores[best], trials


def scaling_grid(method: str) -> tuple[float, ...]:
    if method in SCALING_GRIDS:
        return SCALING_GRIDS[method]
    default = next(p.default for p in get_method(method).params if p.name == "scaling")
    return tuple(round(default * f, 4) for f in (0.5, 0.75, 1.0, 1.25, 1.5))


# ---------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------
def run_bench(
    suite: str | Sequence[str] = "tasks8",
    methods: str | Sequence[str] = "data-free",
    zoo: Zoo | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    *,
    search: bool = True,
    val_limit: int | None = None,
    seed: int = 0,
    build: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    threads: int | None = None,
    unseen: int | str | Sequence[str] | None = None,
    backbone: str | None = None,
    reference_rows: Sequence[Row] | None = None,
) -> BenchResult:
    """Benchmark ``methods`` on a suite of the zoo; builds missing zoo models when ``build``.

    ``search=False`` uses each method's defaults instead of validating the scaling (and
    MDA's options). ``val_limit`` caps the validation examples per task during the
    search. ``method_options[name]`` passes extra keyword arguments to a method (e.g.
    ``{"adamerging": {"steps": 200}}``). Results go to ``out_dir`` when given. ``threads``:
    torch threads on CPU (default: as many as the machine's load leaves free). ``unseen``:
    generalisation protocol -- an int N holds out the suite's last N tasks, or give task
    names; the methods merge (and search on validation) the other tasks only, and the
    merged backbone is tested on every task, held-out ones through their frozen heads.
    ``backbone``: the vision zoo's backbone when no ``zoo`` is given (``small``, the default, or
    ``base``; see :data:`mdamerge.zoo.build.BACKBONES`); its results files are named
    ``bench-<suite>-<backbone>`` so that they never overwrite the default backbone's.
    ``reference_rows``: the pretrained and fine-tuned rows of an earlier run on the same zoo and tasks,
    reused instead of evaluated again (adding methods to a saved table).
    """
    if zoo is None and backbone is not None:
        zoo = zoo_for_tasks(resolve_tasks(suite if isinstance(suite, str) else list(suite)), backbone=backbone)
    with cpu_threads(threads, device):
        return _run_bench(suite, methods, zoo, out_dir, device, search, val_limit, seed, build, progress, log,
                          method_options, unseen, reference_rows)


def held_out_tasks(tasks: Sequence[str], unseen: int | str | Sequence[str] | None) -> list[str]:
    """The tasks ``unseen`` names (an int N, or ``"N"``: the last N of ``tasks``), validated; 2 must stay seen."""
    if unseen is None or unseen == "" or unseen == 0:
        return []
    if isinstance(unseen, str):
        unseen = int(unseen) if unseen.strip().isdigit() else [t.strip() for t in unseen.split(",") if t.strip()]
    if isinstance(unseen, int):
        if unseen < 0 or len(tasks) - unseen < 2:
            raise ConfigError(f"--unseen {unseen} leaves {len(tasks) - unseen} of {len(tasks)} tasks to merge; at least 2 are needed")
        return list(tasks[len(tasks) - unseen:])
    held = list(dict.fromkeys(unseen))
    for t in held:
        if t not in tasks:
            raise ConfigError(f"held-out task '{t}' is not in the benchmark's tasks" + closest_hint(t, tasks))
    if len(tasks) - len(held) < 2:
        raise ConfigError(f"holding out {len(held)} of {len(tasks)} tasks leaves fewer than 2 to merge")
    return held


def _run_bench(suite, methods, zoo, out_dir, device, search, val_limit, seed, build, progress, log,
               method_options, unseen=None, reference_rows=None) -> BenchResult:
    say = log or (lambda _msg: None)
    suite_name = suite if isinstance(suite, str) and suite in SUITES else "custom"
    tasks = resolve_tasks(suite if isinstance(suite, str) else list(suite))
    if len(tasks) < 2:
        raise ConfigError(f"merging needs at least 2 tasks, got {tasks}")
    held_out = held_out_tasks(tasks, unseen)
    seen = [t for t in tasks if t not in held_out]  # the tasks merged and searched on
    names = resolve_methods(methods)
    zoo = zoo if zoo is not None else zoo_for_tasks(tasks)
    missing = zoo.missing(tasks)
    if missing:
        if not build:
            raise ConfigError(f"task '{missing[0]}' is not built in the zoo at {zoo.root}; run: mdamerge zoo build")
        say(f"building the zoo for {len(missing)} task(s) in {zoo.root} ...")
        zoo.build(tasks, progress=progress, device=device, threads=torch.get_num_threads())
    options = method_options or {}
    start = time.perf_counter()

    base = zoo.base_state_dict()  # read through mdamerge.io.checkpoint.Checkpoint
    finetuned = [zoo.finetuned_state_dict(t) for t in seen]
    if reference_rows is not None:
        rows = _checked_reference_rows(reference_rows, tasks)
    else:
        rows = [_pretrained_row(zoo, tasks, device), _finetuned_row(zoo, tasks, device)]
    say(_row_line(rows[0]))
    say(_row_line(rows[1]))

    def val_score(state: dict) -> float:
        return average(evaluate_backbone(state, zoo, seen, split="val", device=device, limit=val_limit))

    adaptive = adaptive_methods()
    for name in names:
        t0 = time.perf_counter()
        if name in adaptive:
            extra = {**zoo_adaptive_defaults(zoo, adaptive[name]), **options.get(name, {})}
            row = _adaptive_row(name, adaptive[name], zoo, seen, device, seed, extra, tasks)
        else:
            row = _data_free_row(name, base, finetuned, zoo, tasks, device, seed, search, val_score, options.get(name, {}))
        row.seconds = round(time.perf_counter() - t0, 1)
        rows.append(row)
        say(_row_line(row))

    meta = {
        "zoo": str(zoo.root), "device": device, "seed": seed, "search": search, "val_limit": val_limit,
        "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - start, 1),
        "zoo_settings": zoo.settings.to_dict(), "unseen": held_out, "backbone": getattr(zoo, "backbone", None),
        "zoo_build_seconds": {"pretrained": zoo.pretrain_record.get("seconds"),
                              **{t: zoo.records[t].get("seconds") for t in tasks}},
        # training is bit-reproducible only at the same thread count
        "zoo_build_threads": {"pretrained": zoo.pretrain_record.get("threads"),
                              **{t: zoo.records[t].get("threads") for t in tasks}},
    }
    result = BenchResult(suite_name, tasks, rows, meta)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _row_line(row: Row) -> str:
    params = format_params(row.params)
    return f"{row.name}: average {100 * row.average:.1f}%" + (f" ({params})" if params else "") + (
        f" [{row.seconds:.0f}s]" if row.seconds else "")


def _checked_reference_rows(rows: Sequence[Row], tasks: list[str]) -> list[Row]:
    """The given pretrained and fine-tuned rows (copies), checked to cover exactly ``tasks``."""
    import copy

    by_name = {r.name: r for r in rows}
    out = []
    for name in ("pretrained", "fine-tuned"):
        if name not in by_name:
            raise ConfigError(f"the reference rows lack the '{name}' row")
        if sorted(by_name[name].accuracies) != sorted(tasks):
            raise ConfigError(f"the saved '{name}' row covers tasks {sorted(by_name[name].accuracies)}, "
                              f"not this benchmark's {sorted(tasks)}")
        out.append(copy.deepcopy(by_name[name]))
    return out


def _pretrained_row(zoo: Zoo, tasks: list[str], device: str) -> Row:
    """The pretrained backbone through each task's probe head (the vision zoo: its frozen task head)."""
    t0 = time.perf_counter()
    model = zoo.load_backbone()
    correct = model_correct(model, zoo, tasks, "test", device, heads={t: zoo.probe_head(t) for t in tasks})
    return row_from_correct("pretrained", "reference", correct, seconds=round(time.perf_counter() - t0, 1))


def _finetuned_row(zoo: Zoo, tasks: list[str], device: str) -> Row:
    """Each task's own fine-tuned backbone, loaded from its Hugging Face folder."""
    t0 = time.perf_counter()
    correct = {}
    for task in tasks:
        model = zoo.load_backbone(zoo.finetuned_dir(task))
        correct[task] = model_correct(model, zoo, [task], "test", device)[task]
    return row_from_correct("fine-tuned", "reference", correct, seconds=round(time.perf_counter() - t0, 1))


def _data_free_row(
    name: str, base: dict, finetuned: list[dict], zoo: Zoo, tasks: list[str], device: str, seed: int, search: bool,
    val_score: Callable[[dict], float], extra: dict[str, Any],
) -> Row:
    scaling_param = next((p for p in get_method(name).params if p.name == "scaling"), None)
    tuned_scaling = scaling_param is not None and search and "scaling" not in extra
    option_sets = [extra]
    if name == "mda" and search and not (set(MDA_OPTIONS) & set(extra)):
        keys = list(MDA_OPTIONS)
        option_sets = [{**extra, **dict(zip(keys, combo))} for combo in itertools.product(*MDA_OPTIONS.values())]
    trials: list[Trial] = []
    best: tuple[float, dict, float | None] | None = None
    verified = False  # linearity in the scaling, checked on the first option set only
    for opts in option_sets:
        scaled = ScaledMerge(base, finetuned, name, opts, device, seed, verified=verified)
        if tuned_scaling:
            s, val, tried = search_scaling(scaled, scaling_grid(name), val_score, opts, prefer=scaling_param.default)
            trials += tried
            candidate = (val, opts, s)
            verified = scaled.linear
        else:
            val = val_score(scaled(extra.get("scaling"))) if search else float("nan")
            candidate = (val, opts, None)
            if search:
                trials.append(Trial(dict(opts), val))
        if best is None or (not math.isnan(candidate[0]) and candidate[0] > best[0]):
            best = candidate
    assert best is not None
    val, opts, s = best
    params = {**opts, **({"scaling": s} if s is not None else {})}
    final = ScaledMerge(base, finetuned, name, opts, device, seed, verified=verified)(
        s if s is not None else extra.get("scaling"))
    correct = backbone_correct(final, zoo, tasks, "test", device)
    return row_from_correct(name, "data-free", correct, params=params, val_average=None if math.isnan(val) else val,
                      trials=trials)


def zoo_adaptive_defaults(zoo: Zoo, method: Callable) -> dict[str, Any]:
    """The zoo's budget for data-based methods (the text zoo's CPU-sized steps), limited to the method's options."""
    defaults = getattr(zoo, "ADAPTIVE_DEFAULTS", {})
    accepted = getattr(method, "options", None)
    return {k: v for k, v in defaults.items() if accepted is None or k in accepted}


def _adaptive_row(
    name: str, fn: Callable, zoo: Zoo, tasks: list[str], device: str, seed: int, extra: dict[str, Any],
    eval_tasks: list[str] | None = None,
) -> Row:
    """Adapt on ``tasks``; test on ``eval_tasks`` (default ``tasks``), held-out ones without a feature transform."""
    result = fn(zoo, tasks, device=device, seed=seed, **extra)
    correct = backbone_correct(result.state_dict, zoo, eval_tasks or tasks, "test", device,
                               feature_transforms=result.feature_transforms)
    info = {k: v for k, v in (result.info or {}).items() if _jsonable(v)}
    params = {k: v for k, v in extra.items() if _jsonable(v)}
    return row_from_correct(name, "data-based", correct, params=params, info=info)


def _jsonable(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def mda_option_summary(result: BenchResult) -> list[dict[str, Any]]:
    """Best validation average (and its scaling) of each MDA option set tried, best first."""
    try:
        row = result.row("mda")
    except KeyError:
        return []
    best: dict[tuple, Trial] = {}
    for trial in row.trials:
        key = tuple((k, trial.params.get(k)) for k in MDA_OPTIONS)
        if key not in best or trial.val_average > best[key].val_average:
            best[key] = trial
    out = [{**dict(k), "scaling": t.params.get("scaling"), "val_average": t.val_average} for k, t in best.items()]
    return sorted(out, key=lambda d: -d["val_average"])


def suites_of(names: Iterable[str]) -> list[str]:
    return [s for s in SUITES if s in names]
