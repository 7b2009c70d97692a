"""The ``mdamerge`` command line.

Errors in the user's input (:class:`~mdamerge.errors.MergeError`) are printed as one
line, ``error: ...``, with exit status 2 -- never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import MergeError
from .interrupts import interrupts_as_errors

# Sub-commands that live in their own packages: (module, attribute), imported at start-up, or
# (module, attribute, name, one-line help), imported only when that command runs -- so that
# `mdamerge --help` does not import torch (those packages do).
EXTRA_COMMANDS: list[tuple[str, ...]] = []
EXTRA_COMMANDS.append(("mdamerge.diagnostics.commands", "analyze", "analyze",
                       "Directional diagnostics: task-vector cosines, principal angles, spectra, Delta_ETF."))
EXTRA_COMMANDS.append(("mdamerge.adaptation.commands", "adapt", "adapt",
                       "Data-based merging (AdaMerging, MDA feature alignment) of your models or a zoo suite."))
EXTRA_COMMANDS.append(("mdamerge.lora.commands", "lora", "lora",
                       "Merge PEFT LoRA adapters of one base into a full model or a new adapter."))
EXTRA_COMMANDS.append(("mdamerge.zoo.commands", "zoo_group", "zoo", "Build and inspect the offline TinyViT model zoo."))
EXTRA_COMMANDS.append(("mdamerge.evaluation.commands", "eval_cmd", "eval", "Evaluate a merged TinyViT backbone on zoo tasks."))
EXTRA_COMMANDS.append(("mdamerge.evaluation.commands", "bench_cmd", "bench",
                       "Benchmark merging methods on a zoo suite (validation search, test once)."))


class FriendlyGroup(click.Group):
    """A click group that turns MergeError into a one-line message and imports sub-commands lazily."""

    lazy: dict[str, tuple[str, str, str]] = {}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx, name):
        if name not in self.commands and name in self.lazy:
            module, attr, _ = self.lazy[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        """The command list, with the lazy commands' help from the table (importing none of them)."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                rows.append((name, self.commands[name].get_short_help_str(limit=formatter.width - 6 - len(name))))
            else:
                rows.append((name, self.lazy[name][2]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

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
@click.option("--prefix", default=None, metavar="auto|none|PREFIX",
              help="Fine-tunes saved under a prefix (bert., model., ...): detect (auto, the default), none, or give it; "
                   "task heads are saved to OUT/heads/, a loadable classifier per task to OUT/tasks/.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: the cores not busy now).")
def merge_cmd(config, out_dir, device, dtype, workers, overwrite, quiet, ray_address, prefix, threads):
    """Merge the models that CONFIG (YAML) names into a Hugging Face folder.

    CONFIG may also be a mergekit YAML (merge_method: ...) or the merge_config.yaml of a
    `mdamerge lora` output (replays the LoRA merge).
    """
    set_threads(threads)
    keep_freed_memory()
    data = _read_config_file(config)
    if isinstance(data, dict) and "lora" in data:  # written by `mdamerge lora`: replay the LoRA merge
        unused = [flag for flag, value in (("--workers", workers), ("--ray", ray_address), ("--prefix", prefix))
                  if value is not None]
        if unused:
            raise MergeError(f"{unused[0]} does not apply to replaying a LoRA merge ({config}): the replay merges "
                             "adapters weight by weight in this process, as `mdamerge lora` did")
        with interrupts_as_errors(out_dir):
            return _replay_lora(config, out_dir, device, dtype, overwrite, quiet)
    if isinstance(data, dict) and data.get("method") in ADAPTIVE_HINTS:
        raise MergeError(f"'{data['method']}' learns from unlabeled data and is run by `mdamerge adapt CONFIG --out DIR` "
                         "(see `mdamerge adapt --list`); `mdamerge merge` runs the data-free methods (`mdamerge methods`)")
    from pathlib import Path

    from .config import MergeConfig

    checked = MergeConfig.from_dict(data, root=Path(config).parent)  # torch-free: a typo fails before torch loads
    from .engine import merge

    if prefix is not None:
        config = checked
        config.prefix = prefix

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
    echo_task_folders(result)


def echo_task_folders(result) -> None:
    """One line naming the per-task classifier folders of a merge output, when it has any."""
    if getattr(result, "tasks", None):
        from .io.classifiers import task_folders_line

        click.echo(task_folders_line(result.out_dir, result.tasks))


ADAPTIVE_HINTS = ("adamerging", "adamerging_task", "adamerging_layer", "mda_feature", "mda_ta", "mda_am", "mda_am_norot")


def keep_freed_memory() -> None:
    """Merge commands reuse freed tensor memory (see :mod:`mdamerge.allocator`)."""
    from .allocator import keep_freed_memory as keep

    keep()


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch CPU threads for this command (default: the cores no other process keeps busy)."""
    if threads is not None and threads < 1:
        raise MergeError(f"--threads must be >= 1, got {threads}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        return
    from .cpus import apply_default_threads

    apply_default_threads()


def _read_config_file(path: str):
    """The parsed YAML; a mergekit config is checked here already, so its problems come before torch loads."""
    from pathlib import Path

    from .compat.mergekit import is_mergekit_config, translate
    from .yamlio import read_yaml_file

    data = read_yaml_file(path)
    if is_mergekit_config(data):
        translate(data, Path(path).parent)
    return data


def _replay_lora(config, out_dir, device, dtype, overwrite, quiet) -> None:
    from .lora.replay import replay_lora_config

    result = replay_lora_config(config, out_dir, device=device, dtype=dtype, overwrite=overwrite, progress=not quiet)
    click.echo(f"replayed a LoRA merge ({result.output}) of {result.adapted} weights with '{result.method}' "
               f"in {result.seconds:.1f}s -> {result.out_dir}" + (" (replaced the existing folder)" if result.replaced else ""))
    echo_task_folders(result)


@main.command("methods")
@click.option("--name", default=None, help="Show one method only.")
def methods_cmd(name):
    """List merging methods with their parameters and defaults."""
    from .methods.specs import SPECS, get_spec  # torch-free: names and parameters only

    for method_name in [name] if name else sorted(SPECS):
        method = get_spec(method_name)
        click.echo(f"{method.name}: {method.summary}")
        if method.reference:
            click.echo(f"    ref: {method.reference}")
        for p in method.params:
            choices = f" {{{'|'.join(map(str, p.choices))}}}" if p.choices else ""
            click.echo(f"    {p.name} = {p.default!r}{choices}  -- {p.help}")


def _register_extra_commands() -> None:
    for entry in EXTRA_COMMANDS:
        if len(entry) == 4:
            module_name, attr, name, short_help = entry
            FriendlyGroup.lazy[name] = (module_name, attr, short_help)
        else:
            module_name, attr = entry
            main.add_command(getattr(importlib.import_module(module_name), attr))


_register_extra_commands()
