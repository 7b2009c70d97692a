"""Shared fixtures: small random models written as real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a busy 2-core machine OpenMP's spinning threads make
    SVD-heavy tests many times slower, and the results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_state(seed: int, shapes: dict[str, tuple[int, ...]], dtype=torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen).to(dtype) for name, shape in shapes.items()}


def finetuned_from(base: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in base.items():
        if t.is_floating_point():
            out[name] = (t.float() + scale * torch.randn(t.shape, generator=gen)).to(t.dtype)
        else:
            out[name] = t.clone()
    return out


SHAPES = {
    "embed.weight": (20, 8),
    "layers.0.attn.weight": (8, 8),
    "layers.0.mlp.weight": (16, 8),
    "layers.0.mlp.bias": (16,),
    "layers.0.norm.weight": (8,),
    "head.weight": (3, 8),
}


def write_hf_folder(folder: Path, state: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """A Hugging Face style folder: config.json + (sharded) safetensors + tokenizer file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "toy", "hidden_size": 8}))
    (folder / "tokenizer.json").write_text("{}")
    names = list(state)
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"))
        return folder
    weight_map = {}
    per = -(-len(names) // shards)
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, str(folder / file))
        weight_map.update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture
def toy_models(tmp_path):
    """Base + 3 fine-tuned HF folders (float32) and their state dicts."""
    base = random_state(0, SHAPES)
    base["position_ids"] = torch.arange(20)
    fts = [finetuned_from(base, seed) for seed in (1, 2, 3)]
    base_dir = write_hf_folder(tmp_path / "base", base)
    ft_dirs = [write_hf_folder(tmp_path / f"ft{i}", sd) for i, sd in enumerate(fts)]
    return {"base": base, "fts": fts, "base_dir": base_dir, "ft_dirs": ft_dirs, "root": tmp_path}
