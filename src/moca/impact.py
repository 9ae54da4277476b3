"""What a rule costs whatever the policy: the hindsight optimum under the rule against the
same scenarios without it.

A score near 1.0 says a policy is close to the best possible *under the rule*; it says
nothing about whether the chain still serves its customers. When a recycled-content
mandate asks for more recycled material than the returns can supply, production is held
back by the rule itself and demand waits in the backlog for every policy, the optimum
included. :func:`rule_impact` measures that on given scenarios: the oracle's backlog
(units per period, and units still unserved at the end) with and without the regime, the
oracle cost's ratio, and each rule's shadow price from the LP's duals
(:func:`moca.oracle.shadow_prices`, EUR per unit of the field).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from moca.regime import REGIME_FIELDS, Regime, RegimeSchedule
from moca.scenario import Scenario, ScenarioError

#: The oracle's backlog this much above its backlog without the rule (as a share of mean
#: demand per period) means the rule itself leaves demand unmet. moca sweep flags a value
#: against its neutral value at 5% instead (moca.sweep.UNMET_FLAG_SHARE), so a rule that
#: leaves 1-5% unmet is flagged here and not there.
UNMET_SHARE = 0.01

#: Units of each field's shadow price (EUR per one unit of the field).
PRICE_UNITS: dict[str, str] = {
    "recycled_content_min": "EUR per percentage point",
    "carbon_tax": "EUR per EUR/t CO2",
    "emission_cap": "EUR per kg CO2/period less",
    "landfill_tax": "EUR per EUR/core",
    "recovery_target": "EUR per percentage point",
}
_PER_POINT = {"recycled_content_min", "recovery_target"}  # shares: priced per percentage point


def rules_in_force(regime: Regime) -> list[str]:
    """The fields of ``regime`` that set a rule (non-zero, or a cap)."""
    data = regime.model_dump()
    return [f for f in REGIME_FIELDS if (data[f] is not None if f == "emission_cap" else bool(data[f]))]


def rule_impact(regime: Regime, scenarios: Sequence[Scenario]) -> dict[str, Any]:
    """The oracle on ``scenarios`` under ``regime`` and under no rule (same demand and
    returns), averaged over the scenarios:

    - ``backlog_per_period`` / ``backlog_per_period_without_rule``: mean units on backlog
      at the end of a period; ``backlog_at_end`` / ``..._without_rule``: units never served;
    - ``unmet_because_of_rule``: the difference of the two backlogs per period (units);
      ``unmet_share``: that difference over mean demand per period;
    - ``demand_unmet_by_rule``: True when ``unmet_share`` exceeds :data:`UNMET_SHARE`;
    - ``oracle_cost``, ``oracle_cost_without_rule`` (EUR) and their ratio;
    - ``shadow_prices``: per rule in force, what tightening it by one unit adds to the
      optimal cost (EUR; per percentage point for shares), with ``price_units``.
    """
    from moca.oracle import shadow_prices, solve_oracle

    scenarios = list(scenarios)
    if not scenarios:
        raise ValueError("rule_impact: no scenarios")
    for i, s in enumerate(scenarios):  # (a CLSC-2 scenario was an AttributeError from inside pydantic)
        if not isinstance(s, Scenario):
            raise ScenarioError(f"scenarios[{i}]: expected a CLSC-1 Scenario (the oracle with and without the rule "
                                f"is CLSC-1's here), got {type(s).__name__}")
    ruled = [Scenario(s.params, RegimeSchedule.constant(regime), s.demand, s.return_frac) for s in scenarios]
    free = [Scenario(s.params, RegimeSchedule.constant(Regime()), s.demand, s.return_frac) for s in scenarios]
    priced = [shadow_prices(s, fields=rules_in_force(regime)) for s in ruled]
    plain = [solve_oracle(s) for s in free]
    backlog = float(np.mean([p.result.stocks[:, 4].mean() for p in priced]))
    backlog_free = float(np.mean([r.stocks[:, 4].mean() for r in plain]))
    demand = float(np.mean([s.demand.mean() for s in scenarios]))
    unmet = max(backlog - backlog_free, 0.0)
    cost = float(np.mean([p.oracle_cost for p in priced]))
    cost_free = float(np.mean([r.oracle_cost for r in plain]))
    prices: dict[str, float] = {}
    for field in rules_in_force(regime):
        values = [p.prices.get(field) for p in priced]
        if all(v is not None for v in values):
            prices[field] = float(np.mean(values)) / (100.0 if field in _PER_POINT else 1.0)
    return {
        "scenarios": len(scenarios),
        "oracle_cost": cost, "oracle_cost_without_rule": cost_free,
        "oracle_cost_ratio": cost / cost_free if cost_free > 0 else None,
        "backlog_per_period": backlog, "backlog_per_period_without_rule": backlog_free,
        "backlog_at_end": float(np.mean([p.result.stocks[-1, 4] for p in priced])),
        "backlog_at_end_without_rule": float(np.mean([r.stocks[-1, 4] for r in plain])),
        "demand_total": float(np.mean([s.demand.sum() for s in scenarios])),
        "unmet_because_of_rule": unmet, "unmet_share": unmet / demand if demand > 0 else 0.0,
        "demand_unmet_by_rule": bool(demand > 0 and unmet / demand > UNMET_SHARE),
        "shadow_prices": prices, "price_units": {f: PRICE_UNITS[f] for f in prices},
    }


def whole(value: float) -> str:
    """``value`` to the whole unit with thousands separators, a price of about 0 as "0": a
    slack rule's dual of -1e-12 (or -0.0) read "-0" with ``:,.0f``."""
    return f"{round(value):,}"


def describe(label: str, impact: dict[str, Any]) -> str:
    """One sentence on what the rule does to demand (for reports and the command line)."""
    prices = "; ".join(f"{f} {whole(v)} {impact['price_units'][f]}" for f, v in impact["shadow_prices"].items())
    price_text = f" Shadow price (hindsight LP duals): {prices}." if prices else ""
    ratio = impact["oracle_cost_ratio"]
    if impact["demand_unmet_by_rule"]:
        end, total = impact["backlog_at_end"], impact["demand_total"]
        cost = f"its cost is {ratio:.2f}x the cost without the rule" if ratio is not None else _from_zero(impact)
        return (f"{label}: the rule itself leaves demand unmet. Even the hindsight optimum keeps "
                f"{impact['backlog_per_period']:,.0f} units waiting on backlog per period on average (without the "
                f"rule: {impact['backlog_per_period_without_rule']:,.0f}) and ends the horizon with {end:,.0f} of "
                f"{total:,.0f} units of demand unserved ({100 * end / total:.0f}%; without the rule: "
                f"{impact['backlog_at_end_without_rule']:,.0f}); {cost}. Scores near 1 then mean close to the best "
                f"possible under the rule, not that customers are served.{price_text}")
    raises = f"it raises the optimal cost {ratio:.2f}x" if ratio is not None else _from_zero(impact)
    return (f"{label}: the rule leaves no demand unmet beyond what the chain leaves without it (oracle backlog "
            f"{impact['backlog_per_period']:,.0f} vs {impact['backlog_per_period_without_rule']:,.0f} units per "
            f"period); {raises}.{price_text}")


def _from_zero(impact: dict[str, Any]) -> str:
    # A chain whose optimum costs nothing without the rule has no factor to give.
    cost = impact["oracle_cost"]
    return (f"the optimal cost goes from 0 EUR without it to {cost:,.0f} EUR" if cost > 0 else
            "the optimal cost is 0 EUR with it and without it")


def cost_change(impact: dict[str, Any]) -> str:
    """How the rule moves the optimal cost, for a table cell: a factor, or from 0 EUR."""
    ratio = impact["oracle_cost_ratio"]
    if ratio is not None:
        return f"{ratio:.2f}x"
    return f"0 -> {impact['oracle_cost']:,.0f} EUR" if impact["oracle_cost"] > 0 else "0 EUR, as without"
