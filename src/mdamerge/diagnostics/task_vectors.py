"""Directional statistics of task vectors, layer by layer.

For every 2-D tensor ``W`` shared by the base and all models, with task vectors
``tau_t = W_t - W_0``:

* the ``T x T`` cosine-similarity matrix of the flattened ``tau_t``;
* principal angles between the top-``k`` left singular subspaces of every pair
  ``(tau_i, tau_j)``: ``theta = arccos(sigma(U_i^T U_j))`` in degrees (0 = shared
  direction, 90 = orthogonal); pairs with an all-zero task vector have no angles;
* the singular-value spectrum of every ``tau_t`` (and its stable rank
  ``||s||^2 / s_max^2``).

Tensors are read one at a time, so a report over large checkpoints needs memory for
one layer of all models only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from ..errors import CheckpointError, MergeError
from ..methods.linalg import thin_svd

TensorReader = Callable[[str], torch.Tensor]


@dataclass
class LayerStats:
    """Diagnostics of one 2-D tensor."""

    name: str
    shape: tuple[int, int]
    k: int
    cosine: torch.Tensor  # T x T
    angles: dict[tuple[int, int], torch.Tensor]  # (i, j), i < j -> k principal angles in degrees
    spectra: list[torch.Tensor]  # per task, descending singular values
    norms: list[float]

    @property
    def zero_tasks(self) -> list[int]:
        """Tasks whose task vector is exactly zero here (left out of the principal angles)."""
        return [t for t, n in enumerate(self.norms) if n == 0.0]

    @property
    def mean_cosine(self) -> float:
        """Mean off-diagonal cosine (0 for orthogonal task vectors)."""
        t = self.cosine.shape[0]
        if t < 2:
            return 0.0
        off = self.cosine[~torch.eye(t, dtype=torch.bool)]
        return float(off.mean())

    @property
    def mean_angle(self) -> float:
        """Mean principal angle over all pairs and the k angles, in degrees."""
        if not self.angles:
            return float("nan")
        return float(torch.cat(list(self.angles.values())).mean())

    @property
    def stable_ranks(self) -> list[float]:
        return [float((s**2).sum() / s[0] ** 2) if len(s) and s[0] > 0 else 0.0 for s in self.spectra]


@dataclass
class TaskVectorReport:
    """Per-layer statistics plus the cosine matrix of the whole (concatenated) task vectors."""

    labels: list[str]
    layers: list[LayerStats] = field(default_factory=list)
    global_cosine: torch.Tensor | None = None


def cosine_matrix(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Pairwise cosine similarities of flattened tensors (0 where a vector is zero)."""
    flat = torch.stack([v.reshape(-1).double() for v in vectors])
    norms = flat.norm(dim=1)
    gram = flat @ flat.T
    denom = torch.outer(norms, norms)
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))


def left_subspace(delta: torch.Tensor, k: int) -> torch.Tensor:
    """Orthonormal basis (m x k) of the top-k left singular subspace of ``delta``."""
    u, _, _ = thin_svd(delta.double())
    return u[:, :k]


def principal_angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the column spaces of orthonormal ``a`` and ``b``."""
    cosines = torch.linalg.svdvals(a.mT @ b).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosines)).sort().values


def default_k(shape: tuple[int, int], num_tasks: int, rank_fraction: float | None) -> int:
    """``floor(min(m,n)/T)`` (TSV-M's and MDA's per-task rank) or ``fraction * min(m,n)``, at least 1."""
    r = min(shape)
    if rank_fraction is None:
        return max(1, r // num_tasks)
    return max(1, min(r, int(rank_fraction * r)))


def layer_stats(name: str, deltas: Sequence[torch.Tensor], k: int) -> LayerStats:
    """All statistics of one 2-D tensor from its task vectors."""
    spectra, bases = [], []
    for d in deltas:
        u, s, _ = thin_svd(d.double())
        spectra.append(s.float())
        bases.append(u[:, :k])
    # A zero task vector (a tensor the fine-tuning left untouched) has no singular directions:
    # its SVD basis is arbitrary, and pairing it would count as spurious "shared" angles.
    active = [bool(d.any()) for d in deltas]
    angles = {
        (i, j): principal_angles(bases[i], bases[j]).float()
        for i in range(len(deltas)) for j in range(i + 1, len(deltas)) if active[i] and active[j]
    }
    return LayerStats(
        name=name, shape=tuple(deltas[0].shape), k=k, cosine=cosine_matrix(deltas).float(), angles=angles,
        spectra=spectra, norms=[float(d.norm()) for d in deltas],
    )


def analyze_task_vectors(
    base: TensorReader,
    models: Sequence[TensorReader],
    names: Sequence[str],
    labels: Sequence[str] | None = None,
    rank_fraction: float | None = None,
    max_layers: int | None = None,
) -> TaskVectorReport:
    """Statistics of every 2-D tensor in ``names`` (read through the given readers).

    ``base`` and ``models`` map a tensor name to its tensor; the global cosine matrix
    covers every floating-point tensor in ``names``, the per-layer statistics the 2-D
    ones (the first ``max_layers`` of them when given).
    """
    if len(models) < 2:
        raise MergeError(f"task-vector diagnostics need at least 2 fine-tuned models, got {len(models)}")
    labels = list(labels) if labels is not None else [f"model {i}" for i in range(len(models))]
    report = TaskVectorReport(labels=labels)
    t = len(models)
    gram = torch.zeros(t, t, dtype=torch.float64)
    for name in names:
        w0 = base(name)
        if not w0.is_floating_point() or w0.numel() == 0:  # a 0 x 64 tensor has no task vector
            continue
        deltas = []
        for label, read in zip(labels, models):
            w = read(name)
            if tuple(w.shape) != tuple(w0.shape):
                raise CheckpointError(f"{label}: tensor '{name}' has shape {tuple(w.shape)}, the base has {tuple(w0.shape)}")
            deltas.append(w.double() - w0.double())
        flat = torch.stack([d.reshape(-1) for d in deltas])
        if not torch.isfinite(flat).all():
            raise CheckpointError(f"tensor '{name}' contains NaN or Inf in one of the models")
        gram += flat @ flat.T
        if w0.ndim == 2 and (max_layers is None or len(report.layers) < max_layers):
            k = default_k(tuple(w0.shape), t, rank_fraction)
            with naming_tensor(name):
                report.layers.append(layer_stats(name, deltas, k))
    norms = gram.diag().sqrt()
    denom = torch.outer(norms, norms)
    report.global_cosine = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram)).float()
    return report


@contextlib.contextmanager
def naming_tensor(name: str):
    """A decomposition that fails (LAPACK did not converge) becomes one line naming the tensor."""
    try:
        yield
    except torch.linalg.LinAlgError as exc:
        raise MergeError(f"tensor '{name}': {str(exc).splitlines()[0]}") from None


def readers_from_state_dicts(states: Sequence[Mapping[str, torch.Tensor]]) -> list[TensorReader]:
    """Wrap in-memory state dicts as tensor readers."""
    return [state.__getitem__ for state in states]

