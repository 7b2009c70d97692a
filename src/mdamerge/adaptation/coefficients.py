"""Learning merging coefficients: AdaMerging (Yang et al., ICLR 2024) minimises the
entropy of the merged model's predictions on unlabeled test inputs.

    theta(lambda) = theta_0 + sum_t lambda_{t,l} tau_t        (layer-wise: one lambda per task per tensor)
    theta(lambda) = theta_0 + sum_t lambda_t tau_t            (task-wise)

Defaults follow FusionBench: ``lambda`` starts at 0.3, Adam with lr 1e-3, 1000 steps,
batches of 16 inputs per task, and the per-task entropies are summed (their gradients
accumulated) before every optimiser step. Like the original implementation, the
coefficients are clamped to [0, 1] in the forward pass (``clamp=None`` disables it).

:class:`CoefficientTrainer` is the shared optimisation loop; the MDA feature-space
alignment (:mod:`mdamerge.adaptation.mda_feature`) extends it with rotations and
extra loss terms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import MergeError
from .functional import MergedParameterSpace
from .losses import shannon_entropy
from .problem import AdaptationProblem, UnlabeledBatches


@dataclass
class AdaptiveResult:
    """Outcome of a data-based merge.

    ``state_dict`` is the merged backbone (CPU, the base's dtypes);
    ``feature_transforms`` maps a task to a callable applied to backbone features
    before that task's head (``None`` when the method learns none); ``info`` records
    settings, the loss history (one dict of components per step), the learned
    coefficients and timings.
    """

    state_dict: dict[str, torch.Tensor]
    feature_transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MergeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_clamp(clamp: Any) -> tuple[float, float] | None:
    if clamp is None:
        return None
    try:
        lo, hi = (float(v) for v in clamp)
    except (TypeError, ValueError):
        raise MergeError(f"clamp must be None or a (low, high) pair, got {clamp!r}") from None
    if not lo < hi:
        raise MergeError(f"clamp must satisfy low < high, got {clamp!r}")
    return lo, hi


def frozen_heads(problem: AdaptationProblem, device) -> dict[str, nn.Module]:
    """The task heads on ``device`` in eval mode, with gradients off (they are never trained)."""
    heads = {}
    for task in problem.tasks:
        head = problem.heads[task].to(device).eval()
        for p in head.parameters():
            p.requires_grad_(False)
        heads[task] = head
    return heads


class CoefficientTrainer:
    """Adam on merging coefficients (and optional extra modules) against a per-task loss.

    Every step draws one batch per task, builds the merged parameters once, and
    accumulates each task's gradient into detached copies of them (so only one task's
    activations are alive at a time) before pushing the sum back to the coefficients.
    Subclasses override :meth:`task_loss` and :meth:`extra_optimizers`.
    """

    method_name = "adamerging"

    def __init__(
        self,
        problem: AdaptationProblem,
        space: MergedParameterSpace,
        init_coefficients: torch.Tensor,
        *,
        lr: float = 1e-3,
        clamp: tuple[float, float] | None = (0.0, 1.0),
        batch_size: int = 16,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = True,
    ):
        if not lr > 0:
            raise MergeError(f"lr must be > 0, got {lr!r}")
        self.problem = problem
        self.space = space
        self.device = torch.device(device)
        self.clamp = check_clamp(clamp)
        self.lr = float(lr)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = seed
        self.progress = progress
        self.raw = nn.Parameter(init_coefficients.detach().to(self.device, torch.float32).clone())
        self.heads = frozen_heads(problem, self.device)
        self.batches = UnlabeledBatches(problem.unlabeled, self.batch_size, seed, self.device)
        self.history: list[dict[str, float]] = []
        self._optimizers: list[torch.optim.Optimizer] | None = None

    # -- hooks -------------------------------------------------------------
    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers of parameters trained alongside the coefficients (none for AdaMerging)."""
        return []

    def task_loss(self, task: str, indices: torch.Tensor, inputs: torch.Tensor,
                  params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss components of one task's batch; ``"total"`` is what is minimised."""
        logits = self.heads[task](self.space.forward(params, inputs))
        entropy = shannon_entropy(logits)
        return {"entropy": entropy, "total": entropy}

    # -- loop --------------------------------------------------------------
    def coefficients(self) -> torch.Tensor:
        """The coefficients the merged model uses (clamped when ``clamp`` is set)."""
        return self.raw.clamp(*self.clamp) if self.clamp else self.raw

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam on the coefficients, then whatever the subclass adds."""
        if self._optimizers is None:
            self._optimizers = [torch.optim.Adam([self.raw], lr=self.lr), *self.extra_optimizers()]
        return self._optimizers

    def accumulate_gradients(self) -> dict[str, float]:
        """One batch per task: accumulate all gradients, return the summed loss components."""
        merged = self.space.parameters(self.coefficients())
        leaves = {n: t.detach().requires_grad_(True) for n, t in merged.items()}
        totals: dict[str, float] = {}
        for task in self.problem.tasks:
            indices, inputs = self.batches.next(task)
            components = self.task_loss(task, indices, inputs, leaves)
            components["total"].backward()
            for key, value in components.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach())
        names = [n for n in merged if leaves[n].grad is not None]
        if names:
            torch.autograd.backward([merged[n] for n in names], [leaves[n].grad for n in names])
        return totals

    def step(self) -> dict[str, float]:
        """One optimiser step; returns (and logs) the loss components summed over tasks."""
        optimizers = self.optimizers()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        totals = self.accumulate_gradients()
        for opt in optimizers:
            opt.step()
        totals["step"] = len(self.history)
        self.history.append(totals)
        return totals

    def run(self, steps: int, desc: str | None = None) -> list[dict[str, float]]:
        check_positive_int("steps", steps, minimum=0)
        bar = tqdm(range(steps), desc=desc or self.method_name, disable=not self.progress, leave=False)
        for _ in bar:
            logged = self.step()
            bar.set_postfix(loss=f"{logged['total']:.4f}")
        return self.history

    # -- output ------------------------------------------------------------
    def coefficient_table(self) -> dict[str, Any]:
        """Final coefficients, ``[direction][layer]``, with the layer names they belong to."""
        layers = self.space.names if self.space.granularity == "layer" else ["*"]
        return {"values": self.coefficients().detach().cpu().tolist(), "layers": layers}

    def feature_transforms(self) -> dict[str, Callable] | None:
        return None

    def result(self, template: dict[str, torch.Tensor], info: dict[str, Any]) -> AdaptiveResult:
        state = self.space.state_dict(self.coefficients(), template)
        info = {
            **info,
            "steps": len(self.history),
            "lr": self.lr,
            "batch_size": self.batch_size,
            "clamp": list(self.clamp) if self.clamp else None,
            "granularity": self.space.granularity,
            "tasks": self.problem.tasks,
            "device": str(self.device),
            "seed": self.seed,
            "coefficients": self.coefficient_table(),
            "history": self.history,
        }
        return AdaptiveResult(state, self.feature_transforms(), info)


def adamerging(
    problem: AdaptationProblem,
    *,
    granularity: str = "layer",
    steps: int = 1000,
    lr: float = 1e-3,
    init: float = 0.3,
    batch_size: int = 16,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> AdaptiveResult:
    """Task-wise (``granularity="task"``) or layer-wise (``"layer"``) AdaMerging.

    Returns the merged backbone; ``info["coefficients"]`` holds the learned
    ``lambda`` (task x layer) and ``info["history"]`` the per-step summed entropy.
    """
    start = time.perf_counter()
    space = MergedParameterSpace(
        problem.module.to(device), problem.base, list(problem.finetuned.values()), granularity, device, subtract=problem.base
    )
    init_coefficients = torch.full(space.coefficient_shape(), float(init))
    trainer = CoefficientTrainer(
        problem, space, init_coefficients, lr=lr, clamp=clamp, batch_size=batch_size, seed=seed,
        device=device, progress=progress,
    )
    trainer.method_name = f"adamerging-{granularity}"
    trainer.run(steps)
    info = {"method": f"adamerging_{granularity}", "init": float(init), "seconds": time.perf_counter() - start}
    return trainer.result(dict(problem.base), info)
