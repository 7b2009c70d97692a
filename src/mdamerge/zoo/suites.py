"""The zoo's suite and backbone names, torch-free: the commands' ``--help`` lists them without
loading torch (:mod:`mdamerge.zoo.tasks` defines the tasks themselves)."""

from __future__ import annotations

TASKS8 = ["mnist", "fashion", "letters", "digits8x8", "mnist_rot90", "fashion_inverted", "lowercase", "font_family"]
TASKS14 = TASKS8 + ["fashion_coarse", "mnist_parity", "font_digits", "fashion_orientation", "mnist_inverted",
                    "letters_mirrored"]
TASKS20 = TASKS14 + ["fashion_tops", "digits8x8_rot180", "letters_rot90", "vowels", "font_weight", "mnist_low"]

VISION_SUITES: dict[str, list[str]] = {"tiny3": ["mnist", "fashion", "letters"], "tasks8": TASKS8, "tasks14": TASKS14,
                                       "tasks20": TASKS20}

BACKBONE_NAMES = ("small", "base")
DEFAULT_BACKBONE = "small"


def suite_names() -> list[str]:
    """Every suite a command takes: the vision zoo's and the text zoo's."""
    from ..textzoo.tasks import TEXT_SUITES

    return [*VISION_SUITES, *TEXT_SUITES]
