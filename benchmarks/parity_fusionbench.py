"""mdamerge against FusionBench's own merging functions, on the same state dicts.

Installs nothing. Run it with a Python that has ``fusion-bench`` (kept out of the
project's environment, in a venv of its own)::

    python3 -m venv /work/venv-fb
    /work/venv-fb/bin/pip install /path/to/torch-2.13.0+cpu.whl   # or torch==2.13.0 from the CPU index
    /work/venv-fb/bin/pip install -c <(echo torch==2.13.0+cpu) fusion-bench
    PYTHONPATH=src OMP_NUM_THREADS=1 /work/venv-fb/bin/python benchmarks/parity_fusionbench.py

State dicts (issue 9): base ~ N(0, 0.02); every task vector of a 2-D tensor = a rank-16
part with a 1/i spectrum + a rank-4 part shared by all tasks + 1e-3 dense noise; tensors
384x384, 1536x384, 384x1536, a 512x10 head, a 77x384 embedding, biases and LayerNorm
weights. FusionBench's functions (0.2.33), called as its algorithms call them:

* average: ``fusion_bench.method.simple_average.simple_average``
* task arithmetic: ``state_dict_sub``/``state_dict_add``/``state_dict_mul`` as
  ``task_arithmetic_merge`` composes them, lambda 0.3
* TIES: ``state_dict_to_vector`` + ``ties_merging(threshold 20, "sum")`` +
  ``vector_to_state_dict``, lambda 0.3 (``TiesMergingAlgorithm.run``)
* DARE: ``param_random_drop_`` on every task-vector tensor + sum, lambda 0.3
  (``DareTaskArithmetic`` with ``only_on_linear_weights: false``); p = 0 exactly, and
  for p = 0.5 the mean over seeds (both must tend to task arithmetic: unbiased drop)
* TSV-M: ``compute_and_sum_svd_mem_reduction`` (alpha 1)
* Iso-C / Iso-CTS: ``iso_c`` / ``iso_cts(common_space_fraction=0.8)`` (scaling 1.0)

The table: worst relative Frobenius difference of the merged task vector over the
tensors, mdamerge's default vs FusionBench run in float64 (the exact reference), and
FusionBench in float32 (its default precision) vs its own float64 result. Both tools
get the same float32 task vectors (FusionBench: theta_t - theta_0 of the float32 state
dicts; mdamerge: those task vectors over a zero base, see :func:`md_merge`).
"""

from __future__ import annotations

import argparse
import contextlib
import io

import torch

SHAPES = {
    "blocks.0.attn.weight": (384, 384),
    "blocks.0.mlp.fc1.weight": (1536, 384),
    "blocks.0.mlp.fc2.weight": (384, 1536),
    "head.weight": (10, 512),
    "embed.weight": (77, 384),
    "blocks.0.mlp.fc1.bias": (1536,),
    "blocks.0.norm.weight": (384,),
    "blocks.0.norm.bias": (384,),
}


def make_state_dicts(num_tasks: int, seed: int = 0):
    """Base and fine-tuned state dicts (float32) of the structured class of issue 9."""
    gen = torch.Generator().manual_seed(seed)

    def frame(rows, cols):
        return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]

    base = {k: 0.02 * torch.randn(s, generator=gen, dtype=torch.float64) for k, s in SHAPES.items()}
    shared = {k: (frame(s[0], 4) * torch.tensor([1.0, 0.8, 0.6, 0.5], dtype=torch.float64)) @ frame(s[1], 4).T
              for k, s in SHAPES.items() if len(s) == 2}
    fts = []
    for _ in range(num_tasks):
        ft = {}
        for k, s in SHAPES.items():
            if len(s) == 2:
                r = min(16, *s)
                spec = 1.0 / torch.arange(1, r + 1, dtype=torch.float64)
                tau = (frame(s[0], r) * spec) @ frame(s[1], r).T + 0.5 * shared[k] + 1e-3 * torch.randn(s, generator=gen, dtype=torch.float64)
                tau = 0.01 * tau
            else:
                tau = 0.005 * torch.randn(s, generator=gen, dtype=torch.float64)
            ft[k] = base[k] + tau
        fts.append(ft)
    return {k: v.float() for k, v in base.items()}, [{k: v.float() for k, v in ft.items()} for ft in fts]


def task_vectors(base, fts, dtype):
    return [{k: (ft[k].to(dtype) - base[k].to(dtype)) for k in base} for ft in fts]


# ---------------------------------------------------------------- FusionBench's side
def fb_merge(method: str, base, fts, dtype=torch.float32, seed: int = 0, drop: float = 0.0):
    """The merged task vector computed by FusionBench's functions (its prints silenced)."""
    from fusion_bench.method.dare.utils import param_random_drop_
    from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
    from fusion_bench.method.simple_average import simple_average
    from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
    from fusion_bench.method.ties_merging.ties_merging_utils import state_dict_to_vector, ties_merging, vector_to_state_dict
    from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_mul, state_dict_sub

    b = {k: v.to(dtype) for k, v in base.items()}
    f = [{k: v.to(dtype) for k, v in ft.items()} for ft in fts]
    with contextlib.redirect_stdout(io.StringIO()):
        if method == "average":
            avg = simple_average([dict(x) for x in f])
            return {k: avg[k] - b[k] for k in b}
        if method == "task_arithmetic":
            tv = None
            for ft in f:
                d = state_dict_sub(ft, b)
                tv = d if tv is None else state_dict_add(tv, d)
            return state_dict_mul(tv, 0.3)
        if method == "ties":
            flat = torch.vstack([state_dict_to_vector(ft) for ft in f]) - state_dict_to_vector(b)
            merged = ties_merging(flat, reset_thresh=20, merge_func="sum")
            return dict(vector_to_state_dict(0.3 * merged, {k: v.clone() for k, v in b.items()}))
        if method == "dare":
            torch.manual_seed(seed)
            tvs = task_vectors(b, f, dtype)
            for tv in tvs:
                for p in tv.values():
                    param_random_drop_(p, drop, rescale=True)
            return {k: 0.3 * sum(tv[k] for tv in tvs) for k in b}
        if method == "tsv":
            return compute_and_sum_svd_mem_reduction(task_vectors(b, f, dtype), accelerator="cpu")
        if method == "iso_c":
            return iso_c(task_vectors(b, f, dtype), accelerator="cpu")
        if method == "iso_cts":
            return iso_cts(task_vectors(b, f, dtype), common_space_fraction=0.8, accelerator="cpu")
    raise ValueError(method)


# ---------------------------------------------------------------- mdamerge's side
def md_merge(method: str, base, fts, **params):
    """mdamerge's merged task vector of the same float32 task vectors FusionBench sees.

    The task vectors are handed over with a zero base, so the float32 rounding of
    ``base + delta`` in the merged model (a floor of ~1e-5 of these small deltas, the
    same for both tools) does not hide the methods' own agreement.
    """
    import mdamerge

    tvs = task_vectors(base, fts, torch.float32)
    zero = {k: torch.zeros_like(v) for k, v in base.items()}
    out = mdamerge.merge_state_dicts(zero, tvs, method, **params)
    return {k: out[k].double() for k in base}


def worst(a, b):
    """Worst relative Frobenius difference over the tensors (absolute where b is zero)."""
    errs = []
    for k in b:
        x, y = a[k].double(), b[k].double()
        n = y.norm()
        errs.append(float((x - y).norm() / n) if n > 0 else float((x - y).norm()))
    return max(errs)


def fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.0e}"


def main() -> None:
    ap = argparse.ArgumentParser(description="mdamerge vs FusionBench's own functions")
    ap.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--dare-seeds", type=int, default=100)
    args = ap.parse_args()
    import fusion_bench  # noqa: F401  -- fail early with a clear ImportError

    methods = ["average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts"]
    header = "| method | " + " | ".join(f"T={t}: mdamerge vs FB float64 | FB float32 vs FB float64" for t in args.tasks) + " |"
    print(header)
    print("|---|" + "---|---|" * len(args.tasks))
    results = {}
    for method in methods:
        cells = []
        for t in args.tasks:
            base, fts = make_state_dicts(t, seed=t)
            ref = fb_merge(method, base, fts, torch.float64)
            fb32 = fb_merge(method, base, fts, torch.float32)
            md = md_merge(method, base, fts, **({"drop_rate": 0.0} if method == "dare" else {}))
            results[(method, t)] = (worst(md, ref), worst(fb32, ref))
            cells += [fmt(results[(method, t)][0]), fmt(results[(method, t)][1])]
        label = "dare (p = 0)" if method == "dare" else method
        print(f"| {label} | " + " | ".join(cells) + " |")

    # DARE's seed-mean: both tools' drop is unbiased, so the mean over seeds tends to task arithmetic
    cells = []
    for t in args.tasks:
        base, fts = make_state_dicts(t, seed=t)
        ta = fb_merge("task_arithmetic", base, fts, torch.float64)
        n = args.dare_seeds
        fb_mean = {k: sum(fb_merge("dare", base, fts, torch.float64, seed=s, drop=0.5)[k] for s in range(n)) / n for k in ta}
        md_mean = {k: sum(md_merge("dare", base, fts, seed=s)[k] for s in range(n)) / n for k in ta}
        cells += [f"{worst(md_mean, ta):.2f}", f"{worst(fb_mean, ta):.2f}"]
    print(f"| dare p = 0.5, mean of {args.dare_seeds} seeds vs task arithmetic (mdamerge / FusionBench) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
