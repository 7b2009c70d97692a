"""Saving and loading the outcome of a data-based merge.

A result folder is a Hugging Face style model folder (the merged backbone's
``model.safetensors`` plus the base's non-weight files such as ``config.json``), and:

* ``feature_transforms/rotations.safetensors`` -- per task, ``rotation/<task>`` (``d x d``)
  and, for rotations about a point, ``center/<task>`` (``d``); apply ``f -> R f`` (or
  ``R (f - c) + c``) before the task head. Absent when the method learns none. It lives
  in a sub-folder because checkpoint readers take every top-level ``*.safetensors``
  file for model weights;
* ``adaptation.json`` -- the run's settings, learned coefficients and loss history.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..io.writer import OutputFolder, check_output_location, copy_non_weight_files
from .coefficients import AdaptiveResult
from .rotations import FixedRotation

TRANSFORMS_NAME = "feature_transforms/rotations.safetensors"
INFO_NAME = "adaptation.json"


def transform_tensors(result: AdaptiveResult) -> dict[str, torch.Tensor]:
    """The tensors of a result's feature transforms, named ``rotation/<task>`` and ``center/<task>``."""
    out = {}
    for task, transform in (result.feature_transforms or {}).items():
        matrix = getattr(transform, "matrix", None)
        if not torch.is_tensor(matrix):
            raise CheckpointError(f"feature transform of task '{task}' is not a stored rotation and cannot be saved")
        out[f"rotation/{task}"] = matrix.detach().cpu().contiguous()
        center = getattr(transform, "center", None)
        if torch.is_tensor(center):
            out[f"center/{task}"] = center.detach().cpu().contiguous()
    return out


def save_adaptive_result(result: AdaptiveResult, out_dir: str | Path, base_dir: str | Path | None = None,
                         overwrite: bool = False, extra_info: dict[str, Any] | None = None) -> Path:
    """Write ``result`` as a model folder (atomically); non-weight files are copied from ``base_dir``.

    ``out_dir`` must not overlap ``base_dir``; a write failure is one line (docs/safety.md).
    """
    check_output_location(out_dir, [base_dir] if base_dir is not None else [])
    with OutputFolder(out_dir, overwrite=overwrite) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if base_dir is not None and Path(base_dir).is_dir():
            copy_non_weight_files(Path(base_dir), tmp)
        tensors = transform_tensors(result)
        if tensors:
            (tmp / TRANSFORMS_NAME).parent.mkdir()
            save_file(tensors, str(tmp / TRANSFORMS_NAME), metadata={"format": "pt", "convention": "f -> R f"})
        info = {**result.info, **(extra_info or {})}
        (tmp / INFO_NAME).write_text(json.dumps(info, indent=1, default=str) + "\n")
    return Path(out_dir)


def load_feature_transforms(folder: str | Path) -> dict[str, FixedRotation] | None:
    """The per-task rotations stored in a result folder, or ``None`` when it has none."""
    path = Path(folder) / TRANSFORMS_NAME
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    out = {}
    for key, m in tensors.items():
        kind, _, task = key.partition("/")
        if kind != "rotation":
            continue
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise CheckpointError(f"{path}: transform of task '{task}' is not a square matrix (shape {tuple(m.shape)})")
        center = tensors.get(f"center/{task}")
        if center is not None and tuple(center.shape) != (m.shape[0],):
            raise CheckpointError(f"{path}: center of task '{task}' has shape {tuple(center.shape)}, expected ({m.shape[0]},)")
        out[task] = FixedRotation(m.float(), None if center is None else center.float())
    return out
