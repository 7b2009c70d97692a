"""Merging task-specific LoRA adapters of one base model.

Each adapter t gives, per adapted weight, a task vector ``tau_t = L_t R_t`` of rank
``r_t`` (see :mod:`mdamerge.lora.adapters`). The SVD-based methods exploit the low
rank and never decompose a dense m x n matrix:

* the SVD of ``L R`` comes from thin QRs of the factors, ``L = Q_L R_L`` and
  ``R^T = Q_R R_R``, and the SVD of the small core ``R_L R_R^T`` (r x r):
  ``L R = (Q_L U_c) S (Q_R V_c)^T`` (:func:`factored_svd`);
* ``tsv``/``mda``: per task t the top ``k_t = min(k_method, r_t)`` triplets, ``r_t`` the
  rank of ``L_t R_t`` (its adapter's rank unless degenerate) -- each adapter keeps its
  own rank; beyond it a task vector has no singular directions (a dense SVD would return
  arbitrary null-space vectors with zero singular values, which the polar step would
  then mix in), so the LoRA variant stops at the rank; each singular pair gets a
  canonical sign (:func:`canonical_signs`), and the concatenated factors go through the
  same polar / ETF steps as the dense methods (``polar_factor``, ``mda_align``);
* ``iso_c``/``iso_cts``: the SVD of ``sum_t tau_t = [L_1..L_T][R_1;..;R_T]`` by the
  same factored route, restricted to its numerical rank ``R`` (at most ``sum_t r_t``):
  the flat spectrum is the mean of those R singular values, and Iso-CTS splits R
  (instead of ``min(m, n)``) into common and task-specific directions.

Other methods (average, task_arithmetic, ties, dare, ...) densify ``tau_t`` and use the
registered method unchanged. A task that does not adapt a weight has ``tau_t = 0`` there:
per-entry methods see that zero; SVD methods merge the tasks that adapt the weight.

Output: a full merged model (Hugging Face folder, base + merged delta) or a new adapter
whose factors are the merged delta's truncated SVD at a chosen rank -- computed from the
spanning factors when the method keeps them (SVD methods, average, task arithmetic),
otherwise from a top-k SVD of the dense merged delta.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from safetensors.torch import save_file

from ..config import ParameterResolver, parse_dtype
from ..engine.core import all_finite, resolve_device
from ..errors import CheckpointError, ConfigError, MergeError
from ..io.checkpoint import Checkpoint, TensorInfo
from ..io.modelcard import model_card
from ..io.writer import DEFAULT_SHARD_SIZE, OutputFolder, ShardedWriter, check_output_folder, copy_non_weight_files, parse_size
from ..methods import get_method
from ..methods.base import TensorJob
from ..methods.iso_cts import iso_cts_split
from ..methods.linalg import default_rank, polar_factor, rebuild, top_k_svd
from ..methods.mda import mda_align
from ..engine.prefixes import task_names
from ..io.classifiers import save_head_file, task_folders_card, write_task_folders
from .adapters import PEFT_PREFIX, TRANSPOSED_KINDS, LoraAdapter, check_same_base
from .heads import adapter_classifier, announce, split_head

LOW_RANK_METHODS = ("tsv", "mda", "iso_c", "iso_cts")
SPAN_PRESERVING = ("average", "task_arithmetic")  # merged delta stays in the span of the factors
OUTPUTS = ("model", "adapter")


# -- low-rank linear algebra --------------------------------------------------------
def factored_svd(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``(U, S, Vh)`` of ``left @ right`` without forming it (QR of the factors, SVD of the core)."""
    q_l, r_l = torch.linalg.qr(left)
    q_r, r_r = torch.linalg.qr(right.mT)
    u_c, s, vh_c = torch.linalg.svd(r_l @ r_r.mT, full_matrices=False)
    return q_l @ u_c, s, vh_c @ q_r.mT


def numerical_rank(s: torch.Tensor, shape: Sequence[int]) -> int:
    """Singular values above ``max(S) * max(m, n) * eps`` (LAPACK's rank rule)."""
    if s.numel() == 0:
        return 0
    tol = s.max() * max(shape) * torch.finfo(s.dtype).eps
    return int((s > tol).sum())


@dataclass
class MergedDelta:
    """A merged task vector; ``left``/``right`` (when known) span its columns and rows."""

    dense: torch.Tensor
    left: torch.Tensor | None = None
    right: torch.Tensor | None = None


def canonical_signs(u: torch.Tensor, vh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each singular pair so the largest-magnitude entry of its left vector is positive.

    SVD signs are arbitrary (they differ between a factored and a dense SVD, or between
    LAPACK builds); TSV and Iso are invariant to them, MDA's ETF step is not.
    """
    rows = u.abs().argmax(0)
    signs = torch.sign(u[rows, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1
    return u * signs, vh * signs[:, None]


def _task_subspace(lefts, rights, k, own_rank: bool = False):
    """Top-``k`` factored-SVD blocks of each task, side by side (``own_rank``: at most each task's rank)."""
    us, ss, vs, ks = [], [], [], []
    for left, right in zip(lefts, rights):
        u, s, vh = factored_svd(left, right)
        k_t = min(k, numerical_rank(s, (left.shape[0], right.shape[1]))) if own_rank else k
        u, vh = canonical_signs(u[:, :k_t], vh[:k_t])
        us.append(u)
        ss.append(s[:k_t])
        vs.append(vh.mT)
        ks.append(u.shape[1])
    return torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1), ks


def low_rank_merge(method: str, lefts: list[torch.Tensor], rights: list[torch.Tensor],
                   shape: tuple[int, int], params: dict[str, Any]) -> MergedDelta:
    """The merged delta of an SVD method from the task vectors' factors (weights already folded into ``lefts``)."""
    dtype = torch.float64 if params.get("svd_dtype", "float64") == "float64" else torch.float32
    lefts = [x.to(dtype) for x in lefts]
    rights = [x.to(dtype) for x in rights]
    num_tasks = len(lefts)
    scaling = params["scaling"]
    if method in ("tsv", "mda"):
        # each task keeps min(k, its own rank) triplets: adapters of rank 4 and 8 give 4 + 8 directions
        k = default_rank(shape, num_tasks, params["rank_fraction"])
        u, s, v, ks = _task_subspace(lefts, rights, k, own_rank=True)
        if u.shape[1] == 0:
            return MergedDelta(torch.zeros(shape, device=u.device), u, v)
        if method == "tsv":
            merged = rebuild(polar_factor(u), s, polar_factor(v))
        else:
            if params["etf_over"] == "tasks" and len(set(ks)) > 1:
                raise ConfigError(
                    "mda with etf_over='tasks' needs the same number of directions per adapter; these keep "
                    f"{ks} (their ranks differ): use etf_over='directions'"
                )
            merged = mda_align(u, s, v, num_tasks, ks[0], side=params["etf_side"],
                               etf_over=params["etf_over"], polar=params["polar"], spectrum=params["spectrum"])
        return MergedDelta(scaling * merged.float(), u, v)
    u, s, vh = factored_svd(torch.cat(lefts, 1), torch.cat(rights, 0))
    rank = numerical_rank(s, shape)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if method == "iso_c":
        return MergedDelta(scaling * (s.mean() * (u @ vh)).float(), u, vh.mT)
    if method == "iso_cts":
        k_c, per_task = iso_cts_split(rank, num_tasks, params["common_fraction"])
        u_c, s_c, v_c = u[:, :k_c], s[:k_c], vh[:k_c].mT
        projected = [left - u_c @ (u_c.mT @ left) for left in lefts]
        u_t, s_t, v_t, _ = _task_subspace(projected, rights, per_task)
        u_all = polar_factor(torch.cat([u_t, u_c], 1))
        v_all = polar_factor(torch.cat([v_t, v_c], 1))
        s_all = torch.cat([s_t, s_c])
        merged = rebuild(u_all, torch.full_like(s_all, s_all.mean()), v_all)
        return MergedDelta(scaling * merged.float(), u_all, v_all)
    raise ConfigError(f"method '{method}' has no low-rank LoRA implementation")  # pragma: no cover


def compact_factors(delta: MergedDelta, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(B, A, relative error)`` with ``B @ A`` the best rank-``rank`` approximation of ``delta.dense``.

    With spanning factors the SVD is that of a small core ``Q_L^T D Q_R``; otherwise a
    top-k SVD of the dense delta. ``B = U sqrt(S)``, ``A = sqrt(S) V^T``; columns beyond
    the delta's rank are zero.
    """
    dense = delta.dense.float()
    if delta.left is not None and delta.right is not None:
        q_l = torch.linalg.qr(delta.left.float()).Q
        q_r = torch.linalg.qr(delta.right.float()).Q
        u_c, s, vh_c = torch.linalg.svd(q_l.mT @ dense @ q_r, full_matrices=False)
        u, vh = q_l @ u_c, vh_c @ q_r.mT
    else:
        u, s, vh = top_k_svd(dense, rank)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    root = s.clamp_min(0).sqrt()
    b, a = u * root, root[:, None] * vh
    approx = b @ a
    norm = dense.norm()
    error = float((dense - approx).norm() / norm) if norm > 0 else 0.0
    pad = rank - b.shape[1]
    if pad > 0:
        b = torch.cat([b, b.new_zeros(b.shape[0], pad)], 1)
        a = torch.cat([a, a.new_zeros(pad, a.shape[1])], 0)
    return b, a, error


# -- the merge ----------------------------------------------------------------------
@dataclass
class LoraMergeResult:
    """What :func:`merge_lora` did."""

    out_dir: Path
    method: str
    output: str
    adapted: int  # weights changed by the adapters
    copied: int  # base weights passed through (model output)
    rank: int | None  # rank of the new adapter (adapter output)
    max_truncation_error: float  # worst ||D - D_rank|| / ||D|| over modules (adapter output)
    seconds: float
    errors: dict[str, float] = field(default_factory=dict)
    replaced: bool = False  # an existing out_dir was replaced (overwrite=True)
    heads: list[str] = field(default_factory=list)  # adapters whose head is in out_dir/heads/<name>.safetensors
    tasks: list[str] = field(default_factory=list)  # classifier folders written under out_dir/tasks/


class LoraMerger:
    """Merges LoRA adapters of one base, one adapted weight at a time."""

    def __init__(self, base: str | Path, adapters: Sequence[str | Path], method: str = "tsv", *,
                 weights: Sequence[float] | None = None, parameters: dict[str, Any] | None = None,
                 seed: int = 0, device: str | None = "cpu"):
        self.base_path = Path(base)
        self.base = Checkpoint(base)
        self.adapters = [LoraAdapter(p) for p in adapters]
        if len(self.adapters) < 2:
            raise MergeError(f"merging needs at least 2 LoRA adapters, got {len(self.adapters)}")
        check_same_base(self.adapters)  # the Python API as well as the CLI and replays
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(self.adapters)
        if len(self.weights) != len(self.adapters):
            raise MergeError(f"got {len(self.weights)} weights for {len(self.adapters)} adapters")
        self.method = get_method(method)
        self.resolver = ParameterResolver(self.method, parameters or {})
        self.seed = seed
        self.device = resolve_device(device)
        # classification adapters: backbone under 'bert.' etc. renamed to the base's names, heads kept apart
        self.tasks = task_names([a.label for a in self.adapters])
        self.heads = [split_head(a, set(self.base.keys())) for a in self.adapters]
        self._check_targets()
        touched = {t for a in self.adapters for t in (*a.modules, *a.full)}
        self.targets = [name for name in self.base.keys() if name in touched]
        self._state = None

    def _check_targets(self) -> None:
        names = set(self.base.keys())
        for adapter in self.adapters:
            for target in (*adapter.modules, *adapter.full):
                if target not in names:
                    raise CheckpointError(f"{adapter.label}: adapts '{target}', which the base model {self.base_path} does not have")
                info = self.base.info(target)
                if not info.dtype.is_floating_point:
                    raise CheckpointError(f"{adapter.label}: adapts '{target}', a {info.dtype} tensor of the base")
                shape = adapter.delta_shape(target) if target in adapter.modules else tuple(adapter.weights.info(adapter.full[target]).shape)
                if tuple(shape) != tuple(info.shape):
                    raise CheckpointError(f"{adapter.label}: '{target}' has shape {list(shape)} but the base's is {list(info.shape)}")
            both = set(adapter.modules) & set(adapter.full)
            if both:
                raise CheckpointError(f"{adapter.label}: '{sorted(both)[0]}' is both LoRA-adapted and saved in full")

    # -- task vectors --------------------------------------------------------------
    def _present(self, target: str) -> list[int]:
        return [t for t, a in enumerate(self.adapters) if a.touches(target)]

    def _dense_delta(self, t: int, target: str, base: torch.Tensor) -> torch.Tensor:
        adapter = self.adapters[t]
        if target in adapter.modules:
            left, right = adapter.factors(target, device=self.device)
            return left @ right
        if target in adapter.full:
            full = adapter.full_tensor(target).to(self.device, torch.float32)
            if not all_finite(full):
                raise CheckpointError(f"tensor '{target}' in {adapter.label} contains NaN or Inf values")
            return full - base
        return torch.zeros_like(base)

    def _dense_inputs(self, target: str, base: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
        """Task vectors for a dense method: every task (zero where it does not adapt), or only
        the adapting tasks for SVD methods (a zero matrix has no singular directions)."""
        tasks = self._present(target) if self.method.name in LOW_RANK_METHODS else range(len(self.adapters))
        return [self._dense_delta(t, target, base) for t in tasks], [self.weights[t] for t in tasks]

    def task_vector_stream(self):
        for target in self.targets:
            base = self.base.get(target).to(self.device, torch.float32)
            deltas, weights = self._dense_inputs(target, base)
            yield target, deltas, weights, self.resolver.resolve(target)

    def prepare(self) -> None:
        """The method's pre-pass over all task vectors (global TIES thresholds), if it has one."""
        if self.method.needs_prepass:
            self._state = self.method.prepare(self.task_vector_stream, self.resolver.resolve)

    # -- merging -------------------------------------------------------------------
    def merged_delta(self, target: str) -> MergedDelta:
        """The merged task vector of one adapted weight (float32, on the compute device)."""
        base = self.base.get(target).to(self.device, torch.float32)
        params = self.resolver.resolve(target)
        present = self._present(target)
        lora_tasks = [t for t in present if target in self.adapters[t].modules]
        if self.method.name in LOW_RANK_METHODS and base.ndim == 2 and lora_tasks == present:
            lefts, rights = [], []
            for t in present:
                left, right = self.adapters[t].factors(target, device=self.device)
                lefts.append(self.weights[t] * left)
                rights.append(right)
            delta = low_rank_merge(self.method.name, lefts, rights, tuple(base.shape), params)
        else:
            deltas, weights = self._dense_inputs(target, base)
            job = TensorJob(target, base, deltas, weights, params, self.seed, self._state)
            delta = MergedDelta(self.method.merge_tensor(job).float())
            if self.method.name in SPAN_PRESERVING and lora_tasks == present:
                factors = [self.adapters[t].factors(target, device=self.device) for t in present]
                delta.left = torch.cat([f[0] for f in factors], 1)
                delta.right = torch.cat([f[1] for f in factors], 0).mT
        if not all_finite(delta.dense):
            raise MergeError(f"method '{self.method.name}' produced non-finite values for '{target}' (check its parameters)")
        return delta

    # -- heads of classification adapters -------------------------------------------------
    def save_heads(self, folder: Path) -> list[str]:
        """Each adapter's head to ``folder/heads/<adapter>.safetensors``; the names written."""
        written = []
        for adapter, head, task in zip(self.adapters, self.heads, self.tasks):
            if head.keys:
                save_head_file(folder, task, head.read(adapter), {"source": adapter.label, "prefix": head.prefix})
                written.append(task)
        return written

    def classifiers(self) -> list:
        """A classifier folder per adapter with a head (base + merged delta, that adapter's head)."""
        found = (adapter_classifier(a, h, t, self.base.folder, self.base.keys())
                 for a, h, t in zip(self.adapters, self.heads, self.tasks) if h.keys)
        return [c for c in found if c is not None]

    def adapter_prefix(self) -> str:
        """The prefix a merged adapter's names get back (``bert.``), so that it applies to the
        classifier the adapters were trained on; one for all adapters."""
        prefixes = sorted({h.prefix for h in self.heads})
        if len(prefixes) > 1:
            raise MergeError(f"the adapters sit under different prefixes ({', '.join(repr(p) for p in prefixes)}); "
                             "they cannot be merged into one adapter (use --as model)")
        return prefixes[0]

    def explicit_config(self, output: str, rank: int | None, dtype: str | None) -> dict[str, Any]:
        return {
            # absolute paths: `mdamerge merge OUT/merge_config.yaml` replays it from any directory
            "method": self.method.name, "base_model": os.path.abspath(self.base_path),
            "models": [{"path": os.path.abspath(a.label), "weight": w} for a, w in zip(self.adapters, self.weights)],
            "parameters": self.resolver.explicit(), "dtype": dtype, "exclude": [], "seed": self.seed,
            "lora": {"output": output, "rank": rank},
        }


def _progress(items, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="tensor", disable=not enabled)


def merge_lora(
    base: str | Path,
    adapters: Sequence[str | Path],
    out_dir: str | Path,
    method: str = "tsv",
    *,
    output: str = "model",
    rank: int | None = None,
    weights: Sequence[float] | None = None,
    parameters: dict[str, Any] | None = None,
    dtype: str | None = None,
    device: str | None = "cpu",
    seed: int = 0,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> LoraMergeResult:
    """Merge PEFT LoRA adapters of ``base`` with ``method`` into ``out_dir``.

    ``output="model"`` writes the base with the merged delta added (a Hugging Face
    folder with the base's config and tokenizer files); ``output="adapter"`` writes a
    new PEFT adapter of rank ``rank`` (default: the largest input rank) whose product is
    the best rank-``rank`` approximation of the merged delta. Classification adapters
    (PEFT ``SEQ_CLS``; see :mod:`mdamerge.lora.heads`) keep their own heads, never merged:
    ``heads/<adapter>.safetensors``, and for a model output a loadable classifier per
    adapter in ``tasks/<adapter>/`` (:attr:`LoraMergeResult.tasks`). ``parameters`` are the
    method's (``mdamerge methods``), ``weights`` scale each adapter's task vector.
    ``out_dir`` must not overlap the base or an adapter (docs/safety.md); it appears only
    once complete.
    """
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    out_dtype = parse_dtype(dtype)
    check_output_folder(out_dir, [base, *adapters], overwrite)
    start = time.perf_counter()
    merger = LoraMerger(base, adapters, method, weights=weights, parameters=parameters, seed=seed, device=device)
    merger.prepare()
    if output == "adapter" and rank is None:
        rank = max((m.rank for a in merger.adapters for m in a.modules.values()), default=1)
    for adapter, head, task in zip(merger.adapters, merger.heads, merger.tasks):
        announce(adapter, head, task, output == "model")
    # planned before anything is written: a config or prefix problem fails fast
    classifiers = merger.classifiers() if output == "model" else []
    if output == "adapter":
        merger.adapter_prefix()
    folder = OutputFolder(out_dir, overwrite=overwrite)
    with folder as tmp:
        tasks: list[str] = []
        if output == "model":
            errors: dict[str, float] = {}
            _write_model(merger, tmp, out_dtype, parse_size(shard_size), progress)
            tasks = write_task_folders(tmp, classifiers, parse_size(shard_size))
        else:
            errors = _write_adapter(merger, tmp, rank, out_dtype or torch.float32, progress)
        heads = merger.save_heads(tmp)
        explicit = merger.explicit_config(output, rank if output == "adapter" else None, dtype)
        (tmp / "merge_config.yaml").write_text(yaml.safe_dump(explicit, sort_keys=False))
        stats = {"merged": len(merger.targets), "copied": len(merger.base.keys()) - len(merger.targets)}
        summary = f"LoRA adapters merged with {merger.method.summary}"
        card = model_card(explicit, summary, stats) + (task_folders_card(tasks, heads) if heads else "")
        (tmp / "README.md").write_text(card + (ATTACH_HEAD if heads and output == "adapter" else ""))
    return LoraMergeResult(
        Path(out_dir), merger.method.name, output, len(merger.targets),
        stats["copied"] if output == "model" else 0, rank if output == "adapter" else None,
        max(errors.values(), default=0.0), time.perf_counter() - start, errors, folder.replaced, heads, tasks,
    )


ATTACH_HEAD = """
The adapter holds no head (each task's head is its own, never merged). To use it for one task,
put that task's head on the classifier before loading the adapter:

```python
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

head = load_file("heads/<task>.safetensors")  # names as in the classifier: classifier.weight, ...
model = AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=NUM_LABELS)
model.load_state_dict(head, strict=False)
model = PeftModel.from_pretrained(model, ".")
```
"""


def _write_model(merger: LoraMerger, folder: Path, out_dtype, shard_size: int, progress: bool) -> None:
    names = merger.base.keys()
    targets = set(merger.targets)
    entries = []
    for name in names:
        info = merger.base.info(name)
        dtype = out_dtype if (out_dtype is not None and info.dtype.is_floating_point) else info.dtype
        entries.append((name, TensorInfo(info.shape, dtype)))
    writer = ShardedWriter(folder, entries, shard_size)
    try:
        for name, info in _progress(entries, progress, f"lora merge ({merger.method.name})"):
            if name in targets:
                base = merger.base.get(name).to(merger.device, torch.float32)
                tensor = (base + merger.merged_delta(name).dense).to(info.dtype).cpu()
            else:
                tensor = merger.base.get(name).to(info.dtype)
            writer.write(name, tensor)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    if merger.base_path.is_dir():
        copy_non_weight_files(merger.base_path, folder)


def _lora_keys(module: str, kind: str) -> tuple[str, str]:
    if kind == "embedding":
        return f"{PEFT_PREFIX}{module}.lora_embedding_A", f"{PEFT_PREFIX}{module}.lora_embedding_B"
    return f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"


def _adapter_config(merger: LoraMerger, rank: int, modules: list[str]) -> dict[str, Any]:
    configs = [a.config for a in merger.adapters]
    fan_in = {bool(c.get("fan_in_fan_out")) for c in configs}
    if len(fan_in) > 1:
        raise MergeError("the adapters disagree on fan_in_fan_out; they cannot be merged into one adapter")
    config = dict(configs[0])
    # heads stay out of the adapter (one per task, in heads/): PEFT must not expect them, neither
    # through modules_to_save nor through task_type SEQ_CLS, which adds classifier/score to it
    head_modules = {name.split(".", 1)[0] for head in merger.heads for name in head.keys}
    saved = sorted({m for c in configs for m in (c.get("modules_to_save") or [])} - head_modules)
    if head_modules:
        config["task_type"] = None
    bias = next((c.get("bias") for c in configs if c.get("bias", "none") != "none"), "none")
    config.update({
        "r": rank, "lora_alpha": rank, "use_rslora": False, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "target_modules": modules, "modules_to_save": saved or None, "bias": bias,
        "base_model_name_or_path": configs[0].get("base_model_name_or_path") or str(merger.base_path),
        "inference_mode": True,
    })
    return config


def _write_adapter(merger: LoraMerger, folder: Path, rank: int, dtype, progress: bool) -> dict[str, float]:
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    modules = []
    prefix = merger.adapter_prefix()  # names as the adapters had them (bert.encoder...) for their classifier
    for target in _progress(merger.targets, progress, f"lora merge ({merger.method.name})"):
        delta = merger.merged_delta(target)
        kinds = {a.modules[target].kind for a in merger.adapters if target in a.modules}
        if not kinds:  # a full backbone weight (modules_to_save, bias): saved merged, in full
            base = merger.base.get(target).to(merger.device, torch.float32)
            tensors[PEFT_PREFIX + prefix + target] = (base + delta.dense).to(dtype).cpu()
            continue
        if len(kinds) > 1:
            raise MergeError(f"the adapters adapt '{target}' in different ways ({', '.join(sorted(kinds))})")
        if any(target in a.full for a in merger.adapters):
            raise MergeError(f"'{target}' is LoRA-adapted in one adapter and saved in full in another")
        (kind,) = kinds
        module = prefix + target[: -len(".weight")]
        b, a, errors[target] = compact_factors(delta, rank)
        if kind in TRANSPOSED_KINDS:  # delta W = (B_peft A_peft)^T
            b, a = a.mT, b.mT
        a_key, b_key = _lora_keys(module, kind)
        tensors[a_key] = a.contiguous().to(dtype).cpu()
        tensors[b_key] = b.contiguous().to(dtype).cpu()
        modules.append(module)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = _adapter_config(merger, rank, sorted(modules))
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return errors
