"""Directional diagnostics of task vectors and features (``mdamerge analyze``).

* :mod:`.task_vectors` -- per-layer cosine matrices, principal angles between task
  subspaces and singular-value spectra;
* :mod:`.etf` -- Delta_ETF, the deviation of class-mean features from a simplex ETF;
* :mod:`.plots` / :mod:`.report` -- figures and the Markdown/HTML report.

The names below are imported on first use: ``mdamerge analyze --help`` loads this package,
and must not wait for torch.
"""

from ..lazy import lazy_exports

_EXPORTS = {"class_means": ".etf", "delta_etf": ".etf", "prototype_misalignment": ".etf",
            "analyze_task_vectors": ".task_vectors", "cosine_matrix": ".task_vectors", "principal_angles": ".task_vectors"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
