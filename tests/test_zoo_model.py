"""The zoo's backbone: size, CLIP-like tensor layout, and round trips through the checkpoint I/O."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import mdamerge
from mdamerge.errors import CheckpointError
from mdamerge.io.checkpoint import Checkpoint
from mdamerge.zoo.finetune import TrainSettings, fit_linear_head, lr_schedule
from mdamerge.zoo.model import TinyViT, ViTConfig

SMALL = ViTConfig(dim=32, depth=2, heads=2, mlp_dim=64, projection_dim=16)


def test_default_backbone_size_and_features():
    model = TinyViT()
    n = model.num_parameters()
    assert 1_000_000 <= n <= 5_000_000
    # independent count: per block 4 attention projections + 2 MLP layers + 2 LayerNorms
    c = model.config
    per_block = 4 * (c.dim * c.dim + c.dim) + 2 * c.dim * c.mlp_dim + c.mlp_dim + c.dim + 4 * c.dim
    expected = (c.dim * c.patch_size**2 + c.dim + (c.num_patches + 1) * c.dim + c.depth * per_block
                + 4 * c.dim + c.dim * c.projection_dim)
    assert n == expected
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, model.feature_dim) == (3, 128)


def test_tensor_names_follow_hf_clip_vision_layout():
    names = set(TinyViT(SMALL).state_dict())
    for expected in ("embeddings.patch_embedding.weight", "embeddings.class_embedding", "embeddings.position_embedding",
                     "pre_layrnorm.weight", "encoder.layers.1.self_attn.q_proj.weight", "encoder.layers.0.self_attn.out_proj.bias",
                     "encoder.layers.0.mlp.fc1.weight", "encoder.layers.0.mlp.fc2.weight", "encoder.layers.0.layer_norm2.bias",
                     "post_layernorm.weight", "visual_projection.weight"):
        assert expected in names
    no_proj = TinyViT(ViTConfig(dim=32, depth=1, heads=2, mlp_dim=64, projection_dim=None))
    assert no_proj.feature_dim == 32 and "visual_projection.weight" not in no_proj.state_dict()


def test_save_and_load_round_trip_through_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = TinyViT(SMALL).eval()
    folder = model.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mdamerge-tinyvit" and config["dim"] == 32 and config["projection_dim"] == 16
    with Checkpoint(folder) as ckpt:
        assert set(ckpt.keys()) == set(model.state_dict())
        for name, tensor in model.state_dict().items():
            assert torch.equal(ckpt.get(name), tensor)
    loaded = TinyViT.from_pretrained(folder)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert loaded.config == model.config


def test_merged_folder_from_the_engine_loads_as_a_backbone(tmp_path):
    torch.manual_seed(0)
    base = TinyViT(SMALL)
    base_dir = base.save_pretrained(tmp_path / "base")
    dirs = []
    for i in range(2):
        ft = TinyViT(SMALL)
        ft.load_state_dict({k: v + 0.01 * (i + 1) for k, v in base.state_dict().items()})
        dirs.append(ft.save_pretrained(tmp_path / f"ft{i}"))
    out = tmp_path / "merged"
    mdamerge.merge({"method": "task_arithmetic", "base_model": str(base_dir), "models": [str(d) for d in dirs],
                    "parameters": {"scaling": 0.5}}, out, progress=False)
    merged = TinyViT.from_pretrained(out)
    for name, tensor in merged.state_dict().items():
        # theta_0 + 0.5 * (0.01 + 0.02), computed independently of the engine
        assert torch.allclose(tensor, base.state_dict()[name] + 0.015, atol=1e-6), name


def test_bad_folders_give_one_line_errors(tmp_path):
    model = TinyViT(SMALL)
    folder = model.save_pretrained(tmp_path / "m")
    (tmp_path / "noconf").mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "noconf" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no config.json"):
        TinyViT.from_pretrained(tmp_path / "noconf")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["encoder.layers.0.mlp.fc1.weight"] = torch.zeros(3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'encoder.layers.0.mlp.fc1.weight' has shape \(3, 3\)"):
        TinyViT.from_pretrained(folder)
    del state["encoder.layers.0.mlp.fc1.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing 'encoder.layers.0.mlp.fc1.weight'"):
        TinyViT.from_pretrained(folder)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTConfig(patch_size=5)


def test_lr_schedule_warms_up_then_decays_to_zero():
    s = TrainSettings(steps=100, batch_size=8, lr=1.0, warmup=0.1)
    assert lr_schedule(0, s) == pytest.approx(0.1) and lr_schedule(9, s) == pytest.approx(1.0)
    assert lr_schedule(10, s) == pytest.approx(1.0)
    assert lr_schedule(55, s) == pytest.approx(0.5)
    assert lr_schedule(99, s) < 0.001


def test_linear_head_fits_separable_features():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=gen) * 5
    labels = torch.arange(400) % 4
    feats = centers[labels] + torch.randn(400, 8, generator=gen)
    head = fit_linear_head(feats, labels, 4, steps=200)
    assert not head.weight.requires_grad
    assert (head(feats).argmax(1) == labels).float().mean() > 0.98
