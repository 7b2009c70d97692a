"""Parameters and dispatch shared by the SVD-based methods.

SVD methods act on 2-D tensors; every other tensor (biases, norms, 1-D embeddings,
conv kernels) falls back to the mean task vector, as TSV-M and Iso-C/CTS do, and is
scaled by the same ``scaling`` as the 2-D result.
"""

from __future__ import annotations

import torch

from .base import TensorJob


def mean_delta(job: TensorJob) -> torch.Tensor:
    """Mean of the (weighted) task vectors: the fallback for tensors that are not 2-D."""
    return sum(job.weighted_deltas()) / job.num_tasks


def svd_precision(job: TensorJob) -> torch.dtype:
    """The configured ``svd_dtype`` as a torch dtype."""
    return torch.float64 if job.params["svd_dtype"] == "float64" else torch.float32


def svd_inputs(job: TensorJob) -> list[torch.Tensor]:
    """Weighted task vectors in the configured SVD precision."""
    return [d.to(svd_precision(job)) for d in job.weighted_deltas()]


def svd_input_sum(job: TensorJob) -> torch.Tensor:
    """``sum_t w_t tau_t`` in the configured SVD precision, accumulated in place (no T converted copies)."""
    deltas = job.weighted_deltas()
    total = deltas[0].to(svd_precision(job), copy=True)
    for d in deltas[1:]:
        total.add_(d)
    return total
