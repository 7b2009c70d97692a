"""Angles between the tasks' directions before and after TSV-M's and MDA's alignment steps.

For one 2-D tensor with task vectors ``tau_1..tau_T`` and ``k`` kept triplets per task,
``U = [U_1 .. U_T]`` (m x Tk) holds the top-k left singular vectors of every task (as
TSV-M and MDA build it, with the canonical signs of ``methods.linalg``). Three stages:

* ``before``: ``U`` itself, the tasks' own subspaces;
* ``tsv``: ``polar(U)``, TSV-M's orthogonalisation (and MDA's step 2);
* ``mda``: ``polar(U) M`` with MDA's simplex-ETF Gram operator ``M`` (``etf_over``
  ``directions`` or ``tasks``, docs/method.md), the left side MDA aligns by default.

For each stage and each pair of tasks ``(i, j)`` we report the principal angles between
the column spaces of block ``i`` and block ``j`` (degrees; 90 = orthogonal subspaces),
and the angles between individual directions of different tasks
``arccos(cos(u_a, u_b))`` (degrees in [0, 180]; a simplex ETF over K directions puts
every one at ``arccos(-1/(K-1))``).

The module also measures what MDA's sign convention does (:func:`mda_delta_with_signs`):
the ETF step removes the mean direction ``U 1``, which depends on the sign each SVD gives
each singular pair. :func:`aligned_signs` is a sign choice that does not depend on those
arbitrary signs: each direction is flipped to agree with the other tasks' directions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import MergeError
from ..methods.linalg import canonical_signs, polar_factor, rebuild, thin_svd, top_k_svd
from ..methods.mda import alignment_operator

STAGES = ("before", "tsv", "mda")
SIGN_MODES = ("canonical", "lapack", "random", "aligned")


@dataclass
class StageAngles:
    """Angles of one stage: ``subspace[(i, j)]`` principal angles, ``directions`` all cross-task direction angles."""

    subspace: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    directions: torch.Tensor | None = None

    def all_subspace(self) -> torch.Tensor:
        return torch.cat(list(self.subspace.values())) if self.subspace else torch.empty(0)


def task_blocks(u: torch.Tensor, num_tasks: int, k: int) -> list[torch.Tensor]:
    """The T column blocks ``[t k, (t+1) k)`` of a concatenated ``m x Tk`` matrix."""
    if u.shape[1] != num_tasks * k:
        raise MergeError(f"expected {num_tasks} x {k} = {num_tasks * k} columns, got {u.shape[1]}")
    return [u[:, t * k:(t + 1) * k] for t in range(num_tasks)]


def orthonormal_basis(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of ``a`` (rank-revealing, via the SVD)."""
    p, s, _ = thin_svd(a.double())
    rank = int((s > s[0] * 1e-10).sum()) if len(s) and s[0] > 0 else 0
    return p[:, :rank]


def subspace_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the column spaces of any two matrices."""
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    cosines = torch.linalg.svdvals(qa.mT @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).sort().values


def cross_task_direction_angles(u: torch.Tensor, num_tasks: int, k: int) -> torch.Tensor:
    """Angles (degrees) between every column of one task's block and every column of another's."""
    unit = u.double() / u.double().norm(dim=0, keepdim=True).clamp_min(1e-300)
    cos = (unit.mT @ unit).clamp(-1.0, 1.0)
    task = torch.arange(num_tasks).repeat_interleave(k)
    mask = task[:, None] < task[None, :]
    return torch.rad2deg(torch.arccos(cos[mask]))


def stage_angles(u: torch.Tensor, num_tasks: int, k: int) -> StageAngles:
    blocks = task_blocks(u, num_tasks, k)
    subspace = {(i, j): subspace_angles(blocks[i], blocks[j]).float()
                for i in range(num_tasks) for j in range(i + 1, num_tasks)}
    return StageAngles(subspace, cross_task_direction_angles(u, num_tasks, k).float())


def task_left_subspace(deltas: list[torch.Tensor], k: int) -> torch.Tensor:
    """``U = [U_1..U_T]``: top-k left singular vectors of each task vector (dense float64 SVD, canonical signs)."""
    us = []
    for d in deltas:
        u, s, vh = canonical_signs(*top_k_svd(d.double(), k, solver="full"))
        us.append(u)
    return torch.cat(us, 1)


def alignment_angles(deltas: list[torch.Tensor], k: int, etf_over: str = "directions") -> dict[str, StageAngles]:
    """Angles of the three stages (see the module docstring) for one layer's task vectors."""
    t = len(deltas)
    if t < 2:
        raise MergeError(f"alignment angles need at least 2 task vectors, got {t}")
    u = task_left_subspace(deltas, k)
    tsv = polar_factor(u)
    mda = tsv @ alignment_operator(t, k, etf_over, tsv.dtype, tsv.device)
    return {"before": stage_angles(u, t, k), "tsv": stage_angles(tsv, t, k), "mda": stage_angles(mda, t, k)}


def summarize(values: torch.Tensor) -> dict[str, float]:
    """Mean, min, quartiles and max of a set of angles."""
    v = values.double().flatten()
    if v.numel() == 0:
        return {}
    q = torch.quantile(v, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    return {"mean": float(v.mean()), "min": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
            "q75": float(q[3]), "max": float(q[4]), "count": int(v.numel())}


# ---------------------------------------------------------------------------
# Sign conventions of the ETF step
# ---------------------------------------------------------------------------
def aligned_signs(u: torch.Tensor, num_tasks: int, k: int, max_sweeps: int = 50) -> torch.Tensor:
    """Signs ``s`` (+-1 per column of ``U``) that align each task's directions with the other tasks'.

    Locally maximises ``sum over cross-task pairs (a, b) of s_a s_b <u_a, u_b>`` (the squared
    norm of the mean direction the ETF step removes, minus its within-task part): start from
    the signs of the leading eigenvector of the cross-task Gram matrix, then flip any single
    sign that increases the sum until none does. Flipping column ``a`` of ``U`` flips
    ``s_a`` and nothing else, so ``U diag(s)`` -- and MDA's delta -- does not depend on the
    signs the SVD returned (up to a global flip, which leaves MDA's delta unchanged).
    """
    gram = u.double().mT @ u.double()
    task = torch.arange(num_tasks, device=u.device).repeat_interleave(k)
    gram = gram.masked_fill(task[:, None] == task[None, :], 0.0)
    _, vecs = torch.linalg.eigh(gram)
    lead = vecs[:, -1]
    s = torch.where(lead >= 0, 1.0, -1.0).to(torch.float64)
    s = s * (1.0 if float(lead[lead.abs().argmax()]) >= 0 else -1.0)  # eigh's own sign of the vector is arbitrary
    for _ in range(max_sweeps):
        field_ = gram @ s
        flip = (s * field_) < -1e-12  # flipping a raises the objective by -4 s_a field_a
        if not bool(flip.any()):
            break
        a = int(torch.argmin(s * field_))  # the single most profitable flip (deterministic)
        s[a] = -s[a]
    return s.to(u.dtype)


def task_triplets(deltas: list[torch.Tensor], k: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Top-k ``(U, S, Vh)`` of each task vector from a dense float64 SVD, with the signs LAPACK returned."""
    out = []
    for d in deltas:
        u, s, vh = thin_svd(d.double())
        out.append((u[:, :k], s[:k], vh[:k]))
    return out


def _with_signs(triplet, mode: str, generator: torch.Generator | None):
    u, s, vh = triplet
    if mode == "lapack":
        return u, s, vh
    if mode == "random":
        signs = torch.randint(0, 2, (u.shape[1],), generator=generator, dtype=torch.int64).double() * 2 - 1
        return u * signs, s, vh * signs[:, None]
    return canonical_signs(u, s, vh)


def mda_delta_with_signs(deltas: list[torch.Tensor] | None, k: int, mode: str = "canonical", *, etf_over: str = "directions",
                         side: str = "left", seed: int = 0, triplets=None) -> torch.Tensor:
    """Data-free MDA's merged delta of one layer (scaling 1, polar on) under a given sign convention.

    ``canonical``: mdamerge's convention (largest entry of each ``u_i`` positive);
    ``lapack``: the signs ``torch.linalg.svd`` returns; ``random``: independent random
    joint flips of every singular pair (seeded); ``aligned``: :func:`aligned_signs`.
    Dense float64 SVDs throughout (or the given :func:`task_triplets`), so only the signs
    differ between modes.
    """
    if mode not in SIGN_MODES:
        raise MergeError(f"unknown sign mode '{mode}'; choose from {', '.join(SIGN_MODES)}")
    triplets = triplets if triplets is not None else task_triplets(deltas, k)
    t = len(triplets)
    gen = torch.Generator().manual_seed(seed) if mode == "random" else None
    parts = [_with_signs(p, mode, gen) for p in triplets]
    u = torch.cat([p[0] for p in parts], 1)
    s = torch.cat([p[1] for p in parts])
    v = torch.cat([p[2].mT for p in parts], 1)
    if mode == "aligned":
        signs = aligned_signs(u, t, k)
        u, v = u * signs, v * signs
    u, v = polar_factor(u), polar_factor(v)
    op = alignment_operator(t, k, etf_over, u.dtype, u.device)
    if side in ("left", "both"):
        u = u @ op
    if side in ("right", "both"):
        v = v @ op
    return rebuild(u, s, v)


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b||_F / ||b||_F``."""
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


__all__ = [
    "SIGN_MODES", "STAGES", "StageAngles", "aligned_signs", "alignment_angles", "cross_task_direction_angles",
    "mda_delta_with_signs", "relative_change", "subspace_angles", "summarize", "task_blocks", "task_triplets",
]
