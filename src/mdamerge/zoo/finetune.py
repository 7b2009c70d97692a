"""Training loops of the model zoo: backbone pretraining, linear-probe heads, full fine-tuning.

The recipe mirrors the CLIP merging benchmark of the literature: each task's head is
fitted once on the *pretrained* backbone's frozen features (our stand-in for CLIP's
zero-shot text heads), then frozen; the whole backbone is fine-tuned through that
frozen head with a small learning rate and a fixed step budget. Merged backbones are
later evaluated with the same frozen heads.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .model import TinyViT, ViTConfig


def auto_threads() -> int:
    """Intra-op threads worth using now: torch's default, minus cores other processes keep busy.

    On a shared machine, more threads than free cores makes torch's thread pool wait on
    descheduled threads; on this project's 2-core machine one thread then trains ~4x
    faster than two. Only speed depends on this, never the training budget.
    """
    default = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return default
    free = int((os.cpu_count() or default) - busy + 0.5)
    return max(1, min(default, free))


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: str | torch.device = "cpu"):
    """Run a block with ``threads`` torch threads on CPU (``None``: :func:`auto_threads`), then restore."""
    before = torch.get_num_threads()
    if str(device).startswith("cpu"):
        torch.set_num_threads(threads or auto_threads())
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainSettings:
    """Optimiser settings of one training run (AdamW, linear warm-up then cosine decay)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of the steps
    seed: int = 0


def lr_schedule(step: int, settings: TrainSettings) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine decay to zero."""
    warm = max(1, int(settings.warmup * settings.steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, settings.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Index batches for ``steps`` steps, reshuffling each pass over ``range(n)``."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos:pos + batch_size]
        pos += batch_size


def train_loop(
    params: list[nn.Parameter], loss_fn: Callable[[torch.Tensor], torch.Tensor], n: int, settings: TrainSettings,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """AdamW over ``params``; ``loss_fn(index_batch)`` gives the loss; returns the mean loss of the last 10% of steps."""
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    tail, tail_start = [], int(0.9 * settings.steps)
    for step, idx in enumerate(batches(n, min(settings.batch_size, n), settings.steps, gen)):
        for group in opt.param_groups:
            group["lr"] = settings.lr * lr_schedule(step, settings)
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= tail_start:
            tail.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    return sum(tail) / max(1, len(tail))


@torch.no_grad()
def extract_features(
    backbone: nn.Module, x: torch.Tensor, batch_size: int = 500, device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Backbone features of all of ``x`` (CPU float32), in eval mode, batch by batch."""
    backbone.eval()
    out = [backbone(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, getattr(backbone, "feature_dim", 0))


def pretrain_backbone(
    config: ViTConfig, data: tuple[torch.Tensor, torch.Tensor, int], settings: TrainSettings,
    device: str | torch.device = "cpu", progress: Callable[[int, float], None] | None = None,
) -> tuple[TinyViT, float]:
    """Train a fresh backbone with a throw-away classifier on the pretraining corpus."""
    x, y, num_classes = data
    torch.manual_seed(settings.seed)
    model = TinyViT(config).to(device)
    head = nn.Linear(model.feature_dim, num_classes).to(device)
    model.train()
    x_dev, y_dev = x.to(device), y.to(device)
    loss = train_loop(
        [*model.parameters(), *head.parameters()],
        lambda idx: F.cross_entropy(head(model(x_dev[idx])), y_dev[idx]), len(y), settings, progress,
    )
    return model.cpu().eval(), loss


def fit_linear_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 300, lr: float = 0.05,
    weight_decay: float = 1e-4, seed: int = 0,
) -> nn.Linear:
    """Multinomial logistic regression on frozen features (full-batch Adam), as a frozen task head."""
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(head(features), labels) + weight_decay * head.weight.square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    head.requires_grad_(False)
    return head.eval()


def finetune_backbone(
    pretrained: TinyViT, head: nn.Linear, train: tuple[torch.Tensor, torch.Tensor], settings: TrainSettings,
    device: str | torch.device = "cpu", progress: Callable[[int, float], None] | None = None,
) -> tuple[TinyViT, float]:
    """Full fine-tuning of a copy of ``pretrained`` through the frozen ``head``."""
    x, y = train
    torch.manual_seed(settings.seed)
    model = copy.deepcopy(pretrained).to(device).train()
    frozen_head = copy.deepcopy(head).to(device).requires_grad_(False)
    x_dev, y_dev = x.to(device), y.to(device)
    loss = train_loop(
        list(model.parameters()), lambda idx: F.cross_entropy(frozen_head(model(x_dev[idx])), y_dev[idx]),
        len(y), settings, progress,
    )
    return model.cpu().eval(), loss


@torch.no_grad()
def head_correct(
    backbone: nn.Module, head: nn.Linear, split: tuple[torch.Tensor, torch.Tensor], batch_size: int = 500,
    device: str | torch.device = "cpu", feature_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per example of ``split`` (bool, in order): does ``head(transform(backbone(x)))`` classify it correctly?"""
    x, y = split
    backbone.eval()
    head = head.to(device)
    out = []
    for i in range(0, len(x), batch_size):
        feats = backbone(x[i:i + batch_size].to(device))
        if feature_transform is not None:
            feats = feature_transform(feats)
        out.append(head(feats).argmax(dim=1).cpu() == y[i:i + batch_size])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def head_accuracy(
    backbone: nn.Module, head: nn.Linear, split: tuple[torch.Tensor, torch.Tensor], batch_size: int = 500,
    device: str | torch.device = "cpu", feature_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Fraction of ``split`` that ``head(transform(backbone(x)))`` classifies correctly (nan when empty)."""
    return fraction_correct(head_correct(backbone, head, split, batch_size, device, feature_transform))


def fraction_correct(correct: torch.Tensor) -> float:
    """Accuracy of a per-example correctness vector (nan when empty); counts as integers, as before."""
    return int(correct.sum()) / len(correct) if len(correct) else float("nan")
