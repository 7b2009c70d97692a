"""TIES-Merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: keep the top ``density`` fraction of each ``|tau_t|`` (FusionBench keeps the
   top 20% over the whole flattened model -- ``scope="global"``, our default; mergekit
   trims each tensor on its own -- ``scope="tensor"``). Entries equal to the threshold
   are kept, as in FusionBench's ``|x| >= kthvalue``.
2. Elect: ``gamma = sign(sum_t trimmed_t)``; where the sum is exactly zero (trimmed
   values that cancel exactly -- it happens: 2 of 590k entries in
   benchmarks/parity_fusionbench.py) the majority of the elected signs decides: of the
   whole model with ``scope="global"`` (FusionBench's ``resolve_zero_signs``; a third
   streaming pass of the prepass), of the tensor with ``scope="tensor"``.
3. Disjoint merge of the entries that agree with gamma: their ``sum`` (FusionBench) or
   ``mean`` (the paper), scaled by lambda.

The global threshold is exact and streaming: two passes build histograms of the
float32 bit patterns of ``|tau_t|`` (high 16 bits, then low 16 bits within the one
bucket that holds the k-th value), so memory stays O(65536 x T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import MergeMethod, TensorJob, per_model_values
from .registry import register
from .specs import SPECS

_BUCKETS = 1 << 16


def magnitude_bits(x: torch.Tensor) -> torch.Tensor:
    """int64 bit patterns of ``|x|`` as float32; monotonic in ``|x|`` for finite values."""
    return x.detach().abs().float().contiguous().view(torch.int32).to(torch.int64)


def trim_rank(numel: int, density: float) -> int:
    """1-based rank (ascending) of the threshold: FusionBench keeps ``|x| >= kthvalue(numel - int(numel*density))``."""
    return numel - int(numel * density)


def _rank_in_histogram(hist: torch.Tensor, rank: int) -> tuple[int, int]:
    """The bucket that holds the ``rank``-th smallest value and the rank inside it."""
    cum = torch.cumsum(hist, 0)
    bucket = int(torch.searchsorted(cum, torch.tensor([rank], dtype=cum.dtype)).item())
    below = int(cum[bucket - 1].item()) if bucket > 0 else 0
    return bucket, rank - below


def global_trim_thresholds(stream, density: float | list[float]) -> list[float]:
    """Exact per-task thresholds over the whole model, in two streaming passes of bounded memory.

    ``stream()`` must return a fresh iterator of ``(name, deltas, weights, params)`` each call;
    pass 1 histograms the high 16 bits of every ``|w_t tau_t|``, pass 2 the low 16 bits
    inside the bucket that holds each task's threshold rank.
    """
    hi = None
    numel = 0
    for _, deltas, weights, _ in stream():
        if hi is None:
            hi = torch.zeros(len(deltas), _BUCKETS, dtype=torch.int64)
        numel += deltas[0].numel()
        for t, (d, w) in enumerate(zip(deltas, weights)):
            hi[t] += torch.bincount((magnitude_bits(d * w) >> 16).flatten().cpu(), minlength=_BUCKETS)
    if hi is None:
        return []
    # one density per task when models set their own (per_model), else one for all
    ranks = [trim_rank(numel, d) for d in per_model_values(density, hi.shape[0])]
    if all(rank <= 0 for rank in ranks):
        return [0.0] * hi.shape[0]
    located = [_rank_in_histogram(hi[t], max(rank, 1)) for t, rank in enumerate(ranks)]
    lo = torch.zeros_like(hi)
    for _, deltas, weights, _ in stream():
        for t, (d, w) in enumerate(zip(deltas, weights)):
            bits = magnitude_bits(d * w).flatten().cpu()
            lo[t] += torch.bincount(bits[(bits >> 16) == located[t][0]] & 0xFFFF, minlength=_BUCKETS)
    thresholds = []
    for t, (bucket, rank_in_bucket) in enumerate(located):
        if ranks[t] <= 0:
            thresholds.append(0.0)
            continue
        low, _ = _rank_in_histogram(lo[t], rank_in_bucket)
        pattern = torch.tensor([(bucket << 16) | low], dtype=torch.int32)
        thresholds.append(float(pattern.view(torch.float32).item()))
    return thresholds


def trim_threshold(x: torch.Tensor, density: float) -> float:
    """Per-tensor threshold: the same rank rule as the global one, via ``kthvalue``."""
    rank = trim_rank(x.numel(), density)
    if rank <= 0:
        return 0.0
    return float(x.abs().flatten().kthvalue(rank).values.item())


def elected_sign_sum(trimmed: list[torch.Tensor]) -> int:
    """``sum(sign(sum_t trimmed_t))`` over the entries: the tally behind the majority sign."""
    return int(torch.sign(torch.stack(trimmed).sum(0)).sum().item())


def global_majority_sign(stream, thresholds: list[float]) -> float:
    """FusionBench's zero-sign rule over the whole model: the sign of the tally of elected signs."""
    tally = 0
    for _, deltas, weights, _ in stream():
        weighted = [d * w for d, w in zip(deltas, weights)]
        tally += elected_sign_sum([d * (d.abs() >= th) for d, th in zip(weighted, thresholds)])
    return float((tally > 0) - (tally < 0))


@dataclass(frozen=True)
class GlobalTrim:
    """What the global prepass gives each tensor: per-task thresholds and the model's majority sign."""

    thresholds: list[float]
    majority_sign: float


def elect_and_merge(trimmed: list[torch.Tensor], merge_func: str, majority_sign: float | None = None) -> torch.Tensor:
    """Sign election and disjoint merge of already-trimmed task vectors.

    ``majority_sign`` resolves exactly-zero sums; ``None``: the majority of this tensor.
    """
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(0))
    majority = torch.sign(sign.sum()) if majority_sign is None else majority_sign
    sign[sign == 0] = majority
    agree = torch.where(sign > 0, stacked > 0, stacked < 0)
    selected = stacked * agree
    if merge_func == "sum":
        return selected.sum(0)
    counts = (selected != 0).sum(0).clamp(min=1)
    return selected.sum(0) / counts


class Ties(MergeMethod):
    def prepare(self, stream, params_for):
        first = next(iter(stream()), None)
        if first is None or first[3]["scope"] != "global":
            return None
        # global trimming needs one density for the whole model: the top-level value
        thresholds = global_trim_thresholds(stream, first[3]["density"])
        return GlobalTrim(thresholds, global_majority_sign(stream, thresholds))

    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        densities = per_model_values(job.params["density"], job.num_tasks)
        deltas = job.weighted_deltas()
        if job.state is not None:
            thresholds, majority = job.state.thresholds, job.state.majority_sign
        else:
            thresholds = [trim_threshold(d, density) for d, density in zip(deltas, densities)]
            majority = None
        trimmed = [d * (d.abs() >= th) for d, th in zip(deltas, thresholds)]
        return job.params["scaling"] * elect_and_merge(trimmed, job.params["merge_func"], majority)


TIES = register(Ties.from_spec(SPECS["ties"]))
