"""The per-tensor merge engine.

For every tensor name it loads the base tensor and the T fine-tuned tensors, forms
the task vectors in float32 on the compute device, asks the method for the merged
task vector, adds it to the base, casts to the output dtype and hands the result to a
sink -- one tensor at a time, so peak memory is O(T x largest tensor), not O(T x model).
With ``workers > 1`` a bounded window of tensors is merged by a thread pool (torch
releases the GIL in its kernels) while results are still delivered in order.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointError, MergeError, preview
from ..io.checkpoint import TensorInfo
from ..methods.base import MergeMethod, TensorJob
from .sources import TensorSource

Sink = Callable[[str, torch.Tensor], None]


@dataclass
class MergePlan:
    """What the engine will do with each tensor, decided from file headers alone."""

    names: list[str]
    merged: list[str]
    copied: list[str]  # non-floating or excluded: taken from the base as-is
    output_info: dict[str, TensorInfo] = field(default_factory=dict)

    def entries(self) -> list[tuple[str, TensorInfo]]:
        return [(n, self.output_info[n]) for n in self.names]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Validate a device string; asking for CUDA without a GPU is a clear error, not a crash."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergeError(f"device '{device}' requested but no CUDA GPU is available (torch.cuda.is_available() is False)")
    return dev


VOCAB_RULES = ("error", "shared")


def check_compatible(base: TensorSource, models: Sequence[TensorSource], vocab_mismatch: str = "error") -> dict[str, int]:
    """Every model must have the base's tensor names and shapes; floating tensors must stay floating.

    With ``vocab_mismatch="shared"``, tensors whose shapes differ only in their first
    dimension (embedding and output matrices of different vocabulary sizes) are allowed;
    the returned mapping gives, for each, the number of leading rows all models share.
    """
    if vocab_mismatch not in VOCAB_RULES:
        raise MergeError(f"vocab_mismatch must be one of {list(VOCAB_RULES)}, got {vocab_mismatch!r}")
    shared_rows: dict[str, int] = {}
    base_keys = set(base.keys())
    for model in models:
        keys = set(model.keys())
        # Integer buffers (position_ids, ...) are copied from the base and never read from the
        # fine-tuned models; checkpoints saved by another library version may lack or add them.
        missing = {n for n in base_keys - keys if base.info(n).dtype.is_floating_point}
        extra = {n for n in keys - base_keys if model.info(n).dtype.is_floating_point}
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensor(s) of the base: {preview(missing)}")
            if extra:
                parts.append(f"has {len(extra)} tensor(s) not in the base: {preview(extra)}")
            raise CheckpointError(f"{model.label}: " + "; ".join(parts))
        for name in base.keys():
            if name not in keys:
                continue
            b, m = base.info(name), model.info(name)
            if b.dtype.is_floating_point != m.dtype.is_floating_point:
                raise CheckpointError(f"dtype mismatch for '{name}': base {b.dtype} vs {m.dtype} in {model.label}")
            if b.shape == m.shape:
                continue
            rows_only = len(b.shape) == len(m.shape) >= 1 and b.shape[1:] == m.shape[1:]
            if rows_only and vocab_mismatch == "shared":
                shared_rows[name] = min(shared_rows.get(name, b.shape[0]), m.shape[0])
                continue
            hint = " (vocabulary sizes differ: set vocab_mismatch: shared to merge the shared rows)" if rows_only else ""
            raise CheckpointError(f"shape mismatch for '{name}': base {list(b.shape)} vs {list(m.shape)} in {model.label}{hint}")
    return shared_rows


def make_plan(base: TensorSource, excluded: Callable[[str], bool], out_dtype: torch.dtype | None) -> MergePlan:
    names = base.keys()
    merged, copied, infos = [], [], {}
    for name in names:
        info = base.info(name)
        if info.dtype.is_floating_point:
            infos[name] = TensorInfo(info.shape, out_dtype or info.dtype)
            (copied if excluded(name) else merged).append(name)
        else:
            infos[name] = info
            copied.append(name)
    return MergePlan(names=names, merged=merged, copied=copied, output_info=infos)


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in ``tensor``: min/max propagate NaN and expose +-Inf, and ``aminmax`` is
    about 10x faster than ``isfinite(t).all()`` (which dominated cheap merges of bf16 checkpoints)."""
    if tensor.numel() == 0:
        return True
    lo, hi = torch.aminmax(tensor)
    return bool(torch.isfinite(lo) and torch.isfinite(hi))


def _checked(tensor: torch.Tensor, name: str, label: str) -> torch.Tensor:
    if not all_finite(tensor):
        bad = "NaN" if torch.isnan(tensor).any() else "Inf"
        raise CheckpointError(f"tensor '{name}' in {label} contains {bad} values")
    return tensor


class MergeEngine:
    """Runs one method over a base and T fine-tuned sources, tensor by tensor."""

    def __init__(
        self,
        base: TensorSource,
        models: Sequence[TensorSource],
        method: MergeMethod,
        params_for: Callable[[str], dict],
        *,
        weights: Sequence[float] | None = None,
        excluded: Callable[[str], bool] = lambda name: False,
        vocab_mismatch: str = "error",
        out_dtype: torch.dtype | None = None,
        seed: int = 0,
        device: str | torch.device | None = "cpu",
        workers: int = 1,
        progress: bool = True,
    ):
        if len(models) < 2:
            raise MergeError(f"merging needs at least 2 fine-tuned models, got {len(models)}")
        self.base, self.models, self.method = base, list(models), method
        self.params_for = params_for
        self.weights = list(weights) if weights is not None else [1.0] * len(models)
        if len(self.weights) != len(self.models):
            raise MergeError(f"got {len(self.weights)} weights for {len(self.models)} models")
        self.seed = seed
        self.device = resolve_device(device)
        self.workers = max(1, int(workers))
        self.progress = progress
        self.shared_rows = check_compatible(base, self.models, vocab_mismatch)
        self.plan = make_plan(base, excluded, out_dtype)
        self._copied = set(self.plan.copied)

    # -- reading ----------------------------------------------------------------
    def _task_vectors(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Base and task vectors of ``name`` in float32 -- only the shared rows where vocabularies differ."""
        rows = self.shared_rows.get(name)
        base = _checked(self.base.get(name)[:rows], name, self.base.label).to(self.device, torch.float32)
        deltas = []
        for model in self.models:
            tensor = _checked(model.get(name)[:rows], name, model.label)
            deltas.append(tensor.to(self.device, torch.float32) - base)
        return base, deltas

    def task_vector_stream(self) -> Iterator[tuple[str, list[torch.Tensor], list[float], dict]]:
        """``(name, tau_1..tau_T, weights, params)`` for every merged tensor, read fresh from disk."""
        for name in self.plan.merged:
            _, deltas = self._task_vectors(name)
            yield name, deltas, self.weights, self.params_for(name)

    # -- merging ----------------------------------------------------------------
    def merge_one(self, name: str, state) -> torch.Tensor:
        """The output tensor for ``name`` (on the CPU, in its output dtype)."""
        out_dtype = self.plan.output_info[name].dtype
        if name in self._copied:
            return self.base.get(name).to(out_dtype)
        base, deltas = self._task_vectors(name)
        job = TensorJob(name, base, deltas, self.weights, self.params_for(name), self.seed, state)
        delta = self.method.merge_tensor(job)
        if tuple(delta.shape) != tuple(base.shape):
            raise MergeError(f"method '{self.method.name}' returned shape {list(delta.shape)} for '{name}' {list(base.shape)}")
        merged = base + delta.to(torch.float32)
        if not all_finite(merged):
            raise MergeError(f"method '{self.method.name}' produced non-finite values for '{name}' (check its parameters)")
        merged = merged.to(out_dtype).cpu()
        if name in self.shared_rows:  # rows beyond the shared vocabulary keep the base's values
            merged = torch.cat([merged, self.base.get(name)[merged.shape[0]:].to(out_dtype)])
        return merged

    def run(self, sink: Sink, executor=None) -> None:
        """Merge every tensor and pass ``(name, tensor)`` to ``sink`` in the base's order.

        ``executor`` (optional) merges the tensors elsewhere, e.g. on a Ray cluster
        (:class:`mdamerge.engine.distributed.RayExecutor`): an object whose
        ``map_ordered(engine, names, state)`` yields ``(name, merge_one(name, state))``
        in the order of ``names``.
        """
        state = self.method.prepare(self.task_vector_stream, self.params_for) if self.method.needs_prepass else None
        names = self.plan.names
        bar = tqdm(total=len(names), desc=f"merge ({self.method.name})", unit="tensor", disable=not self.progress)
        try:
            if executor is not None:
                for name, tensor in executor.map_ordered(self, names, state):
                    sink(name, tensor)
                    bar.update()
                return
            if self.workers == 1:
                for name in names:
                    sink(name, self.merge_one(name, state))
                    bar.update()
                return
            with ThreadPoolExecutor(self.workers) as pool:
                window: deque = deque()
                for name in names:
                    window.append((name, pool.submit(self.merge_one, name, state)))
                    if len(window) >= 2 * self.workers:
                        done_name, future = window.popleft()
                        sink(done_name, future.result())
                        bar.update()
                while window:
                    done_name, future = window.popleft()
                    sink(done_name, future.result())
                    bar.update()
        finally:
            bar.close()
