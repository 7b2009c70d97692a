"""CLIP vision towers: locating checkpoints offline, merging only the vision tower, and
zero-shot evaluation with heads built from the pretrained text encoder.

The literature's benchmark fine-tunes only CLIP's image encoder per task
(``tanganke/clip-vit-base-patch32_<task>`` holds a ``CLIPVisionModel``); the merged
image encoder is evaluated with the pretrained model's ``visual_projection`` and, per
task, a zero-shot head: for each class the mean of the normalised text embeddings of
the task's prompt templates filled with the class name, renormalised. A prediction is
``argmax_c <normalised image embedding, head_c>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import MergeError
from ..io.checkpoint import Checkpoint, TensorInfo
from .classnames import classnames, prompts
from .datasets import ImageDataset, hub_cache_dir

VISION_PREFIX = "vision_model."


# -- locating checkpoints -------------------------------------------------------------
@dataclass
class ModelLookup:
    """Where a model was found, or every place that was tried."""

    name: str
    path: Path | None = None
    looked: list[str] = field(default_factory=list)


def _has_weights(folder: Path) -> bool:
    try:
        Checkpoint(folder)
    except MergeError:
        return False
    return True


def find_model(name: str, model_root: str | Path | None = None, cache_dir: str | None = None) -> ModelLookup:
    """A model folder for ``name`` (a path, or a Hub name such as ``openai/clip-vit-base-patch32``).

    Looks in ``model_root/<org>/<name>``, ``model_root/<org>--<name>`` and
    ``model_root/<name>``, then in the Hugging Face Hub cache (offline).
    """
    lookup = ModelLookup(name)
    if Path(name).is_dir():
        lookup.path = Path(name)
        return lookup
    if model_root is not None:
        root = Path(model_root)
        for folder in (root.joinpath(*name.split("/")), root / name.replace("/", "--"), root / name.split("/")[-1]):
            lookup.looked.append(str(folder))
            if folder.is_dir() and _has_weights(folder):
                lookup.path = folder
                return lookup
    lookup.looked.append(f"Hugging Face cache {hub_cache_dir(cache_dir)}")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name, local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached, or huggingface_hub missing
        return lookup
    if _has_weights(folder):
        lookup.path = folder
    return lookup


# -- the vision tower as a tensor source ----------------------------------------------------
class VisionTowerSource:
    """The floating-point ``vision_model.*`` tensors of a CLIP or CLIPVisionModel checkpoint.

    Full CLIP checkpoints and CLIPVisionModel checkpoints written by transformers 4
    (the public fine-tuned ones) name the tensors ``vision_model.*``; a CLIPVisionModel
    written by transformers 5 drops the prefix. Either way the tensors are presented as
    ``vision_model.*``.
    """

    def __init__(self, path: str | Path, prefix: str = VISION_PREFIX):
        self.path = str(path)
        self.label = self.path
        self.checkpoint = Checkpoint(path)
        floating = [k for k in self.checkpoint.keys() if self.checkpoint.info(k).dtype.is_floating_point]
        prefixed = [k for k in floating if k.startswith(prefix)]
        if prefixed:
            self._stored = {k: k for k in prefixed}
        elif any(k.startswith("encoder.") for k in floating) and any(k.startswith("embeddings.") for k in floating):
            self._stored = {prefix + k: k for k in floating}
        else:
            raise MergeError(f"{path} has no '{prefix}*' tensors: it is not a CLIP vision tower")

    def keys(self) -> list[str]:
        return list(self._stored)

    def info(self, name: str) -> TensorInfo:
        return self.checkpoint.info(self._stored[name])

    def get(self, name: str) -> torch.Tensor:
        return self.checkpoint.get(self._stored[name])

    def __getstate__(self):  # travels to Ray workers as its path
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


def merge_vision_towers(base: str | Path, finetuned: Sequence[str | Path], method: str, *,
                        parameters: dict | None = None, seed: int = 0, device: str = "cpu", workers: int = 1,
                        executor=None, progress: bool = False) -> dict[str, torch.Tensor]:
    """The merged ``vision_model.*`` state dict (CPU tensors): only the image encoder is merged."""
    from ..config import ParameterResolver
    from ..engine.core import MergeEngine
    from ..methods import get_method

    impl = get_method(method)
    resolver = ParameterResolver(impl, parameters or {})
    engine = MergeEngine(VisionTowerSource(base), [VisionTowerSource(p) for p in finetuned], impl, resolver.resolve,
                         seed=seed, device=device, workers=workers, progress=progress)
    merged: dict[str, torch.Tensor] = {}
    engine.run(merged.__setitem__, executor=executor)
    return merged


def vision_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``vision_model.*`` tensors of a checkpoint."""
    source = VisionTowerSource(path)
    return {k: source.get(k) for k in source.keys()}


# -- zero-shot classification ---------------------------------------------------------
def _text_features(model, tokenizer, texts: list[str], device) -> torch.Tensor:
    max_len = model.config.text_config.max_position_embeddings
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
    pooled = model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
    return model.text_projection(pooled)


def zero_shot_head(model, tokenizer, task: str, device="cpu", batch_size: int = 256) -> torch.Tensor:
    """``(num_classes, dim)`` zero-shot head of a benchmark ``task`` (its class names and templates)."""
    names = classnames(task)
    return prompt_head(model, tokenizer, names, [prompts(task, name) for name in names], device, batch_size)


@torch.no_grad()
def prompt_head(model, tokenizer, names: Sequence[str], class_prompts: Sequence[Sequence[str]], device="cpu",
                batch_size: int = 256) -> torch.Tensor:
    """``(num_classes, dim)``: per class the renormalised mean of its normalised prompt embeddings
    (every class has the same number of prompts)."""
    texts = [p for listed in class_prompts for p in listed]
    per_class = len(texts) // len(names)
    feats = torch.cat([_text_features(model, tokenizer, texts[i:i + batch_size], device)
                       for i in range(0, len(texts), batch_size)])
    feats = torch.nn.functional.normalize(feats.float(), dim=-1).view(len(names), per_class, -1).mean(1)
    return torch.nn.functional.normalize(feats, dim=-1)


def _batches(dataset: ImageDataset, processor, batch_size: int, threads: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Preprocessed ``(pixel_values, labels)`` batches; with ``threads > 1`` images are decoded and
    resized in a thread pool (PIL releases the GIL) while the previous batch is being encoded."""
    def pixels(i: int) -> torch.Tensor:
        return processor(images=[dataset.image(i)], return_tensors="pt")["pixel_values"][0]

    starts = range(0, len(dataset), batch_size)
    if threads <= 1:
        for start in starts:
            idx = range(start, min(start + batch_size, len(dataset)))
            yield torch.stack([pixels(i) for i in idx]), torch.tensor([dataset.labels[i] for i in idx])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        def submit(start):
            idx = range(start, min(start + batch_size, len(dataset)))
            return idx, [pool.submit(pixels, i) for i in idx]

        pending = submit(starts[0]) if starts else None
        for next_start in [*starts[1:], None]:
            idx, futures = pending
            pending = submit(next_start) if next_start is not None else None
            yield torch.stack([f.result() for f in futures]), torch.tensor([dataset.labels[i] for i in idx])


class ZeroShotEvaluator:
    """Accuracy of CLIP image encoders with the pretrained model's zero-shot heads.

    Holds one pretrained ``CLIPModel``; :meth:`accuracy` swaps a vision tower in
    (``load_vision``) and classifies a task's test split.
    """

    def __init__(self, base_path: str | Path, device: str = "cpu", batch_size: int = 64, threads: int = 1):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(base_path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base_path)
        self.processor = CLIPImageProcessor.from_pretrained(base_path)
        self.batch_size = batch_size
        self.threads = threads
        self.heads: dict[str, torch.Tensor] = {}
        self.pretrained_vision = {f"{VISION_PREFIX}{k}": v.detach().clone()
                                  for k, v in self.model.vision_model.state_dict().items()}

    def head(self, task: str) -> torch.Tensor:
        if task not in self.heads:
            self.heads[task] = zero_shot_head(self.model, self.tokenizer, task, self.device)
        return self.heads[task]

    def load_vision(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the image encoder's weights by ``state`` (``vision_model.*`` names)."""
        inner = {k[len(VISION_PREFIX):]: v for k, v in state.items() if k.startswith(VISION_PREFIX)}
        missing, unexpected = self.model.vision_model.load_state_dict(inner, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            raise MergeError(f"vision tower does not fit the CLIP model: missing {missing[:3]}, unexpected {unexpected[:3]}")

    @torch.no_grad()
    def predictions(self, dataset: ImageDataset, transform=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted, true)`` labels of the loaded image encoder on ``dataset``.

        ``transform`` maps the normalised image embeddings before the head (data-based MDA's rotations).
        """
        head = self.head(dataset.task)
        preds, trues = [], []
        for pixels, labels in _batches(dataset, self.processor, self.batch_size, self.threads):
            pooled = self.model.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            emb = torch.nn.functional.normalize(self.model.visual_projection(pooled).float(), dim=-1)
            if transform is not None:
                emb = transform(emb)
            preds.append((emb @ head.T).argmax(-1).cpu())
            trues.append(labels)
        return torch.cat(preds), torch.cat(trues)

    def accuracy(self, dataset: ImageDataset, transform=None) -> float:
        pred, true = self.predictions(dataset, transform)
        return float((pred == true).float().mean())

    @torch.no_grad()
    def pixels(self, dataset: ImageDataset, limit: int | None = None) -> torch.Tensor:
        """Preprocessed images of ``dataset`` (the first ``limit``), as one CPU tensor: unlabeled inputs."""
        if limit is not None and len(dataset) > limit:
            dataset = dataset.subset(list(range(limit)))
        return torch.cat([p for p, _ in _batches(dataset, self.processor, self.batch_size, self.threads)])


class CLIPImageFeatures(torch.nn.Module):
    """CLIP's image embedding as a module, ``pixels -> normalised visual_projection(pooled)``.

    Its parameters are the vision tower's, named ``vision_model.*`` like the recipes' state
    dicts; the projection (never fine-tuned in the public checkpoints) is a buffer, so
    data-based merging learns coefficients for the vision tower only.
    """

    def __init__(self, clip_model):
        super().__init__()
        self.vision_model = clip_model.vision_model
        self.register_buffer("projection", clip_model.visual_projection.weight.detach().clone())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return torch.nn.functional.normalize(pooled @ self.projection.T.to(pooled.dtype), dim=-1).float()


def zero_shot_linear(evaluator: ZeroShotEvaluator, task: str) -> torch.nn.Linear:
    """The task's zero-shot head as a linear layer with CLIP's logit scale (the logits entropy-based methods see)."""
    head = evaluator.head(task).float().cpu()
    linear = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(evaluator.model.logit_scale.exp().float().cpu() * head)
    return linear.requires_grad_(False).eval()


def adaptation_problem(evaluator: ZeroShotEvaluator, finetuned: dict[str, str | Path], datasets: dict[str, ImageDataset],
                       unlabeled_per_task: int | None = None):
    """AdaMerging / MDA inputs from a recipe: vision towers, zero-shot heads, unlabeled test images."""
    from ..adaptation.problem import AdaptationProblem

    module = CLIPImageFeatures(evaluator.model)  # shares the evaluator's vision tower (no copy)
    projection = module.projection.cpu()
    base = {k: v.cpu() for k, v in evaluator.pretrained_vision.items()}
    base["projection"] = projection
    tuned = {}
    for task, path in finetuned.items():
        tuned[task] = {**vision_state(path), "projection": projection}
    heads = {t: zero_shot_linear(evaluator, t) for t in finetuned}
    unlabeled = {t: evaluator.pixels(datasets[t], unlabeled_per_task) for t in finetuned}
    return AdaptationProblem(module, base, tuned, heads, unlabeled)


# -- user CLIP models (mdamerge adapt) --------------------------------------------------
ZERO_SHOT_HEAD = "zero_shot_head.safetensors"


def user_clip_problem(cfg, unlabeled: dict, max_memory: int | None):
    """``mdamerge adapt`` on CLIP: the base's zero-shot heads from each model's ``classnames`` and
    ``templates``, the fine-tuned vision towers, unlabeled images (see :mod:`mdamerge.adaptation.user_run`)."""
    from ..adaptation.unlabeled import decode_image
    from ..adaptation.user_models import DEFAULT_TEMPLATES
    from ..adaptation.user_run import UserProblem, check_memory

    lacking = next((m.name for m in cfg.models if not m.classnames), None)
    if lacking:
        raise MergeError(f"model '{lacking}': a CLIP task needs 'classnames' (label order) for its zero-shot head")
    wrong = next((t for t, e in unlabeled.items() if e.kind != "image"), None)
    if wrong:
        raise MergeError(f"data of '{wrong}' holds texts ({unlabeled[wrong].source}); CLIP tasks need images")
    evaluator = ZeroShotEvaluator(cfg.base_model)
    for m in cfg.models:
        templates = m.templates or list(DEFAULT_TEMPLATES)
        evaluator.heads[m.name] = prompt_head(evaluator.model, evaluator.tokenizer, m.classnames,
                                              [[t.format(n) for t in templates] for n in m.classnames])
    check_memory(sum(v.numel() for v in evaluator.pretrained_vision.values()), len(cfg.models), max_memory)

    def dataset(task: str, examples) -> ImageDataset:
        what = f"an image of '{task}'"
        loaders = [lambda loader=loader: decode_image(loader, what) for loader in examples.items]
        return ImageDataset(task, [-1] * len(loaders), loaders, examples.source)  # labels unused: unlabeled

    problem = adaptation_problem(evaluator, {m.name: m.path for m in cfg.models},
                                 {t: dataset(t, e) for t, e in unlabeled.items()})
    labels = {m.name: {name: i for i, name in enumerate(m.classnames)} for m in cfg.models}

    def export(result, folder: Path) -> dict[str, bool]:
        return export_clip(result, folder, cfg, evaluator)

    return UserProblem(problem, "clip", lambda examples: evaluator.pixels(dataset("eval", examples)), labels,
                       {t: len(v) for t, v in labels.items()}, export)


def export_clip(result, folder: Path, cfg, evaluator: ZeroShotEvaluator) -> dict[str, bool]:
    """A ``CLIPModel`` folder with the merged vision tower, and per task its zero-shot head with the
    learned rotation folded in (``tasks/<task>/zero_shot_head.safetensors`` + ``config.json``)."""
    import json

    from safetensors.torch import save_file

    from transformers import CLIPModel

    from ..adaptation.user_run import save_backbone
    from ..io.classifiers import TASKS_DIR, task_folder_name

    save_backbone(folder, cfg.base_model, {k: v for k, v in result.state_dict.items() if k.startswith(VISION_PREFIX)},
                  CLIPModel)
    transforms = result.feature_transforms or {}
    scale = evaluator.model.logit_scale.exp().detach().float().cpu()
    for m in cfg.models:
        head = evaluator.head(m.name).detach().float().cpu()
        bias = torch.zeros(len(head))
        transform = transforms.get(m.name)
        if transform is not None:
            r = transform.matrix.detach().double().cpu()
            center = getattr(transform, "center", None)
            if center is not None:
                bias = (head.double() @ (center.double().cpu() - r @ center.double().cpu())).float()
            head = (head.double() @ r).float()
        target = folder / TASKS_DIR / task_folder_name(m.name)
        target.mkdir(parents=True)
        save_file({"weight": head.contiguous(), "bias": bias.contiguous(), "logit_scale": scale.reshape(())},
                  str(target / ZERO_SHOT_HEAD), metadata={"format": "pt"})
        labels = {"id2label": dict(enumerate(m.classnames)), "label2id": {n: i for i, n in enumerate(m.classnames)},
                  "templates": m.templates or None, "task": m.name}
        (target / "config.json").write_text(json.dumps(labels, indent=2) + "\n")
    return {m.name: True for m in cfg.models}


class ZeroShotClassifier(torch.nn.Module):
    """A merged CLIP image encoder with one task's zero-shot head: ``pixel_values -> logits``.

    CLIP's zero-shot path (pooled [CLS] -> ``visual_projection`` -> L2 normalisation -> cosine to
    the class embeddings, times the logit scale) is not what ``CLIPForImageClassification``
    computes (a linear layer on the mean of the patch tokens), so no ``AutoModelFor...`` class
    loads it exactly; this one does: ``ZeroShotClassifier.from_pretrained(OUT, task)``.
    """

    def __init__(self, clip_model, head: torch.Tensor, bias: torch.Tensor, logit_scale: torch.Tensor, id2label: dict):
        super().__init__()
        self.features = CLIPImageFeatures(clip_model)
        self.register_buffer("head", head)
        self.register_buffer("bias", bias)
        self.register_buffer("logit_scale", logit_scale)
        self.id2label = {int(k): v for k, v in id2label.items()}

    @classmethod
    def from_pretrained(cls, folder: str | Path, task: str) -> "ZeroShotClassifier":
        import json

        from safetensors.torch import load_file
        from transformers import CLIPModel

        from ..io.classifiers import TASKS_DIR, task_folder_name

        task_dir = Path(folder) / TASKS_DIR / task_folder_name(task)
        if not (task_dir / ZERO_SHOT_HEAD).is_file():
            raise MergeError(f"{folder} has no zero-shot head for task '{task}' ({task_dir / ZERO_SHOT_HEAD})")
        tensors = load_file(str(task_dir / ZERO_SHOT_HEAD))
        labels = json.loads((task_dir / "config.json").read_text())
        return cls(CLIPModel.from_pretrained(folder).eval(), tensors["weight"], tensors["bias"], tensors["logit_scale"],
                   labels["id2label"]).eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * (self.features(pixel_values) @ self.head.T + self.bias)
