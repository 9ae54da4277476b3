"""The hindsight oracle of CLSC-2: the episode as one linear program, solved with HiGHS.

With every series known (demand, returns, grades, supplier, market), the best cost any
policy could reach is the optimum of an LP over actions, sales and stocks (docs/MODEL-2.md,
"Hindsight oracle"). The same LP over a shorter window, from any state, with forecasts in
place of the series, is what a rolling-horizon MPC solves, so one builder,
:func:`solve_window2`, serves both (as :func:`moca.oracle.solve_window` does for CLSC-1).

Variables of window period ``k`` (17 per period, this column order): the nine actions
``o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B``; sales ``s``; ``V`` (virgin after use),
``M^-`` (recycled material left after use, before recovered and bought material lands),
``P^-`` (product left after sales, before production lands), ``CA``, ``CB`` (cores after
processing), ``U_v``, ``U_r`` (material used so far in the accounting window, this
period's use included), and the MPC's soft safety-stock shortfall ``e`` (fixed at 0
without a safety stock).

The hard constraints are **not written here**: every row of :data:`moca.world.CLSC2_ROWS`
(1-8 with 6a, 6b) is read from the declaration and rewritten on the LP's columns, each
named input being an expression in them (e.g. the post-arrival ``V`` is ``V_k + u_v``,
``U_v`` before the action is ``U_v,k - u_v``). Stock columns are free, so "no more than
on hand" holds because the declared rows say so. Only the stock balances (the
dynamics) and the cost are written here. Sales obey ``s_k <= P`` at the start of ``k``
(``P^- >= 0``) and ``s_k <= d_k``; lost sales cost ``p_l (d_k - s_k)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np
from scipy import sparse

from moca.oracle import OracleError, _solver
from moca.world import CLSC2_ROWS, max_recycled_use, regime_rows

# Columns of one period.
(O, OM, UV, UR, F, GA, GB, WA, WB, S, V, M_LEFT, P_LEFT, CA, CB, USED_V, USED_R, E) = range(18)
N_COL = 18
ACTIONS = slice(O, WB + 1)
INF = highspy.kHighsInf
_R_TAX, _R_LANDFILL = 1, 3


@dataclass(frozen=True)
class Window2:
    """An LP window of ``H`` periods starting at the beginning of a period (before its
    arrivals). Arrays are float64.

    ``core_returns[k]``: cores (all grades) returning at window period ``k`` from sales
    made before the window; from ``k >= L_r`` the window's own sales return instead, the
    share ``return_frac[k]`` of ``s_{k - L_r}``. ``periods_left[k]``: ``n_k`` of the
    accounting window holding ``k`` (it may end after the LP window); ``window_start[k]``:
    ``U_v = U_r = 0`` there; ``used``: ``(U_v, U_r)`` carried into period 0 when it does
    not start a window.
    """

    stocks: np.ndarray  # [5] V kg, M kg, P units, CA, CB units
    virgin_arrivals: np.ndarray  # [H] kg: the known pipeline (0 beyond it)
    market_arrival: float  # kg bought in the period before the window, arriving at k = 0
    core_returns: np.ndarray  # [H] units
    return_frac: np.ndarray  # [H]
    grades: np.ndarray  # [H, 3] shares A, B, scrap of each period's returns
    demand: np.ndarray  # [H] units (true or forecast)
    supply_up: np.ndarray  # [H] 0/1
    market_avail: np.ndarray  # [H] in [0, 1]
    regime: np.ndarray  # [H, 5] (cap inf = none)
    periods_left: np.ndarray  # [H] int
    window_start: np.ndarray  # [H] bool
    used: tuple[float, float] = (0.0, 0.0)  # kg (U_v, U_r) before period 0
    safety_stock: float = 0.0  # units of product beyond the demand, periods k >= 1 (soft)
    safety_penalty: float = 0.0  # EUR per unit per period below the safety stock

    def __post_init__(self) -> None:
        for name in ("stocks", "virgin_arrivals", "core_returns", "return_frac", "grades", "demand", "supply_up",
                     "market_avail", "regime", "periods_left"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "window_start", np.asarray(self.window_start, dtype=bool))

    @property
    def horizon(self) -> int:
        return int(self.demand.shape[0])


@dataclass
class Window2Solution:
    """The optimal plan of a window; ``cost`` is the spec's cost (safety penalty excluded)."""

    status: str
    cost: float  # EUR
    actions: np.ndarray  # [H, 9]
    sales: np.ndarray  # [H] units
    lost: np.ndarray  # [H] units
    stocks: np.ndarray  # [H, 5] end-of-period V, M, P, CA, CB
    used: np.ndarray  # [H, 2] U_v, U_r after each period's use
    withheld: np.ndarray  # [H] units sold below min(P, d) (see Oracle2Result)


@dataclass
class Oracle2Result:
    """The hindsight optimum of one CLSC-2 scenario."""

    oracle_cost: float  # EUR, a lower bound on every policy's episode cost
    status: str
    plan: np.ndarray  # [T, 9] actions (o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B)
    sales: np.ndarray  # [T] units
    lost: np.ndarray  # [T] units
    stocks: np.ndarray  # [T, 5] end-of-period V, M, P, CA, CB
    # [T] units the plan sells below what the simulator sells, min(P, d): where all are ~0,
    # replaying the plan reproduces oracle_cost.
    withheld: np.ndarray = field(default_factory=lambda: np.zeros(0))


# --- the declared rows on the LP's columns -------------------------------------------------
def _input_expressions(params: Any, window: Window2) -> tuple[np.ndarray, np.ndarray]:
    """Each named input of period k as ``E @ columns_k + e0`` (``E`` [H, 9 inputs, N_COL],
    ``e0`` [H, 9])."""
    H = window.horizon
    E = np.zeros((H, 9, N_COL))
    e0 = np.zeros((H, 9))
    E[:, 0, [V, UV]] = 1.0  # virgin after arrivals = V_k + u_v
    E[:, 1, [M_LEFT, UR]] = 1.0  # recycled after arrivals = M^-_k + u_r
    E[:, 2, [CA, F, GA, WA]] = 1.0
    E[:, 3, [CB, GB, WB]] = 1.0
    E[:, 4, USED_V], E[:, 4, UV] = 1.0, -1.0  # used before the action
    E[:, 5, USED_R], E[:, 5, UR] = 1.0, -1.0
    e0[:, 6] = window.periods_left
    e0[:, 7] = window.supply_up
    e0[:, 8] = window.market_avail
    return E, e0


def _declared_rows(params: Any, window: Window2):
    """Rows 1-8 of every period as (period, coefficients [N_COL], upper) triples, read from
    :data:`CLSC2_ROWS`: ``G a - J x <= h0`` with ``x = E cols + e0``."""
    c = CLSC2_ROWS.coefficients(window.regime, params)
    E, e0 = _input_expressions(params, window)
    H, m = c.G.shape[0], c.G.shape[1]
    coef = -np.einsum("hmk,hkc->hmc", c.J, E)  # [H, m, N_COL]
    coef[:, :, ACTIONS] += c.G
    upper = c.h0 + np.einsum("hmk,hk->hm", c.J, e0)
    return coef, upper, c.on


# --- building and solving --------------------------------------------------------------------
def _check_window(params: Any, window: Window2) -> None:
    H = window.horizon
    if window.demand.ndim != 1 or H < 1:
        raise ValueError(f"window.demand: expected a 1-d series of at least one period, got shape "
                         f"{list(window.demand.shape)}")
    shapes = {"stocks": (5,), "virgin_arrivals": (H,), "core_returns": (H,), "return_frac": (H,),
              "grades": (H, 3), "supply_up": (H,), "market_avail": (H,), "regime": (H, 5), "periods_left": (H,),
              "window_start": (H,)}
    for name, shape in shapes.items():
        value = getattr(window, name)
        if np.shape(value) != shape:
            raise ValueError(f"window.{name}: expected shape {list(shape)}, got {list(np.shape(value))}")
        finite = np.isfinite(np.delete(value, 2, axis=1)) if name == "regime" else np.isfinite(value)
        if not np.all(finite):
            raise ValueError(f"window.{name}: must be finite")
    if (window.stocks < 0).any():
        raise ValueError(f"window.stocks={window.stocks.tolist()}: stocks must be >= 0")
    regime_rows(window.regime)  # ranges


def build_lp2(params: Any, window: Window2):
    """The window's LP: (cost [n], offset EUR, col_lower, col_upper, A (CSC), row_lower,
    row_upper), minimisation; the spec's cost is ``cost @ x + offset``."""
    _check_window(params, window)
    p, H, L_r = params, window.horizon, params.lag_return
    col = lambda k, j: k * N_COL + j  # noqa: E731
    rows, cols, vals, lo, up = [], [], [], [], []

    def add(entries: list[tuple[int, float]], lower: float, upper: float) -> None:
        r = len(lo)
        for c_, v in entries:
            if v != 0.0:
                rows.append(r)
                cols.append(c_)
                vals.append(v)
        lo.append(lower)
        up.append(upper)

    V0, M0, P0, CA0, CB0 = (float(x) for x in window.stocks)
    alpha_a, alpha_b, alpha_c = window.grades[:, 0], window.grades[:, 1], window.grades[:, 2]
    rec_a, rec_b = p.mass * p.yield_disassembly_a, p.mass * p.yield_disassembly_b
    for k in range(H):
        prev = k - 1
        # V: V_k = V_{k-1} + pipeline_k + o_{k-L_v} - u_v
        entries = [(col(k, V), 1.0), (col(k, UV), 1.0)] + ([(col(prev, V), -1.0)] if k else [])
        if k >= p.lead_virgin:
            entries.append((col(k - p.lead_virgin, O), -1.0))
        add(entries, *(2 * [window.virgin_arrivals[k] + (V0 if k == 0 else 0.0)]))
        # M: M^-_k = M^-_{k-1} + m(eta_A g_A + eta_B g_B)_{k-1} + o_m,{k-1} - u_r
        entries = [(col(k, M_LEFT), 1.0), (col(k, UR), 1.0)]
        if k:
            entries += [(col(prev, M_LEFT), -1.0), (col(prev, GA), -rec_a), (col(prev, GB), -rec_b),
                        (col(prev, OM), -1.0)]
        add(entries, *(2 * [M0 + window.market_arrival if k == 0 else 0.0]))
        # P: P^-_k = P^-_{k-1} + (u_v + u_r)_{k-1} / m + eta_f f_{k-1} - s_k
        entries = [(col(k, P_LEFT), 1.0), (col(k, S), 1.0)]
        if k:
            entries += [(col(prev, P_LEFT), -1.0), (col(prev, UV), -1.0 / p.mass), (col(prev, UR), -1.0 / p.mass),
                        (col(prev, F), -p.yield_refurbish)]
        add(entries, *(2 * [P0 if k == 0 else 0.0]))
        # cores by grade: C_k = C_{k-1} + alpha R_k - processed; R_k from own sales from L_r on
        for stock, start, alpha, out in ((CA, CA0, alpha_a, (F, GA, WA)), (CB, CB0, alpha_b, (GB, WB))):
            entries = [(col(k, stock), 1.0)] + [(col(k, j), 1.0) for j in out]
            if k:
                entries.append((col(prev, stock), -1.0))
            if k >= L_r:
                entries.append((col(k - L_r, S), -alpha[k] * window.return_frac[k]))
            add(entries, *(2 * [alpha[k] * window.core_returns[k] + (start if k == 0 else 0.0)]))
        # accounting: U_k = U_{k-1} (unless a window starts) + use_k
        for used, use, carried in ((USED_V, UV, window.used[0]), (USED_R, UR, window.used[1])):
            entries = [(col(k, used), 1.0), (col(k, use), -1.0)]
            if k and not window.window_start[k]:
                entries.append((col(prev, used), -1.0))
            add(entries, *(2 * [carried if k == 0 and not window.window_start[0] else 0.0]))
        # soft safety stock (MPC): P at the start of k + e_k >= d_k + safety stock
        if window.safety_stock > 0 and k >= 1:
            add([(col(k, P_LEFT), 1.0), (col(k, S), 1.0), (col(k, E), 1.0)],
                window.demand[k] + window.safety_stock, INF)

    coef, upper, on = _declared_rows(p, window)
    for k in range(H):
        for j in np.flatnonzero(on[k]):
            nz = np.flatnonzero(coef[k, j])
            add([(col(k, c_), coef[k, j, c_]) for c_ in nz], -INF, float(upper[k, j]))

    # Cost: actions and end-of-period stocks (M and P through what makes them up).
    tax, landfill = window.regime[:, _R_TAX], window.regime[:, _R_LANDFILL]
    cost = np.zeros((H, N_COL))
    cost[:, O] = p.cost_virgin + tax * p.emis_virgin / 1000.0
    cost[:, OM] = p.cost_market
    cost[:, UV] = cost[:, UR] = (p.cost_produce + p.hold_product) / p.mass
    cost[:, F] = p.cost_refurbish + p.hold_product * p.yield_refurbish
    cost[:, GA] = p.cost_disassemble + p.hold_recycled * rec_a
    cost[:, GB] = p.cost_disassemble + p.hold_recycled * rec_b
    cost[:, WA] = cost[:, WB] = p.cost_dispose + landfill
    cost[:, V], cost[:, M_LEFT], cost[:, P_LEFT] = p.hold_virgin, p.hold_recycled, p.hold_product
    cost[:, CA] = cost[:, CB] = p.hold_core
    cost[:, S] = -p.lost_sale_cost
    cost[:, E] = window.safety_penalty
    # scrap of own sales' returns, landfilled L_r periods later
    scrap = (p.cost_dispose + landfill) * alpha_c * window.return_frac
    cost[: max(H - L_r, 0), S] += scrap[L_r:]
    offset = float(p.lost_sale_cost * window.demand.sum()
                   + ((p.cost_dispose + landfill) * alpha_c * window.core_returns).sum())

    col_lower = np.zeros((H, N_COL))
    col_upper = np.full((H, N_COL), INF)
    col_lower[:, [V, M_LEFT, CA, CB, USED_V, USED_R]] = -INF  # the declared rows bound them
    col_upper[:, S] = window.demand
    if window.safety_stock <= 0:
        col_upper[:, E] = 0.0
    col_upper[0, E] = 0.0
    A = sparse.csc_matrix((vals, (rows, cols)), shape=(len(lo), H * N_COL))
    return cost.ravel(), offset, col_lower.ravel(), col_upper.ravel(), A, np.array(lo), np.array(up)


def solve_window2(params: Any, window: Window2) -> Window2Solution:
    """Solve the window LP; raises :class:`moca.oracle.OracleError` unless HiGHS reports
    optimal (the LP is feasible whenever the window's opening state is: the safe action
    of every period is a solution)."""
    cost, offset, col_lower, col_upper, A, row_lower, row_upper = build_lp2(params, window)
    highs = _solver()
    n_row, n_col = A.shape
    highs.passModel(n_col, n_row, A.nnz, int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMinimize),
                    offset, cost, col_lower, col_upper, row_lower, row_upper,
                    A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data.astype(np.float64),
                    np.zeros(n_col, dtype=np.int32))
    highs.run()
    status = highs.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise OracleError(f"HiGHS did not solve the {window.horizon}-period CLSC-2 LP to optimality: status "
                          f"{highs.modelStatusToString(status)!r}")
    H = window.horizon
    x = np.asarray(highs.getSolution().col_value)[: H * N_COL].reshape(H, N_COL)
    objective = highs.getInfo().objective_function_value
    p = params
    stocks = np.stack([x[:, V],
                       x[:, M_LEFT] + p.mass * (p.yield_disassembly_a * x[:, GA] + p.yield_disassembly_b * x[:, GB]),
                       x[:, P_LEFT] + (x[:, UV] + x[:, UR]) / p.mass + p.yield_refurbish * x[:, F],
                       x[:, CA], x[:, CB]], axis=1)
    product_before = np.r_[window.stocks[2], stocks[:-1, 2]]
    sales = x[:, S].copy()
    return Window2Solution(
        status="optimal", cost=float(objective - window.safety_penalty * x[:, E].sum()),
        actions=np.maximum(x[:, ACTIONS], 0.0), sales=sales, lost=window.demand - sales, stocks=stocks,
        used=x[:, [USED_V, USED_R]].copy(),
        withheld=np.maximum(np.minimum(product_before, window.demand) - sales, 0.0))


def episode_window2(scenario: Any) -> Window2:
    """The whole episode of a :class:`moca.scenario.Scenario2` from the spec's initial state."""
    p = scenario.params
    return window2_at(scenario, 0, scenario.horizon,
                      stocks=[p.init_virgin, p.init_recycled, p.init_product, p.init_core_a, p.init_core_b],
                      pipeline=[p.init_pipeline] * p.lead_virgin, market_in=p.init_market,
                      sales_history=scenario.presales(), used=(0.0, 0.0))


def window2_at(scenario: Any, t: int, horizon: int, stocks: Any, pipeline: Any, market_in: float, sales_history: Any,
               used: tuple[float, float], **series: Any) -> Window2:
    """The LP window of ``horizon`` periods from period ``t`` of ``scenario`` (cut at its
    end), from the state at the start of ``t`` (before its arrivals): ``stocks`` [5] V, M,
    P, CA, CB; ``pipeline`` [L_v] kg arriving at t, t+1, ...; ``market_in`` kg arriving at
    t; ``sales_history`` [L_r] the sales of t-L_r .. t-1 (units); ``used`` (U_v, U_r) so far
    in t's accounting window (ignored when t starts one). The regime schedule and its
    windows come from the scenario (announced); the series default to the scenario's
    (the oracle) and are replaced by keyword: ``demand``, ``return_frac``, ``grades``,
    ``supply_up``, ``market_avail`` (each ``[H]``, grades ``[H, 3]``: a forecast for MPC)."""
    p = scenario.params
    T = scenario.horizon
    if not 0 <= t < T:
        raise ValueError(f"t={t}: expected a period in 0..{T - 1}")
    H = min(int(horizon), T - t)
    if H < 1:
        raise ValueError(f"horizon={horizon}: expected at least one period")
    unknown = set(series) - {"demand", "return_frac", "grades", "supply_up", "market_avail"}
    if unknown:
        raise ValueError(f"window2_at: unknown series {sorted(unknown)}")
    take = lambda name: np.asarray(series[name], dtype=np.float64)[:H] if name in series \
        else np.asarray(getattr(scenario, name), dtype=np.float64)[t:t + H]  # noqa: E731
    pipeline = np.asarray(pipeline, dtype=np.float64).reshape(-1)
    history = np.asarray(sales_history, dtype=np.float64).reshape(-1)
    if pipeline.size != p.lead_virgin:
        raise ValueError(f"pipeline: expected {p.lead_virgin} slots, got {pipeline.size}")
    if history.size != p.lag_return:
        raise ValueError(f"sales_history: expected {p.lag_return} periods, got {history.size}")
    return_frac = take("return_frac")
    arrivals = np.zeros(H)
    arrivals[: min(p.lead_virgin, H)] = pipeline[:H]
    returns = np.zeros(H)
    lag = min(p.lag_return, H)
    returns[:lag] = return_frac[:lag] * history[:lag]
    table = scenario.regime_table()
    return Window2(
        stocks=np.asarray(stocks, dtype=np.float64), virgin_arrivals=arrivals, market_arrival=float(market_in),
        core_returns=returns, return_frac=return_frac, grades=take("grades"), demand=take("demand"),
        supply_up=take("supply_up"), market_avail=take("market_avail"), regime=table[t:t + H],
        periods_left=scenario.periods_left()[t:t + H], window_start=scenario.window_starts()[t:t + H],
        used=(float(used[0]), float(used[1])))


def solve_oracle2(scenario: Any) -> Oracle2Result:
    """The hindsight optimum of a CLSC-2 scenario (its regime schedule and accounting
    windows included); raises :class:`moca.oracle.OracleError` if HiGHS does not report
    optimal."""
    s = solve_window2(scenario.params, episode_window2(scenario))
    return Oracle2Result(oracle_cost=s.cost, status=s.status, plan=s.actions, sales=s.sales, lost=s.lost,
                         stocks=s.stocks, withheld=s.withheld)
