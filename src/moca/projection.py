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
import quadprog
import torch
from torch import Tensor

from moca.world import CLSC2_ROWS, VIOLATION_TOL, RowCoefficients, RowModel, regime_rows

TIGHTEN = {torch.float64: 1e-9, torch.float32: 1e-6}
_FIX_TOL = 1e-12  # normalised bounds / right-hand sides below this fix coordinates at 0
# DAQP's primal tolerance; on a failed solve (seen with targets ~1e6 away and bounds ~1e-10,
# where it reports a feasible set infeasible) the looser one, whose answer the check then vets
_PRIMAL_TOLS = (1e-11, 1e-9)
_RIDGE = 1e-8  # regularisation of the backward pass's normal equations (see _backward)
_SETTLEMENT = "settlement"
#: A carried row's whole tolerance (in its own units, kg) for an executed action: half the
#: 1e-6 the row allows in every later period whatever its right-hand side (the max(1, .) of a
#: violation's tolerance), so what it carries never breaks a later row, round-off of the
#: bookkeeping included, and far above the counters' own round-off (~1e-13 kg). (A tolerance
#: relative to the right-hand side is not: 1e-6 of (1 - r) M kg, carried in U_v, broke 6a
#: once M was used up; exactly 1e-6 broke it by the round-off.)
CARRIED_TOL = 0.5 * VIOLATION_TOL


class ProjectionError(ValueError):
    """Bad input to the safety layer (non-finite or wrongly shaped action, inputs or regime)."""


# --- coefficients, cached per regime for the one-action path ------------------------------
_CACHE: dict[tuple, tuple[Any, RowCoefficients, np.ndarray]] = {}


_BATCHES: dict[tuple, tuple[Any, RowCoefficients, np.ndarray]] = {}


def _coefficients(model: RowModel, regime: np.ndarray, params: Any) -> RowCoefficients:
    """The rows of ``regime`` [B, 5], cached: per regime row for one decision, and per
    whole regime table for a few batches (a training rollout projects the same batch's
    regimes period after period)."""
    if regime.shape[0] == 1:
        cache, key, limit = _CACHE, (model.name, id(params), tuple(regime[0].tolist())), 1024
    else:
        cache, key, limit = _BATCHES, (model.name, id(params), regime.shape, regime.tobytes()), 4
    hit = cache.get(key)
    if hit is not None and hit[0] is params:
        return hit[1]
    if len(cache) >= limit:
        cache.pop(next(iter(cache)))
    try:
        coefficients = model.coefficients(regime, params)
    except AttributeError as err:  # (CLSC-1's Params given to CLSC-2's rows: "no attribute 'yield_disassembly_a'")
        raise ProjectionError(f"params: {type(params).__name__} has no {err.name!r}: not {model.name}'s parameters "
                              f"(moca.scenario.{'Params2' if model.name == 'CLSC-2' else 'Params'})") from None
    cache[key] = (params, coefficients, regime)
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
def _broken(c: RowCoefficients, a: np.ndarray, x: np.ndarray, carried: np.ndarray | None = None) -> np.ndarray:
    """``[B, m]`` whether each row is broken: ``G a > h + 1e-6 max(1, |rhs|)`` (the
    comparison written as the spec reads, left-hand side against right-hand side plus
    tolerance, so that a row on the tolerance's edge counts as CLSC-1's check counts it);
    the rows of ``carried`` ([m] bool) with :data:`CARRIED_TOL` as their whole tolerance."""
    # (broadcast products, not batched matmul: numpy's matmul over many tiny matrices is ~50x slower)
    xa, aa = x[:, None, :], a[:, None, :]
    lhs = (c.G * aa).sum(-1)
    rhs = c.r0 + (c.Rj * xa).sum(-1) + (c.R * aa).sum(-1)
    bound = c.h0 + (c.J * xa).sum(-1)
    tolerance = VIOLATION_TOL * np.maximum(1.0, np.abs(rhs))
    if carried is not None:
        tolerance = np.where(carried, CARRIED_TOL, tolerance)
    return c.on & (lhs > bound + tolerance)


def _ok(model: RowModel, c: RowCoefficients, reg: np.ndarray, a: np.ndarray, x: np.ndarray,
        carried_strictly: bool = False) -> np.ndarray:
    """``[B]`` whether each action keeps every row (and the settlement); with
    ``carried_strictly``, the model's carried rows to :data:`CARRIED_TOL`."""
    carried = model.carried_rows if carried_strictly and model.carried else None
    ok = ~_broken(c, a, x, carried).any(1) & (a >= -VIOLATION_TOL).all(1)
    if model.settlement is not None:
        excess, tol = model.settlement(a, x, reg)
        ok &= excess <= tol
    return ok


def row_violations(model: RowModel, action: Any, inputs: Any, regime: Any, params: Any) -> dict[str, int]:
    """Per spec row (and ``"settlement"`` for CLSC-2), how many of the actions ``[n]`` or
    ``[B, n]`` break it by more than ``1e-6 * max(1, |right-hand side|)`` (the right-hand side
    as the spec writes the row), counted once per action and row."""
    a, x, reg, c = _prepare(model, action, inputs, regime, params, "action")
    broken = _broken(c, a, x)
    counts = {}
    for row in model.spec_rows:
        of_row = np.array([s == row for s in model.row_spec])
        hit = broken[:, of_row].any(1)
        lower = np.array([s == row for s in model.lower_spec])
        if lower.any():
            hit |= (a[:, lower] < -VIOLATION_TOL).any(1)
        counts[row] = int(hit.sum())
    if model.settlement is not None:
        excess, tol = model.settlement(a, x, reg)
        counts[_SETTLEMENT] = int((excess > tol).sum())
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


@dataclass
class _Structure:
    """What of the solver's system depends on the regime alone (cached per regime for the
    one-action path): the tightened rows, unit-norm, split into box bounds and rows."""

    Gt: np.ndarray  # [B, m, n] tightened rows in z coordinates
    norm: np.ndarray  # [B, m]
    A: np.ndarray  # [B, m, n] unit-norm general rows (zero for bounds and rows that are off)
    general: np.ndarray  # [B, m]
    bound_of: np.ndarray  # [B, m, n] bool: row j is an upper bound of coordinate i
    coef: np.ndarray  # [B, m] the bound row's coefficient (unit rows)
    on: np.ndarray  # [B, m]

    def take(self, index: np.ndarray) -> "_Structure":
        return _Structure(*(getattr(self, f)[index] for f in ("Gt", "norm", "A", "general", "bound_of", "coef", "on")))


def _structure(c: RowCoefficients, scale: np.ndarray, t: float) -> _Structure:
    Gt = (c.G + t * np.abs(c.G)) * scale
    norm = np.sqrt((Gt * Gt).sum(-1))
    on = c.on & (norm > 0)
    unit = Gt / np.where(on, norm, 1.0)[..., None] * on[..., None]
    # Rows on one coordinate with a positive coefficient are bounds of the box.
    single = on & ((np.abs(unit) > 0).sum(-1) == 1) & (unit.max(-1) > 0)
    bound_of = single[..., None] & (unit > 0)
    general = on & ~single
    return _Structure(Gt, norm, unit * general[..., None], general, bound_of, unit.max(-1), on)


def _system(c: RowCoefficients, x: np.ndarray, safe: np.ndarray, scale: np.ndarray, t: float,
            structure: _Structure | None = None) -> _System:
    st = structure or _structure(c, scale, t)
    n = c.G.shape[2]
    h = c.h0 + (c.J * x[:, None, :]).sum(-1)
    ht = np.maximum(h - t * np.maximum(1.0, np.abs(h)), (st.Gt * (safe / scale)[:, None, :]).sum(-1))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        b_all = ht / np.where(st.on, st.norm, 1.0)
        bound_value = np.where(st.bound_of, (b_all / np.where(st.on, st.coef, 1.0))[..., None], np.inf)  # [B, m, n]
    bound_row = bound_value.argmin(1)
    upper = np.maximum(bound_value.min(1), 0.0)
    bound_row = np.where(np.isfinite(upper), bound_row, -1)
    b = np.where(st.general, b_all, np.inf)
    A, general = st.A, st.general
    # Pin what the rows force to 0 (a zero upper bound, or a row with right-hand side ~0
    # whose coefficients on the free coordinates are all >= 0): DAQP would enforce those
    # only to its tolerance divided by a possibly tiny coefficient (e.g. a mandate r ~ 0).
    pinned = upper <= _FIX_TOL
    for _ in range(n if (general & (b <= _FIX_TOL)).any() else 0):  # (only a ~0 right-hand side can pin)
        coeff = A * ~pinned[:, None, :]
        forcing = general & (b <= _FIX_TOL) & (coeff >= -_FIX_TOL).all(-1)
        newly = (forcing[..., None] & (coeff > _FIX_TOL)).any(1) & ~pinned
        if not newly.any():
            break
        pinned |= newly
    upper = np.where(pinned, 0.0, upper)
    return _System(A, b, upper, bound_row, pinned, general)


def _cached_structure(c: RowCoefficients, scale: np.ndarray, t: float) -> _Structure:
    """:func:`_structure` of ``c``, kept with ``c`` (whose cache lives as long as the
    regime's coefficients are cached by :func:`_coefficients`)."""
    structure = c.cache.get(("structure", t))
    if structure is None:
        structure = c.cache[("structure", t)] = _structure(c, scale, t)
    return structure


def quadprog_projection(target: np.ndarray, A: np.ndarray, b: np.ndarray, upper: np.ndarray):
    """The projection of ``target`` [n] onto ``{A z <= b, 0 <= z <= upper}`` by quadprog
    (Goldfarb-Idnani), for where DAQP failed: z [n] and the multipliers as DAQP gives them
    ([n] box, + upper and - lower, then [m] rows), or None if quadprog fails too.

    Why a second solver: DAQP's success can hang on the last bit of a far-away target or on
    rows whose coefficients span many decades (a product's mass of 0.13 kg beside a market
    of 50,000 kg), and the layer then fell back, without a word, to an action far from the
    nearest one. Rows and bounds at infinity are left out (quadprog needs finite ones)."""
    n = target.size
    rows, box = np.flatnonzero(np.isfinite(b)), np.flatnonzero(np.isfinite(upper))
    C = np.concatenate([-A[rows].T, np.eye(n), -np.eye(n)[:, box]], axis=1)
    bounds = np.concatenate([-b[rows], np.zeros(n), -upper[box]])
    try:
        z, _, _, _, multipliers, _ = quadprog.solve_qp(np.eye(n), np.asarray(target, dtype=np.float64), C, bounds, 0)
    except ValueError:  # ("constraints are inconsistent", or a matrix it cannot factor)
        return None
    if not np.isfinite(z).all():
        return None
    lam = np.zeros(n + A.shape[0])
    lam[n + rows] = multipliers[:rows.size]
    lam[:n] -= multipliers[rows.size:rows.size + n]
    lam[box] += multipliers[rows.size + n:]
    return z, lam


_EYE: dict[int, np.ndarray] = {}


def _daqp_batch(y: np.ndarray, s: _System, which: np.ndarray):
    """DAQP's projection of ``y[j]`` onto ``{A_j z <= b_j, 0 <= z <= upper_j}`` for each
    ``j`` in ``which``: z [p, n] (NaN where DAQP failed) and its multipliers [p, n + m]
    (box first). Why a Python loop: DAQP solves one small QP in a few microseconds, and no
    maintained solver batches active-set QPs on CPU faster (benchmarks/bench_projection2.py).

    A far-away target loses ~1e-16 |y| to cancellation in ``z = y - A^T lam``; ``y - z``
    lies in the normal cone at ``z``, so those are solved again from
    ``z + (y - z) / |y - z|``, a target of order 1 with the same projection."""
    p, (n, m) = which.size, s.A.shape[1:][::-1]
    if n not in _EYE:
        _EYE[n] = np.eye(n)
    eye, sense = _EYE[n], np.zeros(n + m, dtype=np.int32)
    lower = np.concatenate([np.zeros(n), np.full(m, -np.inf)])
    bupper = np.concatenate([s.upper[which], s.b[which]], axis=1)
    A = s.A[which]
    z, lam = np.full((p, n), np.nan), np.zeros((p, n + m))

    def one(j: int, target: np.ndarray) -> bool:
        for tol in _PRIMAL_TOLS:
            x, _, flag, info = daqp.solve(eye, -target, A[j], bupper[j], lower, sense, primal_tol=tol)
            if flag >= 1:
                z[j], lam[j] = x, info["lam"]
                return True
        second = quadprog_projection(target, A[j], bupper[j, n:], bupper[j, :n])
        if second is not None:
            z[j], lam[j] = second
        return second is not None

    for j in range(p):
        one(j, y[j])
    step = np.abs(y - z).max(1)
    for j in np.flatnonzero(step > 100.0):
        one(j, z[j] + (y[j] - z[j]) / step[j])
    return np.clip(z, 0.0, s.upper[which]), lam


def _shrink(a: np.ndarray, safe: np.ndarray, ok) -> np.ndarray:
    """Per row of ``a`` [p, n], the point of the segment from ``safe`` to it nearest it that
    ``ok`` ([p, n] -> [p] bool) accepts: bisection, all rows at once (the feasible set is
    convex and holds ``safe``)."""
    lo, hi = np.zeros(a.shape[0]), np.ones(a.shape[0])
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        good = ok(safe + mid[:, None] * (a - safe))
        lo, hi = np.where(good, mid, lo), np.where(good, hi, mid)
    return safe + lo[:, None] * (a - safe)


@dataclass
class _Solved:
    """What the backward pass needs about the projected elements."""

    index: np.ndarray  # [p] batch positions
    rows: RowCoefficients  # [p, ...] their rows
    active: np.ndarray  # [p, m] rows active (general rows and the rows that are bounds)
    lower: np.ndarray  # [p, n] lower bounds active
    pinned: np.ndarray  # [p, n]


def _solve(model: RowModel, a: np.ndarray, x: np.ndarray, reg: np.ndarray, c: RowCoefficients, params: Any,
           t: float, out_dtype: Any, need_active: bool = True) -> tuple[np.ndarray, _Solved | None, int]:
    """Executed actions ``[B, n]`` (float64 values that keep every row after rounding to
    ``out_dtype``); for the elements that were projected, their active sets (when
    ``need_active``: the backward pass needs them, the deployment path does not); and how
    many executed actions the final check did not pass (0 unless the state itself breaks
    a row, e.g. stocks the layer never produced).

    Executed in float64 (deployment, evaluation), an action keeps the model's carried rows
    to :data:`CARRIED_TOL`, the raw one to be executed unchanged and the projection's answer
    alike (DAQP's tolerance on a unit-norm row is ~1e-6 kg on a row whose coefficients reach
    4e5: such an answer broke 6a by 1.4e-6 kg and the window's last period by as much);
    where the first answer does not, the retry's wider margin does. float32 is the training
    path, whose rounding alone breaks a row by ~1e-7 of its right-hand side and whose actions
    are never executed."""
    out = a.copy()
    strict = out_dtype == np.float64
    index = np.flatnonzero(~_ok(model, c, reg, a, x, strict))
    if index.size == 0:
        return out, None, 0
    scale = model.scale(params)
    everyone = index.size == a.shape[0]  # (then no copies of the rows)
    cs, xs, rs, ys = (c, x, reg, a / scale) if everyone else (c.take(index), x[index], reg[index], a[index] / scale)
    safe = model.safe_action(xs, rs, params)
    p, n, m = index.size, a.shape[1], c.G.shape[1]
    rounded = lambda v: v.astype(out_dtype).astype(np.float64)  # noqa: E731
    ok = lambda v, j, carried=strict: _ok(model, cs if j is None else cs.take(j),  # noqa: E731
                                          rs if j is None else rs[j], rounded(v), xs if j is None else xs[j], carried)
    structure = _cached_structure(c, scale, t)
    s = _system(cs, xs, safe, scale, t, structure if everyone else structure.take(index))
    z, lam = _daqp_batch(ys * ~s.pinned, s, np.arange(p))
    solved = np.isfinite(z).all(1)
    executed = rounded(np.where(solved[:, None], z, 0.0) * scale)
    good = solved & ok(executed, None)
    solved_by = np.zeros(p, dtype=int)  # 0: first system, 1: retightened, 2: shrunk
    unverified = 0
    retry = np.flatnonzero(~good)
    if retry.size:  # more margin: float32 rounding breaks a row for a few in a thousand (measured)
        s2 = _system(cs.take(retry), xs[retry], safe[retry], scale, max(1e-6, 10 * t))
        z2, lam2 = _daqp_batch(ys[retry] * ~s2.pinned, s2, np.arange(retry.size))
        e2 = rounded(np.nan_to_num(z2) * scale)
        good2 = np.isfinite(z2).all(1) & ok(e2, retry)
        executed[retry[good2]], lam[retry[good2]], solved_by[retry[good2]] = e2[good2], lam2[good2], 1
        last = retry[~good2]  # last resort: towards the safe action, which keeps every row
        if last.size:
            start = np.where(np.isfinite(z2[~good2]).all(1)[:, None], e2[~good2], safe[last])
            # (the carried rows to CARRIED_TOL only where the safe action keeps them so: a state
            # from outside the layer may break them already, and then the safe action, far from
            # the proposal, would be all the bisection finds)
            keeps = ok(safe[last], last)
            executed[last] = rounded(_shrink(start, safe[last],
                                             lambda v: np.where(keeps, ok(v, last), ok(v, last, False))))
            solved_by[last] = 2
            unverified = int((~ok(executed[last], last, False)).sum())
    out[index] = executed
    if not need_active:
        return out, None, unverified
    # active sets for the backward pass: DAQP's multipliers (box first), else the slacks
    lam_box, lam_rows = lam[:, :n], lam[:, n:]
    active = (lam_rows > 0) & s.general
    lower = lam_box < 0
    upper_on = (lam_box > 0) & (s.bound_row >= 0)
    slack = solved_by == 2
    if slack.any():
        zs = executed[slack] / scale
        active[slack] = s.general[slack] & (((s.A[slack] @ zs[..., None])[..., 0] - s.b[slack]) >= -1e-9)
        upper_on[slack] = (zs >= s.upper[slack] - 1e-9) & (s.bound_row[slack] >= 0)
        lower[slack] = zs <= 1e-12
    rows_of_bounds = np.where(upper_on, s.bound_row, m)  # m: a dummy column
    marks = np.zeros((p, m + 1), dtype=bool)
    np.put_along_axis(marks, rows_of_bounds, True, axis=1)
    active |= marks[:, :m]
    return out, _Solved(index, cs, active, lower & ~s.pinned, s.pinned), unverified


# --- deployment: one action --------------------------------------------------------------
def project(model: RowModel, raw: Any, inputs: Any, regime: Any, params: Any) -> np.ndarray:
    """The executed action (float64 ``[n]``) for one raw action ``[n]``: the raw action
    itself when it keeps every row, else its projection, with 0 violations.

    ``inputs``: the model's named per-decision inputs (a mapping or an object with those
    attributes, or an array ``[k]``), after the period's arrivals; ``regime``: a
    :class:`moca.regime.Regime` or its row [r, tau, cap (inf = none), lambda, kappa]."""
    return project_counted(model, raw, inputs, regime, params)[0]


def project_counted(model: RowModel, raw: Any, inputs: Any, regime: Any, params: Any) -> tuple[np.ndarray, int]:
    """:func:`project` and how many rows (and settlements) the executed action breaks, by
    the check the layer ends with (so 0 for every state the layer produced): one pass for
    callers that report violations every step (the Gymnasium environment)."""
    a, x, reg, c = _prepare(model, raw, inputs, regime, params, "raw action")
    if a.shape[0] != 1:
        raise ProjectionError(f"raw action: expected one action [{len(model.actions)}], got {a.shape[0]}; "
                              "use project_batch for a batch")
    out, _, unverified = _solve(model, a, x, reg, c, params, TIGHTEN[torch.float64], np.float64, need_active=False)
    broken = violations(model, out[0], x[0], reg[0], params) if unverified else 0
    return out[0], broken


# --- training: a batch, differentiable ----------------------------------------------------
class _ProjectBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw: Tensor, x_tensor: Tensor, model: RowModel, x: np.ndarray, reg: np.ndarray,
                c: RowCoefficients, params: Any) -> Tensor:
        a = raw.detach().cpu().numpy().astype(np.float64)
        np_dtype = np.float32 if raw.dtype == torch.float32 else np.float64
        out, solved, _ = _solve(model, a, x, reg, c, params, TIGHTEN[raw.dtype], np_dtype)
        ctx.solved, ctx.c, ctx.scale = solved, c, model.scale(params)
        return torch.as_tensor(out, dtype=raw.dtype, device=raw.device)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        solved: _Solved | None = ctx.solved
        grad_raw = grad_out.clone()
        grad_x = torch.zeros((grad_out.shape[0], ctx.c.J.shape[2]), dtype=grad_out.dtype, device=grad_out.device)
        if solved is not None:
            g = grad_out.detach().cpu().numpy().astype(np.float64)[solved.index]
            gy, gx = _backward(solved.rows, solved, ctx.scale, g)
            idx = torch.as_tensor(solved.index, device=grad_out.device)
            grad_raw[idx] = torch.as_tensor(gy, dtype=grad_out.dtype, device=grad_out.device)
            grad_x[idx] = torch.as_tensor(gx, dtype=grad_out.dtype, device=grad_out.device)
        return grad_raw, grad_x if ctx.needs_input_grad[1] else None, None, None, None, None, None


def _backward(c: RowCoefficients, solved: _Solved, scale: np.ndarray, grad_exec: np.ndarray):
    """Gradients w.r.t. the raw action [p, n] and the inputs [p, k] (analytic active set).

    With ``A`` the active rows (unit norm, bounds included, in z coordinates) and
    ``u = (A^T A + eps I)^{-1} w``: ``dL/dy = w - A^T A u = eps u`` (the part of ``w`` in
    the null space of the active rows) and ``dL/db = A u`` (``(A A^T)^+ A w`` as eps -> 0),
    one batched n x n solve instead of a pseudo-inverse (an eigendecomposition per element
    costs ten times more); the regularisation ``eps`` = 1e-8 changes gradients by about
    ``eps / sigma_min^2`` of the active rows, and keeps dependent active rows harmless."""
    p, m, n = c.G.shape
    w = grad_exec * scale * ~solved.pinned  # dL/dz; a pinned coordinate does not move
    rows = c.G * scale  # [p, m, n]: row j is (G_j * S) z <= h_j
    norm = np.sqrt((rows * rows).sum(-1))
    unit = np.where(solved.active[..., None], rows / np.maximum(norm, 1e-300)[..., None], 0.0)
    bounds = np.where((solved.lower | solved.pinned)[..., None], -np.eye(n), 0.0)  # [p, n, n]
    A = np.concatenate([unit, bounds], axis=1)  # [p, m + n, n]
    K = A.transpose(0, 2, 1) @ A + _RIDGE * np.eye(n)
    u = np.linalg.solve(K, w[..., None])  # [p, n, 1]
    grad_y = _RIDGE * u[..., 0]
    grad_b = (A @ u)[:, :m, 0]  # dL/d(unit right-hand side), rows only
    grad_h = np.where(solved.active, grad_b / np.maximum(norm, 1e-300), 0.0)
    grad_x = (c.J * grad_h[..., None]).sum(1)
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


def project2_counted(raw: Any, inputs: Any, regime: Any, params: Any) -> tuple[np.ndarray, int]:
    """:func:`project2` and the executed action's broken rows and settlements (0 for every
    state the safety layer produced), in one pass: see :func:`project_counted`."""
    return project_counted(CLSC2_ROWS, raw, inputs, regime, params)


def project2_batch(raw: Tensor, inputs: Any, regime: Any, params: Any) -> Tensor:
    """CLSC-2's differentiable projection of ``[B, 9]`` raw actions: see :func:`project_batch`."""
    return project_batch(CLSC2_ROWS, raw, inputs, regime, params)


def violations2(executed: Any, inputs: Any, regime: Any, params: Any) -> int:
    """Broken CLSC-2 rows plus failed window settlements (at ``periods_left == 0``: after
    the action, ``U_r >= r (U_v + U_r)`` within ``1e-6 max(1, r (U_v + U_r))``)."""
    return violations(CLSC2_ROWS, executed, inputs, regime, params)


def episode_violations2(executed: Any, inputs: Any, regime: Any, params: Any) -> int:
    """:func:`violations2` over whole episodes in one batched check: ``executed`` ``[..., 9]``,
    the row inputs ``[..., k]`` (``clsc2.ROW_INPUTS`` order, ``Rollout2.inputs``) and the
    regime in force ``[..., r]`` with the same leading dims (``[T]`` or ``[B, T]``). The
    same count as one :func:`violations2` per period (each action and row counted once),
    without a Python call per period: a rollout's recount was a tenth of its scoring time."""
    executed, inputs, regime = (np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
                                for x in (executed, inputs, regime))
    if executed.shape[:-1] != inputs.shape[:-1] or executed.shape[:-1] != regime.shape[:-1]:
        raise ProjectionError(f"episode_violations2: leading shapes differ (executed {list(executed.shape)}, "
                              f"inputs {list(inputs.shape)}, regime {list(regime.shape)})")
    n = int(np.prod(executed.shape[:-1]))
    if n == 0:
        return 0
    return violations2(executed.reshape(n, -1), inputs.reshape(n, -1), regime.reshape(n, -1), params)


def row_violations2(executed: Any, inputs: Any, regime: Any, params: Any) -> dict[str, int]:
    """:func:`violations2` per spec row (``"1"`` ... ``"8"``, ``"6a"``, ``"6b"``, ``"settlement"``)."""
    return row_violations(CLSC2_ROWS, executed, inputs, regime, params)
