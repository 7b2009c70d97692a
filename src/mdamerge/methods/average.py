"""Simple averaging of the fine-tuned weights (model soup, Wortsman et al. 2022)."""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorJob, weighted_sum
from .registry import register
from .specs import SPECS


class Average(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        # mean_t(theta_t) = theta_0 + mean_t(tau_t); per-model weights give a weighted mean
        return weighted_sum(job.deltas, self.linear_coefficients(job.params, job.weights))

    def linear_coefficients(self, params, weights) -> list[float]:
        total = sum(weights)
        return [w / total for w in weights]


AVERAGE = register(Average.from_spec(SPECS["average"]))
