"""The hindsight oracle of CLSC-1: the episode as one linear program, solved with HiGHS.

With demand ``d`` and return fractions ``rho`` known in advance, the best cost any policy
could reach is the optimum of an LP over actions, sales and end-of-period stocks (spec,
"Hindsight oracle"). The same LP over a shorter window, from any state, with forecasts in
place of ``d`` and ``rho``, is the rolling-horizon MPC baseline (``moca.baselines.mpc``),
so one builder, :func:`solve_window`, serves both.

Variables of window period ``k`` (14 per period, in this column order):
``o, u_v, u_r, g, f, w`` (the action), ``s`` (sales), ``V, C, B`` (end-of-period stocks),
``M^-`` (recycled material left after use, before disassembly output lands) and ``P^-``
(product left after sales, before production lands), and the MPC's two buffer shortfalls
``e`` (product below its safety stock) and ``e_V`` (virgin material below its buffer),
both fixed at 0 when there is no buffer. End-of-period ``M = M^- + eta_d m g`` and
``P = P^- + (u_v + u_r)/m + eta_f f`` are substituted out: with them, "use no more than
is on hand" (``u_r <= M_{k-1}``, ``s_k <= P_{k-1}``) is just ``M^-, P^- >= 0``, two rows a
period fewer than with end-of-period stocks (measured: ~10% faster solves).
Sales are relaxed, as the spec says, to ``s_k <= P_{k-1}`` and ``s_k <= B_{k-1} + d_k``
(i.e. ``B_k >= 0``). Selling less only adds holding and backlog cost, with one exception:
when recycled material is scarce (a binding mandate), holding sales back a period or two
can move the cores' return into a period with a higher return fraction. The relaxed
optimum is then a strict lower bound that no policy reaches; ``withheld`` in the result
says where. Measured on seeds 1000-1019: never on T1; on T2 and T3 in 8 of 20 scenarios,
where the optimum with exact sales (``exact_sales=True``, a MIP) is up to 3% higher
(0.4% on average over the 20).

Hard constraints 1-8 hold in every period with that period's regime: row 2 is the
non-negativity of ``V_k`` and ``M^-_k`` (recovered material arrives at the end of the
period, event 5, after ``u_r`` has been used), row 5 that of ``C_k``; rows 3, 6, 7, 8 are
rows of the LP; row 1 and 4 are bounds.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Sequence

import highspy
import numpy as np

from moca.regime import RULE_BOUNDS
from moca.scenario import Params, Scenario
from moca.sim import R_CAP, R_LANDFILL, R_MANDATE, R_RECOVERY, R_TAX

# --- layout of the LP -----------------------------------------------------------------------

# Columns of one period.
O, UV, UR, G, F, W, S, V, M_LEFT, P_LEFT, C, B, E, EV = range(14)
N_COL = 14
ACTION_COLS = slice(O, W + 1)
# Rows of one period: the five stock balances (equalities), then the inequalities.
(ROW_V, ROW_M, ROW_P, ROW_C, ROW_B,  # balances
 ROW_PRODUCE,  # u_v + u_r <= m K_p                              (row 3)
 ROW_MANDATE,  # r u_v - (1 - r) u_r <= 0                         (row 6)
 ROW_EMISSIONS,  # e_v o + e_p/m (u_v + u_r) + e_r eta_d m g <= cap  (row 7)
 ROW_RECOVERY,  # (kappa - 1)(g + f) + kappa w <= 0                (row 8)
 ROW_SAFETY,  # P_{k-1} - B_{k-1} + e >= d_k + safety stock    (MPC only)
 ROW_VIRGIN_BUFFER,  # V_k + e_V >= virgin buffer                  (MPC only)
 ) = range(11)
N_ROW = 11

INF = highspy.kHighsInf


class OracleError(RuntimeError):
    """HiGHS did not report an optimal solution; the message names its status."""


#: Why an LP the spec makes feasible and bounded goes unsolved (a probe's chain: a mass of
#: 1e6 kg under an emission cap of 0.001 kg CO2 left HiGHS at status 'Unknown', with and
#: without presolve, by simplex and by interior point).
UNSOLVED = ("the spec's LP is always feasible and bounded, so its numbers are beyond what HiGHS solves reliably: "
            "a chain whose parameters and rules span many decades (e.g. a mass of 1e6 kg under an emission cap "
            "of 0.001 kg CO2); bring them closer")


@dataclass(frozen=True)
class Window:
    """An LP window of ``H`` periods, starting at the beginning of a period (before its
    arrivals). All arrays are float64.

    ``core_returns[k]`` are cores returning in window period ``k`` from sales made before
    the window (units); for ``k >= L_r`` the window's own sales return instead, the share
    ``return_frac[k]`` of ``s_{k - L_r}``.
    """

    stocks: np.ndarray  # [5] V kg, M kg, P units, C units, B units
    virgin_arrivals: np.ndarray  # [H] kg, the known pipeline (0 beyond it)
    core_returns: np.ndarray  # [H] cores from sales before the window
    return_frac: np.ndarray  # [H] share of window sales s_{k-L_r} returning at k
    demand: np.ndarray  # [H] units (true or forecast)
    regime: np.ndarray  # [H, 5] regime table (REGIME_FIELDS order, cap inf = none)
    safety_stock: float = 0.0  # units of product beyond forecast sales, periods k >= 1 (soft)
    safety_penalty: float = 0.0  # EUR per unit per period below the safety stock
    virgin_buffer: float = 0.0  # kg of virgin material to keep on hand, periods k >= L_v (soft)
    virgin_buffer_penalty: float = 0.0  # EUR per kg per period below the buffer

    def __post_init__(self) -> None:
        for name in ("stocks", "virgin_arrivals", "core_returns", "return_frac", "demand", "regime"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))

    @property
    def horizon(self) -> int:
        return int(self.demand.shape[0]) if self.demand.ndim == 1 else 0


@dataclass(frozen=True)
class Basis:
    """An optimal simplex basis and the (rows, columns) of the LP it belongs to."""

    shape: tuple[int, int]
    highs: highspy.HighsBasis


@dataclass
class WindowSolution:
    """The optimal plan of a window: ``cost`` is the spec's cost (safety penalty excluded)."""

    status: str
    cost: float  # EUR, sum of the spec's period costs over the window
    actions: np.ndarray  # [H, 6] (o, u_v, u_r, g, f, w)
    sales: np.ndarray  # [H] units
    stocks: np.ndarray  # [H, 5] end-of-period V, M, P, C, B
    shortfall: np.ndarray  # [H] units below the safety stock
    withheld: np.ndarray  # [H] units sold below min(P_{k-1}, B_{k-1} + d_k) (see OracleResult)
    basis: Basis | None = None  # the optimal basis, to warm-start a similar LP
    row_dual: np.ndarray | None = None  # [H, N_ROW] HiGHS row duals (d cost / d row bound), if asked for


@dataclass
class OracleResult:
    """The hindsight optimum of one scenario."""

    oracle_cost: float  # EUR, a lower bound on every policy's episode cost
    status: str
    plan: np.ndarray  # [T, 6] actions (o, u_v, u_r, g, f, w)
    sales: np.ndarray  # [T] units
    stocks: np.ndarray  # [T, 5] end-of-period V, M, P, C, B
    # [T] units the plan sells below what the simulator would sell, min(P, B + d). Where all
    # are ~0 the relaxation is tight and replaying the plan reproduces oracle_cost; where
    # not, the LP holds product back to time the cores' return (the spec's relaxation),
    # so oracle_cost is a strict lower bound that no policy reaches exactly.
    withheld: np.ndarray
    basis: Basis | None = None  # optimal basis (warm start for the next scenario)


# --- the sparse structure, built once per (H, L_v, L_r) ----------------------------------


@dataclass(frozen=True)
class _Term:
    """One coefficient of the matrix repeated over periods: row ``row`` of period ``k``,
    column ``col`` of period ``k - lag``, for every ``k >= lag``. ``lag`` is a number of
    periods or the name of a lag parameter (``lead_virgin``, ``lag_return``)."""

    row: int
    col: int
    lag: int | str
    coef: str  # name of the coefficient (see _coefficient_table)


# Why a term table rather than scipy.sparse algebra: the pattern is fixed for a given
# window length, so its CSC order is computed once and every solve only gathers a value
# vector from a small per-period coefficient table (one fancy index per LP).
_TERMS: tuple[_Term, ...] = (
    # V_k = V_{k-1} + o_{k-L_v} + (pipeline arrivals)_k - u_v
    _Term(ROW_V, V, 0, "one"), _Term(ROW_V, V, 1, "minus_one"), _Term(ROW_V, UV, 0, "one"),
    _Term(ROW_V, O, "lead_virgin", "minus_one"),
    # M^-_k = M_{k-1} - u_r, with M_{k-1} = M^-_{k-1} + eta_d m g_{k-1}
    _Term(ROW_M, M_LEFT, 0, "one"), _Term(ROW_M, UR, 0, "one"), _Term(ROW_M, M_LEFT, 1, "minus_one"),
    _Term(ROW_M, G, 1, "minus_recovered_per_core"),
    # P^-_k = P_{k-1} - s, with P_{k-1} = P^-_{k-1} + (u_v + u_r)_{k-1}/m + eta_f f_{k-1}
    _Term(ROW_P, P_LEFT, 0, "one"), _Term(ROW_P, S, 0, "one"), _Term(ROW_P, P_LEFT, 1, "minus_one"),
    _Term(ROW_P, UV, 1, "minus_per_kg"), _Term(ROW_P, UR, 1, "minus_per_kg"),
    _Term(ROW_P, F, 1, "minus_refurbish_yield"),
    # C_k = C_{k-1} + returns_k - g - f - w; returns_k include rho_k s_{k-L_r}
    _Term(ROW_C, C, 0, "one"), _Term(ROW_C, C, 1, "minus_one"), _Term(ROW_C, G, 0, "one"),
    _Term(ROW_C, F, 0, "one"), _Term(ROW_C, W, 0, "one"), _Term(ROW_C, S, "lag_return", "minus_return_frac"),
    # B_k = B_{k-1} + d_k - s
    _Term(ROW_B, B, 0, "one"), _Term(ROW_B, B, 1, "minus_one"), _Term(ROW_B, S, 0, "one"),
    # rows 3, 6, 7, 8 of the spec
    _Term(ROW_PRODUCE, UV, 0, "one"), _Term(ROW_PRODUCE, UR, 0, "one"),
    _Term(ROW_MANDATE, UV, 0, "mandate"), _Term(ROW_MANDATE, UR, 0, "mandate_minus_one"),
    _Term(ROW_EMISSIONS, O, 0, "emis_virgin"), _Term(ROW_EMISSIONS, UV, 0, "emis_per_kg"),
    _Term(ROW_EMISSIONS, UR, 0, "emis_per_kg"), _Term(ROW_EMISSIONS, G, 0, "emis_per_core"),
    _Term(ROW_RECOVERY, G, 0, "recovery_minus_one"), _Term(ROW_RECOVERY, F, 0, "recovery_minus_one"),
    _Term(ROW_RECOVERY, W, 0, "recovery"),
    # safety stock: P_{k-1} - B_{k-1} + e_k >= d_k + safety stock
    _Term(ROW_SAFETY, P_LEFT, 1, "one"), _Term(ROW_SAFETY, UV, 1, "per_kg"), _Term(ROW_SAFETY, UR, 1, "per_kg"),
    _Term(ROW_SAFETY, F, 1, "refurbish_yield"), _Term(ROW_SAFETY, B, 1, "minus_one"), _Term(ROW_SAFETY, E, 0, "one"),
    # virgin buffer: V_k + e_V >= buffer
    _Term(ROW_VIRGIN_BUFFER, V, 0, "one"), _Term(ROW_VIRGIN_BUFFER, EV, 0, "one"),
)


# Coefficients of the matrix: one row of the per-period coefficient table each.
_COEFS: tuple[str, ...] = tuple(dict.fromkeys(term.coef for term in _TERMS))


@dataclass(frozen=True)
class _Pattern:
    """CSC pattern of the window LP: every term's entries, sorted by (column, row)."""

    rows: np.ndarray  # [nnz] int32 row index, CSC order
    cols: np.ndarray  # [nnz] column index, CSC order
    coef: np.ndarray  # [nnz] row of the coefficient table
    period: np.ndarray  # [nnz] column of the coefficient table (the row's period k)


@lru_cache(maxsize=64)
def _pattern(horizon: int, lead_virgin: int, lag_return: int) -> _Pattern:
    lags = {"lead_virgin": lead_virgin, "lag_return": lag_return}
    rows, cols, coef, period = [], [], [], []
    for term in _TERMS:
        lag = lags[term.lag] if isinstance(term.lag, str) else term.lag
        k = np.arange(lag, horizon)
        rows.append(k * N_ROW + term.row)
        cols.append((k - lag) * N_COL + term.col)
        coef.append(np.full(k.size, _COEFS.index(term.coef)))
        period.append(k)
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((rows_all, cols_all))
    return _Pattern(rows_all[order].astype(np.int32), cols_all[order], np.concatenate(coef)[order],
                    np.concatenate(period)[order])


# --- one window: values, bounds, solve -----------------------------------------------------


def _coefficient_table(params: Params, window: Window) -> np.ndarray:
    """``[len(_COEFS), H]``: each matrix coefficient in each period."""
    p, regime = params, window.regime
    r, kappa = regime[:, R_MANDATE], regime[:, R_RECOVERY]
    values = {
        "one": 1.0, "minus_one": -1.0,
        "minus_recovered_per_core": -p.yield_disassembly * p.mass,
        "minus_per_kg": -1.0 / p.mass, "per_kg": 1.0 / p.mass,
        "minus_refurbish_yield": -p.yield_refurbish, "refurbish_yield": p.yield_refurbish,
        "minus_return_frac": -window.return_frac,
        "mandate": r, "mandate_minus_one": r - 1.0,
        "emis_virgin": p.emis_virgin, "emis_per_kg": p.emis_produce / p.mass,
        "emis_per_core": p.emis_recycle * p.yield_disassembly * p.mass,
        "recovery_minus_one": kappa - 1.0, "recovery": kappa,
    }
    table = np.empty((len(_COEFS), window.horizon))
    for i, name in enumerate(_COEFS):
        table[i] = values[name]
    return table


@dataclass
class WindowLP:
    """The window's LP, ``min cost·x  s.t.  row_lower <= A x <= row_upper,  col_lower <= x
    <= col_upper``, with ``A`` column-wise (CSC: ``start``, ``index``, ``value``)."""

    cost: np.ndarray
    col_lower: np.ndarray
    col_upper: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    start: np.ndarray  # [columns + 1] int32
    index: np.ndarray  # [nnz] int32 row of each entry
    value: np.ndarray  # [nnz]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of ``A``."""
        return self.row_lower.size, self.cost.size

    def pass_to(self, highs: highspy.Highs) -> None:
        # The array overload of passModel: filling a HighsLp object field by field costs
        # ~0.4 ms of conversions, more than the model takes to pass. The integrality
        # argument it requires is all "continuous", so HiGHS still solves an LP.
        rows, cols = self.shape
        highs.passModel(cols, rows, self.value.size, int(highspy.MatrixFormat.kColwise),
                        int(highspy.ObjSense.kMinimize), 0.0, self.cost, self.col_lower, self.col_upper,
                        self.row_lower, self.row_upper, self.start, self.index, self.value,
                        np.zeros(cols, dtype=np.int32))


def build_lp(params: Params, window: Window) -> WindowLP:
    """The window's LP (column-wise sparse matrix, minimisation)."""
    _check_window(params, window)
    p, H = params, window.horizon
    pattern = _pattern(H, p.lead_virgin, p.lag_return)
    values = _coefficient_table(p, window)[pattern.coef, pattern.period]
    # Exact zeros (mandate r = 0, kappa = 0, rho = 0) are dropped: HiGHS would warn about them.
    keep = values != 0.0
    values, rows, cols = values[keep], pattern.rows[keep], pattern.cols[keep]
    n_col = H * N_COL
    starts = np.zeros(n_col + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=n_col), out=starts[1:])

    regime = window.regime
    cost = np.empty((H, N_COL))
    cost[:, O] = p.cost_virgin + regime[:, R_TAX] * p.emis_virgin / 1000.0
    # Holding of the end-of-period M and P, charged through what makes them up.
    cost[:, UV] = cost[:, UR] = (p.cost_produce + p.hold_product) / p.mass
    cost[:, G] = p.cost_disassemble + p.hold_recycled * p.yield_disassembly * p.mass
    cost[:, F] = p.cost_refurbish + p.hold_product * p.yield_refurbish
    cost[:, W] = p.cost_dispose + regime[:, R_LANDFILL]
    cost[:, S] = 0.0
    cost[:, V:B + 1] = (p.hold_virgin, p.hold_recycled, p.hold_product, p.hold_core, p.backlog_cost)
    cost[:, E] = window.safety_penalty
    cost[:, EV] = window.virgin_buffer_penalty

    col_lower = np.zeros((H, N_COL))
    col_upper = np.full((H, N_COL), INF)
    col_upper[:, O], col_upper[:, G], col_upper[:, F], col_upper[:, W] = (
        p.cap_order, p.cap_disassemble, p.cap_refurbish, p.cap_dispose)
    col_upper[0, E] = 0.0
    if window.safety_stock <= 0:
        col_upper[:, E] = 0.0
    col_upper[: p.lead_virgin, EV] = 0.0
    if window.virgin_buffer <= 0:
        col_upper[:, EV] = 0.0

    # Balance rows: stock_k - stock_{k-1} + outflow - inflow = exogenous inflow (for M and P
    # the stocks left before the end-of-period inflow); the window's opening stocks enter
    # the right-hand side of period 0.
    V0, M0, P0, C0, B0 = (float(x) for x in window.stocks)
    row_lower = np.full((H, N_ROW), -INF)
    row_upper = np.zeros((H, N_ROW))
    balance = np.zeros((H, 5))
    balance[:, 0] = window.virgin_arrivals
    balance[:, 3] = window.core_returns
    balance[:, 4] = window.demand
    balance[0] += (V0, M0, P0, C0, B0)
    row_lower[:, ROW_V:ROW_B + 1] = row_upper[:, ROW_V:ROW_B + 1] = balance
    row_upper[:, ROW_PRODUCE] = p.mass * p.cap_produce
    row_upper[:, ROW_EMISSIONS] = np.where(np.isfinite(regime[:, R_CAP]), regime[:, R_CAP], INF)
    row_upper[:, ROW_SAFETY] = row_upper[:, ROW_VIRGIN_BUFFER] = INF
    if window.safety_stock > 0:
        # Period 0's sales come from stock already on hand: nothing decided now changes them.
        row_lower[1:, ROW_SAFETY] = window.demand[1:] + window.safety_stock
    if window.virgin_buffer > 0:
        # Before L_v only the pipeline refills V; an order placed now arrives at L_v.
        row_lower[p.lead_virgin:, ROW_VIRGIN_BUFFER] = window.virgin_buffer

    return WindowLP(cost.ravel(), col_lower.ravel(), col_upper.ravel(), row_lower.ravel(), row_upper.ravel(),
                    starts, rows, values)


def solve_window(params: Params, window: Window, start: Basis | None = None,
                 exact_sales: bool = False, duals: bool = False) -> WindowSolution:
    """Solve the window LP; raises :class:`OracleError` unless HiGHS reports optimal.

    ``start``: the optimal basis of an earlier LP (``WindowSolution.basis``) to start the
    simplex from (ignored unless the LP has the same size): a few dozen iterations instead
    of hundreds when only the data changed. The optimum is the same; where it is not
    unique the plan may differ, so callers pass a basis that depends only on their own
    inputs, to stay reproducible.

    ``exact_sales`` replaces the spec's sales relaxation by the simulator's rule
    ``s_k = min(P_{k-1}, B_{k-1} + d_k)`` (a MIP with one binary per period, see
    :func:`_add_exact_sales`): the best cost of a plan that is executed as planned, at
    ~0.1 s per 52-period scenario instead of ~5 ms. Not the spec's oracle.

    ``duals``: also return the row duals (``WindowSolution.row_dual``, LP only), for
    :func:`shadow_prices`.
    """
    highs = _solver()
    lp = build_lp(params, window)
    lp.pass_to(highs)
    basis = start if start is not None and not exact_sales and start.shape == lp.shape else None
    if basis is not None:
        highs.setBasis(basis.highs)
    if exact_sales:
        _add_exact_sales(highs, params, window)
    try:
        highs.run()
        status = highs.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal and basis is not None:
            lp.pass_to(highs)  # a stale basis should never matter; retry cold to be sure
            highs.run()
            status = highs.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal and not exact_sales:
            status = rerun_with_presolve(highs)
    finally:
        if exact_sales:
            highs.setOptionValue("presolve", "off")
    if status != highspy.HighsModelStatus.kOptimal:
        raise OracleError(
            f"HiGHS did not solve the {window.horizon}-period LP to optimality: status "
            f"{highs.modelStatusToString(status)!r}: {UNSOLVED}")
    H = window.horizon
    x = np.asarray(highs.getSolution().col_value)[: H * N_COL].reshape(H, N_COL)
    objective = highs.getInfo().objective_function_value
    penalties = window.safety_penalty * x[:, E].sum() + window.virgin_buffer_penalty * x[:, EV].sum()
    actions = x[:, ACTION_COLS].copy()
    stocks = _end_of_period_stocks(params, x)
    # What the simulator would sell from the plan's stocks, min(P_{k-1}, B_{k-1} + d_k).
    before = np.vstack([window.stocks, stocks[:-1]])
    sellable = np.minimum(before[:, 2], before[:, 4] + window.demand)
    return WindowSolution(
        status="optimal", cost=float(objective - penalties), actions=actions, sales=x[:, S].copy(),
        stocks=stocks, shortfall=x[:, E].copy(), withheld=np.maximum(sellable - x[:, S], 0.0),
        basis=None if exact_sales else Basis(lp.shape, highs.getBasis()),
        row_dual=(np.asarray(highs.getSolution().row_dual)[: H * N_ROW].reshape(H, N_ROW).copy()
                  if duals and not exact_sales else None),
    )


def _end_of_period_stocks(params: Params, x: np.ndarray) -> np.ndarray:
    """``[H, 5]`` V, M, P, C, B at the end of each period, from the LP's columns."""
    p = params
    recycled = x[:, M_LEFT] + p.yield_disassembly * p.mass * x[:, G]
    product = x[:, P_LEFT] + (x[:, UV] + x[:, UR]) / p.mass + p.yield_refurbish * x[:, F]
    return np.stack([x[:, V], recycled, product, x[:, C], x[:, B]], axis=1)


def _add_exact_sales(highs: highspy.Highs, params: Params, window: Window) -> None:
    """Make sales the simulator's ``s_k = min(P_{k-1}, B_{k-1} + d_k)``: given the
    relaxation, that says that no product is left after sales while backlog remains,
    ``P^-_k = 0`` or ``B_k = 0``; with a binary ``z_k`` (big-M),
    ``P^-_k <= M_k z_k`` and ``B_k <= M_k (1 - z_k)``. ``M_k`` bounds both: product can grow
    by at most ``K_p + eta_f K_f`` units a period, backlog by the demand."""
    p, H = params, window.horizon
    k = np.arange(H)
    big = np.maximum(window.stocks[2] + (k + 1) * (p.cap_produce + p.yield_refurbish * p.cap_refurbish),
                     window.stocks[4] + np.cumsum(window.demand)) + 1.0
    first_binary = H * N_COL
    binary = first_binary + k
    highs.addCols(H, np.zeros(H), np.zeros(H), np.ones(H), 0, np.array([], np.int32), np.array([], np.int32),
                  np.array([]))
    highs.changeColsIntegrality(H, binary.astype(np.int32), np.full(H, highspy.HighsVarType.kInteger))
    # Rows [P^-_k - M_k z_k <= 0] then [B_k + M_k z_k <= M_k], two entries each.
    index = np.stack([np.concatenate([k * N_COL + P_LEFT, k * N_COL + B]), np.concatenate([binary, binary])], axis=1)
    value = np.stack([np.ones(2 * H), np.concatenate([-big, big])], axis=1)
    highs.addRows(2 * H, np.full(2 * H, -INF), np.concatenate([np.zeros(H), big]), 4 * H,
                  np.arange(0, 4 * H, 2, dtype=np.int32), index.ravel().astype(np.int32), value.ravel())
    highs.setOptionValue("presolve", "on")  # the MIP search needs it; restored after the solve
    highs.setOptionValue("mip_rel_gap", 1e-7)  # the default 1e-4 would make it no lower bound


def _check_window(params: Params, window: Window) -> None:
    H = window.horizon
    if H < 1:
        raise ValueError(f"window.demand: expected a 1-d series of at least one period, "
                         f"got shape {list(window.demand.shape)}")
    shapes = {"stocks": (5,), "virgin_arrivals": (H,), "core_returns": (H,), "return_frac": (H,),
              "demand": (H,), "regime": (H, 5)}
    for name, shape in shapes.items():
        value = getattr(window, name)
        if np.shape(value) != shape:
            raise ValueError(f"window.{name}: expected shape {list(shape)}, got {list(np.shape(value))}")
        finite = np.isfinite(value) if name != "regime" else np.isfinite(np.delete(value, R_CAP, axis=1))
        if not finite.all():
            raise ValueError(f"window.{name}: must be finite")
    if (window.stocks < 0).any():
        raise ValueError(f"window.stocks={window.stocks.tolist()}: stocks must be >= 0")


# HiGHS prints its banner from the C++ constructor, before any option can be set; it goes
# to file descriptor 1, where it would corrupt e.g. `moca oracle --json`. So the (one per
# thread) solver is constructed with fd 1 pointed at /dev/null for that moment.
_local = threading.local()


def _solver() -> highspy.Highs:
    highs = getattr(_local, "highs", None)
    if highs is None:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                highs = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("threads", 1)
        # Measured: presolve costs more than it saves on these small, sparse LPs (2-8x
        # slower on the 13-period MPC window, ~20% slower on the 52-period oracle).
        highs.setOptionValue("presolve", "off")
        # HiGHS drops matrix entries at or below small_matrix_value (default 1e-9) when a
        # model is passed: a mandate r below it (any r in [0, 0.95] is a valid regime) would
        # vanish from the mandate rows and the plan would break them when replayed (a
        # property test found r = 8.7e-10). 1e-12 is the smallest value HiGHS accepts;
        # below it r times any usage stays under the violation tolerance.
        highs.setOptionValue("small_matrix_value", 1e-12)
        _local.highs = highs
    return highs


def rerun_with_presolve(highs: highspy.Highs) -> highspy.HighsModelStatus:
    """Solve the model passed to ``highs`` again from scratch with presolve, after a run
    without it did not reach optimal, and return the new status.

    HiGHS's simplex without presolve can stop with status 'Unknown' on a badly scaled LP: a
    property test found a mandate r = 6e-8 (a valid regime) with every stock empty, where
    presolve removes what makes it so and solves it. Only as a retry, because presolve is
    slower on the LPs that solve without it (see :func:`_solver`)."""
    highs.clearSolver()
    highs.setOptionValue("presolve", "on")
    try:
        highs.run()
    finally:
        highs.setOptionValue("presolve", "off")
    return highs.getModelStatus()


# --- the hindsight oracle --------------------------------------------------------------------


def episode_window(scenario: Scenario) -> Window:
    """The whole episode of ``scenario`` as a window from the spec's initial state."""
    p, T = scenario.params, scenario.horizon
    arrivals = np.zeros(T)
    arrivals[: p.lead_virgin] = p.init_pipeline
    returns = np.zeros(T)
    lag = min(p.lag_return, T)
    returns[:lag] = scenario.return_frac[:lag] * p.init_sales
    return Window(
        stocks=np.array([p.init_virgin, p.init_recycled, p.init_product, p.init_core, p.init_backlog], float),
        virgin_arrivals=arrivals, core_returns=returns, return_frac=scenario.return_frac.copy(),
        demand=scenario.demand.copy(), regime=scenario.regime_table(),
    )


def solve_oracle(scenario: Scenario, exact_sales: bool = False,
                 start: Basis | None = None) -> OracleResult:
    """The hindsight optimum of ``scenario`` (its regime schedule included); raises
    :class:`OracleError` if HiGHS does not report optimal. ``exact_sales``, ``start``: see
    :func:`solve_window` (``exact_sales`` is not the spec's oracle: a tighter bound whose
    plan replays exactly)."""
    if not isinstance(scenario, Scenario):
        other = " (a CLSC-2 scenario: moca.oracle2.solve_oracle2)" if type(scenario).__name__ == "Scenario2" else ""
        raise TypeError(f"scenario: expected a CLSC-1 moca.scenario.Scenario, got {type(scenario).__name__}{other}")
    solution = solve_window(scenario.params, episode_window(scenario), start=start, exact_sales=exact_sales)
    return OracleResult(oracle_cost=solution.cost, status=solution.status, plan=solution.actions,
                        sales=solution.sales, stocks=solution.stocks, withheld=solution.withheld,
                        basis=solution.basis)


def oracle_costs(scenarios: Sequence[Scenario]) -> np.ndarray:
    """``[N]`` oracle costs (EUR), one LP per scenario, each warm-started from the
    optimal basis of the previous one (same costs as cold solves, about twice as fast)."""
    costs, basis = np.empty(len(scenarios)), None
    for i, scenario in enumerate(scenarios):
        result = solve_oracle(scenario, start=basis)
        costs[i], basis = result.oracle_cost, result.basis
    return costs


# --- shadow prices of the rules ------------------------------------------------------------


@dataclass
class ShadowPrices:
    """What tightening each rule by one unit would add to the oracle cost (EUR per unit of
    the field; see :func:`shadow_prices`)."""

    oracle_cost: float  # EUR
    prices: dict[str, float | None]  # field -> EUR per unit of the field (None: rule not in force)
    result: OracleResult


#: The share rules whose loosest value, 0, is a kink of the oracle cost: their row is slack
#: there and its dual 0 (the slope of loosening, which cannot go on), while tightening costs
#: money. There the price is the oracle cost's one-sided difference over ``KINK_STEP`` (one
#: more solve); ``moca sweep`` reported 0 at the first value of every such sweep.
KINKED_AT_ZERO = {"recycled_content_min": R_MANDATE, "recovery_target": R_RECOVERY}
#: The rules' largest values: a step beyond them is no regime.
_KINK_TOP = {name: RULE_BOUNDS[name][1] for name in KINKED_AT_ZERO}
KINK_STEP = 1e-4


def shadow_prices(scenario: Scenario, fields: Sequence[str] | None = None) -> ShadowPrices:
    """The marginal cost of tightening each rule of ``scenario``'s regime (``fields``:
    those to price, default all), from one HiGHS solve of the hindsight LP (cold start) and
    its duals, and one more for each share rule priced at 0 (below).

    By LP sensitivity (the envelope theorem), moving a rule's value by ``delta`` in every
    period changes the optimal cost by ``delta`` times:

    * ``recycled_content_min`` r (row 6, ``r u_v - (1-r) u_r <= 0``): ``-sum_k y_k (u_v + u_r)_k``
      with ``y_k <= 0`` the dual of period ``k``'s row: EUR per 1.0 of share (EUR per
      percentage point is a hundredth of it);
    * ``recovery_target`` kappa (row 8): ``-sum_k y_k (g + f + w)_k``, EUR per 1.0 of share;
    * ``emission_cap`` (row 7's bound): ``sum_k y_k`` per kg CO2/period; tightening is
      *lowering* the cap, so the price reported is ``-sum_k y_k`` (EUR per kg CO2/period
      less; None when no cap is in force);
    * ``carbon_tax`` and ``landfill_tax`` are prices in the objective, not rows: their
      derivative is the taxed quantity, ``sum_k e_v o_k / 1000`` (t CO2, i.e. EUR per EUR/t)
      and ``sum_k w_k`` (cores, EUR per EUR/core).

    Where the optimum sits on a kink (a rule just becoming binding, a degenerate basis) the
    cost is not differentiable and the duals give one of its one-sided slopes; at a share
    rule's 0 (:data:`KINKED_AT_ZERO`), the tightening one, by a difference.
    """
    window = episode_window(scenario)
    p = scenario.params
    solution = solve_window(p, window, duals=True)
    y, x, regime = solution.row_dual, solution.actions, window.regime
    use = x[:, UV] + x[:, UR]
    processed = x[:, G] + x[:, F] + x[:, W]
    capped = np.isfinite(regime[:, R_CAP])
    prices: dict[str, float | None] = {
        "recycled_content_min": float(-(y[:, ROW_MANDATE] * use).sum()),
        "carbon_tax": float(p.emis_virgin * x[:, O].sum() / 1000.0),
        "emission_cap": float(-y[capped, ROW_EMISSIONS].sum()) if capped.any() else None,
        "landfill_tax": float(x[:, W].sum()),
        "recovery_target": float(-(y[:, ROW_RECOVERY] * processed).sum()),
    }
    if fields is not None:
        prices = {k: v for k, v in prices.items() if k in fields}
    for name, column in KINKED_AT_ZERO.items():
        if name in prices and (regime[:, column] < KINK_STEP).any():
            if not (regime[:, column] + KINK_STEP <= _KINK_TOP[name]).all():
                # (some periods at 0, others at the top: no step moves them all, and the duals
                # count the periods at 0 as free; as shadow_prices2, no price)
                prices[name] = None
                continue
            tighter = regime.copy()
            tighter[:, column] += KINK_STEP
            prices[name] = (solve_window(p, replace(window, regime=tighter)).cost - solution.cost) / KINK_STEP
    prices = {k: None if v is None else v + 0.0 for k, v in prices.items()}  # (a slack row's -0.0 printed "-0")
    result = OracleResult(oracle_cost=solution.cost, status=solution.status, plan=solution.actions,
                          sales=solution.sales, stocks=solution.stocks, withheld=solution.withheld,
                          basis=solution.basis)
    return ShadowPrices(oracle_cost=solution.cost, prices=prices, result=result)
