"""Simulator throughput: env-steps/s of moca.sim and of the Gymnasium environment.

    .venv/bin/python benchmarks/bench_sim.py [--threads N] [--quick]

Prints one JSON object to stdout. An env-step is one scenario advanced by one period, so
a batched step of B scenarios counts B env-steps. Measured (float32 unless noted):

* ``dynamics``: ``Simulator.arrive`` + ``Simulator.execute`` alone, replaying random
  feasible actions (random raw actions projected once beforehand; replaying them
  reproduces the same states, so they stay feasible) in the layout ``project_batch``
  returns them (``[B, 6]``, columns contiguous), under ``torch.no_grad``;
* ``projected``: a full step with random raw actions (uniform over ``[0, 1]^6 * S``,
  mostly infeasible) through the exact training-path projection
  ``moca.safety.project_batch`` under ``torch.no_grad``, then executed;
* ``projected["1_deployment_path"]``: batch 1 with the deployment projection
  ``moca.safety.project`` (one action, DAQP) in place of ``project_batch``;
* ``gym_env``: ``CircularSupplyChainEnv.step`` (float64, deployment projection, random
  actions from the action space, nearly all infeasible): ``default`` (``info["violations"]``
  from the check the safety layer ends with), ``with_violation_recount``
  (``check_violations=True``: the rows recounted after the layer), ``feasible_actions`` (each
  episode's executed actions replayed, so the projection only checks them),
  ``through_daqp_solve`` (every solve through ``daqp.solve``, DAQP's Python wrapper, instead
  of the direct call of DAQP's C solver the safety layer makes where it can) and (diagnostic,
  not a valid environment) with the projection replaced by the identity, i.e. what the
  environment's own bookkeeping costs; resets excluded. The variants run interleaved, one
  repeat of each per round (40 rounds), so all of them meet the same machine phases.

Each figure is the best of several repeats (a shared machine adds noise; the median is
printed too). ``torch.set_num_threads`` is set from ``--threads`` (default: 1 — the
small per-step tensors of batch 1 and 256 gain nothing from more threads; for batch 4096
the elementwise kernels are also below PyTorch's parallelisation grain).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

from _args import positive_int
from _timing import rate, through_daqp_solve
from moca import safety
from moca.env import CircularSupplyChainEnv
from moca.regime import TASKS
from moca.scenario import draw_scenarios
from moca.sim import OpenLoop, ScenarioBatch, Simulator, rollout

BATCHES = (1, 256, 4096)
REGIME = TASKS["T3"]  # a binding mandate and a carbon tax: every row of the model is active


def _batch(size: int) -> ScenarioBatch:
    # The scenario draws do not change the cost of a step; reuse 16 scenarios for any size.
    scenarios = draw_scenarios(range(1000, 1000 + min(size, 16)), REGIME)
    base = ScenarioBatch.from_scenarios(scenarios, torch.float32)
    reps = -(-size // base.size)
    take = lambda x: x.repeat(reps, *([1] * (x.dim() - 1)))[:size]  # noqa: E731
    return ScenarioBatch(base.params, take(base.demand), take(base.return_frac), take(base.regime))


def _random_raw(batch: ScenarioBatch, seed: int) -> torch.Tensor:
    """Raw actions ``[B, T, 6]`` uniform over the capacity box ``[0, 1]^6 * S``."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.as_tensor(batch.params.action_scale, dtype=batch.dtype)
    return torch.rand(batch.size, batch.horizon, 6, generator=gen, dtype=batch.dtype) * scale


def bench_dynamics(size: int, repeats: int) -> dict[str, float]:
    batch = _batch(size)
    sim = Simulator(batch.params, batch.dtype)
    with torch.no_grad():
        executed = rollout(batch, OpenLoop(_random_raw(batch, 0)), safety.project_batch, sim).executed
    # Each period's actions in the layout project_batch hands them to the step ([B, 6] with
    # contiguous columns), not as slices of the stacked [B, T, 6] episode.
    feasible = executed.permute(1, 2, 0).contiguous()  # [T, 6, B]

    def episode() -> None:
        with torch.no_grad():
            state = sim.initial_state(batch.size)
            for t in range(batch.horizon):
                state = sim.arrive(state, batch.return_frac[:, t])
                state, _ = sim.execute(state, feasible[t].T, batch.demand[:, t], batch.regime[:, t])

    episode()  # warm-up
    return rate(episode, size * batch.horizon, repeats, "env_steps")


def bench_projected(size: int, repeats: int) -> dict[str, float]:
    batch = _batch(size)
    sim = Simulator(batch.params, batch.dtype)
    raw = _random_raw(batch, 1)

    def episode() -> None:
        with torch.no_grad():
            state = sim.initial_state(batch.size)
            for t in range(batch.horizon):
                state = sim.arrive(state, batch.return_frac[:, t])
                regime = batch.regime[:, t]
                action = safety.project_batch(raw[:, t], state, regime, batch.params)
                state, _ = sim.execute(state, action, batch.demand[:, t], regime)

    episode()
    return rate(episode, size * batch.horizon, repeats, "env_steps")


def bench_projected_deployment(repeats: int) -> dict[str, float]:
    """Batch 1 with the deployment path (``moca.safety.project``, float64 numpy) instead."""
    batch = _batch(1)
    sim = Simulator(batch.params, batch.dtype)
    raw = _random_raw(batch, 1).double().numpy()
    regime = batch.regime.double().numpy()

    def episode() -> None:
        with torch.no_grad():
            state = sim.initial_state(1)
            for t in range(batch.horizon):
                state = sim.arrive(state, batch.return_frac[:, t])
                executed = safety.project(raw[0, t], float(state.virgin), float(state.recycled), float(state.cores),
                                          regime[0, t], batch.params)
                state, _ = sim.execute(state, torch.as_tensor(executed, dtype=batch.dtype)[None],
                                       batch.demand[:, t], batch.regime[:, t])

    episode()
    return rate(episode, batch.horizon, repeats, "env_steps")


class _GymVariant:
    """One way of running the Gymnasium environment for :func:`bench_gym`.

    ``feasible``: replay each episode's executed actions (the projection then only checks);
    ``daqp_solve``: every solve through daqp.solve instead of the direct call of DAQP's C
    solver; ``project=False``: (diagnostic only) the projection replaced by the identity, i.e.
    what the environment itself costs around it."""

    def __init__(self, episodes: int, check_violations: bool = False, project: bool = True,
                 feasible: bool = False, daqp_solve: bool = False) -> None:
        self.env = env = CircularSupplyChainEnv(regime=REGIME, check_violations=check_violations)
        if not project:
            env._project = lambda raw, *_: (raw, 0)
        self.daqp_solve = daqp_solve
        env.action_space.seed(0)
        random_actions = np.stack([env.action_space.sample() for _ in range(env.params.horizon)])
        self.plans = []
        for e in range(episodes):
            if feasible:
                env.reset(seed=1000 + e)
                executed = [env.step(a)[4]["executed"] for a in random_actions]
                # z = a / S in float32 may round a hair above a bound; scale down by 1e-6.
                self.plans.append((np.array(executed) / env.scale * (1 - 1e-6)).astype(np.float32))
            else:
                self.plans.append(random_actions)

    def steps_per_s(self) -> float:
        """One repeat: every episode once, resets excluded from the time."""
        env = self.env
        spent = 0.0
        with through_daqp_solve() if self.daqp_solve else nullcontext():
            for e, plan in enumerate(self.plans):
                env.reset(seed=1000 + e)
                started = time.perf_counter()
                for a in plan:
                    env.step(a)
                spent += time.perf_counter() - started
        return len(self.plans) * env.params.horizon / spent


def bench_gym(episodes: int, rounds: int) -> dict[str, dict[str, float]]:
    """The variants of the Gymnasium step, interleaved: each round runs one repeat of each,
    so that every variant meets the shared machine's slow and quiet phases alike; per variant
    the best and the median repeat."""
    variants = {
        "default": _GymVariant(episodes),
        "with_violation_recount": _GymVariant(episodes, check_violations=True),
        "through_daqp_solve": _GymVariant(episodes, daqp_solve=True),
        "feasible_actions": _GymVariant(episodes, feasible=True),
        "diagnostic_env_only_no_projection": _GymVariant(episodes, project=False),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            rates[name].append(variant.steps_per_s())
    return {name: {"env_steps_per_s": max(r), "median_env_steps_per_s": statistics.median(r)}
            for name, r in rates.items()}


def run(threads: int = 1, quick: bool = False) -> dict:
    torch.set_num_threads(threads)
    repeats = 3 if quick else 7
    out: dict = {
        "benchmark": "bench_sim",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "regime": REGIME.describe(),
        "dtype": "float32 (gym_env: float64)",
        "dynamics": {}, "projected": {},
    }
    for size in BATCHES:
        out["dynamics"][str(size)] = bench_dynamics(size, repeats)
        out["projected"][str(size)] = bench_projected(size, max(2, repeats // 2) if size == 4096 else repeats)
    out["projected"]["1_deployment_path"] = bench_projected_deployment(repeats)
    # Many short repeats rather than a few long ones, spread over ~10 s and interleaved: on a
    # shared machine a short repeat is more likely to run undisturbed, and the best repeat is
    # the estimate (median beside it).
    episodes, rounds = (5, 8) if quick else (10, 40)
    out["gym_env"] = bench_gym(episodes, rounds)
    out["daqp_direct_path"] = safety._DIRECT is not None
    out["targets"] = {"dynamics_4096": 10e6, "projected_batched": 100e3, "gym_env": 30e3}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=positive_int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    print(json.dumps(run(args.threads, args.quick), indent=1))


if __name__ == "__main__":
    main()
