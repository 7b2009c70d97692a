"""mergekit configs: translation, mergekit's semantics (against independent reference formulas),
one error listing every problem, and agreement with mergekit itself when it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import mdamerge
from conftest import write_hf_folder
from mdamerge.cli import main
from mdamerge.config import MergeConfig, layer_positions
from mdamerge.errors import ConfigError

NAMES = {
    "model.embed_tokens.weight": (16, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (12, 8),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.up_proj.weight": (12, 8),
    "model.layers.2.self_attn.q_proj.weight": (8, 8),
    "model.layers.2.mlp.up_proj.weight": (12, 8),
    "model.norm.weight": (8,),
}


@pytest.fixture
def llama_like(tmp_path):
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) for n, s in NAMES.items()}
    fts = []
    for t in range(3):
        ft = {n: w + 0.1 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
        fts.append(ft)
    base_dir = write_hf_folder(tmp_path / "base", base)
    dirs = [write_hf_folder(tmp_path / f"ft{t}", sd) for t, sd in enumerate(fts)]
    return {"base": base, "fts": fts, "base_dir": base_dir, "dirs": dirs, "root": tmp_path}


def mk_config(models, method, weights, densities=None, base=None, parameters=None, **extra):
    entries = []
    for i, path in enumerate(models):
        params = {"weight": weights[i]}
        if densities is not None:
            params["density"] = densities[i]
        entries.append({"model": str(path), "parameters": params})
    config = {"merge_method": method, "models": entries, **extra}
    if base is not None:
        config["base_model"] = str(base)
    if parameters:
        config["parameters"] = parameters
    return config


def merged_with(config, out):
    mdamerge.merge(config, out, progress=False)
    return load_file(str(out / "model.safetensors"))


# -- independent references (numpy, written from mergekit's documented algorithm) -------------
def ref_topk(tau: np.ndarray, density: float) -> np.ndarray:
    if density >= 1:
        return tau
    k = max(1, int(density * tau.size))
    flat = tau.reshape(-1)
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(tau.shape)


def ref_ties(base, fts, weights, densities, normalize=True, lam=1.0):
    taus = [ref_topk(ft - base, d) * w for ft, w, d in zip(fts, weights, densities)]
    stacked = np.stack(taus)
    elected = np.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(stacked) == elected
    mixed = (stacked * agree).sum(0)
    if normalize:
        divisor = (np.array(weights).reshape(-1, *[1] * base.ndim) * agree).sum(0)
        mixed = mixed / np.where(divisor == 0, 1.0, divisor)
    return base + lam * mixed


def test_task_arithmetic_follows_mergekits_lambda_default_of_one(llama_like, tmp_path):
    cfg = mk_config(llama_like["dirs"], "task_arithmetic", [1.0, 0.5, 0.8], base=llama_like["base_dir"])
    merged = merged_with(cfg, tmp_path / "ta")
    b, fts = llama_like["base"], llama_like["fts"]
    for name in NAMES:
        want = b[name] + sum(w * (ft[name] - b[name]) for w, ft in zip((1.0, 0.5, 0.8), fts))  # lambda 1, not 0.3
        torch.testing.assert_close(merged[name], want, rtol=1e-6, atol=1e-6)
    cfg["parameters"] = {"lambda": 0.4}
    merged = merged_with(cfg, tmp_path / "ta04")
    name = "model.norm.weight"
    want = b[name] + 0.4 * sum(w * (ft[name] - b[name]) for w, ft in zip((1.0, 0.5, 0.8), fts))
    torch.testing.assert_close(merged[name], want, rtol=1e-6, atol=1e-6)


def test_ties_with_per_model_density_and_weight_matches_the_reference(llama_like, tmp_path):
    weights, densities = [1.0, 0.7, 0.5], [0.2, 0.5, 0.8]
    cfg = mk_config(llama_like["dirs"], "ties", weights, densities, base=llama_like["base_dir"],
                    parameters={"int8_mask": True})
    merged = merged_with(cfg, tmp_path / "ties")
    for name in NAMES:
        b = llama_like["base"][name].numpy().astype(np.float64)
        fts = [ft[name].numpy().astype(np.float64) for ft in llama_like["fts"]]
        np.testing.assert_allclose(merged[name].numpy(), ref_ties(b, fts, weights, densities), rtol=1e-5, atol=1e-6)
    saved = yaml.safe_load((tmp_path / "ties" / "merge_config.yaml").read_text())
    assert saved["method"] == "gta" and [m["parameters"]["density"] for m in saved["models"]] == densities
    # the saved (translated) config replays bit for bit
    again = merged_with(tmp_path / "ties" / "merge_config.yaml", tmp_path / "again")
    assert all(torch.equal(again[n], merged[n]) for n in merged)


def test_filters_and_gradients_resolve_per_tensor_as_mergekit_defines_them(llama_like, tmp_path):
    positions = layer_positions(list(NAMES))
    assert positions["model.layers.0.mlp.up_proj.weight"] == 0.0
    assert positions["model.layers.1.mlp.up_proj.weight"] == 0.5
    assert positions["model.layers.2.self_attn.q_proj.weight"] == 1.0
    assert positions["model.embed_tokens.weight"] == 0.0 and positions["model.norm.weight"] == 0.0
    densities = [[{"filter": "self_attn", "value": [0.2, 0.8]}, {"value": 0.5}], 0.4, [0.9, 0.1]]
    weights = [[1.0, 0.5], 1.0, 0.8]
    cfg = mk_config(llama_like["dirs"], "ties", weights, densities, base=llama_like["base_dir"],
                    parameters={"normalize": False, "lambda": 0.8})
    merged = merged_with(cfg, tmp_path / "grad")
    for name in NAMES:
        t = positions[name]
        d0 = (0.2 + 0.6 * t) if "self_attn" in name else 0.5
        per_model_d = [d0, 0.4, 0.9 + (0.1 - 0.9) * t]
        per_model_w = [1.0 + (0.5 - 1.0) * t, 1.0, 0.8]
        b = llama_like["base"][name].numpy().astype(np.float64)
        fts = [ft[name].numpy().astype(np.float64) for ft in llama_like["fts"]]
        want = ref_ties(b, fts, per_model_w, per_model_d, normalize=False, lam=0.8)
        np.testing.assert_allclose(merged[name].numpy(), want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_breadcrumbs_drops_outliers_and_the_smallest_magnitudes(llama_like, tmp_path):
    cfg = mk_config(llama_like["dirs"], "breadcrumbs_ties", [1.0, 1.0, 0.6], [0.5, 0.7, 0.9], base=llama_like["base_dir"])
    for i, gamma in enumerate((0.01, 0.1, 0.05)):
        cfg["models"][i]["parameters"]["gamma"] = gamma
    merged = merged_with(cfg, tmp_path / "bc")
    name = "model.layers.1.mlp.up_proj.weight"  # 96 entries

    def ref_breadcrumbs(tau, density, gamma):
        n = tau.size
        keep, top = int(density * n), int(gamma * n)
        order = np.argsort(np.abs(tau.reshape(-1)), kind="stable")
        kept = order[max(0, n - keep - top):max(0, n - keep - top) + keep]
        out = np.zeros(n)
        out[kept] = tau.reshape(-1)[kept]
        return out.reshape(tau.shape)

    b = llama_like["base"][name].numpy().astype(np.float64)
    taus = [w * ref_breadcrumbs(ft[name].numpy() - b, d, g) for ft, w, d, g in
            zip(llama_like["fts"], (1.0, 1.0, 0.6), (0.5, 0.7, 0.9), (0.01, 0.1, 0.05))]
    stacked = np.stack(taus)
    agree = np.sign(stacked) == np.where(stacked.sum(0) >= 0, 1.0, -1.0)
    np.testing.assert_allclose(merged[name].numpy(), b + (stacked * agree).sum(0), rtol=1e-5, atol=1e-6)


def test_linear_is_the_normalised_weighted_mean_without_a_base(llama_like, tmp_path):
    cfg = mk_config(llama_like["dirs"], "linear", [0.5, 0.3, 0.2])
    merged = merged_with(cfg, tmp_path / "lin")
    for name in NAMES:
        want = sum(w * ft[name] for w, ft in zip((0.5, 0.3, 0.2), llama_like["fts"])) / 1.0
        torch.testing.assert_close(merged[name], want, rtol=1e-5, atol=1e-6)


def test_linear_without_a_base_reads_each_model_once(llama_like, tmp_path, monkeypatch):
    """The first model serves as the base: one source, so each tensor is read from 3 files, not 4."""
    from mdamerge.engine.sources import CheckpointSource

    reads = []
    original = CheckpointSource.get
    monkeypatch.setattr(CheckpointSource, "get", lambda self, name: reads.append(self.label) or original(self, name))
    merged_with(mk_config(llama_like["dirs"], "linear", [0.5, 0.3, 0.2]), tmp_path / "lin")
    counts = Counter(reads)
    assert sorted(counts) == sorted(str(d) for d in llama_like["dirs"])
    assert len(set(counts.values())) == 1 and counts[str(llama_like["dirs"][0])] >= len(NAMES)  # ft0 not read twice


def test_dare_draws_are_seeded_and_rescale_keeps_the_l1_norm(llama_like, tmp_path):
    from mdamerge.methods.gta import sparsify

    tau = torch.randn(200, 50, generator=torch.Generator().manual_seed(3))
    kept = sparsify(tau, 0.3, "random", rescale=True, seed=11)
    assert 0.25 < float((kept != 0).float().mean()) < 0.35
    torch.testing.assert_close(kept.abs().sum(), tau.abs().sum())
    assert torch.equal(kept, sparsify(tau, 0.3, "random", rescale=True, seed=11))
    assert not torch.equal(kept, sparsify(tau, 0.3, "random", rescale=True, seed=12))
    # density 1: dare_ties is TIES' sign election on the whole task vectors
    cfg = mk_config(llama_like["dirs"], "dare_ties", [1.0, 0.6, 0.8], base=llama_like["base_dir"],
                    parameters={"density": 1.0})
    merged = merged_with(cfg, tmp_path / "dt1")
    name = "model.layers.1.mlp.up_proj.weight"
    b = llama_like["base"][name].numpy().astype(np.float64)
    fts = [ft[name].numpy().astype(np.float64) for ft in llama_like["fts"]]
    np.testing.assert_allclose(merged[name].numpy(), ref_ties(b, fts, [1.0, 0.6, 0.8], [1, 1, 1], normalize=False),
                               rtol=1e-5, atol=1e-6)


def test_every_problem_of_a_mergekit_config_is_listed_at_once(llama_like, tmp_path):
    cfg = {
        "merge_method": "ties",
        "base_model": str(llama_like["base_dir"]),
        "models": [
            {"model": str(llama_like["dirs"][0]), "parameters": {"weight": 1.0, "gamma": 0.1}},
            {"model": str(llama_like["dirs"][1])},  # no weight
            {"model": "org/some-model-on-the-hub", "parameters": {"weight": 1.0}},
        ],
        "parameters": {"lambda": [0.2, 0.5], "densty": 0.5},
        "tokenizer_source": "union",
        "slices": [{"sources": []}],
    }
    path = tmp_path / "mk.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(main, ["merge", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = result.output
    assert "7 problem(s)" in text
    for fragment in ("models[0].parameters.gamma", "breadcrumbs", "has no weight", "parameters: {weight: 1.0}",
                     "org/some-model-on-the-hub", "huggingface-cli download", "parameters.lambda", "parameters.densty",
                     "did you mean 'density'", "tokenizer_source 'union'", "tokenizer_source: base", "'slices'"):
        assert fragment in text, fragment
    assert not (tmp_path / "o").exists()
    # methods mdamerge does not have name their nearest form
    with pytest.raises(ConfigError, match=r"merge_method 'slerp'.*nearest: linear"):
        MergeConfig.from_dict(mk_config(llama_like["dirs"], "slerp", [1, 1, 1], base=llama_like["base_dir"]))
    with pytest.raises(ConfigError, match=r"normalize: false.*nearest: normalize: true"):
        MergeConfig.from_dict(mk_config(llama_like["dirs"], "linear", [1, 1, 1], parameters={"normalize": False}))


def test_relative_model_paths_in_a_mergekit_config_are_the_config_folders(llama_like, tmp_path, monkeypatch):
    cfg = mk_config(["ft0", "ft1", "ft2"], "task_arithmetic", [1, 1, 1], base="base")
    (llama_like["root"] / "mk.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path.parent)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["merge", str(llama_like["root"] / "mk.yaml"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "note: mergekit config: mergekit task_arithmetic -> gta" in result.output


# -- against mergekit itself -------------------------------------------------------------------
def mergekit_yaml() -> str | None:
    return os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml")


@pytest.mark.slow
@pytest.mark.skipif(mergekit_yaml() is None,
                    reason="mergekit not installed (set MERGEKIT_YAML to the mergekit-yaml of its own venv)")
def test_agreement_with_mergekit(tmp_path):
    pytest.importorskip("transformers")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "parity_mergekit.py"
    out = tmp_path / "parity.json"
    proc = subprocess.run([sys.executable, str(script), "--mergekit", mergekit_yaml(), "--out", str(out),
                           "--cases", "task_arithmetic,ties_gradients_filters,dare_ties"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["task_arithmetic"]["rel_diff"] < 1e-6
    assert rows["ties_gradients_filters"]["rel_diff"] < 1e-6
    # random masks: independent draws of the same distribution, within 20% of our seed-to-seed noise
    assert abs(rows["dare_ties"]["rel_diff"] - rows["dare_ties"]["noise"]) < 0.2 * rows["dare_ties"]["noise"]
    zero = rows["dare_ties"]["zero_frac"]
    assert abs(zero["mdamerge"] - zero["mergekit"]) < 0.01 and abs(rows["dare_ties"]["l1_ratio"] - 1) < 0.01


def test_a_broken_mergekit_config_is_reported_before_torch_is_imported(tmp_path):
    (tmp_path / "mk.yaml").write_text(yaml.safe_dump({"merge_method": "slerp", "models": [{"model": "nowhere"}]}))
    code = ("import sys; from click.testing import CliRunner; from mdamerge.cli import main; "
            f"r = CliRunner().invoke(main, ['merge', {str(tmp_path / 'mk.yaml')!r}, '--out', {str(tmp_path / 'o')!r}]); "
            "print(r.exit_code, 'torch' in sys.modules); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    first, rest = out.stdout.split("\n", 1)
    assert first == "2 False", out.stdout + out.stderr
    assert "merge_method 'slerp'" in rest and "'nowhere' is not a local folder" in rest


# -- per-model parameters of mdamerge's own TIES and DARE ----------------------------------------
def test_native_ties_and_dare_take_a_density_or_drop_rate_per_model(llama_like, tmp_path):
    b, fts = llama_like["base"], llama_like["fts"]
    densities = [0.1, 0.5, 0.9]

    def native(method, per_model_key, values, **params):
        return {"method": method, "base_model": str(llama_like["base_dir"]), "parameters": params,
                "models": [{"path": str(p), "parameters": {per_model_key: v}} for p, v in zip(llama_like["dirs"], values)]}

    def fusionbench_trim(x, density):  # |x| >= kthvalue(n - int(n density)) (FusionBench)
        flat = x.abs().reshape(-1)
        rank = flat.numel() - int(flat.numel() * density)
        return x if rank <= 0 else x * (x.abs() >= flat.kthvalue(rank).values)

    def elect_sum(trimmed):
        stacked = torch.stack(trimmed)
        sign = torch.sign(stacked.sum(0))
        sign[sign == 0] = torch.sign(sign.sum())
        return (stacked * torch.where(sign > 0, stacked > 0, stacked < 0)).sum(0)

    merged = merged_with(native("ties", "density", densities, scope="tensor"), tmp_path / "t")
    for name in NAMES:
        trimmed = [fusionbench_trim(ft[name] - b[name], d) for ft, d in zip(fts, densities)]
        torch.testing.assert_close(merged[name], b[name] + 0.3 * elect_sum(trimmed), rtol=1e-5, atol=1e-6)
    merged = merged_with(native("ties", "density", densities, scope="global"), tmp_path / "g")
    flat = [torch.cat([(ft[n] - b[n]).reshape(-1) for n in NAMES]) for ft in fts]
    thresholds = [fusionbench_trim(f, d).abs()[fusionbench_trim(f, d) != 0].min() for f, d in zip(flat, densities)]
    for name in NAMES:
        trimmed = [(ft[name] - b[name]) * ((ft[name] - b[name]).abs() >= th) for ft, th in zip(fts, thresholds)]
        torch.testing.assert_close(merged[name], b[name] + 0.3 * elect_sum(trimmed), rtol=1e-5, atol=1e-6)
    merged = merged_with(native("dare", "drop_rate", [0.0, 0.0, 0.9]), tmp_path / "d")
    name = "model.embed_tokens.weight"
    rest = merged[name] - b[name] - 0.3 * sum(ft[name] - b[name] for ft in fts[:2])
    tau2 = fts[2][name] - b[name]
    kept = rest.abs() > 1e-6
    assert 0.03 < float(kept.float().mean()) < 0.2  # ~10% of 128 entries survive
    torch.testing.assert_close(rest[kept], 0.3 * tau2[kept] / 0.1, rtol=1e-4, atol=1e-5)
