"""Issue 20, the second hardening round: bad inputs outside `merge`'s main path (lora adapters
and replayed LoRA configs, analyze, special files, numbers that overflow or are NaN, deep
folders, missing parent folders). Each class of failure is one `error:` line with exit
status 2 and leaves nothing behind; cases that should work (a 0 x 64 tensor in analyze, a
FIFO config.json) work."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import save_file

from mdamerge.cli import main
from mdamerge.diagnostics.analysis import finite_json
from mdamerge.methods import linalg

from conftest import SHAPES, finetuned_from, random_state, write_hf_folder
from safety_util import one_error, remove_deep_tree, run_merge, tree, write_config

SRC = Path(__file__).resolve().parents[1] / "src"


def run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def refused(root: Path, *args) -> str:
    """The command fails with one error line and changes nothing under ``root``."""
    before = tree(root)
    line = one_error(run(*args))
    assert tree(root) == before
    return line


# -- LoRA adapters ----------------------------------------------------------------------------
def write_adapter(folder: Path, rank: int = 4, module: str = "layers.0.attn", **config) -> Path:
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(len(str(folder)))
    save_file({f"base_model.model.{module}.lora_A.weight": torch.randn(rank, 8, generator=gen),
               f"base_model.model.{module}.lora_B.weight": torch.randn(8, rank, generator=gen)},
              str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 8, "target_modules": ["attn"], **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def lora_inputs(tmp_path):
    base = write_hf_folder(tmp_path / "base", random_state(0, SHAPES))
    return {"root": tmp_path, "base": base, "adapters": [write_adapter(tmp_path / "a0"), write_adapter(tmp_path / "a1")]}


BAD_ADAPTERS = [
    ({"lora_alpha": "sixteen"}, "{cfg}: lora_alpha must be a finite number, got 'sixteen'"),
    ({"lora_alpha": None}, "{cfg}: lora_alpha must be a finite number, got None"),
    ({"alpha_pattern": {"(attn": 4}}, "{cfg}: alpha_pattern key '(attn' is not a valid regular expression "
                                      "(missing ), unterminated subpattern at position 0)"),
    ({"r": 0}, "{cfg}: r must be a positive integer, got 0"),
    ({"r": -4}, "{cfg}: r must be a positive integer, got -4"),
    ({"r": 10**30}, "{a}: module 'layers.0.attn' has rank-4 LoRA factors (lora_A [4, 8]) but adapter_config.json "
                    "declares r = 1000000000000000000000000000000"),
    ({"target_modules": ["mlp"]}, "{a}: module 'layers.0.attn' has LoRA factors but is not among the target_modules "
                                  "['mlp'] of adapter_config.json"),
]


@pytest.mark.parametrize("config, message", BAD_ADAPTERS, ids=[str(c) for c, _ in BAD_ADAPTERS])
def test_bad_adapter_config_values_are_one_line(lora_inputs, config, message):
    root = lora_inputs["root"]
    bad = write_adapter(root / "bad", **config)
    line = refused(root, "lora", lora_inputs["base"], lora_inputs["adapters"][0], bad, "--out", root / "out", "--quiet")
    assert line == "error: " + message.format(cfg=bad / "adapter_config.json", a=bad)


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "malformed {cfg}: expected a JSON object, got list"),
    (b'{"r": \xff}', "adapter config {cfg} is not UTF-8 text (byte 6: invalid start byte)"),
])
def test_adapter_config_that_is_not_a_json_object_is_one_line(lora_inputs, content, message):
    root, adapter = lora_inputs["root"], lora_inputs["adapters"][1]
    (adapter / "adapter_config.json").write_bytes(content)
    line = refused(root, "lora", lora_inputs["base"], *lora_inputs["adapters"], "--out", root / "out")
    assert line == "error: " + message.format(cfg=adapter / "adapter_config.json")


def test_rank_zero_factors_are_one_line(lora_inputs):
    root = lora_inputs["root"]
    bad = write_adapter(root / "bad", rank=0, r=None)
    line = refused(root, "lora", lora_inputs["base"], lora_inputs["adapters"][0], bad, "--out", root / "out")
    assert line == f"error: {bad}: module 'layers.0.attn' has rank-0 LoRA factors (lora_A [0, 8]): no task vector to merge"


def test_adapters_of_different_base_models_are_refused(lora_inputs):
    root = lora_inputs["root"]
    a = write_adapter(root / "x", base_model_name_or_path="org/llama-7b")
    b = write_adapter(root / "y", base_model_name_or_path="org/mistral-7b")
    same = write_adapter(root / "z", base_model_name_or_path="/local/copy/Llama-7B/")  # a local copy is the same base
    line = refused(root, "lora", lora_inputs["base"], a, same, b, "--out", root / "out")
    assert line == (f"error: LoRA adapters of different base models: {a} was trained on 'org/llama-7b', {b} on "
                    "'org/mistral-7b' (base_model_name_or_path in adapter_config.json)")


def test_lora_weights_must_be_finite(lora_inputs):
    root = lora_inputs["root"]
    line = refused(root, "lora", lora_inputs["base"], *lora_inputs["adapters"], "--weights", "nan,1", "--out", root / "out")
    assert line == "error: --weights entry 1 must be a finite number, got nan"


@pytest.mark.parametrize("change, message", [
    ({"weight": "x"}, "models[0].weight must be a number, got 'x'"),
    ({"parameters": [1, 2]}, "'parameters' must be a mapping of method parameters (name: value), got list [1, 2]"),
    ({"seed": "banana"}, "seed must be an integer, got 'banana'"),
])
def test_replayed_lora_config_values_are_checked(lora_inputs, change, message):
    root = lora_inputs["root"]
    assert run("lora", lora_inputs["base"], *lora_inputs["adapters"], "--out", root / "first", "--quiet").exit_code == 0
    cfg = yaml.safe_load((root / "first" / "merge_config.yaml").read_text())
    if "weight" in change:
        cfg["models"][0] = {"path": str(lora_inputs["adapters"][0]), "weight": change["weight"]}
    else:
        cfg.update(change)
    (root / "replay.yaml").write_text(yaml.safe_dump(cfg))
    assert refused(root, "merge", root / "replay.yaml", "--out", root / "again") == "error: " + message


# -- special files ----------------------------------------------------------------------------
def test_a_device_as_the_base_is_one_line_for_every_command(toy_models, lora_inputs, tmp_path):
    message = "error: checkpoint /dev/null is a character device, not a regular file"
    cfg = write_config({"base_dir": "/dev/null", "ft_dirs": toy_models["ft_dirs"]}, tmp_path / "m.yaml")
    assert refused(tmp_path, "merge", cfg, "--out", tmp_path / "o1") == message
    assert refused(tmp_path, "lora", "/dev/null", *lora_inputs["adapters"], "--out", tmp_path / "o2") == message
    models = ",".join(map(str, toy_models["ft_dirs"]))
    assert refused(tmp_path, "analyze", "--base", "/dev/null", "--models", models, "--out", tmp_path / "o3") == message


def cli_subprocess(*args, timeout=60):
    """The real command in a child process: a FIFO that blocks must fail the test, not hang the suite."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mdamerge", *map(str, args), "--quiet"], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name, what", [("model.safetensors", "weight file"), ("model.safetensors.index.json", "index")])
def test_a_fifo_weight_file_or_index_is_refused_without_blocking(toy_models, tmp_path, name, what):
    fifo = toy_models["ft_dirs"][0] / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    proc = cli_subprocess("merge", write_config(toy_models, tmp_path / "m.yaml"), "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {what} {fifo} is a FIFO (named pipe), not a regular file"
    assert not (tmp_path / "out").exists()


def test_fifo_config_files_are_skipped_without_blocking(toy_models, tmp_path):
    for folder in (toy_models["base_dir"], toy_models["ft_dirs"][0]):  # base: copied; fine-tune: read for vocab_size
        (folder / "config.json").unlink()
        os.mkfifo(folder / "config.json")
    proc = cli_subprocess("merge", write_config(toy_models, tmp_path / "m.yaml"), "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == f"warning: not copying {toy_models['base_dir'] / 'config.json'}: it is not a regular file"


def test_fifo_config_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "merge.yaml")
    proc = cli_subprocess("merge", tmp_path / "merge.yaml", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: config {tmp_path / 'merge.yaml'} is a FIFO (named pipe), not a regular file")


def test_index_entry_with_a_nul_byte_is_one_line(toy_models, tmp_path):
    ft = toy_models["ft_dirs"][0]
    (ft / "model.safetensors").rename(ft / "model-00001-of-00001.safetensors")
    (ft / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"head.weight": "model\u0000.safetensors"}}))
    line = refused(tmp_path, "merge", write_config(toy_models, tmp_path / "m.yaml"), "--out", tmp_path / "out")
    assert line == (f"error: malformed index {ft / 'model.safetensors.index.json'}: entry 'head.weight' must name a "
                    "shard file, got 'model\\x00.safetensors'")


@pytest.fixture
def deep_folder(toy_models):
    top = toy_models["base_dir"] / "docs"
    deep = top
    deep.mkdir()
    for _ in range(1100):  # os.walk recursed once per level: RecursionError
        deep = deep / "d"
        deep.mkdir()
    yield top
    remove_deep_tree(top)  # pytest's own clean-up of old tmp folders would hit the recursion limit


def test_deeply_nested_base_folder_is_skipped_below_a_depth(toy_models, tmp_path, deep_folder):
    (deep_folder / "notes.txt").write_text("kept")
    result = run_merge(write_config(toy_models, tmp_path / "m.yaml"), "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "is nested more than 32 folders deep in the base model" in warnings[0]
    assert (tmp_path / "out" / "docs" / "notes.txt").read_text() == "kept"


# -- config values --------------------------------------------------------------------------
def raw_config(toy, tmp_path, method: str, tail: str) -> Path:
    models = "".join(f"  - {p}\n" for p in toy["ft_dirs"][1:])
    path = tmp_path / "m.yaml"
    path.write_text(f"method: {method}\nbase_model: {toy['base_dir']}\nmodels:\n  - path: {toy['ft_dirs'][0]}\n{tail}"
                    f"{models}")
    return path


@pytest.mark.parametrize("method, text, message", [
    ("task_arithmetic", "    weight: " + "9" * 400 + "\n", "models[0].weight must be a finite number, got an integer of 1329 bits"),
    ("task_arithmetic", "    weight: .nan\n", "models[0].weight must be a finite number, got nan"),
    ("ties", "    parameters: {density: .nan}\n", "parameter 'density' must be a finite number, got nan"),
])
def test_overflowing_and_nan_numbers_are_one_line(toy_models, tmp_path, method, text, message):
    assert refused(tmp_path, "merge", raw_config(toy_models, tmp_path, method, text), "--out", tmp_path / "o") == "error: " + message


@pytest.mark.parametrize("parameters, message", [
    ({"rank_fraction": float("nan")}, "parameter 'rank_fraction' must be a finite number, got nan"),
    ({"scaling": 10**400 - 1}, "parameter 'scaling' must be float, got 999999999999999999...9999999999999999999"),
    ([1, 2], "'parameters' must be a mapping of method parameters (name: value), got list [1, 2]"),
    ("scaling", "'parameters' must be a mapping of method parameters (name: value), got str 'scaling'"),
])
def test_bad_parameters_are_one_line(toy_models, tmp_path, parameters, message):
    cfg = write_config(toy_models, tmp_path / "m.yaml", method="tsv", parameters=parameters)
    assert refused(tmp_path, "merge", cfg, "--out", tmp_path / "o") == "error: " + message


def mergekit_config(toy, tmp_path, weights, **extra) -> Path:
    cfg = {"merge_method": "linear", "base_model": str(toy["base_dir"]),
           "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(toy["ft_dirs"], weights)], **extra}
    (tmp_path / "mk.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "mk.yaml"


def test_mergekit_parameters_must_be_a_mapping(toy_models, tmp_path):
    cfg = mergekit_config(toy_models, tmp_path, [1, 1, 1], parameters=[1, 2])
    assert refused(tmp_path, "merge", cfg, "--out", tmp_path / "o") == (
        "error: mergekit config: 1 problem(s): (1) parameters: must be a mapping (name: value), got list [1, 2]")


def test_mergekit_linear_with_weights_summing_to_zero_is_refused(toy_models, tmp_path):
    cfg = mergekit_config(toy_models, tmp_path, [1.0, -1.0])
    line = refused(tmp_path, "merge", cfg, "--out", tmp_path / "o")
    assert line.startswith("error: mergekit config: 1 problem(s): (1) the weights 1.0, -1.0 sum to 0, so normalize: true")


# -- output folders ---------------------------------------------------------------------------
def test_failed_merge_removes_the_parent_folders_it_created(toy_models, tmp_path):
    bad = dict(toy_models["fts"][1])
    bad["head.weight"] = bad["head.weight"].clone()
    bad["head.weight"][0, 0] = float("nan")  # found while merging, after the output folder was started
    save_file(bad, str(toy_models["ft_dirs"][1] / "model.safetensors"))
    line = refused(tmp_path, "merge", write_config(toy_models, tmp_path / "m.yaml"), "--out", tmp_path / "a" / "b" / "out", "--quiet")
    assert line.endswith("contains NaN values") and not (tmp_path / "a").exists()


def test_failed_merge_keeps_parent_folders_that_others_filled(tmp_path):
    from mdamerge.io.writer import AtomicOutputDir

    with pytest.raises(RuntimeError):
        with AtomicOutputDir(tmp_path / "a" / "b" / "out"):
            (tmp_path / "a" / "theirs.txt").write_text("another process wrote here meanwhile")
            raise RuntimeError("merge failed")
    assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a" / "theirs.txt").exists()


# -- analyze ----------------------------------------------------------------------------------
def analyze_args(toy, tmp_path, *extra):
    return ["analyze", "--base", toy["base_dir"], "--models", ",".join(map(str, toy["ft_dirs"])), *extra,
            "--out", tmp_path / "report"]


@pytest.mark.parametrize("flags, message", [
    (["--max-layers", "-3"], "--max-layers must be >= 1, got -3"),
    (["--max-samples", "0"], "--max-samples must be >= 1, got 0"),
    (["--device", "banana"], "unknown device 'banana': expected cpu, cuda, cuda:N, mps or xpu"),
])
def test_analyze_options_are_checked(toy_models, tmp_path, flags, message):
    assert refused(tmp_path, *analyze_args(toy_models, tmp_path, *flags)) == "error: " + message


@pytest.mark.parametrize("tensor, message", [
    (torch.zeros(1, 8), "tensor 'embed.weight' has shape [1, 8], the base has [20, 8]"),  # broadcasts: was accepted
    (torch.zeros(8, 20), "tensor 'embed.weight' has shape [8, 20], the base has [20, 8]"),
    (torch.zeros(20, 8, dtype=torch.int32), "tensor 'embed.weight' is int32, the base's is float32 (not a fine-tune of this base)"),
])
def test_analyze_refuses_a_merged_tensor_unlike_the_base(toy_models, tmp_path, tensor, message):
    merged = dict(toy_models["fts"][0])
    merged["embed.weight"] = tensor
    folder = write_hf_folder(tmp_path / "merged", merged)
    line = refused(tmp_path, *analyze_args(toy_models, tmp_path, "--merged", folder))
    assert line == f"error: model 'merged' ({folder}): " + message


def test_analyze_skips_zero_size_tensors_and_writes_strict_json(tmp_path):
    base = random_state(0, SHAPES)
    base["empty.weight"] = torch.zeros(0, 64)
    toy = {"base_dir": write_hf_folder(tmp_path / "base", base),
           "ft_dirs": [write_hf_folder(tmp_path / f"ft{i}", finetuned_from(base, i + 1)) for i in range(2)]}
    result = run(*analyze_args(toy, tmp_path))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert "empty.weight" not in {layer["name"] for layer in metrics["layers"]}


def test_metrics_json_has_no_bare_nan():
    assert finite_json({"a": [1.0, float("nan")], "b": {"c": float("inf")}, "d": "x"}) == {"a": [1.0, None], "b": {"c": None}, "d": "x"}


def test_analyze_names_the_tensor_whose_svd_fails(toy_models, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(linalg, "_gesvd", fail)
    monkeypatch.setattr(torch.linalg, "svd", fail)
    result = run(*analyze_args(toy_models, tmp_path))  # after its progress line, "task-vector geometry"
    assert result.exit_code == 2 and result.output.splitlines()[-1] == (
        "error: tensor 'embed.weight': linalg.svd: The algorithm failed to converge")
    assert not (tmp_path / "report").exists()


def test_thin_svd_falls_back_to_gesvd_when_gesdd_does_not_converge(monkeypatch):
    a = torch.randn(12, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.linalg.svdvals(a)

    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", fail)
    u, s, vh = linalg.thin_svd(a)
    torch.testing.assert_close(s, expected)
    torch.testing.assert_close((u * s) @ vh, a)
    assert math.isclose(float((u.mT @ u - torch.eye(9, dtype=torch.float64)).abs().max()), 0.0, abs_tol=1e-12)
