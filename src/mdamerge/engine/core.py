"""The per-tensor merge engine.

For every tensor name it loads the base tensor and the T fine-tuned tensors, forms
the task vectors in float32 on the compute device, asks the method for the merged
task vector, adds it to the base, casts to the output dtype and hands the result to a
sink -- one tensor at a time, so peak memory is O(T x largest tensor), not O(T x model).
With ``workers > 1`` a bounded window of tensors is merged by a thread pool (torch
releases the GIL in its kernels) while results are still delivered in order.
"""

from __future__ import annotations

import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import CheckpointError, MergeError, preview, short_repr
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


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Validate a device string; an unknown or absent device is a clear error, not a crash."""
    if device is not None and not isinstance(device, (str, torch.device)):
        raise MergeError(f"device must be a string such as cpu, cuda or cuda:1, got {short_repr(device)}")
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, ValueError, TypeError):
        raise MergeError(f"unknown device '{device}': expected cpu, cuda, cuda:N, mps or xpu") from None
    if dev.type not in DEVICE_TYPES:
        raise MergeError(f"device '{device}' is not supported: expected cpu, cuda, cuda:N, mps or xpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MergeError(f"device '{device}' requested but no CUDA GPU is available (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MergeError(f"device '{device}' requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    backend = getattr(torch.backends, "mps", None) if dev.type == "mps" else getattr(torch, "xpu", None)
    if dev.type in ("mps", "xpu") and not (backend is not None and backend.is_available()):
        raise MergeError(f"device '{device}' requested but it is not available on this machine")
    return dev


VOCAB_RULES = ("error", "shared")
# Name parts of input/output embeddings, for checkpoints without a config.json vocab_size.
VOCAB_NAME_PART = re.compile(r"emb\w*|\w*_emb\w*|\w*embeddings?|wte|lm_head|shared|embed_out")


def looks_like_vocabulary(name: str) -> bool:
    """True for names such as ``embed_tokens.weight``, ``wte.weight``, ``lm_head.weight``."""
    if name.startswith("output."):  # Meta's Llama layout names the LM head plainly 'output'
        return True
    return any(VOCAB_NAME_PART.fullmatch(part) for part in name.split(".")[:-1] or [name])


def _vocab_pair(base: TensorSource, model: TensorSource, row_mismatches: dict[str, tuple[int, int]]) -> set[tuple[int, int]]:
    """The (base rows, model rows) pairs that are vocabulary sizes: from config.json's
    ``vocab_size`` where both have one, and from the mismatched tensors named like embeddings."""
    pairs = set()
    base_vocab, model_vocab = getattr(base, "vocab_size", None), getattr(model, "vocab_size", None)
    if base_vocab and model_vocab:
        pairs.add((base_vocab, model_vocab))
    named = {rows for name, rows in row_mismatches.items() if looks_like_vocabulary(name)}
    if len(named) == 1:  # several different "vocabularies" in one model: trust none of them
        pairs |= named
    return pairs


def check_compatible(base: TensorSource, models: Sequence[TensorSource], vocab_mismatch: str = "error") -> dict[str, int]:
    """Every model must have the base's tensor names and shapes; floating tensors must stay floating.

    With ``vocab_mismatch="shared"``, vocabulary tensors (embedding and output matrices,
    output biases) whose first dimension differs are allowed; the returned mapping gives,
    for each, the number of leading rows all models share. A tensor counts as a vocabulary
    tensor when its row counts are the two models' vocabulary sizes (``vocab_size`` in
    config.json, or the rows of the mismatched embedding-named tensors); any other shape
    mismatch -- an MLP with a different width -- stays an error.
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
        row_mismatches: dict[str, tuple[int, int]] = {}
        for name in base.keys():
            if name not in keys:
                continue
            b, m = base.info(name), model.info(name)
            if b.dtype.is_floating_point != m.dtype.is_floating_point:
                raise CheckpointError(f"dtype mismatch for '{name}': base {b.dtype} vs {m.dtype} in {model.label}")
            if b.shape == m.shape:
                continue
            if len(b.shape) == len(m.shape) >= 1 and b.shape[1:] == m.shape[1:]:
                row_mismatches[name] = (b.shape[0], m.shape[0])
                continue
            raise CheckpointError(f"shape mismatch for '{name}': base {list(b.shape)} vs {list(m.shape)} in {model.label}")
        vocab = _vocab_pair(base, model, row_mismatches)
        for name, rows in row_mismatches.items():
            where = f"shape mismatch for '{name}': base {list(base.info(name).shape)} vs {list(model.info(name).shape)} in {model.label}"
            if rows not in vocab:
                rule = " (not a vocabulary dimension, so vocab_mismatch: shared does not apply)" if vocab_mismatch == "shared" else ""
                raise CheckpointError(where + rule)
            if vocab_mismatch != "shared":
                raise CheckpointError(where + " (vocabulary sizes differ: set vocab_mismatch: shared to merge the shared rows)")
            shared_rows[name] = min(shared_rows.get(name, rows[0]), rows[1])
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


LINEAR_BLOCK = 1 << 18  # entries per block of a linear merge on the CPU: its three float32 blocks (1 MiB each) stay in cache


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
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise MergeError(f"workers must be a positive integer, got {short_repr(workers)}")
        self.workers = workers
        self.progress = progress
        self.shared_rows = check_compatible(base, self.models, vocab_mismatch)
        self.plan = make_plan(base, excluded, out_dtype)
        self._copied = set(self.plan.copied)

    # -- reading ----------------------------------------------------------------
    def _inputs(self, name: str, check: bool) -> list[torch.Tensor]:
        """The base's and each model's ``name`` as stored (shared vocabulary rows only), base first; a source
        listed twice (mergekit's linear: its first model serves as the base) is read once. ``check``: a NaN
        or Inf is refused with the error naming its file."""
        read: dict[int, torch.Tensor] = {}
        for source in (self.base, *self.models):
            if id(source) not in read:
                tensor = self._rows(source.get(name), name)
                read[id(source)] = _checked(tensor, name, source.label) if check else tensor
        return [read[id(source)] for source in (self.base, *self.models)]

    def _task_vectors(self, name: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Base and task vectors of ``name`` in float32 -- only the shared rows where vocabularies differ."""
        stored_base, *stored = self._inputs(name, check=True)
        base = stored_base.to(self.device, torch.float32)
        deltas = []
        for tensor in stored:
            widened = tensor.to(self.device, torch.float32)
            # subtracting in place into the float32 copy saves a tensor-sized allocation per model (the
            # copy is ours unless the tensor was float32 already: a caller's state dict is never changed)
            deltas.append(widened.sub_(base) if widened is not tensor else widened - base)
        return base, deltas

    def _merge_linear(self, name: str, coefficients: list[float], out_dtype: torch.dtype) -> torch.Tensor:
        """``base + sum_t c_t (theta_t - base)`` block by block, with the operations (and so the bits) of the
        whole-tensor path: the float32 work on a block stays in the CPU's cache, so each input is read
        from memory once and no float32 copy of a whole tensor is made (on a GPU one block is the tensor)."""
        inputs = self._inputs(name, check=False)
        shape, flats = inputs[0].shape, [tensor.reshape(-1) for tensor in inputs]
        size = flats[0].numel()
        block = LINEAR_BLOCK if self.device.type == "cpu" else size
        base_block, tau, mixed = (torch.empty(min(block, size), dtype=torch.float32, device=self.device) for _ in range(3))
        merged = torch.empty(size, dtype=out_dtype)
        for start in range(0, size, block):
            stop = min(start + block, size)
            b, t, m = base_block[:stop - start], tau[:stop - start], mixed[:stop - start]
            b.copy_(flats[0][start:stop])
            for i, (model, coefficient) in enumerate(zip(flats[1:], coefficients)):
                t.copy_(model[start:stop]).sub_(b)
                if i == 0:
                    torch.mul(t, coefficient, out=m)
                else:
                    m.add_(t, alpha=coefficient)
            m.add_(b)
            if not all_finite(m):  # a NaN or Inf in any input reaches the sum: only then look for it
                self._inputs(name, check=True)  # raises the error naming the input
                raise MergeError(f"method '{self.method.name}' produced non-finite values for '{name}' (check its parameters)")
            merged[start:stop].copy_(m)
        return merged.reshape(shape)

    def _rows(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """The shared vocabulary rows of ``tensor`` where vocabularies differ; else all of it
        (never sliced then: a 0-dim tensor cannot be)."""
        rows = self.shared_rows.get(name)
        return tensor if rows is None else tensor[:rows]

    def _is_empty(self, name: str) -> bool:
        """A tensor with a zero-size dimension: nothing to merge, and SVD-based methods cannot."""
        return any(d == 0 for d in self.plan.output_info[name].shape)

    def task_vector_stream(self) -> Iterator[tuple[str, list[torch.Tensor], list[float], dict]]:
        """``(name, tau_1..tau_T, weights, params)`` for every merged tensor, read fresh from disk."""
        for name in self.plan.merged:
            if self._is_empty(name):
                continue
            _, deltas = self._task_vectors(name)
            yield name, deltas, self.weights, self.params_for(name)

    # -- merging ----------------------------------------------------------------
    def merge_one(self, name: str, state) -> torch.Tensor:
        """The output tensor for ``name`` (on the CPU, in its output dtype)."""
        out_dtype = self.plan.output_info[name].dtype
        if name in self._copied or self._is_empty(name):
            return self.base.get(name).to(out_dtype)
        params = self.params_for(name)
        coefficients = self.method.linear_coefficients(params, self.weights)
        if coefficients is not None:
            merged = self._merge_linear(name, coefficients, out_dtype)
        else:
            merged = self._merge_with_method(name, params, state).to(out_dtype).cpu()
        if name in self.shared_rows:  # rows beyond the shared vocabulary keep the base's values
            merged = torch.cat([merged, self.base.get(name)[merged.shape[0]:].to(out_dtype)])
        return merged

    def _merge_with_method(self, name: str, params: dict, state) -> torch.Tensor:
        """The merged tensor in float32 on the compute device, from the method's merged task vector."""
        base, deltas = self._task_vectors(name)
        job = TensorJob(name, base, deltas, self.weights, params, self.seed, state)
        delta = self.method.merge_tensor(job)
        if tuple(delta.shape) != tuple(base.shape):
            raise MergeError(f"method '{self.method.name}' returned shape {list(delta.shape)} for '{name}' {list(base.shape)}")
        merged = base + delta.to(torch.float32)
        if not all_finite(merged):
            raise MergeError(f"method '{self.method.name}' produced non-finite values for '{name}' (check its parameters)")
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
