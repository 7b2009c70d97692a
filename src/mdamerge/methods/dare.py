"""DARE (Yu et al., ICML 2024): drop each task-vector entry with probability p,
rescale the survivors by 1/(1-p), then task arithmetic.

The random mask of tensor ``name`` and task ``t`` is drawn from a generator seeded
with ``(seed, name, t)``, so results do not depend on tensor order or parallelism.
"""

from __future__ import annotations

import zlib

import torch

from .base import MergeMethod, TensorJob, per_model_values
from .registry import register
from .specs import SPECS


def stable_seed(seed: int, name: str, index: int) -> int:
    """A 63-bit seed that depends only on its arguments (not on Python's hash salt)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 131 + index) % (2**63 - 1)


def dare_mask(shape: torch.Size, drop_rate: float, seed: int) -> torch.Tensor:
    """Boolean keep-mask with P(keep) = 1 - drop_rate, reproducible from ``seed`` (drawn on the CPU)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(shape, generator=gen) >= drop_rate


class Dare(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        rates = per_model_values(job.params["drop_rate"], job.num_tasks)
        if job.params["only_2d"] and job.base.ndim != 2:
            return job.params["scaling"] * sum(job.weighted_deltas())
        out = torch.zeros_like(job.base)
        for t, (delta, p) in enumerate(zip(job.weighted_deltas(), rates)):
            keep = dare_mask(delta.shape, p, stable_seed(job.seed, job.name, t)).to(delta.device)
            kept = delta * keep
            out += kept / (1.0 - p) if job.params["rescale"] else kept
        return job.params["scaling"] * out


DARE = register(Dare.from_spec(SPECS["dare"]))
