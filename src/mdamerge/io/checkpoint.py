"""Lazy, safe reading of model checkpoints.

A :class:`Checkpoint` lists tensor names, shapes and dtypes from file headers and
reads one tensor at a time, so merging never holds a whole model in memory.

Accepted layouts (safetensors preferred whenever present):
  * a Hugging Face folder: ``model.safetensors``, sharded ``*.safetensors`` with
    ``model.safetensors.index.json``, or ``pytorch_model.bin`` (+ index);
  * a single ``.safetensors`` file;
  * a single ``.bin`` / ``.pt`` / ``.pth`` state dict, read with
    ``torch.load(weights_only=True, mmap=True)`` -- never unpickling arbitrary objects.
    (Memory-mapped pages of such files count towards RSS once read; safetensors
    files are read tensor by tensor and do not.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from ..errors import CheckpointError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES, ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")
STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class TensorInfo:
    """Shape and dtype of one tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


class Checkpoint:
    """A read-only set of named tensors, loaded lazily from one model's files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"checkpoint not found: {self.path}")
        self._files = _weight_files(self.path)
        self._location: dict[str, Path] = {}
        self._info: dict[str, TensorInfo] = {}
        self._torch_dicts: dict[Path, dict[str, torch.Tensor]] = {}
        for file in self._files:
            self._index_file(file)
        if not self._location:
            raise CheckpointError(f"no tensors found in {self.path}")

    # -- listing -----------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self._location)

    def __contains__(self, name: str) -> bool:
        return name in self._location

    def __len__(self) -> int:
        return len(self._location)

    def info(self, name: str) -> TensorInfo:
        """Shape and dtype of ``name`` from the file header."""
        return self._info[name]

    @property
    def folder(self) -> Path:
        """The folder holding the weights (the path itself for a folder checkpoint)."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    # -- reading -----------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (a fresh CPU tensor)."""
        file = self._location[name]
        if file.suffix == ".safetensors":
            # A fresh handle per read: a long-lived one keeps the whole file mapped, and every
            # page read so far stays resident -- merging would then cost O(model) RSS per input.
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                return handle.get_tensor(name)
        return self._torch_dicts[file][name]

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self._location:
            yield name, self.get(name)

    def close(self) -> None:
        self._torch_dicts.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------
    def _index_file(self, file: Path) -> None:
        if file.suffix == ".safetensors":
            try:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    for name in handle.keys():
                        sl = handle.get_slice(name)
                        dtype = SAFETENSORS_DTYPES.get(sl.get_dtype())
                        if dtype is None:
                            raise CheckpointError(f"unsupported dtype {sl.get_dtype()} of tensor '{name}' in {file}")
                        self._add(name, file, TensorInfo(tuple(sl.get_shape()), dtype))
            except CheckpointError:
                raise
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"cannot read safetensors file {file}: {exc}") from None
            return
        state = _load_torch_state_dict(file)
        self._torch_dicts[file] = state
        for name, tensor in state.items():
            self._add(name, file, TensorInfo(tuple(tensor.shape), tensor.dtype))

    def _add(self, name: str, file: Path, info: TensorInfo) -> None:
        if name in self._location:
            raise CheckpointError(f"tensor '{name}' appears in both {self._location[name].name} and {file.name}")
        self._location[name] = file
        self._info[name] = info


def _load_torch_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:
        raise CheckpointError(f"cannot load {file} as a weights-only state dict: {str(exc).splitlines()[0]}") from None
    for key in STATE_DICT_WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{file} does not hold a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{file} holds non-tensor entries, e.g. '{bad[0]}'")
    return obj


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a checkpoint path, safetensors first."""
    if path.is_file():
        if path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES:
            return [path]
        raise CheckpointError(f"unsupported checkpoint file {path} (expected .safetensors, .bin, .pt or .pth)")
    for index_name, suffix in (("model.safetensors.index.json", ".safetensors"), ("pytorch_model.bin.index.json", ".bin")):
        index = path / index_name
        if index.exists():
            return _files_from_index(index)
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    torch_files = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
    if torch_files:
        return torch_files
    raise CheckpointError(f"no weights found in {path} (expected *.safetensors, *.bin or *.pt)")


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"malformed index {index}: {exc}") from None
    files = []
    for name in dict.fromkeys(weight_map.values()):
        file = index.parent / name
        if not file.exists():
            raise CheckpointError(f"shard {file} listed in {index.name} is missing")
        files.append(file)
    return files
