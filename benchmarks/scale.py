"""Scale benchmark: streaming merges vs. an all-task-vectors-in-memory implementation.

Generates a transformer-shaped base checkpoint of about ``--params`` parameters and the
largest T of ``--tasks`` fine-tuned copies on disk (``--dtype``, bf16 by default), then
for every T and method merges

* ``streaming``: ``mdamerge.merge`` -- one tensor of each model in memory at a time;
* ``in-memory``: the FusionBench way -- load every model, keep all T task vectors
  (float32) in memory, then merge tensor by tensor with the same method code;

each in a fresh subprocess. Wall time is measured inside the child (loading, merging and
writing the output; not the Python start-up), peak memory is the child's peak RSS
(``os.wait4``'s ``ru_maxrss``, taken by a small launcher process: Linux carries the
spawning process's high-water mark into a child's ``ru_maxrss`` across exec; the child's
own ``VmHWM`` is recorded too and agrees). An in-memory run whose predicted footprint
(``(4 T + 4) x params`` bytes plus 0.5 GB) exceeds ``--memory-limit`` is reported as
infeasible instead of being started.

    python benchmarks/scale.py --params 20M --tasks 4,8,16              # a quick run
    python benchmarks/scale.py --params 350M --tasks 4,8,16 --methods tsv,mda --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OVERHEAD_BYTES = 512 * 2**20  # interpreter + torch

STREAMING = r"""
import json, sys, time
import mdamerge
cfg, out, workers, device = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
mdamerge.merge(cfg, out, workers=workers, device=device, progress=False)
seconds = time.perf_counter() - start
hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "vmhwm_mib": hwm_kib / 1024}))
"""

IN_MEMORY = r"""
import json, sys, time
import torch
from safetensors.torch import load_file, save_file
from mdamerge.config import ParameterResolver
from mdamerge.methods import get_method
from mdamerge.methods.base import TensorJob
cfg, out, device = json.loads(sys.argv[1]), sys.argv[2], sys.argv[4]
start = time.perf_counter()
base = load_file(cfg["base_model"] + "/model.safetensors")
names = [k for k, v in base.items() if v.is_floating_point()]
# every task vector of every model, in float32, held at once (as FusionBench's task-vector methods do)
task_vectors = []
for path in cfg["models"]:
    model = load_file(path + "/model.safetensors")
    task_vectors.append({k: model[k].float() - base[k].float() for k in names})
    del model
method = get_method(cfg["method"])
params = ParameterResolver(method, cfg.get("parameters") or {}).resolve
merged = {}
for k in names:
    b = base[k].to(device, torch.float32)
    job = TensorJob(k, b, [tv[k].to(device) for tv in task_vectors], [1.0] * len(task_vectors), params(k), 0, None)
    merged[k] = (b + method.merge_tensor(job).float()).to(base[k].dtype).cpu()
save_file(merged, out + ".safetensors")
seconds = time.perf_counter() - start
hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "vmhwm_mib": hwm_kib / 1024}))
"""

# Linux carries the spawning process's RSS high-water mark into a child's ru_maxrss across
# exec (vfork/fork + exec), so the benchmark process -- which generated the checkpoints and is
# large -- would inflate it. A fresh, small launcher spawns each measured child instead and
# reports the child's ru_maxrss from os.wait4.
LAUNCHER = r"""
import json, os, subprocess, sys
proc = subprocess.Popen([sys.executable, "-c", *sys.argv[1:]], stdout=subprocess.PIPE, text=True)
out = proc.stdout.read()
_, status, usage = os.wait4(proc.pid, 0)
code = os.waitstatus_to_exitcode(status)
if code:
    sys.exit(code)
result = json.loads(out.strip().splitlines()[-1])
result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
print(json.dumps(result))
"""


def parse_count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9}.get(text[-1], 1)
    return int(float(text.rstrip("KMBG")) * scale)


def parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1], 1)
    return int(float(text.rstrip("KMGT")) * scale)


def model_shapes(params: int, hidden: int | None = None, vocab: int = 32000) -> dict[str, tuple[int, ...]]:
    """A GPT/BERT-like stack: an embedding and L blocks of attention (qkv, out) and MLP (4x) weights,
    biases and norms, with L chosen to reach ``params``."""
    hidden = hidden or (1024 if params >= 250e6 else 768 if params >= 60e6 else 512)
    vocab = min(vocab, max(1000, int(0.15 * params / hidden)))
    block = {
        "attn.qkv.weight": (3 * hidden, hidden), "attn.qkv.bias": (3 * hidden,),
        "attn.out.weight": (hidden, hidden), "attn.out.bias": (hidden,),
        "mlp.fc1.weight": (4 * hidden, hidden), "mlp.fc1.bias": (4 * hidden,),
        "mlp.fc2.weight": (hidden, 4 * hidden), "mlp.fc2.bias": (hidden,),
        "ln1.weight": (hidden,), "ln2.weight": (hidden,),
    }
    per_block = sum(torch.Size(s).numel() for s in block.values())
    layers = max(1, round((params - vocab * hidden) / per_block))
    shapes = {"embed.weight": (vocab, hidden)}
    shapes.update({f"layers.{i}.{n}": s for i in range(layers) for n, s in block.items()})
    return shapes


def write_models(root: Path, shapes: dict, num_tasks: int, dtype: torch.dtype) -> tuple[Path, list[Path]]:
    """Base ~N(0, 0.02^2); model t = base + N(0, 0.002^2) per entry, written as HF folders."""
    gen = torch.Generator().manual_seed(0)
    base = {n: (0.02 * torch.randn(s, generator=gen)).to(dtype) for n, s in shapes.items()}
    paths = []
    for folder, state in [("base", base)] + [(f"task{t}", None) for t in range(num_tasks)]:
        path = root / folder
        path.mkdir(parents=True, exist_ok=True)
        if state is None:
            state = {n: (v.float() + 0.002 * torch.randn(v.shape, generator=gen)).to(dtype) for n, v in base.items()}
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({"model_type": "scale-benchmark"}))
        paths.append(path)
        del state
    return paths[0], paths[1:]


def spawn(code: str, cfg: dict, out: Path, workers: int, device: str, threads: int | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (through :data:`LAUNCHER`): its JSON result, its peak RSS
    from ``wait4`` (``peak_rss_mib``) and its own ``VmHWM`` (``vmhwm_mib``), in MiB."""
    env = dict(os.environ)
    if threads:  # intra-op threads of torch/MKL in the child
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = [sys.executable, "-c", LAUNCHER, code, json.dumps(cfg), str(out), str(workers), device]
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        raise RuntimeError(f"child failed ({proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_limit(text: str) -> int:
    if text != "auto":
        return parse_bytes(text)
    limit = 24 * 2**30
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        limit = min(limit, int(0.85 * available))
    except (OSError, StopIteration):
        pass
    return limit


def predicted_in_memory_bytes(numel: int, num_tasks: int, dtype: torch.dtype) -> int:
    """T float32 task vectors + the base and the output in the on-disk dtype + one model while loading."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return numel * (4 * num_tasks + 3 * itemsize) + OVERHEAD_BYTES


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="350M", help="parameters of the generated model (e.g. 20M, 350M)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default: from --params)")
    parser.add_argument("--tasks", default="4,8,16", help="numbers of fine-tuned models T")
    parser.add_argument("--methods", default="tsv,mda")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="on-disk dtype of the checkpoints")
    parser.add_argument("--workers", type=int, default=1, help="--workers of the streaming merge")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/MKL threads per child (default: all cores; use 1 on a machine shared with other jobs)")
    parser.add_argument("--memory-limit", default="auto",
                        help="in-memory runs predicted above this are not started (auto: 24GiB, or 85%% of the "
                             "memory available now if less)")
    parser.add_argument("--skip-in-memory", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate the checkpoints (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--reuse", action="store_true", help="reuse checkpoints already generated in --workdir")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    tasks = sorted({int(t) for t in args.tasks.split(",")})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dtype = DTYPES[args.dtype]
    shapes = model_shapes(parse_count(args.params), args.hidden)
    numel = sum(torch.Size(s).numel() for s in shapes.values())
    limit = memory_limit(args.memory_limit)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mdamerge-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        start = time.perf_counter()
        if args.reuse and (root / f"task{max(tasks) - 1}" / "model.safetensors").is_file():
            base, finetuned = root / "base", [root / f"task{t}" for t in range(max(tasks))]
        else:
            base, finetuned = write_models(root, shapes, max(tasks), dtype)
        print(f"{'reused' if args.reuse else 'generated'} {numel / 1e6:.1f}M params ({len(shapes)} tensors, {args.dtype}) x {max(tasks) + 1} models "
              f"in {time.perf_counter() - start:.0f}s under {root}; in-memory limit {limit / 2**30:.1f} GiB", file=sys.stderr)
        for num_tasks in tasks:
            for method in methods:
                cfg = {"method": method, "base_model": str(base), "models": [str(p) for p in finetuned[:num_tasks]]}
                row = {"params_M": round(numel / 1e6, 1), "dtype": args.dtype, "tasks": num_tasks, "method": method,
                       "workers": args.workers, "device": args.device, "threads": args.threads}
                out = root / f"out-{method}-{num_tasks}"
                stream = spawn(STREAMING, cfg, out, args.workers, args.device, args.threads)
                shutil.rmtree(out, ignore_errors=True)
                row.update(stream_s=stream["seconds"], stream_rss_mib=stream["peak_rss_mib"], stream_hwm_mib=stream["vmhwm_mib"])
                predicted = predicted_in_memory_bytes(numel, num_tasks, dtype)
                row["in_memory_predicted_mib"] = predicted / 2**20
                if args.skip_in_memory:
                    row["in_memory"] = "skipped"
                elif predicted > limit:
                    row["in_memory"] = f"infeasible: needs ~{predicted / 2**30:.1f} GiB > limit {limit / 2**30:.1f} GiB"
                else:
                    mem = spawn(IN_MEMORY, cfg, out, 1, args.device, args.threads)
                    Path(str(out) + ".safetensors").unlink(missing_ok=True)
                    row.update(in_memory="ran", memory_s=mem["seconds"], memory_rss_mib=mem["peak_rss_mib"],
                               memory_hwm_mib=mem["vmhwm_mib"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"| params | T | method | streaming time (s) | streaming peak RSS (MiB) | in-memory time (s) "
          f"| in-memory peak RSS (MiB) | time ratio in-mem/stream | memory ratio in-mem/stream |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["in_memory"] == "ran":
            mem_cols = f"{r['memory_s']:.1f} | {r['memory_rss_mib']:.0f} | {fmt_ratio(r['memory_s'], r['stream_s'])} | " \
                       f"{fmt_ratio(r['memory_rss_mib'], r['stream_rss_mib'])}"
        else:
            mem_cols = f"{r['in_memory']} | ~{r['in_memory_predicted_mib']:.0f} (predicted) | - | " \
                       f"{fmt_ratio(r['in_memory_predicted_mib'], r['stream_rss_mib'])} (predicted)"
        print(f"| {r['params_M']}M {r['dtype']} | {r['tasks']} | {r['method']} | {r['stream_s']:.1f} | "
              f"{r['stream_rss_mib']:.0f} | {mem_cols} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
