"""Saving and loading the outcome of a data-based merge.

A result folder is a Hugging Face style model folder (the merged backbone's
``model.safetensors`` plus the base's non-weight files such as ``config.json``), and:

* ``feature_transforms/rotations.safetensors`` -- one ``d x d`` rotation per task, keyed
  by task name (absent when the method learns none); apply ``f -> R f`` before the task
  head. It lives in a sub-folder because checkpoint readers take every
  ``*.safetensors`` file at the top level for model weights;
* ``adaptation.json`` -- the run's settings, learned coefficients and loss history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..io.writer import AtomicOutputDir, copy_non_weight_files
from .adamerging import AdaptiveResult
from .rotations import FixedRotation

TRANSFORMS_NAME = "feature_transforms/rotations.safetensors"
INFO_NAME = "adaptation.json"


def transform_matrices(result: AdaptiveResult) -> dict[str, torch.Tensor]:
    """The rotation matrices of a result's feature transforms (empty when it has none)."""
    out = {}
    for task, transform in (result.feature_transforms or {}).items():
        matrix = getattr(transform, "matrix", None)
        if not torch.is_tensor(matrix):
            raise CheckpointError(f"feature transform of task '{task}' is not a stored rotation and cannot be saved")
        out[task] = matrix.detach().cpu().contiguous()
    return out


def save_adaptive_result(result: AdaptiveResult, out_dir: str | Path, base_dir: str | Path | None = None,
                         overwrite: bool = False, extra_info: dict[str, Any] | None = None) -> Path:
    """Write ``result`` as a model folder (atomically); non-weight files are copied from ``base_dir``."""
    with AtomicOutputDir(out_dir, overwrite=overwrite) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if base_dir is not None and Path(base_dir).is_dir():
            copy_non_weight_files(Path(base_dir), tmp)
        matrices = transform_matrices(result)
        if matrices:
            (tmp / TRANSFORMS_NAME).parent.mkdir()
            save_file(matrices, str(tmp / TRANSFORMS_NAME), metadata={"format": "pt", "convention": "f -> R f"})
        info = {**result.info, **(extra_info or {})}
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=1, default=str) + "\n")
    return Path(out_dir)


def load_feature_transforms(folder: str | Path) -> dict[str, FixedRotation] | None:
    """The per-task rotations stored in a result folder, or ``None`` when it has none."""
    path = Path(folder) / TRANSFORMS_NAME
    if not path.exists():
        return None
    try:
        matrices = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    for task, m in matrices.items():
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise CheckpointError(f"{path}: transform of task '{task}' is not a square matrix (shape {tuple(m.shape)})")
    return {task: FixedRotation(m.float()) for task, m in matrices.items()}
