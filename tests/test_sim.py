"""CLSC-1 simulator against hand-computed periods (spec, "Order of events", "Period cost").

Every number asserted below was worked out by hand from the spec's text; the comments
show the arithmetic.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from moca.regime import Regime, RegimeSchedule
from moca.scenario import Params, Scenario, ScenarioError, draw_scenario
from moca.sim import COST_TERMS, OpenLoop, ScenarioBatch, Simulator, State, rollout

DTYPES = [torch.float32, torch.float64]
NO_COSTS = dict(cost_virgin=0.0, cost_produce=0.0, cost_disassemble=0.0, cost_refurbish=0.0, cost_dispose=0.0,
                hold_virgin=0.0, hold_recycled=0.0, hold_product=0.0, hold_core=0.0, backlog_cost=0.0)


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-6, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-9}


def make_state(dtype, V=1000.0, M=200.0, P=500.0, C=100.0, B=50.0, pipeline=(300.0, 400.0),
               history=(600.0, 700.0, 800.0, 900.0, 1000.0, 1100.0)) -> State:
    one = lambda x: torch.tensor([x], dtype=dtype)  # noqa: E731
    return State(one(V), one(M), one(P), one(C), one(B), torch.tensor([pipeline], dtype=dtype),
                 torch.tensor([history], dtype=dtype))


def regime_row(dtype, r=0.0, tau=0.0, cap=math.inf, lam=0.0, kappa=0.0) -> torch.Tensor:
    return torch.tensor([[r, tau, cap, lam, kappa]], dtype=dtype)


def act(dtype, o=0.0, u_v=0.0, u_r=0.0, g=0.0, f=0.0, w=0.0) -> torch.Tensor:
    return torch.tensor([[o, u_v, u_r, g, f, w]], dtype=dtype)


def assert_close(actual: torch.Tensor, expected: float, dtype) -> None:
    np.testing.assert_allclose(float(actual.reshape(-1)[0]), expected, **tol(dtype))


# --- the order of events ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_event1_arrival_from_pipeline_and_returns_from_sales_history(dtype):
    sim = Simulator(Params(), dtype)
    s = sim.arrive(make_state(dtype), torch.tensor([0.25], dtype=dtype))
    assert_close(s.virgin, 1000 + 300, dtype)  # V += pipeline[0]
    assert_close(s.cores, 100 + 0.25 * 600, dtype)  # C += rho_t * s_{t-L_r} (oldest history slot)
    assert s.pipeline.shape == (1, 1) and float(s.pipeline[0, 0]) == 400  # L_v - 1 slots remain
    assert torch.equal(s.sales_history, make_state(dtype).sales_history)  # history moves at event 4
    for name in ("recycled", "product", "backlog"):
        assert torch.equal(getattr(s, name), getattr(make_state(dtype), name))


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_period_by_hand(dtype):
    """Events 1-6 of one period with every action and every cost term non-zero."""
    sim = Simulator(Params(), dtype)
    s = sim.arrive(make_state(dtype), torch.tensor([0.25], dtype=dtype))  # V 1300, C 250
    new, step = sim.execute(s, act(dtype, o=1000, u_v=800, u_r=200, g=50, f=20, w=30),
                            torch.tensor([400.0], dtype=dtype), regime_row(dtype, r=0.1, tau=100, lam=10, kappa=0.5))
    # event 3: V 1300-800, M 200-200, C 250-100, q = (800+200)/2 = 500
    # event 4: wanted = B + d = 50 + 400 = 450 <= P = 500 -> sales 450, P 50, B 0
    # event 5: P 50 + 500 + 0.7*20 = 564, M 0 + 0.8*2*50 = 80, pipeline [400, 1000]
    expected = {"virgin": 500, "recycled": 80, "product": 564, "cores": 150, "backlog": 0}
    for name, value in expected.items():
        assert_close(getattr(new, name), value, dtype)
    assert new.pipeline.tolist() == [[400.0, 1000.0]]
    assert new.sales_history.tolist() == [[700.0, 800.0, 900.0, 1000.0, 1100.0, 450.0]]
    assert_close(step.sales, 450, dtype)
    assert_close(step.production, 500, dtype)
    assert_close(step.emissions, 6 * 1000 + 2 / 2 * 1000 + 1 * 0.8 * 2 * 50, dtype)  # 7080 kg CO2
    terms = {"virgin": 3 * 1000, "carbon": 100 * 6 / 1000 * 1000, "produce": 2 * 500, "disassemble": 6 * 50,
             "refurbish": 7 * 20, "dispose": 0.5 * 30, "landfill_tax": 10 * 30, "hold_virgin": 0.01 * 500,
             "hold_recycled": 0.01 * 80, "hold_product": 0.2 * 564, "hold_core": 0.05 * 150, "backlog": 0.0}
    for name, value in terms.items():
        assert_close(step.terms[name], value, dtype)
    assert_close(step.cost, 5481.1, dtype)  # the sum of the terms above
    assert set(step.terms) == set(COST_TERMS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_event4_sales_with_backlog(dtype):
    sim = Simulator(Params(**{**NO_COSTS, "backlog_cost": 5.0}), dtype)
    s = make_state(dtype, P=300.0, B=50.0)
    new, step = sim.execute(s, act(dtype, u_v=100), torch.tensor([400.0], dtype=dtype), regime_row(dtype))
    # wanted = 50 + 400 = 450 > P = 300: sell all 300, backlog 150; production q = 50 arrives after sales
    assert_close(step.sales, 300, dtype)
    assert_close(new.backlog, 150, dtype)
    assert_close(new.product, 0 + 50, dtype)
    assert_close(step.cost, 5 * 150, dtype)
    # Next period the backlog is still owed: wanted = 150 + 10 = 160 > P = 50 -> sell 50, backlog 110.
    new2, step2 = sim.execute(sim.arrive(new, torch.tensor([0.0], dtype=dtype)), act(dtype),
                              torch.tensor([10.0], dtype=dtype), regime_row(dtype))
    assert_close(step2.sales, 50, dtype)
    assert_close(new2.backlog, 110, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_event5_yields_arrive_only_at_end_of_period(dtype):
    """Production and refurbishment cannot serve this period's demand; disassembly yields
    eta_d * m kg per core and refurbishment eta_f units per core."""
    sim = Simulator(Params(**NO_COSTS), dtype)
    s = make_state(dtype, P=0.0, B=0.0, C=100.0, M=0.0)
    new, step = sim.execute(s, act(dtype, u_v=200, g=10, f=30), torch.tensor([80.0], dtype=dtype), regime_row(dtype))
    assert_close(step.sales, 0, dtype)  # P was 0 when demand came
    assert_close(new.backlog, 80, dtype)
    assert_close(new.product, 200 / 2 + 0.7 * 30, dtype)  # 121
    assert_close(new.recycled, 0.8 * 2 * 10, dtype)  # 16 kg
    assert_close(new.cores, 100 - 40, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pipeline_join_and_lead_time(dtype):
    """An order placed at t arrives at the start of t + L_v (L_v = 3 here)."""
    params = Params(horizon=6, lead_virgin=3, init_pipeline=0.0, **NO_COSTS)
    scenario = Scenario(params, RegimeSchedule.constant(Regime()), np.zeros(6), np.zeros(6))
    actions = torch.zeros(1, 6, 6, dtype=dtype)
    actions[0, 1, 0] = 777.0  # order at t = 1
    out = rollout(ScenarioBatch.from_scenarios([scenario], dtype), OpenLoop(actions), None, Simulator(params, dtype))
    # V at end of each period (nothing used): 4000 until the order arrives at t = 1 + 3 = 4
    assert out.stocks[0, :, 0].tolist() == [4000.0] * 4 + [4777.0] * 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_returns_follow_sales_with_lag(dtype):
    """Cores returning at t are rho_t times the sales of t - L_r (L_r = 2 here); before
    t = L_r they come from the pre-horizon sales history."""
    params = Params(horizon=5, lag_return=2, init_sales=100.0, init_core=0.0, init_product=10_000.0, **NO_COSTS)
    demand = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    rho = np.array([0.5, 0.25, 0.1, 0.2, 1.0])
    scenario = Scenario(params, RegimeSchedule.constant(Regime()), demand, rho)
    out = rollout(ScenarioBatch.from_scenarios([scenario], dtype), OpenLoop(torch.zeros(1, 5, 6, dtype=dtype)),
                  None, Simulator(params, dtype))
    # C accumulates (no core is processed): 0.5*100, +0.25*100, +0.1*10, +0.2*20, +1.0*30
    expected = np.cumsum([50.0, 25.0, 1.0, 4.0, 30.0])
    np.testing.assert_allclose(out.stocks[0, :, 3].numpy(), expected, **tol(dtype))
    np.testing.assert_allclose(out.sales[0].numpy(), demand, **tol(dtype))


# --- each cost term alone -----------------------------------------------------------------

# (cost term, the one non-zero parameter, action, regime kwargs, expected cost by hand)
COST_CASES = [
    ("virgin", {"cost_virgin": 3.0}, dict(o=500), {}, 3.0 * 500),
    ("carbon", {}, dict(o=500), dict(tau=250.0), 250 * 6.0 / 1000 * 500),  # tau EUR/t * e_v kg/kg * o kg
    ("produce", {"cost_produce": 2.0}, dict(u_v=300, u_r=100), {}, 2.0 * (300 + 100) / 2),  # c_p * q
    ("disassemble", {"cost_disassemble": 6.0}, dict(g=40), {}, 6.0 * 40),
    ("refurbish", {"cost_refurbish": 7.0}, dict(f=30), {}, 7.0 * 30),
    ("dispose", {"cost_dispose": 0.5}, dict(w=60), {}, 0.5 * 60),
    ("landfill_tax", {}, dict(w=60), dict(lam=12.0), 12.0 * 60),
    # holding on the END-of-period state (event 6): V 1000 - 300 = 700
    ("hold_virgin", {"hold_virgin": 0.01}, dict(u_v=300), {}, 0.01 * 700),
    # M 200 - 100 + 0.8*2*40 = 164 (the disassembly yield of this period is held)
    ("hold_recycled", {"hold_recycled": 0.01}, dict(u_r=100, g=40), {}, 0.01 * 164),
    # P 500 - sales 450 (backlog 50 + demand 400) + q 200 + 0.7*30 = 271
    ("hold_product", {"hold_product": 0.2}, dict(u_v=400, f=30), {}, 0.2 * 271),
    # C 100 - (40 + 30 + 10) = 20
    ("hold_core", {"hold_core": 0.05}, dict(g=40, f=30, w=10), {}, 0.05 * 20),
    ("backlog", {"backlog_cost": 5.0}, {}, {}, 0.0),  # demand met from P: no backlog
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("term, coefficient, action, regime, expected", COST_CASES, ids=[c[0] for c in COST_CASES])
def test_each_cost_term_alone(dtype, term, coefficient, action, regime, expected):
    sim = Simulator(Params(**{**NO_COSTS, **coefficient}), dtype)
    _, step = sim.execute(make_state(dtype), act(dtype, **action), torch.tensor([400.0], dtype=dtype),
                          regime_row(dtype, **regime))
    assert_close(step.terms[term], expected, dtype)
    assert_close(step.cost, expected, dtype)
    for other in COST_TERMS:
        if other != term:
            assert float(step.terms[other][0]) == 0.0, other


@pytest.mark.parametrize("dtype", DTYPES)
def test_backlog_cost_on_end_of_period_backlog(dtype):
    sim = Simulator(Params(**{**NO_COSTS, "backlog_cost": 5.0}), dtype)
    _, step = sim.execute(make_state(dtype, P=100.0), act(dtype, u_v=2000), torch.tensor([400.0], dtype=dtype),
                          regime_row(dtype))
    # wanted 450, sold 100: backlog 350 at the end of the period despite q = 1000 produced
    assert_close(step.terms["backlog"], 5.0 * 350, dtype)


# --- batches, dtypes, gradients -----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_shapes_and_rows_independent(dtype):
    scenarios = [draw_scenario(s, Regime(carbon_tax=50.0)) for s in (1, 2, 3)]
    batch = ScenarioBatch.from_scenarios(scenarios, dtype)
    assert batch.demand.shape == (3, 52) and batch.regime.shape == (3, 52, 5) and batch.demand.dtype == dtype
    gen = torch.Generator().manual_seed(0)
    actions = torch.rand(3, 52, 6, generator=gen, dtype=dtype) * torch.tensor([2000, 900, 100, 50, 30, 50], dtype=dtype)
    out = rollout(batch, OpenLoop(actions), None, Simulator(Params(), dtype))
    assert out.cost.shape == (3, 52) and out.stocks.shape == (3, 52, 5) and out.executed.shape == (3, 52, 6)
    assert out.total_cost.shape == (3,) and out.cost.dtype == dtype
    assert all(v.shape == (3, 52) for v in out.terms.values())
    summed = sum(out.terms.values())
    np.testing.assert_allclose(summed.numpy(), out.cost.numpy(), rtol=1e-5 if dtype == torch.float32 else 1e-12)
    # Each row equals that scenario simulated alone.
    single = rollout(ScenarioBatch.from_scenarios(scenarios[1:2], dtype), OpenLoop(actions[1:2]), None,
                     Simulator(Params(), dtype))
    np.testing.assert_allclose(single.cost[0].numpy(), out.cost[1].numpy(), rtol=1e-6)


def test_float32_and_float64_agree():
    scenario = draw_scenario(7, Regime(recycled_content_min=0.1))
    actions = torch.full((1, 52, 6), 0.0, dtype=torch.float64)
    actions[..., 0], actions[..., 1], actions[..., 2], actions[..., 3] = 1800.0, 1700.0, 190.0, 60.0
    costs = {}
    for dtype in DTYPES:
        out = rollout(ScenarioBatch.from_scenarios([scenario], dtype), OpenLoop(actions.to(dtype)), None,
                      Simulator(Params(), dtype))
        costs[dtype] = float(out.total_cost[0])
    assert costs[torch.float32] == pytest.approx(costs[torch.float64], rel=1e-5)


def test_gradient_of_episode_cost_matches_finite_differences():
    """d(episode cost)/d(actions) flows through stocks, sales and the pipeline (float64)."""
    params = Params(horizon=6)
    scenario = draw_scenario(11, Regime(carbon_tax=80.0, landfill_tax=5.0), params)
    batch = ScenarioBatch.from_scenarios([scenario], torch.float64)
    sim = Simulator(params, torch.float64)
    gen = torch.Generator().manual_seed(3)
    # Interior actions (away from the kink of min(P, B + d)): product stays scarce in some periods.
    base = torch.tensor([1500.0, 900.0, 150.0, 40.0, 20.0, 30.0], dtype=torch.float64)
    actions = (base * (0.5 + torch.rand(1, 6, 6, generator=gen, dtype=torch.float64))).requires_grad_(True)

    def episode_cost(a):
        return rollout(batch, OpenLoop(a), None, sim).total_cost.sum()

    episode_cost(actions).backward()
    grad = actions.grad.clone()
    assert grad.abs().sum() > 0
    eps = 1e-3
    for t, i in [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 1), (2, 0)]:
        bump = torch.zeros_like(actions)
        bump[0, t, i] = eps
        with torch.no_grad():
            fd = (episode_cost(actions + bump) - episode_cost(actions - bump)) / (2 * eps)
        assert float(grad[0, t, i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-6), (t, i)
    # An order placed at t = 0 is paid (3 EUR/kg + tax) and held from t = L_v = 2 on at 0.01/kg.
    assert float(grad[0, 0, 0]) == pytest.approx(3.0 + 80 * 6 / 1000 + 0.01 * (6 - 2), rel=1e-9)


# --- scenario files -----------------------------------------------------------------------

def test_scenario_json_round_trip_is_exact(tmp_path):
    schedule = RegimeSchedule.from_list([
        {"start": 0, "recycled_content_min": 0.1},
        {"start": 20, "recycled_content_min": 0.2, "carbon_tax": 100.0, "emission_cap": 25000.0},
    ])
    scenario = draw_scenario(42, schedule, Params(cost_virgin=3.25, horizon=52))
    path = tmp_path / "s.json"
    scenario.to_json(path)
    back = Scenario.from_json(path)
    assert back.params == scenario.params and back.schedule == scenario.schedule
    assert np.array_equal(back.demand, scenario.demand) and np.array_equal(back.return_frac, scenario.return_frac)
    assert back.to_json() == scenario.to_json()
    # Simulating both gives bit-identical costs.
    actions = torch.full((1, 52, 6), 100.0, dtype=torch.float64)
    costs = [rollout(ScenarioBatch.from_scenarios([s], torch.float64), OpenLoop(actions), None,
                     Simulator(s.params, torch.float64)).total_cost for s in (scenario, back)]
    assert torch.equal(costs[0], costs[1])


def _bad(mutate):
    data = draw_scenario(5).to_dict()
    mutate(data)
    return json.dumps(data)


def _set(path, value):
    def mutate(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


BAD_SCENARIOS = [
    ("malformed", lambda: '{"params": {}, "demand": [1, 2', "malformed JSON"),
    ("unknown key", lambda: _bad(_set(["weather"], 1)), "weather"),
    ("unknown params key", lambda: _bad(_set(["params", "cost_teleport"], 1.0)), "params.cost_teleport"),
    ("bad params value", lambda: _bad(_set(["params", "mass"], -2.0)), "params.mass"),
    ("demand too short", lambda: _bad(lambda d: d["demand"].pop()), "demand"),
    ("return_frac too long", lambda: _bad(lambda d: d["return_frac"].append(0.2)), "return_frac"),
    ("NaN demand", lambda: _bad(lambda d: d["demand"].__setitem__(3, float("nan"))), "demand[3]"),
    ("NaN param", lambda: _bad(_set(["params", "hold_core"], float("nan"))), "params.hold_core"),
    ("infinite return", lambda: _bad(lambda d: d["return_frac"].__setitem__(1, float("inf"))), "return_frac[1]"),
    ("negative demand", lambda: _bad(lambda d: d["demand"].__setitem__(7, -1.0)), "demand[7]"),
    ("return_frac > 1", lambda: _bad(lambda d: d["return_frac"].__setitem__(2, 1.5)), "return_frac[2]"),
    ("regime out of range", lambda: _bad(_set(["regimes", 0, "recycled_content_min"], 0.99)),
     "recycled_content_min"),
    ("regime unknown field", lambda: _bad(_set(["regimes", 0, "sugar_tax"], 1.0)), "sugar_tax"),
    ("regime NaN tax", lambda: _bad(_set(["regimes", 0, "carbon_tax"], float("nan"))), "carbon_tax"),
    ("schedule not starting at 0", lambda: _bad(_set(["regimes", 0, "start"], 3)), "start"),
    ("missing demand", lambda: _bad(lambda d: d.pop("demand")), "demand"),
    ("string in demand", lambda: _bad(lambda d: d["demand"].__setitem__(0, "many")), "demand"),
    ("wrong model", lambda: _bad(_set(["model"], "CLSC-2")), "model"),
]


@pytest.mark.parametrize("text, field", [(c[1], c[2]) for c in BAD_SCENARIOS], ids=[c[0] for c in BAD_SCENARIOS])
def test_bad_scenario_files_are_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "bad.json"
    path.write_text(text())
    with pytest.raises(ScenarioError) as err:
        Scenario.from_json(path)
    assert field in str(err.value)
    assert isinstance(err.value, ValueError)


# --- a regime switch inside the episode ------------------------------------------------------

@pytest.mark.parametrize("path", ["training", "deployment"])
def test_mid_episode_regime_switch_is_enforced_from_its_first_period(path):
    """Schedule: r = 0.1 until period k-1, then r = 0.3 with a carbon tax and a landfill tax.
    A raw action meeting only the old mandate is executed unchanged before k and corrected
    by the safety layer from k on; the taxes are charged from k on, not before."""
    from moca import safety

    k = 4
    params = Params(horizon=8)
    schedule = RegimeSchedule.from_list([
        {"start": 0, "recycled_content_min": 0.1},
        {"start": k, "recycled_content_min": 0.3, "carbon_tax": 200.0, "landfill_tax": 20.0},
    ])
    scenario = draw_scenario(1000, schedule, params)
    raw = torch.tensor([1500.0, 1800.0, 200.0, 100.0, 0.0, 100.0], dtype=torch.float64).expand(1, 8, 6).clone()

    if path == "training":
        project = safety.project_batch
    else:
        def project(raw_t, state, regime_t, p):  # the deployment path, one action at a time
            return torch.tensor(np.stack([
                safety.project(raw_t[i].numpy(), float(state.virgin[i]), float(state.recycled[i]),
                               float(state.cores[i]), regime_t[i].numpy(), p) for i in range(raw_t.shape[0])]))

    out = rollout(ScenarioBatch.from_scenarios([scenario], torch.float64), OpenLoop(raw), project,
                  Simulator(params, torch.float64))
    executed = out.executed[0]
    u_v, u_r = executed[:, 1], executed[:, 2]
    share = u_r / (u_v + u_r)
    # Before k: the raw action keeps the old rule and is executed as given (share 0.1).
    assert torch.equal(executed[:k], raw[0, :k])
    # From k: the new mandate holds (row 6 within the spec's tolerance), the old share is gone.
    assert bool((u_r[k:] >= 0.3 * (u_v[k:] + u_r[k:]) - 1e-6).all())
    assert float(share[k]) == pytest.approx(0.3, abs=1e-6)
    # Taxes: 0 before k; tau e_v / 1000 * o and lambda * w from k on, on the executed action.
    carbon, landfill = out.terms["carbon"][0], out.terms["landfill_tax"][0]
    assert float(carbon[:k].abs().max()) == 0.0 and float(landfill[:k].abs().max()) == 0.0
    np.testing.assert_allclose(carbon[k:].numpy(), 200.0 * 6.0 / 1000.0 * executed[k:, 0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(landfill[k:].numpy(), 20.0 * executed[k:, 5].numpy(), rtol=1e-12)
    assert float(carbon[k]) > 0 and float(landfill[k]) > 0
    # Violations of the executed actions, each period under its own regime: none.
    regime = torch.as_tensor(scenario.regime_table())
    avail = out.available[0]
    assert safety.violations(executed, avail[:, 0], avail[:, 1], avail[:, 2], regime, params).sum() == 0


def test_a_batch_or_simulator_of_the_other_world_is_refused_naming_the_entry():
    """ScenarioBatch.from_scenarios took a CLSC-2 scenario (and rollout then failed on a
    missing attribute inside pydantic); a scenario instead of a list was 'not subscriptable'."""
    from moca.scenario import Params2, draw_scenario2
    from moca.sim2 import ScenarioBatch2, Simulator2

    one, other = draw_scenario(1), draw_scenario2(1)
    with pytest.raises(ScenarioError, match=r"scenarios\[1\]: expected a Scenario, got Scenario2 \(the other world's"):
        ScenarioBatch.from_scenarios([one, other])
    with pytest.raises(ScenarioError, match=r"scenarios\[0\]: expected a Scenario2, got Scenario"):
        ScenarioBatch2.from_scenarios([one])
    with pytest.raises(ScenarioError, match="scenarios: expected a list of Scenario, got Scenario"):
        ScenarioBatch.from_scenarios(one)
    with pytest.raises(ScenarioError, match="params: expected a Params or an object of its fields, got Params2"):
        Simulator(Params2())
    with pytest.raises(ScenarioError, match="params: expected a Params2 or an object of its fields, got Params"):
        Simulator2(Params())
    assert Simulator({"horizon": 5}).params.horizon == 5  # an object of fields: the changes, as the envs take
    # a regime row out of range was simulated as given (a NaN tax: every cost NaN)
    batch = ScenarioBatch.from_scenarios([one])
    for row, name in (([2.0, 0, np.inf, 0, 0], "recycled_content_min"), ([0.1, np.nan, np.inf, 0, 0], "carbon_tax"),
                      ([0.1, 0, np.inf, -1.0, 0], "landfill_tax")):
        with pytest.raises(ScenarioError, match=f"regime {name}="):
            batch.with_regime(np.array(row))
    with pytest.raises(ScenarioError, match=r"regime: expected a row of 5 fields"):
        batch.with_regime(np.zeros(3))
    assert torch.equal(batch.with_regime(np.array([0.2, 50.0, np.inf, 0, 0])).regime[0, 0],
                       torch.tensor([0.2, 50.0, np.inf, 0, 0], dtype=torch.float32))


def test_bad_dtype_batch_size_and_action_shape_are_refused_by_name():
    """dtype="float64" (a string) and initial_state(-1) / (2.5) failed inside torch.full;
    raw actions of 5 columns with project=None failed unpacking in the step ("not enough
    values to unpack"), and a [1, 6] was broadcast to every scenario of the batch."""
    with pytest.raises(ScenarioError, match=r"dtype: 'float64' is not torch.float32 or torch.float64"):
        Simulator(dtype="float64")
    for bad, words in ((-1, "batch_size: expected a number of scenarios >= 0, got -1"),
                       (2.5, "batch_size: expected a whole number of scenarios, got float 2.5"),
                       (True, "batch_size: expected a whole number of scenarios, got bool")):
        with pytest.raises(ScenarioError, match=re.escape(words)):
            Simulator().initial_state(bad)
    assert Simulator().initial_state(np.int64(3)).virgin.shape == (3,)
    scenarios = [draw_scenario(1), draw_scenario(2)]
    batch = ScenarioBatch.from_scenarios(scenarios)
    T = batch.horizon
    with pytest.raises(ScenarioError, match=re.escape(f"actions: expected shape [2, {T}, 6], got [2, {T}, 5]")):
        rollout(batch, OpenLoop(torch.zeros(2, T, 5)), None)

    class Fixed:
        """Actions of ``shape`` from period ``at`` on, of the right shape before it."""

        def __init__(self, shape, at=0):
            self.shape, self.at = shape, at

        def reset(self, batch):
            pass

        def act(self, obs):
            return torch.zeros(self.shape if obs.t >= self.at else (2, 6))

    for shape in ((2, 5), (2, 7), (1, 6)):
        with pytest.raises(ScenarioError, match=re.escape(f"actions: expected shape [B, 6] = [2, 6] per period "
                                                          f"(project=None executes the policy's actions as given), "
                                                          f"got {list(shape)}")):
            rollout(batch, Fixed(shape), None)
    # a policy whose shape goes wrong later in the episode (was checked at the first period only)
    for shape in ((2, 5), (1, 6)):
        with pytest.raises(ScenarioError, match=re.escape(f"got {list(shape)}")):
            rollout(batch, Fixed(shape, at=2), None)
    ok = rollout(batch, Fixed((2, 6)), None)
    assert torch.equal(ok.total_cost, rollout(batch, OpenLoop(torch.zeros(2, T, 6)), None).total_cost)


def test_a_regime_row_with_a_none_cap_is_no_cap():
    """Regime.from_row reads a cap of None as no cap; the row form refused the same row
    with "emission_cap=nan", a value never written (numpy reads None as NaN)."""
    batch = ScenarioBatch.from_scenarios([draw_scenario(1)])
    assert torch.equal(batch.with_regime([0.2, 50.0, None, 0, 0]).regime,
                       batch.with_regime([0.2, 50.0, math.inf, 0, 0]).regime)
    with pytest.raises(ScenarioError, match=re.escape("regime carbon_tax=None is not a number")):
        batch.with_regime([0.2, None, None, 0, 0])
