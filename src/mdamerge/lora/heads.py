"""Classification LoRA adapters (PEFT ``SEQ_CLS``) against a plain ``AutoModel`` base.

PEFT names an adapter's tensors after the model it was trained on,
``AutoModelForSequenceClassification``: ``base_model.model.bert.encoder...lora_A.weight``
for the backbone, and the head (``modules_to_save``) as ``base_model.model.classifier.weight``
(``classifier.modules_to_save.default.weight`` in memory). Against the plain ``AutoModel``
base the backbone is under a prefix (``bert.``); it is detected as for full fine-tunes
(:mod:`mdamerge.engine.prefixes`) and stripped, so that only backbone weights are merged.

The head is never merged: each adapter keeps its own, written to
``OUT/heads/<adapter>.safetensors`` under its name in the classifier (``classifier.weight``)
and, for a model output, into a complete classifier folder ``OUT/tasks/<adapter>/``
(:mod:`mdamerge.io.classifiers`). Head tensors are the adapter's full tensors that are not
backbone tensors of the base under the prefix, and those of a classifier module
(``classifier``, ``score``) listed in ``modules_to_save`` (a base that is itself a classifier
has that module, but its head is a random one).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from ..engine.prefixes import KNOWN_PREFIXES
from ..errors import warn
from ..io.classifiers import TaskClassifier, read_config
from .adapters import LoraAdapter

CLASSIFIER_MODULES = ("classifier", "score")  # PEFT's SEQ_CLS heads (PeftModelForSequenceClassification)


@dataclass
class AdapterHead:
    """How one adapter sits on the base: its backbone prefix and its head tensors."""

    prefix: str
    keys: dict[str, str] = field(default_factory=dict)  # name in the classifier -> key in the adapter file

    def read(self, adapter: LoraAdapter) -> dict[str, torch.Tensor]:
        return {name: adapter.weights.get(key) for name, key in self.keys.items()}


def detect_adapter_prefix(adapter: LoraAdapter, base_names: set[str]) -> str | None:
    """The prefix under which every LoRA-adapted weight of ``adapter`` is a base tensor
    (``""`` when the names already match), or ``None`` when none is."""
    targets = list(adapter.modules) or list(adapter.full)
    candidates = [""] + list(KNOWN_PREFIXES) + sorted({t.split(".", 1)[0] + "." for t in targets if "." in t})
    for prefix in dict.fromkeys(candidates):
        if targets and all(t.startswith(prefix) and t[len(prefix):] in base_names for t in targets):
            return prefix
    return None


def _is_head(adapter: LoraAdapter, name: str, prefix: str, base_names: set[str]) -> bool:
    if not (name.startswith(prefix) and name[len(prefix):] in base_names):
        return True  # not a backbone tensor of the base
    saved = set(adapter.config.get("modules_to_save") or [])
    return name.split(".", 1)[0] in set(CLASSIFIER_MODULES) & saved


def split_head(adapter: LoraAdapter, base_names: set[str]) -> AdapterHead:
    """Rename ``adapter``'s backbone weights to the base's names (prefix stripped) and take its
    head out of what is merged. Leaves an adapter that matches no prefix alone (the merger's
    target check then names the first weight the base lacks)."""
    prefix = detect_adapter_prefix(adapter, base_names)
    if prefix is None:
        return AdapterHead("")
    head = AdapterHead(prefix, {n: k for n, k in adapter.full.items() if _is_head(adapter, n, prefix, base_names)})
    strip = len(prefix)
    adapter.modules = {t[strip:]: replace(m, target=t[strip:]) for t, m in adapter.modules.items()}
    adapter.full = {n[strip:]: k for n, k in adapter.full.items() if n not in head.keys}
    return head


def announce(adapter: LoraAdapter, head: AdapterHead, task: str, model_output: bool) -> None:
    """One line per classification adapter, to stderr."""
    if not head.keys and not head.prefix:
        return
    names = ", ".join(sorted(head.keys)[:3]) + (", ..." if len(head.keys) > 3 else "")
    where = f"heads/{task}.safetensors" + (f" and tasks/{task}/" if model_output else "")
    matched = [f"backbone under '{head.prefix}' matched to the base"] if head.prefix else []
    kept = [f"its head ({names}) is not merged, kept in {where}"] if head.keys else []
    print(f"note: {adapter.label}: " + "; ".join(matched + kept), file=sys.stderr)


# -- the classifier folder of an adapter -------------------------------------------------------
def _auto_mappings(task_type: str | None):
    from transformers.models.auto import modeling_auto as auto

    sequence = auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    image = auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    return (sequence,) if str(task_type).upper() == "SEQ_CLS" else (sequence, image)


def _meta_state(class_name: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a transformers classifier's state dict, built on the meta device (no memory)."""
    import transformers

    cfg = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = getattr(transformers, class_name)(cfg)
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def _labels(adapter: LoraAdapter, count: int, task: str) -> dict[int, str]:
    """``id2label`` from a config.json in the adapter folder when it has ``count`` labels, else ``LABEL_i``."""
    path = adapter.path / "config.json"
    if path.is_file():
        found = read_config(adapter.path, adapter.label).get("id2label") or {}
        if len(found) == count:
            return {int(i): str(label) for i, label in found.items()}
    print(f"note: {adapter.label}: no id2label for its {count} labels (no config.json with one in the adapter folder): "
          f"tasks/{task}/config.json names them LABEL_0..LABEL_{count - 1}", file=sys.stderr)
    return {i: f"LABEL_{i}" for i in range(count)}


def adapter_classifier(adapter: LoraAdapter, head: AdapterHead, task: str, base_folder: Path,
                       merged_names: Sequence[str]) -> TaskClassifier | None:
    """The classifier folder of one classification adapter: the base's config made the
    transformers classifier for its model type (the label count is the one under which that
    classifier's head has the adapter's head shapes), the merged tensors that classifier holds
    under the prefix, and the adapter's head. ``None`` (with one warning) when transformers
    cannot build it."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        warn(f"transformers is not installed: no classifier folder tasks/{task}/ (the head is in heads/{task}.safetensors)")
        return None
    if not (base_folder / "config.json").is_file():
        warn(f"the base {base_folder} has no config.json: no classifier folder tasks/{task}/ "
             f"(the head is in heads/{task}.safetensors)")
        return None
    base_config = read_config(base_folder, str(base_folder))
    model_type = base_config.get("model_type")
    shapes = {n: tuple(adapter.weights.info(k).shape) for n, k in head.keys.items()}
    class_name = next((m[model_type] for m in _auto_mappings(adapter.config.get("task_type")) if model_type in m), None)
    if class_name is None:
        warn(f"{adapter.label}: transformers has no classifier for model type '{model_type}': "
             f"no tasks/{task}/ (the head is in heads/{task}.safetensors)")
        return None
    for count in sorted({s[0] for s in shapes.values() if s}):
        config = {**base_config, "architectures": [class_name], "num_labels": count}
        expected = _meta_state(class_name, config)
        if all(expected.get(n) == s for n, s in shapes.items()):
            break
    else:  # not a classification head (a causal LM's lm_head against AutoModel, ...): heads/ only
        warn(f"{adapter.label}: its head ({', '.join(sorted(shapes))}) does not fit a {class_name} of the base for any "
             f"label count: no tasks/{task}/ (the head is in heads/{task}.safetensors)")
        return None
    id2label = _labels(adapter, count, task)
    config = {**config, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    config.pop("num_labels")  # transformers derives it from id2label
    prefix = head.prefix
    backbone = [n for n in merged_names if prefix + n in expected and prefix + n not in head.keys]
    missing = sorted(set(expected) - {prefix + n for n in backbone} - set(head.keys))
    if missing:
        warn(f"tasks/{task}/: {len(missing)} tensor(s) of {class_name} ('{missing[0]}', ...) are in neither the base nor "
             "the adapter; from_pretrained initialises them")
    return TaskClassifier(task, prefix, backbone, lambda: head.read(adapter), config, [adapter.path, base_folder])
