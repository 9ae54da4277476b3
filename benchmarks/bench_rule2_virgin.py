"""The CLSC-2 rule's virgin safety stock against supplier outages: its size and the periods
over which it is drawn down before the horizon ends, on validation scenarios.

    python benchmarks/bench_rule2_virgin.py [--seeds 900 932] [--quick]

Runs the threshold rule at its start thresholds (``moca.policy2.RULE_START``) with the
virgin safety stock ``s_V`` (kg, at a demand of 1,000 units a period) and the drawdown
``moca.policy2.VIRGIN_DRAWDOWN`` (periods) set to each pair of the grid, on the validation
seeds of T1-T3, no rule, eu-ets-2025 and the three regimes outside the tasks (W = 52).
Writes benchmarks/rule2_virgin.json and prints the mean score (oracle cost / rule cost)
per regime. Every action goes through the exact projection.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import check_seed_range, non_negative_int, output_file_path
import moca.policy2 as policy2
from moca.baselines.threshold2 import THRESHOLD2_NAMES, Threshold2Policy, start_thresholds2
from moca.experiment import GENERALISATION_GRID, grid_regime, machine
from moca.files import write_atomic
from moca.oracle2 import solve_oracle2
from moca.projection import project2_batch
from moca.regime import TASKS_2, Regime, named_regimes
from moca.scenario import DEFAULT_PARAMS_2, Params, draw_scenario2
from moca.sim2 import ScenarioBatch2, rollout2

HERE = Path(__file__).parent
OUTSIDE = ("mandate 0.45 + tax 150", "tax 900", "cap 0.7x + landfill 60")
GRID = {3.0: (2013.0, 4000.0, 8000.0, 12000.0), 15.0: (4000.0, 8000.0, 12000.0),
        20.0: (6000.0, 8000.0, 10000.0, 14000.0), 26.0: (2013.0, 6000.0, 8000.0, 10000.0, 14000.0)}


def plans() -> dict:
    out = dict(TASKS_2)
    named = named_regimes("CLSC-2")
    out["unregulated"], out["eu-ets-2025"] = named["unregulated"], named["eu-ets-2025"]
    for label in OUTSIDE:
        regime = grid_regime(GENERALISATION_GRID[label], Params())
        out[label] = Regime(**{**regime.model_dump(), "recycled_content_window": 52})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=non_negative_int, nargs=2, default=[900, 932],
                        help="first and last+1 validation seed")
    parser.add_argument("--quick", action="store_true", help="2 seeds, T2 only, two grid points")
    parser.add_argument("--out", type=output_file_path, default=HERE / "rule2_virgin.json")
    args = parser.parse_args()
    check_seed_range(parser, "--seeds", args.seeds)
    torch.set_num_threads(1)
    p = DEFAULT_PARAMS_2
    seeds = list(range(*args.seeds))[:2] if args.quick else list(range(*args.seeds))
    grid = {3.0: (2013.0,), 26.0: (8000.0,)} if args.quick else GRID
    regimes = {"T2": TASKS_2["T2"]} if args.quick else plans()
    start = start_thresholds2(p)
    shipped = policy2.VIRGIN_DRAWDOWN
    result = {"seeds": [seeds[0], seeds[-1]], "start_thresholds": dict(zip(THRESHOLD2_NAMES, start.tolist())),
              "shipped": {"drawdown": shipped, "safety_virgin": float(start[1])}, "scores": {}}
    try:
        for name, plan in regimes.items():
            scenarios = [draw_scenario2(s, plan, p) for s in seeds]
            oracle = np.array([solve_oracle2(s).oracle_cost for s in scenarios])
            batch = ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64)
            row = {}
            for drawdown, stocks in grid.items():
                policy2.VIRGIN_DRAWDOWN = drawdown
                for stock in stocks:
                    thresholds = start.copy()
                    thresholds[1] = stock
                    with torch.no_grad():
                        out = rollout2(batch, Threshold2Policy(thresholds, p), project2_batch)
                    row[f"{drawdown:g} periods, {stock:,.0f} kg"] = float(np.mean(oracle / out.total_cost.numpy()))
            result["scores"][name] = row
            best = max(row, key=row.get)
            print(f"{name:<24} best {best} ({row[best]:.4f}); " + "; ".join(f"{k}: {v:.4f}" for k, v in row.items()),
                  flush=True)
    finally:
        policy2.VIRGIN_DRAWDOWN = shipped
    result.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    write_atomic(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
