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

import torch

from .base import MergeMethod, TensorJob
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
    threshold = magnitudes.kthvalue(n - k + 1).values
    keep = magnitudes > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        keep[torch.nonzero(magnitudes == threshold).reshape(-1)[:missing]] = True
    return keep.reshape_as(tensor)


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


def random_mask(tensor: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Bernoulli(density) keep-mask (booleans) drawn on the CPU from ``seed`` (device-independent).

    ``uniform < density`` rather than ``torch.bernoulli`` of a probability tensor: the same
    distribution, 3x faster on the CPU (the masks were most of a DARE merge's time).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.rand(tensor.shape, generator=gen) < density).to(tensor.device)


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
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        p = job.params
        how = p["sparsify"]
        densities, own_weights = per_model(p["density"], job.num_tasks), per_model(p["weight"], job.num_tasks)
        gammas = per_model(p["gamma"], job.num_tasks)
        weights = [w * pw for w, pw in zip(job.weights, own_weights)]
        sparse = (sparsify(delta, densities[t], how, p["rescale"], stable_seed(job.seed, job.name, t), gammas[t])
                  for t, delta in enumerate(job.deltas))
        if p["consensus"] == "none":
            mixed = weighted_sum(sparse, weights)
            if p["normalize"]:
                total = float(torch.tensor(weights, dtype=mixed.dtype).sum())  # summed in float32, as mergekit does
                mixed /= 1.0 if abs(total) < 1e-8 else total
        else:
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


def weighted_sum(taus, weights: list[float]) -> torch.Tensor:
    """``sum_t w_t tau_t`` with two tensors of memory instead of T (no stack to allocate and fill): each
    product, then added in task order -- the bits of ``(w * stacked).sum(0)`` up to T = 3; for more
    tasks torch's reduction pairs the terms differently (last-bit differences, as between builds)."""
    mixed = scratch = None
    for tau, weight in zip(taus, weights):
        if mixed is None:
            mixed = tau * weight
            scratch = torch.empty_like(mixed)
        else:
            mixed += torch.mul(tau, weight, out=scratch)
    return mixed


def surviving_weight(agree: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """``sum_t w_t [entry t agrees]`` per entry, added in task order (as ``(w * mask).sum(0)`` does)."""
    total = torch.zeros(agree.shape[1:], dtype=torch.float32, device=agree.device)
    for t, weight in enumerate(weights):
        total.add_(agree[t], alpha=weight)
    return total


GTA = register(GeneralizedTaskArithmetic.from_spec(SPECS["gta"]))
