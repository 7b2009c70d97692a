"""``--ray ADDRESS``: tensors merged by Ray tasks, byte-identical to the single-process merge.

Skipped when ray is not installed (it is an optional extra: ``pip install 'mdamerge[ray]'``).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import yaml
from click.testing import CliRunner

import mdamerge
from mdamerge.cli import main
from mdamerge.engine.distributed import PortableCheckpointSource, batch_names
from mdamerge.errors import CheckpointError

from conftest import finetuned_from, random_state, write_hf_folder

try:
    import ray
except ImportError:  # optional extra
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (optional extra: pip install 'mdamerge[ray]')")

SHAPES = {
    **{f"layers.{i}.attn.weight": (32, 32) for i in range(3)},
    **{f"layers.{i}.mlp.bias": (64,) for i in range(3)},
    "embed.weight": (50, 32),
}


def digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    base = random_state(20, SHAPES)
    base["position_ids"] = torch.arange(50)
    fts = [finetuned_from(base, seed) for seed in (21, 22, 23)]
    return root, write_hf_folder(root / "base", base), [write_hf_folder(root / f"ft{i}", sd) for i, sd in enumerate(fts)]


@pytest.fixture(scope="module")
def local_ray():
    """A private Ray instance with 2 CPUs, started for these tests and shut down after them."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def config(zoo, method):
    _, base_dir, ft_dirs = zoo
    return {"method": method, "base_model": str(base_dir), "models": [str(p) for p in ft_dirs], "seed": 3}


def test_batches_keep_order_and_respect_the_byte_budget():
    names = ["a", "b", "c", "d", "e"]
    sizes = {"a": 4, "b": 4, "c": 10, "d": 1, "e": 1}
    batches = batch_names(names, sizes, max_bytes=8)
    assert [n for b in batches for n in b] == names
    assert batches == [["a", "b"], ["c"], ["d", "e"]]


def test_checkpoint_sources_pickle_as_paths(zoo):
    import pickle

    _, base_dir, _ = zoo
    source = PortableCheckpointSource(str(base_dir))
    source.get("embed.weight")  # opened here...
    clone = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 1000  # ...but only the path travels
    assert torch.equal(clone.get("embed.weight"), source.get("embed.weight"))


@needs_ray
@pytest.mark.parametrize("method", ["ties", "dare", "mda"])  # global pre-pass, seeded randomness, SVD
def test_ray_merge_is_byte_identical_to_serial(zoo, tmp_path, local_ray, method):
    from mdamerge.engine.distributed import RayExecutor

    mdamerge.merge(config(zoo, method), tmp_path / "serial", progress=False)
    with RayExecutor(batch_bytes=4096) as executor:  # small batches: many tasks in flight
        mdamerge.merge(config(zoo, method), tmp_path / "ray", progress=False, executor=executor)
    assert digest(tmp_path / "ray") == digest(tmp_path / "serial")
    assert ray.is_initialized()  # an executor does not shut down a Ray it did not start


@needs_ray
def test_worker_errors_surface_as_one_line_merge_errors(zoo, tmp_path, local_ray):
    from mdamerge.engine.distributed import RayExecutor

    root, base_dir, ft_dirs = zoo
    bad = finetuned_from(random_state(20, SHAPES), 99)
    bad["position_ids"] = torch.arange(50)
    bad["layers.1.attn.weight"][0, 0] = float("nan")
    bad_dir = write_hf_folder(tmp_path / "bad", bad)
    cfg = {"method": "task_arithmetic", "base_model": str(base_dir), "models": [str(ft_dirs[0]), str(bad_dir)]}
    with RayExecutor() as executor, pytest.raises(CheckpointError, match=r"layers\.1\.attn\.weight.*NaN"):
        mdamerge.merge(cfg, tmp_path / "out", progress=False, executor=executor)
    assert not (tmp_path / "out").exists()


@needs_ray
def test_cli_connects_to_a_running_cluster_by_address(zoo, tmp_path, local_ray):
    # Another process joins the test's Ray instance through its address, as `--ray HOST:PORT` would.
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump(config(zoo, "tsv")))
    mdamerge.merge(config(zoo, "tsv"), tmp_path / "serial", progress=False)
    proc = subprocess.run([sys.executable, "-c", "from mdamerge.cli import main; main()", "merge", str(cfg),
                           "--out", str(tmp_path / "ray"), "--ray", address, "--quiet"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "merged" in proc.stdout
    assert digest(tmp_path / "ray") == digest(tmp_path / "serial")


@needs_ray
def test_unreachable_cluster_is_a_clear_error(tmp_path, zoo):
    import subprocess
    import sys

    cfg = tmp_path / "merge.yaml"
    cfg.write_text(yaml.safe_dump(config(zoo, "tsv")))
    proc = subprocess.run([sys.executable, "-c", "from mdamerge.cli import main; main()", "merge", str(cfg),
                           "--out", str(tmp_path / "ray"), "--ray", "127.0.0.1:9", "--quiet"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error:" in proc.stderr and "127.0.0.1:9" in proc.stderr
    assert not (tmp_path / "ray").exists()


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from mdamerge.engine import distributed
    from mdamerge.errors import MergeError

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MergeError, match=r"pip install 'mdamerge\[ray\]'"):
        distributed.import_ray()
