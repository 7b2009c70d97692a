"""Classification and other prefixed checkpoints against a plain base.

``AutoModelForSequenceClassification.save_pretrained`` writes the backbone under the
model's ``base_model_prefix`` (``bert.embeddings...``, ``roberta.``, ``model.``,
``vision_model.``) plus a task head (``classifier.*``, ``score.*``), while the pretrained
``AutoModel`` has the bare names. Such a fine-tune is merged through a view that strips
the prefix and shows only the base's tensors; everything else (the task head) stays out of
the merge and is saved per task as ``OUT/heads/<task>.safetensors`` under its original
names, so each task's classifier can be put back on the merged backbone.

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

from ..errors import CheckpointError
from ..io.checkpoint import TensorInfo

KNOWN_PREFIXES = ("bert.", "roberta.", "model.", "vision_model.", "text_model.", "distilbert.", "deberta.",
                  "electra.", "albert.", "transformer.", "encoder.", "vit.", "clip.")


class PrefixedSource:
    """A fine-tuned source seen through the base's names: ``prefix + name`` for every base tensor it has."""

    def __init__(self, source, prefix: str, base_keys: Sequence[str]):
        self.source, self.prefix = source, prefix
        self.label = source.label
        available = set(source.keys())
        self._keys = [k for k in base_keys if prefix + k in available]
        self._names = set(self._keys)
        mapped = {prefix + k for k in self._keys}
        self.heads = [k for k in source.keys() if k not in mapped]

    @property
    def path(self):
        return self.source.path

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def info(self, name: str) -> TensorInfo:
        return self.source.info(self.prefix + name)

    def get(self, name: str) -> torch.Tensor:
        return self.source.get(self.prefix + name)


def _floating(source, names) -> set[str]:
    return {n for n in names if source.info(n).dtype.is_floating_point}


def detect_prefix(base, model) -> str | None:
    """The prefix under which ``model`` holds every floating-point tensor of ``base`` (``""`` when it needs none),
    or ``None`` when no prefix does."""
    needed = _floating(base, base.keys())
    keys = set(model.keys())
    if needed <= keys:
        return ""
    candidates = list(KNOWN_PREFIXES) + sorted({k.split(".", 1)[0] + "." for k in keys if "." in k})
    for prefix in dict.fromkeys(candidates):
        if all(prefix + n in keys for n in needed):
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
        from safetensors.torch import save_file

        written = []
        for task, (source, names) in self.heads.items():
            if not names:
                continue
            (folder / "heads").mkdir(exist_ok=True)
            path = folder / "heads" / f"{task}.safetensors"
            tensors = {n: source.source.get(n).contiguous() for n in names}  # original names
            save_file(tensors, str(path), metadata={"source": str(source.label), "prefix": source.prefix})
            written.append(path)
        return written


def _task_names(labels: Sequence[str]) -> list[str]:
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
    for task, model in zip(_task_names([m.label for m in models]), models):
        if mode == "auto":
            prefix = detect_prefix(base, model)
            if not prefix:  # "" (names already match) or None (the compatibility check reports it)
                plan.models.append(model)
                continue
        else:
            prefix = mode if mode.endswith(".") else mode + "."
            missing = [n for n in _floating(base, base_keys) if prefix + n not in set(model.keys())]
            if missing:
                raise CheckpointError(f"{model.label}: no tensor '{prefix}{missing[0]}' (prefix '{prefix}' given); "
                                      f"{len(missing)} base tensor(s) missing under it")
        view = PrefixedSource(model, prefix, base_keys)
        plan.models.append(view)
        plan.heads[task] = (view, view.heads)
        shown = ", ".join(view.heads[:3]) + (", ..." if len(view.heads) > 3 else "")
        plan.notices.append(f"{model.label}: backbone under '{prefix}' matched to the base; "
                            f"{len(view.heads)} other tensor(s) ({shown or 'none'}) left out of the merge"
                            + (f", saved to heads/{task}.safetensors" if view.heads else ""))
    return plan


def announce(plan: PrefixPlan) -> None:
    """One line per prefixed model, to stderr."""
    for line in plan.notices:
        print(f"note: {line}", file=sys.stderr)
