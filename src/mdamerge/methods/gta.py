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
    """1 at the ``max(1, int(density n))`` largest magnitudes, else 0; among equal magnitudes at the
    threshold the first ones in memory order (a stable sort's choice).

    ``kthvalue`` finds the threshold in O(n) where mergekit's full ``argsort`` takes O(n log n)
    (most of a ``ties`` merge's time on 10M-entry tensors); the kept set is a stable descending
    sort's first k.
    """
    n = tensor.numel()
    k = max(1, int(density * n))
    magnitudes = tensor.abs().reshape(-1).float()
    if k >= n:
        return torch.ones_like(tensor)
    threshold = magnitudes.kthvalue(n - k + 1).values
    keep = magnitudes > threshold
    missing = k - int(keep.sum())
    if missing > 0:
        keep[torch.nonzero(magnitudes == threshold).reshape(-1)[:missing]] = True
    return keep.to(tensor.dtype).reshape_as(tensor)


def outlier_mask(tensor: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Model Breadcrumbs: drop the ``int(gamma n)`` largest magnitudes (outliers), then keep the next
    ``int(density n)`` -- mergekit's ``magnitude_outliers``."""
    n = tensor.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    order = torch.sort(tensor.abs().reshape(-1).float(), descending=False).indices
    mask = torch.zeros(n, dtype=tensor.dtype, device=tensor.device)
    mask[order[bottom:bottom + keep]] = 1
    return mask.reshape_as(tensor)


def random_mask(tensor: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Bernoulli(density) keep-mask drawn on the CPU from ``seed`` (device-independent)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    probs = torch.full(tensor.shape, density, dtype=torch.float32)
    return torch.bernoulli(probs, generator=gen).to(tensor.device, tensor.dtype)


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
    masked = tensor * mask
    return rescale_l1(tensor, masked) if rescale else masked


def sign_consensus(deltas: torch.Tensor, how: str) -> torch.Tensor:
    """mergekit's ``get_mask``: entries whose sign equals the elected one (zero entries never do)."""
    sign = deltas.sign()
    votes = deltas.sum(0) if how == "sum" else sign.sum(0)
    majority = (votes >= 0).to(deltas.dtype) * 2 - 1
    return (sign == majority).to(deltas.dtype)


class GeneralizedTaskArithmetic(MergeMethod):
    def merge_tensor(self, job: TensorJob) -> torch.Tensor:
        p = job.params
        how = p["sparsify"]
        densities, own_weights = per_model(p["density"], job.num_tasks), per_model(p["weight"], job.num_tasks)
        gammas = per_model(p["gamma"], job.num_tasks)
        rows = []
        for t, delta in enumerate(job.deltas):
            rows.append(sparsify(delta, densities[t], how, p["rescale"], stable_seed(job.seed, job.name, t), gammas[t]))
        deltas = torch.stack(rows)
        weights = torch.tensor([w * pw for w, pw in zip(job.weights, own_weights)], dtype=deltas.dtype,
                               device=deltas.device)
        weights = weights.reshape(-1, *([1] * (deltas.dim() - 1)))
        deltas.mul_(weights)
        if p["consensus"] != "none":
            mask = sign_consensus(deltas, p["consensus"])
            mixed = (deltas * mask).sum(dim=0)
            divisor = (weights * mask).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = deltas.sum(dim=0)
            divisor = weights.sum(dim=0).expand_as(mixed).clone()
            divisor[divisor.abs() < 1e-8] = 1
        if p["normalize"]:
            mixed /= divisor
        if p["scaling"] != 1:
            mixed *= p["scaling"]
        return mixed


GTA = register(GeneralizedTaskArithmetic.from_spec(SPECS["gta"]))
