"""Checkpoint input/output: lazy readers and streaming, atomic Hugging Face folder writers."""

from .checkpoint import Checkpoint, TensorInfo
from .writer import AtomicOutputDir, ShardedWriter, StreamingSafetensorsWriter, copy_non_weight_files, parse_size

__all__ = [
    "AtomicOutputDir", "Checkpoint", "ShardedWriter", "StreamingSafetensorsWriter", "TensorInfo",
    "copy_non_weight_files", "parse_size",
]
