"""MDA parameter-space alignment: Merging with Directional Alignment (Chen et al., 2025), data-free.

Per 2-D tensor (see docs/method.md for the full statement and the open choices):

1. Top ``k`` singular triplets of each task vector (``k = floor(min(m,n)/T)`` by
   default), concatenated into a shared subspace ``U`` (m x K), ``S`` (K), ``V`` (n x K),
   ``K = T k``.
2. Optionally (``polar=True``, default) replace ``U`` and ``V`` by their orthogonal
   polar factors, so the shared directions are orthonormal.
3. Directional alignment: multiply the chosen side(s) by the simplex-ETF Gram operator
   ``M = sqrt(K/(K-1)) (I_K - 1 1^T/K)`` (``etf_over="directions"``), or by
   ``M_T (x) I_k`` (``etf_over="tasks"``: the T task blocks become an ETF while the
   directions inside each block stay orthogonal). With orthonormal ``U``, the columns
   of ``U M`` are unit vectors with pairwise cosine ``-1/(K-1)``.
4. Rebuild ``alpha * U' diag(S') V'^T`` with ``S' = S`` (``spectrum="task"``) or its
   mean (``"isotropic"``).

Tensors that are not 2-D use the mean task vector.
"""

from __future__ import annotations

import math

import torch

from .base import MergeMethod, TensorJob
from .linalg import concatenated_task_subspace, default_rank, etf_gram_operator, polar_factor, rebuild
from .registry import register
from .specs import SPECS
from .svd_common import mean_delta, svd_inputs


def alignment_operator(num_tasks: int, k: int, etf_over: str, dtype, device) -> torch.Tensor:
    """The K x K operator that gives the shared subspace its simplex-ETF geometry."""
    if etf_over == "tasks":
        return torch.kron(
            etf_gram_operator(num_tasks, dtype=dtype, device=device), torch.eye(k, dtype=dtype, device=device)
        )
    return etf_gram_operator(num_tasks * k, dtype=dtype, device=device)


def apply_alignment(u: torch.Tensor, num_tasks: int, k: int, etf_over: str) -> torch.Tensor:
    """``u @ op`` for the operator of :func:`alignment_operator`, in O(m K) instead of O(m K^2).

    Both operators are ``sqrt(G/(G-1))`` times a centring over G groups (the K directions, or
    the T task blocks), so the product is a scaled subtraction of the group mean; on a
    whole-tower merge the dense K x K product was most of MDA's cost over TSV-M.
    """
    if etf_over == "directions":  # any number of directions, also unequal per-task blocks (LoRA ranks)
        groups = u.shape[1]
        if groups < 2:
            return u
        return math.sqrt(groups / (groups - 1)) * (u - u.mean(1, keepdim=True))
    if num_tasks < 2:
        return u
    blocks = u.reshape(u.shape[0], num_tasks, k)
    centred = blocks - blocks.mean(1, keepdim=True)
    return math.sqrt(num_tasks / (num_tasks - 1)) * centred.reshape(u.shape)


def mda_align(
    u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, num_tasks: int, k: int, *,
    side: str = "left", etf_over: str = "directions", polar: bool = True, spectrum: str = "task",
) -> torch.Tensor:
    """Steps 2-4 above on an already concatenated subspace; returns the merged delta."""
    if polar:
        u, v = polar_factor(u), polar_factor(v)
    if side in ("left", "both"):
        u = apply_alignment(u, num_tasks, k, etf_over)
    if side in ("right", "both"):
        v = apply_alignment(v, num_tasks, k, etf_over)
    if spectrum == "isotropic":
        s = torch.full_like(s, s.mean())
    return rebuild(u, s, v)


class MDA(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        p = job.params
        if job.base.ndim != 2:
            return p["scaling"] * mean_delta(job)
        k = default_rank(tuple(job.base.shape), job.num_tasks, p["rank_fraction"])
        u, s, v = concatenated_task_subspace(svd_inputs(job), k, p["svd_solver"])
        merged = mda_align(
            u, s, v, job.num_tasks, k,
            side=p["etf_side"], etf_over=p["etf_over"], polar=p["polar"], spectrum=p["spectrum"],
        )
        return p["scaling"] * merged.float()


MDA_METHOD = register(MDA.from_spec(SPECS["mda"]))
