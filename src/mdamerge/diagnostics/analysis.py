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
from ..io.checkpoint import Checkpoint
from ..io.writer import OutputFolder, check_output_folder
from . import plots
from .etf import class_means, delta_etf, extract_features, prototype_misalignment
from .report import Report
from .task_vectors import TaskVectorReport, analyze_task_vectors


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
    from ..zoo.model import TinyViT

    tasks = inputs.tasks or []
    data = task_etf_data(tasks, zoo, inputs.max_samples)
    plan: list[tuple[str, str, Path, list[str]]] = [("pretrained", "pretrained", inputs.base, tasks)]
    plan += [(label, "fine-tuned", path, [task]) for label, path, task in zip(labels, inputs.models, tasks)]
    plan += [(label, "merged", path, tasks) for label, path in zip(unique_labels(inputs.merged), inputs.merged)]
    rows = []
    for label, role, folder, its_tasks in plan:
        progress(f"Delta_ETF: {label}")
        model = TinyViT.from_pretrained(folder, device=inputs.device).eval()
        transforms = load_feature_transforms(folder)
        for task, value, misalign in model_etf(model, data, its_tasks, transforms, inputs.device):
            rows.append(EtfRow(label, role, task, value, misalign))
    return rows


def mean_by_model(rows: Sequence[EtfRow]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r.model, []).append(r.delta_etf)
    return {k: sum(v) / len(v) for k, v in out.items()}


def _angle_cell(value: float) -> float | str:
    """NaN (no pair of non-zero task vectors in the layer) shown as '-'."""
    return "-" if math.isnan(value) else value


def build_report(inputs: AnalysisInputs, tv: TaskVectorReport, alignment: torch.Tensor | None,
                 etf_rows: list[EtfRow], folder: Path) -> tuple[Report, dict[str, Any]]:
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
    }
    return report, metrics


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
    models = [Checkpoint(p) for p in inputs.models]
    merged = [Checkpoint(p) for p in inputs.merged]
    for label, ckpt in zip([*labels, *unique_labels(inputs.merged)], [*models, *merged]):
        # integer buffers (position_ids, ...) are not task-vector material; merge ignores them too
        missing = [n for n in base.keys() if n not in ckpt and base.info(n).dtype.is_floating_point]
        if missing:
            raise MergeError(f"model '{label}' ({ckpt.path}) lacks tensor '{missing[0]}' of the base")
    progress("task-vector geometry")
    tv = analyze_task_vectors(base.get, [m.get for m in models], base.keys(), labels, inputs.rank_fraction, inputs.max_layers)
    alignment = merged_alignment(base, merged, models) if merged else None
    etf_rows = delta_etf_rows(inputs, zoo, labels, progress) if inputs.tasks else []
    with OutputFolder(out_dir, overwrite=overwrite) as tmp:
        report, metrics = build_report(inputs, tv, alignment, etf_rows, tmp)
        report.write(tmp)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


__all__ = ["AnalysisInputs", "EtfRow", "run_analysis"]
