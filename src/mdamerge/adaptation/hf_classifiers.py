"""Data-based merging of a user's Hugging Face classifiers (``AutoModelForSequenceClassification``,
``AutoModelForImageClassification``) against their plain pretrained base.

The merge problem (:class:`~mdamerge.adaptation.problem.AdaptationProblem`) is cut at the
**head's first linear layer** (the *boundary*): the features are that layer's input, the
shared backbone produces them, and each task's head is everything from the boundary on,
with the task's own weights. The cut is found by one dry run of the first fine-tune's
model, and is the same for every family whose head starts with a linear layer applied to
one vector per example:

* BERT, ALBERT, ViT, ...: ``classifier`` (Linear) on the pooled / [CLS] vector;
* RoBERTa, XLM-R, ELECTRA, ...: ``classifier.dense`` -> activation -> ``classifier.out_proj``;
* DistilBERT: ``pre_classifier`` -> ReLU -> ``classifier``; DeBERTa-v2: ``pooler.dense`` ...

Refused with one line: heads whose parameters act before that linear layer (their
features would depend on the head), and heads applied to every token (decoder
``score`` heads). Because the head begins with a linear map, a learned feature rotation
``f -> R f`` folds into it exactly: ``W f -> (W R) f`` (:func:`fold_rotation`).

Each task head runs the task's own head modules on a stub backbone whose output the
boundary hook replaces by the given features, so no architecture's head is re-implemented.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, MergeError
from ..textzoo.model import in_length_order  # the text zoo's chunking: both compute the same numbers

HEAD_KINDS = {"ForSequenceClassification": "text", "ForImageClassification": "image"}


class _Captured(Exception):
    """Raised by the boundary hook to stop a forward once the features are taken."""


def classifier_kind(config: Mapping, label: str) -> str:
    """``"text"`` or ``"image"`` from a fine-tune's ``architectures``; one line when it is no classifier."""
    for arch in config.get("architectures") or []:
        for suffix, kind in HEAD_KINDS.items():
            if str(arch).endswith(suffix):
                return kind
    raise CheckpointError(f"{label}: config.json architectures {config.get('architectures')} are not a sequence or image "
                          "classifier (*ForSequenceClassification / *ForImageClassification); `mdamerge adapt` learns "
                          "through each task's classification head")


def auto_class(kind: str):
    import transformers

    return transformers.AutoModelForSequenceClassification if kind == "text" else transformers.AutoModelForImageClassification


def build_model(folder: Path, kind: str, meta: bool = False):
    """The fine-tune's architecture from its config, randomly initialised (on the meta device with ``meta``)."""
    from transformers import AutoConfig

    from ..textzoo.model import quiet_transformers

    with quiet_transformers():
        config = AutoConfig.from_pretrained(folder)  # local files only; never remote code
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = auto_class(kind).from_config(config)
    return model.eval()


def backbone_attribute(model) -> str:
    """The attribute holding the backbone (``model.base_model_prefix``: ``bert``, ``roberta``, ``vit``, ...)."""
    name = getattr(model, "base_model_prefix", "")
    if not name or not isinstance(getattr(model, name, None), nn.Module):
        raise CheckpointError(f"{type(model).__name__} has no backbone sub-module '{name}'")
    return name


class BackboneStub(nn.Module):
    """Stands in for the backbone inside a head-only model: returns zeros shaped like the real
    backbone's output (one position for sequences); the boundary hook then substitutes the features."""

    def __init__(self, output_type, shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.output_type = output_type
        self.shapes = shapes
        self.batch = 1
        self.register_buffer("anchor", torch.zeros(()), persistent=False)  # follows .to(device)

    def forward(self, *args, **kwargs):
        zeros = {k: torch.zeros(self.batch, *shape, device=self.anchor.device) for k, shape in self.shapes.items()}
        return self.output_type(**zeros)


@dataclass
class HeadLayout:
    """Where a classifier's head starts (found by :func:`find_head_layout`)."""

    backbone: str  # attribute, e.g. "bert"
    boundary: str  # module name of the head's first linear layer, e.g. "classifier" or "classifier.dense"
    input_names: tuple[str, ...]  # forward keywords the inputs tensor feeds
    stub: BackboneStub


def find_head_layout(model, sample: dict[str, torch.Tensor], label: str) -> HeadLayout:
    """Run ``model`` once on ``sample`` and find the head's first linear layer and the backbone's output shape."""
    backbone_name = backbone_attribute(model)
    backbone = getattr(model, backbone_name)
    order: list[str] = []
    captured: dict[str, Any] = {}
    handles = [backbone.register_forward_hook(lambda m, a, out: captured.setdefault("output", out))]
    for name, module in model.named_modules():
        if not name or name == backbone_name or name.startswith(backbone_name + "."):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_pre_hook(_recorder(order, name, captured)))
    try:
        with torch.no_grad():
            model(**sample)
    finally:
        for handle in handles:
            handle.remove()
    first_linear = next((n for n in order if isinstance(model.get_submodule(n), nn.Linear)), None)
    if first_linear is None:
        raise CheckpointError(f"{label}: its head ({', '.join(order) or 'none'}) has no linear layer to cut at")
    before = order[:order.index(first_linear)]
    if before:
        raise CheckpointError(f"{label}: head module '{before[0]}' acts before its first linear layer '{first_linear}'; "
                              "`mdamerge adapt` needs heads that start with a linear layer")
    features = captured[first_linear]
    if features.ndim != 2:
        raise CheckpointError(f"{label}: its head '{first_linear}' is applied to every token (input shape "
                              f"{tuple(features.shape)}), as decoder classifiers do; not supported by `mdamerge adapt`")
    output = captured["output"]
    shapes = {k: (1, *v.shape[2:]) if v.ndim >= 3 else tuple(v.shape[1:])
              for k, v in output.items() if torch.is_tensor(v) and v.is_floating_point()}
    return HeadLayout(backbone_name, first_linear, tuple(sample), BackboneStub(type(output), shapes))


def _recorder(order: list[str], name: str, captured: dict):
    def hook(module, args):
        order.append(name)
        if args and torch.is_tensor(args[0]):
            captured.setdefault(name, args[0].detach())
    return hook


def model_inputs(model, kind: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward keywords of ``model`` for a stacked inputs tensor (see :class:`ClassifierFeatures`)."""
    if kind == "image":
        return {"pixel_values": x}
    mask = x[:, 1]
    width = max(1, int(mask.sum(1).max()))  # trim the padding every example of the batch shares
    inputs = {"input_ids": x[:, 0, :width], "attention_mask": mask[:, :width]}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["token_type_ids"] = x[:, 2, :width]
    return inputs


class ClassifierFeatures(nn.Module):
    """Backbone features of a classifier: its forward up to the input of the head's first linear layer.

    The backbone is registered under its own attribute name, so the parameter names are
    the fine-tunes' (``bert.embeddings...``); ``torch.func.functional_call`` swaps merged
    weights into it. ``forward(x)`` takes the stacked inputs tensor of :func:`encode_texts`
    (``(N, 3, L)``: ids, attention mask, token types) or pixel values ``(N, C, H, W)``.
    """

    def __init__(self, model, layout: HeadLayout, kind: str):
        super().__init__()
        self.add_module(layout.backbone, getattr(model, layout.backbone))
        object.__setattr__(self, "_model", model)  # not a sub-module: its head's weights are never merged
        self.layout = layout
        self.kind = kind

    def _apply(self, fn, *args, **kwargs):
        self._model._apply(fn, *args, **kwargs)  # the head modules follow the backbone's device
        return super()._apply(fn, *args, **kwargs)

    @property
    def feature_dim(self) -> int:
        return self._model.get_submodule(self.layout.boundary).in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lengths = x[:, 1].sum(1) if self.kind == "text" else torch.zeros(len(x))
        return in_length_order(x, lengths, self._features)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        captured = []

        def hook(module, args):
            captured.append(args[0])
            raise _Captured

        handle = self._model.get_submodule(self.layout.boundary).register_forward_pre_hook(hook)
        try:
            self._model(**model_inputs(self._model, self.kind, x))
        except _Captured:
            pass
        finally:
            handle.remove()
        return captured[0].float()


class TransplantedHead(nn.Module):
    """One task's head, features -> logits: the task's own head modules, run on a stub backbone."""

    def __init__(self, model, layout: HeadLayout):
        super().__init__()
        setattr(model, layout.backbone, _fresh_stub(layout.stub))
        self.model = model
        self.layout = layout

    @property
    def weight(self) -> torch.Tensor:
        """Class directions in feature space (``K x d``), which MDA's ETF prototypes are matched to: the
        Jacobian of the logits at ``f = 0`` -- the weight itself for a linear head, ``W_out diag(tanh'(b)) W_dense``
        for a dense-tanh-linear one."""
        boundary = self.model.get_submodule(self.layout.boundary)
        zero = torch.zeros(1, boundary.in_features, device=boundary.weight.device)
        with torch.enable_grad():
            jacobian = torch.autograd.functional.jacobian(lambda f: self(f)[0], zero)
        return jacobian[:, 0, :].detach()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        stub = getattr(self.model, self.layout.backbone)
        stub.batch = len(features)
        boundary = self.model.get_submodule(self.layout.boundary)
        handle = boundary.register_forward_pre_hook(lambda m, args: (features.to(boundary.weight.dtype), *args[1:]))
        name = self.layout.input_names[0]
        dummy = torch.zeros(len(features), 1, device=features.device, dtype=torch.long if name == "input_ids" else None)
        try:
            return self.model(**{name: dummy}).logits
        finally:
            handle.remove()


def _fresh_stub(stub: BackboneStub) -> BackboneStub:
    return BackboneStub(stub.output_type, dict(stub.shapes))


def head_model(folder: Path, kind: str, layout: HeadLayout, head: Mapping[str, torch.Tensor], label: str) -> TransplantedHead:
    """The task's head (its own config: number of labels) with its weights, on a stub backbone."""
    model = build_model(folder, kind, meta=True)
    setattr(model, layout.backbone, nn.Identity())
    model.to_empty(device="cpu")
    own = dict(model.state_dict())
    missing = [n for n in own if n not in head]
    if missing:
        raise CheckpointError(f"{label}: head tensor '{missing[0]}' is missing from the checkpoint")
    shapes = [n for n in own if tuple(own[n].shape) != tuple(head[n].shape)]
    if shapes:
        raise CheckpointError(f"{label}: head tensor '{shapes[0]}' has shape {tuple(head[shapes[0]].shape)}, its config "
                              f"expects {tuple(own[shapes[0]].shape)}")
    model.load_state_dict({n: head[n] for n in own}, strict=True)
    return TransplantedHead(model.eval().requires_grad_(False), layout)


def fold_rotation(head: Mapping[str, torch.Tensor], boundary: str, rotation: torch.Tensor,
                  center: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """The head tensors with ``f -> R f`` (or ``R (f - c) + c``) folded into its first linear layer.

    ``W (R f) + b = (W R) f + b``; about a center, the bias also takes ``W (c - R c)``.
    Returns ``(tensors, exact)``: not exact only when a center needs a bias the layer lacks.
    """
    out = dict(head)
    weight = head[f"{boundary}.weight"]
    r = rotation.to(torch.float64)
    out[f"{boundary}.weight"] = (weight.double() @ r).to(weight.dtype)
    if center is None:
        return out, True
    shift = weight.double() @ (center.double() - r @ center.double())
    bias_name = f"{boundary}.bias"
    if bias_name not in head:
        return out, False
    out[bias_name] = (head[bias_name].double() + shift).to(head[bias_name].dtype)
    return out, True


@dataclass
class LoadedClassifier:
    """One fine-tuned classifier's tensors (transformers' module names), split at the backbone."""

    task: str
    folder: Path
    config: dict
    prefix: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]


def load_pretrained(folder: Path, auto, label: str):
    """``auto.from_pretrained(folder)`` (local files; safetensors first, torch files with ``weights_only``;
    never remote code) and the names of the tensors it had to initialise (``missing``)."""
    from ..textzoo.model import quiet_transformers

    with quiet_transformers():
        try:
            model, info = auto.from_pretrained(folder, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{label}: cannot load {folder}: {str(exc).strip().splitlines()[0]}") from None
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        first = mismatched[0]
        raise CheckpointError(f"{label} ({folder}): tensor {first[0] if isinstance(first, tuple) else first} does not "
                              "fit its config's shape")
    return model.eval(), set(info.get("missing_keys") or [])


def load_classifier(task: str, folder: Path, config: dict, kind: str, backbone_attr: str) -> LoadedClassifier:
    """A fine-tune as transformers loads it (renamed legacy tensor names included), split at ``backbone_attr``;
    one line naming the first tensor its checkpoint lacks."""
    model, missing = load_pretrained(folder, auto_class(kind), f"fine-tuned model '{task}'")
    if missing:
        first = sorted(missing)[0]
        raise CheckpointError(f"fine-tuned model '{task}' ({folder}) lacks tensor '{first}'"
                              + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    prefix = backbone_attr + "."
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return LoadedClassifier(task, Path(folder), config, prefix, {k: v for k, v in state.items() if k.startswith(prefix)},
                            {k: v for k, v in state.items() if not k.startswith(prefix)})


def base_backbone(base_folder: Path, prefix: str, names: Sequence[str], buffers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The pretrained ``AutoModel``'s tensors under the fine-tunes' names (``prefix + name``): every parameter
    in ``names`` (one line naming the first the base lacks) and the ``buffers`` it stores."""
    import transformers

    model, missing = load_pretrained(base_folder, transformers.AutoModel, "base model")
    state = model.state_dict()
    out = {}
    for name in [*names, *buffers]:
        bare = name[len(prefix):]
        if bare in state and bare not in missing:
            out[name] = state[bare].detach()
        elif name in names:
            raise CheckpointError(f"base model {base_folder} lacks tensor '{bare}' (the fine-tunes' '{name}')")
    return out


def encode_texts(tokenizer, texts: Sequence[tuple[str, ...]], max_length: int) -> torch.Tensor:
    """``(N, 3, max_length)`` int64: token ids, attention mask and token types of single texts or pairs."""
    if not texts:
        raise MergeError("no texts to encode")
    pair = len(texts[0]) == 2
    enc = tokenizer([t[0] for t in texts], [t[1] for t in texts] if pair else None, truncation=True,
                    max_length=max_length, padding="max_length", return_tensors="pt")
    types = enc.get("token_type_ids")
    if types is None:
        types = torch.zeros_like(enc["input_ids"])
    return torch.stack([enc["input_ids"], enc["attention_mask"], types], dim=1).long()


def memory_estimate(num_parameters: int, tasks: int) -> int:
    """Bytes the layer-wise search holds in float32: the T fine-tuned backbones as read, the T stacked
    task vectors, the pretrained anchor and base, and the merged weights of a step (2T + 3 copies)."""
    return 4 * num_parameters * (2 * tasks + 3)


def available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
