"""Is moca's CLSC-2 lead on the seed tasks held back by its adaptation budget? The shipped
CLSC-2 meta-init adapted to each task alone (``moca.meta2.adapt2``, the weights of the best
validation score kept) with more support scenarios and more steps than ``moca adapt``'s
default, up to the data the threshold peer is re-tuned on (32 training scenarios).

    python benchmarks/bench_clsc2_adapt_budget.py [--tasks T1 T2 T3] [--budgets 8x3 32x10 32x30] [--quick]

A budget ``SxK`` is ``S`` support scenarios (seeds 800+) and ``K`` gradient steps; the
validation scenarios (seeds 900-915) choose the step kept; the test seeds (1000-1019) score
it, oracle cost / policy cost, every action through the exact projection. Writes
benchmarks/clsc2_adapt_budget.json with each task's test score, validation curve and
seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import output_file_path, positive_int
from moca.experiment import machine
from moca.files import write_atomic
from moca.meta2 import OracleCache2, adapt2, load_policy2
from moca.policy2 import evaluate_policy2
from moca.regime import TASKS_2

HERE = Path(__file__).parent


def budget(text: str) -> tuple[int, int]:
    """``"32x10"`` -> (32 support scenarios, 10 steps)."""
    try:
        support, steps = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r}: expected SUPPORTxSTEPS, e.g. 32x10") from None
    if support < 1 or steps < 0:
        raise argparse.ArgumentTypeError(f"budget {text!r}: support >= 1 and steps >= 0")
    return support, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["T1", "T2", "T3"], choices=sorted(TASKS_2))
    parser.add_argument("--budgets", nargs="+", type=budget, default=[(8, 3), (32, 10), (32, 30)])
    parser.add_argument("--test", type=positive_int, default=20, help="test scenarios per task (seeds 1000+)")
    parser.add_argument("--validation", type=positive_int, default=16,
                        help="validation scenarios per task (seeds 900+)")
    parser.add_argument("--quick", action="store_true", help="T2 only, budgets 2x1 and 4x2, 4 test scenarios")
    parser.add_argument("--out", type=output_file_path, default=HERE / "clsc2_adapt_budget.json")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.budgets, args.test, args.validation = ["T2"], [(2, 1), (4, 2)], 4, 4
    torch.set_num_threads(2)
    module, meta = load_policy2("default")
    cache = OracleCache2(module.params)
    result = {"checkpoint_command": meta.get("command"), "test_seeds": [1000, 1000 + args.test - 1],
              "validation_seeds": [900, 900 + args.validation - 1], "tasks": {}}
    for task in args.tasks:
        regime = TASKS_2[task]
        test = cache.scenarios(range(1000, 1000 + args.test), regime)
        test_oracle = cache.costs(test)
        rows = {"zero-shot": {"test_score": evaluate_policy2(module, None, test, test_oracle)["score"]}}
        for support, steps in args.budgets:
            began = time.perf_counter()
            weights, curve = adapt2(module, None, regime, steps, support_size=support,
                                    validation_size=args.validation, cache=cache, keep_best=True)
            seconds = time.perf_counter() - began
            out = evaluate_policy2(module, weights, test, test_oracle)
            rows[f"{support}x{steps}"] = {"support": support, "steps": steps, "test_score": out["score"],
                                          "violations": out["violations"], "seconds": seconds,
                                          "validation_curve": [c["score"] for c in curve]}
            print(f"{task} {support}x{steps}: test {out['score']:.4f} ({seconds:.1f} s, "
                  f"violations {out['violations']})", flush=True)
        result["tasks"][task] = rows
    names = list(next(iter(result["tasks"].values())))
    result["mean"] = {n: float(np.mean([result["tasks"][t][n]["test_score"] for t in args.tasks])) for n in names}
    result.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    write_atomic(args.out, json.dumps(result, indent=1))
    print("mean over " + ", ".join(args.tasks) + ": " + ", ".join(f"{n} {v:.4f}" for n, v in result["mean"].items()))


if __name__ == "__main__":
    main()
