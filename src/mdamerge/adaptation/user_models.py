"""``mdamerge adapt`` on a user's own models: the merge config's ``base_model``/``models``
with a ``data:`` entry per model.

```yaml
method: mda_am                  # adamerging_task, adamerging_layer, mda_feature, mda_ta, mda_am, mda_am_norot
base_model: ./all-MiniLM-L6-v2  # the plain pretrained model (AutoModel / CLIPModel folder)
models:
  - path: ./minilm-topic         # an AutoModelForSequenceClassification / ...ForImageClassification folder
    name: topic                  # optional (default: the folder's name)
    data: ./topic_unlabeled.txt  # unlabeled inputs (see mdamerge.adaptation.unlabeled)
    eval: {path: ./topic_test.jsonl, column: text, label: label}   # optional labelled split
  - path: ./minilm-pairs
    data: {path: ./pairs.csv, columns: [premise, hypothesis]}
parameters: {steps: 100}        # the method's options (`mdamerge adapt --list`)
max_unlabeled: 512              # seeded random subset of each task's inputs
max_length: 128                 # tokens per text example
device: cpu
seed: 0
```

For CLIP (``base_model`` a ``CLIPModel`` folder, models ``CLIPVisionModel`` folders), each
model also gives ``classnames`` (label order) and optional ``templates`` (``"a photo of a
{}."``); its head is the zero-shot head of the pretrained text tower.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MergeError, closest_hint
from .unlabeled import DataSpec, Examples, read_examples

CONFIG_KEYS = ("method", "base_model", "models", "parameters", "max_unlabeled", "max_length", "device", "seed", "dtype")
MODEL_KEYS = ("path", "name", "data", "eval", "classnames", "templates")
DEFAULT_TEMPLATES = ("a photo of a {}.",)
DEFAULT_MAX_UNLABELED = 512
DEFAULT_MAX_LENGTH = 128


@dataclass
class ModelEntry:
    """One fine-tuned model of a user adapt config."""

    name: str
    path: Path
    data: DataSpec
    eval: DataSpec | None = None
    classnames: list[str] | None = None
    templates: list[str] | None = None


@dataclass
class UserAdaptConfig:
    """A validated user adapt config (see the module docstring)."""

    method: str
    base_model: Path
    models: list[ModelEntry]
    parameters: dict[str, Any] = field(default_factory=dict)
    max_unlabeled: int | None = DEFAULT_MAX_UNLABELED
    max_length: int = DEFAULT_MAX_LENGTH
    device: str = "cpu"
    seed: int = 0
    source: dict = field(default_factory=dict)

    @property
    def inputs(self) -> list[Path]:
        """Every path the run reads (for the output-location check)."""
        paths = [self.base_model]
        for m in self.models:
            paths += [m.path, m.data.path] + ([m.eval.path] if m.eval else [])
        return paths


def is_user_config(data: dict) -> bool:
    return "base_model" in data or "models" in data


def parse_user_config(data: dict, root: Path, methods: dict) -> UserAdaptConfig:
    """Check a user adapt config without touching torch; every problem is one line."""
    for key in data:
        if key not in CONFIG_KEYS:
            raise ConfigError(f"unknown config key '{key}'" + closest_hint(str(key), CONFIG_KEYS))
    method, params = checked_method(data, methods)
    if not isinstance(data.get("base_model"), (str, Path)):
        raise ConfigError("'base_model' must be the path of the pretrained model folder")
    models = data.get("models")
    if not isinstance(models, list) or len(models) < 2:
        raise ConfigError("'models' must list at least 2 fine-tuned models, each with 'path' and 'data'")
    entries = [_model_entry(m, i, root) for i, m in enumerate(models)]
    names = [e.name for e in entries]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"two models are named '{duplicate}': give each a distinct 'name'")
    max_unlabeled = data.get("max_unlabeled", DEFAULT_MAX_UNLABELED)
    if max_unlabeled is not None and (isinstance(max_unlabeled, bool) or not isinstance(max_unlabeled, int) or max_unlabeled < 1):
        raise ConfigError(f"'max_unlabeled' must be a positive integer or null, got {max_unlabeled!r}")
    max_length = data.get("max_length", DEFAULT_MAX_LENGTH)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"'max_length' must be an integer >= 2, got {max_length!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"'seed' must be an integer, got {seed!r}")
    base = Path(data["base_model"]).expanduser()
    return UserAdaptConfig(method, base if base.is_absolute() else root / base, entries, params, max_unlabeled,
                           max_length, str(data.get("device") or "cpu"), seed, dict(data))


def checked_method(data: dict, methods: dict) -> tuple[str, dict]:
    """The config's data-based ``method`` and its ``parameters``, checked against the method's options."""
    from ..methods.specs import SPECS

    method = data.get("method")
    if method in SPECS:
        raise ConfigError(f"'{method}' is a data-free method: run it with `mdamerge merge CONFIG --out DIR`; "
                          f"`mdamerge adapt` runs {', '.join(methods)}")
    if method not in methods:
        raise ConfigError(f"unknown adaptive method {method!r}" + closest_hint(str(method), list(methods))
                          + f"; choose from {', '.join(methods)}")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError("'parameters' must be a mapping")
    options = getattr(methods[method], "options", [])
    for key in params:
        if key not in options:
            raise ConfigError(f"method '{method}' has no parameter '{key}'" + closest_hint(str(key), options))
    return method, dict(params)


def _model_entry(value: Any, index: int, root: Path) -> ModelEntry:
    what = f"models[{index}]"
    if not isinstance(value, dict):
        raise ConfigError(f"{what} is {value!r}: `mdamerge adapt` needs a mapping with 'path' and 'data' (its unlabeled "
                          "inputs) per model; data-free merges of plain paths run with `mdamerge merge`")
    for key in value:
        if key not in MODEL_KEYS:
            raise ConfigError(f"{what}: unknown key '{key}'" + closest_hint(str(key), MODEL_KEYS))
    if not isinstance(value.get("path"), (str, Path)):
        raise ConfigError(f"{what}: 'path' (the fine-tuned model folder) is missing")
    path = Path(value["path"]).expanduser()
    path = path if path.is_absolute() else root / path
    name = value.get("name", path.name)
    if not isinstance(name, str) or not name.strip() or "/" in name or name.startswith("."):
        raise ConfigError(f"{what}: 'name' must be a plain task name, got {name!r}")
    if "data" not in value:
        raise ConfigError(f"{what} ('{name}'): 'data' is missing: every task needs unlabeled inputs")
    data = DataSpec.parse(value["data"], root, f"{what} ('{name}') data")
    evaluation = DataSpec.parse(value["eval"], root, f"{what} ('{name}') eval", labelled=True) if value.get("eval") else None
    classnames, templates = value.get("classnames"), value.get("templates")
    for key, listed in (("classnames", classnames), ("templates", templates)):
        if listed is not None and (not isinstance(listed, list) or not listed or not all(isinstance(x, str) for x in listed)):
            raise ConfigError(f"{what} ('{name}'): '{key}' must be a non-empty list of strings")
    if templates and not all("{}" in t for t in templates):
        raise ConfigError(f"{what} ('{name}'): every template needs a '{{}}' for the class name")
    return ModelEntry(name, path, data, evaluation, classnames, templates)


def read_task_data(cfg: UserAdaptConfig) -> tuple[dict[str, Examples], dict[str, Examples]]:
    """Every task's unlabeled inputs (seeded subset of ``max_unlabeled``) and evaluation split, read up front."""
    unlabeled, evaluation = {}, {}
    for m in cfg.models:
        examples = read_examples(m.data, f"data of '{m.name}'")
        unlabeled[m.name] = examples.sample(m.data.limit or cfg.max_unlabeled, cfg.seed)
        if m.eval is not None:
            evaluation[m.name] = read_examples(m.eval, f"eval split of '{m.name}'").sample(m.eval.limit, cfg.seed)
    kinds = {e.kind for e in unlabeled.values()}
    if len(kinds) > 1:
        raise MergeError("the tasks' data mix texts and images: " + ", ".join(f"{t}: {e.kind}" for t, e in unlabeled.items()))
    return unlabeled, evaluation


def json_default(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=json_default) + "\n")
