"""mdamerge: merge fine-tuned copies of one pretrained model, without retraining.

Flagship method: MDA, Merging with Directional Alignment (Chen et al., 2025), next to
the standard baselines (average, task arithmetic, TIES, DARE, TSV-M, Iso-C, Iso-CTS).

>>> import mdamerge
>>> merged = mdamerge.merge_state_dicts(base_sd, [sd_a, sd_b], method="mda")  # doctest: +SKIP
>>> mdamerge.merge("merge.yaml", out_dir="merged/")                             # doctest: +SKIP
"""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, MergeError  # noqa: E402

# The rest imports torch: loaded on first use, so `mdamerge --help` and config errors stay fast.
_LAZY = {
    "MergeConfig": "config", "MergeResult": "engine", "merge": "engine", "merge_state_dicts": "engine",
    "available_methods": "methods", "get_method": "methods",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mdamerge' has no attribute {name!r}")


__all__ = [
    "CheckpointError", "ConfigError", "MergeConfig", "MergeError", "MergeResult",
    "available_methods", "get_method", "merge", "merge_state_dicts", "__version__",
]
