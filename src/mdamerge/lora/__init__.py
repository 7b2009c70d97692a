"""Merging PEFT LoRA adapters of one base model (low-rank SVD methods, full-model or adapter output)."""

from .adapters import LoraAdapter, LoraModule
from .merge import LoraMergeResult, LoraMerger, factored_svd, low_rank_merge, merge_lora

__all__ = ["LoraAdapter", "LoraMergeResult", "LoraMerger", "LoraModule", "factored_svd", "low_rank_merge", "merge_lora"]
