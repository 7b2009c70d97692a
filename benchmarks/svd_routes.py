"""Accuracy and time of each SVD route on one 768 x 3072 layer with T = 8 task vectors.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/svd_routes.py [--rows 768 --cols 3072 --tasks 8]
    PYTHONPATH=src python benchmarks/svd_routes.py --device cuda     # the GPU routes (batched Gram eigh)

Task vectors: issue 9's flat-tail class (rank-16 part with a 1/i spectrum, a rank-4 part
shared by all tasks, 1e-3 dense noise), float32. Reference: the published algorithm with
dense float64 SVDs (tests/test_svd_exact.py). Prints, per route, the wall time of the
top-k decompositions of the T task vectors and of the whole TSV-M / Iso-C / Iso-CTS merge
of the tensor, and the relative Frobenius difference of the merged delta to the reference.
One thread (set OMP_NUM_THREADS=1 for the figures in docs/method.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_svd_exact import REFERENCES, merged, rel, task_vectors  # noqa: E402

from mdamerge.methods.linalg import batched_top_k_svd, randomized_svd, top_k_svd  # noqa: E402


def timed(fn, repeat=1, device="cpu"):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=768)
    ap.add_argument("--cols", type=int, default=3072)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where the mdamerge routes run (references: CPU, float64)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    taus = task_vectors("flat_tail", args.rows, args.cols, args.tasks, seed=0)
    k = min(args.rows, args.cols) // args.tasks
    t64 = [t.double() for t in taus]
    if args.device != "cpu":
        return device_routes(args, taus, t64, k)

    print(f"# {args.rows}x{args.cols}, T={args.tasks}, k={k}, threads={torch.get_num_threads()}")
    print("\n## top-k of the T task vectors")
    print("| route | seconds | worst rel. error of U_k S_k V_k^T vs dense float64 |")
    print("|---|---|---|")
    exact, _ = timed(lambda: [torch.linalg.svd(t, full_matrices=False) for t in t64])
    ref = [(u[:, :k] * s[:k]) @ vh[:k] for u, s, vh in exact]
    routes = {
        "dense SVD float32 (FusionBench)": lambda: [top_k_svd(t, k, "full") for t in taus],
        "dense SVD float64": lambda: [top_k_svd(t, k, "full") for t in t64],
        "randomized sketch, unchecked (old auto)": lambda: [
            tuple(x[..., :k] if i != 2 else x[:k] for i, x in enumerate(randomized_svd(t, 2 * k + 2, 6))) for t in t64
        ],
        "randomized, checked (svd_solver=randomized)": lambda: [top_k_svd(t, k, "randomized") for t in t64],
        "float64 Gram eigh, checked (auto, default)": lambda: batched_top_k_svd(t64, k),
    }
    for name, fn in routes.items():
        out, sec = timed(fn, args.repeat)
        err = max(rel((u.double() * s.double()) @ vh.double(), r) for (u, s, vh), r in zip(out, ref))
        print(f"| {name} | {sec:.2f} | {err:.1e} |")

    print("\n## whole tensor merge")
    print("| method | route | seconds | rel. diff to dense float64 reference |")
    print("|---|---|---|---|")
    for method in ("tsv", "mda", "iso_c", "iso_cts"):
        ref_delta, ref_sec = timed(lambda: REFERENCES[method](taus))
        print(f"| {method} | reference: dense float64 SVDs | {ref_sec:.2f} | 0 |")
        variants = [("default (auto, float64)", {}), ("svd_dtype=float32", {"svd_dtype": "float32"})]
        if method in ("tsv", "mda"):
            variants.append(("svd_solver=full, float32", {"svd_solver": "full", "svd_dtype": "float32"}))
        for label, params in variants:
            out, sec = timed(lambda: merged(method, taus, **params), args.repeat)
            print(f"| {method} | {label} | {sec:.2f} | {rel(out, ref_delta):.1e} |")


def device_routes(args, taus, t64, k) -> None:
    """The default routes on ``--device`` (a GPU: batched Gram products and ``eigh``) against the CPU references."""
    from mdamerge.methods.linalg import batch_gram_eigh

    dev = torch.device(args.device)
    on_dev = [t.to(dev) for t in taus]
    print(f"# {args.rows}x{args.cols}, T={args.tasks}, k={k}, device={dev}, batched Gram eigh: {batch_gram_eigh(dev)}")
    print("| step | seconds (best of --repeat, after one warm-up) | worst rel. difference to dense float64 on CPU |")
    print("|---|---|---|")
    exact = [torch.linalg.svd(t, full_matrices=False) for t in t64]
    ref = [(u[:, :k] * s[:k]) @ vh[:k] for u, s, vh in exact]
    run = lambda: batched_top_k_svd([t.double() for t in on_dev], k)  # noqa: E731
    run()  # warm-up: kernels, cuSOLVER handles
    out, sec = timed(run, args.repeat, dev)
    err = max(rel(((u * s) @ vh).double().cpu(), r) for (u, s, vh), r in zip(out, ref))
    print(f"| top-k of the {args.tasks} task vectors (default route) | {sec:.3f} | {err:.1e} |")
    for method in ("tsv", "mda", "iso_c", "iso_cts"):
        merged(method, on_dev)  # warm-up
        out, sec = timed(lambda: merged(method, on_dev), args.repeat, dev)
        print(f"| {method} merge (default) | {sec:.3f} | {rel(out.cpu(), REFERENCES[method](taus)):.1e} |")


if __name__ == "__main__":
    main()
