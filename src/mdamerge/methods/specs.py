"""What each merging method is called and which parameters it takes -- without torch.

This module is the one place where a method's name, summary, reference, parameters
(defaults, choices, ranges) and per-model parameters are declared. The implementations
(one module each, importing torch) are built from these specs, and the config is
validated against them before torch is imported, so a typo in a config fails in a
fraction of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError, closest_hint, short_repr


@dataclass(frozen=True)
class Param:
    """A method parameter: name, default, type and a one-line description."""

    name: str
    default: Any
    kind: type
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False  # None is allowed (means "derive from the data")

    def coerce(self, value: Any, where: str) -> Any:
        """Validate ``value`` for this parameter, converting ints to floats where needed."""
        if value is None and (self.optional or self.default is None):
            return None
        try:
            if self.kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                coerced = value
            elif self.kind is float:
                if isinstance(value, bool):
                    raise TypeError
                coerced = float(value)
            elif self.kind is int:
                if isinstance(value, bool) or int(value) != value:
                    raise TypeError
                coerced = int(value)
            else:
                coerced = self.kind(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit integer for a float
            raise ConfigError(
                f"parameter '{self.name}'{where} must be {self.kind.__name__}, got {short_repr(value)}"
            ) from None
        if self.kind is float and not math.isfinite(coerced):  # NaN would pass every range check below
            raise ConfigError(f"parameter '{self.name}'{where} must be a finite number, got {value!r}")
        if self.choices is not None and coerced not in self.choices:
            raise ConfigError(
                f"parameter '{self.name}'{where} must be one of {list(self.choices)}, got {value!r}"
                + closest_hint(str(value), map(str, self.choices))
            )
        if self.minimum is not None and coerced < self.minimum:
            raise ConfigError(f"parameter '{self.name}'{where} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and coerced > self.maximum:
            raise ConfigError(f"parameter '{self.name}'{where} must be <= {self.maximum}, got {value!r}")
        return coerced


@dataclass
class MethodSpec:
    """A method's name, summary, parameters and the parameters a model may set for itself
    (``models[i].parameters``); :class:`~mdamerge.methods.base.MergeMethod` adds the merge."""

    name: str = ""
    summary: str = ""
    params: Sequence[Param] = field(default_factory=tuple)
    reference: str = ""
    per_model: tuple[str, ...] = ()

    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError(
            f"method '{self.name}' has no parameter '{name}'" + closest_hint(name, self.param_names())
        )


# Parameters several methods share.
SCALING = Param("scaling", 0.3, float, "lambda, the scale of the summed task vectors (FusionBench: 0.3)")
ISO_SCALING = Param(
    "scaling", 1.0, float,
    "alpha, scale of the isotropic task vector (FusionBench's iso_c.yaml/iso_cts.yaml default: 1.0; tune it on validation)",
)
SVD_SOLVER = Param(
    "svd_solver", "auto", str,
    "top-k SVD: 'auto' = 'gram' (float64 Gram eigh, self-checked, dense fallback; exact), "
    "'full' (dense SVD) or 'randomized' (seeded sketch, residual-checked, falls back to gram)",
    choices=("auto", "full", "gram", "randomized"),
)
SVD_DTYPE = Param(
    "svd_dtype", "float64", str,
    "working precision of the SVD methods (float32: FusionBench's; its dense SVDs are ill-posed at near-tied "
    "singular values -- the Gram eigendecompositions are float64 either way)",
    choices=("float32", "float64"),
)
RANK_FRACTION = Param(
    "rank_fraction", None, float,
    "triplets kept per task as a fraction of min(m, n); default 1/T (k = floor(min(m,n)/T))",
    minimum=0.0, maximum=1.0, optional=True,
)

SPECS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec(
        name="average",
        summary="Weighted mean of the fine-tuned weights: theta_0 + sum_t w_t tau_t / sum_t w_t.",
        reference="Wortsman et al., Model soups, ICML 2022",
    ),
    MethodSpec(
        name="task_arithmetic",
        summary="theta_0 + lambda * sum_t w_t tau_t.",
        params=(SCALING,),
        reference="Ilharco et al., Editing models with task arithmetic, ICLR 2023",
    ),
    MethodSpec(
        name="dare",
        summary="Random drop (p) and rescale (1/(1-p)) of each task vector, then task arithmetic; seeded.",
        params=(
            Param("drop_rate", 0.5, float, "probability p of dropping each entry", minimum=0.0, maximum=0.999),
            Param("rescale", True, bool, "rescale kept entries by 1/(1-p)"),
            Param("only_2d", False, bool, "apply dropping only to 2-D weights (FusionBench: only_on_linear_weights)"),
            SCALING,
        ),
        reference="Yu et al., Language models are Super Mario, ICML 2024",
        per_model=("drop_rate",),  # models[i].parameters.drop_rate: a drop rate per model
    ),
    MethodSpec(
        name="ties",
        summary="Trim to the top-density magnitudes, elect signs, disjoint merge; global (default) or per-tensor trimming.",
        params=(
            Param("density", 0.2, float, "fraction of entries of each task vector kept (FusionBench: top 20%)", minimum=0.0, maximum=1.0),
            Param("scope", "global", str, "trim over the whole model (FusionBench) or each tensor (mergekit)", choices=("global", "tensor")),
            Param("merge_func", "sum", str, "disjoint 'sum' (FusionBench) or 'mean' (original paper)", choices=("sum", "mean")),
            SCALING,
        ),
        reference="Yadav et al., TIES-Merging, NeurIPS 2023",
        per_model=("density",),  # models[i].parameters.density: a density per model
    ),
    MethodSpec(
        name="gta",
        summary="mergekit's generalized task arithmetic: per-model sparsify (magnitude/random), weight, "
                "sign consensus, optional normalisation, lambda. What mergekit configs translate to.",
        params=(
            Param("sparsify", "none", str, "per-tensor sparsification of each task vector (outliers: Model Breadcrumbs)",
                  choices=("none", "magnitude", "random", "outliers")),
            Param("consensus", "none", str, "sign election (TIES: sum)", choices=("none", "sum", "count")),
            Param("normalize", False, bool, "divide by the sum of the (surviving) weights"),
            Param("rescale", False, bool, "after sparsifying, restore each task vector's L1 norm (mergekit DARE)"),
            Param("scaling", 1.0, float, "lambda, applied after the sum (mergekit default 1)"),
            Param("weight", 1.0, float, "per-model weight (times the model's own weight); may differ per model"),
            Param("density", 1.0, float, "fraction kept by sparsify; may differ per model", minimum=0.0, maximum=1.0),
            Param("gamma", 0.01, float, "sparsify=outliers: fraction of largest magnitudes dropped; may differ per model",
                  minimum=0.0, maximum=1.0),
        ),
        reference="Yadav et al. 2023 (TIES), Yu et al. 2024 (DARE), as implemented in mergekit (Goddard et al. 2024)",
        per_model=("weight", "density", "gamma"),  # one value per model (lists of T values in job.params)
    ),
    MethodSpec(
        name="tsv",
        summary="TSV-M: per-task top-k SVD blocks, concatenated, polar-orthogonalised, rebuilt.",
        params=(
            RANK_FRACTION,
            Param("scaling", 1.0, float, "alpha, scale of the merged task vector (FusionBench: 1.0)"),
            SVD_SOLVER,
            SVD_DTYPE,
        ),
        reference="Gargiulo et al., Task Singular Vectors, CVPR 2025",
    ),
    MethodSpec(
        name="iso_c",
        summary="Iso-C: SVD of the summed task vectors with a flat (mean) spectrum.",
        params=(ISO_SCALING, SVD_DTYPE),
        reference="Marczak et al., No Task Left Behind: Isotropic Model Merging, ICML 2025",
    ),
    MethodSpec(
        name="iso_cts",
        summary="Iso-CTS: common + task-specific subspaces, polar-orthogonalised, flat spectrum.",
        params=(
            Param("common_fraction", 0.8, float, "share of the rank given to the common subspace", minimum=0.0, maximum=1.0),
            ISO_SCALING,
            SVD_DTYPE,
        ),
        reference="Marczak et al., No Task Left Behind: Isotropic Model Merging, ICML 2025",
    ),
    MethodSpec(
        name="mda",
        summary="MDA (data-free): shared top-k task subspace given a simplex-ETF directional structure.",
        params=(
            RANK_FRACTION,
            Param("etf_side", "left", str, "which singular directions get the ETF structure", choices=("left", "right", "both")),
            Param("etf_over", "directions", str, "ETF over all K=T*k directions or over the T task blocks", choices=("directions", "tasks")),
            Param("polar", True, bool, "orthogonalise U and V (polar factor) before the ETF step"),
            Param("spectrum", "task", str, "keep the task singular values or flatten them to their mean", choices=("task", "isotropic")),
            Param("scaling", 1.0, float, "alpha, scale of the merged task vector"),
            SVD_SOLVER,
            SVD_DTYPE,
        ),
        reference="Chen et al., From Coefficients to Directions: Rethinking Model Merging with Directional Alignment, 2025",
    ),
)}


def unknown_method(name: str, known) -> ConfigError:
    """The one-line error for a method name not in ``known``, with the closest suggestion."""
    return ConfigError(f"unknown method '{name}'" + closest_hint(name, known) + f"; available: {', '.join(sorted(known))}")


def get_spec(name: str) -> MethodSpec:
    """A data-free method's spec by name; unknown names raise with the closest suggestion."""
    try:
        return SPECS[name]
    except KeyError:
        raise unknown_method(name, SPECS) from None
