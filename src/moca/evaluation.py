"""Scoring any policy against the hindsight oracle, decision by decision.

Every result moca reports is ``score = oracle cost / policy cost`` per scenario (1.0 is
optimal), beside the number of hard-constraint violations (must be 0) and the decision
latency of the deployment path (policy + exact projection, one scenario at a time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from moca import safety
from moca.oracle import solve_oracle
from moca.scenario import Scenario
from moca.sim import Observation, Policy, ScenarioBatch, Simulator, State


@dataclass
class Evaluation:
    """Per-scenario costs and scores of one policy; latencies in microseconds."""

    policy: str
    costs: np.ndarray  # [N] EUR
    oracle_costs: np.ndarray  # [N] EUR
    violations: int
    latencies_us: np.ndarray  # one entry per decision
    correction: float = 0.0  # mean normalised distance the safety layer moved raw actions
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scores(self) -> np.ndarray:
        return self.oracle_costs / self.costs

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_us
        return {
            "policy": self.policy,
            "scenarios": int(self.costs.size),
            "mean_cost": float(self.costs.mean()),
            "mean_oracle_cost": float(self.oracle_costs.mean()),
            "score": float(self.scores.mean()),
            "violations": int(self.violations),
            "decision_latency_us": {
                "p50": float(np.percentile(lat, 50)) if lat.size else None,
                "p99": float(np.percentile(lat, 99)) if lat.size else None,
            },
        }


class _TimedDeploymentProjector:
    """Runs the deployment path (exact DAQP projection per decision) and times
    ``policy.act`` + projection together, as a controller would see it (violations are
    counted after the episode, outside the timed region)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self._act_started = 0.0

    def project(self, raw: torch.Tensor, state: State, regime: torch.Tensor, params) -> torch.Tensor:
        raw_np = raw.detach().to(torch.float64).numpy()
        regime_np = regime.detach().to(torch.float64).numpy()
        out = np.empty_like(raw_np)
        for i in range(raw_np.shape[0]):
            out[i] = safety.project(raw_np[i], float(state.virgin[i]), float(state.recycled[i]),
                                    float(state.cores[i]), regime_np[i], params)
        self.latencies.append((time.perf_counter() - self._act_started) * 1e6)
        return torch.as_tensor(out, dtype=raw.dtype)


class _TimedPolicy:
    def __init__(self, policy: Policy, timer: _TimedDeploymentProjector):
        self.policy, self.timer = policy, timer

    def reset(self, batch: ScenarioBatch) -> None:
        self.policy.reset(batch)

    def act(self, obs: Observation) -> torch.Tensor:
        self.timer._act_started = time.perf_counter()
        return self.policy.act(obs)


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
    from moca.sim import rollout

    if oracle_costs is None:
        oracle_costs = np.empty(len(scenarios))
        oracle_latency = []
        for i, scenario in enumerate(scenarios):
            started = time.perf_counter()
            oracle_costs[i] = solve_oracle(scenario).oracle_cost
            oracle_latency.append((time.perf_counter() - started) * 1e6)
    else:
        oracle_latency = []
    if policy is None:
        if not oracle_latency:
            for scenario in scenarios[: min(len(scenarios), 5)]:
                started = time.perf_counter()
                solve_oracle(scenario)
                oracle_latency.append((time.perf_counter() - started) * 1e6)
        return Evaluation(name, oracle_costs.copy(), oracle_costs, 0, np.asarray(oracle_latency))
    timer = _TimedDeploymentProjector()
    costs = np.empty(len(scenarios))
    corrections = []
    violations = 0
    with torch.no_grad():
        for i, scenario in enumerate(scenarios):
            batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
            result = rollout(batch, _TimedPolicy(policy, timer), timer.project,
                             simulator=Simulator(scenario.params, dtype=torch.float64))
            costs[i] = float(result.total_cost[0])
            violations += safety.episode_violations(result.executed, result.available, batch.regime, scenario.params)
            corrections.append(float(result.correction[0]))
            if progress:
                progress(i + 1)
    return Evaluation(name, costs, np.asarray(oracle_costs, dtype=float), violations,
                      np.asarray(timer.latencies), correction=float(np.mean(corrections)))
