"""Iso-C (Marczak et al., ICML 2025): isotropic merging in the common subspace.

Per 2-D tensor: ``sum_t tau_t = U diag(S) V^T``; every singular value is replaced by
their mean over all ``min(m, n)`` values, ``alpha * mean(S) U V^T``. Other tensors:
``alpha * mean_t tau_t``. Default alpha = 1.0, FusionBench's ``iso_c.yaml``
``scaling_factor`` (the alpha behind its published tables is tuned per setting; choose it
on validation data).

``U V^T`` is the polar factor of the sum and ``mean(S)`` the mean square root of its
Gram eigenvalues: one float64 ``eigh`` of the small Gram matrix gives both, exactly
(dense SVD when the sum is too ill-conditioned for that, see :func:`isotropic_polar`).
"""

from __future__ import annotations

import torch

from .base import MergeMethod, Param, TensorJob
from .linalg import isotropic_polar
from .registry import register
from .svd_common import SVD_DTYPE, mean_delta, svd_inputs

ISO_SCALING = Param(
    "scaling", 1.0, float,
    "alpha, scale of the isotropic task vector (FusionBench's iso_c.yaml/iso_cts.yaml default: 1.0; tune it on validation)",
)


class IsoC(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        scaling = job.params["scaling"]
        if job.base.ndim != 2:
            return scaling * mean_delta(job)
        mean_s, polar = isotropic_polar(sum(svd_inputs(job)))
        return scaling * (mean_s * polar).float()


ISO_C = register(
    IsoC(
        name="iso_c",
        summary="Iso-C: SVD of the summed task vectors with a flat (mean) spectrum.",
        params=(ISO_SCALING, SVD_DTYPE),
        reference="Marczak et al., No Task Left Behind: Isotropic Model Merging, ICML 2025",
    )
)
