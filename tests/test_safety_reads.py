"""Safety promise 2: mdamerge reads only inside the input models -- an index, a symlink or a
copied non-weight file cannot make it read (and publish) a file the user did not name."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import mdamerge
from mdamerge.engine.sources import config_vocab_size
from mdamerge.errors import CheckpointError
from mdamerge.io import Checkpoint
from mdamerge.io.writer import copy_non_weight_files, plan_non_weight_files

from conftest import SHAPES, random_state, write_hf_folder
from safety_util import one_error, run_merge, tree, write_config


def _index_folder(folder, weight_map):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


# -- shards named by an index ----------------------------------------------------------------
@pytest.mark.parametrize("entry", ["../outside.safetensors", "sub/../../outside.safetensors", "ABS", "/etc/passwd"])
def test_index_entries_outside_the_model_folder_are_refused(tmp_path, entry):
    save_file(random_state(0, SHAPES), str(tmp_path / "outside.safetensors"))
    entry = str(tmp_path / "outside.safetensors") if entry == "ABS" else entry
    model = _index_folder(tmp_path / "model", {name: entry for name in SHAPES})
    with pytest.raises(CheckpointError) as info:
        Checkpoint(model)
    assert str(info.value).startswith(f"model.safetensors.index.json entry 'embed.weight' -> '{entry}' in {model} resolves to ")
    assert str(info.value).endswith(", outside the model folder")


def test_index_shard_symlinked_outside_is_refused(tmp_path):
    save_file(random_state(0, SHAPES), str(tmp_path / "outside.safetensors"))
    model = _index_folder(tmp_path / "model", {name: "shard.safetensors" for name in SHAPES})
    (model / "shard.safetensors").symlink_to(tmp_path / "outside.safetensors")
    with pytest.raises(CheckpointError, match="resolves to .*outside.safetensors, outside the model folder"):
        Checkpoint(model)


def test_index_shard_symlinked_inside_the_folder_is_read(tmp_path):
    state = random_state(0, SHAPES)
    model = _index_folder(tmp_path / "model", {name: "link.safetensors" for name in SHAPES})
    (model / "data").mkdir()
    save_file(state, str(model / "data" / "real.safetensors"))
    (model / "link.safetensors").symlink_to("data/real.safetensors")
    assert torch.equal(Checkpoint(model).get("embed.weight"), state["embed.weight"])


@pytest.mark.parametrize("weight_map,kind", [(42, "int"), (["a.safetensors"], "list"), (None, "NoneType"), ("x", "str")])
def test_weight_map_that_is_not_a_mapping_is_one_line(tmp_path, weight_map, kind):
    model = _index_folder(tmp_path / "model", weight_map)
    with pytest.raises(CheckpointError) as info:
        Checkpoint(model)
    assert str(info.value) == (f"malformed index {model / 'model.safetensors.index.json'}: 'weight_map' must map "
                               f"tensor names to shard file names, got {kind}")


@pytest.mark.parametrize("value", [7, ["a"], None, ""])
def test_weight_map_entry_that_is_not_a_file_name_is_one_line(tmp_path, value):
    model = _index_folder(tmp_path / "model", {"embed.weight": value})
    with pytest.raises(CheckpointError, match=r"malformed index .*: entry 'embed.weight' must name a shard file, got "):
        Checkpoint(model)


def test_index_outside_the_folder_through_the_cli_is_one_line_and_reads_nothing(toy_models, tmp_path):
    ft = toy_models["ft_dirs"][0]
    shutil.copy(ft / "model.safetensors", tmp_path / "outside.safetensors")
    (ft / "model.safetensors").unlink()
    _index_folder(ft, {name: "../outside.safetensors" for name in [*SHAPES, "position_ids"]})
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    before = tree(tmp_path)
    line = one_error(run_merge(cfg, "--out", tmp_path / "out"))
    assert "entry 'embed.weight' -> '../outside.safetensors'" in line and "outside the model folder" in line
    assert tree(tmp_path) == before


def test_weight_file_symlinked_outside_the_folder_is_refused(tmp_path):
    save_file(random_state(0, SHAPES), str(tmp_path / "elsewhere.safetensors"))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match="weight file model.safetensors in .* resolves to .*elsewhere.safetensors, outside"):
        Checkpoint(tmp_path / "model")
    # Naming the file itself is an explicit choice, and is honoured.
    assert len(Checkpoint(tmp_path / "model" / "model.safetensors")) == len(SHAPES)


def test_dangling_weight_symlink_is_one_line(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(CheckpointError, match="is a dangling or looping symlink"):
        Checkpoint(tmp_path / "model")


def test_hugging_face_cache_snapshots_may_link_to_their_blobs(tmp_path):
    """The hub cache layout: snapshots/<rev>/<file> -> ../../blobs/<hash>."""
    repo = tmp_path / "models--org--toy"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    state = random_state(0, SHAPES)
    save_file(state, str(repo / "blobs" / "w1"))
    (repo / "blobs" / "c1").write_text(json.dumps({"vocab_size": 20}))
    (snapshot / "model.safetensors").symlink_to("../../blobs/w1")
    (snapshot / "config.json").symlink_to("../../blobs/c1")
    assert torch.equal(Checkpoint(snapshot).get("head.weight"), state["head.weight"])
    assert [rel for rel, _ in plan_non_weight_files(snapshot)] == ["config.json"]
    assert config_vocab_size(snapshot / "config.json") == 20


# -- non-weight files of the base ----------------------------------------------------------------
def test_only_regular_files_and_links_inside_the_base_are_copied(tmp_path, capsys):
    base = write_hf_folder(tmp_path / "base", random_state(0, SHAPES))
    (tmp_path / "host.txt").write_text("host secret")
    (base / "secret.txt").symlink_to(tmp_path / "host.txt")
    (base / "etc.txt").symlink_to("/etc/hostname")
    (base / "alias.json").symlink_to("tokenizer.json")
    (base / "dangling.txt").symlink_to(tmp_path / "nowhere")
    (base / "loop.txt").symlink_to(base / "loop.txt")
    (base / "linked_dir").symlink_to(tmp_path)
    os.mkfifo(base / "pipe")  # reading it would block forever
    (base / "sub").mkdir()
    (base / "sub" / "vocab.txt").write_text("a b")
    dst = tmp_path / "dst"
    dst.mkdir()
    copied = copy_non_weight_files(base, dst)
    assert sorted(copied) == ["alias.json", "config.json", "sub/vocab.txt", "tokenizer.json"]
    assert (dst / "alias.json").read_text() == "{}" and not (dst / "alias.json").is_symlink()
    warnings = capsys.readouterr().err.splitlines()
    assert sorted(warnings) == sorted([
        f"warning: not copying {base / 'dangling.txt'}: it is a dangling or looping symlink (No such file or directory)",
        f"warning: not copying {base / 'etc.txt'}: it is a symlink to /etc/hostname, outside the base folder",
        f"warning: not copying {base / 'linked_dir'}: it is a symlink to a folder",
        next(w for w in warnings if w.startswith(f"warning: not copying {base / 'loop.txt'}: it is a dangling or looping symlink")),
        f"warning: not copying {base / 'pipe'}: it is not a regular file",
        f"warning: not copying {base / 'secret.txt'}: it is a symlink to {tmp_path / 'host.txt'}, outside the base folder",
    ])
    assert sorted(os.listdir(dst)) == ["alias.json", "config.json", "sub", "tokenizer.json"]


def test_merge_with_unsafe_base_files_succeeds_and_leaks_nothing(toy_models, tmp_path):
    base = toy_models["base_dir"]
    (base / "secret.txt").symlink_to("/etc/hostname")
    (base / "dangling.txt").symlink_to(tmp_path / "nowhere")
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    result = run_merge(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(l.split(":")[0] for l in result.output.splitlines() if l.startswith("warning")) == ["warning"] * 2
    assert not (tmp_path / "out" / "secret.txt").exists()
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    expected = mdamerge.merge_state_dicts(toy_models["base"], toy_models["fts"], "task_arithmetic")
    assert all(torch.equal(merged[k], expected[k]) for k in expected)


def test_config_json_linked_outside_is_not_read(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"vocab_size": 99}))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").symlink_to(tmp_path / "other.json")
    assert config_vocab_size(tmp_path / "model" / "config.json") is None


def test_a_file_swapped_for_a_link_after_planning_is_not_followed(tmp_path, capsys):
    from mdamerge.io.writer import copy_planned_files

    base = write_hf_folder(tmp_path / "base", random_state(0, SHAPES))
    (tmp_path / "host.txt").write_text("host secret")
    planned = plan_non_weight_files(base)
    (base / "tokenizer.json").unlink()
    (base / "tokenizer.json").symlink_to(tmp_path / "host.txt")
    dst = tmp_path / "dst"
    dst.mkdir()
    assert copy_planned_files(planned, dst) == ["config.json"]
    assert capsys.readouterr().err.startswith(f"warning: not copying {base / 'tokenizer.json'}: ")
    assert not (dst / "tokenizer.json").exists()
