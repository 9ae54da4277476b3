"""Meta-gradients of MAML / FOMAML / Reptile against closed forms and finite differences,
and the meta-training / adaptation loop on a short horizon."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from moca.meta import (
    META_SEEDS, SUPPORT_SEEDS, VALIDATION_SEEDS, MetaConfig, MetaError, MetaLearner, OracleCache, adapt, adapt_loop,
    meta_train, sample_task,
)
from moca.policy import LSTMPolicy, PolicyConfig
from moca.regime import Regime
from moca.scenario import Params

torch.set_num_threads(1)

# --- a tiny model with quadratic losses: everything in closed form ----------------------------


def _tiny(seed: int = 0) -> tuple[nn.Linear, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 1).double()
    g = torch.Generator().manual_seed(seed + 1)
    data = {
        "xs": torch.randn(10, 3, generator=g, dtype=torch.float64),
        "ys": torch.randn(10, 1, generator=g, dtype=torch.float64),
        "xq": torch.randn(12, 3, generator=g, dtype=torch.float64),
        "yq": torch.randn(12, 1, generator=g, dtype=torch.float64),
    }
    return model, data


def _loss(model: nn.Module, weights, x, y) -> torch.Tensor:
    return ((functional_call(model, weights, (x,)) - y) ** 2).mean()


def _flat_loss(theta: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Loss and gradient of the linear model at flat theta = (w1, w2, w3, b), closed form."""
    X = np.hstack([x.numpy(), np.ones((x.shape[0], 1))])
    r = X @ theta - y.numpy()[:, 0]
    return float((r**2).mean()), 2.0 * X.T @ r / X.shape[0]


def _flat(model: nn.Linear) -> np.ndarray:
    return np.concatenate([model.weight.detach().numpy().ravel(), model.bias.detach().numpy()])


def _unflat(g: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([g["weight"].detach().numpy().ravel(), g["bias"].detach().numpy()])


def _inner(theta: np.ndarray, data, lr: float, clip: float | None) -> np.ndarray:
    g = _flat_loss(theta, data["xs"], data["ys"])[1]
    factor = 1.0 if clip is None else min(1.0, clip / np.linalg.norm(g))
    return theta - lr * factor * g


def _maml_objective(theta: np.ndarray, data, lr: float, steps: int, clip: float | None = None) -> float:
    for _ in range(steps):
        theta = _inner(theta, data, lr, clip)
    return _flat_loss(theta, data["xq"], data["yq"])[0]


@pytest.mark.parametrize("steps,clip", [(1, None), (2, None), (2, 0.3)])
def test_maml_meta_gradient_matches_finite_differences(steps, clip):
    model, data = _tiny()
    lr = 0.1 if clip is None else 1.0
    meta = MetaLearner(model, "maml", inner_lr=lr, inner_steps=steps, inner_clip=clip)
    learner = meta.clone()
    for _ in range(steps):
        learner.adapt(_loss(model, learner.weights, data["xs"], data["ys"]))
    grad = _unflat(meta.meta_gradient([learner], _loss(model, learner.weights, data["xq"], data["yq"])))
    theta = _flat(model)
    h = 1e-6
    fd = np.array([(_maml_objective(theta + h * e, data, lr, steps, clip)
                    - _maml_objective(theta - h * e, data, lr, steps, clip)) / (2 * h) for e in np.eye(4)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    # and it is not the first-order gradient (the Hessian term matters here)
    theta_adapted = theta
    for _ in range(steps):
        theta_adapted = _inner(theta_adapted, data, lr, clip)
    np.testing.assert_allclose(_unflat(learner.weights), theta_adapted, rtol=1e-10)
    assert np.abs(grad - _flat_loss(theta_adapted, data["xq"], data["yq"])[1]).max() > 1e-3


def test_fomaml_is_the_query_gradient_at_the_adapted_weights():
    model, data = _tiny(3)
    lr = 0.05
    meta = MetaLearner(model, "fomaml", inner_lr=lr, inner_clip=None)
    learner = meta.clone()
    learner.adapt(_loss(model, learner.weights, data["xs"], data["ys"]))
    theta = _flat(model)
    adapted = theta - lr * _flat_loss(theta, data["xs"], data["ys"])[1]
    np.testing.assert_allclose(_unflat(learner.weights), adapted, rtol=1e-12)
    grad = _unflat(meta.meta_gradient([learner], _loss(model, learner.weights, data["xq"], data["yq"])))
    np.testing.assert_allclose(grad, _flat_loss(adapted, data["xq"], data["yq"])[1], rtol=1e-10)
    # first order: the adapted weights are detached from the meta weights
    assert all(w.grad_fn is None for w in learner.weights.values())


def test_reptile_direction_is_theta_minus_adapted():
    model, data = _tiny(5)
    lr = 0.05
    meta = MetaLearner(model, "reptile", inner_lr=lr, inner_steps=3, inner_clip=None)
    learner = meta.clone()
    theta = _flat(model)
    adapted = theta.copy()
    for _ in range(3):
        learner.adapt(_loss(model, learner.weights, data["xs"], data["ys"]))
        adapted = adapted - lr * _flat_loss(adapted, data["xs"], data["ys"])[1]
    direction = _unflat(meta.meta_gradient([learner]))
    np.testing.assert_allclose(direction, theta - adapted, rtol=1e-10, atol=1e-14)
    # outer step with Adam moves the meta weights against the direction
    meta.outer_step([learner])
    assert np.all(np.sign(_flat(model) - theta) == -np.sign(direction))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
def test_batched_adaptation_equals_one_learner_at_a_time(algorithm):
    """adapt_all on a sum of per-task losses gives each learner its own step, and the
    meta-gradient of the mean query loss is the mean of the per-task meta-gradients."""
    model, data = _tiny(7)
    _, other = _tiny(8)
    meta = MetaLearner(model, algorithm, inner_lr=1.0, inner_clip=0.2)
    tasks = [data, other]
    learners = [meta.clone() for _ in tasks]
    meta.adapt_all(learners, sum(_loss(model, l.weights, d["xs"], d["ys"]) for l, d in zip(learners, tasks)))
    batched = _unflat(meta.meta_gradient(
        learners, sum(_loss(model, l.weights, d["xq"], d["yq"]) for l, d in zip(learners, tasks)) / 2))
    single = []
    for d in tasks:
        learner = meta.clone()
        learner.adapt(_loss(model, learner.weights, d["xs"], d["ys"]))
        single.append(_unflat(meta.meta_gradient([learner], _loss(model, learner.weights, d["xq"], d["yq"]))))
    np.testing.assert_allclose(batched, np.mean(single, axis=0), rtol=1e-10)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_a_frozen_parameter_is_held_by_inner_and_outer_steps(algorithm):
    """A parameter with requires_grad=False stays as it is, as torch's optimisers hold it;
    the trainable ones take the same steps as on the model with only them (the bias)."""
    model, data = _tiny(9)
    meta = MetaLearner(model, algorithm, inner_lr=0.05, inner_steps=2, inner_clip=None)
    model.weight.requires_grad_(False)  # (after the learner is made, as torch's optimisers allow)
    frozen = model.weight.detach().clone()
    learner = meta.clone()
    for _ in range(2):
        learner.adapt(_loss(model, learner.weights, data["xs"], data["ys"]))
    assert torch.equal(learner.weights["weight"], frozen)
    bias = model.bias.detach().clone()
    expected = bias.clone()
    for _ in range(2):  # closed form: the loss's gradient in the bias alone
        residual = data["xs"] @ frozen.T + expected - data["ys"]
        expected = expected - 0.05 * 2.0 * residual.mean(0)
    np.testing.assert_allclose(learner.weights["bias"].detach().numpy(), expected.numpy(), rtol=1e-12)
    query = None if algorithm == "reptile" else _loss(model, learner.weights, data["xq"], data["yq"])
    meta.outer_step([learner], query)
    assert torch.equal(model.weight, frozen) and not torch.equal(model.bias, bias)
    model.bias.requires_grad_(False)
    with pytest.raises(MetaError, match="without any that requires grad"):
        MetaLearner(model, algorithm)


def test_meta_training_with_frozen_parameters_runs_in_process_only():
    """The workers rebuild a policy with every parameter trainable: a frozen one was adapted
    there, and the result differed from the local run."""
    from moca.cluster import Backend

    module = LSTMPolicy(Params(horizon=4), PolicyConfig(hidden=4))
    module.cell.weight_ih.requires_grad_(False)
    config = {"params": module.params, "policy": module.config, "meta_steps": 1, "tasks_per_step": 1}
    with pytest.raises(MetaError, match="frozen parameters meta-trains here only"):
        meta_train(config, module=module, backend=Backend("serial"))
    from moca.meta2 import MetaConfig2, meta_train2
    from moca.policy2 import LSTMPolicy2
    from moca.scenario import Params2

    module2 = LSTMPolicy2(Params2(), PolicyConfig(hidden=8))
    module2.cell.weight_ih.requires_grad_(False)
    with pytest.raises(MetaError, match="frozen parameters meta-trains here only"):
        meta_train2(MetaConfig2(policy=PolicyConfig(hidden=8), meta_steps=1, tasks_per_step=1), module=module2,
                    backend=Backend("serial"))


def test_maml_through_a_tiny_lstm_matches_finite_differences():
    torch.manual_seed(0)
    lstm = nn.LSTM(2, 3, batch_first=True).double()
    g = torch.Generator().manual_seed(0)
    xs, xq = (torch.randn(4, 5, 2, generator=g, dtype=torch.float64) for _ in range(2))

    def loss(weights, x):
        out, _ = functional_call(lstm, weights, (x,))
        return ((out[:, -1] - 0.5) ** 2).sum()

    lr = 0.3
    meta = MetaLearner(lstm, "maml", inner_lr=lr, inner_clip=None)
    learner = meta.clone()
    learner.adapt(loss(learner.weights, xs))
    grad = meta.meta_gradient([learner], loss(learner.weights, xq))

    def objective(weights):
        ws = {k: v.detach().clone().requires_grad_(True) for k, v in weights.items()}
        gs = torch.autograd.grad(loss(ws, xs), list(ws.values()))
        return float(loss({k: w - lr * gk for (k, w), gk in zip(ws.items(), gs)}, xq).detach())

    base = {k: v.detach().clone() for k, v in lstm.named_parameters()}
    h = 1e-6
    for name, index in [("weight_ih_l0", (1, 0)), ("weight_hh_l0", (5, 2)), ("bias_ih_l0", (7,))]:
        plus = {k: v.clone() for k, v in base.items()}
        minus = {k: v.clone() for k, v in base.items()}
        plus[name][index] += h
        minus[name][index] -= h
        fd = (objective(plus) - objective(minus)) / (2 * h)
        assert math.isclose(float(grad[name][index]), fd, rel_tol=1e-5, abs_tol=1e-8), name


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_zero_shot_term_adds_the_support_gradient_at_the_meta_weights(algorithm):
    model, data = _tiny(11)
    beta = 0.7
    plain = MetaLearner(model, algorithm, inner_lr=0.1, inner_clip=None)
    mixed = MetaLearner(model, algorithm, inner_lr=0.1, inner_clip=None, zero_shot_weight=beta)
    directions = []
    for meta in (plain, mixed):
        learner = meta.clone()
        learner.adapt(_loss(model, learner.weights, data["xs"], data["ys"]))
        directions.append(_unflat(meta.meta_gradient([learner], _loss(model, learner.weights, data["xq"], data["yq"]))))
    support_grad = _flat_loss(_flat(model), data["xs"], data["ys"])[1]
    np.testing.assert_allclose(directions[1] - directions[0], beta * support_grad, rtol=1e-9, atol=1e-12)
    with pytest.raises(MetaError, match="inner step"):
        mixed.meta_gradient([mixed.clone()], _loss(model, dict(model.named_parameters()), data["xq"], data["yq"]))


def test_bad_meta_arguments_are_refused():
    model, _ = _tiny()
    with pytest.raises(MetaError, match="algorithm"):
        MetaLearner(model, "sgd")
    with pytest.raises(MetaError, match="inner_lr"):
        MetaLearner(model, inner_lr=-1.0)
    with pytest.raises(MetaError, match="inner_steps"):
        MetaLearner(model, inner_steps=0)
    with pytest.raises(MetaError, match="inner_clip"):
        MetaLearner(model, inner_clip=0.0)
    with pytest.raises(MetaError, match="zero_shot_weight"):
        MetaLearner(model, zero_shot_weight=-1.0)
    meta = MetaLearner(model, "fomaml")
    with pytest.raises(MetaError, match="query_loss"):
        meta.meta_gradient([meta.clone()])
    with pytest.raises(ValueError):
        MetaConfig(algorithm="sgd")
    with pytest.raises(ValueError):
        MetaConfig(unknown_field=1)


def test_meta_arguments_of_the_wrong_kind_are_refused_by_name():
    model, data = _tiny()
    for kwargs, needle in (({"inner_lr": "1"}, "inner_lr: '1'"), ({"inner_lr": None}, "inner_lr: None"),
                           ({"inner_steps": 2.5}, "inner_steps: 2.5 must be a whole number"),
                           ({"inner_steps": True}, "inner_steps: True"), ({"outer_lr": "fast"}, "outer_lr"),
                           ({"inner_clip": "0.03"}, "inner_clip"), ({"zero_shot_weight": None}, "zero_shot_weight")):
        with pytest.raises(MetaError, match=needle):
            MetaLearner(model, **kwargs)
    with pytest.raises(MetaError, match="module: expected a torch module with parameters to meta-learn, got ReLU"):
        MetaLearner(nn.ReLU())
    with pytest.raises(MetaError, match="module: .* got dict"):
        MetaLearner({"weight": torch.zeros(1)})
    assert MetaLearner(model, inner_lr=np.float32(0.5), inner_steps=np.int64(2)).inner_steps == 2


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_losses_and_learners_that_cannot_give_a_step_are_refused_by_name(algorithm):
    # Each of these gave a step of zero without a word, or an error deep inside torch.
    model, data = _tiny()
    meta = MetaLearner(model, algorithm, inner_lr=0.1, inner_clip=None)
    before = _flat(model)
    with pytest.raises(MetaError, match="learners: empty"):
        meta.outer_step([], torch.tensor(0.0, requires_grad=True))
    learner = meta.clone()
    with pytest.raises(MetaError, match="loss: expected a one-number tensor .* got float"):
        learner.adapt(1.0)
    with pytest.raises(MetaError, match=r"loss: expected a one-number tensor .* got a tensor of shape \[10, 1\]"):
        learner.adapt((learner(data["xs"]) - data["ys"]) ** 2)
    with pytest.raises(MetaError, match="loss: does not depend on the learners' weights"):
        learner.adapt(torch.tensor(1.0))
    with pytest.raises(MetaError, match="loss: does not depend on the learner's weights"):
        learner.adapt(torch.tensor(1.0, requires_grad=True) * 2)  # a graph, but not through the learner
    other = MetaLearner(_tiny(1)[0], algorithm)
    with pytest.raises(MetaError, match=r"learners\[0\]: not a learner of this MetaLearner"):
        meta.outer_step([other.clone()], torch.tensor(0.0, requires_grad=True))
    learner.adapt(_loss(model, learner.weights, data["xs"], data["ys"]))
    if algorithm != "reptile":
        with pytest.raises(MetaError, match="query_loss: does not depend on"):
            meta.outer_step([learner], torch.tensor(1.0, requires_grad=True) * 2)
    assert np.array_equal(_flat(model), before)  # nothing moved
    query = _loss(model, learner.weights, data["xq"], data["yq"]) if algorithm != "reptile" else None
    assert meta.outer_step([learner], query) > 0
    assert not np.array_equal(_flat(model), before)


def test_meta_train_takes_a_dict_of_config_fields_and_refuses_other_worlds_configs():
    from moca.meta2 import MetaConfig2, meta_train2

    tiny = {"meta_steps": 1, "tasks_per_step": 1, "support_size": 1, "query_size": 1,
            "params": Params(horizon=4), "policy": PolicyConfig(hidden=4)}
    module, history = meta_train(tiny)
    same, again = meta_train(MetaConfig(**tiny))
    assert [s["query_score"] for s in history["steps"]] == [s["query_score"] for s in again["steps"]]
    with pytest.raises(ValueError, match="meta_steps"):
        meta_train({**tiny, "meta_steps": -1})
    with pytest.raises(MetaError, match="config: expected a MetaConfig or a dict of its fields, got list"):
        meta_train([1])
    with pytest.raises(MetaError, match="config: its params are another world's .Params2.: for CLSC-2 use "
                                        "moca.meta2.meta_train2"):
        meta_train(MetaConfig2(meta_steps=1))
    with pytest.raises(MetaError, match="config: expected a MetaConfig2"):
        meta_train2("fast")
    with pytest.raises(MetaError, match=r"module: expected a CLSC-1 policy \(LSTMPolicy.* got str"):
        meta_train(tiny, module="default")  # (an AttributeError on 'str')
    # support_score is the support's score before adaptation whatever inner_steps (it was the
    # score before the last of them); the tasks and seeds drawn do not depend on inner_steps
    _, three = meta_train({**tiny, "inner_steps": 3})
    assert three["steps"][0]["support_score"] == history["steps"][0]["support_score"]
    assert three["steps"][0]["correction"] == history["steps"][0]["correction"]


def test_a_step_that_is_not_finite_is_refused_and_leaves_the_weights_as_they_were():
    # A diverging config (rates or a correction weight far too high) made NaN weights that failed
    # later as an internal error in the projection; now the step says so, naming what to lower.
    model, data = _tiny()
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    meta = MetaLearner(model, "fomaml", inner_lr=1e300, inner_clip=None)
    learner = meta.clone()
    with pytest.raises(MetaError, match="meta step 1: an inner step .* non-finite .* lower inner_lr"):
        meta.adapt_all([learner], _loss(model, learner.weights, data["xs"], data["ys"]) * 1e300)
    meta = MetaLearner(model, "reptile")
    with pytest.raises(MetaError, match="meta step 1: the meta-gradient is not finite"):
        meta.apply_direction({k: torch.full_like(p, math.nan) for k, p in start.items()})
    meta = MetaLearner(model, "reptile", outer_lr=1e300)
    meta.optimizer.param_groups[0]["lr"] = math.inf  # (the config bounds outer_lr; the step still checks)
    with pytest.raises(MetaError, match="meta step 1: the outer step made the meta weights non-finite"):
        meta.apply_direction({k: torch.ones_like(p) for k, p in start.items()})
    assert all(torch.equal(p, start[k]) for k, p in model.named_parameters())
    meta.optimizer.param_groups[0]["lr"] = 0.1
    assert meta.apply_direction({k: torch.ones_like(p) for k, p in start.items()}) == pytest.approx(2.0)
    assert meta.steps_taken == 1 and not torch.equal(model.bias, start["bias"])
    for field, value in (("outer_lr", 2.0), ("inner_lr", 1e3), ("correction_weight", 1e308),
                         ("zero_shot_weight", 1e4)):
        with pytest.raises(ValueError, match=field):
            MetaConfig(**{field: value})
    # a bool for a number was taken as 1 (seed, sizes, budgets), without a word
    for field in ("seed", "tasks_per_step", "max_seconds", "inner_lr"):
        with pytest.raises(ValueError, match=f"{field}=True is not a number"):
            MetaConfig(**{field: True})
    with pytest.raises(ValueError, match="hidden=True is not a number"):
        PolicyConfig(hidden=True)
    with pytest.raises(ValueError, match="Input should be 'maml', 'fomaml' or 'reptile'"):  # a choice, not a number
        MetaConfig(algorithm=True)
    assert not PolicyConfig(structured=False).structured and MetaConfig(inner_clip=None).inner_clip is None
    # text for a number or a yes/no was converted ("64" -> 64, "no" or 0 -> False; a checkpoint's
    # structured: "no" rebuilt a policy without its base rule), as scenario files never do
    for model, field, value, words in ((MetaConfig, "meta_steps", "1", "meta_steps='1' is text, not a number"),
                                       (PolicyConfig, "hidden", "64", "hidden='64' is text, not a number"),
                                       (PolicyConfig, "structured", "no", "structured='no' must be true or false"),
                                       (PolicyConfig, "regime_conditioned", 0, "regime_conditioned=0 must be true or"),
                                       (PolicyConfig, "safety_stock", math.inf, "safety_stock\n  Input should be a "
                                                                                "finite number")):
        with pytest.raises(ValueError, match=words):
            model(**{field: value})
    assert PolicyConfig(hidden=np.int64(8), structured=np.bool_(False), safety_stock=np.float32(5)).hidden == 8


# --- the task distribution and the seeds ------------------------------------------------------


def test_task_distribution_covers_every_rule_within_the_spec_ranges():
    rng = np.random.default_rng(0)
    tasks = [sample_task(rng) for _ in range(400)]
    r = np.array([t.recycled_content_min for t in tasks])
    tau = np.array([t.carbon_tax for t in tasks])
    lam = np.array([t.landfill_tax for t in tasks])
    kappa = np.array([t.recovery_target for t in tasks])
    caps = [t.emission_cap for t in tasks if t.emission_cap is not None]
    assert 0 <= r.min() and r.max() <= 0.95 and (r > 0.35).any() and (r == 0).any()
    assert 0 <= tau.min() and tau.max() <= 2000 and (tau > 300).any()
    assert 0 <= lam.min() and lam.max() <= 100 and (lam > 0).mean() > 0.2
    assert 0 <= kappa.min() and kappa.max() <= 1 and (kappa > 0).mean() > 0.2
    assert len(caps) > 40 and min(caps) > 0
    assert len({t.describe() for t in tasks}) > 350  # perturbed, not a few fixed tasks


def test_seed_ranges_stay_clear_of_test_seeds():
    assert max(META_SEEDS) < SUPPORT_SEEDS.start and max(SUPPORT_SEEDS) < VALIDATION_SEEDS.start
    assert max(VALIDATION_SEEDS) < 1000


def test_oracle_cache_solves_each_scenario_once():
    params = Params(horizon=8)
    cache = OracleCache(params)
    scenarios = cache.scenarios([0, 1], Regime(recycled_content_min=0.1))
    first = cache.costs(scenarios)
    assert len(cache._costs) == 2 and np.all(first > 0)
    np.testing.assert_array_equal(cache.costs(scenarios), first)
    assert len(cache._costs) == 2


# --- meta-training and adaptation on a short horizon -------------------------------------------

SHORT = Params(horizon=8)


@pytest.mark.parametrize("algorithm", ["fomaml", "maml", "reptile"])
def test_meta_train_runs_and_records_history(algorithm):
    config = MetaConfig(algorithm=algorithm, params=SHORT, policy=PolicyConfig(hidden=8), meta_steps=2,
                        tasks_per_step=2, support_size=2, query_size=2, seed=1)
    seen = []
    module, history = meta_train(config, progress=lambda step, total, info: seen.append((step, total)))
    assert seen == [(1, 2), (2, 2)]
    assert len(history["steps"]) == 2 and history["wall_seconds"] > 0
    assert all(math.isfinite(s["meta_grad_norm"]) and s["meta_grad_norm"] > 0 for s in history["steps"])
    assert isinstance(module, LSTMPolicy)
    assert MetaConfig.model_validate(history["config"]) == config  # serialisable round trip


def test_adapt_reduces_the_loss_on_one_regime():
    torch.manual_seed(0)
    module = LSTMPolicy(SHORT, PolicyConfig(hidden=8))
    regime = Regime(recycled_content_min=0.3, carbon_tax=300.0)
    weights, curve = adapt(module, None, regime, steps=3, support_size=4, validation_size=4, clip=0.1)
    assert [c["step"] for c in curve] == [0, 1, 2, 3]
    assert all(c["violations"] == 0 for c in curve)
    losses = [c["support_loss"] for c in curve]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # the safeguard never lets it rise
    assert losses[-1] < losses[0] and curve[1]["kept"]
    assert curve[-1]["score"] > curve[0]["score"]
    assert curve[-1]["seconds"] > 0
    assert set(weights) == {k for k, _ in module.named_parameters()}
    # without the safeguard: plain clipped SGD steps, every one kept
    _, plain = adapt(module, None, regime, steps=2, support_size=4, validation_size=4, safeguard=False)
    assert all(c["kept"] for c in plain) and len(plain) == 3
    with pytest.raises(MetaError, match="steps"):
        adapt(module, None, regime, steps=-1)


@pytest.mark.parametrize("safeguard", [False, True])
def test_adaptation_takes_no_step_along_a_gradient_that_is_not_finite(safeguard):
    # A NaN in the gradient (a rule's square root at 0, say) would turn every weight NaN
    # and the next rollout would fail: the step is not taken and is reported as not kept.
    start = {"w": torch.tensor([1.0, 2.0], requires_grad=True)}

    def loss_and_grad(weights):
        return float((weights["w"].detach() ** 2).sum()), {"w": torch.tensor([math.nan, 1.0])}

    curve = [{"step": 0, "seconds": 0.0, "score": 0.5}]
    weights, curve = adapt_loop(start, curve, 0.0, loss_and_grad, lambda w: {"score": 0.5}, steps=2, lr=0.1,
                                clip=None, safeguard=safeguard, keep_best=False)
    assert torch.equal(weights["w"], torch.tensor([1.0, 2.0]))
    assert [entry["kept"] for entry in curve[1:]] == [False, False]


def test_a_step_not_kept_is_not_scored_again():
    # Under the LP's base the safeguard undoes most steps and each validation rollout solves
    # an LP a period: a step that leaves the weights as they were keeps the last score.
    start = {"w": torch.tensor([1.0, 2.0], requires_grad=True)}
    losses = iter([1.0, 2.0, 0.5, 3.0])  # the start, then candidates: rejected, kept, rejected

    def loss_and_grad(weights):
        return next(losses), {"w": torch.tensor([1.0, 1.0])}

    scored_weights, stepped = [], []

    def score(weights):
        scored_weights.append(weights["w"].detach().clone())
        return {"score": 0.5 + 0.1 * len(scored_weights), "violations": 0}

    curve = [{"step": 0, "seconds": 0.0, "kept": True, "score": 0.5, "violations": 0}]
    weights, curve = adapt_loop(start, curve, 0.0, loss_and_grad, score, steps=3, lr=0.1, clip=None, safeguard=True,
                                keep_best=True, scored={"score": 0.5, "violations": 0}, stepped=stepped.append)
    assert [entry["kept"] for entry in curve] == [True, False, True, False]
    assert len(scored_weights) == 1 and torch.allclose(scored_weights[0], torch.tensor([0.95, 1.95]))
    assert [entry["score"] for entry in curve] == [0.5, 0.5, 0.6, 0.6]
    assert [entry["step"] for entry in curve] == [0, 1, 2, 3] and stepped == [1, 2, 3]
    assert [entry["selected"] for entry in curve] == [False, False, True, False]
    assert torch.allclose(weights["w"], scored_weights[0])


def test_more_support_or_validation_scenarios_than_their_seeds_hold_are_refused():
    # range(900, 1000)[:150] holds 100: the slice gave fewer scenarios than asked, without a word.
    from moca.experiment import ExperimentConfig
    from moca.meta import MetaError, adapt

    module = LSTMPolicy(Params(), PolicyConfig(hidden=8))
    for sizes, message in (({"validation_size": 150}, r"validation_size=150: must be in 1..100 \(seeds 900-999\)"),
                           ({"support_size": 0}, r"support_size=0: must be in 1..100 \(seeds 800-899\)")):
        with pytest.raises(MetaError, match=message):
            adapt(module, None, "T1", steps=0, **sizes)
    with pytest.raises(ValueError, match="validation_size"):
        ExperimentConfig(validation_size=101)


def test_adaptation_arguments_and_weights_that_do_not_fit_are_refused_by_name():
    """A negative clip or rate stepped uphill without a word (clipped_sgd scales by
    lr * min(1, clip / |g|)); a NaN rate surfaced as a NaN raw action; weights missing a
    name adapted and then failed in DeployedPolicy with a KeyError. Both worlds."""
    from moca.meta import MetaError, adapt
    from moca.meta2 import adapt2
    from moca.policy import DeployedPolicy, PolicyError
    from moca.policy2 import LSTMPolicy2
    from moca.scenario import Params2

    module = LSTMPolicy(Params(), PolicyConfig(hidden=8))
    module2 = LSTMPolicy2(Params2(), PolicyConfig(hidden=8))
    weights = {k: v.detach().clone() for k, v in module.named_parameters()}
    for run, own in ((adapt, module), (adapt2, module2)):
        for kwargs, message in (({"clip": -1.0}, r"clip: -1.0 must be a finite number > 0, or None"),
                                ({"lr": -1.0}, r"lr: -1.0 must be a finite number > 0"),
                                ({"lr": float("nan")}, r"lr: nan must be a finite number > 0"),
                                ({"lr": True}, r"lr: True must be"),
                                ({"steps": 1.5}, r"steps: 1.5 must be a whole number >= 0"),
                                ({"steps": -1}, r"steps: -1 must be a whole number >= 0")):
            with pytest.raises(MetaError, match=message):
                run(own, None, "T1", **{"steps": 1, **kwargs})
    name = next(iter(weights))
    for bad, message in (({k: v for k, v in weights.items() if k != "head.bias"}, "weights: missing head.bias"),
                         ({**weights, "extra": torch.zeros(1)}, "weights: unknown extra"),
                         ({**weights, "head.bias": torch.zeros(7)}, r"weights\['head.bias'\]: shape \[7\], expected \[6\]"),
                         ({**weights, name: weights[name].numpy()}, rf"weights\['{name}'\]: expected a torch tensor"),
                         ({**weights, name: weights[name] * np.nan}, rf"weights\['{name}'\]: holds NaN"),
                         ([1, 2], "weights: expected a dict")):
        with pytest.raises(PolicyError, match=message):
            adapt(module, bad, "T1", steps=0)
        with pytest.raises(PolicyError, match=message):
            DeployedPolicy(module, bad)
    deployed = DeployedPolicy(module, weights)  # weights that fit are taken as they are
    assert all(torch.equal(p, weights[n]) for n, p in deployed.module.named_parameters())


def test_support_or_validation_scenarios_of_another_chain_are_refused():
    """Scenarios drawn on other params adapted and scored without a word (both worlds)."""
    from moca.meta import MetaError, adapt
    from moca.meta2 import adapt2
    from moca.policy2 import LSTMPolicy2
    from moca.scenario import Params2, draw_scenario, draw_scenario2

    module = LSTMPolicy(Params(), PolicyConfig(hidden=8))
    module2 = LSTMPolicy2(Params2(), PolicyConfig(hidden=8))
    with pytest.raises(MetaError, match=r"support\[0\]: drawn on other params than the policy's \(horizon=52->10\)"):
        adapt(module, None, "T1", steps=1, support=[draw_scenario(1, None, Params(horizon=10))], validation_size=1)
    with pytest.raises(MetaError, match=r"validation\[1\]: expected a Scenario, got Scenario2"):
        adapt(module, None, "T1", steps=1, support_size=1, validation=[draw_scenario(1), draw_scenario2(1)])
    with pytest.raises(MetaError, match=r"support\[0\]: drawn on other params .*cap_order=.*->5000.0"):
        adapt2(module2, None, "T1", steps=1, support=[draw_scenario2(1, None, Params2(cap_order=5000.0))],
               validation_size=1)
    with pytest.raises(MetaError, match=r"validation: no scenarios given"):
        adapt2(module2, None, "T1", steps=1, support_size=1, validation=[])


def test_a_cache_of_another_chain_is_refused_and_caches_key_the_chain():
    """OracleCache2 keyed a scenario by its draws alone: another chain's scenario of the same
    seed got the first chain's oracle cost (a wrong score without a word). A cache built on
    other params made adapt, adapt2 and the continual runs adapt and score on that chain."""
    from moca.experiment import ExperimentConfig, ExperimentError, run_continual
    from moca.experiment2 import run_continual2
    from moca.meta import MetaError, OracleCache, adapt
    from moca.meta2 import OracleCache2, adapt2
    from moca.oracle2 import solve_oracle2
    from moca.policy2 import LSTMPolicy2
    from moca.regime import load_regime
    from moca.scenario import Params2

    short, other = Params2(horizon=6), Params2(horizon=6, cost_virgin=30.0, lost_sale_cost=200.0)
    plan = load_regime("T1", model="CLSC-2")
    shared = OracleCache2(short)
    first = shared.costs(shared.scenarios([800], plan))[0]
    theirs = OracleCache2(other).scenarios([800], plan)
    assert shared.costs(theirs)[0] == pytest.approx(solve_oracle2(theirs[0]).oracle_cost) != pytest.approx(first)
    module2 = LSTMPolicy2(short, PolicyConfig(hidden=8))
    module = LSTMPolicy(Params(horizon=6), PolicyConfig(hidden=8))
    with pytest.raises(MetaError, match=r"cache: built on other params than the policy's \(horizon=6->8\)"):
        adapt(module, None, "T1", steps=0, cache=OracleCache(Params(horizon=8)))
    with pytest.raises(MetaError, match=r"cache: built on other params .*cost_virgin=.*->30.0, lost_sale_cost=.*->200.0"):
        adapt2(module2, None, plan, steps=0, cache=OracleCache2(other))
    with pytest.raises(MetaError, match="cache: expected a OracleCache2, got OracleCache"):
        adapt2(module2, None, plan, steps=0, cache=OracleCache(Params()))
    tiny = ExperimentConfig(steps=0, train_size=1, memory_size=1, validation_size=1, test_size=1)
    with pytest.raises(MetaError, match="cache: built on other params"):
        run_continual2("finetune", module2, [("A", plan)], OracleCache2(other), tiny)
    with pytest.raises(MetaError, match="cache: built on other params"):
        run_continual("finetune", module, [("A", load_regime("T1"))], OracleCache(Params(horizon=8)), tiny)
    for tasks, message in (([], "tasks: no regime to learn"), ([load_regime("T1")], r"tasks\[0\]: expected a \(label, regime\) pair")):
        with pytest.raises(ExperimentError, match=message):
            run_continual("finetune", module, tasks, OracleCache(module.params), tiny)
    with pytest.raises(ExperimentError, match="select_protocol: 'no' must be True, False or None"):
        run_continual2("moca", module2, [("A", plan)], OracleCache2(short), tiny, select_protocol="no")


def test_the_clsc2_cache_keys_every_series_the_oracle_reads():
    """OracleCache2's key left out the demand history, whose sales return as cores in the
    first L_r periods: two scenario files that differed only there were scored against the
    first one's oracle cost (``moca evaluate --scenario a --scenario b``)."""
    import dataclasses

    from moca.meta2 import OracleCache2
    from moca.oracle2 import solve_oracle2
    from moca.regime import load_regime
    from moca.scenario import SERIES_2

    cache = OracleCache2()
    first = cache.scenarios([800], load_regime("T1", model="CLSC-2"))[0]
    history = first.demand_history.copy()
    history[-6:] *= 2.0  # (the sales whose cores return in the first periods)
    second = dataclasses.replace(first, demand_history=history)
    costs = cache.costs([first, second])
    assert costs[1] == pytest.approx(solve_oracle2(second).oracle_cost, rel=1e-9)
    assert costs[0] != pytest.approx(costs[1], rel=1e-7)
    for name in SERIES_2:  # (any series changed: a cost of its own)
        changed = getattr(first, name).copy()
        changed[5] = [0.2, 0.3, 0.5] if name == "grades" else 1.0 - changed[5] if name == "supply_up" else changed[5] / 2
        variant = dataclasses.replace(first, **{name: changed})
        assert cache.costs([variant])[0] == pytest.approx(solve_oracle2(variant).oracle_cost, rel=1e-9), name


def test_more_adaptation_arguments_are_refused_by_name():
    """A negative correction weight was taken (a NaN one made every step 'not kept'), a
    fractional count failed in a slice, training sizes past the seed range were cut."""
    from moca.experiment import PolicyTask
    from moca.meta import MetaError, OracleCache, adapt

    module = LSTMPolicy(Params(horizon=5), PolicyConfig(hidden=8))
    for kwargs, message in (({"correction_weight": -1.0}, "correction_weight: -1.0 must be a finite number >= 0"),
                            ({"correction_weight": float("nan")}, "correction_weight: nan must be"),
                            ({"support_size": 1.5}, r"support_size=1.5: must be in 1..100")):
        with pytest.raises(MetaError, match=message):
            adapt(module, None, "T1", steps=1, **kwargs)
    with pytest.raises(MetaError, match=r"train_size=500: must be in 1..100"):
        PolicyTask("A", Regime(), module, OracleCache(module.params), train_size=500)


def test_a_stopped_meta_training_validates_the_weights_it_ends_on():
    """Ctrl-C or --max-seconds between scheduled validations: the "after" score was step 0's
    (of weights not written) and CLSC-2's keep_best wrote step 0's weights as "the steps
    done". A stop now validates the weights it ends on, and keep_best chooses among them."""
    from moca.meta2 import MetaConfig2, meta_train2

    asked = iter([False, True])
    config = MetaConfig(params=SHORT, policy=PolicyConfig(hidden=8), meta_steps=50, tasks_per_step=1,
                        support_size=1, query_size=1, validation_tasks=2, validate_every=25, seed=1)
    _, history = meta_train(config, stop=lambda: next(asked))
    assert history["interrupted"] and len(history["steps"]) == 2
    assert [v["step"] for v in history["validation"]] == [0, 2]
    config2 = MetaConfig2(policy=PolicyConfig(hidden=8), meta_steps=50, tasks_per_step=1, support_size=1,
                          query_size=1, validation_tasks=2, validate_every=25, seed=1, max_seconds=1e-9)
    module, history2 = meta_train2(config2)
    assert history2["stopped_early"] and len(history2["steps"]) == 1
    curve = history2["validation"]
    assert [v["step"] for v in curve] == [0, 1]
    assert history2["selected_step"] == max(curve, key=lambda v: v["score"])["step"]  # among the stop's weights too


def test_an_interrupted_training_says_which_weights_its_checkpoint_holds(capsys):
    from moca.cli import _exit_if_interrupted, _trained_line

    with pytest.raises(Exception) as exit_info:
        _exit_if_interrupted({"interrupted": True, "steps": [{}] * 6, "selected_step": 0}, 500)
    assert getattr(exit_info.value, "exit_code", None) == 130
    assert "the checkpoint holds the weights after meta step 0, the best on validation of the 6 of 500 done" in \
        capsys.readouterr().err
    line = _trained_line("ck", "CLSC-2, fomaml", {"meta_steps": 6, "wall_seconds": 3.0, "selected_step": 0},
                         {"validation_zero_shot_before": 0.95, "validation_zero_shot_after": 0.95})
    assert line.endswith("0.9500 -> 0.9500 (the weights after meta step 0, the best on validation)")


def test_a_maml_outer_step_refused_for_a_nan_query_loss_can_be_retried_and_spent_learners_are_named():
    """The NaN was found only in the meta-gradient, after taking it had freed the learners'
    inner steps, so a retry with a finite loss failed in torch ("backward through the graph
    a second time"), as did a second outer step through the same learners; a complex loss
    failed in torch too."""
    model, data = _tiny()
    meta = MetaLearner(model, "maml", inner_lr=0.1)
    learner = meta.clone()
    learner.adapt(_loss(model, learner.weights, data["xs"], data["ys"]))
    query = _loss(model, learner.weights, data["xq"], data["yq"])
    with pytest.raises(MetaError, match="query_loss is nan, not finite: the losses diverged"):
        meta.outer_step([learner], query * math.nan)
    assert math.isfinite(meta.outer_step([learner], query)) and meta.steps_taken == 1
    with pytest.raises(MetaError, match="learners: a MAML outer step already went through their inner steps"):
        meta.outer_step([learner], _loss(model, learner.weights, data["xq"], data["yq"]))
    fresh = meta.clone()
    fresh.adapt(_loss(model, fresh.weights, data["xs"], data["ys"]))
    with pytest.raises(MetaError, match="query_loss: a complex number"):
        meta.outer_step([fresh], _loss(model, fresh.weights, data["xq"], data["yq"]) * (1 + 1j))
    assert math.isfinite(meta.outer_step([fresh], _loss(model, fresh.weights, data["xq"], data["yq"])))
    # first-order MAML takes no gradient through the inner steps: its learners can serve again
    fo = MetaLearner(model, "fomaml", inner_lr=0.1)
    again = fo.clone()
    again.adapt(_loss(model, again.weights, data["xs"], data["ys"]))
    for _ in range(2):
        assert math.isfinite(fo.outer_step([again], _loss(model, again.weights, data["xq"], data["yq"])))


def test_nan_in_a_training_config_is_named_as_such():
    """A config file's .nan was refused by the field's bound, as if it were too large or
    small ("inner_lr=nan: Input should be less than or equal to 100")."""
    from moca.meta2 import MetaConfig2

    for kind in (MetaConfig, MetaConfig2):
        for field in ("inner_lr", "inner_clip", "max_seconds", "outer_lr"):
            with pytest.raises(ValueError, match=f"{field}=nan is not a number"):
                kind(**{field: float("nan")})
    with pytest.raises(ValueError, match="hidden=nan is not a number"):
        MetaConfig(policy={"hidden": float("nan")})
