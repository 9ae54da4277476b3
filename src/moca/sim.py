"""The CLSC-1 simulator in PyTorch: batched over scenarios, differentiable, seeded.

Every tensor has a leading batch dimension ``[B, ...]``. The step follows the spec's
order of events exactly (``arrive`` is event 1, ``execute`` events 3-6), and uses only
differentiable operations (``torch.minimum`` for sales), so gradients of the episode
cost flow to actions and, through them, to policy parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from moca.regime import REGIME_FIELDS
from moca.scenario import Params, Scenario, ScenarioError

ACTION_NAMES: tuple[str, ...] = ("order", "use_virgin", "use_recycled", "disassemble", "refurbish", "dispose")
STATE_NAMES: tuple[str, ...] = ("V", "M", "P", "C", "B")
COST_TERMS: tuple[str, ...] = (
    "virgin", "carbon", "produce", "disassemble", "refurbish", "dispose", "landfill_tax",
    "hold_virgin", "hold_recycled", "hold_product", "hold_core", "backlog",
)
# Column indices into the regime table.
R_MANDATE, R_TAX, R_CAP, R_LANDFILL, R_RECOVERY = range(len(REGIME_FIELDS))


@dataclass
class State:
    """Stocks at a point of the period; all ``[B]`` except the two queues.

    ``pipeline[:, 0]`` is the virgin order (kg) that arrives next; ``sales_history[:, 0]``
    is ``s_{t-L_r}`` (units), the sales whose cores return this period.
    """

    virgin: Tensor  # V, kg
    recycled: Tensor  # M, kg
    product: Tensor  # P, units
    cores: Tensor  # C, units
    backlog: Tensor  # B, units
    pipeline: Tensor  # [B, L_v] kg
    sales_history: Tensor  # [B, L_r] units

    def stocks(self) -> Tensor:
        """``[B, 5]`` (V, M, P, C, B)."""
        return torch.stack([self.virgin, self.recycled, self.product, self.cores, self.backlog], dim=-1)

    def detach(self) -> "State":
        return State(*(getattr(self, f).detach() for f in self.__dataclass_fields__))

    def index(self, i: int | slice) -> "State":
        return State(*(getattr(self, f)[i] for f in self.__dataclass_fields__))


@dataclass
class StepResult:
    """What one executed period produced; all ``[B]`` unless noted."""

    cost: Tensor  # EUR
    terms: dict[str, Tensor]  # EUR per cost term (COST_TERMS)
    sales: Tensor  # units
    production: Tensor  # units
    emissions: Tensor  # kg CO2 (row 7's left-hand side)


class ScenarioBatch:
    """Scenarios sharing one parameter set, as tensors: demand/return_frac ``[B, T]``,
    regime ``[B, T, 5]`` (cap absent = inf)."""

    def __init__(self, params: Params, demand: Tensor, return_frac: Tensor, regime: Tensor):
        self.params = params
        self.demand = demand
        self.return_frac = return_frac
        self.regime = regime

    @classmethod
    def from_scenarios(cls, scenarios: Sequence[Scenario], dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> "ScenarioBatch":
        if not scenarios:
            raise ScenarioError("a scenario batch needs at least one scenario")
        params = scenarios[0].params
        for i, s in enumerate(scenarios[1:], 1):
            if s.params != params:
                raise ScenarioError(f"scenario {i} has other params than scenario 0; batch them separately")
        as_t = lambda a: torch.as_tensor(np.stack(a), dtype=dtype, device=device)  # noqa: E731
        return cls(params, as_t([s.demand for s in scenarios]), as_t([s.return_frac for s in scenarios]),
                   as_t([s.regime_table() for s in scenarios]))

    @property
    def size(self) -> int:
        return self.demand.shape[0]

    @property
    def horizon(self) -> int:
        return self.demand.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.demand.dtype

    def with_regime(self, regime_row: np.ndarray | Tensor) -> "ScenarioBatch":
        """The same draws under one constant regime (a row of the regime table)."""
        row = torch.as_tensor(np.asarray(regime_row, dtype=np.float64), dtype=self.dtype, device=self.demand.device)
        return ScenarioBatch(self.params, self.demand, self.return_frac, row.expand_as(self.regime).clone())


class Simulator:
    """CLSC-1 dynamics for one parameter set."""

    def __init__(self, params: Params = Params(), dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self.params = params
        self.dtype = dtype
        self.device = torch.device(device)
        p = params
        # Cost coefficients of the actions not depending on the regime (EUR per unit of action).
        self._action_cost = torch.tensor(
            [p.cost_virgin, p.cost_produce / p.mass, p.cost_produce / p.mass, p.cost_disassemble,
             p.cost_refurbish, p.cost_dispose], dtype=dtype, device=self.device)
        self._holding = torch.tensor([p.hold_virgin, p.hold_recycled, p.hold_product, p.hold_core, p.backlog_cost],
                                     dtype=dtype, device=self.device)

    def initial_state(self, batch_size: int) -> State:
        p = self.params
        full = lambda v: torch.full((batch_size,), float(v), dtype=self.dtype, device=self.device)  # noqa: E731
        return State(
            virgin=full(p.init_virgin), recycled=full(p.init_recycled), product=full(p.init_product),
            cores=full(p.init_core), backlog=full(p.init_backlog),
            pipeline=torch.full((batch_size, p.lead_virgin), float(p.init_pipeline), dtype=self.dtype, device=self.device),
            sales_history=torch.full((batch_size, p.lag_return), float(p.init_sales), dtype=self.dtype, device=self.device),
        )

    def arrive(self, state: State, return_frac_t: Tensor) -> State:
        """Event 1: the order placed at ``t - L_v`` arrives; cores of ``s_{t-L_r}`` return."""
        return replace(
            state,
            virgin=state.virgin + state.pipeline[:, 0],
            cores=state.cores + return_frac_t * state.sales_history[:, 0],
            pipeline=state.pipeline[:, 1:],
        )

    def execute(self, state: State, action: Tensor, demand_t: Tensor, regime_t: Tensor) -> tuple[State, StepResult]:
        """Events 3-6 for an already executed (feasible) action ``[B, 6]``; ``state`` is
        the post-arrival state whose pipeline has ``L_v - 1`` slots."""
        p = self.params
        o, u_v, u_r, g, f, w = action.unbind(-1)
        q = (u_v + u_r) / p.mass
        virgin = state.virgin - u_v
        recycled = state.recycled - u_r
        cores = state.cores - (g + f + w)
        wanted = state.backlog + demand_t
        sales = torch.minimum(state.product, wanted)
        product = state.product - sales + q + p.yield_refurbish * f
        backlog = wanted - sales
        recycled = recycled + p.yield_disassembly * p.mass * g
        pipeline = torch.cat([state.pipeline, o.unsqueeze(-1)], dim=-1)
        sales_history = torch.cat([state.sales_history[:, 1:], sales.unsqueeze(-1)], dim=-1)
        new = State(virgin, recycled, product, cores, backlog, pipeline, sales_history)

        tax = regime_t[:, R_TAX] * p.emis_virgin / 1000.0 * o
        landfill = regime_t[:, R_LANDFILL] * w
        action_terms = action * self._action_cost
        holding = new.stocks() * self._holding
        terms = {
            "virgin": action_terms[:, 0], "carbon": tax, "produce": action_terms[:, 1] + action_terms[:, 2],
            "disassemble": action_terms[:, 3], "refurbish": action_terms[:, 4], "dispose": action_terms[:, 5],
            "landfill_tax": landfill, "hold_virgin": holding[:, 0], "hold_recycled": holding[:, 1],
            "hold_product": holding[:, 2], "hold_core": holding[:, 3], "backlog": holding[:, 4],
        }
        cost = action_terms.sum(-1) + tax + landfill + holding.sum(-1)
        emissions = emissions_of(action, p)
        return new, StepResult(cost=cost, terms=terms, sales=sales, production=q, emissions=emissions)


def emissions_of(action: Tensor, params: Params) -> Tensor:
    """Row 7's left-hand side (kg CO2): ``e_v·o + (e_p/m)(u_v+u_r) + e_r·η_d·m·g``."""
    p = params
    return (p.emis_virgin * action[..., 0] + p.emis_produce / p.mass * (action[..., 1] + action[..., 2])
            + p.emis_recycle * p.yield_disassembly * p.mass * action[..., 3])


@dataclass
class Observation:
    """What a policy sees at event 2 of period ``t`` (never ``d_t``)."""

    t: int
    state: State  # post-arrival
    regime: Tensor  # [B, 5] regime in force at t
    return_frac: Tensor  # [B] rho_t, revealed with the arrivals
    last_demand: Tensor | None  # [B] d_{t-1}; None at t = 0
    params: Params


class Policy(Protocol):
    """Anything that maps observations to raw actions ``[B, 6]`` (kg, kg, kg, cores x3)."""

    def reset(self, batch: ScenarioBatch) -> None: ...

    def act(self, obs: Observation) -> Tensor: ...


Projector = Callable[[Tensor, State, Tensor, Params], Tensor]


@dataclass
class Rollout:
    """An episode of a batch: ``[B, T]`` per-period series, ``[B, T, 6]`` actions."""

    cost: Tensor
    executed: Tensor
    raw: Tensor
    stocks: Tensor  # [B, T, 5] end-of-period
    sales: Tensor
    emissions: Tensor
    scale: Tensor  # [6] capacity scale S of the spec
    available: Tensor  # [B, T, 3] post-arrival V, M, C: the stocks the hard constraints bound
    terms: dict[str, Tensor] = field(default_factory=dict)  # each [B, T]

    @property
    def total_cost(self) -> Tensor:
        return self.cost.sum(-1)

    @property
    def correction(self) -> Tensor:
        """Mean capacity-normalised distance the safety layer moved the raw action ``[B]``."""
        return ((self.executed - self.raw) / self.scale).norm(dim=-1).mean(-1)


def rollout(batch: ScenarioBatch, policy: Policy, project: Projector | None,
            simulator: Simulator | None = None, scale: Tensor | None = None) -> Rollout:
    """Run ``policy`` through ``batch``; every raw action goes through ``project``
    (the safety layer) before execution. ``project=None`` executes raw actions as given,
    which only makes sense for actions known to be feasible (tests, the oracle's replay)."""
    sim = simulator or Simulator(batch.params, dtype=batch.dtype, device=batch.demand.device)
    state = sim.initial_state(batch.size)
    policy.reset(batch)
    if scale is None:
        scale = torch.as_tensor(batch.params.action_scale, dtype=batch.dtype, device=batch.demand.device)
    costs, executed, raws, stocks, sales, emissions, available = [], [], [], [], [], [], []
    terms: dict[str, list[Tensor]] = {k: [] for k in COST_TERMS}
    last_demand = None
    for t in range(batch.horizon):
        state = sim.arrive(state, batch.return_frac[:, t])
        regime_t = batch.regime[:, t]
        available.append(torch.stack([state.virgin, state.recycled, state.cores], dim=-1))
        raw = policy.act(Observation(t, state, regime_t, batch.return_frac[:, t], last_demand, batch.params))
        action = raw if project is None else project(raw, state, regime_t, batch.params)
        state, step = sim.execute(state, action, batch.demand[:, t], regime_t)
        last_demand = batch.demand[:, t]
        costs.append(step.cost)
        executed.append(action)
        raws.append(raw)
        stocks.append(state.stocks())
        sales.append(step.sales)
        emissions.append(step.emissions)
        for k in COST_TERMS:
            terms[k].append(step.terms[k])
    return Rollout(
        cost=torch.stack(costs, 1), executed=torch.stack(executed, 1), raw=torch.stack(raws, 1), scale=scale,
        available=torch.stack(available, 1),
        stocks=torch.stack(stocks, 1), sales=torch.stack(sales, 1), emissions=torch.stack(emissions, 1),
        terms={k: torch.stack(v, 1) for k, v in terms.items()},
    )


class OpenLoop:
    """A fixed action sequence ``[B, T, 6]`` as a policy (action files, oracle plans)."""

    def __init__(self, actions: Tensor):
        self.actions = actions

    def reset(self, batch: ScenarioBatch) -> None:
        if self.actions.shape[:2] != (batch.size, batch.horizon):
            raise ScenarioError(
                f"actions: expected shape [{batch.size}, {batch.horizon}, 6], got {list(self.actions.shape)}")

    def act(self, obs: Observation) -> Tensor:
        return self.actions[:, obs.t]
