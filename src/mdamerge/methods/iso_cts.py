"""Iso-CTS (Marczak et al., ICML 2025): isotropic merging in common and task-specific subspaces.

Per 2-D tensor with ``r = min(m, n)``:

1. Common subspace: top ``k_c`` singular triplets of ``sum_t tau_t``, where
   ``s = round((r - floor(f r)) / T)`` directions are left per task and ``k_c = r - T s``
   (f = ``common_fraction``, 0.8 by default).
2. Task-specific directions: for each t, ``tau_t - U_c U_c^T tau_t`` (the common left
   subspace projected out), its top ``s`` triplets.
3. Concatenate ``[U_1..U_T, U_c]`` (and S, V likewise), replace U and V by their polar
   factors, flatten the spectrum to its mean, scale by alpha (default 1.0, FusionBench's
   ``iso_cts.yaml``).

The top-k decompositions take the exact float64 Gram route of
:func:`~mdamerge.methods.linalg.top_k_svd` (dense SVD where it cannot certify itself).
"""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorJob
from .linalg import polar_factor, projected_top_k_svd, rebuild, top_k_svd
from .registry import register
from .specs import SPECS
from .svd_common import mean_delta, svd_inputs


def iso_cts_split(r: int, num_tasks: int, common_fraction: float) -> tuple[int, int]:
    """``(k_c, s)``: common-subspace size and task-specific directions per task."""
    per_task = round((r - int(r * common_fraction)) / num_tasks)
    return r - per_task * num_tasks, per_task


class IsoCTS(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        scaling = job.params["scaling"]
        if job.base.ndim != 2:
            return scaling * mean_delta(job)
        deltas = svd_inputs(job)
        k_c, per_task = iso_cts_split(min(job.base.shape), job.num_tasks, job.params["common_fraction"])
        u_c, s_c, vh_c = top_k_svd(sum(deltas), k_c)
        v_c = vh_c.mT
        us, ss, vs = [], [], []
        for u_t, s_t, vh_t in (projected_top_k_svd(delta, u_c, per_task) for delta in deltas):
            us.append(u_t)
            ss.append(s_t)
            vs.append(vh_t.mT)
        u_all = polar_factor(torch.cat(us + [u_c], 1))
        v_all = polar_factor(torch.cat(vs + [v_c], 1))
        s_all = torch.cat(ss + [s_c])
        return scaling * rebuild(u_all, torch.full_like(s_all, s_all.mean()), v_all).float()


ISO_CTS = register(IsoCTS.from_spec(SPECS["iso_cts"]))
