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
    """A learnable rotation ``R in SO(d)``: ``R = R_0 phi(A - A^T)`` with ``A = 0`` at start.

    ``R_0`` (``start``, a fixed rotation; the identity by default) is where it starts;
    ``phi`` is the exponential map or the Cayley transform. ``R_0`` and ``phi(.)`` are
    both special orthogonal, so is their product.

    ``forward(features)`` rotates row vectors: ``features @ R^T`` (i.e. ``R f`` for each
    feature column vector ``f``).
    """

    def __init__(self, dim: int, parametrisation: str = "expm", start: torch.Tensor | None = None):
        super().__init__()
        if parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"unknown rotation parametrisation {parametrisation!r}; choose from {PARAMETRISATIONS}")
        if start is not None and tuple(start.shape) != (dim, dim):
            raise ValueError(f"start rotation must be {dim} x {dim}, got {tuple(start.shape)}")
        self.parametrisation = parametrisation
        self.raw = nn.Parameter(torch.zeros(dim, dim))
        self.register_buffer("start", None if start is None else start.detach().float().clone())

    def matrix(self) -> torch.Tensor:
        """The current rotation matrix (differentiable in ``raw``)."""
        r = rotation_from_skew(skew(self.raw), self.parametrisation)
        return r if self.start is None else self.start @ r

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.matrix().mT


class FixedRotation(nn.Module):
    """A frozen rotation applied to backbone features before a task head.

    ``f -> R f``, or ``f -> R (f - c) + c`` (a rotation about the point ``c``) when a
    ``center`` is given. This is what a data-based merge hands to the evaluation as a
    feature transform; it follows the features' device and dtype.
    """

    def __init__(self, matrix: torch.Tensor, center: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("matrix", matrix.detach().clone())
        self.register_buffer("center", None if center is None else center.detach().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        r = self.matrix.to(features.device, features.dtype)
        if self.center is None:
            return features @ r.mT
        c = self.center.to(features.device, features.dtype)
        return (features - c) @ r.mT + c


def special_procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The rotation ``R in SO(d)`` minimising ``sum_i ||R x_i - y_i||^2`` (Kabsch).

    ``source`` and ``target`` hold the ``x_i`` and ``y_i`` as rows (``B x d``); see
    :func:`procrustes_from_cross_covariance` for the closed form.
    """
    if source.shape != target.shape or source.ndim != 2:
        raise ValueError(f"procrustes needs two B x d matrices of one shape, got {tuple(source.shape)} and {tuple(target.shape)}")
    return procrustes_from_cross_covariance(target.double().mT @ source.double()).to(source.dtype)


def procrustes_from_cross_covariance(cross: torch.Tensor) -> torch.Tensor:
    """``argmax_{R in SO(d)} tr(R^T C)`` for ``C = sum_i y_i x_i^T`` (``d x d``), in ``C``'s dtype.

    With ``C = U S V^T`` the orthogonal optimum is ``U V^T``; when its determinant is
    -1, the sign of the last singular pair is flipped (``U diag(1, .., 1, -1) V^T``),
    which is the best special orthogonal matrix (Kabsch). Use float64 for a stable
    sign decision.
    """
    u, _, vh = torch.linalg.svd(cross)
    sign = torch.sign(torch.linalg.det(u @ vh))
    if sign == 0:
        sign = torch.ones_like(sign)
    correction = torch.ones(u.shape[-1], dtype=u.dtype, device=u.device)
    correction[-1] = sign
    return (u * correction) @ vh


def orthogonality_error(matrix: torch.Tensor) -> float:
    """``max |R^T R - I|``: how far ``matrix`` is from orthogonal."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    return float((matrix.mT @ matrix - eye).abs().max())
