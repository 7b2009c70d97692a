"""Keep freed tensor memory inside the process, so the next tensor of a merge reuses it. Torch-free.

A merge allocates and frees the same few large float32 buffers for every tensor. glibc serves
blocks above its mmap threshold (128 KiB at first) with a fresh ``mmap`` and unmaps them on
``free``, so every new buffer page-faults in zeroed pages: on this machine a 24.6M-entry
bfloat16 -> float32 copy took 35 ms into fresh memory and 13 ms into reused memory, 10-20% of
a whole linear, TIES or DARE merge (benchmarks/speed_vs_mergekit.py). Serving large blocks from
the heap and never trimming it keeps them mapped. The price is a higher peak RSS (the heap's
high-water mark, about +15% at 150M parameters, still below mergekit's) and memory that returns
to the system only when the command ends, which is why the CLI's merge commands opt in and
the library never changes the process's allocator by itself.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
LARGEST_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed ones; False where that is not
    glibc (macOS, musl) or it refuses, and nothing changes then."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
