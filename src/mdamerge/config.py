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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .errors import ConfigError, closest_hint, short_repr
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
            raise ConfigError(f"seed must be an integer, got {short_repr(self.seed)}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {short_repr(self.workers)}")
        check_device_name(self.device)
        check_patterns(self.exclude)
        check_weights(self.method, [m.weight for m in self.models])
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
        check_value_types(data)
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
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    check_expanded_size(data, str(path))
    return data


MAX_CONFIG_VALUES = 100_000


def check_expanded_size(data: Any, where: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse YAML whose aliases expand to more than ``limit`` values, or refer to themselves.

    ``yaml.safe_load`` shares aliased nodes, so a "billion laughs" document loads in
    microseconds -- but anything that walks it (``str()``, a repr in an error message,
    pattern matching) expands it exponentially. Sizes are counted with shared nodes
    memoised, so this check itself stays linear in the document.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (list, dict)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"config {where} contains a YAML alias that refers to itself")
        open_nodes.add(key)
        total = 1
        for child in value.values() if isinstance(value, dict) else value:
            total += size(child)
            if total > limit:
                raise ConfigError(f"config {where} expands to more than {limit} values (YAML aliases?)")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise ConfigError(f"config {where} is nested too deeply") from None


STRING_KEYS = ("method", "base_model", "device", "vocab_mismatch", "dtype")


def check_value_types(data: dict[str, Any]) -> None:
    """Names, paths and patterns must be strings: ``str()`` of a list would silently become a
    pattern such as "['head', 'emb']" that matches nothing (or, for a YAML alias bomb, hang)."""
    for key in STRING_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {type(value).__name__} {short_repr(value)}")
    exclude = data.get("exclude")
    if exclude is not None and not isinstance(exclude, (str, list)):
        raise ConfigError(f"'exclude' must be a pattern or a list of patterns, got {type(exclude).__name__}")
    check_patterns(exclude if isinstance(exclude, list) else [])
    for i, entry in enumerate(data["models"] if isinstance(data.get("models"), list) else []):
        if isinstance(entry, dict) and "path" in entry and not isinstance(entry["path"], str):
            raise ConfigError(f"models[{i}].path must be a string, got {type(entry['path']).__name__} {short_repr(entry['path'])}")


def check_patterns(patterns: list[Any]) -> list[str]:
    """``exclude`` patterns must be non-empty strings (an empty one would match every tensor)."""
    for i, pattern in enumerate(patterns):
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"exclude[{i}] must be a non-empty string pattern, got {type(pattern).__name__} {short_repr(pattern)}")
    return patterns


def check_device_name(device: Any) -> None:
    """A device string torch can parse (whether it is present is checked when merging)."""
    if not isinstance(device, str):
        raise ConfigError(f"device must be a string such as cpu, cuda or cuda:1, got {short_repr(device)}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device '{device}': expected cpu, cuda, cuda:N, mps or xpu") from None


def check_weights(method: str, weights: list[float]) -> None:
    """Model weights must be finite; a weighted mean needs a non-zero total."""
    for i, weight in enumerate(weights):
        if not math.isfinite(weight):
            raise ConfigError(f"models[{i}].weight must be a finite number, got {weight}")
    if method == "average" and sum(weights) == 0:
        raise ConfigError("the model weights sum to 0, so their weighted mean ('average') is undefined")


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
        raise ConfigError(f"models[{index}].weight must be a number, got {short_repr(weight)}")
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
            if item.get("filter") is not None and not isinstance(item["filter"], str):
                raise ConfigError(f"parameter '{param.name}'[{i}].filter must be a string pattern, got "
                                  f"{type(item['filter']).__name__} {short_repr(item['filter'])}")
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

    def filters(self) -> list[tuple[str, str]]:
        """``(parameter, filter pattern)`` for every filtered rule."""
        return [(name, pattern) for name, rules in self._rules.items() for pattern, _ in rules if pattern is not None]

    def explicit(self) -> dict[str, Any]:
        """Every parameter, with the user's rules where given and the defaults otherwise."""
        out: dict[str, Any] = self.method.defaults()
        for name, rules in self._rules.items():
            if len(rules) == 1 and rules[0][0] is None:
                out[name] = rules[0][1]
            else:
                out[name] = [{"filter": f, "value": v} if f is not None else {"value": v} for f, v in rules]
        return out
