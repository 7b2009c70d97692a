"""The bookkeeping of benchmarks/paper_experiments.py: choosing MDA's options across suites,
the confirmation subsets, the sensitivity grid and its reuse of stored cells (no zoo needed)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import paper_experiments as pe  # noqa: E402
from adaptive_results import main as adaptive_main, overrides_note, refresh_data_free  # noqa: E402

from mdamerge.evaluation.bench import MDA_OPTIONS, BenchResult, Row, Trial  # noqa: E402

OPTION_SETS = [dict(zip(MDA_OPTIONS, combo)) for combo in itertools.product(*MDA_OPTIONS.values())]


def fake_result(suite: str, score, tsv_val: float) -> BenchResult:
    """A saved benchmark whose MDA search gave ``score(options, scaling)`` for each option set and scaling."""
    trials = [Trial({**o, "scaling": s}, score(o, s)) for o in OPTION_SETS for s in (0.6, 1.0)]
    rows = [Row("fine-tuned", "reference", {"a": 0.9, "b": 0.9}),
            Row("tsv", "data-free", {"a": 0.7}, params={"scaling": 0.6}, val_average=tsv_val),
            Row("mda", "data-free", {"a": 0.7}, params={**OPTION_SETS[0], "scaling": 0.6}, trials=trials)]
    return BenchResult(suite, ["a", "b"], rows, {"val_limit": 250})


def test_option_table_averages_each_option_sets_best_scaling_over_the_suites(tmp_path):
    # suite A prefers scaling 0.6 and right-side sets; suite B prefers 1.0 and 'tasks' sets
    a = fake_result("tasks8", lambda o, s: 0.70 + (0.02 if o["etf_side"] == "right" else 0) + (0.01 if s == 0.6 else 0), 0.7)
    b = fake_result("tasks14", lambda o, s: 0.60 + (0.05 if o["etf_over"] == "tasks" else 0) + (0.01 if s == 1.0 else 0), 0.6)
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"started": "then", "suites": {"tasks8": a.to_dict(), "tasks14": b.to_dict()}}))
    results = pe.searched_results([str(saved)])
    assert set(results) == {"tasks8", "tasks14"} and results["tasks8"]["started"] == "then"
    table = pe.option_table(results)
    assert len(table) == len(OPTION_SETS) == 12
    row = table[pe.option_key({"etf_side": "right", "etf_over": "tasks", "polar": True})]
    assert row["suites"]["tasks8"] == {"val": 100 * 0.73, "scaling": 0.6, "by_scaling": {"0.6": 100 * 0.73, "1.0": 100 * 0.72}}
    assert row["suites"]["tasks14"]["val"] == 100 * 0.66 and row["suites"]["tasks14"]["scaling"] == 1.0
    assert abs(row["mean"] - (73 + 66) / 2) < 1e-9
    best = max(table.values(), key=lambda r: r["mean"])
    assert best["options"]["etf_side"] == "right" and best["options"]["etf_over"] == "tasks"


def test_searched_results_reads_a_single_bench_json_too(tmp_path):
    saved = tmp_path / "bench-tasks14.json"
    saved.write_text(json.dumps(fake_result("tasks14", lambda o, s: 0.5, 0.5).to_dict()))
    results = pe.searched_results([str(saved)])
    assert list(results) == ["tasks14"] and results["tasks14"]["started"].endswith("(file time)")


def test_searched_results_skips_results_without_an_mda_search(tmp_path):
    r = fake_result("text8", lambda o, s: 0.5, 0.5)
    r.rows[2].trials = r.rows[2].trials[:1]  # MDA run with fixed options: nothing to choose from
    saved = tmp_path / "results_text.json"
    saved.write_text(json.dumps({"started": "now", "result": r.to_dict()}))
    assert pe.searched_results([str(saved), str(tmp_path / "missing.json")]) == {}


def test_confirmation_subsets_are_distinct_new_and_in_pool_order():
    pool = [f"t{i}" for i in range(20)]
    named = pool[:8]
    subsets = pe.confirmation_subsets(pool, 8, 3, seed=0, exclude=[named])
    assert len(subsets) == 3 and len({frozenset(s) for s in subsets}) == 3
    for s in subsets:
        assert len(s) == 8 and set(s) <= set(pool) and set(s) != set(named)
        assert s == sorted(s, key=pool.index)
    assert subsets == pe.confirmation_subsets(pool, 8, 3, seed=0, exclude=[named])  # fixed seed, same draw
    assert subsets != pe.confirmation_subsets(pool, 8, 3, seed=1, exclude=[named])
    # a pool with only the excluded combination left yields nothing rather than looping forever
    assert pe.confirmation_subsets(named, 8, 2, seed=0, exclude=[named]) == []


def choice_data(option_means: list[float], tsv_val: float, confirm_diffs: list[float]) -> dict:
    defaults = dict(pe.MDA_DEFAULTS)
    options = [{"options": dict(o), "suites": {"tasks8": {"val": m, "scaling": 0.6}}, "mean": m}
               for o, m in zip(OPTION_SETS, option_means)]
    options.sort(key=lambda o: -o["mean"])
    confirm = [{"tasks": ["a"], "rows": [{"label": "TSV-M", "params": {}, "val": 70.0, "test": 70.0},
                                         {"label": "MDA fixed defaults", "params": {}, "val": 70.0, "test": 70.0 + d}]}
               for d in confirm_diffs]
    return {"options": options, "chosen": options[0]["options"], "defaults": defaults, "confirm": confirm,
            "sources": {"tasks8": {"source": "x", "started": "y", "val_limit": 250}}, "size": 8, "pool": "tasks20",
            "seed": 0, "val_limit": 250, "tsv_val": {"tasks8": {"val": tsv_val, "scaling": 0.6}}}


def test_choice_statement_says_plainly_whether_an_option_set_separates_from_tsv():
    tie = pe.choice_statement(choice_data([78.2] + [78.0] * 11, 78.1, [0.1, -0.2, 0.0]))
    assert "no MDA option set separates from TSV-M beyond noise" in tie
    assert "+0.10, -0.20, +0.00 (mean -0.03)" in tie
    # more than half a point on validation but not on every new combination: still no separation
    mixed = pe.choice_statement(choice_data([79.0] + [78.0] * 11, 78.1, [0.9, 0.2, 0.8]))
    assert "no MDA option set separates" in mixed
    clear = pe.choice_statement(choice_data([79.0] + [78.0] * 11, 78.1, [0.9, 0.7, 0.8]))
    assert "no MDA option set separates" not in clear and "beats TSV-M by more than half a point" in clear


def test_sensitivity_grid_is_the_full_4_by_4_and_axes_the_one_at_a_time_cross():
    full = pe.sensitivity_configs("full")
    assert len(full) == len(set(full)) == 16
    assert set(full) == set(itertools.product((0.0, 0.4, 0.8, 1.6), (0.0, 0.2, 1.0, 5.0)))
    axes = pe.sensitivity_configs("axes")
    assert len(axes) == len(set(axes)) == 7 and set(axes) <= set(full)
    assert all(a == 0.8 or b == 0.2 for a, b in axes)


def test_stored_sensitivity_cells_are_reused_only_for_the_same_method_steps_and_zoo():
    previous = {"method": "mda_ta", "steps": 50, "zoo_fingerprint": "abc",
                "rows": [{"alpha": 0.8, "beta": 0.2, "diversity": 1.0, "acc": 80.0}]}
    assert pe.reusable_rows(previous, "mda_ta", 50, "abc") == {(0.8, 0.2, 1.0): previous["rows"][0]}
    assert pe.reusable_rows(previous, "mda_ta", 100, "abc") == {}
    assert pe.reusable_rows(previous, "mda_feature", 50, "abc") == {}
    assert pe.reusable_rows(previous, "mda_ta", 50, "other zoo") == {}
    assert pe.reusable_rows(None, "mda_ta", 50, "abc") == {}


def test_full_grid_renders_one_alpha_by_beta_table_per_diversity_setting():
    rows = [{"alpha": a, "beta": b, "diversity": g, "acc": 70 + 10 * g + a + b / 10}
            for g in (1.0, 0.0) for a, b in pe.sensitivity_configs("full")]
    text = "\n".join(pe.render_sensitivity({"rows": rows, "method": "mda_ta", "steps": 50, "grid": "full"}))
    assert text.count("| alpha \\ beta | 0.0 | 0.2 | 1.0 | 5.0 |") == 2
    assert "| 1.6 | 81.60 | 81.62 | 81.70 | 82.10 |" in text  # gamma = 1, alpha = 1.6
    assert "| 0.0 | 70.00 | 70.02 | 70.10 | 70.50 |" in text  # gamma = 0, alpha = 0


def test_overrides_note_names_only_rows_that_left_their_defaults():
    rows = [{"method": "tsv", "kind": "data-free", "params": {}},
            {"method": "iso_c", "kind": "data-free", "params": {"scaling": 1.5}},
            {"method": "mda_ta", "kind": "data-based", "params": {"steps": 100}}]
    note = " ".join(overrides_note(rows))
    assert "iso_c scaling=1.5" in note and "tsv" not in note and "mda_ta" not in note
    assert overrides_note(rows[:1]) == []


def test_overrides_note_says_which_rows_were_refreshed_later():
    rows = [{"method": "tsv", "kind": "data-free", "params": {}},
            {"method": "iso_c", "kind": "data-free", "params": {}, "refreshed": "2026-12-01"}]
    note = " ".join(overrides_note(rows))
    assert "iso_c (2026-12-01)" in note and "tsv" not in note and "published defaults" not in note


def test_adaptive_results_names_a_mistyped_method_in_one_line_and_writes_nothing(tmp_path):
    import pytest

    out = tmp_path / "page.md"
    with pytest.raises(SystemExit, match=r"^error: unknown data-free method 'isoc'; choose from average, "):
        adaptive_main(["--refresh-data-free", "iso_c,isoc", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"^error: unknown data-based method 'mda_feat'; choose from adamerging"):
        adaptive_main(["--methods", "mda_feat", "--out", str(out)])
    assert not out.exists() and not out.with_suffix(".json").exists()


class _FingerprintZoo:
    root = "/zoo"

    class settings:  # noqa: N801 -- stands in for ZooSettings
        @staticmethod
        def fingerprint():
            return "abc"


def test_refresh_refuses_rows_of_another_zoo_or_rows_it_does_not_have():
    import pytest

    entry = {"suite": "tasks8", "tasks": ["a"], "settings": {}, "zoo_fingerprint": "old",
             "rows": [{"method": "iso_c", "kind": "data-free"}]}
    with pytest.raises(SystemExit, match="zoo old, the zoo at /zoo is abc"):
        refresh_data_free(_FingerprintZoo(), entry, ["iso_c"], None)
    with pytest.raises(SystemExit, match="no stored data-free row 'tsv'"):
        refresh_data_free(_FingerprintZoo(), {**entry, "zoo_fingerprint": "abc"}, ["tsv"], None)


class _TinyZoo:
    """Base and fine-tuned state dicts only: what the angles section reads."""

    def __init__(self, shapes: dict, tasks: int):
        import torch

        gen = torch.Generator().manual_seed(0)
        self.base = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
        self.fts = [{n: w + 0.1 * torch.randn(w.shape, generator=gen) for n, w in self.base.items()} for _ in range(tasks)]

    def base_state_dict(self):
        return self.base

    def finetuned_state_dict(self, task):
        return self.fts[task]


def test_angles_leave_layers_with_more_directions_than_dimensions_out_of_the_pooled_figures():
    """A 2 x 24 token-type embedding with T = 4 (k = 1, T k = 4 > 2): its directions cannot be orthonormal;
    pooled, it would make TSV-M's minimum angle ~0 instead of 90 degrees."""
    zoo = _TinyZoo({"tok.weight": (2, 24), "dense.weight": (24, 24)}, tasks=4)
    out = pe.section_angles(zoo, "tiny", list(range(4)), None)
    assert out["excluded"] == ["tok.weight"]
    assert [layer["name"] for layer in out["layers"]] == ["tok.weight", "dense.weight"]
    assert abs(out["overall"]["tsv"]["subspace"]["min"] - 90.0) < 1e-6
    assert out["layers"][0]["tsv"]["subspace"]["min"] < 80.0  # the degenerate layer itself, kept per layer
    assert "tok.weight" in "\n".join(pe.render_angles(out))


class _BudgetZoo:
    """A zoo with its own data-based budget, like the text zoo's CPU-sized one."""

    ADAPTIVE_DEFAULTS = {"steps": 30, "batch_size": 8, "lr": 5e-3, "init_samples": 128}


def test_data_based_methods_run_the_zoos_own_budget_with_the_requested_steps():
    from mdamerge.adaptation import ADAPTIVE_METHODS

    assert pe.default_steps(_BudgetZoo()) == 30 and pe.default_steps(object()) == pe.PAPER_STEPS
    opts = pe.data_based_options(_BudgetZoo(), "mda_ta", 12)
    assert opts["steps"] == 12 and opts["batch_size"] == 8 and opts["lr"] == 5e-3 and opts["init_samples"] == 128
    assert opts["progress"] is False
    # AdaMerging has no Procrustes start: the zoo's init_samples is not passed to it
    ada = pe.data_based_options(_BudgetZoo(), "adamerging_task", 12)
    assert "init_samples" not in ada and "init_samples" not in ADAPTIVE_METHODS["adamerging_task"].options
    assert ada["batch_size"] == 8
    # a zoo without a budget: only the steps, the methods keep their own batch
    assert pe.data_based_options(object(), "mda_ta", 100) == {"steps": 100, "progress": False}
    assert pe.method_default_batch() == 16


def _compute_rows():
    def row(method, kind, seconds=None, steps=None, step_seconds=None, setup_seconds=None):
        return {"method": method, "kind": kind, "acc": 70.0, "delta_etf": 0.9, "seconds": seconds, "steps": steps,
                "step_seconds": step_seconds, "setup_seconds": setup_seconds, "params": {},
                "cka": {"features": 0.9}}
    return [row("pretrained", "reference"), row("fine-tuned (individual)", "reference"),
            row("average", "data-free", 0.05), row("tsv", "data-free", 2.0), row("mda", "data-free", 4.0),
            row("adamerging_task", "data-based", 80.0, 100, 0.79, 1.0),
            row("adamerging_layer", "data-based", 70.0, 100, 0.69, 1.0),
            row("mda_ta", "data-based", 130.0, 100, 1.1, 20.0), row("mda_am", "data-based", 160.0, 200, 0.7, 20.0)]


def test_compute_statement_reports_the_tables_times():
    text = pe.compute_statement({"rows": _compute_rows(), "steps": 100})
    assert "data-free merges take 0.05-4.00 s (data-free MDA 4.00 s, TSV-M 2.00 s)" in text
    assert "the data-based methods 70-160 s at 100 steps" in text
    assert "AdaMerging 70-80 s (690-790 ms per step)" in text
    assert "MDA's data-based variants 130-160 s (700-1100 ms per step, setup 20.0 s)" in text
    assert "The slowest, mda_am, takes 40x data-free MDA's merge time." in text
    assert pe.compute_statement({"rows": _compute_rows()[:2], "steps": 100}) is None


def test_compute_table_states_the_budget_and_size_it_ran_with():
    text8 = {"rows": _compute_rows(), "steps": 30, "cka_samples": 320, "layers": ["encoder.layer.0"],
             "budget": {"batch_size": 8, "lr": 0.005, "init_samples": 128}, "parameters": 22_565_376}
    page = "\n".join(pe.render_compute(text8))
    assert "**30 steps** (batch 8 per task, lr 0.005, init_samples 128;" in page
    assert "22.6 M parameters, 86 MB in float32" in page and "| CKA block 0 |" in page
    assert "on the first 320 test inputs of each task" in page
    text8["cka_used"], text8["cka_samples"] = [320], 500  # every task has fewer test inputs than the cap
    assert "on all test inputs of each task (320; the cap 500 not reached)" in "\n".join(pe.render_compute(text8))
    stored_before = {k: v for k, v in text8.items() if k not in ("budget", "parameters")}
    assert "(batch 16 per task;" in "\n".join(pe.render_compute(stored_before))


def test_not_covered_lists_exactly_the_sections_the_store_lacks():
    choice = {"confirm": [{"tasks": ["a"], "rows": [{"label": "TSV-M"}, {"label": "MDA fixed defaults"}]}]}
    store = {"tasks8": {"compute": {}, "sensitivity": {"grid": "full", "rows": [{"diversity": 0.0}] * 16}},
             "text8": {"angles": {}, "ranks": {}, "signs": {}}, pe.ACROSS: {"choice": choice}}
    line = pe.not_covered(store)
    assert "the text suite's compute, unseen, defaults sections (`--suite text8 --sections compute,unseen,defaults`)" in line
    assert "Delta_ETF and CKA on tasks14, tasks20" in line and "--suite tasks8 --sections compute" not in line
    assert "--choice-search" in line and "rank sweep" not in line and "4 x 4" not in line
    store["text8"].update(compute={}, defaults={})
    assert "the text suite's unseen section (`--suite text8 --sections unseen`)" in pe.not_covered(store)
    store["text8"].update(unseen={})
    store.update(tasks14={"compute": {}}, tasks20={"compute": {}})
    choice["confirm"][0]["rows"].append({"label": pe.SUBSET_SEARCH})
    assert pe.not_covered(store) == ("Not covered here yet: the scale trend on a wider zoo backbone "
                                     "(not part of this page: see docs/results.md).")


def test_defaults_statement_says_whether_the_option_search_paid_on_test():
    def rows(searched_val, searched_test):
        return {"rows": [{"method": "tsv", "choice": "defaults, scaling on validation", "params": {}, "val": 78.2, "test": 77.7},
                         {"method": "mda", "choice": "defaults, scaling on validation", "params": {}, "val": 78.2, "test": 77.7},
                         {"method": "mda", "choice": "12 option sets x scaling on validation",
                          "params": {"etf_side": "right"}, "val": searched_val, "test": searched_test}]}
    text = pe.statements({"defaults": rows(78.9, 77.3)})[0]
    assert "tests 77.7% against TSV-M's 77.7% (+0.0 points; validation 78.2% vs 78.2%); " in text
    assert "etf_side=right" in text
    assert text.endswith("The search loses 0.4 test points against the fixed defaults despite its 0.7-point lead on validation.")
    assert pe.statements({"defaults": rows(78.9, 78.2)})[0].endswith("The search gains 0.5 test points against the fixed defaults.")
    assert pe.statements({"defaults": rows(78.0, 77.72)})[0].endswith("On test the search and the fixed defaults tie.")


def test_sign_statement_reports_the_test_of_a_variant_that_leaves_tsv_on_validation():
    signs = {"changes": [{"where": "zoo", "K": 374, "lapack": 0.07}],
             "accuracy": [{"variant": "TSV-M", "val": 62.50, "test": 63.44},
                          {"variant": "MDA canonical signs", "val": 63.05, "test": 63.32},
                          {"variant": "MDA LAPACK signs", "val": 62.73, "test": 63.28}]}
    text = pe.statements({"signs": signs})[0]
    assert text.endswith("MDA canonical signs is +0.55 points from TSV-M on validation (more than half a point) "
                         "and -0.1 on test (63.3%): the validation gap does not carry over to test.")
    signs["accuracy"][1].update(val=62.9)
    assert pe.statements({"signs": signs})[0].endswith(
        "No sign choice separates from TSV-M by more than half a point on validation.")


def test_compute_statement_says_which_methods_count_an_adamerging_stage_in_their_steps():
    text = pe.compute_statement({"rows": _compute_rows(), "steps": 100})
    assert "at 100 steps (mda_am: their AdaMerging stage counted in their steps)" in text


def test_delta_etf_statement_says_how_far_from_an_etf_the_closest_model_is():
    rows = _compute_rows()
    for r, etf in zip(rows, (0.517, 0.579, 0.500, 0.567, 0.567, 0.499, 0.498, 0.501, 0.490)):
        r["delta_etf"] = etf
    text = pe.statements({"compute": {"rows": rows, "steps": 30}})[0]
    assert "every merged model measures 0.490-0.567 (lowest mda_am, highest tsv)" in text
    assert "The lowest MDA variant (mda_am, 0.490) is 0.008 below the lowest baseline (adamerging_layer, 0.498)." in text
    assert ("(the lowest Delta_ETF of any model here, the fine-tuned ones included, is 0.490), and the merged models "
            "differ in Delta_ETF by at most 0.077: the paper's claim") in text
    rows[-1]["delta_etf"] = 0.2  # an MDA variant well below every baseline, near an ETF
    text = pe.statements({"compute": {"rows": rows, "steps": 30}})[0]
    assert "close to a simplex ETF" not in text and text.endswith("MDA lowers Delta_ETF by at least 0.01 here.")


def test_defaults_statement_flags_a_test_gap_that_validation_orders_the_other_way():
    rows = [{"method": "tsv", "choice": "defaults, scaling on validation", "params": {}, "val": 63.83, "test": 63.09},
            {"method": "mda", "choice": "defaults, scaling on validation", "params": {}, "val": 63.20, "test": 63.67},
            {"method": "mda", "choice": "12 option sets x scaling on validation", "params": {}, "val": 63.75, "test": 63.05}]
    text = pe.statements({"defaults": {"rows": rows}})[0]
    assert ("tests 63.7% against TSV-M's 63.1% (+0.6 points; validation 63.2% vs 63.8%, the reverse order, "
            "so the test gap is not a separation); ") in text
    rows[0]["val"] = 63.1  # validation agrees with test: no note
    assert "reverse order" not in pe.statements({"defaults": {"rows": rows}})[0]


def test_unseen_statement_compares_the_top_seen_backbone_with_the_median_loss_and_notes_scalings():
    def row(method, kind, seen, unseen, **params):
        return {"method": method, "kind": kind, "seen": seen, "unseen": unseen, "params": params}
    rows = [row("pretrained", "reference", 0.657, 0.512), row("tsv", "data-free", 0.677, 0.420, scaling=0.8),
            row("mda", "data-free", 0.680, 0.448, scaling=0.6), row("task_arithmetic", "data-free", 0.667, 0.506),
            row("iso_c", "data-free", 0.690, 0.460), row("mda_am", "data-based", 0.648, 0.500)]
    text = pe.statements({"unseen": {"unseen": ["a", "b"], "rows": rows}})[0]
    assert "data-free MDA 44.8% vs TSV-M 42.0% (+2.8 points, at validation-chosen scalings 0.6 vs 0.8)" in text
    # gaps (points): tsv -9.2, mda -6.4, ta -0.6, iso_c -5.2, mda_am -1.2 -> median -5.2
    assert "(-9.2 to -0.6 points, median -5.2):" in text  # mda_am is below pretrained on the seen tasks too
    assert "the backbone that gains most on the seen tasks, iso_c (+3.3 seen), loses 5.2 on the unseen ones, " \
           "about as much as the median or more." in text
    rows[4]["unseen"] = 0.505  # iso_c now loses only 0.7
    assert "less than the median" in pe.statements({"unseen": {"unseen": ["a", "b"], "rows": rows}})[0]
    rows[2]["params"]["scaling"] = 0.8
    assert "validation-chosen scalings" not in pe.statements({"unseen": {"unseen": ["a", "b"], "rows": rows}})[0]


def test_page_lists_suites_in_the_projects_order_and_the_cross_suite_part_last():
    names = ["text8", pe.ACROSS, "tasks14", "tasks8", "mine"]
    assert sorted(names, key=pe.suite_order) == ["tasks8", "tasks14", "text8", "mine", pe.ACROSS]


def test_memory_above_start_is_floored_at_zero_and_unmeasured_stays_unmeasured():
    assert pe.above_start(-0.4) == 0.0 and pe.above_start(12.5) == 12.5 and pe.above_start(None) is None


def test_choice_page_says_the_searched_row_also_chose_its_options_only_when_there_is_one():
    row = lambda label, test: {"label": label, "params": {"scaling": 0.6}, "val": 80.0, "test": test}  # noqa: E731
    d = {"sources": {}, "options": [{"options": {}, "suites": {}, "mean": 1.0}] * 12, "defaults": {"x": 1}, "chosen": {"x": 2},
         "confirm": [{"tasks": ["a", "b"], "rows": [row("TSV-M", 80.0), row("MDA fixed defaults", 80.1)]}],
         "size": 2, "pool": "tasks20", "seed": 0, "val_limit": 250}
    assert "also its option set" not in "\n".join(pe.render_choice(d))
    d["confirm"][0]["rows"].append(row(pe.SUBSET_SEARCH, 80.5))
    text = "\n".join(pe.render_choice(d))
    assert f"the row '{pe.SUBSET_SEARCH}' also its option set, among the 12" in text and "+0.50" in text
