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
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..engine.core import all_finite
from ..errors import CheckpointError, short_repr
from ..io.checkpoint import Checkpoint
from ..safefiles import check_regular_file, read_text_file

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
    if not config.exists():
        raise CheckpointError(f"{path} is not a PEFT adapter folder: {CONFIG_NAME} is missing")
    for name in WEIGHT_NAMES:
        if (path / name).exists():
            check_regular_file(path / name, "LoRA weights", CheckpointError)  # a FIFO would block the read
            return config, path / name
    raise CheckpointError(f"LoRA adapter {path} has no weights ({' or '.join(WEIGHT_NAMES)})")


def pattern_value(patterns: dict, module: str, default):
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches a module name or its dotted suffix."""
    for pattern, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
            return value
    return default


def read_adapter_config(config_file: Path) -> dict:
    """``adapter_config.json`` as a mapping whose values the merge relies on are checked, or a one-line error."""
    try:
        config = json.loads(read_text_file(config_file, "adapter config", CheckpointError))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"malformed {config_file}: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"malformed {config_file}: expected a JSON object, got {type(config).__name__}")
    where = f"{config_file}: "
    if "lora_alpha" in config:
        _positive_number(config["lora_alpha"], where + "lora_alpha", integer=False)
    if config.get("r") is not None:
        _positive_number(config["r"], where + "r", integer=True)
    for key, integer in (("alpha_pattern", False), ("rank_pattern", True)):
        for pattern, value in _patterns(config.get(key), where + key).items():
            _positive_number(value, f"{where}{key}[{pattern!r}]", integer)
    return config


def _positive_number(value, what: str, integer: bool) -> None:
    """``r`` (a positive integer) or ``lora_alpha`` (a finite number); PEFT's defaults do not apply to a bad value."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (integer and value <= 0) or (
            not integer and not math.isfinite(value)):
        need = "a positive integer" if integer else "a finite number"
        raise CheckpointError(f"{what} must be {need}, got {short_repr(value)}")


def _patterns(patterns, what: str) -> dict:
    """A ``rank_pattern``/``alpha_pattern`` mapping whose keys are valid regular expressions."""
    if patterns is None:
        return {}
    if not isinstance(patterns, dict):
        raise CheckpointError(f"{what} must be a mapping of module patterns to values, got {short_repr(patterns)}")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise CheckpointError(f"{what} key {pattern!r} is not a valid regular expression ({exc})") from None
    return patterns


def targets_module(target_modules, module: str) -> bool:
    """PEFT's ``target_modules`` rule: a string is a regex matched against the whole name, a list
    names modules by their last dotted parts; ``None`` or ``all-linear`` cannot be checked here."""
    if target_modules is None or target_modules == "all-linear":
        return True
    if isinstance(target_modules, str):
        try:
            return re.fullmatch(target_modules, module) is not None
        except re.error:
            return True  # PEFT would not have trained with it; the factors decide
    return any(module == t or module.endswith(f".{t}") for t in target_modules if isinstance(t, str))


def check_same_base(adapters: Sequence["LoraAdapter"]) -> None:
    """Adapters trained on different base models (``base_model_name_or_path``) must not be merged.

    Names are compared by their last path part, case-insensitively: ``meta-llama/Llama-2-7b-hf``
    and a local copy ``/models/llama-2-7b-hf`` are the same base.
    """
    named = [(a, a.base_model_name) for a in adapters if a.base_model_name]
    for adapter, name in named[1:]:
        if _base_key(name) != _base_key(named[0][1]):
            raise CheckpointError(
                f"LoRA adapters of different base models: {named[0][0].path} was trained on '{named[0][1]}', "
                f"{adapter.path} on '{name}' (base_model_name_or_path in {CONFIG_NAME})")


def _base_key(name: str) -> str:
    return Path(str(name).rstrip("/")).name.lower()


class LoraAdapter:
    """A PEFT LoRA adapter on disk, read lazily (factors are loaded per module)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        config_file, weights_file = find_adapter_files(self.path)
        self.config = read_adapter_config(config_file)
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
        self._check_rank(module, rank, a_info.shape)
        if not targets_module(self.config.get("target_modules"), module):
            raise CheckpointError(f"{self.path}: module '{module}' has LoRA factors but is not among the target_modules "
                                  f"{short_repr(self.config.get('target_modules'))} of {CONFIG_NAME}")
        if kind == "linear" and self.config.get("fan_in_fan_out"):
            kind = "fan_in_fan_out"
        alpha = float(pattern_value(self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", 8)))
        scale = alpha / rank**0.5 if self.config.get("use_rslora") else alpha / rank
        return LoraModule(f"{module}.weight", a_key, b_key, kind, rank, scale)

    def _check_rank(self, module: str, rank: int, a_shape) -> None:
        """The factors' rank must be positive and be the ``r`` (or ``rank_pattern`` value) the config declares."""
        if rank == 0:
            raise CheckpointError(f"{self.path}: module '{module}' has rank-0 LoRA factors (lora_A {list(a_shape)}): "
                                  "no task vector to merge")
        declared = pattern_value(self.config.get("rank_pattern"), module, self.config.get("r"))
        if declared is not None and declared != rank:
            raise CheckpointError(f"{self.path}: module '{module}' has rank-{rank} LoRA factors (lora_A {list(a_shape)}) "
                                  f"but {CONFIG_NAME} declares r = {short_repr(declared)}")

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
