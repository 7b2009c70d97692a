"""Iso-C (Marczak et al., ICML 2025): isotropic merging in the common subspace.

Per 2-D tensor: ``sum_t tau_t = U diag(S) V^T``; every singular value is replaced by
their mean over all ``min(m, n)`` values, ``alpha * mean(S) U V^T`` (FusionBench's
table uses alpha = 1.5). Other tensors: ``alpha * mean_t tau_t``.
"""

from __future__ import annotations

import torch

from .base import MergeMethod, Param, TensorJob
from .linalg import thin_svd
from .registry import register
from .svd_common import SVD_DTYPE, mean_delta, svd_inputs

ISO_SCALING = Param("scaling", 1.5, float, "alpha, scale of the isotropic task vector (FusionBench: 1.5)")


class IsoC(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        scaling = job.params["scaling"]
        if job.base.ndim != 2:
            return scaling * mean_delta(job)
        u, s, vh = thin_svd(sum(svd_inputs(job)))
        return scaling * (s.mean() * (u @ vh)).float()


ISO_C = register(
    IsoC(
        name="iso_c",
        summary="Iso-C: SVD of the summed task vectors with a flat (mean) spectrum.",
        params=(ISO_SCALING, SVD_DTYPE),
        reference="Marczak et al., No Task Left Behind: Isotropic Model Merging, ICML 2025",
    )
)
