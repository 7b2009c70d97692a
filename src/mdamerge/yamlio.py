"""Reading YAML config files (and config values such as sizes) without importing torch, so that bad configs fail fast."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, short_repr
from .safefiles import read_text_file


def read_yaml_file(path: str | Path) -> Any:
    """``yaml.safe_load`` of a config file, with one-line errors for a missing file or bad YAML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder, not a YAML file")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = read_text_file(path, "config", ConfigError)  # a FIFO or a device is refused, not read
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"config {path} is nested too deeply") from None
    check_expanded_size(data, str(path))
    return data


MAX_CONFIG_VALUES = 100_000


def check_expanded_size(data: Any, where: str, limit: int = MAX_CONFIG_VALUES) -> None:
    """Refuse YAML whose aliases expand to more than ``limit`` values, or refer to themselves.

    ``yaml.safe_load`` shares aliased nodes, so a "billion laughs" document loads in
    microseconds -- but anything that walks it (``str()``, a repr in an error message,
    pattern matching) expands it exponentially. Sizes are counted with shared nodes
    memoised, so this check itself stays linear in the document.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(value: Any) -> int:
        if not isinstance(value, (list, dict)):
            return 1
        key = id(value)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(f"config {where} contains a YAML alias that refers to itself")
        open_nodes.add(key)
        total = 1
        for child in value.values() if isinstance(value, dict) else value:
            total += size(child)
            if total > limit:
                raise ConfigError(f"config {where} expands to more than {limit} values (YAML aliases?)")
        open_nodes.discard(key)
        sizes[key] = total
        return total

    try:
        size(data)
    except RecursionError:
        raise ConfigError(f"config {where} is nested too deeply") from None


DEFAULT_SHARD_SIZE = 2 * 1000**3


def parse_size(value: int | str) -> int:
    """Bytes from a positive int or a string such as ``'2GB'``, ``'500MB'``, ``'1.5GiB'``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"cannot parse size {short_repr(value)} (expected e.g. 2GB, 500MB or a byte count)")
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?i?B?)\s*", str(value), re.IGNORECASE)
    if not match:
        raise ConfigError(f"cannot parse size {value!r} (expected e.g. 2GB, 500MB or a byte count)")
    number, unit = float(match.group(1)), match.group(2).upper()
    powers = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if "I" in unit else 1000
    size = int(number * base ** powers[unit.replace("I", "").replace("B", "") or ""])
    if size < 1:
        raise ConfigError(f"size {value!r} must be at least 1 byte")
    return size
