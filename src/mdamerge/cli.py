"""The ``mdamerge`` command line.

Errors in the user's input (:class:`~mdamerge.errors.MergeError`) are printed as one
line, ``error: ...``, with exit status 2 -- never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading

import click

from . import __version__
from .errors import MergeError

# Sub-command groups that live in their own packages: (module, attribute).
EXTRA_COMMANDS: list[tuple[str, str]] = []
EXTRA_COMMANDS.append(("mdamerge.diagnostics.commands", "analyze"))
EXTRA_COMMANDS.append(("mdamerge.adaptation.commands", "adapt"))
EXTRA_COMMANDS.append(("mdamerge.lora.commands", "lora"))
EXTRA_COMMANDS.append(("mdamerge.zoo.commands", "zoo_group"))
EXTRA_COMMANDS.append(("mdamerge.evaluation.commands", "eval_cmd"))
EXTRA_COMMANDS.append(("mdamerge.evaluation.commands", "bench_cmd"))


class FriendlyGroup(click.Group):
    """A click group that turns MergeError into a one-line message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MergeError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=FriendlyGroup)
@click.version_option(__version__, prog_name="mdamerge")
def main() -> None:
    """Merge fine-tuned copies of one pretrained model (MDA and the standard baselines)."""


@main.command("merge")
@click.argument("config", type=click.Path())  # checked by the merge itself, with one-line errors
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Output folder (created atomically).")
@click.option("--device", default=None, help="Compute device, e.g. cpu, cuda, cuda:1 (default: config, else cpu).")
@click.option("--dtype", default=None, help="Output dtype: float32, float16, bfloat16 (default: the base's).")
@click.option("--workers", type=int, default=None, help="Tensors merged in parallel on this machine (>= 1).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Merge tensors on a Ray cluster: 'auto', HOST:PORT, ray://HOST:PORT, or 'local' (start one here).")
def merge_cmd(config, out_dir, device, dtype, workers, overwrite, quiet, ray_address):
    """Merge the models that CONFIG (YAML) names into a Hugging Face folder."""
    from .engine import merge

    with interrupts_as_errors(out_dir):
        if ray_address is not None:
            from .engine.distributed import RayExecutor

            with RayExecutor(ray_address) as executor:
                result = merge(config, out_dir, device=device, dtype=dtype, overwrite=overwrite, progress=not quiet,
                               executor=executor)
        else:
            result = merge(config, out_dir, device=device, dtype=dtype, workers=workers, overwrite=overwrite,
                           progress=not quiet)
    click.echo(
        f"merged {result.merged} tensors ({result.copied} copied from the base) with '{result.method}' "
        f"in {result.seconds:.1f}s -> {result.out_dir} [{', '.join(result.shards)}]"
        + (" (replaced the existing folder)" if result.replaced else "")
    )


@contextlib.contextmanager
def interrupts_as_errors(out_dir):
    """SIGTERM is handled like SIGINT: both unwind the merge, so its partial output folder is
    removed, and end in one line and exit status 2."""
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except KeyboardInterrupt as exc:
        name = "SIGTERM" if str(exc) == "SIGTERM" else "SIGINT"
        raise MergeError(f"interrupted by {name}; the partial output of {out_dir} was removed") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@main.command("methods")
@click.option("--name", default=None, help="Show one method only.")
def methods_cmd(name):
    """List merging methods with their parameters and defaults."""
    from .methods import available_methods, get_method

    for method_name in [name] if name else available_methods():
        method = get_method(method_name)
        click.echo(f"{method.name}: {method.summary}")
        if method.reference:
            click.echo(f"    ref: {method.reference}")
        for p in method.params:
            choices = f" {{{'|'.join(map(str, p.choices))}}}" if p.choices else ""
            click.echo(f"    {p.name} = {p.default!r}{choices}  -- {p.help}")


def _register_extra_commands() -> None:
    for module_name, attr in EXTRA_COMMANDS:
        module = importlib.import_module(module_name)
        main.add_command(getattr(module, attr))


_register_extra_commands()
