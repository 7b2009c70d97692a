"""AdaMerging and MDA feature alignment on tiny hand-built problems (no zoo needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from mdamerge.adaptation import AdaptationProblem, MergedParameterSpace, UnlabeledBatches, adamerging, mda_feature_alignment
from mdamerge.adaptation.coefficients import CoefficientTrainer
from mdamerge.adaptation.losses import etf_alignment_loss, etf_prototypes, marginal_entropy, rotation_gap, shannon_entropy
from mdamerge.adaptation.mda_feature import FeatureAligner
from mdamerge.adaptation.rotations import FixedRotation, Rotation, orthogonality_error, special_procrustes
from mdamerge.errors import CheckpointError, MergeError

IN, HIDDEN, FEAT = 8, 16, 6


class Backbone(nn.Module):
    """Tiny feature extractor with a float and a non-float buffer (both must stay at the base)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, FEAT)
        self.register_buffer("shift", torch.zeros(IN))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x + self.shift)))


def make_problem(seed=0, tasks=3, classes=3, n=64, finetune_steps=120):
    """T synthetic Gaussian-mixture tasks, each fine-tuned (backbone + head) from one random base."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    base_model = Backbone()
    base_model.shift.normal_(generator=g)
    base = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    finetuned, heads, inputs, labels = {}, {}, {}, {}
    for t in range(tasks):
        centers = 2.0 * torch.randn(classes, IN, generator=g)
        y = torch.randint(0, classes, (n,), generator=g)
        x = centers[y] + 0.5 * torch.randn(n, IN, generator=g)
        model = Backbone()
        model.load_state_dict(base)
        head = nn.Linear(FEAT, classes)
        opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
        for _ in range(finetune_steps):
            opt.zero_grad()
            nn.functional.cross_entropy(head(model(x)), y).backward()
            opt.step()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["shift"] = state["shift"] + 1.0  # a fine-tuned buffer that must not leak into the merge
        state["calls"] = torch.tensor(7)
        finetuned[f"task.{t}"] = state  # a dot in the name: must not break per-task modules
        heads[f"task.{t}"] = head
        inputs[f"task.{t}"] = x
        labels[f"task.{t}"] = y
    return AdaptationProblem(Backbone(), base, finetuned, heads, inputs), labels


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """These models are tiny: one thread avoids oversubscribing a busy machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem(single_thread):
    return make_problem()[0]


def mean_entropy(problem, state):
    """Entropy of the merged model's predictions on every unlabeled input (independent of the trainer)."""
    total = 0.0
    with torch.no_grad():
        for task in problem.tasks:
            logits = problem.heads[task](functional_call(problem.module, state, (problem.unlabeled[task],)))
            p = torch.softmax(logits, -1)
            total += float(-(p * torch.log(p)).sum(-1).mean())
    return total / len(problem.tasks)


def random_rotation(d, seed, det=1.0):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


# -- rotations ---------------------------------------------------------------
@pytest.mark.parametrize("parametrisation", ["expm", "cayley"])
def test_rotation_stays_special_orthogonal_after_optimisation(parametrisation):
    d = 7
    torch.manual_seed(0)
    rot = Rotation(d, parametrisation).double()
    assert torch.equal(rot.matrix(), torch.eye(d, dtype=torch.float64))
    target = torch.randn(d, d, dtype=torch.float64)  # not a rotation: pushes R towards non-orthogonal matrices
    opt = torch.optim.Adam(rot.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        (rot.matrix() - target).pow(2).sum().backward()
        opt.step()
    r = rot.matrix().detach()
    assert (r - torch.eye(d, dtype=torch.float64)).abs().max() > 0.1  # it did move
    assert orthogonality_error(r) < 1e-10
    assert torch.linalg.det(r).item() == pytest.approx(1.0, abs=1e-10)


def test_fixed_rotation_rotates_row_features():
    r = random_rotation(5, 3).float()
    f = torch.randn(4, 5)
    out = FixedRotation(r)(f)
    assert torch.allclose(out, (r @ f.T).T, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), f.norm(dim=1), atol=1e-5)


# -- Procrustes ----------------------------------------------------------------
def kabsch_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed form, written independently with numpy: R = U diag(1,..,1,det(U V^T)) V^T, Y^T X = U S V^T."""
    u, _, vt = np.linalg.svd(y.T @ x)
    d = np.ones(len(u))
    d[-1] = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag(d) @ vt


def objective(r, x, y):
    return float(((x @ r.T - y) ** 2).sum())


def test_procrustes_recovers_exact_rotation():
    x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    r_true = random_rotation(6, 2)
    assert torch.allclose(special_procrustes(x, x @ r_true.T), r_true, atol=1e-10)


@pytest.mark.parametrize("flip", [False, True])
def test_procrustes_matches_closed_form_and_beats_random_rotations(flip):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 5, dtype=torch.float64, generator=g)
    # flip=True: the data are best matched by a reflection, so the det correction must kick in
    q = random_rotation(5, 6, det=-1.0 if flip else 1.0)
    y = x @ q.T + 0.3 * torch.randn(30, 5, dtype=torch.float64, generator=g)
    r = special_procrustes(x, y)
    assert np.allclose(r.numpy(), kabsch_reference(x.numpy(), y.numpy()), atol=1e-10)
    assert torch.linalg.det(r).item() == pytest.approx(1.0, abs=1e-10)
    best = objective(r, x, y)
    for seed in range(200):
        assert best <= objective(random_rotation(5, 100 + seed), x, y) + 1e-9
    for seed in range(20):  # and no nearby rotation is better (local optimality)
        s = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        nearby = torch.linalg.matrix_exp(1e-3 * (s - s.T)) @ r
        assert best <= objective(nearby, x, y) + 1e-12


# -- losses ------------------------------------------------------------------
def test_entropy_matches_formula():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    expected = float(np.mean(-(p * np.log(p)).sum(1)))
    assert shannon_entropy(logits).item() == pytest.approx(expected, rel=1e-6)
    assert shannon_entropy(logits[:1]).item() == pytest.approx(math.log(4), rel=1e-6)


def test_etf_prototypes_form_a_simplex_etf_matched_to_the_head():
    k, d = 5, 9
    protos = etf_prototypes(torch.randn(k, d), seed=0).double()
    gram = protos @ protos.T
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    assert torch.allclose(gram, expected, atol=1e-5)
    # a head whose centred rows already are a (rotated, scaled, shifted) ETF gets exactly those directions
    etf = torch.eye(k, dtype=torch.float64) - 1.0 / k
    etf = etf / etf.norm(dim=1, keepdim=True)
    embedded = torch.cat([etf, torch.zeros(k, d - k, dtype=torch.float64)], 1) @ random_rotation(d, 4).T
    head = 3.0 * embedded + torch.randn(1, d, dtype=torch.float64)
    assert torch.allclose(etf_prototypes(head.float(), seed=3).double(), embedded, atol=1e-5)


def test_etf_alignment_loss_uses_pseudo_labels_and_is_zero_on_prototypes():
    protos = etf_prototypes(torch.randn(3, 4), seed=0)
    logits = torch.eye(3) * 5
    assert etf_alignment_loss(protos * 2.0, logits, protos, center=True).item() == pytest.approx(0.0, abs=1e-6)
    wrong = logits[[1, 2, 0]]
    expected = float((1 - (protos * protos[[1, 2, 0]]).sum(1)).mean())
    assert etf_alignment_loss(protos, wrong, protos, center=False).item() == pytest.approx(expected, abs=1e-6)


def test_rotation_gap_is_normalised_frobenius():
    a, b = random_rotation(4, 1), random_rotation(4, 2)
    assert rotation_gap(a, b).item() == pytest.approx(float(((a - b) ** 2).sum()) / 4)


# -- functional merge ---------------------------------------------------------
def test_merged_parameters_match_manual_formula_and_buffers_stay_at_base(problem):
    taus = problem.task_vectors()
    space = MergedParameterSpace(problem.module, problem.base, taus, "layer")
    coef = torch.rand(space.coefficient_shape(), generator=torch.Generator().manual_seed(0))
    params = space.parameters(coef)
    for layer, name in enumerate(space.names):
        manual = problem.base[name] + sum(coef[t, layer] * taus[t][name] for t in range(len(taus)))
        assert torch.allclose(params[name], manual, atol=1e-6)
    state = space.state_dict(coef, dict(problem.base))
    assert torch.equal(state["shift"], problem.base["shift"]) and state["calls"].item() == 0
    x = problem.unlabeled[problem.tasks[0]]
    reference = Backbone()
    reference.load_state_dict(state)
    assert torch.allclose(space.forward(params, x), reference(x), atol=1e-5)
    task_space = MergedParameterSpace(problem.module, problem.base, taus, "task")
    assert task_space.coefficient_shape() == (3, 1)


def test_gradient_accumulation_equals_gradient_of_summed_losses(problem):
    space = MergedParameterSpace(problem.module, problem.base, problem.task_vectors(), "layer")
    trainer = CoefficientTrainer(problem, space, torch.full(space.coefficient_shape(), 0.3), seed=4, progress=False)
    trainer.accumulate_gradients()
    batches = UnlabeledBatches(problem.unlabeled, 16, seed=4)
    coef = torch.full(space.coefficient_shape(), 0.3, requires_grad=True)
    params = space.parameters(coef)
    loss = sum(
        shannon_entropy(problem.heads[t](functional_call(problem.module, {**params, **space.buffers}, (batches.next(t)[1],))))
        for t in problem.tasks
    )
    loss.backward()
    assert torch.allclose(trainer.raw.grad, coef.grad, atol=1e-6)


# -- AdaMerging ---------------------------------------------------------------
@pytest.mark.parametrize("granularity, shape", [("task", (3, 1)), ("layer", (3, 4))])
def test_adamerging_learns_coefficients_and_lowers_entropy(problem, granularity, shape):
    init_state = MergedParameterSpace(problem.module, problem.base, problem.task_vectors(), granularity).state_dict(
        torch.full(shape, 0.3), dict(problem.base))
    result = adamerging(problem, granularity=granularity, steps=40, lr=2e-2, progress=False)
    coef = torch.tensor(result.info["coefficients"]["values"])
    assert coef.shape == shape
    assert (coef - 0.3).abs().min() > 1e-4  # every coefficient received gradient through functional_call
    assert coef.min() >= 0 and coef.max() <= 1  # clamped like the original code
    assert len(result.info["history"]) == 40 and result.feature_transforms is None
    assert mean_entropy(problem, result.state_dict) < mean_entropy(problem, init_state) - 0.05


def test_adamerging_with_zero_steps_is_task_arithmetic(problem):
    result = adamerging(problem, granularity="task", steps=0, progress=False)
    for name in ("fc1.weight", "fc2.bias"):
        expected = problem.base[name] + 0.3 * sum(sd[name] - problem.base[name] for sd in problem.finetuned.values())
        assert torch.allclose(result.state_dict[name], expected, atol=1e-6)


# -- MDA feature alignment ------------------------------------------------------
def reference_components(aligner, task, x, coef):
    """Entropy and ETF terms recomputed by hand for the current coefficients and rotation."""
    params = aligner.space.parameters(coef)
    feats = functional_call(aligner.problem.module, {**params, **aligner.space.buffers}, (x,))
    if aligner.use_rotation:
        feats = feats @ aligner.rotations[task].matrix().T
    logits = aligner.heads[task](feats)
    return shannon_entropy(logits), etf_alignment_loss(feats, logits, etf_prototypes(aligner.heads[task].weight, seed=aligner.seed + aligner.problem.tasks.index(task)))


def gradients_of(aligner, task, idx, x, switch_off=()):
    """Gradients (coefficients, rotation) of one task's total loss from the library."""
    coef = aligner.coefficients()
    comps = aligner.task_loss(task, idx, x, aligner.space.parameters(coef))
    for key in switch_off:
        assert comps[key].item() == 0.0 and not comps[key].requires_grad
    params = [aligner.raw] + ([aligner.rotations[task].raw] if aligner.use_rotation else [])
    return comps, torch.autograd.grad(comps["total"], params)


def make_aligner(problem, **kw):
    # the term-by-term tests below use the plain formulation unless a test asks otherwise:
    # no diversity term, rotations from the identity, the per-batch Procrustes target, gap / d
    for key, value in (("diversity", 0.0), ("rotation_init", "identity"), ("procrustes_momentum", 0.0), ("gap_per_dim", True)):
        kw.setdefault(key, value)
    taus = problem.task_vectors()
    space = MergedParameterSpace(problem.module, problem.base, taus, "layer")
    aligner = FeatureAligner(problem, space, torch.full(space.coefficient_shape(), 0.3), progress=False, **kw)
    if aligner.use_rotation:  # a non-identity rotation, so every term has a non-trivial gradient
        with torch.no_grad():
            for r in aligner.rotations.values():
                r.raw.copy_(0.2 * torch.randn(r.raw.shape, generator=torch.Generator().manual_seed(0)))
    return aligner


def test_switched_off_terms_are_absent_from_loss_and_gradient(problem):
    task = problem.tasks[1]
    x = problem.unlabeled[task][:16]
    idx = torch.arange(16)
    full = make_aligner(problem, alpha=0.8, beta=0.2)
    comps, (g_coef, g_rot) = gradients_of(full, task, idx, x)
    assert comps["entropy"] > 0 and comps["etf"] > 0 and comps["procrustes"] > 0

    no_etf = make_aligner(problem, alpha=0.0, beta=0.2)
    comps0, (g_coef0, g_rot0) = gradients_of(no_etf, task, idx, x, switch_off=("etf",))
    # what remains is entropy + beta * gap; the gap does not depend on the coefficients
    ent, _ = reference_components(no_etf, task, x, no_etf.coefficients())
    assert torch.allclose(g_coef0, torch.autograd.grad(ent, no_etf.raw)[0], atol=1e-6)
    assert not torch.allclose(g_coef0, g_coef, atol=1e-6)

    no_gap = make_aligner(problem, alpha=0.8, beta=0.0)
    comps1, (g_coef1, g_rot1) = gradients_of(no_gap, task, idx, x, switch_off=("procrustes",))
    ent, etf = reference_components(no_gap, task, x, no_gap.coefficients())
    assert torch.allclose(g_rot1, torch.autograd.grad(ent + 0.8 * etf, no_gap.rotations[task].raw)[0], atol=1e-6)
    assert not torch.allclose(g_rot1, g_rot, atol=1e-6)

    no_entropy = make_aligner(problem, use_entropy=False)
    comps2, _ = gradients_of(no_entropy, task, idx, x, switch_off=("entropy",))
    assert comps2["total"].item() == pytest.approx(0.8 * comps2["etf"].item() + 0.2 * comps2["procrustes"].item(), rel=1e-6)

    no_rot = make_aligner(problem, use_rotation=False)
    comps3, (g_coef3,) = gradients_of(no_rot, task, idx, x, switch_off=("procrustes",))
    assert no_rot.rotations == {} and no_rot.extra_optimizers() == [] and no_rot.feature_transforms() is None
    ent, etf = reference_components(no_rot, task, x, no_rot.coefficients())
    assert torch.allclose(g_coef3, torch.autograd.grad(ent + 0.8 * etf, no_rot.raw)[0], atol=1e-6)


def test_all_terms_off_is_an_error(problem):
    with pytest.raises(MergeError, match="switched off"):
        make_aligner(problem, use_entropy=False, alpha=0.0, beta=0.0)


@pytest.mark.parametrize("init", ["mda", "ta", "am"])
def test_mda_feature_alignment_runs_and_keeps_rotations_special_orthogonal(problem, init):
    result = mda_feature_alignment(problem, init=init, steps=12, lr=1e-2, am_steps=5, progress=False, rotation="cayley" if init == "ta" else "expm")
    history = result.info["history"]
    assert len(history) == 12 and all({"entropy", "etf", "procrustes", "total"} <= set(h) for h in history)
    assert all(h["procrustes"] > 0 for h in history)
    assert set(result.feature_transforms) == set(problem.tasks)
    for transform in result.feature_transforms.values():
        r = transform.matrix.double()
        assert orthogonality_error(r) < 1e-5
        assert torch.linalg.det(r).item() == pytest.approx(1.0, abs=1e-5)
        assert (r - torch.eye(FEAT, dtype=torch.float64)).abs().max() > 1e-4  # learned, not the identity
    coef = torch.tensor(result.info["coefficients"]["values"])
    assert coef.shape == ((1, 4) if init == "mda" else (3, 4))
    if init == "am":
        assert result.info["adamerging"]["steps"] == 5


def test_mda_init_starts_from_the_data_free_merge(problem):
    from mdamerge import merge_state_dicts

    result = mda_feature_alignment(problem, init="mda", steps=0, use_rotation=False, progress=False)
    data_free = merge_state_dicts(dict(problem.base), list(problem.finetuned.values()), "mda")
    for name in ("fc1.weight", "fc2.weight", "fc1.bias"):
        assert torch.allclose(result.state_dict[name], data_free[name], atol=1e-6)


def test_no_rotation_ablation_logs_zero_procrustes(problem):
    result = mda_feature_alignment(problem, init="ta", steps=5, use_rotation=False, progress=False)
    assert result.feature_transforms is None
    assert all(h["procrustes"] == 0.0 and h["etf"] > 0 for h in result.info["history"])


# -- bad input ---------------------------------------------------------------
def test_bad_inputs_give_clear_errors(problem):
    bad = {t: dict(sd) for t, sd in problem.finetuned.items()}
    bad["task.0"]["fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="fc1.weight"):
        AdaptationProblem(Backbone(), problem.base, bad, problem.heads, problem.unlabeled)
    with pytest.raises(MergeError, match="head for task 'task.2'"):
        AdaptationProblem(Backbone(), problem.base, problem.finetuned, {k: problem.heads[k] for k in ["task.0", "task.1"]}, problem.unlabeled)
    nan_inputs = dict(problem.unlabeled, **{"task.1": torch.full((4, IN), float("nan"))})
    with pytest.raises(MergeError, match="task.1"):
        AdaptationProblem(Backbone(), problem.base, problem.finetuned, problem.heads, nan_inputs)
    with pytest.raises(MergeError, match="granularity"):
        adamerging(problem, granularity="block", steps=1, progress=False)
    with pytest.raises(MergeError, match="init"):
        mda_feature_alignment(problem, init="ties", steps=1, progress=False)
    with pytest.raises(MergeError, match="steps"):
        adamerging(problem, steps=-1, progress=False)


# -- variants -----------------------------------------------------------------------
def test_fixed_rotation_about_a_center_keeps_the_center_fixed():
    r, c = random_rotation(5, 8).float(), torch.randn(5)
    f = torch.randn(3, 5)
    transform = FixedRotation(r, c)
    assert torch.allclose(transform(c[None]), c[None], atol=1e-6)
    assert torch.allclose(transform(f), (f - c) @ r.T + c, atol=1e-6)


def test_procrustes_momentum_uses_the_running_cross_covariance(problem):
    aligner = make_aligner(problem, procrustes_momentum=0.5)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, FEAT, generator=g), torch.randn(16, FEAT, generator=g)) for _ in range(2)]
    for merged, finetuned in batches:
        target = aligner.procrustes_target("task.0", merged, finetuned)
    cross = sum(0.5 * (y.double().T @ x.double() / 16) for x, y in batches)
    assert np.allclose(target.double().numpy(), kabsch_reference(np.eye(FEAT), cross.numpy().T), atol=1e-6)
    single = make_aligner(problem)  # momentum 0: the batch alone
    x, y = batches[1]
    assert torch.allclose(single.procrustes_target("task.0", x, y), special_procrustes(x, y), atol=1e-6)


def test_unnormalised_gap_and_rotation_about_the_mean(problem):
    task, x = problem.tasks[0], problem.unlabeled[problem.tasks[0]][:16]
    per_dim = make_aligner(problem).task_loss(task, torch.arange(16), x, make_aligner(problem).space.anchor)
    raw = make_aligner(problem, gap_per_dim=False).task_loss(task, torch.arange(16), x, make_aligner(problem).space.anchor)
    assert raw["procrustes"].item() == pytest.approx(FEAT * per_dim["procrustes"].item(), rel=1e-5)
    result = mda_feature_alignment(problem, init="ta", steps=3, rotate_about_mean=True, progress=False)
    for transform in result.feature_transforms.values():
        assert transform.center is not None and transform.center.shape == (FEAT,)


def test_result_folder_round_trip(problem, tmp_path):
    from mdamerge.adaptation.output import load_feature_transforms, save_adaptive_result
    from mdamerge.io.checkpoint import Checkpoint

    result = mda_feature_alignment(problem, init="ta", steps=2, rotate_about_mean=True, progress=False)
    result.feature_transforms["task.1"] = FixedRotation(result.feature_transforms["task.1"].matrix)  # one without center
    out = save_adaptive_result(result, tmp_path / "out")
    with Checkpoint(out) as ckpt:  # the rotations are not mistaken for model weights
        assert sorted(ckpt.keys()) == sorted(result.state_dict)
    loaded = load_feature_transforms(out)
    f = torch.randn(4, FEAT)
    for task, transform in result.feature_transforms.items():
        assert torch.allclose(loaded[task](f), transform(f), atol=1e-6)
    assert loaded["task.1"].center is None and loaded["task.0"].center is not None
    with pytest.raises(MergeError, match="already exists"):
        save_adaptive_result(result, out)


def test_finetuned_pseudo_labels_come_from_the_task_model(problem):
    task, x, idx = problem.tasks[2], problem.unlabeled[problem.tasks[2]][:16], torch.arange(16)
    aligner = make_aligner(problem, pseudo_labels="finetuned", beta=0.0)
    comps = aligner.task_loss(task, idx, x, aligner.space.parameters(aligner.coefficients()))
    feats = aligner.space.forward(aligner.space.parameters(aligner.coefficients()), x) @ aligner.rotations[task].matrix().T
    ft_feats = functional_call(problem.module, problem.finetuned[task], (x,))
    expected = etf_alignment_loss(feats, problem.heads[task](ft_feats), aligner.prototypes[task])
    assert comps["etf"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(MergeError, match="pseudo_labels"):
        make_aligner(problem, pseudo_labels="oracle")


# -- anti-collapse (information maximisation) and the Procrustes start ----------------
def test_marginal_entropy_is_the_entropy_of_the_mean_prediction():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    assert marginal_entropy(logits).item() == pytest.approx(math.log(3), rel=1e-6)  # balanced: maximal
    assert marginal_entropy(logits[[0, 0, 0]]).item() < 0.1  # everything on one class: near 0


def _collapse_run(diversity, steps=300):
    """A rotation of 3-D features trained on entropy (- diversity * marginal entropy) before a fixed head.

    The features share a large common offset; turning that offset onto one head row makes every
    prediction confident and of that class -- what plain entropy minimisation does."""
    k, n = 3, 60
    ang = torch.arange(k) * 2 * math.pi / k
    dirs = torch.stack([ang.cos(), ang.sin(), torch.zeros(k)], 1)
    y = torch.arange(n) % k
    f = torch.tensor([1.0, 0.0, 3.0]) + dirs[y] + 0.1 * torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    head = nn.Linear(3, k)
    with torch.no_grad():
        head.weight.copy_(2 * dirs)
        head.bias.zero_()
    rot = Rotation(3)
    with torch.no_grad():
        rot.raw.copy_(0.01 * torch.randn(3, 3, generator=torch.Generator().manual_seed(1)))
    opt = torch.optim.Adam(rot.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        logits = head(rot(f))
        (shannon_entropy(logits) - diversity * marginal_entropy(logits)).backward()
        opt.step()
    with torch.no_grad():
        pred = head(rot(f)).argmax(-1)
    return float((pred == y).float().mean()), torch.bincount(pred, minlength=k)


def test_diversity_term_prevents_the_collapse_of_entropy_minimisation():
    acc_plain, counts_plain = _collapse_run(0.0)
    acc_im, counts_im = _collapse_run(1.0)
    assert counts_plain.min() == 0 and acc_plain < 0.7  # a class disappears: collapse
    assert counts_im.min() >= 15 and acc_im > 0.95  # spread over the classes and still right


def test_diversity_switch_removes_its_term(problem):
    task = problem.tasks[0]
    x, idx = problem.unlabeled[task][:16], torch.arange(16)
    on = make_aligner(problem, diversity=0.5)
    comps, (g_coef, g_rot) = gradients_of(on, task, idx, x)
    feats = on.space.forward(on.space.parameters(on.coefficients()), x) @ on.rotations[task].matrix().T
    assert comps["diversity"].item() == pytest.approx(marginal_entropy(on.heads[task](feats)).item(), rel=1e-5)
    assert comps["total"].item() == pytest.approx(
        comps["entropy"].item() - 0.5 * comps["diversity"].item() + 0.8 * comps["etf"].item() + 0.2 * comps["procrustes"].item(), rel=1e-5)
    off = make_aligner(problem, diversity=0.0)
    comps0, (g_coef0, g_rot0) = gradients_of(off, task, idx, x, switch_off=("diversity",))
    assert comps0["total"].item() == pytest.approx(comps["total"].item() + 0.5 * comps["diversity"].item(), rel=1e-5)
    assert not torch.allclose(g_rot0, g_rot, atol=1e-6)
    with pytest.raises(MergeError, match="diversity"):
        make_aligner(problem, diversity=-1.0)


def test_rotations_start_at_the_procrustes_solution(problem):
    aligner = make_aligner(problem, rotation_init="procrustes", init_samples=40, procrustes_momentum=0.9)
    params = aligner.space.parameters(aligner.coefficients())
    for task in problem.tasks:
        x = problem.unlabeled[task][:40]
        merged = functional_call(problem.module, {**params, **aligner.space.buffers}, (x,))
        # the fine-tuned model's parameters with the base's buffers, as everywhere in the library
        finetuned = functional_call(problem.module, {**problem.finetuned[task], **aligner.space.buffers}, (x,))
        expected = special_procrustes(merged.detach(), finetuned.detach())
        r = aligner.rotations[task].start  # make_aligner then perturbs the learned factor
        assert torch.allclose(r, expected, atol=1e-5)
        assert orthogonality_error(r.double()) < 1e-5 and torch.linalg.det(r.double()).item() == pytest.approx(1.0, abs=1e-5)
        # the running Procrustes target starts from the same cross-covariance
        assert torch.allclose(aligner._cross[task], finetuned.double().mT @ merged.double() / 40, atol=1e-6)
    identity = make_aligner(problem, rotation_init="identity")
    assert all(r.start is None for r in identity.rotations.values())
    result = mda_feature_alignment(problem, init="ta", steps=0, rotation_init="identity", progress=False)
    assert all(torch.equal(t.matrix, torch.eye(FEAT)) for t in result.feature_transforms.values())
    with pytest.raises(MergeError, match="rotation_init"):
        make_aligner(problem, rotation_init="random")


def test_rotation_with_a_start_stays_special_orthogonal():
    start = random_rotation(5, 11).float()
    rot = Rotation(5, start=start)
    assert torch.allclose(rot.matrix(), start)
    opt = torch.optim.Adam(rot.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        (rot.matrix() - torch.randn(5, 5, generator=torch.Generator().manual_seed(2))).pow(2).sum().backward()
        opt.step()
    r = rot.matrix().detach().double()
    assert orthogonality_error(r) < 1e-5 and torch.linalg.det(r).item() == pytest.approx(1.0, abs=1e-5)
