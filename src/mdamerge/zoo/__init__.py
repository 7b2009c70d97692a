"""The offline model zoo: a small CLIP-like vision backbone fine-tuned on 8, 14 or 20 image tasks."""

import importlib

# Imported on first use, so that the commands' --help (which imports this package) does not load torch.
_EXPORTS = {"Zoo": ".build", "ZooSettings": ".build", "default_cache_dir": ".build", "TinyViT": ".model",
            "ViTConfig": ".model", "SUITES": ".tasks", "TaskData": ".tasks", "load_task": ".tasks"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
