"""Unsupervised losses of the data-based merges (see docs/feature_alignment.md).

* :func:`shannon_entropy` -- AdaMerging's objective: the mean entropy (nats) of the
  merged model's predicted class distribution.
* :func:`marginal_entropy` -- entropy of the batch-mean prediction (the diversity
  term of information maximisation; subtracted from the loss).
* :func:`etf_prototypes` / :func:`etf_alignment_loss` -- pull each (rotated) feature
  towards the simplex-ETF prototype of its pseudo-label.
* :func:`rotation_gap` -- ``||R - R*||_F^2 / d``, distance of a learned rotation from
  its Procrustes target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..methods.linalg import simplex_etf


def shannon_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k p_k log p_k`` with ``p = softmax(logits)``."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the batch-mean prediction ``p_bar = mean_i softmax(logits_i)``.

    Information maximisation (SHOT, Liang et al. 2020) minimises ``mean_i H(p_i) - H(p_bar)``:
    confident predictions that are nevertheless spread over the classes. Subtracting this
    term is what stops entropy minimisation from collapsing onto a few classes.
    """
    p_bar = F.softmax(logits, dim=-1).mean(0)
    return -(p_bar * p_bar.clamp_min(1e-12).log()).sum()


def etf_prototypes(head_weight: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Simplex-ETF class prototypes (``K x d``, unit rows) matched to a head's classes.

    A simplex ETF ``E`` (unit rows, pairwise cosine ``-1/(K-1)``) is rotated by the
    orthogonal Procrustes solution ``Q = argmin_{Q in O(d)} ||E Q - W||_F`` onto ``W``,
    the head's class weights after removing their mean row and normalising each row;
    row ``k`` of ``E Q`` is then the prototype of class ``k``. When the centred head
    weights already form a simplex ETF the prototypes equal them exactly.
    """
    w = head_weight.detach().double()
    k, d = w.shape
    w = w - w.mean(0, keepdim=True)
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    generator = torch.Generator().manual_seed(seed)
    etf = simplex_etf(k, d, generator=generator).double().to(w.device)
    u, _, vh = torch.linalg.svd(etf.mT @ w)
    return (etf @ (u @ vh)).float()


def etf_alignment_loss(
    features: torch.Tensor, logits: torch.Tensor, prototypes: torch.Tensor, center: bool = True
) -> torch.Tensor:
    """Mean ``1 - cos(z_i - c, m_{y_i})`` with pseudo-labels ``y_i = argmax logits_i``.

    ``z_i`` are the (rotated) features, ``c`` their batch mean when ``center`` (the ETF
    geometry is that of globally centred class means), ``m_k`` the prototypes. The
    pseudo-labels are constants: no gradient flows through the argmax.
    """
    pseudo = logits.detach().argmax(-1)
    z = features - features.mean(0, keepdim=True) if center else features
    cos = F.cosine_similarity(z, prototypes[pseudo].to(z.dtype), dim=-1)
    return (1.0 - cos).mean()


def rotation_gap(rotation: torch.Tensor, target: torch.Tensor, per_dim: bool = True) -> torch.Tensor:
    """``||R - R*||_F^2``, divided by ``d`` when ``per_dim`` (then in ``[0, 4]`` whatever the width ``d``)."""
    gap = (rotation - target.detach()).pow(2).sum()
    return gap / rotation.shape[-1] if per_dim else gap
