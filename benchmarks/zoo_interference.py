"""Why do merges recover little on the offline zoo? Rank, linearity and interference of task vectors.

Prints, for the zoo's fine-tuned models (validation split, first ``--val-limit`` images):

1. each task's accuracy when every matrix of its task vector is truncated to rank r;
2. its accuracy along ``theta_0 + s * tau`` (is one task vector linear?);
3. pairs of task vectors added at full strength (how much do two tasks interfere?);
4. one task's fine-tuned model plus another task's vector restricted to one parameter
   group (which layers carry the interference?).

    python benchmarks/zoo_interference.py [--tasks mnist,fashion,letters,mnist_rot90,lowercase]
"""

from __future__ import annotations

import argparse

import torch

from mdamerge.methods.linalg import rebuild, top_k_svd
from mdamerge.zoo.build import Zoo
from mdamerge.zoo.finetune import head_accuracy
from mdamerge.zoo.model import TinyViT

GROUPS = {
    "embeddings": lambda k: k.startswith("embeddings") or "pre_layrnorm" in k,
    "attention": lambda k: "self_attn" in k,
    "mlp": lambda k: ".mlp." in k,
    "layer norms": lambda k: "layer_norm" in k,
    "post norm + projection": lambda k: "post_layernorm" in k or "visual_projection" in k,
}


def low_rank(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """``delta`` truncated to its top ``rank`` singular triplets (tensors that are not 2-D, or too small, as they are)."""
    if delta.ndim != 2 or min(delta.shape) <= rank:
        return delta
    u, s, vh = top_k_svd(delta, rank, "full")
    return rebuild(u, s, vh.mT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mnist,fashion,letters,mnist_rot90,lowercase")
    parser.add_argument("--zoo-root", default=None)
    parser.add_argument("--val-limit", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    zoo = Zoo(args.zoo_root)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    model = zoo.load_backbone()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    taus = {}
    for name in names:
        ft = TinyViT.from_pretrained(zoo.root / "finetuned" / name).state_dict()
        taus[name] = {k: ft[k] - base[k] for k in base}

    def acc(state: dict, task: str) -> float:
        model.load_state_dict(state)
        x, y = zoo.task_data(task).val
        return 100 * head_accuracy(model, zoo.head(task), (x[:args.val_limit], y[:args.val_limit]))

    def combine(coefs: dict, keep=lambda task, key: True) -> dict:
        return {k: base[k] + sum(c * taus[t][k] for t, c in coefs.items() if keep(t, k)) for k in base}

    alone = {t: acc(combine({t: 1.0}), t) for t in names}  # the fine-tuned models
    print("1. rank-r truncation of every matrix of the task vector: accuracy (%)")
    for t in names:
        cells = [f"r={r}: {acc({k: base[k] + low_rank(taus[t][k], r) for k in base}, t):.1f}" for r in (4, 12, 24, 48)]
        print(f"   {t}: pretrained {acc(base, t):.1f}, fine-tuned {alone[t]:.1f}, " + ", ".join(cells))
    print("2. theta_0 + s * tau: accuracy (%)")
    for t in names:
        cells = [f"s={s}: {acc(combine({t: s}), t):.1f}" for s in (0.25, 0.5, 0.75)]
        print(f"   {t}: " + ", ".join(cells) + f", s=1.0: {alone[t]:.1f}")
    print("3. two task vectors at full strength: accuracy on each (alone -> together)")
    for a, b in zip(names, names[1:]):
        both = combine({a: 1.0, b: 1.0})
        print(f"   {a} + {b}: {alone[a]:.1f} -> {acc(both, a):.1f}, {alone[b]:.1f} -> {acc(both, b):.1f}")
    a, b = names[0], names[1]
    print(f"4. {a}'s fine-tuned model + {b}'s task vector in one parameter group: accuracy on {a} (%)")
    for group, member in GROUPS.items():
        state = combine({a: 1.0, b: 1.0}, keep=lambda t, k: t == a or member(k))
        print(f"   {group}: {acc(state, a):.1f}")


if __name__ == "__main__":
    main()
