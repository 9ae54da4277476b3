"""moca's learned controller on CLSC-2: a regime-conditioned LSTM over a structured base
rule, trained by backpropagation through :mod:`moca.sim2` and the differentiable CLSC-2
projection (:func:`moca.projection.project2_batch`).

The engines are CLSC-1's where they are world-free: the LSTM cell and head layout and
the inner/outer loops (:class:`moca.meta.MetaLearner`, :func:`moca.meta.clipped_sgd`),
:func:`moca.policy.correction_distance`, the continual learner (:mod:`moca.continual`).
What this module declares is what is CLSC-2's own, read top to bottom:

1. :func:`features2` — what a planner knows at event 2: stocks, pipeline, window usage
   and periods left, supplier/market status, the returns' grades, the regime (window
   included) and the demand seen so far (recent means and last year's seasonal index;
   never how the scenario was drawn).
2. :func:`base_rule2` — :mod:`moca.baselines.threshold2`'s rule written in torch (so the
   cost gradient flows through it), with its seven thresholds a learned function of the
   regime (a sigmoid over a linear map, starting at hand-set defaults).
3. :class:`LSTMPolicy2` — frames + rule inputs + LSTM state -> raw action ``[B, 9]``.
4. :class:`PolicyAgent2` — the :class:`moca.sim2.Policy2` protocol over a weights dict
   (or one dict per group of scenarios, as :class:`moca.policy.PolicyAgent`).
5. :func:`episode_losses2`, :func:`evaluate_policy2` (float64, every action through the
   projection, violations recounted by :func:`moca.projection.violations2`).

CLSC-1's :mod:`moca.policy` is untouched: its shipped checkpoints and numbers stay.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from moca import clsc2
from moca.policy import PolicyConfig, PolicyError, Weights, agent_weights, check_evaluation, correction_distance
from moca.scenario import DEFAULT_PARAMS_2, Params2, Scenario2
from moca.sim2 import Observation2, ScenarioBatch2, rollout2

MODEL = "CLSC-2"

#: The regime columns the policy sees (zeroed for the unconditioned ablation).
REGIME_FEATURES_2 = ("mandate", "carbon_tax/1000", "has_cap", "cap_tightness", "landfill_tax/100",
                     "recovery_target", "window/52")

#: The base rule's thresholds (moca.baselines.threshold2's names) and their start values as
#: shares of the search box of :func:`moca.baselines.threshold2.threshold2_bounds`: the rule
#: tuned for T2 (1,500 candidates on 32 training-stream scenarios), with the recycled stock
#: target lowered from 0.671 to 0.05, which scored as well or better on the validation
#: scenarios (seeds 900-915) of T1-T3, "tax 300" and no rule (0.9166 against 0.8933 there),
#: and the virgin safety stock raised from 2,013 to 8,000 kg when the rule gained its drawdown
#: (:data:`VIRGIN_DRAWDOWN`; the box's top went from 6,000 to 15,000 kg): the best stock of
#: benchmarks/bench_rule2_virgin.py's grid on the validation scenarios (seeds 900-931) of
#: T1-T3, no rule and eu-ets-2025.
RULE_START = {"safety_product": 0.294, "safety_virgin": 0.6111, "target_recycled": 0.05, "target_market": 0.05,
              "free_recycled": 0.686, "refurbish_level": 0.023, "dispose_level": 0.122}


# What the policy knows of how a chain's scenarios are drawn. The model keeps its drawing
# parameters (demand_base, return_mean, grade_mean, market_avail_min, ...) to the generator:
# no policy may read them. The rule states what it needs of them itself, the same on every
# chain, and the network's feature scales are constants.

#: Share of a period's production capacity ``K_p`` that the rule's stock thresholds are
#: stated at: they were tuned on the model's default chain, whose demand is two thirds of its
#: capacity (1,000 of 1,500 units a period), and scale with the forecast level from there.
TUNED_UTILISATION = 2.0 / 3.0
#: The rule's prior: the share of what is sold that comes back ``L_r`` periods later, the
#: shares of returns of grades A, B and scrap, and the share of the secondary market's
#: capacity ``K_m`` on offer a period (the default generator's means: ``(1 + 0.2) / 2``).
PRIOR_RETURN_SHARE = 0.25
PRIOR_GRADE_SHARES = (0.3, 0.45, 0.25)
PRIOR_MARKET_SHARE = (1.0 + 0.2) / 2.0
#: The rule leaves its prior for the mean of what the arrivals revealed (the return fraction,
#: the grade shares, the market's availability: :attr:`moca.sim2.Observation2.seen`) once
#: at least PRIOR_PERIODS periods are seen and the mean differs from the prior by more than
#: PRIOR_TEST standard errors, each week's standard deviation taken as at least PRIOR_SPREAD
#: (a few weeks' spread can be far below the year's). A plain running mean, tried first,
#: made the rule's yes/no tests (rule (i)'s return liability above all) flip on a chain
#: drawn as the prior says, and lost up to 0.003 there. This test leaves the prior on none
#: of the default chain's seeds 0-2,999 or the first 600 of the training stream
#: (benchmarks/bench_rule2_prior.py --scan 3000), so every figure measured on the default
#: chain stands. In development scans (not committed) it left the prior on 3 of the 13,800
#: seeds 3,000-15,399 and training scenarios 600-1,999; grade floors of 0.05, below a
#: week's spread of about 0.08, on 13 of 12,400 such seeds; a market floor below 0.15 on 1-5
#: of the first 3,600. benchmarks/bench_rule2_prior.py measures what it
#: gains on chains drawn otherwise: on one returning 12% of its sales, not 25%, under a
#: carbon tax of 800 EUR/t with a landfill tax of 60 EUR/core, the shipped policy scores
#: 0.9792 against 0.9617 on the prior alone (told the chain's true means: 0.9819).
PRIOR_PERIODS = 8.0
PRIOR_TEST = 6.0
PRIOR_SPREAD = (0.05, 0.09, 0.09, 0.09, 0.15)


def observed_means(seen: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The return fraction ``[B]``, grade shares ``[B, 3]`` (A, B, scrap) and market
    availability ``[B]`` the rule plans with: its prior, or where ``seen`` (``[B, 11]``,
    :class:`moca.sim2.Observation2`) tells otherwise (:data:`PRIOR_TEST`), the means of what
    was revealed. ``like``: a ``[B]`` tensor of the dtype and device wanted (the test itself
    runs in float64)."""
    wide = torch.float64
    prior = torch.tensor([PRIOR_RETURN_SHARE, *PRIOR_GRADE_SHARES, PRIOR_MARKET_SHARE], dtype=wide, device=like.device)
    if seen is None:
        means = prior.expand(like.shape[0], 5)
    else:
        seen = seen.to(dtype=wide, device=like.device)
        n = torch.clamp(seen[:, :1], min=1.0)
        mean = seen[:, 1:6] / n
        spread = torch.clamp(seen[:, 6:11] / n - mean * mean, min=0.0) * n / torch.clamp(n - 1.0, min=1.0)
        least = torch.tensor(PRIOR_SPREAD, dtype=wide, device=like.device)
        z = (mean - prior).abs() / torch.sqrt(torch.maximum(spread, least * least) / n)
        # the grade shares together (they sum to 1): all three leave the prior, or none
        far = torch.stack([z[:, 0], z[:, 1:4].max(-1).values, z[:, 4]], dim=-1) > PRIOR_TEST
        far = far & (seen[:, :1] >= PRIOR_PERIODS)
        means = torch.where(torch.cat([far[:, :1], far[:, 1:2].expand(-1, 3), far[:, 2:]], dim=-1), mean, prior)
    means = means.to(like.dtype)
    return means[:, 0], means[:, 1:4], means[:, 4]


def planning_means(x: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``x``'s return fraction, grade shares and market availability (:func:`rule_inputs`),
    or the prior where ``x`` holds none (inputs built by hand)."""
    if "return_share" in x:
        return x["return_share"], x["grade_shares"], x["market_share"]
    return observed_means(None, x["stocks"][:, 0])


def reference_demand2(params: Params2) -> float:
    """Units a period the rule's thresholds are stated at (:data:`TUNED_UTILISATION` of ``K_p``)."""
    return params.cap_produce * TUNED_UTILISATION


def reference_emissions2(params: Params2) -> float:
    """kg CO2 of a period made from virgin material only at :func:`reference_demand2` units
    (the scale of the cap's tightness feature)."""
    return (params.emis_virgin * params.mass + params.emis_produce) * reference_demand2(params)


def feature_size(params: Params2) -> int:
    """Columns of one frame: 5 stocks, L_v pipeline slots, L_r sales, 2 window counters,
    periods left, supplier, market, return fraction, 3 grades, 7 regime, 4 demand, 3 season."""
    return 5 + params.lead_virgin + params.lag_return + 2 + 1 + 2 + 1 + 3 + len(REGIME_FEATURES_2) + 4 + 3


def regime_columns(regime_t: Tensor, window_t: Tensor, params: Params2) -> list[Tensor]:
    """The regime in force as O(1) columns ``[B]`` each (an absent cap is +inf)."""
    r, tau, cap = regime_t[:, clsc2.R_MANDATE], regime_t[:, clsc2.R_TAX], regime_t[:, clsc2.R_CAP]
    lam, kappa = regime_t[:, clsc2.R_LANDFILL], regime_t[:, clsc2.R_RECOVERY]
    has_cap = torch.isfinite(cap).to(r.dtype)
    tight = torch.clamp(reference_emissions2(params) / cap, 0.0, 4.0)
    return [r, tau / 1000.0, has_cap, tight, lam / 100.0, kappa, window_t.to(r.dtype) / 52.0]


def demand_columns(demand_seen: Tensor, t: int, horizon: int) -> list[Tensor]:
    """What the demand seen so far says (units): the means of the last 4 and 13 periods,
    last year's demand one period ahead relative to last year's mean (a seasonal index),
    and the trend (last 13 against the 13 before)."""
    recent4 = demand_seen[:, -4:].mean(-1)
    recent13 = demand_seen[:, -13:].mean(-1)
    year = demand_seen[:, -52:]
    ahead = year[:, 1] if year.shape[1] > 1 else year[:, 0]  # d_{t+1-52}
    index = ahead / torch.clamp(year.mean(-1), min=1e-6)
    before = demand_seen[:, -26:-13].mean(-1)
    trend = recent13 / torch.clamp(before, min=1e-6)
    return [recent4, recent13, index, trend]


def features2(obs: Observation2, config: PolicyConfig) -> Tensor:
    """One normalised frame ``[B, F]`` at an observation of :mod:`moca.sim2`."""
    p, s, t = obs.params, obs.state, obs.t
    kg, units = p.mass * p.cap_produce, p.cap_produce
    dtype = s.columns[0].dtype
    V, M, P, CA, CB = s.columns
    horizon = obs.regime.shape[1]
    window_t = obs.window[:, t]
    regime = regime_columns(obs.regime_t, window_t, p)
    if not config.regime_conditioned:
        regime = [c * 0.0 for c in regime]
    recent4, recent13, index, trend = demand_columns(obs.demand_seen, t, horizon)
    per_window = kg * torch.clamp(window_t.to(dtype), min=1.0)
    phase = 2.0 * math.pi * t / 52.0
    zero = V * 0.0
    columns = [V / kg, M / kg, P / units, CA / units, CB / units,
               *[x / kg for x in s.pipeline_slots], *[zero] * (p.lead_virgin - len(s.pipeline_slots)),
               *[x / units for x in s.history_slots],
               obs.inputs["used_virgin"].to(dtype) / per_window, obs.inputs["used_recycled"].to(dtype) / per_window,
               obs.inputs["periods_left"].to(dtype) / 52.0, obs.inputs["supply_up"].to(dtype),
               obs.inputs["market_avail"].to(dtype), obs.return_frac_t / PRIOR_RETURN_SHARE,
               *obs.grades_t.unbind(-1), *regime,
               recent4 / units, recent13 / units, index - 1.0, trend - 1.0,
               zero + math.sin(phase), zero + math.cos(phase), zero + t / horizon]
    return torch.stack(columns, dim=-1)


# ----------------------------------------------------------------------------------------
# 2. The base rule (threshold2's, in torch, thresholds a function of the regime)
# ----------------------------------------------------------------------------------------


#: Periods the base rule looks ahead: its forecast (:func:`moca.forecast.seasonal_level_forecast`)
#: runs over this many periods, and so does its pre-build for demand above production capacity.
RULE_LOOKAHEAD = 13
#: Periods over which the rule reads the announced regime and the year's demand forecast for
#: rules (k) (virgin ordered ahead of a tax rise), (l) (virgin on hand used first after a
#: change), (m) (made and banked ahead of a stricter mandate), (n) (banked where a mandate
#: holds production), (o) (the safety stock drawn down ahead of a cut in virgin use), (p)
#: (the usual order at the announced share) and (q) (no safety stock topped up ahead of a tax
#: fall): a year, the spec's horizon.
RULE_YEAR = 52
#: Smoothing weight of the rule's demand level on the newest period.
RULE_ALPHA = 0.3
#: Periods over which the rule draws its virgin safety stock down before the horizon ends.
#: Half a year: the best of 3, 15, 20 and 26 periods on every regime of
#: benchmarks/bench_rule2_virgin.py (validation seeds 900-931).
VIRGIN_DRAWDOWN = 26.0
#: Spread of the virgin a tax rise's order ahead (rule (k)) will find use for, relative to
#: its forecast, per square root of the periods ahead (the demand level wanders like a random
#: walk; the recycled share and outages add to it). The best of 0, 0.06, 0.09, 0.12, 0.15,
#: 0.2, 0.3 and 0.5 for the rule at its start thresholds over T2, the six schedules of seed
#: 2026, ten tax-rise plans and the seed-6161 set (validation seeds 900-907), and again
#: against 0.1 and 0.2 once (k) read the announced mandate; the demand's own level walk
#: alone would give about 0.06.
RISE_SPREAD = 0.15
#: Rule (q): within this many periods of an announced fall of the carbon tax the rule stops
#: topping up its virgin safety stock, fully where the fall is FALL_FULL EUR/kg virgin or more
#: (167 EUR/t at e_v = 6 kg CO2/kg) and in proportion below. The development plans (the
#: schedule and tax-rise sets of seeds 2026, 4242, 5151 and 6161, validation seeds 900-907)
#: scored within 0.0005 of each other for a reach of 3, 6 or 10 periods and a full fall of
#: 0.3, 1 or 3 EUR/kg.
FALL_REACH = 6
FALL_FULL = 1.0


def rule_inputs(obs: Observation2) -> dict[str, Tensor]:
    """What :func:`base_rule2` reads from an observation (tensors, split by batch rows)."""
    from moca.forecast import seasonal_level_forecast

    s = obs.state
    dtype = s.columns[0].dtype
    pipeline = sum(s.pipeline_slots) if s.pipeline_slots else s.columns[0] * 0.0
    # The last 52 periods only: what the Gymnasium observation and the service's request carry,
    # so the rule decides alike in the library, the env and `moca serve`.
    forecast = seasonal_level_forecast(obs.demand_seen[:, -52:], RULE_LOOKAHEAD, RULE_ALPHA).to(dtype)
    # The regime announced for t .. t+RULE_YEAR-1 (the last period's beyond the horizon).
    # The service builds the same table from the regulations announced to it.
    ahead = torch.arange(obs.t, obs.t + RULE_YEAR).clamp(max=obs.regime.shape[1] - 1)
    x = {"stocks": s.stocks, "pipeline": pipeline, "regime": obs.regime_t,
         "regime_ahead": obs.regime[:, ahead].to(dtype),
         "window": obs.window[:, obs.t].to(dtype), "supply_up": obs.inputs["supply_up"].to(dtype),
         "market_avail": obs.inputs["market_avail"].to(dtype), "forecast": forecast,
         "t": torch.full_like(s.columns[0], float(obs.t)), "horizon": torch.full_like(s.columns[0],
                                                                                      float(obs.regime.shape[1]))}
    x["return_share"], x["grade_shares"], x["market_share"] = observed_means(obs.seen, s.columns[0])
    # Rules (k)-(p) act only where the regime changes within the episode. A batch
    # whose table holds one regime throughout (meta-training, the seed tasks) skips them and
    # the year's forecast: they would leave its actions as they are, at about 1.5 times the cost.
    if bool((obs.regime != obs.regime[:, :1]).any()):
        x["forecast_year"] = seasonal_level_forecast(obs.demand_seen[:, -52:], RULE_YEAR, RULE_ALPHA).to(dtype)
        # Whether the regime in force now differs from that of an earlier period of the
        # episode (the service fills the past from the regulations that were in force).
        past = obs.regime[:, :obs.t].to(dtype)
        x["regime_changed"] = (past != obs.regime_t.to(dtype)[:, None]).any(-1).any(-1).to(dtype)
    return x


def routing_economics(x: dict[str, Tensor], params: Params2) -> dict[str, Tensor]:
    """What each use of a core and of the market costs under the regime in force, per row
    ``[B]`` (1.0 where the use pays, else 0.0), from the period cost and rows 7-8 of the
    model:

    * ``recover_a`` / ``recover_b``: disassembling a core (``c_d``) and using its
      ``eta m`` kg of material in place of virgin (``c_v + tau e_v``, EUR/kg) costs less than
      the cheaper alternative, disposing of it (``c_w + lambda``) or holding it to the end
      (``h_C`` a period);
    * ``buy_market``: market material (``c_m``) costs less than virgin under the tax;
    * ``dispose``: disposing (``c_w + lambda``) costs less than holding the core to the end;
    * ``order_virgin``: a unit made from virgin bought now (``m (c_v + tau e_v) + c_p``), with
      the end-of-life cost its sale brings back (``return_liability``), costs less than the
      lost sale it saves (``p_l``); above about 1,000 EUR/t on the default chain it does not,
      nor under a landfill tax at lower carbon taxes, and only virgin already bought is used;
    * ``return_liability`` (EUR per unit sold, >= 0): a share ``rho`` of what is sold comes
      back ``L_r`` periods later, as scrap, landfilled on arrival (``c_w + lambda``), or as a
      grade-A or grade-B core that costs the cheapest of disposing, holding it to the end
      or recovering its material at the virgin price. ``rho`` and the grade shares are the
      rule's prior, or the means of what the arrivals revealed where they tell otherwise
      (:func:`observed_means`): one week's returns are too noisy a guess for a yes/no test
      (tried: weeks that guessed low gave part of the gain back). Never below 0: material
      that comes back pays only if it is used, which the rule cannot promise;
    * ``cap_share``: the recycled share of the next period's production an emission cap
      implies (``e_v`` per kg virgin against ``e_r`` per kg recovered, ``e_p`` per unit), 0
      without a cap.

    These are the regime's prices, which a re-tuned rule learns by search and a planner
    reads off the rule; stating them makes the routing follow the regime from the first
    period after a change."""
    p = params
    regime, t, T = x["regime"], x["t"], x["horizon"]
    tax, cap, landfill = regime[:, clsc2.R_TAX], regime[:, clsc2.R_CAP], regime[:, clsc2.R_LANDFILL]
    virgin_price = p.cost_virgin + tax * p.emis_virgin / 1000.0  # EUR/kg
    hold_to_end = p.hold_core * torch.clamp(T - 1.0 - t, min=0.0)  # EUR/core
    dispose_cost = p.cost_dispose + landfill
    alternative = torch.minimum(dispose_cost, hold_to_end)
    m = p.mass
    recover_a = (p.cost_disassemble - p.yield_disassembly_a * m * virgin_price < alternative).to(tax.dtype)
    recover_b = (p.cost_disassemble - p.yield_disassembly_b * m * virgin_price < alternative).to(tax.dtype)
    buy_market = (p.cost_market < virgin_price).to(tax.dtype)
    dispose = (dispose_cost <= hold_to_end).to(tax.dtype)
    # (i) The returns of what an order makes: its output first sells at t + L_v + 1 and comes
    # back L_r periods later, within the horizon or never (the books close at T).
    back = t + p.lead_virgin + 1 + p.lag_return
    hold_then = p.hold_core * torch.clamp(T - 1.0 - back, min=0.0)
    graded = torch.minimum(dispose_cost, hold_then)
    core_a = torch.minimum(graded, p.cost_disassemble - p.yield_disassembly_a * m * virgin_price)
    core_b = torch.minimum(graded, p.cost_disassemble - p.yield_disassembly_b * m * virgin_price)
    return_share, grade_shares, _ = planning_means(x)
    share_a, share_b, share_scrap = grade_shares.unbind(-1)
    liability = torch.clamp(return_share * (share_scrap * dispose_cost + share_a * core_a + share_b * core_b),
                            min=0.0) * (back <= T - 1.0).to(tax.dtype)
    order_virgin = (m * virgin_price + p.cost_produce + liability < p.lost_sale_cost).to(tax.dtype)
    q = torch.clamp(x["forecast"][:, 1], min=1e-6)
    virgin_only = (p.emis_virgin * m + p.emis_produce) * q  # kg CO2 of a period made from virgin only
    saving = (p.emis_virgin - p.emis_recycle) * m * q
    cap_share = torch.clamp((virgin_only - cap) / saving, 0.0, 1.0)  # no cap (+inf): -inf, clamped to 0
    return {"recover_a": recover_a, "recover_b": recover_b, "buy_market": buy_market, "dispose": dispose,
            "order_virgin": order_virgin, "return_liability": liability, "cap_share": cap_share}


def mean_recycled_rate(level: Tensor, x: dict[str, Tensor], params: Params2) -> Tensor:
    """Recycled material (kg a period, ``[B]``) the chain brings on the means the rule plans
    with (``x``'s ``return_share``, ``grade_shares``, ``market_share``; :func:`observed_means`)
    at a demand of ``level`` units a period (``[B]``): the grade-B cores and the grade-A
    cores beyond refurbishment of the returned share of what is sold, recovered, and the
    market's expected offer. Under a mandate ``r`` production can use at most ``1 / r``
    times it in all, and virgin ``(1 - r) / r`` times it."""
    p = params
    return_share, grade_shares, market_share = planning_means(x)
    share_a, share_b, _ = grade_shares.unbind(-1)
    returned = return_share * level
    # the prior's offer, then what the estimate moves it by: a float32 0.6 times the capacity
    # made the default chain's 480 kg 480.00003
    offer = p.cap_market * PRIOR_MARKET_SHARE + p.cap_market * (market_share - PRIOR_MARKET_SHARE)
    return (p.mass * p.yield_disassembly_b * torch.clamp(returned * share_b, max=p.cap_disassemble)
            + p.mass * p.yield_disassembly_a * torch.clamp(returned * share_a - p.cap_refurbish, min=0.0)
            + offer)


def virgin_use(made: Tensor, share: Tensor, inflow: Tensor, recycled_rate: Tensor) -> Tensor:
    """Virgin (kg, ``[B, H]``) each of ``H`` productions of ``made`` kg of material uses at the
    recycled ``share`` (``[B, H]`` or ``[B, 1]``) once ``inflow`` (kg a period, ``[B]``) of
    recycled material that pays is used: under a mandate ``r`` a period's virgin can be used
    only beside ``(1 - r) / r`` times its recycled material, so at most that times what the
    chain brings a period on its means (``recycled_rate``, :func:`mean_recycled_rate`)."""
    virgin = torch.clamp(made - torch.maximum(share * made, inflow[:, None]), min=0.0)
    usable = (1.0 - share) / torch.clamp(share, min=1e-12) * recycled_rate[:, None]
    return torch.where(share > 0, torch.minimum(virgin, usable), virgin)


def base_rule2(thresholds: Tensor, x: dict[str, Tensor], params: Params2) -> Tensor:
    """The raw action ``[B, 9]`` of the CLSC-2 threshold rule
    (:class:`moca.baselines.threshold2.Threshold2Policy` runs this same function) for
    ``thresholds`` ``[B, 7]``, as torch operations (differentiable in the state and the
    thresholds almost everywhere). ``x["forecast"]`` ``[B, H]`` is the demand forecast of
    ``d_t .. d_{t+H-1}`` (units).

    The stock thresholds ``s_P, s_V, S_M, S_B, M_free`` are stated at a demand of
    :func:`reference_demand2` units a period and scale with the forecast level, so one tuning
    serves a scenario whose demand drifted or jumped to half or twice that. Routing follows
    the regime's prices (:func:`routing_economics`) on top of what the mandate needs."""
    p = params
    V, M, P, CA, CB = (torch.clamp(c, min=0.0) for c in x["stocks"].unbind(-1))
    r, kappa = x["regime"][:, clsc2.R_MANDATE], x["regime"][:, clsc2.R_RECOVERY]
    forecast, supply, market = x["forecast"], x["supply_up"], x["market_avail"]
    t, T = x["t"], x["horizon"]
    s_P, s_V, S_M, S_B, M_free, L_f, L_w = thresholds.unbind(-1)
    level = forecast[:, 1:5].mean(-1)  # units a period
    scale = level / reference_demand2(p)
    s_P, s_V, S_M, S_B, M_free = (v * scale for v in (s_P, s_V, S_M, S_B, M_free))
    zero = V * 0.0
    m, L_v, K = p.mass, p.lead_virgin, p.cap_produce
    margin = 1.0 + 1e-5
    per_b, per_a = m * p.yield_disassembly_b, m * p.yield_disassembly_a

    def cores_for(material, per_core):
        """Cores whose disassembly yields ``material`` kg; none where a grade yields nothing
        (a yield of 0 is a valid chain: 0/0 here made the action NaN)."""
        return material / per_core if per_core > 0 else material * 0.0
    econ = routing_economics(x, p)
    # The recycled share supply must reach: the mandate's, or more where a cap leaves too
    # little room for virgin orders (row 7 charges virgin when ordered, not when used).
    r_supply = torch.maximum(r, econ["cap_share"])
    # Recovered and bought material pays its way: use it all before virgin.
    pays = torch.maximum(torch.maximum(econ["recover_b"], econ["buy_market"]), (econ["cap_share"] > 0).to(V.dtype))
    M_free = M_free * (1.0 - pays)

    # Product to hold after this period's production: next period's demand, and ahead of a
    # stretch of demand above capacity K the excess it brings (max over h of
    # sum_{k<=h} d_{t+k} - (h-1) K), as far as the horizon still has periods to sell in.
    ahead = forecast[:, 1:]
    steps = torch.arange(ahead.shape[1], dtype=V.dtype)
    cumulative = torch.cumsum(ahead, dim=-1) - K * steps
    in_horizon = (steps[None, :] + t[:, None] + 1 <= T[:, None] - 1)
    floor = cumulative.new_full((), -1e30)
    cover = torch.where(in_horizon, cumulative, floor).max(-1).values
    cover = torch.maximum(cover, ahead[:, 0])
    # (m) Ahead of a stricter mandate announced for later in the year, production then can use
    # at most 1 / r times the recycled material a period brings (mean_recycled_rate): the
    # demand above that limit is made now, while the mandate in force allows it, as far as
    # the horizon has periods to sell in (a unit held a year costs 52 h_P = 10.4 EUR, a lost
    # sale p_l = 20 EUR). The product stock this adds is what the year's forecast needs
    # beyond capacity under the announced limits, less what it needs at capacity K alone
    # (which the 13-period cover above holds). Until then, recycled material is banked for
    # the periods the mandate will hold to it: no more is used than the mandate in force
    # requires, and all the cores and the market offer are recovered and bought. (Without
    # the year's forecast the episode has no change to act on.)
    year, announced = x.get("forecast_year"), x["regime_ahead"]
    bank = scarce = zero
    if year is not None:
        recycled_rate = mean_recycled_rate(level, x, p)
        mandate_then = announced[:, 1:, clsc2.R_MANDATE]  # of production at t+1, t+2, ...
        # units a period production can make under each period's mandate
        held_to = torch.clamp(recycled_rate[:, None] / (m * torch.clamp(mandate_then, min=1e-12)), max=K)
        demand_year = year[:, 1:]
        steps_year = torch.arange(demand_year.shape[1], dtype=V.dtype)
        sellable = (steps_year[None, :] + t[:, None] + 1 <= T[:, None] - 1)
        needed = torch.cumsum(demand_year, dim=-1)

        def cover_under(limit: Tensor) -> Tensor:
            """Product to hold now so that production at ``limit`` a period meets the year's demand."""
            made_before = torch.cat([zero[:, None], torch.cumsum(limit, dim=-1)[:, :-1]], dim=1)
            return torch.where(sellable, needed - made_before, floor).max(-1).values

        cover_limited = cover_under(torch.where(mandate_then > r[:, None], held_to, zero[:, None] + K))
        cover_capacity = torch.where(sellable, needed - K * steps_year, floor).max(-1).values
        cover = cover + torch.clamp(cover_limited - cover_capacity, min=0.0)
        # (n) Where a mandate, in force or announced, holds the year's production below its
        # demand (the product on hand counted), recycled material is the bottleneck: a kg the
        # market offers and is not bought is gone, and each kg lets 1 / r kg be made. So it is
        # banked as ahead of a stricter mandate, and (l) below does not cut it. Only before or
        # after a change, as (k)-(m): under a regime held all episode the rule's thresholds
        # (S_B, M_free) are those tuned for it, and its decisions stay as they were.
        changes = torch.maximum(x["regime_changed"], (announced != x["regime"][:, None, :]).any(-1).any(-1).to(V.dtype))
        cover_scarce = cover_under(torch.where(mandate_then > 0, held_to, zero[:, None] + K))
        scarce = (cover_scarce - P > torch.clamp(cover_capacity - P, min=0.0) + 1.0).to(V.dtype) * changes
        bank = torch.maximum((cover_limited > cover_capacity).to(V.dtype), scarce)
        M_free = torch.where(bank > 0, M, M_free)
    excess = cover - ahead[:, 0]
    # Production of t+1, t+2, ...; none in the last period, whose output could not be sold.
    producing = (steps[None, :] + t[:, None] + 1 <= T[:, None] - 2).to(V.dtype)
    planned = torch.clamp(ahead + excess[:, None], max=K) * producing

    if year is not None:
        # Production of t+1 .. t+RULE_YEAR-1: the plan above, then the year's forecast, and
        # the recycled share each needs: the mandate announced for its period.
        beyond = torch.arange(planned.shape[1] + 1, year.shape[1], dtype=V.dtype)
        producing_later = (beyond[None, :] + t[:, None] <= T[:, None] - 2).to(V.dtype)
        planned_year = torch.cat([planned, torch.clamp(year[:, planned.shape[1] + 1:], max=K) * producing_later],
                                 dim=1)
        made_year = m * planned_year
        # (Not the mandate in force now: one announced to relax would hold the year's virgin
        # need, and (k)'s order ahead of a rise, to today's share.)
        share_year = torch.maximum(econ["cap_share"][:, None],
                                   announced[:, 1:planned_year.shape[1] + 1, clsc2.R_MANDATE])

    can_produce = (t + 1 <= T - 1).to(V.dtype)
    f = torch.clamp(CA - L_f, 0.0, p.cap_refurbish) * can_produce
    # The safety stock holds up to the last production (t = T - 2): unsold product costs its
    # making, a lost sale p_l (20 EUR) more than that.
    s_P_now = s_P * can_produce
    q = torch.clamp(forecast[:, 0] + cover + s_P_now - (P + p.yield_refurbish * f), 0.0, K) * can_produce
    material = m * q
    # (l) Virgin on hand or on its way is paid for: the tax was charged when it was ordered.
    # After a change of the regime within the episode (a tax rise makes recovered and bought
    # material pay against virgin at the new price, and virgin ordered before it, by (k) or
    # not, would be left unused), virgin held beyond what the rest of the horizon will use
    # beside the recycled material that pays today is used before recycled material, and the
    # material bought or recovered for its price alone is cut by as much, until it is used
    # up. Under a regime held since the episode began the rule's orders are net of that
    # material already, and what it holds beyond need is its safety stock, drawn down by
    # VIRGIN_DRAWDOWN: there the rule is unchanged.
    spare_cores = torch.minimum(CB, zero + p.cap_disassemble)
    sunk = zero
    if year is not None:
        pays_inflow = (econ["recover_b"] * per_b * spare_cores
                       + econ["recover_a"] * per_a * torch.clamp(CA - f - L_f, min=0.0)
                       + econ["buy_market"] * p.cap_market * market) * pays
        virgin_now = torch.clamp(material - torch.maximum(r_supply * material, pays * torch.minimum(material, M)),
                                 min=0.0)
        virgin_rest = virgin_now + torch.clamp(made_year - torch.maximum(share_year * made_year, pays_inflow[:, None]),
                                               min=0.0).sum(-1)
        within_year = (T - 1.0 - t <= RULE_YEAR - 1).to(V.dtype)
        # Not where a mandate holds production ((n) below): there virgin is used only beside
        # recycled material, so cutting purchases for it would only cut production.
        sunk = torch.clamp(V + x["pipeline"] - virgin_rest, min=0.0) * within_year * x["regime_changed"] \
            * (1.0 - scarce)
    u_r = torch.maximum(r * material, torch.minimum(material, M - M_free) - sunk)
    u_r = torch.minimum(torch.clamp(u_r, min=0.0), M)
    material = torch.where(r > 0, torch.minimum(material, u_r / torch.clamp(r * margin, min=1e-12)), material)
    u_v = torch.clamp(torch.minimum(material - u_r, V), min=0.0)
    u_r = torch.minimum(M, u_r + torch.clamp(material - u_v - u_r, min=0.0))

    # While the supplier is down, recycled material (disassembly first, then the market)
    # stands in for the virgin material the next two periods' production will miss.
    position = V - u_v + x["pipeline"]
    missing = torch.clamp((1.0 - r_supply) * m * planned[:, :2].sum(-1) - position, min=0.0) * (1.0 - supply)
    can_recover = (t + 2 <= T - 1).to(V.dtype)
    need = r_supply * m * planned[:, 0] + missing
    left = M - u_r
    short = torch.clamp(S_M + need - left, min=0.0)
    g_B = torch.clamp(torch.minimum(cores_for(short, per_b), CB), max=p.cap_disassemble)
    offered = p.cap_market * market
    market_cut = torch.minimum(sunk, econ["buy_market"] * offered)
    sunk_left = sunk - market_cut
    recover_b, recover_a = torch.maximum(econ["recover_b"], bank), torch.maximum(econ["recover_a"], bank)
    g_B = torch.maximum(g_B, recover_b * torch.clamp(spare_cores - cores_for(sunk_left, per_b), min=0.0)) * can_recover
    sunk_left = torch.clamp(sunk_left - recover_b * per_b * spare_cores, min=0.0)
    short = torch.clamp(short - per_b * g_B, min=0.0)
    spare_a = torch.clamp(CA - f, min=0.0)
    # Grade-A cores beyond the refurbishment reserve L_f are recovered when that pays.
    g_A = torch.maximum(torch.minimum(cores_for(short, per_a), spare_a),
                        recover_a * torch.clamp(spare_a - L_f - cores_for(sunk_left, per_a), min=0.0))
    g_A = torch.minimum(g_A, p.cap_disassemble - g_B) * can_recover
    recovered = per_b * g_B + per_a * g_A
    o_m = torch.minimum(torch.clamp(S_B + need - left - recovered, min=0.0), offered)
    o_m = torch.maximum(o_m, torch.maximum(econ["buy_market"], bank) * offered - market_cut) * can_recover

    w_B = torch.clamp(torch.minimum(CB - g_B - L_w, zero + p.cap_dispose), min=0.0) * econ["dispose"]
    w_A = torch.clamp(torch.minimum(CA - f - g_A - L_w, torch.clamp(p.cap_dispose - w_B, min=0.0)), min=0.0) \
        * econ["dispose"]
    allowed = (f + g_A + g_B) * (1.0 - kappa) / torch.clamp(kappa * margin, min=1e-12)
    total = w_A + w_B
    factor = torch.where((kappa > 0) & (total > allowed), allowed / torch.clamp(total, min=1e-12), zero + 1.0)
    w_A, w_B = w_A * factor, w_B * factor

    # Virgin for the production of t+1 .. t+L_v+1 net of the recycled share supply brings
    # (the mandate's, or all the material recovered and bought where that pays), plus a
    # safety stock against supplier outages, drawn down over the last VIRGIN_DRAWDOWN
    # periods: the fewer periods remain, the less an outage can still cost in lost sales,
    # while virgin left at the end is bought for nothing.
    inflow = pays * (recovered + o_m)
    # (p) With the year's table, at the recycled share announced for each of those periods.
    share_next = share_year[:, :L_v + 1] if year is not None else r_supply[:, None]
    made_next = m * planned[:, :L_v + 1]
    need_virgin = torch.clamp(made_next - torch.maximum(share_next * made_next, inflow[:, None]), min=0.0).sum(-1)
    # (k) Ahead of an announced rise of the carbon tax, which is charged when virgin is
    # ordered: the virgin for production of t+1+i (i > L_v, to the end of the year), which
    # would be ordered at t+1+i-L_v, is ordered now where the rise by then saves more per kg
    # (e_v / 1000 per EUR/t) than holding it the extra periods costs (h_V a period). A kg
    # ordered ahead saves that, but one the rest of the year does not use loses its whole
    # price: so no more is ordered than the newsvendor quantile (saving / (saving + price))
    # of the year's virgin need after t+L_v+1, log-normal with spread RISE_SPREAD per square
    # root of the periods ahead. Far ahead of a small rise that is little; the rule tops up
    # each period as the rise nears and the forecast firms.
    ahead_of_rise = zero
    if year is not None:
        tax_now = x["regime"][:, clsc2.R_TAX]
        # What virgin ordered at t+j costs more than now, per offset j (EUR/kg): (k) reads
        # its rises, (q) its falls.
        price_change = (announced[:, :, clsc2.R_TAX] - tax_now[:, None]) * p.emis_virgin / 1000.0
        later = torch.arange(L_v + 1, planned_year.shape[1])
        when = later + 1 - L_v  # offset of each production's usual order period
        holding = p.hold_virgin * when.to(V.dtype)  # EUR/kg to hold it from now until then
        rise = price_change[:, when]
        early = (rise > holding).to(V.dtype)
        # Virgin ordered beyond what a mandate lets be used is lost, where ordering it later
        # costs only the rise: so the estimate is the low one (virgin_use).
        virgin_year = virgin_use(made_year, share_year, inflow, recycled_rate)
        virgin_after = virgin_year[:, L_v + 1:]  # of the productions in `later`
        early_need = virgin_after * early
        ahead_of_rise = early_need.sum(-1)
        saving = (early_need * (rise - holding)).sum(-1) / torch.clamp(ahead_of_rise, min=1e-9)  # EUR/kg, mean
        price = p.cost_virgin + tax_now * p.emis_virgin / 1000.0  # EUR/kg now
        critical = torch.clamp(saving / (saving + price), 1e-6, 1.0 - 1e-6)
        need_after = virgin_after.sum(-1)
        periods_ahead = (virgin_after * (later + 1).to(V.dtype)).sum(-1) / torch.clamp(need_after, min=1e-9)
        # The need-weighted mean of the periods ahead: at least L_v + 2 where there is a need;
        # the floor keeps sqrt's gradient finite where there is none (an infinite one would
        # turn the adaptation step's weights NaN).
        sigma = RISE_SPREAD * torch.sqrt(torch.clamp(periods_ahead, min=1.0))
        quantile = need_after * torch.exp(sigma * torch.special.ndtri(critical) - sigma ** 2 / 2)
        ahead_of_rise = torch.minimum(ahead_of_rise, quantile)
    serves = torch.clamp((T - 1.0 - t - L_v) / VIRGIN_DRAWDOWN, 0.0, 1.0)
    if year is not None:
        # (o) An announced change that cuts the virgin a period can use (a stricter mandate)
        # ends the safety stock's use as the horizon's end does: it is drawn down
        # over VIRGIN_DRAWDOWN periods of use at today's rate, each later period counted at
        # the share of today's virgin it will use.
        virgin_today = virgin_use(made_year, r_supply[:, None], inflow, recycled_rate)
        has_use = virgin_today > 1e-6
        # (the inner where keeps the division, and so its gradient, finite where there is no use)
        kept = torch.where(has_use, torch.clamp(virgin_year / torch.where(has_use, virgin_today, 1.0), max=1.0), 1.0)
        producing_year = torch.cat([producing, producing_later], dim=1)
        served = 1.0 + (kept * producing_year)[:, L_v:].sum(-1)
        serves = torch.minimum(serves, torch.clamp(served / VIRGIN_DRAWDOWN, 0.0, 1.0))
        # (q) Ahead of an announced fall of the carbon tax, virgin held when the fall comes was
        # bought at the old price where it could have been bought at the new one: each kg held
        # then costs the fall (e_v / 1000 EUR/kg per EUR/t). So within FALL_REACH periods of a
        # fall the safety stock is not topped up, in proportion to the fall (fully from
        # FALL_FULL EUR/kg): production draws it down and the orders after the fall refill
        # it. Not under an emission cap: there a period's room for virgin is lost if not
        # used, and the stock is what production beyond the room runs on.
        fall = torch.clamp(-price_change[:, 1:FALL_REACH + 1], min=0.0).max(-1).values * (econ["cap_share"] <= 0).to(V.dtype)
        serves = serves * (1.0 - torch.clamp(fall / FALL_FULL, 0.0, 1.0))
    can_order = (t + L_v + 1 <= T - 1).to(V.dtype)
    o = torch.clamp(need_virgin + ahead_of_rise + s_V * serves - position, 0.0, p.cap_order) * supply * can_order \
        * econ["order_virgin"]
    return torch.stack([o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B], dim=-1)


# ----------------------------------------------------------------------------------------
# 3. The module
# ----------------------------------------------------------------------------------------

LSTMState = tuple[Tensor, Tensor]


class LSTMPolicy2(nn.Module):
    """One period: stacked frames ``[B, W*F]``, the rule's inputs and the LSTM state ->
    raw action ``[B, 9]`` (order of :data:`moca.clsc2.ACTION_NAMES`) and the new state.

    The rule's seven thresholds are ``low + span * sigmoid(rule_bias + rule_regime(regime))``
    (``rule_regime`` starts at zero: every regime starts at :data:`RULE_START`), so
    meta-training can learn a regime-to-thresholds map as a re-tuned rule would have.
    With ``structured`` the action is ``base + residual_scale * S * head``; the head sees
    the LSTM state, the frames and the base action (scaled) and starts at zero, so a
    fresh policy *is* the base rule. Where the regime changes within the episode, the
    residual cannot raise the virgin order where the rule's price test orders none.
    """

    def __init__(self, params: Params2 = DEFAULT_PARAMS_2, config: PolicyConfig = PolicyConfig()):
        super().__init__()
        from moca.baselines.threshold2 import THRESHOLD2_NAMES, threshold2_bounds

        self.params, self.config = params, config
        self.frame_size = feature_size(params)
        inputs = self.frame_size * config.window
        self.cell = nn.LSTMCell(inputs, config.hidden)
        self.head = nn.Linear(config.hidden + inputs + 9, 9)
        self.rule_bias = nn.Parameter(torch.zeros(len(THRESHOLD2_NAMES)))
        self.rule_regime = nn.Linear(len(REGIME_FEATURES_2), len(THRESHOLD2_NAMES))
        bounds = threshold2_bounds(params)
        self.register_buffer("rule_low", torch.as_tensor(bounds[:, 0], dtype=torch.float32), persistent=False)
        self.register_buffer("rule_span", torch.as_tensor(bounds[:, 1] - bounds[:, 0], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("scale", torch.as_tensor(clsc2.action_scale(params), dtype=torch.float32),
                             persistent=False)
        self._names = THRESHOLD2_NAMES
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.cell.reset_parameters()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        start = torch.tensor([RULE_START[n] for n in self._names])
        with torch.no_grad():
            self.rule_bias.copy_(torch.log(start / (1.0 - start)))
        nn.init.zeros_(self.rule_regime.weight)
        nn.init.zeros_(self.rule_regime.bias)

    def thresholds(self, regime_t: Tensor, window_t: Tensor) -> Tensor:
        """``[B, 7]`` thresholds of the base rule for the regime in force."""
        cols = torch.stack(regime_columns(regime_t, window_t, self.params), dim=-1).to(self.rule_bias.dtype)
        if not self.config.regime_conditioned:
            cols = cols * 0.0
        share = torch.sigmoid(self.rule_bias + self.rule_regime(cols))
        return self.rule_low + self.rule_span * share

    def forward(self, frames: Tensor, rule_in: dict[str, Tensor], state: LSTMState | None = None
                ) -> tuple[Tensor, LSTMState]:
        h, c = self.cell(frames, state)
        cast = {k: v.to(frames.dtype) for k, v in rule_in.items()}  # for the rule and the gate below
        if self.config.structured:
            base = base_rule2(self.thresholds(rule_in["regime"], rule_in["window"]).to(frames.dtype), cast,
                              self.params)
        else:
            base = frames.new_zeros(frames.shape[0], 9)
        head = self.head(torch.cat([h, frames, base / self.scale], dim=-1))
        raw = base + self.config.residual_scale * self.scale * head
        if self.config.structured and "forecast_year" in rule_in:
            # Where the regime changes within the episode, the residual may not order virgin
            # where the rule's price test (h) orders none: a unit made from it would cost more
            # than the lost sale it saves. The residual was meta-trained on regimes held all
            # episode (there, zeroing its virgin order under a high tax changed no score);
            # after a rise it has not seen it ordered virgin at 1,129 EUR/t.
            off = routing_economics(cast, self.params)["order_virgin"] <= 0
            order = torch.where(off, torch.minimum(raw[:, 0], base[:, 0]), raw[:, 0])
            raw = torch.cat([order[:, None], raw[:, 1:]], dim=-1)
        return raw, (h, c)


# ----------------------------------------------------------------------------------------
# 4. The agent
# ----------------------------------------------------------------------------------------


class PolicyAgent2:
    """Acts with ``module`` at ``weights`` (or one weights dict per consecutive group of
    the batch, sizes ``groups``) via ``functional_call``; a :class:`moca.sim2.Policy2`."""

    def __init__(self, module: LSTMPolicy2, weights: Weights | Sequence[Weights] | None = None,
                 groups: Sequence[int] | None = None):
        self.module = module
        self.weights, self.groups = agent_weights(module, weights, groups)
        self._frames: list[Tensor] = []
        self._states: list[LSTMState | None] = [None] * len(self.weights)

    def reset(self, batch: ScenarioBatch2) -> None:
        if self.groups is not None and sum(self.groups) != batch.size:
            raise PolicyError(f"groups: sizes {self.groups} sum to {sum(self.groups)}, the batch has {batch.size}")
        self._frames, self._states = [], [None] * len(self.weights)

    def act(self, obs: Observation2) -> Tensor:
        dtype = next(iter(self.weights[0].values())).dtype
        x = features2(obs, self.module.config).to(dtype)
        if not self._frames:
            self._frames = [x] * self.module.config.window
        self._frames = self._frames[1:] + [x]
        frames = torch.cat(self._frames, dim=-1)
        rule_in = rule_inputs(obs)
        if len(self.weights) == 1:
            raw, self._states[0] = functional_call(self.module, self.weights[0], (frames, rule_in, self._states[0]))
        else:
            raws, start = [], 0
            for i, (w, size) in enumerate(zip(self.weights, self.groups)):
                part = {k: v[start:start + size] for k, v in rule_in.items()}
                raw_i, self._states[i] = functional_call(self.module, w, (frames[start:start + size], part,
                                                                          self._states[i]))
                raws.append(raw_i)
                start += size
            raw = torch.cat(raws)
        return raw.to(obs.state.columns[0].dtype)


# ----------------------------------------------------------------------------------------
# 5. Losses and evaluation
# ----------------------------------------------------------------------------------------


def episode_losses2(module: LSTMPolicy2, weights: Weights | Sequence[Weights] | None, batch: ScenarioBatch2,
                    oracle_cost: Tensor, groups: Sequence[int] | None = None,
                    correction_weight: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Roll out with backpropagation through the episode; per scenario ``[B]``: the loss
    ``cost/oracle + correction_weight * correction``, the cost ratio and the correction."""
    from moca.projection import project2_batch

    oracle_cost = torch.as_tensor(oracle_cost, dtype=batch.dtype)
    if oracle_cost.shape != (batch.size,) or not bool(torch.all(oracle_cost > 0)):
        raise PolicyError(f"oracle_cost: expected [{batch.size}] entries > 0 (EUR), got {list(oracle_cost.shape)}")
    out = rollout2(batch, PolicyAgent2(module, weights, groups), project2_batch)
    ratio = out.total_cost / oracle_cost
    correction = correction_distance(out.executed, out.raw, out.scale)
    return ratio + correction_weight * correction, ratio, correction


def evaluate_policy2(module: LSTMPolicy2, weights: Weights | None, scenarios: Sequence[Scenario2],
                     oracle_costs: np.ndarray) -> dict[str, Any]:
    """Score on scenarios in float64, every raw action through the projection, violations
    (rows 1-8, 6a/6b and window settlements) recounted per period: ``score`` = mean
    oracle/cost, ``scores`` per scenario, ``mean_cost``, ``violations``, ``correction``."""
    from moca.projection import episode_violations2, project2_batch

    scenarios = list(scenarios)
    wrong = next((s for s in scenarios if not isinstance(s, Scenario2)), None)
    if wrong is not None or not scenarios:
        raise PolicyError(f"scenarios: expected CLSC-2 Scenario2s, got {type(wrong).__name__ if wrong else 'none'}")
    oracle = check_evaluation(module, weights, scenarios[0].params, oracle_costs, len(scenarios))
    batch = ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64)
    weights = {k: v.detach().double() for k, v in (weights or dict(module.named_parameters())).items()}
    with torch.no_grad():
        out = rollout2(batch, PolicyAgent2(module, weights), project2_batch)
    cost = out.total_cost.numpy()
    executed, inputs, table = out.executed.numpy(), out.inputs.numpy(), batch.regime.numpy()
    violations = episode_violations2(executed, inputs, table, batch.params)
    scores = oracle / cost
    return {"score": float(scores.mean()), "scores": [float(x) for x in scores], "mean_cost": float(cost.mean()),
            "violations": int(violations), "correction": float(out.correction.mean())}


__all__ = ["LSTMPolicy2", "MODEL", "PolicyAgent2", "REGIME_FEATURES_2", "RULE_START", "base_rule2", "routing_economics",
           "episode_losses2", "evaluate_policy2", "feature_size", "features2", "observed_means", "rule_inputs"]
