"""The ``mdamerge analyze`` command."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import MergeError
from ..interrupts import interruptible
from ..zoo.commands import BACKBONE_HELP, CACHE_HELP, zoo_recipe_option


def _paths(values) -> list[Path]:
    """Repeated options and comma-separated lists both work: ``--models a --models b`` or ``--models a,b``."""
    return [Path(p) for v in values for p in str(v).split(",") if p]


@click.command("analyze")
@click.option("--base", default=None, type=click.Path(), help="Pretrained checkpoint (default with --suite/--tasks: the zoo's).")
@click.option("--models", multiple=True, help="Fine-tuned checkpoints (repeat, or comma-separate); with tasks: one per task, in order.")
@click.option("--merged", multiple=True, help="Merged checkpoints to compare (repeat, or comma-separate).")
@click.option("--suite", default=None, help="Offline suite (tiny3, tasks8, tasks14, tasks20): enables Delta_ETF on its test sets.")
@click.option("--tasks", "task_list", default=None, help="Comma-separated zoo tasks instead of --suite.")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help=CACHE_HELP)
@click.option("--zoo-root", default=None, type=click.Path(file_okay=False), hidden=True,
              help="The zoo folder itself (old name; use --cache).")
@click.option("--backbone", default=None, metavar="NAME", help=BACKBONE_HELP)
@zoo_recipe_option("--recipe", "--zoo-recipe", "--text-recipe")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: the cores not busy now).")
@click.option("--rank-fraction", type=float, default=None, help="k for principal angles as a fraction of min(m,n) (default 1/T).")
@click.option("--max-layers", type=int, default=None, help="Analyse only the first N 2-D layers.")
@click.option("--max-samples", type=int, default=2000, show_default=True, help="Test inputs per task for Delta_ETF.")
@click.option("--device", default="cpu", show_default=True, help="Device for feature extraction (cpu, cuda, ...).")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Report folder (written atomically).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@interruptible("out_dir")
def analyze(base, models, merged, suite, task_list, cache, zoo_root, backbone, zoo_recipe, threads, rank_fraction,
            max_layers, max_samples, device, out_dir, overwrite):
    """Directional diagnostics: task-vector cosines, principal angles, spectra and Delta_ETF, as an HTML/Markdown report."""
    from ..cli import set_threads
    from ..engine.core import resolve_device
    from .analysis import AnalysisInputs, run_analysis

    set_threads(threads)
    if cache and zoo_root:
        raise MergeError("give --cache (the zoo is CACHE/zoo-additive) or the old --zoo-root, not both")

    if suite and task_list:
        raise MergeError("give either --suite or --tasks, not both")
    if rank_fraction is not None and not 0 < rank_fraction <= 1:
        raise MergeError(f"--rank-fraction must be in (0, 1], got {rank_fraction}")
    for flag, value in (("--max-layers", max_layers), ("--max-samples", max_samples)):
        if value is not None and value < 1:
            raise MergeError(f"{flag} must be >= 1, got {value}")
    resolve_device(device)  # --device banana or an absent cuda: one line before any work
    tasks, zoo = None, None
    if zoo_recipe and not (suite or task_list):
        raise MergeError(f"--recipe {zoo_recipe} picks the zoo of --suite/--tasks; give a suite")
    if suite or task_list:
        from ..adaptation.registry import resolve_tasks
        from ..errors import closest_hint
        from ..zoo.build import zoo_for_tasks
        from ..zoo.tasks import SUITES

        if suite and suite not in SUITES:
            raise MergeError(f"unknown suite '{suite}'" + closest_hint(suite, SUITES) + f"; choose from {', '.join(SUITES)}")
        tasks = resolve_tasks(suite or task_list)
        if cache:
            from ..zoo.commands import zoo_from_cache

            zoo = zoo_from_cache(cache, tasks, backbone, zoo_recipe)
        else:
            zoo = zoo_for_tasks(tasks, root=zoo_root, backbone=backbone, recipe=zoo_recipe)
        missing = zoo.missing(tasks)
        if missing:
            raise MergeError(f"task '{missing[0]}' is not built in the zoo at {zoo.root}; run: mdamerge zoo build")
    model_paths = _paths(models)
    if zoo is not None:
        base = base or zoo.base_dir
        model_paths = model_paths or [Path(zoo.finetuned_dir(t)) for t in tasks]
    if base is None:
        raise MergeError("--base is required (or give --suite/--tasks to use the zoo's pretrained model)")
    inputs = AnalysisInputs(
        base=Path(base), models=model_paths, merged=_paths(merged), tasks=tasks, rank_fraction=rank_fraction,
        max_layers=max_layers, max_samples=max_samples, device=device,
    )
    replacing = overwrite and Path(out_dir).is_dir()
    metrics = run_analysis(inputs, out_dir, zoo=zoo, overwrite=overwrite, progress=lambda m: click.echo(m, err=True))
    summary = f"{len(metrics['layers'])} layers"
    if metrics["delta_etf_mean"]:
        summary += ", mean Delta_ETF: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["delta_etf_mean"].items())
    click.echo(f"report -> {Path(out_dir) / 'report.html'} ({summary})" + (" (replaced the existing folder)" if replacing else ""))
