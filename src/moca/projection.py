"""The safety layer over rows declared as data (:mod:`moca.world`), for any world model.

The executed action is the Euclidean projection of the raw action onto the model's rows in
capacity-normalised coordinates ``z = a / S``:

    argmin_a  sum_i ((a_i - raw_i) / S_i)^2   s.t.  G a <= h0 + J x,  a >= 0.

Three engines, generic over the declared rows:

* :func:`project` (deployment, one action): a feasible raw action is returned unchanged;
  otherwise DAQP (a dual active-set QP solver) solves against tightened rows, the result
  is re-checked against the spec's definition of a violation (:func:`violations`), and, if
  round-off still breaks a row, the action is shrunk towards the model's safe action
  (which the tightened system always contains), so the executed action breaks no row.
* :func:`project_batch` (training, ``[B, n]`` torch, differentiable): the same solve for
  every infeasible element (DAQP in a loop: each solve is a few microseconds), and the
  analytic active-set backward ``dL/dy = w - A_s^T (A_s A_s^T)^+ A_s w``,
  ``dL/dh_s = (A_s A_s^T)^+ A_s w`` (``A_s``: the active rows, ``w = S * dL/da``), with
  the right-hand sides' gradient carried to the inputs through ``J``.
* :func:`violations`: per spec row, the actions breaking it by more than
  ``1e-6 * max(1, |right-hand side|)``; for CLSC-2 also the window settlement
  ``U_r >= r (U_v + U_r)`` at each window's last period.

Why not CLSC-1's hand-written per-block projection (:mod:`moca.safety`): it is exact only
for CLSC-1's three separable blocks; CLSC-2's rows 6a/6b couple material, cores and the
market, so a general QP method over the rows is the right tool (see
``benchmarks/bench_projection2.py`` for DAQP in a loop against a batched solver).

The tightening (why it is generic): the solver sees ``G_t = G + t |G|`` (each coefficient
enlarged by ``t`` of its size: on ``a >= 0`` that adds a margin proportional to the terms
of the row, which absorbs rounding a float64 answer to float32) and
``h_t = h - t max(1, |h|)``, but never below ``G_t a_safe``, so the model's safe action
stays inside the solver's set and a solve can always succeed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import daqp
import numpy as np
import torch
from torch import Tensor

from moca.world import CLSC2_ROWS, UR2, UV2, VIOLATION_TOL, X_N, X_UR, X_UV, RowCoefficients, RowModel, regime_rows

TIGHTEN = {torch.float64: 1e-9, torch.float32: 1e-6}
_FIX_TOL = 1e-12  # normalised bounds / right-hand sides below this fix coordinates at 0
# DAQP's primal tolerance; on a failed solve (seen with targets ~1e6 away and bounds ~1e-10,
# where it reports a feasible set infeasible) the looser one, whose answer the check then vets
_PRIMAL_TOLS = (1e-11, 1e-9)
_RANK_TOL = 1e-9  # eigenvalues of A_s^T A_s (unit rows) below this are the null space
_SETTLEMENT = "settlement"


class ProjectionError(ValueError):
    """Bad input to the safety layer (non-finite or wrongly shaped action, inputs or regime)."""


# --- coefficients, cached per regime for the one-action path ------------------------------
_CACHE: dict[tuple, tuple[Any, RowCoefficients, np.ndarray]] = {}


def _coefficients(model: RowModel, regime: np.ndarray, params: Any) -> RowCoefficients:
    if regime.shape[0] != 1:
        return model.coefficients(regime, params)
    key = (model.name, id(params), tuple(regime[0].tolist()))
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is params:
        return hit[1]
    if len(_CACHE) > 1024:
        _CACHE.clear()
    coefficients = model.coefficients(regime, params)
    _CACHE[key] = (params, coefficients, regime)
    return coefficients


def _actions(model: RowModel, raw: Any, what: str) -> np.ndarray:
    a = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else raw
    a = np.array(a, dtype=np.float64)
    n = len(model.actions)
    if a.ndim not in (1, 2) or a.shape[-1] != n:
        raise ProjectionError(f"{what}: expected shape [{n}] or [B, {n}] ({', '.join(model.actions)}), "
                              f"got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ProjectionError(f"{what} has a non-finite entry (NaN or inf): {a[~np.isfinite(a)][0]}")
    return a.reshape(-1, n)


def _prepare(model: RowModel, raw: Any, inputs: Any, regime: Any, params: Any, what: str):
    a = _actions(model, raw, what)
    try:
        x = model.input_array(inputs, batch=a.shape[0])
        reg = regime_rows(regime, batch=a.shape[0])
    except ValueError as err:
        raise ProjectionError(str(err)) from None
    return a, x, reg, _coefficients(model, reg, params)


# --- violations (the spec's definition) ----------------------------------------------------
def _excess(c: RowCoefficients, a: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[B, m]`` how far each row is broken (> 0) and its tolerance."""
    h = c.h0 + np.einsum("bmk,bk->bm", c.J, x)
    excess = np.einsum("bmn,bn->bm", c.G, a) - h
    rhs = c.r0 + np.einsum("bmk,bk->bm", c.Rj, x) + np.einsum("bmn,bn->bm", c.R, a)
    return np.where(c.on, excess, -np.inf), VIOLATION_TOL * np.maximum(1.0, np.abs(rhs))


def _settlement_excess(model: RowModel, reg: np.ndarray, a: np.ndarray, x: np.ndarray):
    """CLSC-2's window settlement at a window's last period (``n_t = 0``): excess of
    ``r (U_v + U_r) - U_r`` after the action, and its tolerance; -inf elsewhere."""
    if model is not CLSC2_ROWS:
        return None
    used_v, used_r = x[:, X_UV] + a[:, UV2], x[:, X_UR] + a[:, UR2]
    due = reg[:, 0] * (used_v + used_r)
    last = (x[:, X_N] < 0.5) & (reg[:, 0] > 0)
    return np.where(last, due - used_r, -np.inf), VIOLATION_TOL * np.maximum(1.0, due)


def _ok(model: RowModel, c: RowCoefficients, reg: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``[B]`` whether each action keeps every row (and the settlement)."""
    excess, tol = _excess(c, a, x)
    ok = (excess <= tol).all(1) & (a >= -VIOLATION_TOL).all(1)
    settle = _settlement_excess(model, reg, a, x)
    if settle is not None:
        ok &= settle[0] <= settle[1]
    return ok


def row_violations(model: RowModel, action: Any, inputs: Any, regime: Any, params: Any) -> dict[str, int]:
    """Per spec row (and ``"settlement"`` for CLSC-2), how many of the actions ``[n]`` or
    ``[B, n]`` break it by more than ``1e-6 * max(1, |right-hand side|)`` (the right-hand side
    as the spec writes the row), counted once per action and row."""
    a, x, reg, c = _prepare(model, action, inputs, regime, params, "action")
    excess, tol = _excess(c, a, x)
    broken = excess > tol
    counts = {}
    for row in model.spec_rows:
        of_row = np.array([s == row for s in model.row_spec])
        hit = broken[:, of_row].any(1)
        lower = np.array([s == row for s in model.lower_spec])
        if lower.any():
            hit |= (a[:, lower] < -VIOLATION_TOL).any(1)
        counts[row] = int(hit.sum())
    settle = _settlement_excess(model, reg, a, x)
    if settle is not None:
        counts[_SETTLEMENT] = int((settle[0] > settle[1]).sum())
    return counts


def violations(model: RowModel, action: Any, inputs: Any, regime: Any, params: Any) -> int:
    """Broken rows (and CLSC-2 window settlements) over one action or a batch."""
    return sum(row_violations(model, action, inputs, regime, params).values())


# --- the solver's system -----------------------------------------------------------------
@dataclass
class _System:
    """The projection problem of a batch in ``z`` coordinates, rows unit-norm."""

    A: np.ndarray  # [B, m, n] tightened, unit-norm; zero where the row is off or a bound
    b: np.ndarray  # [B, m] (inf where off or a bound)
    upper: np.ndarray  # [B, n] box (from the rows on one coordinate), 0 where pinned
    bound_row: np.ndarray  # [B, n] int: the row that sets upper (-1: none)
    pinned: np.ndarray  # [B, n] bool: coordinates the rows force to 0
    general: np.ndarray  # [B, m] bool: rows passed to the solver as rows


def _system(c: RowCoefficients, x: np.ndarray, safe: np.ndarray, scale: np.ndarray, t: float) -> _System:
    B, m, n = c.G.shape
    h = c.h0 + np.einsum("bmk,bk->bm", c.J, x)
    Gt = (c.G + t * np.abs(c.G)) * scale
    ht = np.maximum(h - t * np.maximum(1.0, np.abs(h)), np.einsum("bmn,bn->bm", Gt, safe / scale))
    norm = np.sqrt((Gt * Gt).sum(-1))
    on = c.on & (norm > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        A = np.where(on[..., None], Gt / np.where(on, norm, 1.0)[..., None], 0.0)
        b = np.where(on, ht / np.where(on, norm, 1.0), np.inf)
    # Rows on one coordinate with a positive coefficient are bounds of the box.
    nonzero = np.abs(A) > 0
    single = on & (nonzero.sum(-1) == 1) & (A.max(-1) > 0)
    upper = np.full((B, n), np.inf)
    bound_row = np.full((B, n), -1)
    which = np.abs(A).argmax(-1)  # [B, m]
    for j in range(m):
        sel = np.flatnonzero(single[:, j])
        if sel.size:
            i = which[sel, j]
            value = b[sel, j] / A[sel, j, i]
            tighter = value < upper[sel, i]
            upper[sel[tighter], i[tighter]] = value[tighter]
            bound_row[sel[tighter], i[tighter]] = j
    general = on & ~single
    A = np.where(general[..., None], A, 0.0)
    b = np.where(general, b, np.inf)
    upper = np.maximum(upper, 0.0)
    # Pin what the rows force to 0 (a zero upper bound, or a row with right-hand side ~0
    # whose coefficients on the free coordinates are all >= 0): DAQP would enforce those
    # only to its tolerance divided by a possibly tiny coefficient (e.g. a mandate r ~ 0).
    pinned = upper <= _FIX_TOL
    for _ in range(n):
        coeff = A * ~pinned[:, None, :]
        forcing = general & (b <= _FIX_TOL) & (coeff >= -_FIX_TOL).all(-1)
        newly = (forcing[..., None] & (coeff > _FIX_TOL)).any(1) & ~pinned
        if not newly.any():
            break
        pinned |= newly
    upper = np.where(pinned, 0.0, upper)
    return _System(A, b, upper, bound_row, pinned, general)


_ZEROS: dict[int, np.ndarray] = {}
_SENSE: dict[int, np.ndarray] = {}
_EYE: dict[int, np.ndarray] = {}


def _daqp_one(y: np.ndarray, A: np.ndarray, b: np.ndarray, upper: np.ndarray):
    """Projection of ``y`` [n] onto ``{A z <= b, 0 <= z <= upper}`` by DAQP: (z, lam [n+m])
    or None. A far-away target loses ~1e-16 |y| to cancellation in ``z = y - A^T lam``;
    ``y - z`` lies in the normal cone at ``z``, so the answer is recomputed from
    ``z + (y - z) / |y - z|``, a target of order 1 with the same projection."""
    n, m = y.size, b.size
    if n not in _EYE:
        _EYE[n] = np.eye(n)
    if n + m not in _ZEROS:
        _ZEROS[n + m] = np.concatenate([np.zeros(n), np.full(m, -np.inf)])
        _SENSE[n + m] = np.zeros(n + m, dtype=np.int32)
    bupper = np.concatenate([upper, b])
    for tol in _PRIMAL_TOLS:
        z, _, flag, info = daqp.solve(_EYE[n], -y, A, bupper, _ZEROS[n + m], _SENSE[n + m], primal_tol=tol)
        if flag >= 1:
            break
    else:
        return None
    step = np.abs(y - z).max()
    if step > 100.0:
        z2, _, flag, info2 = daqp.solve(_EYE[n], -(z + (y - z) / step), A, bupper, _ZEROS[n + m], _SENSE[n + m],
                                        primal_tol=tol)
        if flag >= 1:
            z, info = z2, info2
    return np.clip(z, 0.0, upper), info["lam"]


def _shrink(a: np.ndarray, safe: np.ndarray, ok) -> np.ndarray:
    """The point of the segment from ``safe`` to ``a`` nearest ``a`` that ``ok`` accepts
    (bisection; the feasible set is convex and holds ``safe``)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if ok(safe + mid * (a - safe)):
            lo = mid
        else:
            hi = mid
    return safe + lo * (a - safe)


@dataclass
class _Solved:
    """What the backward pass needs about the projected elements."""

    index: np.ndarray  # [p] batch positions
    active: np.ndarray  # [p, m] rows active (general rows and the rows that are bounds)
    lower: np.ndarray  # [p, n] lower bounds active
    pinned: np.ndarray  # [p, n]


def _solve(model: RowModel, a: np.ndarray, x: np.ndarray, reg: np.ndarray, c: RowCoefficients, params: Any,
           t: float, out_dtype: np.dtype) -> tuple[np.ndarray, _Solved | None]:
    """Executed actions ``[B, n]`` (float64 values that keep every row after rounding to
    ``out_dtype``) and, for the elements that were projected, their active sets."""
    feasible = _ok(model, c, reg, a, x)
    out = a.copy()
    index = np.flatnonzero(~feasible)
    if index.size == 0:
        return out, None
    scale = model.scale(params)
    cs, xs, rs, ys = c.take(index), x[index], reg[index], a[index] / scale
    safe = model.safe_action(xs, rs, params)
    n = a.shape[1]
    m = c.G.shape[1]
    active = np.zeros((index.size, m), dtype=bool)
    lower = np.zeros((index.size, n), dtype=bool)
    executed = np.empty((index.size, n))
    rounded = lambda v: v.astype(out_dtype).astype(np.float64)  # noqa: E731
    systems = [_system(cs, xs, safe, scale, tt) for tt in (t, max(1e-6, 10 * t))]
    for j in range(index.size):
        cj = cs.take([j])
        ok = lambda v, j=j, cj=cj: bool(_ok(model, cj, rs[j:j + 1], rounded(v)[None], xs[j:j + 1])[0])  # noqa: E731
        best = None
        for s in systems:
            solved = _daqp_one(ys[j] * ~s.pinned[j], s.A[j], s.b[j], s.upper[j])
            if solved is None:
                continue
            z, lam = solved
            best = rounded(z * scale)
            if ok(best):
                break
        else:
            # Last resort (not seen in tests): towards the safe action, which keeps every row.
            best = rounded(_shrink(best if best is not None else safe[j], safe[j], ok))
            lam = None
        executed[j] = best
        if lam is not None:
            lam_box, lam_rows = lam[:n], lam[n:]
            active[j] = (lam_rows > 0) & s.general[j]
            up = (lam_box > 0) & (s.bound_row[j] >= 0)
            active[j, s.bound_row[j][up]] = True
            lower[j] = lam_box < 0
        else:  # from the slacks
            zj = best / scale
            active[j] = s.general[j] & ((s.A[j] @ zj - s.b[j]) >= -1e-9)
            up = (zj >= s.upper[j] - 1e-9) & (s.bound_row[j] >= 0)
            active[j, s.bound_row[j][up]] = True
            lower[j] = zj <= 1e-12
    out[index] = executed
    return out, _Solved(index, active, lower & ~systems[0].pinned, systems[0].pinned)


# --- deployment: one action --------------------------------------------------------------
def project(model: RowModel, raw: Any, inputs: Any, regime: Any, params: Any) -> np.ndarray:
    """The executed action (float64 ``[n]``) for one raw action ``[n]``: the raw action
    itself when it keeps every row, else its projection, with 0 violations.

    ``inputs``: the model's named per-decision inputs (a mapping or an object with those
    attributes, or an array ``[k]``), after the period's arrivals; ``regime``: a
    :class:`moca.regime.Regime` or its row [r, tau, cap (inf = none), lambda, kappa]."""
    a, x, reg, c = _prepare(model, raw, inputs, regime, params, "raw action")
    if a.shape[0] != 1:
        raise ProjectionError(f"raw action: expected one action [{len(model.actions)}], got {a.shape[0]}; "
                              "use project_batch for a batch")
    out, _ = _solve(model, a, x, reg, c, params, TIGHTEN[torch.float64], np.float64)
    return out[0]


# --- training: a batch, differentiable ----------------------------------------------------
class _ProjectBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw: Tensor, x_tensor: Tensor, model: RowModel, x: np.ndarray, reg: np.ndarray,
                c: RowCoefficients, params: Any) -> Tensor:
        a = raw.detach().cpu().numpy().astype(np.float64)
        np_dtype = np.float32 if raw.dtype == torch.float32 else np.float64
        out, solved = _solve(model, a, x, reg, c, params, TIGHTEN[raw.dtype], np_dtype)
        ctx.solved, ctx.c, ctx.scale = solved, c, model.scale(params)
        return torch.as_tensor(out, dtype=raw.dtype, device=raw.device)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        solved: _Solved | None = ctx.solved
        grad_raw = grad_out.clone()
        grad_x = torch.zeros((grad_out.shape[0], ctx.c.J.shape[2]), dtype=grad_out.dtype, device=grad_out.device)
        if solved is not None:
            g = grad_out.detach().cpu().numpy().astype(np.float64)[solved.index]
            gy, gx = _backward(ctx.c.take(solved.index), solved, ctx.scale, g)
            idx = torch.as_tensor(solved.index, device=grad_out.device)
            grad_raw[idx] = torch.as_tensor(gy, dtype=grad_out.dtype, device=grad_out.device)
            grad_x[idx] = torch.as_tensor(gx, dtype=grad_out.dtype, device=grad_out.device)
        return grad_raw, grad_x if ctx.needs_input_grad[1] else None, None, None, None, None, None


def _backward(c: RowCoefficients, solved: _Solved, scale: np.ndarray, grad_exec: np.ndarray):
    """Gradients w.r.t. the raw action [p, n] and the inputs [p, k] (analytic active set)."""
    p, m, n = c.G.shape
    w = grad_exec * scale * ~solved.pinned  # dL/dz; a pinned coordinate does not move
    rows = c.G * scale  # [p, m, n]: row j is (G_j * S) z <= h_j
    norm = np.sqrt((rows * rows).sum(-1))
    unit = np.where(solved.active[..., None], rows / np.maximum(norm, 1e-300)[..., None], 0.0)
    eye = np.eye(n)
    bounds = np.where((solved.lower | solved.pinned)[..., None], -eye, 0.0)  # [p, n, n]
    A = np.concatenate([unit, bounds], axis=1)  # [p, m + n, n]
    K = np.einsum("pin,pio->pno", A, A)
    lam, vec = np.linalg.eigh(K)
    keep = lam > _RANK_TOL * np.maximum(1.0, lam[:, -1:])
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    vw = np.einsum("pno,pn->po", vec, w)  # V^T w
    grad_y = w - np.einsum("pno,po->pn", vec, np.where(keep, vw, 0.0))  # null-space part of w
    k_plus_w = np.einsum("pno,po->pn", vec, inv * vw)  # (A^T A)^+ w
    grad_b = np.einsum("pin,pn->pi", A, k_plus_w)[:, :m]  # dL/d(unit rhs), rows only
    grad_h = np.where(solved.active, grad_b / np.maximum(norm, 1e-300), 0.0)
    grad_x = np.einsum("pmk,pm->pk", c.J, grad_h)
    return grad_y / scale, grad_x


def project_batch(model: RowModel, raw: Tensor, inputs: Any, regime: Any, params: Any) -> Tensor:
    """Executed actions ``[B, n]`` for raw actions ``[B, n]`` (float32 or float64, same out).

    ``inputs``: a mapping of the model's input names to ``[B]`` tensors (or a tensor
    ``[B, k]`` in the model's input order); ``regime``: rows ``[B, 5]`` or one row.
    Differentiable: gradients reach ``raw`` and every input that is a tensor requiring
    grad (where a row it enters is active)."""
    if not isinstance(raw, Tensor):
        raise ProjectionError(f"raw action: expected a torch tensor, got {type(raw).__name__}")
    if raw.dtype not in TIGHTEN:
        raise ProjectionError(f"raw action: dtype {raw.dtype} is not float32 or float64")
    if raw.ndim != 2 or raw.shape[1] != len(model.actions):
        raise ProjectionError(f"raw action: expected shape [B, {len(model.actions)}], got {list(raw.shape)}")
    a, x, reg, c = _prepare(model, raw, inputs, regime, params, "raw action")
    x_tensor = _input_tensor(model, inputs, raw)
    return _ProjectBatch.apply(raw, x_tensor, model, x, reg, c, params)


def _input_tensor(model: RowModel, inputs: Any, like: Tensor) -> Tensor:
    """The inputs as one ``[B, k]`` tensor wired to the caller's tensors (for gradients)."""
    B = like.shape[0]
    if isinstance(inputs, Tensor):
        return inputs.to(like.dtype).expand(B, len(model.inputs))
    columns = []
    for name in model.inputs:
        v = inputs.get(name) if isinstance(inputs, dict) else getattr(inputs, name)
        v = v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v, dtype=np.float64))
        columns.append(v.to(like.dtype).reshape(-1).expand(B))
    return torch.stack(columns, dim=1)


# --- CLSC-2's names (CLSC2-INTERFACE.md) ---------------------------------------------------
def project2(raw: Any, inputs: Any, regime: Any, params: Any) -> np.ndarray:
    """CLSC-2's executed action [9] (kg, kg, kg, kg, units x5): see :func:`project`.
    ``inputs``: virgin, recycled, cores_a, cores_b, used_virgin, used_recycled,
    periods_left, supply_up, market_avail (after the period's arrivals and window reset)."""
    return project(CLSC2_ROWS, raw, inputs, regime, params)


def project2_batch(raw: Tensor, inputs: Any, regime: Any, params: Any) -> Tensor:
    """CLSC-2's differentiable projection of ``[B, 9]`` raw actions: see :func:`project_batch`."""
    return project_batch(CLSC2_ROWS, raw, inputs, regime, params)


def violations2(executed: Any, inputs: Any, regime: Any, params: Any) -> int:
    """Broken CLSC-2 rows plus failed window settlements (at ``periods_left == 0``: after
    the action, ``U_r >= r (U_v + U_r)`` within ``1e-6 max(1, r (U_v + U_r))``)."""
    return violations(CLSC2_ROWS, executed, inputs, regime, params)


def row_violations2(executed: Any, inputs: Any, regime: Any, params: Any) -> dict[str, int]:
    """:func:`violations2` per spec row (``"1"`` ... ``"8"``, ``"6a"``, ``"6b"``, ``"settlement"``)."""
    return row_violations(CLSC2_ROWS, executed, inputs, regime, params)
