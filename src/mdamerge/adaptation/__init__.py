"""Data-based merging: AdaMerging (task-wise / layer-wise) and MDA's feature-space
alignment (MDA, MDA-TA, MDA-AM, and the no-rotation ablation).

The algorithms are generic (:class:`AdaptationProblem`: any backbone module, per-task
heads and unlabeled inputs). :data:`ADAPTIVE_METHODS` exposes them for the offline
benchmark as ``fn(zoo, tasks, device="cpu", seed=0, **kw) -> AdaptiveResult``.
"""

from .adamerging import AdaptiveResult, CoefficientTrainer, adamerging
from .functional import MergedParameterSpace
from .mda_feature import FeatureAligner, mda_feature_alignment
from .problem import AdaptationProblem, UnlabeledBatches
from .registry import ADAPTIVE_METHODS, problem_from_zoo

__all__ = [
    "ADAPTIVE_METHODS", "AdaptationProblem", "AdaptiveResult", "CoefficientTrainer", "FeatureAligner",
    "MergedParameterSpace", "UnlabeledBatches", "adamerging", "mda_feature_alignment", "problem_from_zoo",
]
