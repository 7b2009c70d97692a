"""Streaming, atomic output of a merged model as a Hugging Face folder.

The safetensors format puts a JSON header (names, dtypes, shapes, byte offsets)
before the data. Every output shape and dtype is known before the merge starts, so
:class:`StreamingSafetensorsWriter` writes the header first and then appends each
tensor's bytes as soon as it is merged -- the output never has to be held in memory
(``safetensors.torch.save_file`` needs the whole state dict at once).

:class:`AtomicOutputDir` builds the folder under a temporary sibling and renames it
into place only when everything has been written, so a failed merge leaves nothing
half-written behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError, MergeError
from .checkpoint import WEIGHT_SUFFIXES, TensorInfo

DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_SHARD_SIZE = 2 * 1000**3


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``'2GB'``, ``'500MB'``, ``'1.5GiB'``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?i?B?)\s*", str(value), re.IGNORECASE)
    if not match:
        raise ConfigError(f"cannot parse size {value!r} (expected e.g. 2GB, 500MB or a byte count)")
    number, unit = float(match.group(1)), match.group(2).upper()
    powers = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "I" in unit else 1000
    return int(number * base ** powers[unit.replace("I", "").replace("B", "") or ""])


def plan_shards(entries: Sequence[tuple[str, TensorInfo]], max_bytes: int) -> list[list[tuple[str, TensorInfo]]]:
    """Split tensors, in order, into shards of at most ``max_bytes`` (a larger tensor gets its own shard)."""
    shards: list[list[tuple[str, TensorInfo]]] = [[]]
    size = 0
    for name, info in entries:
        if shards[-1] and size + info.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, info))
        size += info.nbytes
    return shards


def shard_file_names(num_shards: int) -> list[str]:
    if num_shards == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a CPU tensor (works for bfloat16, which numpy lacks)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class StreamingSafetensorsWriter:
    """Writes a safetensors file whose tensors arrive one by one, in the planned order."""

    def __init__(self, path: Path, entries: Sequence[tuple[str, TensorInfo]], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._entries = list(entries)
        self._next = 0
        header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for name, info in self._entries:
            header[name] = {"dtype": DTYPE_CODES[info.dtype], "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, info = self._entries[self._next]
        if name != expected_name:
            raise MergeError(f"internal: tensor '{name}' written out of order (expected '{expected_name}')")
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise MergeError(
                f"internal: tensor '{name}' is {tuple(tensor.shape)} {tensor.dtype}, planned {info.shape} {info.dtype}"
            )
        self._file.write(tensor_bytes(tensor))
        self._next += 1

    @property
    def complete(self) -> bool:
        return self._next == len(self._entries)

    def close(self) -> None:
        self._file.close()


class ShardedWriter:
    """Routes tensors to their shard files and writes the index when there are several shards."""

    def __init__(self, folder: Path, entries: Sequence[tuple[str, TensorInfo]], max_shard_bytes: int = DEFAULT_SHARD_SIZE):
        self.folder = Path(folder)
        shards = plan_shards(entries, max_shard_bytes)
        names = shard_file_names(len(shards))
        self._weight_map = {name: file for file, shard in zip(names, shards) for name, _ in shard}
        self._writers = {file: StreamingSafetensorsWriter(self.folder / file, shard) for file, shard in zip(names, shards)}
        self._total = sum(info.nbytes for _, info in entries)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._writers[self._weight_map[name]].write(name, tensor)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        unfinished = [f for f, w in self._writers.items() if not w.complete]
        if unfinished:
            raise MergeError(f"internal: shard {unfinished[0]} was not completely written")
        if len(self._writers) > 1:
            index = {"metadata": {"total_size": self._total}, "weight_map": self._weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.close()

    @property
    def shard_files(self) -> list[str]:
        return list(self._writers)


def copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    """Copy config, tokenizer and other non-weight files (recursively) from a base model folder."""
    copied = []
    if not src.is_dir():
        return copied
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if item.is_dir() or any(part.startswith(".") for part in rel.parts):
            continue
        if item.suffix in WEIGHT_SUFFIXES or item.name.endswith(".index.json") or rel.as_posix() == "README.md":
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item, dst / rel)
        copied.append(rel.as_posix())
    return copied


class AtomicOutputDir:
    """Context manager yielding a temporary sibling folder that becomes ``target`` on success only."""

    def __init__(self, target: str | Path, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise MergeError(f"output directory {self.target} already exists (use --overwrite to replace it)")
        if self.target.exists() and not self.target.is_dir():
            raise MergeError(f"output path {self.target} exists and is not a directory")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should not be
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            trash = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, trash)
            os.replace(self.tmp, self.target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
