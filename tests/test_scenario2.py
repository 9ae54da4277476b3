"""CLSC-2 parameters, scenario draws and the JSON exchange format."""

import json
import math
import re
import warnings

import numpy as np
import pytest

from moca.regime import Regime, RegimeSchedule, TASKS_2, load_regime
from moca.scenario import (HISTORY, Params, Params2, Scenario, Scenario2, ScenarioError, draw_scenario, draw_scenario2,
                           draw_scenarios2, load_actions, load_scenario)


@pytest.fixture(scope="module")
def scenario():
    return draw_scenario2(7, TASKS_2["T2"])


def test_defaults_are_the_documented_ones():
    p = Params2()
    assert (p.yield_refurbish, p.yield_disassembly_a, p.yield_disassembly_b) == (0.85, 0.9, 0.7)
    assert (p.cap_market, p.cost_market, p.emis_market, p.lost_sale_cost) == (800.0, 4.0, 1.0, 20.0)
    assert p.grade_mean == (0.3, 0.45, 0.25) and p.grade_concentration == 30.0
    assert p.action_scale.tolist() == [4000, 800, 3000, 3000, 300, 600, 600, 2000, 2000]
    assert TASKS_2["T3"] == Regime(recycled_content_min=0.2, carbon_tax=100.0, recycled_content_window=52)
    assert load_regime("T1", model="CLSC-2").recycled_content_window == 52
    assert load_regime("T1").recycled_content_window == 1


def test_draw_is_seeded_and_shaped(scenario):
    again = draw_scenario2(7, TASKS_2["T2"])
    for key in ("demand", "demand_history", "return_frac", "grades", "supply_up", "market_avail"):
        assert np.array_equal(getattr(again, key), getattr(scenario, key)), key
    other = draw_scenario2(8, TASKS_2["T2"])
    assert not np.array_equal(other.demand, scenario.demand)
    T = scenario.horizon
    assert scenario.demand.shape == (T,) and scenario.demand_history.shape == (HISTORY,)
    assert scenario.grades.shape == (T, 3) and np.allclose(scenario.grades.sum(1), 1.0)
    assert set(np.unique(scenario.supply_up)) <= {0.0, 1.0} and scenario.supply_up[0] == 1.0
    assert np.all((scenario.market_avail >= 0.2) & (scenario.market_avail <= 1.0))
    assert scenario.model == "CLSC-2"


def test_draw_follows_the_generator_in_distribution():
    # Without noise, jumps or drift the demand is base * (1 + A sin(2 pi (k + phi)/52)):
    # a pure seasonal curve with amplitude in [lo, hi] and level 1 at the last history period.
    p = Params2(demand_sigma=0.0, demand_jump_prob=0.0, demand_drift_sigma=0.0, demand_amp_lo=0.3,
                demand_amp_hi=0.3)
    s = draw_scenario2(1, params=p)
    series = np.concatenate([s.demand_history, s.demand]) / 1000.0 - 1.0
    assert np.max(series) == pytest.approx(0.3, abs=2e-3) and np.min(series) == pytest.approx(-0.3, abs=2e-3)
    assert np.allclose(series[:52], series[52:104])  # period 52
    # With a drift and no noise the log-level is a straight line through 0 at k = 51.
    q = Params2(demand_sigma=0.0, demand_jump_prob=0.0, demand_drift_sigma=0.01, demand_amp_lo=0.0,
                demand_amp_hi=0.0)
    level = np.log(np.concatenate([(d := draw_scenario2(2, params=q)).demand_history, d.demand]) / 1000.0)
    assert level[51] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(np.diff(level), level[52] - level[51])
    # Jumps: with p_J = 1 and no drift every step is a N(0, sigma_J) jump.
    j = Params2(demand_sigma=0.0, demand_jump_prob=1.0, demand_drift_sigma=0.0, demand_amp_lo=0.0,
                demand_amp_hi=0.0, demand_jump_sigma=0.25, horizon=400)
    steps = np.diff(np.log(draw_scenario2(3, params=j).demand))
    assert np.std(steps) == pytest.approx(0.25, rel=0.15)
    # Supplier: long-run share of down periods p_down / (p_down + p_up); grades' mean alpha-bar.
    many = draw_scenarios2(30, params=Params2(horizon=200))
    down = 1.0 - np.mean([s.supply_up for s in many])
    assert down == pytest.approx(0.04 / 0.29, abs=0.04)
    assert np.allclose(np.mean([s.grades for s in many], axis=(0, 1)), (0.3, 0.45, 0.25), atol=0.01)


def test_zero_grade_share_stays_zero():
    s = draw_scenario2(0, params=Params2(grade_mean=[0.5, 0.5, 0.0]))
    assert np.all(s.grades[:, 2] == 0.0) and np.allclose(s.grades.sum(1), 1.0)


def test_json_round_trip_and_model_key(scenario, tmp_path):
    path = tmp_path / "s.json"
    scenario.to_json(path)
    data = json.loads(path.read_text())
    assert data["model"] == "CLSC-2"
    assert data["regimes"][0]["recycled_content_window"] == 52
    loaded = load_scenario(path)
    assert isinstance(loaded, Scenario2)
    assert loaded.to_dict() == scenario.to_dict()
    clsc1 = tmp_path / "c.json"
    draw_scenario(1).to_json(clsc1)
    assert isinstance(load_scenario(clsc1), Scenario)
    assert "recycled_content_window" not in clsc1.read_text()


def _broken(scenario, **change):
    data = scenario.to_dict()
    for key, value in change.items():
        if key.startswith("params_"):
            data["params"][key.removeprefix("params_")] = value
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"params_speed": 1}, "params.speed: unknown parameter"),
    ({"params_yield_disassembly_a": 1.5}, "params.yield_disassembly_a"),
    ({"params_grade_mean": [0.5, 0.5, 0.5]}, "grade_mean.*sum to 1"),
    ({"params_lag_return": 53}, "params.lag_return"),
    ({"params_demand_base": 0}, "params.demand_base=0 must be > 0"),  # the rule's thresholds are per unit of it
    ({"params_demand_amp_hi": 0.05}, "demand_amp_hi"),
    ({"demand": [1.0] * 51}, "demand: expected exactly horizon=52"),
    ({"demand_history": [1.0] * 10}, "demand_history: expected exactly 52"),
    ({"return_frac": [0.2] * 51 + [1.2]}, r"return_frac\[51\]=1.2 must be <= 1"),
    ({"demand": [math.nan] + [1.0] * 51}, r"demand\[0\]=nan is not finite"),
    ({"grades": [[0.5, 0.4, 0.2]] * 52}, r"grades\[0\].*must sum to 1"),
    ({"grades": [[0.5, 0.5]] * 52}, r"grades\[0\]: expected 3 shares"),
    ({"grades": [[0.5, 0.5, 0.0]] * 51}, "grades: expected horizon=52 rows"),
    ({"grades": [[0.5, 0.5, 0.0]] * 51 + [[1.5, -0.5, 0.0]]}, r"grades\[51\]\[1\]=-0.5 must be >= 0"),
    ({"supply_up": [1.0] * 51 + [0.5]}, r"supply_up\[51\]=0.5 must be 0 or 1"),
    ({"market_avail": [1.0] * 51 + ["x"]}, "market_avail: expected a list of numbers"),
    ({"regimes": [{"start": 0, "recycled_content_window": 200}]}, "regimes\\[0\\].recycled_content_window=200"),
    ({"model": "CLSC-9"}, "model='CLSC-9'"),
    # numbers no chain has (typos): refused before the LP fails or a simulation runs for hours
    ({"demand": [1.0] * 51 + [1e300]}, r"demand\[51\]=1e\+300 must be <= 1e\+12"),
    ({"params_mass": 1e30}, r"params.mass=1e\+30 must be <= 1e\+12"),
    ({"params_horizon": 52_000_000}, "params.horizon=52000000 must be <= 5200 periods"),
    ({"params_lag_return": 10**9}, "params.lag_return=1000000000 must be <= 52"),
])
def test_bad_files_are_refused_naming_the_field(scenario, change, message):
    with pytest.raises(ScenarioError, match=message):
        load_scenario(_broken(scenario, **change))


def test_missing_series_and_clsc1_window_refused(scenario):
    data = scenario.to_dict()
    del data["grades"]
    with pytest.raises(ScenarioError, match="missing key 'grades'"):
        Scenario2.from_dict(data)
    clsc1 = draw_scenario(1).to_dict()
    clsc1["regimes"][0]["recycled_content_window"] = 52
    with pytest.raises(ScenarioError, match="recycled_content_window=52.*CLSC-2"):
        Scenario.from_dict(clsc1)
    with pytest.raises(ScenarioError, match="CLSC-2"):
        draw_scenario(1, RegimeSchedule.constant(Regime(recycled_content_window=4)))


def test_nine_column_action_files(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"actions": [[0] * 9] * 3}))
    names = ("o", "o_m", "u_v", "u_r", "f", "g_A", "g_B", "w_A", "w_B")
    assert load_actions(path, 3, names).shape == (3, 9)
    path.write_text(json.dumps({"actions": [[0] * 6] * 3}))
    with pytest.raises(ScenarioError, match=r"actions\[0\]: expected 9 numbers \[o, o_m"):
        load_actions(path, 3, names)
    path.write_text(json.dumps({"actions": [[0] * 9, [0] * 8 + [-1e300], [0] * 9]}))
    with pytest.raises(ScenarioError, match=r"actions\[1\]\[8\]=-1e\+300 must be within ±1e\+12"):
        load_actions(path, 3, names)
    # an oracle's output (moca oracle --json) is an action file: its plan, errors named by it
    path.write_text(json.dumps({"oracle_cost": 1.0, "status": "optimal", "plan": [[1] * 9] * 3}))
    assert load_actions(path, 3, names).tolist() == [[1.0] * 9] * 3
    path.write_text(json.dumps({"oracle_cost": 1.0, "plan": [[1] * 9] * 2}))
    with pytest.raises(ScenarioError, match="plan: expected exactly horizon=3 rows, got 2"):
        load_actions(path, 3, names)
    path.write_text(json.dumps({"plan": [[1] * 9] * 3, "cost": 1.0}))
    with pytest.raises(ScenarioError, match=r"unknown key 'cost' \(allowed: oracle_cost, plan, status\)"):
        load_actions(path, 3, names)
    path.write_text(json.dumps({"actions": [[1] * 9] * 3, "plan": []}))
    with pytest.raises(ScenarioError, match=r"unknown key 'plan' \(allowed: actions\)"):
        load_actions(path, 3, names)


def test_params_beyond_the_limits_are_refused():
    for change, message in (({"mass": 1e30}, r"params.mass=1e\+30 must be <= 1e\+12"),
                            ({"horizon": 10**8}, "params.horizon=100000000 must be <= 5200 periods"),
                            ({"lead_virgin": 521}, "params.lead_virgin=521 must be <= 520 periods"),
                            ({"init_sales": -2e12}, r"init_sales=-2000000000000.0 must be >= 0")):
        with pytest.raises(ValueError, match=message):
            Params(**change)
    assert Params(horizon=5200, lag_return=520, demand_base=1e12).horizon == 5200  # the limits themselves pass
    # a noise spread of 1e12 drew 0 demand every period of a chain "with demand 1000 on average"
    for kind in (Params, Params2):
        for name in ("demand_sigma", "return_sigma"):
            with pytest.raises(ValueError, match=rf"params.{name}=1000000000000.0 must be <= 3: the noise is lognormal"):
                kind(**{name: 1e12})
        assert kind(demand_sigma=3, return_sigma=3).demand_sigma == 3
    with pytest.raises(ScenarioError, match=r"demand\[0\]=2000000000000.0 must be <= 1e\+12"):
        Scenario(Params(horizon=2), RegimeSchedule.constant(Regime()), np.array([2e12, 1.0]), np.array([0.2, 0.2]))


def test_numpy_numbers_are_numbers():
    # a library user's values often come out of numpy: np.int64(52) is a whole number
    assert Params(horizon=np.int64(52), mass=np.float32(2.0), cap_order=np.int32(4000)) == Params()
    assert type(Params(horizon=np.int64(52)).horizon) is int
    assert Params2(horizon=np.int64(26), cap_market=np.float64(500.0)).horizon == 26
    # the grade shares too, as a numpy vector or numpy entries (float32 sums to 1 within 1e-6)
    shares = np.array([0.3, 0.45, 0.25], dtype=np.float32)
    assert Params2(grade_mean=shares).grade_mean == pytest.approx((0.3, 0.45, 0.25))
    assert Params2(grade_mean=list(shares)).grade_mean == pytest.approx((0.3, 0.45, 0.25))
    assert all(type(v) is float for v in Params2(grade_mean=shares).grade_mean)
    with pytest.raises(ValueError, match=r"grade_mean\[1\]=-0.5 must be a finite number >= 0"):
        Params2(grade_mean=np.array([1.0, -0.5, 0.5]))
    with pytest.raises(ValueError, match="params.mass=True is not a number"):
        Params(mass=np.bool_(True))


def test_a_draw_beyond_the_largest_value_names_the_parameters_that_made_it():
    # demand_drift_sigma = 1 walks the log-level by ~1 a period: e^22 times demand_base by t = 22
    params = Params2(demand_drift_sigma=1.0)
    failures = 0
    for seed in range(1000, 1010):
        try:
            scenario = draw_scenario2(seed, params=params)
        except ScenarioError as err:
            failures += 1
            message = str(err)
            assert message.startswith(f"seed {seed} draws demand") and "beyond 1e+12 units" in message, message
            assert "demand_drift_sigma=1," in message and "demand_base=1000" in message and "lower them" in message
        else:  # a seed whose walk stays within bounds is a scenario like any other
            assert np.all(scenario.demand <= 1e12) and np.all(scenario.demand_history <= 1e12)
    assert failures > 0
    # A season's amplitude that makes it (both bounds allowed up to 1e12) is named as such
    # (the message named the walk's parameters only, at their defaults), and an overflow on
    # the way is the same message, not numpy's RuntimeWarning first.
    with pytest.raises(ScenarioError, match=r"times a season of amplitude 1e\+12 \(drawn between "
                                            r"demand_amp_lo=1e\+12 and demand_amp_hi=1e\+12\); lower them"):
        draw_scenario2(1000, params=Params2(demand_amp_lo=1e12, demand_amp_hi=1e12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        with pytest.raises(ScenarioError, match=r"seed 3 draws demand_history\[7\]=2.66e\+17, beyond 1e\+12 "
                                                r"units: .*demand_jump_prob=1, demand_jump_sigma=100 "):
            draw_scenario2(3, params=Params2(demand_jump_prob=1.0, demand_jump_sigma=100.0))
    # CLSC-1's draw too (it named demand[0]=1.1e12 as if the user had written it; the
    # parameters allow demand_base up to 1e12)
    from moca.scenario import draw_scenario

    with pytest.raises(ScenarioError, match=r"seed 1001 draws demand\[0\]=1.14e\+12, beyond 1e\+12 units: "
                                            r"demand_base=1e\+12 times the season \(demand_amp=0.3\)"):
        draw_scenario(1001, params=Params(horizon=4, demand_base=1e12))


def test_draws_take_what_the_rest_of_the_api_takes_and_refuse_bad_seeds_by_name():
    """A regime name, an object of rule fields or a plan list, and params as an object of
    changes, as the envs and adapt take them (an AttributeError before); a seed that is no
    whole number >= 0 is refused the same way in both worlds (numpy's own words on CLSC-2)."""
    from moca.regime import RegimeError, load_schedule
    from moca.scenario import Params, ScenarioError, draw_scenario

    for draw, world in ((draw_scenario, "CLSC-1"), (draw_scenario2, "CLSC-2")):
        named = draw(3, "T2")
        assert named.schedule == load_schedule("T2", model=world)
        assert np.array_equal(named.demand, draw(3, load_schedule("T2", model=world)).demand)
        assert draw(3, {"carbon_tax": 5}).schedule.regime_at(0).carbon_tax == 5
        assert draw(3, [{"start": 0}, {"start": 2, "carbon_tax": 9}]).schedule.regime_at(2).carbon_tax == 9
        assert draw(3, None, {"horizon": 5}).horizon == 5
        assert draw(np.int64(3)).demand.tolist() == draw(3).demand.tolist()
        for seed in (-1, 1.0, "1", None, True):
            with pytest.raises(ScenarioError, match="seed="):
                draw(seed)
        with pytest.raises(RegimeError, match="unknown regime"):
            draw(3, "no-such-rule")
        with pytest.raises(ScenarioError, match="params: expected a Params"):
            draw(3, None, [1, 2])
    assert draw_scenario(3, None, {"horizon": 5}).params == Params(horizon=5)


def test_batch_draws_take_counts_and_seeds_as_the_one_scenario_draw_does_and_batches_are_float():
    """draw_scenarios(1.5 in a list) drew seed 1 and (True) one scenario without a word, a
    numpy count was 'not iterable'; a float16 batch made every cost inf, an int64 one
    truncated the return fractions to 0."""
    import torch

    from moca.scenario import draw_scenarios
    from moca.sim import ScenarioBatch
    from moca.sim2 import ScenarioBatch2

    for draws, batch in ((draw_scenarios, ScenarioBatch), (draw_scenarios2, ScenarioBatch2)):
        demand = [s.demand.tolist() for s in draws(2, None, first_seed=7)]
        assert [s.demand.tolist() for s in draws(np.int64(2), None, first_seed=7)] == demand
        assert [s.demand.tolist() for s in draws(np.arange(7, 9))] == demand
        for seeds in ([1.5], [True], ["1"]):
            with pytest.raises(ScenarioError, match="seed="):
                draws(seeds)
        for seeds in (True, 2.0, "12", None):
            with pytest.raises(ScenarioError, match="seeds="):
                draws(seeds)
        with pytest.raises(ScenarioError, match="first_seed=1.5"):
            draws(2, None, first_seed=1.5)
        scenarios = draws(2)
        for dtype in (torch.float16, torch.bfloat16, torch.int64, "float64"):
            with pytest.raises(ScenarioError, match=r"dtype: .* is not torch.float32 or torch.float64"):
                batch.from_scenarios(scenarios, dtype=dtype)
        assert batch.from_scenarios(scenarios, dtype=torch.float64).demand.dtype == torch.float64


def test_library_calls_of_the_wrong_kind_are_named():
    """A CLSC-2 scenario to CLSC-1's rule impact, no path to load_scenario: AttributeError and
    pathlib's TypeError before."""
    from moca.impact import rule_impact
    from moca.scenario import load_scenario

    with pytest.raises(ScenarioError, match=r"scenarios\[0\]: expected a CLSC-1 Scenario .* got Scenario2"):
        rule_impact(Regime(carbon_tax=10), [draw_scenario2(1)])
    with pytest.raises(ScenarioError, match="scenario: expected a file path or JSON text, got NoneType"):
        load_scenario(None)


def test_params_copied_with_changes_are_checked_as_new_ones():
    """pydantic's model_copy checks nothing: the default params with cap_produce=-1 were
    taken by every engine as they were, where the same values in a file are refused."""
    for kind in (Params, Params2):
        with pytest.raises(ScenarioError, match=r"params.cap_produce=-1.0 must be > 0"):
            kind().model_copy(update={"cap_produce": -1.0})
        with pytest.raises(ScenarioError, match=r"params.capacity: unknown parameter"):
            kind().model_copy(update={"capacity": 1.0})
        changed = kind().model_copy(update={"cap_produce": 900.0})
        assert isinstance(changed, kind) and changed.cap_produce == 900.0 and changed.mass == kind().mass
        assert kind().model_copy() == kind()


@pytest.mark.parametrize("model", ["CLSC-1", "CLSC-2"])
def test_a_scenario_s_series_cannot_be_edited_after_its_checks(model):
    """The checks run when a scenario is built: ``scenario.demand[5] = -5000`` afterwards was
    scored by the oracle (a lower cost) and the env (negative sales) without a word. The
    series are read-only, in copies too (deepcopy, pickle), and the caller's arrays stay
    theirs and writable."""
    import copy
    import pickle

    from moca.regime import TASKS

    drawn = draw_scenario(3, TASKS["T2"]) if model == "CLSC-1" else draw_scenario2(3, TASKS_2["T2"])
    names = ["demand", "return_frac"] + (["grades", "supply_up", "market_avail", "demand_history"]
                                          if model == "CLSC-2" else [])
    for scenario in (drawn, copy.deepcopy(drawn), pickle.loads(pickle.dumps(drawn))):
        for name in names:
            with pytest.raises(ValueError, match="read-only"):
                getattr(scenario, name)[0] = -5000.0
    mine = np.array(drawn.demand)
    kind = Scenario if model == "CLSC-1" else Scenario2
    rebuilt = kind(**{**{name: getattr(drawn, name) for name in names}, "params": drawn.params,
                      "schedule": drawn.schedule, "demand": mine})
    mine[0] = 1.0  # the caller's array: still writable, and not the scenario's
    assert rebuilt.demand[0] == drawn.demand[0] != 1.0
    state = dict(copy.copy(drawn).__dict__, demand=np.where(np.arange(drawn.horizon) == 5, -1.0, drawn.demand))
    with pytest.raises(ScenarioError, match=r"demand\[5\]=-1.0 must be >= 0"):
        kind.__new__(kind).__setstate__(state)  # (what unpickling an edited copy does)


def test_a_scenario_built_in_python_refuses_another_object_as_params_or_schedule():
    """Scenario2(schedule="T2") was built without a word and failed at regime_table() or an
    env's reset (AttributeError: 'str' object has no attribute 'table'); Scenario with a
    regime's name, a Regime or None as its schedule failed with an AttributeError."""
    from moca.regime import load_schedule
    from moca.scenario import Params, Scenario, draw_scenario, draw_scenario2

    two, one = draw_scenario2(0, "T2"), draw_scenario(0, "T2")
    for bad, got in (("T2", "str"), (Regime(), "Regime"), (None, "NoneType")):
        with pytest.raises(ScenarioError, match=re.escape(
                f'schedule: expected a moca.regime.RegimeSchedule (e.g. moca.regime.load_schedule("T2", '
                f'model="CLSC-2")), got {got}')):
            Scenario2(**{**two.__dict__, "schedule": bad})
        with pytest.raises(ScenarioError, match=re.escape(
                f'schedule: expected a moca.regime.RegimeSchedule (e.g. moca.regime.load_schedule("T2")), got {got}')):
            Scenario(one.params, bad, one.demand, one.return_frac)
    with pytest.raises(ScenarioError, match="params: expected moca.scenario.Params2, got Params"):
        Scenario2(**{**two.__dict__, "params": Params()})
    with pytest.raises(ScenarioError, match="params: expected moca.scenario.Params, got Params2"):
        Scenario(two.params, one.schedule, one.demand, one.return_frac)
    # what the message suggests is what it takes
    assert Scenario2(**{**two.__dict__, "schedule": load_schedule("T2", model="CLSC-2")}).regime_table().shape == (52, 5)
    assert Scenario(one.params, load_schedule("T2"), one.demand, one.return_frac).regime_table().shape == (52, 5)
