"""The safety promises of docs/safety.md for every command that writes an output, not only
`merge`: `lora`, `adapt`, `analyze`, `eval --out`, `bench --out` and `zoo build`.

Per command and promise: an OUT that is, contains or lies inside an input is refused before
any work; an OUT under a file is one line before any work; disk full and a read-only file
system are one line, `cannot write OUT: <reason>`, and leave nothing behind; SIGTERM is
handled like SIGINT. "Nothing behind" is checked by hashing the whole tree before and after.

The faults are injected at the first write each command makes (the file systems of a test
run cannot be filled or remounted): `FIRST_WRITE` names the function.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mdamerge.adaptation import output as adaptation_output
from mdamerge.cli import main
from mdamerge.diagnostics.report import Report
from mdamerge.io import writer as writer_module
from mdamerge.zoo.build import Zoo, ZooSettings, zoo_subdir
from mdamerge.zoo import model as zoo_model
from mdamerge.zoo.finetune import TrainSettings
from mdamerge.zoo.model import ViTConfig

from conftest import SHAPES, finetuned_from, random_state, write_hf_folder
from safety_util import ctrl_c, one_error, tree  # noqa: F401  (ctrl_c: a fixture)
from test_lora import random_factors, write_adapter, write_base

TASKS = "digits8x8,digits8x8_rot180"  # scikit-learn's digits: no data package needed, quick to load
TINY = ZooSettings(
    model=ViTConfig(dim=16, depth=1, heads=2, mlp_dim=32, projection_dim=16),
    pretrain=TrainSettings(steps=3, batch_size=16, lr=2e-3), pretrain_images=64,
    finetune=TrainSettings(steps=3, batch_size=16, lr=2e-3), probe_steps=3, max_train=64,
)
ZOO_COMMANDS = ["adapt", "eval", "bench"]
FOLDER_COMMANDS = ["lora", "adapt", "analyze"]  # OUT is a folder the command creates (or replaces)
ALL = ["lora", "adapt", "analyze", "eval", "bench"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A tiny zoo (2 tasks, a few training steps), built once: an input of adapt/eval/bench."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cache")
    Zoo(root / zoo_subdir(), settings=TINY).build(TASKS.split(","), progress=False)
    yield root
    torch.set_num_threads(threads)


class Setup:
    """A command's inputs, made in ``root``, and its argument list for a given OUT."""

    def __init__(self, name: str, root: Path, cache: Path | None):
        self.name, self.root, self.cache = name, root, cache
        if name == "lora":
            write_base(root / "base")
            self.inputs = {"base": root / "base",
                           "input": write_adapter(root / "adapter0", random_factors(1)),
                           "other": write_adapter(root / "adapter1", random_factors(2))}
        elif name == "analyze":
            base = random_state(0, SHAPES)
            self.inputs = {"base": write_hf_folder(root / "base", base),
                           "input": write_hf_folder(root / "ft0", finetuned_from(base, 1)),
                           "other": write_hf_folder(root / "ft1", finetuned_from(base, 2))}
        else:
            zoo = cache / zoo_subdir()
            self.inputs = {"base": zoo / "pretrained", "input": zoo, "zoo": zoo,
                           "model": zoo / "finetuned" / "digits8x8"}
            if name == "adapt":
                self.config = root / "adapt.yaml"
                self.config.write_text(yaml.safe_dump({
                    "method": "adamerging_task", "tasks": TASKS.split(","), "zoo_root": str(zoo),
                    "max_unlabeled": 16, "parameters": {"steps": 1}}))

    def args(self, out: Path, *extra: str) -> list[str]:
        i = self.inputs
        if self.name == "lora":
            return ["lora", str(i["base"]), str(i["input"]), str(i["other"]), "--out", str(out), "--quiet", *extra]
        if self.name == "analyze":
            return ["analyze", "--base", str(i["base"]), "--models", f"{i['input']},{i['other']}", "--out", str(out),
                    "--threads", "1", *extra]
        if self.name == "adapt":
            return ["adapt", str(self.config), "--out", str(out), "--no-eval", "--threads", "1", *extra]
        if self.name == "eval":
            return ["eval", str(i["model"]), "--tasks", "digits8x8", "--cache", str(self.cache), "--out", str(out),
                    "--threads", "1", *extra]
        return ["bench", "--tasks", TASKS, "--methods", "average", "--no-search", "--cache", str(self.cache),
                "--out", str(out), "--threads", "1", "--quiet", *extra]

    def snapshot(self) -> dict:
        """Every file the command could touch: its own folder, and the zoo."""
        return {"root": tree(self.root), "cache": tree(self.cache) if self.cache else {}}


@pytest.fixture
def setup(request, tmp_path):
    name = request.param
    cache = request.getfixturevalue("cache") if name in ZOO_COMMANDS else None
    return Setup(name, tmp_path, cache)


def run(args):
    return CliRunner().invoke(main, args)


def ends_in_one_error(result) -> str:
    """A run that failed after its work began: the progress lines it printed (`analyze`'s
    stages, `zoo build`'s status line, tqdm bars redrawn with carriage returns), then exactly
    one line, `error: ...`, and exit status 2 -- no traceback."""
    lines = [line for line in result.output.replace("\r", "\n").splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.output
    return lines[-1]


# -- an OUT that overlaps an input is refused before any work -----------------------------------
@pytest.mark.parametrize("setup", FOLDER_COMMANDS, indirect=True)
@pytest.mark.parametrize("relation", ["is", "contains", "inside"])
def test_output_overlapping_an_input_is_refused_even_with_overwrite(setup, relation):
    target = setup.inputs["input"]
    out = {"is": target, "contains": target.parent, "inside": setup.inputs["base"] / "out"}[relation]
    before = setup.snapshot()
    line = one_error(run(setup.args(out, "--overwrite")))
    expected = {"is": "is the input", "contains": "contains the input", "inside": "lies inside the input model"}[relation]
    assert line.startswith(f"error: output {out} {expected} "), line
    assert setup.snapshot() == before


@pytest.mark.parametrize("setup", ["eval", "bench"], indirect=True)
@pytest.mark.parametrize("relation", ["is", "inside"])
def test_results_folder_that_is_or_lies_inside_an_input_is_refused(setup, relation):
    target = setup.inputs["model"] if setup.name == "eval" else setup.inputs["zoo"]
    out = target if relation == "is" else target / "results"
    before = setup.snapshot()
    line = one_error(run(setup.args(out)))
    assert ("is the input" if relation == "is" else "lies inside the input model") in line
    assert setup.snapshot() == before


@pytest.mark.parametrize("setup", ["eval"], indirect=True)
def test_results_files_go_next_to_other_files_and_replace_only_their_own(setup):
    out = setup.root / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "eval.md").write_text("old")
    cache_before = tree(setup.cache)
    result = run(setup.args(out))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["eval.json", "eval.md", "notes.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "eval.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's 0600
    assert (out / "notes.txt").read_text() == "mine" and (out / "eval.md").read_text() != "old"
    assert tree(setup.cache) == cache_before


def test_zoo_build_refuses_a_zoo_around_its_dataset_folder(tmp_path, monkeypatch):
    data = tmp_path / zoo_subdir() / "fashion"
    data.mkdir(parents=True)
    monkeypatch.setenv("MDAMERGE_FASHION_DIR", str(data))
    line = one_error(run(["zoo", "build", "--tasks", "digits8x8", "--cache", str(tmp_path)]))
    assert line == f"error: output {tmp_path / zoo_subdir()} contains the input {data}: choose another --out"
    assert os.listdir(tmp_path / zoo_subdir()) == ["fashion"]


# -- an existing OUT: refused before any work without --overwrite, replaced and said with it -----
@pytest.mark.parametrize("setup", FOLDER_COMMANDS, indirect=True)
def test_existing_output_needs_overwrite_and_replacing_it_is_said(setup, monkeypatch):
    out = setup.root / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert one_error(run(setup.args(out))) == f"error: output directory {out} already exists (use --overwrite to replace it)"
    assert (out / "old.txt").read_text() == "old"
    inputs_before = tree(setup.root, skip=out)
    result = run(setup.args(out, "--overwrite"))
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1].endswith("(replaced the existing folder)")
    assert not (out / "old.txt").exists() and any(out.iterdir())
    assert tree(setup.root, skip=out) == inputs_before
    assert not [p for p in setup.root.iterdir() if p.name.startswith(".")]


# -- a failed write is one line and leaves nothing -----------------------------------------------
def first_write(monkeypatch, name: str, out: Path, action) -> list:
    """Run ``action()`` at the first write of command ``name`` into ``out``; returns the calls seen."""
    seen = []
    if name in ("eval", "bench"):  # results files: each goes through a temporary file in OUT; fail at
        target, attribute = writer_module.tempfile, "mkstemp"  # the second, once the first is written
    else:
        target, attribute = {
            "lora": (writer_module.StreamingSafetensorsWriter, "write"),
            "adapt": (adaptation_output, "save_file"),
            "analyze": (Report, "write"),
            "zoo": (zoo_model, "save_file"),  # TinyViT.save_pretrained
        }[name]
    original = getattr(target, attribute)

    def injected(*args, **kwargs):
        if attribute == "mkstemp" and not Path(kwargs.get("dir", "")).is_relative_to(out):
            return original(*args, **kwargs)
        seen.append(attribute)
        if attribute != "mkstemp" or len(seen) == 2:
            action()
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attribute, injected)
    return seen


def fail_with(code):
    def action():
        raise OSError(code, os.strerror(code))
    return action


@pytest.mark.parametrize("setup", ALL, indirect=True)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_disk_full_and_read_only_are_one_line_and_leave_nothing(setup, monkeypatch, code):
    out = setup.root / "out"
    before = setup.snapshot()
    seen = first_write(monkeypatch, setup.name, out, fail_with(code))
    assert ends_in_one_error(run(setup.args(out))) == f"error: cannot write {out}: {os.strerror(code)}"
    assert seen and setup.snapshot() == before
    assert len(seen) == (2 if setup.name in ("eval", "bench") else 1)


def test_zoo_build_disk_full_is_one_line_and_leaves_the_zoo_as_it_was(tmp_path, monkeypatch):
    zoo = Zoo(tmp_path / zoo_subdir(), settings=TINY)
    zoo._save_state()  # a zoo started with tiny settings: the build uses them
    before = tree(tmp_path)
    seen = first_write(monkeypatch, "zoo", tmp_path, fail_with(errno.ENOSPC))
    line = ends_in_one_error(run(["zoo", "build", "--tasks", "digits8x8", "--cache", str(tmp_path), "--threads", "1", "--quiet"]))
    assert line == f"error: cannot write {zoo.base_dir}: No space left on device"
    assert seen and tree(tmp_path) == before


@pytest.mark.parametrize("setup", ALL, indirect=True)
def test_output_under_a_file_is_one_line_before_any_work(setup, monkeypatch):
    (setup.root / "afile").write_text("x")
    out = setup.root / "afile" / "deeper" / "out"
    seen = first_write(monkeypatch, setup.name, out, lambda: None)
    assert one_error(run(setup.args(out))) == f"error: cannot write {out}: {setup.root / 'afile'} is not a directory"
    assert not seen and (setup.root / "afile").read_text() == "x"


def test_zoo_build_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    line = one_error(run(["zoo", "build", "--tasks", "digits8x8", "--cache", str(tmp_path / "afile" / "cache")]))
    assert line == f"error: cannot write {tmp_path / 'afile' / 'cache' / zoo_subdir()}: {tmp_path / 'afile'} is not a directory"


@pytest.mark.parametrize("setup", ALL, indirect=True)
def test_output_that_is_a_file_is_one_line_even_with_overwrite(setup):
    out = setup.root / "out"
    out.write_text("x")
    extra = ["--overwrite"] if setup.name in FOLDER_COMMANDS else []
    line = one_error(run(setup.args(out, *extra)))
    if setup.name in FOLDER_COMMANDS:
        assert line == f"error: output path {out} exists and is not a directory"
    else:
        assert line == f"error: cannot write {out}: {out} is not a directory"
    assert out.read_text() == "x"


# -- SIGTERM is handled like SIGINT ----------------------------------------------------------------
def signal_self(sig):
    return lambda: os.kill(os.getpid(), sig)  # delivered to the main thread, as from `kill` or Ctrl-C


@pytest.mark.parametrize("setup", ALL, indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_writing_removes_the_partial_output(setup, monkeypatch, sig, ctrl_c):
    out = setup.root / "out"
    before = setup.snapshot()
    previous = signal.getsignal(signal.SIGTERM)
    seen = first_write(monkeypatch, setup.name, out, signal_self(sig))
    line = ends_in_one_error(run(setup.args(out)))
    assert line == f"error: interrupted by {sig.name}; the partial output of {out} was removed"
    assert seen and setup.snapshot() == before
    assert signal.getsignal(signal.SIGTERM) == previous


def test_zoo_build_sigterm_is_one_line_and_leaves_the_zoo_as_it_was(tmp_path, monkeypatch):
    Zoo(tmp_path / zoo_subdir(), settings=TINY)._save_state()
    before = tree(tmp_path)
    seen = first_write(monkeypatch, "zoo", tmp_path, signal_self(signal.SIGTERM))
    line = ends_in_one_error(run(["zoo", "build", "--tasks", "digits8x8", "--cache", str(tmp_path), "--threads", "1", "--quiet"]))
    assert line == "error: interrupted by SIGTERM; partial outputs were removed"
    assert seen and tree(tmp_path) == before
