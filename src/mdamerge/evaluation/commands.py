"""``mdamerge eval`` and ``mdamerge bench``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import MergeError
from ..interrupts import interruptible
from ..zoo.commands import (CACHE_HELP, ZOO_RECIPE_NAMES, backbone_option, task_selection, zoo_recipe_option,
                            zoo_from_cache)
from ..zoo.suites import suite_names


@click.command("eval")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--suite", default="tasks8", show_default=True, help=f"Task suite: {', '.join(suite_names())}.")
@click.option("--tasks", default=None, help="Comma-separated task names (instead of --suite).")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--cache", default=None, type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Save eval.json and eval.md here.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: torch's).")
@backbone_option
@zoo_recipe_option("--recipe", "--zoo-recipe", "--text-recipe")
@interruptible("out_dir")
def eval_cmd(model_dir, suite, tasks, split, cache, device, out_dir, threads, backbone, zoo_recipe):
    """Accuracy of the backbone in MODEL_DIR (e.g. a merged zoo model) on each task, through the zoo's heads."""
    from ..cli import set_threads
    from ..io.writer import check_results_folder, write_result_files
    from .evaluate import average, evaluate_folder, normalized
    from .tables import pct

    set_threads(threads)
    names = task_selection(suite, tasks)
    zoo = zoo_from_cache(cache, names, backbone, zoo_recipe)
    _require_zoo_model(model_dir, zoo)
    if out_dir:
        check_results_folder(out_dir, [model_dir, zoo.root])
    missing = zoo.missing(names)
    if missing:
        raise MergeError(f"task '{missing[0]}' is not built in the zoo at {zoo.root}; run: mdamerge zoo build "
                         + (f"--tasks {tasks}" if tasks else f"--suite {suite}")
                         + (f" --recipe {zoo_recipe}" if zoo_recipe else ""))
    acc = evaluate_folder(model_dir, zoo, names, split, device)
    reference = {t: zoo.individual_accuracy(t, split) for t in names} if split in ("val", "test") else {}
    norm = normalized(acc, reference) if reference else {}
    lines = ["| Task | Accuracy | Normalised |", "| --- | ---: | ---: |"]
    lines += [f"| {t} | {pct(acc[t])} | {pct(norm.get(t))} |" for t in names]
    lines.append(f"| **Average** | {pct(average(acc))} | {pct(average(norm)) if norm else '-'} |")
    table = "\n".join(lines) + "\n"
    click.echo(f"{model_dir} on {split} ({len(names)} tasks), accuracy (%):\n\n{table}")
    if out_dir:
        out = Path(out_dir)
        write_result_files(out, {"eval.json": json.dumps(
            {"model": str(model_dir), "split": split, "tasks": names, "accuracies": acc, "normalized": norm,
             "average": average(acc), "normalized_average": average(norm) if norm else None}, indent=2) + "\n",
            "eval.md": table})
        click.echo(f"saved {out / 'eval.json'} and {out / 'eval.md'}")


@click.command("bench")
@click.option("--suite", default="tasks8", show_default=True, help=f"Task suite: {', '.join(suite_names())}.")
@click.option("--tasks", default=None, help="Comma-separated task names (instead of --suite).")
@click.option("--methods", default="data-free", show_default=True,
              help="'all', 'data-free', 'data-based' or a comma-separated list of method names.")
@click.option("--recipe", default=None, help="Run a Hugging Face model recipe (mdamerge.hf.recipes) instead of the zoo.")
@click.option("--out", "out_dir", default=None, type=click.Path(),
              help="Where to save bench-SUITE.json and .md (default: CACHE/results).")
@click.option("--cache", default=None, type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-search", is_flag=True, help="Use the methods' default hyperparameters (no validation search).")
@click.option("--val-limit", type=int, default=250, show_default=True,
              help="Validation examples per task used by the search (0: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: the cores the machine's load leaves free).")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--unseen", default=None,
              help="Generalisation: hold out the last N tasks (e.g. 2) or comma-separated task names; merge the rest, test all.")
@backbone_option
@zoo_recipe_option("--zoo-recipe", "--text-recipe")
@interruptible("out_dir")
def bench_cmd(suite, tasks, methods, recipe, out_dir, cache, device, no_search, val_limit, seed, threads, quiet, unseen,
              backbone, zoo_recipe):
    """Merge the zoo's fine-tuned backbones with each method and print the accuracy table.

    Builds the zoo first if it is missing. Scaling factors (and MDA's options) are chosen
    on the validation split; the table reports test accuracy.
    """
    if recipe:
        if recipe in ZOO_RECIPE_NAMES:
            raise MergeError(f"--recipe runs a Hugging Face recipe; the zoo's recipe '{recipe}' is "
                             f"--zoo-recipe {recipe}")
        _run_recipe(recipe, methods, out_dir, device)
        return
    from ..io.writer import check_results_folder
    from .bench import run_bench
    from .tables import terminal_report

    zoo = zoo_from_cache(cache, task_selection(suite, tasks), backbone, zoo_recipe)
    from ..zoo.build import default_cache_dir

    out = Path(out_dir) if out_dir else (Path(cache).expanduser() if cache else default_cache_dir()) / "results"
    check_results_folder(out, [zoo.root])
    log = None if quiet else (lambda msg: click.echo(msg, err=True))
    result = run_bench(task_selection(suite, tasks) if tasks else suite, methods, zoo=zoo, out_dir=out, device=device,
                       search=not no_search, val_limit=val_limit or None, seed=seed, progress=not quiet, log=log,
                       threads=threads, unseen=unseen)
    click.echo(terminal_report(result))
    click.echo(f"saved {out / f'{result.file_stem}.json'} and {out / f'{result.file_stem}.md'}")


def _require_zoo_model(model_dir: str, zoo) -> None:
    """`eval` measures the zoo's backbones (TinyViT; BERT encoders for the text zoo); say so for any
    other model instead of a layout error."""
    from ..zoo.model import MODEL_TYPE

    expected = getattr(zoo, "MODEL_TYPE", MODEL_TYPE)
    kind = "TinyViT backbones" if expected == MODEL_TYPE else f"the text zoo's {expected} encoders"
    config = Path(model_dir) / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    except (OSError, ValueError):
        model_type = None
    if model_type is not None and model_type != expected:
        raise MergeError(
            f"{model_dir} is a '{model_type}' model: `mdamerge eval` measures {kind} of the offline zoo "
            f"(model_type '{expected}'); evaluate it with its own library (transformers, sentence-transformers), "
            "or run a Hugging Face recipe with `mdamerge bench --recipe NAME`")


def _run_recipe(recipe: str, methods: str, out_dir: str | None, device: str) -> None:
    try:
        from ..hf.recipes import run_recipe
    except ImportError as exc:
        raise MergeError(f"--recipe needs mdamerge.hf.recipes, which is not available ({exc})") from None
    result = run_recipe(recipe, methods=methods, out_dir=out_dir, device=device)
    if result is not None:
        click.echo(result if isinstance(result, str) else getattr(result, "table", result))
