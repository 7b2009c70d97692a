"""Safety promise 4: an interrupted run leaves no partial output -- SIGTERM is handled like
SIGINT -- and a run killed too hard to clean up (kill -9) is cleaned up by the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mdamerge.errors import OutputError
from mdamerge.io.writer import OWNER_FILE, AtomicOutputDir, ShardedWriter

from safety_util import ctrl_c, one_error, run_merge, write_config  # noqa: F401  (ctrl_c: a fixture)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("sig,name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")])
def test_signal_during_the_merge_removes_the_partial_output(toy_models, tmp_path, monkeypatch, sig, name, ctrl_c):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    out = tmp_path / "out"
    write = ShardedWriter.write
    seen = []

    def write_then_signal(self, tensor_name, tensor):
        write(self, tensor_name, tensor)
        seen.extend(p.name for p in tmp_path.glob(".out.partial-*"))
        os.kill(os.getpid(), sig)  # delivered to the main thread, as from `kill` or Ctrl-C

    monkeypatch.setattr(ShardedWriter, "write", write_then_signal)
    previous = signal.getsignal(signal.SIGTERM)
    line = one_error(run_merge(cfg, "--out", out))
    assert line == f"error: interrupted by {name}; the partial output of {out} was removed"
    assert seen and not list(tmp_path.glob(".out.partial-*")) and not out.exists()
    assert signal.getsignal(signal.SIGTERM) == previous


KILLED_RUN = """
import sys, time
from mdamerge.io.writer import AtomicOutputDir
with AtomicOutputDir(sys.argv[1]) as tmp:
    (tmp / "model.safetensors").write_bytes(b"x" * 1000)
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_a_killed_run_is_cleaned_up_by_the_next_one(tmp_path, capsys):
    target = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(target)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    partial = Path(proc.stdout.readline().strip())
    proc.kill()
    proc.wait()
    assert partial.is_dir()
    with AtomicOutputDir(target) as tmp:
        (tmp / "ok").write_text("1")
    assert capsys.readouterr().err == f"warning: removed {partial}, left by an interrupted run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_running_merge_keeps_its_partial_folder_and_cannot_replace_a_later_output(tmp_path, capsys):
    target = tmp_path / "out"
    running = AtomicOutputDir(target)
    live = running.__enter__()
    (live / "half").write_text("x")
    with AtomicOutputDir(target) as tmp:  # a second run while the first is alive
        (tmp / "ok").write_text("1")
    assert (live / "half").exists() and capsys.readouterr().err == ""  # locked: neither removed nor warned about
    with pytest.raises(OutputError, match="appeared during the merge"):
        running.__exit__(None, None, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(os.listdir(target)) == ["ok"]


def test_partial_folders_it_cannot_attribute_are_named_not_removed(tmp_path, capsys):
    target = tmp_path / "out"
    foreign = tmp_path / ".out.partial-legacy"  # e.g. left by an older mdamerge: no owner file
    foreign.mkdir()
    other = tmp_path / ".out.partial-x.partial-abc"  # the partial of an output named 'out.partial-x'
    other.mkdir()
    (other / OWNER_FILE).write_text(json.dumps({"target": "out.partial-x", "pid": 1}))
    with AtomicOutputDir(target) as tmp:
        (tmp / "ok").write_text("1")
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: {foreign} looks like a partial output of an interrupted run; not removing it (delete it if no merge is running)",
        f"warning: {other} looks like a partial output of an interrupted run; not removing it (delete it if no merge is running)",
    ]
    assert foreign.is_dir() and other.is_dir()


def test_the_lock_file_does_not_end_up_in_the_output(toy_models, tmp_path):
    cfg = write_config(toy_models, tmp_path / "m.yaml")
    assert run_merge(cfg, "--out", tmp_path / "out").exit_code == 0
    assert not (tmp_path / "out" / OWNER_FILE).exists()
