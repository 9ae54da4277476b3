"""The CLSC-2 simulator in PyTorch: batched over scenarios, differentiable, seeded.

One period follows docs/MODEL-2.md's order of events: :meth:`Simulator2.arrive` is event
1 (virgin order and market purchase arrive, returns arrive graded, scrap is landfilled at
once, the window counters reset when an accounting window starts); the policy then sees
the post-arrival state (event 2); :meth:`Simulator2.execute` is events 3-6 (the executed
action moves the stocks, sales are ``torch.minimum(P, d)``, demand beyond stock is lost,
yields land at the end of the period, the cost is charged on the end-of-period state).

The coefficients (yields, costs, emissions) are :mod:`moca.clsc2`'s; this module only
applies them, so the simulator, the environment and the oracle cannot disagree on them.
The safety layer is a callable (:data:`Projector2`) so that any projection over the
model's rows (``moca.world.CLSC2_ROWS``) can be plugged in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from moca import clsc2
from moca.clsc2 import CA, CB, OM, UR, UV, M, O, P, V
from moca.scenario import HISTORY, Params2, Scenario2, ScenarioError, as_params, check_batch_dtype, common_params
from moca.sim import check_actions


class State2:
    """Stocks at a point of the period.

    ``columns`` are the five stocks ``V, M`` (kg), ``P, CA, CB`` (units), each ``[B]``
    (``stocks`` stacks them ``[B, 5]``; ``state.V`` etc. name one). The queues are tuples
    of ``[B]`` slots: ``pipeline_slots[0]`` is the virgin order (kg) that arrives next,
    ``history_slots[0]`` is ``s_{t-L_r}``, the sales whose cores return this period.
    ``market_in`` is the recycled material (kg) bought last period; ``used_virgin`` /
    ``used_recycled`` (kg) are the window counters ``U_v`` / ``U_r``. Kept as per-column
    vectors (as CLSC-1's state is) because a period is then a few dozen vector operations
    with no gather or scatter of a ``[B, 5]`` block.
    """

    __slots__ = ("columns", "pipeline_slots", "market_in", "used_virgin", "used_recycled", "history_slots")

    def __init__(self, columns: tuple[Tensor, ...], pipeline_slots: tuple[Tensor, ...], market_in: Tensor,
                 used_virgin: Tensor, used_recycled: Tensor, history_slots: tuple[Tensor, ...]):
        self.columns = tuple(columns)
        self.pipeline_slots = tuple(pipeline_slots)
        self.market_in = market_in
        self.used_virgin = used_virgin
        self.used_recycled = used_recycled
        self.history_slots = tuple(history_slots)

    def __getattr__(self, name: str) -> Tensor:  # V, M, P, CA, CB
        if name in clsc2.STATE_NAMES:
            return self.columns[clsc2.STATE_NAMES.index(name)]
        raise AttributeError(name)

    @property
    def stocks(self) -> Tensor:
        """``[B, 5]`` (V, M, P, CA, CB)."""
        return torch.stack(self.columns, dim=-1)

    @property
    def pipeline(self) -> Tensor:
        """``[B, slots]`` kg in transit, next to arrive first."""
        return _stack(self.pipeline_slots, self.market_in)

    @property
    def sales_history(self) -> Tensor:
        """``[B, L_r]`` units, ``s_{t-L_r}`` first."""
        return _stack(self.history_slots, self.market_in)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "State2":
        return State2(tuple(map(fn, self.columns)), tuple(map(fn, self.pipeline_slots)), fn(self.market_in),
                      fn(self.used_virgin), fn(self.used_recycled), tuple(map(fn, self.history_slots)))

    def detach(self) -> "State2":
        return self._map(Tensor.detach)

    def index(self, i: int | slice) -> "State2":
        return self._map(lambda x: x[i])


def _stack(slots: tuple[Tensor, ...], like: Tensor) -> Tensor:
    return torch.stack(slots, dim=-1) if slots else like.new_zeros(like.shape + (0,))


class ScenarioBatch2:
    """CLSC-2 scenarios sharing one parameter set, as tensors (batch first).

    ``demand``, ``return_frac``, ``supply_up``, ``market_avail`` ``[B, T]``; ``grades``
    ``[B, T, 3]``; ``demand_history`` ``[B, 52]``; ``regime`` ``[B, T, 5]`` (cap absent =
    inf); ``window`` ``[B, T]`` the accounting window ``W`` in force, ``window_start``
    ``[B, T]`` bool and ``periods_left`` ``[B, T]`` (``n_t``).
    """

    def __init__(self, params: Params2, demand: Tensor, return_frac: Tensor, grades: Tensor, supply_up: Tensor,
                 market_avail: Tensor, demand_history: Tensor, regime: Tensor, window: Tensor,
                 window_start: Tensor, periods_left: Tensor):
        self.params = params
        self.demand, self.return_frac, self.grades = demand, return_frac, grades
        self.supply_up, self.market_avail, self.demand_history = supply_up, market_avail, demand_history
        self.regime, self.window, self.window_start, self.periods_left = regime, window, window_start, periods_left

    @classmethod
    def from_scenarios(cls, scenarios: Sequence[Scenario2], dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> "ScenarioBatch2":
        check_batch_dtype(dtype)
        params = common_params(scenarios, Scenario2)
        as_t = lambda a, d=dtype: torch.as_tensor(np.stack(a), dtype=d, device=device)  # noqa: E731
        return cls(
            params, as_t([s.demand for s in scenarios]), as_t([s.return_frac for s in scenarios]),
            as_t([s.grades for s in scenarios]), as_t([s.supply_up for s in scenarios]),
            as_t([s.market_avail for s in scenarios]), as_t([s.demand_history for s in scenarios]),
            as_t([s.regime_table() for s in scenarios]), as_t([s.window_table() for s in scenarios]),
            as_t([s.window_starts() for s in scenarios], torch.bool), as_t([s.periods_left() for s in scenarios]),
        )

    @property
    def size(self) -> int:
        return self.demand.shape[0]

    @property
    def horizon(self) -> int:
        return self.demand.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.demand.dtype


@dataclass
class Arrival:
    """What event 1 of a period brought; each ``[B]``: returned cores (units) and the
    scrap share of them, landfilled at once."""

    returns: Tensor
    scrap: Tensor


@dataclass
class StepResult2:
    """What one executed period produced; each ``[B]`` (``action`` ``[B, 9]``)."""

    cost: Tensor  # EUR
    sales: Tensor  # units
    lost: Tensor  # units of demand not met
    production: Tensor  # units made from material
    action: Tensor  # [B, 9] executed
    state: State2  # end of period


class Simulator2:
    """CLSC-2 dynamics for one parameter set (float32 or float64, any device)."""

    def __init__(self, params: Params2 = Params2(), dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self.params = params = as_params(params, Params2)
        check_batch_dtype(dtype)  # (a dtype of "float64" failed inside torch.full at the first state)
        self.dtype = dtype
        self.device = torch.device(device)
        # The declaration as (target, source, coefficient) triples of its non-zero entries:
        # applied one torch.add(alpha=...) each, which at small widths is far cheaper than
        # a [B, 9] x [9, 5] matrix product.
        effect = clsc2.action_effect(params)
        self._effects = [(i, j, float(effect[i, j])) for i, j in zip(*np.nonzero(effect))]
        # The action cost is affine in the regime: base + tax * per_tax + landfill * per_landfill.
        zero = np.zeros(5)
        unit_tax, unit_landfill = zero.copy(), zero.copy()
        unit_tax[clsc2.R_TAX], unit_landfill[clsc2.R_LANDFILL] = 1.0, 1.0
        base = clsc2.action_cost(params, zero)
        nonzero = lambda c: [(j, float(c[j])) for j in np.flatnonzero(c)]  # noqa: E731
        self._cost_base = nonzero(base)
        self._cost_per_tax = nonzero(clsc2.action_cost(params, unit_tax) - base)
        self._cost_per_landfill = nonzero(clsc2.action_cost(params, unit_landfill) - base)
        self._hold = nonzero(clsc2.stock_cost(params))
        self._scrap_base = float(clsc2.scrap_cost(params, zero))

    def initial_state(self, demand_history: Tensor) -> State2:
        """The state at the start of period 0 for a batch of ``demand_history`` ``[B, 52]``:
        pre-horizon sales (for returns) equal the demand history."""
        p = self.params
        shape = getattr(demand_history, "shape", None)
        if not isinstance(demand_history, Tensor) or len(shape) != 2 or shape[1] != HISTORY:
            # (a [52] failed in the indexing; a [B, 10] gave a state with no sales history)
            got = list(shape) if isinstance(demand_history, Tensor) else type(demand_history).__name__
            raise ScenarioError(f"demand_history: expected a tensor [B, {HISTORY}], got {got}")
        B = demand_history.shape[0]
        full = lambda v: torch.full((B,), float(v), dtype=self.dtype, device=self.device)  # noqa: E731
        columns = (full(p.init_virgin), full(p.init_recycled), full(p.init_product), full(p.init_core_a),
                   full(p.init_core_b))
        history = demand_history[:, HISTORY - p.lag_return:].to(self.dtype)
        # The window counters accumulate up to 104 periods of use (~3e5 kg), where float32's
        # spacing (~0.03 kg) is far above the settlement's tolerance (1e-6 of r (U_v + U_r)):
        # they are kept in float64 whatever the simulator's dtype.
        counter = torch.zeros(B, dtype=torch.float64, device=self.device)
        return State2(columns, (full(p.init_pipeline),) * p.lead_virgin, full(p.init_market), counter, counter,
                      tuple(history.unbind(-1)))

    def arrive(self, state: State2, return_frac_t: Tensor, grades_t: Tensor,
               window_start_t: Tensor) -> tuple[State2, Arrival]:
        """Event 1: the virgin order of ``t - L_v`` and last period's market purchase arrive;
        returns ``ρ_t s_{t-L_r}`` split by ``grades_t`` ``[B, 3]`` into grade-A cores,
        grade-B cores and scrap; the window counters restart where ``window_start_t``."""
        returns = return_frac_t * state.history_slots[0]
        V_, M_, P_, CA_, CB_ = state.columns
        zero = torch.zeros_like(returns)
        used_virgin = torch.where(window_start_t, 0.0, state.used_virgin)
        used_recycled = torch.where(window_start_t, 0.0, state.used_recycled)
        columns = (V_ + state.pipeline_slots[0], M_ + state.market_in, P_, CA_ + returns * grades_t[:, 0],
                   CB_ + returns * grades_t[:, 1])
        new = State2(columns, state.pipeline_slots[1:], zero, used_virgin, used_recycled, state.history_slots)
        return new, Arrival(returns=returns, scrap=returns * grades_t[:, 2])

    def row_inputs(self, state: State2, batch: ScenarioBatch2, t: int) -> dict[str, Tensor]:
        """The rows' per-decision inputs after period t's arrivals (``clsc2.ROW_INPUTS``)."""
        s = state.columns
        return {"virgin": s[V], "recycled": s[M], "cores_a": s[CA], "cores_b": s[CB],
                "used_virgin": state.used_virgin, "used_recycled": state.used_recycled,
                "periods_left": batch.periods_left[:, t], "supply_up": batch.supply_up[:, t],
                "market_avail": batch.market_avail[:, t]}

    def execute(self, state: State2, action: Tensor, demand_t: Tensor, regime_t: Tensor,
                scrap: Tensor) -> tuple[State2, StepResult2]:
        """Events 3-6 for an executed (feasible) ``action`` ``[B, 9]`` from the post-arrival
        ``state``; ``scrap`` (cores landfilled at arrival) is charged with this period."""
        p = self.params
        a = action.unbind(-1)
        sales = torch.minimum(state.columns[P], demand_t)
        lost = demand_t - sales
        # V, M and the cores fall at execution and production and yields land at the end of
        # the period; sales (event 4) read P before either, so one update gives the end state.
        columns = list(state.columns)
        columns[P] = columns[P] - sales
        for i, j, coefficient in self._effects:
            columns[i] = torch.add(columns[i], a[j], alpha=coefficient)
        new = State2(tuple(columns), state.pipeline_slots + (a[O],), a[OM], state.used_virgin + a[UV],
                     state.used_recycled + a[UR], state.history_slots[1:] + (sales,))
        tax, landfill = regime_t[:, clsc2.R_TAX], regime_t[:, clsc2.R_LANDFILL]
        cost = torch.add(landfill * scrap, scrap, alpha=self._scrap_base)
        cost = torch.add(cost, lost, alpha=p.lost_sale_cost)
        for j, coefficient in self._cost_base:
            cost = torch.add(cost, a[j], alpha=coefficient)
        for rate, per_unit in ((tax, self._cost_per_tax), (landfill, self._cost_per_landfill)):
            for j, coefficient in per_unit:
                cost = torch.add(cost, rate * a[j], alpha=coefficient)
        for i, coefficient in self._hold:
            cost = torch.add(cost, columns[i], alpha=coefficient)
        production = (a[UV] + a[UR]) / p.mass
        return new, StepResult2(cost=cost, sales=sales, lost=lost, production=production, action=action, state=new)


@dataclass
class Observation2:
    """What a policy knows at event 2 of period ``t``: never ``d_t``, never how the
    scenario was drawn. ``demand_seen`` is the demand history and ``d_0 .. d_{t-1}``; the
    regime schedule (``regime``, ``window``) is announced, so all of it is visible."""

    t: int
    state: State2  # post-arrival
    inputs: dict[str, Tensor]  # the rows' inputs (clsc2.ROW_INPUTS), each [B]
    regime_t: Tensor  # [B, 5] in force at t
    regime: Tensor  # [B, T, 5] the announced schedule
    window: Tensor  # [B, T] accounting window W per period
    return_frac_t: Tensor  # [B] revealed with the arrivals
    grades_t: Tensor  # [B, 3] revealed with the arrivals
    demand_seen: Tensor  # [B, 52 + t] units
    params: Params2
    #: What the arrivals revealed this episode, period t's included, for estimates of their
    #: means (:func:`moca.policy2.observed_means`): ``[B, 11]``, the periods observed, then
    #: the sums over them of the return fraction, the three grade shares and the market's
    #: availability, then the sums of their squares (None: nothing kept; the rule plans on
    #: its prior).
    seen: Tensor | None = None


class Policy2(Protocol):
    """Anything that maps observations to raw actions ``[B, 9]`` (order of clsc2.ACTION_NAMES)."""

    def reset(self, batch: ScenarioBatch2) -> None: ...

    def act(self, obs: Observation2) -> Tensor: ...


#: The safety layer: ``(raw [B, 9], inputs {name: [B]}, regime_t [B, 5], params) -> executed [B, 9]``.
Projector2 = Callable[[Tensor, dict[str, Tensor], Tensor, Params2], Tensor]


@dataclass
class Rollout2:
    """An episode of a batch: ``[B, T]`` per-period series, ``[B, T, 9]`` actions."""

    cost: Tensor
    executed: Tensor
    raw: Tensor
    stocks: Tensor  # [B, T, 5] end of period (V, M, P, CA, CB)
    sales: Tensor
    lost: Tensor
    scrap: Tensor
    emissions: Tensor  # kg CO2, row 7's left-hand side
    inputs: Tensor  # [B, T, 9] float64: the rows' inputs at each decision (clsc2.ROW_INPUTS order)
    scale: Tensor  # [9] S
    terms: dict[str, Tensor] = field(default_factory=dict)  # each [B, T]

    @property
    def total_cost(self) -> Tensor:
        return self.cost.sum(-1)

    @property
    def correction(self) -> Tensor:
        """Per period, the capacity-normalised distance the safety layer moved the raw
        action ``[B, T]``."""
        return ((self.executed - self.raw) / self.scale).norm(dim=-1)


def revealed_terms(return_frac: Tensor, grades: Tensor, market_avail: Tensor) -> Tensor:
    """What one period's arrivals add to :attr:`Observation2.seen` (``[..., 11]`` from
    ``[...]``, ``[..., 3]``, ``[...]``): 1, the return fraction, the grade shares and the
    market's availability, then their squares."""
    values = torch.cat([return_frac[..., None], grades, market_avail[..., None]], dim=-1)
    return torch.cat([torch.ones_like(return_frac)[..., None], values, values * values], dim=-1)


def revealed_sums(batch: ScenarioBatch2) -> Tensor:
    """:attr:`Observation2.seen` of every period, ``[B, T, 11]``: :func:`revealed_terms`
    summed over the periods up to and including t."""
    return revealed_terms(batch.return_frac, batch.grades, batch.market_avail).cumsum(1)


def rollout2(batch: ScenarioBatch2, policy: Policy2, project: Projector2 | None,
             simulator: Simulator2 | None = None) -> Rollout2:
    """Run ``policy`` through ``batch``; each raw action goes through ``project`` (the
    safety layer) before execution. ``project=None`` executes raw actions as given: only
    for actions known to be feasible (hand-computed tests, the oracle's replay)."""
    p = batch.params
    sim = simulator or Simulator2(p, dtype=batch.dtype, device=batch.demand.device)
    state = sim.initial_state(batch.demand_history)
    policy.reset(batch)
    demand_all = torch.cat([batch.demand_history, batch.demand], dim=1)  # views of it are what is seen
    revealed = revealed_sums(batch)
    records: dict[str, list[Tensor]] = {k: [] for k in ("cost", "executed", "raw", "stocks", "sales", "lost",
                                                         "scrap", "inputs")}
    for t in range(batch.horizon):
        state, arrival = sim.arrive(state, batch.return_frac[:, t], batch.grades[:, t], batch.window_start[:, t])
        inputs = sim.row_inputs(state, batch, t)
        regime_t = batch.regime[:, t]
        seen = demand_all[:, :HISTORY + t]
        raw = policy.act(Observation2(t, state, inputs, regime_t, batch.regime, batch.window,
                                      batch.return_frac[:, t], batch.grades[:, t], seen, p, revealed[:, t]))
        if isinstance(raw, Tensor) and raw.is_floating_point() and raw.dtype != batch.dtype:
            # (a float32 policy on a float64 batch ran the whole episode, then failed in the
            # emissions' product with torch's dtype error: it is projected and executed in the
            # batch's precision, a float32 action widened exactly)
            raw = raw.to(batch.dtype)
        action = raw if project is None else project(raw, inputs, regime_t, p)
        if project is None:  # (the projector checks its own input)
            check_actions(raw, batch.size, len(clsc2.ACTION_NAMES))
        state, step = sim.execute(state, action, batch.demand[:, t], regime_t, arrival.scrap)
        for key, value in (("cost", step.cost), ("executed", action), ("raw", raw), ("stocks", state.stocks),
                           ("sales", step.sales), ("lost", step.lost), ("scrap", arrival.scrap),
                           ("inputs", torch.stack([inputs[k].double() for k in clsc2.ROW_INPUTS], dim=-1))):
            records[key].append(value)
    out = {k: torch.stack(v, 1) for k, v in records.items()}
    emissions = out["executed"] @ torch.as_tensor(clsc2.emission_coefficients(p), dtype=batch.dtype,
                                                  device=batch.demand.device)
    scale = torch.as_tensor(clsc2.action_scale(p), dtype=batch.dtype, device=batch.demand.device)
    terms = clsc2.cost_terms(out["executed"], out["stocks"], out["lost"], out["scrap"], batch.regime, p)
    return Rollout2(emissions=emissions, scale=scale, terms=terms, **out)


class OpenLoop2:
    """A fixed action sequence ``[B, T, 9]`` as a policy (action files, oracle plans)."""

    def __init__(self, actions: Tensor):
        self.actions = actions

    def reset(self, batch: ScenarioBatch2) -> None:
        if self.actions.shape != (batch.size, batch.horizon, 9):
            raise ScenarioError(
                f"actions: expected shape [{batch.size}, {batch.horizon}, 9], got {list(self.actions.shape)}")

    def act(self, obs: Observation2) -> Tensor:
        return self.actions[:, obs.t]



def simulate_actions2(scenario: Scenario2, actions: np.ndarray) -> dict:
    """Run raw actions ``[T, 9]`` through the safety layer and the simulator in float64;
    the result in the JSON shape ``moca simulate --json`` prints (docs/MODEL-2.md)."""
    from moca.projection import episode_violations2, project2_batch

    batch = ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64)
    with torch.no_grad():
        result = rollout2(batch, OpenLoop2(torch.as_tensor(np.asarray(actions, dtype=np.float64)[None])),
                          project2_batch)
    inputs = result.inputs[0].numpy()
    regime = batch.regime[0].numpy()
    executed, raw = result.executed[0].numpy(), result.raw[0].numpy()
    correction = result.correction[0].numpy()
    violations = episode_violations2(executed, inputs, regime, scenario.params)
    periods = []
    for t in range(scenario.horizon):
        periods.append({
            "t": t,
            "action": [float(x) for x in executed[t]],
            "raw_action": [float(x) for x in raw[t]],
            "correction": float(correction[t]),
            "cost": float(result.cost[0, t]),
            "terms": {name: float(result.terms[name][0, t]) for name in clsc2.COST_TERMS},
            "state": {name: float(result.stocks[0, t, i]) for i, name in enumerate(clsc2.STATE_NAMES)},
            "sales": float(result.sales[0, t]),
            "lost": float(result.lost[0, t]),
            "scrap": float(result.scrap[0, t]),
            "emissions": float(result.emissions[0, t]),
            "window": {"used_virgin": float(inputs[t, 4] + executed[t, UV]),
                       "used_recycled": float(inputs[t, 5] + executed[t, UR]),
                       "periods_left": int(inputs[t, 6])},
        })
    corrected = sum(1 for p in periods if p["correction"] > 1e-9)
    return {"model": clsc2.MODEL_NAME, "total_cost": float(result.total_cost[0]), "violations": int(violations),
            "corrected_periods": corrected,
            "terms": {name: float(result.terms[name][0].sum()) for name in clsc2.COST_TERMS}, "periods": periods}


__all__ = ["Arrival", "Observation2", "OpenLoop2", "Policy2", "Projector2", "Rollout2", "ScenarioBatch2",
           "Simulator2", "State2", "StepResult2", "revealed_sums", "revealed_terms", "rollout2", "simulate_actions2"]
