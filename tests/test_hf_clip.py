"""The CLIP recipe on tiny randomly-initialised CLIP models saved in the public checkpoints'
layout (``openai/clip-vit-base-patch32`` + ``tanganke/clip-vit-base-patch32_<task>``) and
tiny image datasets; accuracies are checked against an independent zero-shot evaluation
written here with transformers' own CLIPModel forward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

import mdamerge  # noqa: E402
from mdamerge.errors import ConfigError, MergeError  # noqa: E402
from mdamerge.hf.classnames import CLASSNAMES, TEMPLATES  # noqa: E402
from mdamerge.hf.clip import find_model, merge_vision_towers  # noqa: E402
from mdamerge.hf.recipes import RECIPES, TASKS8, TASKS14, TASKS20, download_commands, get_recipe, run_recipe  # noqa: E402

BASE = "openai/clip-vit-base-patch32"


pytestmark = pytest.mark.usefixtures("one_torch_thread")
IMAGES_PER_TASK = 6


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges: every byte is a token (CLIP's format, 514 entries)."""
    from tokenizers import pre_tokenizers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch + "</w>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip(vocab_size: int):
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16)
    torch.manual_seed(0)
    return transformers.CLIPModel(cfg).eval()


def random_images(seed: int, task: str) -> list:
    """Two-colour images of random sizes (flat noise would look alike to a random network)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(IMAGES_PER_TASK):
        array = np.zeros((int(rng.integers(20, 48)), int(rng.integers(20, 48)), 3), dtype=np.uint8)
        array[...] = rng.integers(0, 255, size=3)
        array[: int(rng.integers(0, array.shape[0]))] = rng.integers(0, 255, size=3)
        mode = "L" if task in ("mnist", "svhn") and i % 2 else "RGB"
        images.append(Image.fromarray(array).convert(mode))
    return images


def write_images(folder: Path, images, labels) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        image.save(folder / str(label) / f"{i}.png")


@pytest.fixture(scope="module")
def clip_zoo(tmp_path_factory):
    """model_root/{openai,tanganke}/... and data_root/<task>/test/<label>/*.png for the 8 tasks."""
    root = tmp_path_factory.mktemp("clip")
    models, data = root / "models", root / "data"
    tokenizer = tiny_tokenizer()
    base = tiny_clip(len(tokenizer))
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    base.save_pretrained(models / BASE)
    tokenizer.save_pretrained(models / BASE)
    processor.save_pretrained(models / BASE)
    for t, task in enumerate(TASKS8):
        gen = torch.Generator().manual_seed(100 + t)
        state = {k: v + v.std().nan_to_num(0.02) * torch.randn(v.shape, generator=gen)
                 for k, v in base.vision_model.state_dict().items() if v.is_floating_point()}
        folder = models / "tanganke" / f"clip-vit-base-patch32_{task}"
        if t % 2:  # as transformers 4 saved CLIPVisionModel (the public checkpoints): vision_model.* names
            folder.mkdir(parents=True)
            save_file({f"vision_model.{k}": v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
            (folder / "config.json").write_text(base.config.vision_config.to_json_string())
        else:  # as transformers 5 saves it: no prefix
            vision = transformers.CLIPVisionModel(base.config.vision_config)
            getattr(vision, "vision_model", vision).load_state_dict(state, strict=False)
            vision.save_pretrained(folder)
        # label each image with what the fine-tuned model predicts (it is "accurate" on its task)
        images = random_images(t, task)
        write_images(data / task / "test", images, predict(models / BASE, vision_sd(folder), task, images))
    return root, models, data


# -- an independent reference ------------------------------------------------------------
def vision_sd(folder: Path) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if v.is_floating_point()}
    if any(k.startswith("vision_model.") for k in state):
        return {k: v for k, v in state.items() if k.startswith("vision_model.")}
    return {f"vision_model.{k}": v for k, v in state.items()}


_HEADS: dict[tuple[str, str], torch.Tensor] = {}


@torch.no_grad()
def predict(base_dir: Path, vision: dict[str, torch.Tensor], task: str, images) -> list[int]:
    """Zero-shot predictions through CLIPModel's own forward (normalised text/image embeddings)."""
    model = transformers.CLIPModel.from_pretrained(base_dir).eval()
    model.vision_model.load_state_dict({k[len("vision_model."):]: v for k, v in vision.items()}, strict=False)
    processor = transformers.CLIPProcessor.from_pretrained(base_dir)
    images = [im.convert("RGB") for im in images]
    names, templates = CLASSNAMES[task], TEMPLATES[task]
    key = (str(base_dir), task)
    if key not in _HEADS:  # the heads come from the (never merged) text encoder
        texts = [tpl.format(name) for name in names for tpl in templates]
        out = model(**processor(text=texts, images=images[:1], return_tensors="pt", padding=True, truncation=True, max_length=77))
        _HEADS[key] = torch.nn.functional.normalize(out.text_embeds.view(len(names), len(templates), -1).mean(1), dim=-1)
    image_embeds = model(**processor(text=["x"], images=images, return_tensors="pt")).image_embeds
    return (image_embeds @ _HEADS[key].T).argmax(-1).tolist()


def reference_accuracy(base_dir: Path, vision: dict[str, torch.Tensor], task: str, folder: Path) -> float:
    files = sorted(folder.glob("*/*.png"))
    labels = [int(f.parent.name) for f in files]
    preds = predict(base_dir, vision, task, [Image.open(f) for f in files])
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


# -- recipes ---------------------------------------------------------------------------
def test_recipes_cover_three_architectures_and_three_suites():
    assert len(RECIPES) == 9
    assert (len(TASKS8), len(TASKS14), len(TASKS20)) == (8, 14, 20)
    r = get_recipe("clip-vit-l14-tasks20")
    assert r.base == "openai/clip-vit-large-patch14" and r.tasks == TASKS20
    assert r.finetuned_name("oxford-iiit-pet") == "tanganke/clip-vit-large-patch14_oxford-iiit-pet"
    assert get_recipe("clip-vit-b16-tasks14").finetuned_name("sun397") == "tanganke/clip-vit-base-patch16_sun397"
    assert set(TASKS20) == set(CLASSNAMES) == set(TEMPLATES)
    with pytest.raises(ConfigError, match="unknown recipe 'clip-vit-b32-task8'.*did you mean 'clip-vit-b32-tasks8'"):
        get_recipe("clip-vit-b32-task8")
    commands = download_commands(get_recipe("clip-vit-b32-tasks8"), TASKS8)
    assert "hf download tanganke/clip-vit-base-patch32_gtsrb" in commands
    assert "hf download ufldl-stanford/svhn --repo-type dataset --include '*test*'" in commands


def test_recipe_accuracies_equal_an_independent_zero_shot_evaluation(clip_zoo, tmp_path):
    root, models, data = clip_zoo
    result = run_recipe("clip-vit-b32-tasks8", "tsv,mda", out_dir=tmp_path / "out", model_root=models, data_root=data,
                        batch_size=4, progress=False)
    assert list(result.rows) == ["pretrained", "finetuned", "tsv", "mda"]
    assert result.tasks == list(TASKS8) and set(result.samples.values()) == {IMAGES_PER_TASK}
    base_dir = models / BASE
    ft_dirs = [models / "tanganke" / f"clip-vit-base-patch32_{t}" for t in TASKS8]
    base_vision = vision_sd(base_dir)
    merged = {m: mdamerge.merge_state_dicts(base_vision, [vision_sd(d) for d in ft_dirs], m) for m in ("tsv", "mda")}
    for task, ft_dir in zip(TASKS8, ft_dirs):
        folder = data / task / "test"
        assert result.rows["pretrained"][task] == pytest.approx(reference_accuracy(base_dir, base_vision, task, folder))
        assert result.rows["finetuned"][task] == pytest.approx(reference_accuracy(base_dir, vision_sd(ft_dir), task, folder))
        for method, state in merged.items():
            assert result.rows[method][task] == pytest.approx(reference_accuracy(base_dir, state, task, folder)), (method, task)
    # the rows are not all the same numbers, so the comparison above has teeth
    assert all(acc == 1.0 for acc in result.rows["finetuned"].values())  # the labels are its predictions
    assert result.average("pretrained") < 1.0 and len({tuple(a.values()) for a in result.rows.values()}) > 2
    assert result.normalized("finetuned") == 1.0
    # outputs: the merged vision towers as CLIPVisionModel folders, and the table
    saved = transformers.CLIPVisionModel.from_pretrained(tmp_path / "out" / "mda")
    saved_state = getattr(saved, "vision_model", saved).state_dict()
    for name, tensor in merged["mda"].items():
        torch.testing.assert_close(saved_state[name[len("vision_model."):]], tensor)
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["rows"]["tsv"] == result.rows["tsv"] and report["parameters"]["mda"]["etf_side"] == "left"
    assert "| mda |" in (tmp_path / "out" / "results.md").read_text()


def test_only_the_vision_tower_is_merged(clip_zoo):
    _, models, _ = clip_zoo
    ft_dirs = [models / "tanganke" / f"clip-vit-base-patch32_{t}" for t in TASKS8[:3]]
    merged = merge_vision_towers(models / BASE, ft_dirs, "task_arithmetic")
    base = vision_sd(models / BASE)
    assert set(merged) == {k for k, v in base.items() if v.is_floating_point()}
    fts = [vision_sd(d) for d in ft_dirs]
    name = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[name], base[name] + 0.3 * sum(f[name] - base[name] for f in fts))


def test_subset_of_tasks_and_of_test_images(clip_zoo):
    _, models, data = clip_zoo
    result = run_recipe("clip-vit-b32-tasks8", ["task_arithmetic"], model_root=models, data_root=data, tasks=["mnist", "dtd"],
                        max_per_task=4, include_baselines=False, method_params={"task_arithmetic": {"scaling": 0.5}},
                        image_threads=1, progress=False)
    assert list(result.rows) == ["task_arithmetic"] and result.tasks == ["mnist", "dtd"]
    assert result.samples == {"mnist": 4, "dtd": 4}
    assert result.parameters["task_arithmetic"] == {"scaling": 0.5}
    assert result.normalized("task_arithmetic") is None  # no fine-tuned row to normalise by
    assert result.table == str(result) and result.table.startswith("| model | mnist | dtd |")


def test_roots_from_the_environment_and_bench_delegation(clip_zoo, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mdamerge.cli import main

    _, models, data = clip_zoo
    monkeypatch.setenv("MDAMERGE_MODEL_ROOT", str(models))
    monkeypatch.setenv("MDAMERGE_DATA_ROOT", str(data))
    result = CliRunner().invoke(main, ["bench", "--recipe", "clip-vit-b32-tasks8", "--methods", "task_arithmetic",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "| task_arithmetic |" in result.output and (tmp_path / "out" / "results.json").is_file()
    result = CliRunner().invoke(main, ["bench", "--recipe", "clip-vit-b32-tasks8", "--methods", "adamerging_tsak"])
    assert result.exit_code == 2 and "error: unknown method 'adamerging_tsak'" in result.output
    assert "did you mean 'adamerging_task'" in result.output


def test_missing_models_and_datasets_are_each_named_with_where_they_were_looked_for(clip_zoo, tmp_path):
    _, models, data = clip_zoo
    partial_models, partial_data = tmp_path / "models", tmp_path / "data"
    shutil.copytree(models, partial_models)
    shutil.copytree(data, partial_data)
    shutil.rmtree(partial_models / "tanganke" / "clip-vit-base-patch32_dtd")
    shutil.rmtree(partial_data / "svhn")
    with pytest.raises(MergeError) as info:
        run_recipe("clip-vit-b32-tasks8", "mda", model_root=partial_models, data_root=partial_data,
                   cache_dir=str(tmp_path / "empty-cache"), progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert "2 input(s) missing" in message
    assert f"model 'tanganke/clip-vit-base-patch32_dtd' (looked in: {partial_models / 'tanganke' / 'clip-vit-base-patch32_dtd'}" in message
    assert f"Hugging Face cache {tmp_path / 'empty-cache'}" in message
    assert f"dataset 'svhn' (ufldl-stanford/svhn, split test; looked in: {partial_data / 'svhn'}" in message
    assert "sun397" not in message  # present inputs are not listed


def test_models_and_datasets_are_found_in_the_hugging_face_cache_offline(clip_zoo, tmp_path):
    """The Hub cache layout: <cache>/models--org--name/{refs/main, snapshots/<commit>/...}."""
    pa = pytest.importorskip("pyarrow")
    import io

    import pyarrow.parquet as pq

    _, models, data = clip_zoo
    cache = tmp_path / "hub"

    def cached_repo(kind: str, repo: str) -> Path:
        entry = cache / f"{kind}--{repo.replace('/', '--')}"
        (entry / "refs").mkdir(parents=True)
        (entry / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
        snapshot = entry / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
        snapshot.mkdir(parents=True)
        return snapshot

    shutil.copytree(models / BASE, cached_repo("models", BASE), dirs_exist_ok=True)
    shutil.copytree(models / "tanganke" / "clip-vit-base-patch32_mnist",
                    cached_repo("models", "tanganke/clip-vit-base-patch32_mnist"), dirs_exist_ok=True)
    files = sorted((data / "mnist" / "test").glob("*/*.png"))
    images = [{"bytes": f.read_bytes(), "path": None} for f in files]
    table = pa.table({"image": images, "label": [int(f.parent.name) for f in files]})
    snapshot = cached_repo("datasets", "ylecun/mnist")
    (snapshot / "mnist").mkdir()
    pq.write_table(table, snapshot / "mnist" / "test-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 2), snapshot / "mnist" / "train-00000-of-00001.parquet")

    assert find_model(BASE, cache_dir=str(cache)).path.parent.name == "snapshots"
    from_cache = run_recipe("clip-vit-b32-tasks8", "tsv", tasks=["mnist", "dtd"], model_root=models, data_root=data,
                            cache_dir=str(cache), progress=False)
    # mnist's dataset only exists in the cache, the rest on disk: same numbers as all-on-disk
    on_disk = run_recipe("clip-vit-b32-tasks8", "tsv", tasks=["mnist", "dtd"], model_root=models, data_root=data,
                         progress=False)
    (tmp_path / "nodata").mkdir()
    shutil.copytree(data / "dtd", tmp_path / "nodata" / "dtd")
    cache_only = run_recipe("clip-vit-b32-tasks8", "tsv", tasks=["mnist", "dtd"], model_root=models,
                            data_root=tmp_path / "nodata", cache_dir=str(cache), progress=False)
    assert from_cache.rows == on_disk.rows == cache_only.rows
    assert cache_only.samples["mnist"] == IMAGES_PER_TASK  # the train split was not mixed in


def test_bad_method_and_task_names(clip_zoo):
    _, models, data = clip_zoo
    with pytest.raises(ConfigError, match="unknown method 'mdaa'.*did you mean 'mda'"):
        run_recipe("clip-vit-b32-tasks8", "mdaa", model_root=models, data_root=data, progress=False)
    with pytest.raises(ConfigError, match="task 'mnst' is not in recipe 'clip-vit-b32-tasks8'.*did you mean 'mnist'"):
        run_recipe("clip-vit-b32-tasks8", "mda", model_root=models, data_root=data, tasks=["mnst"], progress=False)
    with pytest.raises(ConfigError, match="parameters given for method 'tsv', which is not being run"):
        run_recipe("clip-vit-b32-tasks8", "mda", model_root=models, data_root=data, method_params={"tsv": {}}, progress=False)


def test_data_based_methods_run_on_the_recipe_with_zero_shot_heads(clip_zoo, tmp_path):
    """AdaMerging and data-based MDA on the CLIP recipe: the same adaptation code as on the zoos."""
    from mdamerge.adaptation.output import TRANSFORMS_NAME, load_feature_transforms

    _, models, data = clip_zoo
    tasks = ["eurosat", "svhn", "mnist"]  # 10 classes each: a simplex ETF fits in the tiny 16-dim embedding
    result = run_recipe("clip-vit-b32-tasks8", "task_arithmetic,adamerging_task,mda_am", out_dir=tmp_path / "out",
                        model_root=models, data_root=data, tasks=tasks, batch_size=4, progress=False,
                        method_params={"adamerging_task": {"steps": 0},
                                       "mda_am": {"steps": 2, "batch_size": 3, "init_samples": 6}})
    assert list(result.rows) == ["pretrained", "finetuned", "task_arithmetic", "adamerging_task", "mda_am"]
    # task-wise AdaMerging before any step holds its initial coefficients, 0.3 per task: task arithmetic's default
    assert result.rows["adamerging_task"] == result.rows["task_arithmetic"]
    assert result.parameters["mda_am"] == {"steps": 2, "batch_size": 3, "init_samples": 6}
    # the saved vision tower + rotations, re-evaluated independently, give the reported accuracies
    folder = tmp_path / "out" / "mda_am"
    assert (folder / TRANSFORMS_NAME).is_file()
    rotations = load_feature_transforms(folder)
    assert set(rotations) == set(tasks)
    vision = vision_sd(folder)
    for task in tasks:
        files = sorted((data / task / "test").glob("*/*.png"))
        labels = [int(f.parent.name) for f in files]
        preds = predict_rotated(models / BASE, vision, task, [Image.open(f) for f in files], rotations[task])
        assert result.rows["mda_am"][task] == pytest.approx(sum(p == y for p, y in zip(preds, labels)) / len(labels))


@torch.no_grad()
def predict_rotated(base_dir: Path, vision: dict[str, torch.Tensor], task: str, images, rotation) -> list[int]:
    """Like :func:`predict`, with the task's feature rotation applied to the normalised image embedding."""
    predict(base_dir, vision, task, images[:1])  # fills the head cache
    model = transformers.CLIPModel.from_pretrained(base_dir).eval()
    model.vision_model.load_state_dict({k[len("vision_model."):]: v for k, v in vision.items()}, strict=False)
    processor = transformers.CLIPProcessor.from_pretrained(base_dir)
    embeds = model(**processor(text=["x"], images=[im.convert("RGB") for im in images], return_tensors="pt")).image_embeds
    return (rotation(embeds) @ _HEADS[(str(base_dir), task)].T).argmax(-1).tolist()
