"""Merge configuration: the YAML schema, its validation, and per-tensor parameter resolution.

```yaml
method: mda                       # any name from `mdamerge methods`
base_model: path/to/pretrained    # folder or weights file
models:                           # >= 2 fine-tuned models of the same architecture
  - path: path/to/task_a
    weight: 1.0                   # optional, scales tau_t (average: weighted mean)
  - path/to/task_b                # a bare path means weight 1.0
  - path: path/to/task_c
    parameters: {density: 0.5}    # per-model values of the method's per-model parameters
                                  # (ties: density, dare: drop_rate, gta: weight/density/gamma)
parameters:                       # method parameters; defaults from `mdamerge methods`
  scaling: 1.0
  rank_fraction:                  # per-tensor overrides: first matching filter wins
    - {filter: "attn", value: 0.1}
    - {value: 0.05}               # no filter: every other tensor
  # a list of numbers is a gradient: interpolated over the layer stack (layers.N.), as in mergekit
dtype: bfloat16                   # optional output dtype (default: the base's, per tensor)
exclude: ["*.bias", "head"]       # tensors kept at the base (glob or substring)
seed: 0
shard_size: 2GB
vocab_mismatch: error             # or 'shared': merge the rows all vocabularies share, keep the base's others
prefix: auto                      # fine-tunes saved under 'bert.', 'model.', ...: strip it, save heads to OUT/heads/
```

A mapping with ``merge_method`` is a mergekit config: see :mod:`mdamerge.compat.mergekit`.

Relative paths are resolved against the folder that holds the config file first, then
against the current directory; they are saved absolute in the output's ``merge_config.yaml``.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, closest_hint, short_repr
from .methods.registry import method_spec
from .methods.specs import MethodSpec
from .yamlio import DEFAULT_SHARD_SIZE, parse_size
from .yamlio import MAX_CONFIG_VALUES, check_expanded_size, read_yaml_file  # noqa: F401  (re-exported: torch-free home)

if TYPE_CHECKING:
    import torch

TOP_LEVEL_KEYS = (
    "method", "base_model", "models", "parameters", "dtype", "exclude", "seed", "shard_size", "device", "workers",
    "vocab_mismatch", "prefix",
)
MODEL_KEYS = ("path", "weight", "parameters")
DTYPES = ("float32", "float16", "bfloat16", "float64")  # names of torch dtypes (torch is imported only to use one)
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}


def parse_dtype(name: str | None) -> "torch.dtype | None":
    """``'bfloat16'`` (or an alias such as ``bf16``) to a torch dtype; ``None`` stays ``None``."""
    if name is None:
        return None
    key = DTYPE_ALIASES.get(str(name), str(name))
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype '{name}'" + closest_hint(str(name), [*DTYPES, *DTYPE_ALIASES]) + f"; choose from {', '.join(DTYPES)}")
    import torch

    return getattr(torch, key)


@dataclass
class ModelSpec:
    """One fine-tuned model: its path, weight and (for methods with per-model parameters) its own values."""

    path: str
    weight: float = 1.0
    parameters: dict[str, Any] = field(default_factory=dict)


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
    prefix: str = "auto"  # fine-tunes saved under a prefix (bert., model., ...): see engine/prefixes.py

    def __post_init__(self) -> None:
        # validated against the torch-free spec, so a typo fails before torch loads
        self.resolver = ParameterResolver(method_spec(self.method), self.parameters, [m.parameters for m in self.models],
                                          tensor_names=self._base_tensor_names)
        parse_dtype(self.dtype)
        if len(self.models) < 2:
            raise ConfigError(f"merging needs at least 2 fine-tuned models, got {len(self.models)}")
        check_seed(self.seed)
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {short_repr(self.workers)}")
        check_device_name(self.device)
        check_patterns(self.exclude)
        check_weights(self.method, [m.weight for m in self.models])
        self.shard_size = parse_size(self.shard_size)
        if self.vocab_mismatch not in ("error", "shared"):
            raise ConfigError(f"vocab_mismatch must be 'error' or 'shared', got {self.vocab_mismatch!r}")
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ConfigError(f"prefix must be 'auto', 'none' or a key prefix such as 'bert.', got {self.prefix!r}")

    @property
    def method_impl(self):
        """The method's implementation (imports torch)."""
        from .methods import get_method

        return get_method(self.method)

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path | None = None) -> "MergeConfig":
        """Validate a parsed YAML mapping; ``root`` is the config file's folder for relative paths."""
        if not isinstance(data, dict):
            raise ConfigError(f"a merge config must be a mapping, got {type(data).__name__}")
        if "merge_method" in data:  # a mergekit config: read with mergekit's semantics
            from .compat.mergekit import from_mergekit

            data = from_mergekit(data, root)
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
            prefix=data.get("prefix", "auto"),
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
            "models": [{"path": m.path, "weight": m.weight, **({"parameters": self.resolver.explicit_for_model(i)}
                                                              if m.parameters else {})}
                       for i, m in enumerate(self.models)],
            "parameters": self.resolver.explicit(),
            "dtype": self.dtype,
            "exclude": list(self.exclude),
            "seed": self.seed,
            "shard_size": self.shard_size,
            "vocab_mismatch": self.vocab_mismatch,
            "prefix": self.prefix,
        }

    def _base_tensor_names(self) -> list[str]:
        """Tensor names of the base (read from its header only when a gradient needs layer positions)."""
        from .io.checkpoint import Checkpoint

        return Checkpoint(self.base_model).keys()

    def excludes(self, name: str) -> bool:
        """True if tensor ``name`` matches an ``exclude`` pattern."""
        return matches_any(name, self.exclude)


def matches_any(name: str, patterns) -> bool:
    """True if ``name`` matches one of ``patterns`` as a glob or contains it as a substring."""
    return any(fnmatch.fnmatchcase(name, p) or p in name for p in patterns)


STRING_KEYS = ("method", "base_model", "device", "vocab_mismatch", "dtype")


def check_value_types(data: dict[str, Any]) -> None:
    """Names, paths and patterns must be strings: ``str()`` of a list would silently become a
    pattern such as "['head', 'emb']" that matches nothing (or, for a YAML alias bomb, hang)."""
    for key in STRING_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {type(value).__name__} {short_repr(value)}")
    parameters = data.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise ConfigError(f"'parameters' must be a mapping of method parameters (name: value), got "
                          f"{type(parameters).__name__} {short_repr(parameters)}")
    exclude = data.get("exclude")
    if exclude is not None and not isinstance(exclude, (str, list)):
        raise ConfigError(f"'exclude' must be a pattern or a list of patterns, got {type(exclude).__name__}")
    check_patterns(exclude if isinstance(exclude, list) else [])
    for i, entry in enumerate(data["models"] if isinstance(data.get("models"), list) else []):
        if isinstance(entry, dict) and "path" in entry and not isinstance(entry["path"], str):
            raise ConfigError(f"models[{i}].path must be a string, got {type(entry['path']).__name__} {short_repr(entry['path'])}")


def check_seed(seed: Any) -> int:
    """A seed must be an integer (``seed: banana`` is a typo, not a seed)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {short_repr(seed)}")
    return seed


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
    if re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", device):
        return  # the common names, checked without importing torch
    import torch

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
    """A relative path names a file next to the config (``root``), else one in the current
    directory; a path that exists is returned absolute, so a saved ``merge_config.yaml`` replays
    from anywhere. Anything else (a typo, a hub id) is kept as written for the loader to report."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    for candidate in ([root / path] if root is not None else []) + [path]:
        if candidate.exists():
            return os.path.abspath(candidate)
    return str(path)


def _model_spec(entry: Any, index: int, root: Path | None) -> ModelSpec:
    if isinstance(entry, (str, Path)):
        return ModelSpec(_resolve_path(str(entry), root))
    if not isinstance(entry, dict) or "path" not in entry:
        raise ConfigError(f"models[{index}] must be a path or a mapping with 'path'")
    for key in entry:
        if key not in MODEL_KEYS:
            raise ConfigError(f"unknown key '{key}' in models[{index}]" + closest_hint(str(key), MODEL_KEYS))
    weight = finite_number(entry.get("weight", 1.0), f"models[{index}].weight")
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"models[{index}].parameters must be a mapping, got {short_repr(params)}")
    return ModelSpec(_resolve_path(str(entry["path"]), root), weight, dict(params))


def finite_number(value: Any, what: str) -> float:
    """``value`` as a finite float, or a one-line error naming ``what`` (a string, NaN, a 400-digit integer)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {short_repr(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(f"{what} must be a finite number, got an integer of {value.bit_length()} bits") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, got {value}")
    return number


LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_positions(names) -> dict[str, float]:
    """mergekit's ``t`` of each tensor: ``i / (L - 1)`` for a tensor of layer ``i`` of ``L`` (1 when
    ``L == 1``), 0 for tensors outside the layer stack (embeddings, final norm, heads)."""
    found = {}
    counts: dict[str, int] = {}
    for name in names:
        match = LAYER_INDEX.search(name)
        if match:
            prefix, index = name[:match.start()], int(match.group(1))
            found[name] = (prefix, index)
            counts[prefix] = max(counts.get(prefix, 0), index + 1)
    out = {}
    for name in names:
        if name in found:
            prefix, index = found[name]
            out[name] = index / (counts[prefix] - 1) if counts[prefix] > 1 else 1.0
        else:
            out[name] = 0.0
    return out


@dataclass(frozen=True)
class Gradient:
    """A list of numbers interpolated over the layer stack (mergekit's gradients)."""

    values: tuple[float, ...]

    def at(self, t: float) -> float:
        scaled = t * (len(self.values) - 1)
        i0 = int(scaled)
        i1 = min(len(self.values) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * self.values[i0] + frac * self.values[i1]


_UNSET = object()


class ParameterResolver:
    """Resolves a method's parameters for each tensor name: per-model values (for the method's
    ``per_model`` parameters), then the top-level value, then the default; in each, the first
    matching ``{filter, value}`` rule wins, and a list of numbers is a gradient over the layers."""

    def __init__(self, method: MethodSpec, parameters: dict[str, Any], model_parameters=None, tensor_names=None):
        self.method = method
        self.per_model = tuple(getattr(method, "per_model", ()))
        self._rules: dict[str, list[tuple[str | None, Any]]] = {}
        for name, value in (parameters or {}).items():
            param = method.param(str(name))
            self._rules[name] = self._parse_rules(param, value)
        self._model_rules: list[dict[str, list]] = []
        for i, params in enumerate(model_parameters or []):
            rules = {}
            for name, value in (params or {}).items():
                if name not in self.per_model:
                    allowed = f"; per-model parameters of '{method.name}': {', '.join(self.per_model)}" if self.per_model else (
                        f"; method '{method.name}' has none (set it under the top-level 'parameters')")
                    raise ConfigError(f"models[{i}].parameters: '{name}' cannot be set per model" + allowed)
                rules[name] = self._parse_rules(method.param(str(name)), value)
            self._model_rules.append(rules)
        self._tensor_names = tensor_names
        self._positions: dict[str, float] | None = None
        self._cache: dict[str, dict[str, Any]] = {}

    @staticmethod
    def _parse_value(param, value, where: str) -> Any:
        if isinstance(value, list):
            if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"parameter '{param.name}'{where}: a list must be numbers (a gradient over the layers)"
                                  " or {filter, value} mappings")
            return Gradient(tuple(param.coerce(v, where) for v in value))
        return param.coerce(value, where)

    @classmethod
    def _parse_rules(cls, param, value) -> list[tuple[str | None, Any]]:
        if not isinstance(value, list) or all(not isinstance(v, dict) for v in value):
            return [(None, cls._parse_value(param, value, ""))]
        rules = []
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "value" not in item or set(item) - {"filter", "value"}:
                raise ConfigError(f"parameter '{param.name}'[{i}] must be a mapping {{filter: ..., value: ...}}")
            if item.get("filter") is not None and not isinstance(item["filter"], str):
                raise ConfigError(f"parameter '{param.name}'[{i}].filter must be a string pattern, got "
                                  f"{type(item['filter']).__name__} {short_repr(item['filter'])}")
            where = f" (filter {item.get('filter')!r})"
            rules.append((item.get("filter"), cls._parse_value(param, item["value"], where)))
        return rules

    def _position(self, tensor_name: str) -> float:
        if self._positions is None:
            names = self._tensor_names() if callable(self._tensor_names) else self._tensor_names
            if names is None:
                raise ConfigError("gradient parameters need the model's tensor names (use a config, not merge_state_dicts)")
            self._positions = layer_positions(list(names))
        return self._positions.get(tensor_name, 0.0)

    def _first(self, rules, tensor_name: str) -> Any:
        for pattern, value in rules:
            if pattern is None or matches_any(tensor_name, [pattern]):
                return value.at(self._position(tensor_name)) if isinstance(value, Gradient) else value
        return _UNSET

    def resolve(self, tensor_name: str) -> dict[str, Any]:
        """Parameters for ``tensor_name``; per-model parameters become one value per model when any model sets its own."""
        if tensor_name not in self._cache:
            resolved = self.method.defaults()
            for name, rules in self._rules.items():
                value = self._first(rules, tensor_name)
                if value is not _UNSET:
                    resolved[name] = value
            for name in self.per_model:
                if any(name in rules for rules in self._model_rules):
                    values = [self._first(rules.get(name, ()), tensor_name) for rules in self._model_rules]
                    resolved[name] = [resolved[name] if v is _UNSET else v for v in values]
            self._cache[tensor_name] = resolved
        return self._cache[tensor_name]

    def filters(self) -> list[tuple[str, str]]:
        """``(parameter, filter pattern)`` for every filtered rule."""
        every = [*self._rules.items(), *(item for rules in self._model_rules for item in rules.items())]
        return list(dict.fromkeys((name, pattern) for name, rules in every for pattern, _ in rules if pattern is not None))

    @staticmethod
    def _explicit_rules(rules) -> Any:
        def plain(v):
            return list(v.values) if isinstance(v, Gradient) else v

        if len(rules) == 1 and rules[0][0] is None:
            return plain(rules[0][1])
        return [{"filter": f, "value": plain(v)} if f is not None else {"value": plain(v)} for f, v in rules]

    def explicit(self) -> dict[str, Any]:
        """Every parameter, with the user's rules where given and the defaults otherwise."""
        out: dict[str, Any] = self.method.defaults()
        for name, rules in self._rules.items():
            out[name] = self._explicit_rules(rules)
        return out

    def explicit_for_model(self, index: int) -> dict[str, Any]:
        """The per-model rules of model ``index``, in config form."""
        return {name: self._explicit_rules(rules) for name, rules in self._model_rules[index].items()}
