"""Public entry points: :func:`merge` (files in, Hugging Face folder out) and
:func:`merge_state_dicts` (state dicts in, state dict out)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from ..config import MergeConfig, ParameterResolver, check_patterns, matches_any, parse_dtype
from ..io.classifiers import task_folders_card, write_task_folders
from ..io.modelcard import model_card
from ..errors import MergeError, warn
from ..io.writer import AtomicOutputDir, ShardedWriter, check_output_location, copy_planned_files, plan_non_weight_files, writing
from ..methods import get_method
from .core import MergeEngine, resolve_device
from .prefixes import align_prefixes
from .prefixes import announce as announce_prefixes
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
    replaced: bool = False  # an existing out_dir was replaced (overwrite=True)
    tasks: list[str] = field(default_factory=list)  # classifier folders written under out_dir/tasks/


def _as_config(config: MergeConfig | dict | str | Path) -> MergeConfig:
    if isinstance(config, MergeConfig):
        return config
    if isinstance(config, dict):
        return MergeConfig.from_dict(config)
    return MergeConfig.from_yaml(config)


def same_folder(a: str | Path, b: str | Path) -> bool:
    """Two paths naming the same checkpoint (after resolving links and relative parts)."""
    return Path(a).resolve() == Path(b).resolve()


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
    and a ``README.md`` model card; it appears only once complete. Classification fine-tunes
    (backbone under a prefix, see :mod:`mdamerge.engine.prefixes`) add ``heads/<task>.safetensors``
    and a loadable classifier folder ``tasks/<task>/`` each (:attr:`MergeResult.tasks`). ``executor``
    distributes the tensors (see :meth:`MergeEngine.run`), e.g. a
    :class:`~mdamerge.engine.distributed.RayExecutor`.

    Everything that can be checked is checked before anything is written: the options,
    that ``out_dir`` is not, does not contain and does not lie inside an input, and that
    every file read resolves inside its model folder (see docs/safety.md). Write failures
    (disk full, read-only) are a :class:`~mdamerge.errors.OutputError` and leave nothing.
    """
    cfg = _as_config(config)
    if dtype is not None:
        cfg.dtype = dtype
    out_dtype = parse_dtype(cfg.dtype)
    workers = cfg.workers if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MergeError(f"workers must be a positive integer, got {workers!r}")
    compute_device = resolve_device(device or cfg.device)
    inputs = [cfg.base_model, *(m.path for m in cfg.models)]
    check_output_location(out_dir, inputs + ([config] if isinstance(config, (str, Path)) else []))
    start = time.perf_counter()
    base = CheckpointSource(cfg.base_model)
    # mergekit's linear lists no base, so its first model serves as one: one source, read once per tensor
    models = [base if same_folder(m.path, cfg.base_model) else CheckpointSource(m.path) for m in cfg.models]
    check_output_location(out_dir, [file for source in (base, *models) for file in source.checkpoint.files])
    prefixes = align_prefixes(base, models, cfg.prefix)  # classification checkpoints: backbone under 'bert.' etc.
    announce_prefixes(prefixes)
    models = prefixes.models
    engine = MergeEngine(
        base, models, cfg.method_impl, cfg.resolver.resolve,
        weights=[m.weight for m in cfg.models], excluded=cfg.excludes, out_dtype=out_dtype,
        vocab_mismatch=cfg.vocab_mismatch,
        seed=cfg.seed, device=compute_device, workers=workers, progress=progress,
    )
    effective_exclude = warn_unmatched_patterns(cfg.exclude, cfg.resolver.filters(), engine.plan.names)
    extra_files = plan_non_weight_files(Path(cfg.base_model)) if Path(cfg.base_model).is_dir() else []
    classifiers = prefixes.classifiers(base.checkpoint.folder)  # configs read before anything is written
    output = AtomicOutputDir(out_dir, overwrite=overwrite)
    with output as tmp:
        with writing(out_dir):
            writer = ShardedWriter(tmp, engine.plan.entries(), cfg.shard_size)

        def write_tensor(name: str, tensor: torch.Tensor) -> None:
            with writing(out_dir):
                writer.write(name, tensor)

        try:
            engine.run(write_tensor, executor=executor)
        except BaseException:
            writer.abort()
            raise
        stats = {"merged": len(engine.plan.merged), "copied": len(engine.plan.copied), "exclude": effective_exclude}
        with writing(out_dir):
            writer.close()
            heads = [path.stem for path in prefixes.save_heads(tmp)]
            # classification fine-tunes: a loadable classifier per task, its backbone read back from tmp
            tasks = write_task_folders(tmp, classifiers, cfg.shard_size)
            copy_planned_files(extra_files, tmp, out_dir)
            explicit = cfg.to_dict()
            (tmp / "merge_config.yaml").write_text(yaml.safe_dump(explicit, sort_keys=False))
            card = model_card(explicit, cfg.method_impl.summary, stats)
            (tmp / "README.md").write_text(card + (task_folders_card(tasks, heads) if heads else ""))
    return MergeResult(Path(out_dir), cfg.method, stats["merged"], stats["copied"], writer.shard_files,
                       time.perf_counter() - start, replaced=output.replaced, tasks=tasks)


def warn_unmatched_patterns(exclude: Sequence[str], filters: Sequence[tuple[str, str]], names: Sequence[str]) -> list[str]:
    """Warn (one line each) about ``exclude`` patterns and parameter ``(name, filter)``s that
    match no tensor -- usually a typo -- and return the ``exclude`` patterns that do match."""
    effective = []
    for pattern in exclude:
        if any(matches_any(name, [pattern]) for name in names):
            effective.append(pattern)
        else:
            warn(f"exclude pattern '{pattern}' matches no tensor of the base model")
    for param, pattern in filters:
        if not any(matches_any(name, [pattern]) for name in names):
            warn(f"filter '{pattern}' of parameter '{param}' matches no tensor of the base model")
    return effective


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
    exclude = check_patterns([exclude] if isinstance(exclude, str) else list(exclude))
    impl = get_method(method)
    resolver = ParameterResolver(impl, {**(parameters or {}), **params})
    engine = MergeEngine(
        StateDictSource(base, "base"),
        [StateDictSource(sd, f"model {i}") for i, sd in enumerate(finetuned)],
        impl, resolver.resolve, weights=weights, excluded=lambda name: matches_any(name, exclude),
        out_dtype=parse_dtype(dtype), seed=seed, device=device, progress=progress, vocab_mismatch=vocab_mismatch,
    )
    warn_unmatched_patterns(exclude, resolver.filters(), engine.plan.names)
    out: dict[str, torch.Tensor] = {}
    engine.run(out.__setitem__)
    return out
