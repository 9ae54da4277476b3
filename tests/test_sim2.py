"""The CLSC-2 simulator against a three-period episode computed by hand.

Every event of docs/MODEL-2.md appears: the virgin order and the market purchase
arriving, graded returns with scrap landfilled at once, a window reset of U_v/U_r,
execution, sales and lost sales, end-of-period yields, and the period cost on the
end-of-period state. The actions are feasible, so they are executed as given.
"""

import numpy as np
import pytest
import torch

from moca import clsc2
from moca.regime import Regime, RegimeSchedule
from moca.scenario import Params2, Scenario2, draw_scenarios2
from moca.sim2 import OpenLoop2, ScenarioBatch2, Simulator2, rollout2

PARAMS = Params2(horizon=3, lead_virgin=2, lag_return=2, init_virgin=100, init_recycled=50, init_product=30,
                 init_core_a=10, init_core_b=8, init_pipeline=40, init_market=5)
ACTIONS = np.array([
    [30, 20, 20, 10, 4, 2, 3, 1, 2],
    [0, 0, 10, 0, 0, 0, 0, 0, 0],  # the supplier is down: nothing ordered
    [0, 0, 0, 0, 0, 0, 0, 0, 0],
], dtype=float)


def hand_scenario(schedule=None):
    history = np.zeros(52)
    history[-2:] = [20.0, 10.0]  # s_{-2}, s_{-1}
    return Scenario2(
        params=PARAMS,
        schedule=schedule or RegimeSchedule.constant(Regime(carbon_tax=100.0, landfill_tax=10.0,
                                                            recycled_content_window=2)),
        demand=np.array([25.0, 50.0, 5.0]), return_frac=np.array([0.5, 0.2, 0.1]),
        grades=np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]),
        supply_up=np.array([1.0, 0.0, 1.0]), market_avail=np.array([1.0, 0.5, 1.0]), demand_history=history)


def run(scenario, actions=ACTIONS, dtype=torch.float64):
    batch = ScenarioBatch2.from_scenarios([scenario], dtype=dtype)
    return rollout2(batch, OpenLoop2(torch.as_tensor(actions[None], dtype=dtype)), project=None)


@pytest.fixture(scope="module")
def episode():
    return run(hand_scenario())


def test_arrivals_and_row_inputs_by_hand(episode):
    x = {name: episode.inputs[0, :, i].numpy() for i, name in enumerate(clsc2.ROW_INPUTS)}
    # t=0: V 100 + 40 pipeline; M 50 + 5 bought before t=0; returns 0.5 * 20 = 10 -> A 5, B 3, scrap 2.
    # t=1: V 120 + 40; M 52.8 + 20 bought at t=0; returns 0.2 * 10 = 2 -> A 0.4, B 0.6, scrap 1.
    # t=2: V 150 + 30 ordered at t=0; returns 0.1 * s_0 = 0.1 * 25 = 2.5 all grade A.
    assert x["virgin"] == pytest.approx([140, 160, 180])
    assert x["recycled"] == pytest.approx([55, 72.8, 72.8])
    assert x["cores_a"] == pytest.approx([15, 8.4, 10.9])
    assert x["cores_b"] == pytest.approx([11, 6.6, 6.6])
    assert episode.scrap[0].numpy() == pytest.approx([2, 1, 0])
    # Window W = 2: [0, 2) then [2, 3) cut at T; U_v/U_r carry within a window, reset at 2.
    assert x["used_virgin"] == pytest.approx([0, 20, 0]) and x["used_recycled"] == pytest.approx([0, 10, 0])
    assert x["periods_left"] == pytest.approx([1, 0, 0])
    assert x["supply_up"] == pytest.approx([1, 0, 1]) and x["market_avail"] == pytest.approx([1, 0.5, 1])


def test_sales_lost_sales_and_end_states_by_hand(episode):
    # t=0: sales min(30, 25); P 5 + 15 produced + 0.85 * 4 refurbished = 23.4;
    #      M 45 + 2 * (0.9 * 2 + 0.7 * 3) = 52.8; CA 15 - 7 = 8; CB 11 - 5 = 6.
    # t=1: sales min(23.4, 50) = 23.4, lost 26.6; P 0 + 5.  t=2: sales 5 of 5.
    assert episode.sales[0].numpy() == pytest.approx([25, 23.4, 5])
    assert episode.lost[0].numpy() == pytest.approx([0, 26.6, 0])
    assert episode.stocks[0].numpy() == pytest.approx(np.array([
        [120, 52.8, 23.4, 8, 6],
        [150, 72.8, 5, 8.4, 6.6],
        [180, 72.8, 0, 10.9, 6.6],
    ]))


def test_every_cost_term_by_hand(episode):
    terms = {k: v[0].numpy() for k, v in episode.terms.items()}
    assert set(terms) == set(clsc2.COST_TERMS)
    expected = {
        "virgin": [3.0 * 30, 0, 0], "carbon": [100 * 6 / 1000 * 30, 0, 0], "market": [4.0 * 20, 0, 0],
        "produce": [1.0 * 30, 1.0 * 10, 0], "refurbish": [7.0 * 4, 0, 0], "disassemble": [6.0 * 5, 0, 0],
        # disposal and landfill tax: w_A + w_B + scrap = 1 + 2 + 2, then the scrap 1 alone
        "dispose": [0.5 * 5, 0.5 * 1, 0], "landfill_tax": [10.0 * 5, 10.0 * 1, 0],
        "hold_virgin": [1.2, 1.5, 1.8], "hold_recycled": [0.528, 0.728, 0.728], "hold_product": [4.68, 1.0, 0],
        "hold_core": [0.7, 0.75, 0.875], "lost_sales": [0, 20 * 26.6, 0],
    }
    for name, values in expected.items():
        assert terms[name] == pytest.approx(values), name
    assert episode.cost[0].numpy() == pytest.approx([335.608, 556.478, 3.403])
    assert episode.cost[0].numpy() == pytest.approx(sum(terms.values()))
    # emissions: 6 * 30 + 1 * 20 + (2 / 2) * 30 + 1 * 2 * (0.9 * 2 + 0.7 * 3), then 10 kg used
    assert episode.emissions[0].numpy() == pytest.approx([237.8, 10.0, 0.0])


def test_regime_change_starts_a_window():
    schedule = RegimeSchedule.from_list([{"start": 0, "recycled_content_window": 52},
                                         {"start": 1, "recycled_content_min": 0.1, "recycled_content_window": 52}])
    episode = run(hand_scenario(schedule))
    used_virgin = episode.inputs[0, :, clsc2.ROW_INPUTS.index("used_virgin")].numpy()
    assert used_virgin == pytest.approx([0, 0, 10])  # reset at the change (t=1), carried to t=2
    assert episode.inputs[0, :, clsc2.ROW_INPUTS.index("periods_left")].numpy() == pytest.approx([0, 1, 0])


def test_float32_matches_float64_and_batches_are_independent():
    scenarios = draw_scenarios2(3, params=Params2(horizon=12))
    rng = np.random.default_rng(0)
    actions = rng.uniform(0, 1, size=(3, 12, 9)) * clsc2.action_scale(scenarios[0].params) * 0.05
    batch64 = ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64)
    batch32 = ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float32)
    full = rollout2(batch64, OpenLoop2(torch.as_tensor(actions)), None)
    single = rollout2(ScenarioBatch2.from_scenarios(scenarios[1:2], dtype=torch.float64),
                      OpenLoop2(torch.as_tensor(actions[1:2])), None)
    assert torch.allclose(full.cost[1], single.cost[0], rtol=1e-12)
    low = rollout2(batch32, OpenLoop2(torch.as_tensor(actions, dtype=torch.float32)), None)
    assert torch.allclose(low.cost.double(), full.cost, rtol=1e-4)


def test_cost_is_differentiable_through_sales():
    scenario = hand_scenario()
    actions = torch.as_tensor(ACTIONS[None], dtype=torch.float64).requires_grad_(True)
    result = rollout2(ScenarioBatch2.from_scenarios([scenario], torch.float64), OpenLoop2(actions), None)
    result.total_cost.sum().backward()
    grad = actions.grad[0]
    # One more kg of virgin used at t=0 makes 0.5 more products at t=1, when sales were short:
    # it saves 0.5 * 20 EUR of lost sales, costs 1 EUR to produce and changes holding.
    assert torch.isfinite(grad).all()
    assert grad[0, clsc2.UV] < -5.0
    # A kg ordered at t=0 costs 3.6 EUR and is held (0.01/kg) at t=2 after it arrives.
    assert grad[0, clsc2.O].item() == pytest.approx(3.6 + 0.01)


def test_rollout_through_the_safety_layer_breaks_no_row_and_differentiates():
    from moca.projection import project2_batch, violations2
    from moca.regime import TASKS_2

    scenarios = draw_scenarios2(3, TASKS_2["T2"], Params2(horizon=16))
    batch = ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64)
    rng = np.random.default_rng(3)
    raw = torch.as_tensor(rng.uniform(0, 1.2, (3, 16, 9)) * clsc2.action_scale(scenarios[0].params))
    raw.requires_grad_(True)
    result = rollout2(batch, OpenLoop2(raw), project2_batch)
    assert not torch.allclose(result.executed, raw)  # the raw actions break rows; the layer moved them
    count = sum(violations2(result.executed[:, t].detach(), dict(zip(clsc2.ROW_INPUTS, result.inputs[:, t].unbind(-1))),
                            batch.regime[:, t], scenarios[0].params) for t in range(16))
    assert count == 0
    result.total_cost.sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
