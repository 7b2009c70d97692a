"""What README.md promises about identical bytes across ``--workers`` (with ``--threads`` pinned):
every method for every N >= 2; the per-entry methods also between 1 and 2 (the SVD methods
take SciPy's routes serially and torch's in worker threads, so their last bits may differ)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from mdamerge import merge

from conftest import finetuned_from, random_state, write_hf_folder
from safety_util import write_config

SHAPES = {f"layers.{i}.weight": (48, 40) for i in range(4)} | {"layers.0.bias": (48,)}


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_torch_thread):
    root = tmp_path_factory.mktemp("workers")
    base = random_state(0, SHAPES)
    return {"root": root, "base_dir": write_hf_folder(root / "base", base),
            "ft_dirs": [write_hf_folder(root / f"ft{i}", finetuned_from(base, i + 1)) for i in range(3)]}


def merged_bytes(models, method: str, workers: int) -> str:
    out = models["root"] / f"{method}-{workers}"
    merge(write_config(models, models["root"] / f"{method}.yaml", method=method), out_dir=out, workers=workers, progress=False,
          overwrite=True)  # both tests merge some methods with 2 workers
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["tsv", "mda", "iso_c", "iso_cts", "ties", "dare", "task_arithmetic"])
def test_every_method_gives_the_same_bytes_for_two_and_three_workers(models, method):
    assert merged_bytes(models, method, 2) == merged_bytes(models, method, 3)


@pytest.mark.parametrize("method", ["average", "task_arithmetic", "ties", "dare", "gta"])
def test_per_entry_methods_give_the_same_bytes_serially_and_in_workers(models, method):
    assert merged_bytes(models, method, 1) == merged_bytes(models, method, 2)
