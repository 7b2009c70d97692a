"""mdamerge: merge fine-tuned copies of one pretrained model, without retraining.

Flagship method: MDA, Merging with Directional Alignment (Chen et al., 2025), next to
the standard baselines (average, task arithmetic, TIES, DARE, TSV-M, Iso-C, Iso-CTS).

>>> import mdamerge
>>> merged = mdamerge.merge_state_dicts(base_sd, [sd_a, sd_b], method="mda")  # doctest: +SKIP
>>> mdamerge.merge("merge.yaml", out_dir="merged/")                             # doctest: +SKIP
"""

__version__ = "0.1.0"

from .config import MergeConfig  # noqa: E402
from .engine import MergeResult, merge, merge_state_dicts  # noqa: E402
from .errors import CheckpointError, ConfigError, MergeError  # noqa: E402
from .methods import available_methods, get_method  # noqa: E402

__all__ = [
    "CheckpointError", "ConfigError", "MergeConfig", "MergeError", "MergeResult",
    "available_methods", "get_method", "merge", "merge_state_dicts", "__version__",
]
