"""Rotations in SO(d): a parametrisation that stays special orthogonal under any
gradient step, and the special orthogonal Procrustes (Kabsch) solution.

Both parametrisations map an unconstrained ``d x d`` matrix ``A`` to its skew-symmetric
part ``S = A - A^T`` and then to SO(d):

* ``"expm"``: ``R = exp(S)`` (``torch.linalg.matrix_exp``). Every rotation is reachable
  and ``det R = exp(tr S) = 1`` exactly.
* ``"cayley"``: ``R = (I - S)^{-1} (I + S)``. ``I - S`` is always invertible because the
  eigenvalues of ``S`` are imaginary; rotations with eigenvalue -1 are not reachable,
  which does not matter near the identity where we start.

``A = 0`` gives ``R = I`` for both.
"""

from __future__ import annotations

import torch
from torch import nn

PARAMETRISATIONS = ("expm", "cayley")


def skew(a: torch.Tensor) -> torch.Tensor:
    """The skew-symmetric matrix ``a - a^T``."""
    return a - a.mT


def rotation_from_skew(s: torch.Tensor, parametrisation: str = "expm") -> torch.Tensor:
    """Map a skew-symmetric ``s`` to SO(d) with the exponential map or the Cayley transform."""
    if parametrisation == "expm":
        return torch.linalg.matrix_exp(s)
    if parametrisation == "cayley":
        eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
        return torch.linalg.solve(eye - s, eye + s)
    raise ValueError(f"unknown rotation parametrisation {parametrisation!r}; choose from {PARAMETRISATIONS}")


class Rotation(nn.Module):
    """A learnable rotation ``R in SO(d)``, initialised at the identity.

    ``forward(features)`` rotates row vectors: ``features @ R^T`` (i.e. ``R f`` for each
    feature column vector ``f``).
    """

    def __init__(self, dim: int, parametrisation: str = "expm"):
        super().__init__()
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"unknown rotation parametrisation {parametrisation!r}; choose from {PARAMETRISATIONS}")
        self.parametrisation = parametrisation
        self.raw = nn.Parameter(torch.zeros(dim, dim))

    def matrix(self) -> torch.Tensor:
        """The current rotation matrix (differentiable in ``raw``)."""
        return rotation_from_skew(skew(self.raw), self.parametrisation)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.matrix().mT


class FixedRotation(nn.Module):
    """A frozen rotation applied to backbone features before a task head (``f -> R f``).

    This is what :class:`~mdamerge.adaptation.adamerging.AdaptiveResult` hands to the
    evaluation as a feature transform; it follows the features' device and dtype.
    """

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.register_buffer("matrix", matrix.detach().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.matrix.to(features.device, features.dtype).mT


def special_procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The rotation ``R in SO(d)`` minimising ``sum_i ||R x_i - y_i||^2`` (Kabsch).

    ``source`` and ``target`` hold the ``x_i`` and ``y_i`` as rows (``B x d``). With
    ``target^T source = U S V^T`` the orthogonal optimum is ``U V^T``; when its
    determinant is -1, the sign of the last left singular vector is flipped
    (``U diag(1, .., 1, -1) V^T``), which is the best special orthogonal matrix.
    Computed in float64 for a stable sign decision.
    """
    if source.shape != target.shape or source.ndim != 2:
        raise ValueError(f"procrustes needs two B x d matrices of one shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    cross = target.double().mT @ source.double()
    u, _, vh = torch.linalg.svd(cross)
    sign = torch.sign(torch.linalg.det(u @ vh))
    if sign == 0:
        sign = torch.ones_like(sign)
    correction = torch.ones(u.shape[-1], dtype=u.dtype, device=u.device)
    correction[-1] = sign
    return ((u * correction) @ vh).to(source.dtype)


def orthogonality_error(matrix: torch.Tensor) -> float:
    """``max |R^T R - I|``: how far ``matrix`` is from orthogonal."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return float((matrix.mT @ matrix - eye).abs().max())
