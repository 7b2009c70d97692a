"""MDA with data: feature-space directional alignment on top of a merge.

Starting point (``init``):

* ``"mda"``  -- the data-free MDA merge: ``theta = theta_0 + lambda_l * Delta^MDA_l``,
  one coefficient per parameter tensor ``l``, starting at 1 (unclamped by default).
* ``"ta"``   -- task arithmetic: ``theta = theta_0 + sum_t lambda_{t,l} tau_{t,l}``,
  starting at 0.3, clamped to [0, 1] ("MDA-TA").
* ``"am"``   -- the same form, starting from layer-wise AdaMerging's learned
  coefficients ("MDA-AM").

On top, each task ``t`` gets a rotation ``R_t in SO(d)`` of the backbone features
(``exp`` of a skew-symmetric matrix, or Cayley), applied before the frozen task head.
The loss summed over tasks is

    L_t = H(softmax(head_t(R_t f(x))))                       entropy (AdaMerging's term)
        - gamma * H(mean_i softmax(head_t(R_t f(x_i))))         diversity (information maximisation; our addition)
        + alpha * mean_i (1 - cos(R_t f_i - c, m_{t, yhat_i}))  ETF alignment, pseudo-labels yhat
        + beta  * ||R_t - R_t*||_F^2                            Procrustes pull (``gap_per_dim``: / d)

``R_t`` starts at the Procrustes solution of the starting merge (``rotation_init``), the
target ``R_t*`` is computed from a running cross-covariance (``procrustes_momentum``
0.99) and the rotations are trained at ``rotation_lr`` 1e-5: without these, entropy
under a free rotation collapses the predictions (docs/feature_alignment.md, "Observed
behaviour").

where ``m_{t,k}`` are simplex-ETF prototypes matched to the head's classes
(:func:`~mdamerge.adaptation.losses.etf_prototypes`) and ``R_t*`` is the special
orthogonal Procrustes rotation taking the merged features of the batch onto the
fine-tuned model's features of the same inputs. ``use_rotation=False`` fixes
``R_t = I`` and drops the Procrustes term (the "without rotation" ablation);
``alpha=0``, ``beta=0``, ``diversity=0`` or ``use_entropy=False`` remove the other terms. A removed
term is never computed: it is logged as 0 and contributes no gradient.
The full statement is in docs/feature_alignment.md.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from ..engine import merge_state_dicts
from ..errors import MergeError
from .coefficients import AdaptiveResult, CoefficientTrainer, adamerging, check_clamp, check_positive_int
from .functional import MergedParameterSpace, mergeable_names
from .losses import etf_alignment_loss, etf_prototypes, marginal_entropy, rotation_gap, shannon_entropy
from .problem import AdaptationProblem
from .rotations import PARAMETRISATIONS, FixedRotation, Rotation, procrustes_from_cross_covariance

INITS = ("mda", "ta", "am")
PSEUDO_LABELS = ("merged", "finetuned")
ROTATION_INITS = ("procrustes", "identity")
# Adam moves each of the d^2 generator entries by about the learning rate per step, so the
# rotation angle grows like lr * steps * sqrt(d): 1e-3 (the coefficients' rate) turns the
# features by far more than the Procrustes rotation that maps them onto the fine-tuned ones.
DEFAULT_ROTATION_LR = 1e-5
DEFAULT_CLAMP = {"mda": None, "ta": (0.0, 1.0), "am": (0.0, 1.0)}


def cross_covariance(finetuned: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """``F^T M / n`` in float64: the matrix whose Procrustes rotation maps merged onto fine-tuned features."""
    return finetuned.double().mT @ merged.double() / len(merged)


class FeatureAligner(CoefficientTrainer):
    """Coefficients + per-task rotations trained on entropy, ETF alignment and the Procrustes pull."""

    method_name = "mda-feature"

    def __init__(
        self,
        problem: AdaptationProblem,
        space: MergedParameterSpace,
        init_coefficients: torch.Tensor,
        *,
        alpha: float = 0.8,
        beta: float = 0.2,
        use_entropy: bool = True,
        use_rotation: bool = True,
        rotation: str = "expm",
        rotation_lr: float | None = None,
        etf_center: bool = True,
        procrustes_momentum: float = 0.99,
        gap_per_dim: bool = False,
        rotate_about_mean: bool = False,
        pseudo_labels: str = "merged",
        diversity: float = 1.0,
        rotation_init: str = "procrustes",
        init_samples: int = 512,
        **kwargs: Any,
    ):
        super().__init__(problem, space, init_coefficients, **kwargs)
        if alpha < 0 or beta < 0 or diversity < 0:
            raise MergeError(f"alpha, beta and diversity must be >= 0, got alpha={alpha!r}, beta={beta!r}, diversity={diversity!r}")
        if rotation_init not in ROTATION_INITS:
            raise MergeError(f"rotation_init must be one of {list(ROTATION_INITS)}, got {rotation_init!r}")
        if rotation not in PARAMETRISATIONS:
            raise MergeError(f"rotation must be one of {list(PARAMETRISATIONS)}, got {rotation!r}")
        self.alpha = float(alpha)
        self.beta = float(beta) if use_rotation else 0.0
        self.use_entropy = bool(use_entropy)
        self.diversity = float(diversity)
        self.rotation_init = rotation_init
        self.init_samples = check_positive_int("init_samples", init_samples)
        self.use_rotation = bool(use_rotation)
        self.etf_center = etf_center
        if not 0.0 <= procrustes_momentum < 1.0:
            raise MergeError(f"procrustes_momentum must be in [0, 1), got {procrustes_momentum!r}")
        self.procrustes_momentum = float(procrustes_momentum)
        self.gap_per_dim = bool(gap_per_dim)
        self.rotate_about_mean = bool(rotate_about_mean)
        if pseudo_labels not in PSEUDO_LABELS:
            raise MergeError(f"pseudo_labels must be one of {list(PSEUDO_LABELS)}, got {pseudo_labels!r}")
        self.pseudo_labels = pseudo_labels
        self._centers: dict[str, torch.Tensor] = {}
        self._cross: dict[str, torch.Tensor] = {}
        if not (self.use_entropy or self.alpha > 0 or self.beta > 0):
            raise MergeError("every loss term is switched off: enable use_entropy, alpha > 0 or beta > 0")
        self.rotation_lr = float(rotation_lr) if rotation_lr is not None else DEFAULT_ROTATION_LR
        self.feature_dim = self._feature_dim()
        # a plain dict: task names may contain dots, which nn.ModuleDict rejects
        self._ft_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        starts = self._procrustes_starts() if self.use_rotation and rotation_init == "procrustes" else {}
        self.rotations: dict[str, Rotation] = (
            {t: Rotation(self.feature_dim, rotation, starts.get(t)).to(self.device) for t in problem.tasks}
            if self.use_rotation else {}
        )
        self.prototypes = {t: self._prototypes(t, i) for i, t in enumerate(problem.tasks)} if self.alpha > 0 else {}

    # -- setup -------------------------------------------------------------
    def _feature_dim(self) -> int:
        task = self.problem.tasks[0]
        sample = self.problem.unlabeled[task][:2].to(self.device)
        sample = sample.float() if sample.is_floating_point() else sample
        with torch.no_grad():
            features = self.space.forward(self.space.anchor, sample)
        if features.ndim != 2:
            raise MergeError(f"the backbone must return (B, d) features, got shape {tuple(features.shape)}")
        return features.shape[1]

    def _procrustes_starts(self) -> dict[str, torch.Tensor]:
        """``R_t*`` of the starting merge on (up to) ``init_samples`` unlabeled inputs per task.

        The rotations start there instead of at the identity; the cross-covariance also
        seeds the running target of ``procrustes_momentum`` (and, with
        ``rotate_about_mean``, the running feature mean), so the Procrustes target is
        determined in all ``d`` directions from the first step.
        """
        starts = {}
        with torch.no_grad():
            params = self.space.parameters(self.coefficients())
            for task in self.problem.tasks:
                n = min(self.init_samples, len(self.problem.unlabeled[task]))
                merged, finetuned = [], []
                for lo in range(0, n, 256):
                    idx = torch.arange(lo, min(lo + 256, n))
                    x = self.problem.unlabeled[task][idx].to(self.device)
                    x = x.float() if x.is_floating_point() else x
                    merged.append(self.space.forward(params, x).float())
                    finetuned.append(self.finetuned_features(task, idx, x))
                merged, finetuned = torch.cat(merged), torch.cat(finetuned)
                if self.rotate_about_mean:
                    self._centers[task] = merged.mean(0)
                    merged, finetuned = merged - merged.mean(0), finetuned - finetuned.mean(0)
                cross = cross_covariance(finetuned, merged)
                self._cross[task] = cross
                starts[task] = procrustes_from_cross_covariance(cross).float()
        return starts

    def _prototypes(self, task: str, index: int) -> torch.Tensor:
        weight = getattr(self.heads[task], "weight", None)
        if not torch.is_tensor(weight) or weight.ndim != 2 or weight.shape[1] != self.feature_dim:
            raise MergeError(
                f"ETF alignment needs a linear head (K x {self.feature_dim} weight) for task '{task}'; set alpha=0 otherwise"
            )
        if self.feature_dim < weight.shape[0] - 1:
            raise MergeError(f"task '{task}': {weight.shape[0]} classes need feature dim >= {weight.shape[0] - 1} for a simplex ETF")
        return etf_prototypes(weight, seed=self.seed + index).to(self.device)

    def extra_optimizers(self) -> list[torch.optim.Optimizer]:
        if not self.use_rotation:
            return []
        return [torch.optim.Adam([r.raw for r in self.rotations.values()], lr=self.rotation_lr)]

    # -- loss --------------------------------------------------------------
    def finetuned_features(self, task: str, indices: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Features of the task's fine-tuned model on these inputs (cached by input index)."""
        n = len(self.problem.unlabeled[task])
        if task not in self._ft_cache:
            self._ft_cache[task] = (
                torch.zeros(n, self.feature_dim, device=self.device), torch.zeros(n, dtype=torch.bool, device=self.device)
            )
        cache, filled = self._ft_cache[task]
        idx = indices.to(self.device)
        missing = ~filled[idx]
        if missing.any():
            state = self.problem.finetuned[task]
            params = {name: state[name].to(self.device, torch.float32) for name in self.space.names}
            with torch.no_grad():
                cache[idx[missing]] = self.space.forward(params, inputs[missing.to(inputs.device)]).float()
            filled[idx[missing]] = True
        return cache[idx]

    def procrustes_target(self, task: str, merged: torch.Tensor, finetuned: torch.Tensor) -> torch.Tensor:
        """``R_t*``: Kabsch rotation of merged onto fine-tuned features -- of this batch alone
        (``procrustes_momentum = 0``), or of an exponential moving average of the batches'
        cross-covariances, which pins down all ``d`` directions once enough inputs were seen."""
        cross = cross_covariance(finetuned, merged)
        if self.procrustes_momentum > 0:
            if task in self._cross:
                cross = self.procrustes_momentum * self._cross[task] + (1 - self.procrustes_momentum) * cross
            self._cross[task] = cross
        return procrustes_from_cross_covariance(cross).to(merged.dtype)

    def update_center(self, task: str, features: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
        """Running mean of the task's merged features (the point the rotation turns about)."""
        mean = features.mean(0)
        if task in self._centers:
            mean = momentum * self._centers[task] + (1 - momentum) * mean
        self._centers[task] = mean
        return mean

    def task_loss(self, task, indices, inputs, params):
        features = self.space.forward(params, inputs)
        zero = torch.zeros((), device=self.device)
        if self.use_rotation:
            rotation = self.rotations[task].matrix()
            if self.rotate_about_mean:
                center = self.update_center(task, features.detach())
                rotated = (features - center) @ rotation.mT + center
            else:
                rotated = features @ rotation.mT
        else:
            rotated = features
        logits = self.heads[task](rotated)
        components = {"entropy": zero, "diversity": zero, "etf": zero, "procrustes": zero}
        if self.use_entropy:
            components["entropy"] = shannon_entropy(logits)
        if self.diversity > 0:
            components["diversity"] = marginal_entropy(logits)
        if self.alpha > 0:
            if self.pseudo_labels == "finetuned":  # the task's own model labels the batch: a fixed target
                label_logits = self.heads[task](self.finetuned_features(task, indices, inputs))
            else:
                label_logits = logits
            components["etf"] = etf_alignment_loss(rotated, label_logits, self.prototypes[task], center=self.etf_center)
        if self.beta > 0:
            merged, finetuned = features.detach(), self.finetuned_features(task, indices, inputs)
            if self.rotate_about_mean:  # a rotation about the mean: align the centred point clouds
                merged, finetuned = merged - merged.mean(0), finetuned - finetuned.mean(0)
            target = self.procrustes_target(task, merged, finetuned)
            components["procrustes"] = rotation_gap(rotation, target, self.gap_per_dim)
        components["total"] = (
            components["entropy"] - self.diversity * components["diversity"]
            + self.alpha * components["etf"] + self.beta * components["procrustes"]
        )
        return components

    # -- output ------------------------------------------------------------
    def rotation_matrices(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {t: r.matrix().detach().cpu() for t, r in self.rotations.items()}

    def feature_transforms(self):
        if not self.use_rotation:
            return None
        centers = {t: c.cpu() for t, c in self._centers.items()} if self.rotate_about_mean else {}
        return {t: FixedRotation(m, centers.get(t)) for t, m in self.rotation_matrices().items()}


def mda_feature_alignment(
    problem: AdaptationProblem,
    *,
    init: str = "mda",
    init_coefficients: torch.Tensor | None = None,
    granularity: str = "layer",
    steps: int = 1000,
    lr: float = 1e-3,
    rotation_lr: float | None = None,
    alpha: float = 0.8,
    beta: float = 0.2,
    use_entropy: bool = True,
    use_rotation: bool = True,
    rotation: str = "expm",
    etf_center: bool = True,
    procrustes_momentum: float = 0.99,
    gap_per_dim: bool = False,
    rotate_about_mean: bool = False,
    pseudo_labels: str = "merged",
    diversity: float = 1.0,
    rotation_init: str = "procrustes",
    init_samples: int = 512,
    clamp: Any = "default",
    batch_size: int = 16,
    ta_init: float = 0.3,
    am_steps: int | None = None,
    mda_params: Mapping[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> AdaptiveResult:
    """MDA feature-space alignment (see the module docstring).

    ``init="am"`` runs layer-wise AdaMerging for ``am_steps`` (default: ``steps``)
    first unless ``init_coefficients`` (T x L) are given. ``clamp="default"`` means
    no clamp for ``"mda"`` and [0, 1] otherwise. ``mda_params`` are passed to the
    data-free MDA merge (e.g. ``{"rank_fraction": 0.1}``).
    """
    if init not in INITS:
        raise MergeError(f"init must be one of {list(INITS)}, got {init!r}")
    clamp = DEFAULT_CLAMP[init] if isinstance(clamp, str) and clamp == "default" else check_clamp(clamp)
    start = time.perf_counter()
    module = problem.module.to(device)
    info: dict[str, Any] = {"init": init}
    if init == "am" and init_coefficients is None:
        # before building our own parameter space, so two copies of the task vectors never coexist
        am = adamerging(
            problem, granularity=granularity, steps=steps if am_steps is None else am_steps, lr=lr,
            init=ta_init, batch_size=batch_size, device=device, seed=seed, progress=progress,
        )
        init_coefficients = torch.tensor(am.info["coefficients"]["values"])
        info["adamerging"] = {k: am.info[k] for k in ("steps", "seconds", "coefficients", "clamp")}
        info["adamerging"]["final_entropy"] = am.info["history"][-1]["total"] if am.info["history"] else None
        del am
    if init == "mda":
        merged = merge_state_dicts(dict(problem.base), list(problem.finetuned.values()), "mda", **dict(mda_params or {}))
        names = mergeable_names(module)
        directions = [{n: merged[n].float() - problem.base[n].float() for n in names}]
        info["mda_params"] = dict(mda_params or {})
        space = MergedParameterSpace(module, problem.base, directions, granularity, device)
        del merged, directions
        start_value = 1.0
    else:
        space = MergedParameterSpace(
            module, problem.base, list(problem.finetuned.values()), granularity, device, subtract=problem.base
        )
        start_value = ta_init
    if init_coefficients is None:
        init_coefficients = torch.full(space.coefficient_shape(), float(start_value))
    init_coefficients = torch.as_tensor(init_coefficients, dtype=torch.float32)
    if tuple(init_coefficients.shape) != space.coefficient_shape():
        raise MergeError(f"init_coefficients have shape {tuple(init_coefficients.shape)}, expected {space.coefficient_shape()}")
    trainer = FeatureAligner(
        problem, space, init_coefficients, alpha=alpha, beta=beta, use_entropy=use_entropy,
        use_rotation=use_rotation, rotation=rotation, rotation_lr=rotation_lr, etf_center=etf_center,
        procrustes_momentum=procrustes_momentum, gap_per_dim=gap_per_dim, rotate_about_mean=rotate_about_mean,
        pseudo_labels=pseudo_labels, diversity=diversity, rotation_init=rotation_init, init_samples=init_samples,
        lr=lr, clamp=clamp, batch_size=batch_size, seed=seed, device=device, progress=progress,
    )
    trainer.method_name = f"mda-{init}" + ("" if use_rotation else "-norot")
    trainer.run(steps)
    info.update({
        "method": trainer.method_name.replace("-", "_"),
        "alpha": trainer.alpha, "beta": trainer.beta, "use_entropy": trainer.use_entropy,
        "use_rotation": trainer.use_rotation, "rotation": rotation, "rotation_lr": trainer.rotation_lr,
        "procrustes_momentum": trainer.procrustes_momentum, "gap_per_dim": trainer.gap_per_dim,
        "rotate_about_mean": trainer.rotate_about_mean, "pseudo_labels": trainer.pseudo_labels,
        "diversity": trainer.diversity, "rotation_init": trainer.rotation_init if trainer.use_rotation else None,
        "feature_dim": trainer.feature_dim, "seconds": time.perf_counter() - start,
    })
    return trainer.result(dict(problem.base), info)
