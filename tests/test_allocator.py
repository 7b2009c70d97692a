"""The merge commands' allocator setting (mdamerge.allocator): freed tensor memory is reused, not re-faulted."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from mdamerge.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(16):  # 64 MiB allocated, touched and freed again and again, as a merge does tensor after tensor
    before = faults()
    torch.ones(16 * 2**20)
    counts.append(faults() - before)
print(kept, sum(counts[-4:]))
"""
PAGES = 64 * 2**20 // 4096


def steady_state_faults(mode: str) -> tuple[str, int]:
    """Page faults of the last 4 of 16 allocations (glibc's heap needs a few rounds to hold the block)."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_a_freed_64_mib_buffer_is_reused_without_page_faults_once_opted_in():
    kept, with_setting = steady_state_faults("keep")
    if kept != "True":
        pytest.skip("this libc has no mallopt (not glibc)")
    _, default = steady_state_faults("default")
    assert default > 0.9 * 4 * PAGES  # glibc's default: a fresh mmap each time, every page faulted in again
    assert with_setting < 0.05 * 4 * PAGES
