"""Each method against an independent reference computation written here."""

from __future__ import annotations

import math

import pytest
import torch

import mdamerge
from mdamerge.methods.dare import dare_mask, stable_seed

SHAPES = [(12, 12), (20, 9), (7, 15), (5, 40)]  # square, tall, wide, m < T*k-sized blocks


def make(shape, num_tasks=3, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen, dtype=dtype)
    fts = [base + 0.1 * torch.randn(shape, generator=gen, dtype=dtype) for _ in range(num_tasks)]
    return base, fts


def run(method, base, fts, **params):
    out = mdamerge.merge_state_dicts({"w": base.float()}, [{"w": f.float()} for f in fts], method, **params)
    return out["w"].double()


def merged_delta(method, base, fts, **params):
    return run(method, base, fts, **params) - base.float().double()


# ---------------------------------------------------------------- reference implementations
def ref_tsv(taus, alpha=1.0):
    """TSV-M as published: zero-initialised sum_u/sum_s/sum_v filled block by block, SVD-orthogonalised."""
    m, n = taus[0].shape
    T = len(taus)
    k = int(min(m, n) / T)
    sum_u = torch.zeros(m, T * k, dtype=torch.float64)
    sum_s = torch.zeros(T * k, dtype=torch.float64)
    sum_v = torch.zeros(T * k, n, dtype=torch.float64)
    for i, tau in enumerate(taus):
        u, s, v = torch.linalg.svd(tau, full_matrices=False)
        sum_u[:, i * k:(i + 1) * k] = u[:, :k]
        sum_s[i * k:(i + 1) * k] = s[:k]
        sum_v[i * k:(i + 1) * k, :] = v[:k, :]
    uu, _, vu = torch.linalg.svd(sum_u, full_matrices=False)
    uv, _, vv = torch.linalg.svd(sum_v, full_matrices=False)
    return alpha * torch.linalg.multi_dot((uu @ vu, torch.diag(sum_s), uv @ vv))


def ref_iso_c(taus, alpha):
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    return alpha * u @ torch.diag(torch.full_like(s, s.mean())) @ vh


def ref_iso_cts(taus, alpha, frac=0.8):
    m, n = taus[0].shape
    T = len(taus)
    r = min(m, n)
    common = int(r * frac)
    per = round((r - common) / T)
    common = r - per * T
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    U = [u[:, :common]]
    S = [s[:common]]
    V = [vh[:common]]
    for tau in taus:
        resid = tau - u[:, :common] @ u[:, :common].T @ tau
        ut, st, vt = torch.linalg.svd(resid, full_matrices=False)
        U.insert(-1, ut[:, :per])
        S.insert(-1, st[:per])
        V.insert(-1, vt[:per])
    U, S, V = torch.cat(U, 1), torch.cat(S), torch.cat(V, 0)
    pu, _, qu = torch.linalg.svd(U, full_matrices=False)
    pv, _, qv = torch.linalg.svd(V, full_matrices=False)
    return alpha * (pu @ qu) @ torch.diag(torch.full_like(S, S.mean())) @ (pv @ qv)


def ref_ties(taus, density=0.2, lam=0.3, merge="sum"):
    """Whole-model (here: whole-tensor) TIES with FusionBench's kthvalue rule."""
    flat = torch.stack([t.flatten() for t in taus])
    d = flat.shape[1]
    k = d - int(d * density)
    kth = flat.abs().kthvalue(k, dim=1, keepdim=True).values
    trimmed = flat * (flat.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    sel = trimmed * keep
    agg = sel.sum(0) if merge == "sum" else sel.sum(0) / (sel != 0).sum(0).clamp(min=1)
    return lam * agg.reshape(taus[0].shape)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("shape", SHAPES)
def test_average_and_task_arithmetic(shape):
    base, fts = make(shape)
    taus = [f - base for f in fts]
    torch.testing.assert_close(merged_delta("average", base, fts), sum(taus) / 3, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged_delta("task_arithmetic", base, fts), 0.3 * sum(taus), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged_delta("task_arithmetic", base, fts, scaling=0.7), 0.7 * sum(taus), atol=1e-5, rtol=1e-4)


def test_average_is_weighted_mean_of_weights():
    base, fts = make((6, 4))
    out = mdamerge.merge_state_dicts({"w": base.float()}, [{"w": f.float()} for f in fts], "average", weights=[1, 2, 1])
    torch.testing.assert_close(out["w"].double(), (fts[0] + 2 * fts[1] + fts[2]) / 4, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_tsv_matches_published_algorithm(shape):
    base, fts = make(shape)
    taus = [f - base for f in fts]
    got = merged_delta("tsv", base, fts, svd_dtype="float64", svd_solver="full")
    torch.testing.assert_close(got, ref_tsv(taus), atol=1e-5, rtol=1e-4)


def task_like_vector(m, n, gen, decay=0.93):
    """A task vector whose singular values decay geometrically, as fine-tuning updates' do."""
    u = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen, dtype=torch.float64))[0]
    return (u * decay ** torch.arange(min(m, n), dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("num_tasks", [2, 8])
def test_tsv_default_solver_agrees_with_exact(num_tasks):
    gen = torch.Generator().manual_seed(num_tasks)
    base = torch.randn(300, 260, generator=gen, dtype=torch.float64)
    fts = [base + task_like_vector(300, 260, gen) for _ in range(num_tasks)]
    ref = ref_tsv([f.float().double() - base.float().double() for f in fts])  # the float32 inputs it sees
    # the default (float64, Gram route) is exact -- up to the float32 output model
    # (base + delta rounded to float32: ~1e-6 of this delta); 1e-6 on the bare delta in test_svd_exact.py
    got = merged_delta("tsv", base, fts)
    assert (got - ref).norm() / ref.norm() < 1e-5
    # float32 precision (FusionBench's): the polar step amplifies rounding when blocks nearly overlap
    got32 = merged_delta("tsv", base, fts, svd_dtype="float32")
    assert (got32 - ref).norm() / ref.norm() < 5e-3


@pytest.mark.parametrize("shape", SHAPES)
def test_iso_c(shape):
    base, fts = make(shape)
    taus = [f - base for f in fts]
    # default alpha 1.0: FusionBench's iso_c.yaml scaling_factor
    torch.testing.assert_close(merged_delta("iso_c", base, fts), ref_iso_c(taus, 1.0), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(merged_delta("iso_c", base, fts, scaling=1.5), ref_iso_c(taus, 1.5), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_iso_cts(shape):
    base, fts = make(shape)
    taus = [f - base for f in fts]
    got = merged_delta("iso_cts", base, fts, svd_dtype="float64", scaling=1.0)
    torch.testing.assert_close(got, ref_iso_cts(taus, 1.0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("merge_func", ["sum", "mean"])
@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_ties_single_tensor(scope, merge_func):
    base, fts = make((30, 17), seed=4)
    taus = [f - base for f in fts]
    got = merged_delta("ties", base, fts, scope=scope, merge_func=merge_func)
    torch.testing.assert_close(got, ref_ties(taus, merge=merge_func), atol=1e-5, rtol=1e-4)


def test_ties_global_threshold_spans_the_whole_model():
    gen = torch.Generator().manual_seed(7)
    base = {"a": torch.randn(40, 10, generator=gen), "b": torch.randn(33, generator=gen), "c": torch.randn(5, 6, generator=gen)}
    # task vectors of very different magnitude per tensor make global and per-tensor trimming differ
    fts = [{k: v + s * torch.randn(v.shape, generator=gen) for (k, v), s in zip(base.items(), (0.01, 1.0, 0.1))} for _ in range(4)]
    got = mdamerge.merge_state_dicts(base, fts, "ties", density=0.3)
    names = list(base)
    flat_taus = [torch.cat([(ft[n] - base[n]).flatten() for n in names]).double() for ft in fts]
    ref_flat = ref_ties(flat_taus, density=0.3)
    ref = {}
    offset = 0
    for n in names:
        ref[n] = ref_flat[offset:offset + base[n].numel()].reshape(base[n].shape)
        offset += base[n].numel()
    for n in names:
        torch.testing.assert_close((got[n] - base[n]).double(), ref[n], atol=1e-5, rtol=1e-4)
    per_tensor = mdamerge.merge_state_dicts(base, fts, "ties", density=0.3, scope="tensor")
    assert not torch.allclose(per_tensor["a"], got["a"])


def test_ties_zero_sign_follows_the_whole_model_majority_with_global_scope():
    """Trimmed values that cancel exactly: FusionBench gives them the model's majority sign."""
    zero = {"a": torch.zeros(4), "b": torch.zeros(10)}
    tau1 = {"a": torch.tensor([1.0, 1.0, 1.0, 2.0]), "b": -torch.ones(10)}
    tau2 = {"a": torch.tensor([1.0, 1.0, 1.0, -2.0]), "b": -torch.ones(10)}
    # elected signs: tensor a +,+,+,0 (its own majority +); the model: 3 plus, 10 minus -> majority -
    glob = mdamerge.merge_state_dicts(zero, [tau1, tau2], "ties", density=1.0)
    assert float(glob["a"][3]) == pytest.approx(0.3 * -2.0)
    per_tensor = mdamerge.merge_state_dicts(zero, [tau1, tau2], "ties", density=1.0, scope="tensor")
    assert float(per_tensor["a"][3]) == pytest.approx(0.3 * 2.0)
    torch.testing.assert_close(glob["a"][:3], torch.full((3,), 0.6))


def test_ties_global_threshold_is_exact_kth_value():
    from mdamerge.methods.ties import global_trim_thresholds

    gen = torch.Generator().manual_seed(1)
    chunks = [torch.randn(1000, generator=gen) * s for s in (1e-4, 1.0, 30.0)]
    stream = lambda: ((f"t{i}", [c, -2 * c], [1.0, 1.0], {}) for i, c in enumerate(chunks))  # noqa: E731
    thresholds = global_trim_thresholds(stream, 0.2)
    flat = torch.cat(chunks).abs()
    rank = flat.numel() - int(flat.numel() * 0.2)
    assert thresholds[0] == pytest.approx(float(flat.kthvalue(rank).values), rel=0, abs=0)
    assert thresholds[1] == pytest.approx(float((2 * flat).kthvalue(rank).values), rel=0, abs=0)


def test_dare_against_reference_and_seed():
    base, fts = make((25, 11))
    taus = [(f - base).float() for f in fts]
    out = mdamerge.merge_state_dicts({"w": base.float()}, [{"w": f.float()} for f in fts], "dare", seed=5)
    ref = sum(t * dare_mask(t.shape, 0.5, stable_seed(5, "w", i)) / 0.5 for i, t in enumerate(taus)) * 0.3
    torch.testing.assert_close(out["w"] - base.float(), ref, atol=1e-5, rtol=1e-4)
    again = mdamerge.merge_state_dicts({"w": base.float()}, [{"w": f.float()} for f in fts], "dare", seed=5)
    other = mdamerge.merge_state_dicts({"w": base.float()}, [{"w": f.float()} for f in fts], "dare", seed=6)
    assert torch.equal(out["w"], again["w"])
    assert not torch.equal(out["w"], other["w"])


def test_dare_drop_rate_is_respected():
    mask = dare_mask(torch.Size([200_000]), 0.3, 123)
    assert abs(mask.float().mean().item() - 0.7) < 0.01


# ---------------------------------------------------------------- MDA
def ref_mda(taus, side="left", etf_over="directions", polar=True, spectrum="task", alpha=1.0):
    m, n = taus[0].shape
    T = len(taus)
    k = min(m, n) // T
    U, S, V = [], [], []
    for tau in taus:
        u, s, vh = torch.linalg.svd(tau, full_matrices=False)
        u, v = u[:, :k], vh[:k].T
        for i in range(k):  # documented sign convention: largest |entry| of u_i is positive
            if u[u[:, i].abs().argmax(), i] < 0:
                u[:, i], v[:, i] = -u[:, i], -v[:, i]
        U.append(u); S.append(s[:k]); V.append(v)
    U, S, V = torch.cat(U, 1), torch.cat(S), torch.cat(V, 1)
    if polar:
        a, _, b = torch.linalg.svd(U, full_matrices=False); U = a @ b
        a, _, b = torch.linalg.svd(V, full_matrices=False); V = a @ b
    K = T * k
    if etf_over == "directions":
        M = math.sqrt(K / (K - 1)) * (torch.eye(K, dtype=U.dtype) - torch.ones(K, K, dtype=U.dtype) / K)
    else:
        MT = math.sqrt(T / (T - 1)) * (torch.eye(T, dtype=U.dtype) - torch.ones(T, T, dtype=U.dtype) / T)
        M = torch.kron(MT, torch.eye(k, dtype=U.dtype))
    if side in ("left", "both"):
        U = U @ M
    if side in ("right", "both"):
        V = V @ M
    if spectrum == "isotropic":
        S = torch.full_like(S, S.mean())
    return alpha * U @ torch.diag(S) @ V.T


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("side", ["left", "right", "both"])
@pytest.mark.parametrize("etf_over", ["directions", "tasks"])
def test_mda_against_reference(shape, side, etf_over):
    base, fts = make(shape)
    taus = [f - base for f in fts]
    got = merged_delta("mda", base, fts, etf_side=side, etf_over=etf_over, svd_dtype="float64", svd_solver="full")
    torch.testing.assert_close(got, ref_mda(taus, side, etf_over), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("polar,spectrum", [(False, "task"), (True, "isotropic")])
def test_mda_options(polar, spectrum):
    base, fts = make((18, 14))
    taus = [f - base for f in fts]
    got = merged_delta("mda", base, fts, polar=polar, spectrum=spectrum, scaling=0.5, svd_dtype="float64", svd_solver="full")
    torch.testing.assert_close(got, ref_mda(taus, polar=polar, spectrum=spectrum, alpha=0.5), atol=1e-5, rtol=1e-4)


def test_mda_does_not_depend_on_svd_sign_choices(monkeypatch):
    """Flipping the sign of singular pairs (what another LAPACK or a GPU may return) changes nothing."""
    from mdamerge.methods import linalg

    base, fts = make((16, 12))
    expected = merged_delta("mda", base, fts, svd_solver="full")
    original = linalg.top_k_svd

    def flipped(a, k, solver="auto", **kw):
        u, s, vh = original(a, k, solver, **kw)
        signs = torch.tensor([(-1.0) ** i for i in range(u.shape[1])], dtype=u.dtype)
        return u * signs, s, vh * signs[:, None]

    monkeypatch.setattr(linalg, "top_k_svd", flipped)
    torch.testing.assert_close(merged_delta("mda", base, fts, svd_solver="full"), expected, atol=1e-6, rtol=1e-5)


def test_mda_rank_fraction_with_more_directions_than_rows():
    base, fts = make((6, 30), num_tasks=3)  # k = 0.5*6 = 3 per task -> K = 9 > m = 6
    got = merged_delta("mda", base, fts, rank_fraction=0.5)
    assert got.shape == (6, 30) and torch.isfinite(got).all()


def test_etf_step_gives_equiangular_unit_directions():
    from mdamerge.methods.linalg import etf_gram_operator, polar_factor

    gen = torch.Generator().manual_seed(3)
    for m, K in [(30, 12), (16, 16), (9, 5)]:
        U = polar_factor(torch.randn(m, K, generator=gen, dtype=torch.float64))
        aligned = U @ etf_gram_operator(K, dtype=torch.float64)
        norms = aligned.norm(dim=0)
        torch.testing.assert_close(norms, torch.ones(K, dtype=torch.float64))
        cos = (aligned.T @ aligned) / torch.outer(norms, norms)
        off = cos[~torch.eye(K, dtype=torch.bool)]
        torch.testing.assert_close(off, torch.full_like(off, -1 / (K - 1)))
        # the frame lies in the original subspace and spans K-1 dimensions of it
        torch.testing.assert_close(U @ (U.T @ aligned), aligned)
        assert torch.linalg.matrix_rank(aligned).item() == K - 1


def test_simplex_etf_prototypes():
    from mdamerge.methods.linalg import simplex_etf

    for C, d in [(10, 32), (10, 9), (2, 5)]:
        E = simplex_etf(C, d, torch.Generator().manual_seed(0)).double()
        assert E.shape == (C, d)
        torch.testing.assert_close(E.norm(dim=1), torch.ones(C, dtype=torch.float64), atol=1e-6, rtol=0)
        g = E @ E.T
        off = g[~torch.eye(C, dtype=torch.bool)]
        torch.testing.assert_close(off, torch.full_like(off, -1 / (C - 1)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="dimension"):
        simplex_etf(10, 5)


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts", "mda"])
def test_svd_methods_use_mean_task_vector_for_non_2d(method):
    gen = torch.Generator().manual_seed(0)
    base = {"b": torch.randn(7, generator=gen), "c": torch.randn(2, 3, 4, generator=gen)}
    fts = [{k: v + torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(3)]
    scaling = mdamerge.get_method(method).defaults()["scaling"]
    out = mdamerge.merge_state_dicts(base, fts, method)
    for name in base:
        expected = base[name] + scaling * sum(f[name] - base[name] for f in fts) / 3
        torch.testing.assert_close(out[name], expected, atol=1e-5, rtol=1e-5)


def test_every_spec_has_its_implementation_and_shares_its_parameters():
    """Names and parameters are declared once, torch-free, in methods/specs.py; the registry
    loads an implementation for each, built from that very spec."""
    from mdamerge.methods import MergeMethod, available_methods, get_method
    from mdamerge.methods.specs import SPECS

    assert available_methods() == sorted(SPECS)
    for name, spec in SPECS.items():
        impl = get_method(name)
        assert impl.name == name and impl.params is spec.params and impl.per_model == spec.per_model
        assert type(impl).merge_tensor is not MergeMethod.merge_tensor  # a real merge, not the abstract one


def test_a_method_registered_at_run_time_can_be_named_in_a_config(monkeypatch):
    from mdamerge.config import MergeConfig
    from mdamerge.methods import MergeMethod, Param, registry

    class Halve(MergeMethod):
        def merge_tensor(self, job):
            return job.params["factor"] * sum(job.deltas)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # unregistered after the test
    registry.register(Halve(name="halve", params=(Param("factor", 0.5, float, "scale of the sum"),)))
    cfg = MergeConfig.from_dict({"method": "halve", "base_model": "b", "models": ["x", "y"], "parameters": {"factor": 2}})
    assert cfg.resolver.resolve("w") == {"factor": 2.0} and isinstance(cfg.method_impl, Halve)
    with pytest.raises(mdamerge.MergeError, match="method 'halve' has no parameter 'factr'"):
        MergeConfig.from_dict({"method": "halve", "base_model": "b", "models": ["x", "y"], "parameters": {"factr": 2}})


@pytest.mark.parametrize("etf_over,num_tasks,k", [("directions", 4, 3), ("tasks", 4, 3), ("directions", 1, 1), ("tasks", 1, 5), ("tasks", 5, 1)])
def test_fast_alignment_equals_the_dense_operator_product(etf_over, num_tasks, k):
    from mdamerge.methods.mda import alignment_operator, apply_alignment

    u = torch.randn(17, num_tasks * k, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dense = u @ alignment_operator(num_tasks, k, etf_over, u.dtype, u.device)
    assert torch.allclose(apply_alignment(u, num_tasks, k, etf_over), dense, atol=1e-12)


@pytest.mark.parametrize("n, density", [(1, 0.5), (7, 0.43), (1000, 0.001), (1000, 0.999), (4099, 0.5), (20000, 0.1)])
def test_magnitude_pruning_keeps_a_stable_descending_sorts_first_k(n, density):
    """Many equal magnitudes (integers 0-49, both signs), so the ties at the threshold are exercised."""
    from mdamerge.methods.gta import magnitude_pruned, threshold_of_top

    gen = torch.Generator().manual_seed(n)
    tau = (torch.randint(0, 50, (n,), generator=gen) * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)).float()
    k = max(1, int(density * n))
    order = torch.sort(tau.abs(), descending=True, stable=True).indices
    want = torch.zeros_like(tau)
    want[order[:k]] = tau[order[:k]]
    assert torch.equal(magnitude_pruned(tau.reshape(1, -1), density), want.reshape(1, -1))
    threshold, above, equal_below = threshold_of_top(tau.abs(), k)
    assert threshold == tau.abs().kthvalue(n - k + 1).values.item()
    assert above == int((tau.abs() > threshold).sum())
    assert equal_below == int((tau.abs() == threshold).sum()) - (k - above)


def test_magnitude_pruning_of_distinct_magnitudes_keeps_exactly_k():
    from mdamerge.methods.gta import magnitude_pruned

    tau = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    pruned = magnitude_pruned(tau, 0.3)
    kept = pruned != 0
    assert int(kept.sum()) == 30_000 and torch.equal(pruned[kept], tau[kept])
    assert tau[kept].abs().min() > tau[~kept].abs().max()


def test_gta_random_mask_keeps_density_of_entries_and_is_seeded():
    from mdamerge.methods.gta import random_mask

    x = torch.zeros(400, 500)
    for density in (0.1, 0.5, 0.9):
        mask = random_mask(x, density, seed=7)
        n = x.numel()
        assert mask.dtype == torch.bool and abs(mask.sum().item() - density * n) < 5 * (n * density * (1 - density)) ** 0.5
        assert torch.equal(mask, random_mask(x, density, seed=7)) and not torch.equal(mask, random_mask(x, density, seed=8))
