"""Merging methods, one module each, all registered in :mod:`mdamerge.methods.registry`.

Their names and parameters are declared in :mod:`mdamerge.methods.specs`, which (like this
package and the registry) imports without torch; the implementations load on first use.
"""

from .registry import available_methods, get_method, register
from .specs import Param

__all__ = ["MergeMethod", "Param", "TensorJob", "available_methods", "get_method", "register"]


def __getattr__(name: str):
    if name in ("MergeMethod", "TensorJob"):  # torch-backed: imported on first use
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
