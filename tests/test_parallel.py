"""``--workers N`` merges tensors in a thread pool; the output must be byte-identical to the serial merge."""

from __future__ import annotations

import hashlib

import pytest
import torch
from click.testing import CliRunner

import mdamerge
from mdamerge.cli import main
from mdamerge.methods import available_methods

from conftest import finetuned_from, random_state, write_hf_folder

DATA_FREE = ["average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts", "mda"]

# Enough tensors of different sizes that a window of workers really runs out of order.
SHAPES = {
    **{f"layers.{i}.attn.weight": (24, 24) for i in range(4)},
    **{f"layers.{i}.mlp.weight": (48, 24) for i in range(4)},
    **{f"layers.{i}.mlp.bias": (48,) for i in range(4)},
    **{f"layers.{i}.norm.weight": (24,) for i in range(4)},
    "embed.weight": (100, 24),
    "head.weight": (5, 24),
}


def digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel")
    base = random_state(10, SHAPES)
    base["position_ids"] = torch.arange(100)
    fts = [finetuned_from(base, seed) for seed in (11, 12, 13, 14)]
    base_dir = write_hf_folder(root / "base", base)
    return root, base_dir, [write_hf_folder(root / f"ft{i}", sd) for i, sd in enumerate(fts)]


def config(zoo, method, **parameters):
    _, base_dir, ft_dirs = zoo
    return {"method": method, "base_model": str(base_dir), "models": [str(p) for p in ft_dirs],
            "parameters": parameters, "seed": 7}


def test_every_data_free_method_is_listed():
    assert set(DATA_FREE) <= set(available_methods())


@pytest.mark.parametrize("method", DATA_FREE)
def test_workers_give_byte_identical_output(zoo, tmp_path, method):
    mdamerge.merge(config(zoo, method), tmp_path / "serial", progress=False)
    mdamerge.merge(config(zoo, method), tmp_path / "parallel", workers=4, progress=False)
    assert digest(tmp_path / "parallel") == digest(tmp_path / "serial")
    # and the result is a real merge, not a copy of the base
    assert digest(tmp_path / "serial") != hashlib.sha256((zoo[1] / "model.safetensors").read_bytes()).hexdigest()


def test_cli_workers_flag_matches_serial(zoo, tmp_path):
    import yaml

    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump(config(zoo, "mda")))
    runner = CliRunner()
    for out, extra in (("serial", []), ("parallel", ["--workers", "3"])):
        result = runner.invoke(main, ["merge", str(cfg), "--out", str(tmp_path / out), "--quiet", *extra])
        assert result.exit_code == 0, result.output
    assert digest(tmp_path / "parallel") == digest(tmp_path / "serial")


def test_randomized_svd_is_identical_in_parallel(zoo, tmp_path):
    """The randomized top-k SVD must not depend on which thread ran it or what ran before."""
    params = {"svd_solver": "randomized", "rank_fraction": 0.1}
    mdamerge.merge(config(zoo, "tsv", **params), tmp_path / "serial", progress=False)
    mdamerge.merge(config(zoo, "tsv", **params), tmp_path / "parallel", workers=4, progress=False)
    assert digest(tmp_path / "parallel") == digest(tmp_path / "serial")


def test_randomized_svd_does_not_depend_on_the_global_rng(zoo, tmp_path):
    params = {"svd_solver": "randomized", "rank_fraction": 0.1}
    torch.manual_seed(1)
    mdamerge.merge(config(zoo, "mda", **params), tmp_path / "a", progress=False)
    torch.manual_seed(2)
    torch.randn(100)
    mdamerge.merge(config(zoo, "mda", **params), tmp_path / "b", progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
