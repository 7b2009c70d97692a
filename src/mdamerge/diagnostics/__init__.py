"""Directional diagnostics of task vectors and features (``mdamerge analyze``).

* :mod:`.task_vectors` -- per-layer cosine matrices, principal angles between task
  subspaces and singular-value spectra;
* :mod:`.etf` -- Delta_ETF, the deviation of class-mean features from a simplex ETF;
* :mod:`.plots` / :mod:`.report` -- figures and the Markdown/HTML report.
"""

from .etf import class_means, delta_etf, prototype_misalignment
from .task_vectors import analyze_task_vectors, cosine_matrix, principal_angles

__all__ = ["analyze_task_vectors", "class_means", "cosine_matrix", "delta_etf", "principal_angles", "prototype_misalignment"]
