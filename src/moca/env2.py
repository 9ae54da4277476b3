"""CLSC-2 as a Gymnasium environment: ``moca/CircularSupplyChain2-v0``.

One episode is one CLSC-2 scenario (``T`` periods). Each ``step`` is one period of
docs/MODEL-2.md's order of events: the agent has seen the post-arrival state (event 2);
its action goes through the safety layer's deployment projection
(:func:`moca.projection.project2_counted`) and is executed by :class:`moca.sim2.Simulator2`
(batch 1, float64: the environment and the batched simulator are one implementation);
then the next period's arrivals happen and the agent observes.

Spaces
------
*Action*: ``Box(0, 1, (9,), float32)`` in capacity-normalised coordinates ``z = a / S``,
``S = (K_o, K_m, m K_p, m K_p, K_f, K_d, K_d, K_w, K_w)``, action order
``(o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B)``. Every feasible action lies in the box.

*Observation*: ``Box(float32)``, see :meth:`CircularSupplyChain2Env.observation_names`.
Only what a planner knows at event 2: the post-arrival stocks, the orders in transit,
the sales whose cores will return, the window counters ``U_v``, ``U_r`` and the periods
left in the window, this period's supplier status, market availability, return fraction
and grade shares, the regime in force and the next announced change, and the last 52
periods of demand (history before t = 0 included). Never the scenario's drawing
parameters, never ``d_t`` or any later demand. Material (kg) is divided by ``m K_p``,
products and cores by ``K_p``.

*Reward*: ``-cost / cost_scale`` (EUR; 10 000 by default). The episode terminates after
period ``T - 1``.

*Info* of a step: ``raw`` and ``executed`` actions (units, [9]), ``correction`` (the
capacity-normalised distance the safety layer moved the action), ``cost`` (EUR) and
``terms`` (EUR per term, ``moca.clsc2.COST_TERMS``), ``violations`` (rows 1-8 and the
window settlement broken by the executed action; 0 by construction), ``demand``,
``sales``, ``lost``, ``scrap``, ``emissions`` (kg CO2) and ``regime`` (the row in force).
``violations`` comes from the check the safety layer ends each projection with
(:func:`moca.projection.project2_counted`); ``check_violations=True`` recounts the rows
independently after the layer (:func:`moca.projection.violations2`), an audit for tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from moca import clsc2
from moca.env import checked_vector_env, episode_scenario, render_bars, warn_if_beyond_horizon
from moca.projection import project2_counted, violations2
from moca.regime import MAX_WINDOW, Regime, RegimeSchedule, load_schedule
from moca.safety import LARGEST_ACTION, action_values
from moca.scenario import DEFAULT_PARAMS_2, HISTORY, Params2, Scenario2, ScenarioError, as_params, draw_scenario2
from moca.sim2 import ScenarioBatch2, Simulator2

ENV_ID_2 = "moca/CircularSupplyChain2-v0"

_HIGH = 1.0e6  # finite upper bound of the non-negative normalised quantities


class CircularSupplyChain2Env(gym.Env):
    """One CLSC-2 scenario per episode under a regime or regime schedule.

    Args:
        regime: a :class:`Regime`, :class:`RegimeSchedule`, a name (``"T1"`` is CLSC-2's T1,
            W = 52) or a regime/schedule file. ``None`` with a fixed ``scenario`` keeps that
            scenario's schedule; ``None`` otherwise = CLSC-2's T1.
        params: model parameters (default: the documented ones); must equal the fixed scenario's.
        scenario: a fixed scenario used in every episode; otherwise ``reset(seed=s)`` draws
            ``draw_scenario2(s, ...)`` (env seed ``s`` = scenario seed ``s``).
        cost_scale: reward = -cost / cost_scale (EUR).
        render_mode: ``"ansi"`` (a text line), ``"rgb_array"`` (bars of the stocks) or None.
        check_violations: recount the executed action's violations (rows 1-8 and the window
            settlement) independently of the safety layer's own check each step.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    action_symbols = clsc2.ACTION_SYMBOLS

    def __init__(self, regime: Regime | RegimeSchedule | str | Path | dict | list | None = None,
                 params: Params2 | dict[str, Any] | None = None,
                 scenario: Scenario2 | None = None, cost_scale: float = 1e4, render_mode: str | None = None,
                 check_violations: bool = False):
        if scenario is not None and not isinstance(scenario, Scenario2):
            hint = " (use moca/CircularSupplyChain-v0)" if type(scenario).__name__ == "Scenario" else ""
            raise ScenarioError(f"scenario: expected a CLSC-2 Scenario2, got {type(scenario).__name__}{hint}")
        if params is not None:  # a dict: the fields to change, as gym.make(..., params={...}) from a config file
            params = as_params(params, Params2)
        # (compared once a dict is the params it names: a dict never equals a Params)
        if scenario is not None and params is not None and params != scenario.params:
            raise ValueError("params: differ from the fixed scenario's params; pass only one of them")
        self.params = scenario.params if scenario is not None else (params or DEFAULT_PARAMS_2)
        if regime is None:
            self.schedule = None if scenario is not None else load_schedule("T1", model="CLSC-2")
        else:
            self.schedule = load_schedule(regime, model="CLSC-2")
        if scenario is not None and self.schedule is not None:
            scenario = Scenario2(**{**scenario.__dict__, "schedule": self.schedule})
        self.fixed_scenario = scenario
        warn_if_beyond_horizon(self.schedule, scenario.horizon if scenario is not None else self.params.horizon)
        if isinstance(cost_scale, bool) or not isinstance(cost_scale, (int, float, np.number)) or \
                not (cost_scale > 0 and math.isfinite(cost_scale)):
            raise ValueError(f"cost_scale={cost_scale!r} must be a finite number > 0")
        self.cost_scale = float(cost_scale)
        self.check_violations = check_violations
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            gym.logger.warn(f"render_mode={render_mode!r} is not supported ({self.metadata['render_modes']}); "
                            "render() will return None")
        self.render_mode = render_mode

        p = self.params
        self.scale = clsc2.action_scale(p)
        self._kg = p.mass * p.cap_produce
        self._units = float(p.cap_produce)
        self._full_emissions = float(clsc2.emission_coefficients(p) @ self.scale)
        self._sim = Simulator2(p, dtype=torch.float64)
        n_obs = len(self.observation_names())
        self.observation_space = spaces.Box(0.0, _HIGH, shape=(n_obs,), dtype=np.float32)
        self.action_space = spaces.Box(0.0, 1.0, shape=(9,), dtype=np.float32)
        self.scenario: Scenario2 | None = None
        self.t = 0

    # --- episode ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. ``options={"scenario": Scenario2}`` runs that scenario once, under
        its own regime schedule (the env's ``regime`` applies to the scenarios it draws and
        to a fixed ``scenario`` given at construction)."""
        super().reset(seed=seed)
        scenario, scenario_seed = episode_scenario(self, seed, options, Scenario2,
                                                   lambda s: draw_scenario2(s, self.schedule, self.params))
        self.scenario = scenario
        self._batch = ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64)
        self._regime = scenario.regime_table()
        self._exogenous = self._exogenous_entries(scenario)
        self._window_kg = [self._kg * w for w in scenario.window_table().tolist()]  # U_v, U_r normaliser
        self.t = 0
        self._state = self._sim.initial_state(self._batch.demand_history)
        self._arrive()
        return self._observation(), {"t": 0, "regime": self._regime[0].copy(), "scenario_seed": scenario_seed}

    def _arrive(self) -> None:
        t, b = self.t, self._batch
        self._state, arrival = self._sim.arrive(self._state, b.return_frac[:, t], b.grades[:, t], b.window_start[:, t])
        self._scrap = arrival.scrap
        self._inputs = self._sim.row_inputs(self._state, b, t)

    def step(self, action):
        if self.scenario is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self.params.horizon:
            raise RuntimeError("the episode has ended; call reset()")
        # CLSC-1's check (a SafetyError naming shape or NaN/inf), so one except clause serves both worlds.
        z = np.asarray(action_values(action, "action", self.action_symbols, largest=LARGEST_ACTION))
        t, p = self.t, self.params
        raw = z * self.scale
        inputs = {k: float(v[0]) for k, v in self._inputs.items()}
        executed, violations = project2_counted(raw, inputs, self._regime[t], p)
        if self.check_violations:
            violations = violations2(executed, inputs, self._regime[t], p)
        demand = self._batch.demand[:, t]
        regime_t = self._batch.regime[:, t]
        state, result = self._sim.execute(self._state, torch.as_tensor(executed[None]), demand, regime_t, self._scrap)
        self._state = state
        scrap, lost = float(self._scrap[0]), float(result.lost[0])
        stocks = state.stocks[0].numpy()
        terms = {k: float(v) for k, v in clsc2.cost_terms(executed, stocks, lost, scrap, self._regime[t], p).items()}
        cost = float(result.cost[0])
        info = {
            "t": t, "cost": cost, "terms": terms, "raw": raw, "executed": executed,
            "correction": float(np.linalg.norm((executed - raw) / self.scale)), "violations": violations,
            "regime": self._regime[t].copy(), "demand": float(demand[0]), "sales": float(result.sales[0]),
            "lost": lost, "scrap": scrap, "emissions": float(clsc2.emission_coefficients(p) @ executed),
        }
        self.t = t + 1
        terminated = self.t >= p.horizon
        if not terminated:
            self._arrive()
        return self._observation(), -cost / self.cost_scale, terminated, False, info

    # --- observation --------------------------------------------------------------------
    def _regime_code(self, row: np.ndarray, window: int) -> list[float]:
        cap = 1.0 if self._full_emissions <= 0 else min(float(row[clsc2.R_CAP]) / self._full_emissions, 1.0)
        return [float(row[clsc2.R_MANDATE]), float(row[clsc2.R_TAX]) / 1000.0, cap,
                float(row[clsc2.R_LANDFILL]) / 100.0, float(row[clsc2.R_RECOVERY]), window / MAX_WINDOW]

    def _exogenous_entries(self, scenario: Scenario2) -> np.ndarray:
        """``[T + 1, k]`` float32: the observation's entries that no action changes, per
        period t = 0 .. T (after the last period: the last period's, nothing left of the
        window): the window's remaining share, this week's supplier, market, return
        fraction and grades, the regime and the next announced change, the last 52
        demands seen (history included; never d_t), t / T."""
        T, units = scenario.horizon, self._units
        window, left = scenario.window_table(), scenario.periods_left()
        changes = [c for c in scenario.schedule.change_periods() if c < T]  # (a later entry never applies)
        seen = np.concatenate([scenario.demand_history, scenario.demand]) / units
        rows = []
        for t in range(T + 1):
            k = min(t, T - 1)
            upcoming = [c for c in changes if c > t]
            nxt = upcoming[0] if upcoming else k
            rows.append([
                0.0 if t >= T else left[t] / window[k],
                scenario.supply_up[k], scenario.market_avail[k], scenario.return_frac[k], *scenario.grades[k],
                *self._regime_code(self._regime[k], int(window[k])),
                (nxt - t) / T if upcoming else 1.0, *self._regime_code(self._regime[nxt], int(window[nxt])),
                *seen[t:t + HISTORY], t / T,
            ])
        return np.clip(np.array(rows, dtype=np.float32), 0.0, _HIGH)

    def _observation(self) -> np.ndarray:
        p, s = self.params, self._state
        kg, units = self._kg, self._units
        V_, M_, P_, CA_, CB_ = (float(x[0]) for x in s.columns)
        values = [V_ / kg, M_ / kg, P_ / units, CA_ / units, CB_ / units]
        # after the last period no arrival happens: show the L_v - 1 orders still in transit
        values += [float(x[0]) / kg for x in s.pipeline_slots[len(s.pipeline_slots) - (p.lead_virgin - 1):]]
        values += [float(x[0]) / units for x in s.history_slots]
        window = self._window_kg[min(self.t, p.horizon - 1)]
        values += [float(s.used_virgin[0]) / window, float(s.used_recycled[0]) / window, float(self._scrap[0]) / units]
        dynamic = np.clip(np.array(values, dtype=np.float32), 0.0, _HIGH)
        return np.concatenate([dynamic, self._exogenous[self.t]])

    def observation_names(self) -> list[str]:
        p = self.params
        names = list(clsc2.STATE_NAMES)
        names += [f"pipeline[{i}]" for i in range(p.lead_virgin - 1)]
        names += [f"sales_history[{i}]" for i in range(p.lag_return)]
        names += ["used_virgin", "used_recycled", "scrap", "window_left", "supply_up", "market_avail", "return_frac",
                  "grade_a", "grade_b", "grade_scrap"]
        regime = ["r", "tau_k", "cap_code", "lambda_h", "kappa", "window"]
        names += regime + ["next_change"] + [f"next_{n}" for n in regime]
        names += [f"demand[t-{HISTORY - i}]" for i in range(HISTORY)] + ["t_frac"]
        return names

    def state_units(self) -> dict[str, float]:
        """The current (post-arrival) stocks: V, M (kg), P, CA, CB (units)."""
        return dict(zip(clsc2.STATE_NAMES, self._state.stocks[0].tolist()))

    def render(self):
        if self.scenario is None:
            return None
        s = self.state_units()
        if self.render_mode == "ansi":
            return f"t={self.t:3d} " + " ".join(f"{k}={v:9.1f}" for k, v in s.items())
        if self.render_mode == "rgb_array":
            return render_bars([s["V"] / self._kg, s["M"] / self._kg, s["P"] / self._units, s["CA"] / self._units,
                                s["CB"] / self._units])
        return None


def make_vector_env(
    n: int,
    regime: Regime | RegimeSchedule | str | Path | dict | list | None = None,
    params: Params2 | dict[str, Any] | None = None,
    cost_scale: float = 1e4,
    check_violations: bool = False,
    autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.NEXT_STEP,
) -> gym.vector.SyncVectorEnv:
    """``n`` copies in a ``SyncVectorEnv`` whose batch of actions is checked before any copy
    steps (:func:`moca.env.checked_vector_env`; ``reset(seed=s)`` gives copy ``i`` the
    scenario of seed ``s + i``). CLSC-1's is :func:`moca.env.make_vector_env`."""
    return checked_vector_env(CircularSupplyChain2Env, n, autoreset_mode, regime=regime, params=params,
                              cost_scale=cost_scale, check_violations=check_violations)


def register() -> None:
    """Register ``moca/CircularSupplyChain2-v0`` with Gymnasium (idempotent)."""
    if ENV_ID_2 not in gym.registry:
        gym.register(id=ENV_ID_2, entry_point="moca.env2:CircularSupplyChain2Env")


register()

__all__ = ["ENV_ID_2", "CircularSupplyChain2Env", "make_vector_env", "register"]
