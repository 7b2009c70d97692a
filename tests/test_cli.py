"""The command line: merge, methods, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
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


# A driver that runs the real CLI with torch made unimportable: any `import torch` on the way
# to the error would fail the run with a traceback instead of the one-line error.
NO_TORCH_DRIVER = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported while validating the config")
sys.meta_path.insert(0, NoTorch())
from mdamerge.cli import main
try:
    main()
finally:
    print("torch loaded" if "torch" in sys.modules else "torch not loaded")
"""

CONFIG_TYPOS = [
    ({"paramters": {}}, "error: unknown config key 'paramters' (did you mean 'parameters'?)"),
    ({"method": "tie"}, "error: unknown method 'tie' (did you mean 'ties'?); available: average, dare, gta, iso_c, "
                        "iso_cts, mda, task_arithmetic, ties, tsv"),
    ({"parameters": {"densty": 0.3}}, "error: method 'ties' has no parameter 'densty' (did you mean 'density'?)"),
    ({"parameters": {"density": "high"}}, "error: parameter 'density' must be float, got 'high'"),
    ({"parameters": {"density": 1.5}}, "error: parameter 'density' must be <= 1.0, got 1.5"),
    ({"parameters": {"scope": "globl"}}, "error: parameter 'scope' must be one of ['global', 'tensor'], got 'globl' "
                                         "(did you mean 'global'?)"),
    ({"models": [{"path": "a", "parameters": {"scope": "tensor"}}, "b"]},
     "error: models[0].parameters: 'scope' cannot be set per model; per-model parameters of 'ties': density"),
    ({"dtype": "bf17"}, "error: unknown dtype 'bf17' (did you mean 'bf16'?); choose from float32, float16, bfloat16, float64"),
    ({"shard_size": "2XB"}, "error: cannot parse size '2XB' (expected e.g. 2GB, 500MB or a byte count)"),
    ({"method": "adamerging"}, "error: 'adamerging' learns from unlabeled data and is run by `mdamerge adapt CONFIG --out DIR` "
                               "(see `mdamerge adapt --list`); `mdamerge merge` runs the data-free methods (`mdamerge methods`)"),
]


@pytest.mark.parametrize("typo, message", CONFIG_TYPOS, ids=[m.split("'")[1] for _, m in CONFIG_TYPOS])
def test_a_config_typo_is_one_line_before_torch_is_imported(tmp_path, typo, message):
    cfg = {"method": "ties", "base_model": "base", "models": ["a", "b"], **typo}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_DRIVER, "merge", str(tmp_path / "bad.yaml"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [message]
    assert proc.stdout.strip() == "torch not loaded"
    assert not (tmp_path / "out").exists()


def test_the_no_torch_driver_fails_when_a_command_needs_torch(toy_models, tmp_path):
    """The guard of the test above is real: a valid config gets past validation and needs torch."""
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_DRIVER, "merge", str(cfg), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "torch imported while validating the config" in proc.stderr
