"""``mdamerge adapt CONFIG --out DIR``: run a data-based merge from a YAML file.

```yaml
method: mda_am            # adamerging_task, adamerging_layer (= adamerging), mda_feature, mda_ta, mda_am, mda_am_norot
suite: tasks8             # or  tasks: [mnist_like, fashion, ...]
zoo_root: null            # optional zoo folder
backbone: null            # the vision zoo's backbone: small (default) or base (CACHE/zoo-base)
device: cpu               # or cuda
seed: 0
max_unlabeled: null       # cap on unlabeled test inputs per task
parameters:               # the method's options (see `mdamerge adapt --list`)
  steps: 1000
  alpha: 0.8
  beta: 0.2
```

The output folder holds the merged backbone (``model.safetensors`` + the base's
``config.json``), the per-task rotations (``feature_transforms/rotations.safetensors``) and
``adaptation.json`` (settings, coefficients, per-step losses, test accuracy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, closest_hint
from ..interrupts import interruptible

CONFIG_KEYS = ("method", "suite", "tasks", "zoo_root", "backbone", "device", "seed", "max_unlabeled", "parameters")


def load_adapt_config(path: str | Path) -> dict[str, Any]:
    """Read and validate an adapt config (``yaml.safe_load``)."""
    from .registry import ADAPTIVE_METHODS

    from ..config import read_yaml_file

    path = Path(path)
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an adapt config must be a mapping")
    if {"base_model", "models", "merge_method"} & set(data):
        raise ConfigError(
            f"{path} is a merge config (base_model/models): `mdamerge adapt` runs data-based merging on the offline "
            "TinyViT zoo (keys: method, suite or tasks, parameters; see `mdamerge adapt --list`); merge Hugging Face "
            "models with `mdamerge merge` (data-free methods, `mdamerge methods`)")
    for key in data:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown config key '{key}'" + closest_hint(str(key), CONFIG_KEYS))
    method = data.get("method")
    if method not in ADAPTIVE_METHODS:
        raise ConfigError(f"unknown adaptive method {method!r}" + closest_hint(str(method), ADAPTIVE_METHODS)
                          + f"; choose from {', '.join(ADAPTIVE_METHODS)}")
    if bool(data.get("suite")) == bool(data.get("tasks")):
        raise ConfigError("give exactly one of 'suite' or 'tasks'")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError("'parameters' must be a mapping")
    options = getattr(ADAPTIVE_METHODS[method], "options", [])
    for key in params:
        if key not in options:
            raise ConfigError(f"method '{method}' has no parameter '{key}'" + closest_hint(str(key), options))
    return data


@click.command("adapt")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Output folder (created atomically).")
@click.option("--device", default=None, help="Override the config's device (cpu, cuda, cuda:1).")
@click.option("--steps", type=int, default=None, help="Override the number of optimisation steps.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-eval", is_flag=True, help="Skip the test-set evaluation of the result.")
@click.option("--list", "list_methods", is_flag=True, help="List the adaptive methods and their options.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: torch's).")
@interruptible("out_dir")
def adapt(config, out_dir, device, steps, overwrite, no_eval, list_methods, threads):
    """Data-based merge (AdaMerging, MDA feature alignment) of an offline zoo, configured by CONFIG (YAML)."""
    from ..cli import set_threads
    from .registry import ADAPTIVE_METHODS

    set_threads(threads)

    if list_methods:
        for name, fn in ADAPTIVE_METHODS.items():
            click.echo(f"{name}: {fn.__doc__}\n    options: {', '.join(fn.options)}")
        return
    if not config or not out_dir:
        raise ConfigError("adapt needs CONFIG and --out (or --list)")
    from ..io.writer import check_output_folder
    from ..zoo.build import vision_zoo
    from .output import save_adaptive_result

    cfg = load_adapt_config(config)
    params = dict(cfg.get("parameters") or {})
    if steps is not None:
        params["steps"] = steps
    zoo = vision_zoo(root=cfg.get("zoo_root"), backbone=cfg.get("backbone"))
    replacing = check_output_folder(out_dir, [config, zoo.root], overwrite)  # before minutes of training
    tasks = cfg.get("suite") or cfg.get("tasks")
    dev = device or cfg.get("device", "cpu")
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
