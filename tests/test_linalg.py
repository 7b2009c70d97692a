"""Shared SVD helpers: the randomized top-k SVD is accurate to a tested tolerance."""

from __future__ import annotations

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
