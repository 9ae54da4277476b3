"""The rolling-horizon LP baseline: runs through the safety layer with 0 violations,
never beats the oracle, never reads the future, and sees the end of the episode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moca import safety
from moca.baselines.mpc import MPCPolicy
from moca.oracle import solve_oracle
from moca.regime import TASKS, Regime, RegimeSchedule, ScheduledRegime
from moca.scenario import Params, Scenario, draw_scenario
from moca.sim import Observation, ScenarioBatch, Simulator, rollout


def violations_of(result, batch: ScenarioBatch) -> int:
    total = 0
    for t in range(batch.horizon):
        available = result.available[:, t]
        total += int(safety.violations(result.executed[:, t], available[:, 0], available[:, 1], available[:, 2],
                                       batch.regime[:, t], batch.params).sum())
    return total


@pytest.fixture(scope="module")
def mpc_run():
    schedule = RegimeSchedule(entries=(ScheduledRegime(start=0, **TASKS["T1"].model_dump()),
                                       ScheduledRegime(start=20, **TASKS["T3"].model_dump())))
    scenarios = [draw_scenario(1000, TASKS["T2"]), draw_scenario(1001, schedule)]
    batch = ScenarioBatch.from_scenarios(scenarios, torch.float64)
    return scenarios, batch, rollout(batch, MPCPolicy(), safety.project_batch)


def test_mpc_through_the_safety_layer_has_no_violations(mpc_run):
    _, batch, result = mpc_run
    assert violations_of(result, batch) == 0
    # The LP's actions are feasible already; the layer only trims solver round-off.
    assert float(result.correction.max()) < 1e-6


def test_mpc_never_beats_the_oracle_and_comes_close(mpc_run):
    scenarios, _, result = mpc_run
    oracle = np.array([solve_oracle(s).oracle_cost for s in scenarios])
    cost = result.total_cost.numpy()
    assert (cost >= oracle * (1 - 1e-9)).all()
    assert (oracle / cost).min() > 0.9  # about 0.96 on T1-T3 over 20 scenarios; an unannounced switch costs more


def test_mpc_does_not_read_the_future():
    """Two scenarios equal up to period 25 get the same MPC decisions up to period 25."""
    base = draw_scenario(1002, TASKS["T2"])
    other = draw_scenario(1003, TASKS["T2"])
    cut = 25
    demand, return_frac = base.demand.copy(), base.return_frac.copy()
    demand[cut:] = other.demand[cut:]  # d_25 is revealed only after the decision at 25
    return_frac[cut + 1:] = other.return_frac[cut + 1:]  # rho_25 arrives before it
    twin = Scenario(base.params, base.schedule, demand, return_frac)
    batch = ScenarioBatch.from_scenarios([base, twin], torch.float64)
    actions = rollout(batch, MPCPolicy(), safety.project_batch).executed.numpy()
    np.testing.assert_allclose(actions[0, :cut + 1], actions[1, :cut + 1], rtol=0, atol=1e-9)
    assert np.abs(actions[0, cut + 1:] - actions[1, cut + 1:]).max() > 1.0


def test_mpc_decisions_do_not_depend_on_the_rest_of_the_batch(mpc_run):
    """Warm starts reuse each scenario's own previous basis, never a neighbour's."""
    scenarios, _, together = mpc_run
    alone = rollout(ScenarioBatch.from_scenarios(scenarios[1:], torch.float64), MPCPolicy(), safety.project_batch)
    np.testing.assert_array_equal(alone.executed[0].numpy(), together.executed[1].numpy())


def test_decide_gives_one_feasible_action_and_sees_the_end():
    params = Params()
    policy = MPCPolicy()
    regime = Regime(recycled_content_min=0.2, carbon_tax=100.0, emission_cap=30000.0, recovery_target=0.6).as_row()
    stocks = np.array([3000.0, 400.0, 900.0, 350.0, 120.0])  # V, M, P, C, B after arrivals
    pipeline, history = np.array([2500.0]), np.full(params.lag_return, 950.0)
    action = policy.decide(params, 10, stocks, pipeline, history, regime)
    assert action.shape == (6,) and np.isfinite(action).all()
    assert safety.violations(action, stocks[0], stocks[1], stocks[3], regime, params).sum() == 0
    assert action[1] + action[2] > 0  # it produces for next period's demand
    # In the last period nothing ordered or produced can be sold before the end.
    last = policy.decide(params, params.horizon - 1, stocks, pipeline, history, regime)
    assert last[:3] == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)


def test_mpc_in_float32_with_round_off_stocks():
    """The learner's float32 states may carry -1e-6 stocks; the MPC still decides."""
    scenario = draw_scenario(1004, TASKS["T1"])
    batch = ScenarioBatch.from_scenarios([scenario], torch.float32)
    policy = MPCPolicy(horizon=6)
    policy.reset(batch)
    sim = Simulator(batch.params, dtype=torch.float32)
    state = sim.arrive(sim.initial_state(1), batch.return_frac[:, 0])
    state.virgin = torch.tensor([-1e-6])
    state.cores = torch.tensor([-2e-6])
    raw = policy.act(Observation(0, state, batch.regime[:, 0], batch.return_frac[:, 0], None, batch.params))
    assert raw.dtype == torch.float32 and raw.shape == (1, 6)
    assert float(raw[0, 1]) == pytest.approx(0.0, abs=1e-6)  # no virgin material to use


@pytest.mark.parametrize("kwargs,field", [
    ({"horizon": 0}, "horizon"), ({"safety_stock": -1.0}, "safety_stock"),
    ({"safety_penalty": float("nan")}, "safety_penalty"), ({"virgin_buffer": float("inf")}, "virgin_buffer"),
])
def test_bad_settings_are_refused(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MPCPolicy(**kwargs)
