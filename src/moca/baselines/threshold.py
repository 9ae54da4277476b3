"""A threshold rule of the closed-loop supply chain literature, tuned per regime.

One decision per period from what is known at event 2 (post-arrival stocks, pipeline,
sales history, regime in force, period ``t`` and the public seasonal mean forecast
``dbar``; never ``d_t``). In the order the rule computes them:

* **refurbish** the cores above a level ``L_f``: ``f = min(C - L_f, K_f)``;
* **produce up to** a serviceable position: production of ``t`` sells from ``t+1``, so
  ``q = dbar_t + dbar_{t+1} + s_P - (P - B + eta_f f)`` (units, within ``[0, K_p]``);
* **mix** material to meet the recycled-content mandate exactly, using recycled material
  beyond it only while ``M`` is above a free level ``M_free`` (kg); production is cut to
  what the recycled stock allows (``m q <= M / r``), and recycled fills in for missing virgin;
* **disassemble** cores up to a recycled-material target after use: ``S_M`` plus next
  period's mandate share ``r m dbar_{t+2}`` (kg), ``g <= min(C - f, K_d)``;
* **dispose** the cores above a level ``L_w`` after ``g`` and ``f``, no more than the
  recovery target allows;
* **order up to** a virgin inventory position (on hand after use + pipeline, kg):
  ``o = (1 - r) m sum_{k=t+2..t+L_v+1} dbar_k + s_V - IP_V``, the need capped under a
  mandate by ``(1 - r) / r`` times the recycled material in sight.

End of horizon: the demand of period ``k`` is planned for only while leaving it unmet
(backlog ``b (T - k)`` to the end) costs more than serving it (``c_p`` with material on
hand; plus ``m (c_v + tau e_v / 1000)`` when the material must still be bought), so the
rule stops ordering, producing and recovering when that no longer pays.

The six thresholds ``(s_P, s_V, S_M, M_free, L_f, L_w)`` are tuned per regime by
simulation optimisation (:func:`tune_threshold`): differential evolution, then a compass
search, over the batched simulator; every candidate is simulated on the same training
scenarios (common random numbers) with its raw actions executed through the safety
layer. The rule's actions keep rows 1-6 and 8 by construction (float32 included); the
layer checks every action and enforces the emission cap, which the rule does not model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import differential_evolution
from torch import Tensor

from moca.limits import is_whole
from moca.regime import Regime, RegimeSchedule, load_schedule
from moca.scenario import DEFAULT_PARAMS, Params, Scenario, draw_scenario, draw_training_scenarios, seasonal_mean_demand
from moca.sim import R_MANDATE, R_RECOVERY, R_TAX, Observation, Projector, ScenarioBatch, Simulator, rollout

_MARGIN = 1.0 + 1e-5  # relative margin on the ratio rows 6 and 8 (see ThresholdPolicy.act)


def _clip(x, low: float, high: float):
    """``min(max(x, low), high)``; np.clip's dispatch costs more than the two ufuncs."""
    return np.minimum(np.maximum(x, low), high)


THRESHOLD_NAMES: tuple[str, ...] = ("safety_product", "safety_virgin", "target_recycled", "free_recycled",
                                    "refurbish_level", "dispose_level")
THRESHOLD_UNITS: tuple[str, ...] = ("units", "kg", "kg", "kg", "cores", "cores")


#: The tuner searches ``u`` in the unit box with ``threshold = low + (high - low) * u ** power``:
#: levels get fine resolution near 0, where the good values for a binding mandate lie.
SEARCH_POWER = np.array([1.0, 1.0, 2.0, 2.0, 2.0, 2.0])


def threshold_bounds(params: Params) -> np.ndarray:
    """``[6, 2]`` search box of the thresholds, in their units, scaled by the capacities."""
    kg = params.mass * params.cap_produce  # one period of full-capacity material (kg)
    units = params.cap_produce
    return np.array([
        [0.0, 1.5 * units],  # s_P
        [-1.0 * kg, 2.0 * kg],  # s_V
        [0.0, 5.0 * kg],  # S_M
        [0.0, 5.0 * kg],  # M_free
        [0.0, 2.0 * units],  # L_f
        [0.0, 2.0 * units],  # L_w
    ])


class ThresholdPolicy:
    """The threshold rule as a :class:`moca.sim.Policy`, vectorised over the batch.

    ``thresholds`` is ``[6]`` (one rule for every scenario) or ``[B, 6]`` (one rule per
    batch row, used by the tuner to simulate many candidate rules at once), in the units
    of :data:`THRESHOLD_UNITS`.
    """

    def __init__(self, thresholds: Sequence[float] | np.ndarray | Tensor, params: Params = DEFAULT_PARAMS):
        values = torch.as_tensor(np.asarray(thresholds, dtype=np.float64))
        if values.ndim not in (1, 2) or values.shape[-1] != len(THRESHOLD_NAMES):
            raise ValueError(f"thresholds: expected shape [6] or [B, 6] ({', '.join(THRESHOLD_NAMES)}), "
                             f"got {list(values.shape)}")
        if not torch.isfinite(values).all():
            raise ValueError("thresholds: must be finite")
        self.thresholds = values
        self.params = params
        self.tuning: TuningReport | None = None  # set by tune_threshold
        self._forecast: list[float] | None = None  # set by reset

    def as_dict(self) -> dict[str, float]:
        if self.thresholds.ndim != 1:
            raise ValueError("as_dict: only for a single rule ([6] thresholds)")
        return {name: float(v) for name, v in zip(THRESHOLD_NAMES, self.thresholds)}

    def reset(self, batch: ScenarioBatch) -> None:
        p = self.params
        if batch.params != p:
            raise ValueError("ThresholdPolicy: the batch's params differ from the policy's")
        if self.thresholds.ndim == 2 and self.thresholds.shape[0] != batch.size:
            raise ValueError(f"thresholds: {self.thresholds.shape[0]} rows for a batch of {batch.size}")
        self._horizon = batch.horizon
        self._device = batch.demand.device
        # The public point forecast, 0 beyond the horizon (nothing is needed after it), and
        # the backlog cost still to come for a unit of demand of period k left unmet: b (T - k).
        periods = np.arange(batch.horizon + p.lead_virgin + 3)
        self._forecast = np.where(periods < batch.horizon, seasonal_mean_demand(p, periods), 0.0).tolist()
        self._penalty_left = (np.clip(batch.horizon - periods, 0, None) * p.backlog_cost).tolist()
        # Threshold columns as contiguous arrays in the batch's precision ([B] each, or scalars).
        np_dtype = np.float32 if batch.dtype == torch.float32 else np.float64
        th = self.thresholds.numpy().astype(np_dtype)
        self._th = [np.ascontiguousarray(th[..., i]) for i in range(th.shape[-1])]

    def act(self, obs: Observation) -> Tensor:
        """Raw actions ``[B, 6]`` (kg, kg, kg, cores x3) in the batch's dtype.

        Written with numpy on the batch's arrays: the rule is ~80 small elementwise steps,
        and numpy's per-operation overhead is several times below PyTorch's on CPU, which
        matters at batch 1 (decision latency) and for the tuner's many rollouts. The rule is
        not trained by gradient, so nothing is lost.
        """
        if self._forecast is None:
            raise RuntimeError("ThresholdPolicy.act before reset")
        p, t, T = obs.params, obs.t, self._horizon
        fc, left = self._forecast, self._penalty_left
        s = obs.state
        V, M, P, C, B = (np.maximum(x.detach().cpu().numpy(), 0.0) for x in
                         (s.virgin, s.recycled, s.product, s.cores, s.backlog))
        regime = obs.regime.detach().cpu().numpy()
        r, tau, kappa = regime[:, R_MANDATE], regime[:, R_TAX], regime[:, R_RECOVERY]
        s_P, s_V, S_M, M_free, L_f, L_w = self._th
        L_v = p.lead_virgin
        zero = np.zeros_like(V)

        # End of horizon: meet the demand of period k only while leaving it unmet would cost
        # more (b (T - k)) than what serving it still costs: c_p with material on hand, plus
        # the virgin material (c_v + tax) when it has yet to be bought. Sales of T-1 are the last.
        can_produce = left[t + 1] >= p.cost_produce  # production / refurbishment at t sells from t+1
        keep_safety = t + 2 < T  # no safety stock is worth holding past the last sales
        can_recover = t + 2 < T  # recycled material of t is used at t+1, sold at t+2

        # Refurbish the cores above L_f (units join P at the end of the period).
        f = _clip(C - L_f, 0.0, p.cap_refurbish) if can_produce else zero

        # Produce up to dbar_t + dbar_{t+1} + s_P of serviceable position (P - B).
        if can_produce:
            position = P - B + p.yield_refurbish * f
            q = _clip(fc[t] + fc[t + 1] - position + (s_P if keep_safety else 0.0), 0.0, p.cap_produce)
        else:
            q = zero
        material = p.mass * q

        # Mix: exactly the mandate share, more only while M is above its free level.
        u_r = np.minimum(np.maximum(np.maximum(r * material, np.minimum(material, M - M_free)), 0.0), M)
        # Production is capped by the recycled material the mandate requires. The relative
        # margin keeps row 6 (right-hand side 0, absolute tolerance 1e-6 kg) clear of
        # float32 round-off, so the safety layer has nothing to correct.
        mandated = r > 0
        if mandated.any():
            material = np.where(mandated, np.minimum(material, u_r / np.maximum(r * _MARGIN, 1e-12)), material)
        u_v = np.maximum(np.minimum(material - u_r, V), 0.0)
        # Virgin short: recycled may fill in (raising the recycled share never breaks the mandate).
        u_r = np.minimum(M, u_r + np.maximum(material - u_v - u_r, 0.0))

        # Disassemble up to a recycled target after use: S_M plus next period's mandate share
        # (S_M only while its material can still be turned into sold product).
        per_core = p.yield_disassembly * p.mass  # kg recycled per core
        if can_recover and per_core > 0:  # (a yield of 0 recovers nothing: x / 0 was inf, or NaN)
            next_share = r * (p.mass * fc[t + 2]) if left[t + 2] >= p.cost_produce else zero
            target = (S_M if t + 3 < T else 0.0) + next_share
            g = np.minimum(np.maximum((target - (M - u_r)) / per_core, 0.0),
                           np.minimum(np.maximum(C - f, 0.0), p.cap_disassemble))
        else:
            g = zero

        # Dispose cores above L_w, within the recovery target g + f >= kappa (g + f + w).
        w = _clip(C - g - f - L_w, 0.0, p.cap_dispose)
        recovering = kappa > 0
        if recovering.any():
            allowed = (g + f) * (1.0 - kappa) / np.maximum(kappa * _MARGIN, 1e-12)
            w = np.where(recovering, np.minimum(w, allowed), w)

        # Order up to: virgin for the demand that the production of periods t+1 .. t+L_v
        # serves (periods t+2 .. t+L_v+1, each only while buying for it still pays), plus s_V.
        unit_bought = p.cost_produce + p.mass * (p.cost_virgin + tau * (p.emis_virgin / 1000.0))  # [B] EUR
        need = zero
        for k in range(t + 2, t + L_v + 2):
            need = need + np.where(left[k] >= unit_bought, fc[k], 0.0)
        need = need * p.mass * (1.0 - r)
        # Under a mandate, virgin beyond (1 - r) / r times the recycled material in sight
        # (on hand after use, this period's yield, cores due back before the order arrives)
        # cannot be used. The sale of t - L_r + j returns at t + j: from the history while
        # sold already, else its forecast (a return lag below the lead time left those out,
        # and the cap starved the orders: 0.31 of the oracle where the MPC reached 0.95).
        if mandated.any():
            sold = s.sales_history.detach().cpu().numpy()
            L_r = sold.shape[-1]
            due = zero
            for j in range(1, L_v):
                due = due + (sold[:, j] if j < L_r else fc[t - L_r + j])
            due = due * p.return_mean
            usable = (M - u_r + per_core * (g + due)) * (1.0 - r) / np.maximum(r, 1e-12)
            need = np.where(mandated, np.minimum(need, usable), need)
        position_v = V - u_v + s.pipeline.sum(-1).detach().cpu().numpy()
        # An order arrives at t+L_v and first sells at t+L_v+1: worthless if that does not pay.
        last_ok = left[t + L_v + 1] >= unit_bought
        o = np.where(last_ok, _clip(need + s_V - position_v, 0.0, p.cap_order), 0.0)
        action = np.stack(np.broadcast_arrays(o, u_v, u_r, g, f, w), axis=-1)
        return torch.from_numpy(np.ascontiguousarray(action, dtype=V.dtype)).to(self._device)


# --- tuning ------------------------------------------------------------------------------------


@dataclass
class TuningReport:
    """How a tuning run went: mean training cost (EUR/scenario), evaluations, seconds."""

    train_cost: float
    candidates: int
    seconds: float
    thresholds: dict[str, float]


def _training_scenarios(schedule: RegimeSchedule, params: Params,
                        train_seeds: int | Sequence[int]) -> list[Scenario]:
    if isinstance(train_seeds, int):
        # Scenarios of the training stream never coincide with integer-seeded test scenarios.
        return draw_training_scenarios(train_seeds, schedule, params)
    return [draw_scenario(int(s), schedule, params) for s in train_seeds]


def _schedule(regime: Regime | RegimeSchedule | str) -> RegimeSchedule:
    if isinstance(regime, RegimeSchedule):
        return regime
    if isinstance(regime, Regime):
        return RegimeSchedule.constant(regime)
    return load_schedule(regime)


def search_unit_box(mean_costs, n_dim: int, budget: int, evaluated, seed: int = 0, popsize: int = 8,
                    global_share: float = 0.7) -> tuple[np.ndarray, float]:
    """Minimise ``mean_costs`` (``[n_dim, S]`` candidates in the unit box -> ``[S]`` costs)
    within ``budget`` candidates (``evaluated()`` says how many so far): differential
    evolution, one batched call per generation, then a compass search around the best point,
    all ``2 n_dim`` moves in one call. Returns the best point and its cost. The evolution
    runs at least its first two generations (``2 popsize n_dim`` candidates) whatever the
    budget, so a smaller budget means that many."""
    if not is_whole(budget) or budget < 1:  # (NaN failed in int(), 0 and -5 were taken)
        raise ValueError(f"budget={budget!r}: a whole number of candidate rules >= 1")
    if not is_whole(popsize) or popsize < 1:  # (0 divided by zero)
        raise ValueError(f"popsize={popsize!r}: a whole number >= 1 (candidates per threshold and generation)")
    if not 0.0 <= global_share <= 1.0:
        raise ValueError(f"global_share={global_share!r}: the budget's share for the global search, in [0, 1]")
    global_budget = int(budget * global_share)
    generations = max(1, global_budget // (popsize * n_dim) - 1)
    result = differential_evolution(
        mean_costs, [(0.0, 1.0)] * n_dim, popsize=popsize, maxiter=generations, vectorized=True,
        updating="deferred", polish=False, seed=seed, tol=1e-8, mutation=(0.5, 1.0), recombination=0.7,
    )
    x, fx = np.clip(result.x, 0.0, 1.0), float(result.fun)
    step = 0.05
    while evaluated() + 2 * n_dim <= budget and step > 1e-3:
        moves = np.concatenate([np.eye(n_dim), -np.eye(n_dim)]) * step
        trial = np.clip(x[None, :] + moves, 0.0, 1.0)
        costs = mean_costs(trial.T)
        best_move = int(np.argmin(costs))
        if costs[best_move] < fx:
            x, fx = trial[best_move], float(costs[best_move])
        else:
            step /= 2
    return x, fx


def _default_projector() -> Projector:
    from moca.safety import project_batch

    return project_batch


def tune_threshold(
    regime: Regime | RegimeSchedule | str,
    params: Params = DEFAULT_PARAMS,
    train_seeds: int | Sequence[int] = 16,
    budget: int = 1200,
    seed: int = 0,
    project: Projector | None = None,
    dtype: torch.dtype = torch.float32,
    popsize: int = 8,
    global_share: float = 0.7,
) -> ThresholdPolicy:
    """Tune the six thresholds for ``regime`` on training scenarios.

    ``train_seeds``: a count (that many scenarios of the training stream,
    ``moca.scenario.draw_training_scenarios``) or explicit integer seeds (keep them
    disjoint from test seeds). ``budget``: the number of candidate rules simulated (each on
    every training scenario; at least 96, two generations of the search:
    :func:`search_unit_box`). ``project``: the safety layer (default
    ``moca.safety.project_batch``, run without gradients). The report of the run is in
    ``policy.tuning``.
    """
    started = time.perf_counter()
    schedule = _schedule(regime)
    scenarios = _training_scenarios(schedule, params, train_seeds)
    project = project or _default_projector()
    bounds = threshold_bounds(params)
    low, span = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
    base = ScenarioBatch.from_scenarios(scenarios, dtype)
    simulator = Simulator(params, dtype)
    n_scen = base.size
    evaluated = 0

    def mean_costs(unit: np.ndarray) -> np.ndarray:
        """Mean training cost of each candidate; ``unit`` is ``[6, S]`` in the unit box."""
        nonlocal evaluated
        candidates = low[:, None] + span[:, None] * unit ** SEARCH_POWER[:, None]  # [6, S]
        n_cand = candidates.shape[1]
        evaluated += n_cand
        rows = torch.as_tensor(np.repeat(candidates.T, n_scen, axis=0))  # candidate-major rows
        batch = ScenarioBatch(params, base.demand.repeat(n_cand, 1), base.return_frac.repeat(n_cand, 1),
                              base.regime.repeat(n_cand, 1, 1))
        with torch.no_grad():
            out = rollout(batch, ThresholdPolicy(rows, params), project, simulator)
        return out.total_cost.to(torch.float64).reshape(n_cand, n_scen).mean(-1).numpy()

    x, fx = search_unit_box(mean_costs, len(THRESHOLD_NAMES), budget, lambda: evaluated, seed, popsize, global_share)
    policy = ThresholdPolicy(low + span * x ** SEARCH_POWER, params)
    policy.tuning = TuningReport(train_cost=fx, candidates=evaluated,
                                 seconds=time.perf_counter() - started, thresholds=policy.as_dict())
    return policy
