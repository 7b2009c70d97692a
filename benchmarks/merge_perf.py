"""Wall time and peak memory of a streaming merge.

Generates a base checkpoint of about ``--params`` parameters (transformer-like 2-D
weights plus biases/norms) and T fine-tuned copies on disk, then merges them with each
method in a fresh subprocess and reports wall time and peak RSS (VmHWM of the
child). The "all in RAM" column is what holding the T+1 models in float32 would take.

    python benchmarks/merge_perf.py --params 100M --tasks 4 --methods tsv,mda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# Peak RSS comes from VmHWM: ru_maxrss survives exec(), so a child would report the
# parent's peak (here: the model generator's) instead of its own.
CHILD = """
import json, sys, time
import mdamerge
cfg, out = json.loads(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
mdamerge.merge(cfg, out, progress=False, workers=int(sys.argv[3]))
seconds = time.perf_counter() - start
hwm_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm_kb / 1024}))
"""


def parse_count(text: str) -> int:
    text = text.upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}.get(text[-1], 1)
    return int(float(text.rstrip("KMB")) * scale)


def layer_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        "attn.qkv.weight": (3 * hidden, hidden), "attn.qkv.bias": (3 * hidden,),
        "attn.out.weight": (hidden, hidden), "attn.out.bias": (hidden,),
        "mlp.fc1.weight": (4 * hidden, hidden), "mlp.fc1.bias": (4 * hidden,),
        "mlp.fc2.weight": (hidden, 4 * hidden), "mlp.fc2.bias": (hidden,),
        "ln1.weight": (hidden,), "ln2.weight": (hidden,),
    }


def model_shapes(params: int, hidden: int = 768) -> dict[str, tuple[int, ...]]:
    per_layer = sum(torch.Size(s).numel() for s in layer_shapes(hidden).values())
    layers = max(1, round(params / per_layer))
    return {f"layers.{i}.{n}": s for i in range(layers) for n, s in layer_shapes(hidden).items()}


def write_models(root: Path, shapes, num_tasks: int) -> tuple[Path, list[Path]]:
    gen = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=gen) * 0.02 for n, s in shapes.items()}
    (root / "base").mkdir()
    save_file(base, str(root / "base" / "model.safetensors"))
    paths = []
    for t in range(num_tasks):
        folder = root / f"task{t}"
        folder.mkdir()
        save_file({n: v + 0.001 * torch.randn(v.shape, generator=gen) for n, v in base.items()}, str(folder / "model.safetensors"))
        paths.append(folder)
    return root / "base", paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="100M")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--methods", default="tsv,mda")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    shapes = model_shapes(parse_count(args.params))
    numel = sum(torch.Size(s).numel() for s in shapes.values())
    all_in_ram_mb = (args.tasks + 1) * numel * 4 / 2**20
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        base, tasks = write_models(root, shapes, args.tasks)
        print(f"generated {numel / 1e6:.1f}M params x {args.tasks + 1} models in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        for method in args.methods.split(","):
            cfg = {"method": method, "base_model": str(base), "models": [str(p) for p in tasks]}
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), str(root / f"out_{method}"), str(args.workers)],
                                 capture_output=True, text=True, check=True)
            row = {"method": method, "params_M": round(numel / 1e6, 1), "tasks": args.tasks, "workers": args.workers,
                   **json.loads(out.stdout.strip().splitlines()[-1]), "all_in_ram_mb": round(all_in_ram_mb)}
            rows.append(row)
    print("| method | params | T | workers | wall time (s) | peak RSS (MB) | T+1 models in fp32 (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['params_M']}M | {r['tasks']} | {r['workers']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['all_in_ram_mb']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
