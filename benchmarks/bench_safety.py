"""Safety-layer speed: latency of ``moca.safety.project`` and throughput of ``project_batch``,
beside a direct quadprog solve of the same projections as a baseline.

    .venv/bin/python benchmarks/bench_safety.py [--quick]

Prints one JSON object to stdout. The raw actions come from a policy-like distribution:
post-arrival states visited by a rollout on T1, T2, T3 and sampled regimes (a quarter with
an emission cap), and a plausible decision for each state (order, a production run split by
the mandate, cores split between disassembly, refurbishment and disposal) times log-normal
noise, tuned so that about half of the raw actions are infeasible.

* ``project``: per-call latency (p50, p99, microseconds) over all actions (feasible ones are
  returned after the check alone) and over the infeasible ones; as timed in the best pass,
  and per call the fastest of the passes (``*_best_of_passes``: the shared machine's
  interruptions of single calls removed);
* ``project_through_daqp_solve``: the infeasible ones with every solve through ``daqp.solve``
  (DAQP's Python wrapper) instead of the direct call of DAQP's C solver that ``project``
  makes where it can (``daqp_direct_path``);
* ``quadprog``: the same infeasible projections solved by ``quadprog.solve_qp`` on the same
  normalised constraint rows (building the rows included, as ``project`` does);
* ``project_batch``: projections per second at batch 256 and 4096 (float32 and float64),
  and the same count solved by quadprog one by one (float64);
* ``episode_with_simulator``: env-steps/s of whole float32 episodes at batch 256 and 4096
  (arrive, the noisy decision rule, ``project_batch``, execute).
Each figure is the best of a few repeats (median also given); the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import quadprog
import torch

from _timing import rate, through_daqp_solve
from moca import safety
from moca.regime import TASKS, sample_regime
from moca.scenario import DEFAULT_PARAMS, draw_scenarios
from moca.sim import ScenarioBatch, Simulator

PARAMS = DEFAULT_PARAMS
S = PARAMS.action_scale


def _decision(V, M, C, r, rng: np.random.Generator, noise: float = 0.2) -> np.ndarray:
    """A plausible raw action per state [n, 6], times log-normal noise."""
    n = V.shape[0]
    recycled = np.minimum(0.9 * M, 1.1 * r * 2000.0)
    virgin = np.minimum(np.minimum(0.9 * V, 0.8 * recycled * (1.0 - r) / np.maximum(r, 1e-9)), 2000.0 - recycled)
    base = np.stack([np.full(n, 2000.0), virgin, recycled, 0.45 * C, 0.25 * C, 0.15 * C], axis=1)
    return base * rng.lognormal(0.0, noise, size=base.shape)


def states_and_actions(count: int, seed: int = 0):
    """``count`` (raw [n, 6], V, M, C [n], regime [n, 5]) from rollouts of the noisy decision
    rule through the exact projection (so the states are ones a policy would visit)."""
    rng = np.random.default_rng(seed)
    regimes = [TASKS["T1"], TASKS["T2"], TASKS["T3"]] + [sample_regime(rng) for _ in range(5)]
    scenarios = [s for i, reg in enumerate(regimes) for s in draw_scenarios(range(100 * i, 100 * i + 8), reg)]
    batch = ScenarioBatch.from_scenarios(scenarios, torch.float64)
    sim = Simulator(batch.params, torch.float64)
    state = sim.initial_state(batch.size)
    rows = []
    with torch.no_grad():
        for t in range(batch.horizon):
            state = sim.arrive(state, batch.return_frac[:, t])
            V, M, C = (x.numpy().copy() for x in (state.virgin, state.recycled, state.cores))
            regime = batch.regime[:, t].numpy().copy()
            raw = _decision(V, M, C, regime[:, 0], rng)
            rows.append((raw, V, M, C, regime))
            action = safety.project_batch(torch.as_tensor(raw), state, batch.regime[:, t], batch.params)
            state, _ = sim.execute(state, action, batch.demand[:, t], batch.regime[:, t])
    raw, V, M, C, regime = (np.concatenate(x) for x in zip(*rows))
    pick = rng.choice(raw.shape[0], size=count, replace=count > raw.shape[0])
    return raw[pick], V[pick], M[pick], C[pick], regime[pick]


def bench_episode(size: int, repeats: int) -> dict[str, float]:
    """Env-steps/s of whole episodes (float32): arrive, the noisy decision rule, the exact
    projection, execute; and the share of raw actions the projection had to move."""
    rng = np.random.default_rng(1)
    regimes = [TASKS["T1"], TASKS["T2"], TASKS["T3"], sample_regime(rng)]
    per = -(-size // len(regimes))
    scenarios = [s for i, reg in enumerate(regimes) for s in draw_scenarios(range(1000 * i, 1000 * i + per), reg)]
    batch = ScenarioBatch.from_scenarios(scenarios[:size], torch.float32)
    sim = Simulator(batch.params, torch.float32)
    noise = torch.as_tensor(rng.lognormal(0.0, 0.2, size=(batch.horizon, size, 6)), dtype=torch.float32)
    moved = []

    def episode() -> None:
        with torch.no_grad():
            state = sim.initial_state(size)
            for t in range(batch.horizon):
                state = sim.arrive(state, batch.return_frac[:, t])
                regime = batch.regime[:, t]
                r = regime[:, 0]
                recycled = torch.minimum(0.9 * state.recycled, 1.1 * r * 2000.0)
                virgin = torch.minimum(torch.minimum(0.9 * state.virgin, 0.8 * recycled * (1 - r) / r.clamp_min(1e-9)),
                                       2000.0 - recycled)
                c = state.cores
                raw = torch.stack([torch.full_like(c, 2000.0), virgin, recycled, 0.45 * c, 0.25 * c, 0.15 * c], 1)
                raw = raw * noise[t]
                action = safety.project_batch(raw, state, regime, batch.params)
                moved.append(float((action != raw).any(1).float().mean()))
                state, _ = sim.execute(state, action, batch.demand[:, t], regime)

    episode()
    out = rate(episode, size * batch.horizon, repeats, "projections")
    return {"env_steps_per_s": out["projections_per_s"], "median_env_steps_per_s": out["median_projections_per_s"],
            "infeasible_share": float(np.mean(moved))}


def _quadprog_one(raw, V, M, C, regime) -> np.ndarray:
    """The projection by quadprog on the rows moca's deployment path hands to DAQP."""
    L = safety._layout(PARAMS)
    G, bounds, _ = safety._system_one(max(V, 0.0), max(M, 0.0), max(C, 0.0), regime[0], regime[2], regime[4], L,
                                   safety.TIGHTEN[torch.float64])
    bounds = np.array(bounds)
    upper, h = bounds[:6], bounds[6:]
    Cmat = np.vstack([-G, np.eye(6), -np.eye(6)]).T  # C' z >= b
    b = np.concatenate([-h, np.zeros(6), -upper])
    return quadprog.solve_qp(np.eye(6), raw / S, Cmat, b)[0] * S


def _latencies(fn, args, repeats: int) -> dict[str, float]:
    """Per-call latency over ``args``, in ``repeats`` passes. ``p50_us``/``p99_us``: the pass
    with the lowest median, every call as timed (the shared machine's interruptions
    included); ``*_best_of_passes``: each call's fastest of the passes, i.e. what the code
    itself takes, interruptions that hit single calls removed."""
    times = np.empty((repeats, len(args)))
    for r in range(repeats):
        for i, a in enumerate(args):
            started = time.perf_counter_ns()
            fn(*a)
            times[r, i] = time.perf_counter_ns() - started
    times /= 1e3
    best_pass = times[int(np.argmin(np.percentile(times, 50, axis=1)))]
    per_call = times.min(0)
    return {"p50_us": float(np.percentile(best_pass, 50)), "p99_us": float(np.percentile(best_pass, 99)),
            "p50_us_best_of_passes": float(np.percentile(per_call, 50)),
            "p99_us_best_of_passes": float(np.percentile(per_call, 99))}


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    repeats = 2 if quick else 5
    raw, V, M, C, regime = states_and_actions(2000 if quick else 8000)
    cases = [(raw[i], float(V[i]), float(M[i]), float(C[i]), regime[i]) for i in range(raw.shape[0])]
    feasible = safety.is_feasible(raw, V, M, C, regime, PARAMS)
    infeasible = [c for c, ok in zip(cases, feasible) if not ok]
    out: dict = {
        "benchmark": "bench_safety",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "load_average_1min": os.getloadavg()[0]},
        "actions": len(cases), "infeasible_share": float(1.0 - feasible.mean()),
        "capped_share": float(np.isfinite(regime[:, 2]).mean()),
    }
    project = lambda *a: safety.project(*a, PARAMS)  # noqa: E731
    for c in cases[:200]:  # warm-up
        project(*c)
        _quadprog_one(*c)
    out["project"] = {"all": _latencies(project, cases, repeats),
                      "infeasible_only": _latencies(project, infeasible, repeats)}
    # The same with every solve through daqp.solve (DAQP's Python wrapper) instead of the
    # direct call of its C solver (the path moca takes when it cannot use the direct one).
    out["daqp_direct_path"] = safety._DIRECT is not None
    with through_daqp_solve():
        out["project_through_daqp_solve"] = {"infeasible_only": _latencies(project, infeasible, repeats)}
    out["quadprog"] = {"infeasible_only": _latencies(_quadprog_one, infeasible, repeats)}
    out["project_batch"] = {}
    for size in (256, 4096):
        take = np.arange(size) % raw.shape[0]
        entry = {}
        for dtype in (torch.float32, torch.float64):
            raw_t = torch.as_tensor(raw[take], dtype=dtype)
            state = type("State", (), {"virgin": torch.as_tensor(V[take], dtype=dtype),
                                       "recycled": torch.as_tensor(M[take], dtype=dtype),
                                       "cores": torch.as_tensor(C[take], dtype=dtype)})()
            reg = torch.as_tensor(regime[take], dtype=dtype)

            def step(raw_t=raw_t, state=state, reg=reg) -> None:
                with torch.no_grad():
                    safety.project_batch(raw_t, state, reg, PARAMS)

            step()
            entry[str(dtype).replace("torch.", "")] = rate(step, size, repeats, "projections")
        batch_cases = [cases[i] for i in take]
        entry["quadprog_loop_float64"] = rate(lambda: [_quadprog_one(*c) for c in batch_cases], size,
                                              1 if size > 256 else repeats, "projections")
        out["project_batch"][str(size)] = entry
    out["episode_with_simulator"] = {str(size): bench_episode(size, repeats) for size in (256, 4096)}
    out["targets"] = {"project_p50_us": 20, "project_p99_us": 50, "project_batch_4096_per_s": 100e3}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer actions and repeats")
    args = parser.parse_args()
    print(json.dumps(run(args.quick), indent=1))


if __name__ == "__main__":
    main()
