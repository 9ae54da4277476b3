"""Scoring any policy against the hindsight oracle, decision by decision.

Every result moca reports is ``score = oracle cost / policy cost`` per scenario (1.0 is
optimal), beside the number of hard-constraint violations (must be 0) and the decision
latency of the deployment path (policy + exact projection, one scenario at a time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from moca import safety
from moca.oracle import solve_oracle
from moca.policy import DeployedPolicy
from moca.scenario import Scenario, ScenarioError
from moca.sim import Observation, Policy, ScenarioBatch, State, rollout


class UnscorableError(ScenarioError):
    """A scenario whose hindsight optimum costs nothing: no score oracle/cost exists."""


def scorable(oracle_costs: Sequence[float] | np.ndarray) -> np.ndarray:
    """The hindsight LP's costs (EUR) as an array, each of which must be above 0: a score is
    oracle cost / policy cost, and a chain where the best plan costs nothing (all costs
    0, or no demand and no stock to hold) gave a NaN score, or a division by zero, after
    the whole evaluation."""
    costs = np.asarray(oracle_costs, dtype=float)
    free = np.flatnonzero(~(costs > 0))
    if free.size:
        raise UnscorableError(
            f"scenario {free[0] + 1} of {costs.size}: the hindsight LP's best cost is {costs[free[0]]:g} EUR, so "
            "there is no score (oracle cost / policy cost) to give; the chain has no cost a plan must pay (its "
            "params' cost_*, hold_* and backlog or lost-sale costs, its demand and its starting stocks)")
    return costs


#: Units withheld over an episode below which the LP's plan counts as selling all it could
#: (HiGHS's round-off on sales of ~1,000 units a week).
WITHHELD_TOLERANCE = 1e-3


def withheld_sales(scenarios: Sequence[Any]) -> tuple[int, float, list[int]]:
    """How many of ``scenarios`` (either world) have a hindsight plan that sells less than
    the simulator would (the spec's LP may; its sales are bounded, not fixed), and the units
    withheld over them: there the oracle cost is a lower bound that no policy reaches, so
    every score reads low (under a landfill tax the CLSC-2 LP withholds sales to keep their
    returns out of the landfill); ``solve_oracle(2)(..., exact_sales=True)`` gives the
    reachable bound. One LP a scenario (tens of ms each). Third: the indices of those scenarios."""
    from moca.oracle2 import solve_oracle2
    from moca.scenario import Scenario2

    units = [withheld_units(solve_oracle2(s) if isinstance(s, Scenario2) else solve_oracle(s)) for s in scenarios]
    held = [i for i, u in enumerate(units) if u > 0]
    return len(held), float(sum(units[i] for i in held)), held


def withheld_units(result: Any) -> float:
    """Units an oracle result (either world) withholds over its episode; 0 within the
    tolerance."""
    units = float(result.withheld.sum())
    return units if units > WITHHELD_TOLERANCE else 0.0


@dataclass
class Evaluation:
    """Per-scenario costs and scores of one policy; latencies in microseconds."""

    policy: str
    costs: np.ndarray  # [N] EUR
    oracle_costs: np.ndarray  # [N] EUR
    violations: int
    latencies_us: np.ndarray  # one entry per decision

    @property
    def scores(self) -> np.ndarray:
        return self.oracle_costs / self.costs

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "scenarios": int(self.costs.size),
            "mean_cost": float(self.costs.mean()),
            "mean_oracle_cost": float(self.oracle_costs.mean()),
            "score": float(self.scores.mean()),
            "violations": int(self.violations),
            "decision_latency_us": latency_summary(self.latencies_us),
        }


def latency_summary(latencies_us: Sequence[float] | np.ndarray,
                    cpu_us: Sequence[float] | np.ndarray | None = None) -> dict[str, float | None]:
    """``{"p50", "p99"}`` of per-decision latencies (µs, wall clock); None when there are
    none. With ``cpu_us`` (the deciding thread's CPU time per decision) also ``cpu_p50``,
    ``cpu_p99``."""
    out = {}
    for prefix, values in (("", latencies_us), ("cpu_", cpu_us)):
        if values is None:
            continue
        lat = np.asarray(values, dtype=float)
        out[f"{prefix}p50"] = float(np.percentile(lat, 50)) if lat.size else None
        out[f"{prefix}p99"] = float(np.percentile(lat, 99)) if lat.size else None
    return out


class TimedDecisions:
    """A policy of :mod:`moca.sim` whose every decision is timed as a controller sees it:
    the policy's action and the exact deployment projection (DAQP), one scenario at a
    time. A :class:`moca.policy.DeployedPolicy` projects itself, so only its ``decide`` is
    timed (reading the simulator's tensors is not part of what a controller does); roll
    out with :attr:`projector` (None for a deployed policy). Violations are counted after
    the episode, outside the timed region. ``cpu_latencies``: a deployed policy's CPU time
    of the deciding thread per decision (µs), to which another process on the same cores
    adds nothing, where it adds its time slices to the wall clock (read outside the
    wall-clock window)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.latencies: list[float] = []
        self.cpu_latencies: list[float] = []
        self._started = 0.0
        self.projector = None if isinstance(policy, DeployedPolicy) else self._project

    def reset(self, batch: ScenarioBatch) -> None:
        self.policy.reset(batch)

    def act(self, obs: Observation) -> torch.Tensor:
        if self.projector is None:
            args = self.policy.inputs(obs)
            cpu_started = time.thread_time()
            started = time.perf_counter()
            action = self.policy.decide(*args)
            ended = time.perf_counter()
            self.cpu_latencies.append((time.thread_time() - cpu_started) * 1e6)
            self.latencies.append((ended - started) * 1e6)
            return torch.as_tensor(action, dtype=obs.state.virgin.dtype)[None]
        self._started = time.perf_counter()
        return self.policy.act(obs)

    def _project(self, raw: torch.Tensor, state: State, regime: torch.Tensor, params) -> torch.Tensor:
        raw_np = raw.detach().to(torch.float64).numpy()
        regime_np = regime.detach().to(torch.float64).numpy()
        out = np.empty_like(raw_np)
        for i in range(raw_np.shape[0]):
            out[i] = safety.project(raw_np[i], float(state.virgin[i]), float(state.recycled[i]),
                                    float(state.cores[i]), regime_np[i], params)
        self.latencies.append((time.perf_counter() - self._started) * 1e6)
        return torch.as_tensor(out, dtype=raw.dtype)


def _timed_oracle(scenarios: Sequence[Scenario]) -> tuple[np.ndarray, list[float]]:
    """Oracle costs (EUR) and the µs of each solve (build included)."""
    costs, latencies = np.empty(len(scenarios)), []
    for i, scenario in enumerate(scenarios):
        started = time.perf_counter()
        costs[i] = solve_oracle(scenario).oracle_cost
        latencies.append((time.perf_counter() - started) * 1e6)
    return scorable(costs), latencies


def evaluate_policy(
    name: str,
    policy: Policy | None,
    scenarios: Sequence[Scenario],
    oracle_costs: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score ``policy`` on ``scenarios`` (float64, deployment path, one scenario at a time).

    ``policy=None`` evaluates the hindsight oracle itself; its "decision latency" is the
    time of one whole LP solve (it decides the entire horizon at once).
    """
    if len(scenarios) == 0:  # (a summary of NaNs, with numpy's warnings only)
        raise ScenarioError("scenarios: empty; give at least one scenario to evaluate on")
    oracle_latency: list[float] = []
    if oracle_costs is None:
        oracle_costs, oracle_latency = _timed_oracle(scenarios)
    else:  # the caller's: one per scenario, each a cost a plan pays (a negative one gave a negative score)
        given = np.asarray(oracle_costs, dtype=float)
        if given.shape != (len(scenarios),):
            raise ScenarioError(f"oracle_costs: shape {list(given.shape)}, expected [{len(scenarios)}] (one per "
                                "scenario; numpy broadcast one cost over all)")
        if not np.isfinite(given).all():
            raise ScenarioError(f"oracle_costs: expected finite costs (EUR), got {given.tolist()[:4]}")
        oracle_costs = scorable(given)
    if policy is None:
        if not oracle_latency:
            _, oracle_latency = _timed_oracle(scenarios[: min(len(scenarios), 5)])
        return Evaluation(name, oracle_costs.copy(), oracle_costs, 0, np.asarray(oracle_latency))
    timed = TimedDecisions(policy)
    costs = np.empty(len(scenarios))
    violations = 0
    with torch.no_grad():
        for i, scenario in enumerate(scenarios):
            batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
            result = rollout(batch, timed, timed.projector)
            costs[i] = float(result.total_cost[0])
            violations += safety.episode_violations(result.executed, result.available, batch.regime, scenario.params)
            if progress:
                progress(i + 1)
    return Evaluation(name, costs, np.asarray(oracle_costs, dtype=float), violations, np.asarray(timed.latencies))
