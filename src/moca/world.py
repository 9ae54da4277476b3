"""The hard constraints of a world model, declared once as data.

A world model's rows are linear in the action ``a`` [n] and affine in the named
per-decision inputs ``x`` [k] (the stocks and counters the rows read, after the period's
arrivals), with coefficients that depend only on the regime in force and the parameters:

    G a <= h0 + J x        (every row, in its own units: kg, units, cores, kg CO2)
    a >= 0

The engines (the deployment and the differentiable projection, the violation count in
:mod:`moca.projection`; the hindsight LP reads the same coefficients through
:func:`RowModel.rows`) only ever see ``G, J, h0`` and which rows are on; nothing in them
knows what a row means. A model declares:

* its action names and capacity scales ``S`` (the projection is Euclidean in ``a / S``),
* its input names, and which of them are stocks (clamped at 0: a stock of ``-1e-13`` is
  round-off of the bookkeeping),
* ``coefficients(regime, params)``: the rows for a batch of regime rows, and
* ``safe_action(x, regime, params)``: a point that satisfies every row whenever every
  earlier action came through the safety layer (the projection keeps it feasible in
  its tightened system, and falls back to it);
* optionally ``settlement(a, x, regime)``: a check beyond the rows that a violation count
  includes (CLSC-2's settlement of the mandate at a window's end).

The spec's definition of a violation measures a row's excess against
``1e-6 * max(1, |right-hand side|)`` with the right-hand side *as the spec writes the
row*, which for CLSC-2's row 6a contains actions. So each row also declares that
right-hand side, ``R a + Rj x + r0``; for most rows it is just ``h0 + J x``.

Two models are declared here: CLSC-1 (``shared`` spec MODEL.md; its own hand-optimised
projection in :mod:`moca.safety` stays the one CLSC-1 runs, this declaration shows that
the generic engine agrees with it) and CLSC-2 (docs/MODEL-2.md), whose rows 6a and 6b
settle the recycled-content mandate over accounting windows (``periods_left`` is
:func:`moca.regime.window_periods_left`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np

from moca.clsc2 import emission_coefficients
from moca.regime import REGIME_FIELDS

#: A row is violated when broken by more than ``VIOLATION_TOL * max(1, |rhs|)``.
VIOLATION_TOL = 1e-6

# Columns of a regime row (REGIME_FIELDS order): only these three shape the rows; the
# carbon and landfill taxes are costs, the accounting window is an input (periods_left).
_R, _CAP, _KAPPA = 0, 2, 4


@dataclass
class RowCoefficients:
    """The rows of a batch of ``B`` decisions (numpy float64, batch first).

    ``G`` [B, m, n], ``J`` [B, m, k], ``h0`` [B, m]: the rows ``G a <= h0 + J x``.
    ``on`` [B, m] bool: rows that are off (no emission cap, no mandate) are not rows.
    ``R`` [B, m, n], ``Rj`` [B, m, k], ``r0`` [B, m]: each row's right-hand side as the
    spec writes it (for the violation tolerance only).
    """

    G: np.ndarray
    J: np.ndarray
    h0: np.ndarray
    on: np.ndarray
    R: np.ndarray
    Rj: np.ndarray
    r0: np.ndarray
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # the engines' derived data

    def take(self, index: Any) -> "RowCoefficients":
        return RowCoefficients(*(getattr(self, f)[index] for f in ("G", "J", "h0", "on", "R", "Rj", "r0")))


@dataclass(frozen=True)
class RowModel:
    """A world model's hard constraints, declared as data (see the module docstring)."""

    name: str
    actions: tuple[str, ...]  # action names, in the action vector's order
    inputs: tuple[str, ...]  # named per-decision inputs, in x's order
    stocks: tuple[str, ...]  # inputs clamped at 0
    row_labels: tuple[str, ...]  # m labels, the spec row first: "6a window deficit ..."
    row_spec: tuple[str, ...]  # m spec rows ("1", "2", ..., "6a", "6b", ...)
    lower_spec: tuple[str, ...]  # n: the spec row that says a_i >= 0
    scale: Callable[[Any], np.ndarray]  # params -> S [n]
    coefficients: Callable[[np.ndarray, Any], RowCoefficients]  # (regime [B, 5], params)
    safe_action: Callable[[np.ndarray, np.ndarray, Any], np.ndarray]  # (x [B, k], regime [B, 5], params) -> [B, n]
    # Checks beyond the rows that a violation count includes (CLSC-2: the window settlement):
    # (a [B, n], x [B, k], regime [B, 5]) -> (excess [B], tolerance [B]); -inf excess where none applies.
    settlement: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    # Spec rows whose excess the later decisions inherit (CLSC-2's window counters): every
    # executed action keeps them to half the 1e-6 kg every later period allows, since an excess
    # within the tolerance of a row on 0.8 M kg (1e-6 of it) is beyond it once M is used up
    # (moca.projection.CARRIED_TOL).
    carried: tuple[str, ...] = ()
    # Inputs with a range of their own, (low, high, whole number): a value outside it is not a
    # state of the model (CLSC-2: supply_up 0.5 halved the order capacity, market_avail 2
    # bought twice the market's capacity, with 0 violations counted).
    ranges: tuple[tuple[str, float, float, bool], ...] = ()  # (name, low, high, whole number)

    @cached_property
    def carried_rows(self) -> np.ndarray:
        """[m] bool: the rows of :attr:`carried`."""
        return np.array([spec in self.carried for spec in self.row_spec], dtype=bool)

    @cached_property
    def _stock_index(self) -> list[int]:
        return [self.inputs.index(name) for name in self.stocks]

    @property
    def spec_rows(self) -> tuple[str, ...]:
        """The spec's row names, in order, each once."""
        return tuple(dict.fromkeys(sorted(set(self.row_spec) | set(self.lower_spec), key=_row_order)))

    def input_array(self, inputs: Any, batch: int | None = None) -> np.ndarray:
        """The named inputs (a mapping, an object with those attributes, or an array
        [..., k]) as float64 ``[B, k]`` with the stocks clamped at 0; a missing, non-finite
        or wrongly shaped input raises a ``ValueError`` naming it."""
        if hasattr(inputs, "detach"):  # a torch tensor [B, k]
            inputs = inputs.detach().cpu().numpy()
        # One decision (the deployment path): plain floats. A one-row batch of a differentiable
        # rollout holds tensors: it takes the general path below, which detaches them.
        if isinstance(inputs, dict) and batch == 1 and not hasattr(next(iter(inputs.values()), None), "detach"):
            try:
                values = [float(inputs[name]) for name in self.inputs]
            except KeyError as err:
                raise ValueError(f"inputs.{err.args[0]} is missing ({self.name} rows read {', '.join(self.inputs)})") \
                    from None
            except (TypeError, ValueError):
                values = None
            if values is not None:
                x = np.array([values])
                if not np.isfinite(x).all():
                    name = self.inputs[int(np.argmin(np.isfinite(x[0])))]
                    raise ValueError(f"inputs.{name} is not finite: {inputs[name]}")
                for i in self._stock_index:
                    if x[0, i] < 0.0:
                        x[0, i] = 0.0
                return self._in_range(x)
        if isinstance(inputs, np.ndarray):
            x = np.array(inputs, dtype=np.float64).reshape(-1, len(self.inputs)) if inputs.ndim <= 2 else None
            if x is None or inputs.shape[-1] != len(self.inputs):
                raise ValueError(f"inputs: expected shape [B, {len(self.inputs)}] ({', '.join(self.inputs)}), "
                                 f"got {list(inputs.shape)}")
            columns = list(x.T)
        else:
            columns = []
            for name in self.inputs:
                value = inputs.get(name) if isinstance(inputs, dict) else getattr(inputs, name, None)
                if value is None:
                    raise ValueError(f"inputs.{name} is missing ({self.name} rows read {', '.join(self.inputs)})")
                if hasattr(value, "detach"):
                    value = value.detach().cpu().numpy()
                columns.append(np.asarray(value, dtype=np.float64).reshape(-1))
        size = batch if batch is not None else max(c.size for c in columns)
        out = np.empty((size, len(self.inputs)))
        for i, (name, column) in enumerate(zip(self.inputs, columns)):
            if column.size not in (1, size):
                raise ValueError(f"inputs.{name}: expected {size} values, got {column.size}")
            if not np.isfinite(column).all():
                raise ValueError(f"inputs.{name} is not finite: {column[~np.isfinite(column)][0]}")
            out[:, i] = column
        for name in self.stocks:
            i = self.inputs.index(name)
            np.maximum(out[:, i], 0.0, out=out[:, i])
        return self._in_range(out)

    @cached_property
    def _range_index(self) -> tuple[tuple[int, str, float, float, bool], ...]:
        return tuple((self.inputs.index(name), name, low, high, whole) for name, low, high, whole in self.ranges)

    def _in_range(self, x: np.ndarray) -> np.ndarray:
        """``x`` once each input of :attr:`ranges` is within its range, else a ``ValueError``."""
        if x.shape[0] == 1:  # one decision: plain floats (numpy's per-call cost was ~30 us of a CLSC-2 decision)
            row = x[0].tolist()
            if all(low <= row[i] <= high and (not whole or row[i] == int(row[i]))
                   for i, _, low, high, whole in self._range_index):
                return x
        for i, name, low, high, whole in self._range_index:
            column = x[:, i]
            bad = (column < low) | (column > high) | ((column != np.round(column)) if whole else False)
            if np.any(bad):
                kind = "a whole number" if whole else "a number"
                raise ValueError(f"inputs.{name}: {column[bad][0]:g} is not {kind} in [{low:g}, {high:g}]")
        return x


def _row_order(label: str) -> tuple[int, str]:
    digits = "".join(ch for ch in label if ch.isdigit())
    return int(digits or 0), label


def regime_rows(regime: Any, batch: int | None = None) -> np.ndarray:
    """Regime(s) as float64 rows ``[B, 5]`` in ``REGIME_FIELDS`` order (cap inf = none; a cap
    given as None is none too, as :meth:`moca.regime.Regime.from_row` reads it):
    a :class:`moca.regime.Regime`, a row [5] (or longer: extra fields are ignored here), a
    table [B, >=5], or a torch tensor of either. Out-of-range rules raise ``ValueError``."""
    given = regime
    if type(regime) is np.ndarray and regime.shape == (5,) and (batch is None or batch == 1):  # the hot path
        table = regime[None].astype(np.float64)
    elif hasattr(regime, "as_row"):
        table = np.asarray(regime.as_row(), dtype=np.float64)[None, :5]
    else:
        if hasattr(regime, "detach"):
            regime = regime.detach().cpu().numpy()
        try:
            table = np.asarray(regime, dtype=np.float64)
        except (TypeError, ValueError):  # (a name: numpy's "could not convert string to float: 'T1'")
            raise ValueError(f"regime: expected a Regime or a row of 5 numbers (r, tau, cap, lambda, kappa), got "
                             f"{type(regime).__name__} {regime!r:.40}") from None
        if table.ndim == 1:
            table = table[None]
        if table.ndim != 2 or table.shape[1] < 5:
            raise ValueError(f"regime: expected a row of 5 fields (r, tau, cap, lambda, kappa) or a table [B, 5], "
                             f"got shape {list(table.shape)}")
        table = table[:, :5]
    if batch is not None and table.shape[0] == 1 and batch != 1:
        table = np.broadcast_to(table, (batch, 5))
    if batch is not None and table.shape[0] != batch:
        raise ValueError(f"regime: expected {batch} rows, got {table.shape[0]}")
    r, tax, cap, landfill, kappa = table.T
    for name, values, ok in (("recycled_content_min", r, (r >= 0) & (r <= 1)),
                             ("recovery_target", kappa, (kappa >= 0) & (kappa <= 1)),
                             ("emission_cap", cap, cap > 0),
                             # (a NaN tax made every cost NaN, without a word)
                             ("carbon_tax", tax, (tax >= 0) & (tax < math.inf)),
                             ("landfill_tax", landfill, (landfill >= 0) & (landfill < math.inf))):
        if not ok.all():
            none = regime_row_nones(given, table.shape)
            if none is not None and none.any():  # (rare: only once a check failed)
                return regime_rows(none_caps_as_no_cap(table, none, ValueError), batch)
            raise ValueError(f"regime {name}={values[~ok][0]} is outside its valid range")
    return table


def regime_row_nones(given: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """Where a regime row or table given as a list (or an object array) holds None, as bool
    ``shape`` (the converted table's: ``[B, 5]``, or ``[5]`` for one row); None for any
    other input. numpy's float conversion reads None as NaN, so the row checks call this
    once a value failed, to tell a None the user wrote from a NaN."""
    if isinstance(given, (str, bytes)) or hasattr(given, "detach") or hasattr(given, "as_row") \
            or (isinstance(given, np.ndarray) and given.dtype != object):
        return None
    try:
        cells = np.asarray(given, dtype=object)
    except (TypeError, ValueError):
        return None
    if cells.ndim not in (1, 2):
        return None
    is_none = np.frompyfunc(lambda v: v is None, 1, 1)(cells).astype(bool)[..., :shape[-1]]
    try:
        return np.broadcast_to(is_none, shape)
    except ValueError:
        return None


def none_caps_as_no_cap(table: np.ndarray, none: np.ndarray, error: type[Exception]) -> np.ndarray:
    """``table`` (float64 regime rows ``[B, 5]`` or one row ``[5]``) with each emission cap
    given as None read as no cap (inf), as :meth:`moca.regime.Regime.from_row` and
    :meth:`~moca.regime.Regime.as_row` read it; a None in another field raises ``error``
    naming that field (its value is not a number, not the NaN numpy made of it)."""
    other = none.copy()
    other[..., 2] = False
    if other.any():
        column = int(np.argwhere(other)[0][-1])
        raise error(f"regime {REGIME_FIELDS[column]}=None is not a number (only emission_cap may be None: no cap)")
    return np.where(none, math.inf, table)


# --- CLSC-1 (MODEL.md) --------------------------------------------------------------------
CLSC1_ACTIONS = ("order", "use_virgin", "use_recycled", "disassemble", "refurbish", "dispose")
CLSC1_INPUTS = ("virgin", "recycled", "cores")


def _clsc1_coefficients(regime: np.ndarray, p: Any) -> RowCoefficients:
    B = regime.shape[0]
    r, cap, kappa = regime[:, _R], regime[:, _CAP], regime[:, _KAPPA]
    O, UV, UR, G_, F, W = range(6)
    V, M, C = range(3)
    G, J, h0 = np.zeros((B, 11, 6)), np.zeros((B, 11, 3)), np.zeros((B, 11))
    G[:, 0, O] = 1.0; h0[:, 0] = p.cap_order                                   # 1
    G[:, 1, UV] = 1.0; J[:, 1, V] = 1.0                                        # 2
    G[:, 2, UR] = 1.0; J[:, 2, M] = 1.0                                        # 2
    G[:, 3, [UV, UR]] = 1.0; h0[:, 3] = p.mass * p.cap_produce                 # 3
    G[:, 4, G_] = 1.0; h0[:, 4] = p.cap_disassemble                            # 4
    G[:, 5, F] = 1.0; h0[:, 5] = p.cap_refurbish                               # 4
    G[:, 6, W] = 1.0; h0[:, 6] = p.cap_dispose                                 # 4
    G[:, 7, [G_, F, W]] = 1.0; J[:, 7, C] = 1.0                                # 5
    G[:, 8, UV] = r; G[:, 8, UR] = -(1.0 - r)                                  # 6: r(u_v+u_r) - u_r <= 0
    G[:, 9, O] = p.emis_virgin                                                 # 7
    G[:, 9, [UV, UR]] = p.emis_produce / p.mass
    G[:, 9, G_] = p.emis_recycle * p.yield_disassembly * p.mass
    h0[:, 9] = np.where(np.isfinite(cap), cap, 0.0)
    G[:, 10, [G_, F]] = -(1.0 - kappa[:, None]); G[:, 10, W] = kappa           # 8: kappa(g+f+w) - (g+f) <= 0
    on = np.ones((B, 11), dtype=bool)  # rows 6 and 8 stay rows at r = 0, kappa = 0 (u_r >= 0, g + f >= 0)
    on[:, 9] = np.isfinite(cap)
    return RowCoefficients(G, J, h0, on, np.zeros_like(G), J.copy(), h0.copy())


CLSC1_ROWS = RowModel(
    name="CLSC-1",
    actions=CLSC1_ACTIONS,
    inputs=CLSC1_INPUTS,
    stocks=CLSC1_INPUTS,
    row_labels=("1 order capacity", "2 virgin on hand", "2 recycled on hand", "3 production capacity",
                "4 disassembly capacity", "4 refurbish capacity", "4 disposal capacity", "5 cores on hand",
                "6 recycled-content mandate", "7 emission cap", "8 recovery target"),
    row_spec=("1", "2", "2", "3", "4", "4", "4", "5", "6", "7", "8"),
    lower_spec=("1", "2", "2", "4", "4", "4"),
    scale=lambda p: np.asarray(p.action_scale, dtype=np.float64),
    coefficients=_clsc1_coefficients,
    safe_action=lambda x, regime, p: np.zeros((x.shape[0], 6)),  # the zero action (MODEL.md)
)


# --- CLSC-2 (MODEL-2.md) ------------------------------------------------------------------
CLSC2_ACTIONS = ("order", "buy_recycled", "use_virgin", "use_recycled", "refurbish", "disassemble_a",
                 "disassemble_b", "dispose_a", "dispose_b")
CLSC2_INPUTS = ("virgin", "recycled", "cores_a", "cores_b", "used_virgin", "used_recycled", "periods_left",
                "supply_up", "market_avail")
# action and input columns
O2, OM, UV2, UR2, F2, GA, GB, WA, WB = range(9)
X_V, X_M, X_CA, X_CB, X_UV, X_UR, X_N, X_UP, X_A = range(9)


def max_recycled_use(regime: np.ndarray, p: Any) -> np.ndarray:
    """``Ū`` [B] (kg): the most recycled material one period can use, ``m K_p``, or
    ``min(m K_p, m Ē / e_p)`` under an emission cap ``Ē`` (production alone emits
    ``e_p / m`` per kg used)."""
    mk = p.mass * p.cap_produce
    cap = regime[:, _CAP]
    if p.emis_produce <= 0:
        return np.full(cap.shape, mk)
    # A cap near 1e308 kg CO2 overflows m Ē to inf: no bound, as such a cap means.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(np.isfinite(cap), np.minimum(mk, p.mass * cap / p.emis_produce), mk)


def _clsc2_coefficients(regime: np.ndarray, p: Any) -> RowCoefficients:
    B = regime.shape[0]
    r, cap, kappa = regime[:, _R], regime[:, _CAP], regime[:, _KAPPA]
    m = 14
    G, J, h0 = np.zeros((B, m, 9)), np.zeros((B, m, 9)), np.zeros((B, m))
    R, Rj = np.zeros((B, m, 9)), np.zeros((B, m, 9))
    recovered_a, recovered_b = p.mass * p.yield_disassembly_a, p.mass * p.yield_disassembly_b
    G[:, 0, O2] = 1.0; J[:, 0, X_UP] = p.cap_order                             # 1  o <= K_o up
    G[:, 1, OM] = 1.0; J[:, 1, X_A] = p.cap_market                             # 1  o_m <= K_m a
    G[:, 2, UV2] = 1.0; J[:, 2, X_V] = 1.0                                     # 2  u_v <= V
    G[:, 3, UR2] = 1.0; J[:, 3, X_M] = 1.0                                     # 2  u_r <= M
    G[:, 4, [UV2, UR2]] = 1.0; h0[:, 4] = p.mass * p.cap_produce              # 3
    G[:, 5, F2] = 1.0; h0[:, 5] = p.cap_refurbish                              # 4
    G[:, 6, [GA, GB]] = 1.0; h0[:, 6] = p.cap_disassemble                      # 4
    G[:, 7, [WA, WB]] = 1.0; h0[:, 7] = p.cap_dispose                          # 4
    G[:, 8, [F2, GA, WA]] = 1.0; J[:, 8, X_CA] = 1.0                           # 5
    G[:, 9, [GB, WB]] = 1.0; J[:, 9, X_CB] = 1.0                               # 5
    # 6a: r(U_v + u_v) - (1-r) U_r <= (1-r)(M + m(eta_A g_A + eta_B g_B) + o_m)
    q = 1.0 - r
    G[:, 10, UV2] = r
    G[:, 10, OM] = -q
    G[:, 10, GA] = -q * recovered_a
    G[:, 10, GB] = -q * recovered_b
    J[:, 10, X_M] = q; J[:, 10, X_UV] = -r; J[:, 10, X_UR] = q
    R[:, 10, OM] = q; R[:, 10, GA] = q * recovered_a; R[:, 10, GB] = q * recovered_b
    Rj[:, 10, X_M] = q
    # 6b: r(U_v + u_v) - (1-r)(U_r + u_r) <= (1-r) Ū n_t
    G[:, 11, UV2] = r
    G[:, 11, UR2] = -q
    J[:, 11, X_N] = q * max_recycled_use(regime, p); J[:, 11, X_UV] = -r; J[:, 11, X_UR] = q
    Rj[:, 11, X_N] = J[:, 11, X_N]
    # 7: emissions <= cap
    G[:, 12] = emission_coefficients(p)
    h0[:, 12] = np.where(np.isfinite(cap), cap, 0.0)
    # 8: kappa (f + g_A + g_B + w_A + w_B) - (f + g_A + g_B) <= 0
    G[:, 13, [F2, GA, GB]] = -(1.0 - kappa[:, None])
    G[:, 13, [WA, WB]] = kappa[:, None]
    on = np.ones((B, m), dtype=bool)
    on[:, 10] = on[:, 11] = r > 0
    on[:, 12] = np.isfinite(cap)  # row 8 stays a row at kappa = 0 (f + g_A + g_B >= 0)
    # right-hand sides as the spec writes them: h0 + J x except for 6a and 6b
    r0 = h0.copy()
    for row in (0, 1, 2, 3, 8, 9):
        Rj[:, row] = J[:, row]
    return RowCoefficients(G, J, h0, on, R, Rj, r0)


def clsc2_safe_action(x: np.ndarray, regime: np.ndarray, p: Any) -> np.ndarray:
    """``(0, 0, 0, min(M, Ū), 0, ..., 0)``: feasible whenever every earlier action of the
    window came through the safety layer (docs/MODEL-2-PROOFS.md)."""
    a = np.zeros((x.shape[0], 9))
    a[:, UR2] = np.minimum(x[:, X_M], max_recycled_use(regime, p))
    return a


def clsc2_settlement(a: np.ndarray, x: np.ndarray, regime: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The window's settlement at its last period (``n_t = 0``): the excess of
    ``r (U_v + U_r) - U_r`` after the action over its tolerance ``1e-6 max(1, r (U_v + U_r))``
    (MODEL-2.md's definition of a violation); -inf in every other period."""
    used_v, used_r = x[:, X_UV] + a[:, UV2], x[:, X_UR] + a[:, UR2]
    due = regime[:, _R] * (used_v + used_r)
    last = (x[:, X_N] < 0.5) & (regime[:, _R] > 0)
    return np.where(last, due - used_r, -np.inf), VIOLATION_TOL * np.maximum(1.0, due)


CLSC2_ROWS = RowModel(
    name="CLSC-2",
    actions=CLSC2_ACTIONS,
    inputs=CLSC2_INPUTS,
    stocks=("virgin", "recycled", "cores_a", "cores_b", "used_virgin", "used_recycled", "periods_left"),
    row_labels=("1 order capacity (supplier up)", "1 market offer", "2 virgin on hand", "2 recycled on hand",
                "3 production capacity", "4 refurbish capacity", "4 disassembly capacity", "4 disposal capacity",
                "5 grade-A cores on hand", "5 grade-B cores on hand",
                "6a window deficit covered by material", "6b window deficit covered by capacity",
                "7 emission cap", "8 recovery target"),
    row_spec=("1", "1", "2", "2", "3", "4", "4", "4", "5", "5", "6a", "6b", "7", "8"),
    lower_spec=("1", "1", "2", "2", "4", "4", "4", "4", "4"),
    scale=lambda p: np.asarray(p.action_scale, dtype=np.float64),  # (K_o, K_m, m K_p, m K_p, K_f, K_d, K_d, K_w, K_w)
    coefficients=_clsc2_coefficients,
    safe_action=clsc2_safe_action,
    settlement=clsc2_settlement,
    carried=("6a", "6b"),
    # (supply_up: the supplier is up or down; market_avail: the share of the market's
    # capacity on offer; periods_left: whole periods to the window's settlement)
    ranges=(("supply_up", 0.0, 1.0, True), ("market_avail", 0.0, 1.0, False),
            ("periods_left", 0.0, math.inf, True)),
)

MODELS: dict[str, RowModel] = {"CLSC-1": CLSC1_ROWS, "CLSC-2": CLSC2_ROWS}
