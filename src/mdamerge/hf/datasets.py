"""Test splits of the CLIP benchmark's 20 image-classification tasks, loaded offline.

Where a task's test split is looked for, in order:

1. ``data_root/<task>/`` (also ``data_root/<org>/<name>`` and ``data_root/<org>--<name>``
   of its Hugging Face dataset repository), holding one of
   * an image folder ``test/<label>/*.png|jpg|...`` (``<label>``: the class index, or the
     class name as listed in :mod:`mdamerge.hf.classnames`),
   * Parquet files of the split, as the Hub stores them (``data/test-*.parquet``,
     ``<config>/test-*.parquet``, ``test.parquet``...; needs ``pyarrow``),
   * WebDataset shards ``test/*.tar`` (``<key>.jpg|png|webp`` + ``<key>.cls``),
   * a ``datasets.save_to_disk`` folder ``test/`` (needs ``datasets``);
2. the Hugging Face Hub cache (``hf download REPO --repo-type dataset``),
   read with ``local_files_only=True`` -- never the network;
3. the ``datasets`` library's own cache, offline, if ``datasets`` is installed.

Images are decoded lazily, one at a time, so a split costs its compressed size in memory.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import MergeError
from .classnames import CLASSNAMES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp", "pixel_values")
LABEL_COLUMNS = ("label", "fine_label", "labels", "cls", "target")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a task's test split lives on the Hugging Face Hub."""

    task: str
    repo: str
    split: str = "test"
    config: str | None = None


DATASETS: dict[str, DatasetSpec] = {s.task: s for s in (
    DatasetSpec("sun397", "tanganke/sun397"),
    DatasetSpec("stanford-cars", "tanganke/stanford_cars"),
    DatasetSpec("resisc45", "tanganke/resisc45"),
    DatasetSpec("eurosat", "tanganke/eurosat"),
    DatasetSpec("svhn", "ufldl-stanford/svhn", config="cropped_digits"),
    DatasetSpec("gtsrb", "tanganke/gtsrb"),
    DatasetSpec("mnist", "ylecun/mnist"),
    DatasetSpec("dtd", "tanganke/dtd"),
    DatasetSpec("oxford_flowers102", "dpdl-benchmark/oxford_flowers102"),
    DatasetSpec("pcam", "1aurent/PatchCamelyon"),
    DatasetSpec("fer2013", "clip-benchmark/wds_fer2013"),
    DatasetSpec("oxford-iiit-pet", "timm/oxford-iiit-pet"),
    DatasetSpec("stl10", "tanganke/stl10"),
    DatasetSpec("cifar100", "uoft-cs/cifar100"),
    DatasetSpec("cifar10", "uoft-cs/cifar10"),
    DatasetSpec("food101", "ethz/food101", split="validation"),
    DatasetSpec("fashion_mnist", "zalando-datasets/fashion_mnist"),
    DatasetSpec("emnist_letters", "tanganke/emnist_letters"),
    DatasetSpec("kmnist", "tanganke/kmnist"),
    DatasetSpec("rendered-sst2", "nateraw/rendered-sst2"),
)}


@dataclass
class ImageDataset:
    """A test split: labels in memory, images decoded on demand."""

    task: str
    labels: list[int]
    loaders: Sequence[Callable[[], object]]  # each returns a PIL image
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int):
        """The RGB PIL image at ``index``."""
        img = self.loaders[index]()
        return img if img.mode == "RGB" else img.convert("RGB")

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        return ImageDataset(self.task, [self.labels[i] for i in indices], [self.loaders[i] for i in indices], self.source)


@dataclass
class Lookup:
    """The result of searching for one task's split: the dataset, or every place that was tried."""

    task: str
    dataset: ImageDataset | None = None
    looked: list[str] = field(default_factory=list)


class DatasetFormatError(MergeError):
    """A dataset was found but cannot be read (unknown class folder, missing column, ...)."""


# -- decoding ------------------------------------------------------------------
def _open_bytes(data: bytes):
    def load():
        from PIL import Image

        return Image.open(io.BytesIO(data))
    return load


def _open_path(path: Path):
    def load():
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            return img
    return load


def _label_of_folder(task: str, name: str) -> int:
    if name.isdigit():
        return int(name)
    norm = name.lower().replace("_", " ")
    for index, cls in enumerate(CLASSNAMES.get(task, ())):
        if cls.lower().replace("_", " ") == norm:
            return index
    raise DatasetFormatError(f"image folder class '{name}' of task '{task}' is neither a class index nor one of its class names")


def _check_labels(task: str, labels: list[int], source: str) -> None:
    num_classes = len(CLASSNAMES.get(task, ())) or None
    bad = [x for x in labels if x < 0 or (num_classes and x >= num_classes)]
    if bad:
        raise DatasetFormatError(f"dataset '{task}' at {source} has label {bad[0]} outside 0..{(num_classes or 1) - 1}")


# -- readers ---------------------------------------------------------------------
def read_image_folder(task: str, folder: Path) -> ImageDataset:
    """``folder/<label>/<image>``; labels are class indices or class names."""
    labels, loaders = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = _label_of_folder(task, class_dir.name)
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                labels.append(label)
                loaders.append(_open_path(file))
    if not labels:
        raise DatasetFormatError(f"image folder {folder} for task '{task}' holds no images")
    _check_labels(task, labels, str(folder))
    return ImageDataset(task, labels, loaders, str(folder))


def _column(names: Sequence[str], candidates: Sequence[str], what: str, source: str) -> str:
    for name in candidates:
        if name in names:
            return name
    raise DatasetFormatError(f"{source} has no {what} column (looked for {', '.join(candidates)}; found {', '.join(names)})")


def _image_bytes(value) -> bytes:
    if isinstance(value, dict):  # the Hub's Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes") is not None:
            return value["bytes"]
        raise DatasetFormatError(f"image stored by path only ({value.get('path')}), not embedded in the Parquet file")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise DatasetFormatError(f"cannot decode an image stored as {type(value).__name__}")


class _ParquetImages:
    """Images of one Parquet file, read one row group at a time (evaluation reads them in order)."""

    def __init__(self, file: Path, column: str):
        import pyarrow.parquet as pq

        self.file, self.column = file, column
        meta = pq.ParquetFile(file).metadata
        self.starts = [0]
        for g in range(meta.num_row_groups):
            self.starts.append(self.starts[-1] + meta.row_group(g).num_rows)
        self._group, self._rows = -1, []

    def loader(self, row: int):
        return lambda: _open_bytes(self._bytes(row))()

    def _bytes(self, row: int) -> bytes:
        import bisect

        import pyarrow.parquet as pq

        group = bisect.bisect_right(self.starts, row) - 1
        if group != self._group:
            self._rows = pq.ParquetFile(self.file).read_row_group(group, columns=[self.column]).column(0).to_pylist()
            self._group = group
        return _image_bytes(self._rows[row - self.starts[group]])


def read_parquet(task: str, files: Sequence[Path]) -> ImageDataset:
    """Parquet files as the Hub stores image datasets (an image struct column and an integer label column)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MergeError(f"reading the Parquet files of '{task}' ({files[0].parent}) needs pyarrow: pip install pyarrow") from None
    labels, loaders = [], []
    for file in files:
        names = pq.ParquetFile(file).schema_arrow.names
        image_col = _column(names, IMAGE_COLUMNS, "image", str(file))
        label_col = _column(names, LABEL_COLUMNS, "label", str(file))
        file_labels = [int(x) for x in pq.read_table(file, columns=[label_col]).column(0).to_pylist()]
        images = _ParquetImages(file, image_col)
        labels += file_labels
        loaders += [images.loader(i) for i in range(len(file_labels))]
    _check_labels(task, labels, str(files[0].parent))
    return ImageDataset(task, labels, loaders, str(files[0].parent))


def read_webdataset(task: str, shards: Sequence[Path]) -> ImageDataset:
    """WebDataset tar shards: ``<key>.<image suffix>`` with its label in ``<key>.cls``."""
    samples: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                key, _, ext = Path(member.name).name.partition(".")
                samples.setdefault(f"{shard}:{Path(member.name).parent}/{key}", {})[ext.lower()] = tar.extractfile(member).read()
    labels, loaders = [], []
    for parts in samples.values():
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
        if image_ext is None or "cls" not in parts:
            continue
        labels.append(int(parts["cls"].decode().strip()))
        loaders.append(_open_bytes(parts[image_ext]))
    if not labels:
        raise DatasetFormatError(f"WebDataset shards in {shards[0].parent} hold no (image, .cls) samples")
    _check_labels(task, labels, str(shards[0].parent))
    return ImageDataset(task, labels, loaders, str(shards[0].parent))


def from_hf_dataset(task: str, dataset, source: str) -> ImageDataset:
    """A ``datasets.Dataset`` (decoded lazily, row by row)."""
    names = list(dataset.column_names)
    image_col = _column(names, IMAGE_COLUMNS, "image", source)
    label_col = _column(names, LABEL_COLUMNS, "label", source)
    labels = [int(x) for x in dataset[label_col]]
    _check_labels(task, labels, source)

    def loader(i):
        return lambda: dataset[i][image_col]
    return ImageDataset(task, labels, [loader(i) for i in range(len(labels))], source)


# -- finding a split in a folder -----------------------------------------------------
def _split_files(folder: Path, spec: DatasetSpec, suffix: str) -> list[Path]:
    """Files of ``spec.split`` under ``folder``: named ``<split>*`` or inside a ``<split>`` folder,
    preferring the ``spec.config`` sub-folder when the repository has several configurations."""
    split = spec.split
    pattern = re.compile(rf"^{re.escape(split)}([-_.].*)?$")
    found = [p for p in sorted(folder.rglob(f"*{suffix}"))
             if pattern.match(p.stem) or split in p.relative_to(folder).parts[:-1]]
    if spec.config:
        in_config = [p for p in found if spec.config in p.relative_to(folder).parts]
        found = in_config or found
    return found


def read_split_folder(folder: Path, spec: DatasetSpec) -> ImageDataset | None:
    """The split in ``folder`` in any supported layout, or None if none is there."""
    split_dir = folder / spec.split
    if split_dir.is_dir():
        if (split_dir / "dataset_info.json").is_file() or (split_dir / "state.json").is_file():
            try:
                import datasets
            except ImportError:
                raise MergeError(f"{split_dir} is a saved `datasets` dataset; reading it needs: pip install datasets") from None
            return from_hf_dataset(spec.task, datasets.load_from_disk(str(split_dir)), str(split_dir))
        if any(p.is_dir() for p in split_dir.iterdir()) and not list(split_dir.glob("*.tar")) and not list(split_dir.glob("*.parquet")):
            return read_image_folder(spec.task, split_dir)
    parquet = _split_files(folder, spec, ".parquet")
    if parquet:
        return read_parquet(spec.task, parquet)
    shards = _split_files(folder, spec, ".tar")
    if shards:
        return read_webdataset(spec.task, shards)
    return None


def _local_candidates(data_root: Path, spec: DatasetSpec) -> list[Path]:
    org_name = spec.repo.split("/")
    return [data_root / spec.task, data_root.joinpath(*org_name), data_root / spec.repo.replace("/", "--")]


def _hub_snapshot(spec: DatasetSpec, cache_dir: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(spec.repo, repo_type="dataset", local_files_only=True, cache_dir=cache_dir))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        return None


def hub_cache_dir(cache_dir: str | None = None) -> str:
    """The Hugging Face Hub cache folder that lookups use."""
    if cache_dir:
        return str(cache_dir)
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return os.path.expanduser("~/.cache/huggingface/hub")


def _datasets_library(spec: DatasetSpec) -> ImageDataset | None:
    try:
        import datasets
    except ImportError:
        return None
    previous = os.environ.get("HF_DATASETS_OFFLINE")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        data = datasets.load_dataset(spec.repo, spec.config, split=spec.split)
    except Exception:
        return None
    finally:
        if previous is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = previous
    return from_hf_dataset(spec.task, data, f"datasets cache ({spec.repo})")


def find_dataset(task: str, data_root: str | Path | None = None, cache_dir: str | None = None) -> Lookup:
    """Search every supported place for ``task``'s test split (see the module docstring)."""
    if task not in DATASETS:
        raise MergeError(f"unknown task '{task}'; known: {', '.join(DATASETS)}")
    spec = DATASETS[task]
    lookup = Lookup(task)
    if data_root is not None:
        for folder in _local_candidates(Path(data_root), spec):
            lookup.looked.append(str(folder))
            if folder.is_dir():
                dataset = read_split_folder(folder, spec)
                if dataset is not None:
                    lookup.dataset = dataset
                    return lookup
    snapshot = _hub_snapshot(spec, cache_dir)
    lookup.looked.append(f"Hugging Face cache {hub_cache_dir(cache_dir)} (dataset {spec.repo})")
    if snapshot is not None:
        dataset = read_split_folder(snapshot, spec)
        if dataset is not None:
            lookup.dataset = dataset
            return lookup
    dataset = _datasets_library(spec)
    if dataset is not None:
        lookup.dataset = dataset
    else:
        lookup.looked.append("datasets library cache" if _has_datasets() else "datasets library (not installed)")
    return lookup


def _has_datasets() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def load_test_split(task: str, data_root: str | Path | None = None, cache_dir: str | None = None) -> ImageDataset:
    """``task``'s test split, or a one-line error naming where it was looked for."""
    lookup = find_dataset(task, data_root, cache_dir)
    if lookup.dataset is None:
        raise MergeError(f"dataset '{task}' ({DATASETS[task].repo}, split {DATASETS[task].split}) not found; "
                         f"looked in: {'; '.join(lookup.looked)}")
    return lookup.dataset
