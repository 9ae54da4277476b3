"""Hindsight oracle solve time and MPC decision latency (HiGHS via highspy).

    .venv/bin/python benchmarks/bench_oracle.py [--scenarios N] [--scores] [--quick]

Prints one JSON object to stdout:

* ``oracle``: per T = 52 scenario (seeds 1000.., tasks T1-T3), in milliseconds:
  ``build_and_solve`` — :func:`moca.oracle.solve_oracle` from scratch (vectorised sparse
  build, HiGHS dual simplex from a cold start, solution read back), wall and CPU time;
  ``solve`` — HiGHS alone on the already built LP (``passModel`` + ``run``); ``warm`` —
  per scenario within :func:`moca.oracle.oracle_costs`, where each LP starts from the
  previous scenario's optimal basis.
* ``mpc``: latency of one MPC decision (13-period window: forecasts, build, solve):
  ``in_rollout`` as :func:`moca.sim.rollout` calls it (each scenario's LP warm-started
  from its previous period's basis), and ``decide_cold`` — :meth:`MPCPolicy.decide` on a
  fresh state, no warm start.
* ``oracle_replay`` (with ``--scores``): per task, how many oracle plans withhold sales
  and the relative extra cost of replaying the plans through the simulator.
* ``mpc_scores`` (with ``--scores``): mean score (oracle cost / MPC cost) on the test
  seeds of each task, executed through the safety layer: default settings, no buffers
  (certainty-equivalent LP), and a 400-unit safety stock.

Timings are on one thread; a shared machine adds noise (CPU time is less affected than
wall time), so each scenario's oracle figures are the best of ``--repeats`` passes over all
the scenarios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from _args import positive_int
from moca import safety
from moca.baselines.mpc import MPCPolicy
from moca.oracle import build_lp, episode_window, oracle_costs, solve_oracle, _solver
from moca.regime import TASKS
from moca.scenario import draw_scenarios
from moca.sim import ScenarioBatch, rollout


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"mean": round(float(a.mean()), 3), "p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3)}


def bench_oracle(scenarios, repeats: int) -> dict:
    """Per scenario the best of ``repeats`` passes over all scenarios (passes rather than
    back-to-back repeats: a slow phase of the shared machine then has to last a whole pass
    to touch a scenario's every solve)."""
    count = len(scenarios)
    build_and_solve, cpu, solve_only = np.full(count, np.inf), np.full(count, np.inf), np.full(count, np.inf)
    lps = [build_lp(scenario.params, episode_window(scenario)) for scenario in scenarios]
    highs = _solver()
    for _ in range(repeats):
        for i, scenario in enumerate(scenarios):
            started, started_cpu = time.perf_counter(), time.process_time()
            solve_oracle(scenario)
            build_and_solve[i] = min(build_and_solve[i], time.perf_counter() - started)
            cpu[i] = min(cpu[i], time.process_time() - started_cpu)
        for i, lp in enumerate(lps):
            started = time.perf_counter()
            lp.pass_to(highs)
            highs.run()
            solve_only[i] = min(solve_only[i], time.perf_counter() - started)
    build_and_solve, cpu, solve_only = (list(x * 1e3) for x in (build_and_solve, cpu, solve_only))
    warm = np.inf
    for _ in range(repeats):
        started = time.perf_counter()
        oracle_costs(scenarios)
        warm = min(warm, time.perf_counter() - started)
    return {"scenarios": len(scenarios), "build_and_solve_ms": _stats(build_and_solve),
            "build_and_solve_cpu_ms": _stats(cpu),
            "solve_ms": _stats(solve_only), "warm_ms_per_scenario": round(warm * 1e3 / len(scenarios), 3)}


class _TimedMPC(MPCPolicy):
    """The MPC, recording the wall and CPU time of every window plan (one per decision)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.wall_ms: list[float] = []
        self.cpu_ms: list[float] = []

    def plan(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        solution = super().plan(*args, **kwargs)
        self.wall_ms.append((time.perf_counter() - wall) * 1e3)
        self.cpu_ms.append((time.process_time() - cpu) * 1e3)
        return solution


def bench_mpc(scenarios) -> dict:
    policy = _TimedMPC()
    rollout(ScenarioBatch.from_scenarios(scenarios, torch.float64), policy, safety.project_batch)
    cold = _TimedMPC()
    cold.reset(ScenarioBatch.from_scenarios(scenarios[:1], torch.float64))
    state = [np.array([3000.0, 400.0, 900.0, 350.0, 120.0]), np.array([2500.0]), np.full(6, 950.0),
             TASKS["T3"].as_row()]
    for t in range(0, 40):
        cold.decide(scenarios[0].params, t, *state)
    return {"decisions": len(policy.wall_ms), "horizon": policy.horizon,
            "in_rollout_ms": _stats(policy.wall_ms), "in_rollout_cpu_ms": _stats(policy.cpu_ms),
            "decide_cold_ms": _stats(cold.wall_ms)}


def mpc_scores(count: int) -> dict:
    out = {}
    for task in ("T1", "T2", "T3"):
        scenarios = draw_scenarios(count, TASKS[task], first_seed=1000)
        oracle = oracle_costs(scenarios)
        batch = ScenarioBatch.from_scenarios(scenarios, torch.float64)
        row = {}
        for label, policy in (("default", MPCPolicy()),
                              ("no_buffers", MPCPolicy(safety_stock=0.0, virgin_buffer=0.0)),
                              ("safety_stock_400", MPCPolicy(safety_stock=400.0))):
            cost = rollout(batch, policy, safety.project_batch).total_cost.numpy()
            row[label] = round(float((oracle / cost).mean()), 4)
        out[task] = row
    return out


def replay_gaps(count: int) -> dict:
    """Per task: how many oracle plans withhold sales (the spec's LP allows it, the
    simulator does not), and how much more their replay through the simulator costs
    than the LP optimum, ``(replay - oracle) / oracle``."""
    from moca.sim import OpenLoop

    out = {}
    for task in ("T1", "T2", "T3"):
        scenarios = draw_scenarios(count, TASKS[task], first_seed=1000)
        results = [solve_oracle(s) for s in scenarios]
        plans = torch.as_tensor(np.stack([r.plan for r in results]), dtype=torch.float64)
        replay = rollout(ScenarioBatch.from_scenarios(scenarios, torch.float64), OpenLoop(plans),
                         safety.project_batch).total_cost.numpy()
        gap = replay / np.array([r.oracle_cost for r in results]) - 1.0
        out[task] = {"scenarios": count, "withholding": int(sum(r.withheld.max() > 1e-6 for r in results)),
                     "max_replay_gap": round(float(gap.max()), 5), "mean_replay_gap": round(float(gap.mean()), 5)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=positive_int, default=20, help="scenarios per task (seeds 1000..)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="passes over the scenarios; per scenario the best counts")
    parser.add_argument("--scores", action="store_true", help="also the MPC score table (about a minute)")
    parser.add_argument("--quick", action="store_true", help="5 scenarios per task, 1 repeat")
    args = parser.parse_args()
    count, repeats = (5, 1) if args.quick else (args.scenarios, args.repeats)
    torch.set_num_threads(1)
    scenarios = [s for task in ("T1", "T2", "T3") for s in draw_scenarios(count, TASKS[task], first_seed=1000)]
    solve_oracle(scenarios[0])  # load HiGHS once before timing
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "oracle": bench_oracle(scenarios, repeats),
        "mpc": bench_mpc([scenarios[i] for i in (0, count, 2 * count)]),
    }
    if args.scores:
        report["mpc_scores"] = mpc_scores(count)
        report["oracle_replay"] = replay_gaps(count)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
