"""Directional deviation of class-mean features from a simplex ETF (docs/diagnostics.md).

For ``K >= 2`` class means ``mu_1..mu_K`` of a model's features on one task:

    M     = [mu_k - mu_bar]_k               (K x d, mu_bar = mean of the class means)
    G     = M M^T                            (K x K Gram matrix)
    G_ETF = I_K - 1 1^T / K                  (Gram of a simplex ETF, up to scale)
    Delta_ETF = || G / ||G||_F  -  G_ETF / ||G_ETF||_F ||_F          in [0, 2]

``Delta_ETF`` is invariant to a common translation of the features, to any
orthogonal transformation (rotation or reflection) and to positive scaling; it is 0
exactly when the centred class means are equal-norm and pairwise at cosine
``-1/(K-1)`` (a simplex ETF) and positive otherwise. For ``K = 2`` every pair of
distinct means is an ETF, so it is always 0. If all class means coincide
(``G = 0``) it is defined as 1, the distance of the target from 0.

A second, rotation-*dependent* number, :func:`prototype_misalignment`, compares the
centred class means with the head-matched ETF prototypes the feature alignment
targets, so it does see the learned rotations.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..adaptation.losses import etf_prototypes
from ..errors import MergeError


def etf_gram(k: int, dtype=torch.float64) -> torch.Tensor:
    """``I_K - 1 1^T / K``: the Gram matrix of a simplex ETF up to a positive scale."""
    return torch.eye(k, dtype=dtype) - torch.full((k, k), 1.0 / k, dtype=dtype)


def delta_etf(class_means: torch.Tensor) -> float:
    """Delta_ETF of a ``K x d`` matrix of class means (see the module docstring)."""
    if class_means.ndim != 2 or class_means.shape[0] < 2:
        raise MergeError(f"Delta_ETF needs a K x d matrix of class means with K >= 2, got shape {tuple(class_means.shape)}")
    means = class_means.double()
    centred = means - means.mean(0, keepdim=True)
    gram = centred @ centred.T
    target = etf_gram(means.shape[0])
    target = target / target.norm()
    norm = gram.norm()
    if norm <= 1e-12 * max(1.0, float(means.abs().max()) ** 2):
        return 1.0
    return float((gram / norm - target).norm())


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature of each class (``num_classes x d``); classes without samples are dropped."""
    features = features.double()
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels.to(features.device), features)
    counts = torch.bincount(labels.to(features.device), minlength=num_classes).double()
    present = counts > 0
    return (sums[present] / counts[present, None]).cpu()


def prototype_misalignment(centred_or_raw_means: torch.Tensor, head_weight: torch.Tensor, seed: int = 0) -> float:
    """Mean ``1 - cos(mu_k - mu_bar, m_k)`` against the head-matched simplex-ETF prototypes ``m_k``.

    0 when every centred class mean points at its prototype; it changes under rotations
    of the features, unlike :func:`delta_etf`. Needs every class present.
    """
    means = centred_or_raw_means.double()
    if means.shape[0] != head_weight.shape[0]:
        raise MergeError(f"{means.shape[0]} class means for a head with {head_weight.shape[0]} classes")
    centred = means - means.mean(0, keepdim=True)
    protos = etf_prototypes(head_weight, seed=seed).double()
    cos = torch.nn.functional.cosine_similarity(centred, protos, dim=1)
    return float((1 - cos).mean())


@torch.no_grad()
def extract_features(
    model: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int = 512, device="cpu",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Backbone features of ``inputs`` in batches (optionally through a feature transform), on the CPU."""
    out = []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(device)
        f = model(x.float() if x.is_floating_point() else x)
        if transform is not None:
            f = transform(f)
        out.append(f.float().cpu())
    return torch.cat(out)
