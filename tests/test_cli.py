"""The command line: merge, methods, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

import mdamerge
from mdamerge.cli import main


def write_config(toy, path, **extra):
    cfg = {"method": "tsv", "base_model": str(toy["base_dir"]), "models": [str(p) for p in toy["ft_dirs"]], **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_merge_command(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    result = CliRunner().invoke(main, ["merge", str(cfg), "--out", str(tmp_path / "out"), "--dtype", "bfloat16", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "merged 6 tensors (1 copied from the base) with 'tsv'" in result.output
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    expected = mdamerge.merge_state_dicts(toy_models["base"], toy_models["fts"], "tsv", dtype="bfloat16")
    assert all((merged[k] == expected[k]).all() for k in expected)


def test_merge_command_errors_are_one_line(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml", parameters={"rank_fractoin": 0.1})
    result = CliRunner().invoke(main, ["merge", str(cfg), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: method 'tsv' has no parameter 'rank_fractoin' (did you mean 'rank_fraction'?)"
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith("error: config file not found")


def test_existing_output_needs_overwrite(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    (tmp_path / "out").mkdir()
    result = CliRunner().invoke(main, ["merge", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and "already exists" in result.output
    result = CliRunner().invoke(main, ["merge", str(cfg), "--out", str(tmp_path / "out"), "--quiet", "--overwrite"])
    assert result.exit_code == 0 and (tmp_path / "out" / "model.safetensors").exists()


def test_methods_command_lists_every_method_and_default():
    result = CliRunner().invoke(main, ["methods"])
    assert result.exit_code == 0
    for name in mdamerge.available_methods():
        assert f"{name}: " in result.output
        for param in mdamerge.get_method(name).params:
            assert f"{param.name} = {param.default!r}" in result.output


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "mdamerge", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and mdamerge.__version__ in out.stdout
