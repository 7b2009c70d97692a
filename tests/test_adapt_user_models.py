"""`mdamerge adapt` on a user's own Hugging Face classifiers and CLIP towers, from the CLI.

Tiny random BERT / RoBERTa / CLIP models are saved as a user would have them (plain
pretrained base + `AutoModelFor...Classification` fine-tunes). The exported task folders are
checked against computations written here with transformers' own classes: the merged
backbone loaded as `AutoModel`, the feature rotation applied explicitly, the task's head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from mdamerge.adaptation.hf_classifiers import fold_rotation  # noqa: E402
from mdamerge.adaptation.unlabeled import DataSpec, read_examples  # noqa: E402
from mdamerge.cli import main  # noqa: E402
from mdamerge.hf.text import minilm_path  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = {
    "sent": ["good movie", "bad film", "great acting", "awful plot", "fine story", "poor sound"],
    "topic": ["the cat sat", "dogs bark loudly", "a fish swims", "birds fly south", "stocks fell", "rates rose"],
}
LABELS = {"sent": ["neg", "pos"], "topic": ["animal", "finance", "other"]}


def _tokenizer():
    return transformers.AutoTokenizer.from_pretrained(minilm_path())


def _config(family: str, vocab: int, **extra):
    shape = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=130, **extra)
    return transformers.BertConfig(**shape) if family == "bert" else transformers.RobertaConfig(pad_token_id=0, **shape)


def write_text_models(root: Path, family: str = "bert", scale: float = 0.05) -> Path:
    """A plain base and one classification fine-tune per task (different label counts), plus data files."""
    tok = _tokenizer()
    torch.manual_seed(0)
    base_cls = transformers.BertModel if family == "bert" else transformers.RobertaModel
    clf_cls = transformers.BertForSequenceClassification if family == "bert" else transformers.RobertaForSequenceClassification
    base = base_cls(_config(family, len(tok)))
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    for i, (task, labels) in enumerate(LABELS.items()):
        cfg = _config(family, len(tok), num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={name: j for j, name in enumerate(labels)})
        model = clf_cls(cfg)
        getattr(model, model.base_model_prefix).load_state_dict(base.state_dict(), strict=False)
        gen = torch.Generator().manual_seed(10 + i)
        with torch.no_grad():
            for p in getattr(model, model.base_model_prefix).parameters():
                p.add_(scale * p.std().nan_to_num(1.0) * torch.randn(p.shape, generator=gen))
        model.save_pretrained(root / f"ft_{task}")
        lines = TEXTS[task] * 3
        (root / f"{task}.txt").write_text("\n".join(lines) + "\n\n")
        with open(root / f"{task}_eval.jsonl", "w") as f:
            for j, text in enumerate(lines):
                f.write(json.dumps({"text": text, "label": labels[j % len(labels)] if j % 2 else j % len(labels)}) + "\n")
    return root


def write_config(root: Path, method: str, params: dict | None = None, **overrides) -> Path:
    models = [{"path": f"ft_{t}", "name": t, "data": f"{t}.txt",
               "eval": {"path": f"{t}_eval.jsonl", "column": "text", "label": "label"}} for t in LABELS]
    data = {"method": method, "base_model": "base", "models": models,
            "parameters": params or {"steps": 2, "batch_size": 4, "init_samples": 8}, **overrides}
    path = root / f"{method}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def bert_models(tmp_path_factory):
    return write_text_models(tmp_path_factory.mktemp("bert"))


def _encode(texts):
    return _tokenizer()(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")


def test_bert_classifiers_adapt_and_export_loadable_task_folders(bert_models, tmp_path):
    config = write_config(bert_models, "mda_feature")
    out = tmp_path / "out"
    code, output = run_cli("adapt", config, "--out", out, "--quiet")
    assert code == 0, output
    info = json.loads((out / "adaptation.json").read_text())
    for task, labels in LABELS.items():
        folder = out / "tasks" / task
        model, loading = transformers.AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
        assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
        assert model.config.id2label == dict(enumerate(labels))
        original = load_file(str(bert_models / f"ft_{task}" / "model.safetensors"))
        rotation = load_file(str(out / "feature_transforms" / "rotations.safetensors"))[f"rotation/{task}"]
        # independent: merged backbone (root folder, AutoModel) -> pooler -> R -> the fine-tune's own classifier
        enc = _encode(TEXTS[task])
        with torch.no_grad():
            pooled = transformers.AutoModel.from_pretrained(out).eval()(**enc).pooler_output
            expected = (pooled @ rotation.T) @ original["classifier.weight"].T + original["classifier.bias"]
            got = model.eval()(**enc).logits
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
        # the reported merged accuracy is the exported folder's accuracy on the eval split
        rows = [json.loads(line) for line in (bert_models / f"{task}_eval.jsonl").read_text().splitlines()]
        truth = torch.tensor([labels.index(r["label"]) if isinstance(r["label"], str) else r["label"] for r in rows])
        enc = _encode([r["text"] for r in rows])
        with torch.no_grad():
            accuracy = float((model(**enc).logits.argmax(-1) == truth).float().mean())
        assert info["accuracy"]["merged"][task] == pytest.approx(accuracy, abs=1e-6)
    assert info["rotation_folded_exactly"] == {t: True for t in LABELS}
    assert "| merged |" in output and "tasks/" in output


def test_roberta_head_with_dense_tanh_is_cut_at_its_dense_layer(tmp_path):
    root = write_text_models(tmp_path / "in", family="roberta")
    config = write_config(root, "mda_feature", {"steps": 1, "batch_size": 4, "init_samples": 8})
    out = tmp_path / "out"
    code, output = run_cli("adapt", config, "--out", out, "--quiet", "--no-eval")
    assert code == 0, output
    assert json.loads((out / "adaptation.json").read_text())["boundary"] == "classifier.dense"
    task = "topic"
    rotation = load_file(str(out / "feature_transforms" / "rotations.safetensors"))[f"rotation/{task}"]
    original = load_file(str(root / f"ft_{task}" / "model.safetensors"))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out / "tasks" / task).eval()
    enc = _encode(TEXTS[task])
    with torch.no_grad():
        cls = transformers.AutoModel.from_pretrained(out, add_pooling_layer=False).eval()(**enc).last_hidden_state[:, 0]
        hidden = torch.tanh((cls @ rotation.T) @ original["classifier.dense.weight"].T + original["classifier.dense.bias"])
        expected = hidden @ original["classifier.out_proj.weight"].T + original["classifier.out_proj.bias"]
        torch.testing.assert_close(model(**enc).logits, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["adamerging_task", "adamerging_layer", "mda_ta", "mda_am", "mda_am_norot"])
def test_every_data_based_method_runs_on_user_models(bert_models, tmp_path, method):
    config = write_config(bert_models, method, {"steps": 1, "batch_size": 4} | ({} if "adamerging" in method else
                                                                             {"init_samples": 8}))
    out = tmp_path / method
    code, output = run_cli("adapt", config, "--out", out, "--quiet", "--no-eval")
    assert code == 0, output
    info = json.loads((out / "adaptation.json").read_text())
    assert info["method"] == method and info["steps"] >= 1
    for task in LABELS:
        assert (out / "tasks" / task / "config.json").is_file()
    assert (out / "feature_transforms").exists() == (method in ("mda_ta", "mda_am"))


def test_fold_rotation_matches_rotating_the_features():
    gen = torch.Generator().manual_seed(0)
    d, k = 6, 3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    head = {"fc.weight": torch.randn(k, d, generator=gen, dtype=torch.float64),
            "fc.bias": torch.randn(k, generator=gen, dtype=torch.float64)}
    f = torch.randn(5, d, generator=gen, dtype=torch.float64)
    c = torch.randn(d, generator=gen, dtype=torch.float64)
    folded, exact = fold_rotation(head, "fc", q)
    assert exact
    torch.testing.assert_close(f @ folded["fc.weight"].T + folded["fc.bias"], (f @ q.T) @ head["fc.weight"].T + head["fc.bias"])
    folded, exact = fold_rotation(head, "fc", q, c)
    rotated = (f - c) @ q.T + c
    torch.testing.assert_close(f @ folded["fc.weight"].T + folded["fc.bias"], rotated @ head["fc.weight"].T + head["fc.bias"])
    assert exact
    _, exact = fold_rotation({"fc.weight": head["fc.weight"]}, "fc", q, c)
    assert not exact


# -- data readers -------------------------------------------------------------------------
def test_readers_take_only_the_named_columns(tmp_path):
    (tmp_path / "pairs.csv").write_text("premise,hypothesis,label\nA cat sat,An animal sat,GARBAGE\nIt rains,It is dry,\n")
    examples = read_examples(DataSpec.parse({"path": "pairs.csv", "columns": ["premise", "hypothesis"]}, tmp_path, "d"), "d")
    assert examples.items == [("A cat sat", "An animal sat"), ("It rains", "It is dry")] and examples.labels is None
    (tmp_path / "rows.jsonl").write_text('{"sentence": "one", "label": 1}\n\n{"sentence": "two"}\n')
    examples = read_examples(DataSpec.parse("rows.jsonl", tmp_path, "d"), "d")
    assert examples.items == [("one",), ("two",)]
    (tmp_path / "lines.txt").write_text("first line\n\n  second  \n")
    assert read_examples(DataSpec.parse("lines.txt", tmp_path, "d"), "d").items == [("first line",), ("second",)]


def test_saved_dataset_folder_and_image_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    datasets.Dataset.from_dict({"text": ["a b", "c d"], "label": [0, 1]}).save_to_disk(str(tmp_path / "ds"))
    assert read_examples(DataSpec.parse("ds", tmp_path, "d"), "d").items == [("a b",), ("c d",)]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "dd"))
    assert read_examples(DataSpec.parse({"path": "dd", "split": "test"}, tmp_path, "d"), "d").items == [("x",)]
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "imgs" / "a.png")
    Image.new("L", (8, 8), 7).save(tmp_path / "imgs" / "sub" / "b.jpg")
    examples = read_examples(DataSpec.parse("imgs", tmp_path, "d"), "d")
    assert examples.kind == "image" and len(examples) == 2 and examples.items[1]().size == (8, 8)


@pytest.mark.parametrize("case, expected", [
    ("empty", "holds no examples"),
    ("column", "has no column 'txt'"),
    ("missing", "does not exist"),
    ("nodata", "'data' is missing"),
    ("label", "labels are read only from an 'eval' entry"),
    ("memory", "allowed (--max-memory"),
    ("notclassifier", "are not a sequence or image classifier"),
    ("device", "unknown device 'banana'"),
    ("pairs", "'column' must be a column name, 'columns' a list of one or two"),
    ("modeltype", "is a roberta classifier, 'sent' a bert one: they cannot share a backbone"),
])
def test_bad_data_is_one_line_and_writes_nothing(bert_models, tmp_path, case, expected):
    config = yaml.safe_load(write_config(bert_models, "adamerging_task", {"steps": 1, "batch_size": 4}).read_text())
    extra = []
    if case == "empty":
        (tmp_path / "empty.txt").write_text("\n\n")
        config["models"][0]["data"] = str(tmp_path / "empty.txt")
    elif case == "column":
        config["models"][1]["eval"]["column"] = "txt"
    elif case == "missing":
        config["models"][0]["data"] = str(tmp_path / "nowhere.txt")
    elif case == "nodata":
        del config["models"][1]["data"]
    elif case == "label":
        config["models"][0]["data"] = {"path": "sent.txt", "label": "label"}
    elif case == "memory":
        extra = ["--max-memory", "1KB"]
    elif case == "notclassifier":
        config["models"][0]["path"] = "base"
    elif case == "device":
        extra = ["--device", "banana"]
    elif case == "pairs":
        config["models"][0]["data"] = {"path": "sent.txt", "columns": ["a", "b", "c"]}
    elif case == "modeltype":
        import shutil

        shutil.copytree(bert_models / "ft_topic", tmp_path / "other")
        other = json.loads((tmp_path / "other" / "config.json").read_text())
        (tmp_path / "other" / "config.json").write_text(json.dumps({**other, "model_type": "roberta"}))
        config["models"][1]["path"] = str(tmp_path / "other")
    path = bert_models / f"bad_{case}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    code, output = run_cli("adapt", path, "--out", out, "--quiet", *extra)
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1], output
    assert "Traceback" not in output
    assert not out.exists()


def test_images_that_do_not_decode_name_the_file(tmp_path):
    pytest.importorskip("PIL")
    from mdamerge.adaptation.unlabeled import decode_image
    from mdamerge.errors import MergeError

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    examples = read_examples(DataSpec.parse("imgs", tmp_path, "d"), "d")
    with pytest.raises(MergeError, match="broken.png does not decode"):
        decode_image(examples.items[0], "data of 't'")


# -- CLIP ---------------------------------------------------------------------------------
def test_clip_towers_adapt_with_zero_shot_heads_from_class_names(tmp_path):
    from test_hf_clip import random_images, tiny_clip, tiny_tokenizer

    from mdamerge.hf.clip import ZeroShotClassifier

    tokenizer = tiny_tokenizer()
    base = tiny_clip(len(tokenizer))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    for part in (base, tokenizer, processor):
        part.save_pretrained(tmp_path / "base")
    models = []
    for t, task in enumerate(["shapes", "colours"]):
        gen = torch.Generator().manual_seed(50 + t)
        vision = transformers.CLIPVisionModel(base.config.vision_config)
        state = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in base.vision_model.state_dict().items()
                 if v.is_floating_point()}
        getattr(vision, "vision_model", vision).load_state_dict(state, strict=False)
        vision.save_pretrained(tmp_path / task)
        (tmp_path / f"{task}_images").mkdir()
        for i, image in enumerate(random_images(t, task)):
            image.save(tmp_path / f"{task}_images" / f"{i}.png")
        for i, image in enumerate(random_images(t, task)):  # labelled split: sub-folders named by class
            (tmp_path / f"{task}_eval" / ["red thing", "1", "other"][i % 3]).mkdir(parents=True, exist_ok=True)
            image.save(tmp_path / f"{task}_eval" / ["red thing", "1", "other"][i % 3] / f"{i}.png")
        models.append({"path": task, "data": f"{task}_images", "classnames": ["red thing", "blue thing", "other"],
                       "templates": ["a photo of a {}.", "a drawing of a {}."],
                       "eval": {"path": f"{task}_eval", "label": "folder"}})
    (tmp_path / "clip.yaml").write_text(yaml.safe_dump({"method": "mda_feature", "base_model": "base", "models": models,
                                                        "parameters": {"steps": 1, "batch_size": 2, "init_samples": 4}}))
    out = tmp_path / "out"
    code, output = run_cli("adapt", tmp_path / "clip.yaml", "--out", out, "--quiet")
    assert code == 0, output
    merged = transformers.CLIPModel.from_pretrained(out).eval()
    rotation = load_file(str(out / "feature_transforms" / "rotations.safetensors"))["rotation/shapes"]
    classifier = ZeroShotClassifier.from_pretrained(out, "shapes")
    assert classifier.id2label == {0: "red thing", 1: "blue thing", 2: "other"}
    images = random_images(0, "shapes")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        # independent: CLIP's own zero-shot path on the merged model, with the rotation on the image embedding
        pooled = merged.vision_model(pixel_values=pixels).pooler_output
        image = torch.nn.functional.normalize(merged.visual_projection(pooled), dim=-1)
        prompts = [t.format(n) for n in ["red thing", "blue thing", "other"] for t in ["a photo of a {}.", "a drawing of a {}."]]
        tokens = tokenizer(prompts, padding=True, return_tensors="pt")
        text_pooled = merged.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        text = torch.nn.functional.normalize(merged.text_projection(text_pooled), dim=-1)
        head = torch.nn.functional.normalize(text.view(3, 2, -1).mean(1), dim=-1)
        expected = merged.logit_scale.exp() * (image @ rotation.T) @ head.T
        torch.testing.assert_close(classifier(pixels), expected, atol=1e-4, rtol=1e-4)
        # the reported merged accuracy is the exported classifier's on the labelled folder
        truth = torch.tensor([i % 3 for i in range(len(images))])
        accuracy = float((classifier(pixels).argmax(-1) == truth).float().mean())
    info = json.loads((out / "adaptation.json").read_text())
    assert info["accuracy"]["merged"]["shapes"] == pytest.approx(accuracy, abs=1e-6)


def test_image_classifiers_adapt_from_a_folder_of_images(tmp_path):
    from test_hf_clip import random_images

    cfg = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    base = transformers.ViTModel(transformers.ViTConfig(**cfg))
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    models = []
    for t, (task, labels) in enumerate({"shapes": ["round", "square"], "scenes": ["a", "b", "c"]}.items()):
        model = transformers.ViTForImageClassification(transformers.ViTConfig(
            **cfg, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}))
        model.vit.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            for p in model.vit.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(tmp_path / task)
        (tmp_path / f"{task}_images" / "nested").mkdir(parents=True)
        for i, image in enumerate(random_images(t, task)):
            image.save(tmp_path / f"{task}_images" / ("nested" if i % 2 else "") / f"{i}.png")
        models.append({"path": task, "data": f"{task}_images"})
    (tmp_path / "vit.yaml").write_text(yaml.safe_dump({"method": "mda_feature", "base_model": "base", "models": models,
                                                       "parameters": {"steps": 1, "batch_size": 2, "init_samples": 4}}))
    out = tmp_path / "out"
    code, output = run_cli("adapt", tmp_path / "vit.yaml", "--out", out, "--quiet")
    assert code == 0, output
    rotation = load_file(str(out / "feature_transforms" / "rotations.safetensors"))["rotation/scenes"]
    original = load_file(str(tmp_path / "scenes" / "model.safetensors"))
    model = transformers.AutoModelForImageClassification.from_pretrained(out / "tasks" / "scenes").eval()
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    pixels = processor(images=random_images(1, "scenes"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = transformers.AutoModel.from_pretrained(out).eval()(pixel_values=pixels).last_hidden_state[:, 0]
        expected = (cls @ rotation.T) @ original["classifier.weight"].T + original["classifier.bias"]
        torch.testing.assert_close(model(pixel_values=pixels).logits, expected, atol=2e-5, rtol=1e-4)
