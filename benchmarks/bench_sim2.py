"""CLSC-2 simulator throughput: env-steps/s of moca.sim2 and of the Gymnasium environment.

    .venv/bin/python benchmarks/bench_sim2.py [--threads N] [--quick]

Prints one JSON object to stdout. An env-step is one scenario advanced by one period (a
batched step of B scenarios counts B). Measured:

* ``dynamics``: ``Simulator2.arrive`` + ``row_inputs`` + ``execute`` alone (float32,
  ``torch.no_grad``), replaying actions that were projected once beforehand (replaying
  them reproduces the same states, so they stay feasible), at batch 1, 256 and 4096;
* ``projected``: the same with every random raw action (uniform over ``[0, 1]^9 * S``)
  through ``moca.projection.project2_batch`` first, at batch 1 and 256;
* ``gym_env``: ``CircularSupplyChain2Env.step`` with random actions (float64, the exact
  deployment projection and the violation recount of every step), resets excluded.

Each figure is the best of a few repeats (``benchmarks/_timing.py``); the median is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import numpy as np
import torch

from _args import positive_int
from _timing import rate
from moca import clsc2
from moca.env2 import CircularSupplyChain2Env
from moca.projection import project2_batch
from moca.regime import TASKS_2
from moca.scenario import draw_scenarios2
from moca.sim2 import OpenLoop2, ScenarioBatch2, Simulator2, rollout2

REGIME = TASKS_2["T3"]  # a binding year-settled mandate and a carbon tax


def _batch(size: int) -> ScenarioBatch2:
    scenarios = draw_scenarios2(16, REGIME)  # the draws do not change a step's cost
    return ScenarioBatch2.from_scenarios([scenarios[i % 16] for i in range(size)], dtype=torch.float32)


def _raw(batch: ScenarioBatch2, seed: int = 0) -> torch.Tensor:
    scale = clsc2.action_scale(batch.params)
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.uniform(0, 1, (batch.size, batch.horizon, 9)) * scale, dtype=batch.dtype)


def dynamics(size: int, repeats: int) -> dict[str, float]:
    batch = _batch(size)
    with torch.no_grad():
        actions = rollout2(batch, OpenLoop2(_raw(batch)), project2_batch).executed
    sim = Simulator2(batch.params, dtype=batch.dtype)
    columns = [actions[:, t].contiguous() for t in range(batch.horizon)]

    def episode() -> None:
        with torch.no_grad():
            state = sim.initial_state(batch.demand_history)
            for t in range(batch.horizon):
                state, arrival = sim.arrive(state, batch.return_frac[:, t], batch.grades[:, t],
                                            batch.window_start[:, t])
                sim.row_inputs(state, batch, t)
                state, _ = sim.execute(state, columns[t], batch.demand[:, t], batch.regime[:, t], arrival.scrap)

    episode()
    return rate(episode, size * batch.horizon, repeats, "env_steps")


def projected(size: int, repeats: int) -> dict[str, float]:
    batch = _batch(size)
    raw = _raw(batch, seed=1)

    def episode() -> None:
        with torch.no_grad():
            rollout2(batch, OpenLoop2(raw), project2_batch)

    return rate(episode, size * batch.horizon, repeats, "env_steps")


def gym_env(repeats: int) -> dict[str, float]:
    env = CircularSupplyChain2Env(REGIME)
    horizon = env.params.horizon
    actions = np.random.default_rng(2).uniform(0, 1, (horizon, 9)).astype(np.float32)

    def episode() -> None:
        env.reset(seed=3)
        for t in range(horizon):
            env.step(actions[t])

    episode()
    return rate(episode, horizon, repeats, "env_steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 2 if args.quick else 5
    out = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__},
        "regime": REGIME.describe(),
        "dynamics": {str(b): dynamics(b, repeats) for b in (1, 256, 4096)},
        "projected": {str(b): projected(b, repeats) for b in (1, 256)},
        "gym_env": gym_env(repeats),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
