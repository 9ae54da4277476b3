"""The hindsight oracle of CLSC-2: the episode as one linear program, solved with HiGHS.

With every series known (demand, returns, grades, supplier, market), the best cost any
policy could reach is the optimum of an LP over actions, sales and stocks (docs/MODEL-2.md,
"Hindsight oracle"). The same LP over a shorter window, from any state, with forecasts in
place of the series, is what a rolling-horizon MPC solves, so one builder,
:func:`solve_window2` (windows from any state: :func:`window2_at`), serves both, as
:func:`moca.oracle.solve_window` does for CLSC-1.

Variables of window period ``k`` (18 per period, this column order): the nine actions
``o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B``; sales ``s``; the end-of-period stocks
``V, M, P, CA, CB``; ``U_v, U_r`` (material used so far in the accounting window, this
period's use included); the MPC's soft safety-stock shortfall ``e`` (0 without one).

Nothing about the model is restated here. The hard constraints are the rows of
:data:`moca.world.CLSC2_ROWS` (1-8 with 6a, 6b), each named input rewritten as an
expression in the LP's columns (the post-arrival stock is the end-of-period stock minus
what the action did to it, ``x = stock_k - E a_k``; ``U_v`` before the action is
``U_v,k - u_v``); stock columns are free, so "no more than on hand" holds because the
declared rows say so. What an action does to the stocks (``E``), the costs and the
emissions come from :mod:`moca.clsc2`. Only the transit (an order arrives ``L_v``
periods later, a market purchase the next period), the returns and the accounting
windows are written here. Sales obey ``s_k <= P`` at the start of ``k`` and
``s_k <= d_k``; lost sales cost ``p_l (d_k - s_k)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import highspy
import numpy as np
from scipy import sparse

from moca import clsc2
from moca.oracle import KINKED_AT_ZERO, UNSOLVED, OracleError, _solver, rerun_with_presolve
from moca.regime import RULE_BOUNDS
from moca.world import CLSC2_ROWS, regime_rows

# Columns of one period.
(O, OM, UV, UR, F, GA, GB, WA, WB, S, V, M, P, CA, CB, USED_V, USED_R, E) = range(18)
N_COL = 18
ACTIONS = slice(O, WB + 1)
STOCKS = slice(V, CB + 1)
INF = highspy.kHighsInf


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
    # replaying the plan reproduces oracle_cost. Selling less than possible only loses a
    # sale (p_l) and holds a unit, except that it can move the unit's return into a later
    # period. Never on the seed tasks (seeds 1000-1019), but common elsewhere: in a
    # development audit, 22 of 30 random regime schedules (default params) withheld some,
    # the replay 0.04% above oracle_cost on the median and 1.5% at most, the largest under
    # a landfill tax (docs/MODEL-2.md: the replay 5.2% above under one of 100 EUR/core).
    # There oracle_cost is a strict lower bound that no policy reaches, and
    # exact_sales=True gives the best plan that replays exactly.
    withheld: np.ndarray = field(default_factory=lambda: np.zeros(0))


# --- the declared rows on the LP's columns -------------------------------------------------
def _input_expressions(params: Any, window: Window2) -> tuple[np.ndarray, np.ndarray]:
    """Each named input of period k as ``X @ columns_k + x0`` (``X`` [9 inputs, N_COL],
    ``x0`` [H, 9])."""
    effect = clsc2.action_effect(params)
    X = np.zeros((9, N_COL))
    for i, stock in enumerate((V, M, CA, CB)):  # virgin, recycled, cores_a, cores_b after arrivals
        X[i, stock] = 1.0
        X[i, ACTIONS] = -effect[stock - V]
    X[4, USED_V], X[4, UV] = 1.0, -1.0  # used before the action
    X[5, USED_R], X[5, UR] = 1.0, -1.0
    x0 = np.zeros((window.horizon, 9))
    x0[:, 6], x0[:, 7], x0[:, 8] = window.periods_left, window.supply_up, window.market_avail
    return X, x0


def _declared_rows(params: Any, window: Window2):
    """Rows 1-8 of every period from :data:`CLSC2_ROWS`, ``G a - J x <= h0`` with
    ``x = X cols + x0``: coefficients [H, m, N_COL], upper [H, m], on [H, m]."""
    c = CLSC2_ROWS.coefficients(window.regime, params)
    X, x0 = _input_expressions(params, window)
    coef = -np.einsum("hmk,kc->hmc", c.J, X)
    coef[:, :, ACTIONS] += c.G
    return coef, c.h0 + np.einsum("hmk,hk->hm", c.J, x0), c.on


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
    row_upper), minimisation; the spec's cost of the window is ``cost @ x + offset``.

    Rows, period by period: the five stock balances, sales from the product on hand, the
    two accounting rows, the soft safety stock (MPC, from ``k = 1``); then the declared
    rows 1-8 of every period. Built with array operations over the periods (a loop over
    periods and entries cost several times the solve of a 13-period MPC window)."""
    _check_window(params, window)
    p, H, L_v, L_r = params, window.horizon, params.lead_virgin, params.lag_return
    effect = clsc2.action_effect(p)
    k = np.arange(H)
    buffered = window.safety_stock > 0
    per_period = 8 + (buffered & (k >= 1))
    base = np.r_[0, np.cumsum(per_period)[:-1]]  # first row of each period's block
    rows, cols, vals = [], [], []

    def add(row: np.ndarray, col: np.ndarray, val: Any) -> None:
        val = np.broadcast_to(np.asarray(val, dtype=np.float64), np.shape(row))
        rows.append(np.asarray(row))
        cols.append(np.asarray(col))
        vals.append(val)

    later = k[1:]
    # stock_k = stock_{k-1} + arrivals_k + E a_k - s_k e_P (+ orders and purchases in transit)
    for i in range(5):
        row = base + i
        add(row, k * N_COL + V + i, 1.0)
        for j in np.flatnonzero(effect[i]):
            add(row, k * N_COL + j, -effect[i, j])
        if clsc2.SALES_EFFECT[i]:
            add(row, k * N_COL + S, -clsc2.SALES_EFFECT[i])
        add(row[1:], (later - 1) * N_COL + V + i, -1.0)
        if i == 0:
            add(row[L_v:], (k[L_v:] - L_v) * N_COL + O, -1.0)
        if i == 1:
            add(row[1:], (later - 1) * N_COL + OM, -1.0)
        if i in (3, 4):  # grades of the window's own sales' returns
            add(row[L_r:], (k[L_r:] - L_r) * N_COL + S, -window.grades[L_r:, i - 3] * window.return_frac[L_r:])
    # sales from the product on hand at the start of k
    add(base + 5, k * N_COL + S, 1.0)
    add(base[1:] + 5, (later - 1) * N_COL + P, -1.0)
    # accounting: U_k = U_{k-1} (unless a window starts at k) + use_k
    continuing = later[~window.window_start[1:]]
    for r, used, use in ((6, USED_V, UV), (7, USED_R, UR)):
        add(base + r, k * N_COL + used, 1.0)
        add(base + r, k * N_COL + use, -1.0)
        add(base[continuing] + r, (continuing - 1) * N_COL + used, -1.0)
    # soft safety stock (MPC): product at the start of k + e_k >= d_k + safety stock
    if buffered:
        add(base[1:] + 8, (later - 1) * N_COL + P, 1.0)
        add(base[1:] + 8, later * N_COL + E, 1.0)
    n_dynamic = int(per_period.sum())

    arrivals = np.zeros((H, 5))  # exogenous arrivals after the period's events 1
    arrivals[:, 0] = window.virgin_arrivals
    arrivals[0, 1] = window.market_arrival
    arrivals[:, 3] = window.grades[:, 0] * window.core_returns
    arrivals[:, 4] = window.grades[:, 1] * window.core_returns
    arrivals[0] += window.stocks
    lo = np.zeros(n_dynamic)
    up = np.zeros(n_dynamic)
    for i in range(5):
        lo[base + i] = up[base + i] = arrivals[:, i]
    lo[base + 5], up[base + 5] = -INF, 0.0
    up[base[0] + 5] = window.stocks[2]
    carried = not window.window_start[0]
    lo[base[0] + 6] = up[base[0] + 6] = window.used[0] if carried else 0.0
    lo[base[0] + 7] = up[base[0] + 7] = window.used[1] if carried else 0.0
    if buffered:
        lo[base[1:] + 8], up[base[1:] + 8] = window.demand[1:] + window.safety_stock, INF

    # the declared rows, on rows n_dynamic, n_dynamic + 1, ... (period by period)
    coef, upper, on = _declared_rows(p, window)
    period, row = np.nonzero(on)
    declared = coef[period, row]  # [r, N_COL]
    r_idx, c_idx = np.nonzero(declared)
    add(n_dynamic + r_idx, period[r_idx] * N_COL + c_idx, declared[r_idx, c_idx])
    lo = np.r_[lo, np.full(period.size, -INF)]
    up = np.r_[up, upper[period, row]]

    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    keep = vals != 0.0  # (exact zeros, e.g. a return fraction of 0, would only warn in HiGHS)
    # cost: actions, end-of-period stocks, lost sales, scrap (own sales' returns L_r later)
    scrap = clsc2.scrap_cost(p, window.regime) * window.grades[:, 2]  # EUR per core returned
    cost = np.zeros((H, N_COL))
    cost[:, ACTIONS] = clsc2.action_cost(p, window.regime)
    cost[:, STOCKS] = clsc2.stock_cost(p)
    cost[:, S] = -p.lost_sale_cost
    cost[: max(H - L_r, 0), S] += (scrap * window.return_frac)[L_r:]
    cost[:, E] = window.safety_penalty
    offset = float(p.lost_sale_cost * window.demand.sum() + (scrap * window.core_returns).sum())

    col_lower = np.zeros((H, N_COL))
    col_upper = np.full((H, N_COL), INF)
    col_lower[:, [V, M, CA, CB, USED_V, USED_R]] = -INF  # the declared rows bound them
    col_upper[:, S] = window.demand
    if window.safety_stock <= 0:
        col_upper[:, E] = 0.0
    col_upper[0, E] = 0.0
    A = sparse.csc_matrix((vals[keep], (rows[keep], cols[keep])), shape=(lo.size, H * N_COL))
    return cost.ravel(), offset, col_lower.ravel(), col_upper.ravel(), A, lo, up


def _exact_sales(params: Any, window: Window2, cost, col_lower, col_upper, A, row_lower, row_upper):
    """The LP plus the simulator's rule ``s_k = min(P_{k-1}, d_k)``: with a binary ``z_k``
    per period, ``s_k >= P_{k-1} - big z_k`` and ``s_k >= d_k - big (1 - z_k)`` (with
    ``s_k <= P_{k-1}, d_k`` already rows); ``big`` bounds the product on hand and the
    demand (product grows by at most ``K_p + eta_f K_f`` a period)."""
    H, n_col = window.horizon, cost.size
    growth = params.cap_produce + params.yield_refurbish * params.cap_refurbish
    big = float(window.stocks[2] + window.demand.max() + 1.0) + np.arange(1, H + 1) * growth
    rows, cols, vals = [], [], []
    lower = []
    for k in range(H):
        binary = n_col + k
        # s_k - P_{k-1} + big z_k >= 0 (P_{-1} is the opening stock: a constant)
        entries = [(k * N_COL + S, 1.0), (binary, big[k])] + ([((k - 1) * N_COL + P, -1.0)] if k else [])
        for c_, v in entries:
            rows.append(2 * k), cols.append(c_), vals.append(v)
        lower.append(window.stocks[2] if k == 0 else 0.0)
        # s_k - big z_k >= d_k - big
        for c_, v in ((k * N_COL + S, 1.0), (binary, -big[k])):
            rows.append(2 * k + 1), cols.append(c_), vals.append(v)
        lower.append(window.demand[k] - big[k])
    extra = sparse.csc_matrix((vals, (rows, cols)), shape=(2 * H, n_col + H))
    A = sparse.vstack([sparse.hstack([A, sparse.csc_matrix((A.shape[0], H))]), extra]).tocsc()
    return (np.r_[cost, np.zeros(H)], np.r_[col_lower, np.zeros(H)], np.r_[col_upper, np.ones(H)], A,
            np.r_[row_lower, lower], np.r_[row_upper, np.full(2 * H, INF)],
            np.r_[np.zeros(n_col, dtype=np.int32), np.ones(H, dtype=np.int32)])


def solve_window2(params: Any, window: Window2, exact_sales: bool = False) -> Window2Solution:
    """Solve the window LP; raises :class:`moca.oracle.OracleError` unless HiGHS reports
    optimal (the LP is feasible whenever the window's opening state is: the safe action
    of every period is a solution).

    ``exact_sales`` replaces the spec's relaxation ``s_k <= min(P_{k-1}, d_k)`` by the
    simulator's ``s_k = min(P_{k-1}, d_k)`` (a MIP, one binary per period; slower): the
    best cost of a plan that replays exactly where the LP's plan withholds sales (see
    :class:`Oracle2Result`). Not the spec's oracle."""
    cost, offset, col_lower, col_upper, A, row_lower, row_upper = build_lp2(params, window)
    integrality = np.zeros(cost.size, dtype=np.int32)
    if exact_sales:
        cost, col_lower, col_upper, A, row_lower, row_upper, integrality = _exact_sales(
            params, window, cost, col_lower, col_upper, A, row_lower, row_upper)
    highs = _solver()
    n_row, n_col = A.shape
    highs.passModel(n_col, n_row, A.nnz, int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMinimize),
                    offset, cost, col_lower, col_upper, row_lower, row_upper,
                    A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data.astype(np.float64), integrality)
    if exact_sales:
        highs.setOptionValue("presolve", "on")  # the MIP search needs it; restored below
        highs.setOptionValue("mip_rel_gap", 1e-7)
    try:
        highs.run()
    finally:
        if exact_sales:
            highs.setOptionValue("presolve", "off")
    status = highs.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal and not exact_sales:
        status = rerun_with_presolve(highs)
    if status != highspy.HighsModelStatus.kOptimal:
        raise OracleError(f"HiGHS did not solve the {window.horizon}-period CLSC-2 LP to optimality: status "
                          f"{highs.modelStatusToString(status)!r}: {UNSOLVED}")
    H = window.horizon
    x = np.asarray(highs.getSolution().col_value)[: H * N_COL].reshape(H, N_COL)
    objective = highs.getInfo().objective_function_value
    stocks = x[:, STOCKS].copy()
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
    for name, values in series.items():
        if np.shape(values)[:1] < (H,) or not np.all(np.isfinite(values)):
            raise ValueError(f"{name}: expected {H} finite values (one per window period), got shape "
                             f"{list(np.shape(values))}")
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


def solve_oracle2(scenario: Any, exact_sales: bool = False) -> Oracle2Result:
    """The hindsight optimum of a CLSC-2 scenario (its regime schedule and accounting
    windows included); raises :class:`moca.oracle.OracleError` if HiGHS does not report
    optimal. ``exact_sales``: see :func:`solve_window2` (not the spec's oracle)."""
    from moca.scenario import Scenario2

    if not isinstance(scenario, Scenario2):
        other = " (a CLSC-1 scenario: moca.oracle.solve_oracle)" if type(scenario).__name__ == "Scenario" else ""
        raise TypeError(f"scenario: expected a CLSC-2 moca.scenario.Scenario2, got {type(scenario).__name__}{other}")
    s = solve_window2(scenario.params, episode_window2(scenario), exact_sales=exact_sales)
    return Oracle2Result(oracle_cost=s.cost, status=s.status, plan=s.actions, sales=s.sales, lost=s.lost,
                         stocks=s.stocks, withheld=s.withheld)


# --- shadow prices ---------------------------------------------------------------------------

#: Column of each rule in the regime table, and the sign that makes the price the cost of
#: *tightening* it (lowering a cap tightens it).
_SHADOW_COLUMN = {"recycled_content_min": (0, 1.0), "carbon_tax": (1, 1.0), "emission_cap": (2, -1.0),
                  "landfill_tax": (3, 1.0), "recovery_target": (4, 1.0)}
_SHADOW_STEP = {"recycled_content_min": 1e-4, "carbon_tax": 0.01, "emission_cap": 0.5, "landfill_tax": 0.01,
                "recovery_target": 1e-4}
_SHADOW_HIGH = {**{name: high for name, (_, high) in RULE_BOUNDS.items()}, "emission_cap": np.inf}


@dataclass
class ShadowPrices2:
    """The hindsight optimum of a CLSC-2 scenario and the marginal cost of tightening each
    rule (EUR per unit of the rule; None where the rule is not in force (a cap of None) or
    not a continuous quantity)."""

    oracle_cost: float  # EUR
    prices: dict[str, float | None]
    result: Oracle2Result


def shadow_prices2(scenario: Any, fields: Any = None) -> ShadowPrices2:
    """The oracle of ``scenario`` (one cold HiGHS solve) and, from its row and column duals,
    the derivative of the oracle cost with respect to each rule moved by the same amount in
    every period.

    Generic over the declared rows: a rule enters the LP only through its data (row
    coefficients, row bounds, costs, the cost offset), so by LP sensitivity (the envelope
    theorem) ``d cost = dc.x + d offset + sum_i y_i (d b_i - dA_i x)`` with ``y_i`` the dual
    of row ``i`` and ``d b_i`` the change of its active bound. The LP data's change ``dA, db,
    dc`` is taken from the LP rebuilt at the rule +- a small step (the data are linear in
    every rule, so that difference is exact to round-off) rather than restated per rule.
    ``recycled_content_window`` W (a whole number of periods) has no derivative: None.
    Where the step switches rows on (a mandate from ``r = 0``: rows 6a/6b), the LP's shape
    changes and the price is the one-sided difference of the oracle cost over the step
    (one more solve), and so is a share rule's at 0 (:data:`moca.oracle.KINKED_AT_ZERO`). ``fields``: the rules
    to price (default all). Where the optimum sits on a kink, the duals give one of the one-sided slopes."""
    p = scenario.params
    window = episode_window2(scenario)
    cost, offset, col_lower, col_upper, A, row_lower, row_upper = build_lp2(p, window)
    highs = _solver()
    n_row, n_col = A.shape
    highs.passModel(n_col, n_row, A.nnz, int(highspy.MatrixFormat.kColwise), int(highspy.ObjSense.kMinimize),
                    offset, cost, col_lower, col_upper, row_lower, row_upper,
                    A.indptr.astype(np.int32), A.indices.astype(np.int32), A.data.astype(np.float64),
                    np.zeros(n_col, dtype=np.int32))
    highs.run()
    status = highs.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        status = rerun_with_presolve(highs)
    if status != highspy.HighsModelStatus.kOptimal:
        raise OracleError(f"HiGHS did not solve the CLSC-2 oracle LP to optimality: status "
                          f"{highs.modelStatusToString(status)!r}: {UNSOLVED}")
    solution = highs.getSolution()
    x = np.asarray(solution.col_value)
    y = np.asarray(solution.row_dual)
    z = np.asarray(solution.col_dual)
    objective = float(highs.getInfo().objective_function_value)

    def active(dual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        # the bound a dual prices: the lower one where the dual is positive (minimisation)
        return np.where(dual > 0, lower, upper)

    b0, c0 = active(y, row_lower, row_upper), active(z, col_lower, col_upper)
    prices: dict[str, float | None] = {"recycled_content_window": None}
    for name, (column, sign) in _SHADOW_COLUMN.items():
        if fields is not None and name not in fields:
            continue
        value = window.regime[:, column]
        # A cap in force in part of the horizon is priced where it is set, as CLSC-1's is (a
        # shift leaves "no cap", inf, as it is); it was None wherever a period had no cap.
        value = value[np.isfinite(value)]
        if value.size == 0:  # no cap in force
            prices[name] = None
            continue
        step = _SHADOW_STEP[name]
        up_ok = np.all(value + step <= _SHADOW_HIGH[name])
        down_ok = np.all(value - step >= (step if name == "emission_cap" else 0.0))
        if not (up_ok or down_ok):  # (some periods at 0, others at the top: no step moves them all;
            prices[name] = None  # it divided by a width of 0)
            continue
        lo_at, hi_at = (-step if down_ok else 0.0), (step if up_ok else 0.0)
        built = []
        for shift in (lo_at, hi_at):
            regime = window.regime.copy()
            regime[:, column] += shift
            built.append(build_lp2(p, replace(window, regime=regime)))
        width = hi_at - lo_at
        (c_a, off_a, cl_a, cu_a, A_a, rl_a, ru_a), (c_b, off_b, cl_b, cu_b, A_b, rl_b, ru_b) = built
        if A_a.shape != A.shape or A_b.shape != A.shape or (not down_ok and name in KINKED_AT_ZERO):
            # (a share rule at 0: its row slack, its dual the slope of loosening; see moca.oracle)
            regime = window.regime.copy()
            regime[:, column] += hi_at if hi_at else lo_at
            moved = solve_window2(p, replace(window, regime=regime)).cost
            prices[name] = float(sign * (moved - objective) / (hi_at if hi_at else lo_at))
            continue
        dA = (A_b - A_a) / width
        with np.errstate(invalid="ignore"):  # inf - inf on bounds no dual prices
            db = (active(y, rl_b, ru_b) - active(y, rl_a, ru_a)) / width
            dbc = (active(z, cl_b, cu_b) - active(z, cl_a, cu_a)) / width
            db = np.where(np.isfinite(b0) & (y != 0), db, 0.0)
            dbc = np.where(np.isfinite(c0) & (z != 0), dbc, 0.0)
        derivative = (c_b - c_a) @ x / width + (off_b - off_a) / width + y @ (db - dA @ x) + z @ dbc
        prices[name] = float(sign * derivative)
    prices = {k: None if v is None else v + 0.0 for k, v in prices.items()}  # (a slack row's -0.0 printed "-0")
    H = window.horizon
    plan = x.reshape(H, N_COL)
    stocks = plan[:, STOCKS].copy()
    product_before = np.r_[window.stocks[2], stocks[:-1, 2]]
    sales = plan[:, S].copy()
    result = Oracle2Result(oracle_cost=objective, status="optimal", plan=np.maximum(plan[:, ACTIONS], 0.0),
                           sales=sales, lost=window.demand - sales, stocks=stocks,
                           withheld=np.maximum(np.minimum(product_before, window.demand) - sales, 0.0))
    return ShadowPrices2(oracle_cost=objective, prices=prices, result=result)
