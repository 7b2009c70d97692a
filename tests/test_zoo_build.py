"""Zoo bookkeeping that needs no training: settings, few-shot heads, cache location, errors."""

from __future__ import annotations

import json

import pytest
import torch

from mdamerge.errors import CheckpointError, ConfigError
from mdamerge.zoo.build import Zoo, ZooSettings, default_cache_dir, default_zoo_dir, few_shot_indices
from mdamerge.zoo.finetune import TrainSettings, batches
from mdamerge.zoo.model import ViTConfig


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MDAMERGE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" and default_zoo_dir() == tmp_path / "c" / "zoo-additive"
    assert Zoo().root == tmp_path / "c" / "zoo"
    monkeypatch.delenv("MDAMERGE_CACHE")
    assert default_cache_dir().parts[-2:] == (".cache", "mdamerge")


def test_settings_round_trip_and_fingerprint():
    s = ZooSettings(model=ViTConfig(dim=32, depth=1, heads=2, mlp_dim=64), finetune=TrainSettings(5, 4, 1e-3),
                    probe_shots=None, max_train=100)
    back = ZooSettings.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and back.fingerprint() == s.fingerprint()
    assert ZooSettings().fingerprint() != s.fingerprint()
    with pytest.raises(ConfigError, match="unknown zoo setting 'bogus'"):
        ZooSettings.from_dict({**s.to_dict(), "bogus": 1})


def test_few_shot_indices_pick_k_per_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    idx = few_shot_indices(labels, 3, 4, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [4, 3, 4]
    assert len(set(idx.tolist())) == len(idx) and torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, few_shot_indices(labels, 3, 4, seed=0))
    assert torch.equal(few_shot_indices(labels, 3, None), torch.arange(20))


def test_batches_cover_every_example_once_per_pass():
    gen = torch.Generator().manual_seed(0)
    got = list(batches(10, 3, 6, gen))
    assert all(len(b) == 3 for b in got)
    first_pass = torch.cat(got[:3])
    assert len(set(first_pass.tolist())) == 9  # a pass never repeats an example


def test_stored_settings_are_adopted_and_checked(tmp_path):
    s = ZooSettings(model=ViTConfig(dim=32, depth=1, heads=2, mlp_dim=64), max_train=50)
    zoo = Zoo(tmp_path, settings=s)
    zoo._save_state()
    assert Zoo(tmp_path).settings == s
    with pytest.raises(ConfigError, match=r"other settings \(max_train: 50 vs 60\)"):
        Zoo(tmp_path, settings=ZooSettings(model=s.model, max_train=60))
    assert Zoo(tmp_path).missing("tiny3") == ["mnist", "fashion", "letters"]
    with pytest.raises(ConfigError, match="task 'mnist' is not built"):
        Zoo(tmp_path).individual_accuracy("mnist")


def test_corrupt_index_is_reported(tmp_path):
    (tmp_path / "zoo.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt zoo index"):
        Zoo(tmp_path)
    (tmp_path / "zoo.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="has format 99"):
        Zoo(tmp_path)


def test_cpu_threads_sets_and_restores(monkeypatch):
    from mdamerge.zoo import finetune

    before = torch.get_num_threads()
    with finetune.cpu_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with finetune.cpu_threads(1, device="cuda"):
        assert torch.get_num_threads() == before  # only CPU work is affected
    monkeypatch.setattr(finetune.os, "getloadavg", lambda: (100.0, 0.0, 0.0))
    assert finetune.auto_threads() == 1
    monkeypatch.setattr(finetune.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert finetune.auto_threads() == min(before, finetune.os.cpu_count())
