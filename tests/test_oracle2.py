"""CLSC-2's hindsight LP: a hand-checked case, its plan replayed through the simulator and
the safety layer, every row kept, and the window form (rolling-horizon MPC) from a
mid-episode state."""

from __future__ import annotations

import math

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moca.oracle2 import Window2, solve_oracle2, solve_window2, window2_at
from moca.projection import project2, violations2
from moca.regime import TASKS_2, Regime, RegimeSchedule, ScheduledRegime
from moca.scenario import Params2, draw_scenario2
from moca.sim2 import simulate_actions2
from moca.world import CLSC2_INPUTS

P2 = Params2()


def _two_periods(window: int) -> Window2:
    """50 units wanted in period 1, none in stock; 100 kg virgin and 30 kg recycled on hand,
    mandate r = 0.5; nothing arrives but what the plan buys."""
    return Window2(stocks=[100.0, 30.0, 0.0, 0.0, 0.0], virgin_arrivals=[0.0, 0.0], market_arrival=0.0,
                   core_returns=[0.0, 0.0], return_frac=[0.0, 0.0], grades=[[0.3, 0.4, 0.3]] * 2,
                   demand=[0.0, 50.0], supply_up=[1.0, 1.0], market_avail=[1.0, 1.0],
                   regime=[[0.5, 0.0, math.inf, 0.0, 0.0]] * 2,
                   periods_left=[0, 0] if window == 1 else [1, 0],
                   window_start=[True, True] if window == 1 else [True, False])


def test_hand_checked_two_period_case():
    # W = 1: each period settles its own mandate, so period 0 can use at most 30 kg virgin
    # beside the 30 kg recycled: 30 units made (60 EUR), held (6 EUR), sold; 20 lost (400
    # EUR); 70 kg virgin held twice (0.7 + 0.7 EUR).
    one = solve_window2(P2, _two_periods(1))
    assert one.cost == pytest.approx(467.4, abs=1e-6)
    np.testing.assert_allclose(one.actions[0, 2:4], [30.0, 30.0], atol=1e-7)
    # W = 2: the window settles at period 1, so period 0 makes all 50 units from 70 kg
    # virgin + 30 kg recycled, buys 40 kg on the market (160 EUR) and uses it in period 1
    # (40 kg -> 20 more units): 100 + 160 + 10 (P) + 0.3 (V), then 40 + 4 (P) + 0.3 (V).
    two = solve_window2(P2, _two_periods(2))
    assert two.cost == pytest.approx(314.6, abs=1e-6)
    np.testing.assert_allclose(two.actions[:, [1, 2, 3]], [[40.0, 70.0, 30.0], [0.0, 0.0, 40.0]], atol=1e-6)
    assert two.sales.tolist() == pytest.approx([0.0, 50.0])


def _schedules():
    yield "T1", TASKS_2["T1"]
    yield "T3", TASKS_2["T3"]
    yield "changes", RegimeSchedule(entries=(
        ScheduledRegime(start=0, recycled_content_min=0.15, recycled_content_window=13, landfill_tax=30.0),
        ScheduledRegime(start=20, recycled_content_min=0.3, carbon_tax=200.0, recovery_target=0.6,
                        recycled_content_window=26),
        ScheduledRegime(start=40, recycled_content_min=0.05, emission_cap=60000.0, recycled_content_window=4)))


@pytest.mark.parametrize("name,regime", list(_schedules()))
def test_plan_replays_to_the_oracle_cost_and_keeps_every_row(name, regime):
    scenario = draw_scenario2(3, regime)
    result = solve_oracle2(scenario)
    assert result.status == "optimal" and result.plan.shape == (scenario.horizon, 9)
    replay = simulate_actions2(scenario, result.plan)
    assert replay["violations"] == 0
    # the executed actions are the plan's: it already keeps every row
    executed = np.array([p["action"] for p in replay["periods"]])
    np.testing.assert_allclose(executed / P2.action_scale, result.plan / P2.action_scale, atol=1e-6)
    assert result.withheld.max() < 1e-6
    assert replay["total_cost"] == pytest.approx(result.oracle_cost, rel=1e-9)
    # every row, by the LP's own stocks (post-arrival inputs rebuilt from them)
    inputs = _inputs_from_plan(scenario, result)
    table = scenario.regime_table()
    for t in range(scenario.horizon):
        assert violations2(result.plan[t], inputs[t], table[t], P2) == 0
        np.testing.assert_allclose(project2(result.plan[t], inputs[t], table[t], P2), result.plan[t])


def test_a_plan_whose_window_counters_carry_round_off_replays_unchanged():
    """A probe's regime: by period 12 the counters' round-off broke row 6b by 2e-13 kg, and
    the layer, asked to keep the window rows with no excess at all, found no such action and
    executed the safe one: the replay cost 0.64% more than the LP, nothing withheld."""
    regime = Regime(recycled_content_min=0.3799737994301587, carbon_tax=454.4645288531739,
                    landfill_tax=84.53299917634641, recovery_target=0.8727633685515359,
                    recycled_content_window=13)
    scenario = draw_scenario2(46341, regime)
    result = solve_oracle2(scenario)
    replay = simulate_actions2(scenario, result.plan)
    assert result.withheld.max() < 1e-6 and replay["violations"] == 0
    assert replay["corrected_periods"] == 0
    assert replay["total_cost"] == pytest.approx(result.oracle_cost, rel=1e-9)


def test_a_projected_action_keeps_the_window_rows_to_what_later_periods_allow():
    """A probe's chain (rows 6a with coefficients of 4e5, r = 0.95): DAQP's answer broke 6a by
    1.4e-6 kg, accepted by the violation tolerance of a row on 208 kg, and the window's last
    period could then keep 6b by no action (1 violation, every action through the layer)."""
    params = Params2(mass=3.000237034740884, cap_order=291.4105224889783, cap_produce=155540.6746104901,
                     cap_disassemble=167.673182314962, cap_market=13460.00145001243,
                     init_recycled=30.505302717863472)
    regime = Regime(recycled_content_min=0.95, carbon_tax=95.51681804810552, landfill_tax=53.342712549645555,
                    recovery_target=0.0, recycled_content_window=13)
    scenario = draw_scenario2(27594, regime, params)
    replay = simulate_actions2(scenario, solve_oracle2(scenario).plan)
    assert replay["violations"] == 0


def _inputs_from_plan(scenario, result) -> list[dict]:
    """Post-arrival row inputs of each period: end-of-period stocks minus the action's effect."""
    from moca.clsc2 import action_effect
    effect = action_effect(P2)
    left, starts = scenario.periods_left(), scenario.window_starts()
    used_v = used_r = 0.0
    out = []
    for t in range(scenario.horizon):
        a = result.plan[t]
        before = result.stocks[t] - effect @ a
        before[2] += result.sales[t]
        if starts[t]:
            used_v = used_r = 0.0
        out.append(dict(zip(CLSC2_INPUTS, [before[0], before[1], before[3], before[4], used_v, used_r, left[t],
                                           scenario.supply_up[t], scenario.market_avail[t]])))
        used_v, used_r = used_v + a[2], used_r + a[3]
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.0, 0.95), st.floats(0.0, 2000.0), st.one_of(st.none(), st.floats(1.0, 6e4)), st.floats(0.0, 100.0),
       st.floats(0.0, 1.0), st.integers(1, 104), st.integers(0, 10_000))
@example(8.72950835282024e-10, 0.0, None, 0.0, 0.0, 1, 0)  # a mandate below HiGHS's default small_matrix_value
def test_oracle_plan_keeps_every_row_over_the_regime_space(r, tau, cap, lam, kappa, window, seed):
    """Any regime of the spec's ranges (a tiny emission cap included): the LP is feasible,
    its plan breaks no row or settlement when replayed, and replaying it costs no less
    than the oracle (exactly as much where no sale is withheld)."""
    regime = Regime(recycled_content_min=r, carbon_tax=tau, emission_cap=cap, landfill_tax=lam,
                    recovery_target=kappa, recycled_content_window=window)
    scenario = draw_scenario2(seed, regime, params=Params2(horizon=12))
    result = solve_oracle2(scenario)
    replay = simulate_actions2(scenario, result.plan)
    assert replay["violations"] == 0
    assert replay["total_cost"] >= result.oracle_cost * (1 - 1e-9) - 1e-6
    if result.withheld.max() < 1e-6:
        assert replay["total_cost"] == pytest.approx(result.oracle_cost, rel=1e-7)


def test_soft_safety_stock_of_the_mpc_window():
    """A priced safety stock makes the window hold more product (and costs the spec's cost
    without the penalty)."""
    scenario = draw_scenario2(4, TASKS_2["T1"])
    p = P2
    window = window2_at(scenario, 0, 13, stocks=[4000.0, 500.0, 1000.0, 100.0, 100.0],
                        pipeline=[2000.0] * p.lead_virgin, market_in=0.0, sales_history=scenario.presales(),
                        used=(0.0, 0.0))
    plain = solve_window2(p, window)
    buffered = solve_window2(p, dataclasses.replace(window, safety_stock=300.0, safety_penalty=50.0))
    assert buffered.stocks[:-1, 2].mean() > plain.stocks[:-1, 2].mean() + 100.0
    assert buffered.cost >= plain.cost


def test_exact_sales_replays_where_the_relaxation_withholds():
    """Under a tight emission cap the LP holds sales back (to time the cores' return): its
    cost is then a strict lower bound; exact_sales gives the best plan that replays exactly."""
    scenario = draw_scenario2(1, Regime(recycled_content_min=0.3, emission_cap=20000.0, recovery_target=0.5,
                                        recycled_content_window=13, landfill_tax=20.0))
    relaxed = solve_oracle2(scenario)
    assert relaxed.withheld.max() > 1.0
    assert simulate_actions2(scenario, relaxed.plan)["total_cost"] > relaxed.oracle_cost
    exact = solve_oracle2(scenario, exact_sales=True)
    assert exact.withheld.max() < 1e-6
    assert exact.oracle_cost >= relaxed.oracle_cost - 1e-6
    replay = simulate_actions2(scenario, exact.plan)
    assert replay["violations"] == 0
    assert replay["total_cost"] == pytest.approx(exact.oracle_cost, rel=1e-7)


def test_the_commands_say_where_the_lp_withholds_sales_and_exact_sales_gives_the_reachable_bound(tmp_path):
    """Under a landfill tax of 100 EUR/core the LP withholds 9,224 units of sales on seed 1001
    (their returns would go to the landfill), 4.4% below the best reachable cost, and every
    score on such a scenario read low without a word. moca oracle and moca evaluate now say
    so (either world), and moca oracle --exact-sales solves the reachable bound."""
    import json

    from moca.evaluation import withheld_sales

    from _cli import run_in_process as run

    (tmp_path / "landfill.yaml").write_text("landfill_tax: 100\n")
    made = run("scenario", "new", "--model", "CLSC-2", "--regime", tmp_path / "landfill.yaml", "--seed", 1001,
               "-o", tmp_path / "s.json")
    assert made.returncode == 0, made.stderr
    relaxed = run("oracle", "--scenario", tmp_path / "s.json", "--json")
    assert relaxed.returncode == 0 and "the plan sells 9,224 units less than it could" in relaxed.stderr
    exact = run("oracle", "--scenario", tmp_path / "s.json", "--json", "--exact-sales")
    assert exact.returncode == 0 and "sells" not in exact.stderr, exact.stderr
    told = run("oracle", "--scenario", tmp_path / "s.json", "--exact-sales").stdout  # says which bound it prints
    assert "oracle cost, every sale made (--exact-sales, a MIP) 1,268,94" in " ".join(told.split())
    lp, mip = json.loads(relaxed.stdout)["oracle_cost"], json.loads(exact.stdout)["oracle_cost"]
    assert lp < mip * (1 - 0.04)
    (tmp_path / "exact.json").write_text(exact.stdout)  # its plan replays to its cost
    replay = run("simulate", "--scenario", tmp_path / "s.json", "--actions", tmp_path / "exact.json", "--json")
    assert json.loads(replay.stdout)["total_cost"] == pytest.approx(mip, rel=1e-6)
    from moca.scenario import load_scenario

    scenario = load_scenario(tmp_path / "s.json")
    assert withheld_sales([draw_scenario2(1000, TASKS_2["T1"]), scenario])[::2] == (1, [1])  # (count, which)
    # CLSC-1, T2 seed 1001 (0.5% apart, test_oracle.py): evaluate warns and records it
    evaluated = run("evaluate", "--policy", "threshold", "--regime", "T2", "--scenarios", 2, "--seed", 1000, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    held = json.loads(evaluated.stdout)["oracle_withheld_sales"]
    assert held["scenarios"] == 1 and held["units"] == pytest.approx(524.1, abs=0.5)
    warning = " ".join(evaluated.stderr.split())
    assert "the hindsight LP sells 524 units less than it could on 1 of 2 scenarios (seed 1001;" in warning
    # the way to the reachable bound of that seed (it said "--scenario FILE" where the user had none)
    assert "moca scenario new --seed 1001 -o s.json (with this command's --regime, --params and --model), then " \
        "moca oracle --scenario s.json --exact-sales" in warning
    on_file = run("evaluate", "--policy", "threshold", "--model", "CLSC-2", "--scenario", tmp_path / "s.json")
    assert f"({tmp_path / 's.json'};" in " ".join(on_file.stderr.split())
    assert f"moca oracle --scenario {tmp_path / 's.json'} --exact-sales" in " ".join(on_file.stderr.split())


def test_window_from_a_mid_episode_state_is_the_rest_of_the_oracle():
    """Bellman: from the oracle's own state at t0 (U_v, U_r carried mid-window), the window
    LP over [t0, T) costs exactly the oracle's remaining period costs."""
    scenario = draw_scenario2(5, Regime(recycled_content_min=0.25, recycled_content_window=13, carbon_tax=50.0))
    result = solve_oracle2(scenario)
    periods = simulate_actions2(scenario, result.plan)["periods"]
    p, t0 = P2, 19  # inside the window [13, 26)
    plan = result.plan
    pipeline = [plan[t0 - p.lead_virgin + i, 0] for i in range(p.lead_virgin)]
    history = result.sales[t0 - p.lag_return:t0]
    used = (plan[13:t0, 2].sum(), plan[13:t0, 3].sum())
    window = window2_at(scenario, t0, 100, stocks=result.stocks[t0 - 1], pipeline=pipeline,
                        market_in=plan[t0 - 1, 1], sales_history=history, used=used)
    assert window.horizon == scenario.horizon - t0
    tail = solve_window2(p, window)
    assert tail.cost == pytest.approx(sum(q["cost"] for q in periods[t0:]), rel=1e-7)


def test_a_forecast_replaces_a_series_and_bad_windows_are_refused():
    scenario = draw_scenario2(2, TASKS_2["T2"])
    p = P2
    start = dict(stocks=[4000.0, 500.0, 1000.0, 100.0, 100.0], pipeline=[2000.0] * p.lead_virgin, market_in=0.0,
                 sales_history=scenario.presales(), used=(0.0, 0.0))
    flat = window2_at(scenario, 0, 13, demand=np.full(13, 900.0), **start)
    assert flat.demand.tolist() == [900.0] * 13 and solve_window2(p, flat).status == "optimal"
    with pytest.raises(ValueError, match="demand: expected 13 finite values"):
        window2_at(scenario, 0, 13, demand=np.full(5, 900.0), **start)
    with pytest.raises(ValueError, match="window.stocks"):
        solve_window2(p, window2_at(scenario, 0, 13, **(start | {"stocks": [-1.0, 0, 0, 0, 0]})))
    with pytest.raises(ValueError, match="pipeline: expected 2 slots"):
        window2_at(scenario, 0, 13, **(start | {"pipeline": [1.0]}))
    with pytest.raises(ValueError, match="unknown series"):
        window2_at(scenario, 0, 13, demnd=np.ones(13), **start)
