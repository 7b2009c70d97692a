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
from typing import Iterator, Sequence

import torch
from safetensors import safe_open

from ..errors import CheckpointError, short_repr
from ..safefiles import check_regular_file, read_text_file

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

    @property
    def label(self) -> str:
        """How messages name this checkpoint: its path."""
        return str(self.path)

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
            try:
                with safe_open(str(file), framework="pt", device="cpu") as handle:
                    return handle.get_tensor(name)
            except Exception as exc:  # changed, truncated or removed since its header was read
                raise CheckpointError(f"cannot read tensor '{name}' from {file}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
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
    """The weight files of a checkpoint path, safetensors first.

    For a folder, every file must resolve inside it (symlinks followed; a Hugging Face
    cache snapshot may also point into its ``blobs``): an index or a link must not make
    mdamerge read, and merge, a file the user did not name.
    """
    if not path.is_dir():
        check_regular_file(path, "checkpoint", CheckpointError)  # /dev/null, a FIFO: refused, never opened
        if path.suffix == ".safetensors" or path.suffix in TORCH_SUFFIXES:
            return [path]
        raise CheckpointError(f"unsupported checkpoint file {path} (expected .safetensors, .bin or .pt)")
    for index_name, suffix in (("model.safetensors.index.json", ".safetensors"), ("pytorch_model.bin.index.json", ".bin")):
        index = path / index_name
        if index.exists():
            return _files_from_index(index)
    safetensors = sorted(path.glob("*.safetensors"))
    torch_files = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
    files = safetensors or torch_files
    if not files:
        raise CheckpointError(f"no weights found in {path} (expected *.safetensors, *.bin or *.pt)")
    for file in files:
        _check_inside(file, path, f"weight file {file.name}")
        check_regular_file(file, "weight file", CheckpointError)
    return files


def _files_from_index(index: Path) -> list[Path]:
    text = read_text_file(index, "index", CheckpointError)
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"malformed index {index}: {exc}") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"malformed index {index}: 'weight_map' must map tensor names to shard file names, "
            f"got {type(weight_map).__name__}"
        )
    files: dict[str, Path] = {}
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise CheckpointError(f"malformed index {index}: entry '{tensor}' must name a shard file, got {short_repr(name)}")
        if name not in files:
            file = index.parent / name
            _check_inside(file, index.parent, f"{index.name} entry '{tensor}' -> '{name}'")
            if not file.exists():
                raise CheckpointError(f"shard {file} listed in {index.name} is missing")
            check_regular_file(file, f"shard listed in {index.name}", CheckpointError)
            files[name] = file
    return list(files.values())


def _check_inside(file: Path, folder: Path, what: str) -> None:
    """Refuse a weight file that resolves outside its model folder."""
    try:
        real = file.resolve(strict=file.is_symlink())
    except (OSError, RuntimeError):  # dangling link, or a symlink loop (RuntimeError before Python 3.13)
        raise CheckpointError(f"{what} in {folder} is a dangling or looping symlink") from None
    if not is_inside(real, allowed_roots(folder)):
        raise CheckpointError(f"{what} in {folder} resolves to {real}, outside the model folder")


def allowed_roots(folder: Path) -> list[Path]:
    """Folders whose files belong to the model in ``folder``, symlinks resolved.

    In a Hugging Face hub cache a snapshot folder (``.../snapshots/<rev>``) holds links to
    ``.../blobs/<hash>``; those blobs belong to the model too.
    """
    real = Path(folder).resolve()
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return roots


def is_inside(path: Path, roots: Sequence[Path]) -> bool:
    """True if ``path`` (already resolved) is one of ``roots`` or lies below one."""
    return any(path == root or path.is_relative_to(root) for root in roots)
