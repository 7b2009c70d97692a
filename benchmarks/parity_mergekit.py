"""Agreement of mdamerge with mergekit on the same mergekit configs.

Builds a tiny random Llama (transformers; an architecture mergekit knows) and three
"fine-tunes" (the base plus sparse and dense perturbations, float32), writes one mergekit
config per case, runs ``mergekit-yaml`` (from its own virtual environment) and ``mdamerge``
(this interpreter, through the same YAML file) on it, and prints per case

* ``rel_diff``: ||mdamerge - mergekit||_F / ||mergekit - base||_F over all merged tensors
  (relative to the merged task vector, the part a merge changes);
* ``max_abs``: the largest absolute difference of any weight;
* for methods with random masks (DARE), ``noise``: the same rel_diff between two mdamerge
  runs with different seeds -- two independent draws; mergekit's draws come from torch's
  global generator and cannot be reproduced elsewhere, so agreement there means
  rel_diff ~ noise (same distribution), not equality.

Usage::

    python benchmarks/parity_mergekit.py --mergekit /work/venv-mk/bin/mergekit-yaml [--out parity.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

NUM_LAYERS = 4

CASES: dict[str, dict] = {
    "linear": {"merge_method": "linear", "weights": [0.5, 0.3, 0.2]},
    "linear_per_tensor_weight": {
        "merge_method": "linear",
        "weights": [[{"filter": "mlp", "value": 2.0}, {"value": 1.0}], 1.0, [0.2, 1.0]],
    },
    "task_arithmetic": {"merge_method": "task_arithmetic", "weights": [1.0, 0.5, 0.8]},
    "task_arithmetic_lambda": {"merge_method": "task_arithmetic", "weights": [1.0, 1.0, 1.0], "parameters": {"lambda": 0.4}},
    "ties": {"merge_method": "ties", "weights": [1.0, 1.0, 1.0], "parameters": {"density": 0.3}},
    "ties_per_model_density": {"merge_method": "ties", "weights": [1.0, 0.7, 0.5], "densities": [0.2, 0.5, 0.8],
                               "parameters": {"int8_mask": True}},
    "ties_gradients_filters": {
        "merge_method": "ties", "weights": [[1.0, 0.5], 1.0, 0.8],
        "densities": [[{"filter": "self_attn", "value": [0.2, 0.8]}, {"value": 0.5}], 0.4, [0.9, 0.1]],
        "parameters": {"normalize": False, "lambda": 0.8},
    },
    "breadcrumbs": {"merge_method": "breadcrumbs", "weights": [1.0, 0.7, 0.5],
                    "parameters": {"density": 0.6, "gamma": 0.05, "lambda": 0.9}},
    "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "weights": [1.0, 1.0, 0.6], "densities": [0.5, 0.7, 0.9],
                         "gammas": [0.01, 0.1, 0.05]},
    # the TIES example of mergekit's README, on these models (float32 instead of float16)
    "readme_ties_example": {"merge_method": "ties", "densities": [[1, 0.7, 0.1], 0.5, 0.33],
                            "weights": [1.0, [0, 0.3, 0.7, 1], [{"filter": "mlp", "value": 0.5}, {"value": 0}]],
                            "parameters": {"normalize": True, "int8_mask": True}, "list_base": True},
    "readme_ties_example_fp16": {"merge_method": "ties", "densities": [[1, 0.7, 0.1], 0.5, 0.33],
                                 "weights": [1.0, [0, 0.3, 0.7, 1], [{"filter": "mlp", "value": 0.5}, {"value": 0}]],
                                 "parameters": {"normalize": True, "int8_mask": True}, "list_base": True,
                                 "dtype": "float16"},
    "dare_ties_density1": {"merge_method": "dare_ties", "weights": [1.0, 0.6, 0.8], "parameters": {"density": 1.0}},
    "dare_ties": {"merge_method": "dare_ties", "weights": [1.0, 0.6, 0.8], "parameters": {"density": 0.5}, "random": True},
    "dare_linear": {"merge_method": "dare_linear", "weights": [0.5, 0.3, 0.4], "densities": [0.4, 0.6, 0.8],
                    "random": True},
}


def build_models(root: Path) -> tuple[Path, list[Path]]:
    """A tiny random Llama and three perturbed copies, saved as float32 safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=NUM_LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    base = LlamaForCausalLM(config).float()
    base.save_pretrained(root / "base")
    state = base.state_dict()
    paths = []
    for t in range(3):
        gen = torch.Generator().manual_seed(100 + t)
        tuned = {}
        for name, w in state.items():
            noise = 0.02 * torch.randn(w.shape, generator=gen)
            if t == 1:  # a sparse fine-tune: most entries untouched (exact zeros in its task vector)
                noise = noise * (torch.rand(w.shape, generator=gen) < 0.1)
            if t == 2 and "layers.3.mlp" in name:  # a layer task 2 did not touch at all
                noise = torch.zeros_like(w)
            tuned[name] = w + noise
        model = LlamaForCausalLM(config)
        model.load_state_dict(tuned)
        model.save_pretrained(root / f"ft{t}")
        paths.append(root / f"ft{t}")
    return root / "base", paths


def case_config(case: dict, base: Path, models: list[Path]) -> dict:
    entries = []
    for i, path in enumerate(models):
        params = {"weight": case["weights"][i]}
        if "densities" in case:
            params["density"] = case["densities"][i]
        if "gammas" in case:
            params["gamma"] = case["gammas"][i]
        entries.append({"model": str(path), "parameters": params})
    if case.get("list_base"):  # mergekit examples often list the base among the models, without parameters
        entries.append({"model": str(base)})
    config = {"merge_method": case["merge_method"], "models": entries, "dtype": case.get("dtype", "float32")}
    if case["merge_method"] != "linear":
        config["base_model"] = str(base)
    if case.get("parameters"):
        config["parameters"] = case["parameters"]
    return config


def load(folder: Path) -> dict[str, torch.Tensor]:
    from mdamerge.io.checkpoint import Checkpoint

    ckpt = Checkpoint(folder)
    return {n: ckpt.get(n) for n in ckpt.keys()}


def rel_diff(a: dict, b: dict, base: dict) -> tuple[float, float]:
    num = den = 0.0
    max_abs = 0.0
    for name, ref in b.items():
        if not ref.is_floating_point():
            continue
        diff = (a[name].double() - ref.double())
        num += float((diff**2).sum())
        den += float(((ref.double() - base[name].double()) ** 2).sum())
        max_abs = max(max_abs, float(diff.abs().max()))
    return (num**0.5) / max(den**0.5, 1e-300), max_abs


def zero_fraction(merged: dict, base: dict) -> float:
    """Share of weights the merge left exactly at the base."""
    zeros = total = 0
    for name, t in merged.items():
        if t.is_floating_point():
            zeros += int((t == base[name]).sum())
            total += t.numel()
    return zeros / total


def l1(merged: dict, base: dict) -> float:
    return sum(float((t.double() - base[n].double()).abs().sum()) for n, t in merged.items() if t.is_floating_point())


def run_mdamerge(config_path: Path, out: Path, seed: int | None = None) -> None:
    import mdamerge
    from mdamerge.config import MergeConfig

    cfg = MergeConfig.from_yaml(config_path)
    if seed is not None:
        cfg.seed = seed
    mdamerge.merge(cfg, out, progress=False, overwrite=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml") or "/work/venv-mk/bin/mergekit-yaml",
                        help="the mergekit-yaml executable (in mergekit's own venv)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    parser.add_argument("--workdir", default=None, help="keep models and outputs here (default: a temp folder)")
    args = parser.parse_args(argv)
    if not Path(args.mergekit).exists():
        print(f"mergekit-yaml not found at {args.mergekit}; install mergekit in its own venv", file=sys.stderr)
        return 2
    version = subprocess.run([str(Path(args.mergekit).parent / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('mergekit'))"],
                             capture_output=True, text=True).stdout.strip()
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="parity_mk_"))
    root.mkdir(parents=True, exist_ok=True)
    base_dir, model_dirs = build_models(root)
    base = load(base_dir)
    rows = []
    for name in args.cases.split(","):
        case = CASES[name]
        config_path = root / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(case_config(case, base_dir, model_dirs), sort_keys=False))
        t0 = time.perf_counter()
        proc = subprocess.run([args.mergekit, str(config_path), str(root / f"mk_{name}"), "--quiet", "--random-seed", "0"],
                              capture_output=True, text=True)
        mk_seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            rows.append({"case": name, "error": "mergekit: " + (proc.stderr.strip().splitlines() or ["?"])[-1]})
            print(rows[-1], flush=True)
            continue
        t0 = time.perf_counter()
        run_mdamerge(config_path, root / f"md_{name}")
        md_seconds = time.perf_counter() - t0
        ours, theirs = load(root / f"md_{name}"), load(root / f"mk_{name}")
        rd, mx = rel_diff(ours, theirs, base)
        row = {"case": name, "method": case["merge_method"], "rel_diff": rd, "max_abs": mx,
               "mergekit_s": round(mk_seconds, 1), "mdamerge_s": round(md_seconds, 1)}
        if case.get("random"):
            run_mdamerge(config_path, root / f"md_{name}_seed1", seed=1)
            row["noise"] = rel_diff(load(root / f"md_{name}_seed1"), ours, base)[0]
            # distribution checks: share of untouched weights and L1 norm of the merged task vector
            row["zero_frac"] = {"mdamerge": zero_fraction(ours, base), "mergekit": zero_fraction(theirs, base)}
            row["l1_ratio"] = l1(ours, base) / l1(theirs, base)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmergekit {version}, torch {torch.__version__}; rel_diff = ||mdamerge - mergekit|| / ||mergekit - base||\n")
    print("| case | method | rel_diff | max abs diff | seed-to-seed noise | untouched share (ours / mergekit) | L1 ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | - | {r['error']} | | | | |")
        elif "noise" in r:
            z = r["zero_frac"]
            print(f"| {r['case']} | {r['method']} | {r['rel_diff']:.3f} | {r['max_abs']:.1e} | {r['noise']:.3f} | "
                  f"{z['mdamerge']:.4f} / {z['mergekit']:.4f} | {r['l1_ratio']:.4f} |")
        else:
            print(f"| {r['case']} | {r['method']} | {r['rel_diff']:.2e} | {r['max_abs']:.1e} | - | - | - |")
    if args.out:
        Path(args.out).write_text(json.dumps({"mergekit": version, "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
