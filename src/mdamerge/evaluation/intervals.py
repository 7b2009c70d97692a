"""Paired bootstrap intervals for differences between benchmark rows.

The benchmark keeps, for every row and task, which test examples the row classified
correctly (:func:`pack_correct` stores them as hex in the results JSON). The difference of
two rows' average accuracies (mean over tasks of per-task accuracy) is then resampled
over test examples: each resample draws every task's test examples with replacement, the
*same* draw for both rows (they saw the same examples, so the comparison is paired), and
recomputes the difference. The 2.5th and 97.5th percentiles of 2000 seeded resamples give
the 95% interval; a difference is *resolved* when its interval excludes 0.

The draws depend only on the seed, the task's position and its test size, so every pair of
rows of one result is compared on identical resamples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

RESAMPLES = 2000
LEVEL = 0.95


def pack_correct(correct: torch.Tensor) -> str:
    """A 1-D bool tensor as ``"<n>:<hex>"`` (4 examples per hex digit, the first example in the top bit)."""
    bits = correct.to(torch.bool).reshape(-1).tolist()
    n = len(bits)
    padded = bits + [False] * (-n % 4)
    digits = "".join("%x" % (8 * a + 4 * b + 2 * c + d) for a, b, c, d in zip(*[iter(padded)] * 4))
    return f"{n}:{digits}"


def unpack_correct(packed: str) -> torch.Tensor:
    """Inverse of :func:`pack_correct`."""
    n_text, _, digits = packed.partition(":")
    n = int(n_text)
    values = torch.tensor([int(ch, 16) for ch in digits], dtype=torch.int64)
    bits = ((values[:, None] >> torch.tensor([3, 2, 1, 0])) & 1).reshape(-1)[:n]
    return bits.to(torch.bool)


@dataclass(frozen=True)
class Interval:
    """A difference of average accuracies (fractions) and its bootstrap interval."""

    diff: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        """True when the interval excludes 0 (the sign of the difference is settled)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"diff": self.diff, "low": self.low, "high": self.high}


def task_draws(task_index: int, n: int, resamples: int = RESAMPLES, seed: int = 0) -> torch.Tensor:
    """A ``(resamples, n)`` tensor of task ``task_index``'s test-example indices drawn with replacement.

    Seeded by ``seed`` and the task's position alone, so every pair of rows is resampled alike;
    drawn again for each pair rather than held for all tasks at once (20 tasks of a few
    thousand examples would hold gigabytes).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + task_index)
    return torch.randint(0, n, (resamples, n), generator=gen)


def paired_interval(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], resamples: int = RESAMPLES,
                    seed: int = 0, level: float = LEVEL) -> Interval:
    """Bootstrap interval of ``mean_t acc_t(a) - mean_t acc_t(b)``; ``a[t]``, ``b[t]``: per-example correctness
    of the two rows on task t (the same examples in the same order)."""
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        raise ValueError("paired rows must cover the same tasks and test examples")
    diffs = [x.double() - y.double() for x, y in zip(a, b)]
    observed = sum(float(d.mean()) for d in diffs) / len(diffs)
    boot = torch.zeros(resamples, dtype=torch.float64)
    for i, d in enumerate(diffs):
        boot += d[task_draws(i, len(d), resamples, seed)].mean(dim=1)
    boot /= len(diffs)
    tail = (1 - level) / 2
    low, high = torch.quantile(boot, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return Interval(observed, low, high)


def row_intervals(correct: Mapping[str, Mapping[str, str]], tasks: Sequence[str], references: Sequence[str],
                  seed: int = 0) -> dict[str, dict[str, Interval]]:
    """``{row: {reference: Interval}}`` for every row with stored correctness against each stored reference row.

    ``correct[row][task]`` is :func:`pack_correct`'s text. Rows or references without it for
    every task are left out (results saved before the benchmark kept predictions).
    """
    full = {name: [unpack_correct(per_task[t]) for t in tasks] for name, per_task in correct.items()
            if all(t in per_task for t in tasks)}
    refs = [r for r in references if r in full]
    return {name: {ref: paired_interval(rows, full[ref], seed=seed) for ref in refs if ref != name}
            for name, rows in full.items()} if refs else {}
