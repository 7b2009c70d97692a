"""The data-based methods as the offline benchmark calls them:
``ADAPTIVE_METHODS[name](zoo, tasks, device="cpu", seed=0, **kw) -> AdaptiveResult``.

``zoo`` is a :class:`mdamerge.zoo.build.Zoo` (pretrained TinyViT, one fine-tuned copy
and one frozen linear head per task); the unlabeled inputs are each task's *test*
images, as AdaMerging uses them (labels are never read).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch

from ..errors import MergeError, closest_hint
from ..io.checkpoint import Checkpoint
from .adamerging import AdaptiveResult, adamerging
from .mda_feature import mda_feature_alignment
from .problem import AdaptationProblem


def read_state_dict(folder) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (safe loading through :class:`Checkpoint`)."""
    with Checkpoint(folder) as ckpt:
        return dict(ckpt.items())


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """A suite name (``tasks8``) or a comma-separated string/list of task names -> task list."""
    from ..zoo.tasks import SUITES

    if isinstance(tasks, str):
        if tasks in SUITES:
            return list(SUITES[tasks])
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    return list(tasks)


def problem_from_zoo(zoo, tasks: str | Sequence[str], split: str = "test", max_unlabeled: int | None = None) -> AdaptationProblem:
    """Backbone, weights, heads and unlabeled ``split`` inputs of ``tasks`` from an offline zoo."""
    from ..zoo.model import TinyViT
    from ..zoo.tasks import load_task

    task_list = resolve_tasks(tasks)
    module = TinyViT.from_pretrained(zoo.base_dir)
    base = {k: v.detach().clone() for k, v in module.state_dict().items()}
    finetuned = {t: read_state_dict(zoo.finetuned_dir(t)) for t in task_list}
    heads = {t: zoo.head(t) for t in task_list}
    unlabeled = {}
    for t in task_list:
        inputs = getattr(load_task(t), split)[0]
        unlabeled[t] = inputs[:max_unlabeled] if max_unlabeled else inputs
    return AdaptationProblem(module, base, finetuned, heads, unlabeled)


def _zoo_method(algorithm: Callable[..., AdaptiveResult], name: str, **fixed: Any):
    accepted = set(inspect.signature(algorithm).parameters) - {"problem", "device", "seed", *fixed}

    def run(zoo, tasks, device: str = "cpu", seed: int = 0, max_unlabeled: int | None = None, **kw: Any) -> AdaptiveResult:
        unknown = [k for k in kw if k not in accepted]
        if unknown:
            raise MergeError(f"method '{name}' has no option '{unknown[0]}'" + closest_hint(unknown[0], accepted))
        problem = problem_from_zoo(zoo, tasks, max_unlabeled=max_unlabeled)
        result = algorithm(problem, device=device, seed=seed, **fixed, **kw)
        result.info["method"] = name
        return result

    run.__name__ = name
    run.__doc__ = f"{algorithm.__name__}({', '.join(f'{k}={v!r}' for k, v in fixed.items())}) on a zoo."
    run.options = sorted(accepted)
    return run


ADAPTIVE_METHODS: dict[str, Callable[..., AdaptiveResult]] = {
    "adamerging_task": _zoo_method(adamerging, "adamerging_task", granularity="task"),
    "adamerging_layer": _zoo_method(adamerging, "adamerging_layer", granularity="layer"),
    "mda_feature": _zoo_method(mda_feature_alignment, "mda_feature", init="mda"),
    "mda_ta": _zoo_method(mda_feature_alignment, "mda_ta", init="ta"),
    "mda_am": _zoo_method(mda_feature_alignment, "mda_am", init="am"),
    "mda_am_norot": _zoo_method(mda_feature_alignment, "mda_am_norot", init="am", use_rotation=False),
}
ADAPTIVE_METHODS["adamerging"] = ADAPTIVE_METHODS["adamerging_layer"]
