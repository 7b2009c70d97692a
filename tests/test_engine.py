"""End-to-end merges through files: streaming, dtypes, determinism, configs and bad input."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import mdamerge
from mdamerge import CheckpointError, ConfigError, MergeError
from mdamerge.io import Checkpoint

from conftest import SHAPES, finetuned_from, random_state, write_hf_folder


def config_for(toy, method="task_arithmetic", **extra):
    return {"method": method, "base_model": str(toy["base_dir"]), "models": [str(p) for p in toy["ft_dirs"]], **extra}


def weights_digest(folder):
    """Hash of every tensor's name, dtype, shape and bytes, independent of sharding."""
    ckpt = Checkpoint(folder)
    h = hashlib.sha256()
    for name in sorted(ckpt.keys()):
        t = ckpt.get(name)
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def test_merge_writes_a_complete_hf_folder(toy_models, tmp_path):
    result = mdamerge.merge(config_for(toy_models, "mda"), tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "merge_config.yaml", "model.safetensors", "tokenizer.json"]
    assert result.merged == len(SHAPES) and result.copied == 1  # position_ids is integer: copied
    merged = load_file(str(out / "model.safetensors"))
    expected = mdamerge.merge_state_dicts(toy_models["base"], toy_models["fts"], "mda")
    assert set(merged) == set(expected)
    for name in merged:
        assert torch.equal(merged[name], expected[name]), name
    assert torch.equal(merged["position_ids"], toy_models["base"]["position_ids"])
    card = (out / "README.md").read_text()
    assert "mda" in card and str(toy_models["ft_dirs"][0]) in card and "etf_side" in card
    saved = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert saved["parameters"]["etf_side"] == "left" and saved["method"] == "mda"
    # the saved config reproduces the merge exactly
    mdamerge.merge(out / "merge_config.yaml", tmp_path / "again", progress=False)
    assert weights_digest(tmp_path / "again") == weights_digest(out)


@pytest.mark.parametrize("method", mdamerge.available_methods())
def test_sharded_and_unsharded_inputs_give_byte_identical_results(toy_models, tmp_path, method):
    sharded_base = write_hf_folder(tmp_path / "sb", toy_models["base"], shards=3)
    sharded_fts = [write_hf_folder(tmp_path / f"s{i}", sd, shards=2) for i, sd in enumerate(toy_models["fts"])]
    mdamerge.merge(config_for(toy_models, method), tmp_path / "a", progress=False)
    cfg = {"method": method, "base_model": str(sharded_base), "models": [str(p) for p in sharded_fts], "shard_size": 600}
    result = mdamerge.merge(cfg, tmp_path / "b", progress=False)
    assert len(result.shards) > 1 and (tmp_path / "b" / "model.safetensors.index.json").exists()
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dtype_round_trip(tmp_path, dtype):
    base = random_state(0, SHAPES, dtype)
    fts = [finetuned_from(base, s) for s in (1, 2)]
    cfg = {"method": "tsv", "base_model": str(write_hf_folder(tmp_path / "b", base)),
           "models": [str(write_hf_folder(tmp_path / f"f{i}", sd)) for i, sd in enumerate(fts)]}
    mdamerge.merge(cfg, tmp_path / "out", progress=False)
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(t.dtype == dtype for t in merged.values())
    reference = mdamerge.merge_state_dicts({k: v.float() for k, v in base.items()}, [{k: v.float() for k, v in f.items()} for f in fts], "tsv")
    for name, t in merged.items():
        torch.testing.assert_close(t.float(), reference[name].to(dtype).float())
    mdamerge.merge(cfg, tmp_path / "out16", dtype="float16", progress=False)
    assert all(t.dtype == torch.float16 for t in load_file(str(tmp_path / "out16" / "model.safetensors")).values())


def test_dare_is_deterministic_given_seed_and_workers(toy_models, tmp_path):
    mdamerge.merge(config_for(toy_models, "dare", seed=3), tmp_path / "a", progress=False)
    mdamerge.merge(config_for(toy_models, "dare", seed=3, workers=3), tmp_path / "b", progress=False)
    mdamerge.merge(config_for(toy_models, "dare", seed=4), tmp_path / "c", progress=False)
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b") != weights_digest(tmp_path / "c")


def test_exclude_and_per_tensor_parameter_filters(toy_models):
    base, fts = toy_models["base"], toy_models["fts"]
    out = mdamerge.merge_state_dicts(
        base, fts, "task_arithmetic", exclude=["*.bias", "head"],
        parameters={"scaling": [{"filter": "mlp", "value": 1.0}, {"value": 0.5}]},
    )
    assert torch.equal(out["layers.0.mlp.bias"], base["layers.0.mlp.bias"])
    assert torch.equal(out["head.weight"], base["head.weight"])
    for name, scale in (("layers.0.mlp.weight", 1.0), ("layers.0.attn.weight", 0.5)):
        expected = base[name] + scale * sum(f[name] - base[name] for f in fts)
        torch.testing.assert_close(out[name], expected)


def test_model_weights_scale_task_vectors(toy_models):
    base, fts = toy_models["base"], toy_models["fts"]
    out = mdamerge.merge_state_dicts(base, fts, "task_arithmetic", weights=[1.0, 0.0, 2.0], scaling=1.0)
    name = "layers.0.attn.weight"
    torch.testing.assert_close(out[name], base[name] + (fts[0][name] - base[name]) + 2 * (fts[2][name] - base[name]))


def test_vocab_mismatch_rule():
    base = {"emb": torch.randn(10, 4), "w": torch.randn(4, 4)}
    fts = [{"emb": torch.randn(12, 4), "w": torch.randn(4, 4)}, {"emb": torch.randn(9, 4), "w": torch.randn(4, 4)}]
    with pytest.raises(CheckpointError, match="vocab_mismatch: shared"):
        mdamerge.merge_state_dicts(base, fts)
    out = mdamerge.merge_state_dicts(base, fts, vocab_mismatch="shared", scaling=1.0)
    assert out["emb"].shape == (10, 4)
    torch.testing.assert_close(out["emb"][:9], base["emb"][:9] + sum(f["emb"][:9] - base["emb"][:9] for f in fts))
    assert torch.equal(out["emb"][9:], base["emb"][9:])


# ---------------------------------------------------------------- bad input
def _one_line(exc_info):
    assert "\n" not in str(exc_info.value)
    return str(exc_info.value)


def test_missing_model_path(toy_models, tmp_path):
    cfg = config_for(toy_models)
    cfg["models"][1] = str(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="checkpoint not found.*nope") as info:
        mdamerge.merge(cfg, tmp_path / "out", progress=False)
    _one_line(info)
    assert not (tmp_path / "out").exists()


def test_key_sets_that_differ_are_listed(toy_models, tmp_path):
    sd = dict(toy_models["fts"][0])
    sd.pop("head.weight")
    sd["extra.weight"] = torch.zeros(2)
    cfg = config_for(toy_models)
    cfg["models"][0] = str(write_hf_folder(tmp_path / "odd", sd))
    with pytest.raises(CheckpointError, match="missing 1 tensor.*'head.weight'.*not in the base: 'extra.weight'") as info:
        mdamerge.merge(cfg, tmp_path / "out", progress=False)
    _one_line(info)


def test_shape_mismatch_names_tensor_and_shapes(toy_models):
    fts = [dict(f) for f in toy_models["fts"]]
    fts[1]["layers.0.attn.weight"] = torch.zeros(8, 9)
    with pytest.raises(CheckpointError, match=r"'layers.0.attn.weight': base \[8, 8\] vs \[8, 9\] in model 1"):
        mdamerge.merge_state_dicts(toy_models["base"], fts)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_rejected_without_output(toy_models, tmp_path, bad):
    sd = dict(toy_models["fts"][2])
    sd["layers.0.mlp.weight"] = sd["layers.0.mlp.weight"].clone()
    sd["layers.0.mlp.weight"][3, 1] = bad
    cfg = config_for(toy_models)
    cfg["models"][2] = str(write_hf_folder(tmp_path / "nan", sd))
    with pytest.raises(CheckpointError, match="'layers.0.mlp.weight' in .*nan contains (NaN|Inf)"):
        mdamerge.merge(cfg, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft0", "ft1", "ft2", "nan"]


@pytest.mark.parametrize("method, params, weight", [
    ("average", {}, 1.0), ("task_arithmetic", {}, 0.0), ("gta", {}, 0.0),  # dense: only the merged tensor is checked
    ("ties", {}, 1.0), ("gta", {"sparsify": "random", "density": 0.5}, 1.0)])  # masks could hide it: inputs checked
@pytest.mark.parametrize("where", ["base", "model"])
def test_a_non_finite_input_is_named_whether_or_not_the_method_checks_its_inputs(toy_models, tmp_path, method, params,
                                                                                 weight, where):
    """Dense linear merges skip the per-input checks and look for the culprit only when the merged
    tensor is not finite: a NaN still names its file, even under a weight of 0 (0 x NaN is NaN)."""
    sd = dict(toy_models["base"] if where == "base" else toy_models["fts"][2])
    sd["layers.0.mlp.weight"] = sd["layers.0.mlp.weight"].clone()
    sd["layers.0.mlp.weight"][3, 1] = float("nan")
    cfg = config_for(toy_models, method, parameters=params)
    folder = str(write_hf_folder(tmp_path / "nan", sd))
    if where == "base":
        cfg["base_model"] = folder
    else:
        cfg["models"][2] = {"path": folder, "weight": weight}
    with pytest.raises(CheckpointError, match="'layers.0.mlp.weight' in .*nan contains NaN") as info:
        mdamerge.merge(cfg, tmp_path / "out", progress=False)
    _one_line(info)
    assert not (tmp_path / "out").exists()


def test_only_linear_combinations_of_task_vectors_are_merged_by_coefficients():
    from mdamerge.methods import get_method

    assert get_method("average").linear_coefficients({}, [1.0, 3.0]) == [0.25, 0.75]
    assert get_method("task_arithmetic").linear_coefficients({"scaling": 0.5}, [1.0, 2.0]) == [0.5, 1.0]
    gta = get_method("gta")
    dense = {"sparsify": "none", "consensus": "none", "weight": [2.0, 1.0], "normalize": True, "scaling": 3.0}
    assert gta.linear_coefficients(dense, [1.0, 1.0]) == [2.0, 1.0]  # (2, 1) / 3 * 3
    assert gta.linear_coefficients({**dense, "normalize": False}, [1.0, 0.5]) == [6.0, 1.5]
    assert gta.linear_coefficients({**dense, "sparsify": "magnitude"}, [1.0, 1.0]) is None
    assert gta.linear_coefficients({**dense, "consensus": "sum"}, [1.0, 1.0]) is None
    assert not any(get_method(m).linear_coefficients({}, [1.0, 1.0]) for m in ("ties", "dare", "tsv", "mda", "iso_c"))


@pytest.mark.parametrize("method, params", [("average", {}), ("task_arithmetic", {"scaling": 0.7}),
                                            ("gta", {"normalize": True, "weight": 0.3})])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_linear_merge_by_blocks_equals_the_method_on_whole_tensors_bit_for_bit(toy_models, tmp_path, monkeypatch,
                                                                                method, params, dtype):
    """The engine's blocked path (blocks of 5 entries here, so every tensor spans several and ends in a
    partial one) gives the bits of merge_tensor on whole float32 task vectors."""
    import mdamerge.engine.core as core
    from mdamerge.methods import get_method

    monkeypatch.setattr(core, "LINEAR_BLOCK", 5)
    cfg = config_for(toy_models, method, parameters=params, dtype=dtype)
    cfg["models"][1] = {"path": cfg["models"][1], "weight": 0.5}
    out = mdamerge.merge(cfg, tmp_path / "out", progress=False).out_dir
    merged = Checkpoint(out)
    engine_method = get_method(method)
    from mdamerge.config import MergeConfig
    from mdamerge.methods.base import TensorJob

    resolved = MergeConfig.from_dict(cfg).resolver.resolve
    for name in toy_models["base"]:
        base = toy_models["base"][name].float()
        deltas = [ft[name].float() - base for ft in toy_models["fts"]]
        job = TensorJob(name, base, deltas, [1.0, 0.5, 1.0], resolved(name))
        want = (base + engine_method.merge_tensor(job)).to(getattr(torch, dtype))
        assert torch.equal(merged.get(name), want), name


@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_a_base_also_listed_as_a_model_is_read_once_per_tensor(toy_models, tmp_path, monkeypatch, method):
    """One source for the base and the model that names the same folder, on the method path (ties) and the
    linear path alike; its task vector is zero, so the merge equals the one without it."""
    from collections import Counter

    from mdamerge.engine.sources import CheckpointSource

    reads = []
    original = CheckpointSource.get
    monkeypatch.setattr(CheckpointSource, "get",
                        lambda self, name: reads.append((self.label, name)) or original(self, name))
    cfg = config_for(toy_models, method)
    cfg["models"].append(str(toy_models["base_dir"]))
    out = mdamerge.merge(cfg, tmp_path / "with_base", progress=False).out_dir
    merged = {name for label, name in reads if label == cfg["models"][0]}  # copied tensors come from the base alone
    counts = Counter(label for label, name in reads if name in merged)
    assert sorted(counts) == sorted([str(toy_models["base_dir"]), *cfg["models"][:-1]]) and len(set(counts.values())) == 1
    if method == "task_arithmetic":
        without = mdamerge.merge(config_for(toy_models, method), tmp_path / "without", progress=False).out_dir
        assert weights_digest(out) == weights_digest(without)


def test_dtype_kind_mismatch(toy_models):
    fts = [dict(f) for f in toy_models["fts"]]
    fts[0]["layers.0.norm.weight"] = torch.ones(8, dtype=torch.int32)
    with pytest.raises(CheckpointError, match="dtype mismatch for 'layers.0.norm.weight'"):
        mdamerge.merge_state_dicts(toy_models["base"], fts)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"method": "tiess"}, "unknown method 'tiess' \\(did you mean 'ties'\\?\\)"),
        ({"parameters": {"scalling": 0.3}}, "no parameter 'scalling' \\(did you mean 'scaling'\\?\\)"),
        ({"parameters": {"scaling": "big"}}, "'scaling' must be float"),
        ({"method": "ties", "parameters": {"scope": "globl"}}, "must be one of .*did you mean 'global'"),
        ({"method": "ties", "parameters": {"density": 1.5}}, "'density' must be <= 1.0"),
        ({"dtype": "bf61"}, "unknown dtype 'bf61'"),
        ({"seeed": 1}, "unknown config key 'seeed' \\(did you mean 'seed'\\?\\)"),
        ({"models": ["a"]}, "at least 2 fine-tuned models, got 1"),
        ({"models": [{"path": "a", "wieght": 2}, "b"]}, "unknown key 'wieght' in models\\[0\\]"),
        ({"parameters": {"scaling": [{"filter": "x"}]}}, "must be a mapping \\{filter: ..., value: ...\\}"),
    ],
)
def test_config_errors(toy_models, tmp_path, change, message):
    cfg = {**config_for(toy_models), **change}
    with pytest.raises(ConfigError, match=message) as info:
        mdamerge.merge(cfg, tmp_path / "out", progress=False)
    _one_line(info)
    assert not (tmp_path / "out").exists()


def test_yaml_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        mdamerge.MergeConfig.from_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("method: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        mdamerge.MergeConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        mdamerge.MergeConfig.from_yaml(tmp_path / "list.yaml")


def test_relative_paths_resolve_against_config_folder(toy_models, tmp_path, monkeypatch):
    cfg = {"method": "average", "base_model": "base", "models": ["ft0", {"path": "ft1", "weight": 2}]}
    (toy_models["root"] / "merge.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path.parent)
    loaded = mdamerge.MergeConfig.from_yaml(toy_models["root"] / "merge.yaml")
    assert loaded.base_model == str(toy_models["base_dir"]) and loaded.models[1].weight == 2.0


def test_failure_mid_merge_leaves_no_output(toy_models, tmp_path, monkeypatch):
    from mdamerge.methods import get_method

    calls = {"n": 0}
    original = type(get_method("ties")).merge_tensor

    def flaky(self, job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return original(self, job)

    monkeypatch.setattr(type(get_method("ties")), "merge_tensor", flaky)
    outs = tmp_path / "outs"
    outs.mkdir()
    with pytest.raises(RuntimeError, match="disk on fire"):
        mdamerge.merge(config_for(toy_models, "ties"), outs / "out", progress=False)
    assert list(outs.iterdir()) == []


def test_cuda_request_without_gpu_is_a_clear_error(toy_models):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MergeError, match="no CUDA GPU is available"):
        mdamerge.merge_state_dicts(toy_models["base"], toy_models["fts"], device="cuda")


def test_bin_checkpoints_merge_like_safetensors(toy_models, tmp_path):
    torch.save(toy_models["base"], tmp_path / "base.bin")
    for i, sd in enumerate(toy_models["fts"]):
        save_file(sd, str(tmp_path / f"f{i}.safetensors"))
    cfg = {"method": "ties", "base_model": str(tmp_path / "base.bin"), "models": [str(tmp_path / f"f{i}.safetensors") for i in range(3)]}
    mdamerge.merge(cfg, tmp_path / "out", progress=False)
    mdamerge.merge(config_for(toy_models, "ties"), tmp_path / "ref", progress=False)
    assert weights_digest(tmp_path / "out") == weights_digest(tmp_path / "ref")
    assert not (tmp_path / "out" / "config.json").exists()  # a lone file has no config to copy
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["model_type"] == "toy"
