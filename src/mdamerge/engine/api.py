"""Public entry points: :func:`merge` (files in, Hugging Face folder out) and
:func:`merge_state_dicts` (state dicts in, state dict out)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from ..config import MergeConfig, ParameterResolver, matches_any, parse_dtype
from ..io.modelcard import model_card
from ..io.writer import AtomicOutputDir, ShardedWriter, copy_non_weight_files
from ..methods import get_method
from .core import MergeEngine
from .sources import CheckpointSource, StateDictSource


@dataclass
class MergeResult:
    """What :func:`merge` did."""

    out_dir: Path | None
    method: str
    merged: int
    copied: int
    shards: list[str]
    seconds: float


def _as_config(config: MergeConfig | dict | str | Path) -> MergeConfig:
    if isinstance(config, MergeConfig):
        return config
    if isinstance(config, dict):
        return MergeConfig.from_dict(config)
    return MergeConfig.from_yaml(config)


def merge(
    config: MergeConfig | dict | str | Path,
    out_dir: str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor=None,
) -> MergeResult:
    """Merge the checkpoints a config names and write a Hugging Face folder to ``out_dir``.

    ``config`` is a :class:`MergeConfig`, a mapping of the YAML schema, or a YAML path.
    ``device``, ``dtype`` and ``workers`` override the config. The folder holds the
    (sharded) safetensors weights, the base's non-weight files, ``merge_config.yaml``
    and a ``README.md`` model card; it appears only once complete. ``executor``
    distributes the tensors (see :meth:`MergeEngine.run`), e.g. a
    :class:`~mdamerge.engine.distributed.RayExecutor`.
    """
    cfg = _as_config(config)
    if dtype is not None:
        cfg.dtype = dtype
    out_dtype = parse_dtype(cfg.dtype)
    start = time.perf_counter()
    base = CheckpointSource(cfg.base_model)
    models = [CheckpointSource(m.path) for m in cfg.models]
    engine = MergeEngine(
        base, models, cfg.method_impl, cfg.resolver.resolve,
        weights=[m.weight for m in cfg.models], excluded=cfg.excludes, out_dtype=out_dtype,
        vocab_mismatch=cfg.vocab_mismatch,
        seed=cfg.seed, device=device or cfg.device, workers=workers or cfg.workers, progress=progress,
    )
    with AtomicOutputDir(out_dir, overwrite=overwrite) as tmp:
        writer = ShardedWriter(tmp, engine.plan.entries(), cfg.shard_size)
        try:
            engine.run(writer.write, executor=executor)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        if Path(cfg.base_model).is_dir():
            copy_non_weight_files(Path(cfg.base_model), tmp)
        explicit = cfg.to_dict()
        (tmp / "merge_config.yaml").write_text(yaml.safe_dump(explicit, sort_keys=False))
        stats = {"merged": len(engine.plan.merged), "copied": len(engine.plan.copied)}
        (tmp / "README.md").write_text(model_card(explicit, cfg.method_impl.summary, stats))
    return MergeResult(Path(out_dir), cfg.method, stats["merged"], stats["copied"], writer.shard_files,
                       time.perf_counter() - start)


def merge_state_dicts(
    base: dict[str, torch.Tensor],
    finetuned: Sequence[dict[str, torch.Tensor]],
    method: str = "task_arithmetic",
    *,
    weights: Sequence[float] | None = None,
    exclude: Sequence[str] = (),
    seed: int = 0,
    device: str | None = "cpu",
    dtype: str | None = None,
    vocab_mismatch: str = "error",
    parameters: dict[str, Any] | None = None,
    progress: bool = False,
    **params: Any,
) -> dict[str, torch.Tensor]:
    """Merge in-memory state dicts and return the merged state dict (CPU tensors).

    ``params`` (or ``parameters``, which also accepts per-tensor ``{filter, value}``
    lists) are the method's parameters, e.g. ``merge_state_dicts(b, fts, "ties", density=0.1)``.
    """
    impl = get_method(method)
    resolver = ParameterResolver(impl, {**(parameters or {}), **params})
    engine = MergeEngine(
        StateDictSource(base, "base"),
        [StateDictSource(sd, f"model {i}") for i, sd in enumerate(finetuned)],
        impl, resolver.resolve, weights=weights, excluded=lambda name: matches_any(name, exclude),
        out_dtype=parse_dtype(dtype), seed=seed, device=device, progress=progress, vocab_mismatch=vocab_mismatch,
    )
    out: dict[str, torch.Tensor] = {}
    engine.run(out.__setitem__)
    return out
