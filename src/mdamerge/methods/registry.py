"""One registry for every merging method, so the engine, the CLI and the benchmark
all discover methods the same way."""

from __future__ import annotations

from ..errors import ConfigError, closest_hint
from .base import MergeMethod

_REGISTRY: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add a method instance to the registry under ``method.name``."""
    if method.name in _REGISTRY:
        raise ValueError(f"method '{method.name}' registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """Look a method up by name; unknown names raise with the closest suggestion."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'" + closest_hint(name, _REGISTRY) + f"; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)
