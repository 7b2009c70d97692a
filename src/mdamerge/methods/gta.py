"""Generalized task arithmetic as mergekit defines it: the one method behind mergekit's
``task_arithmetic``, ``ties``, ``dare_ties``, ``dare_linear`` and (normalised) ``linear``.

For every tensor, with per-model (and per-tensor) ``weight_t`` and ``density_t``:

1. sparsify each task vector on its own: ``magnitude`` keeps the ``max(1, int(density n))``
   largest ``|tau|`` of the tensor (exactly that many; ``density >= 1`` keeps all),
   ``outliers`` (Model Breadcrumbs) drops the ``int(gamma n)`` largest and keeps the next
   ``int(density n)``,
   ``random`` keeps each entry with probability ``density`` (DARE); with ``rescale`` the kept
   entries are scaled so the L1 norm of the task vector is unchanged (mergekit's rule, not
   DARE's ``1/density``);
2. ``delta_t = weight_t * tau_t``;
3. consensus ``sum`` (TIES): an entry survives where its sign equals
   ``sign(sum_t delta_t)`` (a zero sum counts as positive); ``count``: the sign of the
   majority of entries; ``none``: everything survives;
4. ``mixed = sum_t surviving delta_t``; with ``normalize`` divided by the sum of the
   surviving weights (1 where that is 0); then scaled by ``scaling`` (mergekit's ``lambda``).

The operations and their order follow mergekit 0.1.5 (``merge_methods/generalized_task_arithmetic.py``
and ``sparsify.py``) so that results agree to float32 rounding; ``benchmarks/parity_mergekit.py``
measures it. Random masks come from a generator seeded with ``(seed, tensor, model)``, so they
are reproducible here but are not mergekit's draws (which use torch's global generator).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import MergeMethod, TensorJob, weighted_sum
from .base import per_model_values as per_model
from .dare import stable_seed
from .registry import register
from .specs import SPECS

L1_EPS = 1e-7  # mergekit: no rescaling when either L1 norm is below this


def rescale_l1(tensor: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """``masked`` scaled to the L1 norm of ``tensor`` (unchanged when either norm is ~0)."""
    before, after = tensor.abs().sum(), masked.abs().sum()
    if before < L1_EPS or after < L1_EPS:
        return masked
    return masked * (before / after)


def magnitude_mask(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """True at the ``max(1, int(density n))`` largest magnitudes; among equal magnitudes at the
    threshold the first ones in memory order (a stable sort's choice).

    ``kthvalue`` finds the threshold in O(n) where mergekit's full ``argsort`` takes O(n log n)
    (most of a ``ties`` merge's time on 10M-entry tensors); the kept set is a stable descending
    sort's first k.
    """
    n = tensor.numel()
    k = max(1, int(density * n))
    magnitudes = tensor.abs().reshape(-1).float()
    if k >= n:
        return torch.ones_like(tensor, dtype=torch.bool)
    threshold = kth_smallest(magnitudes, n - k + 1)
    keep = magnitudes > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        keep[torch.nonzero(magnitudes == threshold).reshape(-1)[:missing]] = True
    return keep.reshape_as(tensor)


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``values.kthvalue(k).values`` of a 1-D tensor. On the CPU numpy's introselect finds it about 10x
    faster than torch's kthvalue (measured on 24.6M entries: 69 vs 810 ms), the largest part of a TIES merge."""
    if values.device.type != "cpu":
        return values.kthvalue(k).values
    return torch.tensor(np.partition(values.numpy(), k - 1)[k - 1])


def outlier_mask(tensor: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the ``int(gamma n)`` largest magnitudes (outliers), then keep the next
    ``int(density n)`` -- mergekit's ``magnitude_outliers``."""
    n = tensor.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    order = torch.sort(tensor.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=torch.bool, device=tensor.device)
    mask[order[bottom:bottom + keep]] = True
    return mask.reshape_as(tensor)


RANDOM_BITS = 31  # int32 random_() draws are uniform on [0, 2**31)


def random_mask(tensor: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Bernoulli(density) keep-mask (booleans) drawn on the CPU from ``seed`` (device-independent).

    A uniform 31-bit integer below ``round(density 2**31)``: the same distribution as
    ``torch.bernoulli`` of a probability tensor (up to density's rounding to 2**-31) at a fifth of
    its time, and 2x faster than comparing float uniforms (the masks were most of a DARE merge's time).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    draws = torch.empty(tensor.shape, dtype=torch.int32).random_(generator=gen)
    return (draws < round(density * 2**RANDOM_BITS)).to(tensor.device)


def sparsify(tensor: torch.Tensor, density: float, how: str, rescale: bool, seed: int, gamma: float = 0.01) -> torch.Tensor:
    """One task vector after mergekit's sparsification step."""
    if how == "none" or density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    if how == "magnitude":
        mask = magnitude_mask(tensor, density)
    elif how == "outliers":
        mask = outlier_mask(tensor, density, gamma)
    else:
        mask = random_mask(tensor, density, seed)
    masked = torch.where(mask, tensor, 0.0)  # the masks are booleans: no float mask, no multiplication
    return rescale_l1(tensor, masked) if rescale else masked


def agreeing(deltas: torch.Tensor, how: str) -> torch.Tensor:
    """mergekit's ``get_mask`` as booleans: entries whose sign equals the elected one (zero entries never do)."""
    votes = deltas.sum(0) if how == "sum" else deltas.sign().sum(0)
    positive = votes >= 0  # a zero vote elects +
    return torch.where(positive, deltas > 0, deltas < 0)


class GeneralizedTaskArithmetic(MergeMethod):
    def propagates_non_finite(self, params) -> bool:
        return params["sparsify"] == "none" and params["consensus"] == "none"

    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        p = job.params
        how = p["sparsify"]
        densities, own_weights = per_model(p["density"], job.num_tasks), per_model(p["weight"], job.num_tasks)
        gammas = per_model(p["gamma"], job.num_tasks)
        weights = [w * pw for w, pw in zip(job.weights, own_weights)]
        sparse = (sparsify(delta, densities[t], how, p["rescale"], stable_seed(job.seed, job.name, t), gammas[t])
                  for t, delta in enumerate(job.deltas))
        if p["consensus"] == "none":
            factor = p["scaling"]  # normalisation and scaling folded into each task's weight: no extra passes
            if p["normalize"]:
                total = float(torch.tensor(weights, dtype=torch.float32).sum())  # summed in float32, as mergekit does
                factor /= 1.0 if abs(total) < 1e-8 else total
            return weighted_sum(sparse, [w * factor for w in weights])
        deltas = torch.empty((job.num_tasks, *job.base.shape), dtype=job.deltas[0].dtype, device=job.deltas[0].device)
        for t, tau in enumerate(sparse):  # weighted into one T x n buffer: the election needs all tasks at once
            torch.mul(tau, weights[t], out=deltas[t])
        agree = agreeing(deltas, p["consensus"])
        mixed = deltas.masked_fill_(~agree, 0).sum(dim=0)
        if p["normalize"]:
            divisor = surviving_weight(agree, weights)
            divisor[divisor == 0] = 1
            mixed /= divisor
        if p["scaling"] != 1:
            mixed *= p["scaling"]
        return mixed


def surviving_weight(agree: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """``sum_t w_t [entry t agrees]`` per entry, added in task order (as ``(w * mask).sum(0)`` does)."""
    total = torch.zeros(agree.shape[1:], dtype=torch.float32, device=agree.device)
    for t, weight in enumerate(weights):
        total.add_(agree[t], alpha=weight)
    return total


GTA = register(GeneralizedTaskArithmetic.from_spec(SPECS["gta"]))
