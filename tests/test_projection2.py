"""The safety layer over rows declared as data: CLSC-2's rows 1-8 (6a/6b over accounting
windows) and CLSC-1's rows in the same form. Feasibility always (every row, property-based
over the spec's full regime ranges), the two facts of docs/MODEL-2-PROOFS.md, agreement of
the generic engine with CLSC-1's own projection, and the analytic gradients."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from moca import safety
from moca.projection import (ProjectionError, project, project2, project2_batch, project2_counted,
                             row_violations, row_violations2, violations, violations2)
from moca.regime import Regime, RegimeSchedule, ScheduledRegime, window_periods_left, window_starts
from moca.scenario import Params, Params2
from moca.world import CLSC1_ROWS, CLSC2_INPUTS, CLSC2_ROWS, max_recycled_use, regime_rows

P2 = Params2()
S2 = P2.action_scale
P1 = Params()
S1 = P1.action_scale
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies: the spec's full regime ranges, edge values drawn often -----------------------
stock = st.one_of(st.just(0.0), st.floats(0.0, 1e4), st.floats(1e4, 1e7), st.floats(0.0, 1e-6),
                  st.sampled_from([-1e-13, 3000.0, 600.0, 300.0]))
mandate = st.one_of(st.just(0.0), st.just(0.95), st.floats(0.0, 0.95))
cap = st.one_of(st.just(math.inf), st.floats(1e-6, 1e6), st.floats(1e4, 6e4))
recovery = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0))
regime5 = st.builds(lambda r, tau, e, lam, k: np.array([r, tau, e, lam, k]),
                    mandate, st.floats(0, 2000), cap, st.floats(0, 100), recovery)
window = st.integers(1, 104)
component = st.one_of(st.floats(-2.0, 3.0), st.sampled_from([0.0, 1.0, -1.0]), st.floats(-1e7, 1e7))
raw2 = st.lists(component, min_size=9, max_size=9).map(lambda z: np.array(z) * S2)
raw1 = st.lists(component, min_size=6, max_size=6).map(lambda z: np.array(z) * S1)


@st.composite
def reachable_inputs(draw, reg: np.ndarray | None = None):
    """CLSC-2 inputs after arrivals that the safety layer can reach: U_v, U_r satisfy the
    window's rows 6a/6b as they held after the previous period's action (U = 0 at a
    window's start), with n_t in 0 .. W-1."""
    reg = draw(regime5) if reg is None else reg
    W = draw(window)
    n = draw(st.integers(0, W - 1))
    x = {"virgin": draw(stock), "recycled": draw(stock), "cores_a": draw(stock), "cores_b": draw(stock),
         "periods_left": float(n), "supply_up": float(draw(st.sampled_from([0, 1]))),
         "market_avail": draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))}
    starts = draw(st.booleans()) or n == W - 1
    if starts:
        x["used_virgin"] = x["used_recycled"] = 0.0
    else:
        r = reg[0]
        used_r = draw(st.one_of(st.just(0.0), st.floats(0.0, 3000.0 * W)))
        M = max(x["recycled"], 0.0)
        u_bar = float(max_recycled_use(reg[None], P2)[0])
        room = min((1 - r) * (M + used_r), (1 - r) * (u_bar * (n + 1) + used_r))
        most = (room / r if room < r * 1e9 else 1e9) if r > 0 else 3000.0 * W
        x["used_virgin"] = draw(st.floats(0.0, 1.0)) * most
        x["used_recycled"] = used_r
    return x, reg


def _safe(x: dict, reg: np.ndarray) -> np.ndarray:
    return CLSC2_ROWS.safe_action(CLSC2_ROWS.input_array(x), reg[None], P2)[0]


# --- the two facts ------------------------------------------------------------------------------
@SETTINGS
@given(reachable_inputs())
def test_safe_action_keeps_every_row(case):
    """(0, 0, 0, min(M, Ū), 0, ..., 0) satisfies rows 1-8 (6a and 6b included) and, at a
    window's last period, the settlement, in every state the safety layer can reach."""
    x, reg = case
    counts = row_violations2(_safe(x, reg), x, reg, P2)
    assert sum(counts.values()) == 0, counts


@SETTINGS
@given(st.floats(0.0, 0.95), st.floats(0.0, 1e4), st.lists(st.floats(0.0, 3.0), min_size=9, max_size=9))
def test_window_of_one_is_clsc1_row_six(r, M, z):
    """With W = 1 (n_t = 0, U_v = U_r = 0) rows 6a and 6b hold together exactly when CLSC-1's
    row 6, u_r >= r (u_v + u_r), does (given row 2, u_r <= M)."""
    a = np.array(z) * S2
    a[3] = min(a[3], M)  # row 2
    x = dict.fromkeys(CLSC2_INPUTS, 0.0) | {"recycled": M, "supply_up": 1.0, "market_avail": 1.0}
    reg = np.array([r, 0.0, math.inf, 0.0, 0.0])
    counts = row_violations2(a, x, reg, P2)
    row6 = r * (a[2] + a[3]) - a[3] <= 1e-6
    assert (counts["6a"] == 0 and counts["6b"] == 0) == row6
    if row6:
        assert counts["6a"] == 0  # 6a is implied by 6b and row 2
    # and the projection is the one onto CLSC-1's row 6 (6a left out)
    without_6a = dataclasses.replace(CLSC2_ROWS, coefficients=lambda g, p: _drop_row(CLSC2_ROWS.coefficients(g, p), 10))
    raw = np.array(z) * S2 * 2 - S2 * 0.5
    np.testing.assert_allclose(project2(raw, x, reg, P2) / S2, project(without_6a, raw, x, reg, P2) / S2, atol=1e-7)


def _drop_row(c, j):
    c.on[:, j] = False
    return c


# --- every row, property-based --------------------------------------------------------------------
@SETTINGS
@given(reachable_inputs(), raw2)
def test_executed_action_keeps_every_row(case, raw):
    x, reg = case
    a = project2(raw, x, reg, P2)
    counts = row_violations2(a, x, reg, P2)
    assert sum(counts.values()) == 0, counts
    # a projection: feasible points stay, and nothing feasible is nearer (the safe action is feasible)
    np.testing.assert_allclose(project2(a, x, reg, P2), a)
    assert np.linalg.norm((a - raw) / S2) <= np.linalg.norm((_safe(x, reg) - raw) / S2) + 1e-6


def test_counted_projection_reports_what_the_check_finds():
    """project2_counted: 0 where the layer produced the state; where the state itself breaks
    the window (a deficit no action can cover: U_v far above what r allows, nothing on
    hand, the window's last period), the safe action is executed and its broken rows counted."""
    x = dict.fromkeys(CLSC2_INPUTS, 0.0) | {"virgin": 500.0, "recycled": 200.0, "used_virgin": 1000.0,
                                            "used_recycled": 400.0, "periods_left": 3.0, "supply_up": 1.0}
    reg = np.array([0.3, 0.0, math.inf, 0.0, 0.0])
    a, broken = project2_counted(np.array([4000, 0, 3000, 0, 0, 0, 0, 0, 0.0]), x, reg, P2)
    assert broken == 0 == violations2(a, x, reg, P2)
    stuck = x | {"used_virgin": 1e5, "recycled": 0.0, "periods_left": 0.0}
    a, broken = project2_counted(np.array([4000, 0, 3000, 0, 0, 0, 0, 0, 0.0]), stuck, reg, P2)
    np.testing.assert_allclose(a, np.zeros(9), atol=1e-9)
    assert broken == violations2(a, stuck, reg, P2) > 0
    assert row_violations2(a, stuck, reg, P2)["settlement"] == 1


@pytest.mark.parametrize("row", range(len(CLSC2_ROWS.row_labels)))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_each_row_broken_by_the_raw_action_is_kept(row, data):
    """Per declared row: a raw action pushed across it (along its normal, from the safe action)
    breaks it, and the executed action keeps it and every other row."""
    x, reg = data.draw(reachable_inputs())
    c = CLSC2_ROWS.coefficients(regime_rows(reg), P2)
    if not c.on[0, row] or not np.any(c.G[0, row]):
        return
    safe = _safe(x, reg)
    inputs = CLSC2_ROWS.input_array(x)[0]
    h = c.h0[0, row] + c.J[0, row] @ inputs
    slack = h - c.G[0, row] @ safe  # >= 0: the safe action keeps it
    rhs = c.r0[0, row] + c.Rj[0, row] @ inputs + c.R[0, row] @ safe  # the spec's right-hand side there
    step = np.abs(c.G[0, row]) @ S2  # what one capacity unit along the normal adds
    margin = 1e-3 * max(1.0, abs(slack), abs(h), abs(rhs))  # far beyond the 1e-6 tolerance
    push = (slack + margin) / step * data.draw(st.floats(1.0, 100.0)) + data.draw(st.floats(1e-3, 1.0))
    raw = safe + push * np.sign(c.G[0, row]) * S2
    label = CLSC2_ROWS.row_spec[row]
    assert row_violations2(raw, x, reg, P2)[label] == 1  # the count sees it
    a = project2(raw, x, reg, P2)
    assert row_violations2(a, x, reg, P2)[label] == 0
    assert violations2(a, x, reg, P2) == 0


# --- multi-period: windows stay settleable and are settled ----------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_raw_sequences_settle_every_window(data):
    """Raw actions of a random policy through the projection, with the spec's bookkeeping of
    V, M, cores and U_v, U_r over a random schedule (windows 1-104, regime changes): every
    executed action keeps every row, and every window ends settled."""
    T = 30
    starts = sorted({0, *data.draw(st.lists(st.integers(1, T - 1), max_size=2))})
    entries = []
    for s in starts:
        reg = data.draw(regime5)
        entries.append(ScheduledRegime(start=s, recycled_content_min=reg[0], carbon_tax=reg[1],
                                       emission_cap=None if math.isinf(reg[2]) else reg[2], landfill_tax=reg[3],
                                       recovery_target=reg[4], recycled_content_window=data.draw(window)))
    schedule = RegimeSchedule(entries=tuple(entries))
    table, left, fresh = schedule.table(T), window_periods_left(schedule, T), window_starts(schedule, T)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    V, M, CA, CB, Uv, Ur, market, pipe = 3000.0, 300.0, 50.0, 50.0, 0.0, 0.0, 0.0, [2000.0, 2000.0]
    settled = 0
    for t in range(T):
        V += pipe.pop(0)
        M += market
        CA += rng.uniform(0, 200)
        CB += rng.uniform(0, 200)
        if fresh[t]:
            Uv = Ur = 0.0
        x = {"virgin": V, "recycled": M, "cores_a": CA, "cores_b": CB, "used_virgin": Uv, "used_recycled": Ur,
             "periods_left": float(left[t]), "supply_up": float(rng.random() < 0.8), "market_avail": rng.random()}
        raw = rng.uniform(-0.3, 1.5, 9) * S2 * (rng.random(9) < 0.7)
        a = project2(raw, x, table[t], P2)
        assert violations2(a, x, table[t], P2) == 0, (t, row_violations2(a, x, table[t], P2))
        o, om, uv, ur, f, ga, gb, wa, wb = a
        V, M, CA, CB, Uv, Ur = V - uv, M - ur, CA - f - ga - wa, CB - gb - wb, Uv + uv, Ur + ur
        M += P2.mass * (P2.yield_disassembly_a * ga + P2.yield_disassembly_b * gb)
        pipe.append(o)
        market = om
        if left[t] == 0:  # the window's settlement
            r = table[t, 0]
            assert Ur >= r * (Uv + Ur) - 1e-6 * max(1.0, r * (Uv + Ur))
            settled += 1
    assert settled == int(fresh.sum())


def _one_in_float64_batch(raw: np.ndarray, x: dict, reg: np.ndarray, params: Params2) -> np.ndarray:
    """The batch layer in float64 (evaluation, ``moca simulate``) on one action."""
    inputs = {name: torch.tensor([value], dtype=torch.float64) for name, value in x.items()}
    return project2_batch(torch.tensor(raw)[None], inputs, reg[None], params)[0].numpy()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0.02, 0.95), st.floats(1.0, 1e5), st.integers(3, 104), st.floats(0.0, 0.999),
       st.sampled_from([project2, _one_in_float64_batch]))
@example(0.5, 4.0, 3, 0.5, project2)  # an excess of exactly 1e-6 kg: the round-off broke the next period's 6a
def test_a_raw_action_within_the_tolerance_of_a_window_row_leaves_no_deficit(r, M, W, share, layer):
    """The tolerance of row 6a is 1e-6 of (1 - r) M: a raw virgin use that much above its
    bound was executed unchanged, and once M was used up the next periods' rows (right-hand
    side 0, tolerance 1e-6 kg) could not be kept by any action: 3 violations with every
    action through the layer. Rows 6a and 6b carry over, so an action is executed only
    within half the 1e-6 kg that every later period allows."""
    params = Params2(cap_produce=1e7, init_recycled=M)
    bound = (1 - r) * M / r  # u_v of row 6a with U = 0, no cores, no market
    raw_uv = bound + share * 1e-6 * (1 - r) * M / r  # within the row's tolerance
    zero = np.zeros(9)
    V, Uv, Ur = 1e9, 0.0, 0.0
    reg = np.array([r, 0.0, math.inf, 0.0, 0.0])
    for t in range(W):
        x = {"virgin": V, "recycled": M, "cores_a": 0.0, "cores_b": 0.0, "used_virgin": Uv, "used_recycled": Ur,
             "periods_left": float(W - 1 - t), "supply_up": 1.0, "market_avail": 0.0}
        raw = zero.copy()
        if t == 0:
            raw[2] = raw_uv
        elif t == 1:
            raw[3] = M  # every kg of recycled material on hand
        a = np.asarray(layer(raw, x, reg, params), dtype=np.float64)
        assert violations2(a, x, reg, params) == 0, (t, row_violations2(a, x, reg, params))
        assert r * (Uv + a[2]) - (1 - r) * Ur <= (1 - r) * (M + params.mass * (
            params.yield_disassembly_a * a[5] + params.yield_disassembly_b * a[6]) + a[1]) + 5e-7 + 1e-12  # 6a, to 5e-7 kg
        V, M, Uv, Ur = V - a[2], M - a[3], Uv + a[2], Ur + a[3]
    assert Ur >= r * (Uv + Ur) - 1e-6 * max(1.0, r * (Uv + Ur))  # the settlement


def test_where_daqp_fails_quadprog_projects():
    """Valid but badly scaled parameters (a product of 0.13 kg beside a market of 53 t) and
    a tight emission cap: DAQP failed at both tolerances and the layer fell back, without a
    word, to the safe action, 0.63 capacity units farther from the raw action than the
    nearest feasible one (found by a probe; its reference answer from cvxpy)."""
    params = Params2(mass=0.13128144132098263, cap_disassemble=3.1738076386305427, cap_dispose=7.867618274285631,
                     cap_market=52807.5317280768, emis_produce=96.27489896461542)
    scale = params.action_scale
    x = dict(zip(CLSC2_INPUTS, (27072.439066350027, 1401.9544092936633, 80.30597655427118, 1326.8041040743365,
                                0.0, 0.0, 0.0, 1.0, 0.32501142426781515)))
    reg = np.array([0.0, 0.0, 0.020620209842936797, 0.0, 0.0])
    y = np.array([-1907.3936649152927, -3653.6654833038588, 2071.1626935144786, -2603.4892286533304,
                  1299.1549481344246, 3817.742773191821, -2332.9358304557113, -299.0564662041948, 4841.126536562325])
    reference = np.array([0.0, 0.0, 0.0, 0.0, 80.13146, 0.17452, 0.0, 0.0, 7.86762])
    for k in (1.0, 0.001):
        a = project2(y * k * scale, x, reg, params)
        assert violations2(a, x, reg, params) == 0
        assert np.linalg.norm(a / scale - y * k) <= np.linalg.norm(reference / scale - y * k) + 1e-5
        np.testing.assert_allclose(a, reference, atol=1e-4)


# --- CLSC-1 declared in the same form: the generic engine agrees with moca.safety ------------------
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw1, stock, stock, stock, regime5)
def test_generic_projection_agrees_with_clsc1_safety(raw, v, m, c, reg):
    x = {"virgin": v, "recycled": m, "cores": c}
    generic = project(CLSC1_ROWS, raw, x, reg, P1)
    own = safety.project(raw, v, m, c, reg, P1)
    assert violations(CLSC1_ROWS, generic, x, reg, P1) == 0
    # Both are feasible; the projection p of y satisfies |q - p|^2 <= |q - y|^2 - |p - y|^2
    # for every feasible q, so with q = moca.safety's answer: no farther from the raw action
    # than it, and equal to it wherever that is the projection. (moca.safety shrank towards 0
    # when DAQP failed, e.g. C = 0 with raw cores ~1e5 capacities away; see the test below
    # and test_safety's test_far_raw_actions_are_projected_not_shrunk_to_zero.)
    y, g, q = raw / S1, generic / S1, own / S1
    gap = np.sum((q - y) ** 2) - np.sum((g - y) ** 2)
    scale = 1.0 + np.sum(y * y)
    assert gap >= -1e-7 * scale  # (the two tighten the rows by ~1e-9 in different ways)
    assert np.sum((q - g) ** 2) <= gap + 1e-7 * scale
    # and both count a raw action's violations alike, row by row
    counts = row_violations(CLSC1_ROWS, raw, x, reg, P1)
    assert [counts[str(k)] for k in range(1, 9)] == safety.violations(raw, v, m, c, reg, P1).tolist()


def test_generic_projection_where_clsc1_safety_falls_back():
    """No cores, raw cores far beyond capacity, raw order at capacity: the projection keeps
    the order (the cores are forced to 0, and nothing couples them to o)."""
    raw = np.array([1.0, 0.0, 0.0, 2.0, 20134.0, 552993.0]) * S1
    reg = np.array([0.0, 0.0, math.inf, 0.0, 0.0])
    a = project(CLSC1_ROWS, raw, {"virgin": 0.0, "recycled": 0.0, "cores": 0.0}, reg, P1)
    np.testing.assert_allclose(a, [P1.cap_order, 0, 0, 0, 0, 0], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(safety.project(raw, 0.0, 0.0, 0.0, reg, P1), a, rtol=1e-8, atol=1e-9)


# --- the batched, differentiable projection --------------------------------------------------------
def _batch_inputs(cases, dtype=torch.float64):
    return {name: torch.tensor([c[0][name] for c in cases], dtype=dtype) for name in CLSC2_INPUTS}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(reachable_inputs(), raw2), min_size=1, max_size=12))
@example([(({"virgin": 0.0, "recycled": 1.0, "cores_a": 0.0, "cores_b": 0.0, "periods_left": 0.0, "supply_up": 0.0,
             "market_avail": 0.0, "used_virgin": 435.10526315789514, "used_recycled": 8266.0},
            np.array([0.95, 0.0, math.inf, 0.0, 0.0])), np.zeros(9))])  # a settlement met only by using all M
@example([(({"virgin": 0.0, "recycled": 0.0, "cores_a": 0.0, "cores_b": 0.0, "periods_left": 0.0, "supply_up": 0.0,
             "market_avail": 0.0, "used_virgin": 235.5263157894739, "used_recycled": 4475.0},
            np.array([0.95, 0.0, math.inf, 0.0, 0.0])), np.zeros(9))])  # exactly at r in float64, above it in float32
@example([(({"virgin": 0.0, "recycled": 0.0, "cores_a": 0.0, "cores_b": 1.0, "periods_left": 0.0, "supply_up": 0.0,
             "market_avail": 0.0, "used_virgin": 120.05263157894747, "used_recycled": 2281.0},
            np.array([0.95, 0.0, math.inf, 0.0, 0.0])), np.array([0.0] * 8 + [1.0]) * S2)])  # float32: w_B 0, not 5e-4
def test_batch_agrees_with_deployment_and_keeps_rows(cases):
    inputs = _batch_inputs([c[0] for c in cases])
    reg = np.stack([c[0][1] for c in cases])
    raw = np.stack([c[1] for c in cases])
    for dtype in (torch.float64, torch.float32):
        given_inputs = {k: v.to(dtype) for k, v in inputs.items()}
        out = project2_batch(torch.as_tensor(raw, dtype=dtype), given_inputs, reg, P2)
        assert out.dtype == dtype
        if dtype == torch.float64:
            deployed_precision = out  # the deployment projection is float64: compared below
        # Rows are kept for the inputs the layer is given: in float32 (training) the state
        # itself is float32, and 435.105... kg rounded to float32 moves a window row by more
        # than its absolute tolerance of 1e-6 (found by hypothesis; the first example above).
        seen = {k: v.double() for k, v in given_inputs.items()}
        executed = out.numpy().astype(np.float64)
        if dtype == torch.float64:
            assert violations2(executed, seen, reg, P2) == 0
            continue
        # A window exactly at its mandate in float64 can be a few 1e-6 kg above it once its
        # totals are rounded to float32; with no recycled material to use, no action keeps
        # rows 6a/6b for those inputs (found by hypothesis; the second example). So in float32
        # each case must keep every row the exact (float64) projection of the same rounded
        # inputs keeps.
        for i in range(len(cases)):
            one = {k: v[i:i + 1] for k, v in seen.items()}
            exact = project2(raw[i], {k: float(v[0]) for k, v in one.items()}, reg[i], P2)
            allowed = violations2(exact[None], one, reg[i:i + 1], P2)
            assert violations2(executed[i:i + 1], one, reg[i:i + 1], P2) <= allowed, (i, allowed)
    # (float32 rounds a window at its mandate to just above or below it, which moves a disposal
    # by more than the tolerance (found by hypothesis, the last example); its rows are checked above)
    for i, (case, r) in enumerate(cases):
        np.testing.assert_allclose(deployed_precision[i].numpy() / S2, project2(r, case[0], case[1], P2) / S2,
                                   atol=1e-5)
    # the inputs as one [B, 9] tensor in CLSC2_INPUTS order give the same
    stacked = torch.stack([inputs[k] for k in CLSC2_INPUTS], dim=1)
    same = project2_batch(torch.as_tensor(raw), stacked, reg, P2)
    np.testing.assert_allclose(same.numpy(), project2_batch(torch.as_tensor(raw), inputs, reg, P2).numpy())


def test_gradients_match_finite_differences():
    """gradcheck (float64) through raw actions and the inputs the rows read, on cases where
    rows 2, 3, 5, 6a, 6b, 7 and 8 bind; stocks away from 0 (where the clamp has a kink)."""
    rng = np.random.default_rng(7)
    B = 12
    reg = np.zeros((B, 5))
    reg[:, 0] = r = rng.uniform(0.05, 0.6, B)
    reg[:, 2] = np.where(rng.random(B) < 0.4, rng.uniform(8000, 30000, B), np.inf)
    reg[:, 4] = np.where(rng.random(B) < 0.4, rng.uniform(0.2, 0.9, B), 0.0)
    x = {"virgin": rng.uniform(100, 4000, B), "recycled": rng.uniform(50, 1500, B), "cores_a": rng.uniform(20, 400, B),
         "cores_b": rng.uniform(20, 400, B), "used_recycled": rng.uniform(500, 2000, B),
         "periods_left": rng.integers(0, 3, B).astype(float), "supply_up": np.ones(B),
         "market_avail": rng.uniform(0.2, 1, B)}
    # a state the safety layer reaches: 6a and 6b held after the previous action of the window
    u_bar = max_recycled_use(reg, P2)
    room = np.minimum(x["recycled"] + x["used_recycled"], u_bar * (x["periods_left"] + 1) + x["used_recycled"])
    x["used_virgin"] = rng.uniform(0.3, 0.95, B) * (1 - r) * room / r
    raw = torch.tensor(rng.uniform(-0.2, 1.3, (B, 9)) * S2, requires_grad=True)
    stocks = {k: torch.tensor(v, requires_grad=k in ("virgin", "recycled", "cores_a", "cores_b", "used_virgin",
                                                     "used_recycled")) for k, v in x.items()}
    names = [k for k, v in stocks.items() if v.requires_grad]
    out = project2_batch(raw, stocks, reg, P2)
    assert (out.detach() != raw.detach()).any(dim=1).sum() > B // 2  # most are projected

    def f(raw_, *grads):
        return project2_batch(raw_, stocks | dict(zip(names, grads)), reg, P2)

    assert torch.autograd.gradcheck(f, (raw, *[stocks[k] for k in names]), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_bad_input_is_refused_naming_the_field():
    x = dict.fromkeys(CLSC2_INPUTS, 1.0)
    with pytest.raises(ProjectionError, match="non-finite"):
        project2(np.full(9, np.nan), x, Regime(), P2)
    with pytest.raises(ProjectionError, match=r"shape \[9\]"):
        project2(np.zeros(6), x, Regime(), P2)
    with pytest.raises(ProjectionError, match="inputs.periods_left is missing"):
        project2(np.zeros(9), {k: v for k, v in x.items() if k != "periods_left"}, Regime(), P2)
    with pytest.raises(ProjectionError, match="inputs.recycled is not finite"):
        project2(np.zeros(9), x | {"recycled": math.inf}, Regime(), P2)
    with pytest.raises(ProjectionError, match="recycled_content_min"):
        project2(np.zeros(9), x, np.array([1.5, 0, np.inf, 0, 0]), P2)
    with pytest.raises(ProjectionError, match="float32 or float64"):
        project2_batch(torch.zeros(2, 9, dtype=torch.float16), x, Regime(), P2)
    with pytest.raises(ProjectionError, match=r"regime: expected a Regime or a row of 5 numbers .* got str 'T1'"):
        project2(np.zeros(9), x, "T1", P2)
    with pytest.raises(ProjectionError, match="params: Params has no 'yield_disassembly_a': not CLSC-2's parameters"):
        project2(np.zeros(9), x, Regime(), Params())
    # inputs outside what a state can be (supply_up 0.5 halved the order capacity, market_avail
    # 2 bought twice the market's offer, with 0 violations counted; a window 2.5 periods long)
    for name, value, said in (("supply_up", 0.5, "a whole number in [0, 1]"), ("market_avail", 2.0, "a number in [0, 1]"),
                              ("periods_left", 2.5, "a whole number in [0, inf]")):
        with pytest.raises(ProjectionError, match=rf"inputs.{name}: {value:g} is not {re.escape(said)}"):
            project2(np.zeros(9), x | {name: value}, Regime(), P2)
        table = np.tile(np.array([x[k] for k in CLSC2_INPUTS]), (2, 1))
        table[1, CLSC2_INPUTS.index(name)] = value
        with pytest.raises(ProjectionError, match=f"inputs.{name}"):
            project2_batch(torch.zeros(2, 9, dtype=torch.float64), table, Regime(), P2)


def test_a_cap_at_the_float_limit_bounds_nothing_and_warns_nothing():
    """A cap of 1e308 kg CO2 is valid (> 0); m Ē overflows to inf, which means no bound."""
    reg = np.array([[0.2, 0.0, 1e308, 0.0, 0.0], [0.2, 0.0, np.inf, 0.0, 0.0], [0.2, 0.0, 3000.0, 0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u_bar = max_recycled_use(reg, P2)
    mk = P2.mass * P2.cap_produce
    assert u_bar[0] == u_bar[1] == mk
    assert u_bar[2] == pytest.approx(min(mk, P2.mass * 3000.0 / P2.emis_produce))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), size=st.floats(0.2, 3.0), window_=st.integers(1, 8))
def test_episode_count_is_the_per_period_count(seed, size, window_):
    """One batched check over ``[B, T]`` counts what one check per period counts, row
    breaks and window settlements alike (raw actions executed unprojected, so they break)."""
    from moca.projection import episode_violations2
    from moca.scenario import draw_scenario2
    from moca.sim2 import OpenLoop2, ScenarioBatch2, rollout2

    schedule = RegimeSchedule.from_list([
        {"start": 0, "recycled_content_min": 0.3, "recycled_content_window": window_, "emission_cap": 4000.0},
        {"start": 5, "recycled_content_min": 0.6, "carbon_tax": 80.0, "recycled_content_window": window_ + 1}])
    params = Params2(horizon=12)
    batch = ScenarioBatch2.from_scenarios([draw_scenario2(seed + i, schedule, params) for i in range(3)],
                                          dtype=torch.float64)
    rng = np.random.default_rng(seed)
    raw = torch.as_tensor(rng.uniform(-0.2, size, (3, 12, 9)) * S2)
    out = rollout2(batch, OpenLoop2(raw), None)
    executed, inputs, table = out.executed.numpy(), out.inputs.numpy(), batch.regime.numpy()
    per_period = sum(violations2(executed[b, t], dict(zip(CLSC2_INPUTS, inputs[b, t])), table[b, t], params)
                     for b in range(3) for t in range(12))
    assert per_period > 0
    assert episode_violations2(executed, inputs, table, params) == per_period
    assert episode_violations2(out.executed[1], out.inputs[1], batch.regime[1], params) == sum(
        violations2(executed[1, t], dict(zip(CLSC2_INPUTS, inputs[1, t])), table[1, t], params) for t in range(12))
    with pytest.raises(ProjectionError, match="leading shapes differ"):
        episode_violations2(executed, inputs[:, :5], table, params)
