"""Linear CKA, task-subspace angles before/after alignment and MDA's sign conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdamerge.diagnostics.alignment_angles import (
    aligned_signs, alignment_angles, cross_task_direction_angles, mda_delta_with_signs, relative_change,
    subspace_angles, summarize,
)
from mdamerge.diagnostics.cka import block_names, cka_by_layer, layer_features, linear_cka, pool_tokens
from mdamerge.errors import MergeError
from mdamerge.methods import get_method
from mdamerge.methods.base import TensorJob


def gen(seed):
    return torch.Generator().manual_seed(seed)


def orthogonal(d, seed):
    return torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen(seed)))[0]


def hsic_cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from the HSIC definition with the centring matrix H (Kornblith et al., eq. 3-4)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


# -- CKA ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, p, q", [(40, 5, 7), (12, 30, 20)])  # feature-space and Gram-space branches
def test_linear_cka_matches_the_hsic_definition(n, p, q):
    x = torch.randn(n, p, dtype=torch.float64, generator=gen(0))
    y = x[:, :min(p, q)].repeat(1, 2)[:, :q] + 0.7 * torch.randn(n, q, dtype=torch.float64, generator=gen(1))
    assert linear_cka(x, y) == pytest.approx(hsic_cka_reference(x.numpy(), y.numpy()), rel=1e-9)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)
    assert 0 < linear_cka(x, y) < 1


def test_linear_cka_is_one_under_orthogonal_maps_scaling_and_shifts_only():
    x = torch.randn(60, 8, dtype=torch.float64, generator=gen(2))
    y = -3.5 * x @ orthogonal(8, 3) + torch.randn(1, 8, dtype=torch.float64, generator=gen(4))
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-12)
    # an anisotropic scaling is not an invariance
    assert linear_cka(x, x * torch.tensor([10.0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.float64)) < 0.9


def test_linear_cka_closed_form_for_orthogonal_columns():
    # X has centred orthogonal columns with variances s_i^2; Y = X's first column:
    # CKA = s_1^4 / (s_1^2 sqrt(sum_i s_i^4)) = s_1^2 / sqrt(sum_i s_i^4)
    n, s = 32, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(n, 4, dtype=torch.float64, generator=gen(5)) - 0)[0]
    basis = torch.linalg.qr(q - q.mean(0, keepdim=True))[0][:, :3]  # orthonormal, then re-centre exactly
    basis = basis - basis.mean(0, keepdim=True)
    basis = torch.linalg.qr(basis)[0]
    x = basis * s
    x = x - x.mean(0, keepdim=True)
    assert (x.T @ x - torch.diag(torch.diag(x.T @ x))).abs().max() < 1e-10
    var = torch.diag(x.T @ x)
    assert linear_cka(x, x[:, :1]) == pytest.approx(float(var[0] / var.square().sum().sqrt()), rel=1e-9)
    # independent (orthogonal) features share nothing
    assert linear_cka(x[:, :1], x[:, 1:2]) == pytest.approx(0.0, abs=1e-12)


def test_linear_cka_errors_and_constant_features():
    with pytest.raises(MergeError, match="same n"):
        linear_cka(torch.ones(3, 2), torch.ones(4, 2))
    assert linear_cka(torch.ones(5, 3), torch.randn(5, 2)) == 0.0


class TwoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(3, 4)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    def forward(self, x):  # x: batch x tokens x 3
        h = self.embed(x)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return h[:, 0]


def test_layer_features_hooks_named_blocks_and_pools():
    torch.manual_seed(0)
    model = TwoBlocks()
    x = torch.randn(10, 5, 3)
    assert block_names(model) == ["layers.0", "layers.1"]
    feats = layer_features(model, x, block_names(model), batch_size=4)
    with torch.no_grad():
        h0 = model.layers[0](model.embed(x))
        h1 = model.layers[1](torch.tanh(h0))  # the hooked module output, before the tanh
    assert set(feats) == {"layers.0", "layers.1", "features"}
    assert torch.allclose(feats["layers.0"], h0[:, 0], atol=1e-6)
    assert torch.allclose(feats["layers.1"], h1[:, 0], atol=1e-6)
    assert torch.allclose(feats["features"], torch.tanh(h1[:, 0]), atol=1e-6)
    mean = layer_features(model, x, ["layers.0"], pool="mean")["layers.0"]
    assert torch.allclose(mean, h0.mean(1), atol=1e-6)
    same = cka_by_layer(feats, feats)
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in same.values())
    with pytest.raises(MergeError, match="no submodule 'nope'"):
        layer_features(model, x, ["nope"])
    with pytest.raises(MergeError, match="unknown pooling"):
        pool_tokens(torch.ones(2, 3, 4), "max")


# -- angles before / after alignment --------------------------------------------------
def test_subspace_angles_do_not_depend_on_the_basis():
    e = torch.eye(6, dtype=torch.float64)
    t = math.radians(30)
    a = torch.stack([e[0], e[1]], 1) @ torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)  # not orthonormal
    b = torch.stack([math.cos(t) * e[0] + math.sin(t) * e[2], e[3]], 1)
    assert torch.allclose(subspace_angles(a, b), torch.tensor([30.0, 90.0], dtype=torch.float64), atol=1e-6)


def low_rank_task_vectors(t, m, n, rank, seed, shared=0.0):
    g = gen(seed)
    common = torch.randn(m, rank, dtype=torch.float64, generator=g)
    out = []
    for _ in range(t):
        left = torch.randn(m, rank, dtype=torch.float64, generator=g) + shared * common
        out.append(left @ torch.randn(rank, n, dtype=torch.float64, generator=g) / math.sqrt(n))
    return out


def test_alignment_angles_orthogonal_after_tsv_and_etf_after_mda():
    t, k, m = 3, 2, 20
    deltas = low_rank_task_vectors(t, m, 12, 4, seed=0, shared=1.5)  # overlapping task subspaces
    stages = alignment_angles(deltas, k)
    before = stages["before"].all_subspace()
    assert len(stages["before"].subspace) == 3 and before.numel() == 3 * k
    assert before.min() < 60  # the shared component makes the task subspaces overlap
    # TSV-M's polar factor makes every block orthogonal to every other (K = 6 <= m = 20)
    assert torch.allclose(stages["tsv"].all_subspace(), torch.full((3 * k,), 90.0), atol=1e-3)
    assert torch.allclose(stages["tsv"].directions, torch.full((k * k * 3,), 90.0), atol=1e-3)
    # MDA: every pair of directions at arccos(-1/(K-1)), hand-computed for K = 6
    etf_angle = math.degrees(math.acos(-1 / 5))
    assert torch.allclose(stages["mda"].directions, torch.full((k * k * 3,), etf_angle), atol=1e-3)
    # ... and the subspaces of two blocks are no longer orthogonal: cos of the first principal angle
    # is k/(K-k) for the block-sum directions (here 2/4), the rest stay at 90
    expected = torch.tensor([math.degrees(math.acos(2 / 4)), 90.0])
    assert torch.allclose(stages["mda"].subspace[(0, 1)], expected, atol=1e-3)
    s = summarize(stages["mda"].directions)
    assert s["count"] == 12 and s["min"] == pytest.approx(etf_angle, abs=1e-3)


def test_cross_task_direction_angles_ignore_within_task_pairs():
    u = torch.eye(4, dtype=torch.float64)[:, [0, 1, 0, 2]]  # task 0: e0, e1; task 1: e0, e2
    angles = cross_task_direction_angles(u, 2, 2).sort().values
    assert torch.allclose(angles, torch.tensor([0.0, 90.0, 90.0, 90.0], dtype=torch.float64), atol=1e-6)


# -- sign conventions -----------------------------------------------------------------
def test_canonical_mode_reproduces_the_registered_mda_method():
    deltas = low_rank_task_vectors(4, 16, 10, 5, seed=1)
    base = torch.zeros(16, 10)
    params = {p.name: p.default for p in get_method("mda").params}
    params["svd_solver"] = "full"
    params["svd_dtype"] = "float64"
    job = TensorJob("w", base, [d.float() for d in deltas], [1.0] * 4, params)
    expected = get_method("mda").merge_tensor(job).double()
    got = mda_delta_with_signs([d.float().double() for d in deltas], min(16, 10) // 4, "canonical")
    assert relative_change(got, expected) < 1e-5


def test_sign_modes_differ_by_the_rank_one_mean_term_only():
    t, m, k = 4, 24, 6
    deltas = low_rank_task_vectors(t, m, m, 8, seed=2)
    canonical = mda_delta_with_signs(deltas, k, "canonical")
    flipped = mda_delta_with_signs(deltas, k, "random", seed=3)
    diff = flipped - canonical
    sv = torch.linalg.svdvals(diff)
    assert sv[0] > 1e-3 and sv[2] < 1e-8 * sv[0]  # a rank-two difference: two rank-one mean terms
    # ||delta|| = ||s||_2 and the mean term sqrt(K/(K-1)) (U 1)(V S 1)^T / K has norm ||s||_2 / sqrt(K-1),
    # so two sign patterns differ by at most 2 / sqrt(K-1) of the delta's norm
    assert canonical.norm() == pytest.approx(float(torch.cat([torch.linalg.svdvals(d)[:k] for d in deltas]).norm()), rel=1e-9)
    assert 0 < relative_change(flipped, canonical) <= 2 / math.sqrt(t * k - 1) + 1e-9
    with pytest.raises(MergeError, match="unknown sign mode"):
        mda_delta_with_signs(deltas, k, "sorted")


def test_aligned_signs_make_mda_independent_of_the_svd_signs():
    t, m, k = 4, 20, 3
    deltas = low_rank_task_vectors(t, m, 15, 5, seed=4, shared=1.0)
    reference = mda_delta_with_signs(deltas, k, "aligned")
    # the aligned delta is the same whatever signs the SVD returned: flip singular pairs at random
    # by negating the task vectors' singular vectors, i.e. compute from sign-randomised triplets
    from mdamerge.diagnostics import alignment_angles as aa

    for seed in range(3):
        g = gen(10 + seed)
        parts = []
        for d in deltas:
            u, s, vh = torch.linalg.svd(d, full_matrices=False)
            signs = torch.randint(0, 2, (k,), generator=g).double() * 2 - 1
            parts.append((u[:, :k] * signs, s[:k], vh[:k] * signs[:, None]))
        u = torch.cat([p[0] for p in parts], 1)
        signs = aligned_signs(u, t, k)
        # within-objective check: no single flip improves the cross-task alignment
        gram = u.mT @ u
        task = torch.arange(t).repeat_interleave(k)
        gram = gram.masked_fill(task[:, None] == task[None, :], 0.0)
        assert bool((signs * (gram @ signs) >= -1e-12).all())
        v = torch.cat([p[2].mT for p in parts], 1) * signs
        u = aa.polar_factor(u * signs)
        v = aa.polar_factor(v)
        delta = aa.rebuild(u @ aa.alignment_operator(t, k, "directions", u.dtype, u.device),
                           torch.cat([p[1] for p in parts]), v)
        assert relative_change(delta, reference) < 1e-9
    # the raw LAPACK signs generally give another delta
    assert relative_change(mda_delta_with_signs(deltas, k, "lapack"), reference) > 1e-6
