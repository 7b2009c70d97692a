"""Per-task classifier folders: a merged backbone put back under a fine-tune's prefix with
that task's own head, so that ``AutoModelForSequenceClassification.from_pretrained(folder)``
(or ``AutoModelForImageClassification``) loads the merged model for that task as it is.

A folder holds the fine-tune's ``config.json`` (architecture, ``id2label``, ``label2id``,
``num_labels``, ``problem_type``), the weights (``prefix + name`` for every backbone
tensor, the head under its original names; sharded with an index when large, like every
mdamerge output) and the tokenizer or image-processor files, taken from the fine-tune's
folder, else from the base's.

Used by ``mdamerge merge`` (``OUT/tasks/<task>/`` for classification fine-tunes),
``mdamerge adapt`` (with each task's learned rotation folded into its head) and
``mdamerge lora`` (one head per adapter).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from ..errors import CheckpointError
from .checkpoint import Checkpoint, TensorInfo
from .writer import DEFAULT_SHARD_SIZE, ShardedWriter, copy_planned_files, plan_non_weight_files

TASKS_DIR = "tasks"
# Files that describe the input side of a model: copied into each task folder so that
# AutoTokenizer / AutoImageProcessor load from it as from the fine-tune.
INPUT_FILE_PATTERN = re.compile(r"(tokenizer|vocab|merges|special_tokens|spiece|sentencepiece|preprocessor|"
                                r"processor|image_processor|added_tokens)", re.IGNORECASE)


def task_folder_name(task: str) -> str:
    """A task name as a folder name: path separators and leading dots cannot escape ``tasks/``."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", str(task)).lstrip(".")
    return name or "task"


def read_config(folder: Path, label: str) -> dict:
    """A model folder's ``config.json`` as a mapping (one-line error when missing or malformed)."""
    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{label}: no config.json in {folder}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{label}: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{label}: {path} is not a JSON object")
    return data


def input_files(folders: Sequence[Path]) -> list[tuple[str, Path]]:
    """Tokenizer / image-processor files of the first folder that has any (``(relative name, file)``)."""
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        planned = [(rel, path) for rel, path in plan_non_weight_files(Path(folder))
                   if "/" not in rel and INPUT_FILE_PATTERN.search(rel)]
        if planned:
            return planned
    return []


def write_classifier_folder(
    folder: Path,
    backbone,
    prefix: str,
    head: Mapping[str, torch.Tensor],
    config: Mapping,
    input_sources: Sequence[Path] = (),
    max_shard_bytes: int = DEFAULT_SHARD_SIZE,
    backbone_dtype: torch.dtype | None = None,
) -> Path:
    """Write one task's classifier into ``folder`` (which must exist and be empty; callers write
    into their own temporary output folder, which appears atomically).

    ``backbone`` is a tensor source (``keys()``, ``info(name)``, ``get(name)``: a merged output
    read back lazily, or an in-memory state dict), streamed one tensor at a time;
    ``prefix`` is the fine-tune's ``base_model_prefix`` with its dot (``"bert."``, or ``""``);
    ``head`` the task's head tensors under their original names; ``config`` the fine-tune's
    ``config.json`` content. ``backbone_dtype`` casts floating backbone tensors (default:
    as stored).
    """
    folder = Path(folder)
    names = list(backbone.keys())
    clash = [name for name in head if name in {prefix + n for n in names}]
    if clash:
        raise CheckpointError(f"head tensor '{clash[0]}' has the name of a backbone tensor under prefix '{prefix}'")

    def out_info(name: str) -> TensorInfo:
        info = backbone.info(name)
        if backbone_dtype is not None and info.dtype.is_floating_point:
            return TensorInfo(info.shape, backbone_dtype)
        return info

    entries = [(prefix + n, out_info(n)) for n in names]
    entries += [(n, TensorInfo(tuple(t.shape), t.dtype)) for n, t in head.items()]

    def tensors():
        for n in names:
            tensor = backbone.get(n)
            if backbone_dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(backbone_dtype)
            yield prefix + n, tensor
        yield from head.items()

    write_weights(folder, entries, tensors(), max_shard_bytes)
    (folder / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    copy_planned_files(input_files(input_sources), folder)
    return folder


def write_weights(folder: Path, entries: Sequence[tuple[str, TensorInfo]], tensors, max_shard_bytes: int = DEFAULT_SHARD_SIZE) -> list[str]:
    """Stream ``(name, tensor)`` pairs, in the order of ``entries``, into sharded safetensors in ``folder``."""
    writer = ShardedWriter(Path(folder), entries, max_shard_bytes)
    try:
        for name, tensor in tensors:
            writer.write(name, tensor.detach().cpu().contiguous())
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.shard_files


# -- the task folders of one merged output ------------------------------------------------
HEADS_DIR = "heads"


@dataclass
class TaskClassifier:
    """One task's classifier folder to write next to a merged backbone.

    ``backbone``: the merged output's tensor names (the base's names) that this task's
    architecture holds under ``prefix``; ``read_head()``: the task's head tensors under
    their names in the classifier (read only when its folder is written, so that the heads
    of many tasks are never in memory together); ``config``: its ``config.json`` content.
    """

    name: str
    prefix: str
    backbone: list[str]
    read_head: Callable[[], dict[str, torch.Tensor]]
    config: dict
    input_sources: list[Path] = field(default_factory=list)


class _Subset:
    """A tensor source restricted to some of its names (the backbone of one task)."""

    def __init__(self, source, names: Sequence[str]):
        missing = [n for n in names if n not in source]
        if missing:  # the merged output lacks a tensor the fine-tune's backbone has
            raise CheckpointError(f"the merged output has no tensor '{missing[0]}' for a task's classifier folder")
        self.source, self._names = source, list(names)

    def keys(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        return self.source.info(name)

    def get(self, name: str) -> torch.Tensor:
        return self.source.get(name)


def unique_folder_names(tasks: Sequence[str]) -> list[str]:
    """:func:`task_folder_name` of each task, numbered where two would share a folder."""
    names = [task_folder_name(t) for t in tasks]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def write_task_folders(out: Path, tasks: Sequence[TaskClassifier], max_shard_bytes: int = DEFAULT_SHARD_SIZE) -> list[str]:
    """Write ``out/tasks/<task>/`` for each task, its backbone read back lazily from the merged
    weights already written in ``out`` (one tensor at a time). Returns the folder names."""
    if not tasks:
        return []
    merged = Checkpoint(out)  # only out's top-level weights: heads/ and tasks/ are subfolders
    folders = unique_folder_names([t.name for t in tasks])
    for task, name in zip(tasks, folders):
        folder = Path(out) / TASKS_DIR / name
        folder.mkdir(parents=True)
        write_classifier_folder(folder, _Subset(merged, task.backbone), task.prefix, task.read_head(), task.config,
                                task.input_sources, max_shard_bytes)
    return folders


def save_head_file(out: Path, task: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """``out/heads/<task>.safetensors``: one task's head tensors under their names in its classifier."""
    from safetensors.torch import save_file

    (Path(out) / HEADS_DIR).mkdir(exist_ok=True)
    path = Path(out) / HEADS_DIR / f"{task}.safetensors"
    save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(path), metadata=dict(metadata))
    return path


def task_folders_line(out_dir: Path | str, folders: Sequence[str]) -> str:
    """The one stdout line that says where the task folders are."""
    shown = ", ".join(folders)
    return (f"classifier per task (AutoModelFor...Classification.from_pretrained): "
            f"{Path(out_dir) / TASKS_DIR}/<task> for {shown}")


def task_folders_card(folders: Sequence[str], heads: Sequence[str] = ()) -> str:
    """The model card's section on the per-task classifiers (``folders``) and head files (``heads``)."""
    lines = ["", "## Task classifiers", ""]
    if folders:
        lines += ["The root folder is the merged backbone (the base's `AutoModel` config). Each classification",
                  "fine-tune has a complete classifier -- this merged backbone under its prefix, its own head, its",
                  "config (`id2label`, `num_labels`, `architectures`) and tokenizer files -- in `tasks/<task>/`:", "",
                  "```python",
                  "from transformers import AutoModelForSequenceClassification  # or AutoModelForImageClassification",
                  f"model = AutoModelForSequenceClassification.from_pretrained(\"tasks/{folders[0]}\")",
                  "```", ""]
        lines += [f"- `tasks/{name}/`" for name in folders]
        lines.append("")
    if heads:
        lines += ["Each task's head alone (its tensors under their names in the classifier) is in "
                  "`heads/<task>.safetensors`: " + ", ".join(f"`{h}`" for h in heads) + ".", ""]
    return "\n".join(lines)
