"""Classification checkpoints (backbone under 'bert.', 'model.', ... plus a task head) merged
against a plain base: detection, the merge itself, and the heads saved per task."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

import mdamerge
from conftest import write_hf_folder
from mdamerge.cli import main
from mdamerge.errors import CheckpointError


def prefixed(state, prefix, head_rows, seed):
    gen = torch.Generator().manual_seed(seed)
    out = {prefix + k: v for k, v in state.items()}
    out["classifier.weight"] = torch.randn(head_rows, 8, generator=gen)
    out["classifier.bias"] = torch.randn(head_rows, generator=gen)
    return out


@pytest.fixture
def classification(toy_models, tmp_path):
    fts = toy_models["fts"]
    dirs = [write_hf_folder(tmp_path / f"task{i}", prefixed(sd, "bert.", i + 2, i)) for i, sd in enumerate(fts)]
    return {**toy_models, "cls_dirs": dirs}


def test_prefixed_fine_tunes_merge_like_plain_ones_and_keep_their_heads(classification, tmp_path):
    cfg = {"method": "ties", "base_model": str(classification["base_dir"]),
           "models": [str(p) for p in classification["cls_dirs"]]}
    result = CliRunner().invoke(main, ["merge", _write(tmp_path, cfg), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.count("backbone under 'bert.' matched to the base") == 3
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    plain = mdamerge.merge_state_dicts(classification["base"], classification["fts"], "ties")
    assert set(merged) == set(plain) and all(torch.equal(merged[n], plain[n]) for n in plain)
    for i, folder in enumerate(classification["cls_dirs"]):
        head_file = tmp_path / "out" / "heads" / f"task{i}.safetensors"
        head = load_file(str(head_file))
        source = load_file(str(folder / "model.safetensors"))
        assert set(head) == {"classifier.weight", "classifier.bias"} and head["classifier.weight"].shape == (i + 2, 8)
        assert all(torch.equal(head[n], source[n]) for n in head)
        with safe_open(str(head_file), "pt") as f:
            assert f.metadata()["prefix"] == "bert."
    assert yaml.safe_load((tmp_path / "out" / "merge_config.yaml").read_text())["prefix"] == "auto"


def test_prefix_none_restores_the_strict_check_and_an_explicit_prefix_is_checked(classification, tmp_path):
    cfg = {"method": "average", "base_model": str(classification["base_dir"]),
           "models": [str(p) for p in classification["cls_dirs"]], "prefix": "none"}
    with pytest.raises(CheckpointError, match="missing .* tensor"):
        mdamerge.merge(cfg, tmp_path / "a", progress=False)
    cfg["prefix"] = "roberta."
    with pytest.raises(CheckpointError, match="no tensor 'roberta."):
        mdamerge.merge(cfg, tmp_path / "b", progress=False)
    cfg["prefix"] = "bert"  # the dot is optional
    mdamerge.merge(cfg, tmp_path / "c", progress=False)
    assert (tmp_path / "c" / "heads" / "task0.safetensors").exists()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_merge_command_prefix_option(classification, tmp_path):
    cfg = {"method": "average", "base_model": str(classification["base_dir"]),
           "models": [str(p) for p in classification["cls_dirs"]]}
    result = CliRunner().invoke(main, ["merge", _write(tmp_path, cfg), "--out", str(tmp_path / "o"), "--prefix", "none"])
    assert result.exit_code == 2 and "error:" in result.output and "missing" in result.output


def test_a_real_bert_sequence_classifier_against_bert_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    base = transformers.BertModel(config)
    base.save_pretrained(tmp_path / "base")
    dirs = []
    for t, labels in enumerate((2, 3)):
        clf = transformers.BertForSequenceClassification(config.__class__(**{**config.to_dict(), "num_labels": labels}))
        state = {k: v + 0.01 * (t + 1) for k, v in base.state_dict().items() if v.is_floating_point()}
        clf.bert.load_state_dict(state, strict=False)
        clf.save_pretrained(tmp_path / f"clf{t}")
        dirs.append(tmp_path / f"clf{t}")
    mdamerge.merge({"method": "task_arithmetic", "base_model": str(tmp_path / "base"), "models": [str(d) for d in dirs],
                    "parameters": {"scaling": 0.5}}, tmp_path / "merged", progress=False)
    merged = transformers.BertModel.from_pretrained(tmp_path / "merged")
    want = base.state_dict()["encoder.layer.0.attention.self.query.weight"] + 0.5 * (0.01 + 0.02)
    torch.testing.assert_close(merged.state_dict()["encoder.layer.0.attention.self.query.weight"], want)
    # a task's head goes back on the merged backbone
    head = load_file(str(tmp_path / "merged" / "heads" / "clf1.safetensors"))
    clf = transformers.BertForSequenceClassification.from_pretrained(dirs[1])
    clf.bert.load_state_dict(merged.state_dict())
    assert torch.equal(clf.classifier.weight, head["classifier.weight"]) and head["classifier.weight"].shape[0] == 3


def _write(tmp_path, cfg) -> str:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_analyze_reads_prefixed_fine_tunes_like_plain_ones(classification, tmp_path):
    """analyze sees classification checkpoints through the base's names, as merge does: same metrics as plain copies."""
    plain_dirs = [write_hf_folder(tmp_path / f"plain{i}", sd) for i, sd in enumerate(classification["fts"])]
    runner = CliRunner()
    outputs = {}
    for kind, dirs in (("cls", classification["cls_dirs"]), ("plain", plain_dirs)):
        out = tmp_path / f"report-{kind}"
        result = runner.invoke(main, ["analyze", "--base", str(classification["base_dir"]),
                                      "--models", ",".join(str(d) for d in dirs), "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs[kind] = json.loads((out / "metrics.json").read_text())
        if kind == "cls":
            assert result.output.count("backbone under 'bert.' matched to the base") == 3, result.output
    assert outputs["cls"]["layers"] == outputs["plain"]["layers"]
