"""The per-tensor merge engine and the public merge entry points."""

from .api import MergeResult, merge, merge_state_dicts
from .core import MergeEngine, MergePlan
from .sources import CheckpointSource, StateDictSource, TensorSource

__all__ = ["CheckpointSource", "MergeEngine", "MergePlan", "MergeResult", "StateDictSource", "TensorSource", "merge", "merge_state_dicts"]
