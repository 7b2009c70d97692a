"""The contract between the merge engine and a merging method.

A method sees one tensor at a time: the base tensor and the task vectors
``tau_t = theta_t - theta_0`` of that tensor (float32, on the compute device),
plus its resolved parameters. It returns the merged task vector; the engine adds
it to the base and casts back to the output dtype. Methods that need statistics
over the whole model (global TIES) implement :meth:`MergeMethod.prepare`, which
streams over the model before the merge pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from .specs import MethodSpec, Param  # noqa: F401  (Param re-exported: its torch-free home is specs)


@dataclass
class TensorJob:
    """Everything a method needs to merge one tensor."""

    name: str
    base: torch.Tensor  # float32, on the compute device
    deltas: list[torch.Tensor]  # tau_t, float32, same shape as base
    weights: list[float]  # per-model weights from the config (default 1.0)
    params: dict[str, Any]  # resolved for this tensor
    seed: int = 0
    state: Any = None  # whatever prepare() returned

    @property
    def num_tasks(self) -> int:
        return len(self.deltas)

    def weighted_deltas(self) -> list[torch.Tensor]:
        """``w_t * tau_t``: the per-model weight scales the task vector before merging."""
        return [d if w == 1.0 else d * w for d, w in zip(self.deltas, self.weights)]


def weighted_sum(taus: Iterable[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``sum_t w_t tau_t`` in one pass per task (a multiply-add into one accumulator) and one tensor of
    memory besides the inputs; ``taus`` may be a generator, so sparsified vectors are made one at a time."""
    mixed = None
    for tau, weight in zip(taus, weights):
        if mixed is None:
            mixed = tau * weight
        else:
            mixed.add_(tau, alpha=weight)
    return mixed


def per_model_values(value: Any, num_tasks: int) -> list:
    """A parameter a method takes per model (its ``per_model`` names) as one value per model:
    the config gives a list when some model sets its own value, a single value otherwise."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * num_tasks


TaskVectorStream = Callable[[], Iterator[tuple[str, list[torch.Tensor], list[float], dict[str, Any]]]]


@dataclass
class MergeMethod(MethodSpec):
    """Base class of merging methods: a :class:`~mdamerge.methods.specs.MethodSpec` (name,
    parameters) plus ``merge_tensor``; subclasses are built with :meth:`from_spec`."""

    @classmethod
    def from_spec(cls, spec: MethodSpec) -> "MergeMethod":
        """The implementation of ``spec``, sharing its (immutable) parameter declarations."""
        return cls(**{f.name: getattr(spec, f.name) for f in fields(MethodSpec)})

    def prepare(self, stream: TaskVectorStream, params_for: Callable[[str], dict[str, Any]]) -> Any:
        """Optional pass over all task vectors before merging; returns state given to each job."""
        return None

    @property
    def needs_prepass(self) -> bool:
        return type(self).prepare is not MergeMethod.prepare

    def linear_coefficients(self, params: dict[str, Any], weights: Sequence[float]) -> list[float] | None:
        """``c_1..c_T`` when the merged task vector is ``sum_t c_t tau_t`` (average, task arithmetic, mergekit's
        linear): the engine then merges the tensor block by block in the CPU's cache, reading each input once,
        and checks the merged tensor alone for NaN/Inf (a NaN in any input reaches it, even under c_t = 0).
        None (the default) for every other method."""
        return None

    def merge_tensor(self, job: TensorJob) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
