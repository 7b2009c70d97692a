"""The model zoo cache: one pretrained backbone, one frozen head and one fine-tuned backbone per task.

Layout of a zoo folder (``default_cache_dir()/zoo`` unless told otherwise; a zoo of another
backbone, e.g. ``base``, lives in ``default_cache_dir()/zoo-base``, see :data:`BACKBONES`)::

    zoo.json                  settings, build times, recorded accuracies
    pretrained/               config.json + model.safetensors (Hugging Face style)
    heads/<task>.safetensors  frozen linear head (weight, bias)
    finetuned/<task>/         config.json + model.safetensors

Every artefact is written under a temporary name and renamed into place, so an
interrupted build leaves no half-written model; a later build picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError, closest_hint
from ..io.checkpoint import Checkpoint
from ..io.writer import OutputFolder, replace_file
from .finetune import TrainSettings, cpu_threads, extract_features, finetune_backbone, fit_linear_head, head_accuracy, pretrain_backbone
from .model import TinyViT, ViTConfig
from .suites import BACKBONE_NAMES, DEFAULT_BACKBONE
from .tasks import TaskData, load_task, pretraining_data, resolve_tasks

ZOO_FORMAT = 1
ZOO_FILE = "zoo.json"


def default_cache_dir() -> Path:
    """``$MDAMERGE_CACHE`` if set, else ``~/.cache/mdamerge``."""
    env = os.environ.get("MDAMERGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mdamerge"


# The vision zoo's backbones. "small" is the zoo's original shape (its cache folder and settings
# fingerprint are unchanged); "base" is 2x wider (4x the parameters) with the same depth, patch
# size, head width (48) and training recipe, for the scale trend (docs/scale_trend.md). Depth 6
# was measured too slow to build and benchmark on the project's shared 2-core CPU (about 1.5x
# the 4-block cost again; see docs/scale_trend.md).
BACKBONES: dict[str, ViTConfig] = {
    "small": ViTConfig(),
    "base": ViTConfig(dim=384, depth=4, heads=8, mlp_dim=768),
}
assert tuple(BACKBONES) == BACKBONE_NAMES  # the torch-free names --help lists


def backbone_config(name: str) -> ViTConfig:
    """The :class:`ViTConfig` of a named backbone of :data:`BACKBONES` (a copy); unknown names are a ConfigError."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'" + closest_hint(name, BACKBONES)
                          + f"; available: {', '.join(BACKBONES)}")
    return ViTConfig(**{f.name: getattr(BACKBONES[name], f.name) for f in fields(ViTConfig)})


def zoo_subdir(backbone: str | None = None, recipe: str | None = None) -> str:
    """The zoo's folder name in the cache: ``zoo`` for the default backbone's stored recipe, ``zoo-<name>``
    for another backbone, ``-additive`` appended for the additive recipe (the default, issue 19)."""
    name = backbone or DEFAULT_BACKBONE
    backbone_config(name)  # validates the name
    recipe = recipe or DEFAULT_VISION_RECIPE
    check_vision_recipe(recipe)
    folder = "zoo" if name == DEFAULT_BACKBONE else f"zoo-{name}"
    return folder if recipe == "stored" else f"{folder}-{recipe}"


def default_zoo_dir(backbone: str | None = None, recipe: str | None = None) -> Path:
    return default_cache_dir() / zoo_subdir(backbone, recipe)


def vision_zoo(root: str | Path | None = None, cache: str | Path | None = None,
               backbone: str | None = None, recipe: str | None = None) -> "Zoo":
    """The vision zoo of ``backbone`` (default: ``small``) and ``recipe`` (default: ``additive``).

    ``root`` is the zoo folder itself; otherwise ``cache`` (default :func:`default_cache_dir`)
    plus :func:`zoo_subdir`. A new zoo is set up with the backbone's shape and the recipe's
    training settings (:func:`vision_recipe`); an existing one keeps its stored settings, and
    naming a ``backbone`` its stored shape does not match is a ConfigError (the two backbones'
    models must never mix).
    """
    recipe = recipe or DEFAULT_VISION_RECIPE
    check_vision_recipe(recipe)  # also where ``root`` names the folder, so a typo never passes unnoticed
    if root is None:
        root = (Path(cache).expanduser() if cache else default_cache_dir()) / zoo_subdir(backbone, recipe)
    model = backbone_config(backbone or DEFAULT_BACKBONE)
    zoo = Zoo(root)
    if not (zoo.root / ZOO_FILE).exists():  # a new zoo takes the named backbone's shape and the recipe
        return Zoo(root, settings=vision_recipe(recipe, model))
    if zoo.settings.model != model and backbone is not None:
        expected = ZooSettings(**{**zoo.settings.__dict__, "model": model})
        diff = _diff({"model": asdict(zoo.settings.model)}, {"model": asdict(model)})
        raise ConfigError(
            f"zoo at {zoo.root} was built with another backbone than '{backbone}' ({'; '.join(diff[:3])}; "
            f"settings fingerprint {zoo.settings.fingerprint()}, expected {expected.fingerprint()}); "
            "use another cache folder or delete it"
        )
    return zoo


def zoo_for_tasks(tasks_or_suite: str | Iterable[str], root: str | Path | None = None,
                  cache: str | Path | None = None, backbone: str | None = None, recipe: str | None = None) -> "Zoo":
    """The zoo that holds these tasks: the vision :class:`Zoo` or a text zoo.

    ``root`` is the zoo folder itself; otherwise ``cache`` (default :func:`default_cache_dir`)
    plus the zoo's own subfolder (:func:`zoo_subdir` for the vision zoo, the text recipe's
    ``textzoo-additive`` / ``textzoo``). ``backbone`` picks the vision zoo's backbone
    (:data:`BACKBONES`; default ``small``); the text zoo has one. ``recipe`` picks the zoo's
    training recipe, for either family (:func:`vision_recipe`,
    :data:`mdamerge.textzoo.build.TEXT_RECIPES`; default ``additive``, the benchmark's; ``stored``
    is the zoo of before): a new zoo is set up with it, an existing one keeps the settings it
    was built with.
    """
    from .tasks import task_family

    names = resolve_tasks(_as_names(tasks_or_suite))
    if task_family(names) == "text":
        from ..textzoo.build import DEFAULT_TEXT_RECIPE, TEXT_RECIPES, TextZoo, recipe_subdir

        if backbone not in (None, DEFAULT_BACKBONE):
            raise ConfigError(f"--backbone {backbone} applies to the vision zoo; the text zoo has one backbone")
        recipe = recipe or DEFAULT_TEXT_RECIPE
        subdir = recipe_subdir(recipe)  # validates the name
        if root is None:
            root = (Path(cache).expanduser() if cache else default_cache_dir()) / subdir
        root = Path(root).expanduser()
        return TextZoo(root, settings=None if (root / ZOO_FILE).exists() else TEXT_RECIPES[recipe])
    return vision_zoo(root, cache, backbone, recipe)


@dataclass
class ZooSettings:
    """Everything that determines the zoo's models; stored in ``zoo.json`` and checked on reuse."""

    model: ViTConfig = field(default_factory=ViTConfig)
    pretrain: TrainSettings = field(
        default_factory=lambda: TrainSettings(steps=500, batch_size=128, lr=1e-3, weight_decay=0.05, warmup=0.05)
    )
    pretrain_images: int = 40000
    finetune: TrainSettings = field(default_factory=lambda: TrainSettings(steps=300, batch_size=64, lr=2e-4))
    probe_steps: int = 300
    # Heads are few-shot linear probes (this many training examples per class) of the pretrained
    # backbone: like CLIP's zero-shot heads they are clearly weaker than fine-tuning. None = all.
    # Fewer shots widen the gap but make the fine-tuned task vectors interfere so much that
    # no merge beats the pretrained model; 64 keeps both effects visible.
    probe_shots: int | None = 64
    max_train: int | None = None  # cap on each task's training split (small CI zoos)
    data_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ZooSettings":
        nested = {"model": ViTConfig, "pretrain": TrainSettings, "finetune": TrainSettings}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown zoo setting '{unknown[0]}'")
        return cls(**{k: nested[k](**v) if k in nested else v for k, v in data.items()})

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


# The vision zoo's recipes (issue 19), chosen on validation by benchmarks/regime.py (docs/results_vision_regime.md).
# "stored" is the zoo of before (500 pretraining steps, fine-tuning lr 2e-4: task arithmetic's validation
# scaling 0.1 on tasks8, 11% of the gap recovered); "additive" pretrains 4x longer and fine-tunes at half the
# learning rate, which halves the task vectors' cosines and doubles to triples the share merges recover.
VISION_RECIPE_NAMES = ("additive", "stored")
DEFAULT_VISION_RECIPE = "additive"  # what the commands use unless told --recipe stored


def check_recipe_name(recipe: object, names: Iterable[str], what: str = "zoo recipe") -> None:
    """A one-line ConfigError unless ``recipe`` is one of ``names`` (a typo gets the closest name)."""
    names = tuple(names)
    if not isinstance(recipe, str):
        raise ConfigError(f"the {what} must be a name ({', '.join(names)}), got {recipe!r}")
    if recipe not in names:
        raise ConfigError(f"unknown {what} '{recipe}'" + closest_hint(recipe, names) + f"; choose from {', '.join(names)}")


def check_vision_recipe(recipe: object) -> None:
    """A ConfigError unless ``recipe`` names one of :data:`VISION_RECIPE_NAMES`."""
    check_recipe_name(recipe, VISION_RECIPE_NAMES)


def vision_recipe(recipe: str, model: ViTConfig | None = None) -> ZooSettings:
    """The :class:`ZooSettings` of a named vision recipe, for the backbone shape ``model`` (default: small)."""
    check_vision_recipe(recipe)
    stored = ZooSettings(model=model or ViTConfig())
    if recipe == "stored":
        return stored
    return replace(stored, pretrain=replace(stored.pretrain, steps=4 * stored.pretrain.steps),
                   finetune=replace(stored.finetune, lr=1e-4))


def recipe_name(settings: ZooSettings) -> str:
    """The name of the vision recipe ``settings`` follow (for their backbone shape), or ``custom``."""
    return next((name for name in VISION_RECIPE_NAMES if vision_recipe(name, settings.model) == settings), "custom")


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} vs {vb!r}")
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    replace_file(path, json.dumps(data, indent=2, sort_keys=True) + "\n", path.parent)


class Zoo:
    """A (possibly partly built) model zoo in ``root``.

    ``settings`` default to the ones stored in ``root`` (or :class:`ZooSettings` for a new
    zoo); passing settings that differ from the stored ones is an error, since mixing
    models trained under different recipes would make the benchmark meaningless.
    """

    SETTINGS = ZooSettings  # subclasses (the text zoo) bring their own settings and default folder
    SUBDIR = "zoo"

    def __init__(self, root: str | Path | None = None, settings: ZooSettings | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir() / self.SUBDIR
        self._state = self._read_state()
        stored = self.SETTINGS.from_dict(self._state["settings"]) if self._state else None
        if settings is not None and stored is not None and settings.to_dict() != stored.to_dict():
            diff = _diff(stored.to_dict(), settings.to_dict())
            raise ConfigError(
                f"zoo at {self.root} was built with other settings ({'; '.join(diff[:3])}); "
                "use another cache folder or delete it"
            )
        self.settings = settings or stored or self.SETTINGS()
        self._heads: dict[str, nn.Linear] = {}

    @property
    def backbone(self) -> str | None:
        """Name of the :data:`BACKBONES` entry this zoo's model has (None: another shape, e.g. a test zoo)."""
        model = getattr(self.settings, "model", None)
        return next((name for name, cfg in BACKBONES.items() if cfg == model), None)

    # -- paths ---------------------------------------------------------------------
    @property
    def base_dir(self) -> Path:
        """Hugging Face folder of the pretrained backbone."""
        return self.root / "pretrained"

    def finetuned_dir(self, task: str) -> Path:
        """Hugging Face folder of the backbone fully fine-tuned on ``task``."""
        return self.root / "finetuned" / task

    def head_file(self, task: str) -> Path:
        return self.root / "heads" / f"{task}.safetensors"

    # -- state -----------------------------------------------------------------------
    def _read_state(self) -> dict:
        path = self.root / ZOO_FILE
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"corrupt zoo index {path}: {exc}") from None
        if state.get("format") != ZOO_FORMAT:
            raise CheckpointError(f"zoo index {path} has format {state.get('format')!r}, expected {ZOO_FORMAT}")
        return state

    def _save_state(self) -> None:
        self._state.setdefault("tasks", {})
        self._state.update(format=ZOO_FORMAT, settings=self.settings.to_dict())
        _write_json_atomic(self.root / ZOO_FILE, self._state)

    @property
    def records(self) -> dict[str, dict]:
        """Per task: recorded accuracies (``finetuned`` / ``pretrained`` x ``val`` / ``test``), losses, seconds."""
        return self._state.get("tasks", {})

    @property
    def pretrain_record(self) -> dict:
        return self._state.get("pretrain", {})

    def has_base(self) -> bool:
        return (self.base_dir / "model.safetensors").exists()

    def adopt_base(self, donor: "Zoo") -> None:
        """Use ``donor``'s pretrained backbone (copied) instead of pretraining again: for zoos that differ
        only in their fine-tuning recipe. Refused unless everything that shapes the backbone agrees."""
        keys = ("model", "pretrain", "pretrain_images", "data_seed")
        mine, theirs = self.settings.to_dict(), donor.settings.to_dict()
        differ = [k for k in keys if mine.get(k) != theirs.get(k)]
        if differ:
            raise ConfigError(f"zoo at {donor.root} pretrained with other settings ({', '.join(differ)}); cannot adopt its backbone")
        if not donor.has_base():
            raise CheckpointError(f"zoo at {donor.root} has no pretrained backbone yet")
        with OutputFolder(self.base_dir, overwrite=True) as tmp:
            for f in donor.base_dir.iterdir():
                shutil.copy2(f, tmp / f.name)
        self._state["pretrain"] = {**donor.pretrain_record, "adopted_from": str(donor.root)}
        self._save_state()

    def is_built(self, task: str) -> bool:
        return (
            task in self.records and self.head_file(task).exists()
            and (self.finetuned_dir(task) / "model.safetensors").exists()
        )

    def missing(self, tasks_or_suite: str | Iterable[str]) -> list[str]:
        return [t for t in resolve_tasks(_as_names(tasks_or_suite)) if not self.is_built(t)]

    def individual_accuracy(self, task: str, split: str = "test") -> float:
        """Recorded accuracy of the task's own fine-tuned backbone with its head."""
        return self._record(task)["finetuned"][split]

    def pretrained_accuracy(self, task: str, split: str = "test") -> float:
        """Recorded accuracy of the pretrained backbone with the task's head (linear probe)."""
        return self._record(task)["pretrained"][split]

    def _record(self, task: str) -> dict:
        if task not in self.records:
            raise ConfigError(f"task '{task}' is not built in the zoo at {self.root}; run: mdamerge zoo build")
        return self.records[task]

    # -- models ----------------------------------------------------------------------
    def task_data(self, task: str) -> TaskData:
        """The task's data with the zoo's seed; the training split capped at ``settings.max_train``."""
        data = load_task(task, self.settings.data_seed)
        cap = self.settings.max_train
        if cap is not None and len(data.train[1]) > cap:
            x, y = data.train
            data = TaskData(data.name, data.num_classes, data.class_names, (x[:cap], y[:cap]), data.val, data.test,
                            data.description)
        return data

    def head(self, task: str) -> nn.Linear:
        """The task's frozen linear head (shared by pretrained, fine-tuned and merged backbones)."""
        if task not in self._heads:
            path = self.head_file(task)
            if not path.exists():
                raise CheckpointError(f"no head for task '{task}' at {path}; run: mdamerge zoo build")
            tensors = load_file(str(path))
            weight, bias = tensors["weight"], tensors["bias"]
            head = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            self._heads[task] = head.requires_grad_(False).eval()
        return self._heads[task]

    def probe_head(self, task: str) -> nn.Linear:
        """The head the pretrained reference row is evaluated with (here: the task head itself, a probe)."""
        return self.head(task)

    def load_backbone(self, folder: str | Path | None = None) -> TinyViT:
        """A backbone from a Hugging Face folder (default: the pretrained one)."""
        return TinyViT.from_pretrained(folder or self.base_dir)

    def backbone_from_state_dict(self, state_dict: dict[str, torch.Tensor], device: str = "cpu") -> TinyViT:
        """A backbone shaped like the zoo's, holding ``state_dict`` (e.g. a merge), in eval mode."""
        model = TinyViT(self.settings.model)
        model.load_backbone_state(state_dict)
        return model.to(device).eval()

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Pretrained weights, read through :class:`~mdamerge.io.checkpoint.Checkpoint`."""
        return read_state_dict(self.base_dir)

    def finetuned_state_dict(self, task: str) -> dict[str, torch.Tensor]:
        return read_state_dict(self.finetuned_dir(task))

    # -- building --------------------------------------------------------------------
    def build(
        self, tasks_or_suite: str | Iterable[str] = "tasks8", progress: bool = True, device: str = "cpu",
        threads: int | None = None, log=None,
    ) -> dict[str, float]:
        """Build whatever is missing for these tasks; returns seconds spent per stage.

        ``threads``: torch threads on CPU (default: as many as the machine's load leaves free).
        ``log``: called with one line as each stage starts and ends (e.g. ``click.echo`` under ``--quiet``).
        """
        with cpu_threads(threads, device):
            return self._build(tasks_or_suite, progress, device, log or (lambda _line: None))

    def _build(self, tasks_or_suite: str | Iterable[str], progress: bool, device: str, log=lambda _line: None) -> dict[str, float]:
        tasks = resolve_tasks(_as_names(tasks_or_suite))
        todo = [t for t in tasks if not self.is_built(t)]
        need_base = not self.has_base()
        total = (self.settings.pretrain.steps if need_base else 0) + self.settings.finetune.steps * len(todo)
        timings: dict[str, float] = {}
        if not self._state:
            self._save_state()
        bar = _progress_bar(total, progress)
        try:
            if need_base:
                bar.set_description("pretraining backbone")
                log(f"pretraining backbone ({self.settings.pretrain.steps} steps, {torch.get_num_threads()} threads)")
                timings["pretrained"] = self._build_base(bar, device)
                log(f"pretrained backbone done in {timings['pretrained']:.0f} s")
            timings.update(self._finetune_tasks(todo, bar, device, log))
        finally:
            bar.close()
        return timings

    def _finetune_tasks(self, todo: list[str], bar, device: str, log) -> dict[str, float]:
        """Fine-tune each task of ``todo`` from the saved backbone; seconds per task."""
        timings: dict[str, float] = {}
        if not todo:
            return timings
        base = self.load_backbone()
        for i, task in enumerate(todo, 1):
            bar.set_description(f"fine-tuning {task}")
            log(f"fine-tuning {task} ({i}/{len(todo)}, {self.settings.finetune.steps} steps)")
            timings[task] = self._build_task(task, base, bar, device)
            log(f"{task} done in {timings[task]:.0f} s ({self._task_summary(task)})")
        return timings

    def _task_summary(self, task: str) -> str:
        """What the build log says of a finished task."""
        return f"test accuracy {self.records[task]['finetuned']['test']:.3f}"

    def _build_base(self, bar, device: str) -> float:
        start = time.perf_counter()
        s = self.settings
        data = pretraining_data(s.pretrain_images, s.data_seed)
        model, loss = pretrain_backbone(s.model, data, s.pretrain, device, lambda step, l: _tick(bar, l))
        with OutputFolder(self.base_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp)
        seconds = time.perf_counter() - start
        self._state["pretrain"] = {
            "seconds": round(seconds, 1), "final_loss": round(loss, 4), "num_classes": data[2],
            "num_parameters": model.num_parameters(), "threads": torch.get_num_threads(),
        }
        self._save_state()
        return seconds

    def _build_task(self, task: str, base: TinyViT, bar, device: str) -> float:
        start = time.perf_counter()
        s = self.settings
        data = self.task_data(task)
        shots = few_shot_indices(data.train[1], data.num_classes, s.probe_shots, seed=s.data_seed)
        feats = extract_features(base, data.train[0][shots], device=device)
        head = fit_linear_head(feats, data.train[1][shots], data.num_classes, steps=s.probe_steps, seed=s.data_seed)
        tensors = {"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()}
        replace_file(self.head_file(task), lambda path: save_file(tensors, str(path)), self.root)
        self._heads[task] = head
        model, loss = finetune_backbone(base, head, data.train, s.finetune, device, lambda step, l: _tick(bar, l))
        with OutputFolder(self.finetuned_dir(task), overwrite=True) as tmp:
            model.save_pretrained(tmp)
        record = {
            "finetuned": {split: head_accuracy(model, head, data.split(split), device=device) for split in ("val", "test")},
            "pretrained": {split: head_accuracy(base, head, data.split(split), device=device) for split in ("val", "test")},
            "final_loss": round(loss, 4),
            "train_size": len(data.train[1]),
            "seconds": round(time.perf_counter() - start, 1),
            "threads": torch.get_num_threads(),
        }
        self._state.setdefault("tasks", {})[task] = record
        self._save_state()
        return record["seconds"]


def few_shot_indices(labels: torch.Tensor, num_classes: int, shots: int | None, seed: int = 0) -> torch.Tensor:
    """Up to ``shots`` seeded random indices per class (all indices when ``shots`` is None), sorted."""
    if shots is None:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        picked.append(members[torch.randperm(len(members), generator=gen)[:shots]])
    return torch.cat(picked).sort().values


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder, through the project's safe :class:`Checkpoint` reader."""
    with Checkpoint(folder) as ckpt:
        return dict(ckpt.items())


def _as_names(tasks_or_suite: str | Iterable[str]) -> str | list[str]:
    return tasks_or_suite if isinstance(tasks_or_suite, str) else list(tasks_or_suite)


class _NullBar:
    def update(self, n=1): ...
    def set_description(self, desc): ...
    def set_postfix_str(self, s, refresh=True): ...
    def close(self): ...


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True)


def _tick(bar, loss: float) -> None:
    bar.update(1)
    bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
