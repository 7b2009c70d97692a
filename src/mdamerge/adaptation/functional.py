"""Merged parameters as a differentiable function of merging coefficients.

A :class:`MergedParameterSpace` holds an anchor ``theta_a`` and D stacked directions
``delta_j`` per parameter tensor, and builds

    theta(lambda)[name] = theta_a[name] + sum_j lambda[j, layer(name)] * delta_j[name]

as plain tensors that :func:`torch.func.functional_call` feeds to one shared module:
no model copy is made per step, and autograd reaches ``lambda`` through the merged
tensors. For AdaMerging the anchor is the pretrained model and the directions are the
task vectors ``tau_t``; for MDA from its data-free merge, the single direction is the
merged task vector.

Only floating-point *parameters* of the module are merged. Buffers (float or not,
e.g. position ids or running statistics) are taken from the anchor unchanged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..errors import CheckpointError, MergeError

GRANULARITIES = ("task", "layer")


def mergeable_names(module: nn.Module) -> list[str]:
    """Names of the module's floating-point parameters, in registration order."""
    return [name for name, p in module.named_parameters() if p.is_floating_point()]


class MergedParameterSpace:
    """Anchor + coefficient-weighted directions, evaluated functionally (see module docstring).

    ``directions`` are D mappings name -> tensor; with ``subtract`` given, each direction
    is ``directions[j] - subtract`` (pass the fine-tuned state dicts and the base to get
    the task vectors without building them first).
    """

    def __init__(
        self,
        module: nn.Module,
        anchor: Mapping[str, torch.Tensor],
        directions: Sequence[Mapping[str, torch.Tensor]],
        granularity: str = "layer",
        device: str | torch.device = "cpu",
        subtract: Mapping[str, torch.Tensor] | None = None,
    ):
        if granularity not in GRANULARITIES:
            raise MergeError(f"granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
        if not directions:
            raise MergeError("at least one merging direction (task vector) is needed")
        self.module = module
        self.device = torch.device(device)
        self.granularity = granularity
        self.names = mergeable_names(module)
        _check_keys(self.names, anchor, "anchor")
        for j, direction in enumerate(directions):
            _check_keys(self.names, direction, f"direction {j}")
        self.anchor = {n: anchor[n].detach().to(self.device, torch.float32) for n in self.names}
        # one (D, *shape) tensor per parameter: the weighted sum is a single tensordot. With
        # ``subtract`` (the base), directions are fine-tuned weights and task vectors are formed
        # here tensor by tensor, so no second full set of task vectors is ever materialised.
        self.stacked = {}
        for n in self.names:
            rows = [d[n].detach().to(self.device, torch.float32) for d in directions]
            stacked = torch.stack(rows)
            del rows
            if subtract is not None:
                stacked -= subtract[n].detach().to(self.device, torch.float32)
            self.stacked[n] = stacked
        for n in self.names:
            if self.stacked[n].shape[1:] != self.anchor[n].shape:
                raise CheckpointError(
                    f"tensor '{n}': direction shape {tuple(self.stacked[n].shape[1:])} != anchor {tuple(self.anchor[n].shape)}"
                )
        buffer_names = [name for name, _ in module.named_buffers()]
        self.buffers = {n: anchor[n].detach().to(self.device) for n in buffer_names if n in anchor}
        self.layer_index = {n: (i if granularity == "layer" else 0) for i, n in enumerate(self.names)}

    @property
    def num_directions(self) -> int:
        return next(iter(self.stacked.values())).shape[0]

    @property
    def num_layers(self) -> int:
        """Coefficient columns: one per parameter tensor (layer-wise) or a single one (task-wise)."""
        return len(self.names) if self.granularity == "layer" else 1

    def coefficient_shape(self) -> tuple[int, int]:
        return (self.num_directions, self.num_layers)

    def parameters(self, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """The merged parameter tensors for a ``(D, L)`` coefficient matrix (differentiable)."""
        if tuple(coefficients.shape) != self.coefficient_shape():
            raise MergeError(f"coefficients have shape {tuple(coefficients.shape)}, expected {self.coefficient_shape()}")
        return {
            n: self.anchor[n] + torch.tensordot(coefficients[:, self.layer_index[n]], self.stacked[n], dims=1)
            for n in self.names
        }

    def single_direction(self, index: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """``theta_a + scale * delta_index`` (e.g. a fine-tuned model when the anchor is the base)."""
        return {n: self.anchor[n] + scale * self.stacked[n][index] for n in self.names}

    def forward(self, params: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        """Run the shared module with ``params`` (and the anchor's buffers) on ``inputs``."""
        return functional_call(self.module, {**params, **self.buffers}, (inputs,), strict=False)

    def state_dict(self, coefficients: torch.Tensor, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A full CPU state dict: merged parameters in ``template``'s dtypes, every other entry from ``template``."""
        with torch.no_grad():
            merged = self.parameters(coefficients.detach())
        out = {}
        for name, tensor in template.items():
            value = merged[name] if name in merged else tensor
            out[name] = value.detach().to("cpu", tensor.dtype).clone()
        return out


def _check_keys(names: Sequence[str], state: Mapping[str, torch.Tensor], label: str) -> None:
    missing = [n for n in names if n not in state]
    if missing:
        raise CheckpointError(f"{label} lacks parameter '{missing[0]}'" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    for n in names:
        t = state[n]
        if not torch.is_tensor(t):
            raise CheckpointError(f"{label}: entry '{n}' is not a tensor")
        if not t.is_floating_point():
            raise CheckpointError(f"{label}: parameter '{n}' has non-float dtype {t.dtype}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{label}: parameter '{n}' contains NaN or Inf")
