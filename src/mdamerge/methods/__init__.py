"""Merging methods, one module each, all registered in :mod:`mdamerge.methods.registry`."""

from . import average, dare, gta, iso_c, iso_cts, mda, task_arithmetic, ties, tsv  # noqa: F401  (registration)
from .base import MergeMethod, Param, TensorJob
from .registry import available_methods, get_method, register

__all__ = ["MergeMethod", "Param", "TensorJob", "available_methods", "get_method", "register"]
