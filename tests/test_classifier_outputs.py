"""Classification fine-tunes merged against a plain ``AutoModel`` base: every output has a
loadable classifier per task (``OUT/tasks/<task>/``) whose logits are the merged backbone's
features through that task's own head, with the task's labels.

References are independent: the merged backbone loaded from OUT's root as the plain model,
its features computed by transformers, and the task's head applied by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from mdamerge.cli import main  # noqa: E402

LABELS = ({0: "neg", 1: "pos"}, {0: "a", 1: "b", 2: "c"}, {0: "w", 1: "x", 2: "y", 3: "z", 4: "q"})
LORA_LABELS = (LABELS[0], LABELS[1], {0: "u", 1: "v", 2: "t"})  # adapters 1 and 2: heads of the same size
INPUT = torch.tensor([[2, 7, 11, 5, 3, 9], [4, 1, 8, 8, 2, 6]])


def bert_config(**extra):
    return transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32, **extra)


def roberta_config(**extra):
    return transformers.RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=40, **extra)


def perturb(module, seed: int, scale: float = 0.02) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=gen))


def with_labels(config, id2label):
    return config.__class__(**{**config.to_dict(), "id2label": id2label,
                               "label2id": {v: k for k, v in id2label.items()}})


def save_fine_tunes(root, family: str, count: int):
    """A plain base (BertModel / RobertaModel) and ``count`` classifiers fine-tuned from it, with
    different label sets. Returns (base folder, [fine-tune folders])."""
    config, base_cls, clf_cls = ((bert_config(), transformers.BertModel, transformers.BertForSequenceClassification)
                                 if family == "bert" else
                                 (roberta_config(), transformers.RobertaModel, transformers.RobertaForSequenceClassification))
    torch.manual_seed(0)
    base = base_cls(config)
    base.save_pretrained(root / "base")
    dirs = []
    for t in range(count):
        clf = clf_cls(with_labels(config, LABELS[t]))
        backbone = getattr(clf, clf.base_model_prefix)
        backbone.load_state_dict(base.state_dict(), strict=False)  # fine-tuned from the base
        perturb(clf, 10 + t)
        clf.save_pretrained(root / f"task{t}")
        dirs.append(root / f"task{t}")
    return root / "base", dirs


def merge_cli(tmp_path, base, dirs, method="task_arithmetic", out="out"):
    cfg = {"method": method, "base_model": str(base), "models": [str(d) for d in dirs]}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(cfg))
    return CliRunner().invoke(main, ["merge", str(tmp_path / "merge.yaml"), "--out", str(tmp_path / out), "--quiet"])


def load_classifier(folder):
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    return model.eval()


def assert_backbone_is_roots(task_folder, out, prefix):
    """Every tensor of OUT's root is in the task folder under ``prefix``, bit for bit."""
    root = load_file(str(out / "model.safetensors"))
    task = load_file(str(task_folder / "model.safetensors"))
    backbone = {n[len(prefix):]: t for n, t in task.items() if n.startswith(prefix)}
    assert backbone and set(backbone) <= set(root)
    assert all(torch.equal(t, root[n]) for n, t in backbone.items())
    return backbone


def bert_logits(out, head):
    """Merged BertModel's pooler output through a BertForSequenceClassification head."""
    merged = transformers.BertModel.from_pretrained(out).eval()
    with torch.no_grad():
        pooled = merged(INPUT).pooler_output
    return pooled @ head["classifier.weight"].T + head["classifier.bias"]


def roberta_logits(out, head):
    """Merged RobertaModel's first-token state through RoBERTa's classification head (dense, tanh, out_proj)."""
    merged = transformers.RobertaModel.from_pretrained(out).eval()
    with torch.no_grad():
        first = merged(INPUT).last_hidden_state[:, 0]
    hidden = torch.tanh(first @ head["classifier.dense.weight"].T + head["classifier.dense.bias"])
    return hidden @ head["classifier.out_proj.weight"].T + head["classifier.out_proj.bias"]


def task_logits(folder):
    with torch.no_grad():
        return load_classifier(folder)(INPUT).logits


# -- mdamerge merge -----------------------------------------------------------------
def test_merge_writes_a_loadable_classifier_per_task_with_its_labels(tmp_path):
    base, dirs = save_fine_tunes(tmp_path, "bert", 3)
    (dirs[1] / "vocab.txt").write_text("[PAD]\n[CLS]\n")  # the task's own tokenizer file goes into its folder
    (base / "tokenizer_config.json").write_text("{}")
    result = merge_cli(tmp_path, base, dirs, "ties")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert f"{out / 'tasks'}/<task> for task0, task1, task2" in result.output
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]  # the root stays the base's
    for t, folder in enumerate(dirs):
        task = out / "tasks" / f"task{t}"
        model = load_classifier(task)
        assert model.config.id2label == LABELS[t] and model.config.num_labels == len(LABELS[t])
        head = load_file(str(folder / "model.safetensors"))
        head = {n: v for n, v in head.items() if n.startswith("classifier.")}
        assert_backbone_is_roots(task, out, "bert.")
        with torch.no_grad():
            logits = model(INPUT).logits
        torch.testing.assert_close(logits, bert_logits(out, head), rtol=1e-5, atol=1e-6)
        assert torch.equal(load_file(str(out / "heads" / f"task{t}.safetensors"))["classifier.weight"],
                           head["classifier.weight"])
    assert (out / "tasks" / "task1" / "vocab.txt").exists() and not (out / "tasks" / "task1" / "tokenizer_config.json").exists()
    assert (out / "tasks" / "task0" / "tokenizer_config.json").exists()  # no tokenizer of its own: the base's
    card = (out / "README.md").read_text()
    assert "tasks/task2/" in card and "heads/<task>.safetensors" in card


def test_merge_of_roberta_classifiers_leaves_out_the_unused_pooler(tmp_path):
    """RobertaModel has a pooler, RobertaForSequenceClassification does not: the task folder holds
    what the fine-tune holds, so it loads without unexpected keys."""
    base, dirs = save_fine_tunes(tmp_path, "roberta", 2)
    result = merge_cli(tmp_path, base, dirs, "tsv")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    for t, folder in enumerate(dirs):
        task = out / "tasks" / f"task{t}"
        backbone = assert_backbone_is_roots(task, out, "roberta.")
        assert not any(n.startswith("pooler.") for n in backbone)
        head = {n: v for n, v in load_file(str(folder / "model.safetensors")).items() if n.startswith("classifier.")}
        assert set(head) == {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                             "classifier.out_proj.bias"}
        torch.testing.assert_close(task_logits(task), roberta_logits(out, head), rtol=1e-5, atol=1e-6)
        assert load_classifier(task).config.id2label == LABELS[t]


@pytest.mark.parametrize("command", ["merge", "lora"])
def test_a_failure_while_writing_the_task_folders_leaves_no_output(command, adapter_sets, tmp_path, monkeypatch):
    from mdamerge.io import writer

    if command == "merge":
        base, dirs = save_fine_tunes(tmp_path, "bert", 2)
    else:
        base, dirs = adapter_sets("bert")["base"], adapter_sets("bert")["dirs"]
    real = writer.StreamingSafetensorsWriter.write

    def disk_full_in_task_folders(self, name, tensor):
        if name.startswith("bert."):  # only the task folders hold prefixed names
            raise OSError(28, "No space left on device")
        return real(self, name, tensor)

    monkeypatch.setattr(writer.StreamingSafetensorsWriter, "write", disk_full_in_task_folders)
    result = merge_cli(tmp_path, base, dirs) if command == "merge" else lora_cli(base, dirs, tmp_path / "out")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: cannot write")
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_fine_tune_without_config_json_gets_its_head_file_only(tmp_path):
    base, dirs = save_fine_tunes(tmp_path, "bert", 2)
    (dirs[1] / "config.json").unlink()
    result = merge_cli(tmp_path, base, dirs)
    assert result.exit_code == 0, result.output
    assert "no config.json, so no classifier folder tasks/task1/" in result.output
    assert "/<task> for task0\n" in result.output
    assert (tmp_path / "out" / "heads" / "task1.safetensors").exists() and not (tmp_path / "out" / "tasks" / "task1").exists()
    load_classifier(tmp_path / "out" / "tasks" / "task0")


def test_the_replayed_merge_config_writes_the_same_task_folders(tmp_path):
    base, dirs = save_fine_tunes(tmp_path, "bert", 2)
    assert merge_cli(tmp_path, base, dirs).exit_code == 0
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "out" / "merge_config.yaml"), "--out", str(tmp_path / "again"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    for t in range(2):
        first = load_file(str(tmp_path / "out" / "tasks" / f"task{t}" / "model.safetensors"))
        again = load_file(str(tmp_path / "again" / "tasks" / f"task{t}" / "model.safetensors"))
        assert set(first) == set(again) and all(torch.equal(first[n], again[n]) for n in first)


# -- mdamerge lora --------------------------------------------------------------------
R = 4


def save_cls_adapters(root, family: str, count: int):
    """A plain base and ``count`` PEFT SEQ_CLS LoRA adapters trained on classifiers of it (different
    label counts). Adapter 0's folder also has a config.json with its id2label, as a Trainer saves.
    Returns (base folder, adapter folders, [(backbone delta by base name, head by classifier name)])."""
    peft = pytest.importorskip("peft")
    config, base_cls, clf_cls = ((bert_config(), transformers.BertModel, transformers.BertForSequenceClassification)
                                 if family == "bert" else
                                 (roberta_config(), transformers.RobertaModel, transformers.RobertaForSequenceClassification))
    torch.manual_seed(0)
    base = base_cls(config).eval()
    base.save_pretrained(root / "base")
    base_state = base.state_dict()
    dirs, applied = [], []
    for t in range(count):
        clf = clf_cls(with_labels(config, LORA_LABELS[t]))
        getattr(clf, clf.base_model_prefix).load_state_dict(base_state, strict=False)
        model = peft.get_peft_model(clf, peft.LoraConfig(task_type="SEQ_CLS", r=R, lora_alpha=2 * R,
                                                         target_modules=["query", "value"]))
        gen = torch.Generator().manual_seed(100 + t)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    param.add_(0.05 * torch.randn(param.shape, generator=gen))
        model.save_pretrained(root / f"adapter{t}")
        dirs.append(root / f"adapter{t}")
        unloaded = model.merge_and_unload()  # peft's own application of the adapter
        backbone = getattr(unloaded, unloaded.base_model_prefix).state_dict()
        delta = {n: backbone[n] - base_state[n] for n in backbone}
        head = {n: v.clone() for n, v in unloaded.state_dict().items() if n.startswith("classifier.")}
        applied.append((delta, head))
    (dirs[0] / "config.json").write_text(json.dumps(with_labels(config, LABELS[0]).to_dict()))
    return root / "base", dirs, applied


@pytest.fixture(scope="module")
def adapter_sets(tmp_path_factory):
    """``adapter_sets(family)``: a base and 3 classification adapters of it, built once per module."""
    built = {}

    def get(family):
        if family not in built:
            base, dirs, applied = save_cls_adapters(tmp_path_factory.mktemp(f"cls-{family}"), family, 3)
            built[family] = {"family": family, "base": base, "dirs": dirs, "applied": applied}
        return built[family]

    return get


def lora_cli(base, dirs, out, *extra):
    return CliRunner().invoke(main, ["lora", str(base), *map(str, dirs), "--out", str(out), "--method", "task_arithmetic",
                                     "--quiet", *extra])


def expected_backbone(cls_adapters):
    """The base plus task arithmetic (scaling 0.3) of peft's applied deltas, as the plain model."""
    family = cls_adapters["family"]
    model_cls = transformers.BertModel if family == "bert" else transformers.RobertaModel
    model = model_cls.from_pretrained(cls_adapters["base"]).eval()
    state = model.state_dict()
    for name in state:
        state[name] = state[name] + 0.3 * sum(delta[name] for delta, _ in cls_adapters["applied"] if name in delta)
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_lora_classification_adapters_give_one_classifier_per_adapter_with_its_own_head(adapter_sets, family, tmp_path):
    cls_adapters = adapter_sets(family)
    out = tmp_path / "out"
    result = lora_cli(cls_adapters["base"], cls_adapters["dirs"], out)
    assert result.exit_code == 0, result.output
    assert f"{out / 'tasks'}/<task> for adapter0, adapter1, adapter2" in result.output
    assert result.output.count("backbone under '" + cls_adapters["family"] + ".' matched to the base") == 3
    assert result.output.count("LABEL_0..LABEL_2") == 2  # adapters 1 and 2 saved no labels
    merged = expected_backbone(cls_adapters)
    with torch.no_grad():
        outputs = merged(INPUT)
    features = outputs.pooler_output if cls_adapters["family"] == "bert" else None
    for t, (_, head) in enumerate(cls_adapters["applied"]):
        task = out / "tasks" / f"adapter{t}"
        model = load_classifier(task)
        assert model.config.num_labels == len(LORA_LABELS[t])
        assert model.config.id2label == (LABELS[0] if t == 0 else {i: f"LABEL_{i}" for i in range(3)})
        saved = {n: v for n, v in load_file(str(task / "model.safetensors")).items() if n.startswith("classifier.")}
        stored = load_file(str(out / "heads" / f"adapter{t}.safetensors"))
        assert set(saved) == set(head) == set(stored)
        assert all(torch.equal(saved[n], head[n]) and torch.equal(stored[n], head[n]) for n in head)  # never averaged
        if features is not None:
            want = features @ head["classifier.weight"].T + head["classifier.bias"]
        else:
            want = torch.tanh(outputs.last_hidden_state[:, 0] @ head["classifier.dense.weight"].T
                              + head["classifier.dense.bias"]) @ head["classifier.out_proj.weight"].T + head["classifier.out_proj.bias"]
        torch.testing.assert_close(task_logits(task), want, rtol=1e-4, atol=1e-5)
    # the root is the merged backbone as the plain model, with the base's config
    root = transformers.AutoModel.from_pretrained(out).state_dict()
    torch.testing.assert_close(root, merged.state_dict(), rtol=1e-5, atol=1e-6)
    assert "tasks/adapter1/" in (out / "README.md").read_text()


def test_lora_adapter_output_has_no_heads_and_the_documented_route_attaches_one(adapter_sets, tmp_path):
    cls_adapters = adapter_sets("bert")
    dirs = cls_adapters["dirs"]
    out = tmp_path / "adapter"
    result = lora_cli(cls_adapters["base"], dirs, out, "--as", "adapter", "--rank", str(3 * R))
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("base_model.model.bert.") for k in keys)  # the classifier's names, no head
    assert not (out / "tasks").exists()
    # README's route: the task's head on the classifier, then the adapter; task arithmetic at full rank is exact
    t = 2
    head = load_file(str(out / "heads" / f"adapter{t}.safetensors"))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(cls_adapters["base"], num_labels=3)
    model.load_state_dict(head, strict=False)
    model = pytest.importorskip("peft").PeftModel.from_pretrained(model, out).eval()
    merged = expected_backbone(cls_adapters)
    with torch.no_grad():
        want = merged(INPUT).pooler_output @ head["classifier.weight"].T + head["classifier.bias"]
        got = model(INPUT).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert "heads/<task>.safetensors" in (out / "README.md").read_text()


def test_the_replayed_lora_config_writes_the_classifier_folders_again(adapter_sets, tmp_path):
    cls_adapters = adapter_sets("bert")
    assert lora_cli(cls_adapters["base"], cls_adapters["dirs"][:2], tmp_path / "out").exit_code == 0
    result = CliRunner().invoke(main, ["merge", str(tmp_path / "out" / "merge_config.yaml"), "--out", str(tmp_path / "again"),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    assert "adapter0, adapter1" in result.output
    for t in range(2):
        first = load_file(str(tmp_path / "out" / "tasks" / f"adapter{t}" / "model.safetensors"))
        again = load_file(str(tmp_path / "again" / "tasks" / f"adapter{t}" / "model.safetensors"))
        assert set(first) == set(again) and all(torch.equal(first[n], again[n]) for n in first)


def test_lora_against_a_classifier_base_keeps_same_size_heads_apart(adapter_sets, tmp_path):
    """A base that is itself a classifier has a (random) head of the same size as two adapters'
    heads: those are still each adapter's own, never merged, and the root keeps the base's."""
    cls_adapters = adapter_sets("bert")
    base = transformers.BertModel.from_pretrained(cls_adapters["base"])
    torch.manual_seed(5)
    clf = transformers.BertForSequenceClassification(with_labels(bert_config(), LABELS[1]))
    clf.bert.load_state_dict(base.state_dict())
    clf.save_pretrained(tmp_path / "clf-base")
    out = tmp_path / "out"
    result = lora_cli(tmp_path / "clf-base", cls_adapters["dirs"][1:], out)
    assert result.exit_code == 0, result.output
    heads = [cls_adapters["applied"][t][1] for t in (1, 2)]
    assert not torch.equal(heads[0]["classifier.weight"], heads[1]["classifier.weight"])
    for t, head in zip((1, 2), heads):
        saved = load_file(str(out / "tasks" / f"adapter{t}" / "model.safetensors"))
        assert all(torch.equal(saved[n], head[n]) for n in head)
        assert load_classifier(out / "tasks" / f"adapter{t}").config.num_labels == 3
    root = load_file(str(out / "model.safetensors"))
    assert torch.equal(root["classifier.weight"], clf.classifier.weight)
