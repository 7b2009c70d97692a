"""TSV-M, Task Singular Vectors merging (Gargiulo et al., CVPR 2025).

Per 2-D tensor: keep the top ``k = floor(min(m,n)/T)`` singular triplets of each
``tau_t``; place them side by side in ``U = [U_1..U_T]``, ``S``, ``V = [V_1..V_T]``;
replace ``U`` and ``V`` by their orthogonal polar factors (``A = P S Q^T -> P Q^T``) to
remove inter-task interference; merged delta ``alpha * U diag(S) V^T`` (alpha 1).
"""

from __future__ import annotations

import torch

from .base import MergeMethod, TensorJob
from .linalg import concatenated_task_subspace, default_rank, polar_factor, rebuild
from .registry import register
from .specs import SPECS
from .svd_common import mean_delta, svd_inputs


class TSV(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        scaling = job.params["scaling"]
        if job.base.ndim != 2:
            return scaling * mean_delta(job)
        deltas = svd_inputs(job)
        k = default_rank(tuple(job.base.shape), job.num_tasks, job.params["rank_fraction"])
        u, s, v = concatenated_task_subspace(deltas, k, job.params["svd_solver"])
        merged = rebuild(polar_factor(u), s, polar_factor(v))
        return scaling * merged.float()


TSV_M = register(TSV.from_spec(SPECS["tsv"]))
