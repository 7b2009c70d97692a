"""The ``mdamerge lora`` command."""

from __future__ import annotations

import click
import yaml

from ..errors import ConfigError
from ..interrupts import interruptible


def parse_params(items) -> dict:
    """``("scaling=0.5", "polar=false")`` -> ``{"scaling": 0.5, "polar": False}`` (values read as YAML scalars)."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects NAME=VALUE, got {item!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def parse_weights(text: str | None):
    if text is None:
        return None
    from ..config import finite_number

    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights expects comma-separated numbers, got {text!r}") from None
    return [finite_number(w, f"--weights entry {i + 1}") for i, w in enumerate(weights)]


@click.command("lora")
@click.argument("base", type=click.Path())
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Output folder (created atomically).")
@click.option("--method", default="tsv", show_default=True, help="Merging method (see `mdamerge methods`).")
@click.option("--as", "output", type=click.Choice(["model", "adapter"]), default="model", show_default=True,
              help="Write the merged full model, or a new LoRA adapter.")
@click.option("--rank", type=int, default=None, help="Rank of the new adapter (--as adapter; default: largest input rank).")
@click.option("--weights", default=None, help="Comma-separated weight per adapter (scales its task vector).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Method parameter (repeatable).")
@click.option("--dtype", default=None, help="Output dtype (default: the base's for a model, float32 for an adapter).")
@click.option("--device", default="cpu", show_default=True, help="Compute device (cpu, cuda, ...).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: the cores not busy now).")
@interruptible("out_dir")
def lora(base, adapters, out_dir, method, output, rank, weights, params, dtype, device, seed, overwrite, quiet, threads):
    """Merge PEFT LoRA ADAPTERS (folders) trained on BASE into a full model or a new adapter.

    OUT/merge_config.yaml replays the merge: `mdamerge merge OUT/merge_config.yaml --out DIR`.
    """
    from ..cli import echo_task_folders, keep_freed_memory, set_threads
    from .merge import merge_lora

    set_threads(threads)
    keep_freed_memory()

    result = merge_lora(base, list(adapters), out_dir, method, output=output, rank=rank, weights=parse_weights(weights),
                        parameters=parse_params(params), dtype=dtype, device=device, seed=seed, overwrite=overwrite,
                        progress=not quiet)
    detail = (f"rank {result.rank}, worst relative truncation error {result.max_truncation_error:.2e}"
              if result.output == "adapter" else f"{result.copied} tensors copied from the base")
    click.echo(f"merged {len(adapters)} adapters into {result.adapted} weights with '{result.method}' "
               f"in {result.seconds:.1f}s -> {result.out_dir} ({result.output}; {detail})"
               + (" (replaced the existing folder)" if result.replaced else ""))
    echo_task_folders(result)
