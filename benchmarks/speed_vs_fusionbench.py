"""Wall time and peak memory of the SVD methods: mdamerge's exact default vs FusionBench.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/speed_vs_fusionbench.py --layers 1 --tasks 8 14

Writes a CLIP ViT-B/32-shaped vision tower (patch/position/class embeddings, ``--layers``
of its 12 encoder blocks, layer norms; 12 blocks = 87.5M parameters) and T fine-tuned
copies as safetensors folders; task vectors of the 2-D tensors = rank 32 with a 1/i
spectrum + 1e-4 dense noise (issue 9), the others small dense noise. Each measurement is
one fresh process, one thread, the whole job: read the folders, merge, write the merged
weights. Peak memory = the child's own VmHWM (not wait4's ru_maxrss, which inherits the parent's).

mdamerge: ``mdamerge.merge`` (default parameters: exact SVD route). FusionBench
(optional: run this script with a Python that has ``fusion-bench``, e.g.
/work/venv-fb/bin/python with PYTHONPATH=src; otherwise only mdamerge is measured):
``compute_and_sum_svd_mem_reduction`` (TSV-M; also the yardstick for MDA, which FusionBench
lacks), ``iso_c``, ``iso_cts`` on the state dicts loaded with safetensors, merged model
saved with safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HIDDEN, MLP, PATCHES = 768, 3072, 50


def tower_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        "vision_model.embeddings.class_embedding": (HIDDEN,),
        "vision_model.embeddings.patch_embedding.weight": (HIDDEN, 3, 32, 32),
        "vision_model.embeddings.position_embedding.weight": (PATCHES, HIDDEN),
        "vision_model.pre_layrnorm.weight": (HIDDEN,),
        "vision_model.pre_layrnorm.bias": (HIDDEN,),
    }
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
            shapes[p + f"self_attn.{proj}.bias"] = (HIDDEN,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{ln}.weight"] = (HIDDEN,)
            shapes[p + f"{ln}.bias"] = (HIDDEN,)
        shapes[p + "mlp.fc1.weight"] = (MLP, HIDDEN)
        shapes[p + "mlp.fc1.bias"] = (MLP,)
        shapes[p + "mlp.fc2.weight"] = (HIDDEN, MLP)
        shapes[p + "mlp.fc2.bias"] = (HIDDEN,)
    shapes["vision_model.post_layernorm.weight"] = (HIDDEN,)
    shapes["vision_model.post_layernorm.bias"] = (HIDDEN,)
    return shapes


def write_models(root: Path, layers: int, tasks: int) -> None:
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    shapes = tower_shapes(layers)
    base = {k: 0.02 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    (root / "base").mkdir(parents=True)
    save_file(base, str(root / "base" / "model.safetensors"))
    for t in range(tasks):
        ft = {}
        for k, s in shapes.items():
            if len(s) == 2:
                r = min(32, *s)
                u = torch.linalg.qr(torch.randn(s[0], r, generator=gen))[0]
                v = torch.linalg.qr(torch.randn(s[1], r, generator=gen))[0]
                tau = 1e-2 * ((u / torch.arange(1, r + 1)) @ v.T) + 1e-4 * torch.randn(s, generator=gen) / s[1] ** 0.5
            else:
                tau = 1e-4 * torch.randn(s, generator=gen)
            ft[k] = base[k] + tau
        (root / f"task{t}").mkdir()
        save_file(ft, str(root / f"task{t}" / "model.safetensors"))


# ---------------------------------------------------------------- one measurement (child process)
def run_mdamerge(root: Path, method: str, tasks: int, out: Path, cores: int = 1) -> None:
    import mdamerge

    config = {"method": method, "base_model": str(root / "base"),
              "models": [{"path": str(root / f"task{t}")} for t in range(tasks)]}
    mdamerge.merge(config, out, progress=False, overwrite=True, workers=cores)


def run_fusionbench(root: Path, method: str, tasks: int, out: Path, cores: int = 1) -> None:
    import contextlib
    import io

    from safetensors.torch import load_file, save_file

    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction

    base = load_file(str(root / "base" / "model.safetensors"))
    tvs = []
    for t in range(tasks):
        ft = load_file(str(root / f"task{t}" / "model.safetensors"))
        tvs.append({k: ft[k] - base[k] for k in base})
        del ft
    with contextlib.redirect_stdout(io.StringIO()):
        if method in ("tsv", "mda"):
            merged = compute_and_sum_svd_mem_reduction(tvs, accelerator="cpu")
        elif method == "iso_c":
            merged = iso_c(tvs, accelerator="cpu")
        else:
            merged = iso_cts(tvs, common_space_fraction=0.8, accelerator="cpu")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: (base[k] + merged[k]).contiguous() for k in base}, str(out / "model.safetensors"))


def child(args) -> None:
    # --cores N: FusionBench's torch/BLAS get N threads; mdamerge merges N tensors at once (--workers),
    # one thread each
    torch.set_num_threads(args.cores if args.child == "fusionbench" else 1)
    start = time.perf_counter()
    runner = run_mdamerge if args.child == "mdamerge" else run_fusionbench
    runner(Path(args.root), args.method, args.child_tasks, Path(args.root) / f"out-{args.child}-{args.method}",
           cores=args.cores)
    seconds = time.perf_counter() - start
    # the child's own high-water mark: wait4's ru_maxrss would carry over the (large) parent's,
    # which wrote the checkpoints and compared outputs, across fork + exec
    hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "peak_gib": hwm_kib / 2**20}))


def output_difference(root: Path, method: str) -> float:
    """Worst relative Frobenius difference of the merged 2-D task vectors, mdamerge vs FusionBench (float32)."""
    from safetensors.torch import load_file

    base = load_file(str(root / "base" / "model.safetensors"))
    fb = load_file(str(root / f"out-fusionbench-{method}" / "model.safetensors"))
    md = {}
    for shard in sorted((root / f"out-mdamerge-{method}").glob("*.safetensors")):
        md.update(load_file(str(shard)))
    worst = 0.0
    for k, b in base.items():
        if b.ndim == 2:
            ref = fb[k].double() - b.double()
            worst = max(worst, float((md[k].double() - b.double() - ref).norm() / ref.norm()))
    return worst


def measure(root: Path, tool: str, method: str, tasks: int, cores: int = 1) -> tuple[float, float] | None:
    """``(seconds, peak GiB)`` of one fresh child process, or ``None`` when the tool fails on these inputs."""
    threads = str(cores if tool == "fusionbench" else 1)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", tool, "--method", method, "--child-tasks", str(tasks), "--root", str(root),
         "--cores", str(cores)],
        stdout=subprocess.PIPE, env=env,
    )
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        if tool == "fusionbench":  # e.g. its float32 SVD does not converge (Iso-CTS, T = 14): a result, not a crash
            print(f"fusionbench {method} failed", file=sys.stderr)
            return None
        raise SystemExit(f"{tool} {method} failed")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    return result["seconds"], result["peak_gib"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1, help="encoder blocks of the 12 (12 = the whole 87.5M tower)")
    ap.add_argument("--tasks", type=int, nargs="+", default=[8, 14])
    ap.add_argument("--methods", nargs="+", default=["tsv", "mda", "iso_c", "iso_cts"])
    ap.add_argument("--child", choices=("mdamerge", "fusionbench"))
    ap.add_argument("--method")
    ap.add_argument("--child-tasks", type=int)
    ap.add_argument("--root")
    ap.add_argument("--cores", type=int, default=1,
                    help="cores per run: FusionBench's thread count, mdamerge's --workers (one thread each)")
    args = ap.parse_args()
    if args.child:
        return child(args)
    try:
        import fusion_bench  # noqa: F401
        tools = ["fusionbench", "mdamerge"]
    except ImportError:
        tools = ["mdamerge"]
    params = sum(int(torch.tensor(s).prod()) for s in tower_shapes(args.layers).values())
    print(f"# CLIP ViT-B/32-shaped tower, {args.layers} of 12 blocks ({params / 1e6:.1f}M parameters), {args.cores} core(s) per process")
    print("| T | method | FusionBench s | mdamerge s | ratio | FusionBench peak GiB | mdamerge peak GiB | worst rel. diff of merged delta |")
    print("|---|---|---|---|---|---|---|---|")
    for tasks in args.tasks:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            write_models(root, args.layers, tasks)
            fb_runs: dict[str, tuple[float, float]] = {}
            for method in args.methods:
                res = {"mdamerge": measure(root, "mdamerge", method, tasks, args.cores)}
                if "fusionbench" in tools:
                    # FusionBench has no MDA: its yardstick is FusionBench's TSV-M, measured once per T
                    fb_method = "tsv" if method == "mda" else method
                    if fb_method not in fb_runs:
                        fb_runs[fb_method] = measure(root, "fusionbench", fb_method, tasks, args.cores)
                    res["fusionbench"] = fb_runs[fb_method]
                fb = res.get("fusionbench")
                md = res["mdamerge"]
                label = method + (" (FB: TSV-M)" if method == "mda" else "")
                if "fusionbench" in tools and fb is None:
                    print(f"| {tasks} | {label} | failed | {md[0]:.1f} | - | - | {md[1]:.2f} | - |", flush=True)
                elif fb:
                    diff = "-" if method == "mda" else f"{output_difference(root, method):.0e}"
                    print(f"| {tasks} | {label} | {fb[0]:.1f} | {md[0]:.1f} | {md[0] / fb[0]:.2f} | {fb[1]:.2f} | {md[1]:.2f} | {diff} |", flush=True)
                else:
                    print(f"| {tasks} | {label} | - | {md[0]:.1f} | - | - | {md[1]:.2f} | - |", flush=True)


if __name__ == "__main__":
    main()
