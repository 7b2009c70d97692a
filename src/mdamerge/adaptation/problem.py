"""What a data-based merge needs, independent of where it comes from: one backbone
architecture, the pretrained and fine-tuned weights, a frozen head per task and
unlabeled inputs per task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, MergeError
from .functional import mergeable_names


@dataclass
class AdaptationProblem:
    """A data-based merging problem.

    ``module`` is any ``nn.Module`` mapping a batch of inputs to features ``(B, d)``;
    its own weights are never used (``torch.func.functional_call`` supplies them).
    ``finetuned``, ``heads`` and ``unlabeled`` are keyed by task name; the task order
    is that of ``finetuned``. A head maps features of task ``t`` to its class logits.
    """

    module: nn.Module
    base: Mapping[str, torch.Tensor]
    finetuned: Mapping[str, Mapping[str, torch.Tensor]]
    heads: Mapping[str, nn.Module]
    unlabeled: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        if len(self.finetuned) < 2:
            raise MergeError(f"merging needs at least 2 fine-tuned models, got {len(self.finetuned)}")
        for task in self.tasks:
            if task not in self.heads:
                raise MergeError(f"no classification head for task '{task}'")
            if task not in self.unlabeled:
                raise MergeError(f"no unlabeled inputs for task '{task}'")
            x = self.unlabeled[task]
            if not torch.is_tensor(x) or x.ndim < 2 or len(x) == 0:
                raise MergeError(f"unlabeled inputs of task '{task}' must be a non-empty (N, ...) tensor")
            if x.is_floating_point() and not torch.isfinite(x).all():
                raise MergeError(f"unlabeled inputs of task '{task}' contain NaN or Inf")
        names = mergeable_names(self.module)
        for label, state in [("base", self.base), *((f"fine-tuned model '{t}'", sd) for t, sd in self.finetuned.items())]:
            for name in names:
                if name not in state:
                    raise CheckpointError(f"{label} lacks parameter '{name}'")
                expected = tuple(dict(self.module.named_parameters())[name].shape)
                if tuple(state[name].shape) != expected:
                    raise CheckpointError(f"{label}: '{name}' has shape {tuple(state[name].shape)}, the model expects {expected}")

    @property
    def tasks(self) -> list[str]:
        return list(self.finetuned)

    def task_vectors(self) -> list[dict[str, torch.Tensor]]:
        """``tau_t = theta_t - theta_0`` for every merged (float parameter) tensor, in task order."""
        names = mergeable_names(self.module)
        return [{n: sd[n].float() - self.base[n].float() for n in names} for sd in self.finetuned.values()]


class UnlabeledBatches:
    """Seeded, shuffled, endlessly cycling mini-batches of each task's unlabeled inputs."""

    def __init__(self, inputs: Mapping[str, torch.Tensor], batch_size: int, seed: int = 0, device="cpu"):
        if batch_size < 1:
            raise MergeError(f"batch_size must be >= 1, got {batch_size}")
        self.inputs = inputs
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._generator = torch.Generator().manual_seed(seed)
        self._order: dict[str, Iterator[torch.Tensor]] = {}

    def _epochs(self, task: str) -> Iterator[torch.Tensor]:
        n = len(self.inputs[task])
        size = min(self.batch_size, n)
        while True:
            perm = torch.randperm(n, generator=self._generator)
            for start in range(0, n - size + 1, size):
                yield perm[start:start + size]

    def next(self, task: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices, inputs)`` of the task's next batch, on the device (floating inputs as float32)."""
        if task not in self._order:
            self._order[task] = self._epochs(task)
        idx = next(self._order[task])
        x = self.inputs[task][idx].to(self.device)
        return idx, (x.float() if x.is_floating_point() else x)
