"""Virgin ordered before and after each announced change of a CLSC-2 schedule: the
hindsight plan against moca's shipped meta-init (zero-shot) and the threshold rule at its
start thresholds, on test scenarios.

    python benchmarks/bench_schedule_orders.py [--plans benchmarks/random_regimes_schedules.json]
        [--index 1] [--seeds 1000 1003]

Reads the plan from a `bench_random_regimes.py --schedules` JSON (``--index`` counts from 0),
draws the test scenarios of those seeds under it, and prints, per segment between changes,
the mean kg of virgin ordered (the action ``o``) by each controller, with its score
(oracle cost / cost). Writes benchmarks/schedule_orders.json. Shows where the carbon tax
is paid: it is charged when virgin is ordered, so a controller that sees a rise coming
orders before it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import check_seed_range, existing_file_path, non_negative_int, output_file_path
from moca import clsc2
from moca.baselines.peers import evaluate2
from moca.baselines.threshold2 import Threshold2Policy, start_thresholds2
from moca.experiment import machine
from moca.files import write_atomic
from moca.meta2 import load_policy2
from moca.oracle2 import solve_oracle2
from moca.policy2 import PolicyAgent2
from moca.projection import project2_batch
from moca.regime import RegimeError, RegimeSchedule
from moca.scenario import draw_scenario2
from moca.sim2 import ScenarioBatch2, rollout2

HERE = Path(__file__).parent


def segment_orders(orders: np.ndarray, starts: list[int]) -> list[float]:
    """Mean kg of virgin ordered in each segment [start_k, start_k+1) over the scenarios
    (``orders`` is [scenarios, T])."""
    bounds = [*starts, orders.shape[1]]
    return [float(orders[:, a:b].sum(1).mean()) for a, b in zip(bounds[:-1], bounds[1:])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=existing_file_path, default=HERE / "random_regimes_schedules.json")
    parser.add_argument("--index", type=non_negative_int, default=1, help="which plan of the file (from 0)")
    parser.add_argument("--seeds", type=non_negative_int, nargs=2, default=[1000, 1003],
                        help="first and last+1 test seed")
    parser.add_argument("--out", type=output_file_path, default=HERE / "schedule_orders.json")
    args = parser.parse_args()
    check_seed_range(parser, "--seeds", args.seeds)
    torch.set_num_threads(1)
    try:
        rows = json.loads(args.plans.read_text())["worlds"]["CLSC-2"]
        entries = rows[args.index]["plan"]
        plan = RegimeSchedule.from_list(entries)
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"--plans: cannot read a CLSC-2 schedules result from {args.plans}: {err}", file=sys.stderr)
        return 2
    except IndexError:
        print(f"--index: {args.index} is not a plan of {args.plans} ({len(rows)} plans)", file=sys.stderr)
        return 2
    except RegimeError as err:
        print(f"--plans: plan {args.index}: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    module, _ = load_policy2("default")
    p = module.params
    seeds = list(range(*args.seeds))
    scenarios = [draw_scenario2(s, plan, p) for s in seeds]
    solutions = [solve_oracle2(s) for s in scenarios]
    oracle = np.array([s.oracle_cost for s in solutions])
    batch = ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64)
    weights = {k: v.detach().double() for k, v in module.named_parameters()}
    starts = [int(e["start"]) for e in entries]
    result = {"command": "python benchmarks/bench_schedule_orders.py " + " ".join(sys.argv[1:]),
              "plan": entries, "seeds": [seeds[0], seeds[-1]], "segments": starts,
              "oracle": {"virgin_kg": segment_orders(np.stack([s.plan[:, clsc2.O] for s in solutions]), starts),
                         "score": 1.0}}
    for name, policy in (("moca (meta-init, zero-shot)", PolicyAgent2(module, weights)),
                         ("threshold (start thresholds)", Threshold2Policy(start_thresholds2(p), p))):
        with torch.no_grad():
            out = rollout2(batch, policy, project2_batch)
        # the score and the violations (window settlements included) as every benchmark counts them
        scored = evaluate2(name, policy, scenarios, oracle)
        result[name] = {"virgin_kg": segment_orders(out.executed[:, :, clsc2.O].numpy(), starts),
                        "score": float(scored.scores.mean()), "violations": int(scored.violations)}
    result.update(wall_seconds=time.perf_counter() - started, created=datetime.now(timezone.utc).isoformat(),
                  machine=machine())
    write_atomic(args.out, json.dumps(result, indent=1) + "\n")
    print(f"plan {args.index}: segments start at {starts}; seeds {seeds[0]}-{seeds[-1]}")
    for name in ("oracle", "moca (meta-init, zero-shot)", "threshold (start thresholds)"):
        kg = ", ".join(f"{x:,.0f}" for x in result[name]["virgin_kg"])
        print(f"  {name}: virgin ordered per segment (kg) {kg}; score {result[name]['score']:.4f}")
    return 1 if any(result[n]["violations"] for n in result if isinstance(result[n], dict) and "violations" in result[n]) \
        else 0


if __name__ == "__main__":
    sys.exit(main())
