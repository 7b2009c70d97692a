"""One registry for every merging method, so the engine, the CLI and the benchmark
all discover methods the same way.

Importing this module does not import torch: the implementations (which do) are imported
the first time a method is looked up. Names and parameters without torch: :mod:`.specs`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .specs import SPECS, MethodSpec, get_spec, unknown_method

if TYPE_CHECKING:
    from .base import MergeMethod

_REGISTRY: dict[str, "MergeMethod"] = {}


def register(method: "MergeMethod") -> "MergeMethod":
    """Add a method instance to the registry under ``method.name``."""
    if method.name in _REGISTRY:
        raise ValueError(f"method '{method.name}' registered twice")
    _REGISTRY[method.name] = method
    return method


def _load_implementations() -> None:
    """Import the module of every spec'd method (each registers itself; the module is named as the method)."""
    for name in SPECS:
        importlib.import_module(f"{__package__}.{name}")


def get_method(name: str) -> "MergeMethod":
    """Look a method up by name; unknown names raise with the closest suggestion."""
    _load_implementations()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_method(name, _REGISTRY) from None


def available_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    _load_implementations()
    return sorted(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The name and parameters of method ``name`` without importing torch: its spec, or a
    method registered at run time (a plugin, whose module has already imported torch)."""
    if name not in SPECS and name in _REGISTRY:
        return _REGISTRY[name]
    return get_spec(name)
