"""The CLSC-2 base rule's forecast and its two capacity- and supplier-aware parts
(moca.forecast.seasonal_level_forecast, moca.policy2.base_rule2), and meta-training's
early stopping on the validation tasks (moca.meta2.meta_train2 keep_best).

The rule is called directly on hand-built inputs, so each test isolates one decision.
"""

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _bench import load_script, run_script
from moca.forecast import seasonal_level_forecast
from moca import policy2
from moca.policy2 import RULE_YEAR, base_rule2, routing_economics
from moca.regime import Regime
from moca.scenario import DEFAULT_PARAMS_2

P2 = DEFAULT_PARAMS_2


def seasonal(periods, level=1000.0, amplitude=0.3, phase=7.0):
    k = np.arange(periods, dtype=float)
    return level * (1.0 + amplitude * np.sin(2.0 * math.pi * (k + phase) / 52.0))


def test_forecast_follows_a_noise_free_season():
    curve = seasonal(52 + 20 + 13)
    seen = torch.tensor(curve[:72])[None]
    forecast = seasonal_level_forecast(seen, 13)[0].numpy()
    assert forecast.shape == (13,)
    # A log-harmonic season is not exactly 1 + A sin, so a few percent of shape error is the
    # price of a 4-parameter fit; the 4-period mean of the same history misses by far more.
    error = np.abs(forecast - curve[72:]) / curve[72:]
    naive = np.abs(curve[68:72].mean() - curve[72:]) / curve[72:]
    assert error.max() < 0.05 and error.mean() < 0.5 * naive.mean()


def test_forecast_level_follows_a_jump_within_a_few_periods():
    curve = np.full(52 + 30, 1000.0)
    curve[-8:] *= 1.5  # the level jumped 8 periods ago
    forecast = seasonal_level_forecast(torch.tensor(curve)[None], 4)[0].numpy()
    assert forecast == pytest.approx(np.full(4, 1500.0), rel=0.1)


def test_forecast_refuses_a_wrong_shape():
    with pytest.raises(ValueError, match="demand_seen"):
        seasonal_level_forecast(torch.ones(5), 3)


def rule_inputs(forecast, supply_up=1.0, stocks=(8000.0, 2000.0, 1000.0, 0.0, 0.0), t=10.0, pipeline=4000.0,
                regime=(0.2, 0.0, math.inf, 0.0, 0.0), tax_ahead=None, mandate_ahead=None, changed=False):
    """One row of rule inputs; ``regime`` = (mandate, carbon tax, cap, landfill tax, recovery target);
    ``tax_ahead`` and ``mandate_ahead`` those announced for t, t+1, ... (default: the regime in
    force throughout; the last value holds to the end of the year's table); the year's
    forecast is ``forecast``, its last value held likewise; ``changed``: whether the regime
    changed earlier in the episode."""
    forecast = torch.as_tensor(forecast, dtype=torch.float64)[None]
    year = torch.cat([forecast, forecast[:, -1:].expand(1, RULE_YEAR - forecast.shape[1])], dim=1)
    announced = torch.tensor([regime] * RULE_YEAR, dtype=torch.float64)
    for column, values in ((1, tax_ahead), (0, mandate_ahead)):
        if values is not None:
            values = list(values) + [values[-1]] * (RULE_YEAR - len(values))
            announced[:, column] = torch.tensor(values, dtype=torch.float64)
    return {"stocks": torch.tensor([stocks], dtype=torch.float64), "pipeline": torch.tensor([pipeline], dtype=torch.float64),
            "regime": torch.tensor([regime], dtype=torch.float64),
            "window": torch.tensor([52.0], dtype=torch.float64), "supply_up": torch.tensor([supply_up], dtype=torch.float64),
            "market_avail": torch.tensor([1.0], dtype=torch.float64), "forecast": forecast,
            "forecast_year": year, "regime_ahead": announced[None],
            "regime_changed": torch.tensor([float(changed)], dtype=torch.float64),
            "t": torch.tensor([t], dtype=torch.float64), "horizon": torch.tensor([52.0], dtype=torch.float64)}


THRESHOLDS = torch.tensor([[200.0, 0.0, 500.0, 100.0, 9000.0, 50.0, 1000.0]], dtype=torch.float64)
#: The chain's parameters with no order capacity to speak of, so an order ahead shows whole.
WIDE = P2.model_copy(update={"cap_order": 1e6})
#: Recycled material a period brings at a demand of 1,000 on the chain's means (kg), by hand:
#: grade-B cores 1,000 x 0.25 x 0.45 x 1.4 kg, no grade-A core beyond the 300 refurbished,
#: the market's mean offer 800 x (1 + 0.2) / 2 kg.
RECYCLED_AT_1000 = 1000.0 * 0.25 * 0.45 * P2.mass * P2.yield_disassembly_b + P2.cap_market * 0.6


def test_rule_produces_for_the_next_period_when_demand_stays_under_capacity():
    action = base_rule2(THRESHOLDS, rule_inputs(np.full(13, 1000.0)), P2)[0]
    # q = f_t + f_{t+1} + s_P - P (no cores to refurbish): 1000 + 1000 + 200 - 1000.
    assert float(action[2] + action[3]) / P2.mass == pytest.approx(1200.0, rel=1e-4)  # the mandate margin 1 + 1e-5


def test_rule_builds_ahead_of_demand_above_capacity():
    stocks = (2000.0, 2000.0, 1000.0, 0.0, 0.0)
    under = base_rule2(THRESHOLDS, rule_inputs(np.full(13, 1000.0), stocks=stocks), P2)[0]
    peak = np.full(13, 1000.0)
    peak[4:10] = 1900.0  # six periods 400 above the 1,500-unit capacity, starting in 4 periods
    ahead = base_rule2(THRESHOLDS, rule_inputs(peak, stocks=stocks), P2)[0]
    produced = lambda a: float(a[2] + a[3]) / P2.mass  # noqa: E731
    assert produced(ahead) == pytest.approx(P2.cap_produce, rel=1e-4)  # 1000 + (excess 2,400) + ... > capacity
    assert produced(under) < P2.cap_produce
    assert float(ahead[0]) > float(under[0])  # and orders the virgin material for it


def test_rule_stands_recycled_material_in_for_virgin_while_the_supplier_is_down():
    stocks = (500.0, 300.0, 1000.0, 300.0, 100.0)  # little virgin, none on its way, few recycled kg
    up = base_rule2(THRESHOLDS, rule_inputs(np.full(13, 1000.0), 1.0, stocks, pipeline=0.0), P2)[0]
    down = base_rule2(THRESHOLDS, rule_inputs(np.full(13, 1000.0), 0.0, stocks, pipeline=0.0), P2)[0]
    assert float(down[0]) == 0.0 < float(up[0])  # no order reaches a supplier that is down
    recovered = lambda a: float(a[1] + a[5] + a[6])  # noqa: E731  market kg + cores disassembled
    assert recovered(down) > recovered(up)


def economics(regime, t=10.0):
    return {k: float(v[0]) for k, v in routing_economics(rule_inputs(np.full(13, 1000.0), t=t, regime=regime), P2).items()}


def test_routing_economics_follow_the_regime_prices():
    # No rule: disassembling a grade-B core (6 EUR for 1.4 kg) costs more than 1.4 kg of
    # virgin (3 EUR/kg) by more than disposing of it (0.5 EUR); the market (4 EUR/kg) too.
    free = economics((0.0, 0.0, math.inf, 0.0, 0.0))
    assert free["recover_b"] == 0.0 and free["buy_market"] == 0.0 and free["dispose"] == 1.0
    # 300 EUR/t on virgin's 6 kg CO2/kg makes virgin 4.8 EUR/kg: recover grade B, buy market.
    taxed = economics((0.0, 300.0, math.inf, 0.0, 0.0))
    assert taxed["recover_b"] == 1.0 and taxed["buy_market"] == 1.0
    # Between them lies each switch's break-even tax: B at (6 - 0.5)/1.4 - 3 EUR/kg, the market at 1 EUR/kg.
    assert economics((0.0, 150.0, math.inf, 0.0, 0.0))["recover_b"] == 0.0
    assert economics((0.0, 160.0, math.inf, 0.0, 0.0))["buy_market"] == 0.0
    assert economics((0.0, 170.0, math.inf, 0.0, 0.0))["buy_market"] == 1.0
    # A landfill tax: holding a core to the end (0.05 EUR a period) beats disposing of it;
    # early in the year recovering grade B (1.8 EUR net) beats holding it 41 periods (2.05).
    landfill = economics((0.0, 0.0, math.inf, 50.0, 0.0))
    assert landfill["dispose"] == 0.0 and landfill["recover_b"] == 1.0
    assert economics((0.0, 0.0, math.inf, 50.0, 0.0), t=40.0)["recover_b"] == 0.0
    # A cap at 0.8x a virgin-only period (14,000 kg CO2 at 1,000 units) needs 2,800 kg CO2
    # saved at 5 kg CO2 per kg recycled in place of virgin: a share of 0.28 of 2,000 kg.
    assert economics((0.0, 0.0, 0.8 * 14000.0, 0.0, 0.0))["cap_share"] == pytest.approx(0.28)
    assert free["cap_share"] == 0.0
    # A unit made from virgin bought now costs 2 kg x (3 EUR/kg + tau x 6 kg CO2/kg) + 2 EUR
    # to produce; it saves a 20 EUR lost sale only below tau = 1,000 EUR/t.
    assert free["order_virgin"] == 1.0 and taxed["order_virgin"] == 1.0
    assert economics((0.0, 990.0, math.inf, 0.0, 0.0))["order_virgin"] == 1.0
    assert economics((0.0, 1010.0, math.inf, 0.0, 0.0))["order_virgin"] == 0.0


def test_rule_orders_no_virgin_where_a_unit_made_of_it_costs_more_than_the_lost_sale():
    stocks = (1500.0, 300.0, 1000.0, 50.0, 200.0)
    low, high = (base_rule2(THRESHOLDS, rule_inputs(np.full(13, 1000.0), stocks=stocks, pipeline=0.0,
                                                    regime=(0.0, tau, math.inf, 0.0, 0.0)), P2)[0]
                 for tau in (900.0, 1100.0))
    assert float(low[0]) > 0.0 and float(high[0]) == 0.0
    # the virgin already bought is still used: making a unit of it only costs production
    assert float(high[2]) == pytest.approx(float(low[2])) and float(high[2]) > 0.0


def test_a_sales_returns_price_the_virgin_order():
    # Rule (i): at 841 EUR/t a unit from virgin costs 2 x (3 + 5.05) + 2 = 18.09 EUR, under
    # the 20 EUR lost sale. With a landfill tax of 77 EUR a quarter of sales come back, a
    # quarter of them scrap landfilled at 77.7 EUR; the graded cores cost at most holding
    # them (0.05 EUR a period to the end) and recovering them earns 5-8 EUR each: 3.6 EUR a unit
    # sold, 21.7 EUR in all.
    taxed = economics((0.0, 841.0, math.inf, 0.0, 0.0))
    both = economics((0.0, 841.0, math.inf, 77.2, 0.0))
    assert taxed["return_liability"] == 0.0 and taxed["order_virgin"] == 1.0  # recovering pays for the scrap
    hold = 0.05 * (52 - 1 - (10 + 2 + 1 + 6))
    price = 3.0 + 841.0 * 6.0 / 1000.0
    expected = 0.25 * (0.25 * 77.7 + 0.3 * min(hold, 6.0 - 0.9 * 2.0 * price) + 0.45 * min(hold, 6.0 - 0.7 * 2.0 * price))
    assert both["return_liability"] == pytest.approx(expected) and both["order_virgin"] == 0.0
    # A low carbon tax leaves ordering worth it under the same landfill tax (2 x 3.6 + 2 + 4.4 < 20).
    assert economics((0.0, 100.0, math.inf, 77.2, 0.0))["order_virgin"] == 1.0
    # Returns of a unit sold after T - 1 - L_r never come back within the horizon: no liability.
    late = economics((0.0, 841.0, math.inf, 77.2, 0.0), t=44.0)  # sold at 47, back at 53
    assert late["return_liability"] == 0.0 and late["order_virgin"] == 1.0


def revealed(scenarios):
    """``Observation2.seen`` at every period of ``scenarios``: ``[B, T, 11]``, as rollout2 sums it."""
    from moca.sim2 import ScenarioBatch2, revealed_sums

    return revealed_sums(ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64))


def test_the_rule_keeps_its_prior_on_a_chain_drawn_as_it_says_and_leaves_it_where_the_arrivals_tell_otherwise():
    from moca.scenario import draw_scenarios2

    prior = (policy2.PRIOR_RETURN_SHARE, torch.tensor(policy2.PRIOR_GRADE_SHARES, dtype=torch.float64),
             policy2.PRIOR_MARKET_SHARE)
    like = torch.zeros(40, dtype=torch.float64)
    seen = revealed(draw_scenarios2(40, first_seed=1000))  # the test seeds of every benchmark
    for t in range(P2.horizon):
        returns, grades, market = policy2.observed_means(seen[:, t], like)
        assert (returns == prior[0]).all() and (grades == prior[1]).all() and (market == prior[2]).all()
    # A chain that returns 12% of its sales in grades 0.5 / 0.3 / 0.2, with a market offering
    # 60-100% of its capacity: the prior until 8 periods are seen, then the observed means.
    other = P2.model_copy(update={"return_mean": 0.12, "grade_mean": (0.5, 0.3, 0.2), "market_avail_min": 0.6})
    scenarios = draw_scenarios2(8, params=other, first_seed=1000)
    seen = revealed(scenarios)
    returns, grades, market = policy2.observed_means(seen[:, 6], like[:8])
    assert (returns == prior[0]).all() and (grades == prior[1]).all() and (market == prior[2]).all()
    returns, grades, market = policy2.observed_means(seen[:, 30], like[:8])
    for i, s in enumerate(scenarios):
        assert float(returns[i]) == pytest.approx(s.return_frac[:31].mean())
        assert np.allclose(grades[i].numpy(), s.grades[:31].mean(0)) and grades[i].sum() == pytest.approx(1.0)
        assert float(market[i]) == pytest.approx(s.market_avail[:31].mean())
    # Nothing kept (inputs built by hand, seen=None): the prior.
    assert float(policy2.observed_means(None, like[:1])[0][0]) == policy2.PRIOR_RETURN_SHARE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_priors_recycled_material_is_the_default_chains_exactly_in_either_precision(dtype):
    # The market's mean offer on the prior is 800 x 0.6 = 480 kg a period; a float32 0.6
    # times 800 made it 480.00003, and float32 rollouts (meta-training, adaptation's support
    # batches) moved off the numbers they gave before under a regime that changes.
    x = {"stocks": torch.zeros(2, 5, dtype=dtype)}
    rate = policy2.mean_recycled_rate(torch.zeros(2, dtype=dtype), x, P2)
    assert rate.dtype == dtype and rate.tolist() == [480.0, 480.0]
    shares = policy2.observed_means(torch.zeros(2, 11, dtype=dtype), x["stocks"][:, 0])
    x.update(zip(("return_share", "grade_shares", "market_share"), shares))
    assert policy2.mean_recycled_rate(torch.zeros(2, dtype=dtype), x, P2).tolist() == [480.0, 480.0]


def test_returns_seen_below_the_prior_keep_the_virgin_order_on():
    # Under 841 EUR/t and 77.2 EUR a core the prior's quarter of sales coming back turns the
    # virgin order off (the test above); a chain seen to return 12% brings back half that
    # liability, and a unit made from virgin still pays.
    x = rule_inputs(np.full(13, 1000.0), regime=(0.0, 841.0, math.inf, 77.2, 0.0))
    prior = routing_economics(x, P2)
    x["return_share"], x["grade_shares"], x["market_share"] = (torch.tensor([0.12], dtype=torch.float64),
                                                               torch.tensor([[0.3, 0.45, 0.25]], dtype=torch.float64),
                                                               torch.tensor([0.6], dtype=torch.float64))
    seen = routing_economics(x, P2)
    assert float(prior["order_virgin"][0]) == 0.0 and float(seen["order_virgin"][0]) == 1.0
    assert float(seen["return_liability"][0]) == pytest.approx(float(prior["return_liability"][0]) * 0.12 / 0.25)


@settings(max_examples=60, deadline=None)
@given(tax=st.floats(0.0, 2000.0), landfill=st.floats(0.0, 100.0), t=st.integers(0, 51))
def test_return_liability_only_ever_turns_the_virgin_order_off(tax, landfill, t):
    with_returns = economics((0.0, tax, math.inf, landfill, 0.0), t=float(t))
    unit = 2.0 * (3.0 + tax * 6.0 / 1000.0) + 2.0
    assert with_returns["return_liability"] >= 0.0
    if unit >= 20.0:  # rule (h) alone already orders none
        assert with_returns["order_virgin"] == 0.0
    if landfill == 0.0 or tax < 500.0:  # no landfill charge, or virgin far below the lost sale
        assert with_returns["order_virgin"] == float(unit < 20.0)


def test_rule_orders_ahead_of_an_announced_carbon_tax_rise(monkeypatch):
    # Rule (k): a tax of 600 EUR/t announced for t+4 raises virgin by 3.6 EUR/kg; the virgin
    # for production from t+6 on (usually ordered from t+4 on, L_v = 2) is ordered now.
    # (Without the newsvendor cap, tested on its own below, so the quantities are whole periods.)
    monkeypatch.setattr(policy2, "RISE_SPREAD", 0.0)
    stocks = (5000.0, 300.0, 1000.0, 0.0, 0.0)
    flat = np.full(13, 1000.0)
    rise = [0.0] * 4 + [600.0] * 9
    now = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0), P2)[0]
    ahead = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, tax_ahead=rise), P2)[0]
    assert 0.0 < float(now[0]) < 2000.0  # the usual order: t+1 .. t+3's virgin, net of the 5,000 kg on hand
    assert float(ahead[0]) == pytest.approx(P2.cap_order)  # + seven periods of 1,600 kg: the order capacity
    # Only the order moves; and a fall of the tax, or a rise too small to pay for holding
    # the virgin (0.01 EUR/kg a period against 6 kg CO2/kg x 0.5 EUR/t), orders nothing ahead.
    assert torch.equal(ahead[1:], now[1:])
    small = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, tax_ahead=[0.0] * 4 + [0.5] * 9),
                       P2)[0]
    assert torch.equal(small, now)
    taxed = (0.2, 600.0, math.inf, 0.0, 0.0)
    held = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, regime=taxed), P2)[0]
    falls = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, regime=taxed,
                                               tax_ahead=[600.0] * 4 + [0.0] * 9), P2)[0]
    assert torch.equal(falls, held)
    # A stricter mandate announced with the tax leaves less of that production to virgin:
    # from t+7 on (production periods, the offset the mandate is read at) 0.6 instead of 0.2.
    loose = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, tax_ahead=rise), WIDE)[0]
    strict = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, tax_ahead=rise,
                                                mandate_ahead=[0.2] * 7 + [0.6] * 6), WIDE)[0]
    # Productions t+6 .. t+40 (the last, T-2 = 50) are ordered ahead; t+7 .. t+40 (34) under
    # 0.6, where a period's virgin is at most 0.4/0.6 of the recycled material a period brings
    # at a demand of 1,000 (RECYCLED_AT_1000). Under 0.2 the
    # period's 1,600 kg of virgin is below that limit. And since that limit holds production
    # under 0.6 below demand, rule (m) makes ahead of it: t+1 .. t+6 at capacity (1,500 units,
    # 2,400 kg of virgin each; t+1 .. t+3 the usual order, t+6 ordered ahead).
    assert float(strict[0]) < float(loose[0])
    assert float(loose[0] - strict[0]) == pytest.approx(
        38 * 1600.0 - (4 * 2400.0 + 34 * 0.4 / 0.6 * RECYCLED_AT_1000), rel=1e-6)


def test_rule_orders_ahead_of_a_rise_for_the_mandate_announced_not_the_one_in_force(monkeypatch):
    # Rule (k) under a mandate of 0.6 now, announced to lapse with a tax rise to 600 EUR/t
    # at t+4: production from t+4 on needs no recycled share, so the virgin ordered ahead for
    # it (t+6 .. t+40, 35 periods) is its whole 2,000 kg a period; held at 0.6 it would be at
    # most 0.4/0.6 of the 637.5 kg of recycled material a period brings (RECYCLED_AT_1000).
    monkeypatch.setattr(policy2, "RISE_SPREAD", 0.0)
    flat, stocks, regime = np.full(13, 1000.0), (5000.0, 3000.0, 1000.0, 0.0, 0.0), (0.6, 0.0, math.inf, 0.0, 0.0)
    rise = [0.0] * 4 + [600.0] * 9
    held = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, regime=regime, tax_ahead=rise),
                      WIDE)[0]
    lapses = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, regime=regime, tax_ahead=rise,
                                                mandate_ahead=[0.6] * 4 + [0.0]), WIDE)[0]
    assert float(held[0]) > 0.0
    assert float(lapses[0] - held[0]) == pytest.approx(35 * (1000.0 * WIDE.mass - 0.4 / 0.6 * RECYCLED_AT_1000),
                                                        rel=1e-9)
    assert torch.equal(lapses[1:], held[1:])


@pytest.mark.parametrize("tax", [63.0, 600.0])
def test_rule_orders_ahead_of_a_tax_rise_no_more_than_the_newsvendor_quantile(tax):
    # Rule (k)'s cap, by hand: a rise to `tax` EUR/t announced for t+4, t = 10, demand 1,000 a
    # period, mandate 0.2 (1,600 kg of virgin a production period). Production t+4 .. t+40
    # (37 periods; t+40 = T-2) comes after the usual order's cover; the kg for production
    # t+1+j would usually be ordered j-1 periods from now, and is ordered ahead where that is
    # at or after the rise and the rise (0.006 kg CO2/kg x tax) beats holding it (0.01 EUR/kg
    # a period).
    flat, stocks = np.full(13, 1000.0), (5000.0, 300.0, 1000.0, 0.0, 0.0)
    now = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0), WIDE)[0]
    ahead = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, pipeline=0.0, tax_ahead=[0.0] * 4 + [tax] * 9),
                       WIDE)[0]
    assert float(now[0]) > 0.0  # the order is not clamped at 0, so the difference is the order ahead
    saving_per_kg = tax * 6.0 / 1000.0
    early = [j for j in range(3, 40) if j - 1 >= 4 and saving_per_kg > 0.01 * (j - 1)]
    saving = np.mean([saving_per_kg - 0.01 * (j - 1) for j in early])  # EUR/kg
    critical = saving / (saving + 3.0)  # a kg left over loses its price, 3 EUR/kg at a tax of 0
    sigma = policy2.RISE_SPREAD * math.sqrt(np.mean([j + 1 for j in range(3, 40)]))
    quantile = 37 * 1600.0 * math.exp(sigma * NormalDist().inv_cdf(critical) - sigma ** 2 / 2)
    expected = min(1600.0 * len(early), quantile)
    assert float(ahead[0] - now[0]) == pytest.approx(expected, rel=1e-6)
    # A small rise far ahead is worth a small share of its need; a large one most of it.
    assert expected / (1600.0 * len(early)) < (0.3 if tax < 100 else 1.0)
    assert expected / (1600.0 * len(early)) > (0.0 if tax < 100 else 0.7)


def test_rule_makes_ahead_of_an_announced_stricter_mandate():
    # Rule (m): a mandate of 0.6 announced for t+5 on holds production then to the recycled
    # material a period brings over 0.6 (about 531 units at a demand of 1,000): the rule makes
    # at capacity now, while no mandate holds it, and orders the virgin for it.
    flat = np.full(13, 1000.0)
    free = (0.0, 0.0, math.inf, 0.0, 0.0)
    stocks = (20000.0, 2000.0, 1000.0, 0.0, 0.0)
    now = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, regime=free), P2)[0]
    ahead = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, regime=free, mandate_ahead=[0.0] * 5 + [0.6]),
                       P2)[0]
    produced = lambda a: float(a[2] + a[3]) / P2.mass  # noqa: E731
    assert produced(now) < P2.cap_produce
    assert produced(ahead) == pytest.approx(P2.cap_produce)
    # The same mandate in force all along: nothing to make ahead of, the rule is unchanged.
    held = (0.6, 0.0, math.inf, 0.0, 0.0)
    assert torch.equal(base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, regime=held, mandate_ahead=[0.6]), P2),
                       base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, regime=held), P2))


@settings(max_examples=60, deadline=None)
@given(mandate=st.floats(0.0, 0.95), tax=st.floats(0.0, 2000.0), landfill=st.floats(0.0, 100.0),
       recovery=st.floats(0.0, 1.0), cap=st.one_of(st.just(math.inf), st.floats(1.0, 100000.0)),
       t=st.integers(0, 51), virgin=st.floats(0.0, 100000.0), recycled=st.floats(0.0, 20000.0),
       later=st.floats(0.0, 3000.0))
def test_rule_under_a_regime_held_all_episode_ignores_the_rest_of_the_year(mandate, tax, landfill, recovery, cap, t,
                                                                          virgin, recycled, later):
    # (k)-(p) act only on a change, announced or past: under a regime held all
    # episode the year's forecast beyond the 13-period look-ahead changes nothing, so the
    # rule decides as it did before them.
    regime = (mandate, tax, cap, landfill, recovery)
    stocks = (virgin, recycled, 1000.0, 200.0, 300.0)
    flat = rule_inputs(np.full(13, 1000.0), stocks=stocks, t=float(t), regime=regime)
    other = rule_inputs(np.full(13, 1000.0), stocks=stocks, t=float(t), regime=regime)
    other["forecast_year"][:, 13:] = later
    assert torch.equal(base_rule2(THRESHOLDS, flat, P2), base_rule2(THRESHOLDS, other, P2))
    # and rule_inputs leaves the year out for such a table, which is the same decision
    skipped = {k: v for k, v in flat.items() if k not in ("forecast_year", "regime_changed")}
    assert torch.equal(base_rule2(THRESHOLDS, skipped, P2), base_rule2(THRESHOLDS, flat, P2))


@settings(max_examples=60, deadline=None)
@given(mandate=st.floats(0.0, 0.95), tax=st.floats(0.0, 2000.0), mandate_later=st.floats(0.0, 0.95),
       tax_later=st.floats(0.0, 2000.0), change_at=st.integers(1, 51), t=st.integers(0, 51),
       virgin=st.floats(0.0, 100000.0), recycled=st.floats(0.0, 20000.0), demand=st.floats(0.0, 3000.0),
       changed=st.booleans())
def test_rule_gradients_stay_finite_under_announced_changes(mandate, tax, mandate_later, tax_later, change_at, t,
                                                            virgin, recycled, demand, changed):
    # Adaptation steps backpropagate through the rule: a non-finite gradient anywhere
    # (e.g. a square root at 0 where (k) has no virgin need) would make the weights NaN.
    regime = (mandate, tax, math.inf, 0.0, 0.0)
    x = rule_inputs(np.full(13, demand), stocks=(virgin, recycled, 1000.0, 200.0, 300.0), t=float(t), regime=regime,
                    tax_ahead=[tax] * change_at + [tax_later], mandate_ahead=[mandate] * change_at + [mandate_later],
                    changed=changed)
    thresholds = THRESHOLDS.clone().requires_grad_(True)
    x["stocks"].requires_grad_(True)
    action = base_rule2(thresholds, x, P2)
    assert bool(torch.isfinite(action).all())
    action.sum().backward()
    assert bool(torch.isfinite(thresholds.grad).all()) and bool(torch.isfinite(x["stocks"].grad).all())


def test_rule_uses_virgin_held_beyond_the_year_first_after_a_change():
    # Rule (l): a tax of 600 EUR/t makes the market (4 EUR/kg) pay against virgin (6.6 EUR/kg).
    # With 60,000 kg of virgin on hand at t = 40, more than the rest of the horizon's
    # production can use, the rule buys nothing on the market for its price and uses virgin
    # before recycled material, but only after a change of the regime within the episode.
    taxed = (0.0, 600.0, math.inf, 0.0, 0.0)
    flat = np.full(13, 1000.0)
    stocks = (60000.0, 3000.0, 1000.0, 0.0, 0.0)
    held = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, t=40.0, regime=taxed), P2)[0]
    after = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, t=40.0, regime=taxed, changed=True), P2)[0]
    assert float(held[1]) == pytest.approx(P2.cap_market)  # all the market offers
    assert float(held[3]) > 0.0  # recycled material first
    assert float(after[1]) == 0.0 and float(after[3]) == 0.0
    assert float(after[2]) == pytest.approx(float(held[2] + held[3]))  # virgin instead: the same production
    # Virgin held within the rest of the horizon's need leaves the rule as it is.
    few = (5000.0, 3000.0, 1000.0, 0.0, 0.0)
    assert torch.equal(base_rule2(THRESHOLDS, rule_inputs(flat, stocks=few, t=40.0, regime=taxed, changed=True), P2),
                       base_rule2(THRESHOLDS, rule_inputs(flat, stocks=few, t=40.0, regime=taxed), P2))


def test_rule_banks_recycled_material_where_a_mandate_holds_production_after_a_change():
    # Rule (n): after a change to a mandate of 0.8, production can use at most 1 / 0.8 times
    # the recycled material a period brings (637.5 kg at a demand of 1,000: about 398 units
    # a period against 1,000 sold). Virgin held beyond need cannot stand in for recycled
    # material there, so the rule buys all the market offers, where (l) would cut it.
    flat = np.full(13, 1000.0)
    stocks = (60000.0, 3000.0, 1000.0, 0.0, 0.0)
    binding, loose = (0.8, 600.0, math.inf, 0.0, 0.0), (0.1, 600.0, math.inf, 0.0, 0.0)
    after = base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, t=40.0, regime=binding, changed=True), P2)[0]
    assert float(after[1]) == pytest.approx(P2.cap_market)
    assert float(after[3]) == pytest.approx(0.8 * float(after[2] + after[3]), rel=1e-4)  # the mandate's share
    # A mandate of 0.1 leaves production at capacity (about 3,188 units): (l) cuts the market.
    assert float(base_rule2(THRESHOLDS, rule_inputs(flat, stocks=stocks, t=40.0, regime=loose, changed=True),
                            P2)[0, 1]) == 0.0


@pytest.mark.parametrize("mandate_ahead, expected", [
    # 0.8 from t + 6: production runs at capacity K (1,500 units, 3,000 kg); at a demand of
    # 1,500 the chain brings 716.25 kg of recycled material a period (grade-B cores of a
    # quarter of sales, 236.25 kg, and the market's mean 480 kg), so a period under the
    # mandate can use 0.25 x 716.25 kg of virgin: 0.0596875 of today's 3,000 kg. The stock
    # serves 1 + 3 periods at today's rate and 35 at that share (to t = 50, the last
    # production): 6.0890625 of VIRGIN_DRAWDOWN's 26, at the scale of 1.5 (demand 1,500).
    ([0.0] * 6 + [0.8], 1.5 * (1.0 + 3.0 + 35 * 0.25 * 716.25 / 3000.0) / 26.0),
    (None, 1.5),  # no change: the 41 periods to the end keep the whole stock
])
def test_rule_draws_its_virgin_safety_stock_down_ahead_of_a_cut_in_virgin_use(mandate_ahead, expected):
    # Rule (o): an announced mandate that cuts the virgin a period can use ends the safety
    # stock's use as the horizon's end does. The order's derivative in s_V is the share of
    # the stock held.
    thresholds = THRESHOLDS.clone()
    thresholds[0, 1] = 2000.0  # s_V, kg at a demand of 1,000
    thresholds.requires_grad_(True)
    x = rule_inputs(np.full(13, 1500.0), stocks=(3000.0, 0.0, 1000.0, 0.0, 0.0), pipeline=8500.0,
                    regime=(0.0, 0.0, math.inf, 0.0, 0.0), mandate_ahead=mandate_ahead)
    order = base_rule2(thresholds, x, P2)[0, 0]
    assert 0.0 < float(order.detach()) < P2.cap_order  # not clipped, so the derivative is the share
    order.backward()
    assert float(thresholds.grad[0, 1]) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("tax_ahead, cap, expected", [
    # Rule (q), at 300 EUR/t now and a demand of 1,500 (scale 1.5): the order's derivative in
    # s_V is the share of the safety stock topped up.
    ([300.0] * 3 + [100.0], math.inf, 0.0),  # 200 EUR/t less from t + 3: 1.2 EUR/kg >= FALL_FULL
    ([300.0] * 3 + [200.0], math.inf, 1.5 * (1.0 - 0.6 / 1.0)),  # 100 EUR/t less: 0.6 EUR/kg
    ([300.0] * 7 + [100.0], math.inf, 1.5),  # the fall at t + 7, beyond FALL_REACH's 6 periods
    ([300.0] * 3 + [100.0], 10000.0, 1.5),  # under a cap the stock is kept
    (None, math.inf, 1.5),  # no change
])
def test_rule_stops_topping_up_its_virgin_safety_stock_ahead_of_a_tax_fall(tax_ahead, cap, expected, monkeypatch):
    monkeypatch.setattr(policy2, "FALL_REACH", 6)
    monkeypatch.setattr(policy2, "FALL_FULL", 1.0)
    thresholds = THRESHOLDS.clone()
    thresholds[0, 1] = 2000.0  # s_V, kg at a demand of 1,000
    thresholds.requires_grad_(True)
    x = rule_inputs(np.full(13, 1500.0), stocks=(0.0, 0.0, 1000.0, 0.0, 0.0), pipeline=0.0,
                    regime=(0.0, 300.0, cap, 0.0, 0.0), tax_ahead=tax_ahead)
    order = base_rule2(thresholds, x, WIDE)[0, 0]
    assert float(order.detach()) > 0.0
    order.backward()
    assert float(thresholds.grad[0, 1]) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("tax, year, raised", [
    (1200.0, True, False),  # a change within the episode and (h)'s price test fails: no virgin
    (1200.0, False, True),  # a regime held all episode: the residual as meta-trained
    (100.0, True, True),  # virgin pays: the residual's order stands
])
def test_residual_orders_no_virgin_where_the_rule_prices_it_out_after_a_change(tax, year, raised):
    from moca.policy2 import LSTMPolicy2

    module = LSTMPolicy2(P2).double()
    with torch.no_grad():
        module.head.bias[0] = 1.0  # the residual asks for more virgin
    x = rule_inputs(np.full(13, 1000.0), stocks=(0.0, 0.0, 0.0, 0.0, 0.0), pipeline=0.0,
                    regime=(0.0, tax, math.inf, 0.0, 0.0), changed=True)
    if not year:
        x = {k: v for k, v in x.items() if k not in ("forecast_year", "regime_changed")}
    frames = torch.zeros(1, module.frame_size * module.config.window, dtype=torch.float64)
    with torch.no_grad():
        raw, _ = module(frames, x)
        base = base_rule2(module.thresholds(x["regime"], x["window"]), x, P2)
    assert (float(raw[0, 0]) > float(base[0, 0]) + 1.0) == raised
    assert torch.equal(raw[0, 1:], (base + module.config.residual_scale * module.scale
                                    * module.head.bias.detach())[0, 1:])  # the other actions as before


def test_rule_orders_virgin_for_the_next_periods_at_their_announced_share():
    # Rule (p): with no mandate now and 0.8 announced from t + 2, production of t + 1 .. t + 3
    # (3,000 kg each at capacity) needs 3,000 + 2 x 600 kg of virgin, not 9,000 kg; net of the
    # 1,000 kg on their way the order is 3,200 kg (s_V = 0 here, and no material pays at a tax of 0).
    x = rule_inputs(np.full(13, 1500.0), stocks=(0.0, 0.0, 1000.0, 0.0, 0.0), pipeline=1000.0,
                    regime=(0.0, 0.0, math.inf, 0.0, 0.0), mandate_ahead=[0.0, 0.0, 0.8])
    assert float(base_rule2(THRESHOLDS, x, P2)[0, 0]) == pytest.approx(3000.0 + 2 * 600.0 - 1000.0)


def test_rule_in_a_simulated_episode_orders_ahead_of_an_announced_tax():
    """The tax the rule looks ahead at is the announced schedule's: before a rise at period 8
    the rule orders more virgin than under the tax of period 0 held all year, and from the rise
    on no order is placed while the virgin bought ahead lasts (through Threshold2Policy and
    the simulator, every action through the projection)."""
    from moca.baselines.threshold2 import Threshold2Policy
    from moca.projection import project2_batch
    from moca.regime import RegimeSchedule
    from moca.scenario import draw_scenario2
    from moca.sim2 import ScenarioBatch2, rollout2

    orders = {}
    for name, plan in (("flat", RegimeSchedule.constant(Regime(recycled_content_min=0.1))),
                       ("rise", RegimeSchedule.from_list([{"start": 0, "recycled_content_min": 0.1},
                                                          {"start": 8, "recycled_content_min": 0.1,
                                                           "carbon_tax": 1200.0}]))):
        batch = ScenarioBatch2.from_scenarios([draw_scenario2(3, plan)], dtype=torch.float64)
        with torch.no_grad():
            out = rollout2(batch, Threshold2Policy(THRESHOLDS[0].numpy(), P2), project2_batch)
        orders[name] = out.executed[0, :, 0].numpy()
    assert orders["rise"][:6].sum() > orders["flat"][:6].sum() + 4000.0
    assert orders["rise"][8:].sum() < orders["flat"][8:].sum()  # 1,200 EUR/t: (h) orders none from 8 on


def test_rule_in_a_simulated_episode_makes_and_banks_ahead_of_an_announced_mandate():
    """Rule (m) through Threshold2Policy and the simulator: with a mandate of 0.7 announced
    for period 20, the rule holds more product and more recycled material at period 19 than
    with no mandate all year, and sells more over the year than it would with the mandate
    only seen when it arrives; every action through the projection keeps every row."""
    from moca.baselines.threshold2 import Threshold2Policy
    from moca.projection import project2_batch
    from moca.regime import RegimeSchedule
    from moca.scenario import draw_scenario2
    from moca.sim2 import ScenarioBatch2, rollout2

    strict = {"start": 20, "recycled_content_min": 0.7}
    plans = {"free": RegimeSchedule.constant(Regime()),
             "announced": RegimeSchedule.from_list([{"start": 0}, strict])}
    outs = {}
    for name, plan in plans.items():
        batch = ScenarioBatch2.from_scenarios([draw_scenario2(3, plan)], dtype=torch.float64)
        with torch.no_grad():
            outs[name] = rollout2(batch, Threshold2Policy(THRESHOLDS[0].numpy(), P2), project2_batch)
    held = {name: out.stocks[0, :20].numpy() for name, out in outs.items()}  # after periods 0 .. 19
    assert held["announced"][:, 2].mean() > held["free"][:, 2].mean() + 2000.0  # product made ahead (units)
    assert held["announced"][19, 1] > held["free"][19, 1] + 300.0  # recycled material banked (kg)
    # Unannounced: the same plan, but the rule's look-ahead sees no mandate before period 20.
    batch = ScenarioBatch2.from_scenarios([draw_scenario2(3, plans["announced"])], dtype=torch.float64)
    blind = batch.regime.clone()
    blind[:, 20:] = batch.regime[:, :1]

    class Blind(Threshold2Policy):
        def act(self, obs):
            if obs.t < 20:
                obs = dataclasses.replace(obs, regime=blind)
            return super().act(obs)

    with torch.no_grad():
        unannounced = rollout2(batch, Blind(THRESHOLDS[0].numpy(), P2), project2_batch)
    assert float(outs["announced"].lost[0].sum()) < float(unannounced.lost[0].sum()) - 5000.0  # units


def test_rule_routes_cores_and_buys_by_the_regime():
    stocks = (1000.0, 0.0, 1000.0, 50.0, 200.0)
    # no recycled targets, keep 50 A cores
    thresholds = torch.tensor([[0.0, 0.0, 0.0, 0.0, 9000.0, 50.0, 1000.0]], dtype=torch.float64)

    def act(regime):
        return base_rule2(thresholds, rule_inputs(np.full(13, 1000.0), stocks=stocks, pipeline=3000.0, regime=regime), P2)[0]

    free, taxed = act((0.0, 0.0, math.inf, 0.0, 0.0)), act((0.0, 300.0, math.inf, 0.0, 0.0))
    assert float(free[6]) == 0.0 and float(free[1]) == 0.0  # no grade B recovered, nothing bought
    assert float(taxed[6]) == pytest.approx(200.0) and float(taxed[1]) == pytest.approx(P2.cap_market)
    assert float(taxed[0]) < float(free[0])  # and orders less virgin for the material it brings in
    capped = act((0.0, 0.0, 0.8 * 14000.0, 0.0, 0.0))
    assert float(capped[6]) > 0.0 and float(capped[0]) < float(free[0])


@pytest.mark.parametrize("yields", [{"yield_disassembly_b": 0.0}, {"yield_disassembly_a": 0.0},
                                    {"yield_disassembly_a": 0.0, "yield_disassembly_b": 0.0}])
def test_rule_disassembles_no_core_of_a_grade_that_yields_nothing(yields):
    # A yield of 0 is a valid chain (the grade's material cannot be recovered): the rule's
    # cores-for-material divided by it (0/0: a NaN action, an internal error).
    from moca.baselines.threshold2 import Threshold2Policy
    from moca.projection import project2_batch
    from moca.regime import TASKS_2
    from moca.scenario import Params2, draw_scenario2
    from moca.sim2 import ScenarioBatch2, rollout2

    params = Params2(**yields)
    batch = ScenarioBatch2.from_scenarios([draw_scenario2(s, TASKS_2["T2"], params) for s in (1000, 1001)],
                                          dtype=torch.float64)
    with torch.no_grad():
        out = rollout2(batch, Threshold2Policy(THRESHOLDS[0].numpy(), params), project2_batch)
    assert torch.isfinite(out.total_cost).all() and torch.isfinite(out.executed).all()
    for column, field in ((5, "yield_disassembly_a"), (6, "yield_disassembly_b")):  # g_A, g_B
        if field in yields:  # T2 (a mandate, no landfill tax): such a core brings nothing worth its cost
            assert float(out.executed[:, :, column].abs().max()) == 0.0
    assert float(out.executed[:, :, 5:7].sum()) > 0.0 or len(yields) == 2  # the other grade still recovered


def test_rule_orders_no_virgin_for_production_that_could_not_be_sold():
    # At t = 48 (T = 52, L_v = 2) the order arrives at t = 50 and serves the production of
    # t = 50 only (production at t = 51 is never sold): d_51 must not change it.
    low, high = np.full(13, 1000.0), np.full(13, 1000.0)
    high[3:] = 1400.0
    stocks = (1000.0, 500.0, 1000.0, 0.0, 0.0)
    a = base_rule2(THRESHOLDS, rule_inputs(low, t=48.0, stocks=stocks, pipeline=0.0), P2)[0]
    b = base_rule2(THRESHOLDS, rule_inputs(high, t=48.0, stocks=stocks, pipeline=0.0), P2)[0]
    assert float(a[0]) > 0.0 and float(a[0]) == pytest.approx(float(b[0]))
    earlier = base_rule2(THRESHOLDS, rule_inputs(high, t=40.0, stocks=stocks, pipeline=0.0), P2)[0]
    assert float(earlier[0]) > float(b[0])


def test_rule_draws_its_virgin_safety_stock_down_over_the_last_half_year():
    from moca.policy2 import VIRGIN_DRAWDOWN

    # With s_V kg of safety stock, the order grows by s_V * min(1, (T - 1 - t - L_v) / 26)
    # over the order without one: all of it half a year before the end, half of it 13
    # periods later, none once no order can arrive before the last production.
    flat = np.full(13, 1000.0)
    stocks = (3000.0, 0.0, 1000.0, 0.0, 0.0)  # neither order reaches K_o
    with_stock = THRESHOLDS.clone()
    with_stock[0, 1] = 2000.0

    def extra(t: float) -> float:
        inputs = rule_inputs(flat, t=t, stocks=stocks, pipeline=0.0)
        return float(base_rule2(with_stock, inputs, P2)[0, 0] - base_rule2(THRESHOLDS, inputs, P2)[0, 0])

    assert VIRGIN_DRAWDOWN == 26.0
    assert extra(10.0) == pytest.approx(2000.0)
    assert extra(52.0 - 1.0 - 2.0 - 13.0) == pytest.approx(1000.0)
    assert extra(52.0 - 1.0 - 2.0 - 26.0) == pytest.approx(2000.0)
    assert extra(52.0 - 1.0 - 2.0) == pytest.approx(0.0)


def test_meta_training_keeps_the_best_validated_weights():
    from moca.meta2 import MetaConfig2, meta_train2
    from moca.policy import PolicyConfig

    torch.set_num_threads(1)
    config = MetaConfig2(meta_steps=2, tasks_per_step=1, support_size=1, query_size=1, validate_every=1,
                         validation_tasks=1, outer_lr=0.05, policy=PolicyConfig(hidden=4))
    module, history = meta_train2(config)
    scores = [v["score"] for v in history["validation"]]
    assert history["selected_step"] == int(np.argmax(scores))
    from moca.meta2 import _validator, OracleCache2

    assert _validator(config, OracleCache2())(module) == pytest.approx(max(scores), rel=1e-9)


def test_virgin_stock_benchmark_quick(tmp_path, monkeypatch):
    import json

    import moca.policy2 as policy2

    out = tmp_path / "rule2_virgin.json"
    run_script("bench_rule2_virgin.py", ["--quick", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert policy2.VIRGIN_DRAWDOWN == result["shipped"]["drawdown"] == 26.0  # the script put it back
    row = result["scores"]["T2"]
    assert set(row) == {"3 periods, 2,013 kg", "26 periods, 8,000 kg"}
    assert all(0 < v <= 1 + 1e-6 for v in row.values())
    # On these two validation seeds the outage stock drawn down over half a year pays.
    assert row["26 periods, 8,000 kg"] > row["3 periods, 2,013 kg"]


def test_demand_parts_compose_the_noise_free_curve():
    from moca.regime import TASKS_2
    from moca.scenario import HISTORY, demand_curve2, demand_parts2, draw_scenario2, season_factor2

    for seed in (0, 901, 1004):
        parts = demand_parts2(seed, P2)
        k = np.arange(HISTORY + P2.horizon)
        curve = P2.demand_base * np.exp(parts["log_level"]) * season_factor2(k, parts["amplitude"], parts["phase"])
        assert np.array_equal(np.maximum(curve, 0.0), demand_curve2(seed, P2))
        assert parts["log_level"][HISTORY - 1] == 0.0  # the level is 0 at the last history period
        # The drawn demand is the curve times the period noise (log-normal, sigma 0.15).
        demand = draw_scenario2(seed, TASKS_2["T2"], P2).demand
        ratio = np.log(demand / demand_curve2(seed, P2)[HISTORY:])
        assert abs(ratio.mean()) < 0.1 and 0.05 < ratio.std() < 0.3


def test_ceiling_benchmark_quick(tmp_path, monkeypatch):
    import json

    out = tmp_path / "clsc2_ceiling.json"
    run_script("bench_clsc2_ceiling.py", ["--quick", "--tasks", "T2", "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["tasks"]["T2"]
    assert list(rows) == ["own", "told level, drift, season", "told the noise-free curve", "told the demand"]
    for row in rows.values():
        assert 0 < row["score"] <= 1 + 1e-6 and row["safety_product"] in (300.0, 450.0) and row["lost_units"] >= 0
    # Told the demand itself, the rule does better on the seeds its safety stock was picked on.
    assert rows["told the demand"]["validation_score"] > rows["own"]["validation_score"]


def test_adaptation_budget_benchmark_quick(tmp_path, monkeypatch):
    import json

    out = tmp_path / "clsc2_adapt_budget.json"
    run_script("bench_clsc2_adapt_budget.py", ["--quick", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    rows = result["tasks"]["T2"]
    assert list(rows) == ["zero-shot", "2x1", "4x2"]
    for name in ("2x1", "4x2"):
        row = rows[name]
        assert 0 < row["test_score"] <= 1 + 1e-6 and row["violations"] == 0 and row["seconds"] > 0
        assert len(row["validation_curve"]) == row["steps"] + 1
    assert abs(result["mean"]["4x2"] - rows["4x2"]["test_score"]) < 1e-12
    # The zero-shot row is the shipped meta-init scored on the same four test seeds.
    from moca.meta2 import OracleCache2, load_policy2
    from moca.policy2 import evaluate_policy2
    from moca.regime import TASKS_2

    module, _ = load_policy2("default")
    cache = OracleCache2(module.params)
    tests = cache.scenarios(range(1000, 1004), TASKS_2["T2"])
    assert abs(evaluate_policy2(module, None, tests, cache.costs(tests))["score"] - rows["zero-shot"]["test_score"]) < 1e-12


def test_random_regimes_benchmark_quick(tmp_path, monkeypatch):
    """bench_random_regimes.py --quick --with-cap --portfolio on CLSC-2: the regimes are the
    first seeded draws of the whole space (no named task) that have an emission cap, every
    policy is scored with 0 violations, and the portfolio deploys the better-validated one."""
    import json

    from moca.meta2 import sample_task2
    from moca.regime import TASKS, Regime

    out = tmp_path / "random_regimes.json"
    run_script("bench_random_regimes.py", ["--quick", "--world", "CLSC-2", "--seed", "7", "--with-cap",
                                           "--portfolio", "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["worlds"]["CLSC-2"]
    rng = np.random.default_rng([7, 2])
    draws = [sample_task2(rng, named_share=0.0) for _ in range(40)]
    expected = [r for r in draws if r.emission_cap is not None][:2]  # --with-cap: the first draws with a cap
    assert len(expected) == 2 and [Regime(**row["regime"]) for row in rows] == expected
    assert not any(Regime(**row["regime"]) in TASKS.values() for row in rows)
    mpc = "mpc-sampled (safety stock re-picked)"
    for row in rows:
        portfolio = "moca adapt (LSTM or sampled MPC)"
        assert set(row) == {"regime", "label", "moca", "threshold (re-tuned)", mpc, portfolio}
        for name in ("moca", "threshold (re-tuned)", mpc, portfolio):
            assert 0 < row[name]["score"] <= 1 + 1e-6 and row[name]["violations"] == 0 and row[name]["seconds"] >= 0
        # --portfolio deploys the candidate with the better validation score (the LSTM on a tie)
        validation = row[portfolio]["validation_scores"]
        lstm = validation["default"] >= validation["mpc"]
        assert row[portfolio]["chosen"] == ("LSTM" if lstm else "sampled MPC")
        assert row[portfolio]["safety_stock"] in (300.0, 1000.0)  # --quick's grid
        if lstm:  # the LSTM candidate is the moca column (the same weights)
            assert row[portfolio]["score"] == row["moca"]["score"]
        elif row[portfolio]["safety_stock"] == row[mpc]["safety_stock"]:
            assert row[portfolio]["score"] == row[mpc]["score"]
        assert row[portfolio]["seconds"] > row["moca"]["seconds"]  # the choice includes the LSTM's adaptation


def test_random_regimes_benchmark_schedules_quick(tmp_path, monkeypatch):
    """--schedules: regime plans that start at 0 and change one to three times, each policy
    given the whole plan and scored sound; CLSC-1 is refused."""
    import json

    from moca.regime import RegimeSchedule

    out = tmp_path / "schedules.json"
    run_script("bench_random_regimes.py", ["--quick", "--world", "CLSC-2", "--seed", "5", "--schedules",
                                           "--out", str(out)], monkeypatch)
    rows = json.loads(out.read_text())["worlds"]["CLSC-2"]
    assert len(rows) == 2
    for row in rows:
        starts = [e["start"] for e in row["plan"]]
        assert starts[0] == 0 and 2 <= len(starts) <= 4 and starts == sorted(set(starts))
        RegimeSchedule.from_list(row["plan"])  # a valid plan
        assert row["label"].count(" → ") == len(starts) - 1
        for name in ("moca", "moca zero-shot (meta-init, no step)", "threshold (re-tuned)",
                     "mpc-sampled (safety stock re-picked)"):
            assert 0 < row[name]["score"] <= 1 + 1e-6 and row[name]["violations"] == 0
    with pytest.raises(SystemExit):
        run_script("bench_random_regimes.py", ["--quick", "--world", "both", "--schedules"], monkeypatch)


def test_random_regimes_benchmark_retune_budget(tmp_path, monkeypatch):
    """--retune-budget: moca's re-tuning with fewer candidates than the peer's, said in the
    recorded command; without --retune, or below one candidate, it exits 2."""
    import json

    out = tmp_path / "retune.json"
    run_script("bench_random_regimes.py", ["--quick", "--world", "CLSC-2", "--seed", "5", "--retune",
                                           "--retune-budget", "3", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert result["command"].endswith("--retune --quick --retune-budget 3")
    for row in result["worlds"]["CLSC-2"]:
        assert row["moca"]["start"] in ("checkpoint", "re-tuned thresholds", "re-tuned rule")
        assert set(row["moca"]["start_scores"]) == {"checkpoint", "re-tuned thresholds", "re-tuned rule"}
        assert 0 < row["moca"]["score"] <= 1 + 1e-6 and row["moca"]["violations"] == 0
    for args in (["--retune-budget", "3"], ["--retune", "--retune-budget", "0"]):
        with pytest.raises(SystemExit) as done:
            run_script("bench_random_regimes.py", ["--quick", "--world", "CLSC-2", *args, "--out", str(out)],
                       monkeypatch)
        assert done.value.code == 2


def test_schedule_orders_benchmark_splits_virgin_by_segment(tmp_path, monkeypatch):
    """bench_schedule_orders.py: per segment of an announced plan, the virgin ordered by the
    hindsight plan, moca and the rule, summing to each one's whole-episode orders; a plan
    index the file lacks or a file that is not a schedules result exits 2."""
    import json

    from moca.regime import RegimeSchedule

    plans = tmp_path / "plans.json"
    entries = [{"start": 0, "recycled_content_min": 0.1}, {"start": 5, "recycled_content_min": 0.1, "carbon_tax": 900.0}]
    plans.write_text(json.dumps({"worlds": {"CLSC-2": [{"plan": entries}]}}))
    RegimeSchedule.from_list(entries)
    out = tmp_path / "orders.json"
    with pytest.raises(SystemExit) as done:
        run_script("bench_schedule_orders.py", ["--plans", str(plans), "--index", "0", "--seeds", "1000", "1001",
                                                "--out", str(out)], monkeypatch)
    assert done.value.code == 0
    result = json.loads(out.read_text())
    assert result["segments"] == [0, 5] and result["seeds"] == [1000, 1000]
    assert result["oracle"]["virgin_kg"][0] > 0
    for name in ("moca (meta-init, zero-shot)", "threshold (start thresholds)"):
        assert len(result[name]["virgin_kg"]) == 2 and min(result[name]["virgin_kg"]) >= 0
        assert 0 < result[name]["score"] <= 1 + 1e-6 and result[name]["violations"] == 0
    for args in (["--index", "3"], ["--plans", str(tmp_path / "missing.json")]):
        with pytest.raises(SystemExit) as done:
            run_script("bench_schedule_orders.py", ["--plans", str(plans), *args, "--out", str(out)], monkeypatch)
        assert done.value.code == 2


def test_returns_filter_of_the_benchmark_is_rule_i():
    """bench_random_regimes.py --returns-liability restates rule (i) from the model's prices
    (so it draws the same regimes on a source without the rule): it must agree with
    routing_economics on whether some period's virgin order is turned off by the returns."""
    from moca.meta2 import sample_task2

    bench = load_script("bench_random_regimes.py")
    rng = np.random.default_rng([2026, 2])
    draws = [sample_task2(rng, named_share=0.0) for _ in range(400)]
    draws += [Regime(carbon_tax=tau, landfill_tax=lam) for tau in (500.0, 700.0, 841.0, 990.0) for lam in (0.0, 40.0, 77.0, 100.0)]

    def rule_turns_it_off(regime):
        unit = 2.0 * (3.0 + regime.carbon_tax * 6.0 / 1000.0) + 2.0
        return unit < 20.0 and any(economics((0.0, regime.carbon_tax, math.inf, regime.landfill_tax, 0.0),
                                             t=float(t))["order_virgin"] == 0.0 for t in range(52 - 2 - 1))

    assert [bench.returns_tip_the_sale(r) for r in draws] == [rule_turns_it_off(r) for r in draws]
    assert any(bench.returns_tip_the_sale(r) for r in draws)


def test_tax_rise_filter_of_the_benchmark(monkeypatch):
    """bench_random_regimes.py --tax-rise keeps the plans where a later carbon tax is at least
    50 EUR/t above an earlier one (a rise after a fall counts), and needs --schedules."""
    from moca.regime import RegimeSchedule

    bench = load_script("bench_random_regimes.py")

    def plan(*taxes):
        return RegimeSchedule.from_list([{"start": 10 * i, "carbon_tax": tax} for i, tax in enumerate(taxes)])

    assert bench.tax_rises(plan(0.0, 50.0)) and bench.tax_rises(plan(300.0, 0.0, 260.0))
    assert not bench.tax_rises(plan(0.0, 49.0)) and not bench.tax_rises(plan(500.0, 200.0, 0.0))
    assert not bench.tax_rises(plan(100.0))
    with pytest.raises(SystemExit):
        run_script("bench_random_regimes.py", ["--quick", "--world", "CLSC-2", "--tax-rise"], monkeypatch)


def test_extreme_regimes_benchmark_quick(tmp_path, monkeypatch):
    """bench_extreme_regimes.py --quick --adapt --retune-default: plans at the ends of the
    regime space, both worlds, every policy sound (0 violations, scores in (0, 1]), CLSC-2's
    moca adapt too, re-tuning its rule first as shipped (seed 4 draws two CLSC-2 schedules
    whose rules change)."""
    import json

    out = tmp_path / "extreme.json"
    run_script("bench_extreme_regimes.py", ["--quick", "--adapt", "--retune-default", "--seed", "4", "--out", str(out)],
               monkeypatch)
    result = json.loads(out.read_text())
    assert result["problems"] == [] and result["command"].endswith("--adapt --retune-default --quick")
    assert [row["moca adapt (3 steps)"]["retune"] for row in result["worlds"]["CLSC-2"]] == [12, 12]
    with pytest.raises(SystemExit):
        run_script("bench_extreme_regimes.py", ["--quick", "--retune-default"], monkeypatch)
    for world, policies in (("CLSC-1", {"moca (zero-shot)", "mpc"}),
                            ("CLSC-2", {"moca (zero-shot)", "mpc-sampled", "moca adapt (3 steps)"})):
        rows = result["worlds"][world]
        assert len(rows) == 2 and all(row["sound"] for row in rows)
        for row in rows:
            assert policies <= set(row) and all(row[p]["violations"] == 0 for p in policies)
            assert all(0 < x <= 1 + 1e-6 for p in policies for x in row[p]["scores"])


def test_step_choice_benchmark_quick(tmp_path, monkeypatch):
    import json

    out = tmp_path / "clsc2_step_choice.json"
    run_script("bench_clsc2_step_choice.py", ["--quick", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    (name, entry), = result["sets"].items()
    row, = entry["rows"]
    rules = ["no step", "best of 2", "best of 4", "best of 2, beyond noise", "best of 4, beyond noise", "hindsight"]
    assert list(row["chosen"]) == rules and result["violations"] == 0
    assert len(row["test_mean"]) == 2 and list(row["validation_mean"]) == ["2", "4"]
    assert list(row["gain_standard_error"]) == ["2", "4"] and row["gain_standard_error"]["4"][0] == 0
    for rule, step in row["chosen"].items():  # each rule's score is the test mean of the step it kept
        assert step in (0, 1) and row["score"][rule] == row["test_mean"][step]
        assert row["score"]["hindsight"] == max(row["test_mean"]) >= row["score"][rule]
    assert row["chosen"]["no step"] == 0
    for n in ("2", "4"):
        val, noise = row["validation_mean"][n], row["gain_standard_error"][n][1]
        assert row["chosen"][f"best of {n}"] == int(val[1] > val[0])
        assert row["chosen"][f"best of {n}, beyond noise"] == int(val[1] > val[0] and val[1] - val[0] > noise)
    # The plan is bench_random_regimes' first draw of that set, and step 0 is the shipped meta-init.
    from moca.meta2 import OracleCache2, load_policy2
    from moca.policy2 import evaluate_policy2
    from moca.regime import RegimeSchedule

    seed, filters = load_script("bench_clsc2_step_choice.py").SETS[name]
    plan = load_script("bench_random_regimes.py").draw_regimes("CLSC-2", seed, 1, **filters)[0]
    assert plan.to_list_with_window() == row["plan"] and isinstance(plan, RegimeSchedule)
    module, _ = load_policy2("default")
    cache = OracleCache2(module.params)
    tests = cache.scenarios(range(1000, 1002), plan)
    assert evaluate_policy2(module, None, tests, cache.costs(tests))["score"] == pytest.approx(row["test_mean"][0], abs=1e-12)


def test_step_choice_keeps_a_step_only_beyond_the_noise_when_asked():
    choose = load_script("bench_clsc2_step_choice.py").choose
    start = np.array([0.90, 0.90, 0.90, 0.90])
    steady = start + 0.002  # the same small gain on every seed: beyond its (zero) noise
    noisy = start + np.array([0.05, -0.04, 0.03, -0.03])  # a larger mean gain, but within one standard error
    assert choose(np.stack([start, steady]), 4, beyond_noise=True) == 1
    assert choose(np.stack([start, noisy]), 4, beyond_noise=False) == 1
    assert choose(np.stack([start, noisy]), 4, beyond_noise=True) == 0
    assert choose(np.stack([start, start - 0.01]), 4, beyond_noise=False) == 0  # no gain: the meta-init
    # The first of equals, and only the first `size` seeds count.
    assert choose(np.stack([start, start, start + 0.001]), 4, beyond_noise=False) == 2
    assert choose(np.stack([start, np.array([0.95, 0.95, 0.5, 0.5])]), 2, beyond_noise=False) == 1


def test_the_peer_rule_refuses_another_chains_batch_and_a_wrong_row_count():
    """CLSC-1's threshold peer refused a batch of other params; CLSC-2's ran on it with its
    own chain's mass and capacities without a word (another cost), and a [B, 7] table of
    the wrong row count failed deep in torch."""
    from moca.baselines.threshold2 import Threshold2Policy, start_thresholds2
    from moca.projection import project2_batch
    from moca.regime import load_schedule
    from moca.scenario import Params2, draw_scenario2
    from moca.sim2 import ScenarioBatch2, rollout2

    other = Params2(horizon=8, mass=3.0, cap_produce=800.0)
    scenario = draw_scenario2(1, load_schedule("T1", model="CLSC-2"), other)
    batch = ScenarioBatch2.from_scenarios([scenario, scenario], dtype=torch.float64)
    with pytest.raises(ValueError, match="Threshold2Policy: the batch's params differ from the policy's"):
        rollout2(batch, Threshold2Policy(start_thresholds2(), DEFAULT_PARAMS_2), project2_batch)
    rows = np.stack([start_thresholds2(other)] * 3)
    with pytest.raises(ValueError, match="thresholds: 3 rows for a batch of 2"):
        rollout2(batch, Threshold2Policy(rows, other), project2_batch)
    with pytest.raises(ValueError, match=r"as_dict: only for a single rule \(\[7\] thresholds\)"):
        Threshold2Policy(rows, other).as_dict()
    with torch.no_grad():  # its own chain's: as before
        own = rollout2(batch, Threshold2Policy(start_thresholds2(other), other), project2_batch)
    assert torch.isfinite(own.total_cost).all() and own.total_cost[0] == own.total_cost[1]


def test_prior_benchmark_quick(tmp_path, monkeypatch):
    import json

    import moca.policy2 as policy2

    out = tmp_path / "rule2_prior.json"
    shipped = (policy2.PRIOR_TEST, policy2.PRIOR_RETURN_SHARE, policy2.PRIOR_GRADE_SHARES, policy2.PRIOR_MARKET_SHARE)
    run_script("bench_rule2_prior.py", ["--quick", "--scan", "20", "--out", str(out)], monkeypatch)
    assert (policy2.PRIOR_TEST, policy2.PRIOR_RETURN_SHARE, policy2.PRIOR_GRADE_SHARES,
            policy2.PRIOR_MARKET_SHARE) == shipped  # the script put them back
    result = json.loads(out.read_text())
    default, low = (result["scores"][c]["tax 800 + landfill 60"] for c in ("default", "returns 12%"))
    assert all(0 < v <= 1 + 1e-6 for row in (default, low) for v in row.values())
    # on the default chain the three ways are one; on a chain returning 12% the estimate gains
    assert len({default[f"moca {m}"] for m in ("prior", "shipped", "told")}) == 1
    assert low["moca shipped"] > low["moca prior"] + 0.005 and low["rule shipped"] > low["rule prior"] + 0.005
    assert result["scan"] == {"seeds": 24, "leave_prior": []}
