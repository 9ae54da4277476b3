"""Continual learning: EWC/online EWC by hand, GEM projection against a reference QP, the learner on toy tasks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.func import functional_call

from moca.continual import (
    EWC,
    METHODS,
    ContinualConfig,
    ContinualError,
    ContinualLearner,
    Task,
    WeightLayout,
    diagonal_fisher,
    fresh_weights,
    project_update,
)

# ----------------------------------------------------------------------------------------
# A toy: linear regression y = w·x with squared loss, one task per data set
# ----------------------------------------------------------------------------------------


@dataclass
class LinearTask:
    """Task protocol on ``module = nn.Linear(P, 1, bias=False)``: per-sample loss ½(w·x_i − y_i)²."""

    name: str
    module: nn.Module
    x: Tensor  # [n, P]
    y: Tensor  # [n]
    memory: int = 4  # the first rows form the GEM memory

    def per_sample_losses(self, weights):
        pred = functional_call(self.module, weights, (self.x,)).squeeze(-1)
        return 0.5 * (pred - self.y) ** 2

    def loss(self, weights):
        return self.per_sample_losses(weights).mean()

    def memory_loss(self, weights):
        return self.per_sample_losses(weights)[: self.memory].mean()


def linear_module(p: int, w: list[float] | None = None) -> nn.Module:
    module = nn.Linear(p, 1, bias=False).double()
    if w is not None:
        with torch.no_grad():
            module.weight.copy_(torch.tensor([w], dtype=torch.float64))
    return module


def toy_sequence(module: nn.Module, seed: int = 0, n_tasks: int = 3, p: int = 10, n: int = 16) -> list[LinearTask]:
    """Tasks that share one weight and conflict on it; EWC's diagonal view fits this toy.

    Task k's inputs span a random 3-dim subspace of its own coordinates (3k, 3k+1, 3k+2)
    and the shared last one, with its own true weights and noisy targets (so residuals,
    and hence the empirical Fisher, stay nonzero at the task's optimum). Since 3 tasks ·
    3 dims fit in P = 10, one weight vector can serve all tasks, but learning a later
    task freely moves the shared weight and disturbs the earlier ones.
    """
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for k in range(n_tasks):
        coords = [3 * k, 3 * k + 1, 3 * k + 2, p - 1]
        basis = torch.zeros(3, p, dtype=torch.float64)
        basis[:, coords] = torch.randn(3, len(coords), generator=gen, dtype=torch.float64)
        x = torch.randn(n, 3, generator=gen, dtype=torch.float64) @ basis
        w_true = 2.0 * torch.randn(p, generator=gen, dtype=torch.float64)
        y = x @ w_true + torch.randn(n, generator=gen, dtype=torch.float64)
        tasks.append(LinearTask(f"T{k + 1}", module, x / 2, y / 2))
    return tasks


def test_toy_task_satisfies_protocol():
    module = linear_module(10)
    assert isinstance(toy_sequence(module)[0], Task)


# ----------------------------------------------------------------------------------------
# EWC: Fisher and penalty computed by hand
# ----------------------------------------------------------------------------------------


def hand_case():
    """w = (1, 2); x1 = (1, 0), y1 = 0 → residual 1, g1 = (1, 0); x2 = (1, 1), y2 = 1 → residual 2, g2 = (2, 2)."""
    module = linear_module(2, [1.0, 2.0])
    task = LinearTask("hand", module, torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64),
                      torch.tensor([0.0, 1.0], dtype=torch.float64))
    return module, task


def test_diagonal_fisher_by_hand():
    module, task = hand_case()
    layout = WeightLayout(module)
    fisher = diagonal_fisher(task.per_sample_losses, layout, layout.flatten(dict(module.named_parameters())))
    # F = mean(g_i²) = ((1 + 4)/2, (0 + 4)/2)
    torch.testing.assert_close(fisher, torch.tensor([2.5, 2.0], dtype=torch.float64))


def test_ewc_penalty_by_hand_and_gradient():
    ewc = EWC(lam=2.0)
    ewc.consolidate(torch.tensor([2.5, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64))
    theta = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    penalty = ewc.penalty(theta)
    # (λ/2) Σ F (θ−θ*)² = 1 · (2.5·1 + 2·4) = 10.5
    assert penalty.item() == pytest.approx(10.5)
    (grad,) = torch.autograd.grad(penalty, theta)
    # gradient λ F (θ−θ*) = 2 · (2.5·1, 2·(−2)) = (5, −8)
    torch.testing.assert_close(grad, torch.tensor([5.0, -8.0], dtype=torch.float64))


def test_penalty_is_zero_before_any_task_and_at_the_anchor():
    ewc = EWC(lam=3.0)
    assert ewc.penalty(torch.ones(2)).item() == 0.0
    ewc.consolidate(torch.tensor([1.0, 4.0]), torch.tensor([0.5, -1.0]))
    assert ewc.penalty(torch.tensor([0.5, -1.0])).item() == 0.0


def test_learner_consolidate_uses_per_scenario_fisher():
    module, task = hand_case()
    learner = ContinualLearner(module, "ewc", config=ContinualConfig(ewc_lambda=2.0))
    learner.consolidate(task)
    torch.testing.assert_close(learner.ewc.fishers[0], torch.tensor([2.5, 2.0], dtype=torch.float64))
    torch.testing.assert_close(learner.ewc.anchors[0], torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_online_ewc_decays_the_running_fisher_and_keeps_the_latest_anchor():
    f1, a1 = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    f2, a2 = torch.tensor([4.0, 0.0]), torch.tensor([1.0, 1.0])
    f3, a3 = torch.tensor([0.0, 8.0]), torch.tensor([2.0, -1.0])
    online = EWC(lam=1.0, online=True, gamma=0.5)
    for f, a in ((f1, a1), (f2, a2), (f3, a3)):
        online.consolidate(f, a)
    # F = γ(γ F1 + F2) + F3 = 0.25 (1, 2) + 0.5 (4, 0) + (0, 8) = (2.25, 8.5)
    assert len(online.fishers) == 1 and len(online.anchors) == 1
    torch.testing.assert_close(online.fishers[0], torch.tensor([2.25, 8.5]))
    torch.testing.assert_close(online.anchors[0], a3)
    theta = torch.tensor([3.0, -1.0])
    assert online.penalty(theta).item() == pytest.approx(0.5 * 2.25 * 1.0)

    classic = EWC(lam=1.0)
    for f, a in ((f1, a1), (f2, a2)):
        classic.consolidate(f, a)
    # Σ_k ½ Σ F_k (θ−θ*_k)² = ½(1·9 + 2·1) + ½(4·4 + 0) = 5.5 + 8
    assert len(classic.fishers) == 2
    assert classic.penalty(theta).item() == pytest.approx(13.5)


def test_ewc_rejects_bad_settings():
    with pytest.raises(ValueError, match="gamma"):
        EWC(lam=1.0, online=True, gamma=0.0)
    with pytest.raises(ValueError, match="ewc_lambda"):
        EWC(lam=-1.0)
    with pytest.raises(ValueError, match="fisher"):
        EWC(lam=1.0).consolidate(torch.tensor([-1.0]), torch.tensor([0.0]))


# ----------------------------------------------------------------------------------------
# GEM projection
# ----------------------------------------------------------------------------------------


def reference_projection(g: np.ndarray, mem: np.ndarray) -> np.ndarray:
    """Primal QP min ½||d − g||² s.t. mem·d ≥ 0, by brute force over active sets (no QP solver).

    The optimum's active set A makes it the projection of g onto {d : mem_A d = 0}; every
    such projection that is feasible is a candidate, and the optimum is the closest one.
    """
    best, best_dist = None, np.inf
    tol = 1e-9 * (1.0 + np.abs(mem).max() * np.linalg.norm(g))
    for size in range(mem.shape[0] + 1):
        for active in itertools.combinations(range(mem.shape[0]), size):
            rows = mem[list(active)]
            d = g - rows.T @ (np.linalg.pinv(rows @ rows.T) @ (rows @ g)) if size else g
            if (mem @ d >= -tol).all() and np.linalg.norm(d - g) < best_dist:
                best, best_dist = d, np.linalg.norm(d - g)
    return best


def random_case(seed: int, k: int, p: int) -> tuple[Tensor, Tensor]:
    rng = np.random.default_rng(seed)
    mem = rng.normal(size=(k, p))
    g = rng.normal(size=p)
    # Make at least one memory gradient conflict with g.
    mem[0] -= (1.0 + mem[0] @ g / (g @ g)) * g
    return torch.from_numpy(g), torch.from_numpy(mem)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 5), p=st.integers(2, 12))
def test_projection_matches_reference_qp(seed, k, p):
    g, mem = random_case(seed, k, p)
    d = project_update(g, mem)
    expected = reference_projection(g.numpy(), mem.numpy())
    scale = 1.0 + float(g.norm())
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-5 * scale)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 6), p=st.integers(2, 30))
def test_projection_properties(seed, k, p):
    g, mem = random_case(seed, k, p)
    d = project_update(g, mem)
    scale = float(mem.norm(dim=1).max() * g.norm())
    # Feasible: no earlier regime's loss increases to first order.
    assert (mem @ d >= -1e-8 * scale).all()
    # The zero update is feasible too, so the projection is no farther from g than 0 is.
    assert (d - g).norm() <= g.norm() * (1 + 1e-9)
    # A projection of a feasible direction changes (almost) nothing.
    torch.testing.assert_close(project_update(d, mem), d, atol=1e-6 * (1 + float(g.norm())), rtol=0)


def test_projection_leaves_g_alone_without_conflict():
    g = torch.tensor([1.0, 2.0, 0.0])
    mem = torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0]])  # both dot products > 0
    assert project_update(g, mem) is g
    assert project_update(g, mem, margin=0.5) is g  # GEM projects only on a conflict
    assert project_update(g, torch.zeros(0, 3)) is g
    assert project_update(g, torch.zeros(2, 3)) is g  # zero memory gradients constrain nothing


def test_projection_one_constraint_in_closed_form():
    g = torch.tensor([1.0, 0.0], dtype=torch.float64)
    mem = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    # d = g − (g·m / m·m) m = (1, 0) + ½(−1, 1) = (0.5, 0.5)
    torch.testing.assert_close(project_update(g, mem), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_projection_margin_adds_at_least_margin_times_each_memory_gradient():
    g, mem = random_case(7, 3, 8)  # 3 independent rows in 8 dims: v is identifiable
    margin = 0.3
    d = project_update(g, mem, margin=margin)
    v = torch.linalg.lstsq(mem.T, (d - g).unsqueeze(1)).solution.squeeze(1)
    torch.testing.assert_close(mem.T @ v, d - g)
    assert (v >= margin - 1e-9).all()
    # Still feasible (a binding row stays at 0, by complementary slackness) ...
    assert (mem @ d >= -1e-8).all()
    # ... and the non-binding rows move further into the cone than without the margin.
    plain = project_update(g, mem)
    slack = (v > margin + 1e-6).logical_not()
    assert slack.any() and ((mem @ d)[slack] > (mem @ plain)[slack]).all()


def test_projection_handles_linearly_dependent_memory_gradients():
    g = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    row = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    d = project_update(g, torch.stack([row, 2 * row, row]))
    torch.testing.assert_close(d, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64), atol=1e-7, rtol=0)


def test_projection_rejects_bad_input():
    with pytest.raises(ValueError, match="memory_grads"):
        project_update(torch.ones(3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="g:"):
        project_update(torch.ones(3, 1), torch.ones(2, 3))
    with pytest.raises(ValueError, match="margin"):
        project_update(torch.ones(3), -torch.ones(1, 3), margin=-0.1)
    with pytest.raises(ValueError, match="non-finite"):
        project_update(torch.tensor([1.0, float("nan")]), torch.ones(1, 2))


def test_projection_keeps_dtype():
    g, mem = random_case(3, 2, 5)
    assert project_update(g.float(), mem.float()).dtype == torch.float32


# ----------------------------------------------------------------------------------------
# The learner on a toy sequence
# ----------------------------------------------------------------------------------------


def meta_init(module: nn.Module) -> dict[str, Tensor]:
    return {n: torch.full_like(p, 0.1) for n, p in module.named_parameters()}


def run_toy(method: str, seed: int, steps: int = 100) -> tuple[float, float, float]:
    """T1 → T2 → T3 on the toy; returns (T1 loss after T1, T1 loss after T3, T3 loss after T3)."""
    module = linear_module(10)
    torch.manual_seed(seed)
    module.reset_parameters()
    tasks = toy_sequence(module, seed=seed)
    config = ContinualConfig(optimizer="sgd", lr=0.1, ewc_lambda=5.0, online=method == "moca", gamma=0.9)
    init = meta_init(module) if METHODS[method].init == "meta" else None
    learner = ContinualLearner(module, method, init_weights=init, config=config)
    losses_t1 = []
    for task in tasks:
        learner.learn(task, steps)
        learner.consolidate(task)
        losses_t1.append(float(tasks[0].loss(learner.weights)))
    return losses_t1[0], losses_t1[-1], float(tasks[-1].loss(learner.weights))


def test_finetune_forgets_the_first_task_more_than_ewc_and_moca():
    seeds = range(4)  # measured: T1 loss increase finetune 0.96, ewc 0.08, moca 0.05 (mean of 4 seeds)
    runs = {m: np.array([run_toy(m, seed) for seed in seeds]) for m in ("finetune", "ewc", "moca")}
    forgetting = {m: float(np.mean(r[:, 1] - r[:, 0])) for m, r in runs.items()}
    last_task = {m: float(np.mean(r[:, 2])) for m, r in runs.items()}
    assert forgetting["finetune"] > 0.5, forgetting
    assert forgetting["ewc"] < 0.2 * forgetting["finetune"], forgetting
    assert forgetting["moca"] < 0.2 * forgetting["finetune"], forgetting
    # Protection must not stop the last task from being learned.
    for m in ("ewc", "moca"):
        assert last_task[m] < last_task["finetune"] + 0.3, last_task


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_and_learns(method):
    module = linear_module(10)
    tasks = toy_sequence(module, n_tasks=2)
    init = meta_init(module) if METHODS[method].init == "meta" else None
    learner = ContinualLearner(module, method, init_weights=init, config=ContinualConfig(lr=0.3))
    for task in tasks:
        stats = learner.learn(task, 20)
        assert len(stats.losses) == 20 and len(stats.seconds) == 21
        assert stats.losses[-1] < stats.losses[0]
        learner.consolidate(task)
    assert learner.tasks_done == 2
    if METHODS[method].project:
        assert len(learner.memories) == 2 and len(learner.ewc.fishers) == 2


def test_unknown_method_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown continual method.*scratch, finetune, ewc, maml, moca, fomaml, reptile"):
        ContinualLearner(linear_module(3), "naive")


def test_init_weights_rules():
    module = linear_module(4)
    with pytest.raises(ValueError, match="init_weights.*meta-init"):
        ContinualLearner(module, "moca")
    with pytest.raises(ValueError, match="scratch"):
        ContinualLearner(module, "scratch", init_weights=meta_init(module))
    with pytest.raises(ValueError, match="shape"):
        ContinualLearner(module, "maml", init_weights={"weight": torch.zeros(1, 5, dtype=torch.float64)})
    with pytest.raises(ValueError, match="missing"):
        ContinualLearner(module, "maml", init_weights={"bias": torch.zeros(1)})
    learner = ContinualLearner(module, "maml", init_weights=meta_init(module))
    torch.testing.assert_close(learner.weights["weight"], torch.full((1, 4), 0.1, dtype=torch.float64))


def test_scratch_starts_each_task_from_a_fresh_seeded_init_and_leaves_the_module_alone():
    module = linear_module(10)
    before = module.weight.detach().clone()
    tasks = toy_sequence(module, n_tasks=2)
    learner = ContinualLearner(module, "scratch", config=ContinualConfig(seed=5))
    torch.testing.assert_close(learner.weights["weight"], fresh_weights(module, 5)["weight"])
    learner.learn(tasks[0], 5)
    learner.consolidate(tasks[0])
    starts = []
    learner.learn(tasks[1], 3, on_step=lambda step, w: starts.append(w["weight"]) if step == 0 else None)
    torch.testing.assert_close(starts[0], fresh_weights(module, 6)["weight"])
    torch.testing.assert_close(module.weight, before)  # the learner never writes the module


def test_on_step_sees_steps_0_to_k_and_its_time_is_excluded():
    module = linear_module(10)
    task = toy_sequence(module, n_tasks=1)[0]
    learner = ContinualLearner(module, "finetune")
    seen = []

    def on_step(step, weights):
        seen.append(step)
        return float(task.loss(weights))

    stats = learner.learn(task, 4, on_step=on_step)
    assert seen == [0, 1, 2, 3, 4]
    assert stats.scores[0] == pytest.approx(stats.losses[0])
    assert all(b >= a for a, b in zip(stats.seconds, stats.seconds[1:]))
    torch.testing.assert_close(stats.weights["weight"], learner.weights["weight"])


def test_projected_steps_never_raise_memory_loss_to_first_order():
    module = linear_module(10)
    tasks = toy_sequence(module, seed=3)
    learner = ContinualLearner(module, "moca", init_weights=meta_init(module),
                               config=ContinualConfig(lr=1e-3, ewc_lambda=0.0))
    learner.learn(tasks[0], 50)
    learner.consolidate(tasks[0])
    memory_before = float(tasks[0].memory_loss(learner.weights))
    stats = learner.learn(tasks[1], 10)
    assert any(stats.projected)  # the toy conflicts, so the constraint is active
    # Tiny SGD steps: second-order effects ≈ lr², so the memory loss may not rise beyond that.
    assert float(tasks[0].memory_loss(learner.weights)) <= memory_before + 1e-5


def test_bad_config_and_steps_are_refused():
    with pytest.raises(ValueError, match="lr"):
        ContinualConfig(lr=0.0)
    with pytest.raises(ValueError, match="gamma"):
        ContinualConfig(gamma=1.5)
    with pytest.raises(ValueError, match="unknown_field|extra"):
        ContinualConfig(unknown_field=1)
    module = linear_module(3)
    learner = ContinualLearner(module, "finetune")
    task = LinearTask("t", module, torch.ones(2, 3, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="steps"):
        learner.learn(task, -1)
    for lam in ("1", float("inf"), True):  # (text compared with >= was a TypeError; inf was taken)
        with pytest.raises(ContinualError, match="ewc_lambda=.*: must be a finite number >= 0"):
            EWC(lam)
    with pytest.raises(ContinualError, match="g: expected a torch tensor, got list"):
        project_update([1.0, 2.0], torch.zeros(1, 2))
    with pytest.raises(ContinualError, match="memory_grads: expected a torch tensor, got ndarray"):
        project_update(torch.ones(2), np.zeros((1, 2)))


def test_non_finite_task_loss_is_refused():
    module = linear_module(2)
    task = LinearTask("nan", module, torch.ones(2, 2, dtype=torch.float64),
                      torch.tensor([float("nan"), 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="not finite"):
        ContinualLearner(module, "finetune").learn(task, 1)


def test_adam_optimizer_and_clipping_run():
    module = linear_module(10)
    task = toy_sequence(module, n_tasks=1)[0]
    learner = ContinualLearner(module, "finetune", config=ContinualConfig(optimizer="adam", lr=0.05, max_grad_norm=0.1))
    stats = learner.learn(task, 30)
    assert stats.losses[-1] < stats.losses[0]


def test_sgd_that_would_diverge_on_the_penalty_is_warned_about():
    module, task = hand_case()  # F = (2.5, 2.0)
    learner = ContinualLearner(module, "ewc", config=ContinualConfig(lr=0.5, ewc_lambda=2.0))
    with pytest.warns(RuntimeWarning, match="diverge"):
        stats = learner.consolidate(task)  # lr · λ · max F = 0.5 · 2 · 2.5 = 2.5
    assert stats.max_curvature == pytest.approx(5.0)


class CountingTask(LinearTask):
    memory_calls = 0

    def memory_loss(self, weights):
        CountingTask.memory_calls += 1
        return super().memory_loss(weights)


@pytest.mark.parametrize("every, calls", [(1, 6), (2, 3), (4, 2), (0, 1)])
def test_memory_gradients_are_recomputed_every_k_steps(every, calls):
    module = linear_module(10)
    first, second = toy_sequence(module, n_tasks=2)
    first = CountingTask(first.name, module, first.x, first.y)
    learner = ContinualLearner(module, "moca", init_weights=meta_init(module),
                               config=ContinualConfig(memory_every=every, lr=0.05))
    learner.learn(first, 5)
    learner.consolidate(first)
    CountingTask.memory_calls = 0
    learner.learn(second, 6)
    assert CountingTask.memory_calls == calls


def test_the_learner_refuses_what_it_took_without_a_word():
    """inf rates, strengths and margins gave NaN weights a step later; a step that makes the
    weights non-finite is undone and named; consolidating a task twice doubled its Fisher
    and memory, and consolidating another task than the one learned was taken; a bool
    was a number of steps; EWC took a Fisher of another size and failed in every penalty."""
    for field in ("lr", "ewc_lambda", "margin"):
        with pytest.raises(ValueError, match=field):
            ContinualConfig(**{field: float("inf")})
    for field in ("lr", "memory_every", "seed"):
        with pytest.raises(ValueError, match=f"{field}=True is not a number"):
            ContinualConfig(**{field: True})
    with pytest.raises(ValueError, match="margin=inf: must be a finite number >= 0"):
        project_update(torch.tensor([1.0, -1.0]), torch.tensor([[-1.0, 0.0]]), margin=float("inf"))
    module = linear_module(10)
    a, b = toy_sequence(module, n_tasks=2)
    learner = ContinualLearner(module, "moca", init_weights=meta_init(module), config=ContinualConfig(lr=1e308))
    before = learner.weights
    with pytest.raises(ValueError, match=r"task 'T1': a step made the weights non-finite \(lr=1e\+308\)"):
        learner.learn(a, 3)
    assert all(torch.equal(before[n], w) for n, w in learner.weights.items())  # undone
    learner = ContinualLearner(module, "moca", init_weights=meta_init(module), config=ContinualConfig(lr=0.02, optimizer="adam"))
    with pytest.raises(ValueError, match="steps=True"):
        learner.learn(a, True)
    learner.learn(a, np.int64(2))
    with pytest.raises(ValueError, match=r"consolidate: task 'T2' is not the one being learned \('T1'\)"):
        learner.consolidate(b)
    learner.consolidate(a)
    with pytest.raises(ValueError, match=r"consolidate: task 'T1' is already consolidated; learn it again first"):
        learner.consolidate(a)
    assert learner.tasks_done == 1 and len(learner.memories) == 1 and len(learner.ewc.fishers) == 1
    learner.learn(b, 1)
    learner.consolidate(b)
    learner.learn(a, 1)  # a task met again is learned and closed again
    learner.consolidate(a)
    assert learner.tasks_done == 3
    # A task is itself, not its name: another task called 'T1' begins afresh, and the first
    # 'T1' is then not the one being learned (the name alone continued the first one's state).
    other_t1 = LinearTask("T1", module, b.x, b.y)
    learner.learn(a, 1)
    learner.learn(other_t1, 1)
    with pytest.raises(ValueError, match=r"consolidate: task 'T1' is not the one being learned \(another task of "
                                         r"that name\)"):
        learner.consolidate(a)
    learner.consolidate(other_t1)
    assert learner.tasks_done == 4
    ewc = EWC(1.0)
    ewc.consolidate(torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"fisher \(4,\): the earlier tasks' are \(3,\)"):
        ewc.consolidate(torch.ones(4), torch.zeros(4))
