"""When a rule, not the policy, leaves demand unmet (moca.impact), and the report's plots
read at a glance: idle periods masked, compliance stated, identical curves told apart."""

import json

import numpy as np
import pytest

from moca.impact import describe, rule_impact, rules_in_force
from moca.oracle import solve_oracle
from moca.regime import Regime, RegimeSchedule, load_regime
from moca.report import _idle_periods, _same_as, plot_adaptation_curves, plot_compliance, report_markdown
from moca.scenario import Scenario, draw_scenarios

from _cli import run_in_process as run


def test_a_mandate_the_returns_cannot_supply_is_flagged_and_priced():
    scenarios = draw_scenarios(2, load_regime("eu-batteries-2036"), first_seed=1000)
    impact = rule_impact(load_regime("eu-batteries-2036"), scenarios)
    assert impact["demand_unmet_by_rule"] and impact["backlog_per_period"] > 10 * impact["backlog_per_period_without_rule"]
    assert impact["oracle_cost_ratio"] > 2 and impact["backlog_at_end"] > impact["backlog_at_end_without_rule"]
    assert set(impact["shadow_prices"]) == {"recycled_content_min"} and impact["shadow_prices"]["recycled_content_min"] > 0
    text = describe("eu-batteries-2036", impact)
    assert "leaves demand unmet" in text and "EUR per percentage point" in text
    # The without-rule numbers are the oracle on the very same draws with no rule.
    free = [Scenario(s.params, RegimeSchedule.constant(Regime()), s.demand, s.return_frac) for s in scenarios]
    assert impact["oracle_cost_without_rule"] == pytest.approx(np.mean([solve_oracle(s).oracle_cost for s in free]))


def test_a_chain_that_costs_nothing_without_the_rule_has_no_factor_and_no_score(tmp_path):
    """A chain whose every cost is 0: the rule's factor was a ZeroDivisionError (an internal
    error of moca evaluate) and a score oracle/cost a NaN printed as JSON; now the factor is
    not given and the score is refused by name, exit 2."""
    from moca.evaluation import UnscorableError, scorable
    from moca.impact import cost_change
    from moca.scenario import Params

    free = {k: 0.0 for k in ("cost_virgin", "cost_produce", "cost_disassemble", "cost_refurbish", "cost_dispose",
                             "hold_virgin", "hold_recycled", "hold_product", "hold_core", "backlog_cost")}
    regime = Regime(carbon_tax=100, recovery_target=0.5)
    impact = rule_impact(regime, draw_scenarios(2, regime, params=Params(horizon=6, **free), first_seed=1000))
    assert impact["oracle_cost"] == impact["oracle_cost_without_rule"] == 0 and impact["oracle_cost_ratio"] is None
    assert cost_change(impact) == "0 EUR, as without"
    assert "the optimal cost is 0 EUR with it and without it" in describe("r", impact)
    assert cost_change({**impact, "oracle_cost": 1234.5}) == "0 -> 1,234 EUR"
    with pytest.raises(UnscorableError, match=r"scenario 2 of 3: the hindsight LP's best cost is 0 EUR, so there is "
                                              r"no score"):
        scorable([10.0, 0.0, 5.0])
    assert scorable([1.0, 2.0]).tolist() == [1.0, 2.0]
    (tmp_path / "free.json").write_text(json.dumps({**free, "horizon": 4}))
    for policy in ("threshold", "oracle"):
        result = run("evaluate", "--policy", policy, "--params", tmp_path / "free.json", "--scenarios", 2, "--json")
        assert result.returncode == 2 and "Traceback" not in result.stderr and not result.stdout, result
        assert "the hindsight LP's best cost is 0 EUR, so there is no score" in result.stderr


def test_oracle_costs_a_caller_gives_are_checked_like_the_ones_moca_solves():
    """evaluation.evaluate_policy took the caller's oracle costs as they came: one cost for
    three scenarios was broadcast, a negative one gave a negative score, and no scenario at
    all a summary of NaNs."""
    from moca.baselines import ThresholdPolicy
    from moca.evaluation import UnscorableError, evaluate_policy
    from moca.scenario import ScenarioError

    scenarios = draw_scenarios(3, load_regime("T1"), first_seed=1000)
    rule = ThresholdPolicy([3000.0] * 6, scenarios[0].params)  # (never run: each call is refused first)
    with pytest.raises(ScenarioError, match=r"oracle_costs: shape \[1\], expected \[3\]"):
        evaluate_policy("rule", rule, scenarios, np.array([4e6]))
    with pytest.raises(ScenarioError, match="oracle_costs: expected finite costs"):
        evaluate_policy("rule", rule, scenarios, [4e6, float("nan"), 4e6])
    with pytest.raises(UnscorableError, match="scenario 2 of 3: the hindsight LP's best cost is -4e"):
        evaluate_policy("rule", rule, scenarios, [4e6, -4e6, 4e6])
    with pytest.raises(ScenarioError, match="scenarios: empty"):
        evaluate_policy("rule", rule, [])
    given = [solve_oracle(s).oracle_cost for s in scenarios]  # a list, as the policy=None path refused
    assert evaluate_policy("oracle", None, scenarios, given).summary()["score"] == pytest.approx(1.0)


def test_a_carbon_tax_leaves_demand_served_and_its_price_is_the_taxed_emission():
    regime = load_regime("eu-ets-2025")
    impact = rule_impact(regime, draw_scenarios(2, regime, first_seed=1000))
    assert not impact["demand_unmet_by_rule"] and impact["unmet_share"] < 0.01
    assert rules_in_force(regime) == ["carbon_tax"] and impact["shadow_prices"]["carbon_tax"] > 0
    assert "no demand unmet" in describe("eu-ets-2025", impact)


def test_mandate_price_agrees_with_a_finite_difference():
    base = load_regime("T1")
    scenarios = draw_scenarios(1, base, first_seed=1001)
    price = rule_impact(base, scenarios)["shadow_prices"]["recycled_content_min"]  # EUR per percentage point

    def cost(r: float) -> float:
        s = scenarios[0]
        return solve_oracle(Scenario(s.params, RegimeSchedule.constant(Regime(recycled_content_min=r)), s.demand,
                                     s.return_frac)).oracle_cost

    slope = (cost(0.1025) - cost(0.0975)) / 0.5  # EUR per percentage point
    assert price == pytest.approx(slope, rel=0.25)


def test_evaluate_says_when_the_rule_leaves_demand_unmet():
    out = json.loads(run("evaluate", "--policy", "oracle", "--regime", "eu-batteries-2036", "--scenarios", 1,
                         "--json").stdout)
    assert out["rule_impact"]["demand_unmet_by_rule"] is True
    text = run("evaluate", "--policy", "oracle", "--regime", "eu-batteries-2036", "--scenarios", 1).stdout
    assert "eu-batteries-2036: the rule itself leaves demand unmet" in " ".join(text.split())
    assert json.loads(run("evaluate", "--policy", "oracle", "--regime", "unregulated", "--scenarios", 1,
                          "--json").stdout)["rule_impact"] is None


def test_adapt_says_when_the_rule_leaves_demand_unmet_and_where_the_oracle_withholds_sales(tmp_path):
    """``moca adapt`` reported 0.97 under a rule where even the optimum leaves 95% of demand
    unserved, and nothing of the LP's withheld sales, where ``evaluate`` says both."""
    done = run("adapt", "--checkpoint", "default", "--regime", "eu-batteries-2036", "--steps", 0, "--scenarios", 2,
               "--validation", 1, "--base", "default", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["rule_impact"]["demand_unmet_by_rule"] is True and set(out["oracle_withheld_sales"]) == {"scenarios", "units"}
    assert "moca: warning: eu-batteries-2036: the rule itself leaves demand unmet" in " ".join(done.stderr.split())
    named = tmp_path / "rule.yaml"  # (named as evaluate names it: the file's own label first)
    named.write_text("name: batteries\nrecycled_content_min: 0.26\n")
    told = run("adapt", "--checkpoint", "default", "--regime", named, "--steps", 0, "--scenarios", 1,
               "--validation", 1, "--base", "default", "--json")
    assert "moca: warning: batteries (rule.yaml): the rule itself leaves demand unmet" in told.stderr, told.stderr
    quiet = run("adapt", "--checkpoint", "default", "--regime", "unregulated", "--steps", 0, "--scenarios", 2,
                "--validation", 1, "--base", "default", "--json")
    assert json.loads(quiet.stdout)["rule_impact"] is None and "leaves demand unmet" not in quiet.stderr
    # and per regime of a continual run (CLSC-2 there too: where the LP withholds sales)
    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- unregulated\n- eu-batteries-2036\n")
    learned = run("continual", "--sequence", sequence, "--method", "moca", "--steps", 0, "--scenarios", 1, "--json")
    assert learned.returncode == 0, learned.stderr
    out = json.loads(learned.stdout)
    assert out["rule_impact"]["unregulated"] is None and out["rule_impact"]["eu-batteries-2036"]["demand_unmet_by_rule"]
    assert set(out["oracle_withheld_sales"]) == {"unregulated", "eu-batteries-2036"}
    assert "moca: warning: eu-batteries-2036: the rule itself leaves demand unmet" in " ".join(learned.stderr.split())
    assert "unregulated:" not in learned.stderr
    shown = json.loads(run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--steps", 0,
                           "--scenarios", 1, "--validation", 1, "--base", "default", "--json").stdout)
    assert set(shown["oracle_withheld_sales"]) == {"scenarios", "units"}


def _metrics():
    T = 10
    share = [0.12] * (T - 1) + [1.0]
    material = [2000.0] * (T - 1) + [3.0]  # the last period: almost nothing produced
    per_period = {p: {"T1": {"recycled_share": share, "material": material, "emissions": [15000.0] * T,
                             "recycled_content_min": [0.1] * T, "emission_cap": [16000.0] * T,
                             "cost_terms": {"virgin": 1.0}}} for p in ("moca", "mpc")}
    curve = [[0.9, 0.95, 0.96]]
    methods = {name: {"R": [[0.9], [0.96]], "average_final_score": 0.96, "adaptation_curves": curve,
                      "adaptation_steps": [1]} for name in ("moca", "maml", "finetune")}
    methods["finetune"]["adaptation_curves"] = [[0.9, 0.91, 0.93]]
    impact = {"scenarios": 2, "oracle_cost": 3e6, "oracle_cost_without_rule": 4e5, "oracle_cost_ratio": 7.5,
              "backlog_per_period": 11000.0, "backlog_per_period_without_rule": 20.0, "backlog_at_end": 24000.0,
              "backlog_at_end_without_rule": 1000.0, "demand_total": 52000.0, "unmet_because_of_rule": 10980.0,
              "unmet_share": 10.98, "demand_unmet_by_rule": True,
              "shadow_prices": {"recycled_content_min": 3.2e5},
              "price_units": {"recycled_content_min": "EUR per percentage point"}}
    return {"tasks": ["T1"], "regimes": {"T1": {"recycled_content_min": 0.1}}, "methods": methods,
            "per_period": per_period, "rule_impact": {"T1": impact}}


def test_report_says_the_rule_leaves_demand_unmet():
    text = report_markdown(_metrics())
    assert "## What the rules themselves do to demand" in text
    assert "T1: the rule itself leaves demand unmet" in text and "24,000 of 52,000" in text
    row = next(line for line in text.splitlines() if line.startswith("| T1 | 7.50x"))
    assert "**yes**" in row and "320,000 EUR per percentage point" in row


def _compliance_texts(metrics, path) -> list[str]:
    """The texts plot_compliance writes into its panels."""
    import moca.report as report

    texts: list[str] = []
    original = report._save
    report._save = lambda fig, where: texts.extend(t.get_text() for ax in fig.axes for t in ax.texts) or where
    try:
        plot_compliance(metrics, path)
    finally:
        report._save = original
    return texts


def test_compliance_masks_idle_periods_and_states_compliance(tmp_path):
    metrics = _metrics()
    idle = _idle_periods(metrics["per_period"]["moca"]["T1"], 10)
    assert idle.tolist() == [False] * 9 + [True]  # the 100% share of 3 kg is not plotted
    assert plot_compliance(metrics, tmp_path / "c.png") is not None
    assert any("complies in every period: moca, MPC" in t for t in _compliance_texts(metrics, tmp_path / "c2.png"))
    metrics["per_period"]["mpc"]["T1"]["recycled_share"] = [0.05] * 9 + [1.0]
    assert any("MPC: 9 periods below the mandate" in t for t in _compliance_texts(metrics, tmp_path / "c3.png"))


def test_identical_adaptation_curves_are_labelled_and_drawn_apart(tmp_path):
    metrics = _metrics()
    assert _same_as({n: [np.array(c) for c in r["adaptation_curves"]] for n, r in metrics["methods"].items()}) == {
        "maml": "moca"}
    import moca.report as report

    lines = []
    original = report._save
    report._save = lambda fig, path: lines.extend(fig.axes[0].get_lines()) or path
    try:
        plot_adaptation_curves(metrics, tmp_path / "a.png")
    finally:
        report._save = original
    by_label = {line.get_label(): line for line in lines}
    moca, maml = by_label["moca"], by_label["maml (same curve as moca)"]
    assert not np.allclose(moca.get_xdata(), maml.get_xdata())  # shifted sideways
    assert moca.get_marker() != maml.get_marker() and moca.get_linestyle() != maml.get_linestyle()


def test_a_failure_of_the_advice_after_the_work_costs_no_result(monkeypatch, tmp_path):
    """The rule-impact and withheld-sales checks run after adapt's and continual's work (and
    before adapt writes -o): a solver failure there ended the command with an error, the
    adapted policy and the run's scores lost."""
    import moca.evaluation
    import moca.impact
    from moca.oracle import OracleError

    def fail(*args, **kwargs):
        raise OracleError("HiGHS stopped: time limit")

    monkeypatch.setattr(moca.impact, "rule_impact", fail)
    monkeypatch.setattr(moca.evaluation, "withheld_sales", fail)
    done = run("adapt", "--checkpoint", "default", "--regime", "T2", "--steps", 0, "--scenarios", 1, "--validation", 1,
               "--base", "default", "-o", tmp_path / "adapted", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["rule_impact"] is None and out["oracle_withheld_sales"] is None
    assert (tmp_path / "adapted" / "checkpoint.json").is_file()
    assert "T2: what the rule does to demand could not be told (HiGHS stopped: time limit)" in done.stderr
    assert "where the hindsight LP withholds sales could not be told" in done.stderr


def test_a_price_of_about_zero_reads_0_not_minus_0():
    """A slack rule's dual of -1e-12 or -0.0 printed "recycled_content_min -0 EUR per
    percentage point"."""
    from moca.impact import whole

    assert [whole(v) for v in (-0.0, -1e-12, -0.4, 1234.6, -1234.6)] == ["0", "0", "0", "1,235", "-1,235"]
    impact = {"shadow_prices": {"recycled_content_min": -1e-12}, "price_units": {"recycled_content_min": "EUR"},
              "oracle_cost_ratio": 1.0, "demand_unmet_by_rule": False, "backlog_per_period": 0.0,
              "backlog_per_period_without_rule": 0.0}
    text = describe("T", impact)
    assert "recycled_content_min 0 EUR" in text and "-0" not in text
