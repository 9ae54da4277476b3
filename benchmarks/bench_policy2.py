"""The shipped CLSC-2 meta-init on the seed tasks T1-T3 (W = 52) and on bench_peers.py's three
regimes outside them: zero-shot and after K
adaptation steps (support seeds 800+, weights of the best validation score over steps
0..K, validation seeds 900+), beside the untrained policy (the base rule at its start
thresholds) and the CLSC-2 peers recorded in benchmarks/peers.json.

    python benchmarks/bench_policy2.py [--seeds 20] [--steps 3] [--checkpoint default]

Writes benchmarks/policy2.json. Scores: oracle cost / policy cost per test scenario
(seeds 1000..), averaged; every action through the projection in float64, violations
(rows, 6a/6b, window settlements) recounted.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import check_policy_checkpoint, non_negative_int, output_file_path, positive_int
from moca.experiment import machine
from moca.meta2 import OracleCache2, adapt2
from moca.policy2 import LSTMPolicy2, evaluate_policy2
from moca.regime import TASKS_2

HERE = Path(__file__).parent
OUTSIDE = ("mandate 0.45 + tax 150", "tax 900", "cap 0.7x + landfill 60")  # bench_peers.py's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=positive_int, default=20, help="test scenarios per task (seeds 1000..)")
    parser.add_argument("--steps", type=non_negative_int, default=3, help="adaptation steps")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--output", type=output_file_path, default=HERE / "policy2.json")
    args = parser.parse_args()
    module, meta = check_policy_checkpoint(parser, "--checkpoint", args.checkpoint, "CLSC-2")
    torch.set_num_threads(1)
    fresh = LSTMPolicy2(module.params, module.config)
    cache = OracleCache2(module.params)
    seeds = list(range(1000, 1000 + args.seeds))
    out = {"machine": machine(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": f"python benchmarks/bench_policy2.py --seeds {args.seeds} --steps {args.steps}",
           "checkpoint": args.checkpoint, "checkpoint_command": meta.get("command"),
           "meta_steps_done": meta.get("meta_steps_done"), "meta_wall_seconds": meta.get("wall_seconds"),
           "test_seeds": [seeds[0], seeds[-1]], "tasks": {}}
    plans = dict(TASKS_2)
    # Regimes no task uses, as benchmarks/bench_peers.py builds them for CLSC-2 (W = 52).
    from moca.experiment import GENERALISATION_GRID, grid_regime
    from moca.regime import Regime
    from moca.scenario import Params

    for label in OUTSIDE:
        regime = grid_regime(GENERALISATION_GRID[label], Params())
        plans[label] = Regime(**{**regime.model_dump(), "recycled_content_window": 52})
    for name in ("T1", "T2", "T3", *OUTSIDE):
        tests = cache.scenarios(seeds, plans[name])
        oracle = cache.costs(tests)
        base = evaluate_policy2(fresh, None, tests, oracle)
        zero = evaluate_policy2(module, None, tests, oracle)
        began = time.perf_counter()
        weights, curve = adapt2(module, None, plans[name], args.steps, cache=cache, keep_best=True)
        seconds = time.perf_counter() - began
        adapted = evaluate_policy2(module, weights, tests, oracle)
        first6 = slice(0, min(6, len(seeds)))
        named = f"seeds_{seeds[0]}_{seeds[first6.stop - 1]}"  # the seeds first6 takes (1000_1005 by default)
        out["tasks"][name] = {
            "base_rule_untrained": base["score"], "zero_shot": zero["score"], f"after_{args.steps}": adapted["score"],
            f"zero_shot_{named}": float(np.mean(zero["scores"][first6])),
            f"after_{args.steps}_{named}": float(np.mean(adapted["scores"][first6])),
            "violations": base["violations"] + zero["violations"] + adapted["violations"],
            "adaptation_seconds": seconds, "selected_step": next(c["step"] for c in curve if c["selected"]),
        }
        print(name, json.dumps(out["tasks"][name]))
    peers_file = HERE / "peers.json"
    if peers_file.exists():
        peers = json.loads(peers_file.read_text())["worlds"].get("CLSC-2", {})
        out["peers_recorded"] = {"test_seeds": peers.get("test_seeds"), "scores": {
            name: {t: p["scores"][t]["score"] for t in ("T1", "T2", "T3", *OUTSIDE) if t in p.get("scores", {})}
            for name, p in peers.get("peers", {}).items()}}
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
