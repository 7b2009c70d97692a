"""Paths a new user walks: analyze on checkpoints without integer buffers, zero task vectors,
configs with relative paths replayed from elsewhere, LoRA merge configs replayed by `merge`."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import mdamerge
from conftest import write_hf_folder
from mdamerge.cli import main
from mdamerge.diagnostics import analyze_task_vectors
from mdamerge.diagnostics.analysis import AnalysisInputs, run_analysis
from mdamerge.diagnostics.plots import representative_layers


# -- analyze ----------------------------------------------------------------------------
def test_analyze_accepts_models_without_the_bases_integer_buffers(toy_models, tmp_path):
    """The base has `position_ids` (int64); fine-tunes saved by another library version do not."""
    stripped = []
    for i, sd in enumerate(toy_models["fts"]):
        state = {n: t for n, t in sd.items() if n != "position_ids"}
        stripped.append(write_hf_folder(tmp_path / f"noids{i}", state))
    runner = CliRunner()
    args = ["analyze", "--base", str(toy_models["base_dir"]), "--out", str(tmp_path / "rep")]
    for folder in stripped:
        args += ["--models", str(folder)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["labels"] == ["noids0", "noids1", "noids2"]
    # merge accepts the same models
    config = {"method": "average", "base_model": str(toy_models["base_dir"]), "models": [str(p) for p in stripped]}
    mdamerge.merge(config, tmp_path / "merged", progress=False)


def _states_with_untouched_layers(seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = {"a.weight": torch.randn(12, 8, generator=gen), "pooler.weight": torch.randn(8, 8, generator=gen),
            "b.weight": torch.randn(10, 8, generator=gen)}
    fts = []
    for t in range(3):
        ft = {n: w + 0.1 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
        ft["pooler.weight"] = base["pooler.weight"].clone()  # no task touches the pooler
        fts.append(ft)
    fts[2]["b.weight"] = base["b.weight"].clone()  # task 2 leaves b untouched
    return base, fts


def test_zero_task_vectors_have_no_principal_angles():
    base, fts = _states_with_untouched_layers()
    report = analyze_task_vectors(base.__getitem__, [f.__getitem__ for f in fts], list(base), ["t0", "t1", "t2"])
    layers = {l.name: l for l in report.layers}
    assert layers["pooler.weight"].angles == {} and layers["pooler.weight"].zero_tasks == [0, 1, 2]
    assert torch.isnan(torch.tensor(layers["pooler.weight"].mean_angle))
    assert set(layers["b.weight"].angles) == {(0, 1)} and layers["b.weight"].zero_tasks == [2]
    assert set(layers["a.weight"].angles) == {(0, 1), (0, 2), (1, 2)}
    # random task vectors in R^12: top-4 subspaces are far from "shared" (0 deg)
    assert float(layers["a.weight"].angles[(0, 1)].min()) > 5.0
    # spectra panels skip layers with a zero task vector
    assert [l.name for l in representative_layers(report.layers, 4)] == ["a.weight"]


def test_analyze_report_with_untouched_layers(tmp_path):
    base, fts = _states_with_untouched_layers()
    base_dir = write_hf_folder(tmp_path / "base", base)
    dirs = [write_hf_folder(tmp_path / f"t{i}", sd) for i, sd in enumerate(fts)]
    metrics = run_analysis(AnalysisInputs(base=base_dir, models=dirs), tmp_path / "rep")
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())  # strict JSON: no NaN
    pooler = next(l for l in saved["layers"] if l["name"] == "pooler.weight")
    assert pooler["mean_angle"] is None and pooler["zero_tasks"] == ["t0", "t1", "t2"]
    assert len(metrics["layers"]) == 3
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "contribute no angles" in md


# -- relative paths ---------------------------------------------------------------------
def test_relative_config_paths_resolve_against_the_config_folder_and_replay_anywhere(toy_models, tmp_path, monkeypatch):
    root = toy_models["root"]
    config = {"method": "task_arithmetic", "base_model": "base", "models": ["ft0", "ft1", {"path": "ft2", "weight": 0.5}]}
    (root / "merge.yaml").write_text(yaml.safe_dump(config))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runner = CliRunner()
    result = runner.invoke(main, ["merge", str(root / "merge.yaml"), "--out", "out", "--quiet"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((elsewhere / "out" / "merge_config.yaml").read_text())
    assert saved["base_model"] == str(root / "base")
    assert [m["path"] for m in saved["models"]] == [str(root / f"ft{i}") for i in range(3)]
    # replay from a third directory, via an absolute path to the saved config
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    result = runner.invoke(main, ["merge", str(elsewhere / "out" / "merge_config.yaml"), "--out", "again", "--quiet"])
    assert result.exit_code == 0, result.output
    first, again = load_file(str(elsewhere / "out" / "model.safetensors")), load_file(str(third / "again" / "model.safetensors"))
    assert all(torch.equal(first[n], again[n]) for n in first)
    want = toy_models["base"]["head.weight"] + 0.3 * sum(
        w * (ft["head.weight"] - toy_models["base"]["head.weight"]) for w, ft in zip((1, 1, 0.5), toy_models["fts"]))
    torch.testing.assert_close(first["head.weight"], want)
    assert (third / "again" / "merge_config.yaml").read_bytes() == (elsewhere / "out" / "merge_config.yaml").read_bytes()


def test_a_relative_path_next_to_the_config_wins_over_the_working_directory(toy_models, tmp_path, monkeypatch):
    root = toy_models["root"]
    decoy = tmp_path / "cwd"
    write_hf_folder(decoy / "base", {n: t + 1 if t.is_floating_point() else t for n, t in toy_models["base"].items()})
    (root / "m.yaml").write_text(yaml.safe_dump({"method": "average", "base_model": "base", "models": ["ft0", "ft1"]}))
    monkeypatch.chdir(decoy)
    cfg = mdamerge.MergeConfig.from_yaml(root / "m.yaml")
    assert cfg.base_model == str(root / "base")
    # without a config file (a dict), relative paths are the working directory's
    cfg = mdamerge.MergeConfig.from_dict({"method": "average", "base_model": "base",
                                          "models": [str(root / "ft0"), str(root / "ft1")]})
    assert cfg.base_model == os.path.join(str(decoy), "base")


# -- LoRA replay --------------------------------------------------------------------------
def test_a_lora_merge_config_replays_with_merge_from_any_directory(tmp_path, monkeypatch):
    from test_lora import random_factors, write_adapter, write_base

    write_base(tmp_path / "base")
    for i, seed in enumerate((1, 2, 3)):
        write_adapter(tmp_path / f"adapter{i}", random_factors(seed))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for output in ("model", "adapter"):
        out = tmp_path / f"lout_{output}"
        result = runner.invoke(main, ["lora", "base", "adapter0", "adapter1", "adapter2", "--method", "ties",
                                      "--param", "density=0.5", "--weights", "1,0.5,1", "--as", output,
                                      "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        card = (out / "README.md").read_text()
        assert "mdamerge merge merge_config.yaml --out DIR" in card
        elsewhere = tmp_path / f"elsewhere_{output}"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        result = runner.invoke(main, ["merge", str(out / "merge_config.yaml"), "--out", "x", "--quiet"])
        assert result.exit_code == 0, result.output
        assert "LoRA merge" in result.output
        weights = "model.safetensors" if output == "model" else "adapter_model.safetensors"
        first, again = load_file(str(out / weights)), load_file(str(elsewhere / "x" / weights))
        assert set(first) == set(again) and all(torch.equal(first[n], again[n]) for n in first)
        assert (elsewhere / "x" / "merge_config.yaml").read_bytes() == (out / "merge_config.yaml").read_bytes()
        monkeypatch.chdir(tmp_path)


def test_a_broken_lora_merge_config_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"method": "tsv", "base_model": "b", "models": ["a", "c"],
                                                     "lora": {"output": "model"}, "exclud": []}))
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown key 'exclud'" in result.output and "exclude" in result.output
    assert not (tmp_path / "o").exists()


def test_flags_a_lora_replay_cannot_honour_are_refused_not_ignored(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"method": "tsv", "base_model": "b", "models": ["a", "c"],
                                                     "lora": {"output": "model"}}))
    for flags, named in ((["--workers", "2"], "--workers"), (["--ray", "local"], "--ray"), (["--prefix", "bert."], "--prefix")):
        result = CliRunner().invoke(main, ["merge", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "o"), *flags])
        assert result.exit_code == 2 and f"error: {named} does not apply to replaying a LoRA merge" in result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


# -- friction --------------------------------------------------------------------------------
def test_top_level_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from mdamerge.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'lora' in r.output and 'analyze' in r.output; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_every_compute_command_takes_threads_and_analyze_takes_cache():
    from mdamerge.cli import FriendlyGroup

    ctx = main.make_context("mdamerge", ["--help"], resilient_parsing=True)
    commands = {name: main.get_command(ctx, name) for name in main.list_commands(ctx)}
    commands["zoo build"] = commands["zoo"].commands["build"]
    for name in ("merge", "lora", "analyze", "adapt", "eval", "bench", "zoo build"):
        assert "threads" in {p.name for p in commands[name].params}, name
    analyze_params = {p.name: p for p in commands["analyze"].params}
    assert "cache" in analyze_params and analyze_params["zoo_root"].hidden
    assert FriendlyGroup.lazy  # the sub-commands are registered lazily


def test_merge_threads_and_adaptive_methods_point_to_adapt(toy_models, tmp_path):
    runner = CliRunner()
    cfg = {"method": "average", "base_model": str(toy_models["base_dir"]), "models": [str(p) for p in toy_models["ft_dirs"]]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    before = torch.get_num_threads()
    try:
        result = runner.invoke(main, ["merge", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "o"), "--threads", "1"])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    cfg["method"] = "adamerging"
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(main, ["merge", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "mdamerge adapt" in result.output and "Traceback" not in result.output
    # adapt with a merge config, eval with a model that is not a zoo backbone: what they support
    result = runner.invoke(main, ["adapt", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "'average' is a data-free method" in result.output
    assert "mdamerge merge" in result.output and "Traceback" not in result.output
    cfg["method"] = "mda_am"
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(main, ["adapt", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "needs a mapping with 'path' and 'data'" in result.output
    result = runner.invoke(main, ["eval", str(toy_models["base_dir"]), "--cache", str(tmp_path / "c")])
    assert result.exit_code == 2 and "is a 'toy' model" in result.output and "TinyViT" in result.output


def test_results_state_the_zoo_training_thread_counts():
    from types import SimpleNamespace

    from mdamerge.evaluation.results import zoo_threads_line

    zoo = SimpleNamespace(pretrain_record={"threads": 1}, records={"a": {"threads": 2}, "b": {"threads": 1}})
    assert "Zoo trained with 1, 2 torch thread(s)" in zoo_threads_line(zoo)
    assert "not recorded" in zoo_threads_line(SimpleNamespace(pretrain_record={}, records={"a": {}}))


def test_zoo_build_logs_one_line_per_stage(tmp_path, monkeypatch):
    """`zoo build --quiet` passes click.echo as the log: a line as each stage starts and ends
    (the training itself is replaced by stand-ins here; tests/test_bench.py trains a real zoo)."""
    from mdamerge.zoo.build import Zoo

    def fake_task(self, task, base, bar, device):
        self._state.setdefault("tasks", {})[task] = {"finetuned": {"test": 0.5}}
        return 2.0

    monkeypatch.setattr(Zoo, "_build_base", lambda self, bar, device: 1.0)
    monkeypatch.setattr(Zoo, "load_backbone", lambda self: None)
    monkeypatch.setattr(Zoo, "_build_task", fake_task)
    lines: list[str] = []
    Zoo(tmp_path / "zoo").build("tiny3", progress=False, threads=1, log=lines.append)
    assert lines[0].startswith("pretraining backbone (") and "1 threads" in lines[0]
    assert lines[1] == "pretrained backbone done in 1 s"
    assert lines[2].startswith("fine-tuning mnist (1/3,") and lines[3] == "mnist done in 2 s (test accuracy 0.500)"
    assert len(lines) == 2 + 2 * 3
