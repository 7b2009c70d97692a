"""How many CPU threads a command should use by default: the cores no other process keeps busy.

torch starts one thread per core. When several commands share a machine (4 merges started at
once on 2 cores) each of them then runs 2 threads that wait on each other while descheduled:
measured, 4 concurrent `tsv` merges did not finish in 120 s where one took 3 s. Counting the
cores other processes use now keeps the total near the number of cores. Torch-free.
"""

from __future__ import annotations

import os
import sys

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # the user's own choice: left alone


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's limit)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores() -> int:
    """Cores other processes keep busy: the runnable tasks right now besides this one (``/proc/loadavg``,
    which sees processes started a moment ago) or the 1-minute load average, whichever is larger."""
    running = 0
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            running = int(handle.read().split()[3].split("/")[0]) - 1
    except (OSError, ValueError, IndexError):
        pass
    try:
        average = int(os.getloadavg()[0])
    except (OSError, AttributeError):
        average = 0
    return max(0, running, average)


def default_threads() -> int | None:
    """Threads for torch when the user gave none: the free cores (at least 1), or ``None`` to keep
    torch's choice when ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` is set."""
    if any(os.environ.get(name) for name in THREAD_ENV):
        return None
    return max(1, usable_cores() - busy_cores())


def apply_default_threads() -> None:
    """Use :func:`default_threads` threads: through ``OMP_NUM_THREADS`` while torch is not imported
    yet (a config error must still come before torch loads), else ``torch.set_num_threads``."""
    threads = default_threads()
    if threads is None:
        return
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        torch.set_num_threads(threads)
