"""Tensor sources the engine reads from: checkpoints on disk or in-memory state dicts."""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import CheckpointError
from ..io.checkpoint import Checkpoint, TensorInfo


class TensorSource(Protocol):
    """Anything that lists tensors and reads them one at a time."""

    label: str

    def keys(self) -> list[str]: ...
    def info(self, name: str) -> TensorInfo: ...
    def get(self, name: str) -> torch.Tensor: ...


class CheckpointSource:
    """A checkpoint on disk, read lazily."""

    def __init__(self, path: str):
        self.checkpoint = Checkpoint(path)
        self.label = str(path)

    def keys(self) -> list[str]:
        return self.checkpoint.keys()

    def info(self, name: str) -> TensorInfo:
        return self.checkpoint.info(name)

    def get(self, name: str) -> torch.Tensor:
        return self.checkpoint.get(name)


class StateDictSource:
    """An in-memory state dict (for :func:`mdamerge.merge_state_dicts`)."""

    def __init__(self, state: dict[str, torch.Tensor], label: str):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{label}: entry '{bad[0]}' is not a tensor")
        self.state = state
        self.label = label

    def keys(self) -> list[str]:
        return list(self.state)

    def info(self, name: str) -> TensorInfo:
        t = self.state[name]
        return TensorInfo(tuple(t.shape), t.dtype)

    def get(self, name: str) -> torch.Tensor:
        return self.state[name]
