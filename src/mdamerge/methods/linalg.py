"""Linear-algebra building blocks shared by the SVD-based methods (TSV-M, Iso-C/CTS, MDA)."""

from __future__ import annotations

import math

import torch


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``a = U diag(S) Vh`` (``full_matrices=False``)."""
    return torch.linalg.svd(a, full_matrices=False)


# Below this ratio of smallest to largest kept eigenvalue the Gram route would lose
# precision (it squares the condition number), so the dense SVD is used instead.
GRAM_RCOND = 1e-10


def top_k_svd(
    a: torch.Tensor, k: int, solver: str = "auto", niter: int = 6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets of ``a`` as ``(U[:, :k], S[:k], Vh[:k])``, in ``a``'s dtype.

    Solvers:

    * ``"full"``: dense thin SVD, truncated.
    * ``"gram"``: eigendecomposition of the float64 Gram matrix ``a^T a`` (or ``a a^T``),
      ``U = a V / S``. Several times faster than a dense SVD on CPUs; the float64 Gram
      keeps the top-k triplets accurate to ~1e-10 relative as long as
      ``S_k^2 / S_1^2 > 1e-10``, otherwise it falls back to the dense SVD.
    * ``"randomized"``: :func:`randomized_svd` (Halko et al.) with a sketch of
      ``q = 2k + 2`` columns and ``niter`` power iterations.
    * ``"auto"`` (default): randomized for matrices with ``min(m, n) >= 256`` when
      ``3q <= min(m, n)`` (e.g. T >= 8 with the default k) -- an order of magnitude
      faster, and on spectra that decay like task vectors' do its singular values
      agree to ~1e-5 relative (tests/test_linalg.py) -- else gram.
    """
    m, n = a.shape
    r = min(m, n)
    k = max(0, min(k, r))
    q = 2 * k + 2
    use_randomized = solver == "randomized" or (solver == "auto" and r >= 256 and q * 3 <= r)
    if use_randomized and q < r:
        u, s, vh = randomized_svd(a, q, niter)
        return u[:, :k], s[:k], vh[:k]
    if solver in ("auto", "gram", "randomized") and k > 0:
        triplets = gram_top_k_svd(a, k)
        if triplets is not None:
            return triplets
    u, s, vh = thin_svd(a)
    return u[:, :k], s[:k], vh[:k]


def gram_top_k_svd(a: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Top-k SVD through ``eigh`` of the smaller float64 Gram matrix; ``None`` if ill-conditioned."""
    wide = a.shape[0] < a.shape[1]
    b = (a.mT if wide else a).double()  # tall: m >= n
    evals, evecs = torch.linalg.eigh(b.mT @ b)  # ascending
    top_vals = evals.flip(0)[:k]
    if top_vals[-1] <= GRAM_RCOND * top_vals[0] or top_vals[0] <= 0:
        return None
    v = evecs.flip(1)[:, :k]
    s = top_vals.sqrt()
    u = (b @ v) / s
    if wide:
        u, v = v, u
    return u.to(a.dtype), s.to(a.dtype), v.mT.to(a.dtype)


def randomized_svd(
    a: torch.Tensor, q: int, niter: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``q`` randomized SVD (Halko et al., subspace iteration, as :func:`torch.svd_lowrank`).

    The Gaussian test matrix comes from a generator seeded with ``seed`` rather than
    torch's global RNG (which ``torch.svd_lowrank`` uses), so the result depends only on
    ``a``: not on what ran before, on thread interleaving (``--workers``) or on the
    process (``--ray``).
    """
    gen = torch.Generator(device=a.device).manual_seed(seed)
    omega = torch.randn(a.shape[1], q, generator=gen, device=a.device, dtype=a.dtype)
    basis = torch.linalg.qr(a @ omega).Q
    for _ in range(niter):
        basis = torch.linalg.qr(a @ torch.linalg.qr(a.mT @ basis).Q).Q
    u, s, vh = torch.linalg.svd(basis.mT @ a, full_matrices=False)
    return basis @ u, s, vh


def polar_factor(a: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor ``P Q^T`` of ``a = P S Q^T``: the closest matrix with orthonormal columns (or rows).

    Computed as ``a (a^T a)^{-1/2}`` from a float64 ``eigh`` of the small Gram matrix when
    ``a`` is well conditioned (several times faster than an SVD on CPUs), else by the SVD.
    """
    wide = a.shape[0] < a.shape[1]
    b = (a.mT if wide else a).double()
    evals, evecs = torch.linalg.eigh(b.mT @ b)
    if evals[0] > GRAM_RCOND * evals[-1] and evals[-1] > 0:
        polar = (b @ evecs) @ (evecs * evals.rsqrt()).mT
        return (polar.mT if wide else polar).to(a.dtype)
    p, _, qh = thin_svd(a)
    return p @ qh


def etf_gram_operator(k: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """Simplex-ETF Gram operator ``M_K = sqrt(K/(K-1)) (I_K - 1 1^T / K)``.

    For ``U`` with orthonormal columns, the columns of ``U M_K`` are unit vectors
    with pairwise cosine ``-1/(K-1)``: a simplex equiangular tight frame spanning
    a (K-1)-dimensional subspace of ``span(U)``.
    """
    if k < 2:
        return torch.eye(k, dtype=dtype, device=device)
    centering = torch.eye(k, dtype=dtype, device=device) - torch.full((k, k), 1.0 / k, dtype=dtype, device=device)
    return math.sqrt(k / (k - 1)) * centering


def simplex_etf(num_classes: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_classes`` unit vectors in ``R^dim`` (rows) forming a simplex ETF (needs ``dim >= num_classes - 1``).

    Built as ``M_K`` applied to a random orthonormal frame; with ``dim >= K`` the
    frame has K orthonormal columns, otherwise the (K-1)-dim centred subspace is used.
    """
    k = num_classes
    if dim < k - 1:
        raise ValueError(f"a simplex ETF of {k} vectors needs dimension >= {k - 1}, got {dim}")
    cols = min(k, dim + 1)
    basis = torch.linalg.qr(torch.randn(dim, max(cols, 1), generator=generator, dtype=torch.float64))[0]
    if dim >= k:
        frame = basis[:, :k] @ etf_gram_operator(k, dtype=torch.float64)
    else:
        # dim == k-1: orthonormal basis of the centred subspace of R^k, mapped into R^dim
        centred = torch.linalg.qr(etf_gram_operator(k, dtype=torch.float64))[0][:, : k - 1]  # k x (k-1)
        frame = basis[:, : k - 1] @ (centred.T @ etf_gram_operator(k, dtype=torch.float64))
    return frame.T.contiguous().float()


def default_rank(shape: tuple[int, int], num_tasks: int, rank_fraction: float | None) -> int:
    """Triplets kept per task: ``floor(min(m, n) / T)`` by default, else ``max(1, floor(fraction * min(m, n)))``."""
    r = min(shape)
    if rank_fraction is None:
        return max(1, r // num_tasks)
    return max(1, int(rank_fraction * r))


def concatenated_task_subspace(
    deltas: list[torch.Tensor], k: int, solver: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` SVD blocks of every task vector, side by side.

    Returns ``U`` (m x Tk), ``S`` (Tk) and ``V`` (n x Tk) with task t's block in
    columns ``[t k, (t+1) k)`` -- the layout of TSV-M's ``sum_u``/``sum_s``/``sum_v``.
    """
    us, ss, vs = [], [], []
    for delta in deltas:
        u, s, vh = canonical_signs(*top_k_svd(delta, k, solver))
        us.append(u)
        ss.append(s)
        vs.append(vh.mT)
    return torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)


def canonical_signs(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip each singular pair so the largest-magnitude entry of its left vector is positive.

    An SVD fixes each pair ``(u_i, v_i)`` only up to a joint sign. TSV-M is invariant to
    it, but MDA's ETF step (``U M_K`` subtracts the mean direction) is not, so without a
    convention the result would depend on the LAPACK build or device.
    """
    rows = u.abs().argmax(0)
    signs = torch.sign(u[rows, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1
    return u * signs, s, vh * signs[:, None]


def rebuild(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``U diag(S) V^T`` without forming ``diag(S)``."""
    return (u * s) @ v.mT
