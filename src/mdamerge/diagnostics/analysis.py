"""``mdamerge analyze``: task-vector geometry and Delta_ETF of checkpoints, written as a
report folder (plots, ``report.md``, self-contained ``report.html``, ``metrics.json``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import MergeError
from ..engine.prefixes import align_prefixes
from ..io.checkpoint import Checkpoint
from ..io.writer import OutputFolder, check_output_folder
from . import plots
from .alignment_angles import STAGES, alignment_angles, summarize
from .cka import block_names, cka_by_layer, layer_features
from .etf import class_means, delta_etf, extract_features, prototype_misalignment
from .report import Report
from .task_vectors import TaskVectorReport, analyze_task_vectors, naming_tensor


@dataclass
class EtfRow:
    """Delta_ETF (and prototype misalignment) of one model on one task."""

    model: str
    role: str  # pretrained | fine-tuned | merged
    task: str
    delta_etf: float
    misalignment: float | None


@dataclass
class AnalysisInputs:
    """What to analyse. ``tasks`` (one per fine-tuned model, in order) enables Delta_ETF."""

    base: Path
    models: list[Path]
    merged: list[Path] = field(default_factory=list)
    labels: list[str] | None = None
    tasks: list[str] | None = None
    rank_fraction: float | None = None
    max_layers: int | None = None
    max_samples: int = 2000
    device: str = "cpu"

    def model_labels(self) -> list[str]:
        if self.labels:
            return list(self.labels)
        if self.tasks:
            return list(self.tasks)
        return unique_labels(self.models)


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, made unique with their index where two coincide."""
    names = [Path(p).name or str(p) for p in paths]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def merged_alignment(base: Checkpoint, merged: Sequence[Checkpoint], models: Sequence[Checkpoint]) -> torch.Tensor:
    """Cosine between each merged model's task vector and each fine-tuned task vector (all float tensors)."""
    left = len(merged)
    gram = torch.zeros(left + len(models), left + len(models), dtype=torch.float64)
    for name in base.keys():
        w0 = base.get(name)
        if not w0.is_floating_point():
            continue
        deltas = [c.get(name).double() - w0.double() for c in (*merged, *models)]
        flat = torch.stack([d.reshape(-1) for d in deltas])
        gram += flat @ flat.T
    norms = gram.diag().sqrt()
    cos = gram / torch.outer(norms, norms).clamp_min(1e-300)
    return cos[:left, left:].float()


def task_etf_data(tasks: Sequence[str], zoo, max_samples: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``task -> (test inputs, labels, head weight)``, the first ``max_samples`` test examples."""
    data = {}
    for t in tasks:
        x, y = zoo.task_data(t).test
        data[t] = (x[:max_samples], y[:max_samples], zoo.head(t).weight.detach().cpu())
    return data


def model_etf(model: Callable[[torch.Tensor], torch.Tensor], data, tasks: Sequence[str], transforms=None,
              device="cpu") -> list[tuple[str, float, float | None]]:
    """``(task, Delta_ETF, prototype misalignment)`` of one backbone on each task's data."""
    out = []
    for t in tasks:
        x, y, head_weight = data[t]
        num_classes = head_weight.shape[0]
        transform = (transforms or {}).get(t)
        feats = extract_features(model, x, device=device, transform=transform)
        means = class_means(feats, y, num_classes)
        misalign = prototype_misalignment(means, head_weight) if means.shape[0] == num_classes else None
        out.append((t, delta_etf(means), misalign))
    return out


def delta_etf_rows(inputs: AnalysisInputs, zoo, labels: list[str],
                   progress: Callable[[str], None] = lambda _: None) -> list[EtfRow]:
    """Delta_ETF of the pretrained, fine-tuned and merged TinyViT models on the tasks' test sets."""
    from ..adaptation.output import load_feature_transforms

    tasks = inputs.tasks or []
    data = task_etf_data(tasks, zoo, inputs.max_samples)
    plan: list[tuple[str, str, Path, list[str]]] = [("pretrained", "pretrained", inputs.base, tasks)]
    plan += [(label, "fine-tuned", path, [task]) for label, path, task in zip(labels, inputs.models, tasks)]
    plan += [(label, "merged", path, tasks) for label, path in zip(unique_labels(inputs.merged), inputs.merged)]
    rows = []
    for label, role, folder, its_tasks in plan:
        progress(f"Delta_ETF: {label}")
        model = zoo.load_backbone(folder).to(inputs.device).eval()
        transforms = load_feature_transforms(folder)
        for task, value, misalign in model_etf(model, data, its_tasks, transforms, inputs.device):
            rows.append(EtfRow(label, role, task, value, misalign))
    return rows


@dataclass
class CkaRow:
    """Linear CKA, layer by layer, between one model and the fine-tuned model of one task, on that task's inputs."""

    model: str
    role: str  # pretrained | merged
    task: str
    cka: dict[str, float]


def cka_rows(inputs: AnalysisInputs, zoo, labels: list[str], max_samples: int = 1000,
             progress: Callable[[str], None] = lambda _: None) -> list[CkaRow]:
    """CKA of the pretrained and each merged model against each task's fine-tuned model (the zoo's backbones)."""
    tasks = inputs.tasks or []
    data = {t: zoo.task_data(t).test[0][:max_samples] for t in tasks}
    load = lambda folder: zoo.load_backbone(folder).to(inputs.device).eval()  # noqa: E731
    reference = {}
    for task, folder in zip(tasks, inputs.models):
        model = load(folder)
        reference[task] = layer_features(model, data[task], block_names(model), device=inputs.device)
    rows = []
    compared = [("pretrained", "pretrained", inputs.base)]
    compared += [(label, "merged", path) for label, path in zip(unique_labels(inputs.merged), inputs.merged)]
    for label, role, folder in compared:
        progress(f"CKA: {label}")
        model = load(folder)
        for task in tasks:
            feats = layer_features(model, data[task], block_names(model), device=inputs.device)
            rows.append(CkaRow(label, role, task, cka_by_layer(feats, reference[task])))
    return rows


def layer_alignment_angles(base: Checkpoint, models: Sequence[Checkpoint], rank_fraction: float | None,
                           max_layers: int | None) -> list[dict[str, Any]]:
    """Per 2-D layer: summaries of the task-subspace angles before alignment, after TSV-M's and after MDA's."""
    from .task_vectors import default_k

    out = []
    for name in base.keys():
        w0 = base.get(name)
        if w0.ndim != 2 or not w0.is_floating_point() or w0.numel() == 0:  # a 0 x 64 tensor has no directions
            continue
        if max_layers is not None and len(out) >= max_layers:
            break
        deltas = [m.get(name).double() - w0.double() for m in models]
        k = default_k(tuple(w0.shape), len(models), rank_fraction)
        with naming_tensor(name):
            stages = alignment_angles(deltas, k)
        out.append({"name": name, "k": k, **{
            stage: {"subspace": summarize(stages[stage].all_subspace()),
                    "directions": summarize(stages[stage].directions),
                    "subspace_angles": stages[stage].all_subspace().tolist()}
            for stage in STAGES}})
    return out


def mean_by_model(rows: Sequence[EtfRow]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r.model, []).append(r.delta_etf)
    return {k: sum(v) / len(v) for k, v in out.items()}


def _angle_cell(value: float) -> float | str:
    """NaN (no pair of non-zero task vectors in the layer) shown as '-'."""
    return "-" if math.isnan(value) else value


def build_report(inputs: AnalysisInputs, tv: TaskVectorReport, alignment: torch.Tensor | None,
                 etf_rows: list[EtfRow], folder: Path, angle_layers: list[dict[str, Any]] | None = None,
                 cka: list[CkaRow] | None = None) -> tuple[Report, dict[str, Any]]:
    """Plots into ``folder`` and the report/metrics describing them."""
    labels = tv.labels
    report = Report("mdamerge directional diagnostics")
    report.paragraph(
        f"Base: {inputs.base}. {len(inputs.models)} fine-tuned models, {len(inputs.merged)} merged models, "
        f"{len(tv.layers)} two-dimensional layers analysed; principal angles use the top-k left singular "
        f"subspaces with k = {'floor(min(m,n)/T)' if inputs.rank_fraction is None else f'{inputs.rank_fraction} min(m,n)'}."
    )
    report.heading("Cosine similarity of task vectors")
    plots.cosine_heatmap(tv.global_cosine, labels, "cos(tau_i, tau_j), all tensors", folder / "cosine_global.png")
    report.image("cosine_global.png", "Cosine similarity of the whole task vectors (all floating-point tensors).")
    if tv.layers:
        mean_layer_cos = torch.stack([l.cosine for l in tv.layers]).mean(0)
        plots.cosine_heatmap(mean_layer_cos, labels, "per-layer cosine, mean over 2-D layers", folder / "cosine_layer_mean.png")
        report.image("cosine_layer_mean.png", "Per-layer cosine matrices averaged over the 2-D layers.")
        report.heading("Per-layer geometry")
        plots.layer_curves(tv, folder / "layer_curves.png")
        report.image("layer_curves.png", "Mean pairwise cosine, mean principal angle and mean stable rank of each 2-D layer.")
        plots.angle_histogram(tv, folder / "principal_angles.png")
        untouched = sum(1 for l in tv.layers if l.zero_tasks)
        report.image("principal_angles.png", "Principal angles between the top-k task subspaces (all layers, all pairs"
                     + (f"; {untouched} layer(s) where a task vector is exactly zero contribute no angles for it)."
                        if untouched else ")."))
        plots.spectra(tv, folder / "spectra.png")
        report.image("spectra.png", "Normalised singular-value spectra of each task vector (representative layers).")
        report.table(
            ["layer", "shape", "k", "mean cos", "mean angle (deg)", "min angle (deg)", "mean stable rank"],
            [
                [l.name, "x".join(map(str, l.shape)), l.k, l.mean_cosine, _angle_cell(l.mean_angle),
                 _angle_cell(float(torch.cat(list(l.angles.values())).min()) if l.angles else float("nan")),
                 sum(l.stable_ranks) / len(l.stable_ranks)]
                for l in tv.layers
            ],
        )
    if angle_layers:
        _alignment_angle_section(report, angle_layers, folder)
    if alignment is not None:
        report.heading("Merged models against the task vectors")
        merged_labels = unique_labels(inputs.merged)
        plots.cosine_heatmap(alignment, merged_labels, "cos(merged delta, tau_t)", folder / "merged_alignment.png", col_labels=labels)
        report.image("merged_alignment.png", "Cosine between each merged model's task vector and each fine-tuned task vector.")
    if etf_rows:
        report.heading("Delta_ETF of class-mean features")
        report.paragraph(
            "Delta_ETF = || G/||G||_F - G_ETF/||G_ETF||_F ||_F with G the Gram matrix of the centred class-mean features "
            "and G_ETF = I - 11^T/K: 0 for a simplex ETF (any rotation, scale, translation), at most 2. "
            "Misalignment = mean 1 - cos(centred class mean, head-matched ETF prototype): it sees feature rotations."
        )
        means = mean_by_model(etf_rows)
        plots.delta_etf_bars(means, folder / "delta_etf.png")
        report.image("delta_etf.png", "Mean Delta_ETF of each model over its tasks.")
        report.table(
            ["model", "role", "task", "Delta_ETF", "misalignment"],
            [[r.model, r.role, r.task, r.delta_etf, "-" if r.misalignment is None else r.misalignment] for r in etf_rows],
        )
    if cka:
        _cka_section(report, cka, folder)
    metrics = {
        "labels": labels,
        "global_cosine": tv.global_cosine.tolist(),
        "layers": [
            {"name": l.name, "shape": list(l.shape), "k": l.k, "mean_cosine": l.mean_cosine,
             "mean_angle": None if math.isnan(l.mean_angle) else l.mean_angle,
             "zero_tasks": [labels[t] for t in l.zero_tasks],
             "stable_ranks": l.stable_ranks, "cosine": l.cosine.tolist(), "norms": l.norms}
            for l in tv.layers
        ],
        "merged_alignment": None if alignment is None else {
            "merged": unique_labels(inputs.merged), "cosine": alignment.tolist()},
        "delta_etf": [r.__dict__ for r in etf_rows],
        "delta_etf_mean": mean_by_model(etf_rows) if etf_rows else {},
        "alignment_angles": angle_layers or [],
        "cka": [r.__dict__ for r in cka or []],
        "cka_mean": cka_means(cka or []),
    }
    return report, metrics


STAGE_LABELS = {"before": "task subspaces (before)", "tsv": "after TSV-M (polar)", "mda": "after MDA (polar + ETF)"}


def _alignment_angle_section(report: Report, layers: list[dict[str, Any]], folder: Path) -> None:
    report.heading("Task-subspace angles before and after alignment")
    report.paragraph(
        "Per 2-D layer, U = [U_1..U_T] holds each task's top-k left singular vectors. Principal angles between "
        "task i's and task j's block of U (90 = orthogonal) before any alignment, after TSV-M's polar "
        "orthogonalisation and after MDA's ETF step (polar(U) M_K); 'direction angle' is the angle between single "
        "directions of different tasks (a K-direction simplex ETF puts every one at arccos(-1/(K-1)))."
    )
    plots.stage_angle_histograms(
        {STAGE_LABELS[s]: [a for l in layers for a in l[s]["subspace_angles"]] for s in STAGES},
        folder / "alignment_angles.png")
    report.image("alignment_angles.png", "Principal angles between task subspaces, all layers and pairs, per stage.")
    report.table(
        ["layer", "k", *[f"{s}: mean / min subspace angle" for s in STAGES], *[f"{s}: mean |90 - direction angle|" for s in STAGES[1:]]],
        [[l["name"], l["k"], *[f"{l[s]['subspace']['mean']:.2f} / {l[s]['subspace']['min']:.2f}" for s in STAGES],
          *[f"{max(abs(90 - l[s]['directions']['min']), abs(l[s]['directions']['max'] - 90)):.3f}" for s in STAGES[1:]]]
         for l in layers],
    )


def cka_means(rows: Sequence[CkaRow]) -> dict[str, dict[str, float]]:
    """``model -> layer -> mean CKA over tasks``."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        for layer, value in r.cka.items():
            out.setdefault(r.model, {}).setdefault(layer, []).append(value)
    return {m: {l: sum(v) / len(v) for l, v in layers.items()} for m, layers in out.items()}


def _cka_section(report: Report, rows: list[CkaRow], folder: Path) -> None:
    means = cka_means(rows)
    layers = list(next(iter(means.values())))
    report.heading("Linear CKA with the fine-tuned models, layer by layer")
    report.paragraph(
        "Linear CKA (Kornblith et al. 2019) between each model's features and the fine-tuned model of each task, on "
        "that task's test inputs (class token after each block; 'features' = the model's output), averaged over "
        "tasks. 1 = the same representation up to rotation and scale."
    )
    plots.cka_curves(means, folder / "cka_layers.png")
    report.image("cka_layers.png", "Mean linear CKA with the tasks' fine-tuned models, per layer.")
    report.table(["model", *layers], [[m, *[v[l] for l in layers]] for m, v in means.items()])


def check_like_base(base: Checkpoint, label: str, ckpt) -> None:
    """Every floating-point tensor of the base must be in ``ckpt`` with the same shape, as floating point:
    a merged tensor of another shape (even one that broadcasts, such as [1, 64]) or an int32 copy
    is not a task vector of this base. Integer buffers (position_ids, ...) are not task-vector
    material; merge ignores them too."""
    for name in base.keys():
        info = base.info(name)
        if not info.dtype.is_floating_point:
            continue
        if name not in ckpt:
            raise MergeError(f"model '{label}' ({ckpt.path}) lacks tensor '{name}' of the base")
        other = ckpt.info(name)
        if tuple(other.shape) != tuple(info.shape):
            raise MergeError(f"model '{label}' ({ckpt.path}): tensor '{name}' has shape {list(other.shape)}, "
                             f"the base has {list(info.shape)}")
        if not other.dtype.is_floating_point:
            raise MergeError(f"model '{label}' ({ckpt.path}): tensor '{name}' is {str(other.dtype).replace('torch.', '')}, "
                             f"the base's is {str(info.dtype).replace('torch.', '')} (not a fine-tune of this base)")


def finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null``: ``json.dumps`` would write bare ``NaN``, which is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def run_analysis(inputs: AnalysisInputs, out_dir: str | Path, zoo=None, overwrite: bool = False,
                 progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Compute every diagnostic and write the report folder atomically; returns the metrics."""
    if len(inputs.models) < 2:
        raise MergeError(f"analyze needs at least 2 fine-tuned models, got {len(inputs.models)}")
    if inputs.tasks is not None and len(inputs.tasks) != len(inputs.models):
        raise MergeError(f"{len(inputs.tasks)} tasks for {len(inputs.models)} fine-tuned models: give one model per task, in order")
    labels = inputs.model_labels()
    if len(labels) != len(inputs.models):
        raise MergeError(f"{len(labels)} labels for {len(inputs.models)} models")
    check_output_folder(out_dir, [inputs.base, *inputs.models, *inputs.merged, *([zoo.root] if zoo else [])], overwrite)
    base = Checkpoint(inputs.base)
    # classification fine-tunes (backbone under 'bert.' etc. plus a head) are seen through the base's names, as merge does
    plan = align_prefixes(base, [Checkpoint(p) for p in inputs.models], "auto")
    for notice in plan.notices:
        progress(notice)
    models = plan.models
    merged = align_prefixes(base, [Checkpoint(p) for p in inputs.merged], "auto").models
    if not any(base.info(n).dtype.is_floating_point and math.prod(base.info(n).shape) for n in base.keys()):
        raise MergeError(f"the base {inputs.base} has no floating-point tensors to analyse")
    for label, ckpt in zip([*labels, *unique_labels(inputs.merged)], [*models, *merged]):
        check_like_base(base, label, ckpt)
    progress("task-vector geometry")
    tv = analyze_task_vectors(base.get, [m.get for m in models], base.keys(), labels, inputs.rank_fraction, inputs.max_layers)
    alignment = merged_alignment(base, merged, models) if merged else None
    progress("alignment angles")
    angle_layers = layer_alignment_angles(base, models, inputs.rank_fraction, inputs.max_layers)
    etf_rows = delta_etf_rows(inputs, zoo, labels, progress) if inputs.tasks else []
    cka = cka_rows(inputs, zoo, labels, min(inputs.max_samples, 1000), progress) if inputs.tasks else []
    with OutputFolder(out_dir, overwrite=overwrite) as tmp:
        report, metrics = build_report(inputs, tv, alignment, etf_rows, tmp, angle_layers, cka)
        report.write(tmp)
        (tmp / "metrics.json").write_text(json.dumps(finite_json(metrics), indent=1, allow_nan=False) + "\n")
    return metrics


__all__ = ["AnalysisInputs", "CkaRow", "EtfRow", "run_analysis"]
