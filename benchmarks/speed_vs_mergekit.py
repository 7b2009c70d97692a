"""Wall time and peak memory of mdamerge vs mergekit 0.1.5 on the same mergekit configs.

    python benchmarks/speed_vs_mergekit.py --mergekit /work/sidevenv-mk/bin/mergekit-yaml \\
        --sizes 150M --tasks 3 8 --threads 1 [--out results.json]

Builds Llama-shaped random checkpoints (transformers' ``LlamaConfig``; ``150M``: hidden 768,
14 layers, vocabulary 32000, untied head = 149M parameters; ``1B``: hidden 2048, 16 layers,
1.24B) as bfloat16 safetensors, and T "fine-tunes" (base + 0.01 N(0, 1)). For each method --
``linear``, ``task_arithmetic``, ``ties`` (density 0.5), ``dare_linear`` (density 0.5) -- one
mergekit YAML (``dtype: float32`` compute, ``out_dtype: bfloat16``) is run by both tools, each
in a fresh process under ``/usr/bin/time -v`` (wall time, maximum RSS) with the same torch
thread count (``OMP_NUM_THREADS`` for both, ``--threads`` for mdamerge). The machine's load
average is printed with every row: on a shared machine it is part of the measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_mergekit import case_config  # noqa: E402  (the mergekit YAML both tools read)

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    "40M": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8, "num_attention_heads": 8},  # a smoke test
    "150M": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 14, "num_attention_heads": 12},
    "1B": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16, "num_attention_heads": 16},
}
METHODS = {
    "linear": {"merge_method": "linear"},
    "task_arithmetic": {"merge_method": "task_arithmetic"},
    "ties": {"merge_method": "ties", "parameters": {"density": 0.5}},
    "dare": {"merge_method": "dare_linear", "parameters": {"density": 0.5}},
}


def llama_shapes(cfg) -> dict[str, tuple[int, ...]]:
    h, m = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (m, h), p + "mlp.up_proj.weight": (m, h),
                       p + "mlp.down_proj.weight": (h, m),
                       p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)})
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (cfg.vocab_size, h)
    return shapes


def build_models(root: Path, size: str, tasks: int) -> tuple[Path, list[Path], int]:
    """The base and ``tasks`` fine-tunes as bfloat16 Hugging Face folders; returns the parameter count."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=32000, tie_word_embeddings=False, torch_dtype="bfloat16", architectures=["LlamaForCausalLM"],
                      **SIZES[size])
    shapes = llama_shapes(cfg)
    gen = torch.Generator().manual_seed(0)
    base = {n: (0.02 * torch.randn(s, generator=gen)).bfloat16() for n, s in shapes.items()}
    folders = []
    for t in range(tasks + 1):
        folder = root / ("base" if t == 0 else f"ft{t}")
        folder.mkdir()
        cfg.save_pretrained(folder)
        state = base if t == 0 else {n: (w.float() + 0.01 * torch.randn(w.shape, generator=gen)).bfloat16()
                                      for n, w in base.items()}
        save_file(state, str(folder / "model.safetensors"))
        folders.append(folder)
    return folders[0], folders[1:], sum(w.numel() for w in base.values())


def timed(argv: list[str], threads: int) -> dict:
    """Run ``argv`` under ``/usr/bin/time -v``: wall seconds and peak RSS (MiB) of the child."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    seconds = int(wall[1] or 0) * 3600 + int(wall[2]) * 60 + float(wall[3])
    return {"wall_s": round(seconds, 2), "peak_rss_mib": round(int(rss[1]) / 1024)}


def run_case(root: Path, base: Path, models: list[Path], method: str, mergekit: str, threads: int) -> dict:
    case = {**METHODS[method], "weights": [1.0] * len(models)}
    if method == "linear":
        case["weights"] = [1.0 / len(models)] * len(models)
    config = {**case_config(case, base, models), "out_dtype": "bfloat16"}
    path = root / f"{method}.yml"
    path.write_text(yaml.safe_dump(config))
    row = {}
    for tool, argv in (("mergekit", [mergekit, str(path), str(root / "out-mk"), "--no-cuda", "--quiet"]),
                       ("mdamerge", [sys.executable, "-m", "mdamerge", "merge", str(path), "--out", str(root / "out-md"),
                                     "--threads", str(threads), "--quiet"])):
        row[tool] = timed(argv, threads)
        shutil.rmtree(root / ("out-mk" if tool == "mergekit" else "out-md"))
    row["time_ratio"] = round(row["mdamerge"]["wall_s"] / row["mergekit"]["wall_s"], 2)
    row["rss_ratio"] = round(row["mdamerge"]["peak_rss_mib"] / row["mergekit"]["peak_rss_mib"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit", required=True, help="mergekit-yaml of mergekit 0.1.5 (its own virtual environment)")
    parser.add_argument("--sizes", nargs="+", default=["150M"], choices=list(SIZES))
    parser.add_argument("--tasks", nargs="+", type=int, default=[3, 8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the checkpoints are written (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    rows = []
    print("| size | T | method | mergekit s | mdamerge s | time ratio | mergekit MiB | mdamerge MiB | RSS ratio | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for tasks in args.tasks:
            with tempfile.TemporaryDirectory(prefix="mdamerge-vs-mergekit-", dir=args.workdir) as tmp:
                base, models, params = build_models(Path(tmp), size, tasks)
                for method in args.methods:
                    row = {"size": size, "parameters": params, "tasks": tasks, "method": method, "threads": args.threads,
                           **run_case(Path(tmp), base, models, method, args.mergekit, args.threads),
                           "load_avg": "/".join(f"{x:.1f}" for x in os.getloadavg())}
                    rows.append(row)
                    print(f"| {size} | {tasks} | {method} | {row['mergekit']['wall_s']} | {row['mdamerge']['wall_s']} | "
                          f"{row['time_ratio']} | {row['mergekit']['peak_rss_mib']} | {row['mdamerge']['peak_rss_mib']} | "
                          f"{row['rss_ratio']} | {row['load_avg']} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
