"""``mdamerge adapt CONFIG --out DIR``: data-based merging (AdaMerging, MDA feature alignment).

Two kinds of CONFIG:

* **your models** -- the ``merge`` format (``base_model``, ``models``, ``parameters``) with
  a ``data:`` entry (unlabeled inputs) per model; Hugging Face sequence/image classifiers
  or CLIP vision towers. See :mod:`mdamerge.adaptation.user_models` and docs/real_models.md.
* **the offline zoo** -- ``method``, ``suite`` or ``tasks``, ``parameters`` (the vision or the
  text zoo under ``--cache``; ``zoo_root`` names a zoo folder itself):

```yaml
method: mda_am            # adamerging_task, adamerging_layer (= adamerging), mda_feature, mda_ta, mda_am, mda_am_norot
suite: tasks8             # or  tasks: [mnist_like, fashion, ...]; text suites (text8) use the text zoo
zoo_root: null            # optional zoo folder
backbone: null            # the vision zoo's backbone: small (default) or base (CACHE/zoo-base[-additive])
recipe: null              # the zoo's training recipe: additive (default) or stored (the zoos of before)
device: cpu               # or cuda
seed: 0
max_unlabeled: null       # cap on unlabeled test inputs per task
parameters:               # the method's options (see `mdamerge adapt --list`)
  steps: 1000
```

A zoo run's folder holds the merged backbone (``model.safetensors`` + the base's
``config.json``), the per-task rotations (``feature_transforms/rotations.safetensors``) and
``adaptation.json`` (settings, coefficients, per-step losses, test accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, closest_hint
from ..interrupts import interruptible

from .user_models import checked_method, is_user_config

CONFIG_KEYS = ("method", "suite", "tasks", "zoo_root", "backbone", "recipe", "device", "seed", "max_unlabeled", "parameters")


def load_adapt_config(path: str | Path) -> dict[str, Any]:
    """Read and validate an adapt config (``yaml.safe_load``)."""
    from .registry import ADAPTIVE_METHODS

    from ..config import read_yaml_file

    path = Path(path)
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an adapt config must be a mapping")
    if "merge_method" in data:
        raise ConfigError(f"{path} is a mergekit config: `mdamerge adapt` takes the merge format (method, base_model, "
                          "models with a 'data' entry each); see docs/real_models.md")
    if is_user_config(data):
        return data
    for key in data:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown config key '{key}'" + closest_hint(str(key), CONFIG_KEYS))
    checked_method(data, ADAPTIVE_METHODS)
    if bool(data.get("suite")) == bool(data.get("tasks")):
        raise ConfigError("give exactly one of 'suite' or 'tasks' (a zoo run), or 'base_model' and 'models' (your models)")
    return data


@click.command("adapt")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Output folder (created atomically).")
@click.option("--device", default=None, help="Override the config's device (cpu, cuda, cuda:1).")
@click.option("--steps", type=int, default=None, help="Override the number of optimisation steps.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation (zoo: test split; your models: their 'eval' splits).")
@click.option("--list", "list_methods", is_flag=True, help="List the adaptive methods and their options.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: torch's).")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Zoo runs: the cache folder holding the zoos (default: the standard cache).")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Your models: refuse a search needing more memory than this (e.g. 20GB; default: available RAM).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@interruptible("out_dir")
def adapt(config, out_dir, device, steps, overwrite, no_eval, list_methods, threads, cache, max_memory, quiet):
    """Data-based merge (AdaMerging, MDA feature alignment) configured by CONFIG (YAML): your own
    Hugging Face classifiers or CLIP towers with unlabeled data, or an offline zoo suite."""
    from ..cli import set_threads
    from .registry import ADAPTIVE_METHODS

    set_threads(threads)

    if list_methods:
        for name, fn in ADAPTIVE_METHODS.items():
            click.echo(f"{name}: {fn.__doc__}\n    options: {', '.join(fn.options)}")
        return
    if not config or not out_dir:
        raise ConfigError("adapt needs CONFIG and --out (or --list)")
    cfg = load_adapt_config(config)
    if is_user_config(cfg):
        return _adapt_user_models(cfg, config, out_dir, device, steps, overwrite, no_eval, max_memory, quiet)
    if max_memory is not None:
        raise ConfigError("--max-memory applies to your models (a config with base_model/models), not to zoo runs")
    _adapt_zoo(cfg, config, out_dir, device, steps, overwrite, no_eval, cache, quiet)


def _adapt_user_models(data, config, out_dir, device, steps, overwrite, no_eval, max_memory, quiet) -> None:
    from ..engine.core import resolve_device
    from ..io.writer import check_output_folder, parse_size
    from .registry import ADAPTIVE_METHODS
    from .user_models import parse_user_config
    from .user_run import run_user_adapt

    cfg = parse_user_config(data, Path(config).parent, ADAPTIVE_METHODS)
    if steps is not None:
        cfg.parameters["steps"] = steps
    budget = parse_size(max_memory) if max_memory is not None else None
    device = str(resolve_device(device or cfg.device))
    replacing = check_output_folder(out_dir, [config, *cfg.inputs], overwrite)  # before minutes of training
    info = run_user_adapt(cfg, out_dir, device=device, overwrite=overwrite, evaluate=not no_eval,
                          max_memory=budget, progress=not quiet, echo=click.echo)
    click.echo(f"{cfg.method}: {info.get('steps')} steps in {info['seconds']:.1f}s -> {out_dir} "
               f"(backbone + {len(cfg.models)} task folders in tasks/)" + (" (replaced the existing folder)" if replacing else ""))
    if info.get("accuracy_table"):
        click.echo(info["accuracy_table"])


def _adapt_zoo(cfg, config, out_dir, device, steps, overwrite, no_eval, cache, quiet) -> None:
    from ..engine.core import resolve_device
    from ..io.writer import check_output_folder
    from ..zoo.build import vision_zoo, zoo_for_tasks
    from .output import save_adaptive_result
    from .registry import ADAPTIVE_METHODS

    params = dict(cfg.get("parameters") or {})
    if steps is not None:
        params["steps"] = steps
    if quiet:
        params["progress"] = False
    tasks = cfg.get("suite") or cfg.get("tasks")
    if cfg.get("zoo_root") and cache:
        raise ConfigError("give the zoo folder as 'zoo_root' in the config or the cache folder as --cache, not both")
    if cfg.get("zoo_root") and not Path(cfg["zoo_root"]).is_absolute():
        cfg["zoo_root"] = str(Path(config).parent / cfg["zoo_root"])
    where = dict(root=cfg.get("zoo_root"), cache=cache, backbone=cfg.get("backbone"), recipe=cfg.get("recipe"))
    zoo = zoo_for_tasks(tasks, **where) if tasks else vision_zoo(**where)
    dev = str(resolve_device(device or cfg.get("device", "cpu")))
    replacing = check_output_folder(out_dir, [config, zoo.root], overwrite)  # before minutes of training
    result = ADAPTIVE_METHODS[cfg["method"]](
        zoo, tasks, device=dev, seed=int(cfg.get("seed", 0)), max_unlabeled=cfg.get("max_unlabeled"), **params
    )
    extra: dict[str, Any] = {"config": cfg}
    if not no_eval:
        from ..evaluation.evaluate import evaluate_backbone
        from .registry import resolve_tasks

        extra["test_accuracy"] = evaluate_backbone(
            result.state_dict, zoo, resolve_tasks(tasks), split="test", device=dev, feature_transforms=result.feature_transforms
        )
    save_adaptive_result(result, out_dir, base_dir=zoo.base_dir, overwrite=overwrite, extra_info=extra)
    click.echo(f"{cfg['method']}: {result.info.get('steps')} steps in {result.info.get('seconds', 0):.1f}s -> {out_dir}"
               + (" (replaced the existing folder)" if replacing else ""))
    if "test_accuracy" in extra:
        click.echo(f"test accuracy: {extra['test_accuracy']}")
