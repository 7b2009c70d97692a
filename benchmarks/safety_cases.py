"""Re-run every case of issue 10 ("never lose a user's data, never read outside the inputs,
every failure is one line") through the real ``mdamerge merge`` command, and the
output cases through ``mdamerge lora`` and ``mdamerge analyze``.

Each case builds toy models (a few hundred KB; the timing cases about 10 MB per model) in a
fresh temporary folder, hashes every file, link and folder under it, runs the CLI in a
subprocess, and hashes again. A failing run must change nothing at all (OUT included);
a successful one nothing outside OUT. Prints a Markdown table: case, exit code, the
message lines on stderr, whether the tree outside OUT is unchanged, and the case's own
check.

    python benchmarks/safety_cases.py            # all cases, ~2 min on 2 busy cores
    python benchmarks/safety_cases.py -k symlink # cases whose name contains 'symlink'
    python benchmarks/safety_cases.py -k "#20"   # the cases of issue 20 (the second round)

Disk-full and read-only cases mount small tmpfs file systems when run as root with
CAP_SYS_ADMIN; otherwise they inject the same OSError into the writer (said in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import yaml
from safetensors.torch import save_file

# The input-tree hash is the tests' own (tests/safety_util.py), so both check "nothing changed" alike.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from safety_util import remove_deep_tree, tree  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
SMALL = {"embed.weight": (64, 32), "layers.0.attn.weight": (32, 32), "layers.0.mlp.weight": (64, 32),
         "layers.0.mlp.bias": (64,), "layers.0.norm.weight": (32,), "head.weight": (4, 32)}
SLOW = {f"layers.{i}.weight": (768, 768) for i in range(6)}  # tsv: a few seconds per merge


# -- toy models ------------------------------------------------------------------------------
def state(shapes: dict, seed: int, base: dict | None = None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    if base is None:
        return {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    return {n: t + 0.05 * torch.randn(t.shape, generator=gen) for n, t in base.items()}


def write_model(folder: Path, tensors: dict, index: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 32}))
    (folder / "tokenizer.json").write_text("{}")
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def toy(root: Path, shapes: dict = SMALL, models: int = 2) -> dict:
    base = state(shapes, 0)
    write_model(root / "base", base)
    fts = [write_model(root / f"ft{i}", state(shapes, i + 1, base)) for i in range(models)]
    return {"root": root, "base": root / "base", "fts": fts}


def config(t: dict, name: str = "merge.yaml", text: str | None = None, **extra) -> Path:
    path = t["root"] / name
    if text is not None:
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path
    cfg = {"method": "task_arithmetic", "base_model": str(t["base"]), "models": [str(p) for p in t["fts"]], **extra}
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- running and hashing ----------------------------------------------------------------------
def cli(*args, timeout: int = 120) -> tuple[int, list[str], str]:
    proc = subprocess.run([sys.executable, "-m", "mdamerge", "merge", *map(str, args), "--quiet"], env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, [l for l in proc.stderr.splitlines() if l.strip()], proc.stdout.strip()


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mdamerge", "merge", *map(str, args), "--quiet"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, list[str], str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, [l for l in err.splitlines() if l.strip()], out.strip()


def wait_for_partial(out: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until the merge has created its ``.OUT.partial-*`` folder and written a shard into it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for partial in out.parent.glob(f".{out.name}.partial-*"):
            if (partial / "model.safetensors").exists():
                return True
        time.sleep(0.02)
    return False


def partials(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.partial-*"))


# -- mounting (root only) ------------------------------------------------------------------------
def mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode == 0


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True)


INJECT = """
import errno, sys
from mdamerge.io import writer
def fail(self, name, tensor):
    raise OSError(errno.{code}, "{text}")
writer.StreamingSafetensorsWriter.write = fail
from mdamerge.cli import main
sys.argv = ["mdamerge", "merge", *sys.argv[1:]]
main()
"""


def cli_injected(code: str, text: str, *args) -> tuple[int, list[str], str]:
    proc = subprocess.run([sys.executable, "-c", INJECT.format(code=code, text=text), *map(str, args), "--quiet"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    return proc.returncode, [l for l in proc.stderr.splitlines() if l.strip()], proc.stdout.strip()


# -- the cases ----------------------------------------------------------------------------------
CASES: list[tuple[str, Callable[[Path], dict]]] = []


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn
    return register


def refused(root: Path, *args, expect_exit: int = 2, check=None, out: Path | None = None) -> dict:
    """Run and require the whole tree (OUT included) to be unchanged."""
    before = tree(root)
    code, err, _ = cli(*args)
    result = {"exit": code, "err": err, "unchanged": tree(root) == before}
    if check is not None:
        result["check"] = check()
    return result


def succeeds(root: Path, out: Path, *args, check=None) -> dict:
    before = tree(root, skip=out)
    code, err, stdout = cli(*args)
    result = {"exit": code, "err": err or [stdout], "unchanged": tree(root, skip=out) == before}
    if check is not None:
        result["check"] = check()
    return result


# Data loss
@case("--overwrite --out = an input model folder")
def _(root):
    t = toy(root)
    return refused(root, config(t), "--out", t["fts"][0], "--overwrite")


@case("--overwrite --out = folder containing the inputs")
def _(root):
    t = toy(root / "models")
    return refused(root, config(t), "--out", root / "models", "--overwrite")


@case("--overwrite --out = the folder holding the config file")
def _(root):
    t = toy(root / "models")
    out = root / "out"
    out.mkdir()
    return refused(root, config(t, name="../out/merge_config.yaml"), "--out", out, "--overwrite")


@case("--out inside an input (base/merged)")
def _(root):
    t = toy(root)
    return refused(root, config(t), "--out", t["base"] / "merged",
                   check=lambda: not (t["base"] / "merged").exists())


@case("earlier output nested in the base is not copied")
def _(root):
    t = toy(root)
    nested = t["base"] / "merged"  # e.g. left by an older mdamerge version
    nested.mkdir()
    (nested / "merge_config.yaml").write_text("method: average\n")
    (nested / "config.json").write_text("{}")
    out = root / "out"
    return succeeds(root, out, config(t), "--out", out, check=lambda: not (out / "merged").exists())


@case("OUT created by someone else during the merge")
def _(root):
    t = toy(root, SLOW)
    out = root / "out"
    cfg = config(t, method="tsv")
    proc = start(cfg, "--out", out)
    started = wait_for_partial(out, proc)
    out.mkdir()
    (out / "user-file.txt").write_text("mine")
    before = tree(root, skip=None)
    code, err, _ = finish(proc)
    # the intruder's folder (inside OUT) must be intact too: compare the whole tree except partials
    after = {k: v for k, v in tree(root).items() if ".partial-" not in k}
    before = {k: v for k, v in before.items() if ".partial-" not in k}
    return {"exit": code, "err": err, "unchanged": after == before,
            "check": started and (out / "user-file.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["user-file.txt"]
            and not partials(out)}


@case("two different merges into one OUT at once")
def _(root):
    t = toy(root, SLOW)
    out = root / "out"
    a, b = config(t, "a.yaml", method="tsv"), config(t, "b.yaml", method="iso_c")
    before = tree(root, skip=out)
    procs = [start(a, "--out", out), start(b, "--out", out)]
    results = [finish(p) for p in procs]
    codes = sorted(r[0] for r in results)
    winner = "tsv" if results[0][0] == 0 else "iso_c"
    method = yaml.safe_load((out / "merge_config.yaml").read_text())["method"] if out.exists() else None
    loser = [r for r in results if r[0] != 0]
    return {"exit": f"{results[0][0]} / {results[1][0]}", "err": loser[0][1] if loser else ["both succeeded"],
            "unchanged": tree(root, skip=out) == before, "check": codes == [0, 2] and method == winner and not partials(out)}


@case("--overwrite replaces only the folder there at the start, and says so")
def _(root):
    t = toy(root)
    out = root / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = succeeds(root, out, config(t), "--out", out, "--overwrite",
                      check=lambda: not (out / "old.txt").exists() and (out / "model.safetensors").exists())
    result["check"] = result["check"] and "replaced the existing folder" in result["err"][-1]
    return result


# Reading outside the inputs
def index_case(root: Path, weight_map) -> dict:
    t = toy(root)
    (root / "outside.safetensors").write_bytes((t["fts"][0] / "model.safetensors").read_bytes())
    ft = t["fts"][0]
    (ft / "model.safetensors").rename(ft / "model-00001-of-00001.safetensors")
    (ft / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return refused(root, config(t), "--out", root / "out", check=lambda: not (root / "out").exists())


@case("index weight_map -> ../outside.safetensors")
def _(root):
    return index_case(root, {n: "../outside.safetensors" for n in SMALL})


@case("index weight_map -> absolute path")
def _(root):
    return index_case(root, {n: str(root / "outside.safetensors") for n in SMALL})


@case("index weight_map -> /etc/passwd")
def _(root):
    return index_case(root, {n: "/etc/passwd" for n in SMALL})


@case("index weight_map is a number")
def _(root):
    return index_case(root, 42)


@case("index weight_map is a list")
def _(root):
    return index_case(root, ["model-00001-of-00001.safetensors"])


@case("index entry is a number")
def _(root):
    return index_case(root, {n: 7 for n in SMALL})


@case("weight file symlinked outside the model folder")
def _(root):
    t = toy(root)
    ft = t["fts"][0]
    (ft / "model.safetensors").rename(root / "elsewhere.safetensors")
    (ft / "model.safetensors").symlink_to(root / "elsewhere.safetensors")
    return refused(root, config(t), "--out", root / "out")


@case("base/secret.txt -> /etc/hostname (not copied)")
def _(root):
    t = toy(root)
    (t["base"] / "secret.txt").symlink_to("/etc/hostname")
    (t["base"] / "inside.txt").symlink_to("tokenizer.json")
    out = root / "out"
    return succeeds(root, out, config(t), "--out", out,
                    check=lambda: not (out / "secret.txt").exists() and (out / "inside.txt").read_text() == "{}")


@case("dangling and looping symlinks in the base")
def _(root):
    t = toy(root)
    (t["base"] / "dangling.txt").symlink_to(root / "nowhere")
    (t["base"] / "loop.txt").symlink_to(t["base"] / "loop.txt")
    os.mkfifo(t["base"] / "pipe")
    out = root / "out"
    return succeeds(root, out, config(t), "--out", out,
                    check=lambda: (out / "model.safetensors").exists() and not (out / "pipe").exists())


# Tracebacks where one line is promised
def with_tensor(root: Path, name: str, make, method: str) -> dict:
    base = state(SMALL, 0)
    base[name] = make(0)
    t = {"root": root, "base": write_model(root / "base", base),
         "fts": [write_model(root / f"ft{i}", {**state(SMALL, i + 1, {k: v for k, v in base.items() if k != name}),
                                               name: make(i + 1)}) for i in range(2)]}
    out = root / "out"
    return succeeds(root, out, config(t, method=method), "--out", out, check=lambda: (out / "model.safetensors").exists())


for method in ("average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts", "mda"):
    case(f"0-dim tensor, {method}")(lambda root, m=method: with_tensor(root, "logit_scale", lambda s: torch.tensor(float(s)), m))
for shape in ((0, 64), (64, 0)):
    for method in ("tsv", "mda", "iso_cts"):
        case(f"0-size tensor {list(shape)}, {method}")(
            lambda root, m=method, sh=shape: with_tensor(root, "empty.weight", lambda s: torch.zeros(sh), m))


@case("average, weights summing to 0")
def _(root):
    t = toy(root)
    cfg = {"method": "average", "base_model": str(t["base"]),
           "models": [{"path": str(t["fts"][0]), "weight": 1.0}, {"path": str(t["fts"][1]), "weight": -1.0}]}
    path = root / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return refused(root, path, "--out", root / "out")


@case("shard_size: 1.2.3MB")
def _(root):
    t = toy(root)
    return refused(root, config(t, shard_size="1.2.3MB"), "--out", root / "out")


@case("shard_size: 2XB")
def _(root):
    t = toy(root)
    return refused(root, config(t, shard_size="2XB"), "--out", root / "out")


@case("--device tpu9")
def _(root):
    t = toy(root)
    return refused(root, config(t), "--out", root / "out", "--device", "tpu9")


@case("device: banana")
def _(root):
    t = toy(root)
    return refused(root, config(t, device="banana"), "--out", root / "out")


@case("non-UTF-8 config")
def _(root):
    t = toy(root)
    return refused(root, config(t, text=b"method: \xff\xfe average\n"), "--out", root / "out")


@case("disk full (ENOSPC)")
def _(root):
    t = toy(root)
    disk = root / "disk"
    if mount_tmpfs(disk, "size=8k"):  # the toy model's weights are 21 KB
        try:
            result = refused(root, config(t), "--out", disk / "out", check=lambda: os.listdir(disk) == [])
            result["how"] = "8 KiB tmpfs"
        finally:
            umount(disk)
        return result
    before = tree(root)
    code, err, _ = cli_injected("ENOSPC", "No space left on device", config(t), "--out", disk / "out")
    return {"exit": code, "err": err, "unchanged": tree(root) == before, "check": os.listdir(disk) == [],
            "how": "injected OSError (no tmpfs)"}


@case("read-only output parent (EROFS)")
def _(root):
    t = toy(root)
    disk = root / "ro"
    if not mount_tmpfs(disk, "ro,size=64k"):
        return {"exit": "-", "err": ["skipped: cannot mount a read-only tmpfs here (tests/ inject it)"], "unchanged": True}
    try:
        result = refused(root, config(t), "--out", disk / "out")
    finally:
        umount(disk)
    result["how"] = "read-only tmpfs"
    return result


@case("output parent is a file")
def _(root):
    t = toy(root)
    (root / "afile").write_text("x")
    return refused(root, config(t), "--out", root / "afile" / "out")


# Silently accepted
@case("--workers 0")
def _(root):
    t = toy(root)
    return refused(root, config(t), "--out", root / "out", "--workers", "0")


@case("--workers -3")
def _(root):
    t = toy(root)
    return refused(root, config(t), "--out", root / "out", "--workers", "-3")


@case("exclude: [[head, emb]]")
def _(root):
    t = toy(root)
    return refused(root, config(t, exclude=[["head", "emb"]]), "--out", root / "out")


@case("YAML alias bomb in exclude")
def _(root):
    t = toy(root)
    # 9 levels of 10 references each: 10^9 strings once expanded, a few hundred bytes of YAML
    text = yaml.safe_dump({"method": "task_arithmetic", "base_model": str(t["base"]), "models": [str(p) for p in t["fts"]]})
    text += "exclude:\n  - &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    text += "".join(f"  - &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
    path = config(t, text=text)
    begin = time.time()
    result = refused(root, path, "--out", root / "out")
    result["check"] = time.time() - begin < 30
    return result


@case("exclude and filter patterns matching no tensor")
def _(root):
    t = toy(root)
    out = root / "out"
    cfg = config(t, exclude=["head", "no_such_tensor"], parameters={"scaling": [{"filter": "atn", "value": 0.5}, {"value": 0.3}]})

    def card_ok():
        card = (out / "README.md").read_text()
        return "(excluded: head)" in card and "no_such_tensor" not in card.split("## Source models")[0]
    return succeeds(root, out, cfg, "--out", out, check=card_ok)


@case("shape mismatch in a non-vocabulary dim, vocab_mismatch: shared")
def _(root):
    t = toy(root)
    ft = t["fts"][0]
    sd = state(SMALL, 1, state(SMALL, 0))
    sd["layers.0.mlp.weight"] = torch.randn(65, 32)
    save_file(sd, str(ft / "model.safetensors"))
    return refused(root, config(t, vocab_mismatch="shared"), "--out", root / "out")


@case("same mismatch, default rule (no misleading hint)")
def _(root):
    t = toy(root)
    ft = t["fts"][0]
    sd = state(SMALL, 1, state(SMALL, 0))
    sd["layers.0.mlp.weight"] = torch.randn(65, 32)
    save_file(sd, str(ft / "model.safetensors"))
    result = refused(root, config(t), "--out", root / "out")
    result["check"] = "vocab_mismatch" not in " ".join(result["err"])
    return result


# Interrupted runs
def interrupted(root: Path, sig: int) -> dict:
    t = toy(root, SLOW)
    out = root / "out"
    cfg = config(t, method="tsv")
    before = tree(root)
    proc = start(cfg, "--out", out)
    started = wait_for_partial(out, proc)
    proc.send_signal(sig)
    code, err, _ = finish(proc)
    return {"exit": code, "err": err, "unchanged": tree(root) == before, "check": started and not partials(out)}


@case("SIGTERM during the merge")
def _(root):
    return interrupted(root, signal.SIGTERM)


@case("SIGINT during the merge")
def _(root):
    return interrupted(root, signal.SIGINT)


@case("kill -9, then rerun")
def _(root):
    t = toy(root, SLOW)
    out = root / "out"
    cfg = config(t, method="tsv")
    before = tree(root)
    proc = start(cfg, "--out", out)
    started = wait_for_partial(out, proc)
    proc.kill()
    proc.wait()
    left = partials(out)
    code, err, _ = cli(cfg, "--out", out)
    return {"exit": f"-9, rerun {code}", "err": err, "unchanged": tree(root, skip=out) == before,
            "check": started and len(left) == 1 and not partials(out) and (out / "model.safetensors").exists()}


# The other commands that write an output (lora, analyze; the zoo-based ones need a built zoo
# and are covered by tests/test_safety_commands.py)
def command(argv: list, patch: str = "") -> tuple[int, list[str], str]:
    """``mdamerge ARGV`` in a subprocess; ``patch`` is Python run first (a fault injection)."""
    script = f"import sys\n{patch}\nfrom mdamerge.cli import main\nsys.argv = ['mdamerge', *sys.argv[1:]]\nmain()\n"
    proc = subprocess.run([sys.executable, "-c", script, *map(str, argv)], env=ENV, capture_output=True, text=True,
                          timeout=300)
    lines = [l for l in proc.stderr.replace("\r", "\n").splitlines() if l.strip() and "it/s" not in l]
    return proc.returncode, lines, proc.stdout.strip()


def command_refused(root: Path, argv: list, patch: str = "") -> dict:
    before = tree(root)
    code, err, _ = command(argv, patch)
    return {"exit": code, "err": err, "unchanged": tree(root) == before}


def lora_toy(root: Path) -> list:
    """A toy base and two PEFT-layout LoRA adapters; ``mdamerge lora`` arguments without --out."""
    base = state(SMALL, 0)
    write_model(root / "base", base)
    adapters = []
    for i in range(2):
        gen = torch.Generator().manual_seed(10 + i)
        folder = root / f"adapter{i}"
        folder.mkdir()
        save_file({"base_model.model.layers.0.attn.lora_A.weight": torch.randn(4, 32, generator=gen),
                   "base_model.model.layers.0.attn.lora_B.weight": torch.randn(32, 4, generator=gen) * 0.1},
                  str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["attn"], "fan_in_fan_out": False,
             "bias": "none"}))
        adapters.append(folder)
    return ["lora", root / "base", *adapters, "--quiet"]


FAIL_WRITE = ("import errno\nfrom mdamerge.io import writer\n"
              "def fail(*a, **k): raise OSError(errno.{code}, '{text}')\n"
              "writer.StreamingSafetensorsWriter.write = fail")
SIGTERM_AT_WRITE = ("import os, signal\nfrom mdamerge.io import writer\n"
                    "def stop(*a, **k): os.kill(os.getpid(), signal.SIGTERM)\n"
                    "writer.StreamingSafetensorsWriter.write = stop")


@case("lora --overwrite --out = an adapter folder")
def _(root):
    argv = lora_toy(root)
    return command_refused(root, [*argv, "--out", root / "adapter0", "--overwrite"])


@case("lora --overwrite --out = folder containing the inputs")
def _(root):
    argv = lora_toy(root / "models")
    return command_refused(root, [*argv, "--out", root / "models", "--overwrite"])


@case("lora --out inside the base (base/merged)")
def _(root):
    argv = lora_toy(root)
    return command_refused(root, [*argv, "--out", root / "base" / "merged"])


@case("lora, output parent is a file")
def _(root):
    argv = lora_toy(root)
    (root / "afile").write_text("x")
    return command_refused(root, [*argv, "--out", root / "afile" / "out"])


@case("lora, disk full (injected ENOSPC)")
def _(root):
    argv = lora_toy(root)
    result = command_refused(root, [*argv, "--out", root / "out"], FAIL_WRITE.format(code="ENOSPC", text="No space left on device"))
    return {**result, "check": not (root / "out").exists()}


@case("lora, SIGTERM while writing (sent by the writer)")
def _(root):
    argv = lora_toy(root)
    return {**command_refused(root, [*argv, "--out", root / "out"], SIGTERM_AT_WRITE), "check": not partials(root / "out")}


@case("analyze --overwrite --out = a fine-tuned model")
def _(root):
    t = toy(root)
    return command_refused(root, ["analyze", "--base", t["base"], "--models", ",".join(map(str, t["fts"])),
                                  "--out", t["fts"][1], "--overwrite"])


@case("analyze, output parent is a file")
def _(root):
    t = toy(root)
    (root / "afile").write_text("x")
    return command_refused(root, ["analyze", "--base", t["base"], "--models", ",".join(map(str, t["fts"])),
                                  "--out", root / "afile" / "out"])


# Issue 20: bad inputs outside merge's main path (lora, analyze, replayed configs, special files)
def lora_with_config(root: Path, **changes) -> list:
    """``lora_toy`` with ``changes`` written into the second adapter's adapter_config.json."""
    argv = lora_toy(root)
    cfg_file = argv[3] / "adapter_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **changes}))
    return argv


for _label, _changes in [("lora_alpha: \"sixteen\"", {"lora_alpha": "sixteen"}), ("lora_alpha: null", {"lora_alpha": None}),
                         ("bad alpha_pattern regex", {"alpha_pattern": {"(attn": 4}}), ("r: 0", {"r": 0}),
                         ("r: -4", {"r": -4}), ("r: 10**30", {"r": 10**30}),
                         ("target_modules not matching the factors", {"target_modules": ["mlp"]}),
                         ("adapters of different base_model_name_or_path", {"base_model_name_or_path": "org/other-model"})]:
    @case(f"[#20] lora, adapter_config.json {_label}")
    def _(root, _changes=_changes):
        argv = lora_with_config(root, **_changes)
        if "base_model_name_or_path" in _changes:  # the first adapter names its base too
            first = argv[2] / "adapter_config.json"
            first.write_text(json.dumps({**json.loads(first.read_text()), "base_model_name_or_path": "org/model"}))
        return command_refused(root, [*argv, "--out", root / "out"])


for _label, _content in [("a JSON list", b"[1, 2]"), ("not UTF-8", b'{"r": \xff}')]:
    @case(f"[#20] lora, adapter_config.json is {_label}")
    def _(root, _content=_content):
        argv = lora_toy(root)
        (argv[3] / "adapter_config.json").write_bytes(_content)
        return command_refused(root, [*argv, "--out", root / "out"])


@case("[#20] lora, rank-0 lora_A/lora_B")
def _(root):
    argv = lora_with_config(root, r=None)
    save_file({"base_model.model.layers.0.attn.lora_A.weight": torch.zeros(0, 32),
               "base_model.model.layers.0.attn.lora_B.weight": torch.zeros(32, 0)}, str(argv[3] / "adapter_model.safetensors"))
    return command_refused(root, [*argv, "--out", root / "out"])


@case("[#20] lora --weights nan,1")
def _(root):
    return command_refused(root, [*lora_toy(root), "--weights", "nan,1", "--out", root / "out"])


for _label, _change in [("weight: x", {"weight": "x"}), ("parameters: [1, 2]", {"parameters": [1, 2]}),
                        ("seed: banana", {"seed": "banana"})]:
    @case(f"[#20] replayed lora merge_config with {_label}")
    def _(root, _change=_change):
        command([*lora_toy(root), "--out", root / "first"])
        cfg = yaml.safe_load((root / "first" / "merge_config.yaml").read_text())
        if "weight" in _change:
            first = cfg["models"][0]
            cfg["models"][0] = {"path": first["path"] if isinstance(first, dict) else first, "weight": _change["weight"]}
        else:
            cfg.update(_change)
        (root / "replay.yaml").write_text(yaml.safe_dump(cfg))
        return command_refused(root, ["merge", root / "replay.yaml", "--out", root / "again"])


def devnull_base_argv(root: Path, command_name: str) -> list:
    """``mdamerge COMMAND`` arguments with /dev/null as the base (a character device)."""
    if command_name == "lora":
        return ["lora", "/dev/null", *lora_toy(root)[2:], "--out", root / "out"]
    t = toy(root)
    if command_name == "merge":
        return ["merge", config(t, base_model="/dev/null"), "--out", root / "out"]
    return ["analyze", "--base", "/dev/null", "--models", ",".join(map(str, t["fts"])), "--out", root / "out"]


for _command in ("merge", "lora", "analyze"):
    @case(f"[#20] /dev/null as the base ({_command})")
    def _(root, _command=_command):
        return command_refused(root, devnull_base_argv(root, _command))


for _name in ("model.safetensors", "model.safetensors.index.json"):
    @case(f"[#20] {_name} of a fine-tune is a FIFO")
    def _(root, _name=_name):
        t = toy(root)
        (t["fts"][0] / _name).unlink(missing_ok=True)
        os.mkfifo(t["fts"][0] / _name)
        return refused(root, config(t), "--out", root / "out")


@case("[#20] config.json of the base and a fine-tune are FIFOs (skipped)")
def _(root):
    t = toy(root)
    for folder in (t["base"], t["fts"][0]):
        (folder / "config.json").unlink()
        os.mkfifo(folder / "config.json")
    out = root / "out"
    return succeeds(root, out, config(t), "--out", out, check=lambda: not (out / "config.json").exists())


@case("[#20] index entry with a NUL byte")
def _(root):
    return index_case(root, {"head.weight": "model-00001\u0000.safetensors"})


for _label, _params in [("a list", [1, 2]), ("a string", "scaling")]:
    @case(f"[#20] parameters: as {_label}")
    def _(root, _params=_params):
        t = toy(root)
        return refused(root, config(t, parameters=_params), "--out", root / "out")

    @case(f"[#20] mergekit parameters: as {_label}")
    def _(root, _params=_params):
        t = toy(root)
        cfg = {"merge_method": "linear", "base_model": str(t["base"]), "parameters": _params,
               "models": [{"model": str(p), "parameters": {"weight": 1.0}} for p in t["fts"]]}
        return refused(root, config(t, text=yaml.safe_dump(cfg)), "--out", root / "out")


@case("[#20] mergekit linear with weights 1 and -1")
def _(root):
    t = toy(root)
    cfg = {"merge_method": "linear", "base_model": str(t["base"]),
           "models": [{"model": str(p), "parameters": {"weight": w}} for p, w in zip(t["fts"], (1.0, -1.0))]}
    return refused(root, config(t, text=yaml.safe_dump(cfg)), "--out", root / "out")


for _label, _text in [("a 400-digit weight", "weight: " + "9" * 400), ("density: .nan", "parameters: {density: .nan}")]:
    @case(f"[#20] {_label}")
    def _(root, _text=_text):
        t = toy(root)
        text = (f"method: ties\nbase_model: {t['base']}\nmodels:\n  - path: {t['fts'][0]}\n    {_text}\n"
                f"  - {t['fts'][1]}\n")
        return refused(root, config(t, text=text), "--out", root / "out")


@case("[#20] rank_fraction: .nan")
def _(root):
    t = toy(root)
    return refused(root, config(t, text=f"method: tsv\nbase_model: {t['base']}\nmodels: [{t['fts'][0]}, {t['fts'][1]}]\n"
                                         "parameters: {rank_fraction: .nan}\n"), "--out", root / "out")


@case("[#20] base folder with 1100 nested subfolders (not copied)")
def _(root):
    t = toy(root)
    deep = t["base"] / "docs"
    deep.mkdir()
    for _ in range(1100):
        deep = deep / "d"
        deep.mkdir()
    out = root / "out"
    try:
        return succeeds(root, out, config(t), "--out", out, check=lambda: (out / "model.safetensors").exists())
    finally:
        remove_deep_tree(t["base"] / "docs")  # TemporaryDirectory's rmtree recurses once per level


def analyze_case(root: Path, *flags, merged: dict | None = None, shapes: dict = SMALL) -> dict:
    t = toy(root, shapes=shapes)
    argv = ["analyze", "--base", t["base"], "--models", ",".join(map(str, t["fts"])), *flags, "--out", root / "out"]
    if merged is not None:
        argv += ["--merged", write_model(root / "merged", {**state(shapes, 0), **merged})]
    return command_refused(root, argv)


@case("[#20] analyze --max-layers -3")
def _(root):
    return analyze_case(root, "--max-layers", "-3")


@case("[#20] analyze --device banana")
def _(root):
    return analyze_case(root, "--device", "banana")


@case("[#20] analyze, merged tensor of another shape")
def _(root):
    return analyze_case(root, merged={"layers.0.mlp.weight": torch.zeros(32, 64)})


@case("[#20] analyze, merged tensor broadcast from [1, 32]")
def _(root):
    return analyze_case(root, merged={"embed.weight": torch.zeros(1, 32)})


@case("[#20] analyze, merged int32 tensor")
def _(root):
    return analyze_case(root, merged={"embed.weight": torch.zeros(64, 32, dtype=torch.int32)})


@case("[#20] analyze, a 0 x 64 tensor (skipped; metrics.json strict JSON)")
def _(root):
    t = toy(root, shapes={**SMALL, "empty.weight": (0, 64)})
    out = root / "out"
    before = tree(root, skip=out)
    code, err, stdout = command(["analyze", "--base", t["base"], "--models", ",".join(map(str, t["fts"])), "--out", out])
    strict = code == 0 and json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: 1 / 0) is not None
    return {"exit": code, "err": err[-1:] or [stdout], "unchanged": tree(root, skip=out) == before, "check": strict}


@case("[#20] --out a/b/out with missing parents, merge fails (NaN)")
def _(root):
    t = toy(root)
    bad = state(SMALL, 1, state(SMALL, 0))
    bad["head.weight"][0, 0] = float("nan")
    save_file(bad, str(t["fts"][1] / "model.safetensors"))
    return refused(root, config(t), "--out", root / "a" / "b" / "out", check=lambda: not (root / "a").exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    rows = []
    for name, fn in CASES:
        if args.k.lower() not in name.lower():
            continue
        with tempfile.TemporaryDirectory(prefix="mdamerge-safety-") as tmp:
            begin = time.time()
            try:
                result = fn(Path(tmp))
            except Exception as exc:  # a broken case must show, not stop the table
                result = {"exit": "?", "err": [f"CASE FAILED: {type(exc).__name__}: {exc}"], "unchanged": False}
            result["seconds"] = time.time() - begin
        rows.append((name, result))
        message = " / ".join(line.replace("|", "\\|") for line in result["err"]).replace(tmp, "$T")
        check = result.get("check", "-")
        how = f" ({result['how']})" if "how" in result else ""
        print(f"| {name}{how} | {result['exit']} | {message} | {'yes' if result['unchanged'] else 'NO'} | "
              f"{'ok' if check is True else 'FAIL' if check is False else check} |", flush=True)
    bad = [n for n, r in rows if not r["unchanged"] or r.get("check") is False]
    print(f"\n{len(rows)} cases, {len(bad)} with a changed tree or a failed check" + (f": {bad}" if bad else ""))


if __name__ == "__main__":
    print("| case | exit | stderr (one line per message) | nothing outside OUT changed | case check |")
    print("|---|---|---|---|---|")
    main()
