"""What better demand knowledge is worth to the CLSC-2 rule: the threshold rule at its start
thresholds with its own forecast replaced by forecasts that know more, each with its
product safety stock re-picked.

    python benchmarks/bench_clsc2_ceiling.py [--tasks T1 T2 T3] [--seeds 1000 1020] [--quick]

Forecasts of ``d_t .. d_{t+12}`` (units), from least to most told:

* ``own``: the rule's forecast from the last 52 periods seen (what moca and the threshold
  peer use);
* ``told level, drift, season``: the generator's log-level at ``t - 1``, its drift and its
  season (``moca.scenario.demand_parts2``): everything a perfect estimator of the past could
  know, but not the jumps still to come nor the period noise;
* ``told the noise-free curve``: the future log-level path too (jumps included), as the
  informed MPC is told;
* ``told the demand``: the realised demand itself (perfect foresight over 13 periods).

The product safety stock ``s_P`` is picked per forecast from a grid on the validation seeds
900-915 of the task, then every forecast is scored on the test seeds (oracle cost / rule
cost, every action through the exact projection). The gap between the rows says how much
of the rule's distance to the hindsight optimum a better forecaster could still close, and
how much only foresight could. Writes benchmarks/clsc2_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import check_seed_range, non_negative_int, output_file_path
from moca.baselines.threshold2 import THRESHOLD2_NAMES, threshold2_bounds
from moca.experiment import machine
from moca.files import write_atomic
from moca.meta2 import OracleCache2
from moca.policy2 import RULE_LOOKAHEAD, RULE_START, base_rule2, rule_inputs
from moca.projection import project2_batch
from moca.regime import TASKS_2
from moca.scenario import DEFAULT_PARAMS_2, HISTORY, demand_curve2, demand_parts2, season_factor2
from moca.sim2 import ScenarioBatch2, rollout2

HERE = Path(__file__).parent
FORECASTS = ("own", "told level, drift, season", "told the noise-free curve", "told the demand")
SAFETY_GRID = (0.0, 150.0, 300.0, 450.0, 661.5, 850.0)


class ToldRule:
    """The rule of ``moca.policy2.base_rule2`` at fixed thresholds, reading the forecast named
    ``forecast`` for the scenarios drawn with ``seeds`` (batch rows in that order)."""

    def __init__(self, thresholds: np.ndarray, forecast: str, seeds: list[int], params=DEFAULT_PARAMS_2):
        self.thresholds, self.forecast, self.seeds, self.params = torch.as_tensor(thresholds), forecast, seeds, params

    def reset(self, batch) -> None:
        H, T = RULE_LOOKAHEAD, batch.horizon
        if self.forecast == "told the demand":
            paths = batch.demand.double().numpy()
        elif self.forecast == "told the noise-free curve":
            paths = np.stack([demand_curve2(s, self.params)[HISTORY:] for s in self.seeds])
        else:
            paths = None
        # Past the horizon the forecast repeats the last period (the rule never uses it there).
        self.paths = None if paths is None else np.concatenate([paths, np.repeat(paths[:, -1:], H, 1)], 1)
        self.parts = [demand_parts2(s, self.params) for s in self.seeds] if self.forecast.startswith("told level") \
            else None
        self.horizon = T

    def act(self, obs) -> torch.Tensor:
        x = rule_inputs(obs)
        t, H = obs.t, RULE_LOOKAHEAD
        if self.paths is not None:
            x["forecast"] = torch.as_tensor(self.paths[:, t:t + H], dtype=x["forecast"].dtype)
        elif self.parts is not None:
            k = np.arange(HISTORY + t, HISTORY + t + H)
            rows = [self.params.demand_base * np.exp(q["log_level"][HISTORY + t - 1] + q["drift"] * (k - (HISTORY + t - 1)))
                    * season_factor2(k, q["amplitude"], q["phase"]) for q in self.parts]
            x["forecast"] = torch.as_tensor(np.stack(rows), dtype=x["forecast"].dtype)
        thresholds = self.thresholds.to(x["forecast"].dtype).expand(x["forecast"].shape[0], -1)
        return base_rule2(thresholds, x, self.params)


#: Scenarios are drawn and their oracle costs solved once per (seed, task), not per grid point.
CACHE = OracleCache2(DEFAULT_PARAMS_2)


def scores(seeds: list[int], task: str, thresholds: np.ndarray, forecast: str) -> tuple[float, float]:
    """Mean score and mean lost units a year of the told rule on ``seeds``."""
    scenarios = CACHE.scenarios(seeds, TASKS_2[task])
    oracle = CACHE.costs(scenarios)
    with torch.no_grad():
        out = rollout2(ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64),
                       ToldRule(thresholds, forecast, seeds), project2_batch)
    return float(np.mean(oracle / out.total_cost.numpy())), float(out.lost.sum(-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["T1", "T2", "T3"], choices=sorted(TASKS_2))
    parser.add_argument("--seeds", type=non_negative_int, nargs=2, default=[1000, 1020],
                        help="first and last+1 test seed")
    parser.add_argument("--quick", action="store_true", help="2 test and 2 validation seeds, two safety stocks")
    parser.add_argument("--out", type=output_file_path, default=HERE / "clsc2_ceiling.json")
    args = parser.parse_args()
    check_seed_range(parser, "--seeds", args.seeds)
    torch.set_num_threads(1)
    started = time.perf_counter()
    tests = list(range(*args.seeds))[:2] if args.quick else list(range(*args.seeds))
    valid = list(range(900, 902 if args.quick else 916))
    grid = SAFETY_GRID[2:4] if args.quick else SAFETY_GRID
    bounds = threshold2_bounds(DEFAULT_PARAMS_2)
    start = bounds[:, 0] + (bounds[:, 1] - bounds[:, 0]) * np.array([RULE_START[n] for n in THRESHOLD2_NAMES])
    result = {"tasks": {}, "test_seeds": [tests[0], tests[-1]], "validation_seeds": [valid[0], valid[-1]],
              "safety_grid": list(grid)}
    for task in args.tasks:
        rows = result["tasks"][task] = {}
        for forecast in FORECASTS:
            picked = {}
            for stock in grid:
                thresholds = start.copy()
                thresholds[0] = stock
                picked[stock] = scores(valid, task, thresholds, forecast)[0]
            best = max(picked, key=picked.get)
            thresholds = start.copy()
            thresholds[0] = best
            score, lost = scores(tests, task, thresholds, forecast)
            rows[forecast] = {"safety_product": best, "validation_score": picked[best], "score": score,
                              "lost_units": lost}
            print(f"{task} {forecast:<28} s_P {best:6.0f}  validation {picked[best]:.4f}  test {score:.4f}  "
                  f"lost {lost:8,.0f}", flush=True)
    means = {f: float(np.mean([result["tasks"][t][f]["score"] for t in args.tasks])) for f in FORECASTS}
    result["mean_score"] = means
    print("mean over tasks: " + "; ".join(f"{f} {v:.4f}" for f, v in means.items()))
    result.update({"wall_seconds": time.perf_counter() - started, "quick": args.quick,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    write_atomic(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
