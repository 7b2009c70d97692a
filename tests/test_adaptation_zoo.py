"""End to end on a miniature offline zoo (tiny3 suite, a few training steps): the
benchmark's adapters, ``mdamerge adapt`` and ``mdamerge analyze --suite``."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from mdamerge.adaptation import ADAPTIVE_METHODS, problem_from_zoo
from mdamerge.adaptation.output import load_feature_transforms
from mdamerge.adaptation.rotations import orthogonality_error
from mdamerge.cli import main
from mdamerge.errors import MergeError

zoo_build = pytest.importorskip("mdamerge.zoo.build")
from mdamerge.zoo.finetune import TrainSettings  # noqa: E402
from mdamerge.zoo.model import TinyViT, ViTConfig  # noqa: E402

SUITE = "tiny3"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a busy machine
    settings = zoo_build.ZooSettings(
        model=ViTConfig(dim=32, depth=1, heads=2, mlp_dim=64, projection_dim=32),
        pretrain=TrainSettings(steps=30, batch_size=64, lr=2e-3), pretrain_images=1000,
        finetune=TrainSettings(steps=30, batch_size=32, lr=1e-3), probe_steps=60, max_train=400,
    )
    z = zoo_build.Zoo(tmp_path_factory.mktemp("zoo"), settings=settings)
    z.build(SUITE, progress=False)
    yield z
    torch.set_num_threads(threads)


def entropy_on(zoo, state, tasks, n=128):
    """Mean prediction entropy of a backbone on each task's first n test inputs (computed here, not by the library)."""
    model = TinyViT(zoo.load_backbone().config)
    model.load_backbone_state(state)
    total = 0.0
    with torch.no_grad():
        for t in tasks:
            p = torch.softmax(zoo.head(t)(model(zoo.task_data(t).test[0][:n])), -1)
            total += float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
    return total / len(tasks)


def test_every_registered_method_runs_on_the_zoo(zoo):
    assert {"adamerging_task", "adamerging_layer", "adamerging", "mda_feature", "mda_ta", "mda_am", "mda_am_norot"} <= set(ADAPTIVE_METHODS)
    tasks = zoo_build.resolve_tasks(SUITE)
    for name, fn in ADAPTIVE_METHODS.items():
        extra = {"am_steps": 2} if name.startswith("mda_am") else {}
        result = fn(zoo, SUITE, steps=2, max_unlabeled=64, progress=False, **extra)
        assert result.info["method"] == name and result.info["steps"] == 2
        model = TinyViT(zoo.load_backbone().config)
        model.load_backbone_state(result.state_dict)  # a complete, loadable backbone
        rotates = name in ("mda_feature", "mda_ta", "mda_am")
        assert (result.feature_transforms is not None) == rotates
        if rotates:
            assert set(result.feature_transforms) == set(tasks)
            assert all(orthogonality_error(tf.matrix) < 1e-5 for tf in result.feature_transforms.values())


def test_entropy_decreases_over_a_short_adamerging_run(zoo):
    tasks = zoo_build.resolve_tasks(SUITE)
    start = ADAPTIVE_METHODS["adamerging_layer"](zoo, SUITE, steps=0, progress=False)
    trained = ADAPTIVE_METHODS["adamerging_layer"](zoo, SUITE, steps=25, lr=2e-2, max_unlabeled=128, progress=False)
    assert entropy_on(zoo, trained.state_dict, tasks) < entropy_on(zoo, start.state_dict, tasks) - 0.1


def test_unknown_option_and_unbuilt_task_are_clear_errors(zoo):
    with pytest.raises(MergeError, match="no option 'stepz'.*steps"):
        ADAPTIVE_METHODS["mda_ta"](zoo, SUITE, stepz=3)
    with pytest.raises(MergeError, match="not built"):
        problem_from_zoo(zoo, ["mnist", "digits8x8"])


def test_adapt_cli_then_analyze_with_delta_etf(zoo, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "method": "mda_am", "suite": SUITE, "zoo_root": str(zoo.root), "max_unlabeled": 64,
        "parameters": {"steps": 3, "am_steps": 2, "progress": False},
    }))
    out = tmp_path / "merged"
    runner = CliRunner()
    result = runner.invoke(main, ["adapt", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "adaptation.json").read_text())
    assert set(info["test_accuracy"]) == set(zoo_build.resolve_tasks(SUITE))
    assert all(0 <= a <= 1 for a in info["test_accuracy"].values())
    assert info["method"] == "mda_am" and len(info["history"]) == 3 and info["adamerging"]["steps"] == 2
    assert (out / "config.json").exists() and "visual_projection.weight" in load_file(str(out / "model.safetensors"))
    transforms = load_feature_transforms(out)
    assert set(transforms) == set(zoo_build.resolve_tasks(SUITE))

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"method": "mda_am", "suite": SUITE, "parameters": {"alpah": 1.0}}))
    result = runner.invoke(main, ["adapt", str(bad), "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and "alpah" in result.output and "alpha" in result.output
    assert not (tmp_path / "never").exists()

    report = tmp_path / "report"
    result = runner.invoke(main, ["analyze", "--suite", SUITE, "--zoo-root", str(zoo.root), "--merged", str(out),
                                  "--max-samples", "300", "--out", str(report)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    roles = [(r["role"], r["task"]) for r in metrics["delta_etf"]]
    tasks = zoo_build.resolve_tasks(SUITE)
    assert roles == [("pretrained", t) for t in tasks] + [("fine-tuned", t) for t in tasks] + [("merged", t) for t in tasks]
    assert all(0 < r["delta_etf"] <= 2 for r in metrics["delta_etf"])
    assert "delta_etf.png" in (report / "report.md").read_text()

    # linear CKA with each task's fine-tuned model, recomputed here from the two models' features
    from mdamerge.diagnostics.cka import linear_cka

    assert [(r["model"], r["task"]) for r in metrics["cka"]] == [("pretrained", t) for t in tasks] + [("merged", t) for t in tasks]
    layers = [f"encoder.layers.{i}" for i in range(zoo.settings.model.depth)] + ["features"]
    assert all(list(r["cka"]) == layers and all(0 <= v <= 1 + 1e-9 for v in r["cka"].values()) for r in metrics["cka"])
    x = zoo.task_data(tasks[0]).test[0][:300]
    with torch.no_grad():
        merged_feats = TinyViT.from_pretrained(out)(x)
        ft_feats = TinyViT.from_pretrained(zoo.finetuned_dir(tasks[0]))(x)
    row = next(r for r in metrics["cka"] if r["model"] == "merged" and r["task"] == tasks[0])
    assert row["cka"]["features"] == pytest.approx(linear_cka(merged_feats, ft_feats), abs=1e-5)
    assert set(metrics["cka_mean"]) == {"pretrained", "merged"}
    assert metrics["alignment_angles"] and "cka_layers.png" in (report / "report.md").read_text()
