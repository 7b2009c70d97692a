"""Linear CKA between two models' features, layer by layer (docs/diagnostics.md).

Linear centred kernel alignment (Kornblith et al., ICML 2019) of two feature matrices
``X`` (n x p) and ``Y`` (n x q) computed on the same n inputs:

    X_c = X - mean_rows(X),  Y_c = Y - mean_rows(Y)
    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)          in [0, 1]

It is 1 when ``Y = c X Q + b`` (``Q`` orthogonal, ``c != 0``) and invariant to those maps,
but not to general invertible linear maps. Here it compares a merged backbone with each
fine-tuned backbone on that task's inputs: 1 at a layer means the merged model computes
the same representation there (up to rotation and scale) as the task's own model.

Nothing here is specific to the zoo's vision transformer: :func:`layer_features` hooks
any named submodules of any ``torch.nn.Module`` and pools token sequences, so a text
backbone can use it with its own layer names.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from ..errors import MergeError

# "first": the first token (a class token, as CLIP's vision tower pools); "mean": average over tokens.
POOLINGS = ("first", "mean")
FEATURES = "features"  # name of the model's own output in layer_features' result


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``n x p`` and ``n x q`` features of the same ``n`` inputs (see the module docstring).

    Uses the feature-space form when the widths are small and the equivalent ``n x n``
    Gram form when ``n`` is smaller. Returns 0 when either matrix is constant over inputs.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise MergeError(f"CKA needs two n x d feature matrices with the same n, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise MergeError(f"CKA needs at least 2 inputs, got {x.shape[0]}")
    xc = x.double() - x.double().mean(0, keepdim=True)
    yc = y.double() - y.double().mean(0, keepdim=True)
    if x.shape[0] < x.shape[1] + y.shape[1]:
        kx, ky = xc @ xc.T, yc @ yc.T
        cross, nx, ny = (kx * ky).sum(), kx.norm(), ky.norm()
    else:
        cross, nx, ny = (yc.T @ xc).square().sum(), (xc.T @ xc).norm(), (yc.T @ yc).norm()
    if nx == 0 or ny == 0:
        return 0.0
    return float(cross / (nx * ny))


def pool_tokens(output: torch.Tensor, pool: str) -> torch.Tensor:
    """``batch x tokens x d`` -> ``batch x d`` (first token or mean); 2-D outputs pass through."""
    if output.ndim == 2:
        return output
    if output.ndim != 3:
        raise MergeError(f"cannot pool a layer output of shape {tuple(output.shape)} (expected batch x [tokens x] d)")
    if pool == "first":
        return output[:, 0]
    if pool == "mean":
        return output.mean(1)
    raise MergeError(f"unknown pooling '{pool}'; choose from {', '.join(POOLINGS)}")


def block_names(model: torch.nn.Module) -> list[str]:
    """Names of the transformer blocks of a CLIP/HF-style model (``encoder.layers.N`` or ``*.layer.N``)."""
    names = []
    for name, module in model.named_modules():
        parent, _, index = name.rpartition(".")
        if index.isdigit() and parent.split(".")[-1] in ("layers", "layer", "h", "blocks"):
            names.append(name)
    return names


@torch.no_grad()
def layer_features(
    model: torch.nn.Module, inputs: torch.Tensor, layers: Sequence[str], *, pool: str = "first",
    batch_size: int = 512, device="cpu", call: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Pooled outputs of the named submodules (and the model's output, key ``"features"``) on ``inputs``.

    ``call(model, batch)`` runs the model (default ``model(batch)``); features come back on the CPU in float32.
    """
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules]
    if unknown:
        raise MergeError(f"model has no submodule '{unknown[0]}'")
    if pool not in POOLINGS:
        raise MergeError(f"unknown pooling '{pool}'; choose from {', '.join(POOLINGS)}")
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in (*layers, FEATURES)}

    def hook_for(name):
        def hook(_module, _inp, out):
            out = out[0] if isinstance(out, tuple) else out
            captured[name].append(pool_tokens(out, pool).float().cpu())
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in layers]
    try:
        model = model.to(device).eval()
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size].to(device)
            out = call(model, batch) if call is not None else model(batch)
            captured[FEATURES].append(pool_tokens(out, pool).float().cpu())
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in captured.items()}


def cka_by_layer(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Linear CKA of every layer present in both feature dictionaries (in ``a``'s order)."""
    return {name: linear_cka(feats, b[name]) for name, feats in a.items() if name in b}


__all__ = ["block_names", "cka_by_layer", "layer_features", "linear_cka", "pool_tokens"]
