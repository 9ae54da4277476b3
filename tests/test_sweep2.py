"""moca sweep on CLSC-2: the oracle's shadow prices against finite differences of the
oracle cost, a small sweep's invariants (lost sales flagged where the mandate itself
makes the oracle lose sales), the local pool against a serial run, moca's adaptation,
the window field on the CLI."""

import json

import pytest
from typer.testing import CliRunner

from moca.cli import app
from moca.cluster import Backend
from moca.oracle2 import shadow_prices2, solve_oracle2
from moca.regime import Regime, RegimeSchedule
from moca.scenario import draw_scenario2
from moca.sweep import SweepError, make_plan, run_sweep

runner = CliRunner()


def _oracle(seed: int, regime: dict) -> float:
    return solve_oracle2(draw_scenario2(seed, Regime(**regime))).oracle_cost


# Every rule binding (a mandate over a year's window and per period, a cap below the
# virgin-only emissions, a high recovery target, a landfill tax with disposal in the plan).
@pytest.mark.parametrize("field, regime, delta", [
    ("recycled_content_min", dict(recycled_content_min=0.2, carbon_tax=80.0, recycled_content_window=52), 1e-4),
    ("recycled_content_min", dict(recycled_content_min=0.2), 1e-4),
    ("carbon_tax", dict(recycled_content_min=0.15, carbon_tax=80.0), 0.01),
    ("emission_cap", dict(recycled_content_min=0.05, emission_cap=9000.0), 0.5),
    ("recovery_target", dict(recovery_target=0.97), 1e-4),
    ("landfill_tax", dict(landfill_tax=20.0, recovery_target=0.5), 0.01),
])
def test_clsc2_shadow_price_is_the_finite_difference_of_the_oracle_cost(field, regime, delta):
    scenario = draw_scenario2(1000, Regime(**regime))
    sp = shadow_prices2(scenario)
    assert sp.oracle_cost == pytest.approx(solve_oracle2(scenario).oracle_cost, rel=1e-9)
    up = _oracle(1000, {**regime, field: regime[field] + delta})
    down = _oracle(1000, {**regime, field: regime[field] - delta})
    slope = (up - down) / (2 * delta) * (-1 if field == "emission_cap" else 1)  # tightening a cap = lowering it
    assert sp.prices[field] > 0, (field, sp.prices[field])
    assert sp.prices[field] == pytest.approx(slope, rel=1e-6)
    assert sp.prices["recycled_content_window"] is None


def test_clsc2_shadow_price_at_a_rule_boundary():
    # From r = 0 a step switches rows 6a/6b on: the price is the one-sided difference.
    regime = dict(carbon_tax=50.0, recycled_content_window=52)
    sp = shadow_prices2(draw_scenario2(1001, Regime(**regime)))
    forward = (_oracle(1001, {**regime, "recycled_content_min": 1e-4}) - sp.oracle_cost) / 1e-4
    assert sp.prices["recycled_content_min"] == pytest.approx(forward, abs=1e-6)
    assert sp.prices["emission_cap"] is None  # no cap in force
    assert sp.prices["carbon_tax"] > 0  # the t CO2 taxed


@pytest.fixture(scope="module")
def serial_and_pool():
    plan = make_plan("CLSC-2", "recycled_content_min", "0.3", base="T1", policies="oracle,mpc,threshold",
                     scenarios=2, threshold_budget=48)
    return plan, run_sweep(plan, Backend("serial")), run_sweep(plan, Backend("pool", workers=2))


def test_clsc2_local_pool_gives_the_serial_numbers(serial_and_pool):
    _, serial, pooled = serial_and_pool
    assert pooled["backend"] == {"kind": "pool", "workers": 2} and pooled["tasks"] == 3 * 2
    assert pooled["policies"] == serial["policies"]  # bit for bit: a task runs the same wherever


def test_clsc2_small_sweep_invariants(serial_and_pool):
    plan, result, _ = serial_and_pool
    assert result["model"] == "CLSC-2" and result["base"]["recycled_content_window"] == 52
    assert result["unmet_metric"].startswith("lost_sales")
    oracle = result["policies"]["oracle"]
    for name, entry in result["policies"].items():
        for key in ("cost", "cost_ci", "compliance_cost", "emissions", "recycled_share", "violations", "lost_sales"):
            assert len(entry[key]) == 1, (name, key)
        assert "backlog" not in entry
        assert entry["violations"] == [0]
        assert entry["recycled_share"][0] >= 0.3 - 1e-6  # over the episode's two 52-period windows
        assert oracle["cost"][0] <= entry["cost"][0] + 1e-6
        assert entry["compliance_cost"][0] > 0
    # A 30% mandate over the year is more than returns supply: the oracle itself loses sales.
    assert oracle["demand_unmet_by_rule"] == [True]
    assert any("recycled_content_min=0.3" in w and "lost_sales" in w for w in result["warnings"])
    assert oracle["shadow_price"][0] > 0
    assert json.loads(json.dumps(result)) == result


def test_clsc2_moca_policy_reports_its_adaptation():
    plan = make_plan("CLSC-2", "carbon_tax", "200", base="T1", policies="moca", scenarios=2, adapt_steps=1)
    entry = run_sweep(plan, Backend("serial"))["policies"]["moca"]
    assert entry["adaptation_steps"][0] in (0, 1) and entry["adaptation_seconds"][0] >= 0
    assert entry["violations"] == [0] and entry["recycled_share"][0] >= 0.1 - 1e-6
    assert entry["compliance_cost"][0] > 0


def test_clsc2_moca_through_the_portfolio_deploys_the_sampled_mpc_under_a_high_tax(monkeypatch):
    """--moca-base mpc on CLSC-2: moca is the sampled MPC at a stock of moca adapt's choice
    (here from two stocks, to keep the test short), scored as any policy: every rule kept."""
    import moca.baselines.mpc2 as mpc2

    monkeypatch.setattr(mpc2, "SAFETY_STOCKS_2", (300.0, 1500.0))
    plan = make_plan("CLSC-2", "carbon_tax", "2000", base="T1", policies="moca", scenarios=2, adapt_steps=1,
                     moca_base="mpc")
    entry = run_sweep(plan, Backend("serial"))["policies"]["moca"]
    assert entry["moca_base"] == "mpc" and entry["candidate"] == ["mpc"] and entry["violations"] == [0]
    assert entry["recycled_share"][0] >= 0.1 - 1e-6 and entry["adaptation_seconds"][0] >= 0


def test_clsc2_window_field_on_the_cli(tmp_path):
    out = tmp_path / "w.json"
    result = runner.invoke(app, ["sweep", "--model", "CLSC-2", "--field", "recycled_content_window", "--values",
                                 "1,52", "--base", "T2", "--policies", "oracle", "--scenarios", "2", "--workers", "1",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    oracle = json.loads(out.read_text())["policies"]["oracle"]
    # Settling the mandate over a year instead of every period can only help the optimum.
    assert oracle["compliance_cost"][0] == 0.0 and oracle["compliance_cost"][1] < 0
    assert oracle["shadow_price"] == [None, None]  # a whole number of periods: no derivative
    for values, needle in (("1,2.5", "recycled_content_window=2.5"), ("0,52", "recycled_content_window=0")):
        bad = runner.invoke(app, ["sweep", "--model", "CLSC-2", "--field", "recycled_content_window", "--values",
                                  values, "--policies", "oracle", "--scenarios", "2"])
        assert bad.exit_code == 2 and needle in bad.stderr, bad.stderr
    with pytest.raises(SweepError, match="recycled_content_window"):
        make_plan("CLSC-1", "recycled_content_window", "1,52")  # CLSC-1 has no window


def test_clsc2_shadow_price_of_a_cap_in_force_in_part_of_the_horizon():
    """It was None wherever a period had no cap; CLSC-1's prices the periods with one. The
    price is the finite difference with each cap moved where one is set."""
    def plan(shift: float) -> RegimeSchedule:
        return RegimeSchedule.from_list([{"start": 0, "emission_cap": 2600.0 + shift}, {"start": 20},
                                         {"start": 35, "emission_cap": 9000.0 + shift}])

    sp = shadow_prices2(draw_scenario2(1000, plan(0.0)))
    up, down = (solve_oracle2(draw_scenario2(1000, plan(s))).oracle_cost for s in (0.5, -0.5))
    assert sp.prices["emission_cap"] > 0
    assert sp.prices["emission_cap"] == pytest.approx((down - up) / 1.0, rel=1e-6)


def test_clsc2_recovery_targets_price_at_zero_is_the_cost_of_tightening_it():
    """As on CLSC-1 (test_sweep): the recovery target's row is slack at 0 and its dual 0,
    while tightening it costs about 5,000 EUR per share on this scenario of the default chain."""
    sp = shadow_prices2(draw_scenario2(1001, Regime()), fields=["recovery_target"])
    forward = (_oracle(1001, {"recovery_target": 1e-4}) - sp.oracle_cost) / 1e-4
    assert sp.prices["recovery_target"] > 1000.0
    assert sp.prices["recovery_target"] == pytest.approx(forward, rel=1e-9)


def test_a_rule_at_0_in_some_periods_and_at_its_top_in_others_has_no_uniform_price():
    """No step moves every period of such a plan (0 cannot be loosened, 1.0 not tightened):
    shadow_prices2 divided by a width of 0; the price is None (no price), the others stand.
    CLSC-1's is None too (it was the duals', which count the periods at 0 as free)."""
    from moca.oracle import shadow_prices
    from moca.regime import RegimeSchedule
    from moca.scenario import draw_scenario

    plan = RegimeSchedule.from_list([{"start": 0}, {"start": 26, "recovery_target": 1.0}])
    sp = shadow_prices2(draw_scenario2(1001, plan))
    assert sp.prices["recovery_target"] is None and sp.prices["carbon_tax"] > 0
    assert shadow_prices(draw_scenario(1001, plan)).prices["recovery_target"] is None
    mandate = RegimeSchedule.from_list([{"start": 0}, {"start": 26, "recycled_content_min": 0.95}])
    assert shadow_prices(draw_scenario(0, mandate)).prices["recycled_content_min"] is None
    assert shadow_prices2(draw_scenario2(0, mandate)).prices["recycled_content_min"] is None
