"""The safety layer of CLSC-1: Euclidean projection of a raw action onto the hard constraints.

The executed action is (spec, "Safety layer")

    argmin_a  sum_i ((a_i - raw_i) / S_i)^2   subject to rows 1-8,

with ``S = params.action_scale`` = (K_o, m K_p, m K_p, K_d, K_f, K_w). We work in the
capacity-normalised coordinates ``z = a / S``; there the problem is the projection of
``y = raw / S`` onto a polytope made of

* a box ``0 <= z <= upper`` (rows 1, 2 and 4, plus the per-variable bounds implied by rows 3
  and 5), and
* five general rows ``G z <= h`` in this order: spec rows 3, 5, 6, 7, 8 (:data:`GENERAL_ROWS`).

Two paths compute the same point:

* :func:`project` (deployment, one action, plain floats): returns the raw action unchanged
  when it is already feasible, else calls the dual active-set QP solver DAQP directly (its C
  solver through ctypes, where the installed DAQP release allows, see :class:`_DirectDaqp`).
* :func:`project_batch` (training, ``[B, 6]`` torch, differentiable): vectorised over the
  batch with no iterations in the common case, where the emission cap (row 7, the only row
  coupling the three blocks (o), (u_v, u_r), (g, f, w)) is absent or slack: each block's
  projection is the nearest feasible of a few closed-form candidates. Elements where the cap
  binds go through a vectorised Goldfarb-Idnani dual active-set method, and an element that
  method cannot finish (not seen in tests) through DAQP. The backward pass is the analytic
  active-set formula ``w - A_s^T (A_s A_s^T)^+ A_s w``; gradients also reach the stocks V, M,
  C wherever a stock bound is active.

Both solve against right-hand sides tightened by a hair (rows 6 and 8, whose right-hand
side is 0, are tightened by raising ``r`` and ``kappa`` instead, so the zero action stays
feasible), re-check the result against the spec's definition of a violation
(:func:`violations`), and fall back to shrinking the action towards the always-feasible zero
action, so the executed action never violates a row.

Stocks below zero (round-off of the simulator's bookkeeping, e.g. ``-1e-13``) count as 0.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import math
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import daqp
import numpy as np
import torch
from torch import Tensor

from moca.projection import quadprog_projection
from moca.scenario import Params
from moca.world import none_caps_as_no_cap, regime_row_nones

#: A row is violated when broken by more than ``VIOLATION_TOL * max(1, |rhs|)`` in its own units.
VIOLATION_TOL = 1e-6
#: Spec rows of the general constraints ``G z <= h``, in order.
GENERAL_ROWS: tuple[int, ...] = (3, 5, 6, 7, 8)
ROW_LABELS: tuple[str, ...] = (
    "1 order capacity", "2 material on hand", "3 production capacity", "4 core capacities",
    "5 cores on hand", "6 recycled-content mandate", "7 emission cap", "8 recovery target",
)
# Relative tightening of the right-hand sides the solvers see. float32 outputs need more:
# rounding a float64 solution to float32 moves rows 6 and 8 (rhs 0, absolute tolerance
# 1e-6) by up to 6e-8 of the material/cores involved, which 1e-6 * (u_v + u_r) covers.
TIGHTEN = {torch.float64: 1e-9, torch.float32: 1e-6}
_FIX_TOL = 1e-12  # normalised upper bounds below this fix the variable at 0
_DEP_TOL = 1e-9  # a unit-norm row whose part orthogonal to the active rows is shorter is dependent
_I6 = np.eye(6)
_ONES = [1.0] * 6  # scale of a solution left in z coordinates


class SafetyError(ValueError):
    """Bad input to the safety layer (NaN/inf action or stock, wrong shape, invalid regime)."""


# --- parameters --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConstraintLayout:
    """Constants of the constraints for one parameter set."""

    scale: np.ndarray  # S [6]
    mk: float  # m K_p, kg of material per period
    caps: tuple[float, ...]  # (K_o, K_d, K_f, K_w)
    emis: np.ndarray  # row 7 coefficients per unit of action [6], kg CO2
    row3: np.ndarray  # row 3 in z coordinates, unit norm [6]
    norm3: float
    row5: np.ndarray
    norm5: float
    row7: np.ndarray
    norm7: float  # 0 when every emission factor is 0 (row 7 then never binds)
    # For the one-action path (plain floats are several times faster than numpy scalars):
    scale_list: list[float]
    highs: tuple[float, ...]  # (K_o, m K_p, K_d, K_f, K_w) plus the violation tolerance
    templates: dict[int, np.ndarray]  # solver rows [m, 6] for m = 4 (no cap), 5; rows 6 and 8 blank
    emis_list: list[float]
    tightened: dict[float, tuple[float, ...]]  # see _tightened
    rows: dict[tuple[float, float, bool, float], tuple[np.ndarray, tuple, bool, int]]  # see _system_one


_LAYOUTS: dict[int, tuple[Params, ConstraintLayout]] = {}


def _layout(params: Params) -> ConstraintLayout:
    hit = _LAYOUTS.get(id(params))
    if hit is not None and hit[0] is params:
        return hit[1]
    p = params
    s = np.asarray(p.action_scale, dtype=np.float64)
    emis = np.array([p.emis_virgin, p.emis_produce / p.mass, p.emis_produce / p.mass,
                     p.emis_recycle * p.yield_disassembly * p.mass, 0.0, 0.0])
    unit = lambda v: (v / np.linalg.norm(v), float(np.linalg.norm(v))) if np.any(v) else (v * 0.0, 0.0)  # noqa: E731
    row3, n3 = unit(np.array([0.0, s[1], s[2], 0, 0, 0]))
    row5, n5 = unit(np.array([0.0, 0, 0, s[3], s[4], s[5]]))
    row7, n7 = unit(emis * s)
    mk = p.mass * p.cap_produce
    caps = (p.cap_order, p.cap_disassemble, p.cap_refurbish, p.cap_dispose)
    highs = tuple(k + VIOLATION_TOL * max(1.0, k) for k in (caps[0], mk, *caps[1:]))
    templates = {4: np.stack([row3, row5, row3 * 0, row3 * 0]), 5: np.stack([row3, row5, row3 * 0, row3 * 0, row7])}
    layout = ConstraintLayout(s, mk, caps, emis, row3, n3, row5, n5, row7, n7, s.tolist(), highs, templates,
                     emis.tolist(), {}, {})
    if len(_LAYOUTS) > 64:
        _LAYOUTS.clear()
    _LAYOUTS[id(params)] = (params, layout)
    return layout


# --- input checks ------------------------------------------------------------------------------
#: CLSC-1's action symbols, in order (CLSC-2's: :data:`moca.clsc2.ACTION_SYMBOLS`).
ACTION_SYMBOLS: tuple[str, ...] = ("o", "u_v", "u_r", "g", "f", "w")


#: The largest entry of a capacity-normalised action ``z`` the Gymnasium envs take: 1e12
#: capacities. Beyond about 1e15 float64 cannot hold the distance to the feasible set
#: (1e-16 relative), and the projection came out as zeros or NaN instead of the nearest
#: point; up to 1e14 it is exact (every entry, measured over random directions).
LARGEST_ACTION = 1e12


def action_values(raw: Any, what: str = "raw action", symbols: tuple[str, ...] = ACTION_SYMBOLS,
                  largest: float | None = None) -> list[float]:
    """One action (array, tensor or sequence) as a list of floats, one per entry of
    ``symbols`` (default CLSC-1's six), checked: that shape and finite entries (and, with
    ``largest``, none beyond ±``largest``), else a :class:`SafetyError` naming ``what``."""
    n = len(symbols)
    if type(raw) is np.ndarray and raw.shape == (n,) and raw.dtype.kind == "f":  # the hot path
        values = raw.tolist()
    else:
        source = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else raw
        if np.ma.isMaskedArray(source) and np.ma.getmaskarray(source).any():  # (asarray reads what the mask hides)
            raise SafetyError(f"{what}: has masked entries; expected {n} numbers ({', '.join(symbols)})")
        try:
            a = np.asarray(source)
            # Numbers only: text ('0.5'), complex (its real part) and true/false were converted.
            if a.dtype.kind not in "iuf":
                raise TypeError
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            got = f"{type(raw).__name__} of {a.dtype}" if isinstance(raw, np.ndarray) else type(raw).__name__
            raise SafetyError(f"{what}: expected {n} numbers ({', '.join(symbols)}), got {got} "
                              f"{raw!r:.40}") from None
        if a.shape != (n,):
            raise SafetyError(f"{what}: expected shape [{n}] ({', '.join(symbols)}), got {list(a.shape)}")
        values = a.tolist()
    # One sum is non-finite whenever an entry is (and, rarely, when finite entries overflow it).
    if not math.isfinite(sum(values)) and not all(map(math.isfinite, values)):
        raise SafetyError(f"{what} has a non-finite entry (NaN or inf): {values}")
    if largest is not None and (max(values) > largest or min(values) < -largest):
        raise SafetyError(f"{what} has an entry beyond ±{largest:g} (capacity-normalised, where every feasible "
                          f"action lies in [0, 1]): {values}")
    return values


def _as_stock(name: str, value: Any) -> float:
    try:
        if isinstance(value, (str, bytes)):  # (float("4000") took a text as a stock)
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise SafetyError(f"{name}: expected a number (one stock), got {type(value).__name__}") from None
    if not math.isfinite(v):
        raise SafetyError(f"{name}={v} is not a finite stock")
    return v if v > 0.0 else 0.0  # a negative stock is round-off of the bookkeeping


def _as_regime(regime: Any) -> tuple[float, float, float]:
    """(r, cap, kappa) of a regime row [r, tau, cap (inf or None = none), lambda, kappa]."""
    if type(regime) is np.ndarray and regime.shape == (5,) and regime.dtype.kind == "f":  # the hot path
        r, _, cap, _, kappa = regime.tolist()
    else:
        if hasattr(regime, "as_row"):  # a moca.regime.Regime, as decide_period and projection.project take
            if getattr(regime, "recycled_content_window", 1) != 1:
                raise SafetyError(f"regime: recycled_content_window={regime.recycled_content_window} is CLSC-2's "
                                  "(CLSC-1 settles the mandate every period)")
            regime = regime.as_row()
        try:
            row = np.asarray(regime.detach().cpu().numpy() if isinstance(regime, Tensor) else regime, dtype=np.float64)
        except (TypeError, ValueError):
            raise SafetyError("regime: expected a Regime or a row of 5 numbers (r, tau, cap, lambda, kappa), "
                              f"got {type(regime).__name__} {regime!r:.40}") from None
        if row.shape != (5,):
            raise SafetyError("regime: expected a row of 5 fields (r, tau, cap, lambda, kappa), "
                              f"got shape {list(row.shape)}")
        r, _, cap, _, kappa = row.tolist()
    if not (0.0 <= r <= 1.0 and 0.0 <= kappa <= 1.0 and cap >= 0.0):
        return _checked_regime(regime, r, cap, kappa)
    return r, cap, kappa


def _checked_regime(given: Any, r: float, cap: float, kappa: float) -> tuple[float, float, float]:
    """:func:`_as_regime`'s checks, once one failed: a cap given as None is no cap (as
    ``Regime.from_row`` reads it), else the failed field is named."""
    none = _read_nones(given, (5,))
    if none is not None:
        r, _, cap, _, kappa = none_caps_as_no_cap(np.array([r, 0.0, cap, 0.0, kappa]), none, SafetyError).tolist()
    if not 0.0 <= r <= 1.0:
        raise SafetyError(f"regime recycled_content_min={r} is outside [0, 1]")
    if not 0.0 <= kappa <= 1.0:
        raise SafetyError(f"regime recovery_target={kappa} is outside [0, 1]")
    if not cap >= 0.0:
        raise SafetyError(f"regime emission_cap={cap} must be >= 0 (inf = no cap)")
    return r, cap, kappa


def _batch_inputs(action: Any, virgin: Any, recycled: Any, cores: Any, regime: Any, what: str):
    """numpy float64 (a [B,6], V, M, C [B] clamped at 0, r, cap, kappa [B]) of a batch."""
    def np64(x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu().numpy() if isinstance(x, Tensor) else x, dtype=np.float64)

    a = np64(action)
    if a.ndim != 2 or a.shape[1] != 6:
        raise SafetyError(f"{what}: expected shape [B, 6], got {list(a.shape)}")
    b = a.shape[0]
    if not np.isfinite(a).all():
        bad = int(np.argwhere(~np.isfinite(a))[0, 0])
        raise SafetyError(f"{what} {bad} has a non-finite entry (NaN or inf): {a[bad].tolist()}")
    stocks = []
    for name, x in (("virgin", virgin), ("recycled", recycled), ("cores", cores)):
        s = np64(x)
        s = np.broadcast_to(s, (b,)) if s.ndim == 0 else s
        if s.shape != (b,):
            raise SafetyError(f"{name}: expected shape [{b}], got {list(s.shape)}")
        if not np.isfinite(s).all():
            raise SafetyError(f"{name} stock is not finite: {s[~np.isfinite(s)][0]}")
        stocks.append(np.maximum(s, 0.0))
    reg = np64(regime)
    if reg.shape == (5,):
        reg = np.broadcast_to(reg, (b, 5))
    if reg.shape != (b, 5):
        raise SafetyError(f"regime: expected shape [{b}, 5], got {list(reg.shape)}")
    r, cap, kappa = reg[:, 0], reg[:, 2], reg[:, 4]
    if not (((r >= 0) & (r <= 1)).all() and ((kappa >= 0) & (kappa <= 1)).all() and (cap >= 0).all()):
        return (a, *stocks, *_checked_regimes(regime, reg))
    return a, stocks[0], stocks[1], stocks[2], r, cap, kappa


def _read_nones(given: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """Where the regime row(s) ``given`` held None in a field the rows read (r, cap, kappa;
    the taxes are not read here), or None where there is no such None."""
    none = regime_row_nones(given, shape)
    if none is None:
        return None
    none = none.copy()
    none[..., [1, 3]] = False
    return none if none.any() else None


def _checked_regimes(given: Any, reg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_batch_inputs`'s regime checks, once one failed: a cap given as None is no cap
    (as ``Regime.from_row`` reads it), else the failed field is named."""
    none = _read_nones(given, reg.shape)
    if none is not None:
        reg = none_caps_as_no_cap(reg, none, SafetyError)
    r, cap, kappa = reg[:, 0], reg[:, 2], reg[:, 4]
    if not ((r >= 0) & (r <= 1)).all():
        raise SafetyError(f"regime recycled_content_min outside [0, 1]: {r[~((r >= 0) & (r <= 1))][0]}")
    if not ((kappa >= 0) & (kappa <= 1)).all():
        raise SafetyError(f"regime recovery_target outside [0, 1]: {kappa[~((kappa >= 0) & (kappa <= 1))][0]}")
    if not (cap >= 0).all():
        raise SafetyError(f"regime emission_cap must be >= 0 (inf = no cap): {cap[~(cap >= 0)][0]}")
    return r, cap, kappa


# --- the constraints ---------------------------------------------------------------------------
def constraint_system(virgin: float, recycled: float, cores: float, regime: np.ndarray, params: Params,
                      tighten: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows 1-8 in normalised coordinates ``z = a / S`` as ``(G, h, lower, upper)``.

    The feasible set is ``{z : G z <= h, lower <= z <= upper}``:

    * ``G`` ``[5, 6]``, ``h`` ``[5]``: spec rows 3, 5, 6, 7, 8 (:data:`GENERAL_ROWS`); row ``k``
      of ``G @ z`` is that row's left-hand side in its own units (kg, cores, kg, kg CO2,
      cores): ``u_v+u_r``, ``g+f+w``, ``r(u_v+u_r) - u_r``, emissions, ``kappa(g+f+w) - (g+f)``.
      An absent emission cap has ``h = inf``.
    * ``lower = 0``; ``upper`` ``[6]`` = (K_o, min(V, m K_p), min(M, m K_p), min(C, K_d),
      min(C, K_f), min(C, K_w)) / S: rows 1, 2, 4 and the bounds that rows 3 and 5 imply.

    ``tighten > 0`` lowers every positive right-hand side ``b`` to ``max(0, b - tighten*max(1, b))``
    and raises ``r`` and ``kappa`` by the factor ``1 + tighten`` (capped at 1), so the zero action
    stays feasible and a rule that is off (0) stays off.
    """
    layout = _layout(params)
    s, mk = layout.scale, layout.mk
    k_o, k_d, k_f, k_w = layout.caps
    V, M, C = _as_stock("virgin", virgin), _as_stock("recycled", recycled), _as_stock("cores", cores)
    r, cap, kappa = _as_regime(regime)
    cut = lambda b: max(0.0, b - tighten * max(1.0, b))  # noqa: E731
    r, kappa = min(1.0, r * (1.0 + tighten)), min(1.0, kappa * (1.0 + tighten))
    G = np.array([
        [0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
        [0.0, r, -(1.0 - r), 0.0, 0.0, 0.0],
        layout.emis,
        [0.0, 0.0, 0.0, -(1.0 - kappa), -(1.0 - kappa), kappa],
    ]) * s
    h = np.array([cut(mk), cut(C), 0.0, cut(cap) if math.isfinite(cap) else math.inf, 0.0])
    upper = np.array([cut(k_o), min(cut(V), cut(mk)), min(cut(M), cut(mk)),
                      min(cut(C), cut(k_d)), min(cut(C), cut(k_f)), min(cut(C), cut(k_w))]) / s
    return G, h, np.zeros(6), upper


def _tightened(L: ConstraintLayout, t: float) -> tuple[float, ...]:
    """(m K_p, K_o, K_d, K_f, K_w) with right-hand sides tightened by ``t``, then the two
    solver bounds made of them alone, K_o / S_o and m K_p / |row 3| (cached)."""
    mk, k_o, k_d, k_f, k_w = (k - t * max(1.0, k) for k in (L.mk, *L.caps))
    hit = L.tightened[t] = (mk, k_o, k_d, k_f, k_w, k_o / L.scale_list[0], mk / L.norm3)
    return hit


def _system_one(V: float, M: float, C: float, r: float, cap: float, kappa: float, L: ConstraintLayout, t: float):
    """The solvers' form of :func:`constraint_system` for one action: rows scaled to unit
    norm, absent rows left out; returns (G [m, 6], bounds [6 + m]: upper of the box, then h,
    the address of G's data for :class:`_DirectDaqp`).

    G depends only on the regime, which changes rarely, so it is cached per (r, kappa, cap
    present, t); only the bounds, which move with the stocks, are built per call (DAQP
    needs writeable arrays but does not change them)."""
    # (conditional expressions rather than min/max: this runs on every projected decision)
    _, s1, s2, s3, s4, s5 = L.scale_list
    mk, k_o, k_d, k_f, k_w, o_upper, h3 = L.tightened.get(t) or _tightened(L, t)
    Vt = V - t * (V if V > 1.0 else 1.0)
    Mt = M - t * (M if M > 1.0 else 1.0)
    Ct = C - t * (C if C > 1.0 else 1.0)
    Vt = 0.0 if Vt < 0.0 else (mk if Vt > mk else Vt)
    Mt = 0.0 if Mt < 0.0 else (mk if Mt > mk else Mt)
    Ct = 0.0 if Ct < 0.0 else Ct
    bounds = [o_upper, Vt / s1, Mt / s2, (k_d if Ct > k_d else Ct) / s3, (k_f if Ct > k_f else Ct) / s4,
              (k_w if Ct > k_w else Ct) / s5, h3, Ct / L.norm5, 0.0, 0.0]
    capped = cap != math.inf and L.norm7 > 0.0
    if capped:
        cap_t = cap - t * (cap if cap > 1.0 else 1.0)
        bounds.append((cap_t if cap_t > 0.0 else 0.0) / L.norm7)
    key = (r, kappa, capped, t)
    hit = L.rows.get(key)
    if hit is None:
        if len(L.rows) > 4096:
            L.rows.clear()
        r, kappa = min(1.0, r * (1.0 + t)), min(1.0, kappa * (1.0 + t))
        a6, b6 = r * s1, -(1.0 - r) * s2
        n6 = math.hypot(a6, b6)
        a8, b8, c8 = -(1.0 - kappa) * s3, -(1.0 - kappa) * s4, kappa * s5
        n8 = math.sqrt(a8 * a8 + b8 * b8 + c8 * c8)
        G = L.templates[5 if capped else 4].copy()
        G[2, 1], G[2, 2] = a6 / n6, b6 / n6
        G[3, 3], G[3, 4], G[3, 5] = a8 / n8, b8 / n8, c8 / n8
        # Per row, bit masks of the coordinates with a negative / positive coefficient (_pin_one).
        signs = tuple((sum(1 << j for j in range(6) if c[j] < -_FIX_TOL), sum(1 << j for j in range(6) if c[j] > _FIX_TOL))
                      for c in G.tolist())
        # a mandate or recovery target of ~1 alone can make a row pin coordinates
        regime_pins = bool(G[2, 2] >= -_FIX_TOL or G[3, 3] >= -_FIX_TOL or G[3, 4] >= -_FIX_TOL)
        hit = L.rows[key] = (G, signs, regime_pins, G.ctypes.data)  # (the address costs ~3 us to ask for)
    G, signs, regime_pins, address = hit
    # Pin what the rows force to 0, as the batch path does (_pinned), so that both paths
    # agree in degenerate cases: e.g. M = 0 with a tiny mandate r forces u_v = 0, which DAQP
    # would only enforce to its tolerance divided by r. Only a zero-ish upper bound, a zero
    # right-hand side of row 5 or 7, or a mandate or recovery target of ~1 can start it.
    if (regime_pins or bounds[2] <= _FIX_TOL or bounds[3] <= _FIX_TOL or bounds[4] <= _FIX_TOL
            or bounds[7] <= _FIX_TOL or (capped and bounds[-1] <= _FIX_TOL)):
        _pin_one(signs, bounds)
    return G, bounds, address


def _pin_one(signs: tuple[tuple[int, int], ...], bounds: list[float]) -> None:
    """Sets to 0 the upper bound (``bounds[:6]``) of every coordinate the constraint rows
    force to 0: :func:`_pinned`'s rule, step for step, for one action. A row with right-hand
    side ~0 (``bounds[6:]``) whose negative coefficients all lie on pinned coordinates pins
    those with a positive coefficient; ``signs`` gives, per row, the bit masks of the
    coordinates with a negative and with a positive coefficient. Why a plain-int copy of that
    rule: random actions empty a stock in about two decisions of five, and the batch function
    costs ~70 us on a batch of one, several times the rest of the projection
    (``test_pin_one_is_pinned`` holds the two together)."""
    T = _FIX_TOL
    u0, u1, u2, u3, u4, u5 = bounds[:6]
    pinned = (u0 <= T) | (u1 <= T) << 1 | (u2 <= T) << 2 | (u3 <= T) << 3 | (u4 <= T) << 4 | (u5 <= T) << 5
    forcing = [masks for masks, h in zip(signs, bounds[6:]) if h <= T]
    for _ in range(3):
        newly = 0
        for negative, positive in forcing:
            if not negative & ~pinned:
                newly |= positive & ~pinned
        if not newly:
            break
        pinned |= newly
    for j in range(6):
        if pinned >> j & 1:
            bounds[j] = 0.0


def _system_batch(V: np.ndarray, M: np.ndarray, C: np.ndarray, r: np.ndarray, cap: np.ndarray,
                  kappa: np.ndarray, L: ConstraintLayout, t: float):
    """Batched solver form, batch dimension last: G [5, 6, n] (unit-norm rows in
    :data:`GENERAL_ROWS` order, zero where absent), h [5, n], upper [6, n]."""
    n = V.shape[0]
    s = L.scale
    cut = lambda b: np.maximum(0.0, b - t * np.maximum(1.0, b))  # noqa: E731
    mk = L.mk - t * max(1.0, L.mk)
    Ct = cut(C)
    k_o, k_d, k_f, k_w = (k - t * max(1.0, k) for k in L.caps)
    upper = np.stack([np.full(n, k_o / s[0]), np.minimum(cut(V), mk) / s[1], np.minimum(cut(M), mk) / s[2],
                      np.minimum(Ct, k_d) / s[3], np.minimum(Ct, k_f) / s[4], np.minimum(Ct, k_w) / s[5]])
    G = np.zeros((5, 6, n))
    h = np.zeros((5, n))
    G[0] = L.row3[:, None]
    h[0] = mk / L.norm3
    G[1] = L.row5[:, None]
    h[1] = Ct / L.norm5
    rt, kt = np.minimum(1.0, r * (1.0 + t)), np.minimum(1.0, kappa * (1.0 + t))
    a6, b6 = rt * s[1], -(1.0 - rt) * s[2]
    n6 = np.hypot(a6, b6)
    G[2, 1], G[2, 2] = a6 / n6, b6 / n6
    capped = np.isfinite(cap) & (L.norm7 > 0.0)
    G[3] = L.row7[:, None] * capped
    h[3] = np.where(capped, cut(np.where(capped, cap, 0.0)) / max(L.norm7, 1e-300), 1.0)
    a8, b8, c8 = -(1.0 - kt) * s[3], -(1.0 - kt) * s[4], kt * s[5]
    n8 = np.sqrt(a8 * a8 + b8 * b8 + c8 * c8)
    G[4, 3], G[4, 4], G[4, 5] = a8 / n8, b8 / n8, c8 / n8
    return G, h, upper


# --- violations (the spec's definition) --------------------------------------------------------
def _rows_ok_one(a: list[float], V: float, M: float, C: float, r: float, cap: float, kappa: float,
                 L: ConstraintLayout) -> tuple[bool, ...]:
    """Per spec row, whether one action keeps it (pure Python: ~20x faster than numpy here)."""
    tol = VIOLATION_TOL
    o, uv, ur, g, f, w = a
    o_hi, mk_hi, g_hi, f_hi, w_hi = L.highs
    mat, proc = uv + ur, g + f + w
    ok1 = -tol <= o <= o_hi
    ok2 = -tol <= uv <= V + tol * (V if V > 1.0 else 1.0) and -tol <= ur <= M + tol * (M if M > 1.0 else 1.0)
    ok3 = mat <= mk_hi
    ok4 = -tol <= g <= g_hi and -tol <= f <= f_hi and -tol <= w <= w_hi
    ok5 = proc <= C + tol * (C if C > 1.0 else 1.0)
    ok6 = r * mat - ur <= tol
    if cap == math.inf:
        ok7 = True
    else:
        e = L.emis_list
        ok7 = e[0] * o + e[1] * mat + e[3] * g <= cap + tol * (cap if cap > 1.0 else 1.0)
    ok8 = kappa * proc - (g + f) <= tol
    return ok1, ok2, ok3, ok4, ok5, ok6, ok7, ok8


def _rows_ok_batch(a: np.ndarray, V, M, C, r, cap, kappa, L: ConstraintLayout) -> np.ndarray:
    """``[8, B]`` bool: whether each action keeps each spec row (stocks already clamped at 0)."""
    tol = VIOLATION_TOL
    k_o, k_d, k_f, k_w = L.caps
    o, uv, ur, g, f, w = a.T
    mat, proc = uv + ur, g + f + w
    slack = lambda b: b + tol * np.maximum(1.0, np.abs(b))  # noqa: E731
    ok = np.empty((8, a.shape[0]), dtype=bool)
    ok[0] = (o >= -tol) & (o <= slack(k_o))
    ok[1] = (uv >= -tol) & (uv <= slack(V)) & (ur >= -tol) & (ur <= slack(M))
    ok[2] = mat <= slack(L.mk)
    ok[3] = ((g >= -tol) & (g <= slack(k_d)) & (f >= -tol) & (f <= slack(k_f))
             & (w >= -tol) & (w <= slack(k_w)))
    ok[4] = proc <= slack(C)
    ok[5] = r * mat - ur <= tol
    e = L.emis
    with np.errstate(invalid="ignore"):  # inf cap: inf <= inf + inf
        ok[6] = ~np.isfinite(cap) | (e[0] * o + e[1] * mat + e[3] * g <= slack(cap))
    ok[7] = kappa * proc - (g + f) <= tol
    return ok


def violations(action: np.ndarray | Tensor, virgin: Any, recycled: Any, cores: Any, regime: Any,
               params: Params) -> np.ndarray:
    """Count, per spec row 1-8, the actions that break it by more than
    ``1e-6 * max(1, |rhs|)`` in the row's own units (rows 6 and 8 have rhs 0).

    ``action`` is one action ``[6]`` (stocks scalars, regime ``[5]``) or a batch ``[B, 6]``
    (stocks ``[B]``, regime ``[B, 5]`` or ``[5]``); returns int ``[8]`` summed over the batch.
    """
    L = _layout(params)
    single = np.ndim(action.detach().cpu().numpy() if isinstance(action, Tensor) else action) == 1
    if single:
        values = action_values(action)
        r, cap, kappa = _as_regime(regime)
        ok = _rows_ok_one(values, _as_stock("virgin", virgin), _as_stock("recycled", recycled),
                          _as_stock("cores", cores), r, cap, kappa, L)
        return np.array([0 if x else 1 for x in ok], dtype=np.int64)
    a, V, M, C, r, cap, kappa = _batch_inputs(action, virgin, recycled, cores, regime, "action")
    return (~_rows_ok_batch(a, V, M, C, r, cap, kappa, L)).sum(axis=1).astype(np.int64)


def episode_violations(executed: Tensor, available: Tensor, regime: Tensor, params: Params) -> int:
    """Broken rows over whole episodes: ``executed`` ``[B, T, 6]``, the post-arrival stocks
    the rows bound ``available`` ``[B, T, 3]`` (V, M, C: ``Rollout.available``) and the
    regime in force ``[B, T, 5]``; one batched check of every decision."""
    flat = lambda x, k: x.detach().reshape(-1, k).to(torch.float64).numpy()  # noqa: E731
    stocks = flat(available, 3)
    return int(violations(flat(executed, 6), stocks[:, 0], stocks[:, 1], stocks[:, 2], flat(regime, 5), params).sum())


def is_feasible(action: np.ndarray | Tensor, virgin: Any, recycled: Any, cores: Any, regime: Any,
                params: Params) -> bool | np.ndarray:
    """Whether the action keeps every row (spec tolerance); a bool ``[B]`` array for a batch."""
    L = _layout(params)
    single = np.ndim(action.detach().cpu().numpy() if isinstance(action, Tensor) else action) == 1
    if single:
        values = action_values(action)
        r, cap, kappa = _as_regime(regime)
        return all(_rows_ok_one(values, _as_stock("virgin", virgin), _as_stock("recycled", recycled),
                                _as_stock("cores", cores), r, cap, kappa, L))
    a, V, M, C, r, cap, kappa = _batch_inputs(action, virgin, recycled, cores, regime, "action")
    return _rows_ok_batch(a, V, M, C, r, cap, kappa, L).all(axis=0)


# --- deployment path: one action through DAQP --------------------------------------------------
_SENSE = {m: np.zeros(6 + m, dtype=np.int32) for m in (4, 5)}
_LOWER = {m: np.concatenate([np.zeros(6), np.full(m, -np.inf)]) for m in (4, 5)}


# DAQP's C entry point without its Python wrapper. daqp.solve spends about half of its ~8 us
# per projection in the Cython wrapper (keyword settings, six buffer acquisitions, fresh
# output arrays, the info dict), more than the solver itself. The deployment path can call
# the C function that wrapper ends in, daqp_quadprog, through ctypes with buffers allocated
# once per thread: the same solver on the same data and settings, so the same numbers bit
# for bit (checked against daqp.solve before first use), in about half the time. ctypes must
# mirror DAQP's C structs, which change between releases, so this is done only with the
# release it was written and tested against; with any other, a failed check, or
# MOCA_DAQP_DIRECT=0, every solve goes through daqp.solve.
_DIRECT_RELEASES = ("0.11.0",)
_PRIMAL_TOL = 1e-11
_double_p = ctypes.POINTER(ctypes.c_double)


class _Problem(ctypes.Structure):  # DAQPProblem (types.h); padded: later fields stay 0
    _fields_ = [("n", ctypes.c_int), ("m", ctypes.c_int), ("ms", ctypes.c_int),
                ("H", ctypes.c_void_p), ("f", ctypes.c_void_p), ("A", ctypes.c_void_p),
                ("bupper", ctypes.c_void_p), ("blower", ctypes.c_void_p), ("sense", ctypes.c_void_p),
                ("break_points", ctypes.c_void_p), ("nh", ctypes.c_int), ("problem_type", ctypes.c_int),
                ("_spare", ctypes.c_char * 64)]


class _Result(ctypes.Structure):  # DAQPResult (api.h), padded likewise
    _fields_ = [("x", ctypes.c_void_p), ("lam", ctypes.c_void_p), ("fval", ctypes.c_double),
                ("soft_slack", ctypes.c_double), ("exitflag", ctypes.c_int), ("iter", ctypes.c_int),
                ("nodes", ctypes.c_int), ("solve_time", ctypes.c_double), ("setup_time", ctypes.c_double),
                ("_spare", ctypes.c_char * 256)]


class _DirectDaqp:
    """Buffers for daqp_quadprog (min 1/2 z'z + f'z s.t. the box and G z <= h), for one
    thread: ctypes releases the GIL during the call, so threads must not share them."""

    hessian = (ctypes.c_double * 36)(*np.eye(6).ravel().tolist())

    def __init__(self, quadprog, settings) -> None:
        self.quadprog = quadprog  # the C function
        # DAQP's defaults with primal_tol = _PRIMAL_TOL; a copy per thread, in case DAQP
        # writes to its settings during a solve (its Python wrapper passes a fresh copy)
        self.settings = type(settings).from_buffer_copy(settings)
        self.f = (ctypes.c_double * 6)()
        self.bupper = (ctypes.c_double * 11)()
        self.blower = (ctypes.c_double * 11)(*([0.0] * 6 + [-math.inf] * 5))
        self.sense = (ctypes.c_int * 11)()  # all 0: inequalities, cold start (DAQP leaves them 0)
        self.x = (ctypes.c_double * 6)()
        self.lam = (ctypes.c_double * 11)()
        address = ctypes.addressof
        self.problem = _Problem(6, 0, 6, address(self.hessian), address(self.f), None, address(self.bupper),
                                address(self.blower), address(self.sense), None, 0, 0)
        self.result = _Result(address(self.x), address(self.lam))
        self.problem_ref, self.result_ref = ctypes.byref(self.problem), ctypes.byref(self.result)

    def solve(self, minus_y: list[float], G_address: int, bounds: list[float]) -> list[float] | None:
        """z (6 floats), or None if DAQP fails; ``G_address``: the data of a C-contiguous
        float64 ``G`` [m, 6] (m = len(bounds) - 6) that the caller keeps alive."""
        self.f[:] = minus_y
        self.bupper[:len(bounds)] = bounds
        problem = self.problem
        problem.m = len(bounds)
        problem.A = G_address
        self.quadprog(self.result_ref, self.problem_ref, self.settings)
        return self.x[:] if self.result.exitflag >= 1 else None


def _wrapped_solve(minus_y: list[float], G: np.ndarray, bounds: list[float]) -> list[float] | None:
    """Projection of ``y`` by daqp.solve, DAQP's Python wrapper: z as 6 floats, None if it fails."""
    m = G.shape[0]
    x, _, flag, _ = daqp.solve(_I6, np.array(minus_y), G, np.array(bounds), _LOWER[m], _SENSE[m],
                               primal_tol=_PRIMAL_TOL)
    return x.tolist() if flag >= 1 else None


def _direct_daqp() -> _DirectDaqp | None:
    """The direct path if it may be used here (see above), checked against daqp.solve."""
    if os.environ.get("MOCA_DAQP_DIRECT", "1") == "0":
        return None
    try:
        if importlib.metadata.version("daqp") not in _DIRECT_RELEASES:
            return None
        library = ctypes.CDLL(daqp.__file__)
        quadprog, default_settings = library.daqp_quadprog, library.daqp_default_settings
    except (importlib.metadata.PackageNotFoundError, OSError, AttributeError):
        return None
    quadprog.restype, default_settings.restype = ctypes.c_int, ctypes.c_int
    settings = (ctypes.c_char * 1024)()  # DAQPSettings is ~140 bytes; primal_tol comes first
    default_settings(settings)
    ctypes.cast(settings, _double_p)[0] = _PRIMAL_TOL
    direct = _DirectDaqp(quadprog, settings)
    # The check: random projections, with the shapes and degeneracies the layer produces.
    rng = np.random.default_rng(0)
    for trial in range(64):
        m = 4 + trial % 2
        G = rng.normal(size=(m, 6)) * (rng.random((m, 6)) < 0.6)
        G /= np.maximum(np.linalg.norm(G, axis=1, keepdims=True), 1e-300)
        bounds = (rng.uniform(0.0, 2.0, 6 + m) * (rng.random(6 + m) < 0.8)).tolist()
        minus_y = (rng.normal(size=6) * 10.0 ** rng.integers(-1, 4)).tolist()
        if direct.solve(minus_y, G.ctypes.data, bounds) != _wrapped_solve(minus_y, G, bounds):
            # (a release moca was tested with should never get here: say so, then go slow)
            warnings.warn("moca.safety: DAQP's C solver called directly disagreed with daqp.solve; "
                          "every projection goes through daqp.solve", RuntimeWarning, stacklevel=2)
            return None
    return direct


_DIRECT = _direct_daqp()  # the checked C function and settings; None: every solve through daqp.solve
_THREAD = threading.local()  # .daqp: this thread's buffers


def _solve(minus_y: list[float], G: np.ndarray, G_address: int, bounds: list[float]) -> list[float] | None:
    """DAQP's projection of ``y`` (see :func:`_daqp`): z as 6 floats, None if it fails."""
    if _DIRECT is None:
        return _wrapped_solve(minus_y, G, bounds)
    # (one thread-local lookup, then plain attributes: each attribute of a threading.local
    # costs ~0.1 us more)
    direct = getattr(_THREAD, "daqp", None)
    if direct is None:
        direct = _THREAD.daqp = _DirectDaqp(_DIRECT.quadprog, _DIRECT.settings)
    return direct.solve(minus_y, G_address, bounds)


def _daqp(minus_y: list[float], G: np.ndarray, G_address: int, bounds: list[float],
          scale: list[float]) -> list[float] | None:
    """Projection of ``y`` onto ``{G z <= h, 0 <= z <= upper}`` (``bounds`` = upper, then h)
    by DAQP, scaled back to the action's units (``a = z * scale``) as a list of floats; None
    if DAQP fails. Takes ``-y`` (DAQP's linear cost), the form the caller builds it in.

    A far-away ``y`` (huge raw action) loses ~1e-16 |y| to cancellation in ``z = y - G^T lam``;
    ``y - z`` lies in the normal cone at ``z``, so re-solving from ``z + (y - z)/|y - z|``
    gives the same point computed from numbers of order 1.
    """
    z = _solve(minus_y, G, G_address, bounds) or _second_solver(minus_y, G, bounds)
    if z is None:
        return None
    # (z lies in the box, so only a target beyond 100 can be 100 away from it)
    if max(minus_y) > 100.0 or min(minus_y) < -100.0:
        step = max(abs(a + b) for a, b in zip(minus_y, z))
        if step > 100.0:
            near = [(b + a) / step - b for a, b in zip(minus_y, z)]  # -(z + (y - z) / step)
            z = _solve(near, G, G_address, bounds) or _second_solver(near, G, bounds)
            if z is None:
                return None
    # DAQP keeps the box to its tolerance; clip onto it exactly (unrolled, see _project_one)
    z0, z1, z2, z3, z4, z5 = z
    u0, u1, u2, u3, u4, u5 = bounds[:6]
    s0, s1, s2, s3, s4, s5 = scale
    return [(0.0 if z0 < 0.0 else (u0 if z0 > u0 else z0)) * s0, (0.0 if z1 < 0.0 else (u1 if z1 > u1 else z1)) * s1,
            (0.0 if z2 < 0.0 else (u2 if z2 > u2 else z2)) * s2, (0.0 if z3 < 0.0 else (u3 if z3 > u3 else z3)) * s3,
            (0.0 if z4 < 0.0 else (u4 if z4 > u4 else z4)) * s4, (0.0 if z5 < 0.0 else (u5 if z5 > u5 else z5)) * s5]


def _second_solver(minus_y: list[float], G: np.ndarray, bounds: list[float]) -> list[float] | None:
    """quadprog's projection where DAQP failed (see projection.quadprog_projection): about 2%
    of raw actions beyond 1e5 capacities failed in DAQP on the last bit of the target, and
    the layer then executed an action near 0 where the nearest one ordered at capacity."""
    bounds_array = np.asarray(bounds, dtype=np.float64)
    second = quadprog_projection(-np.asarray(minus_y, dtype=np.float64), G, bounds_array[6:], bounds_array[:6])
    return None if second is None else second[0].tolist()


def _shrink_to_feasible(a: list[float], ok) -> list[float]:
    """Largest ``t a`` (t in [0, 1]) that ``ok`` accepts, by bisection; ``0 a`` is feasible."""
    if ok(a):
        return a
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if ok([mid * v for v in a]):
            lo = mid
        else:
            hi = mid
    return [lo * v for v in a]


def _project_one(a: list[float], V: float, M: float, C: float, r: float, cap: float, kappa: float,
                 L: ConstraintLayout, tighten: float, ok=None,
                 exact: bool = False) -> tuple[list[float], tuple[bool, ...] | None]:
    """Projection of an infeasible action (6 floats); ``ok(list of 6 floats)`` is the final
    test. Without ``ok`` the test is the spec's rows in float64, and the second value is
    that final check, per row (it is the check a caller counting violations would repeat).
    Where DAQP (and quadprog) fail, the training path's exact solver is tried for this one
    action (``exact``: the deployment path, in float64; that solver is the other caller)
    before the last resort."""
    scale = L.scale_list
    # -y (-v / s is exactly -(v / s)); unrolled: a comprehension costs ~0.5 us more on 3.11
    a0, a1, a2, a3, a4, a5 = a
    s0, s1, s2, s3, s4, s5 = scale
    minus_y = [-a0 / s0, -a1 / s1, -a2 / s2, -a3 / s3, -a4 / s4, -a5 / s5]
    best = None
    for t in (tighten, max(1e-6, 10 * tighten)):  # second try: more margin
        G, bounds, G_address = _system_one(V, M, C, r, cap, kappa, L, t)
        z = _daqp(minus_y, G, G_address, bounds, scale)
        if z is not None:
            best = z
            if ok is None:
                kept = _rows_ok_one(best, V, M, C, r, cap, kappa, L)
                if all(kept):
                    return best, kept
            elif ok(best):
                return best, None
    check = lambda x: _rows_ok_one(x, V, M, C, r, cap, kappa, L)  # noqa: E731
    if exact:
        # (DAQP failed on about 2% of raw actions beyond 1e5 capacities, on the last bit of the
        # target; the exact solver below moves far-away targets to numbers of order 1 first)
        one = lambda v: np.array([v], dtype=np.float64)  # noqa: E731
        out, _ = _solve_batch(np.array([a], dtype=np.float64), one(V), one(M), one(C), one(r), one(cap), one(kappa),
                              L, torch.float64)
        candidate = out[:, 0].tolist()
        if ok is not None and ok(candidate):
            return candidate, None
        if ok is None and all(kept := check(candidate)):
            return candidate, kept
    # Last resort (not seen in tests): shrink towards the always-feasible zero action.
    best = _shrink_to_feasible(best or [max(v, 0.0) for v in a], ok or (lambda x: all(check(x))))
    return best, None if ok is not None else check(best)


_TIGHTEN_DEPLOYMENT = TIGHTEN[torch.float64]


def project_counted(raw: list[float], virgin: float, recycled: float, cores: float,
                    regime: tuple[float, float, float], layout: ConstraintLayout) -> tuple[list[float], int]:
    """:func:`project` on already checked plain floats, for callers on a hot path that hold
    them as floats anyway (the Gymnasium environment): the raw action (6 floats), stocks
    clamped at 0 and ``regime`` = (r, cap, kappa). Returns the executed action (6 floats)
    and how many spec rows it breaks, counted by the check the layer ends with (so 0)."""
    r, cap, kappa = regime
    kept = _rows_ok_one(raw, virgin, recycled, cores, r, cap, kappa, layout)
    if all(kept):
        return raw, 0
    executed, kept = _project_one(raw, virgin, recycled, cores, r, cap, kappa, layout, _TIGHTEN_DEPLOYMENT, exact=True)
    return executed, 8 - sum(kept)


def project(raw: np.ndarray, virgin: float, recycled: float, cores: float, regime: np.ndarray,
            params: Params) -> np.ndarray:
    """The executed action (float64 ``[6]``: kg, kg, kg, cores, cores, cores) for one raw action.

    ``virgin``, ``recycled``, ``cores`` are the post-arrival stocks V (kg), M (kg), C (units);
    ``regime`` is the regime row [r, tau, cap (inf = none), lambda, kappa]. A feasible raw
    action is returned unchanged (as a copy); otherwise its projection, with 0 violations.

    Why plain Python floats throughout: one decision is a few dozen scalar operations, and
    each numpy call on a 6-vector costs about a microsecond of overhead, so the check, the
    solver's bounds and the re-check are written on floats; only DAQP gets arrays.
    """
    if not isinstance(params, Params):
        raise SafetyError(f"params: expected a CLSC-1 Params, got {type(params).__name__}"
                          + (" (CLSC-2 projects with moca.projection.project2)" if type(params).__name__ == "Params2"
                             else ""))
    L = _layout(params)
    values = action_values(raw)
    V, M, C = _as_stock("virgin", virgin), _as_stock("recycled", recycled), _as_stock("cores", cores)
    return np.array(project_counted(values, V, M, C, _as_regime(regime), L)[0], dtype=np.float64)


def layout_of(params: Params) -> ConstraintLayout:
    """The constants of the constraints for ``params`` (for :func:`project_counted`)."""
    return _layout(params)


def rows_kept(action: list[float], virgin: float, recycled: float, cores: float, regime: tuple[float, float, float],
              layout: ConstraintLayout) -> tuple[bool, ...]:
    """Per spec row 1-8, whether one action (6 floats) keeps it, by the spec's definition of
    a violation; arguments as for :func:`project_counted`."""
    r, cap, kappa = regime
    return _rows_ok_one(action, virgin, recycled, cores, r, cap, kappa, layout)


# --- training path, common case: the blocks separate -------------------------------------------
# The whole training path works on numpy float64 arrays with the batch dimension last ([6, n],
# [5, 6, n]) so that sums over coordinates or rows add contiguous vectors. numpy rather than
# torch: it does a few hundred tiny vector operations per call, and numpy's per-operation
# overhead is several times lower on CPU; the autograd.Function at the end wraps it.
#
# Rows 3 and 6 involve only (u_v, u_r), rows 5 and 8 only (g, f, w), and o only its bounds; only
# row 7 (the emission cap) couples them. So when the cap is absent or slack at the answer, the
# projection is three independent small projections. For each block, the answer is the nearest
# feasible point among the projections onto "box and some of the block's rows as equalities"
# (if W is the set of rows active at the answer, the answer is also the projection onto
# box and W-as-equalities, by convexity; every candidate that is feasible lies in the set).
# Each candidate has a closed form, so the whole batch is solved without iterations.
_CANDIDATE_TOL = 1e-10  # a candidate is feasible within this (unit-norm rows; rhs are tightened)


def _segment(y: np.ndarray, p0: np.ndarray, d: np.ndarray, upper: np.ndarray):
    """Projection of ``y`` [k, n] onto the line ``p0 + t d`` (``d`` unit) within the box
    ``[0, upper]``; returns the point and whether line and box meet."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        moving = np.abs(d) > 1e-12
        t0 = np.where(moving, -p0 / d, -np.inf)
        t1 = np.where(moving, (upper - p0) / d, np.inf)
    lo = np.where(moving, np.minimum(t0, t1), -np.inf).max(0)
    hi = np.where(moving, np.maximum(t0, t1), np.inf).min(0)
    still_ok = (moving | ((p0 >= -_CANDIDATE_TOL) & (p0 <= upper + _CANDIDATE_TOL))).all(0)
    meets = still_ok & (lo <= hi + _CANDIDATE_TOL) & np.isfinite(lo) & np.isfinite(hi)
    t = np.clip(((y - p0) * d).sum(0), lo, np.maximum(lo, hi))
    return np.clip(p0 + np.where(meets, t, 0.0) * d, 0.0, upper), meets


def _knapsack(y: np.ndarray, g: np.ndarray, h: np.ndarray, upper: np.ndarray):
    """Projection of ``y`` [k, n] onto ``{g z = h, 0 <= z <= upper}``: ``clip(y - nu g)`` with
    ``phi(nu) = g clip(y - nu g) - h`` = 0; phi is nonincreasing and linear between the 2k
    values of nu where a coordinate reaches a bound, so nu follows from one interpolation.
    Returns the point and whether the hyperplane meets the box."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # masked where g ~ 0
        nz = np.abs(g) > 1e-15
        bps = np.sort(np.concatenate([np.where(nz, y / g, 0.0), np.where(nz, (y - upper) / g, 0.0)]), axis=0)
    at = np.clip(y[None] - bps[:, None, :] * g[None], 0.0, upper[None])  # [2k, k, n]
    phi = (at * g[None]).sum(1) - h  # [2k, n], nonincreasing
    k = (phi >= 0.0).sum(0) - 1  # last breakpoint with phi >= 0
    meets = (k >= 0) & ((k < bps.shape[0] - 1) | (phi[-1] <= _CANDIDATE_TOL))
    k0 = np.clip(k, 0, bps.shape[0] - 1)
    k1 = np.minimum(k0 + 1, bps.shape[0] - 1)
    ar = np.arange(y.shape[1])
    n0, n1, p0, p1 = bps[k0, ar], bps[k1, ar], phi[k0, ar], phi[k1, ar]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        nu = np.where(p0 > p1, n0 + p0 * (n1 - n0) / (p0 - p1), n0)
    return np.clip(y - np.where(meets, nu, 0.0) * g, 0.0, upper), meets


def _nearest_feasible(y: np.ndarray, candidates: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray,
                      rhs: np.ndarray, upper: np.ndarray):
    """Among candidate points (each [k, n] with a valid mask [n]), the nearest to ``y`` that
    keeps the box and ``rows`` [m, k, n] z <= ``rhs`` [m, n]; and whether one did."""
    best = np.full(y.shape, np.nan)
    best_dist = np.full(y.shape[1], np.inf)
    # A candidate computed from a far-away target carries its round-off (z = y - nu g, both
    # terms of y's size): 64 machine epsilons of the target's largest entry, where that is
    # more than the tolerance (targets beyond ~7e3 capacities). With the tolerance alone, the nearest
    # candidate of a target 2.7e7 capacities away broke its row by 8e-10 and was passed over
    # for a farther one; that point then set the ray the far-target step re-projects along.
    tol = np.maximum(_CANDIDATE_TOL, 64 * np.finfo(np.float64).eps * np.abs(y).max(0))
    for z, valid in candidates:
        inside = ((z >= -tol) & (z <= upper + tol)).all(0)
        keeps = ((rows * z[None]).sum(1) <= rhs + tol).all(0)
        dist = np.where(valid & inside & keeps, ((z - y) ** 2).sum(0), np.inf)
        better = dist < best_dist
        best = np.where(better, z, best)
        best_dist = np.where(better, dist, best_dist)
    return best, np.isfinite(best_dist)


def _separable(y: np.ndarray, G: np.ndarray, h: np.ndarray, upper: np.ndarray):
    """Exact projection ignoring row 7, block by block; returns z [6, n], whether every block
    found its answer [n], and whether row 7 holds there [n] (if both, z is the projection)."""
    z = np.empty_like(y)
    z[0] = np.clip(y[0], 0.0, upper[0])
    # Material (u_v, u_r): rows 3 and 6; lines in the plane, direction (-g2, g1).
    ym, um = y[1:3], upper[1:3]
    g3, g6 = G[0, 1:3], G[2, 1:3]
    h3, h6 = h[0], h[2]
    perp = lambda g: np.stack([-g[1], g[0]])  # noqa: E731
    det = g3[0] * g6[1] - g3[1] * g6[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        corner = np.stack([(h3 * g6[1] - h6 * g3[1]) / det, (g3[0] * h6 - g6[0] * h3) / det])
    corner_ok = (np.abs(det) > 1e-12) & (corner >= -_CANDIDATE_TOL).all(0) & (corner <= um + _CANDIDATE_TOL).all(0)
    zm, ok_m = _nearest_feasible(ym, [
        (np.clip(ym, 0.0, um), np.ones(ym.shape[1], dtype=bool)),
        _segment(ym, h3 * g3, perp(g3), um),
        _segment(ym, h6 * g6, perp(g6), um),
        (np.clip(np.nan_to_num(corner), 0.0, um), corner_ok),
    ], np.stack([g3, g6]), np.stack([h3, h6]), um)
    z[1:3] = zm
    # Cores (g, f, w): rows 5 and 8; their common line has direction g5 x g8.
    yc, uc = y[3:6], upper[3:6]
    g5, g8 = G[1, 3:6], G[4, 3:6]
    h5, h8 = h[1], h[4]
    cos = (g5 * g8).sum(0)
    gram = 1.0 - cos * cos
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha, beta = (h5 - cos * h8) / gram, (h8 - cos * h5) / gram  # p0 = alpha g5 + beta g8
        cross = np.stack([g5[1] * g8[2] - g5[2] * g8[1], g5[2] * g8[0] - g5[0] * g8[2], g5[0] * g8[1] - g5[1] * g8[0]])
        length = np.sqrt((cross * cross).sum(0))
        line_ok = (gram > 1e-12) & (length > 1e-12)
        p0 = np.where(line_ok, alpha * g5 + beta * g8, 0.0)
        d = np.where(line_ok, cross / length, 0.0)
    on_line, meets = _segment(yc, p0, d, uc)
    zc, ok_c = _nearest_feasible(yc, [
        (np.clip(yc, 0.0, uc), np.ones(yc.shape[1], dtype=bool)),
        _knapsack(yc, g5, h5, uc),
        _knapsack(yc, g8, h8, uc),
        (on_line, meets & line_ok),
    ], np.stack([g5, g8]), np.stack([h5, h8]), uc)
    z[3:6] = zc
    cap_ok = (G[3] * z).sum(0) <= h[3] + _CANDIDATE_TOL
    return np.nan_to_num(z), ok_m & ok_c, cap_ok


# --- training path, when the cap binds: a batched dual active-set method ----------------------
# The 17 constraint rows, all unit-norm in z: 0-5 lower bounds (-z_i <= 0), 6-11 upper bounds
# (z_i <= upper_i), 12-16 the general rows (GENERAL_ROWS order).
_N_ROWS = 17
_ROW_C = 12 + GENERAL_ROWS.index(5)  # row 5 (cores on hand): its rhs moves with C
_ITERATIONS = 60


def _pinned(G: np.ndarray, h: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Coordinates the constraints force to 0 [6, n]: an upper bound of (about) 0, or a row with
    (about) zero right-hand side whose coefficients on the other free coordinates are all >= 0
    (e.g. row 6 once M = 0 pins u_r: then u_v = 0 too). Fixing them up front removes the
    most degenerate vertices (many active rows, no interior) from the active-set method."""
    pinned = upper <= _FIX_TOL
    for _ in range(3):
        coeff = G * ~pinned  # [5, 6, n]
        forcing = (h <= _FIX_TOL) & (coeff >= -_FIX_TOL).all(1)  # [5, n]
        newly = (forcing[:, None, :] & (coeff > _FIX_TOL)).any(0) & ~pinned
        if not newly.any():
            break
        pinned |= newly
    return pinned


@dataclass
class _Rows:
    """The constraint rows of a batch, pinned coordinates removed."""

    A: np.ndarray  # [n, 17, 6] unit-norm rows (zero where unusable)
    b: np.ndarray  # [17, n]
    usable: np.ndarray  # [17, n] bool: rows on a pinned coordinate, or absent, are left out
    free: np.ndarray  # [6, n] float 0/1
    gnorm: np.ndarray  # [5, n] norm of each general row on the free coordinates

    def take(self, j: np.ndarray) -> "_Rows":
        return _Rows(self.A[j], self.b[:, j], self.usable[:, j], self.free[:, j], self.gnorm[:, j])

    def row(self, j: int) -> np.ndarray:
        return self.A[:, j, :].T  # [6, n]

    def excess(self, z: np.ndarray) -> np.ndarray:
        """``A z - b`` [17, n] (positive = violated)."""
        general = np.einsum("nkj,jn->kn", self.A[:, 12:, :], z) - self.b[12:]
        return np.concatenate([-z, z - self.b[6:12], general])


def _rows(G: np.ndarray, h: np.ndarray, upper: np.ndarray, pinned: np.ndarray) -> _Rows:
    n = G.shape[2]
    free = (~pinned).astype(np.float64)
    A = np.zeros((n, _N_ROWS, 6))
    eye = np.eye(6)
    A[:, :6, :] = -eye * free.T[:, None, :]
    A[:, 6:12, :] = eye * free.T[:, None, :]
    Gf = G * free
    gnorm = np.sqrt((Gf * Gf).sum(1))
    usable_g = gnorm > _FIX_TOL
    scale = np.where(usable_g, gnorm, 1.0)
    A[:, 12:, :] = (Gf / scale[:, None, :]).transpose(2, 0, 1)
    b = np.concatenate([np.zeros((6, n)), upper * free, np.where(usable_g, h / scale, 1.0)])
    usable = np.concatenate([~pinned, ~pinned, usable_g])
    return _Rows(A, b, usable, free, gnorm)


@dataclass
class _Basis:
    """Orthonormal basis (rows of Q, in slots) of a set of constraint rows, with the
    triangular factor: ``row(s) = sum_{s' < s} R[s, s'] Q[s'] + N[s] Q[s]``."""

    Q: np.ndarray  # [6, 6, n] slots x coordinates
    R: np.ndarray  # [6, 6, n]
    N: np.ndarray  # [6, n] (1 on unused slots)
    row: np.ndarray  # [6, n] int: constraint row in each slot (0 on unused slots)
    count: np.ndarray  # [n] int: slots in use

    @classmethod
    def empty(cls, n: int) -> "_Basis":
        return cls(np.zeros((6, 6, n)), np.zeros((6, 6, n)), np.ones((6, n)), np.zeros((6, n), dtype=np.int64),
                   np.zeros(n, dtype=np.int64))

    def take(self, j: np.ndarray) -> "_Basis":
        return _Basis(self.Q[..., j], self.R[..., j], self.N[:, j], self.row[:, j], self.count[j])

    def put(self, j: np.ndarray, other: "_Basis") -> None:
        self.Q[..., j], self.R[..., j], self.N[:, j] = other.Q, other.R, other.N
        self.row[:, j], self.count[j] = other.row, other.count

    def coefficients(self, a: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """``Q a`` [6, n] and the part of ``a`` [6, n] orthogonal to the basis."""
        c = np.zeros_like(a)
        if slots == 0:
            return c, a.copy()
        c[:slots] = np.einsum("skn,kn->sn", self.Q[:slots], a)
        return c, a - np.einsum("skn,sn->kn", self.Q[:slots], c[:slots])

    def append(self, sel: np.ndarray, row: np.ndarray, c: np.ndarray, d: np.ndarray) -> None:
        """Add ``row`` [n] (coefficients ``c`` on the basis, part ``d`` orthogonal to it) to
        the elements ``sel`` (index array)."""
        k = self.count[sel]
        c, d = c[:, sel], d[:, sel]
        if k.max(initial=0) > 0:  # second Gram-Schmidt pass ("twice is enough") keeps Q orthonormal
            Q = self.Q[..., sel]
            c2 = np.einsum("skn,kn->sn", Q, d)
            c, d = c + c2, d - np.einsum("skn,sn->kn", Q, c2)
        norm = np.sqrt((d * d).sum(0))
        self.Q[k, :, sel] = (d / norm).T
        self.R[k, :, sel] = c.T
        self.N[k, sel] = norm
        self.row[k, sel] = row[sel]
        self.count[sel] += 1

    def without(self, rows: "_Rows", sel: np.ndarray, slot: np.ndarray) -> tuple["_Basis", np.ndarray]:
        """Basis of the elements ``sel`` with the row in ``slot`` [len(sel)] removed, rebuilt by
        Gram-Schmidt over the remaining rows in slot order; also whether all stayed independent."""
        m = sel.size
        out = _Basis.empty(m)
        count = self.count[sel]
        ok = np.ones(m, dtype=bool)
        for s in range(int(count.max(initial=0))):
            on = (s < count) & (s != slot)
            if not on.any():
                continue
            row = self.row[s, sel]
            c, d = out.coefficients(rows.A[sel, row, :].T, int(out.count.max(initial=0)))
            norm = np.sqrt((d * d).sum(0))
            ok &= ~on | (norm > _DEP_TOL)
            out.append(np.flatnonzero(on & (norm > _DEP_TOL)), row, c, d)
        return out, ok

    def solve_upper(self, rhs: np.ndarray, slots: int) -> np.ndarray:
        """``x`` [6, n] with ``Rt^T x = rhs`` (``Rt``: R with N on the diagonal), 0 on unused slots."""
        x = np.zeros_like(rhs)
        for k in range(slots - 1, -1, -1):
            acc = rhs[k] - (self.R[k + 1:slots, k] * x[k + 1:slots]).sum(0) if k + 1 < slots else rhs[k]
            x[k] = np.where(k < self.count, acc / self.N[k], 0.0)
        return x

    def solve_lower(self, rhs: np.ndarray, slots: int) -> np.ndarray:
        """``x`` [6, n] with ``Rt x = rhs``, 0 on unused slots."""
        x = np.zeros_like(rhs)
        for k in range(slots):
            acc = rhs[k] - (self.R[k, :k] * x[:k]).sum(0) if k else rhs[k]
            x[k] = np.where(k < self.count, acc / self.N[k], 0.0)
        return x

    def on_rows(self, per_slot: np.ndarray) -> np.ndarray:
        """Scatter a per-slot quantity [6, n] to the constraint rows [17, n] (0 elsewhere)."""
        out = np.zeros((_N_ROWS, per_slot.shape[1]))
        used = np.arange(6)[:, None] < self.count
        cols = np.broadcast_to(np.arange(per_slot.shape[1]), per_slot.shape)
        out[self.row[used], cols[used]] = per_slot[used]
        return out


def _basis(rows: _Rows, active: np.ndarray, sel: np.ndarray | None = None) -> tuple[_Basis, np.ndarray]:
    """Gram-Schmidt over the ``active`` rows [17, n] in row order; a row (nearly) in the span
    of the rows before it is skipped. Returns the basis and the rows kept [17, n].
    ``sel``: the elements of ``rows`` that ``active`` is about (default: all)."""
    n = active.shape[1]
    basis = _Basis.empty(n)
    kept = np.zeros_like(active)
    for j in range(_N_ROWS):
        on = active[j] & (basis.count < 6)
        if not on.any():
            continue
        a = rows.row(j) if sel is None else rows.A[sel, j, :].T
        c, d = basis.coefficients(a, int(basis.count.max()))
        norm = np.sqrt((d * d).sum(0))
        keep = on & (norm > _DEP_TOL)
        basis.append(np.flatnonzero(keep), np.full(n, j), c, d)
        kept[j] = keep
    return basis, kept


def _face_point(y: np.ndarray, rows: _Rows, basis: _Basis) -> np.ndarray:
    """Projection of ``y`` onto the affine set where the basis' rows hold with equality."""
    ar = np.arange(y.shape[1])
    slots = int(basis.count.max(initial=0))
    a = rows.A[ar, basis.row[:slots]]  # [slots, n, 6]
    wanted = rows.b[basis.row[:slots], ar] - np.einsum("snk,kn->sn", a, y)
    c = basis.solve_lower(np.concatenate([wanted, np.zeros((6 - slots, y.shape[1]))]), slots)
    return (y + np.einsum("skn,sn->kn", basis.Q[:slots], c[:slots])) * rows.free


@dataclass
class _Search:
    """State of the dual active-set method for the elements still being solved."""

    pos: np.ndarray  # [n] position in the batch
    y: np.ndarray  # [6, n] target
    rows: _Rows
    tol: np.ndarray  # [n] violations below this count as 0
    z: np.ndarray  # [6, n]
    lam: np.ndarray  # [17, n] multipliers
    active: np.ndarray  # [17, n]
    basis: _Basis
    adding: np.ndarray  # [n] row being added, -1: pick the most violated one

    def take(self, j: np.ndarray) -> "_Search":
        return _Search(self.pos[j], self.y[:, j], self.rows.take(j), self.tol[j], self.z[:, j], self.lam[:, j],
                       self.active[:, j], self.basis.take(j), self.adding[j])


def _clipped_start(y: np.ndarray, rows: _Rows):
    """A valid first state of the dual method with every violated bound active at once: the
    bound rows are orthonormal, so ``clip(y, 0, upper)`` is the projection onto their face and
    the multipliers are the amounts clipped (>= 0). Saves one iteration per violated bound.
    Returns z, multipliers [17, n], active rows [17, n] and their basis."""
    n = y.shape[1]
    upper = rows.b[6:12]
    low = (y < 0.0) & rows.usable[:6]
    high = (y > upper) & rows.usable[6:12]
    z = np.minimum(np.maximum(y, 0.0), upper) * rows.free
    active = np.concatenate([low, high, np.zeros((5, n), dtype=bool)])
    lam = np.concatenate([np.where(low, -y, 0.0), np.where(high, y - upper, 0.0), np.zeros((5, n))])
    basis = _Basis.empty(n)
    for i in range(6):
        for row, on, sign in ((i, low[i], -1.0), (6 + i, high[i], 1.0)):
            sel = np.flatnonzero(on)
            if sel.size:
                k = basis.count[sel]
                basis.Q[k, i, sel] = sign
                basis.row[k, sel] = row
                basis.count[sel] += 1
    return z, lam, active, basis


def _warm_start(y: np.ndarray, z: np.ndarray, rows: _Rows, usable: np.ndarray):
    """The state of the dual method at ``z``, the projection onto a face of a larger set
    (e.g. without row 7): its tight rows, their basis and multipliers (least squares on
    ``y - z = A_s^T lam``). Usable [n] where that representation holds with ``lam >= 0``."""
    scale = 1.0 + np.abs(y).max(0)
    tight = rows.usable & (np.abs(rows.excess(z)) <= 1e-10)
    basis, kept = _basis(rows, tight)
    slots = int(basis.count.max(initial=0))
    coeff, rest = basis.coefficients(y - z, slots)
    lam_slot = basis.solve_upper(coeff, slots)
    good = usable & (np.abs(rest).max(0) <= 1e-9 * scale) & (lam_slot >= -1e-9 * scale).all(0)
    return z, basis.on_rows(np.maximum(lam_slot, 0.0)), kept, basis, good


def _dual_active_set(y: np.ndarray, rows: _Rows, z_start: np.ndarray | None = None,
                     warm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, _Basis, np.ndarray]:
    """Goldfarb & Idnani's dual active-set method (Math. Programming 27, 1983) for the
    projection of ``y`` [6, n], vectorised over the batch.

    Start from ``y`` clipped to the box (see :func:`_clipped_start`); repeatedly take the most violated row p
    and move along the part of its normal orthogonal to the active rows, while the active
    rows' multipliers change as ``lam -= t r``; a multiplier reaching 0 first drops its row
    (partial step), else p joins the active set (full step). Active rows stay linearly
    independent, so degenerate vertices need no special care, and each step raises the dual
    objective, so the method ends. Elements that are done leave the working set.
    ``z_start``, ``warm``: where ``warm`` [n], start instead from the projection ``z_start``
    onto a larger set (see :func:`_warm_start`).
    Returns z [6, n], the active rows [17, n], their basis and a converged mask [n].
    """
    n = y.shape[1]
    y = y * rows.free
    z_out, active_out, basis_out = y.copy(), np.zeros((_N_ROWS, n), dtype=bool), _Basis.empty(n)
    converged = np.zeros(n, dtype=bool)
    start = _clipped_start(y, rows)
    if warm is not None and warm.any():
        *hot, good = _warm_start(y, z_start, rows, warm)
        for cold, warm_part in zip(start[:3], hot[:3]):
            cold[..., good] = warm_part[..., good]
        start[3].put(np.flatnonzero(good), hot[3].take(np.flatnonzero(good)))
    st = _Search(np.arange(n), y, rows, 1e-12 * (1.0 + np.abs(y).max(0)), *start, np.full(n, -1))
    finished = np.zeros(n, dtype=bool)
    stuck = np.zeros(n, dtype=bool)
    for _ in range(_ITERATIONS):
        m = st.pos.size
        ar = np.arange(m)
        # Pick a row to add where none is being added; no violated row left: solved.
        pick = (st.adding < 0) & ~finished
        if pick.any():
            excess = np.where(st.rows.usable & ~st.active, st.rows.excess(st.z), -np.inf)
            worst = np.ascontiguousarray(excess.T).argmax(1)
            solved = pick & (excess[worst, ar] <= st.tol)
            finished |= solved
            st.adding = np.where(pick & ~solved, worst, st.adding)
        live = ~finished & ~stuck
        p = np.where(live, st.adding, 0)
        a_p = st.rows.A[ar, p].T  # [6, m]
        slots = int(st.basis.count.max(initial=0))
        c, d = st.basis.coefficients(a_p, slots)
        norm = np.sqrt((d * d).sum(0))
        independent = (norm > _DEP_TOL) & (st.basis.count < 6)
        violation = (a_p * st.z).sum(0) - st.rows.b[p, ar]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t_full = np.where(independent, violation / (norm * norm), np.inf)
            r = st.basis.solve_upper(c, slots)  # rate at which the active multipliers fall
            lam_slot = st.lam[st.basis.row, ar]
            used = np.arange(6)[:, None] < st.basis.count
            ratio = np.where(used & (r > 1e-12), lam_slot / r, np.inf)
        block = ratio.argmin(0)
        t_partial = ratio[block, ar]
        t = np.minimum(t_full, t_partial)
        stuck |= live & ~np.isfinite(t)  # cannot happen in exact arithmetic: z = 0 is feasible
        go = live & ~stuck
        step = np.where(go, t, 0.0)
        st.z -= np.where(independent, step, 0.0) * d
        lam_slot -= step * r
        st.lam[st.basis.row[used], np.broadcast_to(ar, used.shape)[used]] = lam_slot[used]
        st.lam[p, ar] += step
        full = go & (t_full <= t_partial)
        partial = go & ~full
        if full.any():  # p joins the active set
            sel = np.flatnonzero(full)
            st.basis.append(sel, p, c, d)
            st.active[p[sel], sel] = True
            st.adding[sel] = -1
        if partial.any():  # the blocking row leaves; rebuild those elements' basis
            sel = np.flatnonzero(partial)
            gone = st.basis.row[block[sel], sel]
            st.active[gone, sel] = False
            st.lam[gone, sel] = 0.0
            sub, independent = st.basis.without(st.rows, sel, block[sel])
            st.basis.put(sel, sub)
            stuck[sel] |= ~independent
        # Elements that are solved (or stuck: left unconverged for the fallback) leave the
        # working set once they are a good share of it (copying the rest costs a step).
        leaving = finished | stuck
        if leaving.all() or leaving.sum() > 0.5 * m:
            out = np.flatnonzero(leaving)
            z_out[:, st.pos[out]] = st.z[:, out]
            active_out[:, st.pos[out]] = st.active[:, out]
            basis_out.put(st.pos[out], st.basis.take(out))
            converged[st.pos[out]] = finished[out]
            if leaving.all():
                return z_out, active_out, basis_out, converged
            keep = np.flatnonzero(~leaving)
            st = st.take(keep)
            finished, stuck = finished[keep], stuck[keep]
    z_out[:, st.pos], active_out[:, st.pos] = st.z, st.active
    basis_out.put(st.pos, st.basis)
    converged[st.pos] = finished
    return z_out, active_out, basis_out, converged


def _identify(z: np.ndarray, rows: _Rows) -> np.ndarray:
    """Active rows [17, n] of a solution found another way (DAQP, shrinking), from slacks."""
    return rows.usable & (rows.excess(z) >= -1e-9)


# --- training path: the batch, forward and backward ---------------------------------------------
@dataclass
class _BatchSolution:
    """What the backward pass needs about the elements that were projected."""

    idx: np.ndarray  # [n] batch indices
    rows: _Rows
    active: np.ndarray  # [17, n]
    stock_binds: np.ndarray  # [6, n] bool: upper_i is set by a stock (-, V, M, C, C, C)
    scale: np.ndarray  # S [6]
    norm5: float


def _solve_batch(a: np.ndarray, V, M, C, r, cap, kappa, L: ConstraintLayout, out_dtype: torch.dtype):
    """Executed actions ``[6, B]`` (float64 values representable in ``out_dtype`` without a
    violation) and what the backward pass needs about the projected elements."""
    ok = _rows_ok_batch(a, V, M, C, r, cap, kappa, L).all(0)
    # Batch last, like the rest of this path; the caller hands it out as a [B, 6] view whose
    # columns are contiguous, which is what the simulator's step reads fastest.
    # Always a copy: for B = 1 (or a column-major input) a.T is contiguous already, and
    # writing the projection into it would overwrite the caller's raw action tensor.
    out = np.array(a.T, order="C")
    idx = np.flatnonzero(~ok)
    if idx.size == 0:
        return out, None
    s = L.scale
    t = TIGHTEN[out_dtype]
    Vi, Mi, Ci, ri, capi, ki = V[idx], M[idx], C[idx], r[idx], cap[idx], kappa[idx]
    G, h, upper = _system_batch(Vi, Mi, Ci, ri, capi, ki, L, t)
    pinned = _pinned(G, h, upper)
    rows = _rows(G, h, upper, pinned)
    y = (a[idx] / s).T

    # Common case: the blocks separate. A far-away target (huge raw action) is replaced by a
    # nearby point on the same normal ray, so that the answer is computed from numbers of order 1.
    upper_free = upper * rows.free
    z, blocks_ok, cap_ok = _separable(y, G, h, upper_free)
    gap = np.abs(y - z).max(0)
    far = blocks_ok & (gap > 100.0)
    if far.any():
        near = z[:, far] + (y[:, far] - z[:, far]) / gap[far]
        z[:, far], blocks_ok[far], cap_ok[far] = _separable(near, G[..., far], h[:, far], upper_free[:, far])
    done = blocks_ok & cap_ok
    active = np.zeros((_N_ROWS, idx.size), dtype=bool)

    # The emission cap binds: the dual active-set method on those elements, started from the
    # answer without the cap where that is a valid start.
    coupled = np.flatnonzero(~done)
    if coupled.size:
        sub = rows.take(coupled)
        warm = blocks_ok[coupled]
        zc, act, basis, ok = _dual_active_set(y[:, coupled], sub, z[:, coupled], warm)
        # Exact point of the final face (far-away targets moved as above).
        gap = np.abs(y[:, coupled] * sub.free - zc).max(0)
        target = np.where(gap > 100.0, zc + (y[:, coupled] * sub.free - zc) / np.maximum(gap, 1.0), y[:, coupled])
        z[:, coupled] = np.where(ok, _face_point(target, sub, basis), zc)
        active[:, coupled] = act
        done[coupled] = ok
    z = np.minimum(np.maximum(z, 0.0), upper_free)

    # Elements the method did not finish: DAQP, one by one (not seen in tests).
    for j in np.flatnonzero(~done):
        Gj, bounds_j, address_j = _system_one(float(Vi[j]), float(Mi[j]), float(Ci[j]), float(ri[j]), float(capi[j]),
                                   float(ki[j]), L, t)
        zj = _daqp((-y[:, j]).tolist(), Gj, address_j, bounds_j, _ONES)
        z[:, j] = zj if zj is not None else 0.0  # a failed solve is caught by the check below

    # The result as the caller will see it (rounded to out_dtype) must keep every row.
    np_dtype = np.float32 if out_dtype == torch.float32 else np.float64
    executed = (z.T * s).astype(np_dtype).astype(np.float64)
    good = _rows_ok_batch(executed, Vi, Mi, Ci, ri, capi, ki, L).all(0)
    for j in np.flatnonzero(~good):
        def ok(x, j=j):
            x = np.asarray(x, dtype=np_dtype).astype(np.float64)
            return all(_rows_ok_one(x.tolist(), Vi[j], Mi[j], Ci[j], ri[j], capi[j], ki[j], L))
        executed[j] = _project_one(a[idx[j]].tolist(), float(Vi[j]), float(Mi[j]), float(Ci[j]), float(ri[j]),
                                   float(capi[j]), float(ki[j]), L, t, ok)[0]
        z[:, j] = executed[j] / s
    # Active rows for the backward pass: from the slacks where no solver reported them.
    redo = np.setdiff1d(np.arange(idx.size), coupled[done[coupled] & good[coupled]])
    if redo.size:
        active[:, redo] = _identify(z[:, redo], rows.take(redo))
    out[:, idx] = executed.T

    mk = L.mk - t * max(1.0, L.mk)
    cut = lambda b: b - t * np.maximum(1.0, b)  # noqa: E731
    k_o, k_d, k_f, k_w = (k - t * max(1.0, k) for k in L.caps)
    stock_binds = np.stack([np.zeros(idx.size, dtype=bool), cut(Vi) < mk, cut(Mi) < mk,
                            cut(Ci) < k_d, cut(Ci) < k_f, cut(Ci) < k_w]) & (np.stack([Vi, Vi, Mi, Ci, Ci, Ci]) > 0)
    return out, _BatchSolution(idx, rows, active, stock_binds, s, L.norm5)


def _backward(sol: _BatchSolution, grad_exec: np.ndarray):
    """Gradients of the projected elements w.r.t. the raw action [n, 6] and V, M, C [n].

    On its face the projection is ``z = y - A_s^T (A_s A_s^T)^+ (A_s y - b_s)`` (``A_s``: the
    active rows, bounds included), so with ``w = dL/dz = S * dL/da``:
    ``dL/dy = w - A_s^T (A_s A_s^T)^+ A_s w`` and ``dL/db_s = (A_s A_s^T)^+ A_s w``.
    """
    rows = sol.rows
    w = (grad_exec * sol.scale).T * rows.free  # a pinned coordinate does not move with y
    basis, _ = _basis(rows, sol.active)
    slots = int(basis.count.max(initial=0))
    coeff, grad_y = basis.coefficients(w, slots)
    grad_b = basis.on_rows(basis.solve_upper(coeff, slots))  # [17, n]
    s = sol.scale
    up = np.where(sol.stock_binds, grad_b[6:12], 0.0) / s[:, None]
    # b of row 5 is (C / norm5) / gnorm (unit rows on the free coordinates)
    g5 = rows.gnorm[_ROW_C - 12]
    grad_c = up[3] + up[4] + up[5] + grad_b[_ROW_C] / (sol.norm5 * np.maximum(g5, _FIX_TOL))
    return grad_y.T / s, up[1], up[2], grad_c


class _ProjectBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw: Tensor, virgin: Tensor, recycled: Tensor, cores: Tensor, regime: Tensor,
                params: Params) -> Tensor:
        L = _layout(params)
        a, V, M, C, r, cap, kappa = _batch_inputs(raw, virgin, recycled, cores, regime, "raw action")
        out, sol = _solve_batch(a, V, M, C, r, cap, kappa, L, raw.dtype)
        ctx.sol = sol
        ctx.stock_dtypes = [x.dtype if isinstance(x, Tensor) else raw.dtype for x in (virgin, recycled, cores)]
        return torch.as_tensor(out, dtype=raw.dtype, device=raw.device).T

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        sol: _BatchSolution | None = ctx.sol
        grad_raw = grad_out.clone()
        grads = [torch.zeros(grad_out.shape[0], dtype=dt, device=grad_out.device) for dt in ctx.stock_dtypes]
        if sol is not None:
            g = grad_out.detach().cpu().numpy().astype(np.float64)[sol.idx]
            gy, gv, gm, gc = _backward(sol, g)
            idx = torch.as_tensor(sol.idx, device=grad_out.device)
            grad_raw[idx] = torch.as_tensor(gy, dtype=grad_out.dtype, device=grad_out.device)
            for k, gk in enumerate((gv, gm, gc)):
                grads[k][idx] = torch.as_tensor(gk, dtype=grads[k].dtype, device=grad_out.device)
        stock_grads = [gk if ctx.needs_input_grad[1 + k] else None for k, gk in enumerate(grads)]
        return grad_raw, *stock_grads, None, None


def project_batch(raw: Tensor, state: Any, regime: Tensor, params: Params) -> Tensor:
    """Executed actions ``[B, 6]`` for raw actions ``[B, 6]`` (float32 or float64, same out).

    ``state`` is the post-arrival :class:`moca.sim.State` (its ``virgin``, ``recycled``,
    ``cores`` ``[B]`` are used), ``regime`` ``[B, 5]`` the regime rows at t. Differentiable:
    gradients flow to ``raw`` and to the three stocks (where a stock bound is active).
    Matches :func:`moca.sim.rollout`'s ``project`` argument.
    """
    if not isinstance(raw, Tensor):
        raise SafetyError(f"raw action: expected a torch tensor, got {type(raw).__name__}")
    if raw.dtype not in TIGHTEN:
        raise SafetyError(f"raw action: dtype {raw.dtype} is not float32 or float64")
    return _ProjectBatch.apply(raw, state.virgin, state.recycled, state.cores, regime, params)
