"""The literature's CLIP merging benchmark as recipes: ``clip-vit-b32-tasks8`` and friends.

A recipe names the pretrained CLIP (``openai/clip-vit-base-patch32``), the per-task
fine-tuned image encoders (``tanganke/clip-vit-base-patch32_<task>``) and the tasks
(8, 14 or 20). :func:`run_recipe` finds everything offline (a local folder or the
Hugging Face cache), merges only the vision towers with each method, and reports the
zero-shot accuracy of every merged model on every task's test split, next to the
pretrained model and each fine-tuned model on its own task.

    mdamerge bench --recipe clip-vit-b32-tasks8 --methods tsv,mda
    python -m mdamerge.hf.recipes clip-vit-b32-tasks8 --methods tsv,mda --check
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError, MergeError, closest_hint
from .datasets import DATASETS, ImageDataset, find_dataset

TASKS8 = ("sun397", "stanford-cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd")
TASKS14 = TASKS8 + ("oxford_flowers102", "pcam", "fer2013", "oxford-iiit-pet", "stl10", "cifar100")
TASKS20 = TASKS14 + ("cifar10", "food101", "fashion_mnist", "emnist_letters", "kmnist", "rendered-sst2")
SUITES = {8: TASKS8, 14: TASKS14, 20: TASKS20}
ARCHITECTURES = {"b32": "clip-vit-base-patch32", "b16": "clip-vit-base-patch16", "l14": "clip-vit-large-patch14"}
DATA_FREE = ("average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts", "mda")


@dataclass(frozen=True)
class Recipe:
    """A pretrained CLIP, its fine-tuned image encoders (``finetuned.format(task=...)``) and the tasks."""

    name: str
    base: str
    finetuned: str
    tasks: tuple[str, ...]

    def finetuned_name(self, task: str) -> str:
        return self.finetuned.format(task=task)


RECIPES: dict[str, Recipe] = {
    f"clip-vit-{arch}-tasks{n}": Recipe(f"clip-vit-{arch}-tasks{n}", f"openai/{model}", f"tanganke/{model}_{{task}}", tasks)
    for arch, model in ARCHITECTURES.items() for n, tasks in SUITES.items()
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe '{name}'" + closest_hint(name, RECIPES) + f"; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    """Method names from a list or a comma-separated string.

    ``data-free`` expands to the 8 data-free methods, ``data-based`` to the data-based ones
    (AdaMerging task-/layer-wise, MDA feature alignment and its variants), ``all`` to both.
    """
    from ..evaluation.bench import _distinct_adaptive, adaptive_methods
    from ..methods import available_methods

    adaptive = adaptive_methods()
    based = _distinct_adaptive(adaptive)
    groups = {"data-free": list(DATA_FREE), "data-based": based, "all": [*DATA_FREE, *based]}
    items = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    names: list[str] = []
    for item in items:
        for name in groups.get(item, (item,)):
            if name not in available_methods() and name not in adaptive:
                known = [*available_methods(), *adaptive, *groups]
                raise ConfigError(f"unknown method '{name}'" + closest_hint(name, known) + f"; available: {', '.join(known)}")
            if name not in names:
                names.append(name)
    return names


def is_data_based(method: str) -> bool:
    from ..evaluation.bench import adaptive_methods

    return method in adaptive_methods()


# -- finding the inputs -------------------------------------------------------------
@dataclass
class Inputs:
    """Every file a recipe needs, as found on this machine."""

    base: Path | None
    finetuned: dict[str, Path | None]
    datasets: dict[str, ImageDataset | None]
    missing: list[str] = field(default_factory=list)  # one human-readable line per missing item


def locate_inputs(recipe: Recipe, tasks: Sequence[str], model_root=None, data_root=None, cache_dir=None,
                  need_datasets: bool = True) -> Inputs:
    """Find the base model, the fine-tuned encoders and the test splits; record what is missing and where it looked."""
    from .clip import find_model

    missing = []
    base = find_model(recipe.base, model_root, cache_dir)
    if base.path is None:
        missing.append(f"model '{recipe.base}' (looked in: {', '.join(base.looked)})")
    finetuned = {}
    for task in tasks:
        found = find_model(recipe.finetuned_name(task), model_root, cache_dir)
        finetuned[task] = found.path
        if found.path is None:
            missing.append(f"model '{recipe.finetuned_name(task)}' (looked in: {', '.join(found.looked)})")
    datasets: dict[str, ImageDataset | None] = {}
    if need_datasets:
        for task in tasks:
            lookup = find_dataset(task, data_root, cache_dir)
            datasets[task] = lookup.dataset
            if lookup.dataset is None:
                spec = DATASETS[task]
                missing.append(f"dataset '{task}' ({spec.repo}, split {spec.split}; looked in: {', '.join(lookup.looked)})")
    return Inputs(base.path, finetuned, datasets, missing)


def download_commands(recipe: Recipe, tasks: Sequence[str]) -> list[str]:
    """The ``hf download`` commands (huggingface_hub's CLI) that fill the cache for ``recipe``
    on a machine with internet access: the models, and only the test split of each dataset."""
    lines = [f"hf download {recipe.base} --exclude '*.h5' --exclude '*.msgpack'"]
    lines += [f"hf download {recipe.finetuned_name(t)}" for t in tasks]
    lines += [f"hf download {DATASETS[t].repo} --repo-type dataset --include '*{DATASETS[t].split}*'" for t in tasks]
    return lines


# -- results -----------------------------------------------------------------------
@dataclass
class RecipeResult:
    """Accuracies (fractions in [0, 1]) of each row on each task.

    Rows: ``pretrained`` (zero-shot), ``finetuned`` (each fine-tuned encoder on its own
    task), then one row per method. ``normalized`` divides a row by ``finetuned``.
    """

    recipe: str
    tasks: list[str]
    rows: dict[str, dict[str, float]]
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)

    def average(self, row: str) -> float:
        return sum(self.rows[row][t] for t in self.tasks) / len(self.tasks)

    def normalized(self, row: str) -> float | None:
        """Mean over tasks of accuracy / fine-tuned accuracy (None without the fine-tuned row)."""
        ft = self.rows.get("finetuned")
        if not ft or any(ft[t] == 0 for t in self.tasks):
            return None
        return sum(self.rows[row][t] / ft[t] for t in self.tasks) / len(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "tasks": self.tasks, "rows": self.rows, "parameters": self.parameters,
                "seconds": self.seconds, "samples": self.samples,
                "average": {r: self.average(r) for r in self.rows},
                "normalized": {r: self.normalized(r) for r in self.rows}}

    @property
    def table(self) -> str:
        """The Markdown table (what ``mdamerge bench --recipe`` prints)."""
        return self.markdown()

    def __str__(self) -> str:
        return self.markdown()

    def markdown(self) -> str:
        head = "| model | " + " | ".join(self.tasks) + " | avg | norm. |"
        lines = [head, "|" + "---|" * (len(self.tasks) + 3)]
        for row, accs in self.rows.items():
            norm = self.normalized(row)
            cells = [f"{100 * accs[t]:.1f}" for t in self.tasks]
            lines.append(f"| {row} | " + " | ".join(cells) + f" | {100 * self.average(row):.1f} | "
                         + (f"{100 * norm:.1f}" if norm is not None else "-") + " |")
        return "\n".join(lines)


def _subsample(dataset: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    if limit is None or len(dataset) <= limit:
        return dataset
    gen = torch.Generator().manual_seed(seed)
    return dataset.subset(sorted(torch.randperm(len(dataset), generator=gen)[:limit].tolist()))


def run_recipe(
    name: str,
    methods: str | Sequence[str],
    out_dir: str | Path | None = None,
    device: str = "cpu",
    model_root: str | Path | None = None,
    data_root: str | Path | None = None,
    *,
    tasks: Sequence[str] | None = None,
    method_params: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 64,
    image_threads: int | None = None,
    max_per_task: int | None = None,
    include_baselines: bool = True,
    workers: int = 1,
    executor=None,
    cache_dir: str | None = None,
    seed: int = 0,
    progress: bool = True,
    unlabeled_per_task: int | None = 512,
) -> RecipeResult:
    """Run a CLIP recipe: merge the fine-tuned vision towers with each method and evaluate.

    ``methods``: names or a comma-separated string (``data-free`` = the 8 data-free
    methods); ``method_params``: ``{method: {param: value}}`` (defaults: FusionBench's).
    ``model_root``/``data_root`` default to ``$MDAMERGE_MODEL_ROOT``/``$MDAMERGE_DATA_ROOT``
    (then the Hugging Face cache alone).
    ``tasks`` restricts the recipe to some of its tasks; ``max_per_task`` evaluates a
    seeded random subset of each test split; ``image_threads`` decode and preprocess images
    in parallel (default: up to 8). Everything is read offline; if anything is
    missing, a :class:`~mdamerge.errors.MergeError` lists each missing model and dataset
    and where it was looked for. With ``out_dir``, each merged vision tower is saved as
    ``out_dir/<method>/`` (a ``CLIPVisionModel`` folder) and the table as
    ``out_dir/results.json`` and ``results.md``.

    Data-based methods (``adamerging``, ``mda_feature``, ...; options through ``method_params``,
    defaults FusionBench's 1000 steps) learn on the first ``unlabeled_per_task`` images of each
    evaluated test split, labels unread, through the zero-shot heads with CLIP's logit scale;
    data-based MDA's per-task feature rotations are applied before each task's head.
    """
    from .clip import ZeroShotEvaluator, merge_vision_towers, vision_state

    recipe = get_recipe(name)
    model_root = model_root if model_root is not None else os.environ.get("MDAMERGE_MODEL_ROOT")
    data_root = data_root if data_root is not None else os.environ.get("MDAMERGE_DATA_ROOT")
    task_list = list(tasks) if tasks is not None else list(recipe.tasks)
    unknown = [t for t in task_list if t not in recipe.tasks]
    if unknown:
        raise ConfigError(f"task '{unknown[0]}' is not in recipe '{name}'" + closest_hint(unknown[0], recipe.tasks))
    method_names = parse_methods(methods)
    method_params = dict(method_params or {})
    for method in method_params:
        if method not in method_names:
            raise ConfigError(f"parameters given for method '{method}', which is not being run")
    inputs = locate_inputs(recipe, task_list, model_root, data_root, cache_dir)
    if inputs.missing:
        raise MergeError(f"recipe '{name}' cannot run, {len(inputs.missing)} input(s) missing: " + "; ".join(inputs.missing)
                         + " -- on a machine with internet access fetch them with `hf download` "
                         f"(`python -m mdamerge.hf.recipes {name} --check` lists the commands; see docs/real_models.md)")
    splits = {t: _subsample(inputs.datasets[t], max_per_task, seed) for t in task_list}
    threads = image_threads if image_threads is not None else min(8, os.cpu_count() or 1)
    evaluator = ZeroShotEvaluator(inputs.base, device=device, batch_size=batch_size, threads=threads)
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}

    def evaluate_all(label: str) -> dict[str, float]:
        return {t: evaluator.accuracy(splits[t]) for t in _progress(task_list, progress, f"eval {label}")}

    if include_baselines:
        start = time.perf_counter()
        evaluator.load_vision(evaluator.pretrained_vision)
        rows["pretrained"] = evaluate_all("pretrained")
        rows["finetuned"] = {}
        for task in _progress(task_list, progress, "eval fine-tuned"):
            evaluator.load_vision(vision_state(inputs.finetuned[task]))
            rows["finetuned"][task] = evaluator.accuracy(splits[task])
        seconds["baselines"] = time.perf_counter() - start
    finetuned_paths = [inputs.finetuned[t] for t in task_list]
    parameters = {}
    problem = None
    for method in method_names:
        start = time.perf_counter()
        transforms_to_save: dict[str, torch.Tensor] = {}
        if is_data_based(method):
            if problem is None:  # built once, shared by every data-based method
                from .clip import adaptation_problem

                problem = adaptation_problem(evaluator, {t: inputs.finetuned[t] for t in task_list}, splits,
                                             unlabeled_per_task)
            adapted = _run_data_based(method, problem, method_params.get(method), device, seed, progress)
            evaluator.load_vision(adapted.state_dict)
            transforms = adapted.feature_transforms or {}
            rows[method] = {t: evaluator.accuracy(splits[t], transforms.get(t))
                            for t in _progress(task_list, progress, f"eval {method}")}
            parameters[method] = dict(method_params.get(method) or {})
            from ..adaptation.output import transform_tensors

            transforms_to_save = transform_tensors(adapted)
        else:
            merged = merge_vision_towers(inputs.base, finetuned_paths, method, parameters=method_params.get(method),
                                         seed=seed, device=device, workers=workers, executor=executor, progress=progress)
            evaluator.load_vision(merged)
            rows[method] = evaluate_all(method)
            parameters[method] = _explicit_params(method, method_params.get(method))
        seconds[method] = time.perf_counter() - start
        if out_dir is not None:
            _save_vision_tower(evaluator, Path(out_dir) / method, transforms_to_save)
    result = RecipeResult(name, task_list, rows, parameters, seconds, {t: len(splits[t]) for t in task_list})
    if out_dir is not None:
        from ..io.writer import write_result_files

        write_result_files(out_dir, {"results.json": json.dumps(result.to_dict(), indent=2) + "\n",
                                     "results.md": result.markdown() + "\n"})
    return result


def _run_data_based(method: str, problem, params: dict | None, device: str, seed: int, progress: bool):
    from ..evaluation.bench import adaptive_methods

    options = {"progress": progress, **(params or {})}
    return adaptive_methods()[method].on_problem(problem, device=device, seed=seed, **options)


def _explicit_params(method: str, given: dict | None) -> dict[str, Any]:
    from ..config import ParameterResolver
    from ..methods import get_method

    return ParameterResolver(get_method(method), given or {}).explicit()


def _save_vision_tower(evaluator, folder: Path, transforms: dict[str, torch.Tensor] | None = None) -> None:
    """The loaded image encoder as a ``CLIPVisionModel`` folder (written atomically), with the
    per-task feature rotations of data-based MDA where ``mdamerge analyze`` / ``adapt`` look for them."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    from ..adaptation.output import TRANSFORMS_NAME
    from ..io.writer import OutputFolder

    vision = CLIPVisionModel(evaluator.model.config.vision_config)
    inner = getattr(vision, "vision_model", vision)  # transformers 5 dropped the wrapper module
    inner.load_state_dict(evaluator.model.vision_model.state_dict())
    with OutputFolder(folder, overwrite=True) as tmp:
        vision.save_pretrained(tmp)
        evaluator.processor.save_pretrained(tmp)
        if transforms:
            (tmp / TRANSFORMS_NAME).parent.mkdir()
            save_file(transforms, str(tmp / TRANSFORMS_NAME), metadata={"format": "pt", "convention": "f -> R f"})


def _progress(items, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, leave=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mdamerge.hf.recipes RECIPE --methods ... [--check]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mdamerge.hf.recipes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--methods", default="tsv,mda")
    parser.add_argument("--model-root", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-per-task", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--check", action="store_true", help="only report what is present and what is missing")
    args = parser.parse_args(argv)
    recipe = get_recipe(args.recipe)
    try:
        if args.check:
            inputs = locate_inputs(recipe, recipe.tasks, args.model_root, args.data_root)
            print(f"{args.recipe}: {len(inputs.missing)} input(s) missing")
            for line in inputs.missing:
                print(f"  - {line}")
            if inputs.missing:
                print("to fetch everything on a machine with internet access:")
                print("\n".join(f"  {c}" for c in download_commands(recipe, recipe.tasks)))
            return 1 if inputs.missing else 0
        result = run_recipe(args.recipe, args.methods, args.out, args.device, args.model_root, args.data_root,
                            max_per_task=args.max_per_task, batch_size=args.batch_size)
    except MergeError as exc:
        print(f"error: {exc}")
        return 2
    print(result.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
