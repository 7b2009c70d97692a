"""Shared SVD helpers: the randomized top-k SVD is accurate to a tested tolerance."""

from __future__ import annotations

import math

import pytest
import torch

from mdamerge.methods.linalg import polar_factor, top_k_svd


def decaying_matrix(m, n, decay, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen))[0]
    v = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen))[0]
    s = torch.tensor([decay**i for i in range(min(m, n))])
    return (u * s) @ v.T


@pytest.mark.parametrize("decay", [0.97, 0.99])
def test_randomized_top_k_matches_exact(decay):
    a = decaying_matrix(400, 300, decay)
    k = 30
    u, s, vh = top_k_svd(a, k, "randomized")
    eu, es, evh = top_k_svd(a, k, "full")
    torch.testing.assert_close(s, es, rtol=1e-4, atol=1e-6)
    # subspaces agree: the projection of the exact top-k onto the randomized one is nearly lossless
    err = (a - (u * s) @ vh).norm() / (a - (eu * es) @ evh).norm()
    assert err < 1.0001


def test_auto_solver_choice_and_shapes():
    a = torch.randn(200, 160)
    for k in (5, 40, 160, 500):
        u, s, vh = top_k_svd(a, k)
        kk = min(k, 160)
        assert u.shape == (200, kk) and s.shape == (kk,) and vh.shape == (kk, 160)


def test_polar_factor_is_closest_orthonormal():
    a = torch.randn(12, 5, dtype=torch.float64)
    q = polar_factor(a)
    torch.testing.assert_close(q.T @ q, torch.eye(5, dtype=torch.float64))
    # q maximises trace(q^T a) among orthonormal frames: compare with random ones
    best = torch.trace(q.T @ a)
    for seed in range(20):
        r = torch.linalg.qr(torch.randn(12, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))[0]
        assert torch.trace(r.T @ a) <= best + 1e-12


@pytest.mark.parametrize("shape", [(300, 80), (80, 300), (40, 40)])
def test_gram_top_k_matches_dense_svd(shape):
    from mdamerge.methods.linalg import gram_top_k_svd

    a = decaying_matrix(*shape, decay=0.95, seed=1)
    k = min(shape) // 3
    u, s, vh = gram_top_k_svd(a, k)
    eu, es, evh = top_k_svd(a, k, "full")
    torch.testing.assert_close(s, es, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close((u * s) @ vh, (eu * es) @ evh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(u.T @ u, torch.eye(k), atol=1e-5, rtol=0)


def test_gram_route_falls_back_on_rank_deficient_input():
    from mdamerge.methods.linalg import gram_top_k_svd

    gen = torch.Generator().manual_seed(0)
    low_rank = torch.randn(50, 3, generator=gen) @ torch.randn(3, 40, generator=gen)
    assert gram_top_k_svd(low_rank, 10) is None  # k exceeds the rank: the Gram route refuses
    u, s, vh = top_k_svd(low_rank, 10, "gram")  # ... and top_k_svd falls back to the dense SVD
    torch.testing.assert_close((u * s) @ vh, low_rank, atol=1e-4, rtol=1e-4)


def test_polar_factor_gram_route_and_fallback_agree_with_svd():
    gen = torch.Generator().manual_seed(2)
    for a in (torch.randn(60, 20, generator=gen), torch.randn(20, 60, generator=gen),
              torch.randn(60, 2, generator=gen) @ torch.randn(2, 20, generator=gen)):  # last: rank 2 -> SVD route
        p, _, qh = torch.linalg.svd(a.double(), full_matrices=False)
        if torch.linalg.matrix_rank(a) == min(a.shape):
            torch.testing.assert_close(polar_factor(a).double(), p @ qh, atol=1e-5, rtol=0)
        else:
            q = polar_factor(a)
            assert q.shape == a.shape and torch.isfinite(q).all()


def test_randomized_route_checks_itself_and_falls_back():
    """On a flat noise tail the raw sketch misses the top-k subspace; top_k_svd('randomized') notices it."""
    from mdamerge.methods.linalg import randomized_svd

    gen = torch.Generator().manual_seed(3)
    a = torch.randn(300, 300, generator=gen, dtype=torch.float64)
    k = 40
    eu, es, evh = torch.linalg.svd(a, full_matrices=False)
    exact = (eu[:, :k] * es[:k]) @ evh[:k]
    u, s, vh = randomized_svd(a, 2 * k + 2, 6)
    raw = (u[:, :k] * s[:k]) @ vh[:k]
    assert (raw - exact).norm() / exact.norm() > 1e-3  # the sketch alone is inexact here
    u, s, vh = top_k_svd(a, k, "randomized")
    assert ((u * s) @ vh - exact).norm() / exact.norm() < 1e-9


def test_gram_route_refuses_when_left_vectors_lose_orthogonality():
    """S_k / S_1 = 2e-5 passes the eigenvalue guard but U = A V / S is not orthonormal to 1e-9: dense SVD instead."""
    from mdamerge.methods.linalg import gram_top_k_svd

    gen = torch.Generator().manual_seed(4)
    u = torch.linalg.qr(torch.randn(80, 10, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(60, 10, generator=gen, dtype=torch.float64))[0]
    s = torch.logspace(0, math.log10(2e-5), 10, dtype=torch.float64)
    a = ((u * s) @ v.T).float()  # float32 rounding ~1e-8 dominates the smallest pairs
    assert gram_top_k_svd(a.double(), 10) is None
    got_u, got_s, got_vh = top_k_svd(a.double(), 10)
    torch.testing.assert_close(got_s, torch.linalg.svdvals(a.double())[:10], rtol=1e-12, atol=0)


def test_routes_without_scipy_give_the_same_result(monkeypatch):
    """SciPy only speeds the Gram routes up (dsyrk, syevr); the torch-only path is equally exact."""
    from mdamerge.methods import linalg

    gen = torch.Generator().manual_seed(5)
    a = decaying_matrix(120, 70, 0.9, seed=5).double() + 1e-3 * torch.randn(120, 70, generator=gen, dtype=torch.float64)
    with_scipy = [linalg.top_k_svd(a, 20), linalg.top_k_svd(a.T, 20)]
    polar_with = linalg.polar_factor(a)
    monkeypatch.setattr(linalg, "_scipy", lambda: None)
    for (u, s, vh), x in zip(with_scipy, (a, a.T)):
        u2, s2, vh2 = linalg.top_k_svd(x, 20)
        torch.testing.assert_close((u2 * s2) @ vh2, (u * s) @ vh, rtol=0, atol=1e-12)
    torch.testing.assert_close(linalg.polar_factor(a), polar_with, rtol=0, atol=1e-12)


def test_merge_worker_threads_take_the_torch_routes_and_agree_with_the_main_thread():
    """SciPy's wrappers hold the GIL, so ``--workers`` threads must not use them; the result is the same."""
    from concurrent.futures import ThreadPoolExecutor

    from mdamerge.methods import linalg

    gen = torch.Generator().manual_seed(6)
    a = decaying_matrix(120, 70, 0.9, seed=6).double() + 1e-3 * torch.randn(120, 70, generator=gen, dtype=torch.float64)
    assert linalg._scipy() is not None
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(linalg._scipy).result() is None
        u, s, vh = pool.submit(linalg.top_k_svd, a, 20).result()
        polar = pool.submit(linalg.polar_factor, a).result()
    u0, s0, vh0 = linalg.top_k_svd(a, 20)
    torch.testing.assert_close((u * s) @ vh, (u0 * s0) @ vh0, rtol=0, atol=1e-12)
    torch.testing.assert_close(polar, linalg.polar_factor(a), rtol=0, atol=1e-12)


def _with_spectrum(m, n, s, seed):
    from test_svd_exact import _spectral  # random orthonormal frames with the spectrum s

    return _spectral(m, n, s, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tiny", [1e-5, 1e-8, 1e-11])
@pytest.mark.parametrize("shape", [(96, 96), (96, 140)])
def test_polar_of_a_matrix_with_a_few_tiny_singular_values(shape, tiny):
    """A square sum of task vectors has a few tiny singular values (cond 1e4-1e6 on a CLIP tower): the
    Gram route takes them from a dense SVD of the matrix restricted to them and keeps every direction exact."""
    from mdamerge.methods import linalg

    r = min(shape)
    s = torch.cat([torch.linspace(1.0, 0.05, r - 3, dtype=torch.float64), torch.tensor([30 * tiny, 3 * tiny, tiny], dtype=torch.float64)])
    a = _with_spectrum(*shape, s, seed=6)
    route = linalg.gram_polar(a)
    assert route is not None, "the Gram route refused a well-separated matrix with three tiny singular values"
    polar, svals = route
    u, ref_s, vh = torch.linalg.svd(a, full_matrices=False)
    # any backward-stable route (the dense SVD too) leaves ~eps64 cond in the tiny directions:
    # 1e-6 overall up to cond 1e8; at cond 1e11 the two routes can only agree to ~1e-5 per tiny direction
    tol = 1e-6 if tiny >= 1e-8 else 1e-4
    assert float((polar - u @ vh).norm() / (u @ vh).norm()) < tol
    torch.testing.assert_close(polar, u @ vh, rtol=0, atol=100 * 2.2e-16 / tiny)
    torch.testing.assert_close(svals.sort().values, ref_s.sort().values, rtol=0, atol=1e-12)
    mean_s, iso = linalg.isotropic_polar(a)
    assert float((mean_s * iso - ref_s.mean() * (u @ vh)).norm() / (ref_s.mean() * (u @ vh)).norm()) < tol


def test_polar_of_a_rank_deficient_matrix_is_the_dense_svds():
    """With exact zero singular values the polar factor is not unique: the published (dense SVD) choice is kept."""
    from mdamerge.methods import linalg

    a = _with_spectrum(64, 64, torch.linspace(1.0, 0.1, 60, dtype=torch.float64), seed=7)  # rank 60 of 64
    a[:, :4] = 0.0  # exact zeros so the Gram has exact zero eigenvalues
    assert linalg.gram_polar(a) is None
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    torch.testing.assert_close(linalg.polar_factor(a), p @ qh, rtol=0, atol=0)
