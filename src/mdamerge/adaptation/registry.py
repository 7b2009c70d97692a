"""The data-based methods as the offline benchmark calls them:
``ADAPTIVE_METHODS[name](zoo, tasks, device="cpu", seed=0, **kw) -> AdaptiveResult``.

``zoo`` is a :class:`mdamerge.zoo.build.Zoo` (pretrained TinyViT, one fine-tuned copy
and one frozen linear head per task); the unlabeled inputs are each task's *test*
images, as AdaMerging uses them (labels are never read).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence


from ..errors import MergeError, closest_hint
from .coefficients import AdaptiveResult, adamerging
from .mda_feature import mda_feature_alignment
from .problem import AdaptationProblem


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """A suite name (``tasks8``), a comma-separated string or a list of task names -> validated task list."""
    from ..zoo.tasks import resolve_tasks as zoo_resolve

    return zoo_resolve(tasks if isinstance(tasks, str) else list(tasks))


def problem_from_zoo(zoo, tasks: str | Sequence[str], split: str = "test", max_unlabeled: int | None = None) -> AdaptationProblem:
    """Backbone, weights, heads and unlabeled ``split`` inputs of ``tasks`` from an offline zoo.

    Raises a one-line :class:`MergeError` naming the first task the zoo has not built.
    """
    task_list = resolve_tasks(tasks)
    missing = [t for t in task_list if not zoo.is_built(t)] if hasattr(zoo, "is_built") else []
    if missing:
        raise MergeError(f"task '{missing[0]}' is not built in the zoo at {zoo.root}; run: mdamerge zoo build "
                         f"--tasks {','.join(missing)} --cache {zoo.root.parent}")
    module = zoo.load_backbone()
    base = {k: v.detach().clone() for k, v in module.state_dict().items()}
    finetuned = {t: zoo.finetuned_state_dict(t) for t in task_list}
    heads = {t: zoo.head(t) for t in task_list}
    unlabeled = {}
    for t in task_list:
        inputs = zoo.task_data(t).split(split)[0]
        unlabeled[t] = inputs[:max_unlabeled] if max_unlabeled else inputs
    return AdaptationProblem(module, base, finetuned, heads, unlabeled)


def _zoo_method(algorithm: Callable[..., AdaptiveResult], name: str, **fixed: Any):
    accepted = set(inspect.signature(algorithm).parameters) - {"problem", "device", "seed", *fixed}
    solve = on_problem(algorithm, name, accepted, fixed)

    def run(zoo, tasks, device: str = "cpu", seed: int = 0, max_unlabeled: int | None = None, **kw: Any) -> AdaptiveResult:
        unknown = [k for k in kw if k not in accepted]
        if unknown:  # before the (slow) problem is built
            raise MergeError(f"method '{name}' has no option '{unknown[0]}'" + closest_hint(unknown[0], accepted))
        return solve(problem_from_zoo(zoo, tasks, max_unlabeled=max_unlabeled), device=device, seed=seed, **kw)

    run.__name__ = name
    run.__doc__ = f"{algorithm.__name__}({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
    run.options = sorted(accepted)
    run.on_problem = solve  # the same algorithm on any AdaptationProblem (e.g. the CLIP recipes')
    return run


def on_problem(algorithm: Callable[..., AdaptiveResult], name: str, accepted: set[str], fixed: dict[str, Any]):
    """``run(problem, device, seed, **kw)``: the registered method on a problem not built from a zoo (e.g. CLIP)."""

    def run(problem: AdaptationProblem, device: str = "cpu", seed: int = 0, **kw: Any) -> AdaptiveResult:
        unknown = [k for k in kw if k not in accepted]
        if unknown:
            raise MergeError(f"method '{name}' has no option '{unknown[0]}'" + closest_hint(unknown[0], accepted))
        result = algorithm(problem, device=device, seed=seed, **fixed, **kw)
        result.info["method"] = name
        return result

    return run


ADAPTIVE_METHODS: dict[str, Callable[..., AdaptiveResult]] = {
    "adamerging_task": _zoo_method(adamerging, "adamerging_task", granularity="task"),
    "adamerging_layer": _zoo_method(adamerging, "adamerging_layer", granularity="layer"),
    "mda_feature": _zoo_method(mda_feature_alignment, "mda_feature", init="mda"),
    "mda_ta": _zoo_method(mda_feature_alignment, "mda_ta", init="ta"),
    "mda_am": _zoo_method(mda_feature_alignment, "mda_am", init="am"),
    "mda_am_norot": _zoo_method(mda_feature_alignment, "mda_am_norot", init="am", use_rotation=False),
}
# the literature's "AdaMerging" is the layer-wise variant
ADAPTIVE_METHODS["adamerging"] = _zoo_method(adamerging, "adamerging", granularity="layer")
