"""Iso-C (Marczak et al., ICML 2025): isotropic merging in the common subspace.

Per 2-D tensor: ``sum_t tau_t = U diag(S) V^T``; every singular value is replaced by
their mean over all ``min(m, n)`` values, ``alpha * mean(S) U V^T``. Other tensors:
``alpha * mean_t tau_t``. Default alpha = 1.0, FusionBench's ``iso_c.yaml``
``scaling_factor`` (the alpha behind its published tables is tuned per setting; choose it
on validation data).

``U V^T`` is the polar factor of the sum and ``mean(S)`` the mean square root of its
Gram eigenvalues: one float64 ``eigh`` of the small Gram matrix gives both, exactly; the
few tiny singular directions of an ill-conditioned sum (every square layer's, typically)
come from a small dense SVD, and a zero or rank-deficient sum from the dense SVD
(:func:`~mdamerge.methods.linalg.gram_polar`).
"""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorJob
from .linalg import isotropic_polar
from .registry import register
from .specs import SPECS
from .svd_common import mean_delta, svd_input_sum


class IsoC(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        scaling = job.params["scaling"]
        if job.base.ndim != 2:
            return scaling * mean_delta(job)
        mean_s, polar = isotropic_polar(svd_input_sum(job))
        return scaling * (mean_s * polar).float()


ISO_C = register(IsoC.from_spec(SPECS["iso_c"]))
