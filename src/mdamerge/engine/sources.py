"""Tensor sources the engine reads from: checkpoints on disk or in-memory state dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch

from ..errors import CheckpointError
from ..io.checkpoint import Checkpoint, TensorInfo, allowed_roots, is_inside
from ..safefiles import read_text_file


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
        self.vocab_size = config_vocab_size(self.checkpoint.folder / "config.json")

    def keys(self) -> list[str]:
        return self.checkpoint.keys()

    def info(self, name: str) -> TensorInfo:
        return self.checkpoint.info(name)

    def get(self, name: str) -> torch.Tensor:
        return self.checkpoint.get(name)


def config_vocab_size(config_file: Path) -> int | None:
    """``vocab_size`` from a Hugging Face config.json (top level or ``text_config``), if any.

    Only a hint for telling vocabulary tensors apart (see ``check_compatible``): a file that
    is missing or unreadable simply gives ``None``.
    """
    try:
        if not is_inside(config_file.resolve(strict=True), allowed_roots(config_file.parent)):
            return None  # a link out of the model folder: not read
        config = json.loads(read_text_file(config_file, "config"))  # a FIFO is refused, never opened
    except (OSError, RuntimeError, ValueError):  # MergeError is a ValueError
        return None
    if not isinstance(config, dict):
        return None
    for holder in (config, config.get("text_config")):
        value = holder.get("vocab_size") if isinstance(holder, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


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
