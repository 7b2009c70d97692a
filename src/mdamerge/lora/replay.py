"""Replaying a LoRA merge from the ``merge_config.yaml`` that ``mdamerge lora`` writes.

That file has the merge config's keys plus a ``lora: {output, rank}`` block, so
``mdamerge merge OUT/merge_config.yaml --out DIR`` recognises it and runs the LoRA merge
again instead of rejecting the ``lora`` key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import _resolve_path, check_seed, check_value_types, finite_number
from ..errors import ConfigError, closest_hint

LORA_KEYS = ("method", "base_model", "models", "parameters", "dtype", "exclude", "seed", "lora")


def is_lora_config(data: Any) -> bool:
    """True for a mapping written by ``mdamerge lora`` (it has a ``lora`` block)."""
    return isinstance(data, dict) and "lora" in data


def _resolve(value: str, root: Path) -> str:
    return _resolve_path(str(value), root)


def lora_arguments(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """Keyword arguments of :func:`mdamerge.lora.merge.merge_lora` from a LoRA ``merge_config.yaml``."""
    unknown = [k for k in data if k not in LORA_KEYS]
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in a LoRA merge config" + closest_hint(str(unknown[0]), LORA_KEYS))
    for key in ("method", "base_model", "models"):
        if key not in data:
            raise ConfigError(f"LoRA merge config is missing '{key}'")
    check_value_types(data)
    if data.get("exclude"):
        raise ConfigError("'exclude' is not supported for LoRA merges (adapters only touch their target modules)")
    lora = data["lora"] or {}
    if not isinstance(lora, dict) or set(lora) - {"output", "rank"}:
        raise ConfigError("'lora' must be a mapping {output: model|adapter, rank: N or null}")
    models = data["models"]
    if not isinstance(models, list):
        raise ConfigError("'models' must be a list of adapter folders or {path, weight} mappings")
    paths, weights = [], []
    for i, entry in enumerate(models):
        if isinstance(entry, dict):
            if "path" not in entry:
                raise ConfigError(f"models[{i}] must be a path or a mapping with 'path'")
            paths.append(_resolve(entry["path"], root))
            weights.append(finite_number(entry.get("weight", 1.0), f"models[{i}].weight"))
        else:
            paths.append(_resolve(entry, root))
            weights.append(1.0)
    return {
        "base": _resolve(data["base_model"], root), "adapters": paths, "method": str(data["method"]),
        "output": lora.get("output", "model"), "rank": lora.get("rank"), "weights": weights,
        "parameters": dict(data.get("parameters") or {}), "dtype": data.get("dtype"),
        "seed": check_seed(data.get("seed", 0)),
    }


def replay_lora_config(config_path: str | Path, out_dir: str | Path, *, device: str | None = None,
                       dtype: str | None = None, overwrite: bool = False, progress: bool = True):
    """Run the LoRA merge a ``merge_config.yaml`` written by ``mdamerge lora`` describes."""
    from ..io.writer import check_output_location
    from ..yamlio import read_yaml_file
    from .merge import merge_lora

    path = Path(config_path)
    check_output_location(out_dir, [path])
    kwargs = lora_arguments(read_yaml_file(path), path.parent)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return merge_lora(out_dir=out_dir, device=device or "cpu", overwrite=overwrite, progress=progress, **kwargs)
