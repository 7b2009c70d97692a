"""Reading PEFT LoRA adapter folders (``adapter_config.json`` + ``adapter_model.safetensors``).

A LoRA adapter changes a weight ``W`` of the base model by a low-rank product. In
PEFT's conventions, with ``A = lora_A`` (r x in) and ``B = lora_B`` (out x r):

* ``nn.Linear`` (weight out x in): ``delta W = s * B A``;
* ``fan_in_fan_out`` layers (GPT-2's ``Conv1D``, weight in x out) and embeddings
  (``lora_embedding_A`` r x vocab, ``lora_embedding_B`` dim x r, weight vocab x dim):
  ``delta W = s * (B A)^T``;

with ``s = alpha / r`` (``alpha / sqrt(r)`` when ``use_rslora``), ``alpha`` taken from
``alpha_pattern`` when it names the module. :meth:`LoraAdapter.factors` returns every
task vector as ``left @ right`` (``left`` m x r with ``s`` folded in, ``right`` r x n)
in the orientation of the base weight, so merging code never needs these rules.

Other tensors in the file are full weights trained alongside the adapter
(``modules_to_save`` heads, biases with ``bias="all"|"lora_only"``): their task vector
is ``saved - base``. ``*.base_layer.*`` copies of base weights (PEFT saves embedding
layers this way) are ignored. DoRA and convolution LoRA are rejected with a clear error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine.core import all_finite
from ..errors import CheckpointError
from ..io.checkpoint import Checkpoint

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
TRANSPOSED_KINDS = ("fan_in_fan_out", "embedding")

_LINEAR = re.compile(r"^(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")
_EMBEDDING = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<side>[AB])(?:\.[^.]+)?$")
_SAVED_MODULE = re.compile(r"\.modules_to_save(?:\.[^.]+)?\.")


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight: where its factors are stored and how to turn them into ``delta W``."""

    target: str  # name of the base tensor it changes, e.g. model.layers.0.self_attn.q_proj.weight
    a_key: str
    b_key: str
    kind: str  # "linear" | "fan_in_fan_out" | "embedding"
    rank: int
    scale: float


def find_adapter_files(path: Path) -> tuple[Path, Path]:
    """``(adapter_config.json, weights file)`` of an adapter folder, or a one-line error."""
    if not path.exists():
        raise CheckpointError(f"LoRA adapter not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"LoRA adapter {path} must be a folder with {CONFIG_NAME} and adapter_model.safetensors")
    config = path / CONFIG_NAME
    if not config.is_file():
        raise CheckpointError(f"{path} is not a PEFT adapter folder: {CONFIG_NAME} is missing")
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return config, path / name
    raise CheckpointError(f"LoRA adapter {path} has no weights ({' or '.join(WEIGHT_NAMES)})")


def pattern_value(patterns: dict, module: str, default):
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a module name or its dotted suffix."""
    for pattern, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return value
    return default


class LoraAdapter:
    """A PEFT LoRA adapter on disk, read lazily (factors are loaded per module)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        config_file, weights_file = find_adapter_files(self.path)
        try:
            self.config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"malformed {config_file}: {exc}") from None
        self._check_config()
        self.weights = Checkpoint(weights_file)
        self.modules: dict[str, LoraModule] = {}
        self.full: dict[str, str] = {}  # base tensor name -> key in the adapter file
        self._index()

    @property
    def label(self) -> str:
        return str(self.path)

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    def _check_config(self) -> None:
        peft_type = str(self.config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise CheckpointError(f"{self.path}: peft_type is {peft_type}; only LORA adapters can be merged")
        if self.config.get("use_dora"):
            raise CheckpointError(f"{self.path}: DoRA adapters (use_dora: true) are not supported")

    def _index(self) -> None:
        halves: dict[tuple[str, str], dict[str, str]] = {}
        for key in self.weights.keys():
            name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
            if "lora_magnitude_vector" in name:
                raise CheckpointError(f"{self.path}: DoRA adapters are not supported (found '{key}')")
            if ".base_layer." in name:
                continue  # an unchanged copy of a base weight
            match = _EMBEDDING.match(name) or _LINEAR.match(name)
            if match:
                kind = "embedding" if "lora_embedding_" in name else "linear"
                halves.setdefault((match["module"], kind), {})[match["side"]] = key
                continue
            self.full[_SAVED_MODULE.sub(".", name)] = key
        for (module, kind), sides in halves.items():
            if set(sides) != {"A", "B"}:
                missing = ({"A", "B"} - set(sides)).pop()
                raise CheckpointError(f"{self.path}: module '{module}' has no lora_{missing} factor")
            self.modules[f"{module}.weight"] = self._module(module, kind, sides["A"], sides["B"])

    def _module(self, module: str, kind: str, a_key: str, b_key: str) -> LoraModule:
        a_info, b_info = self.weights.info(a_key), self.weights.info(b_key)
        if len(a_info.shape) != 2 or len(b_info.shape) != 2:
            raise CheckpointError(f"{self.path}: module '{module}' is not a linear or embedding LoRA "
                                  f"(lora_A {list(a_info.shape)}); convolution LoRA is not supported")
        rank = a_info.shape[0]
        if b_info.shape[1] != rank:
            raise CheckpointError(f"{self.path}: module '{module}' has lora_A {list(a_info.shape)} "
                                  f"and lora_B {list(b_info.shape)} of different ranks")
        if kind == "linear" and self.config.get("fan_in_fan_out"):
            kind = "fan_in_fan_out"
        alpha = float(pattern_value(self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", 8)))
        scale = alpha / rank**0.5 if self.config.get("use_rslora") else alpha / rank
        return LoraModule(f"{module}.weight", a_key, b_key, kind, rank, scale)

    # -- task vectors ------------------------------------------------------------
    def factors(self, target: str, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(left, right)`` with ``delta W[target] = left @ right`` in the base weight's orientation."""
        mod = self.modules[target]
        a = self.weights.get(mod.a_key).to(device=device, dtype=dtype)
        b = self.weights.get(mod.b_key).to(device=device, dtype=dtype)
        if not (all_finite(a) and all_finite(b)):
            raise CheckpointError(f"{self.path}: the LoRA factors of '{target}' contain NaN or Inf values")
        if mod.kind in TRANSPOSED_KINDS:
            return mod.scale * a.mT, b.mT
        return mod.scale * b, a

    def delta_shape(self, target: str) -> tuple[int, int]:
        mod = self.modules[target]
        out_r = self.weights.info(mod.b_key).shape[0]
        in_r = self.weights.info(mod.a_key).shape[1]
        return (in_r, out_r) if mod.kind in TRANSPOSED_KINDS else (out_r, in_r)

    def full_tensor(self, target: str) -> torch.Tensor:
        """A full weight trained with the adapter (``modules_to_save``, biases)."""
        return self.weights.get(self.full[target])

    def touches(self, target: str) -> bool:
        return target in self.modules or target in self.full
