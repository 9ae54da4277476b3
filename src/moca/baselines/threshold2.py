"""The threshold rule on CLSC-2 (nine actions: market buying and grade routing), tuned per
regime by simulation.

One decision per period from what a planner sees at event 2 (post-arrival stocks and
pipeline, the window counters, supplier and market status, the regime, the demand seen so
far; never ``d_t``, never how the scenario was drawn). The demand forecast is the mean of
the last four observed periods, ``dbar`` (units). In the order the rule computes them:

* **refurbish** grade-A cores above a level ``L_f``: ``f = min(CA - L_f, K_f)``;
* **produce up to** ``2 dbar + s_P`` of serviceable product (``P + eta_f f``; sales are
  lost, not backlogged), within ``[0, K_p]``;
* **mix** the mandate share ``r`` of recycled material, more while ``M`` is above a free
  level ``M_free``; recycled fills in for missing virgin (the window rows 6a/6b and the
  settlement are left to the safety layer, which never lets them break);
* **disassemble** grade B first, then the grade-A cores not refurbished, up to a recycled
  target ``S_M + r m dbar`` after use (kg);
* **buy recycled** on the market up to a second, usually lower target ``S_B + r m dbar``
  (the market is dearer than disassembly of grade A, cheaper than none);
* **dispose** cores above a level ``L_w`` (grade B first), within the recovery target;
* **order** virgin up to ``(1 - r) m (L_v + 1) dbar + s_V`` of inventory position, when the
  supplier accepts orders.

Near the end it stops what can no longer pay: no production or refurbishment in the last
period, no recovery or market purchase whose material could not be sold, no order that
arrives too late.

The seven thresholds ``(s_P, s_V, S_M, S_B, M_free, L_f, L_w)`` are tuned per regime as the
CLSC-1 rule's are (:func:`moca.baselines.threshold.search_unit_box`: differential evolution
then compass search, every candidate simulated on the same training scenarios, its raw
actions through the batched exact projection).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from moca.baselines.threshold import TuningReport, search_unit_box
from moca.regime import RegimeSchedule, load_schedule
from moca.scenario import DEFAULT_PARAMS_2, Params2, draw_training_scenarios2

THRESHOLD2_NAMES = ("safety_product", "safety_virgin", "target_recycled", "target_market", "free_recycled",
                    "refurbish_level", "dispose_level")
SEARCH_POWER_2 = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0])
_MARGIN = 1.0 + 1e-5


def threshold2_bounds(params: Params2) -> np.ndarray:
    """``[7, 2]`` search box (units, kg, kg, kg, kg, cores, cores), scaled by the capacities."""
    kg, units = params.mass * params.cap_produce, params.cap_produce
    return np.array([[0.0, 1.5 * units], [-1.0 * kg, 2.0 * kg], [0.0, 2.0 * kg], [0.0, 2.0 * kg],
                     [0.0, 5.0 * kg], [0.0, 2.0 * units], [0.0, 2.0 * units]])


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
        return {name: float(v) for name, v in zip(THRESHOLD2_NAMES, self.thresholds)}

    def reset(self, batch) -> None:
        self._T = batch.horizon
        self._th = [self.thresholds[..., j] for j in range(len(THRESHOLD2_NAMES))]

    def act(self, obs) -> Tensor:
        p, t, T = obs.params, obs.t, self._T
        s = obs.state
        as_np = lambda x: x.detach().to(torch.float64).cpu().numpy()  # noqa: E731
        V, M, P, CA, CB = (np.maximum(as_np(s.stocks[:, j]), 0.0) for j in range(5))
        regime = as_np(obs.regime_t)
        r, kappa = regime[:, 0], regime[:, 4]
        supply, market = as_np(obs.inputs["supply_up"]), as_np(obs.inputs["market_avail"])
        dbar = as_np(obs.demand_seen)[:, -4:].mean(-1)
        s_P, s_V, S_M, S_B, M_free, L_f, L_w = self._th
        zero = np.zeros_like(V)
        m, L_v = p.mass, p.lead_virgin

        can_produce = t + 1 <= T - 1  # what is made at t sells from t+1
        f = np.clip(CA - L_f, 0.0, p.cap_refurbish) if can_produce else zero
        q = np.clip(2.0 * dbar + (s_P if t + 2 < T else 0.0) - (P + p.yield_refurbish * f), 0.0, p.cap_produce) \
            if can_produce else zero
        material = m * q
        u_r = np.minimum(np.maximum(np.maximum(r * material, np.minimum(material, M - M_free)), 0.0), M)
        mandated = r > 0
        if mandated.any():  # no more production than the recycled material allows at share r
            material = np.where(mandated, np.minimum(material, u_r / np.maximum(r * _MARGIN, 1e-12)), material)
        u_v = np.maximum(np.minimum(material - u_r, V), 0.0)
        u_r = np.minimum(M, u_r + np.maximum(material - u_v - u_r, 0.0))

        # Recovered material of t is usable at t+1 and sold at t+2.
        can_recover = t + 2 <= T - 1
        need = r * m * dbar
        left = M - u_r
        per_b, per_a = m * p.yield_disassembly_b, m * p.yield_disassembly_a
        if can_recover:
            short = np.maximum(S_M + need - left, 0.0)
            g_B = np.minimum(np.minimum(short / per_b, CB), p.cap_disassemble)
            short = np.maximum(short - per_b * g_B, 0.0)
            g_A = np.minimum(np.minimum(short / per_a, np.maximum(CA - f, 0.0)), p.cap_disassemble - g_B)
            recovered = per_b * g_B + per_a * g_A
            o_m = np.clip(S_B + need - left - recovered, 0.0, p.cap_market * market)
        else:
            g_A = g_B = o_m = zero

        w_B = np.clip(CB - g_B - L_w, 0.0, p.cap_dispose)
        w_A = np.clip(CA - f - g_A - L_w, 0.0, np.maximum(p.cap_dispose - w_B, 0.0))
        recovering = kappa > 0
        if recovering.any():
            allowed = (f + g_A + g_B) * (1.0 - kappa) / np.maximum(kappa * _MARGIN, 1e-12)
            total = w_A + w_B
            factor = np.where(recovering & (total > allowed), allowed / np.maximum(total, 1e-12), 1.0)
            w_A, w_B = w_A * factor, w_B * factor

        position = V - u_v + sum(as_np(x) for x in s.pipeline_slots) if s.pipeline_slots else V - u_v
        can_order = t + L_v + 1 <= T - 1  # arrives at t+L_v, used then, sold a period later
        o = np.clip((1.0 - r) * m * (L_v + 1) * dbar + s_V - position, 0.0, p.cap_order) * supply \
            if can_order else zero
        action = np.stack(np.broadcast_arrays(o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B), axis=-1)
        return torch.as_tensor(np.ascontiguousarray(action), dtype=s.stocks.dtype)


def tune_threshold2(regime, params: Params2 = DEFAULT_PARAMS_2, train_seeds: int | Sequence = 8, budget: int = 600,
                    seed: int = 0, popsize: int = 8, global_share: float = 0.7) -> Threshold2Policy:
    """Tune the seven thresholds for ``regime`` (a CLSC-2 regime, schedule or name) on
    training-stream scenarios; the report is in ``policy.tuning``."""
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
        return out.total_cost.numpy().reshape(n_cand, n_scen).mean(-1)

    x, fx = search_unit_box(mean_costs, len(THRESHOLD2_NAMES), budget, lambda: evaluated, seed, popsize, global_share)
    policy = Threshold2Policy(low + span * x ** SEARCH_POWER_2, params)
    policy.tuning = TuningReport(train_cost=fx, candidates=evaluated, seconds=time.perf_counter() - started,
                                 thresholds=policy.as_dict())
    return policy


__all__ = ["THRESHOLD2_NAMES", "Threshold2Policy", "threshold2_bounds", "tune_threshold2"]
