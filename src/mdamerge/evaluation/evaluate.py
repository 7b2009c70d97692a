"""Accuracy of a backbone on the zoo's tasks, each through that task's frozen head."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import ConfigError
from ..zoo.build import Zoo, read_state_dict
from ..zoo.finetune import fraction_correct, head_correct
from ..zoo.tasks import resolve_tasks

FeatureTransform = Callable[[torch.Tensor], torch.Tensor]


def backbone_from_state_dict(state_dict: dict[str, torch.Tensor], zoo: Zoo, device: str = "cpu") -> torch.nn.Module:
    """A backbone shaped like the zoo's (TinyViT, or the text zoo's encoder), holding ``state_dict``."""
    return zoo.backbone_from_state_dict(state_dict, device)


def _limit(split: tuple[torch.Tensor, torch.Tensor], limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if limit is None or len(split[1]) <= limit:
        return split
    return split[0][:limit], split[1][:limit]


def model_correct(
    model: torch.nn.Module, zoo: Zoo, tasks: Iterable[str] | str, split: str = "test", device: str = "cpu",
    feature_transforms: dict[str, FeatureTransform] | None = None, limit: int | None = None,
    heads: dict[str, torch.nn.Module] | None = None,
) -> dict[str, torch.Tensor]:
    """Per task, which examples of ``split`` (bool, in order) a built backbone module classifies correctly
    through ``heads[task]`` (default the zoo's); what the benchmark's paired bootstrap resamples."""
    names = resolve_tasks(tasks if isinstance(tasks, str) else list(tasks))
    transforms = feature_transforms or {}
    unknown = sorted(set(transforms) - set(names))
    if unknown:
        raise ConfigError(f"feature transform given for task '{unknown[0]}', which is not evaluated")
    model = model.to(device).eval()
    out = {}
    for task in names:
        data = _limit(zoo.task_data(task).split(split), limit)
        head = heads[task] if heads is not None else zoo.head(task)
        out[task] = head_correct(model, head, data, device=device, feature_transform=transforms.get(task))
    return out


def accuracies(correct: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-task accuracy in [0, 1] (nan for an empty split) of :func:`model_correct`'s output."""
    return {task: fraction_correct(c) for task, c in correct.items()}


def evaluate_model(
    model: torch.nn.Module, zoo: Zoo, tasks: Iterable[str] | str, split: str = "test", device: str = "cpu",
    feature_transforms: dict[str, FeatureTransform] | None = None, limit: int | None = None,
    heads: dict[str, torch.nn.Module] | None = None,
) -> dict[str, float]:
    """Per-task accuracy in [0, 1] of an already built backbone module (through ``heads[task]``, default the zoo's)."""
    return accuracies(model_correct(model, zoo, tasks, split, device, feature_transforms, limit, heads))


def backbone_correct(
    backbone_state_dict: dict[str, torch.Tensor], zoo: Zoo, tasks: Iterable[str] | str, split: str = "test",
    device: str = "cpu", feature_transforms: dict[str, FeatureTransform] | None = None, *, limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`model_correct` of a backbone state dict."""
    model = backbone_from_state_dict(backbone_state_dict, zoo, device)
    return model_correct(model, zoo, tasks, split, device, feature_transforms, limit)


def evaluate_backbone(
    backbone_state_dict: dict[str, torch.Tensor], zoo: Zoo, tasks: Iterable[str] | str, split: str = "test",
    device: str = "cpu", feature_transforms: dict[str, FeatureTransform] | None = None, *, limit: int | None = None,
) -> dict[str, float]:
    """Accuracy in [0, 1] per task of a backbone state dict, each task through its frozen head.

    ``feature_transforms[task]``, when given, maps the backbone's features before that
    task's head (data-based MDA's per-task rotations). ``limit`` caps the examples per
    task (quick validation searches).
    """
    return accuracies(backbone_correct(backbone_state_dict, zoo, tasks, split, device, feature_transforms, limit=limit))


def evaluate_folder(
    model_dir: str | Path, zoo: Zoo, tasks: Iterable[str] | str, split: str = "test", device: str = "cpu",
) -> dict[str, float]:
    """Accuracy per task of a backbone saved as a Hugging Face folder (e.g. the output of ``mdamerge merge``)."""
    return evaluate_backbone(read_state_dict(model_dir), zoo, tasks, split, device)


def average(accuracies: dict[str, float]) -> float:
    values = [v for v in accuracies.values() if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def normalized(accuracies: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    """Per-task accuracy divided by the reference's (the individually fine-tuned models)."""
    return {t: (a / reference[t] if reference.get(t) else float("nan")) for t, a in accuracies.items()}
