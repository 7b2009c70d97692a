"""Merging tensors on a Ray cluster (``mdamerge merge ... --ray ADDRESS``).

The driver plans the merge, runs any pre-pass (global TIES thresholds) and writes the
output; Ray tasks run :meth:`MergeEngine.merge_one` on batches of tensor names and send
the merged tensors back, which the driver hands to the writer in the base's order. Each
task reopens the checkpoints by path, so every node must see the checkpoints at the
same paths (a shared file system, or the same Hugging Face cache layout) and have the
same mdamerge installed.

Results are byte-identical to the single-process merge: a tensor is computed by the
same code on the same inputs, and each task runs torch with the driver's thread count
(some LAPACK kernels, e.g. the SVD, round differently with different thread counts).
That holds when the nodes run the same torch build on the same kind of CPU/GPU. With
``--device cuda`` each task asks Ray for one GPU.

``ray`` is optional: ``pip install 'mdamerge[ray]'``.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any, Iterator, Sequence

import torch

from ..errors import MergeError
from .sources import CheckpointSource

LOCAL = "local"
DEFAULT_BATCH_BYTES = 64 * 2**20


def import_ray():
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MergeError("--ray needs the 'ray' package, which is not installed: pip install 'mdamerge[ray]'") from None
    return ray


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast with a clear message when nothing listens at ``HOST:PORT`` (Ray itself retries for minutes)."""
    import socket

    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise MergeError(f"Ray address '{address}' must be 'auto', 'local', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise MergeError(f"cannot reach the Ray cluster at '{address}': {exc.strerror or exc}") from None


class PortableCheckpointSource:
    """A checkpoint source that pickles as its path and reopens the files where it is unpickled."""

    def __init__(self, path: str, label: str | None = None):
        self.path = str(path)
        self.label = label or self.path
        self._source: CheckpointSource | None = None

    def _opened(self) -> CheckpointSource:
        if self._source is None:
            self._source = CheckpointSource(self.path)
        return self._source

    def keys(self) -> list[str]:
        return self._opened().keys()

    def info(self, name: str):
        return self._opened().info(name)

    def get(self, name: str) -> torch.Tensor:
        return self._opened().get(name)

    def __getstate__(self) -> dict[str, str]:
        return {"path": self.path, "label": self.label}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["path"], state["label"])


def _portable(source):
    if isinstance(source, CheckpointSource):
        return PortableCheckpointSource(str(source.checkpoint.path), source.label)
    return source  # in-memory state dicts travel by value


def portable_engine(engine):
    """A shallow copy of ``engine`` whose checkpoint sources pickle as paths."""
    clone = copy.copy(engine)
    clone.base = _portable(engine.base)
    clone.models = [_portable(m) for m in engine.models]
    clone.progress = False
    if clone.device.type == "cuda":  # a Ray task sees only the GPU it was given, as cuda:0
        clone.device = torch.device("cuda")
    return clone


def batch_names(names: Sequence[str], nbytes: dict[str, int], max_bytes: int = DEFAULT_BATCH_BYTES) -> list[list[str]]:
    """Consecutive runs of tensor names, each of at most ``max_bytes`` of output (a larger tensor alone)."""
    batches: list[list[str]] = []
    size = 0
    for name in names:
        if not batches or (batches[-1] and size + nbytes[name] > max_bytes):
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += nbytes[name]
    return batches


def merge_batch(engine, names: list[str], state: Any, threads: int) -> list[torch.Tensor]:
    """What one Ray task runs: the merged tensors of ``names``, with the driver's torch thread count."""
    torch.set_num_threads(threads)
    return [engine.merge_one(name, state) for name in names]


class RayExecutor:
    """Runs :meth:`MergeEngine.merge_one` as Ray tasks; use as ``engine.run(sink, executor=...)``.

    ``address``: ``"auto"`` (the cluster this machine belongs to), ``"HOST:PORT"``,
    ``"ray://HOST:PORT"`` (Ray client), or ``"local"`` to start a private Ray instance
    on this machine for the duration of the executor. If Ray is already initialised in
    this process (e.g. by the caller), that connection is used as-is.
    ``window``: batches in flight at once (default: twice the cluster's CPUs), which
    bounds the driver's memory.
    """

    def __init__(self, address: str | None = "auto", *, window: int | None = None,
                 batch_bytes: int = DEFAULT_BATCH_BYTES, num_cpus: int | None = None):
        self.ray = import_ray()
        self._started = False
        if not self.ray.is_initialized():
            if address not in (None, LOCAL, "auto"):
                check_reachable(address)
            try:
                if address in (None, LOCAL):
                    self.ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
                else:
                    self.ray.init(address=address, log_to_driver=False)
            except ConnectionError as exc:
                raise MergeError(f"cannot connect to the Ray cluster at '{address}': {str(exc).splitlines()[0]}") from None
            self._started = True
        self.window = window
        self.batch_bytes = batch_bytes
        self._remote = self.ray.remote(num_cpus=1)(merge_batch)

    def _window(self) -> int:
        if self.window:
            return max(1, int(self.window))
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        return max(2, 2 * cpus)

    def map_ordered(self, engine, names: Sequence[str], state: Any) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, merged tensor)`` for ``names`` in order, computed by Ray tasks."""
        ray = self.ray
        nbytes = {name: engine.plan.output_info[name].nbytes for name in names}
        batches = batch_names(names, nbytes, self.batch_bytes)
        engine_ref = ray.put(portable_engine(engine))
        state_ref = ray.put(state)
        threads = torch.get_num_threads()
        remote = self._remote.options(num_gpus=1) if engine.device.type == "cuda" else self._remote
        pending: deque = deque()
        window = self._window()
        try:
            for batch in batches:
                pending.append((batch, remote.remote(engine_ref, batch, state_ref, threads)))
                if len(pending) >= window:
                    yield from self._collect(*pending.popleft())
            while pending:
                yield from self._collect(*pending.popleft())
        finally:
            for _, ref in pending:  # stop work nobody will read (an error, or the consumer gave up)
                ray.cancel(ref)

    def _collect(self, batch: list[str], ref) -> Iterator[tuple[str, torch.Tensor]]:
        try:
            tensors = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, MergeError):
                raise type(cause)(str(cause)) from None
            raise
        yield from zip(batch, tensors)

    def close(self) -> None:
        """Shut down the Ray instance if this executor started it."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
