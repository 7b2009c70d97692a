"""Running a user adapt config: build the problem from Hugging Face classifiers (or CLIP), learn,
evaluate on the named evaluation splits, and write a folder that is usable as it is.

Output folder (appears atomically)::

    config.json, model.safetensors, tokenizer files   the merged backbone: AutoModel (CLIP: a CLIPModel
                                                      with the merged vision tower, pretrained text tower)
    tasks/<task>/                                     per task a classifier folder: AutoModelFor...Classification
                                                      with the task's config (id2label) and head, the learned
                                                      rotation folded into the head (CLIP: zero_shot_head.safetensors)
    feature_transforms/rotations.safetensors          the rotations themselves (data-based MDA)
    adaptation.json                                   settings, coefficients, loss per step, accuracies, timings
    adapt_config.yaml, README.md
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch.func import functional_call

from ..errors import MergeError, warn
from ..io.classifiers import TASKS_DIR, input_files, read_config, task_folder_name
from ..io.writer import copy_non_weight_files, copy_planned_files
from .hf_classifiers import (ClassifierFeatures, available_memory, backbone_attribute, base_backbone, build_model,
                             classifier_kind, encode_texts, find_head_layout, fold_rotation, head_model, load_classifier,
                             load_pretrained, memory_estimate, model_inputs)
from .problem import AdaptationProblem
from .unlabeled import Examples, decode_image, label_indices
from .user_models import UserAdaptConfig, write_json

EVAL_BATCH = 500  # as the zoo evaluates: with the same chunking inside, the same numbers


@dataclass
class UserProblem:
    """An :class:`AdaptationProblem` from user files, with what evaluation and export need."""

    problem: AdaptationProblem
    kind: str  # "text", "image" or "clip"
    encode: Callable[[Examples], torch.Tensor]
    labels: dict[str, dict[str, int]]  # task -> label2id
    num_labels: dict[str, int]
    export: Callable[[Any, Path], dict[str, bool]]  # (result, folder) -> task -> rotation folded exactly
    extra: dict[str, Any] = field(default_factory=dict)


def build_user_problem(cfg: UserAdaptConfig, unlabeled: dict[str, Examples], max_memory: int | None) -> UserProblem:
    """The problem of ``cfg``: CLIP when the base is a ``CLIPModel``, else Hugging Face classifiers."""
    base_config = read_config(cfg.base_model, "base model")
    if base_config.get("model_type") == "clip":
        from ..hf.clip import user_clip_problem

        return user_clip_problem(cfg, unlabeled, max_memory)
    return classifier_problem(cfg, unlabeled, base_config, max_memory)


def check_memory(num_parameters: int, tasks: int, max_memory: int | None) -> int:
    """Refuse, in one line, a search whose float32 copies exceed ``max_memory`` (default: available RAM)."""
    need = memory_estimate(num_parameters, tasks)
    budget = max_memory if max_memory is not None else available_memory()
    if budget is not None and need > budget:
        raise MergeError(f"the search holds {2 * tasks + 3} float32 copies of the {num_parameters / 1e6:.0f}M-parameter "
                         f"backbone ({tasks} tasks): about {need / 2**30:.1f} GiB, more than the {budget / 2**30:.1f} GiB "
                         "allowed (--max-memory, default: available RAM); merge fewer tasks or use a larger machine")
    return need


def classifier_problem(cfg: UserAdaptConfig, unlabeled: dict[str, Examples], base_config: dict,
                       max_memory: int | None) -> UserProblem:
    """Backbone features, per-task heads and encoded unlabeled inputs from classification fine-tunes."""
    configs = {m.name: read_config(m.path, f"fine-tuned model '{m.name}'") for m in cfg.models}
    kinds = {m.name: classifier_kind(configs[m.name], f"fine-tuned model '{m.name}' ({m.path})") for m in cfg.models}
    if len(set(kinds.values())) > 1:
        raise MergeError("the fine-tunes mix text and image classifiers: " + ", ".join(f"{t}: {k}" for t, k in kinds.items()))
    first = cfg.models[0]
    other = next((m.name for m in cfg.models if configs[m.name].get("model_type") != configs[first.name].get("model_type")), None)
    if other:  # before any weights are read
        raise MergeError(f"fine-tuned model '{other}' is a {configs[other].get('model_type')} classifier, "
                         f"'{first.name}' a {configs[first.name].get('model_type')} one: they cannot share a backbone")
    kind = kinds[first.name]
    data_kind = "image" if kind == "image" else "text"
    wrong = next((t for t, e in unlabeled.items() if e.kind != data_kind), None)
    if wrong:
        raise MergeError(f"data of '{wrong}' holds {unlabeled[wrong].kind}s ({unlabeled[wrong].source}), but the models "
                         f"are {kind} classifiers")
    shape_only = build_model(first.path, kind, meta=True)  # the size, before any weights are read
    check_memory(sum(p.numel() for p in getattr(shape_only, backbone_attribute(shape_only)).parameters()),
                 len(cfg.models), max_memory)
    model = build_model(first.path, kind)
    attr = backbone_attribute(model)
    encode = _encoder(cfg, kind, first.path)
    sample = encode(unlabeled[first.name].sample(2, cfg.seed))
    layout = find_head_layout(model, model_inputs(model, kind, sample), f"fine-tuned model '{first.name}'")
    module = ClassifierFeatures(model, layout, kind)
    names = [n for n, p in module.named_parameters() if p.is_floating_point()]
    base = base_backbone(cfg.base_model, attr + ".", names, [n for n, _ in module.named_buffers()])
    loaded = {m.name: load_classifier(m.name, m.path, configs[m.name], kind, attr) for m in cfg.models}
    heads = {t: head_model(c.folder, kind, layout, c.head, f"fine-tuned model '{t}'") for t, c in loaded.items()}
    inputs = {t: encode(e) for t, e in unlabeled.items()}
    problem = AdaptationProblem(module, base, {t: c.backbone for t, c in loaded.items()}, heads, inputs)
    labels = {t: _label2id(c.config) for t, c in loaded.items()}
    with torch.no_grad():
        num_labels = {t: int(h(torch.zeros(1, module.feature_dim)).shape[-1]) for t, h in heads.items()}

    def export(result, folder: Path) -> dict[str, bool]:
        return export_classifiers(result, folder, cfg, loaded, layout.boundary, attr + ".", kind)

    return UserProblem(problem, kind, encode, labels, num_labels, export, {"boundary": layout.boundary, "prefix": attr + "."})


def _encoder(cfg: UserAdaptConfig, kind: str, fine_tune: Path) -> Callable[[Examples], torch.Tensor]:
    """Examples -> model inputs, with the base's tokenizer / image processor (else the first fine-tune's)."""
    from ..textzoo.model import quiet_transformers

    source = next((f for f in (cfg.base_model, fine_tune) if _has_input_files(f, kind)), None)
    if source is None:
        what = "tokenizer" if kind == "text" else "image processor (preprocessor_config.json)"
        raise MergeError(f"neither the base model {cfg.base_model} nor {fine_tune} has a {what}")
    with quiet_transformers():
        if kind == "text":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source)
            return lambda examples: encode_texts(tokenizer, examples.items, cfg.max_length)
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(source)

    def pixels(examples: Examples) -> torch.Tensor:
        what = f"an image of {examples.source}"
        images = [decode_image(loader, what) for loader in examples.items]
        return torch.cat([processor(images=images[i:i + EVAL_BATCH], return_tensors="pt")["pixel_values"]
                          for i in range(0, len(images), EVAL_BATCH)])

    return pixels


def _has_input_files(folder: Path, kind: str) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt") if kind == "text" else ("preprocessor_config.json",)
    return any((Path(folder) / n).is_file() for n in names)


def _label2id(config: dict) -> dict[str, int]:
    id2label = config.get("id2label") or {}
    return {str(v): int(k) for k, v in id2label.items() if str(k).lstrip("-").isdigit()}


# -- evaluation ---------------------------------------------------------------------------
@torch.no_grad()
def predict(problem: AdaptationProblem, state: dict[str, torch.Tensor], task: str, inputs: torch.Tensor,
            transform=None, device: str = "cpu") -> torch.Tensor:
    """Predicted classes of ``task`` for ``inputs`` with backbone weights ``state`` (and an optional feature transform)."""
    module = problem.module.to(device).eval()
    head = problem.heads[task].to(device).eval()
    params = {k: v.to(device) for k, v in state.items()}
    preds = []
    for start in range(0, len(inputs), EVAL_BATCH):
        x = inputs[start:start + EVAL_BATCH].to(device)
        features = functional_call(module, params, (x.float() if x.is_floating_point() else x,), strict=False)
        if transform is not None:
            features = transform(features)
        preds.append(head(features).argmax(-1).cpu())
    return torch.cat(preds)


def evaluate_rows(user: UserProblem, evaluation: dict[str, Examples], result, device: str) -> dict[str, dict[str, float]]:
    """Accuracy per task of the pretrained backbone, each fine-tune on its own task, and the merged result."""
    problem = user.problem
    rows: dict[str, dict[str, float]] = {"pretrained": {}, "finetuned": {}, "merged": {}}
    transforms = result.feature_transforms or {}
    for task, examples in evaluation.items():
        labels = torch.tensor(label_indices(examples.labels, user.labels[task], user.num_labels[task],
                                            f"eval split of '{task}'"))
        inputs = user.encode(examples)
        states = {"pretrained": problem.base, "finetuned": {**problem.base, **problem.finetuned[task]},
                  "merged": result.state_dict}
        for row, state in states.items():
            transform = transforms.get(task) if row == "merged" else None
            pred = predict(problem, state, task, inputs, transform, device)
            rows[row][task] = float((pred == labels).float().mean())
    return rows


def accuracy_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per model, one column per task, the average and the normalised average."""
    tasks = list(rows["merged"])
    lines = ["| model | " + " | ".join(tasks) + " | avg | normalised |", "|---" * (len(tasks) + 3) + "|"]
    from ..evaluation.evaluate import average, normalized

    tuned = rows.get("finetuned", {})
    for row, acc in rows.items():
        norm = average(normalized(acc, tuned))
        lines.append(f"| {row} | " + " | ".join(f"{100 * acc[t]:.1f}" for t in tasks)
                     + f" | {100 * average(acc):.1f} | {100 * norm:.1f} |")
    return "\n".join(lines)


# -- export -------------------------------------------------------------------------------
def export_classifiers(result, folder: Path, cfg: UserAdaptConfig, loaded: dict, boundary: str, prefix: str,
                       kind: str) -> dict[str, bool]:
    """Write the merged backbone as the base's AutoModel and one classifier folder per task (saved by
    transformers, so names and sharding are its own); returns, per task, whether its rotation was
    folded into the head exactly."""
    merged = result.state_dict
    save_backbone(folder, cfg.base_model, {k[len(prefix):]: v for k, v in merged.items() if k.startswith(prefix)})
    transforms = result.feature_transforms or {}
    exact = {}
    for task, clf in loaded.items():
        head, exact[task] = _folded_head(clf.head, boundary, transforms.get(task))
        model = build_model(clf.folder, kind)
        model.load_state_dict({**{k: merged.get(k, v) for k, v in clf.backbone.items()}, **head}, strict=True)
        target = folder / TASKS_DIR / task_folder_name(task)
        _save_pretrained(model, target)
        copy_planned_files(input_files([clf.folder, cfg.base_model]), target)
    return exact


def _folded_head(head: dict, boundary: str, transform) -> tuple[dict, bool]:
    if transform is None:
        return dict(head), True
    center = getattr(transform, "center", None)
    return fold_rotation(head, boundary, transform.matrix.detach().cpu(), None if center is None else center.cpu())


def save_backbone(folder: Path, base_folder: Path, merged: dict[str, torch.Tensor], auto=None) -> None:
    """The base model as ``auto`` (default AutoModel) loads it, with the merged tensors in place, saved by
    transformers, plus the base's other files (tokenizer, sentence-transformers modules, ...)."""
    import transformers

    model, _ = load_pretrained(base_folder, auto or transformers.AutoModel, "base model")
    own = model.state_dict()
    unknown = [k for k in merged if k not in own]
    if unknown:
        raise MergeError(f"internal: merged tensor '{unknown[0]}' is not a tensor of the base model")
    model.load_state_dict(merged, strict=False)
    copy_non_weight_files(base_folder, folder)
    _save_pretrained(model, folder)


def _save_pretrained(model, folder: Path) -> None:
    from ..textzoo.model import quiet_transformers

    with quiet_transformers():
        model.save_pretrained(folder)


def write_user_output(user: UserProblem, result, cfg: UserAdaptConfig, tmp: Path, info: dict) -> dict[str, bool]:
    """Everything of the output folder (see the module docstring) into ``tmp``."""
    from .output import TRANSFORMS_NAME, transform_tensors

    exact = user.export(result, tmp)
    inexact = [t for t, ok in exact.items() if not ok]
    if inexact:
        warn(f"the rotation of task '{inexact[0]}' is about a center its head has no bias for: its task folder holds "
             "the head without it; apply feature_transforms/rotations.safetensors for the learned model")
    tensors = transform_tensors(result)
    if tensors:
        from safetensors.torch import save_file

        (tmp / TRANSFORMS_NAME).parent.mkdir(exist_ok=True)
        save_file(tensors, str(tmp / TRANSFORMS_NAME), metadata={"format": "pt", "convention": "f -> R f"})
    write_json(tmp / "adaptation.json", {**result.info, **info, "rotation_folded_exactly": exact})
    (tmp / "adapt_config.yaml").write_text(yaml.safe_dump(_resolved(cfg), sort_keys=False))
    (tmp / "README.md").write_text(_model_card(cfg, info))
    return exact


def _resolved(cfg: UserAdaptConfig) -> dict:
    data = dict(cfg.source)
    data["base_model"] = str(cfg.base_model.resolve())
    models = []
    for m, given in zip(cfg.models, cfg.source["models"]):
        entry = dict(given)
        entry.update(path=str(m.path.resolve()), name=m.name)
        entry["data"] = {**(given["data"] if isinstance(given["data"], dict) else {}), "path": str(m.data.path.resolve())}
        if m.eval is not None:
            entry["eval"] = {**given["eval"], "path": str(m.eval.path.resolve())} if isinstance(given["eval"], dict) \
                else str(m.eval.path.resolve())
        models.append(entry)
    data["models"] = models
    return data


def _model_card(cfg: UserAdaptConfig, info: dict) -> str:
    tasks = ", ".join(f"`{m.name}`" for m in cfg.models)
    table = info.get("accuracy_table")
    return (f"# Merged with mdamerge adapt ({cfg.method})\n\n"
            f"Pretrained model: `{cfg.base_model}`; tasks: {tasks}.\n\n"
            "- The folder itself is the merged backbone (loads like the base model).\n"
            f"- `{TASKS_DIR}/<task>/` is each task's classifier on the merged backbone (its own head and labels; "
            "learned feature rotations folded into the head).\n"
            "- `adaptation.json` holds the learned coefficients, the loss per step and the accuracies.\n"
            + (f"\n## Accuracy on the evaluation splits (%)\n\n{table}\n" if table else ""))


def run_user_adapt(cfg: UserAdaptConfig, out_dir: str | Path, *, device: str, overwrite: bool, evaluate: bool,
                   max_memory: int | None, progress: bool = True, echo=print) -> dict:
    """Read, build, learn, evaluate and write: the whole of ``mdamerge adapt`` on user models."""
    from ..io.writer import OutputFolder
    from .registry import ADAPTIVE_METHODS
    from .user_models import read_task_data

    start = time.perf_counter()
    unlabeled, evaluation = read_task_data(cfg)
    user = build_user_problem(cfg, unlabeled, max_memory)
    setup = time.perf_counter() - start
    echo(f"{cfg.method}: {len(cfg.models)} tasks ({', '.join(f'{t}: {len(e)} inputs' for t, e in unlabeled.items())}), "
         f"{user.kind} models, setup {setup:.1f}s")
    result = ADAPTIVE_METHODS[cfg.method].on_problem(user.problem, device=device, seed=cfg.seed,
                                                     progress=progress, **cfg.parameters)
    info: dict[str, Any] = {"setup_seconds": round(setup, 2), "kind": user.kind, **user.extra}
    if evaluate and evaluation:
        rows = evaluate_rows(user, evaluation, result, device)
        info["accuracy"] = rows
        info["accuracy_table"] = accuracy_table(rows)
    with OutputFolder(out_dir, overwrite=overwrite) as tmp:
        write_user_output(user, result, cfg, tmp, info)
    info["seconds"] = round(time.perf_counter() - start, 2)
    return {**result.info, **info}
