"""Streaming, atomic output of a merged model as a Hugging Face folder.

The safetensors format puts a JSON header (names, dtypes, shapes, byte offsets)
before the data. Every output shape and dtype is known before the merge starts, so
:class:`StreamingSafetensorsWriter` writes the header first and then appends each
tensor's bytes as soon as it is merged -- the output never has to be held in memory
(``safetensors.torch.save_file`` needs the whole state dict at once).

:class:`AtomicOutputDir` builds the folder under a temporary sibling and renames it
into place only when everything has been written, so a failed merge leaves nothing
half-written behind.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import stat
import struct
import sys
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Sequence

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, stale partial folders are only named
    fcntl = None

import torch

from ..errors import MergeError, OutputError, warn
from ..yamlio import DEFAULT_SHARD_SIZE, parse_size  # noqa: F401  (re-exported: torch-free home)
from .checkpoint import WEIGHT_SUFFIXES, TensorInfo, allowed_roots, is_inside

DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
def plan_shards(entries: Sequence[tuple[str, TensorInfo]], max_bytes: int) -> list[list[tuple[str, TensorInfo]]]:
    """Split tensors, in order, into shards of at most ``max_bytes`` (a larger tensor gets its own shard)."""
    shards: list[list[tuple[str, TensorInfo]]] = [[]]
    size = 0
    for name, info in entries:
        if shards[-1] and size + info.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, info))
        size += info.nbytes
    return shards


def shard_file_names(num_shards: int) -> list[str]:
    if num_shards == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]


def tensor_buffer(tensor: torch.Tensor):
    """The raw little-endian bytes of a CPU tensor as a buffer over its own memory: no copy of the
    data before writing (works for bfloat16, which numpy lacks)."""
    return memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


class StreamingSafetensorsWriter:
    """Writes a safetensors file whose tensors arrive one by one, in the planned order."""

    def __init__(self, path: Path, entries: Sequence[tuple[str, TensorInfo]], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._entries = list(entries)
        self._next = 0
        header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for name, info in self._entries:
            header[name] = {"dtype": DTYPE_CODES[info.dtype], "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
            offset += info.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format aligns the data section to 8 bytes
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected_name, info = self._entries[self._next]
        if name != expected_name:
            raise MergeError(f"internal: tensor '{name}' written out of order (expected '{expected_name}')")
        if tuple(tensor.shape) != info.shape or tensor.dtype != info.dtype:
            raise MergeError(
                f"internal: tensor '{name}' is {tuple(tensor.shape)} {tensor.dtype}, planned {info.shape} {info.dtype}"
            )
        self._file.write(tensor_buffer(tensor))
        self._next += 1

    @property
    def complete(self) -> bool:
        return self._next == len(self._entries)

    def close(self) -> None:
        self._file.close()


class ShardedWriter:
    """Routes tensors to their shard files and writes the index when there are several shards."""

    def __init__(self, folder: Path, entries: Sequence[tuple[str, TensorInfo]], max_shard_bytes: int = DEFAULT_SHARD_SIZE):
        self.folder = Path(folder)
        shards = plan_shards(entries, max_shard_bytes)
        names = shard_file_names(len(shards))
        self._weight_map = {name: file for file, shard in zip(names, shards) for name, _ in shard}
        self._writers = {file: StreamingSafetensorsWriter(self.folder / file, shard) for file, shard in zip(names, shards)}
        self._total = sum(info.nbytes for _, info in entries)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self._writers[self._weight_map[name]].write(name, tensor)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        unfinished = [f for f, w in self._writers.items() if not w.complete]
        if unfinished:
            raise MergeError(f"internal: shard {unfinished[0]} was not completely written")
        if len(self._writers) > 1:
            index = {"metadata": {"total_size": self._total}, "weight_map": self._weight_map}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    def abort(self) -> None:
        """Close every shard after a failure (whose error must not be masked by a failing close)."""
        for writer in self._writers.values():
            with suppress(OSError):
                writer.close()

    @property
    def shard_files(self) -> list[str]:
        return list(self._writers)


# -- non-weight files -----------------------------------------------------------------------
def _is_skipped_name(rel: Path) -> bool:
    """Weights, indexes, hidden files and the old model card are never copied."""
    if any(part.startswith(".") for part in rel.parts):
        return True
    return rel.suffix in WEIGHT_SUFFIXES or rel.name.endswith(".index.json") or rel.as_posix() == "README.md"


MAX_COPY_DEPTH = 32  # folder levels of a base model whose files are copied


def plan_non_weight_files(src: Path) -> list[tuple[str, Path]]:
    """``(relative name, file to read)`` for every non-weight file of a base folder worth copying.

    Only regular files, and symlinks that resolve to a regular file inside the base folder
    (or the Hugging Face cache's ``blobs``), are kept: a link to ``/etc/...`` must not leak a
    host file into a merged model that may be shared. Everything else -- dangling or looping
    links, links leaving the folder, fifos, sockets, devices, links to folders -- is skipped
    with one warning line. A folder holding ``merge_config.yaml`` is an earlier mdamerge
    output nested in the base and is skipped whole.
    """
    src = Path(src)
    if not src.is_dir():
        return []
    roots = allowed_roots(src)
    planned: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(src, followlinks=False):
        here = Path(folder)
        kept_dirs = []
        deep = len(here.relative_to(src).parts) >= MAX_COPY_DEPTH
        for name in sorted(dirs):
            path = here / name
            if name.startswith("."):
                continue
            if deep:  # os.walk recurses: thousands of nested folders would end in a RecursionError
                warn(f"not copying {path}: it is nested more than {MAX_COPY_DEPTH} folders deep in the base model")
            elif path.is_symlink():
                warn(f"not copying {path}: it is a symlink to a folder")
            elif (path / "merge_config.yaml").exists():
                warn(f"not copying {path}: it is an earlier mdamerge output inside the base model")
            else:
                kept_dirs.append(name)
        dirs[:] = kept_dirs
        for name in sorted(files):
            path = here / name
            rel = path.relative_to(src)
            if _is_skipped_name(rel):
                continue
            real, reason = _safe_source(path, roots)
            if reason:
                warn(f"not copying {path}: {reason}")
            else:
                planned.append((rel.as_posix(), real))
    return planned


def _safe_source(path: Path, roots: Sequence[Path]) -> tuple[Path, str | None]:
    """The file to read for ``path`` (its target, for a link), or why it must not be copied."""
    try:
        if not path.is_symlink():
            is_regular = stat.S_ISREG(os.lstat(path).st_mode)
            return path, None if is_regular else "it is not a regular file"
        target = path.resolve(strict=True)
    except RuntimeError:  # a symlink loop (Python < 3.13 raises RuntimeError, later OSError)
        return path, "it is a dangling or looping symlink (symlink loop)"
    except OSError as exc:
        reason = "a dangling or looping symlink" if path.is_symlink() else "unreadable"
        return path, f"it is {reason} ({exc.strerror or exc})"
    if not is_inside(target, roots):
        return path, f"it is a symlink to {target}, outside the base folder"
    if not target.is_file():
        return path, f"it is a symlink to {target}, which is not a regular file"
    return target, None


def _open_regular_file(path: Path):
    """Open ``path`` for reading only if it is (still) a regular file and not a link: a file
    swapped for a link or a fifo after planning must not be followed or block the run."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file any more", str(path))
    return os.fdopen(fd, "rb")


def copy_planned_files(planned: Sequence[tuple[str, Path]], dst: Path, out_label: str | Path | None = None) -> list[str]:
    """Copy files chosen by :func:`plan_non_weight_files` into ``dst`` (links are copied as files).

    A file that cannot be read is skipped with a warning; a file that cannot be written is
    an :class:`~mdamerge.errors.OutputError`.
    """
    copied = []
    for rel, path in planned:
        try:
            source = _open_regular_file(path)
        except OSError as exc:
            warn(f"not copying {path}: {exc.strerror or exc}")
            continue
        with source, writing(out_label or dst):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            with open(dst / rel, "wb") as target:
                shutil.copyfileobj(source, target)
            shutil.copystat(path, dst / rel)
        copied.append(rel)
    return copied


def copy_non_weight_files(src: Path, dst: Path) -> list[str]:
    """Copy config, tokenizer and other non-weight files (recursively) from a base model folder."""
    return copy_planned_files(plan_non_weight_files(Path(src)), Path(dst))


# -- where the output may go -------------------------------------------------------------------
def check_output_location(out_dir: str | Path, inputs: Sequence[str | Path], *, may_contain_inputs: bool = False) -> None:
    """Refuse an output folder that is, contains, or lies inside one of ``inputs``.

    Runs before any work: with ``--overwrite`` such an output would delete the inputs
    it is made from, and without it a run would nest outputs in the inputs.
    ``may_contain_inputs``: for commands that only add named files to OUT (``eval``,
    ``bench``) and never replace the folder, an OUT above an input is harmless.
    """
    if Path(out_dir).name in ("", ".", ".."):
        raise OutputError(f"output path '{out_dir}' does not name a folder: give e.g. {Path(out_dir) / 'merged'}")
    out = Path(out_dir).expanduser().resolve()
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            continue
        real = path.resolve()
        if out == real:
            raise OutputError(f"output {out_dir} is the input {item}: choose another --out")
        if real.is_relative_to(out) and not may_contain_inputs:
            raise OutputError(f"output {out_dir} contains the input {item}: choose another --out")
        if path.is_dir() and out.is_relative_to(real):
            raise OutputError(f"output {out_dir} lies inside the input model {item}: choose another --out")


def check_output_folder(out_dir: str | Path, inputs: Sequence[str | Path], overwrite: bool = False) -> bool:
    """Everything about an output folder that can be checked before a command's work starts.

    It must not overlap an input (:func:`check_output_location`), its parent path must not
    run through a file, and an existing ``out_dir`` needs ``overwrite`` (and must be a real
    folder). Returns whether an existing folder is to be replaced. :class:`AtomicOutputDir`
    checks all this again when the output is written.
    """
    check_output_location(out_dir, inputs)
    blocker = _first_non_directory(Path(out_dir).parent)
    if blocker is not None:
        raise OutputError(f"cannot write {out_dir}: {blocker} is not a directory")
    with writing(out_dir):
        return _check_existing(Path(out_dir), overwrite) is not None


def _check_existing(target: Path, overwrite: bool) -> os.stat_result | None:
    """The ``lstat`` of an existing output folder that ``overwrite`` allows to replace, or ``None``."""
    existing = _lstat_or_none(target)
    if existing is None:
        return None
    if not overwrite:
        raise OutputError(f"output directory {target} already exists (use --overwrite to replace it)")
    if stat.S_ISLNK(existing.st_mode):
        raise OutputError(f"output path {target} is a symlink: give the folder it points to, or another --out")
    if not stat.S_ISDIR(existing.st_mode):
        raise OutputError(f"output path {target} exists and is not a directory")
    return existing


def check_results_folder(out_dir: str | Path, inputs: Sequence[str | Path]) -> None:
    """Before the work of a command that adds named files to the folder ``out_dir``: it must
    not be or lie inside an input, and must be (or be creatable as) a folder."""
    check_output_location(out_dir, inputs, may_contain_inputs=True)
    blocker = _first_non_directory(Path(out_dir))
    if blocker is not None:
        raise OutputError(f"cannot write {out_dir}: {blocker} is not a directory")


def write_result_files(out_dir: str | Path, files: dict[str, str | Callable[[Path], None]],
                       out_label: str | Path | None = None) -> dict[str, Path]:
    """Write named files into the folder ``out_dir`` (created if needed), atomically.

    ``files`` maps a file name to its text, or to a function that writes the file at the
    path it is given (e.g. ``lambda p: save_file(tensors, str(p))``). For commands whose
    OUT is a results folder (``eval``, ``bench``, the zoo): only the named files are
    replaced, other files in OUT are left alone. Each file is written to a hidden temporary
    sibling and renamed into place once all are written; a failure (disk full, read-only)
    is one line, ``cannot write OUT: <reason>`` (OUT is ``out_label``, default ``out_dir``),
    and removes the temporary files and any folder this call created.
    """
    out = Path(out_dir)
    created = [p for p in [*reversed(out.parents), out] if not p.exists()]
    temporaries: list[tuple[Path, Path]] = []
    try:
        with writing(out_label or out_dir):
            out.mkdir(parents=True, exist_ok=True)
            for name, content in files.items():
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
                temporaries.append((Path(tmp), out / name))
                with os.fdopen(fd, "w") as handle:
                    if isinstance(content, str):
                        handle.write(content)
                if not isinstance(content, str):
                    content(Path(tmp))
                os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes it private; the result should not be
            for tmp, path in temporaries:
                os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temporaries:
            with suppress(OSError):
                tmp.unlink()
        for folder in reversed(created):
            with suppress(OSError):
                folder.rmdir()  # only if still empty: never a file someone else put there
        raise
    return {name: out / name for name in files}


def replace_file(path: str | Path, write: str | Callable[[Path], None], out_label: str | Path | None = None) -> Path:
    """Write one file atomically (see :func:`write_result_files`)."""
    path = Path(path)
    return write_result_files(path.parent, {path.name: write}, out_label)[path.name]


@contextmanager
def writing(out_label: str | Path):
    """Turn an ``OSError`` raised while writing the output into one line,
    ``cannot write OUT: <reason>`` (disk full, read-only file system, quota, ...)."""
    try:
        yield
    except OSError as exc:
        raise output_error(out_label, exc) from None


def output_error(out_label: str | Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and exc.filename:
        blocker = _first_non_directory(Path(exc.filename))
        if blocker is not None:
            reason = f"{blocker} is not a directory"
    return OutputError(f"cannot write {out_label}: {reason}")


def _first_non_directory(path: Path) -> Path | None:
    for ancestor in [*reversed(path.parents), path]:
        if ancestor.exists() and not ancestor.is_dir():
            return ancestor
    return None


# -- renaming without replacing ----------------------------------------------------------------
RENAME_NOREPLACE = 1
AT_FDCWD = -100


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # no libc handle, or glibc < 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, raising ``FileExistsError`` if ``dst`` exists -- atomically.

    Uses Linux ``renameat2(RENAME_NOREPLACE)``. Where that is missing (other systems, or
    file systems that do not support the flag) it claims ``dst`` with an exclusive
    ``mkdir`` and renames onto that empty folder; rename never replaces a non-empty folder,
    so the only thing this fallback can replace is an empty folder created in the instant
    between the two calls.
    """
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    os.mkdir(dst)
    try:
        os.rename(src, dst)
    except OSError as exc:
        with suppress(OSError):
            os.rmdir(dst)  # ours and still empty; a non-empty one is someone else's and stays
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(exc.errno, exc.strerror, str(dst)) from None
        raise


# -- the atomic output folder ---------------------------------------------------------------
OWNER_FILE = ".mdamerge-partial.json"


class AtomicOutputDir:
    """Context manager yielding a temporary sibling folder that becomes ``target`` on success only.

    * Without ``overwrite`` an existing ``target`` is refused up front, and the final rename
      cannot replace one that appeared during the run: the run fails with "already exists"
      and removes only its own temporary folder.
    * With ``overwrite`` only the folder that existed at the start is replaced (checked by
      its inode); :attr:`replaced` says whether one was.
    * The temporary folder ``.NAME.partial-XXXX`` holds a lock while the run is alive. A
      later run for the same output removes partial folders whose owner died (kill -9,
      power loss) and names the ones it cannot attribute.
    """

    def __init__(self, target: str | Path, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite
        self.tmp: Path | None = None
        self.replaced = False
        self._existing: os.stat_result | None = None
        self._lock_fd: int | None = None
        self._made_parents: list[Path] = []

    @property
    def _partial_prefix(self) -> str:
        return f".{self.target.name}.partial-"

    def __enter__(self) -> Path:
        target = self.target
        if target.name in ("", ".", ".."):  # '', '.', '/', 'x/..': replacing a working directory
            raise OutputError(f"output path '{target}' does not name a folder: give e.g. {target / 'merged'}")
        with writing(target):
            self._existing = _check_existing(target, self.overwrite)
            self._made_parents = missing_folders(target.parent)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._remove_stale_partials()
                self.tmp = Path(tempfile.mkdtemp(prefix=self._partial_prefix, dir=target.parent))
                self._take_ownership()
                os.chmod(self.tmp, 0o777 & ~_current_umask())  # mkdtemp makes it private; the result should not be
            except BaseException:
                self._discard(failed=True)
                raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        installed = False
        try:
            if exc_type is None:
                with writing(self.target):
                    self._install()
                installed = True
        finally:
            self._discard(failed=not installed)

    # -- internals ---------------------------------------------------------------------------
    def _take_ownership(self) -> None:
        """Write and lock the owner file, so that other runs can tell a live partial from a stale one."""
        owner = self.tmp / OWNER_FILE
        owner.write_text(json.dumps({"target": self.target.name, "pid": os.getpid()}))
        if fcntl is not None:
            self._lock_fd = os.open(owner, os.O_RDONLY)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)

    def _discard(self, failed: bool = False) -> None:
        """Remove the temporary folder (if it is still there) and release the lock; after a
        failure also the parent folders this run created (``--out a/b/out``: no empty ``a/b``)."""
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if failed:
            remove_empty_folders(self._made_parents)

    def _install(self) -> None:
        (self.tmp / OWNER_FILE).unlink()
        if self._existing is not None:
            current = _lstat_or_none(self.target)
            if current is not None:
                if (current.st_dev, current.st_ino) != (self._existing.st_dev, self._existing.st_ino):
                    raise OutputError(
                        f"output directory {self.target} was replaced by another one during the merge; "
                        "not touching it (the merged result was discarded)"
                    )
                self._replace_existing()
                return
        try:
            rename_noreplace(self.tmp, self.target)
        except FileExistsError:
            raise OutputError(
                f"output directory {self.target} already exists: it appeared during the merge "
                "(the merged result was discarded; use --overwrite to replace it)"
            ) from None

    def _replace_existing(self) -> None:
        trash = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
        os.rename(self.target, trash / "old")  # atomic; the folder that existed at the start
        try:
            rename_noreplace(self.tmp, self.target)
        except BaseException:
            os.rename(trash / "old", self.target)  # put the user's folder back
            os.rmdir(trash)
            raise
        shutil.rmtree(trash, ignore_errors=True)
        self.replaced = True

    def _remove_stale_partials(self) -> None:
        """Remove partial folders of this output whose run died; name the ones that may not be ours."""
        parent = self.target.parent
        for path in sorted(parent.glob(f"{glob.escape(self._partial_prefix)}*")):
            if not path.is_dir() or path.is_symlink():
                continue
            verdict = _partial_owner_state(path, self.target.name)
            if verdict == "stale":
                shutil.rmtree(path, ignore_errors=True)
                warn(f"removed {path}, left by an interrupted run")
            elif verdict == "unknown":
                warn(f"{path} looks like a partial output of an interrupted run; not removing it (delete it if no merge is running)")
        for path in sorted(parent.glob(f".{glob.escape(self.target.name)}.old-*")):
            warn(f"{path} holds a folder an interrupted --overwrite run moved aside; not removing it")


class OutputFolder(AtomicOutputDir):
    """An :class:`AtomicOutputDir` for a command's whole output: an ``OSError`` raised in the
    ``with`` body too (disk full, read-only, quota) discards the partial folder and becomes
    one line, ``cannot write OUT: <reason>``.

    Use it where the body only writes; a body that also reads inputs should wrap its writes
    in :func:`writing` instead, so that a read failure is not reported as a write failure.
    """

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, OSError):
            super().__exit__(exc_type, exc, tb)
            raise output_error(self.target, exc) from None
        super().__exit__(exc_type, exc, tb)


def missing_folders(folder: Path) -> list[Path]:
    """The ancestors of ``folder`` (itself included) that do not exist yet, deepest first."""
    missing = []
    for path in [folder, *folder.parents]:
        if _lstat_or_none(path) is not None:
            break
        missing.append(path)
    return missing


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """``rmdir`` each folder in order, stopping at the first that is gone or not empty
    (another process may have put something there: it is not ours to remove)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _partial_owner_state(path: Path, target_name: str) -> str:
    """``'live'``, ``'stale'`` (its run is gone) or ``'unknown'`` (not made by this mdamerge, or no locks)."""
    owner = path / OWNER_FILE
    try:
        info = json.loads(owner.read_text())
        fd = os.open(owner, os.O_RDONLY)
    except (OSError, ValueError):
        return "unknown"
    try:
        if not isinstance(info, dict) or info.get("target") != target_name or fcntl is None:
            return "unknown"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "live"
        except OSError:
            return "unknown"
        return "stale"
    finally:
        os.close(fd)
