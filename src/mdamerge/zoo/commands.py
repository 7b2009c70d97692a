"""``mdamerge zoo``: build and inspect the offline model zoo."""

from __future__ import annotations

import click

from ..interrupts import interruptible
from .suites import BACKBONE_NAMES, DEFAULT_BACKBONE, suite_names

CACHE_HELP = ("Cache folder (default: $MDAMERGE_CACHE or ~/.cache/mdamerge); the vision zoo lives in "
              "CACHE/zoo-additive (CACHE/zoo for --recipe stored, CACHE/zoo-base[-additive] for --backbone base), "
              "the text zoo in CACHE/textzoo-additive (CACHE/textzoo for --recipe stored).")
BACKBONE_HELP = (f"Vision zoo backbone: {', '.join(BACKBONE_NAMES)} (default: {DEFAULT_BACKBONE}; "
                 "base = 2x wider, its own cache folder CACHE/zoo-base[-additive]).")
# A plain string checked by backbone_config, so a wrong name is the usual one-line `error: ...` (exit 2).
backbone_option = click.option("--backbone", default=None, metavar="NAME", help=BACKBONE_HELP)
ZOO_RECIPE_HELP = ("The zoo's training recipe: additive (default, the benchmark's; vision: 4x longer pretraining and "
                   "fine-tuning lr 1e-4, CACHE/zoo-additive; text: lr 1e-4 for 200 steps, CACHE/textzoo-additive) or "
                   "stored (the zoos of before: vision lr 2e-4 after 500 pretraining steps, CACHE/zoo; text lr 3e-4 "
                   "for 80 steps, CACHE/textzoo).")
# A plain string checked by zoo_subdir / recipe_subdir (one-line error); --zoo-recipe (or its older name
# --text-recipe) on every command, --recipe too where that name is free (`mdamerge bench --recipe` runs a
# Hugging Face recipe).
ZOO_RECIPE_NAMES = ("additive", "stored")  # zoo.build.VISION_RECIPE_NAMES and textzoo.build.TEXT_RECIPES, torch-free


def zoo_recipe_option(*names: str):
    return click.option(*names, "zoo_recipe", default=None, metavar="|".join(ZOO_RECIPE_NAMES),
                        help=ZOO_RECIPE_HELP)


def zoo_from_cache(cache: str | None, tasks: list[str] | None = None, backbone: str | None = None,
                   zoo_recipe: str | None = None):
    """The zoo under ``cache`` that holds ``tasks`` (the vision zoo of ``backbone`` when no tasks are given),
    of the training recipe ``zoo_recipe`` (default additive)."""
    from .build import vision_zoo, zoo_for_tasks

    if tasks:
        return zoo_for_tasks(tasks, cache=cache, backbone=backbone, recipe=zoo_recipe)
    return vision_zoo(cache=cache, backbone=backbone, recipe=zoo_recipe)


def task_selection(suite: str, tasks: str | None) -> list[str]:
    from .tasks import resolve_tasks

    return resolve_tasks(tasks if tasks else suite)


@click.group("zoo")
def zoo_group() -> None:
    """The offline benchmark's model zoo (pretrained backbone, fine-tuned backbones, task heads)."""


@zoo_group.command("build")
@click.option("--suite", default="tasks8", show_default=True, help=f"Task suite: {', '.join(suite_names())}.")
@click.option("--tasks", default=None, help="Comma-separated task names (instead of --suite).")
@click.option("--cache", default=None, type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("--device", default="cpu", show_default=True, help="Training device, e.g. cpu or cuda.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: the cores the machine's load leaves free).")
@click.option("--quiet", is_flag=True, help="No progress bar: one line per stage instead.")
@backbone_option
@zoo_recipe_option("--recipe", "--zoo-recipe", "--text-recipe")
@interruptible()
def build_cmd(suite, tasks, cache, device, threads, quiet, backbone, zoo_recipe):
    """Build what is missing (reusing what is already built) and show each task's accuracies."""
    import time

    from ..io.writer import check_output_location, check_results_folder
    from .tasks import fashion_dir

    names = task_selection(suite, tasks)
    zoo = zoo_from_cache(cache, names, backbone, zoo_recipe)
    check_output_location(zoo.root, [fashion_dir()])  # the only input read from disk
    check_results_folder(zoo.root, [])  # a path through a file: one line before any work
    missing = zoo.missing(names)
    click.echo(f"zoo: {zoo.root} ({len(names) - len(missing)}/{len(names)} tasks already built)")
    start = time.perf_counter()
    timings = zoo.build(names, progress=not quiet, device=device, threads=threads, log=click.echo if quiet else None)
    _print_status(zoo, names)
    if timings:
        click.echo(f"built in {time.perf_counter() - start:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + ")")


@zoo_group.command("list")
@click.option("--cache", default=None, type=click.Path(file_okay=False), help=CACHE_HELP)
@backbone_option
@zoo_recipe_option("--recipe", "--zoo-recipe", "--text-recipe")
def list_cmd(cache, backbone, zoo_recipe):
    """Show the tasks, which are built, and their recorded accuracies."""
    from .tasks import SUITES, TASKS

    for family in dict.fromkeys(spec.family for spec in TASKS.values()):
        names = [t for t, spec in TASKS.items() if spec.family == family]
        zoo = zoo_from_cache(cache, names, backbone if family != "text" else None, zoo_recipe)
        click.echo(f"zoo: {zoo.root}")
        _print_status(zoo, names)
    click.echo("suites: " + "; ".join(f"{k} = {len(v)} tasks" for k, v in SUITES.items()))


def _print_status(zoo, names: list[str]) -> None:
    from ..evaluation.tables import pct
    from .tasks import TASKS

    click.echo(f"{'task':22s} {'classes':>7s} {'pretrained':>10s} {'fine-tuned':>10s} {'seconds':>8s}")
    for t in names:
        spec = TASKS[t]
        if zoo.is_built(t):
            r = zoo.records[t]
            click.echo(f"{t:22s} {len(spec.class_names):7d} {pct(r['pretrained']['test']):>10s} "
                       f"{pct(r['finetuned']['test']):>10s} {r['seconds']:8.0f}")
        else:
            click.echo(f"{t:22s} {len(spec.class_names):7d} {'(not built)':>21s}")
