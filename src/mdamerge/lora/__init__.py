"""Merging PEFT LoRA adapters of one base model (low-rank SVD methods, full-model or adapter output).

The names below are imported on first use: ``mdamerge lora --help`` loads this package, and
must not wait for torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {"LoraAdapter": ".adapters", "LoraModule": ".adapters", "LoraMergeResult": ".merge", "LoraMerger": ".merge",
            "factored_svd": ".merge", "low_rank_merge": ".merge", "merge_lora": ".merge"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
