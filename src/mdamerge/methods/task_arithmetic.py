"""Task arithmetic (Ilharco et al., ICLR 2023): theta_0 + lambda * sum_t tau_t."""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorJob, weighted_sum
from .registry import register
from .specs import SPECS


class TaskArithmetic(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        return weighted_sum(job.deltas, [w * job.params["scaling"] for w in job.weights])

    def propagates_non_finite(self, params) -> bool:
        return True


TASK_ARITHMETIC = register(TaskArithmetic.from_spec(SPECS["task_arithmetic"]))
