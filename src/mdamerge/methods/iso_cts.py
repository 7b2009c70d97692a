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
from .linalg import gram_top_k_svd, polar_factor, projected_top_k_svd, rebuild, top_k_svd, top_k_svd_and_complement
from .registry import register
from .specs import SPECS
from .svd_common import mean_delta, svd_inputs


def iso_cts_split(r: int, num_tasks: int, common_fraction: float) -> tuple[int, int]:
    """``(k_c, s)``: common-subspace size and task-specific directions per task."""
    per_task = round((r - int(r * common_fraction)) / num_tasks)
    return r - per_task * num_tasks, per_task


def common_and_task_specific(deltas: list[torch.Tensor], k_c: int, per_task: int):
    """The top ``k_c`` triplets of ``sum_t tau_t`` and the top ``per_task`` of each ``(I - U_c U_c^T) tau_t``.

    For wide and square layers one ``eigh`` of the sum's ``m x m`` Gram also gives the
    complement ``Q`` of ``U_c`` (``m - k_c`` dimensions, 20% of them by default), and each
    residual is ``Q (Q^T tau_t)``: its top triplets come from the small ``Q^T tau_t``
    instead of an m- or n-wide Gram per task.
    """
    total = sum(deltas)
    with_complement = top_k_svd_and_complement(total, k_c) if per_task > 0 else None
    if with_complement is None:
        common = top_k_svd(total, k_c)
        return common, [projected_top_k_svd(delta, common[0], per_task) for delta in deltas]
    u_c, s_c, vh_c, q = with_complement
    specific = []
    for delta in deltas:
        fast = gram_top_k_svd(q.mT @ delta, per_task)
        if fast is None:  # e.g. a zero task vector: the published dense SVD of the formed residual decides
            specific.append(projected_top_k_svd(delta, u_c, per_task))
        else:
            u_z, s_t, vh_t = fast
            specific.append((q @ u_z, s_t, vh_t))
    return (u_c, s_c, vh_c), specific


class IsoCTS(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        scaling = job.params["scaling"]
        if job.base.ndim != 2:
            return scaling * mean_delta(job)
        deltas = svd_inputs(job)
        k_c, per_task = iso_cts_split(min(job.base.shape), job.num_tasks, job.params["common_fraction"])
        (u_c, s_c, vh_c), specific = common_and_task_specific(deltas, k_c, per_task)
        us = [u for u, _, _ in specific]
        ss = [s for _, s, _ in specific]
        vs = [vh.mT for _, _, vh in specific]
        v_c = vh_c.mT
        u_all = polar_factor(torch.cat(us + [u_c], 1))
        v_all = polar_factor(torch.cat(vs + [v_c], 1))
        s_all = torch.cat(ss + [s_c])
        return scaling * rebuild(u_all, torch.full_like(s_all, s_all.mean()), v_all).float()


ISO_CTS = register(IsoCTS.from_spec(SPECS["iso_cts"]))
