"""The paired bootstrap intervals of benchmark differences (issue 19), against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch

from mdamerge.evaluation.bench import BenchResult, Row, row_from_correct
from mdamerge.evaluation.intervals import Interval, pack_correct, paired_interval, row_intervals, unpack_correct
from mdamerge.evaluation.tables import interval_section, interval_statements, interval_table


def bits(n, p, seed):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) < p


@pytest.mark.parametrize("n", [0, 1, 4, 7, 1003])
def test_packed_correctness_round_trips(n):
    c = bits(n, 0.6, n)
    packed = pack_correct(c)
    assert packed.startswith(f"{n}:") and len(packed) == len(f"{n}:") + math.ceil(n / 4)
    assert torch.equal(unpack_correct(packed), c)


def test_pack_puts_the_first_example_in_the_top_bit():
    assert pack_correct(torch.tensor([True, False, False, False, True])) == "5:88"


def test_identical_rows_give_the_degenerate_interval_zero():
    a = [bits(300, 0.7, 1), bits(500, 0.4, 2)]
    interval = paired_interval(a, [x.clone() for x in a])
    assert interval == Interval(0.0, 0.0, 0.0) and not interval.resolved


def test_a_row_right_everywhere_the_other_is_wrong_on_one_task_differs_by_exactly_one_over_t():
    # rows agree on tasks 1 and 2; on task 0 the first is always right, the second always wrong:
    # every resample gives the same difference, 1/3
    a = [torch.ones(50, dtype=torch.bool), bits(80, 0.5, 3), bits(60, 0.5, 4)]
    b = [torch.zeros(50, dtype=torch.bool), a[1].clone(), a[2].clone()]
    interval = paired_interval(a, b)
    assert interval.diff == pytest.approx(1 / 3) and interval.low == pytest.approx(1 / 3)
    assert interval.high == pytest.approx(1 / 3) and interval.resolved


def test_interval_matches_the_normal_approximation_of_a_paired_mean():
    # independent reference: the average of per-task mean differences has variance
    # sum_t var(d_t) / n_t / T^2 (population variance of the paired differences d_t)
    a = [bits(1000, p, 10 + i) for i, p in enumerate((0.7, 0.8, 0.6, 0.55))]
    b = [bits(1000, p, 20 + i) for i, p in enumerate((0.65, 0.8, 0.62, 0.5))]
    d = [x.double() - y.double() for x, y in zip(a, b)]
    mean = sum(float(x.mean()) for x in d) / 4
    se = math.sqrt(sum(float(x.var(unbiased=False)) / len(x) for x in d)) / 4
    interval = paired_interval(a, b)
    assert interval.diff == pytest.approx(mean)
    assert (interval.high - interval.low) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert (interval.high + interval.low) / 2 == pytest.approx(mean, abs=0.2 * se)


def test_pairing_narrows_the_interval_when_rows_agree_on_most_examples():
    a = [bits(1000, 0.7, 5)]
    b = [a[0].clone()]
    b[0][:30] = ~b[0][:30]  # differ on 30 examples only
    paired = paired_interval(a, b)
    unpaired_half_width = 1.96 * math.sqrt(0.7 * 0.3 * 2 / 1000)
    assert (paired.high - paired.low) / 2 < unpaired_half_width / 3


def test_swapping_the_rows_mirrors_the_interval_and_the_seed_fixes_the_draws():
    a, b = [bits(400, 0.6, 6), bits(300, 0.5, 7)], [bits(400, 0.55, 8), bits(300, 0.5, 9)]
    ab, ba = paired_interval(a, b), paired_interval(b, a)
    assert (ab.diff, ab.low, ab.high) == pytest.approx((-ba.diff, -ba.high, -ba.low))
    assert paired_interval(a, b) == ab and paired_interval(a, b, seed=1) != ab


def test_mismatched_rows_are_refused():
    with pytest.raises(ValueError, match="same tasks and test examples"):
        paired_interval([bits(10, 0.5, 1)], [bits(11, 0.5, 1)])


def _result(with_correct=True):
    tasks = ["a", "b"]
    truth = {"pretrained": (0.5, 0.5), "fine-tuned": (0.95, 0.9), "task_arithmetic": (0.7, 0.7),
             "tsv": (0.8, 0.75), "ties": (0.8, 0.75), "average": (0.6, 0.55)}
    rows = []
    for i, (name, ps) in enumerate(truth.items()):
        kind = "reference" if name in ("pretrained", "fine-tuned") else "data-free"
        correct = {t: bits(2000, p, 100 * i + j) for j, (t, p) in enumerate(zip(tasks, ps))}
        rows.append(row_from_correct(name, kind, correct) if with_correct else
                    Row(name, kind, {t: float(c.double().mean()) for t, c in correct.items()}))
    rows[4] = row_from_correct("ties", "data-free", {t: unpack_correct(c) for t, c in rows[3].correct.items()})  # = TSV-M
    return BenchResult("toy", tasks, rows)


def test_result_intervals_tables_and_statements():
    res = _result()
    assert res.row("tsv").accuracies["a"] == pytest.approx(float(unpack_correct(res.row("tsv").correct["a"]).double().mean()))
    intervals = res.intervals()
    assert set(intervals["average"]) == {"tsv", "task_arithmetic"} and set(intervals["tsv"]) == {"task_arithmetic"}
    assert intervals["tsv"]["task_arithmetic"].resolved and intervals["tsv"]["task_arithmetic"].diff > 0
    assert intervals["ties"]["tsv"] == Interval(0.0, 0.0, 0.0)
    table = interval_table(res)
    ties_vs_ta = intervals["ties"]["task_arithmetic"]
    assert (f"| TIES | {100 * res.row('ties').average:.1f} | "
            f"{100 * (res.row('ties').average - res.row('pretrained').average) / (res.finetuned.average - res.row('pretrained').average):.1f} "
            f"| +0.0 [+0.0, +0.0] | **{100 * ties_vs_ta.diff:+.1f} [") in table
    statements = "\n".join(interval_statements(res))
    assert "Against TSV-M on toy: resolved above: none; resolved below: Task arithmetic" in statements
    assert "not resolved (interval includes 0): TIES." in statements
    # saved and loaded, the correctness (and so the intervals) come back; the JSON carries them too
    data = res.to_dict()
    assert data["intervals"]["tsv"]["task_arithmetic"]["diff"] == pytest.approx(intervals["tsv"]["task_arithmetic"].diff)
    assert BenchResult.from_dict(data).intervals() == intervals


def test_results_without_per_example_correctness_have_no_intervals():
    res = _result(with_correct=False)
    assert res.intervals() == {} and interval_section(res) == "" and "intervals" not in res.to_dict()
    assert row_intervals({"x": {"a": "2:c"}}, ["a", "b"], ["x"]) == {}
