"""CLSC-2 projection speed: the batched differentiable projection (DAQP in a loop, analytic
active-set backward) beside maintained batched differentiable QP solvers on the same
projections, and the deployment projection's latency.

    .venv/bin/python benchmarks/bench_projection2.py [--quick] [--batch 1024] [--out FILE]

Prints one JSON object (and writes it to ``--out``, e.g. benchmarks/projection2.json). The projections are those a policy meets: post-arrival states and
raw actions of rollouts on T1-T3 (W = 52) and two other regimes (an emission cap with a
13-week window; a recovery target with W = 1), the raw actions being the hindsight plan
times log-normal noise (sigma 0.3), so that most are infeasible.

* ``daqp_loop``: :func:`moca.projection.project2_batch` (float64 and float32), forward alone
  and forward + backward (gradients to the raw actions and the inputs), in ms per batch;
* ``qpth`` (``qpth.qp.QPFunction``, a batched interior-point solver in PyTorch with an
  implicit-differentiation backward) and ``cvxpylayers`` (``CvxpyLayer``, a conic solver with
  ``diffcp``'s backward) on the same normalised rows and box, forward + backward, where
  installed (neither is a moca dependency: ``pip install qpth cvxpylayers``); their
  batches are smaller when they are slow, so compare ``us_per_projection``;
  ``max_gap``/``median_gap``: over the batch, the largest coordinate distance (capacity
  units) between their answer and moca's;
* ``deployment``: :func:`moca.projection.project2` latency (p50, p99 us) over all raw
  actions (feasible ones return after the check) and over the infeasible ones.
Each figure is the best of a few repeats (median also given; ``cpu_ms``: this process's CPU
time, the better estimate on a shared machine, though cvxpylayers' solver threads are not
all counted in it): a shared machine only adds time. Ratios are of figures measured in the
same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from _args import output_file, positive_int
from moca.oracle2 import solve_oracle2
from moca.projection import _system, project2, project2_batch
from moca.regime import TASKS_2, Regime
from moca.scenario import DEFAULT_PARAMS_2, draw_scenario2
from moca.sim2 import OpenLoop2, ScenarioBatch2, rollout2
from moca.world import CLSC2_INPUTS, CLSC2_ROWS, regime_rows

P = DEFAULT_PARAMS_2
S = P.action_scale


def projections(count: int, seed: int = 0):
    """``count`` (raw [n, 9], inputs [n, 9], regime [n, 5]) visited by noisy hindsight plans."""
    rng = np.random.default_rng(seed)
    regimes = [TASKS_2["T1"], TASKS_2["T2"], TASKS_2["T3"],
               Regime(recycled_content_min=0.3, emission_cap=25000.0, recycled_content_window=13),
               Regime(recycled_content_min=0.1, recovery_target=0.7, landfill_tax=40.0)]
    scenarios = [draw_scenario2(100 * i + k, reg) for i, reg in enumerate(regimes) for k in range(4)]
    plans = np.stack([solve_oracle2(s).plan for s in scenarios])
    noisy = plans * rng.lognormal(0.0, 0.3, size=plans.shape)
    batch = ScenarioBatch2.from_scenarios(scenarios, torch.float64)
    with torch.no_grad():
        result = rollout2(batch, OpenLoop2(torch.as_tensor(noisy)), project2_batch)
    raw = result.raw.reshape(-1, 9).numpy()
    inputs = result.inputs.reshape(-1, 9).numpy()
    regime = batch.regime.reshape(-1, 5).numpy()
    pick = rng.choice(raw.shape[0], size=count, replace=count > raw.shape[0])
    return raw[pick], inputs[pick], regime[pick]


def timed(fn, repeats: int) -> dict[str, float]:
    """Wall-clock ms (best, median) and this process's CPU ms (best): on a shared machine the
    CPU time is the closer estimate of what the code costs on a quiet one."""
    times, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return {"ms": 1e3 * min(times), "median_ms": 1e3 * statistics.median(times), "cpu_ms": 1e3 * min(cpu)}


def bench_daqp_loop(raw, inputs, regime, repeats: int) -> dict:
    out = {}
    for dtype in (torch.float64, torch.float32):
        r = torch.as_tensor(raw, dtype=dtype)
        x = {k: torch.as_tensor(inputs[:, i], dtype=dtype) for i, k in enumerate(CLSC2_INPUTS)}

        def forward():
            with torch.no_grad():
                project2_batch(r, x, regime, P)

        def forward_backward():
            rr = r.clone().requires_grad_(True)
            xx = {k: v.clone().requires_grad_(k in CLSC2_INPUTS[:6]) for k, v in x.items()}
            project2_batch(rr, xx, regime, P).pow(2).sum().backward()

        forward()
        name = "float64" if dtype == torch.float64 else "float32"
        out[name] = {"forward": timed(forward, repeats), "forward_backward": timed(forward_backward, repeats)}
        out[name]["us_per_projection"] = 1e3 * out[name]["forward_backward"]["ms"] / raw.shape[0]
        out[name]["cpu_us_per_projection"] = 1e3 * out[name]["forward_backward"]["cpu_ms"] / raw.shape[0]
    with torch.no_grad():
        executed = project2_batch(torch.as_tensor(raw), {k: torch.as_tensor(inputs[:, i]) for i, k in
                                                         enumerate(CLSC2_INPUTS)}, regime, P).numpy()
    out["infeasible_share"] = float((executed != raw).any(1).mean())
    return out, executed


def qp_data(raw, inputs, regime):
    """The projections as ``min 1/2 |z|^2 - y.z  s.t.  A z <= b`` (moca's rows, unit-norm and
    untightened, then the box as rows)."""
    x = CLSC2_ROWS.input_array(inputs)
    reg = regime_rows(regime)
    c = CLSC2_ROWS.coefficients(reg, P)
    s = _system(c, x, CLSC2_ROWS.safe_action(x, reg, P), S, 0.0)
    n = raw.shape[1]
    eye = np.broadcast_to(np.eye(n), (raw.shape[0], n, n))
    A = np.concatenate([s.A, eye, -eye], axis=1)  # absent rows: 0 z <= 1
    b = np.concatenate([np.where(np.isfinite(s.b), s.b, 1.0), np.minimum(s.upper, 1e3), np.zeros_like(s.upper)],
                       axis=1)
    return (raw / S) * ~s.pinned, A, b


def _layer_figures(batch: int, timing: dict, z: np.ndarray, executed: np.ndarray) -> dict:
    """A QP layer's time per projection and its distance from the exact projection (capacities)."""
    out = {"batch": batch, "forward_backward": timing,
           "us_per_projection": 1e3 * timing["ms"] / batch, "cpu_us_per_projection": 1e3 * timing["cpu_ms"] / batch}
    gap = np.abs(z - executed / S).max(1)
    out["max_gap"], out["median_gap"] = float(gap.max()), float(np.median(gap))
    return out


def bench_qpth(raw, inputs, regime, executed, repeats: int) -> dict:
    try:
        from qpth.qp import QPFunction
    except ImportError:
        return {"skipped": "qpth is not installed (pip install qpth)"}
    y, A, b = qp_data(raw, inputs, regime)
    # an interior-point method needs an interior: where the rows force a coordinate to 0
    # (both bounds 0), it fails outright; give every right-hand side at least 1e-6
    y, A, b = torch.as_tensor(y), torch.as_tensor(A), torch.as_tensor(np.maximum(b, 1e-6))
    n = y.shape[1]
    Q = torch.eye(n, dtype=torch.float64).expand(y.shape[0], n, n)
    empty = torch.empty(0, dtype=torch.float64)
    z = None

    def forward_backward():
        nonlocal z
        yy = y.clone().requires_grad_(True)
        z = QPFunction(verbose=-1)(Q, -yy, A, b, empty, empty)
        z.pow(2).sum().backward()

    timing = timed(forward_backward, repeats)
    return _layer_figures(y.shape[0], timing, z.detach().numpy(), executed)


def bench_cvxpylayers(raw, inputs, regime, executed, repeats: int) -> dict:
    try:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer
    except ImportError:
        return {"skipped": "cvxpylayers is not installed (pip install cvxpylayers)"}
    y, A, b = qp_data(raw, inputs, regime)
    n, m = y.shape[1], A.shape[1]
    zv, yp, Ap, bp = cp.Variable(n), cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(zv - yp)), [Ap @ zv <= bp]), parameters=[yp, Ap, bp],
                       variables=[zv])
    yt, At, bt = (torch.as_tensor(v) for v in (y, A, b))
    z = None

    def forward_backward():
        nonlocal z
        yy = yt.clone().requires_grad_(True)
        (z,) = layer(yy, At, bt)
        z.pow(2).sum().backward()

    timing = timed(forward_backward, repeats)
    return _layer_figures(y.shape[0], timing, z.detach().numpy(), executed)


def bench_deployment(raw, inputs, regime, executed, repeats: int) -> dict:
    args = [(raw[i], dict(zip(CLSC2_INPUTS, inputs[i].tolist())), regime[i]) for i in range(raw.shape[0])]
    infeasible = (executed != raw).any(1)
    times = np.empty((repeats, len(args)))
    for r in range(repeats):
        for i, a in enumerate(args):
            started = time.perf_counter_ns()
            project2(*a, P)
            times[r, i] = (time.perf_counter_ns() - started) / 1e3
    best = times[np.argmin(np.median(times, axis=1))]
    return {"p50_us": float(np.percentile(best, 50)), "p99_us": float(np.percentile(best, 99)),
            "infeasible_p50_us": float(np.percentile(best[infeasible], 50)),
            "infeasible_p99_us": float(np.percentile(best[infeasible], 99)), "count": len(args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches and one repeat (a smoke run)")
    parser.add_argument("--batch", type=positive_int, default=1024, help="batch of the DAQP loop (default 1024)")
    parser.add_argument("--out", type=output_file, help="also write the JSON to this file")
    args = parser.parse_args()
    # The projection is numpy around one DAQP loop; torch's intra-op threads would only spin
    # (and count as CPU time) on its few small tensor operations.
    torch.set_num_threads(1)
    batch = 64 if args.quick else args.batch
    repeats = 1 if args.quick else 5
    raw, inputs, regime = projections(batch)
    daqp, executed = bench_daqp_loop(raw, inputs, regime, repeats)
    small = min(batch, 64 if args.quick else 256)
    qpth = bench_qpth(raw[:small], inputs[:small], regime[:small], executed[:small], max(1, repeats // 2))
    tiny = min(batch, 16 if args.quick else 64)
    cvx = bench_cvxpylayers(raw[:tiny], inputs[:tiny], regime[:tiny], executed[:tiny], 1)
    deploy = bench_deployment(raw[: min(batch, 512)], inputs[: min(batch, 512)], regime[: min(batch, 512)],
                              executed[: min(batch, 512)], 3)
    ours = daqp["float64"]["us_per_projection"]

    def ratio(other: dict, key: str, base: float) -> float | None:  # None (JSON null) where that library is absent
        return other[key] / base if key in other else None

    result = {
        "command": "benchmarks/bench_projection2.py" + (" --quick" if args.quick else f" --batch {batch}"),
        "load_average": list(os.getloadavg()),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
        "batch": batch, "daqp_loop": daqp, "qpth": qpth, "cvxpylayers": cvx, "deployment": deploy,
        "speedup_vs_qpth": ratio(qpth, "us_per_projection", ours),
        "speedup_vs_cvxpylayers": ratio(cvx, "us_per_projection", ours),
        "cpu_speedup_vs_qpth": ratio(qpth, "cpu_us_per_projection", daqp["float64"]["cpu_us_per_projection"]),
        "cpu_speedup_vs_cvxpylayers": ratio(cvx, "cpu_us_per_projection", daqp["float64"]["cpu_us_per_projection"]),
    }
    text = json.dumps(result, indent=2, allow_nan=False)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
