"""Matplotlib figures of the diagnostics (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .task_vectors import TaskVectorReport  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def short_name(name: str, limit: int = 28) -> str:
    """Tensor names shortened for axis labels (keeps the informative tail)."""
    name = name.replace("encoder.layers.", "L").replace(".weight", "")
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def cosine_heatmap(matrix: torch.Tensor, labels: Sequence[str], title: str, path: Path,
                   col_labels: Sequence[str] | None = None) -> Path:
    """Heatmap of a cosine-similarity matrix with its values written in the cells."""
    col_labels = list(col_labels) if col_labels is not None else list(labels)
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * cols, 1.0 + 0.5 * rows))
    im = ax.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(cols), col_labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(rows), labels, fontsize=8)
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                ax.text(j, i, f"{float(matrix[i, j]):.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def layer_curves(report: TaskVectorReport, path: Path) -> Path:
    """Per-layer mean pairwise cosine, mean principal angle and mean stable rank."""
    layers = report.layers
    x = range(len(layers))
    fig, axes = plt.subplots(3, 1, figsize=(max(6.0, 0.3 * len(layers) + 2), 8), sharex=True)
    axes[0].plot(x, [l.mean_cosine for l in layers], marker="o")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_ylabel("mean cos(tau_i, tau_j)")
    axes[1].plot(x, [l.mean_angle for l in layers], marker="o", color="tab:orange")
    axes[1].set_ylabel("mean principal angle (deg)")
    axes[1].set_ylim(0, 90)
    axes[2].plot(x, [sum(l.stable_ranks) / len(l.stable_ranks) for l in layers], marker="o", color="tab:green")
    axes[2].set_ylabel("mean stable rank")
    axes[2].set_xticks(list(x), [short_name(l.name) for l in layers], rotation=75, ha="right", fontsize=7)
    fig.suptitle("Task vectors, layer by layer", fontsize=10)
    return _save(fig, path)


def angle_histogram(report: TaskVectorReport, path: Path) -> Path:
    """Histogram of all principal angles between task subspaces (all layers, all pairs)."""
    angles = [a for layer in report.layers for v in layer.angles.values() for a in v.tolist()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(angles, bins=45, range=(0, 90), color="tab:purple", alpha=0.8)
    ax.set_xlabel("principal angle between top-k task subspaces (deg)")
    ax.set_ylabel("count")
    ax.set_title(f"{len(angles)} angles over {len(report.layers)} layers", fontsize=10)
    return _save(fig, path)


def representative_layers(layers, max_panels: int):
    """Up to ``max_panels`` layers spread over the depth, among those where every task vector is
    non-zero (else those where any is): an untouched layer (e.g. a pooler) has no spectrum to show."""
    candidates = [l for l in layers if not l.zero_tasks] or [l for l in layers if len(l.zero_tasks) < len(l.norms)]
    if len(candidates) > max_panels:
        picks = sorted({round(i * (len(candidates) - 1) / (max_panels - 1)) for i in range(max_panels)})
        candidates = [candidates[i] for i in picks]
    return candidates


def spectra(report: TaskVectorReport, path: Path, max_panels: int = 4) -> Path:
    """Normalised singular-value spectra of every task vector for a few representative layers."""
    layers = representative_layers(report.layers, max_panels)
    fig, axes = plt.subplots(1, max(1, len(layers)), figsize=(3.2 * max(1, len(layers)), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, layer in zip(axes[0], layers):
        for t, (label, s) in enumerate(zip(report.labels, layer.spectra)):
            if len(s) and s[0] > 0:
                ax.semilogy(range(1, len(s) + 1), (s / s[0]).clamp_min(1e-8).numpy(), lw=1,
                            color=colors[t % len(colors)])
        ax.axvline(layer.k, color="grey", ls="--", lw=0.8)
        ax.set_title(short_name(layer.name), fontsize=8)
        ax.set_xlabel("index (dashed: k)")
    if not layers:
        axes[0][0].text(0.5, 0.5, "every task vector is zero", ha="center", va="center", transform=axes[0][0].transAxes)
    axes[0][0].set_ylabel("s_i / s_1")
    # one legend for the figure, one entry per task (same colour in every panel)
    handles = [plt.Line2D([], [], color=colors[t % len(colors)], lw=1.5) for t in range(len(report.labels))]
    fig.legend(handles, report.labels, loc="lower center", ncol=min(len(report.labels), 6), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(report.labels) - 1) // 6), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def delta_etf_bars(values: Mapping[str, float], path: Path) -> Path:
    """Bar chart of the mean Delta_ETF of each model."""
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 3.5))
    ax.bar(range(len(names)), [values[n] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("mean Delta_ETF (0 = simplex ETF)")
    return _save(fig, path)


def stage_angle_histograms(angles: Mapping[str, Sequence[float]], path: Path) -> Path:
    """One histogram of principal angles per alignment stage, on a shared axis."""
    fig, axes = plt.subplots(1, len(angles), figsize=(3.6 * len(angles), 3.2), sharey=True, squeeze=False)
    for ax, (label, values) in zip(axes[0], angles.items()):
        ax.hist(list(values), bins=45, range=(0, 90), color="tab:purple", alpha=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("principal angle (deg)")
    axes[0][0].set_ylabel("count")
    return _save(fig, path)


def cka_curves(means: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Mean linear CKA with the fine-tuned models, per layer, one line per model."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for model, layers in means.items():
        names = list(layers)
        ax.plot(range(len(names)), [layers[n] for n in names], marker="o", label=model)
    ax.set_xticks(range(len(names)), [short_name(n) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("linear CKA with fine-tuned")
    ax.set_ylim(None, 1.0)
    ax.legend(fontsize=7)
    return _save(fig, path)
