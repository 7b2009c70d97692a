"""Classification and other prefixed checkpoints against a plain base.

``AutoModelForSequenceClassification.save_pretrained`` writes the backbone under the
model's ``base_model_prefix`` (``bert.embeddings...``, ``roberta.``, ``model.``,
``vision_model.``) plus a task head (``classifier.*``, ``score.*``), while the pretrained
``AutoModel`` has the bare names. Such a fine-tune is merged through a view that strips
the prefix and shows only the base's tensors; everything else (the task head) stays out of
the merge and is saved per task as ``OUT/heads/<task>.safetensors`` under its original
names. Each such task also gets ``OUT/tasks/<task>/``, a complete classifier (the merged
backbone under the fine-tune's prefix, its head, its config.json with ``id2label``, its
tokenizer files) that ``AutoModelForSequenceClassification.from_pretrained`` loads as it is
(:mod:`mdamerge.io.classifiers`).

``prefix: auto`` (the default) detects the prefix: the one whose stripped names cover
every floating-point tensor of the base. ``prefix: none`` turns this off; ``prefix: bert.``
forces one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import CheckpointError, warn
from ..io.checkpoint import TensorInfo
from ..io.classifiers import TaskClassifier, read_config, save_head_file

KNOWN_PREFIXES = ("bert.", "roberta.", "model.", "vision_model.", "text_model.", "distilbert.", "deberta.",
                  "electra.", "albert.", "transformer.", "encoder.", "vit.", "clip.")


class PrefixedSource:
    """A fine-tuned source seen through the base's names: ``prefix + name`` for every base tensor it has.

    With ``base`` given, base tensors of a whole module the fine-tune's architecture lacks
    (RobertaModel's pooler, which RobertaForSequenceClassification does not have; see
    :func:`absent_modules`) are read from the base: a zero task vector, so the merged output
    keeps the base's values there. :attr:`own_keys` are the names the fine-tune itself holds.
    """

    def __init__(self, source, prefix: str, base_keys: Sequence[str], base=None):
        self.source, self.prefix, self.base = source, prefix, base
        self.label = source.label
        available = set(source.keys())
        self.own_keys = [k for k in base_keys if prefix + k in available]
        self.absent = sorted(absent_modules(base, source, prefix) or ()) if base is not None else []
        self._keys = [k for k in base_keys if prefix + k in available or k in set(self.absent)]
        self._names = set(self._keys)
        mapped = {prefix + k for k in self.own_keys}
        self.heads = [k for k in source.keys() if k not in mapped]

    @property
    def path(self):
        return self.source.path

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def _holder(self, name: str):
        return (self.base, name) if name in self.absent else (self.source, self.prefix + name)

    def info(self, name: str) -> TensorInfo:
        source, key = self._holder(name)
        return source.info(key)

    def get(self, name: str) -> torch.Tensor:
        source, key = self._holder(name)
        return source.get(key)


def _floating(source, names) -> set[str]:
    return {n for n in names if source.info(n).dtype.is_floating_point}


def absent_modules(base, model, prefix: str) -> set[str] | None:
    """The floating base tensors ``model`` lacks under ``prefix`` when they are whole top-level
    modules of which it has nothing (an architecture without that module, e.g. no pooler),
    and it has most of the base; ``None`` when it lacks part of a module or most of the base."""
    needed = _floating(base, base.keys())
    keys = set(model.keys())
    missing = {n for n in needed if prefix + n not in keys}
    modules = {n.split(".", 1)[0] for n in missing}
    if 2 * len(missing) >= len(needed) or any(k.startswith(prefix + m + ".") for m in modules for k in keys):
        return None
    return missing


def detect_prefix(base, model) -> str | None:
    """The prefix under which ``model`` holds every floating-point tensor of ``base`` (``""`` when it
    needs none), else one under which it lacks only whole modules (:func:`absent_modules`), or
    ``None`` when no prefix does."""
    needed = _floating(base, base.keys())
    keys = set(model.keys())
    if needed <= keys:
        return ""
    candidates = list(dict.fromkeys(list(KNOWN_PREFIXES) + sorted({k.split(".", 1)[0] + "." for k in keys if "." in k})))
    for prefix in candidates:
        if all(prefix + n in keys for n in needed):
            return prefix
    for prefix in candidates:
        if absent_modules(base, model, prefix) is not None:
            return prefix
    return None


@dataclass
class PrefixPlan:
    """What :func:`align_prefixes` decided: the sources to merge and the heads to save."""

    models: list
    heads: dict[str, tuple[object, list[str]]] = field(default_factory=dict)  # task -> (source, head names)
    notices: list[str] = field(default_factory=list)

    def save_heads(self, folder: Path) -> list[Path]:
        """Write each task's left-out tensors to ``folder/heads/<task>.safetensors`` (original names)."""
        return [save_head_file(folder, task, _read(source, names), {"source": str(source.label), "prefix": source.prefix})
                for task, (source, names) in self.heads.items() if names]

    def classifiers(self, base_folder: Path | None = None) -> list[TaskClassifier]:
        """The classifier folder of each task with a head: the fine-tune's config.json, its backbone
        names, its head; tokenizer files from the fine-tune's folder, else ``base_folder``. A fine-tune
        without a config.json gets only its ``heads/`` file (one warning line)."""
        tasks = []
        for task, (view, names) in self.heads.items():
            checkpoint = getattr(view.source, "checkpoint", None)
            folder = checkpoint.folder if checkpoint is not None else None
            if not names or folder is None:
                continue
            if not (folder / "config.json").is_file():
                warn(f"{view.label}: no config.json, so no classifier folder tasks/{task}/ (its head is in heads/{task}.safetensors)")
                continue
            tasks.append(TaskClassifier(task, view.prefix, view.own_keys, lambda view=view, names=names: _read(view, names),
                                        read_config(folder, view.label), [folder, base_folder]))
        return tasks


def _read(view: "PrefixedSource", names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Tensors of the underlying fine-tune under their original (prefixed) names."""
    return {n: view.source.get(n) for n in names}


def task_names(labels: Sequence[str]) -> list[str]:
    """One short, unique name per model: its folder's name (numbered where two share one)."""
    names = [Path(str(label).rstrip("/")).name or "model" for label in labels]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def align_prefixes(base, models: Sequence, mode: str = "auto") -> PrefixPlan:
    """Wrap fine-tuned sources saved under a prefix so their names match the base's.

    ``mode``: ``"auto"`` (detect), ``"none"`` (leave the sources alone) or a prefix such as ``"bert."``.
    """
    mode = str(mode)
    if mode == "none":
        return PrefixPlan(list(models))
    plan = PrefixPlan([])
    base_keys = base.keys()
    for task, model in zip(task_names([m.label for m in models]), models):
        if mode == "auto":
            prefix = detect_prefix(base, model)
            if not prefix:  # "" (names already match) or None (the compatibility check reports it)
                plan.models.append(model)
                continue
        else:
            prefix = mode if mode.endswith(".") else mode + "."
            missing = sorted(n for n in _floating(base, base_keys) if prefix + n not in set(model.keys()))
            if missing and absent_modules(base, model, prefix) is None:
                raise CheckpointError(f"{model.label}: no tensor '{prefix}{missing[0]}' (prefix '{prefix}' given); "
                                      f"{len(missing)} base tensor(s) missing under it")
        view = PrefixedSource(model, prefix, base_keys, base)
        plan.models.append(view)
        plan.heads[task] = (view, view.heads)
        shown = ", ".join(view.heads[:3]) + (", ..." if len(view.heads) > 3 else "")
        absent = sorted({n.split(".", 1)[0] + ".*" for n in view.absent})
        plan.notices.append(f"{model.label}: backbone under '{prefix}' matched to the base; "
                            f"{len(view.heads)} other tensor(s) ({shown or 'none'}) left out of the merge"
                            + (f", saved to heads/{task}.safetensors" if view.heads else "")
                            + (f"; it has no {', '.join(absent)} (kept from the base)" if absent else ""))
    return plan


def announce(plan: PrefixPlan) -> None:
    """One line per prefixed model, to stderr."""
    for line in plan.notices:
        print(f"note: {line}", file=sys.stderr)
