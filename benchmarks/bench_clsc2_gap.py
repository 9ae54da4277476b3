"""Where a CLSC-2 policy loses to the hindsight optimum: the cost terms (EUR per episode) of
the oracle's plan, the shipped meta-init (zero-shot) and the sampled-scenario MPC on one
task's test scenarios, with the lost sales over the year, in its last periods and per seed.

    python benchmarks/bench_clsc2_gap.py [--task T2] [--seeds 1000 1020] [--tail 6]

Writes benchmarks/clsc2_gap.json and prints a table. Every action goes through the exact
projection; the oracle's plan is replayed through the simulator (it reproduces the oracle
cost on these seeds).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import check_seed_range, non_negative_int, output_file_path, positive_int
from moca.baselines.peers import make_peer2
from moca.experiment import machine
from moca.files import write_atomic
from moca.meta2 import load_policy2
from moca.oracle2 import solve_oracle2
from moca.policy2 import PolicyAgent2
from moca.projection import project2_batch
from moca.regime import TASKS_2
from moca.scenario import DEFAULT_PARAMS_2, draw_scenario2
from moca.sim2 import OpenLoop2, ScenarioBatch2, rollout2

HERE = Path(__file__).parent


def summary(outs: list, oracle: np.ndarray, tail: int) -> dict:
    """Mean cost terms, lost sales (total, last ``tail`` periods) and scores of per-seed rollouts."""
    terms = {k: float(np.mean([float(o.terms[k].sum()) for o in outs])) for k in outs[0].terms}
    lost = np.array([float(o.lost.sum()) for o in outs])
    lost_tail = np.array([float(o.lost[0, -tail:].sum()) for o in outs])
    cost = np.array([float(o.total_cost[0]) for o in outs])
    # the virgin orders of the last periods before ordering stops (L_v + 1 periods before the end)
    last_orders = slice(-tail - 3, -3)
    raw_orders = np.mean([o.raw[0, last_orders, 0].numpy() for o in outs], axis=0)
    orders = np.mean([o.executed[0, last_orders, 0].numpy() for o in outs], axis=0)
    return {"terms": terms, "total": float(cost.mean()), "score": float(np.mean(oracle / cost)),
            "scores": [float(x) for x in oracle / cost], "lost_units": float(lost.mean()),
            "lost_units_last_periods": float(lost_tail.mean()), "lost_units_per_seed": [float(x) for x in lost],
            "raw_virgin_order_kg_before_ordering_stops": [float(x) for x in raw_orders],
            "virgin_order_kg_before_ordering_stops": [float(x) for x in orders]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="T2", choices=sorted(TASKS_2))
    parser.add_argument("--seeds", type=non_negative_int, nargs=2, default=[1000, 1020],
                        help="first and last+1 test seed")
    parser.add_argument("--tail", type=positive_int, default=6,
                        help="the last periods whose lost sales are reported apart")
    parser.add_argument("--out", type=output_file_path, default=HERE / "clsc2_gap.json")
    args = parser.parse_args()
    check_seed_range(parser, "--seeds", args.seeds)
    torch.set_num_threads(1)
    seeds = list(range(*args.seeds))
    scenarios = [draw_scenario2(s, TASKS_2[args.task], DEFAULT_PARAMS_2) for s in seeds]
    solved = [solve_oracle2(s) for s in scenarios]
    oracle = np.array([r.oracle_cost for r in solved])
    module, meta = load_policy2("default")
    weights = {k: v.detach().double() for k, v in module.named_parameters()}
    policies = {"oracle (plan)": lambda i: OpenLoop2(torch.as_tensor(solved[i].plan)[None]),
                "moca (default-clsc2, zero-shot)": lambda i: PolicyAgent2(module, weights),
                "mpc-sampled": lambda i: make_peer2("mpc-sampled")}
    result = {"task": args.task, "seeds": [seeds[0], seeds[-1]], "tail_periods": args.tail,
              "checkpoint_command": meta.get("command"), "policies": {}}
    with torch.no_grad():
        for name, make in policies.items():
            outs = [rollout2(ScenarioBatch2.from_scenarios([s], dtype=torch.float64), make(i), project2_batch)
                    for i, s in enumerate(scenarios)]
            result["policies"][name] = summary(outs, oracle, args.tail)
    result.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    write_atomic(args.out, json.dumps(result, indent=1))
    names = list(result["policies"])
    print(f"{args.task}, seeds {seeds[0]}-{seeds[-1]}: mean EUR per episode")
    print(f"{'term':<28}" + "".join(f"{n[:30]:>32}" for n in names))
    for term in result["policies"][names[0]]["terms"]:
        print(f"{term:<28}" + "".join(f"{result['policies'][n]['terms'][term]:>32,.0f}" for n in names))
    for key in ("total", "score", "lost_units", "lost_units_last_periods"):
        print(f"{key:<28}" + "".join(f"{result['policies'][n][key]:>32,.4g}" for n in names))
    for key in ("raw_virgin_order_kg_before_ordering_stops", "virgin_order_kg_before_ordering_stops"):
        print(key, {n: [round(x) for x in result["policies"][n][key]] for n in names})


if __name__ == "__main__":
    main()
