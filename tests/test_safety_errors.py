"""Safety promise 3: every failure is one line naming the culprit (exit status 2), checked
before the merge starts where possible; a failed write leaves nothing behind. Unusual but
valid tensors (0-dim scalars, 0-size matrices) merge instead of crashing."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import mdamerge
from mdamerge.errors import CheckpointError, MergeError
from mdamerge.io import writer as writer_module
from mdamerge.io.writer import StreamingSafetensorsWriter

from conftest import SHAPES, finetuned_from, random_state, write_hf_folder
from safety_util import one_error, run_merge, tree, write_config

METHODS = mdamerge.available_methods()


# -- tensors every method must survive ---------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_zero_dim_tensors_merge_with_every_method(method):
    base = {"logit_scale": torch.tensor(2.0), "w": torch.randn(6, 4, generator=torch.Generator().manual_seed(0))}
    fts = [{"logit_scale": torch.tensor(2.0 + d), "w": base["w"] + d} for d in (0.5, -0.25, 1.0)]
    out = mdamerge.merge_state_dicts(base, fts, method)
    assert out["logit_scale"].shape == () and torch.isfinite(out["logit_scale"])
    if method == "average":
        torch.testing.assert_close(out["logit_scale"], torch.tensor(2.0 + (0.5 - 0.25 + 1.0) / 3))
    if method == "task_arithmetic":
        torch.testing.assert_close(out["logit_scale"], torch.tensor(2.0 + 0.3 * (0.5 - 0.25 + 1.0)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(0, 64), (64, 0), (0,)])
def test_zero_size_tensors_are_kept_as_is_with_every_method(method, shape):
    base = {"empty": torch.zeros(shape), "w": torch.randn(6, 4, generator=torch.Generator().manual_seed(0))}
    fts = [{"empty": torch.zeros(shape), "w": base["w"] + d} for d in (0.5, -0.25)]
    out = mdamerge.merge_state_dicts(base, fts, method)
    assert out["empty"].shape == shape


def test_zero_dim_and_zero_size_tensors_through_the_cli(tmp_path):
    base = random_state(0, SHAPES)
    base.update({"logit_scale": torch.tensor(1.5), "empty.weight": torch.zeros(0, 64)})
    write_hf_folder(tmp_path / "base", base)
    fts = [write_hf_folder(tmp_path / f"ft{i}", finetuned_from(base, i + 1)) for i in range(2)]
    cfg = write_config({"base_dir": tmp_path / "base", "ft_dirs": fts}, tmp_path / "m.yaml", method="tsv")
    result = run_merge(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert merged["empty.weight"].shape == (0, 64) and merged["logit_scale"].shape == ()


# -- options and config values that used to crash -------------------------------------------------
def test_average_with_weights_summing_to_zero_is_one_line(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml", method="average",
                       models=[{"path": str(p), "weight": w} for p, w in zip(toy_models["ft_dirs"], (1.0, 1.0, -2.0))])
    assert one_error(run_merge(cfg, "--out", tmp_path / "out")) == (
        "error: the model weights sum to 0, so their weighted mean ('average') is undefined")


@pytest.mark.parametrize("size", ["1.2.3MB", "2XB", "..MB", 0, -5, True, [1], "0.1B"])
def test_bad_shard_sizes_are_one_line(toy_models, tmp_path, size):
    cfg = write_config(toy_models, tmp_path / "m.yaml", shard_size=size)
    line = one_error(run_merge(cfg, "--out", tmp_path / "out"))
    assert line.startswith("error: cannot parse size") or "must be at least 1 byte" in line


@pytest.mark.parametrize("where", ["cli", "config"])
@pytest.mark.parametrize("device", ["tpu9", "banana", "meta", "cuda:99"])
def test_bad_devices_are_one_line(toy_models, tmp_path, where, device):
    if device == "cuda:99" and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    extra = {"device": device} if where == "config" else {}
    cfg = write_config(toy_models, tmp_path / "m.yaml", **extra)
    args = ["--device", device] if where == "cli" else []
    line = one_error(run_merge(cfg, "--out", tmp_path / "out", *args))
    assert f"'{device}'" in line
    assert not (tmp_path / "out").exists()


def test_config_device_is_overridden_by_a_valid_cli_device(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml", device="cuda:99")
    assert run_merge(cfg, "--out", tmp_path / "out", "--device", "cpu").exit_code == 0


def test_device_that_is_not_a_string_is_one_line(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml", device=3)
    assert one_error(run_merge(cfg, "--out", tmp_path / "out")) == "error: 'device' must be a string, got int 3"


def test_non_utf8_config_is_one_line(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_bytes(b"method: \xff\xfe tsv\n")
    assert one_error(run_merge(cfg, "--out", tmp_path / "out")) == (
        f"error: config {cfg} is not UTF-8 text (byte 8: invalid start byte)")


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_cli_workers_below_one_are_refused(toy_models, tmp_path, workers):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    assert one_error(run_merge(cfg, "--out", tmp_path / "out", "--workers", workers)) == (
        f"error: workers must be a positive integer, got {workers}")


def test_api_workers_below_one_are_refused(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    with pytest.raises(MergeError, match="workers must be a positive integer, got 0"):
        mdamerge.merge(cfg, tmp_path / "out", workers=0, progress=False)


# -- the vocabulary rule covers vocabulary tensors only -----------------------------------------------
def _mismatched_mlp(toy_models):
    ft = toy_models["ft_dirs"][0]
    state = dict(toy_models["fts"][0])
    state["layers.0.mlp.weight"] = torch.randn(17, 8)
    save_file(state, str(ft / "model.safetensors"))


def test_non_vocabulary_row_mismatch_is_refused_even_with_shared_vocabulary(toy_models, tmp_path):
    _mismatched_mlp(toy_models)
    cfg = write_config(toy_models, tmp_path / "m.yaml", vocab_mismatch="shared")
    assert one_error(run_merge(cfg, "--out", tmp_path / "out")) == (
        f"error: shape mismatch for 'layers.0.mlp.weight': base [16, 8] vs [17, 8] in {toy_models['ft_dirs'][0]} "
        "(not a vocabulary dimension, so vocab_mismatch: shared does not apply)")
    assert not (tmp_path / "out").exists()


def test_non_vocabulary_row_mismatch_gets_no_vocabulary_hint(toy_models, tmp_path):
    _mismatched_mlp(toy_models)
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    line = one_error(run_merge(cfg, "--out", tmp_path / "out"))
    assert line.endswith(f"base [16, 8] vs [17, 8] in {toy_models['ft_dirs'][0]}")


def test_vocabulary_size_from_config_json_covers_unnamed_vocabulary_tensors(tmp_path):
    """An output bias of vocabulary size ('cls.bias') is not named like an embedding;
    config.json's vocab_size identifies it."""
    import json

    dirs = {}
    for name, vocab, seed in (("base", 10, 0), ("a", 12, 1), ("b", 10, 2)):
        gen = torch.Generator().manual_seed(seed)
        state = {"tok.weight": torch.randn(vocab, 4, generator=gen), "cls.bias": torch.randn(vocab, generator=gen),
                 "w": torch.randn(4, 4, generator=gen)}
        dirs[name] = write_hf_folder(tmp_path / name, state)
        (dirs[name] / "config.json").write_text(json.dumps({"vocab_size": vocab}))
    cfg = {"method": "task_arithmetic", "base_model": str(dirs["base"]), "models": [str(dirs["a"]), str(dirs["b"])],
           "vocab_mismatch": "shared"}
    mdamerge.merge(cfg, tmp_path / "out", progress=False)
    assert load_file(str(tmp_path / "out" / "model.safetensors"))["cls.bias"].shape == (10,)
    for name in ("a", "b"):
        (dirs[name] / "config.json").write_text("{}")  # no vocab_size and no embedding-like name: refused
    with pytest.raises(CheckpointError, match="'(tok.weight|cls.bias)'.*not a vocabulary dimension"):
        mdamerge.merge(cfg, tmp_path / "out2", progress=False)


# -- a failed write is one line and leaves nothing ---------------------------------------------------
def _fail_with(monkeypatch, target, attribute, code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(target, attribute, fail)


@pytest.mark.parametrize("target,attribute", [
    (StreamingSafetensorsWriter, "write"),   # a shard
    (writer_module.ShardedWriter, "close"),  # the index
    (writer_module.shutil, "copyfileobj"),   # a copied tokenizer file
])
def test_disk_full_is_one_line_and_leaves_nothing(toy_models, tmp_path, monkeypatch, target, attribute):
    cfg = write_config(toy_models, tmp_path / "m.yaml", shard_size="1KB")
    out = tmp_path / "out"
    before = tree(tmp_path)
    _fail_with(monkeypatch, target, attribute, errno.ENOSPC)
    assert one_error(run_merge(cfg, "--out", out)) == f"error: cannot write {out}: No space left on device"
    assert tree(tmp_path) == before


def test_read_only_output_parent_is_one_line(toy_models, tmp_path, monkeypatch):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    _fail_with(monkeypatch, writer_module.tempfile, "mkdtemp", errno.EROFS)
    before = tree(tmp_path)
    assert one_error(run_merge(cfg, "--out", tmp_path / "out")) == (
        f"error: cannot write {tmp_path / 'out'}: Read-only file system")
    assert tree(tmp_path) == before


def test_output_under_a_file_is_one_line(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "deeper" / "out"
    assert one_error(run_merge(cfg, "--out", out)) == f"error: cannot write {out}: {tmp_path / 'afile'} is not a directory"
    assert (tmp_path / "afile").read_text() == "x"


def test_output_that_is_a_file_is_one_line_even_with_overwrite(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    (tmp_path / "out").write_text("x")
    assert "exists and is not a directory" in one_error(run_merge(cfg, "--out", tmp_path / "out", "--overwrite"))
    assert (tmp_path / "out").read_text() == "x"


def test_config_that_is_a_folder_is_one_line(tmp_path):
    assert one_error(run_merge(tmp_path, "--out", tmp_path / "out")) == f"error: config {tmp_path} is a folder, not a YAML file"


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_output_that_names_no_folder_is_refused(toy_models, tmp_path, out, monkeypatch):
    monkeypatch.chdir(tmp_path / "ft0")
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    before = tree(tmp_path)
    assert "does not name a folder" in one_error(run_merge(cfg, "--out", out, "--overwrite"))
    assert tree(tmp_path) == before


def test_input_truncated_during_the_merge_is_one_line(toy_models, tmp_path, monkeypatch):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    shard = toy_models["ft_dirs"][1] / "model.safetensors"
    write = StreamingSafetensorsWriter.write

    def truncate_input_then_write(self, name, tensor):
        shard.write_bytes(shard.read_bytes()[:200])  # another program rewrites the model mid-merge
        write(self, name, tensor)

    monkeypatch.setattr(StreamingSafetensorsWriter, "write", truncate_input_then_write)
    line = one_error(run_merge(cfg, "--out", tmp_path / "out"))
    assert line.startswith("error: cannot read tensor '") and str(shard) in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
