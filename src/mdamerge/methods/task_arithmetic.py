"""Task arithmetic (Ilharco et al., ICLR 2023): theta_0 + lambda * sum_t tau_t."""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorJob
from .registry import register
from .specs import SPECS


class TaskArithmetic(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        return job.params["scaling"] * sum(job.weighted_deltas())


TASK_ARITHMETIC = register(TaskArithmetic.from_spec(SPECS["task_arithmetic"]))
