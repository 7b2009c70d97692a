"""Checkpoint reading and streaming, atomic writing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdamerge.errors import CheckpointError, MergeError
from mdamerge.io import AtomicOutputDir, Checkpoint, ShardedWriter, TensorInfo, parse_size
from mdamerge.io.writer import copy_non_weight_files, plan_shards

from conftest import SHAPES, random_state, write_hf_folder

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool]


def test_reads_single_and_sharded_folders_identically(tmp_path):
    state = random_state(0, SHAPES)
    single = Checkpoint(write_hf_folder(tmp_path / "single", state))
    sharded = Checkpoint(write_hf_folder(tmp_path / "sharded", state, shards=3))
    assert len(sharded.files) == 3
    assert sorted(single.keys()) == sorted(sharded.keys()) == sorted(state)
    for name, tensor in state.items():
        assert single.info(name) == TensorInfo(tuple(tensor.shape), tensor.dtype)
        assert torch.equal(single.get(name), tensor)
        assert torch.equal(sharded.get(name), tensor)


def test_reads_single_safetensors_and_torch_files(tmp_path):
    state = random_state(1, SHAPES)
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.bin")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")
    for path in ("w.safetensors", "w.bin", "wrapped.pt"):
        ckpt = Checkpoint(tmp_path / path)
        assert all(torch.equal(ckpt.get(n), t) for n, t in state.items()), path


def test_folder_prefers_safetensors_over_bin(tmp_path):
    state = random_state(2, SHAPES)
    write_hf_folder(tmp_path, state)
    torch.save({k: v + 1 for k, v in state.items()}, tmp_path / "pytorch_model.bin")
    ckpt = Checkpoint(tmp_path)
    assert [f.suffix for f in ckpt.files] == [".safetensors"]


def test_torch_load_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"w": torch.ones(2), "obj": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        Checkpoint(tmp_path / "evil.bin")


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda p: None, "checkpoint not found"),
        (lambda p: p.mkdir() or (p / "config.json").write_text("{}"), "no weights found"),
        (lambda p: p.write_text("x"), "unsupported checkpoint file"),
        (lambda p: p.with_suffix(".safetensors").write_bytes(b"garbage!!"), "cannot read safetensors"),
    ],
)
def test_bad_checkpoints_give_one_line_errors(tmp_path, setup, message):
    path = tmp_path / "model.txt"
    setup(path)
    target = path.with_suffix(".safetensors") if "safetensors" in message else path
    with pytest.raises(CheckpointError, match=message) as info:
        Checkpoint(target)
    assert "\n" not in str(info.value)


def test_missing_shard_is_named(tmp_path):
    folder = write_hf_folder(tmp_path / "m", random_state(0, SHAPES), shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        Checkpoint(folder)


@pytest.mark.parametrize("shard_bytes", [10**9, 700])
def test_streaming_writer_round_trips_every_dtype(tmp_path, shard_bytes):
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i, dtype in enumerate(ALL_DTYPES):
        shape = (3, i + 1) if i % 2 else (i + 2,)
        raw = torch.randn(shape, generator=gen) * 10
        state[f"t{i}"] = raw.to(dtype) if dtype.is_floating_point or dtype == torch.bool else raw.to(dtype)
    state["scalar"] = torch.tensor(3.5)
    state["empty"] = torch.zeros(0, 4)
    entries = [(n, TensorInfo(tuple(t.shape), t.dtype)) for n, t in state.items()]
    writer = ShardedWriter(tmp_path, entries, shard_bytes)
    for name, tensor in state.items():
        writer.write(name, tensor)
    writer.close()
    loaded = {}
    for file in writer.shard_files:
        loaded.update(load_file(str(tmp_path / file)))  # the reference reader
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    if len(writer.shard_files) > 1:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(state)
        assert index["metadata"]["total_size"] == sum(i.nbytes for _, i in entries)
        assert Checkpoint(tmp_path).keys() == list(state)


def test_writer_rejects_out_of_order_and_wrong_shape(tmp_path):
    entries = [("a", TensorInfo((2,), torch.float32)), ("b", TensorInfo((3,), torch.float32))]
    writer = ShardedWriter(tmp_path, entries)
    with pytest.raises(MergeError, match="out of order"):
        writer.write("b", torch.zeros(3))
    with pytest.raises(MergeError, match="planned"):
        writer.write("a", torch.zeros(5))
    writer.abort()


def test_plan_shards_respects_limit_and_order():
    entries = [(f"t{i}", TensorInfo((10,), torch.float32)) for i in range(10)]  # 40 bytes each
    shards = plan_shards(entries, 100)
    assert [len(s) for s in shards] == [2, 2, 2, 2, 2]
    assert [n for s in shards for n, _ in s] == [n for n, _ in entries]
    assert plan_shards([("big", TensorInfo((1000,), torch.float32))], 100) == [[("big", TensorInfo((1000,), torch.float32))]]


@pytest.mark.parametrize("text,expected", [("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5GiB", int(1.5 * 2**30)), (1234, 1234)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(MergeError, match="cannot parse size"):
        parse_size("lots")


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with AtomicOutputDir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with AtomicOutputDir(target) as tmp:
        (tmp / "ok").write_text("1")
    assert (target / "ok").read_text() == "1"
    with pytest.raises(MergeError, match="already exists"):
        with AtomicOutputDir(target):
            pass
    with AtomicOutputDir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_copy_non_weight_files(tmp_path):
    src = write_hf_folder(tmp_path / "src", random_state(0, SHAPES), shards=2)
    (src / "1_Pooling").mkdir()
    (src / "1_Pooling" / "config.json").write_text("{}")
    (src / "README.md").write_text("old card")
    (src / "extra.bin").write_bytes(b"w")
    dst = tmp_path / "dst"
    dst.mkdir()
    copied = copy_non_weight_files(src, dst)
    assert sorted(copied) == ["1_Pooling/config.json", "config.json", "tokenizer.json"]
