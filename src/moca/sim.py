"""The CLSC-1 simulator in PyTorch: batched over scenarios, differentiable, seeded.

Every tensor has a leading batch dimension ``[B, ...]``. The step follows the spec's
order of events exactly (``arrive`` is event 1, ``execute`` events 3-6), and uses only
differentiable operations (``torch.minimum`` for sales), so gradients of the episode
cost flow to actions and, through them, to policy parameters.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from moca.regime import REGIME_FIELDS
from moca.scenario import Params, Scenario, ScenarioError, as_params, check_batch_dtype, common_params

ACTION_NAMES: tuple[str, ...] = ("order", "use_virgin", "use_recycled", "disassemble", "refurbish", "dispose")
ACTION_UNITS: tuple[str, ...] = ("kg", "kg", "kg", "cores", "cores", "cores")
STATE_NAMES: tuple[str, ...] = ("V", "M", "P", "C", "B")
STATE_UNITS: tuple[str, ...] = ("kg", "kg", "units", "units", "units")  # B: backlog, units owed
COST_TERMS: tuple[str, ...] = (
    "virgin", "carbon", "produce", "disassemble", "refurbish", "dispose", "landfill_tax",
    "hold_virgin", "hold_recycled", "hold_product", "hold_core", "backlog",
)
# Column indices into the regime table.
R_MANDATE, R_TAX, R_CAP, R_LANDFILL, R_RECOVERY = range(len(REGIME_FIELDS))


class State:
    """Stocks at a point of the period; all ``[B]`` except the two queues.

    ``pipeline`` ``[B, L]`` (kg): ``pipeline[:, 0]`` is the virgin order that arrives next;
    ``sales_history`` ``[B, L_r]`` (units): ``sales_history[:, 0]`` is ``s_{t-L_r}``, the
    sales whose cores return this period. Each queue is kept as a tuple of its slots
    (``pipeline_slots``, ``history_slots``, each ``[B]``) and the ``[B, L]`` tensors are
    stacked on access: moving a queue by one period is then a tuple operation, not a copy of
    the queue, which keeps the simulator's step a few dozen vector operations long.
    """

    __slots__ = ("virgin", "recycled", "product", "cores", "backlog", "pipeline_slots", "history_slots")

    def __init__(self, virgin: Tensor, recycled: Tensor, product: Tensor, cores: Tensor, backlog: Tensor,
                 pipeline: Tensor | tuple[Tensor, ...], sales_history: Tensor | tuple[Tensor, ...]):
        self.virgin = virgin  # V, kg
        self.recycled = recycled  # M, kg
        self.product = product  # P, units
        self.cores = cores  # C, units
        self.backlog = backlog  # B, units
        self.pipeline_slots: tuple[Tensor, ...] = tuple(pipeline.unbind(-1)) if isinstance(pipeline, Tensor) \
            else tuple(pipeline)
        self.history_slots: tuple[Tensor, ...] = tuple(sales_history.unbind(-1)) \
            if isinstance(sales_history, Tensor) else tuple(sales_history)

    @property
    def pipeline(self) -> Tensor:
        """``[B, L]`` kg in transit, next to arrive first."""
        return _stack_slots(self.pipeline_slots, self.virgin)

    @property
    def sales_history(self) -> Tensor:
        """``[B, L_r]`` units, oldest (``s_{t-L_r}``) first."""
        return _stack_slots(self.history_slots, self.virgin)

    def stocks(self) -> Tensor:
        """``[B, 5]`` (V, M, P, C, B)."""
        return torch.stack([self.virgin, self.recycled, self.product, self.cores, self.backlog], dim=-1)

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "State":
        return State(fn(self.virgin), fn(self.recycled), fn(self.product), fn(self.cores), fn(self.backlog),
                     tuple(map(fn, self.pipeline_slots)), tuple(map(fn, self.history_slots)))

    def detach(self) -> "State":
        return self._map(Tensor.detach)

    def index(self, i: int | slice) -> "State":
        return self._map(lambda x: x[i])


def _batch_size(value: Any) -> int:
    """A batch size: a whole number >= 0 (-1 or 2.5 failed inside torch.full)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        size = operator.index(value)
    except TypeError:
        raise ScenarioError(f"batch_size: expected a whole number of scenarios, got {type(value).__name__} "
                            f"{value!r:.40}") from None
    if size < 0:
        raise ScenarioError(f"batch_size: expected a number of scenarios >= 0, got {size}")
    return size


def check_actions(raw: Any, batch_size: int, width: int) -> None:
    """One period's actions executed as given (``project=None``): ``[B, width]`` (a [B, 5]
    failed in the step's unpacking, and a [1, 6] was broadcast to every scenario)."""
    shape = getattr(raw, "shape", None)
    if shape is None or tuple(shape) != (batch_size, width):
        got = list(shape) if shape is not None else type(raw).__name__
        raise ScenarioError(f"actions: expected shape [B, {width}] = [{batch_size}, {width}] per period "
                            f"(project=None executes the policy's actions as given), got {got}")


def _stack_slots(slots: tuple[Tensor, ...], like: Tensor) -> Tensor:
    return torch.stack(slots, dim=-1) if slots else like.new_zeros(like.shape + (0,))


@dataclass
class StepResult:
    """What one executed period produced; all ``[B]``.

    ``terms`` and ``emissions`` are computed on first access: a rollout computes them for
    the whole episode at once (:func:`cost_terms`), so the per-period step does not.
    """

    cost: Tensor  # EUR
    sales: Tensor  # units
    production: Tensor  # units
    action: Tensor  # [B, 6] the executed action
    state: "State"  # end of period
    regime: Tensor  # [B, 5] the regime in force
    params: Params

    @cached_property
    def terms(self) -> dict[str, Tensor]:
        """EUR per cost term (:data:`COST_TERMS`)."""
        return cost_terms(self.action, self.state.stocks(), self.regime, self.params)

    @cached_property
    def emissions(self) -> Tensor:
        """kg CO2, row 7's left-hand side."""
        return emissions_of(self.action, self.params)


class ScenarioBatch:
    """Scenarios sharing one parameter set, as tensors: demand/return_frac ``[B, T]``,
    regime ``[B, T, 5]`` (cap absent = inf)."""

    def __init__(self, params: Params, demand: Tensor, return_frac: Tensor, regime: Tensor):
        self.params = params
        # Stored period-major (batch last) so that one period's slice, e.g. demand[:, t] or
        # regime[:, t, R_TAX], is contiguous: the simulator's step reads it with one fast
        # vector operation. The shapes are unchanged ([B, T], [B, T, 5]).
        self.demand = demand.T.contiguous().T
        self.return_frac = return_frac.T.contiguous().T
        self.regime = regime.permute(1, 2, 0).contiguous().permute(2, 0, 1)

    @classmethod
    def from_scenarios(cls, scenarios: Sequence[Scenario], dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "cpu") -> "ScenarioBatch":
        check_batch_dtype(dtype)
        params = common_params(scenarios, Scenario)
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
        from moca.world import regime_rows

        try:  # (a mandate of 2 or a NaN tax was simulated as given)
            checked = regime_rows(regime_row, batch=1)[0]
        except ValueError as err:
            raise ScenarioError(str(err)) from None
        row = torch.as_tensor(checked, dtype=self.dtype, device=self.demand.device)
        return ScenarioBatch(self.params, self.demand, self.return_frac, row.expand_as(self.regime).clone())


class Simulator:
    """CLSC-1 dynamics for one parameter set.

    Why the step looks the way it does: at batch 4096 one period is a few dozen vector
    operations of 4096 numbers, each of which costs about as much in dispatch as in
    arithmetic, so speed comes from doing few of them, on contiguous memory. The queues are
    tuples of per-slot vectors (moving them by a period copies nothing), a scenario batch
    keeps its per-period inputs contiguous (:class:`ScenarioBatch`), the batched projection
    hands out actions with contiguous columns, and the cost terms and emissions are left to
    :func:`cost_terms` / :func:`emissions_of` (a rollout computes them once per episode).
    The state update is the spec's arithmetic, operation by operation in the order of
    events, so the Gymnasium environment's plain-float step reproduces it bit for bit; the
    period cost is summed one ``torch.add(..., alpha=coefficient)`` per term and matches
    the environment's to round-off.
    """

    def __init__(self, params: Params = Params(), dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        self.params = p = as_params(params, Params)
        check_batch_dtype(dtype)  # (a dtype of "float64" failed inside torch.full at the first state)
        self.dtype = dtype
        self.device = torch.device(device)
        self._recycled_per_core = p.yield_disassembly * p.mass  # kg of recycled material per core
        self._tax_per_kg = p.emis_virgin / 1000.0  # t CO2 per kg virgin: times tau gives EUR/kg

    def initial_state(self, batch_size: int) -> State:
        p = self.params
        batch_size = _batch_size(batch_size)
        full = lambda *shape, v: torch.full(shape, float(v), dtype=self.dtype, device=self.device)  # noqa: E731
        return State(
            virgin=full(batch_size, v=p.init_virgin), recycled=full(batch_size, v=p.init_recycled),
            product=full(batch_size, v=p.init_product), cores=full(batch_size, v=p.init_core),
            backlog=full(batch_size, v=p.init_backlog),
            pipeline=(full(batch_size, v=p.init_pipeline),) * p.lead_virgin,
            sales_history=(full(batch_size, v=p.init_sales),) * p.lag_return,
        )

    def arrive(self, state: State, return_frac_t: Tensor) -> State:
        """Event 1: the order placed at ``t - L_v`` arrives; cores of ``s_{t-L_r}`` return."""
        return State(state.virgin + state.pipeline_slots[0], state.recycled, state.product,
                     state.cores + return_frac_t * state.history_slots[0], state.backlog,
                     state.pipeline_slots[1:], state.history_slots)

    def execute(self, state: State, action: Tensor, demand_t: Tensor, regime_t: Tensor) -> tuple[State, StepResult]:
        """Events 3-6 for an already executed (feasible) action ``[B, 6]``; ``state`` is
        the post-arrival state whose pipeline has ``L_v - 1`` slots."""
        p = self.params
        o, u_v, u_r, g, f, w = action.unbind(-1)
        material = u_v + u_r
        q = material / p.mass
        virgin = state.virgin - u_v
        recycled = state.recycled - u_r
        cores = state.cores - (g + f + w)
        wanted = state.backlog + demand_t
        sales = torch.minimum(state.product, wanted)
        product = state.product - sales + q + p.yield_refurbish * f
        backlog = wanted - sales
        recycled = recycled + self._recycled_per_core * g
        new = State(virgin, recycled, product, cores, backlog, state.pipeline_slots + (o,),
                    state.history_slots[1:] + (sales,))

        # The period cost, one operation per term (torch.add's alpha saves a multiplication each).
        cost = torch.add(regime_t[:, R_LANDFILL] * w, regime_t[:, R_TAX] * o, alpha=self._tax_per_kg)
        for coefficient, x in ((p.cost_virgin, o), (p.cost_produce / p.mass, material), (p.cost_disassemble, g),
                               (p.cost_refurbish, f), (p.cost_dispose, w), (p.hold_virgin, virgin),
                               (p.hold_recycled, recycled), (p.hold_product, product), (p.hold_core, cores),
                               (p.backlog_cost, backlog)):
            cost = torch.add(cost, x, alpha=coefficient)
        return new, StepResult(cost=cost, sales=sales, production=q, action=action, state=new, regime=regime_t,
                               params=p)


def cost_terms(action: Tensor, stocks: Tensor, regime: Tensor, params: Params) -> dict[str, Tensor]:
    """EUR per cost term (:data:`COST_TERMS`) of periods with executed ``action`` ``[..., 6]``,
    end-of-period ``stocks`` ``[..., 5]`` (V, M, P, C, B) and ``regime`` ``[..., 5]`` in force;
    any leading shape (one period ``[B]``, an episode ``[B, T]``). Their sum is the period
    cost (to round-off: :meth:`Simulator.execute` sums in another order)."""
    p = params
    o, u_v, u_r, g, f, w = action.unbind(-1)
    V, M, P, C, B = stocks.unbind(-1)
    return {
        "virgin": p.cost_virgin * o, "carbon": regime[..., R_TAX] * p.emis_virgin / 1000.0 * o,
        "produce": p.cost_produce / p.mass * u_v + p.cost_produce / p.mass * u_r,
        "disassemble": p.cost_disassemble * g, "refurbish": p.cost_refurbish * f, "dispose": p.cost_dispose * w,
        "landfill_tax": regime[..., R_LANDFILL] * w, "hold_virgin": p.hold_virgin * V,
        "hold_recycled": p.hold_recycled * M, "hold_product": p.hold_product * P, "hold_core": p.hold_core * C,
        "backlog": p.backlog_cost * B,
    }


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
    costs, executed, raws, stocks, sales, available = [], [], [], [], [], []
    last_demand = None
    for t in range(batch.horizon):
        state = sim.arrive(state, batch.return_frac[:, t])
        regime_t = batch.regime[:, t]
        available.append(torch.stack([state.virgin, state.recycled, state.cores], dim=-1))
        raw = policy.act(Observation(t, state, regime_t, batch.return_frac[:, t], last_demand, batch.params))
        action = raw if project is None else project(raw, state, regime_t, batch.params)
        if project is None:  # (the projector checks its own input)
            check_actions(raw, batch.size, len(ACTION_NAMES))
        state, step = sim.execute(state, action, batch.demand[:, t], regime_t)
        last_demand = batch.demand[:, t]
        costs.append(step.cost)
        executed.append(action)
        raws.append(raw)
        stocks.append(state.stocks())
        sales.append(step.sales)
    executed_all, stocks_all = torch.stack(executed, 1), torch.stack(stocks, 1)
    return Rollout(
        cost=torch.stack(costs, 1), executed=executed_all, raw=torch.stack(raws, 1), scale=scale,
        available=torch.stack(available, 1), stocks=stocks_all, sales=torch.stack(sales, 1),
        emissions=emissions_of(executed_all, batch.params),
        terms=cost_terms(executed_all, stocks_all, batch.regime, batch.params),
    )


class OpenLoop:
    """A fixed action sequence ``[B, T, 6]`` as a policy (action files, oracle plans)."""

    def __init__(self, actions: Tensor):
        self.actions = actions

    def reset(self, batch: ScenarioBatch) -> None:
        if self.actions.shape != (batch.size, batch.horizon, len(ACTION_NAMES)):
            raise ScenarioError(
                f"actions: expected shape [{batch.size}, {batch.horizon}, 6], got {list(self.actions.shape)}")

    def act(self, obs: Observation) -> Tensor:
        return self.actions[:, obs.t]
