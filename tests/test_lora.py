"""LoRA adapter merging: low-rank SVD methods against dense reference formulas, dense methods
against the engine, the adapter output, adapter parsing rules and errors.

Adapters here are written by hand (PEFT's file layout) so every factor is known;
tests/test_lora_peft.py checks the same paths with adapters made by peft itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import mdamerge
from mdamerge.cli import main
from mdamerge.errors import CheckpointError, ConfigError, MergeError
from mdamerge.lora import LoraAdapter, factored_svd, merge_lora

SHAPES = {"layers.0.attn.weight": (64, 48), "layers.0.mlp.weight": (96, 64), "layers.1.attn.weight": (64, 48)}
RANK = 6


# -- fixtures ------------------------------------------------------------------------
def write_base(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    state["position_ids"] = torch.arange(7)
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "toy"}))
    (folder / "tokenizer.json").write_text("{}")
    return state


def write_adapter(folder: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float = 12.0,
                  extra: dict[str, torch.Tensor] | None = None, **config) -> Path:
    """A PEFT-layout adapter: factors maps module -> (lora_A r x in, lora_B out x r)."""
    folder.mkdir(parents=True)
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.contiguous()
    for name, t in (extra or {}).items():
        tensors[f"base_model.model.{name}"] = t
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    rank = next(iter(factors.values()))[0].shape[0] if factors else 1
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": sorted({m.split(".")[-1] for m in factors}),
           "fan_in_fan_out": False, "bias": "none", "base_model_name_or_path": None, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def random_factors(seed: int, rank: int = RANK, modules=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in modules or SHAPES:
        m, n = SHAPES[name]
        out[name[: -len(".weight")]] = (torch.randn(rank, n, generator=gen) / math.sqrt(n), torch.randn(m, rank, generator=gen) * 0.1)
    return out


def task_vector(factors, module: str, alpha: float = 12.0) -> torch.Tensor:
    a, b = factors[module]
    return (alpha / a.shape[0]) * (b @ a)


@pytest.fixture
def lora_zoo(tmp_path):
    base = write_base(tmp_path / "base")
    factors = [random_factors(seed) for seed in (1, 2, 3)]
    dirs = [write_adapter(tmp_path / f"adapter{i}", f) for i, f in enumerate(factors)]
    return {"root": tmp_path, "base": base, "factors": factors, "dirs": dirs, "base_dir": tmp_path / "base"}


def merged_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# -- independent dense references -----------------------------------------------------
def svd64(x):
    return torch.linalg.svd(x.double(), full_matrices=False)


def polar(x):
    p, _, qh = svd64(x)
    return p @ qh


def flip(u, vh):
    signs = torch.sign(u[u.abs().argmax(0), torch.arange(u.shape[1])])
    return u * signs, vh * signs[:, None]


def blocks(taus, k):
    """Top-k dense blocks; ``k`` an int or one per task."""
    us, ss, vs = [], [], []
    for tau, k in zip(taus, k if isinstance(k, list) else [k] * len(taus)):
        u, s, vh = svd64(tau)
        u, vh = flip(u[:, :k], vh[:k])
        us.append(u), ss.append(s[:k]), vs.append(vh.T)
    return torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)


def ref_tsv(taus, k):
    u, s, v = blocks(taus, k)
    return polar(u) @ torch.diag(s) @ polar(v).T


def ref_mda(taus, k):
    u, s, v = blocks(taus, k)
    kk = u.shape[1]
    etf = math.sqrt(kk / (kk - 1)) * (torch.eye(kk, dtype=torch.float64) - 1.0 / kk)
    return polar(u) @ etf @ torch.diag(s) @ polar(v).T


def ref_iso_c(taus, rank, alpha=1.0):
    u, s, vh = svd64(sum(taus))
    return alpha * s[:rank].mean() * u[:, :rank] @ vh[:rank]


def ref_iso_cts(taus, rank, alpha=1.0, fraction=0.8):
    per_task = round((rank - int(rank * fraction)) / len(taus))
    k_c = rank - per_task * len(taus)
    u, s, vh = svd64(sum(taus))
    u_c = u[:, :k_c]
    us, ss, vs = [], [], []
    for tau in taus:
        ut, st, vht = svd64(tau.double() - u_c @ (u_c.T @ tau.double()))
        us.append(ut[:, :per_task]), ss.append(st[:per_task]), vs.append(vht[:per_task].T)
    u_all = polar(torch.cat(us + [u_c], 1))
    v_all = polar(torch.cat(vs + [vh[:k_c].T], 1))
    s_all = torch.cat(ss + [s[:k_c]])
    return alpha * s_all.mean() * u_all @ v_all.T


def assert_close(actual, expected, rel=2e-4):
    expected = expected.to(actual.dtype)
    err = (actual - expected).norm() / expected.norm()
    assert err < rel, f"relative error {err:.2e}"


# -- linear algebra -------------------------------------------------------------------
def test_factored_svd_equals_dense_svd():
    gen = torch.Generator().manual_seed(0)
    left, right = torch.randn(50, 5, generator=gen, dtype=torch.float64), torch.randn(5, 30, generator=gen, dtype=torch.float64)
    u, s, vh = factored_svd(left, right)
    _, es, _ = torch.linalg.svd(left @ right)
    torch.testing.assert_close(s, es[:5])
    torch.testing.assert_close((u * s) @ vh, left @ right)
    torch.testing.assert_close(u.T @ u, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(vh @ vh.T, torch.eye(5, dtype=torch.float64))


@pytest.mark.parametrize("method", ["tsv", "mda", "iso_c", "iso_cts"])
def test_svd_methods_never_decompose_a_full_matrix(lora_zoo, tmp_path, monkeypatch, method):
    seen = []
    real_svd = torch.linalg.svd

    def recording_svd(a, *args, **kwargs):
        seen.append(tuple(a.shape))
        return real_svd(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", recording_svd)
    merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "out", method, progress=False)
    assert seen
    # every decomposition is at most (T x rank) wide; the weights are at least 48 wide
    assert max(min(shape) for shape in seen) <= 3 * RANK < 48


# -- low-rank SVD methods vs dense references ------------------------------------------
@pytest.mark.parametrize("method", ["tsv", "mda", "iso_c", "iso_cts"])
def test_low_rank_methods_equal_the_dense_computation(lora_zoo, tmp_path, method):
    merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "out", method,
               parameters={"svd_dtype": "float64"}, progress=False)
    out = merged_weights(tmp_path / "out")
    for name in SHAPES:
        module = name[: -len(".weight")]
        taus = [task_vector(f, module).double() for f in lora_zoo["factors"]]
        k = min(min(SHAPES[name]) // 3, RANK)  # the LoRA variant stops at the adapters' rank
        expected = {"tsv": lambda: ref_tsv(taus, k), "mda": lambda: ref_mda(taus, k),
                    "iso_c": lambda: ref_iso_c(taus, 3 * RANK), "iso_cts": lambda: ref_iso_cts(taus, 3 * RANK)}[method]()
        assert_close(out[name] - lora_zoo["base"][name], expected)
    assert torch.equal(out["position_ids"], lora_zoo["base"]["position_ids"])


@pytest.mark.parametrize("method", ["tsv", "mda"])
def test_each_adapter_keeps_its_own_rank(tmp_path, method):
    """Adapters of rank 4 and 8 on one weight: 4 + 8 = 12 directions, as dense TSV-M / MDA with k_t = min(k, r_t)."""
    base = write_base(tmp_path / "base")
    name = "layers.0.attn.weight"
    module = name[: -len(".weight")]
    factors = [random_factors(1, rank=4, modules=[name]), random_factors(2, rank=8, modules=[name])]
    dirs = [write_adapter(tmp_path / f"a{i}", f) for i, f in enumerate(factors)]
    merge_lora(tmp_path / "base", dirs, tmp_path / "out", method, progress=False)
    delta = merged_weights(tmp_path / "out")[name] - base[name]
    taus = [task_vector(f, module).double() for f in factors]
    ref = ref_tsv(taus, [4, 8]) if method == "tsv" else ref_mda(taus, [4, 8])
    assert_close(delta, ref, rel=1e-5)
    if method == "tsv":  # the merged delta has the rank of both adapters together
        assert int(torch.linalg.matrix_rank(delta.double(), rtol=1e-5)) == 12


def test_low_rank_tsv_equals_the_dense_engine_when_k_is_within_the_rank(lora_zoo, tmp_path):
    # k = floor(0.1 * min(m, n)) = 4 or 6 <= r = 6: the LoRA variant is exactly TSV-M
    merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "out", "tsv", parameters={"rank_fraction": 0.1},
               progress=False)
    out = merged_weights(tmp_path / "out")
    base = {n: lora_zoo["base"][n] for n in SHAPES}
    fts = [{n: base[n] + task_vector(f, n[:-7]) for n in SHAPES} for f in lora_zoo["factors"]]
    dense = mdamerge.merge_state_dicts(base, fts, "tsv", svd_solver="full", rank_fraction=0.1)
    for name in SHAPES:
        assert_close(out[name] - base[name], dense[name] - base[name])


def test_weights_scale_each_task_vector(lora_zoo, tmp_path):
    weights = [1.0, 0.5, 2.0]
    merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "out", "tsv", weights=weights,
               parameters={"svd_dtype": "float64"}, progress=False)
    out = merged_weights(tmp_path / "out")
    name = "layers.0.mlp.weight"
    taus = [w * task_vector(f, name[:-7]).double() for w, f in zip(weights, lora_zoo["factors"])]
    assert_close(out[name] - lora_zoo["base"][name], ref_tsv(taus, RANK))


def test_a_module_only_some_adapters_touch_is_merged_over_those(tmp_path):
    base = write_base(tmp_path / "base")
    factors = [random_factors(1), random_factors(2), random_factors(3, modules=["layers.0.attn.weight"])]
    dirs = [write_adapter(tmp_path / f"a{i}", f) for i, f in enumerate(factors)]
    merge_lora(tmp_path / "base", dirs, tmp_path / "tsv", "tsv", parameters={"svd_dtype": "float64"}, progress=False)
    merge_lora(tmp_path / "base", dirs, tmp_path / "ta", "task_arithmetic", progress=False)
    name = "layers.0.mlp.weight"
    taus = [task_vector(f, name[:-7]).double() for f in factors[:2]]
    assert_close(merged_weights(tmp_path / "tsv")[name] - base[name], ref_tsv(taus, RANK))
    assert_close(merged_weights(tmp_path / "ta")[name] - base[name], 0.3 * sum(taus))


# -- dense methods vs the engine --------------------------------------------------------
@pytest.mark.parametrize("method,params", [("average", {}), ("task_arithmetic", {"scaling": 0.7}),
                                           ("ties", {}), ("ties", {"scope": "tensor", "merge_func": "mean"}),
                                           ("dare", {"drop_rate": 0.3})])
def test_dense_methods_equal_the_engine_on_the_adapted_models(lora_zoo, tmp_path, method, params):
    merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "out", method, parameters=params, seed=5, progress=False)
    out = merged_weights(tmp_path / "out")
    base = lora_zoo["base"]
    fts = [{**base, **{n: base[n] + task_vector(f, n[:-7]) for n in SHAPES}} for f in lora_zoo["factors"]]
    dense = mdamerge.merge_state_dicts(base, fts, method, seed=5, **params)
    for name in SHAPES:
        torch.testing.assert_close(out[name], dense[name], rtol=1e-5, atol=1e-6)


# -- adapter output ------------------------------------------------------------------
# SVD methods and task arithmetic stay within rank T r = 18; TIES trims entries, so its delta is full rank
# (64 > min(64, 48) also checks the zero padding of the smaller weights).
@pytest.mark.parametrize("method,rank", [("tsv", 3 * RANK), ("task_arithmetic", 3 * RANK), ("ties", 64)])
def test_adapter_output_at_full_rank_reproduces_the_merged_model(lora_zoo, tmp_path, method, rank):
    merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "model", method, progress=False)
    result = merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "adapter", method, output="adapter",
                        rank=rank, progress=False)
    assert result.max_truncation_error < 1e-4
    adapter = LoraAdapter(tmp_path / "adapter")
    assert adapter.config["r"] == rank and adapter.config["lora_alpha"] == rank
    model = merged_weights(tmp_path / "model")
    for name in SHAPES:
        left, right = adapter.factors(name)
        assert_close(left @ right, model[name] - lora_zoo["base"][name], rel=1e-4)


def test_adapter_output_is_the_best_rank_r_approximation(lora_zoo, tmp_path):
    merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "model", "tsv", progress=False)
    result = merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "adapter", "tsv", output="adapter",
                        rank=4, progress=False)
    adapter = LoraAdapter(tmp_path / "adapter")
    model = merged_weights(tmp_path / "model")
    for name in SHAPES:
        delta = (model[name] - lora_zoo["base"][name]).double()
        u, s, vh = svd64(delta)
        best = (u[:, :4] * s[:4]) @ vh[:4]
        left, right = adapter.factors(name)
        assert_close(left @ right, best, rel=1e-4)
        rel_err = ((delta - best).norm() / delta.norm()).item()
        assert result.errors[name] == pytest.approx(rel_err, rel=1e-3)
    assert result.rank == 4 and result.max_truncation_error == max(result.errors.values()) > 0


def test_adapter_output_defaults_to_the_largest_input_rank(lora_zoo, tmp_path):
    result = merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "adapter", "mda", output="adapter", progress=False)
    assert result.rank == RANK
    assert set(json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["target_modules"]) == {
        n[:-7] for n in SHAPES}


def test_model_output_is_a_complete_hf_folder(lora_zoo, tmp_path):
    result = merge_lora(lora_zoo["base_dir"], lora_zoo["dirs"], tmp_path / "out", "mda", progress=False)
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "merge_config.yaml", "README.md"} <= files
    assert result.adapted == 3 and result.copied == 1
    assert "mda" in (tmp_path / "out" / "README.md").read_text()


# -- adapter parsing rules --------------------------------------------------------------
def test_scaling_rules_alpha_pattern_and_rslora(tmp_path):
    write_base(tmp_path / "base")
    f = random_factors(4)
    write_adapter(tmp_path / "plain", f, alpha=8)
    write_adapter(tmp_path / "pattern", f, alpha=8, alpha_pattern={"mlp": 2})
    write_adapter(tmp_path / "rslora", f, alpha=8, use_rslora=True)
    for folder, scale_attn, scale_mlp in (("plain", 8 / RANK, 8 / RANK), ("pattern", 8 / RANK, 2 / RANK),
                                          ("rslora", 8 / math.sqrt(RANK), 8 / math.sqrt(RANK))):
        adapter = LoraAdapter(tmp_path / folder)
        for name, scale in (("layers.0.attn.weight", scale_attn), ("layers.0.mlp.weight", scale_mlp)):
            a, b = f[name[:-7]]
            left, right = adapter.factors(name)
            torch.testing.assert_close(left @ right, scale * (b @ a))


def test_fan_in_fan_out_and_embedding_orientation(tmp_path):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 24, generator=gen), torch.randn(16, 3, generator=gen)  # (B A) is 16 x 24; W is 24 x 16
    write_adapter(tmp_path / "conv1d", {"layers.0.attn": (a, b)}, alpha=3, fan_in_fan_out=True)
    adapter = LoraAdapter(tmp_path / "conv1d")
    left, right = adapter.factors("layers.0.attn.weight")
    torch.testing.assert_close(left @ right, (b @ a).T)
    assert adapter.delta_shape("layers.0.attn.weight") == (24, 16)

    (tmp_path / "emb").mkdir()
    emb_a, emb_b = torch.randn(2, 50, generator=gen), torch.randn(8, 2, generator=gen)  # vocab 50, dim 8
    save_file({"base_model.model.embed.lora_embedding_A": emb_a, "base_model.model.embed.lora_embedding_B": emb_b,
               "base_model.model.embed.base_layer.weight": torch.zeros(50, 8)},
              str(tmp_path / "emb" / "adapter_model.safetensors"))
    (tmp_path / "emb" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    adapter = LoraAdapter(tmp_path / "emb")
    assert set(adapter.modules) == {"embed.weight"} and not adapter.full  # the base_layer copy is ignored
    left, right = adapter.factors("embed.weight")
    torch.testing.assert_close(left @ right, 2.0 * (emb_b @ emb_a).T)


def test_full_tensors_saved_with_the_adapter_are_merged_densely(tmp_path):
    base = write_base(tmp_path / "base")
    heads = [base["layers.1.attn.weight"] + 0.1 * torch.randn(64, 48, generator=torch.Generator().manual_seed(s)) for s in (7, 8)]
    modules = ["layers.0.attn.weight", "layers.0.mlp.weight"]
    # current PEFT saves the head under its own name, older versions under modules_to_save.<adapter>
    keys = ["layers.1.attn.weight", "layers.1.attn.modules_to_save.default.weight"]
    dirs = [write_adapter(tmp_path / f"a{i}", random_factors(i, modules=modules), extra={key: h}, modules_to_save=["attn"])
            for i, (key, h) in enumerate(zip(keys, heads))]
    merge_lora(tmp_path / "base", dirs, tmp_path / "out", "task_arithmetic", progress=False)
    out = merged_weights(tmp_path / "out")
    expected = base["layers.1.attn.weight"] + 0.3 * sum(h - base["layers.1.attn.weight"] for h in heads)
    torch.testing.assert_close(out["layers.1.attn.weight"], expected)


# -- errors ------------------------------------------------------------------------
def test_missing_and_malformed_adapters_are_named(lora_zoo, tmp_path):
    base_dir, dirs = lora_zoo["base_dir"], lora_zoo["dirs"]
    with pytest.raises(CheckpointError, match="LoRA adapter not found: .*nowhere"):
        merge_lora(base_dir, [dirs[0], tmp_path / "nowhere"], tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        merge_lora(base_dir, [dirs[0], tmp_path / "empty"], tmp_path / "out", progress=False)
    write_adapter(tmp_path / "dora", random_factors(9), use_dora=True)
    with pytest.raises(CheckpointError, match="DoRA"):
        merge_lora(base_dir, [dirs[0], tmp_path / "dora"], tmp_path / "out", progress=False)
    with pytest.raises(MergeError, match="at least 2 LoRA adapters"):
        merge_lora(base_dir, dirs[:1], tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="output must be one of"):
        merge_lora(base_dir, dirs, tmp_path / "out", output="gguf", progress=False)
    with pytest.raises(ConfigError, match="unknown method 'tvs'.*did you mean 'tsv'"):
        merge_lora(base_dir, dirs, tmp_path / "out", "tvs", progress=False)
    assert not (tmp_path / "out").exists()


def test_adapters_that_do_not_fit_the_base_are_named(lora_zoo, tmp_path):
    gen = torch.Generator().manual_seed(0)
    write_adapter(tmp_path / "other", {"layers.9.attn": (torch.randn(2, 48, generator=gen), torch.randn(64, 2, generator=gen))})
    with pytest.raises(CheckpointError, match=r"other: adapts 'layers\.9\.attn\.weight', which the base model"):
        merge_lora(lora_zoo["base_dir"], [lora_zoo["dirs"][0], tmp_path / "other"], tmp_path / "out", progress=False)
    write_adapter(tmp_path / "shape", {"layers.0.attn": (torch.randn(2, 47, generator=gen), torch.randn(64, 2, generator=gen))})
    with pytest.raises(CheckpointError, match=r"'layers\.0\.attn\.weight' has shape \[64, 47\] but the base's is \[64, 48\]"):
        merge_lora(lora_zoo["base_dir"], [lora_zoo["dirs"][0], tmp_path / "shape"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_non_finite_merge_leaves_no_output(lora_zoo, tmp_path):
    f = random_factors(5)
    f["layers.0.attn"][1][0, 0] = float("nan")
    write_adapter(tmp_path / "nan", f)
    with pytest.raises(CheckpointError, match=r"nan: the LoRA factors of 'layers\.0\.attn\.weight' contain NaN"):
        merge_lora(lora_zoo["base_dir"], [lora_zoo["dirs"][0], tmp_path / "nan"], tmp_path / "out", "task_arithmetic",
                   progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# -- command line ------------------------------------------------------------------
def test_cli_merges_to_model_and_adapter(lora_zoo, tmp_path):
    runner = CliRunner()
    args = ["lora", str(lora_zoo["base_dir"]), *map(str, lora_zoo["dirs"])]
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "m"), "--method", "ties", "--param", "density=0.5",
                                  "--param", "scope=tensor", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "merged 3 adapters into 3 weights with 'ties'" in result.output
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "a"), "--as", "adapter", "--rank", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "rank 3" in result.output and (tmp_path / "a" / "adapter_model.safetensors").exists()
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "x"), "--param", "rank_fractoin=0.1"])
    assert result.exit_code == 2
    assert "error: method 'tsv' has no parameter 'rank_fractoin' (did you mean 'rank_fraction'?)" in result.output
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "x"), "--param", "scaling"])
    assert result.exit_code == 2 and "--param expects NAME=VALUE" in result.output
