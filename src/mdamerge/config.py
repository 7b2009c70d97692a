"""Merge configuration: the YAML schema, its validation, and per-tensor parameter resolution.

```yaml
method: mda                       # any name from `mdamerge methods`
base_model: path/to/pretrained    # folder or weights file
models:                           # >= 2 fine-tuned models of the same architecture
  - path: path/to/task_a
    weight: 1.0                   # optional, scales tau_t (average: weighted mean)
  - path/to/task_b                # a bare path means weight 1.0
parameters:                       # method parameters; defaults from `mdamerge methods`
  scaling: 1.0
  rank_fraction:                  # per-tensor overrides: first matching filter wins
    - {filter: "attn", value: 0.1}
    - {value: 0.05}               # no filter: every other tensor
dtype: bfloat16                   # optional output dtype (default: the base's, per tensor)
exclude: ["*.bias", "head"]       # tensors kept at the base (glob or substring)
seed: 0
shard_size: 2GB
vocab_mismatch: error             # or 'shared': merge the rows all vocabularies share, keep the base's others
```

Relative paths are resolved against the current directory first, then against the
folder that holds the config file.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import ConfigError, closest_hint
from .io.writer import DEFAULT_SHARD_SIZE, parse_size
from .methods import get_method
from .methods.base import MergeMethod

TOP_LEVEL_KEYS = (
    "method", "base_model", "models", "parameters", "dtype", "exclude", "seed", "shard_size", "device", "workers",
    "vocab_mismatch",
)
MODEL_KEYS = ("path", "weight")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``'bfloat16'`` (or an alias such as ``bf16``) to a torch dtype; ``None`` stays ``None``."""
    if name is None:
        return None
    key = DTYPE_ALIASES.get(str(name), str(name))
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'" + closest_hint(str(name), [*DTYPES, *DTYPE_ALIASES]) + f"; choose from {', '.join(DTYPES)}")
    return DTYPES[key]


@dataclass
class ModelSpec:
    """One fine-tuned model: its path and weight."""

    path: str
    weight: float = 1.0


@dataclass
class MergeConfig:
    """A validated merge configuration (see the module docstring for the YAML form)."""

    method: str
    base_model: str
    models: list[ModelSpec]
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int = 0
    shard_size: int = DEFAULT_SHARD_SIZE
    device: str = "cpu"
    workers: int = 1
    vocab_mismatch: str = "error"

    def __post_init__(self) -> None:
        self.method_impl = get_method(self.method)
        self.resolver = ParameterResolver(self.method_impl, self.parameters)
        parse_dtype(self.dtype)
        if len(self.models) < 2:
            raise ConfigError(f"merging needs at least 2 fine-tuned models, got {len(self.models)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}")
        self.shard_size = parse_size(self.shard_size)
        if self.vocab_mismatch not in ("error", "shared"):
            raise ConfigError(f"vocab_mismatch must be 'error' or 'shared', got {self.vocab_mismatch!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path | None = None) -> "MergeConfig":
        """Validate a parsed YAML mapping; ``root`` is the config file's folder for relative paths."""
        if not isinstance(data, dict):
            raise ConfigError(f"a merge config must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                raise ConfigError(f"unknown config key '{key}'" + closest_hint(str(key), TOP_LEVEL_KEYS))
        for key in ("method", "base_model", "models"):
            if key not in data:
                raise ConfigError(f"config is missing '{key}'")
        if not isinstance(data["models"], list):
            raise ConfigError("'models' must be a list of paths or {path, weight} mappings")
        models = [_model_spec(entry, i, root) for i, entry in enumerate(data["models"])]
        exclude = data.get("exclude") or []
        if isinstance(exclude, str):
            exclude = [exclude]
        return cls(
            method=str(data["method"]),
            base_model=_resolve_path(str(data["base_model"]), root),
            models=models,
            parameters=dict(data.get("parameters") or {}),
            dtype=data.get("dtype"),
            exclude=[str(p) for p in exclude],
            seed=data.get("seed", 0),
            shard_size=data.get("shard_size", DEFAULT_SHARD_SIZE),
            device=str(data.get("device", "cpu")),
            workers=data.get("workers", 1),
            vocab_mismatch=str(data.get("vocab_mismatch", "error")),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MergeConfig":
        """Load and validate a YAML config file (``yaml.safe_load``)."""
        path = Path(path)
        return cls.from_dict(read_yaml_file(path), root=path.parent)

    def to_dict(self) -> dict[str, Any]:
        """The config with every method parameter made explicit (defaults filled in)."""
        return {
            "method": self.method,
            "base_model": self.base_model,
            "models": [{"path": m.path, "weight": m.weight} for m in self.models],
            "parameters": self.resolver.explicit(),
            "dtype": self.dtype,
            "exclude": list(self.exclude),
            "seed": self.seed,
            "shard_size": self.shard_size,
            "vocab_mismatch": self.vocab_mismatch,
        }

    def excludes(self, name: str) -> bool:
        """True if tensor ``name`` matches an ``exclude`` pattern."""
        return matches_any(name, self.exclude)


def matches_any(name: str, patterns) -> bool:
    """True if ``name`` matches one of ``patterns`` as a glob or contains it as a substring."""
    return any(fnmatch.fnmatchcase(name, p) or p in name for p in patterns)


def read_yaml_file(path: str | Path) -> Any:
    """``yaml.safe_load`` of a config file, with one-line errors for a missing file or bad YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {str(exc).splitlines()[0]}") from None


def _resolve_path(value: str, root: Path | None) -> str:
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or root is None:
        return str(path)
    candidate = root / path
    return str(candidate if candidate.exists() else path)


def _model_spec(entry: Any, index: int, root: Path | None) -> ModelSpec:
    if isinstance(entry, (str, Path)):
        return ModelSpec(_resolve_path(str(entry), root))
    if not isinstance(entry, dict) or "path" not in entry:
        raise ConfigError(f"models[{index}] must be a path or a mapping with 'path'")
    for key in entry:
        if key not in MODEL_KEYS:
            raise ConfigError(f"unknown key '{key}' in models[{index}]" + closest_hint(str(key), MODEL_KEYS))
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"models[{index}].weight must be a number, got {weight!r}")
    return ModelSpec(_resolve_path(str(entry["path"]), root), float(weight))


class ParameterResolver:
    """Resolves a method's parameters for each tensor name, with defaults and filtered overrides."""

    def __init__(self, method: MergeMethod, parameters: dict[str, Any]):
        self.method = method
        self._rules: dict[str, list[tuple[str | None, Any]]] = {}
        for name, value in (parameters or {}).items():
            param = method.param(str(name))
            self._rules[name] = self._parse_rules(param, value)
        self._cache: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _parse_rules(param, value) -> list[tuple[str | None, Any]]:
        if not isinstance(value, list):
            return [(None, param.coerce(value, ""))]
        rules = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "value" not in item or set(item) - {"filter", "value"}:
                raise ConfigError(f"parameter '{param.name}'[{i}] must be a mapping {{filter: ..., value: ...}}")
            where = f" (filter {item.get('filter')!r})"
            rules.append((item.get("filter"), param.coerce(item["value"], where)))
        return rules

    def resolve(self, tensor_name: str) -> dict[str, Any]:
        """Parameters for ``tensor_name``: first matching filter, else the unfiltered value, else the default."""
        if tensor_name not in self._cache:
            resolved = self.method.defaults()
            for name, rules in self._rules.items():
                for pattern, value in rules:
                    if pattern is None or matches_any(tensor_name, [pattern]):
                        resolved[name] = value
                        break
            self._cache[tensor_name] = resolved
        return self._cache[tensor_name]

    def explicit(self) -> dict[str, Any]:
        """Every parameter, with the user's rules where given and the defaults otherwise."""
        out: dict[str, Any] = self.method.defaults()
        for name, rules in self._rules.items():
            if len(rules) == 1 and rules[0][0] is None:
                out[name] = rules[0][1]
            else:
                out[name] = [{"filter": f, "value": v} if f is not None else {"value": v} for f, v in rules]
        return out
