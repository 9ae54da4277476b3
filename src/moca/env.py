"""CLSC-1 as a Gymnasium environment: ``moca/CircularSupplyChain-v0``.

One episode is one scenario (``T`` periods). Each ``step`` is one period of the spec's
order of events: the agent has seen the post-arrival state (event 2), its action goes
through the safety layer's deployment path (``moca.safety.project``) and is executed
(events 3-6), then the next period's arrivals happen (event 1) and the agent observes.

Why the step is written here in plain Python floats rather than by calling
``moca.sim.Simulator`` with batch 1: a batch-1 torch step costs tens of microseconds of
dispatch overhead, far above the period's actual arithmetic, and the environment's target
is >= 30k steps/s including the projection. The equations below are the simulator's,
written in the same order, and ``tests/test_env.py`` checks on random action sequences
that both give the same states (bit for bit) and costs (to round-off) in float64.

Spaces
------
*Action*: ``Box(0, 1, (6,), float32)`` in the spec's capacity-normalised coordinates
``z_i = a_i / S_i`` with ``S = (K_o, m K_p, m K_p, K_d, K_f, K_w)`` and action order
``(o, u_v, u_r, g, f, w)``. Every feasible action lies in ``[0, 1]^6`` (rows 1, 3, 4),
so the box loses nothing. The raw action ``z * S`` (kg, kg, kg, cores, cores, cores) is
projected onto the feasible polytope; any finite ``z`` up to ±1e12 is accepted (it is
projected), a non-finite or larger one is an error (float64 cannot project a point that far).

*Observation*: ``Box(float32)``, see :data:`OBSERVATION_LAYOUT` / :meth:`observation_names`;
material (kg) is divided by ``m K_p``, products and cores (units) by ``K_p``, the carbon
tax by 1000 EUR/t, the landfill tax by 100 EUR/core. The emission cap is encoded as
``min(cap / E_full, 1)`` where ``E_full`` is the emission of a period at full capacity:
a cap at or above ``E_full`` can never bind, so 1 means "no cap in effect" and smaller
means tighter.

*Reward*: ``-cost / cost_scale`` with ``cost_scale`` = 10 000 EUR by default (a period
costs roughly that much), so rewards are of order -1. The episode *terminates* after
period ``T - 1`` (the horizon is part of the problem; ``t / T`` is observed).

*Info* of a step: ``cost`` (EUR) and ``terms`` (EUR per cost term, ``moca.sim.COST_TERMS``),
``executed`` and ``raw`` actions in units ``[6]``, ``violations`` (rows 1-8 broken by the
executed action, by the spec's definition; always 0), ``regime`` (the row in force:
r, tau, cap (inf = none), lambda, kappa), ``demand``, ``sales``, ``production`` (units)
and ``emissions`` (kg CO2, row 7's left-hand side).

:func:`make_vector_env` wraps ``n`` copies in Gymnasium's ``SyncVectorEnv``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from moca import safety
from moca.limits import is_whole
from moca.regime import REGIME_FIELDS, Regime, RegimeSchedule, load_schedule
from moca.scenario import DEFAULT_PARAMS, Params, Scenario, ScenarioError, as_params, check_schedule1, draw_scenario
from moca.sim import ACTION_NAMES, COST_TERMS, R_CAP, R_LANDFILL, R_MANDATE, R_RECOVERY, R_TAX

ENV_ID = "moca/CircularSupplyChain-v0"

#: The observation's blocks, in order (names of single entries: ``observation_names()``).
OBSERVATION_LAYOUT: tuple[str, ...] = (
    "stocks V, M, P, C, B (post-arrival)",
    "pipeline (L_v - 1 slots after arrival, next to arrive first)",
    "sales history (L_r slots, s_{t-L_r} first)",
    "return fraction rho_t",
    "last demand d_{t-1} (init_sales at t = 0)",
    "season sin(2 pi t / 52), cos(2 pi t / 52)",
    "t / T",
    "regime: r, tau / 1000, cap encoding, lambda / 100, kappa",
)

# Upper bound of the non-negative normalised quantities: far above anything reachable with
# sensible parameters (a million periods at full capacity), finite so samplers work.
_HIGH = 1.0e6


class CircularSupplyChainEnv(gym.Env):
    """One CLSC-1 scenario per episode under a regime or regime schedule.

    Args:
        regime: a :class:`Regime`, a :class:`RegimeSchedule`, a name (``"T1"``,
            ``"eu-ets-2025"``), a regime/schedule file, or a plain object of the regime
            fields (a list of them with ``start``: a schedule). ``None`` with a fixed
            ``scenario`` keeps that scenario's schedule; ``None`` otherwise = unregulated.
        params: model parameters, a :class:`Params` or an object of the keys to change
            (default: the spec's); must equal the fixed scenario's.
        scenario: a fixed scenario used in every episode (otherwise each ``reset(seed=s)``
            draws ``moca.scenario.draw_scenario(s, ...)``, so env seed ``s`` and scenario
            seed ``s`` are the same draws).
        cost_scale: reward = -cost / cost_scale (EUR).
        check_violations: recount the spec's violations of each executed action after the
            safety layer (``info["violations"]`` otherwise comes from the check the layer
            ends every projection with; both count the rows 1-8 the executed action breaks,
            by the spec's tolerance). A self-test for tests and audits; off by default.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    action_symbols = safety.ACTION_SYMBOLS  # (what the vector form's check names each entry by)

    def __init__(
        self,
        regime: Regime | RegimeSchedule | str | Path | None = None,
        params: Params | dict[str, Any] | None = None,
        scenario: Scenario | None = None,
        cost_scale: float = 1e4,
        check_violations: bool = False,
        render_mode: str | None = None,
    ):
        # The deployment projection on plain floats (moca.safety.project without the
        # per-call input checks: the environment's own values are checked once, here or in step).
        self._project = safety.project_counted
        if scenario is not None and not isinstance(scenario, Scenario):
            hint = " (use moca/CircularSupplyChain2-v0)" if type(scenario).__name__ == "Scenario2" else ""
            raise ScenarioError(f"scenario: expected a CLSC-1 Scenario, got {type(scenario).__name__}{hint}")
        if params is not None:  # a dict: the fields to change, as gym.make(..., params={...}) from a config file
            params = as_params(params, Params)
        # (compared once a dict is the params it names: a dict never equals a Params)
        if scenario is not None and params is not None and params != scenario.params:
            raise ValueError("params: differ from the fixed scenario's params; pass only one of them")
        self.params = scenario.params if scenario is not None else (params or DEFAULT_PARAMS)
        self.schedule = load_schedule(regime) if regime is not None else None
        if self.schedule is not None:  # here, not at the first reset (a vector env is built by then)
            check_schedule1(self.schedule)
        if scenario is not None and self.schedule is not None:
            scenario = Scenario(self.params, self.schedule, scenario.demand, scenario.return_frac)
        self.fixed_scenario = scenario
        warn_if_beyond_horizon(self.schedule, scenario.horizon if scenario is not None else self.params.horizon)
        if isinstance(cost_scale, bool) or not isinstance(cost_scale, (int, float, np.number)) or \
                not (cost_scale > 0 and math.isfinite(cost_scale)):
            raise ValueError(f"cost_scale={cost_scale!r} must be a finite number > 0")
        self.cost_scale = float(cost_scale)
        self.check_violations = check_violations
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            # As Gymnasium does for a mode an env lacks: warn, do not refuse to build.
            gym.logger.warn(f"render_mode={render_mode!r} is not supported ({self.metadata['render_modes']}); "
                            "render() will return None")
        self.render_mode = render_mode

        p = self.params
        self.scale = np.asarray(p.action_scale, dtype=np.float64)  # S (kg, kg, kg, cores x3)
        self._scale = self.scale.tolist()
        self._layout = safety.layout_of(p)
        self._kg = p.mass * p.cap_produce  # normaliser of material (kg)
        self._units = float(p.cap_produce)  # normaliser of products and cores (units)
        self._full_emissions = (p.emis_virgin * p.cap_order + p.emis_produce * p.cap_produce
                                + p.emis_recycle * p.yield_disassembly * p.mass * p.cap_disassemble)
        # Plain-float constants of the step, each computed with the same rounding as moca.sim.
        self._k = _Constants(
            horizon=p.horizon, mass=p.mass, in_transit=p.lead_virgin - 1, kg=self._kg, units=self._units,
            yield_refurbish=p.yield_refurbish, recycled_per_core=p.yield_disassembly * p.mass,
            c_order=p.cost_virgin, c_use=p.cost_produce / p.mass, c_disassemble=p.cost_disassemble,
            c_refurbish=p.cost_refurbish, c_dispose=p.cost_dispose, h_virgin=p.hold_virgin,
            h_recycled=p.hold_recycled, h_product=p.hold_product, h_core=p.hold_core, b=p.backlog_cost,
            emis_virgin=p.emis_virgin, emis_per_kg_input=p.emis_produce / p.mass,
            emis_per_core=p.emis_recycle * p.yield_disassembly * p.mass,
        )

        n_obs = 5 + (p.lead_virgin - 1) + p.lag_return + 1 + 1 + 2 + 1 + len(REGIME_FIELDS)
        low = np.zeros(n_obs, dtype=np.float32)
        high = np.full(n_obs, _HIGH, dtype=np.float32)
        season = 5 + (p.lead_virgin - 1) + p.lag_return + 2
        low[season:season + 2] = -1.0
        high[season:season + 2] = 1.0
        high[-len(REGIME_FIELDS) - 1:] = 1.0  # t/T and the regime row are in [0, 1] ...
        high[-len(REGIME_FIELDS) + R_TAX] = 2.0  # ... except tau/1000 (tau <= 2000 EUR/t)
        high[season - 2] = 1.0  # rho_t
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(0.0, 1.0, shape=(6,), dtype=np.float32)

        # (sin(2 pi t / 52), cos(2 pi t / 52), t / T) for t = 0 .. T
        self._clock = [(math.sin(2.0 * math.pi * t / 52.0), math.cos(2.0 * math.pi * t / 52.0), t / p.horizon)
                       for t in range(p.horizon + 1)]
        self.scenario: Scenario | None = None
        self.t = 0

    # --- episode ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. ``options={"scenario": Scenario}`` runs that scenario once, under
        its own regime schedule (the env's ``regime`` applies to the scenarios it draws and
        to a fixed ``scenario`` given at construction)."""
        super().reset(seed=seed)
        scenario, scenario_seed = episode_scenario(
            self, seed, options, Scenario,
            lambda s: draw_scenario(s, self.schedule or RegimeSchedule.constant(Regime()), self.params))
        self.scenario = scenario
        self._demand = scenario.demand.tolist()
        self._return_frac = scenario.return_frac.tolist()
        self._regime = scenario.regime_table()  # [T, 5]
        self._taxes = [(float(row[R_TAX]), float(row[R_LANDFILL])) for row in self._regime]
        # (r, cap, kappa) per period: what the hard constraints read.
        self._regime_rows = [(float(row[R_MANDATE]), float(row[R_CAP]), float(row[R_RECOVERY])) for row in self._regime]
        full = self._full_emissions
        # The observation's entries that do not depend on the agent, per period t = 0 .. T (after
        # the last period: no return fraction, the last regime): rho_t, d_{t-1}, the clock,
        # the regime (see the module docstring).
        horizon, units = self._k.horizon, self._units
        self._exogenous = []
        for t in range(horizon + 1):
            row = self._regime[min(t, horizon - 1)]
            entries = [self._return_frac[t] if t < horizon else 0.0,
                       (self._demand[t - 1] if t > 0 else float(self.params.init_sales)) / units,
                       *self._clock[t], float(row[R_MANDATE]), float(row[R_TAX]) / 1000.0,
                       1.0 if full <= 0 else min(float(row[R_CAP]) / full, 1.0),
                       float(row[R_LANDFILL]) / 100.0, float(row[R_RECOVERY])]
            self._exogenous.append([min(x, _HIGH) for x in entries])
        p = self.params
        self.virgin, self.recycled, self.product = float(p.init_virgin), float(p.init_recycled), float(p.init_product)
        self.cores, self.backlog = float(p.init_core), float(p.init_backlog)
        self.pipeline = [float(p.init_pipeline)] * p.lead_virgin
        self.sales_history = [float(p.init_sales)] * p.lag_return
        self.t = 0
        self._arrive()
        return self._observation(), {"t": 0, "regime": self._regime[0].copy(), "scenario_seed": scenario_seed}

    def _arrive(self) -> None:
        """Event 1: the order placed at t - L_v arrives; cores of s_{t-L_r} return."""
        self.virgin = self.virgin + self.pipeline.pop(0)
        self.cores = self.cores + self._return_frac[self.t] * self.sales_history[0]

    def step(self, action):
        if self.scenario is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self._k.horizon:
            raise RuntimeError("the episode has ended; call reset()")
        z = safety.action_values(action, "action", largest=safety.LARGEST_ACTION)  # a ValueError naming shape, NaN/inf
        t = self.t
        # (unrolled: a list comprehension costs ~0.5 us more on Python 3.11, on every step)
        z0, z1, z2, z3, z4, z5 = z
        s0, s1, s2, s3, s4, s5 = self._scale
        raw = [z0 * s0, z1 * s1, z2 * s2, z3 * s3, z4 * s4, z5 * s5]
        regime = self._regime_rows[t]
        # Post-arrival stocks; below zero only by round-off (-1e-13), which the rows read as 0.
        virgin, recycled, cores = self.virgin, self.recycled, self.cores
        stocks = (virgin if virgin > 0.0 else 0.0, recycled if recycled > 0.0 else 0.0, cores if cores > 0.0 else 0.0)
        executed, violations = self._project(raw, *stocks, regime, self._layout)
        if self.check_violations:  # an independent recount of the spec's rows
            violations = 8 - sum(safety.rows_kept(executed, *stocks, regime, self._layout))

        # Events 3-6, the same equations in the same order as moca.sim.Simulator.execute.
        k = self._k
        o, u_v, u_r, g, f, w = executed
        q = (u_v + u_r) / k.mass
        virgin = virgin - u_v
        recycled = recycled - u_r
        cores = cores - (g + f + w)
        demand = self._demand[t]
        wanted = self.backlog + demand
        product = self.product
        sales = product if product < wanted else wanted
        product = product - sales + q + k.yield_refurbish * f
        backlog = wanted - sales
        recycled = recycled + k.recycled_per_core * g
        self.pipeline.append(o)
        self.sales_history.append(sales)
        del self.sales_history[0]
        self.virgin, self.recycled, self.product, self.cores, self.backlog = virgin, recycled, product, cores, backlog

        tau, lam = self._taxes[t]
        terms = {
            "virgin": o * k.c_order, "carbon": tau * k.emis_virgin / 1000.0 * o, "produce": u_v * k.c_use + u_r * k.c_use,
            "disassemble": g * k.c_disassemble, "refurbish": f * k.c_refurbish, "dispose": w * k.c_dispose,
            "landfill_tax": lam * w, "hold_virgin": virgin * k.h_virgin, "hold_recycled": recycled * k.h_recycled,
            "hold_product": product * k.h_product, "hold_core": cores * k.h_core, "backlog": backlog * k.b,
        }
        cost = sum(terms.values())
        info = {
            "t": t, "cost": cost, "terms": terms, "executed": np.array(executed), "raw": np.array(raw),
            "violations": violations, "regime": self._regime[t].copy(), "demand": demand, "sales": sales,
            "production": q,
            "emissions": k.emis_virgin * o + k.emis_per_kg_input * (u_v + u_r) + k.emis_per_core * g,
        }

        self.t = t = t + 1
        terminated = t >= k.horizon
        if not terminated:
            self._arrive()
        return self._observation(), -cost / self.cost_scale, terminated, False, info

    # --- observation --------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        k = self._k
        kg, units = k.kg, k.units
        values = [self.virgin / kg, self.recycled / kg, self.product / units, self.cores / units, self.backlog / units]
        # After the last period no arrival happens; show the L_v - 1 orders still in transit.
        pipeline = self.pipeline
        for x in pipeline[len(pipeline) - k.in_transit:]:
            values.append(x / kg)
        for x in self.sales_history:
            values.append(x / units)
        # Stocks are >= 0 up to the projection's round-off (-1e-13), which the box reads as 0;
        # above _HIGH only with extreme params. (A test first: the clamp is rarely needed.)
        if min(values) < 0.0 or max(values) > _HIGH:
            values = [0.0 if x < 0.0 else (_HIGH if x > _HIGH else x) for x in values]
        values += self._exogenous[self.t]
        return np.array(values, dtype=np.float32)

    def observation_names(self) -> list[str]:
        return observation_names(self.params)

    def state_units(self) -> dict[str, float]:
        """The current (post-arrival) stocks in units: V, M (kg), P, C, B (units)."""
        return {"V": self.virgin, "M": self.recycled, "P": self.product, "C": self.cores, "B": self.backlog}

    def render(self):
        if self.scenario is None:  # before the first reset there is no state to draw
            return None
        if self.render_mode == "rgb_array":
            s = self.state_units()
            return render_bars([s["V"] / self._kg, s["M"] / self._kg, s["P"] / self._units, s["C"] / self._units,
                                s["B"] / self._units])
        if self.render_mode != "ansi":
            return None
        s = self.state_units()
        return (f"t={self.t:3d} V={s['V']:9.1f} M={s['M']:8.1f} P={s['P']:8.1f} "
                f"C={s['C']:7.1f} B={s['B']:7.1f} pipeline={[round(x, 1) for x in self.pipeline]}")


def warn_if_beyond_horizon(schedule: RegimeSchedule | None, horizon: int) -> None:
    """Schedule entries that start at or after ``horizon`` never apply in the episode: say so
    (as Gymnasium warns, not refuses: the schedule may serve a longer chain)."""
    late = schedule.starts_beyond(horizon) if schedule is not None else []
    if late:
        gym.logger.warn(f"regime schedule: entries starting at periods {late} never apply in an episode of "
                        f"{horizon} periods")


def episode_scenario(env: gym.Env, seed: int | None, options: dict[str, Any] | None, kind: type,
                     draw: Any) -> tuple[Any, int | None]:
    """The scenario of the episode ``env.reset`` starts, and the seed it was drawn from:
    ``options["scenario"]`` (of type ``kind``, the env's params), else the env's fixed
    scenario, else ``draw(seed)``; without a seed, one from the env's generator."""
    options = {} if options is None else options
    if not isinstance(options, dict):  # (a text was read key by key: "unknown key(s) a, b, c")
        raise ValueError(f"options: expected a dict such as {{'scenario': ...}} or None, got {type(options).__name__}")
    unknown = sorted(map(str, set(options) - {"scenario"}))
    if unknown:  # (a misspelt key was ignored without a word: the episode ran another scenario)
        raise ValueError(f"options: unknown key(s) {', '.join(unknown)} (this env reads 'scenario')")
    if "scenario" in options:
        scenario = options["scenario"]
        if not isinstance(scenario, kind) or scenario.params != env.params:
            raise ValueError(f"options['scenario']: expected a {kind.__name__} with this env's params")
        return scenario, None
    if env.fixed_scenario is not None:
        return env.fixed_scenario, None
    # An explicit seed names the scenario; otherwise draw one from the env's generator.
    scenario_seed = seed if seed is not None else int(env.np_random.integers(2**62))
    return draw(scenario_seed), scenario_seed


def render_bars(values: list[float], height: int = 64, bar: int = 16) -> np.ndarray:
    """An RGB image ``[height, len(values) * bar, 3]`` (uint8) of one bar per value, full
    height at 1 (values are capacity-normalised stocks; clipped to [0, 1]). Drawn with
    numpy because a render call in a training loop should not start matplotlib."""
    image = np.full((height, len(values) * bar, 3), 255, dtype=np.uint8)
    for i, value in enumerate(values):
        filled = int(round(min(max(float(value), 0.0), 1.0) * height))
        if filled:
            image[height - filled:, i * bar + 2:(i + 1) * bar - 2] = (40, 110, 180)
    return image


@dataclass(frozen=True, slots=True)
class _Constants:
    """Model constants as plain floats (attribute access on them is cheap)."""

    horizon: int
    mass: float
    in_transit: int
    kg: float
    units: float
    yield_refurbish: float
    recycled_per_core: float
    c_order: float
    c_use: float
    c_disassemble: float
    c_refurbish: float
    c_dispose: float
    h_virgin: float
    h_recycled: float
    h_product: float
    h_core: float
    b: float
    emis_virgin: float
    emis_per_kg_input: float
    emis_per_core: float


def full_capacity_emissions(params: Params) -> float:
    """kg CO2 of a period at full capacity: the scale of the observation's cap encoding."""
    p = params
    return (p.emis_virgin * p.cap_order + p.emis_produce * p.cap_produce
            + p.emis_recycle * p.yield_disassembly * p.mass * p.cap_disassemble)


def observation_names(params: Params = DEFAULT_PARAMS) -> list[str]:
    """The name of each entry of this env's observation, in order."""
    return list(_observation_layout(params.lead_virgin - 1, params.lag_return)[0])


#: The largest value of the observation's bounded entries (float32, as observed).
_HIGHEST = {"rho": 1.0, "kappa": 1.0, "r": 0.95, "t_frac": 1.0}


@lru_cache(maxsize=64)
def _observation_layout(n_pipe: int, n_sales: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Each observation entry's name and range (float32 ``low``, ``high``) for a chain of these
    queue lengths: >= 0 but the season, at most :data:`_HIGHEST` (float32 rounding let through)."""
    names = ("V", "M", "P", "C", "B", *[f"pipeline[{i}]" for i in range(n_pipe)],
             *[f"sales_history[{i}]" for i in range(n_sales)],
             "rho", "last_demand", "season_sin", "season_cos", "t_frac", "r", "tau_k", "cap_code", "lambda_h", "kappa")
    low = np.array([-np.inf if n.startswith("season_") else 0.0 for n in names], dtype=np.float32)
    # (the env clamps the others at _HIGH: above it, 1e6 capacities, is no observation of it)
    high = np.array([np.nextafter(np.float32(_HIGHEST[n]), np.float32(2)) if n in _HIGHEST
                     else np.inf if n.startswith("season_") else _HIGH for n in names], dtype=np.float32)
    low.flags.writeable = high.flags.writeable = False  # (shared by every call: read only)
    return names, low, high


def _observation_array(obs: Any, size: int) -> np.ndarray:
    """``obs`` as the env's float32 vector of ``size`` entries, or a ValueError saying why
    not: a masked array (numpy read it through its mask), booleans, text, or entries that
    are not all real numbers."""
    import torch

    if isinstance(obs, np.ma.MaskedArray):
        raise ValueError("obs: a masked array; give the observation's values (an array of numbers)")
    if isinstance(obs, torch.Tensor):
        obs = obs.detach().cpu().numpy()  # (one with a gradient was torch's "Can't call numpy()" error)
    try:
        given = np.asarray(obs)
    except (TypeError, ValueError):  # (ragged lists)
        given = np.empty(0, dtype=object)
    kind = given.dtype.kind
    if kind not in "fiu":
        raise ValueError(f"obs: expected the env's observation, an array of {size} numbers, got "
                         + ("text" if kind in "US" else "booleans" if kind == "b" else
                            f"a {type(obs).__name__} whose entries are not all real numbers"))
    x = given.astype(np.float32, copy=False).reshape(-1)
    if x.shape != (size,):
        raise ValueError(f"obs: expected {size} numbers for these params, got {x.size}")
    return x


def observation_inputs(obs: Any, params: Params = DEFAULT_PARAMS) -> dict[str, Any]:
    """The named quantities of a period read back from an observation of this env.

    Returns ``t``; ``stocks`` V, M (kg), P, C, B (units) after the period's arrivals;
    ``pipeline`` (kg, next to arrive first); ``sales_history`` (units, oldest first);
    ``regime`` (r, tau EUR/t, cap kg CO2/period with inf = none, lambda EUR/core, kappa);
    ``return_frac``; ``last_demand`` (units, None at t = 0): the arguments of
    :meth:`moca.policy.DeployedPolicy.decide`.

    The observation is float32, so the values carry its rounding; the ones a hard
    constraint reads (V, M, C, the mandate, the recovery target, the cap) are rounded to
    the safe side, so an action feasible for them is feasible for the true state. A cap
    at or above a full-capacity period's emissions (encoded 1) can never bind and reads
    as no cap.
    """
    p = params
    n_pipe, n_sales = p.lead_virgin - 1, p.lag_return
    size = 5 + n_pipe + n_sales + 5 + len(REGIME_FIELDS)
    x = _observation_array(obs, size)
    names, low, high = _observation_layout(n_pipe, n_sales)
    if not np.isfinite(x).all():
        k = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"obs: entry {k} ({names[k]}) is {float(x[k])}; it must be a finite number")
    # The env observes every quantity but the season as a number >= 0, the shares as at most
    # 1 and the mandate at most 0.95: anything else is no state of this chain, and a negative
    # stock or a return share of 5 gave an ordinary-looking action without a word.
    outside = (x < low) | (x > high)  # (one vector test on the decision path, not a loop over the names)
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        where = "must be >= 0" if x[k] < low[k] else f"must be <= {_HIGHEST.get(names[k], _HIGH):g}"
        raise ValueError(f"obs: entry {k} ({names[k]}) is {float(x[k]):g}; it {where} (observation_names() "
                         "gives each entry's name)")
    down = np.nextafter(x, np.float32(0)).astype(np.float64)  # float32 rounding never overstates these
    up = np.nextafter(x, np.float32(np.inf)).astype(np.float64)
    x64 = x.astype(np.float64)
    kg, units = p.mass * p.cap_produce, float(p.cap_produce)
    stocks = [max(down[0], 0.0) * kg, max(down[1], 0.0) * kg, x64[2] * units, max(down[3], 0.0) * units,
              x64[4] * units]
    i = 5
    pipeline = x64[i:i + n_pipe] * kg
    i += n_pipe
    sales_history = x64[i:i + n_sales] * units
    i += n_sales
    return_frac, last_demand, t_frac = float(x64[i]), float(x64[i + 1]) * units, float(x64[i + 4])
    i += 5
    t = int(round(t_frac * p.horizon))
    # A terminal observation (t = T) has no decision to take, and a clock off the horizon's
    # grid is an observation of an env with other params: either would read the wrong period.
    if not 0 <= t < p.horizon:
        raise ValueError(f"obs: its clock (t_frac={t_frac:g}) reads period {t}, outside 0..{p.horizon - 1} "
                         "(an observation at the episode's end has no decision to take)")
    if abs(t_frac * p.horizon - t) > 1e-3:
        raise ValueError(f"obs: its clock (t_frac={t_frac:g}) is no period of horizon {p.horizon} "
                         "(an observation of an env with other params?)")
    cap = math.inf if x[i + 2] >= 1.0 else max(down[i + 2], 0.0) * full_capacity_emissions(p)
    regime = np.array([min(up[i], 0.95), x64[i + 1] * 1000.0, cap, x64[i + 3] * 100.0, min(up[i + 4], 1.0)])
    regime[[0, 4]] = np.where(x[[i, i + 4]] == 0, 0.0, regime[[0, 4]])  # no rule stays no rule
    try:  # (a cap coded 0 was a ZeroDivisionError in the projection)
        Regime.from_row(regime)
    except ValueError as err:
        raise ValueError(f"obs: its regime entries (r, tau_k, cap_code, lambda_h, kappa) read as no valid regime: "
                         f"{err}") from None
    return {"t": t, "stocks": np.array(stocks), "pipeline": pipeline, "sales_history": sales_history,
            "regime": regime, "return_frac": return_frac, "last_demand": None if t == 0 else last_demand}



class _CheckedSyncVectorEnv(gym.vector.SyncVectorEnv):
    """Gymnasium's ``SyncVectorEnv`` with the whole batch of actions checked before any
    copy steps. It steps copy by copy, so a bad row (NaN in copy 2) was refused after the
    copies before it had moved on, and a retry left them a period ahead of the others for
    the rest of the episode without a word."""

    def step(self, actions):
        shape = (self.num_envs, *self.single_action_space.shape)
        if not (isinstance(actions, np.ndarray) and actions.shape == shape and actions.dtype.kind == "f"
                and np.isfinite(actions).all() and np.abs(actions).max() <= safety.LARGEST_ACTION):
            # (else every row passes: one check for the batch; here, name the row)
            rows = list(gym.vector.utils.iterate(self.action_space, actions))
            if len(rows) != self.num_envs:  # (zip(strict=True) found it after the copies before had stepped)
                raise safety.SafetyError(f"actions: expected one row per copy, {self.num_envs}, got {len(rows)}")
            resetting = self.autoreset_mode == gym.vector.AutoresetMode.NEXT_STEP
            symbols = self.envs[0].unwrapped.action_symbols  # (either world's)
            for i, row in enumerate(rows):
                if not (resetting and self._autoreset_envs[i]):  # (its action is not used: it resets)
                    safety.action_values(row, f"actions[{i}]", symbols, largest=safety.LARGEST_ACTION)
        return super().step(actions)


def make_vector_env(
    n: int,
    regime: Regime | RegimeSchedule | str | Path | None = None,
    params: Params | None = None,
    cost_scale: float = 1e4,
    check_violations: bool = False,
    autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.NEXT_STEP,
) -> gym.vector.SyncVectorEnv:
    """``n`` copies in a :class:`gymnasium.vector.SyncVectorEnv`.

    ``reset(seed=s)`` gives copy ``i`` the scenario of seed ``s + i``. For large batched
    training use ``moca.sim.rollout`` (batched torch) instead; this form is for tools that
    speak the Gymnasium vector API.
    """
    return checked_vector_env(CircularSupplyChainEnv, n, autoreset_mode, regime=regime, params=params,
                              cost_scale=cost_scale, check_violations=check_violations)


def checked_vector_env(env_class: type[gym.Env], n: int = 1,
                       autoreset_mode: gym.vector.AutoresetMode = gym.vector.AutoresetMode.NEXT_STEP,
                       **env_kwargs: Any) -> gym.vector.SyncVectorEnv:
    """``n`` copies of ``env_class(**env_kwargs)`` whose batch of actions is checked
    before any copy steps (either world's env: :func:`make_vector_env` and
    :func:`moca.env2.make_vector_env`). ``gym.make_vec`` keeps Gymnasium's own
    ``SyncVectorEnv``, which steps the copies before a bad row: registered as the default,
    this form refused ``make_vec``'s ``wrappers=``, ``vector_kwargs=`` and
    ``max_episode_steps=``, which users of Gymnasium's class pass."""
    if not is_whole(n) or n < 1:
        raise ValueError(f"n={n!r}: the number of environments must be an integer >= 1")
    return _CheckedSyncVectorEnv([lambda: env_class(**env_kwargs) for _ in range(int(n))],
                                 autoreset_mode=autoreset_mode)


def register() -> None:
    """Register ``moca/CircularSupplyChain-v0`` with Gymnasium (idempotent)."""
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="moca.env:CircularSupplyChainEnv")


register()

__all__ = ["ACTION_NAMES", "COST_TERMS", "ENV_ID", "CircularSupplyChainEnv", "checked_vector_env",
           "full_capacity_emissions", "make_vector_env", "observation_inputs", "register"]
