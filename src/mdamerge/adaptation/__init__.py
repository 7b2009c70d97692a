"""Data-based merging: AdaMerging (task-wise / layer-wise) and MDA's feature-space
alignment (MDA, MDA-TA, MDA-AM, and the no-rotation ablation).

The algorithms are generic (:class:`AdaptationProblem`: any backbone module, per-task
heads and unlabeled inputs). :data:`ADAPTIVE_METHODS` exposes them for the offline
benchmark as ``fn(zoo, tasks, device="cpu", seed=0, **kw) -> AdaptiveResult``.
"""

import importlib

# Imported on first use, so that `mdamerge adapt --help` (which imports this package) does not load torch.
_EXPORTS = {
    "AdaptiveResult": ".coefficients", "CoefficientTrainer": ".coefficients", "adamerging": ".coefficients",
    "MergedParameterSpace": ".functional", "FeatureAligner": ".mda_feature", "mda_feature_alignment": ".mda_feature",
    "AdaptationProblem": ".problem", "UnlabeledBatches": ".problem", "ADAPTIVE_METHODS": ".registry",
    "problem_from_zoo": ".registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
