"""Safety promise 5: config values are type-checked before anything runs -- a list where a
pattern belongs, or a YAML alias bomb, is one line, not a silent no-op or a minutes-long
hang -- and a pattern that matches no tensor is a warning."""

from __future__ import annotations

import time

import pytest
import torch

import mdamerge
from mdamerge.config import MergeConfig, check_expanded_size, read_yaml_file
from mdamerge.errors import ConfigError

from safety_util import one_error, run_merge, write_config


def _config(toy, **extra):
    return {"method": "task_arithmetic", "base_model": str(toy["base_dir"]), "models": [str(p) for p in toy["ft_dirs"]],
            **extra}


@pytest.mark.parametrize("exclude,message", [
    ([["head", "emb"]], "exclude[0] must be a non-empty string pattern, got list ['head', 'emb']"),
    (["head", 3], "exclude[1] must be a non-empty string pattern, got int 3"),
    ([""], "exclude[0] must be a non-empty string pattern, got str ''"),
    ({"head": 1}, "'exclude' must be a pattern or a list of patterns, got dict"),
    (5, "'exclude' must be a pattern or a list of patterns, got int"),
])
def test_exclude_entries_must_be_strings(toy_models, exclude, message):
    with pytest.raises(ConfigError) as info:
        MergeConfig.from_dict(_config(toy_models, exclude=exclude))
    assert str(info.value) == message


def test_filter_values_must_be_strings(toy_models):
    params = {"scaling": [{"filter": ["attn", "mlp"], "value": 0.5}, {"value": 0.3}]}
    with pytest.raises(ConfigError) as info:
        MergeConfig.from_dict(_config(toy_models, parameters=params))
    assert str(info.value) == "parameter 'scaling'[0].filter must be a string pattern, got list ['attn', 'mlp']"
    params = {"scaling": [{"filter": None, "value": 0.5}]}  # null means "every tensor", as before
    assert MergeConfig.from_dict(_config(toy_models, parameters=params)).resolver.resolve("head.weight")["scaling"] == 0.5


@pytest.mark.parametrize("key,value,message", [
    ("method", ["tsv"], "'method' must be a string, got list ['tsv']"),
    ("base_model", 5, "'base_model' must be a string, got int 5"),
    ("vocab_mismatch", True, "'vocab_mismatch' must be a string, got bool True"),
    ("workers", True, "workers must be a positive integer, got True"),
    ("workers", 0, "workers must be a positive integer, got 0"),
    ("workers", "2", "workers must be a positive integer, got '2'"),
])
def test_scalar_values_are_type_checked(toy_models, key, value, message):
    with pytest.raises(ConfigError) as info:
        MergeConfig.from_dict(_config(toy_models, **{key: value}))
    assert str(info.value) == message


def test_model_paths_and_weights_are_type_checked(toy_models):
    with pytest.raises(ConfigError, match=r"models\[1\].path must be a string, got list"):
        MergeConfig.from_dict(_config(toy_models, models=[str(toy_models["ft_dirs"][0]), {"path": [1, 2]}]))
    with pytest.raises(ConfigError, match=r"models\[1\] must be a path or a mapping with 'path'"):
        MergeConfig.from_dict(_config(toy_models, models=[str(toy_models["ft_dirs"][0]), [1, 2]]))
    for weight in (float("nan"), float("inf")):
        models = [{"path": str(p), "weight": weight} for p in toy_models["ft_dirs"]]
        with pytest.raises(ConfigError, match=r"models\[0\].weight must be a finite number"):
            MergeConfig.from_dict(_config(toy_models, models=models))


def _alias_bomb(levels: int = 9) -> str:
    """'Billion laughs': level i lists level i-1 ten times; 10^levels strings once expanded."""
    text = "exclude:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    return text + "".join(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, levels))


def test_yaml_alias_bomb_is_refused_at_once(toy_models, tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(f"method: task_arithmetic\nbase_model: {toy_models['base_dir']}\n"
                   f"models: [{toy_models['ft_dirs'][0]}, {toy_models['ft_dirs'][1]}]\n" + _alias_bomb())
    start = time.perf_counter()
    line = one_error(run_merge(cfg, "--out", tmp_path / "out"))
    assert time.perf_counter() - start < 10  # it used to run for minutes at 1.5 GB
    assert line == f"error: config {cfg} expands to more than 100000 values (YAML aliases?)"


def test_alias_bomb_in_a_parameter_is_refused_too(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("method: tsv\nparameters:\n  scaling:\n" + _alias_bomb().replace("exclude:\n", "    - value:\n").replace("  - &", "        - &"))
    with pytest.raises(ConfigError, match="expands to more than"):
        read_yaml_file(cfg)


def test_legitimate_aliases_are_fine():
    shared = ["a", "b"]
    check_expanded_size({"x": shared, "y": shared, "z": [shared] * 100}, "cfg")


def test_recursive_alias_is_refused(tmp_path):
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("exclude: &a [x, *a]\n")
    with pytest.raises(ConfigError, match="contains a YAML alias that refers to itself"):
        read_yaml_file(cfg)


def test_deeply_nested_yaml_is_one_line(tmp_path):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("exclude: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_yaml_file(cfg)


# -- patterns that match nothing -------------------------------------------------------------------
def test_patterns_matching_no_tensor_are_warned_about_and_not_listed_as_effective(toy_models, tmp_path):
    params = {"scaling": [{"filter": "atn", "value": 0.5}, {"filter": "mlp", "value": 0.1}, {"value": 0.3}]}
    cfg = write_config(toy_models, tmp_path / "m.yaml", exclude=["head", "no_such_tensor"], parameters=params)
    result = run_merge(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: exclude pattern 'no_such_tensor' matches no tensor of the base model",
                        "warning: filter 'atn' of parameter 'scaling' matches no tensor of the base model"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "copied from the base (excluded: head)" in card
    # merge_config.yaml keeps the user's full config, so the run can be reproduced as given
    assert "no_such_tensor" in (tmp_path / "out" / "merge_config.yaml").read_text()


def test_matching_patterns_give_no_warning(toy_models, tmp_path, capsys):
    mdamerge.merge(_config(toy_models, exclude="*.bias"), tmp_path / "out", progress=False)
    assert capsys.readouterr().err == ""


def test_api_exclude_string_is_one_pattern_not_its_characters(toy_models):
    base, fts = toy_models["base"], toy_models["fts"]
    out = mdamerge.merge_state_dicts(base, fts, "task_arithmetic", exclude="head")
    unchanged = sorted(k for k in out if torch.equal(out[k], base[k]))
    assert unchanged == ["head.weight", "position_ids"]  # not every name containing 'h', 'e', 'a' or 'd'
    with pytest.raises(ConfigError, match=r"exclude\[0\] must be a non-empty string pattern, got list"):
        mdamerge.merge_state_dicts(base, fts, exclude=[["head"]])
