"""Parameters and dispatch shared by the SVD-based methods.

SVD methods act on 2-D tensors; every other tensor (biases, norms, 1-D embeddings,
conv kernels) falls back to the mean task vector, as TSV-M and Iso-C/CTS do, and is
scaled by the same ``scaling`` as the 2-D result.
"""

from __future__ import annotations

import torch

from .base import Param, TensorJob

SVD_SOLVER = Param(
    "svd_solver", "auto", str,
    "top-k SVD: 'auto' = 'gram' (float64 Gram eigh, self-checked, dense fallback; exact), "
    "'full' (dense SVD) or 'randomized' (seeded sketch, residual-checked, falls back to gram)",
    choices=("auto", "full", "gram", "randomized"),
)
SVD_DTYPE = Param(
    "svd_dtype", "float64", str,
    "working precision of the SVD methods (float32: FusionBench's; its dense SVDs are ill-posed at near-tied "
    "singular values -- the Gram eigendecompositions are float64 either way)",
    choices=("float32", "float64"),
)
RANK_FRACTION = Param(
    "rank_fraction", None, float,
    "triplets kept per task as a fraction of min(m, n); default 1/T (k = floor(min(m,n)/T))",
    minimum=0.0, maximum=1.0, optional=True,
)


def mean_delta(job: TensorJob) -> torch.Tensor:
    """Mean of the (weighted) task vectors: the fallback for tensors that are not 2-D."""
    return sum(job.weighted_deltas()) / job.num_tasks


def svd_inputs(job: TensorJob) -> list[torch.Tensor]:
    """Weighted task vectors in the configured SVD precision."""
    dtype = torch.float64 if job.params["svd_dtype"] == "float64" else torch.float32
    return [d.to(dtype) for d in job.weighted_deltas()]
