"""Task arithmetic (Ilharco et al., ICLR 2023): theta_0 + lambda * sum_t tau_t."""

from __future__ import annotations

import torch

from .base import MergeMethod, Param, TensorJob
from .registry import register

SCALING = Param("scaling", 0.3, float, "lambda, the scale of the summed task vectors (FusionBench: 0.3)")


class TaskArithmetic(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        return job.params["scaling"] * sum(job.weighted_deltas())


TASK_ARITHMETIC = register(
    TaskArithmetic(
        name="task_arithmetic",
        summary="theta_0 + lambda * sum_t w_t tau_t.",
        params=(SCALING,),
        reference="Ilharco et al., Editing models with task arithmetic, ICLR 2023",
    )
)
