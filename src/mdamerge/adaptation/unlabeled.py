"""Reading a user's unlabeled inputs (and, only for an explicit evaluation split, labels).

A data entry of an ``mdamerge adapt`` config names one of:

* a text file (``.txt`` or any other suffix): one example per line, blank lines skipped;
* a JSON-lines (``.jsonl``/``.ndjson``) or CSV/TSV file: one example per row, the text in
  ``column`` (default: the only one of ``text``, ``sentence``, ``content``, ``review``,
  ``question`` present), or a sentence pair in ``columns: [first, second]``;
* a folder of images (``.png``, ``.jpg``, ... anywhere below it; sub-folder names are read
  as labels only by an evaluation split with ``label: folder``);
* a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict`` with ``split``),
  with a text ``column``/``columns`` or an image column.

Only the named columns are used: a label column next to them is never read, except for an
evaluation split, which names its ``label`` column explicitly. Every problem (missing
file, empty file, unknown column, an image that does not decode) is one line naming the
file, and is found before any training starts.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, MergeError, closest_hint

TEXT_COLUMNS = ("text", "sentence", "content", "review", "question")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPEC_KEYS = ("path", "column", "columns", "split", "label", "limit")


class DataError(MergeError):
    """Unusable unlabeled or evaluation data (one line naming the file)."""


@dataclass
class DataSpec:
    """Where one task's inputs are and which columns hold them."""

    path: Path
    columns: tuple[str, ...] = ()
    split: str | None = None
    label: str | None = None  # only for evaluation splits
    limit: int | None = None

    @classmethod
    def parse(cls, value: Any, root: Path, what: str, labelled: bool = False) -> "DataSpec":
        """A spec from a config value: a path, or a mapping with ``path`` and column options."""
        if isinstance(value, (str, Path)):
            value = {"path": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{what}: give a path or a mapping with 'path', got {value!r}")
        keys = SPEC_KEYS if labelled else tuple(k for k in SPEC_KEYS if k != "label")
        for key in value:
            if key not in keys:
                hint = " (labels are read only from an 'eval' entry)" if key == "label" else closest_hint(str(key), keys)
                raise ConfigError(f"{what}: unknown key '{key}'" + hint)
        if not isinstance(value.get("path"), (str, Path)) or not str(value.get("path")):
            raise ConfigError(f"{what}: 'path' is missing")
        if "column" in value and "columns" in value:
            raise ConfigError(f"{what}: give 'column' or 'columns', not both")
        columns = value.get("columns", [value["column"]] if "column" in value else [])
        if not isinstance(columns, list) or len(columns) > 2 or not all(isinstance(c, str) and c for c in columns):
            raise ConfigError(f"{what}: 'column' must be a column name, 'columns' a list of one or two, got {columns!r}")
        if labelled and not isinstance(value.get("label"), str):
            raise ConfigError(f"{what}: an evaluation split needs 'label': the name of its label column")
        limit = value.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"{what}: 'limit' must be a positive integer, got {limit!r}")
        path = Path(value["path"]).expanduser()
        return cls(path if path.is_absolute() else root / path, tuple(columns), value.get("split"), value.get("label"), limit)


@dataclass
class Examples:
    """What a data entry holds: texts (1- or 2-tuples) or image loaders; labels only for evaluation."""

    kind: str  # "text" or "image"
    items: list = field(default_factory=list)  # tuples of str, or callables returning a PIL image
    source: str = ""
    labels: list | None = None

    def __len__(self) -> int:
        return len(self.items)

    def sample(self, limit: int | None, seed: int) -> "Examples":
        """A seeded random subset of at most ``limit`` examples (all of them, in order, without a limit)."""
        if limit is None or len(self) <= limit:
            return self
        keep = sorted(random.Random(seed).sample(range(len(self)), limit))
        labels = None if self.labels is None else [self.labels[i] for i in keep]
        return Examples(self.kind, [self.items[i] for i in keep], self.source, labels)


def read_examples(spec: DataSpec, what: str) -> Examples:
    """Read a data entry (see the module docstring); a one-line :class:`DataError` when it cannot."""
    path = spec.path
    if not path.exists():
        raise DataError(f"{what}: {path} does not exist")
    if path.is_dir():
        examples = _read_folder(spec, what)
    elif not path.is_file():
        raise DataError(f"{what}: {path} is not a regular file or folder")
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        examples = _from_rows(_jsonl_rows(path, what), spec, what)
    elif path.suffix.lower() in (".csv", ".tsv"):
        examples = _from_rows(_csv_rows(path, what), spec, what)
    else:
        if spec.columns or spec.label:
            raise DataError(f"{what}: {path} is a plain text file (one example per line); 'column'/'label' apply to "
                            ".jsonl, .csv, .tsv and dataset folders")
        examples = Examples("text", [(line,) for line in _text_lines(path, what)], str(path))
    if not len(examples):
        raise DataError(f"{what}: {path} holds no examples")
    return examples


def _text_lines(path: Path, what: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{what}: {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _jsonl_rows(path: Path, what: str) -> list[dict]:
    rows = []
    for number, line in enumerate(_text_lines(path, what), 1):
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{what}: {path} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{what}: {path} line {number} is not a JSON object")
        rows.append(row)
    return rows


def _csv_rows(path: Path, what: str) -> list[dict]:
    lines = _text_lines(path, what)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        return list(csv.DictReader(lines, delimiter=delimiter))
    except csv.Error as exc:
        raise DataError(f"{what}: {path} is not valid CSV ({exc})") from None


def _choose_columns(available: Sequence[str], spec: DataSpec, what: str, source: str, defaults=TEXT_COLUMNS) -> tuple[str, ...]:
    if spec.columns:
        for column in spec.columns:
            if column not in available:
                raise DataError(f"{what}: {source} has no column '{column}'" + closest_hint(column, list(available))
                                + f" (columns: {', '.join(map(str, available))})")
        return spec.columns
    present = [c for c in defaults if c in available]
    if len(present) != 1:
        raise DataError(f"{what}: name the input column of {source} with 'column' (or a pair with 'columns'); "
                        f"its columns: {', '.join(map(str, available))}")
    return (present[0],)


def _from_rows(rows: list[dict], spec: DataSpec, what: str) -> Examples:
    source = str(spec.path)
    if not rows:
        raise DataError(f"{what}: {source} holds no examples")
    columns = _choose_columns(list(rows[0]), spec, what, source)
    items = []
    for number, row in enumerate(rows, 1):
        values = [row.get(c) for c in columns]
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise DataError(f"{what}: {source} row {number} has no text in column '{columns[0]}'"
                            + (f" or '{columns[1]}'" if len(columns) > 1 else ""))
        items.append(tuple(v.strip() for v in values))
    return Examples("text", items, source, _labels(rows, spec, what, source))


def _labels(rows, spec: DataSpec, what: str, source: str) -> list | None:
    if spec.label is None:
        return None
    if spec.label not in rows[0]:
        raise DataError(f"{what}: {source} has no label column '{spec.label}'")
    return [row[spec.label] for row in rows]


def _read_folder(spec: DataSpec, what: str) -> Examples:
    folder = spec.path
    if any((folder / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return _read_saved_dataset(spec, what)
    if spec.columns or spec.label not in (None, "folder"):
        raise DataError(f"{what}: {folder} is a folder of images: it has no columns; an evaluation split of images "
                        "takes its labels from sub-folder names with 'label: folder'")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{what}: {folder} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...) and is no saved dataset")
    labels = [p.parent.name for p in files] if spec.label == "folder" else None
    if labels is not None and any(p.parent == folder for p in files):
        raise DataError(f"{what}: {files[0]} lies directly in {folder}: with 'label: folder' every image is in a "
                        "sub-folder named by its class (index or label name)")
    return Examples("image", [_image_file(p) for p in files], str(folder), labels)


def _image_file(path: Path) -> Callable[[], object]:
    def load():
        from PIL import Image

        with Image.open(path) as img:
            img.load()
            return img
    load.source = str(path)
    return load


def _read_saved_dataset(spec: DataSpec, what: str) -> Examples:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{what}: {spec.path} is a saved `datasets` folder; reading it needs: pip install datasets") from None
    try:
        data = datasets.load_from_disk(str(spec.path))
    except Exception as exc:  # the datasets library raises many types for a broken folder
        raise DataError(f"{what}: cannot load the saved dataset {spec.path}: {str(exc).splitlines()[0]}") from None
    if isinstance(data, datasets.DatasetDict):
        if spec.split is None or spec.split not in data:
            raise DataError(f"{what}: {spec.path} holds splits {', '.join(data)}; name one with 'split'")
        data = data[spec.split]
    source = f"{spec.path}" + (f" (split {spec.split})" if spec.split else "")
    names = list(data.column_names)
    images = [c for c in IMAGE_COLUMNS if c in names]
    if not spec.columns and len(images) == 1:
        column = images[0]
        rows = range(len(data))
        return Examples("image", [_dataset_image(data, column, i, source) for i in rows], source,
                        None if spec.label is None else _dataset_labels(data, spec, what, source))
    columns = _choose_columns(names, spec, what, source)
    table = data.select_columns(list(columns))
    items = []
    for number, row in enumerate(table, 1):
        values = [row[c] for c in columns]
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise DataError(f"{what}: {source} row {number} has no text in column '{columns[0]}'")
        items.append(tuple(v.strip() for v in values))
    return Examples("text", items, source, None if spec.label is None else _dataset_labels(data, spec, what, source))


def _dataset_labels(data, spec: DataSpec, what: str, source: str) -> list:
    if spec.label not in data.column_names:
        raise DataError(f"{what}: {source} has no label column '{spec.label}'")
    return list(data[spec.label])


def _dataset_image(data, column: str, index: int, source: str) -> Callable[[], object]:
    def load():
        value = data[index][column]
        if isinstance(value, dict) and value.get("bytes"):
            import io

            from PIL import Image

            return Image.open(io.BytesIO(value["bytes"]))
        return value
    load.source = f"{source} row {index + 1}"
    return load


def decode_image(loader: Callable[[], object], what: str):
    """The RGB PIL image a loader gives, or a one-line :class:`DataError` naming the file or row."""
    try:
        image = loader()
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise DataError(f"{what}: {getattr(loader, 'source', 'an image')} does not decode as an image "
                        f"({type(exc).__name__})") from None


def label_indices(labels: Sequence, label2id: dict[str, int], num_labels: int, what: str) -> list[int]:
    """Evaluation labels as class indices: integers (or integer strings) in range, or label names."""
    out = []
    for value in labels:
        if isinstance(value, bool):
            value = str(value)
        if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
            index = int(value)
        elif isinstance(value, str) and value in label2id:
            index = label2id[value]
        else:
            raise DataError(f"{what}: label {value!r} is neither a class index nor one of the model's labels "
                            f"({', '.join(list(label2id)[:6])}{', ...' if len(label2id) > 6 else ''})")
        if not 0 <= index < num_labels:
            raise DataError(f"{what}: label {value!r} is outside 0..{num_labels - 1}")
        out.append(index)
    return out
