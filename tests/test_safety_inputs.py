"""Safety promise 1: no input is ever modified or deleted, and a run never removes anything it
did not create -- whatever the flags (see docs/safety.md)."""

from __future__ import annotations

import os

import pytest

import mdamerge
from mdamerge.errors import OutputError
from mdamerge.io import writer as writer_module
from mdamerge.io.writer import AtomicOutputDir, ShardedWriter, rename_noreplace

from safety_util import one_error, run_merge, tree, write_config


# -- an output that overlaps an input is refused before any work ------------------------------
@pytest.mark.parametrize("which", ["base", "fine-tuned"])
def test_output_equal_to_an_input_is_refused_even_with_overwrite(toy_models, tmp_path, which):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    target = toy_models["base_dir"] if which == "base" else toy_models["ft_dirs"][1]
    before = tree(tmp_path)
    line = one_error(run_merge(cfg, "--out", target, "--overwrite"))
    assert line == f"error: output {target} is the input {target}: choose another --out"
    assert tree(tmp_path) == before


def test_output_containing_the_inputs_is_refused(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    before = tree(tmp_path)
    line = one_error(run_merge(cfg, "--out", tmp_path, "--overwrite"))
    assert "contains the input" in line
    assert tree(tmp_path) == before


def test_output_inside_an_input_is_refused(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    out = toy_models["base_dir"] / "merged"
    before = tree(tmp_path)
    line = one_error(run_merge(cfg, "--out", out))
    assert line == f"error: output {out} lies inside the input model {toy_models['base_dir']}: choose another --out"
    assert tree(tmp_path) == before


def test_output_reached_through_a_symlink_is_still_an_input(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    link = tmp_path / "link"
    link.symlink_to(toy_models["ft_dirs"][0])
    before = tree(tmp_path)
    assert "is the input" in one_error(run_merge(cfg, "--out", link, "--overwrite"))
    assert tree(tmp_path) == before


def test_output_holding_the_config_file_is_refused(toy_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cfg = write_config(toy_models, out / "merge_config.yaml")
    assert "contains the input" in one_error(run_merge(cfg, "--out", out, "--overwrite"))
    assert cfg.exists()


def test_a_successful_overwrite_leaves_every_input_byte_identical(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml", method="tsv")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    before = tree(tmp_path, skip=out)
    result = run_merge(cfg, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("(replaced the existing folder)")
    assert not (out / "old.txt").exists() and (out / "model.safetensors").exists()
    assert tree(tmp_path, skip=out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- the final rename never replaces what appeared during the run -----------------------------
def _create_during_merge(monkeypatch, make):
    """Run ``make()`` after the weights are written, before the folder is renamed into place."""
    close = ShardedWriter.close

    def close_then_interfere(self):
        close(self)
        make()

    monkeypatch.setattr(ShardedWriter, "close", close_then_interfere)


def test_output_appearing_during_the_merge_is_not_replaced(toy_models, tmp_path, monkeypatch):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    out = tmp_path / "out"

    def someone_else():
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")

    _create_during_merge(monkeypatch, someone_else)
    line = one_error(run_merge(cfg, "--out", out))
    assert line == (f"error: output directory {out} already exists: it appeared during the merge "
                    "(the merged result was discarded; use --overwrite to replace it)")
    assert sorted(os.listdir(out)) == ["theirs.txt"] and (out / "theirs.txt").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "ft0", "ft1", "ft2", "m.yaml", "out"]


def test_even_an_empty_folder_appearing_during_the_merge_is_kept(toy_models, tmp_path, monkeypatch):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    out = tmp_path / "out"
    _create_during_merge(monkeypatch, out.mkdir)
    assert "appeared during the merge" in one_error(run_merge(cfg, "--out", out))
    assert out.is_dir() and os.listdir(out) == []


def test_overwrite_replaces_only_the_folder_that_existed_at_the_start(toy_models, tmp_path, monkeypatch):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def swapped_by_someone_else():
        out.rename(tmp_path / "moved")
        out.mkdir()
        (out / "new.txt").write_text("new")

    _create_during_merge(monkeypatch, swapped_by_someone_else)
    line = one_error(run_merge(cfg, "--out", out, "--overwrite"))
    assert "was replaced by another one during the merge" in line
    assert sorted(os.listdir(out)) == ["new.txt"]


def test_overwrite_without_an_existing_folder_says_nothing_was_replaced(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    result = mdamerge.merge(cfg, tmp_path / "out", overwrite=True, progress=False)
    assert result.replaced is False
    assert mdamerge.merge(cfg, tmp_path / "out", overwrite=True, progress=False).replaced is True


def test_two_runs_into_one_output_one_wins_and_nothing_is_lost(tmp_path):
    target = tmp_path / "out"
    first, second = AtomicOutputDir(target), AtomicOutputDir(target)
    tmp_a, tmp_b = first.__enter__(), second.__enter__()
    (tmp_a / "a.txt").write_text("a")
    (tmp_b / "b.txt").write_text("b")
    first.__exit__(None, None, None)
    with pytest.raises(OutputError, match="already exists: it appeared during the merge"):
        second.__exit__(None, None, None)
    assert sorted(os.listdir(target)) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("native", [True, False], ids=["renameat2", "mkdir-fallback"])
def test_rename_noreplace_never_replaces(tmp_path, monkeypatch, native):
    if not native:
        monkeypatch.setattr(writer_module, "_RENAMEAT2", None)
    elif writer_module._RENAMEAT2 is None:
        pytest.skip("renameat2 is not available on this system")
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("x")
    for existing in ("empty", "full"):
        dst = tmp_path / existing
        dst.mkdir()
        if existing == "full":
            (dst / "keep").write_text("keep")
        with pytest.raises(FileExistsError):
            rename_noreplace(src, dst)
        assert (src / "x").exists()
    assert os.listdir(tmp_path / "empty") == [] and os.listdir(tmp_path / "full") == ["keep"]
    rename_noreplace(src, tmp_path / "new")
    assert (tmp_path / "new" / "x").read_text() == "x" and not src.exists()


# -- an earlier output nested in the base is not copied into the new one ----------------------
def test_earlier_output_nested_in_the_base_is_not_copied(toy_models, tmp_path):
    nested = toy_models["base_dir"] / "merged"
    nested.mkdir()
    (nested / "merge_config.yaml").write_text("method: average\n")
    (nested / "config.json").write_text("{}")
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    result = run_merge(cfg, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert f"warning: not copying {nested}: it is an earlier mdamerge output inside the base model" in result.output
    assert not (tmp_path / "out" / "merged").exists()
    assert (tmp_path / "out" / "config.json").exists()
