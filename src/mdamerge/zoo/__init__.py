"""The offline model zoo: a small CLIP-like vision backbone fine-tuned on 8, 14 or 20 image tasks."""

from .build import Zoo, ZooSettings, default_cache_dir
from .model import TinyViT, ViTConfig
from .tasks import SUITES, TaskData, load_task

__all__ = ["SUITES", "TaskData", "TinyViT", "ViTConfig", "Zoo", "ZooSettings", "default_cache_dir", "load_task"]
