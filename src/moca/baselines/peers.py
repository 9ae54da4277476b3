"""The peers moca is compared with, by name, each told only what a planner knows.

| name | what it is | what it is told |
|---|---|---|
| ``threshold`` | order-up-to rule tuned per regime by simulation (CLSC-1: 6 thresholds, :mod:`.threshold`; CLSC-2: 7, :mod:`.threshold2`) | state, regime; CLSC-1 the public seasonal mean, CLSC-2 the demand seen |
| ``mpc`` | CLSC-1: rolling LP, safety stock 100 (the calibrated MPC); CLSC-2: = ``mpc-forecast`` | CLSC-1: **the demand model** |
| ``mpc-informed`` | rolling LP, safety stock tuned on training scenarios | **the demand model** (a reference; CLSC-2: the scenario's noise-free curve) |
| ``mpc-forecast`` | rolling LP on a forecast fitted to the observed history, safety stock tuned | demand (and returns, grades, market, supplier) observed so far |
| ``mpc-sampled`` | two-stage sample-average LP over sample paths of that forecast, safety stock tuned | as ``mpc-forecast`` |
| ``ppo`` | Stable-Baselines3 PPO trained on the Gymnasium env | the environment's observation |

The tuned safety stocks below are what ``benchmarks/bench_peers.py`` chose on training
scenarios (training stream, T1-T3 pooled; never test seeds) in the run recorded in
``benchmarks/peers.json``; the benchmark re-tunes them itself and reports the seconds.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from moca.evaluation import scorable
from moca.regime import RegimeSchedule
from moca.scenario import Params

PEERS: tuple[str, ...] = ("threshold", "mpc", "mpc-informed", "mpc-forecast", "mpc-sampled", "ppo")

#: Safety stocks (units) chosen by bench_peers.py's tuning on CLSC-1 training scenarios.
TUNED_SAFETY_STOCK: dict[str, float] = {"mpc-informed": 600.0, "mpc-forecast": 1200.0, "mpc-sampled": 1200.0}
#: Sample paths of the two-stage MPC.
SAMPLES = 8


def make_peer(name: str, safety_stock: float | None = None, samples: int = SAMPLES):
    """An untuned-by-regime peer with the given (or the recorded tuned) safety stock."""
    from moca.baselines.forecast_mpc import ForecastMPCPolicy, SampledMPCPolicy
    from moca.baselines.mpc import MPCPolicy

    stock = TUNED_SAFETY_STOCK.get(name, 100.0) if safety_stock is None else float(safety_stock)
    if name == "mpc":
        return MPCPolicy()
    if name == "mpc-informed":
        return MPCPolicy(safety_stock=stock)
    if name == "mpc-forecast":
        return ForecastMPCPolicy(safety_stock=stock)
    if name == "mpc-sampled":
        return SampledMPCPolicy(samples=samples, safety_stock=stock)
    raise ValueError(f"--policy {name!r}: not a tunable MPC peer")


def build_peer(name: str, plan: RegimeSchedule, params: Params = Params(), model: str = "CLSC-1") -> Any:
    """The peer ``name`` ready to act on scenarios of ``plan`` (the threshold rule is tuned
    for it now; PPO is the shipped policy)."""
    if name == "threshold":
        from moca.baselines.threshold import tune_threshold

        return tune_threshold(plan, params)
    if name == "ppo":
        from moca.baselines.ppo import check_fits, load_ppo, shipped_path

        where = shipped_path(model)
        if not where.exists():
            from moca.checkpoint import CheckpointError

            raise CheckpointError(f"--policy ppo: no shipped PPO policy for {model} at {where} "
                                  f"(train one: moca peers train-ppo -o DIR, then --policy DIR)")
        loaded = load_ppo(where)
        check_fits(loaded, name, model, params)
        return loaded
    return make_peer(name)


__all__ = ["PEERS", "PEERS_2", "SAMPLES", "SAMPLES_2", "TUNED_SAFETY_STOCK", "TUNED_SAFETY_STOCK_2", "build_peer",
           "evaluate2", "evaluate_peer2", "make_peer", "make_peer2"]


# --- CLSC-2 ---------------------------------------------------------------------------------------


def evaluate2(name: str, policy, scenarios, oracle_costs: np.ndarray | None = None,
              progress: Callable[[str, int, int | None], None] | None = None):
    """Score a CLSC-2 policy (:class:`moca.sim2.Policy2`) on ``scenarios``, one at a time in
    float64, every raw action through the exact projection; violations recounted per
    period by :func:`moca.projection.episode_violations2` (window settlement included).
    ``progress(what, done, total)``, if given, is told each scenario scored."""
    import torch

    from moca.evaluation import Evaluation
    from moca.projection import episode_violations2, project2_batch
    from moca.sim2 import ScenarioBatch2, rollout2

    tell = progress or (lambda what, done, total: None)
    if oracle_costs is None:
        oracle_costs = _oracle_costs2(scenarios, tell)
    costs, violations = np.empty(len(scenarios)), 0
    tell(f"evaluating {name} (scenarios)", 0, len(scenarios))
    with torch.no_grad():
        for i, scenario in enumerate(scenarios):
            batch = ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64)
            out = rollout2(batch, policy, project2_batch)
            costs[i] = float(out.total_cost[0])
            executed, inputs = out.executed[0].numpy(), out.inputs[0].numpy()
            table = scenario.regime_table()
            violations += episode_violations2(executed, inputs, table, scenario.params)
            tell(f"evaluating {name} (scenarios)", i + 1, len(scenarios))
    return Evaluation(name, costs, np.asarray(oracle_costs, dtype=float), violations, np.zeros(0))


#: CLSC-2's safety stocks (units) chosen by bench_peers.py --world CLSC-2 (training scenarios).
TUNED_SAFETY_STOCK_2: dict[str, float] = {"mpc-informed": 600.0, "mpc-forecast": 1500.0, "mpc-sampled": 1500.0}
#: Sample paths of CLSC-2's two-stage MPC (fewer than CLSC-1's: each path is a 13 x 18-column LP).
SAMPLES_2 = 4
PEERS_2: tuple[str, ...] = ("threshold", "mpc", "mpc-informed", "mpc-forecast", "mpc-sampled", "ppo")


def make_peer2(name: str, safety_stock: float | None = None):
    """CLSC-2's forecast MPC ``mpc`` (= ``mpc-forecast``) or ``mpc-sampled`` with the given (or
    the recorded tuned) safety stock."""
    from moca.baselines.mpc2 import MPC2Policy

    key = "mpc-forecast" if name == "mpc" else name
    if key not in ("mpc-forecast", "mpc-sampled"):
        raise ValueError(f"{name!r}: not a forecast MPC peer of CLSC-2")
    stock = TUNED_SAFETY_STOCK_2[key] if safety_stock is None else float(safety_stock)
    return MPC2Policy(safety_stock=stock, samples=SAMPLES_2) if key == "mpc-sampled" else MPC2Policy(safety_stock=stock)


def _oracle_costs2(scenarios, tell: Callable[[str, int, int | None], None]) -> np.ndarray:
    """The hindsight LP's cost of each scenario (EUR), one HiGHS solve each, told as a phase."""
    from moca.oracle2 import solve_oracle2

    costs = np.empty(len(scenarios))
    tell("hindsight LP (HiGHS), scenarios", 0, len(scenarios))
    for i, scenario in enumerate(scenarios):
        costs[i] = solve_oracle2(scenario).oracle_cost
        tell("hindsight LP (HiGHS), scenarios", i + 1, len(scenarios))
    return scorable(costs)


def evaluate_peer2(name: str, plan, seeds, params=None, scenarios=None,
                   progress: Callable[[str, int, int | None], None] | None = None) -> Any:
    """Score the CLSC-2 peer ``name`` (or a PPO or planner checkpoint directory) on the scenarios of
    ``plan`` drawn from ``seeds`` with ``params`` (default: the default chain), or on the
    given ``scenarios`` (a user's files: one chain; ``plan`` is what the threshold rule is
    tuned for); returns a :class:`moca.evaluation.Evaluation`. ``mpc`` is the forecast
    MPC (CLSC-2 has no public demand model to plan with). ``progress(what, done, total)``,
    if given, is told each phase's progress (the LPs, the threshold rule's tuning, the scoring)."""
    from pathlib import Path

    from moca.baselines.mpc2 import InformedMPC2, demand_curve2
    from moca.checkpoint import CheckpointError
    from moca.scenario import DEFAULT_PARAMS_2, draw_scenario2

    if name not in (*PEERS_2, "oracle") and not Path(name).is_dir():
        raise CheckpointError(f"--policy {name!r}: on CLSC-2 one of {', '.join(PEERS_2)}, oracle, or a PPO or "
                              f"planner (moca adapt's sampled MPC) checkpoint directory of CLSC-2 (no such directory)")
    if scenarios is None:
        params = params or DEFAULT_PARAMS_2
        scenarios = [draw_scenario2(int(s), plan, params) for s in seeds]
    else:
        params = scenarios[0].params
        if name == "mpc-informed":
            from moca.scenario import ScenarioError

            raise ScenarioError("--policy mpc-informed: is told the noise-free demand curve of the seed that drew "
                                "a scenario, which a scenario file does not have (use mpc, mpc-sampled, threshold, "
                                "ppo or oracle on files)")
    tell = progress or (lambda what, done, total: None)
    oracle = _oracle_costs2(scenarios, tell)
    if name == "oracle":
        from moca.evaluation import Evaluation

        return Evaluation(name, oracle.copy(), oracle, 0, np.zeros(0))
    stock = TUNED_SAFETY_STOCK_2.get(name if name != "mpc" else "mpc-forecast", 0.0)
    if name == "threshold":
        from moca.baselines.threshold2 import TUNING_BUDGET_2 as budget, tune_threshold2

        what = "tuning the threshold rule for the plan (candidates)"
        tell(what, 0, budget)
        rule = tune_threshold2(plan, params, budget=budget, progress=lambda n: tell(what, min(n, budget), budget))
        # The search stops early once its steps are too small to matter: the bar ends at what it used.
        tell(what, rule.tuning.candidates, rule.tuning.candidates)
        return evaluate2(name, rule, scenarios, oracle, progress)
    if name in ("mpc", "mpc-forecast", "mpc-sampled"):
        return evaluate2(name, make_peer2(name), scenarios, oracle, progress)
    if name == "mpc-informed":
        curves = np.stack([demand_curve2(int(s), params) for s in seeds])
        return evaluate2(name, InformedMPC2(curves, stock), scenarios, oracle, progress)
    from moca.baselines.mpc2 import is_planner2, load_planner2

    if name not in PEERS_2 and is_planner2(name):  # the sampled MPC that moca adapt deployed
        return evaluate2(name, load_planner2(name)[0], scenarios, oracle, progress)
    from moca.baselines.ppo import check_fits, env_evaluation, load_ppo, shipped_path

    where = shipped_path("CLSC-2") if name == "ppo" else Path(name)
    if not where.exists():
        raise CheckpointError(f"--policy ppo: no shipped CLSC-2 PPO policy at {where} "
                              f"(train one: moca peers train-ppo --model CLSC-2 -o DIR, then --policy DIR)")
    loaded = load_ppo(where, "CLSC-2")
    check_fits(loaded, name, "CLSC-2", params)
    tell(f"evaluating {name}", 0, None)
    return env_evaluation(name, loaded.policy, scenarios, oracle, "CLSC-2")
