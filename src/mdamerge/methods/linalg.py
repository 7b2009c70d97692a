"""Linear-algebra building blocks shared by the SVD-based methods (TSV-M, Iso-C/CTS, MDA)."""

from __future__ import annotations

import math
import threading

import torch


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``a = U diag(S) Vh`` (``full_matrices=False``).

    torch's CPU driver, LAPACK's divide-and-conquer ``gesdd``, can fail to converge on a finite
    matrix with many (nearly) repeated singular values -- ``[U_1 .. U_T]`` filling a layer
    exactly (T k = min(m, n)) is one; the QR-iteration ``gesvd`` is then used instead.
    """
    try:
        return torch.linalg.svd(a, full_matrices=False)
    except torch.linalg.LinAlgError:
        if not bool(torch.isfinite(a).all()):
            raise
        return _gesvd(a)


def _gesvd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if a.device.type == "cuda":
        return torch.linalg.svd(a, full_matrices=False, driver="gesvd")
    import scipy.linalg

    u, s, vh = scipy.linalg.svd(a.detach().numpy(), full_matrices=False, lapack_driver="gesvd", check_finite=False)
    return tuple(torch.from_numpy(x).to(a.dtype) for x in (u, s, vh))


# Accuracy guards of the Gram routes (see docs/method.md, "Accuracy of the SVD routes").
# A Gram matrix squares the condition number: in float64 the i-th singular pair from
# ``eigh(A^T A)`` carries a relative error of about eps64 * (S_1 / S_i)^2.
#: top-k from the Gram only when S_k^2 >= GRAM_RCOND * S_1^2, i.e. S_k / S_1 >= 1e-5.
GRAM_RCOND = 1e-10
#: ... and only when the left vectors ``U = A V / S`` come out orthonormal to this
#: (max entry of ``U^T U - I``): the a-posteriori check of the route.
GRAM_ORTHO_TOL = 1e-9
#: polar factor entirely from the Gram when the condition number of ``A`` is <= 1e4
#: (error ~ eps64 * cond^2 <= 1e-8); otherwise split as below.
POLAR_RCOND = 1e-8
#: ... above that, directions with S_i^2 < POLAR_SPLIT S_1^2 (S_i / S_1 < 1e-3) come from a
#: dense SVD of the matrix restricted to them (:func:`gram_polar`); the rest from the Gram,
#: accurate to eps64 / POLAR_SPLIT ~ 1e-10.
POLAR_SPLIT = 1e-6
#: singular values below RANK_RTOL S_1 count as zero: the polar factor is then not unique.
RANK_RTOL = 1e-13
#: randomized route: accepted only when its a-posteriori residual is this small.
RANDOMIZED_TOL = 1e-6


def top_k_svd(
    a: torch.Tensor, k: int, solver: str = "auto", niter: int = 6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``k`` singular triplets of ``a`` as ``(U[:, :k], S[:k], Vh[:k])``, in ``a``'s dtype.

    Every solver returns the top-k triplets of the dense SVD up to the accuracy stated
    in docs/method.md; the fast ones verify themselves and fall back to the dense SVD:

    * ``"auto"`` / ``"gram"`` (default): ``eigh`` of the float64 Gram matrix ``a^T a``
      (or ``a a^T``), ``U = a V / S``. Accepted when ``S_k / S_1 >= 1e-5`` and the
      computed ``U`` is orthonormal to 1e-9 (a-posteriori check); then each singular
      pair agrees with a float64 dense SVD to ~eps64 (S_1/S_i)^2 <= ~1e-9. Otherwise
      (rank-deficient or zero input, very wide spectra) the dense SVD, in ``a``'s dtype.
    * ``"full"``: dense thin SVD, truncated.
    * ``"randomized"``: :func:`randomized_svd` (sketch ``2k + 2``, ``niter`` power
      iterations), accepted only when its residual ``||A V - U S|| / ||S||`` is below
      1e-6 -- else the ``"auto"`` route. Never faster than ``"auto"`` by much on CPUs
      once checked; kept for GPUs and for very large ``min(m, n)``.
    """
    m, n = a.shape
    k = max(0, min(k, m, n))
    if k == 0:
        return a.new_zeros(m, 0), a.new_zeros(0), a.new_zeros(0, n)
    if solver == "randomized" and 2 * k + 2 < min(m, n):
        u, s, vh = randomized_svd(a, 2 * k + 2, niter)
        u, s, vh = u[:, :k], s[:k], vh[:k]
        # Ritz triplets satisfy A^T U = V S by construction; A V = U S holds only if the
        # sketch captured the top-k subspace, so that is the residual to check
        if s[0] > 0 and float((a @ vh.mT - u * s).norm() / s.norm()) <= RANDOMIZED_TOL:
            return u, s, vh
    if solver != "full":
        triplets = gram_top_k_svd(a, k)
        if triplets is not None:
            return triplets
    u, s, vh = thin_svd(a)
    return u[:, :k], s[:k], vh[:k]


def _scipy():
    """``scipy.linalg`` when installed (LAPACK/BLAS routines torch does not expose) and called from the
    main thread, else ``None`` (callers then use torch's routines).

    SciPy's LAPACK/BLAS wrappers hold the GIL, so in ``--workers N`` merge threads they would run one
    at a time (measured: 8 syevd calls take as long on 2 threads as on 1); torch's release it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import scipy.linalg
        import scipy.linalg.blas
    except ImportError:  # pragma: no cover - scipy ships with the bench extra
        return None
    return scipy.linalg


def gram64(b: torch.Tensor) -> torch.Tensor:
    """``b^T b`` in float64. On CPUs BLAS ``dsyrk`` computes one triangle: half the flops of a matmul."""
    upper = gram64_upper(b).triu()  # full (torch) or upper-only (dsyrk): mirror the upper triangle either way
    return upper + upper.triu(1).mT


def gram64_upper(b: torch.Tensor) -> torch.Tensor:
    """``b^T b`` in float64 where only the upper triangle is guaranteed (the whole matrix off CPUs).

    What the ``eigh`` routines below read (``lower=False``): mirroring the triangle costs
    as much as 10% of a top-k decomposition at width 768.
    """
    b = b.double()
    sp = _scipy() if b.device.type == "cpu" else None
    if sp is None:
        return b.mT @ b
    if b.mT.is_contiguous():  # b is a wide matrix's transpose, Fortran-ordered: dsyrk(trans=1) reads it in place
        return torch.from_numpy(sp.blas.dsyrk(1.0, b.numpy(), trans=1))  # strictly-lower part is zero
    x = b.contiguous().numpy().T  # Fortran-ordered n x m view of b^T: dsyrk(trans=0) gives x x^T = b^T b
    return torch.from_numpy(sp.blas.dsyrk(1.0, x, trans=0))


def _top_eigh(g: torch.Tensor, k: int, lower: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest eigenpairs of the symmetric ``g`` (read from one triangle), eigenvalues descending.

    On CPUs LAPACK's ``syevr`` (through SciPy, when installed) computes only the wanted
    ``k`` pairs -- about twice as fast as the full ``eigh`` for k <= n/4, same accuracy.
    """
    n = g.shape[0]
    sp = _scipy() if g.device.type == "cpu" and k < n // 2 else None
    if sp is not None:
        vals, vecs = sp.eigh(
            g.numpy(), lower=lower, subset_by_index=[n - k, n - 1], driver="evr", check_finite=False
        )
        return torch.from_numpy(vals).flip(0), torch.from_numpy(vecs).flip(1)
    vals, vecs = full_eigh(g, lower)
    return vals.flip(0)[:k], vecs.flip(1)[:, :k]


def full_eigh(g: torch.Tensor, lower: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All eigenpairs of the symmetric ``g`` (read from one triangle), eigenvalues ascending.

    On CPUs LAPACK's divide-and-conquer ``syevd`` through SciPy: at width 768 about 15%
    faster than ``torch.linalg.eigh`` with this machine's MKL; elsewhere torch.
    """
    sp = _scipy() if g.device.type == "cpu" else None
    if sp is not None:
        vals, vecs = sp.eigh(g.numpy(), lower=lower, driver="evd", check_finite=False)
        return torch.from_numpy(vals), torch.from_numpy(vecs)
    return torch.linalg.eigh(g, UPLO="L" if lower else "U")


def gram_top_k_svd(a: torch.Tensor, k: int, eig: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Top-k SVD through ``eigh`` of the smaller float64 Gram matrix; ``None`` when it cannot certify the result.

    ``eig`` may pass the top-k eigenpairs (descending) of that Gram matrix when the
    caller computed them already (batched over tasks).
    """
    wide = a.shape[0] < a.shape[1]
    b = (a.mT if wide else a).double()  # tall: m >= n
    vals, v = eig if eig is not None else _top_eigh(gram64_upper(b), k, lower=False)
    if not (vals[0] > 0 and vals[-1] >= GRAM_RCOND * vals[0]):
        return None
    s = vals.sqrt()
    u = (b @ v) / s
    defect = (u.mT @ u - torch.eye(k, dtype=u.dtype, device=u.device)).abs().max()
    if not defect <= GRAM_ORTHO_TOL:
        return None
    if wide:
        u, v = v, u
    return u.to(a.dtype), s.to(a.dtype), v.mT.to(a.dtype)


def top_k_svd_and_complement(a: torch.Tensor, k: int):
    """``(U_k, S_k, Vh_k, Q)`` for a wide or square ``a`` (m <= n), ``Q`` (m x (m-k)) an orthonormal basis of
    the complement of ``span(U_k)``; ``None`` when the Gram route cannot certify it (caller: dense SVD).

    One full float64 ``eigh`` of ``a a^T`` gives both, exactly complementary, so Iso-CTS can take each
    task's residual ``(I - U_k U_k^T) tau = Q (Q^T tau)`` in the small (m-k)-dimensional complement.
    Same checks as :func:`gram_top_k_svd`.
    """
    m, n = a.shape
    if m > n or not 0 < k < m:
        return None
    b = a.mT.double()  # n x m, tall: its Gram b^T b = a a^T
    vals, vecs = full_eigh(gram64_upper(b), lower=False)  # ascending
    top = gram_top_k_svd(b, k, eig=(vals.flip(0)[:k], vecs.flip(1)[:, :k]))  # of b = a^T: (V_k, S_k, U_k^T)
    if top is None:
        return None
    v, s, uh = top
    return uh.mT.to(a.dtype), s.to(a.dtype), v.mT.to(a.dtype), vecs[:, : m - k].to(a.dtype)


def projected_top_k_svd(a: torch.Tensor, basis: torch.Tensor, k: int):
    """Top-``k`` SVD of ``R = (I - Q Q^T) a`` for orthonormal columns ``Q = basis``, as ``(U, S, Vh)``.

    Iso-CTS's task-specific step. The Gram of ``R`` comes from ``a``'s without forming
    ``R``: ``a^T a - W^T W`` with ``W = Q^T a`` for tall ``a`` (one ``k_c x m x n`` product
    instead of two), ``(I - P) a a^T (I - P)`` for wide ``a`` (none). Same checks as
    :func:`gram_top_k_svd` (the cancellation in the subtraction shows up in the
    orthogonality check), else the dense SVD of the formed ``R``, in ``a``'s dtype.
    """
    m, n = a.shape
    k = max(0, min(k, m, n))
    if k == 0:
        return a.new_zeros(m, 0), a.new_zeros(0), a.new_zeros(0, n)
    b, q = a.double(), basis.double()
    if m >= n:
        w = q.mT @ b
        gram_a = gram64_upper(b)  # one triangle is all eigh reads; the diagonal gives the scale below
        vals, v = _top_eigh(gram_a - gram64_upper(w), k, lower=False)
        other = lambda vecs: b @ vecs - q @ (w @ vecs)  # noqa: E731  -- R V
    else:
        gram_a = gram64(b.mT)
        half = gram_a - q @ (q.mT @ gram_a)
        vals, v = _top_eigh(half - (half @ q) @ q.mT, k)
        other = lambda vecs: b.mT @ (vecs - q @ (q.mT @ vecs))  # noqa: E731  -- R^T U
    scale = gram_a.diagonal().max()
    if vals[0] > 0 and vals[-1] >= GRAM_RCOND * scale:
        s = vals.sqrt()
        w_vecs = other(v) / s
        defect = (w_vecs.mT @ w_vecs - torch.eye(k, dtype=w_vecs.dtype, device=w_vecs.device)).abs().max()
        if defect <= GRAM_ORTHO_TOL:
            u, vh = (w_vecs, v.mT) if m >= n else (v, w_vecs.mT)
            return u.to(a.dtype), s.to(a.dtype), vh.to(a.dtype)
    u, s, vh = thin_svd(a - basis @ (basis.mT @ a))
    return u[:, :k], s[:k], vh[:k]


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

    From a float64 ``eigh`` of the small Gram matrix (:func:`gram_polar`; several times
    faster than an SVD on CPUs), else by the dense SVD in ``a``'s dtype, as published.
    """
    route = gram_polar(a)
    if route is not None:
        return route[0].to(a.dtype)
    p, _, qh = thin_svd(a)
    return p @ qh


def isotropic_polar(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean of all min(m, n) singular values of a, polar factor of a)``: Iso-C's two ingredients.

    Both from :func:`gram_polar` when it certifies them; otherwise one dense SVD in ``a``'s dtype.
    """
    route = gram_polar(a)
    if route is not None:
        polar, svals = route
        return svals.mean().to(a.dtype), polar.to(a.dtype)
    u, s, vh = thin_svd(a)
    return s.mean(), u @ vh


def gram_polar(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(polar factor, all min(m, n) singular values)`` of ``a`` in float64 from its Gram matrix, or ``None``.

    ``polar = a (a^T a)^{-1/2}`` from one ``eigh`` of the float64 Gram. Its error in the
    direction of singular value ``S_i`` is about eps64 (S_1 / S_i)^2, so directions with
    ``S_i^2 < POLAR_SPLIT S_1^2`` (the few tiny singular values of a square sum of task
    vectors, say) are not taken from it: their part of the polar factor comes from a dense
    SVD of ``a`` restricted to them, ``Y = (I - U_h U_h^T) a V_t`` (m x p, p small),
    which is as accurate as the dense SVD of ``a``. The result must pass an
    orthogonality check (``max|P^T P - I| <= 1e-9``). ``None`` (caller: dense SVD) when
    it does not, when ``a`` is zero or numerically rank-deficient (its polar factor is
    then not unique: the dense SVD's choice is the published one) or when most
    directions are tiny (a dense SVD is then as cheap).
    """
    wide = a.shape[0] < a.shape[1]
    b = (a.mT if wide else a).double()  # tall: m >= n
    n = b.shape[1]
    if n == 0:
        return None
    vals, vecs = full_eigh(gram64_upper(b), lower=False)  # ascending
    top = vals[-1]
    if not top > 0:
        return None
    if vals[0] >= POLAR_RCOND * top:  # every direction accurate to eps64 cond^2 <= 1e-8: no split, no check
        svals = vals.sqrt()
        polar = _times_inverse_sqrt(b, vecs, svals)
        return (polar.mT if wide else polar), svals
    tail = int((vals < POLAR_SPLIT * top).sum())
    if tail > n // 2:
        return None
    head_s, head_v, tail_v = vals[tail:].sqrt(), vecs[:, tail:], vecs[:, :tail]
    # U_h = b V_h / S_h is never formed: U_h^T y = S_h^-1 V_h^T (b^T y) and U_h c = b (V_h S_h^-1 c)
    y = b @ tail_v
    for _ in range(2):  # twice is enough (Kahan): y must be orthogonal to the head to working accuracy
        coef = (head_v.mT @ (b.mT @ y)) / head_s[:, None]
        y = y - b @ (head_v @ (coef / head_s[:, None]))
    w, tail_s, zh = torch.linalg.svd(y, full_matrices=False)
    if not tail_s[-1] > RANK_RTOL * top.sqrt():
        return None
    polar = _times_inverse_sqrt(b, head_v, head_s) + w @ (zh @ tail_v.mT)
    defect = (gram64_upper(polar) - torch.eye(n, dtype=polar.dtype, device=polar.device)).triu().abs().max()
    if not defect <= GRAM_ORTHO_TOL:
        return None
    svals = torch.cat([tail_s.flip(0), head_s])
    return (polar.mT if wide else polar), svals


def _times_inverse_sqrt(b: torch.Tensor, vecs: torch.Tensor, svals: torch.Tensor) -> torch.Tensor:
    """``b V diag(1/S) V^T``: ``b`` times the inverse square root of its Gram matrix on span(V).

    The symmetric factor is one rank-k product (``dsyrk``, one triangle); on CPUs BLAS
    ``dsymm`` multiplies by it straight from that triangle (mirroring it costs a third of
    the product at width 768).
    """
    factor = (vecs * svals.rsqrt()).mT
    sp = _scipy() if b.device.type == "cpu" else None
    if sp is None:
        return b @ gram64(factor)
    x, bn = gram64_upper(factor).numpy(), b.double().numpy()
    if bn.flags.f_contiguous:  # b is a wide matrix's transpose: BLAS reads it in place
        return torch.from_numpy(sp.blas.dsymm(1.0, x, bn, side=1, lower=0))
    # row-major b: b^T is a Fortran-ordered view, and X b^T is b X transposed
    return torch.from_numpy(sp.blas.dsymm(1.0, x, bn.T, side=0, lower=0).T)


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
    With the Gram route on a GPU the T Gram matrices come from one batched product and
    one batched ``eigh``; on CPUs each from BLAS ``dsyrk`` and LAPACK ``syevr``.
    """
    us, ss, vs = [], [], []
    for delta, triplets in zip(deltas, batched_top_k_svd(deltas, k, solver)):
        u, s, vh = canonical_signs(*triplets)
        us.append(u)
        ss.append(s)
        vs.append(vh.mT)
    return torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)


def batched_top_k_svd(deltas: list[torch.Tensor], k: int, solver: str = "auto") -> list[tuple]:
    """:func:`top_k_svd` of each matrix (all of one shape); on GPUs the Gram products and ``eigh`` batched."""
    if solver not in ("auto", "gram") or not deltas:
        return [top_k_svd(d, k, solver) for d in deltas]
    m, n = deltas[0].shape
    k = max(0, min(k, m, n))
    if k == 0:
        return [top_k_svd(d, k, solver) for d in deltas]
    if not batch_gram_eigh(deltas[0].device):  # per matrix: BLAS syrk, then LAPACK syevr for the k wanted pairs
        eigs = [_top_eigh(gram64_upper(d.mT if m < n else d), k, lower=False) for d in deltas]
    else:  # one batched product and one batched eigh
        stacked = torch.stack([(d.mT if m < n else d) for d in deltas]).double()  # T x tall
        vals, vecs = torch.linalg.eigh(stacked.mT @ stacked)
        del stacked
        eigs = [(v.flip(0)[:k], w.flip(1)[:, :k]) for v, w in zip(vals, vecs)]
    out = []
    for d, eig in zip(deltas, eigs):
        triplets = gram_top_k_svd(d, k, eig=eig)
        out.append(triplets if triplets is not None else top_k_svd(d, k, "full"))
    return out


def batch_gram_eigh(device: torch.device) -> bool:
    """Whether the T Gram matrices are formed and decomposed as one batch on ``device``.

    On GPUs one batched product and one batched ``eigh`` replace T small kernel launches;
    on CPUs LAPACK's ``syevr`` for only the k wanted pairs, matrix by matrix, is cheaper
    (torch's batched ``eigh`` runs the full ``syevd`` per matrix there).
    """
    return device.type != "cpu"


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
