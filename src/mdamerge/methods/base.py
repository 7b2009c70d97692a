"""The contract between the merge engine and a merging method.

A method sees one tensor at a time: the base tensor and the task vectors
``tau_t = theta_t - theta_0`` of that tensor (float32, on the compute device),
plus its resolved parameters. It returns the merged task vector; the engine adds
it to the base and casts back to the output dtype. Methods that need statistics
over the whole model (global TIES) implement :meth:`MergeMethod.prepare`, which
streams over the model before the merge pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ConfigError, closest_hint


@dataclass(frozen=True)
class Param:
    """A method parameter: name, default, type and a one-line description."""

    name: str
    default: Any
    kind: type
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False  # None is allowed (means "derive from the data")

    def coerce(self, value: Any, where: str) -> Any:
        """Validate ``value`` for this parameter, converting ints to floats where needed."""
        if value is None and (self.optional or self.default is None):
            return None
        try:
            if self.kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                coerced = value
            elif self.kind is float:
                if isinstance(value, bool):
                    raise TypeError
                coerced = float(value)
            elif self.kind is int:
                if isinstance(value, bool) or int(value) != value:
                    raise TypeError
                coerced = int(value)
            else:
                coerced = self.kind(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"parameter '{self.name}'{where} must be {self.kind.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and coerced not in self.choices:
            raise ConfigError(
                f"parameter '{self.name}'{where} must be one of {list(self.choices)}, got {value!r}"
                + closest_hint(str(value), map(str, self.choices))
            )
        if self.minimum is not None and coerced < self.minimum:
            raise ConfigError(f"parameter '{self.name}'{where} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and coerced > self.maximum:
            raise ConfigError(f"parameter '{self.name}'{where} must be <= {self.maximum}, got {value!r}")
        return coerced


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


def per_model_values(value: Any, num_tasks: int) -> list:
    """A parameter a method takes per model (its ``per_model`` names) as one value per model:
    the config gives a list when some model sets its own value, a single value otherwise."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * num_tasks


TaskVectorStream = Callable[[], Iterator[tuple[str, list[torch.Tensor], list[float], dict[str, Any]]]]


@dataclass
class MergeMethod:
    """Base class of merging methods; subclasses set ``name``, ``params`` and ``merge_tensor``."""

    name: str = ""
    summary: str = ""
    params: Sequence[Param] = field(default_factory=tuple)
    reference: str = ""

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(
            f"method '{self.name}' has no parameter '{name}'" + closest_hint(name, self.param_names())
        )

    def prepare(self, stream: TaskVectorStream, params_for: Callable[[str], dict[str, Any]]) -> Any:
        """Optional pass over all task vectors before merging; returns state given to each job."""
        return None

    @property
    def needs_prepass(self) -> bool:
        return type(self).prepare is not MergeMethod.prepare

    def merge_tensor(self, job: TensorJob) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
