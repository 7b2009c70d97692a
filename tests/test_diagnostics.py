"""Directional diagnostics: Delta_ETF, principal angles, cosine matrices and the analyze report."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import SHAPES, finetuned_from, random_state, write_hf_folder
from mdamerge.cli import main
from mdamerge.diagnostics import analyze_task_vectors, class_means, cosine_matrix, delta_etf, principal_angles
from mdamerge.diagnostics.analysis import AnalysisInputs, run_analysis
from mdamerge.diagnostics.etf import prototype_misalignment
from mdamerge.errors import MergeError
from mdamerge.methods.linalg import simplex_etf


def orthonormal(d, k, seed):
    return torch.linalg.qr(torch.randn(d, k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))[0]


def hand_built_etf(k):
    """Vertices of the regular simplex: e_i - 1/K, normalised (independent of the library's construction)."""
    m = np.eye(k) - 1.0 / k
    return torch.from_numpy(m / np.linalg.norm(m, axis=1, keepdims=True))


# -- Delta_ETF -------------------------------------------------------------------
@pytest.mark.parametrize("k, d", [(3, 3), (5, 8), (10, 64)])
def test_delta_etf_is_zero_for_exact_simplex_etf_under_declared_invariances(k, d):
    etf = torch.cat([hand_built_etf(k), torch.zeros(k, d - k, dtype=torch.float64)], 1) if d >= k else hand_built_etf(k)
    assert delta_etf(etf) == pytest.approx(0.0, abs=1e-7)
    rotated_scaled_shifted = 4.2 * etf @ orthonormal(d, d, 1).T + torch.randn(1, d, dtype=torch.float64)
    assert delta_etf(rotated_scaled_shifted) == pytest.approx(0.0, abs=1e-7)
    assert delta_etf(simplex_etf(k, d, generator=torch.Generator().manual_seed(0))) == pytest.approx(0.0, abs=1e-5)


def test_delta_etf_is_positive_otherwise_and_bounded():
    k, d = 6, 10
    etf = torch.cat([hand_built_etf(k), torch.zeros(k, d - k, dtype=torch.float64)], 1)
    previous = 0.0
    for eps in (0.01, 0.1, 0.5):  # growing perturbations give growing deviations
        noisy = etf + eps * torch.randn(k, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        value = delta_etf(noisy)
        assert value > previous
        previous = value
    unequal_norms = etf * torch.arange(1, k + 1, dtype=torch.float64)[:, None]
    assert delta_etf(unequal_norms) > 0.05
    # an orthonormal frame is a shifted simplex ETF (translation invariance) ...
    assert delta_etf(torch.eye(k, d, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-7)
    # ... but a square (equal norms, centred, cosines 0 and -1 instead of -1/3) is not
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert delta_etf(square) > 0.1
    for seed in range(20):
        assert 0 < delta_etf(torch.randn(k, d, generator=torch.Generator().manual_seed(seed))) <= 2
    # hand-computed: means (1,0), (0,1), (0,0)
    centred = np.array([[2, -1], [-1, 2], [-1, -1]]) / 3.0
    g = centred @ centred.T
    target = np.eye(3) - 1 / 3
    expected = np.linalg.norm(g / np.linalg.norm(g) - target / np.linalg.norm(target))
    assert delta_etf(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(expected, rel=1e-6)


def test_delta_etf_edge_cases():
    assert delta_etf(torch.tensor([[1.0, 2.0], [3.0, -1.0]])) == pytest.approx(0.0, abs=1e-7)  # K=2: always an ETF
    assert delta_etf(torch.ones(4, 3)) == 1.0  # all class means equal
    with pytest.raises(MergeError, match="K >= 2"):
        delta_etf(torch.ones(1, 3))


def test_class_means_match_a_loop():
    feats = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 5, (50,), generator=torch.Generator().manual_seed(1))
    labels[labels == 3] = 4  # class 3 absent: dropped
    means = class_means(feats, labels, 5)
    expected = torch.stack([feats[labels == c].double().mean(0) for c in (0, 1, 2, 4)])
    assert torch.allclose(means, expected)


def test_prototype_misalignment_sees_rotations_that_delta_etf_ignores():
    k, d = 4, 6
    head = torch.randn(k, d, generator=torch.Generator().manual_seed(0))
    from mdamerge.adaptation.losses import etf_prototypes

    protos = etf_prototypes(head).double()
    assert prototype_misalignment(protos, head) == pytest.approx(0.0, abs=1e-6)
    rotated = protos @ orthonormal(d, d, 3).T
    assert delta_etf(rotated) == pytest.approx(0.0, abs=1e-7)
    assert prototype_misalignment(rotated, head) > 0.1


# -- task-vector geometry -------------------------------------------------------------
def test_principal_angles_of_known_subspaces():
    e = torch.eye(5, dtype=torch.float64)
    a = e[:, :2]
    t1, t2 = math.radians(20), math.radians(65)
    b = torch.stack([math.cos(t1) * e[0] + math.sin(t1) * e[2], math.cos(t2) * e[1] + math.sin(t2) * e[3]], 1)
    assert torch.allclose(principal_angles(a, b), torch.tensor([20.0, 65.0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(principal_angles(a, a), torch.zeros(2, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(principal_angles(a, e[:, 2:4]), torch.full((2,), 90.0, dtype=torch.float64), atol=1e-6)


def test_cosine_matrix_matches_numpy():
    vs = [torch.randn(3, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)] + [torch.zeros(3, 4)]
    flat = np.stack([v.numpy().ravel() for v in vs[:4]]).astype(np.float64)
    expected = flat @ flat.T / np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(flat, axis=1))
    got = cosine_matrix(vs)
    assert np.allclose(got[:4, :4].numpy(), expected)
    assert torch.equal(got[4], torch.zeros(5, dtype=torch.float64))


def test_analyze_task_vectors_layers_and_global_cosine():
    base = random_state(0, SHAPES)
    fts = [finetuned_from(base, s) for s in (1, 2, 3)]
    # model 2 = model 0's task vector, doubled: cosine 1 everywhere, principal angles 0
    fts[2] = {n: base[n] + 2 * (fts[0][n] - base[n]) for n in base}
    report = analyze_task_vectors(base.__getitem__, [sd.__getitem__ for sd in fts], list(base), ["a", "b", "c"])
    assert [l.name for l in report.layers] == [n for n, s in SHAPES.items() if len(s) == 2]
    flat = [torch.cat([(sd[n] - base[n]).reshape(-1) for n in base]) for sd in fts]
    assert torch.allclose(report.global_cosine, cosine_matrix(flat).float(), atol=1e-6)
    assert report.global_cosine[0, 2] == pytest.approx(1.0, abs=1e-6)
    mlp = next(l for l in report.layers if l.name == "layers.0.mlp.weight")
    assert mlp.k == 8 // 3 and len(mlp.spectra) == 3 and len(mlp.spectra[0]) == 8
    assert torch.allclose(mlp.angles[(0, 2)], torch.zeros(mlp.k), atol=1e-2)
    s = torch.linalg.svdvals((fts[1]["layers.0.mlp.weight"] - base["layers.0.mlp.weight"]).double()).float()
    assert torch.allclose(mlp.spectra[1], s, atol=1e-5)


# -- report --------------------------------------------------------------------------
@pytest.fixture
def checkpoints(toy_models):
    return toy_models


def test_run_analysis_writes_plots_markdown_and_html(checkpoints, tmp_path):
    out = tmp_path / "report"
    merged_dir = write_hf_folder(tmp_path / "merged", {
        n: (t + sum(sd[n] - t for sd in checkpoints["fts"]) / 3 if t.is_floating_point() else t)
        for n, t in checkpoints["base"].items()})
    inputs = AnalysisInputs(base=checkpoints["base_dir"], models=checkpoints["ft_dirs"], merged=[merged_dir])
    metrics = run_analysis(inputs, out)
    files = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "metrics.json", "cosine_global.png", "layer_curves.png",
            "principal_angles.png", "spectra.png", "merged_alignment.png"} <= files
    md = (out / "report.md").read_text()
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(re.findall(r"!\[", md))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["labels"] == ["ft0", "ft1", "ft2"] and len(saved["layers"]) == len(metrics["layers"]) == 4
    # the mean merge is positively aligned with every task vector
    assert all(c > 0.3 for c in saved["merged_alignment"]["cosine"][0])
    # angles before / after alignment: TSV-M's polar step leaves the task blocks orthogonal when T k <= m
    assert "alignment_angles.png" in files and len(saved["alignment_angles"]) == 4
    for layer in saved["alignment_angles"]:
        rows = next(l["shape"][0] for l in saved["layers"] if l["name"] == layer["name"])
        if 3 * layer["k"] <= rows:
            assert layer["tsv"]["subspace"]["min"] == pytest.approx(90.0, abs=1e-3)
        assert layer["before"]["subspace"]["count"] == 3 * layer["k"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_analyze_cli_and_atomic_failure(checkpoints, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli_report"
    dirs = [str(p) for p in checkpoints["ft_dirs"]]
    result = runner.invoke(main, ["analyze", "--base", str(checkpoints["base_dir"]), "--models", ",".join(dirs[:2]),
                                  "--models", dirs[2], "--out", str(out), "--max-layers", "2"])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").exists() and len(json.loads((out / "metrics.json").read_text())["layers"]) == 2
    result = runner.invoke(main, ["analyze", "--base", str(checkpoints["base_dir"]), "--models", dirs[0], "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "at least 2 fine-tuned models" in result.output
    broken = {n: t for n, t in checkpoints["fts"][1].items() if n != "head.weight"}
    broken_dir = write_hf_folder(tmp_path / "broken", broken)
    result = runner.invoke(main, ["analyze", "--base", str(checkpoints["base_dir"]), "--models", dirs[0],
                                  "--models", str(broken_dir), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "head.weight" in result.output
    assert not (tmp_path / "y").exists()
