"""The threshold rule on CLSC-2 (nine actions: market buying and grade routing), tuned per
regime by simulation.

One decision per period from what a planner sees at event 2 (post-arrival stocks and
pipeline, the window counters, supplier and market status, the regime, the demand seen so
far, and the chain's declared parameters; never ``d_t``, never the draws to come). The
demand forecast ``f_t, f_{t+1}, ...`` (units) is :func:`moca.forecast.seasonal_level_forecast`:
a yearly harmonic fitted to the last 52 periods seen, times a smoothed level that follows
jumps within a few periods.
The stock thresholds are stated at a demand of two thirds of ``cap_produce`` units a period
(:func:`moca.policy2.reference_demand2`; the rule reads none of the generator's parameters)
and scale with the forecast level. In the order the rule computes them:

* **refurbish** grade-A cores above a level ``L_f``: ``f = min(CA - L_f, K_f)``;
* **produce up to** ``f_t + C + s_P`` of serviceable product (``P + eta_f f``; sales are
  lost, not backlogged), within ``[0, K_p]``, where ``C`` covers next period's demand and,
  ahead of demand above capacity, the excess ``max_h sum_{k<=h} f_{t+k} - (h-1) K_p`` over
  the next 12 periods (built ahead, as a capacitated plan would);
* **mix** the mandate share ``r`` of recycled material, more while ``M`` is above a free
  level ``M_free``; recycled fills in for missing virgin (the window rows 6a/6b and the
  settlement are left to the safety layer, which never lets them break);
* **disassemble** grade B first, then the grade-A cores not refurbished, up to a recycled
  target ``S_M + r' m q_{t+1}`` after use (kg; ``q`` the planned production, ``r'`` the
  mandate or the share an emission cap implies, whichever is higher), plus, while the
  supplier is down, the virgin material the next two periods' production would miss;
* **buy recycled** on the market up to a second, usually lower target ``S_B + ...`` of the
  same form (the market is dearer than disassembly of grade A, cheaper than none);
* **route by the regime's prices** (:func:`moca.policy2.routing_economics`): every grade-B
  core (and grade-A core beyond the refurbishment reserve ``L_f``) is disassembled where its
  material in place of virgin (``c_v + tau e_v``, EUR/kg) pays for the disassembly better
  than disposing of the core or holding it to the end; all the market offers is bought
  where it is cheaper than virgin; recovered and bought material is then used before
  virgin;
* **dispose** cores above a level ``L_w`` (grade B first), within the recovery target, and
  only where disposal (``c_w + lambda``) costs less than holding the core to the end;
* **order** virgin for ``q_{t+1} + ... + q_{t+L_v+1}`` net of the recycled share supply
  brings, plus a safety stock ``s_V`` against supplier outages, drawn down over the last
  :data:`moca.policy2.VIRGIN_DRAWDOWN` periods, up to the inventory position, when the
  supplier accepts orders, and only where a unit made from it (``m (c_v + tau e_v) + c_p``),
  with the end-of-life cost its sale brings back (the landfilled scrap of its returns, less
  what recovering graded cores earns, never below 0), costs less than the lost sale it saves
  (``p_l``): above about 1,000 EUR/t of carbon tax on the default chain, or from about 600
  EUR/t with a high landfill tax, it orders none and uses the virgin already bought. Ahead
  of an announced rise of the carbon tax (charged when virgin is ordered) it orders now,
  at today's tax, the virgin that production within the look-ahead would otherwise order
  after the rise, where the rise saves more per kg than holding it the extra periods costs,
  net of the recycled share the mandate announced for that production's period requires.

Near the end it stops what can no longer pay: no production or refurbishment in the last
period, no virgin for it, no recovery or market purchase whose material could not be sold,
no order that arrives too late. The rule is written once, in torch, as :func:`moca.policy2.base_rule2`
(the base of moca's learned CLSC-2 policy); :class:`Threshold2Policy` runs it.

The seven thresholds ``(s_P, s_V, S_M, S_B, M_free, L_f, L_w)`` are tuned per regime as the
CLSC-1 rule's are (:func:`moca.baselines.threshold.search_unit_box`: differential evolution
then compass search, every candidate simulated on the same training scenarios, its raw
actions through the batched exact projection).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from moca.baselines.threshold import TuningReport, search_unit_box
from moca.regime import RegimeSchedule, load_schedule
from moca.scenario import DEFAULT_PARAMS_2, Params2, draw_training_scenarios2

THRESHOLD2_NAMES = ("safety_product", "safety_virgin", "target_recycled", "target_market", "free_recycled",
                    "refurbish_level", "dispose_level")
SEARCH_POWER_2 = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0])
#: Candidate rules the peer's tuning simulates (each on every training scenario).
TUNING_BUDGET_2 = 1500


def threshold2_bounds(params: Params2) -> np.ndarray:
    """``[7, 2]`` search box (units, kg, kg, kg, kg, cores, cores), scaled by the capacities."""
    kg, units = params.mass * params.cap_produce, params.cap_produce
    return np.array([[0.0, 1.5 * units], [-1.0 * kg, 5.0 * kg], [0.0, 2.0 * kg], [0.0, 2.0 * kg],
                     [0.0, 5.0 * kg], [0.0, 2.0 * units], [0.0, 2.0 * units]])


def start_thresholds2(params: Params2 = DEFAULT_PARAMS_2) -> np.ndarray:
    """``[7]`` the rule's start thresholds (:data:`moca.policy2.RULE_START`, shares of the
    search box) in the box's units."""
    from moca.policy2 import RULE_START

    bounds = threshold2_bounds(params)
    return bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * np.array([RULE_START[n] for n in THRESHOLD2_NAMES])


class Threshold2Policy:
    """The rule as a :class:`moca.sim2.Policy2`, vectorised over the batch; ``thresholds``
    ``[7]`` or ``[B, 7]`` (one rule per batch row, for the tuner)."""

    def __init__(self, thresholds, params: Params2 = DEFAULT_PARAMS_2):
        values = np.asarray(thresholds, dtype=np.float64)
        if values.ndim not in (1, 2) or values.shape[-1] != len(THRESHOLD2_NAMES) or not np.isfinite(values).all():
            raise ValueError(f"thresholds: expected finite values of shape [7] or [B, 7] "
                             f"({', '.join(THRESHOLD2_NAMES)}), got {list(values.shape)}")
        self.thresholds = values
        self.params = params
        self.tuning: TuningReport | None = None

    def as_dict(self) -> dict[str, float]:
        if self.thresholds.ndim != 1:  # (float() of a row failed deep in numpy)
            raise ValueError("as_dict: only for a single rule ([7] thresholds)")
        return {name: float(v) for name, v in zip(THRESHOLD2_NAMES, self.thresholds)}

    def reset(self, batch) -> None:
        # Stateless (everything it reads is in the observation), but its thresholds are one
        # chain's: on another chain's batch it ran with this chain's mass and capacities
        # without a word, as CLSC-1's rule refuses to.
        if batch.params != self.params:
            raise ValueError("Threshold2Policy: the batch's params differ from the policy's")
        if self.thresholds.ndim == 2 and self.thresholds.shape[0] != batch.size:
            raise ValueError(f"thresholds: {self.thresholds.shape[0]} rows for a batch of {batch.size}")

    def act(self, obs) -> Tensor:
        # One rule, written once in torch (moca.policy2.base_rule2), so the peer and the base
        # of moca's learned policy cannot drift apart.
        from moca.policy2 import base_rule2, rule_inputs

        dtype = obs.state.stocks.dtype
        thresholds = torch.as_tensor(self.thresholds, dtype=dtype)
        thresholds = thresholds.expand(obs.state.stocks.shape[0], -1) if thresholds.ndim == 1 else thresholds
        return base_rule2(thresholds, rule_inputs(obs), self.params)


def tune_threshold2(regime, params: Params2 = DEFAULT_PARAMS_2, train_seeds: int | Sequence = 32,
                    budget: int = TUNING_BUDGET_2, seed: int = 0, popsize: int = 8, global_share: float = 0.7,
                    progress: Callable[[int], None] | None = None) -> Threshold2Policy:
    """Tune the seven thresholds for ``regime`` (a CLSC-2 regime, schedule or name) on
    training-stream scenarios; the report is in ``policy.tuning``. ``budget``: the candidate
    rules simulated (at least 112, two generations of the search:
    :func:`moca.baselines.threshold.search_unit_box`).
    ``progress``, if given, is told the candidates evaluated so far after each batch of them."""
    from moca.projection import project2_batch
    from moca.scenario import draw_scenario2
    from moca.sim2 import ScenarioBatch2, rollout2

    started = time.perf_counter()
    schedule = regime if isinstance(regime, RegimeSchedule) else (
        RegimeSchedule.constant(regime) if not isinstance(regime, str) else load_schedule(regime, model="CLSC-2"))
    scenarios = draw_training_scenarios2(train_seeds, schedule, params) if isinstance(train_seeds, int) \
        else [draw_scenario2(int(x), schedule, params) for x in train_seeds]
    bounds = threshold2_bounds(params)
    low, span = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
    n_scen = len(scenarios)
    evaluated = 0

    def mean_costs(unit: np.ndarray) -> np.ndarray:
        nonlocal evaluated
        candidates = low[:, None] + span[:, None] * unit ** SEARCH_POWER_2[:, None]
        n_cand = candidates.shape[1]
        evaluated += n_cand
        batch = ScenarioBatch2.from_scenarios([s for _ in range(n_cand) for s in scenarios], dtype=torch.float64)
        with torch.no_grad():
            out = rollout2(batch, Threshold2Policy(np.repeat(candidates.T, n_scen, axis=0), params), project2_batch)
        if progress is not None:
            progress(evaluated)
        return out.total_cost.numpy().reshape(n_cand, n_scen).mean(-1)

    x, fx = search_unit_box(mean_costs, len(THRESHOLD2_NAMES), budget, lambda: evaluated, seed, popsize, global_share)
    policy = Threshold2Policy(low + span * x ** SEARCH_POWER_2, params)
    policy.tuning = TuningReport(train_cost=fx, candidates=evaluated, seconds=time.perf_counter() - started,
                                 thresholds=policy.as_dict())
    return policy


__all__ = ["THRESHOLD2_NAMES", "TUNING_BUDGET_2", "Threshold2Policy", "start_thresholds2", "threshold2_bounds", "tune_threshold2"]
