"""Task arithmetic (Ilharco et al., ICLR 2023): theta_0 + lambda * sum_t tau_t."""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorJob, weighted_sum
from .registry import register
from .specs import SPECS


class TaskArithmetic(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        return weighted_sum(job.deltas, self.linear_coefficients(job.params, job.weights))

    def linear_coefficients(self, params, weights) -> list[float]:
        return [w * params["scaling"] for w in weights]


TASK_ARITHMETIC = register(TaskArithmetic.from_spec(SPECS["task_arithmetic"]))
