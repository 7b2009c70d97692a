"""Evaluation of (merged) backbones on the zoo's tasks, and the merging benchmark."""

import importlib

# Imported on first use, so that `mdamerge eval/bench --help` (which import this package) do not load torch.
_EXPORTS = {"evaluate_backbone": ".evaluate", "evaluate_folder": ".evaluate"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
