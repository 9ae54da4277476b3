"""The safety layer: feasibility always, exactness against independent solvers, agreement of
the two paths, analytic gradients, and the input checks."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import quadprog
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from moca import safety
from moca.safety import SafetyError, constraint_system, is_feasible, project, project_batch, violations
from moca.scenario import Params
from moca.sim import State

PARAMS = Params()
S = PARAMS.action_scale
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies: the full ranges of the spec, with the edge values drawn often ----------------
stock = st.one_of(st.just(0.0), st.floats(0.0, 1e4), st.floats(1e4, 1e9), st.floats(0.0, 1e-6),
                  st.sampled_from([-1e-13, 1e-300, 3000.0, 600.0, 300.0]))
mandate = st.one_of(st.just(0.0), st.just(0.95), st.floats(0.0, 0.95))
cap = st.one_of(st.just(math.inf), st.floats(1e-9, 1e6), st.floats(1e-12, 1.0), st.floats(1e4, 6e4))
recovery = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
regime = st.builds(lambda r, tau, e, lam, k: np.array([r, tau, e, lam, k]),
                   mandate, st.floats(0, 2000), cap, st.floats(0, 100), recovery)
# raw actions in units of capacity: negative, inside, beyond, huge, exactly on a bound
component = st.one_of(st.floats(-2.0, 3.0), st.sampled_from([0.0, 1.0, -1.0]), st.floats(-1e9, 1e9))
raw_action = st.lists(component, min_size=6, max_size=6).map(lambda z: np.array(z) * S)
case = st.tuples(raw_action, stock, stock, stock, regime)


def _state(v, m, c, dtype=torch.float64) -> State:
    def t(x):
        return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)
    zero = torch.zeros_like(t(v))
    return State(virgin=t(v), recycled=t(m), product=zero, cores=t(c), backlog=zero, pipeline=(), sales_history=())


def _batch(cases, dtype=torch.float64):
    raw = torch.as_tensor(np.stack([c[0] for c in cases]), dtype=dtype)
    state = _state([c[1] for c in cases], [c[2] for c in cases], [c[3] for c in cases], dtype)
    reg = torch.as_tensor(np.stack([c[4] for c in cases]), dtype=dtype)
    return raw, state, reg


def _reference_qp(raw, v, m, c, reg) -> np.ndarray:
    """The spec's projection by quadprog (Goldfarb-Idnani, Fortran) on constraint_system.

    quadprog gives up on sets without interior (e.g. M = 0 pins u_r, then the mandate pins
    u_v), so every row is relaxed by 1e-10 times its smallest nonzero coefficient (rows of
    unit norm; at least 1e-15): a coordinate then moves by at most about 1e-10, far below the
    1e-6 of the comparison, as long as the rules' coefficients are not tiny (see the strategy
    below)."""
    G, h, lower, upper = constraint_system(v, m, c, reg, PARAMS)
    keep = np.isfinite(h)
    norms = np.linalg.norm(G[keep], axis=1)
    Gs, hs = G[keep] / norms[:, None], h[keep] / norms
    smallest = np.where(np.abs(Gs) > 0, np.abs(Gs), np.inf).min(axis=1)
    # quadprog: min 1/2 z'z - y'z  s.t.  C' z >= b
    Cmat = np.vstack([-Gs, np.eye(6), -np.eye(6)]).T
    b = np.concatenate([-hs - np.maximum(1e-10 * smallest, 1e-15), lower - 1e-10, -upper - 1e-10])
    z = quadprog.solve_qp(np.eye(6), raw / S, Cmat, b)[0]
    return z * S


# --- feasibility: 0 violations, always ---------------------------------------------------------
@SETTINGS
@given(case)
def test_project_never_violates(c):
    raw, v, m, cc, reg = c
    out = project(raw, v, m, cc, reg, PARAMS)
    assert out.shape == (6,) and out.dtype == np.float64
    assert violations(out, v, m, cc, reg, PARAMS).sum() == 0, (out, violations(out, v, m, cc, reg, PARAMS))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(case, min_size=1, max_size=24), st.sampled_from([torch.float64, torch.float32]))
def test_project_batch_never_violates_and_agrees_with_project(cases, dtype):
    raw, state, reg = _batch(cases, dtype)
    out = project_batch(raw, state, reg, PARAMS)
    assert out.dtype == dtype and out.shape == raw.shape
    assert violations(out, state.virgin, state.recycled, state.cores, reg, PARAMS).sum() == 0
    # The deployment path on the same (dtype-rounded) inputs gives the same point.
    rounded = [(raw[i].double().numpy(), float(state.virgin[i]), float(state.recycled[i]), float(state.cores[i]),
                reg[i].double().numpy()) for i in range(len(cases))]
    ref = np.stack([project(*r, PARAMS) for r in rounded])
    y = raw.double().numpy() / S
    gap = np.abs(out.double().numpy() - ref) / S
    tol = (1e-7 if dtype == torch.float64 else 1e-4) * (1.0 + np.abs(y).max(1, keepdims=True))
    # A recovery target near 1 makes row 8 nearly parallel to the bound w >= 0: both solvers
    # stop within ~1e-10 of the row, which moves the argmin by up to 1e-10 / (1 - kappa)
    # while the distance to the raw action changes by far less; so the argmin is compared
    # with that conditioning and the distance (what the projection minimises) tightly.
    kappa = reg[:, 4].double().numpy()[:, None]
    conditioning = np.maximum(1.0, 1e-3 / np.maximum(1.0 - kappa, 1e-9))
    assert (gap <= tol * conditioning).all(), (gap.max(), out, ref)
    dist_out = (((out.double().numpy() - raw.double().numpy()) / S) ** 2).sum(1)
    dist_ref = (((ref - raw.double().numpy()) / S) ** 2).sum(1)
    assert np.allclose(dist_out, dist_ref, rtol=1e-6 if dtype == torch.float64 else 1e-3,
                       atol=tol.ravel() ** 2 + 2 * tol.ravel() * np.sqrt(dist_ref)), (dist_out, dist_ref)


def test_far_raw_actions_are_projected_not_shrunk_to_zero():
    """About 2% of raw actions 1e5-1e12 capacities away failed in DAQP on the last bit of the
    target, and the deployment path (the Gymnasium env, the service) then executed an action
    near 0 where the nearest one orders at capacity: it now asks quadprog, then the training
    path's exact solver, and agrees with it."""
    rng = np.random.default_rng(2)
    reg = np.array([0.0, 0.0, math.inf, 0.0, 0.0])
    cases = [(np.array([6931088757.228799, -1124283037.7589233, 1401592398.3728335, -7417626257.805382,
                        345428020.91417545, -7136704942.172495]), 4000.0, 500.0, 0.0)]  # found by a probe
    for _ in range(300):
        y = rng.normal(size=6) * 10.0 ** rng.integers(5, 13)
        y[0] = abs(y[0]) + 1.5  # an order beyond capacity, which every feasible set allows
        cases.append((y, *(float(rng.choice([0.0, x])) for x in (4000.0, 500.0, 200.0))))
    raw, state, regimes = _batch([(y * S, v, m, c, reg) for y, v, m, c in cases])
    exact = project_batch(raw, state, regimes, PARAMS).numpy()
    for (y, v, m, c), batch_answer in zip(cases, exact):
        out = project(y * S, v, m, c, reg, PARAMS)
        assert out[0] >= PARAMS.cap_order * (1 - 1e-6), (y.tolist(), v, m, c, out)
        assert np.abs(out - batch_answer).max() <= 1e-6 * PARAMS.cap_order, (y.tolist(), out, batch_answer)


# --- exactness: the projection of the spec, checked two independent ways ----------------------
small_raw = st.lists(st.floats(-1.5, 2.5), min_size=6, max_size=6).map(lambda z: np.array(z) * S)
small_stock = st.one_of(st.just(0.0), st.floats(0.0, 5000.0))


# The reference QP needs a relaxation (above), and relaxed rows compound: a bound relaxed by
# 1e-10 lets a mandate r move u_v by about 1e-10 / r. So its mandates and recovery targets are
# 0 or >= 1e-3 (error <= 1e-7); the KKT test below checks optimality over the full ranges
# without any solver.
reference_regime = st.builds(lambda r, tau, e, lam, k: np.array([r, tau, e, lam, k]),
                             st.one_of(st.just(0.0), st.just(0.95), st.floats(1e-3, 0.95)), st.floats(0, 2000), cap,
                             st.floats(0, 100), st.one_of(st.just(0.0), st.just(1.0), st.floats(1e-3, 1.0)))


@SETTINGS
@given(small_raw, small_stock, small_stock, small_stock, reference_regime)
def test_project_equals_reference_qp(raw, v, m, c, reg):
    ref = _reference_qp(raw, v, m, c, reg)
    out = project(raw, v, m, c, reg, PARAMS)
    assert np.abs((out - ref) / S).max() <= 1e-6, (out, ref)


@SETTINGS
@given(small_raw, small_stock, small_stock, small_stock, regime)
def test_project_satisfies_kkt(raw, v, m, c, reg):
    """Optimality certificate without any QP solver: ``y - z`` is a nonnegative combination
    of the normals of the rows tight at ``z`` (found by NNLS)."""
    out = project(raw, v, m, c, reg, PARAMS)
    G, h, lower, upper = constraint_system(v, m, c, reg, PARAMS, tighten=safety.TIGHTEN[torch.float64])
    z, y = out / S, raw / S
    rows = np.vstack([G[np.isfinite(h)], -np.eye(6), np.eye(6)])
    rhs = np.concatenate([h[np.isfinite(h)], -lower, upper])
    norms = np.linalg.norm(rows, axis=1)
    live = norms > 0
    rows, rhs, norms = rows[live] / norms[live, None], rhs[live] / norms[live], norms[live]
    tight = np.abs(rows @ z - rhs) <= 1e-8
    lam, residual = nnls(rows[tight].T, y - z) if tight.any() else (None, np.linalg.norm(y - z))
    assert residual <= 1e-7 * (1.0 + np.abs(y).max()), (residual, z, y)


# --- the two paths on feasible input; bad input ------------------------------------------------
@SETTINGS
@given(case)
def test_feasible_raw_actions_are_returned_unchanged(c):
    raw, v, m, cc, reg = c
    feasible = project(raw, v, m, cc, reg, PARAMS)  # a feasible point of this state
    for point in (feasible, 0.5 * feasible, np.zeros(6)):
        assert is_feasible(point, v, m, cc, reg, PARAMS)
        assert np.array_equal(project(point, v, m, cc, reg, PARAMS), point)
    raw_t, state, reg_t = _batch([(feasible, v, m, cc, reg), (raw, v, m, cc, reg)])
    raw_t.requires_grad_(True)
    out = project_batch(raw_t, state, reg_t, PARAMS)
    assert torch.equal(out[0], raw_t[0].detach())
    out[0].sum().backward()  # identity Jacobian for an untouched action
    assert torch.equal(raw_t.grad[0], torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_raw_action_is_an_error(bad):
    raw = np.array([100.0, 100.0, bad, 0.0, 0.0, 0.0])
    reg = np.array([0.1, 0.0, math.inf, 0.0, 0.0])
    with pytest.raises(SafetyError, match="non-finite"):
        project(raw, 1000.0, 100.0, 50.0, reg, PARAMS)
    raw_t, state, reg_t = _batch([(raw, 1000.0, 100.0, 50.0, reg)] * 3)
    with pytest.raises(SafetyError, match="non-finite"):
        project_batch(raw_t, state, reg_t, PARAMS)


def test_every_input_form_gives_the_same_projection_and_bad_entries_are_refused():
    """project's fast path (a float ndarray [6]) and its general path (lists, ints, float32,
    tensors, read-only or strided arrays) agree, and a non-finite entry is refused on both,
    also where finite entries of huge size overflow the sum the fast check looks at."""
    reg = np.array([0.2, 100.0, math.inf, 0.0, 0.3])
    raw = np.array([3000.0, 2500.0, 100.0, 400.0, 200.0, 900.0])
    ref = project(raw, 2000.0, 300.0, 800.0, reg, PARAMS)
    strided = np.zeros((6, 2))
    strided[:, 0] = raw
    for form in (raw.tolist(), raw.astype(np.float32).astype(np.float64), raw.astype(np.int64), torch.tensor(raw),
                 strided[:, 0], tuple(raw)):
        out = project(form, 2000.0, 300.0, 800.0, reg.tolist(), PARAMS)
        np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
        assert out.dtype == np.float64
    for bad in ([math.nan, 0, 0, 0, 0, 0], np.array([1e308, 1e308, math.inf, 0, 0, 0]),
                np.array([0, 0, 0, 0, 0, math.nan], dtype=np.float32)):
        with pytest.raises(SafetyError, match="non-finite"):
            project(bad, 2000.0, 300.0, 800.0, reg, PARAMS)
    # finite but overflowing the sum: accepted (and projected into the capacities)
    huge = project(np.array([1e308, 1e308, 0, 0, 0, 0]), 2000.0, 300.0, 800.0, reg, PARAMS)
    assert violations(huge, 2000.0, 300.0, 800.0, reg, PARAMS).sum() == 0


def test_project_takes_a_regime_object_and_names_inputs_of_the_wrong_kind():
    """A Regime (as decide_period takes) gives its row's projection; a name, an array for a
    stock, CLSC-2's parameters or a window are refused naming the argument."""
    from moca.regime import load_regime
    from moca.scenario import Params2

    raw = np.array([3000.0, 2500.0, 100.0, 400.0, 200.0, 900.0])
    t2 = load_regime("T2")
    np.testing.assert_array_equal(project(raw, 2000.0, 300.0, 800.0, t2, PARAMS),
                                  project(raw, 2000.0, 300.0, 800.0, t2.as_row(), PARAMS))
    for args, words in (((2000.0, 300.0, 800.0, "T2", PARAMS), "regime: expected a Regime or a row of 5 numbers"),
                        ((np.array([2000.0, 1.0]), 300.0, 800.0, t2, PARAMS), "virgin: expected a number"),
                        ((2000.0, 300.0, 800.0, t2, Params2()), "params: expected a CLSC-1 Params, got Params2"),
                        ((2000.0, 300.0, 800.0, t2, None), "params: expected a CLSC-1 Params, got NoneType"),
                        ((2000.0, 300.0, 800.0, t2.model_copy(update={"recycled_content_window": 52}), PARAMS),
                         "recycled_content_window=52 is CLSC-2's")):
        with pytest.raises(SafetyError, match=re.escape(words)):
            project(raw, *args)


@SETTINGS
@given(case)
def test_float_api_agrees_with_project_and_violations(c):
    """project_counted / rows_kept (plain floats, for hot loops) are project / violations,
    and the count project_counted returns is the rows the executed action breaks (0)."""
    raw, v, m, cc, reg = c
    layout = safety.layout_of(PARAMS)
    stocks = [max(float(x), 0.0) for x in (v, m, cc)]
    regime = (float(reg[0]), float(reg[2]), float(reg[4]))
    out, broken = safety.project_counted(raw.tolist(), *stocks, regime, layout)
    assert out == project(raw, v, m, cc, reg, PARAMS).tolist()
    kept = safety.rows_kept(out, *stocks, regime, layout)
    assert [not k for k in kept] == violations(np.array(out), v, m, cc, reg, PARAMS).astype(bool).tolist()
    assert all(kept) and broken == 0


bound = st.one_of(st.just(0.0), st.floats(0.0, 2e-12), st.floats(0.0, 10.0))


@SETTINGS
@given(regime, st.lists(bound, min_size=11, max_size=11), st.sampled_from([1e-9, 1e-6]))
def test_pin_one_is_pinned(reg, values, tighten):
    """The deployment path's plain-float pinning rule pins exactly what the batch path's rule
    pins, on the solver rows of random regimes with random upper bounds and right-hand sides
    (zero and near-zero drawn often, so that pins chain through rows 6 and 8)."""
    layout = safety.layout_of(PARAMS)
    G, _, _ = safety._system_one(1.0, 1.0, 1.0, float(reg[0]), float(reg[2]), float(reg[4]), layout, tighten)
    bounds = values[:6 + G.shape[0]]
    expected = safety._pinned(G[:, :, None], np.array(bounds[6:])[:, None], np.array(bounds[:6])[:, None])[:, 0]
    pinned_here = list(bounds)
    signs = layout.rows[(float(reg[0]), float(reg[4]), G.shape[0] == 5, tighten)][1]
    safety._pin_one(signs, pinned_here)
    assert pinned_here[:6] == [0.0 if p else u for p, u in zip(expected, bounds[:6])]
    assert pinned_here[6:] == bounds[6:]


needs_direct = pytest.mark.skipif(safety._DIRECT is None, reason="DAQP's direct path is off for this DAQP release")


@needs_direct
@SETTINGS
@given(case)
def test_direct_daqp_path_gives_daqp_solves_numbers(c):
    """The deployment path's direct call of DAQP's C solver returns what daqp.solve returns,
    bit for bit, on every projection (one wrapper-path projection per direct one)."""
    raw, v, m, cc, reg = c
    direct = project(raw, v, m, cc, reg, PARAMS)
    saved, safety._DIRECT = safety._DIRECT, None
    try:
        wrapped = project(raw, v, m, cc, reg, PARAMS)
    finally:
        safety._DIRECT = saved
    assert direct.tolist() == wrapped.tolist()


@needs_direct
def test_direct_daqp_path_keeps_threads_apart():
    """Each thread has its own solver buffers: projections run from four threads at once
    equal the same projections run one after another."""
    rng = np.random.default_rng(7)
    cases = [(rng.uniform(0.0, 1.5, 6) * S, *rng.uniform(0.0, 3000.0, 3),
              np.array([rng.uniform(0, 0.9), 50.0, rng.choice([math.inf, 2e4]), 5.0, rng.uniform(0, 1)]))
             for _ in range(400)]
    expected = [project(*c, PARAMS).tolist() for c in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda c: project(*c, PARAMS).tolist(), cases)) == expected


@needs_direct
def test_direct_daqp_path_is_refused_when_its_check_fails(monkeypatch):
    """If DAQP's C solver called directly ever disagreed with daqp.solve, moca says so and
    keeps to daqp.solve."""
    monkeypatch.setattr(safety._DirectDaqp, "solve", lambda self, minus_y, address, bounds: [0.0] * 6)
    with pytest.warns(RuntimeWarning, match="disagreed with daqp.solve"):
        assert safety._direct_daqp() is None


def test_direct_daqp_path_can_be_switched_off():
    """MOCA_DAQP_DIRECT=0 sends every solve through daqp.solve (and projections still work)."""
    code = ("import numpy as np; from moca import safety; from moca.scenario import Params; "
            "out = safety.project(np.full(6, 1e4), 10.0, 5.0, 3.0, np.array([0.2, 0, np.inf, 0, 0.5]), Params()); "
            "print(safety._DIRECT is None, safety.is_feasible(out, 10.0, 5.0, 3.0, np.array([0.2, 0, np.inf, 0, 0.5]), Params()))")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MOCA_DAQP_DIRECT": "0"},
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True"]


def test_batch_projection_hands_out_columns_contiguously():
    """The simulator's step reads an action's columns; project_batch returns [B, 6] whose
    columns are contiguous (a view of a batch-last array), with the same values."""
    cases = [(np.array([3000.0, 2500.0, 100.0, 400.0, 200.0, 900.0]) * (1 + i / 10), 2000.0, 300.0, 800.0,
              np.array([0.2, 0.0, math.inf, 0.0, 0.3])) for i in range(5)]
    raw_t, state, reg_t = _batch(cases)
    out = project_batch(raw_t, state, reg_t, PARAMS)
    assert out.shape == (5, 6) and out.T.is_contiguous()
    for i, (raw, v, m, c, reg) in enumerate(cases):
        np.testing.assert_allclose(out[i].numpy(), project(raw, v, m, c, reg, PARAMS), rtol=1e-7, atol=1e-6)


def test_bad_shapes_stocks_and_regimes_are_errors():
    reg = np.array([0.1, 0.0, math.inf, 0.0, 0.0])
    raw = np.ones(6)
    with pytest.raises(SafetyError, match="shape"):
        project(np.ones(5), 1.0, 1.0, 1.0, reg, PARAMS)
    with pytest.raises(SafetyError, match="virgin"):
        project(raw, math.nan, 1.0, 1.0, reg, PARAMS)
    for text in ("4000", b"4000"):  # (float() read a text as a stock)
        with pytest.raises(SafetyError, match="recycled: expected a number"):
            project(raw, 1.0, text, 1.0, reg, PARAMS)
    with pytest.raises(SafetyError, match="recycled_content_min"):
        project(raw, 1.0, 1.0, 1.0, np.array([1.5, 0, math.inf, 0, 0]), PARAMS)
    with pytest.raises(SafetyError, match="emission_cap"):
        project(raw, 1.0, 1.0, 1.0, np.array([0.1, 0, math.nan, 0, 0]), PARAMS)
    with pytest.raises(SafetyError, match="regime"):
        project(raw, 1.0, 1.0, 1.0, np.ones(4), PARAMS)
    raw_t, state, reg_t = _batch([(raw, 1.0, 1.0, 1.0, reg)] * 2)
    with pytest.raises(SafetyError, match="shape"):
        project_batch(raw_t[:, :5], state, reg_t, PARAMS)
    with pytest.raises(SafetyError, match="cores"):
        project_batch(raw_t, _state([1.0, 1.0], [1.0, 1.0], [1.0, math.nan]), reg_t, PARAMS)
    with pytest.raises(SafetyError, match="float32 or float64"):
        project_batch(raw_t.half(), state, reg_t, PARAMS)


def test_round_off_negative_stocks_count_as_zero():
    reg = np.array([0.2, 0.0, math.inf, 0.0, 0.0])
    out = project(np.array([100.0, 50.0, 50.0, 10.0, 10.0, 10.0]), -1e-13, -1e-13, -1e-13, reg, PARAMS)
    assert np.array_equal(out[1:], np.zeros(5)) and out[0] == 100.0
    assert violations(out, -1e-13, -1e-13, -1e-13, reg, PARAMS).sum() == 0


# --- the definition of a violation -------------------------------------------------------------
def test_violations_count_each_row_with_the_spec_tolerance():
    V, M, C = 1000.0, 200.0, 100.0
    reg = np.array([0.2, 0.0, 5000.0, 0.0, 0.5])
    ok = np.array([500.0, 400.0, 100.0, 30.0, 20.0, 50.0])  # emissions 3000 + 500 + 48 <= 5000
    assert violations(ok, V, M, C, reg, PARAMS).tolist() == [0] * 8
    cases = {  # action -> the rows it breaks
        (4000.0 + 5e-3, 400.0, 100.0, 30.0, 20.0, 50.0): [1, 7],  # K_o by 5e-3 > 4e-3 (also the cap)
        (4000.0 + 3e-3, 400.0, 100.0, 30.0, 20.0, 50.0): [7],  # K_o within 1e-6 * 4000
        (500.0, 1000.0 + 2e-3, 260.0, 30.0, 20.0, 50.0): [2],  # V by 2e-3 > 1e-3 (and M: 260 > 200)
        (500.0, 400.0, 99.9, 30.0, 20.0, 50.0): [6],  # u_r < 0.2 (u_v + u_r) by 0.08 kg
        (500.0, 400.0, 100.0 - 8e-6, 30.0, 20.0, 50.0): [6],  # by 6.4e-6 kg > 1e-6 (rhs 0)
        (500.0, 400.0, 100.0 - 4e-7, 30.0, 20.0, 50.0): [],  # by 3.2e-7 kg: within
        (500.0, 400.0, 100.0, 30.0, 20.0, 51.0): [5, 8],  # cores 101 > 100; recovery 50 < 50.5
        (500.0, 400.0, 100.0, -2e-6, 20.0, 40.0): [4, 8],  # g < 0 by 2e-6; 20 < 0.5 * 60
    }
    for action, rows in cases.items():
        counts = violations(np.array(action), V, M, C, reg, PARAMS)
        assert [i + 1 for i in np.flatnonzero(counts)] == rows, (action, counts)
    batch = np.array([ok, *map(np.array, cases)])
    counts = violations(batch, np.full(len(batch), V), np.full(len(batch), M), np.full(len(batch), C), reg, PARAMS)
    expected = np.zeros(8, dtype=int)
    for rows in cases.values():
        for r in rows:
            expected[r - 1] += 1
    assert counts.tolist() == expected.tolist()
    assert is_feasible(batch, np.full(len(batch), V), np.full(len(batch), M), np.full(len(batch), C), reg,
                       PARAMS).tolist() == [True] + [not rows for rows in cases.values()]


def test_constraint_system_is_the_spec_in_its_own_units():
    V, M, C = 1000.0, 200.0, 100.0
    reg = np.array([0.2, 50.0, 5000.0, 3.0, 0.5])
    a = np.array([500.0, 400.0, 100.0, 30.0, 20.0, 50.0])
    G, h, lower, upper = constraint_system(V, M, C, reg, PARAMS)
    p = PARAMS
    assert np.allclose(G @ (a / S), [500.0, 100.0, 0.2 * 500 - 100, 6.0 * 500 + 1.0 * 500 + 1.6 * 30, 0.5 * 100 - 50])
    assert np.allclose(h, [p.mass * p.cap_produce, C, 0.0, 5000.0, 0.0])
    assert np.allclose(upper * S, [4000.0, V, M, C, C, C]) and np.array_equal(lower, np.zeros(6))
    G0, h0, _, upper0 = constraint_system(V, M, C, np.array([0.0, 0, math.inf, 0, 1.0]), PARAMS, tighten=1e-6)
    assert h0[3] == math.inf and G0[2, 1] == 0.0  # a rule that is off stays off when tightened
    assert (G0 @ np.zeros(6) <= h0).all() and (upper0 >= 0).all()  # zero stays feasible


# --- gradients ---------------------------------------------------------------------------------
def _random_points(rng: np.random.Generator, n: int):
    """Generic random states and raw actions (continuous draws: active sets are stable)."""
    cases = []
    for _ in range(n):
        reg = np.array([rng.uniform(0, 0.95), 0.0, rng.choice([math.inf, rng.uniform(8e3, 4e4)]), 0.0,
                        rng.choice([0.0, rng.uniform(0, 1)])])
        cases.append((rng.normal(0.5, 0.7, 6) * S, rng.uniform(1, 5000), rng.uniform(1, 2000), rng.uniform(1, 1500),
                      reg))
    return cases


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    for chunk in range(6):
        raw, state, reg = _batch(_random_points(rng, 8))
        inputs = (raw.requires_grad_(True), state.virgin.requires_grad_(True), state.recycled.requires_grad_(True),
                  state.cores.requires_grad_(True))
        f = lambda r, v, m, c: project_batch(r, _state(v, m, c), reg, PARAMS)  # noqa: E731
        assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradient_is_the_projection_onto_the_active_face():
    """On the face, the Jacobian in normalised coordinates is a symmetric projector."""
    rng = np.random.default_rng(11)
    raw, state, reg = _batch(_random_points(rng, 16))
    raw.requires_grad_(True)
    out = project_batch(raw, state, reg, PARAMS)
    scale = torch.as_tensor(S)
    for i in range(16):
        J = torch.stack([torch.autograd.grad(out[i, k], raw, retain_graph=True)[0][i] for k in range(6)])
        Jn = J * scale[None, :] / scale[:, None]  # d z / d y
        assert torch.allclose(Jn, Jn.T, atol=1e-10) and torch.allclose(Jn @ Jn, Jn, atol=1e-10)


def test_float32_backward_and_rollout_through_the_simulator():
    from moca.regime import TASKS
    from moca.scenario import draw_scenarios
    from moca.sim import OpenLoop, ScenarioBatch, rollout

    batch = ScenarioBatch.from_scenarios(draw_scenarios(4, TASKS["T3"]), torch.float32)
    gen = torch.Generator().manual_seed(0)
    raw = (torch.rand(batch.size, batch.horizon, 6, generator=gen) * torch.as_tensor(S, dtype=torch.float32)
           ).requires_grad_(True)
    result = rollout(batch, OpenLoop(raw), project_batch)
    result.total_cost.sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0
    ex, av = result.executed.detach().reshape(-1, 6), result.available.reshape(-1, 3)
    assert violations(ex, av[:, 0], av[:, 1], av[:, 2], batch.regime.reshape(-1, 5), PARAMS).sum() == 0


def test_a_regime_row_with_a_none_cap_is_no_cap_in_every_check():
    """Regime.from_row reads a cap of None as no cap; project / violations refused the same
    row with "emission_cap=nan" (numpy reads None as NaN). A None in a field the rows read
    is refused naming it; a None tax, which no CLSC-1 row reads, is ignored as before."""
    raw = np.array([3000.0, 2500.0, 100.0, 400.0, 200.0, 900.0])
    none_cap, inf_cap = [0.2, 100.0, None, 0.0, 0.3], np.array([0.2, 100.0, math.inf, 0.0, 0.3])
    np.testing.assert_array_equal(project(raw, 2000.0, 300.0, 800.0, none_cap, PARAMS),
                                  project(raw, 2000.0, 300.0, 800.0, inf_cap, PARAMS))
    np.testing.assert_array_equal(violations(raw, 2000.0, 300.0, 800.0, none_cap, PARAMS),
                                  violations(raw, 2000.0, 300.0, 800.0, inf_cap, PARAMS))
    stocks = [np.array([2000.0, 10.0])] * 3
    for regime in (none_cap, [none_cap, none_cap]):
        np.testing.assert_array_equal(violations(np.stack([raw, raw]), *stocks, regime, PARAMS),
                                      violations(np.stack([raw, raw]), *stocks, inf_cap, PARAMS))
    np.testing.assert_array_equal(project(raw, 2000.0, 300.0, 800.0, [0.2, None, None, 0.0, 0.3], PARAMS),
                                  project(raw, 2000.0, 300.0, 800.0, inf_cap, PARAMS))
    for bad, words in (([None, 0, None, 0, 0], "regime recycled_content_min=None is not a number"),
                       ([0, 0, 1.0, 0, None], "regime recovery_target=None is not a number")):
        with pytest.raises(SafetyError, match=re.escape(words)):
            project(raw, 2000.0, 300.0, 800.0, bad, PARAMS)
        with pytest.raises(SafetyError, match=re.escape(words)):
            violations(np.stack([raw, raw]), *stocks, bad, PARAMS)
    with pytest.raises(SafetyError, match=re.escape("regime emission_cap=nan must be >= 0")):
        project(raw, 2000.0, 300.0, 800.0, [0, 0, math.nan, 0, 0], PARAMS)


def test_the_batch_projection_of_a_far_away_raw_action_is_the_nearest_point():
    """A candidate computed from a target ~1e7 capacities away carries round-off of ~1e-9,
    which the candidate tolerance (1e-10) refused: the batch path passed over the nearest
    point for a farther one (f = 106 instead of 300 here), in about 1 of 10 raw actions of
    1e10-1e12 kg, which action files accept (the deployment path was right)."""
    p = Params()
    scale = np.asarray(p.action_scale)
    V, M, C = 5836.628993021797, 1574.2218264098892, 563.0382203563718
    regime = np.array([0.019116487016932825, 0.0, math.inf, 0.0, 0.0])
    raw = np.array([-55606954219.99965, 48428847701.31396, 22758780031.17896, -4836238185.986305,
                    2254999541.165859, 22221783642.9754])
    batch = project_batch(torch.tensor(raw[None]), _state([V], [M], [C]), torch.tensor(regime[None]), p)[0].numpy()
    np.testing.assert_allclose(batch, project(raw, V, M, C, regime, p), atol=1e-6)
    assert batch[4] == pytest.approx(300.0)
    rng = np.random.default_rng(3)
    for _ in range(60):  # (random states, regimes with and without a cap, raw actions of 1e9-1e12 kg)
        V, M, C = rng.uniform(0, 8000), rng.uniform(0, 3000), rng.uniform(0, 1500)
        regime = np.array([rng.choice([0.0, rng.uniform(0, 0.9)]), rng.uniform(0, 300),
                           rng.choice([math.inf, rng.uniform(500, 20000)]), rng.uniform(0, 100),
                           rng.choice([0.0, rng.uniform(0, 0.95)])])
        raw = rng.normal(size=6)
        raw = raw / np.abs(raw).max() * 10 ** rng.uniform(9, 12)
        batch = project_batch(torch.tensor(raw[None]), _state([V], [M], [C]), torch.tensor(regime[None]), p)[0].numpy()
        exact = project(raw, V, M, C, regime, p)
        distance = lambda a: np.linalg.norm((a - raw) / scale)  # noqa: E731
        assert distance(batch) <= distance(exact) + 1e-6, (raw, V, M, C, regime, batch, exact)
        assert is_feasible(batch, V, M, C, regime, p)
