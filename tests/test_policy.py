"""The LSTM policy: features, functional evaluation, the differentiable episode loss,
imitation, evaluation, and the deployment path with the exact projection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch.func import functional_call

from moca import safety
from moca.oracle import oracle_costs
from moca.policy import (
    REGIME_FEATURES, DeployedPolicy, LSTMPolicy, PlanTeacher, PolicyAgent, PolicyConfig, PolicyError,
    compare_losses, evaluate_policy, feature_columns, feature_layout, feature_spec, features, oracle_teacher,
    policy_loss,
    train_policy,
)
from moca.regime import Regime
from moca.scenario import Params, draw_scenarios
from moca.sim import Observation, ScenarioBatch, rollout

torch.set_num_threads(1)

SHORT = Params(horizon=8)  # keeps backpropagation through the episode fast
MANDATE = Regime(recycled_content_min=0.15, carbon_tax=100.0, landfill_tax=20.0)


def _batch(regime=MANDATE, n=2, params=SHORT, first_seed=0):
    scenarios = draw_scenarios(n, regime, params, first_seed=first_seed)
    return scenarios, ScenarioBatch.from_scenarios(scenarios), torch.as_tensor(oracle_costs(scenarios),
                                                                                dtype=torch.float32)


def _perturbed(module: LSTMPolicy, scale: float = 0.05, seed: int = 0) -> LSTMPolicy:
    """A policy whose head is not zero (a fresh one is exactly the base rule)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module


class _Recorder:
    """A policy that records the observations of a rollout (and acts like ``inner``)."""

    def __init__(self, inner):
        self.inner, self.observations = inner, []

    def reset(self, batch):
        self.inner.reset(batch)

    def act(self, obs):
        self.observations.append(obs)
        return self.inner.act(obs)


def test_features_are_normalised_and_match_the_layout():
    _, batch, _ = _batch(n=3)
    module = LSTMPolicy(SHORT)
    recorder = _Recorder(PolicyAgent(module))
    with torch.no_grad():
        rollout(batch, recorder, safety.project_batch)
    layout = feature_layout(SHORT)
    for obs in recorder.observations:
        x = features(obs, module.config)
        assert x.shape == (3, layout.size)
        assert torch.isfinite(x).all() and x.abs().max() < 10
        np.testing.assert_allclose(x[:, layout.regime][:, 0].numpy(), 0.15, rtol=1e-6)  # the mandate
    assert len(REGIME_FEATURES) == layout.regime.stop - layout.regime.start


def test_numpy_float_and_torch_features_agree():
    """The one feature function gives the same numbers on torch batches, numpy batches
    and the Python floats of the deployment path."""
    from moca.policy import _Scalars

    _, batch, _ = _batch(n=2)
    config = PolicyConfig()
    spec = feature_spec(SHORT, config)
    recorder = _Recorder(PolicyAgent(LSTMPolicy(SHORT, config)))
    with torch.no_grad():
        rollout(batch, recorder, safety.project_batch)
    for obs in recorder.observations:
        s = obs.state
        expected = features(obs, config).double().numpy()
        cols = lambda a: list(a.double().numpy().T)  # noqa: E731
        last = None if obs.last_demand is None else obs.last_demand.double().numpy()
        x_np = feature_columns(np, spec, obs.t, cols(s.stocks()), cols(s.pipeline), cols(s.sales_history),
                               cols(obs.regime), obs.return_frac.double().numpy(), last)
        np.testing.assert_allclose(x_np, expected, rtol=1e-5, atol=1e-5)
        for i in range(2):
            row = lambda a: [float(v) for v in a[i]]  # noqa: E731
            x_float = feature_columns(_Scalars, spec, obs.t, row(s.stocks()), row(s.pipeline), row(s.sales_history),
                                      row(obs.regime), float(obs.return_frac[i]),
                                      None if obs.last_demand is None else float(obs.last_demand[i]))
            np.testing.assert_allclose(x_float, expected[i], rtol=1e-5, atol=1e-5)


def test_unconditioned_policy_ignores_the_regime():
    config = PolicyConfig(regime_conditioned=False)
    module = _perturbed(LSTMPolicy(SHORT, config))
    layout = feature_layout(SHORT)
    scen_a, batch_a, _ = _batch(Regime(recycled_content_min=0.3, emission_cap=9000.0, landfill_tax=50.0))
    batch_b = batch_a.with_regime(Regime().as_row())
    recorder = _Recorder(PolicyAgent(module))
    with torch.no_grad():
        rollout(batch_a, recorder, None)  # raw actions, so the regime cannot act through the projection
    for obs in recorder.observations:
        assert torch.all(features(obs, config)[:, layout.regime] == 0)
        other = Observation(obs.t, obs.state, batch_b.regime[:, obs.t], obs.return_frac, obs.last_demand, obs.params)
        assert torch.equal(features(obs, config), features(other, config))
    # and the conditioned policy does see it
    conditioned = _perturbed(LSTMPolicy(SHORT))
    obs = recorder.observations[3]
    other = Observation(obs.t, obs.state, batch_b.regime[:, obs.t], obs.return_frac, obs.last_demand, obs.params)
    assert not torch.equal(features(obs, conditioned.config), features(other, conditioned.config))


def test_functional_call_equals_the_module_forward():
    module = _perturbed(LSTMPolicy(SHORT))
    x = torch.randn(5, module.config.window * feature_layout(SHORT).size)
    state = (torch.randn(5, module.config.hidden), torch.randn(5, module.config.hidden))
    weights = {k: v.detach().clone() for k, v in module.named_parameters()}
    raw, (h, c) = functional_call(module, weights, (x, state))
    raw_m, (h_m, c_m) = module(x, state)
    torch.testing.assert_close(raw, raw_m)
    torch.testing.assert_close(h, h_m)
    torch.testing.assert_close(c, c_m)
    # other weights change the output, and the module itself is untouched
    shifted = {k: v + 0.1 for k, v in weights.items()}
    before = [p.detach().clone() for p in module.parameters()]
    assert not torch.allclose(functional_call(module, shifted, (x, state))[0], raw_m)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_fresh_structured_policy_is_the_base_rule():
    _, batch, _ = _batch(n=2)
    module = LSTMPolicy(SHORT)
    recorder = _Recorder(PolicyAgent(module))
    with torch.no_grad():
        out = rollout(batch, recorder, safety.project_batch)
    layout = feature_layout(SHORT)
    scale = torch.as_tensor(SHORT.action_scale, dtype=torch.float32)
    for t, obs in enumerate(recorder.observations):
        base = features(obs, module.config)[:, layout.base] * scale
        torch.testing.assert_close(out.raw[:, t], base, rtol=1e-5, atol=1e-2)


def test_policy_loss_is_differentiable_end_to_end():
    _, batch, oracle = _batch(n=2)
    module = _perturbed(LSTMPolicy(SHORT, PolicyConfig(hidden=16)))
    loss, info = policy_loss(module, None, batch, oracle, correction_weight=0.1)
    loss.backward()
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert float(module.cell.weight_ih.grad.abs().sum()) > 0  # reaches the LSTM, not only the head
    assert float(module.cell.weight_hh.grad.abs().sum()) > 0  # and through its state over periods
    assert info["cost_ratio"] >= 1.0 - 1e-4  # the oracle is a lower bound
    assert 0 < info["score"] <= 1.0 + 1e-4
    assert info["correction"] >= 0


def test_grouped_weights_act_like_separate_rollouts():
    """Two tasks in one rollout, each with its own weights, give each task's own loss and gradient."""
    _, batch_a, oracle_a = _batch(Regime(recycled_content_min=0.1), n=2)
    _, batch_b, oracle_b = _batch(Regime(carbon_tax=500.0), n=2, first_seed=10)
    joint = ScenarioBatch(SHORT, torch.cat([batch_a.demand, batch_b.demand]),
                          torch.cat([batch_a.return_frac, batch_b.return_frac]),
                          torch.cat([batch_a.regime, batch_b.regime]))
    module = LSTMPolicy(SHORT, PolicyConfig(hidden=8))
    w_a = {k: (v.detach() + 0.02).requires_grad_(True) for k, v in module.named_parameters()}
    w_b = {k: (v.detach() - 0.02).requires_grad_(True) for k, v in module.named_parameters()}
    from moca.policy import episode_losses

    terms = episode_losses(module, [w_a, w_b], joint, torch.cat([oracle_a, oracle_b]), groups=[2, 2])
    per_task = terms.total(0.1, 0.0).view(2, 2).mean(1)
    grads = torch.autograd.grad(per_task.sum(), list(w_a.values()) + list(w_b.values()))
    loss_a, _ = policy_loss(module, w_a, batch_a, oracle_a)
    grad_a = torch.autograd.grad(loss_a, list(w_a.values()))
    torch.testing.assert_close(per_task[0], loss_a, rtol=1e-5, atol=1e-6)
    for g_joint, g_alone in zip(grads[: len(grad_a)], grad_a):
        torch.testing.assert_close(g_joint, g_alone, rtol=1e-4, atol=1e-6)
    with pytest.raises(PolicyError, match="groups"):
        episode_losses(module, [w_a, w_b], joint, torch.cat([oracle_a, oracle_b]), groups=[1, 2])


def test_a_few_steps_on_one_regime_reduce_the_loss():
    _, batch, oracle = _batch(Regime(recycled_content_min=0.3, carbon_tax=300.0), n=4)
    torch.manual_seed(0)
    module = LSTMPolicy(SHORT, PolicyConfig(hidden=16))
    before, _ = policy_loss(module, None, batch, oracle)
    weights = train_policy(module, None, batch, oracle, steps=5, lr=3e-3)
    after, _ = policy_loss(module, weights, batch, oracle)
    assert float(after.detach()) < float(before.detach())


def test_imitation_of_the_oracle_plan_is_differentiable_and_descends():
    scenarios, batch, oracle = _batch(n=2)
    teacher = oracle_teacher(scenarios)
    torch.manual_seed(0)
    module = LSTMPolicy(SHORT, PolicyConfig(hidden=8))
    weights = {k: v.detach().clone().requires_grad_(True) for k, v in module.named_parameters()}
    loss, info = policy_loss(module, weights, batch, oracle, imitation=teacher, cost_weight=0.0)
    expected = info["imitation"] + 0.1 * info["correction"]  # no cost term; the correction carries no gradient
    assert info["imitation"] > 0 and math.isclose(float(loss.detach()), expected, rel_tol=1e-5)
    grads = torch.autograd.grad(loss, list(weights.values()))
    norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))
    assert norm > 0 and math.isfinite(norm)
    stepped = {k: (w - 1e-3 * g / norm).detach() for (k, w), g in zip(weights.items(), grads)}
    _, after = policy_loss(module, stepped, batch, oracle, imitation=teacher, cost_weight=0.0)
    assert after["imitation"] < info["imitation"]  # a small step down the gradient lowers the error
    # mixed: cost and imitation together, both terms reported
    _, mixed = policy_loss(module, weights, batch, oracle, imitation=teacher, imitation_weight=2.0)
    assert math.isclose(mixed["loss"], mixed["cost_ratio"] + 0.1 * mixed["correction"] + 2.0 * mixed["imitation"],
                        rel_tol=1e-5)
    with pytest.raises(PolicyError, match="plans"):
        policy_loss(module, None, batch, oracle, imitation=PlanTeacher(torch.zeros(3, 8, 6)))


def test_compare_losses_reports_a_winner():
    result = compare_losses(params=SHORT, regime="T1", config=PolicyConfig(hidden=8), steps=2, batch_size=2,
                            eval_every=1, validation_size=2, teacher="oracle")
    assert set(result["losses"]) == {"cost", "imitation", "mixed"}
    assert result["winner"] in result["losses"] and result["best_final"] in result["losses"]
    for curve in result["losses"].values():
        assert curve["step"] == [0, 1, 2] and len(curve["score"]) == 3
        assert all(0 < s <= 1.0 + 1e-6 for s in curve["score"])
    with pytest.raises(PolicyError, match="losses"):
        compare_losses(params=SHORT, losses=("cost", "reward"), steps=1)


def test_evaluate_policy_counts_no_violations():
    scenarios, _, _ = _batch(Regime(recycled_content_min=0.2, emission_cap=12000.0, recovery_target=0.5), n=3)
    module = _perturbed(LSTMPolicy(SHORT), scale=0.2)
    result = evaluate_policy(module, None, scenarios, oracle_costs(scenarios))
    assert set(result) == {"score", "mean_cost", "violations", "correction"}
    assert result["violations"] == 0 and 0 < result["score"] <= 1.0 + 1e-6 and result["correction"] > 0
    # the counter does count: without a safety layer the same policy breaks rows
    unsafe = evaluate_policy(module, None, scenarios, oracle_costs(scenarios), project=lambda raw, *_: raw)
    assert unsafe["violations"] > 0 and unsafe["correction"] == 0


def test_deployed_decision_matches_the_agent_and_is_feasible():
    scenarios, _, _ = _batch(Regime(recycled_content_min=0.2, carbon_tax=50.0, recovery_target=0.4), n=1)
    module = _perturbed(LSTMPolicy(SHORT), scale=0.1)
    batch64 = ScenarioBatch.from_scenarios(scenarios, dtype=torch.float64)
    deployed = DeployedPolicy(module)
    recorder = _Recorder(deployed)
    with torch.no_grad():
        out = rollout(batch64, recorder, None)  # the deployed policy's actions are already projected
    agent = PolicyAgent(module)
    agent.reset(batch64)
    for t, obs in enumerate(recorder.observations):
        s = obs.state
        executed = out.executed[0, t].numpy()
        assert safety.violations(executed, float(s.virgin[0]), float(s.recycled[0]), float(s.cores[0]),
                                 obs.regime[0].numpy(), SHORT).sum() == 0
        raw = agent.act(obs).detach()[0].numpy()  # same window, same weights, training path
        expected = safety.project(raw, float(s.virgin[0]), float(s.recycled[0]), float(s.cores[0]),
                                  obs.regime[0].numpy(), SHORT)
        # identical up to float32 round-off of the network (1e-5 of capacity)
        assert np.all(np.abs(executed - expected) <= 1e-5 * np.asarray(SHORT.action_scale)), (t, executed, expected)
    # reset starts a new episode: the same decisions again
    first = out.executed[0, 0].numpy()
    deployed.reset()
    obs = recorder.observations[0]
    s = obs.state
    again = deployed.decide(0, s.stocks()[0].numpy(), s.pipeline[0].numpy(), s.sales_history[0].numpy(),
                            obs.regime[0].numpy(), float(obs.return_frac[0]), None)
    np.testing.assert_allclose(again, first)


def test_deployed_policy_uses_adapted_weights_without_touching_the_module():
    module = LSTMPolicy(SHORT)
    weights = {k: v.detach() + 0.05 for k, v in module.named_parameters()}
    deployed = DeployedPolicy(module, weights)
    assert all(torch.equal(p, weights[k]) for k, p in deployed.module.named_parameters())
    assert all(float(p.detach().abs().sum()) == 0 for p in module.head.parameters())
    with pytest.raises(PolicyError, match="one scenario"):
        deployed.reset(ScenarioBatch.from_scenarios(draw_scenarios(2, None, SHORT)))


def test_bad_inputs_are_refused():
    with pytest.raises(ValidationError):
        PolicyConfig(hidden=0)
    with pytest.raises(ValidationError):
        PolicyConfig(colour="red")
    _, batch, oracle = _batch(n=2)
    module = LSTMPolicy(SHORT, PolicyConfig(hidden=8))
    with pytest.raises(PolicyError, match="oracle_cost"):
        policy_loss(module, None, batch, torch.tensor([1.0, 0.0]))
    with pytest.raises(PolicyError, match="oracle_cost"):
        policy_loss(module, None, batch, torch.tensor([1.0]))
    with pytest.raises(PolicyError, match="oracle_costs"):
        evaluate_policy(module, None, batch, np.ones(3))
    with pytest.raises(PolicyError, match="groups"):
        PolicyAgent(module, [dict(module.named_parameters())] * 2)
    for groups in ([3, -1], [2.5, 0.5], [True, 1], [0, 2]):  # a negative size took scenarios from the next group
        with pytest.raises(PolicyError, match=r"groups: sizes .* must be a list of whole numbers >= 1"):
            PolicyAgent(module, [dict(module.named_parameters())] * 2, groups=groups)


def test_numpy_deployment_step_equals_the_module_forward():
    from moca.policy import _NumpyStep

    module = _perturbed(LSTMPolicy(SHORT), scale=0.2)
    step = _NumpyStep(module)
    g = torch.Generator().manual_seed(3)
    state_t, state_n = None, None
    for _ in range(4):  # a few periods, carrying the state
        x = torch.randn(1, module.config.window * feature_layout(SHORT).size, generator=g)
        with torch.no_grad():
            raw_t, state_t = module(x, state_t)
        raw_n, state_n = step(x[0].double().numpy(), state_n)
        np.testing.assert_allclose(raw_n, raw_t[0].numpy(), rtol=1e-4, atol=1e-5 * SHORT.action_scale.max())
        np.testing.assert_allclose(state_n[0], state_t[0][0].numpy(), rtol=1e-4, atol=1e-6)


def test_unstructured_policy_starts_from_zero_actions():
    module = LSTMPolicy(SHORT, PolicyConfig(structured=False, hidden=8))
    x = torch.randn(3, module.config.window * feature_layout(SHORT).size)
    raw, _ = module(x)
    assert torch.equal(raw, torch.zeros(3, 6))
    # the state dict names only learnable weights: reconstructible from (params, config)
    clone = LSTMPolicy(SHORT, PolicyConfig(structured=False, hidden=8))
    clone.load_state_dict(module.state_dict())
    assert set(module.state_dict()) == {k for k, _ in module.named_parameters()}


def test_training_losses_refuse_a_weights_dict_that_does_not_fit_the_policy():
    """``functional_call`` took a missing or misspelt name from the module: the loss of the
    module's own weight where the caller's adapted one was meant, without a word (both worlds)."""
    from moca.meta2 import load_policy2
    from moca.policy import PolicyError, episode_losses
    from moca.policy2 import episode_losses2
    from moca.regime import load_schedule
    from moca.scenario import draw_scenario, draw_scenario2
    from moca.sim2 import ScenarioBatch2

    module = LSTMPolicy()
    scenario = draw_scenario(1, load_schedule("T2"))
    batch = ScenarioBatch.from_scenarios([scenario])
    weights = {k: v.detach().clone() for k, v in module.named_parameters()}
    typo = {("head.bias_" if k == "head.bias" else k): v for k, v in weights.items()}
    with pytest.raises(PolicyError, match=r"weights: missing head\.bias; unknown head\.bias_"):
        episode_losses(module, typo, batch, torch.tensor([4e5]))
    with pytest.raises(PolicyError, match=r"weights\[1\]: missing head\.bias"):
        episode_losses(module, [weights, typo], ScenarioBatch.from_scenarios([scenario] * 2),
                       torch.tensor([4e5, 4e5]), groups=[1, 1])
    module2, _ = load_policy2("default")
    partial = {k: v for k, v in module2.named_parameters() if k != "rule_bias"}
    batch2 = ScenarioBatch2.from_scenarios([draw_scenario2(1, load_schedule("T2", model="CLSC-2"))])
    with pytest.raises(PolicyError, match="weights: missing rule_bias"):
        episode_losses2(module2, partial, batch2, torch.tensor([4e5]))
