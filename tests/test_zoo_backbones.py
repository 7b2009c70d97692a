"""The vision zoo's two backbones (``--backbone small|base``): shapes, cache folders, settings checks, CLI."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
from click.testing import CliRunner

from mdamerge.cli import main
from mdamerge.errors import ConfigError
from mdamerge.evaluation.bench import run_bench
from mdamerge.zoo.build import (
    BACKBONES, Zoo, ZooSettings, backbone_config, default_zoo_dir, vision_recipe, vision_zoo, zoo_for_tasks, zoo_subdir,
)
from mdamerge.zoo.finetune import TrainSettings
from mdamerge.zoo.model import TinyViT, ViTConfig

SUITE = "tiny3"
# CI-sized stand-ins for the two backbones: "base" is twice as wide as "small", as in BACKBONES.
TINY_SMALL = ViTConfig(dim=32, depth=1, heads=2, mlp_dim=64, projection_dim=32)
TINY_BASE = ViTConfig(dim=64, depth=1, heads=4, mlp_dim=128, projection_dim=32)
RECIPE = ZooSettings(
    model=TINY_SMALL, pretrain=TrainSettings(steps=40, batch_size=64, lr=2e-3), pretrain_images=1500,
    finetune=TrainSettings(steps=30, batch_size=32, lr=2e-3), probe_steps=60, max_train=300,
)


def test_small_is_the_zoo_as_it_was_and_base_is_only_wider():
    # the existing caches (docs/results*.md quote this fingerprint) stay valid without a rebuild
    assert backbone_config("small") == ViTConfig() == ZooSettings().model
    assert ZooSettings(model=backbone_config("small")).fingerprint() == ZooSettings().fingerprint() == "0f63da07870a379a"
    small, base = asdict(backbone_config("small")), asdict(backbone_config("base"))
    assert {k for k in small if small[k] != base[k]} == {"dim", "heads", "mlp_dim"}
    assert base["dim"] == 2 * small["dim"] and base["mlp_dim"] == 2 * small["mlp_dim"]
    assert base["dim"] // base["heads"] == small["dim"] // small["heads"]  # same attention head width
    # every weight matrix is 2x2 times larger, so the backbone has about 4x the parameters
    ratio = TinyViT(backbone_config("base")).num_parameters() / TinyViT(backbone_config("small")).num_parameters()
    assert 3.5 < ratio < 4.0
    backbone_config("base").dim = 1  # a copy: the registry is not changed through it
    assert BACKBONES["base"].dim == 384


def test_backbones_and_recipes_live_in_distinct_cache_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("MDAMERGE_CACHE", str(tmp_path))
    assert zoo_subdir() == zoo_subdir("small") == zoo_subdir("small", "additive") == "zoo-additive"
    assert zoo_subdir(recipe="stored") == "zoo" and zoo_subdir("base", "stored") == "zoo-base"
    assert zoo_subdir("base") == "zoo-base-additive"
    assert default_zoo_dir() == tmp_path / "zoo-additive" and default_zoo_dir("base", "stored") == tmp_path / "zoo-base"
    small, base = vision_zoo(), vision_zoo(backbone="base")
    assert (small.root, base.root) == (tmp_path / "zoo-additive", tmp_path / "zoo-base-additive")
    assert (small.backbone, base.backbone) == ("small", "base")
    assert small.settings == vision_recipe("additive")
    assert base.settings == vision_recipe("additive", BACKBONES["base"])  # the same recipe, only the shape differs
    stored = vision_zoo(recipe="stored")
    assert stored.root == tmp_path / "zoo" and stored.settings == ZooSettings()  # the zoo of before, unchanged
    assert zoo_for_tasks("tasks8", cache=tmp_path / "other", backbone="base").root == tmp_path / "other" / "zoo-base-additive"
    assert zoo_for_tasks("tasks8", cache=tmp_path, recipe="stored").root == tmp_path / "zoo"
    assert not any(tmp_path.iterdir())  # opening a zoo writes nothing


def test_vision_recipes_differ_from_the_stored_one_only_in_training_length_and_learning_rate():
    stored, additive = vision_recipe("stored"), vision_recipe("additive")
    assert stored.fingerprint() == ZooSettings().fingerprint()  # docs/results_stored.json's zoo
    assert additive.pretrain.steps > stored.pretrain.steps and additive.finetune.lr < stored.finetune.lr
    differing = {f for f in ZooSettings.__dataclass_fields__ if getattr(stored, f) != getattr(additive, f)}
    assert differing == {"pretrain", "finetune"}
    assert replace(additive.pretrain, steps=stored.pretrain.steps) == stored.pretrain
    assert replace(additive.finetune, lr=stored.finetune.lr) == stored.finetune


def test_a_built_zoo_keeps_its_settings_under_either_recipe(tmp_path):
    Zoo(tmp_path / "zoo-additive", settings=ZooSettings(probe_steps=3))._save_state()
    assert vision_zoo(cache=tmp_path).settings == ZooSettings(probe_steps=3)


def test_unknown_recipe_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown zoo recipe 'addtive' \(did you mean 'additive'\?\); choose from additive, stored"):
        vision_zoo(cache=tmp_path, recipe="addtive")
    with pytest.raises(ConfigError, match="unknown zoo recipe 'addtive'"):
        vision_zoo(root=tmp_path / "somezoo", recipe="addtive")
    with pytest.raises(ConfigError, match=r"the zoo recipe must be a name \(additive, stored\), got \['stored'\]"):
        zoo_subdir(recipe=["stored"])
    message = "error: unknown zoo recipe 'addtive' (did you mean 'additive'?); choose from additive, stored"
    assert_every_zoo_command_refuses(tmp_path, "recipe", "addtive", message)


def assert_every_zoo_command_refuses(tmp_path, key: str, value: str, message: str) -> None:
    """bench, zoo build, eval, analyze (--KEY VALUE) and adapt (KEY: VALUE) each end in ``message``, writing nothing."""
    config = tmp_path / "adapt.yaml"
    config.write_text(f"method: adamerging_task\nsuite: tiny3\n{key}: {value}\n")
    for args in (["bench", "--suite", SUITE, "--cache", str(tmp_path), f"--{key}", value],
                 ["zoo", "build", "--suite", SUITE, "--cache", str(tmp_path), f"--{key}", value],
                 ["eval", str(tmp_path), "--cache", str(tmp_path), f"--{key}", value],
                 ["analyze", "--suite", SUITE, "--cache", str(tmp_path), f"--{key}", value, "--out", str(tmp_path / "r")],
                 ["adapt", str(config), "--out", str(tmp_path / "a")]):
        if args[0] == "bench":  # bench's --recipe runs a Hugging Face recipe
            args = ["--zoo-recipe" if a == "--recipe" else a for a in args]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and result.output.strip().splitlines() == [message], (args, result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapt.yaml"]  # nothing written


def test_unknown_backbone_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown backbone 'bse' \(did you mean 'base'\?\); available: small, base"):
        vision_zoo(cache=tmp_path, backbone="bse")
    with pytest.raises(ConfigError, match="applies to the vision zoo"):
        zoo_for_tasks("text8", cache=tmp_path, backbone="base")
    assert_every_zoo_command_refuses(tmp_path, "backbone", "huge", "error: unknown backbone 'huge'; available: small, base")


def test_a_zoo_of_another_backbone_is_refused_with_both_fingerprints(tmp_path):
    Zoo(tmp_path / "zoo-base", settings=ZooSettings())._save_state()  # small models in base's folder
    expected = ZooSettings(model=BACKBONES["base"]).fingerprint()
    with pytest.raises(ConfigError) as err:
        vision_zoo(cache=tmp_path, backbone="base", recipe="stored")
    msg = str(err.value)
    assert "another backbone than 'base' (model.dim: 192 vs 384; model.heads: 4 vs 8; model.mlp_dim: 384 vs 768" in msg
    assert f"settings fingerprint {ZooSettings().fingerprint()}, expected {expected}" in msg
    # without --backbone the folder is opened as stored, as before the option existed
    tiny = Zoo(tmp_path / "zoo-additive", settings=RECIPE)
    tiny._save_state()
    assert vision_zoo(cache=tmp_path).settings == RECIPE and vision_zoo(cache=tmp_path).backbone is None
    with pytest.raises(ConfigError, match="another backbone than 'small' \\(model.depth: 1 vs 4"):
        vision_zoo(cache=tmp_path, backbone="small")


@pytest.fixture(scope="module")
def two_zoos(tmp_path_factory):
    """A CI-sized small and base zoo in one cache, with BACKBONES pointing at their shapes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setitem(BACKBONES, "small", TINY_SMALL)
    patch.setitem(BACKBONES, "base", TINY_BASE)
    Zoo(cache / zoo_subdir(), settings=RECIPE).build(SUITE, progress=False)
    Zoo(cache / zoo_subdir("base"), settings=replace(RECIPE, model=TINY_BASE)).build(SUITE, progress=False)
    yield cache
    patch.undo()
    torch.set_num_threads(threads)


def test_bench_and_zoo_commands_use_the_named_backbone(two_zoos, tmp_path):
    out = tmp_path / "results"
    runner = CliRunner()
    for backbone in ("small", "base"):
        res = runner.invoke(main, ["bench", "--suite", SUITE, "--cache", str(two_zoos), "--backbone", backbone,
                                   "--methods", "task_arithmetic", "--no-search", "--quiet", "--threads", "1",
                                   "--out", str(out)])
        assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "bench-tiny3-base.json", "bench-tiny3-base.md", "bench-tiny3.json", "bench-tiny3.md"]
    saved = {b: json.loads((out / f"bench-tiny3{s}.json").read_text()) for b, s in (("small", ""), ("base", "-base"))}
    assert saved["base"]["meta"]["zoo"] == str(two_zoos / zoo_subdir("base")) and saved["base"]["meta"]["backbone"] == "base"
    assert saved["small"]["meta"]["zoo"] == str(two_zoos / zoo_subdir()) and saved["small"]["meta"]["backbone"] == "small"
    assert saved["base"]["meta"]["zoo_settings"]["model"]["dim"] == 64
    assert saved["small"]["meta"]["zoo_settings"]["model"]["dim"] == 32
    # each table's fine-tuned row is its own zoo's recorded accuracy
    for backbone, root in (("small", zoo_subdir()), ("base", zoo_subdir("base"))):
        zoo = Zoo(two_zoos / root)
        row = next(r for r in saved[backbone]["rows"] if r["name"] == "fine-tuned")
        assert row["accuracies"] == pytest.approx({t: zoo.individual_accuracy(t) for t in zoo.records}, abs=1e-9)
    listed = runner.invoke(main, ["zoo", "list", "--cache", str(two_zoos), "--backbone", "base"])
    assert listed.exit_code == 0 and f"zoo: {two_zoos / zoo_subdir('base')}" in listed.output
    built = runner.invoke(main, ["zoo", "build", "--suite", SUITE, "--cache", str(two_zoos), "--backbone", "base", "--quiet"])
    assert built.exit_code == 0 and "(3/3 tasks already built)" in built.output


def test_run_bench_python_api_takes_a_backbone(two_zoos, monkeypatch, tmp_path):
    monkeypatch.setenv("MDAMERGE_CACHE", str(two_zoos))
    result = run_bench(SUITE, "average", backbone="base", out_dir=tmp_path, progress=False, threads=1)
    assert result.meta["backbone"] == "base" and result.meta["zoo"] == str(two_zoos / zoo_subdir("base"))
    assert result.file_stem == "bench-tiny3-base" and (tmp_path / "bench-tiny3-base.json").is_file()
    assert not (tmp_path / "bench-tiny3.json").exists()
