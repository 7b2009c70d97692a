"""Streaming keeps peak memory far below holding every model (bound measured in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_perf.py"


@pytest.mark.slow
def test_peak_rss_of_a_400mb_x4_merge_is_well_below_loading_them(tmp_path):
    result = tmp_path / "r.json"
    subprocess.run([sys.executable, str(BENCH), "--params", "100M", "--tasks", "4", "--methods", "average",
                    "--json", str(result)], check=True, capture_output=True)
    (row,) = json.loads(result.read_text())
    assert row["all_in_ram_mb"] > 1800  # 5 models x ~400 MB
    # torch itself takes ~300 MB; streaming adds O(T x largest tensor) = a few tens of MB
    assert row["peak_rss_mb"] < 0.5 * row["all_in_ram_mb"], row
