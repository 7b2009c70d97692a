"""mdamerge equals FusionBench's own functions on the same task vectors (benchmarks/parity_fusionbench.py).

Needs ``fusion-bench`` importable (a side venv, see the harness's docstring); skipped otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fusion_bench", reason="fusion-bench is not installed (side tool: see benchmarks/parity_fusionbench.py)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from parity_fusionbench import fb_merge, make_state_dicts, md_merge, worst  # noqa: E402


@pytest.mark.parametrize("method", ["average", "task_arithmetic", "ties", "dare", "tsv", "iso_c", "iso_cts"])
def test_same_merged_task_vector_as_fusionbench_float64(method):
    base, fts = make_state_dicts(3, seed=3)
    ref = fb_merge(method, base, fts, torch.float64)
    got = md_merge(method, base, fts, **({"drop_rate": 0.0} if method == "dare" else {}))
    assert worst(got, ref) < 1e-6  # float32 storage of the merged delta is the floor (~6e-8)
