"""The benchmark's backbone: a small pre-norm vision transformer shaped like CLIP's vision tower.

Parameter names follow Hugging Face's ``CLIPVisionModel`` (``embeddings.*``,
``pre_layrnorm``, ``encoder.layers.N.self_attn.{q,k,v,out}_proj``,
``encoder.layers.N.mlp.fc{1,2}``, ``post_layernorm``, ``visual_projection``), so a
merge of these checkpoints touches the same kinds of tensors -- 2-D linear weights,
biases, LayerNorm vectors, a 4-D patch convolution, a 2-D position table -- as a
merge of real CLIP checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError

MODEL_TYPE = "mdamerge-tinyvit"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass
class ViTConfig:
    """Shape of a :class:`TinyViT`; the defaults give about 1.2 M parameters."""

    image_size: int = 28
    patch_size: int = 7
    dim: int = 192
    depth: int = 4
    heads: int = 4
    mlp_dim: int = 384
    channels: int = 1
    projection_dim: int | None = 128

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, "architectures": ["TinyViT"], **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t):
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(cfg.channels, cfg.dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(cfg.dim) * cfg.dim**-0.5)
        self.position_embedding = nn.Parameter(torch.randn(cfg.num_patches + 1, cfg.dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class Encoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_dim) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TinyViT(nn.Module):
    """A CLIP-style vision tower for 28x28 images; ``forward`` returns the pooled features.

    The features (class token after the final LayerNorm, then the optional linear
    projection) are what the task heads consume; ``feature_dim`` is their width.
    """

    def __init__(self, config: ViTConfig | None = None):
        super().__init__()
        self.config = config or ViTConfig()
        cfg = self.config
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.dim)  # HF CLIP's spelling, kept for familiar tensor names
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.dim)
        self.visual_projection = nn.Linear(cfg.dim, cfg.projection_dim, bias=False) if cfg.projection_dim else None
        self.feature_dim = cfg.projection_dim or cfg.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.pre_layrnorm(self.embeddings(x)))
        pooled = self.post_layernorm(h[:, 0])
        return self.visual_projection(pooled) if self.visual_projection is not None else pooled

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- Hugging Face style folders ------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "TinyViT":
        """Build a model from a folder written by :meth:`save_pretrained` (or a merge of such folders)."""
        from ..io.checkpoint import Checkpoint

        folder = Path(folder)
        config_file = folder / CONFIG_NAME
        if not config_file.exists():
            raise CheckpointError(f"no {CONFIG_NAME} in {folder}: not a TinyViT folder")
        try:
            config = ViTConfig.from_dict(json.loads(config_file.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed {config_file}: {exc}") from None
        with Checkpoint(folder) as ckpt:
            state = dict(ckpt.items())
        model = cls(config)
        model.load_backbone_state(state, source=str(folder))
        return model.to(device)

    def load_backbone_state(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load weights, naming the first missing or unexpected tensor when the layouts differ."""
        expected = self.state_dict()
        missing = [k for k in expected if k not in state]
        extra = [k for k in state if k not in expected]
        if missing or extra:
            what = f"missing '{missing[0]}'" if missing else f"unexpected '{extra[0]}'"
            raise CheckpointError(f"{source} does not match the TinyViT layout: {what}")
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise CheckpointError(
                    f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
                )
        self.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
