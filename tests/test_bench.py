"""End to end on a miniature zoo (tiny3 suite, small budgets): build, reuse, benchmark, CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import json
import shutil
import sys
import types

import pytest
import torch
from click.testing import CliRunner

import mdamerge
from mdamerge.cli import main
from mdamerge.evaluation import bench as bench_mod
from mdamerge.evaluation.bench import BenchResult, ScaledMerge, resolve_methods, run_bench
from mdamerge.evaluation.evaluate import average, evaluate_backbone
from mdamerge.errors import ConfigError
from mdamerge.zoo.build import Zoo, ZooSettings, zoo_subdir
from mdamerge.zoo.finetune import TrainSettings
from mdamerge.zoo.model import ViTConfig

SUITE = "tiny3"
TINY = ZooSettings(
    model=ViTConfig(dim=32, depth=1, heads=2, mlp_dim=64, projection_dim=32),
    pretrain=TrainSettings(steps=60, batch_size=64, lr=2e-3), pretrain_images=2000,
    finetune=TrainSettings(steps=60, batch_size=32, lr=2e-3), probe_steps=100, max_train=500,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is as fast and leaves the other core free
    root = tmp_path_factory.mktemp("cache")
    Zoo(root / zoo_subdir(), settings=TINY).build(SUITE, progress=False)
    yield root
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo(cache):
    return Zoo(cache / zoo_subdir())


@pytest.fixture(scope="module")
def result(zoo, tmp_path_factory):
    return run_bench(SUITE, "data-free", zoo=zoo, out_dir=tmp_path_factory.mktemp("out"), progress=False)


def toy_states(seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(12, 8, generator=gen), "b": torch.randn(12, generator=gen)}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(3)]
    return base, fts


def test_scaled_merges_equal_real_merges_for_every_method():
    base, fts = toy_states()
    for method in bench_mod.data_free_methods():
        scaled = ScaledMerge(base, fts, method, {}, "cpu", 0)
        if not scaled.has_scaling:
            continue
        for s in (0.7, 1.3):
            got = scaled(s)
            want = mdamerge.merge_state_dicts(base, fts, method, scaling=s)
            for k in want:
                assert torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-6), (method, k)
        assert scaled.linear, method


def test_scaled_merge_falls_back_when_a_method_is_not_linear(monkeypatch):
    base, fts = toy_states()

    def quadratic(base_sd, _fts, _method, scaling=1.0, **_kw):
        return {k: v + scaling**2 for k, v in base_sd.items()}

    monkeypatch.setattr(bench_mod, "merge_state_dicts", quadratic)
    scaled = ScaledMerge(base, fts, "task_arithmetic", {}, "cpu", 0)
    assert torch.allclose(scaled(0.5)["w"], base["w"] + 0.25)
    assert not scaled.linear
    assert torch.allclose(scaled(2.0)["w"], base["w"] + 4.0)


def test_scaled_merge_without_a_scaling_uses_the_given_or_default_one():
    """--no-search calls the merge with scaling None: the default (0.3 for task arithmetic), or the
    one passed as a method option, never a TypeError."""
    base, fts = toy_states()
    got = ScaledMerge(base, fts, "task_arithmetic", {}, "cpu", 0)(None)
    want = {k: base[k] + 0.3 * sum(ft[k] - base[k] for ft in fts) for k in base}
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in base)
    got = ScaledMerge(base, fts, "task_arithmetic", {"scaling": 0.8}, "cpu", 0)(None)
    want = {k: base[k] + 0.8 * sum(ft[k] - base[k] for ft in fts) for k in base}
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in base)


def test_bench_no_search_runs_a_scaled_method(zoo):
    res = run_bench(SUITE, "task_arithmetic", zoo=zoo, search=False, progress=False)
    row = res.row("task_arithmetic")
    assert set(row.accuracies) == set(res.tasks) and row.val_average is None


def test_method_selection():
    free = resolve_methods("data-free")
    assert free[:8] == ["average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts", "mda"]
    assert resolve_methods("tsv,mda") == ["tsv", "mda"]
    everything = resolve_methods("all")
    assert everything[:len(free)] == free
    adaptive = bench_mod.adaptive_methods()
    assert set(everything[len(free):]) <= set(adaptive)
    with pytest.raises(ConfigError, match="unknown method 'tsvm'.*did you mean 'tsv'"):
        resolve_methods("tsvm")


@pytest.mark.slow
def test_zoo_records_beat_the_pretrained_backbone_and_are_reused(zoo):
    assert zoo.missing(SUITE) == []
    for task in ["mnist", "fashion", "letters"]:
        assert zoo.is_built(task)
        rec = zoo.records[task]
        assert rec["finetuned"]["test"] > rec["pretrained"]["test"], task
        assert rec["train_size"] == 500
    assert zoo.build(SUITE, progress=False) == {}  # everything reused
    assert zoo.pretrain_record["num_parameters"] == sum(t.numel() for t in zoo.base_state_dict().values())
    with pytest.raises(ConfigError, match=r"other settings \(finetune.steps: 60 vs 61\)"):
        Zoo(zoo.root, settings=ZooSettings(**{**TINY.__dict__, "finetune": TrainSettings(61, 32, 2e-3)}))
    assert zoo.head("mnist").weight.shape == (10, 32) and not zoo.head("mnist").weight.requires_grad


@pytest.mark.slow
def test_bench_table_uses_validation_for_choices_and_test_once(zoo, monkeypatch, tmp_path):
    calls = []

    def spy_on(name):  # validation goes through evaluate_backbone, the test split through backbone_correct
        real = getattr(bench_mod, name)

        def spy(state, z, tasks, split="test", *args, **kw):
            calls.append(split)
            return real(state, z, tasks, split, *args, **kw)
        monkeypatch.setattr(bench_mod, name, spy)

    spy_on("evaluate_backbone")
    spy_on("backbone_correct")
    res = run_bench(SUITE, "task_arithmetic,mda,average", zoo=zoo, progress=False, val_limit=200)
    rows = [r.name for r in res.rows]
    assert rows == ["pretrained", "fine-tuned", "task_arithmetic", "mda", "average"]
    n_val = sum(len(r.trials) for r in res.rows)
    assert calls.count("test") == 3 and calls.count("val") == n_val
    mda = res.row("mda")
    assert len({(t.params["etf_side"], t.params["etf_over"], t.params["polar"]) for t in mda.trials}) == 12
    assert set(mda.params) == {"etf_side", "etf_over", "polar", "scaling"}
    assert mda.val_average == max(t.val_average for t in mda.trials)

    # Independent recomputation of the task-arithmetic row: theta_0 + s * sum_t tau_t, written out here.
    ta = res.row("task_arithmetic")
    s = ta.params["scaling"]
    assert ta.val_average == max(t.val_average for t in ta.trials)
    base = zoo.base_state_dict()
    fts = [zoo.finetuned_state_dict(t) for t in res.tasks]
    by_hand = {k: base[k] + s * sum(ft[k] - base[k] for ft in fts) for k in base}
    val = evaluate_backbone(by_hand, zoo, res.tasks, "val", limit=200)
    assert average(val) == pytest.approx(ta.val_average, abs=1e-9)
    test = evaluate_backbone(by_hand, zoo, res.tasks, "test")
    assert test == pytest.approx(ta.accuracies, abs=1e-9)


@pytest.mark.slow
def test_bench_rows_normalisation_and_saved_files(zoo, result):
    assert [r.name for r in result.rows] == ["pretrained", "fine-tuned", *bench_mod.data_free_methods()]
    for task in result.tasks:
        assert result.finetuned.accuracies[task] == pytest.approx(zoo.individual_accuracy(task))
        assert result.row("pretrained").accuracies[task] == pytest.approx(zoo.pretrained_accuracy(task))
    tsv = result.row("tsv")
    expected = sum(tsv.accuracies[t] / result.finetuned.accuracies[t] for t in result.tasks) / 3
    assert result.normalized_average("tsv") == pytest.approx(expected)
    assert result.normalized_average("fine-tuned") == pytest.approx(1.0)
    assert "scaling" in tsv.params and "scaling" not in result.row("average").params
    assert result.meta["zoo"] == str(zoo.root) and set(result.meta["zoo_build_seconds"]) == {"pretrained", *result.tasks}


@pytest.mark.slow
def test_saved_json_round_trips(result, tmp_path):
    paths = result.save(tmp_path)
    loaded = BenchResult.from_dict(json.loads(paths["json"].read_text()))
    assert loaded.tasks == result.tasks and [r.name for r in loaded.rows] == [r.name for r in result.rows]
    assert loaded.row("mda").accuracies == result.row("mda").accuracies
    text = paths["markdown"].read_text()
    assert "| Method | mnist | fashion | letters | **Avg** | **Norm.** |" in text
    assert "MDA options on the validation split" in text and "TSV-M" in text


@pytest.mark.slow
def test_bench_rebuilds_a_missing_task(cache, tmp_path):
    zoo = Zoo(cache / zoo_subdir())
    before = zoo.finetuned_state_dict("letters")
    shutil.rmtree(zoo.finetuned_dir("letters"))
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        run_bench(["letters"], "average", zoo=zoo, progress=False)
    res = run_bench(["mnist", "letters"], "average", zoo=zoo, progress=False)
    assert zoo.is_built("letters") and res.suite == "custom"
    after = zoo.finetuned_state_dict("letters")
    for k in before:  # seeded: the rebuilt model is the same
        assert torch.allclose(before[k], after[k], atol=1e-5), k


@pytest.mark.slow
def test_data_based_methods_join_the_table(zoo):
    adaptive = bench_mod.adaptive_methods()
    if "adamerging_task" not in adaptive:
        pytest.skip("mdamerge.adaptation not available")
    res = run_bench(SUITE, "adamerging_task", zoo=zoo, progress=False,
                    method_options={"adamerging_task": {"steps": 2, "max_unlabeled": 32, "progress": False}})
    row = res.row("adamerging_task")
    assert row.kind == "data-based" and set(row.accuracies) == set(res.tasks)
    assert row.info.get("method") == "adamerging_task"


def test_held_out_tasks_selection_and_errors():
    tasks = ["a", "b", "c", "d"]
    assert bench_mod.held_out_tasks(tasks, None) == [] and bench_mod.held_out_tasks(tasks, 0) == []
    assert bench_mod.held_out_tasks(tasks, 2) == ["c", "d"] and bench_mod.held_out_tasks(tasks, "1") == ["d"]
    assert bench_mod.held_out_tasks(tasks, "b, a") == ["b", "a"]
    with pytest.raises(ConfigError, match="leaves 1 of 4 tasks"):
        bench_mod.held_out_tasks(tasks, 3)
    with pytest.raises(ConfigError, match="held-out task 'e' is not in"):
        bench_mod.held_out_tasks(tasks, "e")


@pytest.mark.slow
def test_unseen_tasks_are_left_out_of_the_merge_and_tested_with_their_heads(zoo, tmp_path):
    opts = {"adamerging_task": {"steps": 2, "max_unlabeled": 32, "progress": False}}
    methods = "task_arithmetic" + (",adamerging_task" if "adamerging_task" in bench_mod.adaptive_methods() else "")
    res = run_bench(SUITE, methods, zoo=zoo, progress=False, unseen=1, method_options=opts, out_dir=tmp_path, val_limit=50)
    assert res.unseen == ["letters"] and res.meta["unseen"] == ["letters"]
    # written out by hand: theta_0 + s * (tau_mnist + tau_fashion), letters' task vector unused,
    # s chosen on the validation data of the merged tasks only
    ta = res.row("task_arithmetic")
    base = zoo.base_state_dict()
    fts = [zoo.finetuned_state_dict(t) for t in ("mnist", "fashion")]
    by_hand = {k: base[k] + ta.params["scaling"] * sum(ft[k] - base[k] for ft in fts) for k in base}
    val = evaluate_backbone(by_hand, zoo, ["mnist", "fashion"], "val", limit=50)
    assert average(val) == pytest.approx(ta.val_average, abs=1e-9)
    expected = evaluate_backbone(by_hand, zoo, ["mnist", "fashion", "letters"], "test")
    assert ta.accuracies == pytest.approx(expected, abs=1e-9)
    split = res.split_averages("task_arithmetic")
    assert split["seen"] == pytest.approx((expected["mnist"] + expected["fashion"]) / 2)
    assert split["unseen"] == pytest.approx(expected["letters"])
    if "adamerging_task" in methods:
        am = res.row("adamerging_task")
        assert set(am.accuracies) == {"mnist", "fashion", "letters"}
        assert am.info["tasks"] == ["mnist", "fashion"]  # adapted on the merged tasks only
    text = (tmp_path / "bench-tiny3.md").read_text()
    assert "Generalisation: merged on the seen tasks" in text and "Unseen avg (letters)" in text


@pytest.mark.slow
def test_cli_zoo_bench_and_eval(cache, tmp_path):
    runner = CliRunner()
    out = runner.invoke(main, ["zoo", "build", "--suite", SUITE, "--cache", str(cache), "--quiet"])
    assert out.exit_code == 0, out.output
    assert "3/3 tasks already built" in out.output and "letters" in out.output

    res = runner.invoke(main, ["bench", "--suite", SUITE, "--methods", "task_arithmetic,tsv", "--cache", str(cache),
                               "--out", str(tmp_path / "res"), "--val-limit", "100", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "| Task arithmetic |" in res.output and "| TSV-M |" in res.output and "scaling=" in res.output
    saved = json.loads((tmp_path / "res" / "bench-tiny3.json").read_text())
    chosen = next(r for r in saved["rows"] if r["name"] == "task_arithmetic")["params"]["scaling"]

    # Merge the zoo's folders with the engine (files in, folder out) and evaluate the folder.
    zoo = Zoo(cache / zoo_subdir())
    merged_dir = tmp_path / "merged"
    mdamerge.merge({"method": "task_arithmetic", "base_model": str(zoo.base_dir),
                    "models": [str(zoo.finetuned_dir(t)) for t in zoo.records],
                    "parameters": {"scaling": chosen}}, merged_dir, progress=False)
    ev = runner.invoke(main, ["eval", str(merged_dir), "--suite", SUITE, "--cache", str(cache), "--out", str(tmp_path / "ev")])
    assert ev.exit_code == 0, ev.output
    got = json.loads((tmp_path / "ev" / "eval.json").read_text())["accuracies"]
    want = next(r for r in saved["rows"] if r["name"] == "task_arithmetic")["accuracies"]
    assert got == pytest.approx(want, abs=1e-9)
    assert "| **Average** |" in ev.output


def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--methods", "tsvm", "--cache", str(tmp_path)])
    assert res.exit_code == 2 and "error: unknown method 'tsvm'" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["eval", str(tmp_path), "--suite", "tiny3", "--cache", str(tmp_path)])
    assert res.exit_code == 2 and "error: task 'mnist' is not built" in res.output
    res = runner.invoke(main, ["bench", "--suite", "tasks9", "--cache", str(tmp_path)])
    assert res.exit_code == 2 and "unknown suite or task 'tasks9'" in res.output

    monkeypatch.setitem(sys.modules, "mdamerge.hf.recipes", None)  # makes the import fail
    res = runner.invoke(main, ["bench", "--recipe", "clip", "--methods", "tsv"])
    assert res.exit_code == 2 and "error: --recipe needs mdamerge.hf.recipes" in res.output

    seen = {}
    fake = types.ModuleType("mdamerge.hf.recipes")
    fake.run_recipe = lambda name, **kw: seen.update(name=name, **kw) or "recipe table"
    monkeypatch.setitem(sys.modules, "mdamerge.hf.recipes", fake)
    res = runner.invoke(main, ["bench", "--recipe", "clip", "--methods", "tsv,mda", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0 and "recipe table" in res.output
    assert seen == {"name": "clip", "methods": "tsv,mda", "out_dir": str(tmp_path / "r"), "device": "cpu"}


def test_results_page_rerenders_from_json_and_embeds_the_data_based_page(cache, result, tmp_path, capsys):
    from mdamerge.evaluation import results as results_mod
    from mdamerge.evaluation.tables import pct

    out = tmp_path / "results.md"
    with pytest.raises(SystemExit) as exc:
        results_mod.main(["--cache", str(cache), "--out", str(out), "--render-only"])
    assert exc.value.code == 2 and "results.json not found" in capsys.readouterr().err
    saved = {"started": "2026-01-01 00:00", "seconds": 60.0, "builds": {},
             "suites": {SUITE: result.to_dict()}}
    out.with_suffix(".json").write_text(json.dumps(saved))
    (tmp_path / "results_adaptive.md").write_text("# Data-based page\n\nintro\n\n## tiny3 (3 tasks)\n\n| x |\n")
    results_mod.main(["--cache", str(cache), "--out", str(out), "--render-only"])
    text = out.read_text()
    assert "## Summary" in text and f"| TSV-M | {pct(result.row('tsv').average)} |" in text
    assert "## Data-based methods" in text and "\n### tiny3 (3 tasks)\n" in text and "# Data-based page" not in text
    (tmp_path / "results_adaptive.md").unlink()
    results_mod.main(["--cache", str(cache), "--out", str(out), "--render-only"])
    assert "results_adaptive.md is missing" in out.read_text()


def test_results_page_keeps_one_paragraph_of_the_stored_recipes_figures(tmp_path):
    from mdamerge.evaluation.bench import BenchResult, Row
    from mdamerge.evaluation.results import STORED_RESULTS, stored_regime_section
    from mdamerge.zoo.build import recipe_name, vision_recipe

    assert stored_regime_section(tmp_path) == ""  # no saved figures of before: no paragraph
    rows = [Row("pretrained", "reference", {"a": 0.75}), Row("fine-tuned", "reference", {"a": 0.95}),
            Row("task_arithmetic", "data-free", {"a": 0.77}, params={"scaling": 0.1}),
            Row("tsv", "data-free", {"a": 0.79}, params={"scaling": 0.6}),
            Row("iso_cts", "data-free", {"a": 0.80}, params={"scaling": 1.0}),
            Row("adamerging_task", "data-based", {"a": 0.90})]  # data-based rows are not "data-free merges"
    meta = {"zoo_settings": vision_recipe("stored").to_dict()}
    suites = {s: BenchResult(s, ["a"], rows, meta).to_dict() for s in ("tasks8", "tasks14")}
    (tmp_path / STORED_RESULTS).write_text(json.dumps({"suites": suites}))
    text = stored_regime_section(tmp_path)
    assert "(500 pretraining steps, fine-tuning lr 0.0002;" in text
    assert ("tasks8: fine-tuning 20.0 points over the probes, task arithmetic's scaling 0.1 (10% of the gap), "
            "best data-free merge Iso-CTS 25%; tasks14:") in text
    assert recipe_name(vision_recipe("stored")) == "stored" and recipe_name(vision_recipe("additive")) == "additive"
    assert recipe_name(dataclasses.replace(vision_recipe("additive"), probe_shots=None)) == "custom"


def test_results_page_states_the_thread_count_the_suites_ran_with_not_the_renderers(result):
    from mdamerge.evaluation.results import benchmark_threads

    ran_with = result.meta["torch_threads"]
    other = dataclasses.replace(result, meta={**result.meta, "torch_threads": ran_with + 3})
    assert benchmark_threads({"a": result}) == str(ran_with)
    assert benchmark_threads({"a": result, "b": other}) == f"{ran_with}/{ran_with + 3}"
    assert benchmark_threads({"a": dataclasses.replace(result, meta={})}) == "unrecorded"


def test_results_page_takes_the_paper_experiments_statements_only(tmp_path):
    from mdamerge.evaluation.results import paper_experiments_section

    page = tmp_path / "paper_experiments.md"
    assert "_Not generated yet" in paper_experiments_section(page)
    page.write_text("# Title\n\nintro\n\n## tasks8\n\n### Plain statements\n\n- MDA ties TSV-M.\n\n"
                    "### Compute\n\n| method | s |\n|---|---|\n\n## text8\n\n### Plain statements\n\n- second suite.\n")
    text = paper_experiments_section(page)
    assert "**tasks8**" in text and "- MDA ties TSV-M." in text and "**text8**" in text and "- second suite." in text
    assert "| method |" not in text and "intro" not in text and "(paper_experiments.md)" in text


def test_every_row_keeps_its_per_example_test_results_for_the_intervals(zoo, result):
    from mdamerge.evaluation.intervals import unpack_correct
    from mdamerge.evaluation.tables import markdown_report

    for row in result.rows:
        for task in result.tasks:
            correct = unpack_correct(row.correct[task])
            assert len(correct) == len(zoo.task_data(task).test[1])
            assert row.accuracies[task] == pytest.approx(float(correct.double().mean()))
    intervals = result.intervals()
    tsv, ta = result.row("tsv").average, result.row("task_arithmetic").average
    assert intervals["tsv"]["task_arithmetic"].diff == pytest.approx(tsv - ta)
    assert intervals["tsv"]["task_arithmetic"].low <= tsv - ta <= intervals["tsv"]["task_arithmetic"].high
    assert "## Differences from TSV-M and task arithmetic" in markdown_report(result)


def test_a_zoo_adopts_an_alike_pretrained_backbone_and_refuses_another(cache, tmp_path):
    donor = Zoo(cache / zoo_subdir())
    lower_lr = dataclasses.replace(TINY, finetune=dataclasses.replace(TINY.finetune, lr=5e-4))
    zoo = Zoo(tmp_path / "variant", settings=lower_lr)
    zoo.adopt_base(donor)
    assert zoo.has_base() and zoo.pretrain_record["adopted_from"] == str(donor.root)
    for k, v in donor.base_state_dict().items():
        assert torch.equal(zoo.base_state_dict()[k], v)
    assert Zoo(tmp_path / "variant").pretrain_record["seconds"] == donor.pretrain_record["seconds"]  # saved
    longer = dataclasses.replace(TINY, pretrain=dataclasses.replace(TINY.pretrain, steps=120))
    with pytest.raises(ConfigError, match=r"pretrained with other settings \(pretrain\)"):
        Zoo(tmp_path / "other", settings=longer).adopt_base(donor)


def test_the_recipe_rule_wants_the_gap_and_a_clear_margin_for_a_longer_build(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import regime

    def fig(gap, ta, tsv, seconds):  # shares of the gap
        return {"pretrained": 0.8, "finetuned": 0.8 + gap, "build_seconds": seconds,
                "methods": {"task_arithmetic": {"val": 0.8 + ta * gap}, "tsv": {"val": 0.8 + tsv * gap}}}

    figures = {"short": fig(0.10, 0.20, 0.60, 100), "long": fig(0.10, 0.28, 0.90, 200),
               "small gap": fig(0.05, 0.40, 0.60, 50), "longest": fig(0.12, 0.40, 0.59, 400)}
    assert regime.closeness(figures["short"]) == pytest.approx(0.5)  # min(0.20 / 0.40, 0.60 / 0.60)
    assert regime.closeness(figures["long"]) == pytest.approx(0.7)
    assert regime.choose_recipe(figures) == "longest"  # 0.983 > 0.7 + 0.1; "small gap" lacks the 8 points
    figures["longest"] = fig(0.12, 0.30, 0.59, 400)  # 0.75: not 0.1 closer than "long"
    assert regime.choose_recipe(figures) == "long"
    assert "**Chosen: long.**" in regime.rule_text(figures)
    assert regime.choose_recipe({"x": fig(0.05, 1, 1, 1)}) is None


@pytest.mark.slow
def test_regime_figures_are_validation_only_and_match_a_merge_by_hand(zoo, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import regime

    splits = []
    real = regime.evaluate_backbone

    def spy(state, z, tasks, split="test", *args, **kw):
        splits.append(split)
        return real(state, z, tasks, split, *args, **kw)

    monkeypatch.setattr(regime, "evaluate_backbone", spy)
    tasks = ["mnist", "fashion", "letters"]
    fig = regime.validation_figures(zoo, tasks)
    assert set(splits) == {"val"}
    assert fig["pretrained"] == pytest.approx(sum(zoo.pretrained_accuracy(t, "val") for t in tasks) / 3)
    assert fig["finetuned"] == pytest.approx(sum(zoo.individual_accuracy(t, "val") for t in tasks) / 3)
    base = zoo.base_state_dict()
    fts = [zoo.finetuned_state_dict(t) for t in tasks]
    for s, key in ((fig["methods"]["task_arithmetic"]["scaling"], "val"), (1.0, "val_at_scaling_1")):
        by_hand = {k: base[k] + s * sum(ft[k] - base[k] for ft in fts) for k in base}
        assert average(real(by_hand, zoo, tasks, "val")) == pytest.approx(fig["methods"]["task_arithmetic"][key])
    gap = fig["finetuned"] - fig["pretrained"]
    assert regime.share(fig, fig["finetuned"]) == pytest.approx(1.0) and regime.share(fig, fig["pretrained"]) == 0
    assert gap > 0 and "| TA scaling |" in regime.render({"tiny": fig})


def test_results_page_rerenders_from_the_saved_zoo_facts_where_the_zoo_is_not_built(cache, result, tmp_path):
    from mdamerge.evaluation import results as results_mod

    out = tmp_path / "results.md"
    saved = {"started": "2026-01-01 00:00", "seconds": 60.0, "builds": {}, "suites": {SUITE: result.to_dict()},
             "zoo": results_mod.zoo_facts(Zoo(cache / zoo_subdir()), [SUITE])}  # as on disk: an earlier test rebuilt a task
    out.with_suffix(".json").write_text(json.dumps(saved))
    results_mod.main(["--cache", str(cache), "--out", str(out), "--render-only"])
    with_zoo = out.read_text()
    results_mod.main(["--cache", str(tmp_path / "no-zoo-here"), "--out", str(out), "--render-only"])
    assert out.read_text() == with_zoo and "| mnist |" in with_zoo
    assert "Differences from TSV-M and task arithmetic on tiny3" in with_zoo and "_No intervals" not in with_zoo


def test_results_update_benches_only_the_named_suite_and_keeps_the_others(cache, result, tmp_path, capsys):
    """`--update --suites tiny3`: tiny3's rows are benched again (with per-example results, so its table gets
    intervals); the other saved suite is kept as it was (still without intervals); the replaced rows' averages
    are recorded and the page names those the new rows do not reproduce."""
    import copy

    from mdamerge.evaluation import results as results_mod
    from mdamerge.zoo.tasks import SUITES

    out = tmp_path / "results.md"
    old = copy.deepcopy(result.to_dict())
    old.pop("intervals")
    for row in old["rows"]:  # rows saved before they kept per-example results
        row["correct"] = {}
    tsv = next(r for r in old["rows"] if r["name"] == "tsv")
    tsv["accuracies"] = {t: 0.5 for t in tsv["accuracies"]}
    tsv["average"] = 0.5
    kept = {**copy.deepcopy(old), "suite": "tasks8"}
    facts = results_mod.zoo_facts(Zoo(cache / zoo_subdir()), [SUITE])
    for t in SUITES["tasks8"]:  # the kept suite's zoo is not built here: its facts are saved
        facts["tasks"].setdefault(t, facts["tasks"]["mnist"])
    saved = {"started": "2026-01-01 00:00", "seconds": 60.0, "builds": {}, "suites": {SUITE: old, "tasks8": kept},
             "zoo": facts}
    out.with_suffix(".json").write_text(json.dumps(saved))

    results_mod.main(["--cache", str(cache), "--out", str(out), "--update", "--suites", SUITE,
                      "--methods", "task_arithmetic,tsv", "--val-limit", "0", "--threads", "1"])
    new = json.loads(out.with_suffix(".json").read_text())
    assert new["suites"]["tasks8"] == kept and list(new["suites"]) == [SUITE, "tasks8"]
    rows = {r["name"]: r for r in new["suites"][SUITE]["rows"]}
    assert set(rows) == {"pretrained", "fine-tuned", "task_arithmetic", "tsv"}
    assert all(rows[n]["correct"] for n in rows) and "intervals" in new["suites"][SUITE]
    (update,) = new["updates"]
    assert update["suites"] == [SUITE] and update["same_settings"]
    assert new["suites"][SUITE]["meta"]["torch_threads"] == 1
    assert update["previous"][SUITE]["tsv"] == 0.5
    assert update["averages"][SUITE]["tsv"] == pytest.approx(rows["tsv"]["average"])
    text = out.read_text()
    assert text.count("_No intervals") == 1  # tasks8's
    assert f"Differences from TSV-M and task arithmetic on {SUITE}:\n\nDifferences of average" in text
    assert f"- {SUITE}: benchmarked again with `--update`" in text and "the same as the earlier rows'" in text
    assert f"{SUITE} TSV-M 50.00 -> {100 * rows['tsv']['average']:.2f}" in text
    assert new["zoo"] == facts and new["builds"] == {}  # the kept suites' zoo facts; this zoo's build is in the update
    zoo = Zoo(cache / zoo_subdir())
    recorded = zoo.pretrain_record["seconds"] + sum(zoo.records[t]["seconds"] for t in SUITES[SUITE])
    assert update["zoo_build"]["seconds"] == pytest.approx(recorded, abs=0.1)
    assert f"whose zoo.json records a build of {recorded:.0f} s for {SUITE}" in text
    assert "The zoo tables below describe the earlier run's zoo (its facts saved in results.json)." in text
    assert f"{SUITE} TIES no longer benchmarked" in text
    assert f"Against TSV-M on {SUITE}:" in text

    # --add-methods joins rows into the re-benched suite (same zoo, its reference rows); a data-based row too
    results_mod.main(["--cache", str(cache), "--out", str(out), "--add-methods", "ties,adamerging_task",
                      "--suites", SUITE, "--adaptive-steps", "2", "--threads", "1"])
    added = json.loads(out.with_suffix(".json").read_text())
    rows = {r["name"]: r for r in added["suites"][SUITE]["rows"]}
    assert [r["name"] for r in added["suites"][SUITE]["rows"]] == [
        "pretrained", "fine-tuned", "task_arithmetic", "tsv", "ties", "adamerging_task"]
    assert rows["adamerging_task"]["kind"] == "data-based" and rows["adamerging_task"]["params"]["steps"] == 2
    assert rows["adamerging_task"]["correct"] and "adamerging_task" in added["suites"][SUITE]["intervals"]
    assert rows["pretrained"] == {**new["suites"][SUITE]["rows"][0]}  # the saved reference rows, not re-evaluated
    assert added["suites"]["tasks8"] == kept and added["added"][0]["suite"] == SUITE
    assert set(added["added"][0]["seconds"]) == {"ties", "adamerging_task"}
    text = out.read_text()
    assert f"- {SUITE}: TIES " in text and "data-based methods at 2 steps" in text
    assert "| adamerging_task | " in text and " | - | - |" in text  # the summary: tasks8 has no such row
    assert f"Best data-free method: " in text and "Best data-free method: adamerging_task" not in text
    elsewhere = json.loads(out.with_suffix(".json").read_text())
    elsewhere["suites"][SUITE]["meta"]["zoo"] = str(tmp_path / "another-zoo")
    out.with_suffix(".json").write_text(json.dumps(elsewhere))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        results_mod.main(["--cache", str(cache), "--out", str(out), "--add-methods", "ties", "--suites", SUITE])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "were benched on the zoo at" in err

    # a zoo with other settings than the saved rows': one line, exit status 2, nothing written
    saved["suites"][SUITE]["meta"]["zoo_settings"]["finetune"]["lr"] = 1.0
    out.with_suffix(".json").write_text(json.dumps(saved))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        results_mod.main(["--cache", str(cache), "--out", str(out), "--update", "--suites", SUITE])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "other settings (fingerprint" in err
    assert "updates" not in json.loads(out.with_suffix(".json").read_text())
    with pytest.raises(SystemExit) as exc:
        results_mod.main(["--out", str(tmp_path / "none.md"), "--update"])
    assert exc.value.code == 2 and "none.json not found; run without --update first" in capsys.readouterr().err


def test_seed_table_gives_each_seeds_differences_and_their_spread(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import seeds
    from mdamerge.evaluation.bench import BenchResult, Row

    def result(ta, tsv):
        rows = [Row("pretrained", "reference", {"a": 0.70}), Row("fine-tuned", "reference", {"a": 0.90}),
                Row("task_arithmetic", "data-free", {"a": ta}), Row("tsv", "data-free", {"a": tsv})]
        return BenchResult("tasks8", ["a"], rows, {})

    per_seed = {"0": seeds.figures(result(0.75, 0.80)), "1": seeds.figures(result(0.76, 0.79))}
    assert per_seed["0"]["methods"]["tsv"]["share"] == pytest.approx(0.5)
    assert per_seed["1"]["methods"]["task_arithmetic"]["minus_tsv"] == pytest.approx(-0.03)
    text = seeds.render(per_seed, "cmd")
    # TA minus TSV-M: -5 and -3 points, mean -4, sample standard deviation 1.41
    assert "| Task arithmetic | 25% | 30% | -5.0 / -3.0 | -4.0 +- 1.4 | +0.0 / +0.0 | +0.0 +- 0.0 |" in text
    assert "seed 0 20.0, seed 1 20.0" in text
    # another seed's zoo: its own folder, the fine-tuning seed changed, seed 0's backbone adopted
    seed0 = Zoo(tmp_path / "zoo-additive", settings=TINY)
    seed0.base_dir.mkdir(parents=True)
    (seed0.base_dir / "model.safetensors").write_bytes(b"weights")
    seed0._save_state()
    other = seeds.seed_zoo(seed0, 2, tmp_path)
    assert other.root == tmp_path / "zoo-additive-seed2" and other.settings.finetune.seed == 2
    assert dataclasses.replace(other.settings, finetune=TINY.finetune) == TINY
    assert (other.base_dir / "model.safetensors").read_bytes() == b"weights"


def test_results_page_embeds_the_seed_page_when_there_is_one(tmp_path):
    from mdamerge.evaluation.results import SEEDS_PAGE, seeds_section

    assert seeds_section(tmp_path) == ""
    (tmp_path / SEEDS_PAGE).write_text("# Over seeds\n\nintro\n\n| a |\n")
    assert seeds_section(tmp_path) == f"\n## Over seeds ([{SEEDS_PAGE}]({SEEDS_PAGE}))\n\nintro\n\n| a |\n"
