"""Which of its adaptation steps should ``moca adapt --model CLSC-2`` keep? Every step of the
shipped meta-init's adaptation over the random regimes and plans of ``bench_random_regimes.py``
scored on validation and test seeds, and the step each way of choosing would keep.

    python benchmarks/bench_clsc2_step_choice.py [--sets tax-rise-4242 ... returns] [--sizes 8 16 24 32]
                                                 [--steps 3] [--quick]

``moca adapt`` takes 3 steps on support seeds 800-807 (``moca.meta2.adapt2``) and keeps the
weights with the best mean score on validation seeds 900-907 among steps 0..3 (step 0: the
meta-init). Over a plan with a tax rise that choice lost what the meta-init had gained on two
sets (docs/RANDOM-REGIMES.md, "Schedules"), and the README's open work names two remedies: more validation
scenarios, or a step kept only when its validation gain beats the validation noise. Here each
set's plans are drawn exactly as ``bench_random_regimes.py`` draws them (its
``draw_regimes``), the weights after each step are scored on validation seeds 900+ (the largest
``--sizes``) and on the test seeds 1000-1019, oracle cost / policy cost, every action through
the exact projection, and each rule picks a step from the validation scores alone:

* ``no step``: the meta-init;
* ``best of N``: the best mean over the first N validation seeds (the first of equals; N = 8
  is ``moca adapt``'s choice; these steps start from the meta-init, as ``moca adapt --retune 0``);
* ``best of N, beyond noise``: as ``best of N``, but a step only where its mean gain over the
  meta-init on those N seeds (paired) exceeds one standard error of that gain;
* ``hindsight``: the step best on the test seeds themselves, the most any choice could give.

The weights after k steps are those of a k-step ``adapt2`` (its steps do not depend on how
many follow). Writes benchmarks/clsc2_step_choice.json: per set and plan, every step's mean
validation score over the first N seeds for each size N, the standard error of its paired gain
over step 0, its mean test score, the step each rule kept and that step's test score; prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import runpy
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _args import non_negative_int, output_file_path, positive_int
from moca.experiment import machine
from moca.files import write_atomic
from moca.meta2 import OracleCache2, adapt2, load_policy2
from moca.policy2 import evaluate_policy2
from moca.regime import RegimeSchedule

HERE = Path(__file__).parent
#: The sets of the random-regime tables (docs/RANDOM-REGIMES.md): their seed and bench_random_regimes' filters.
SETS: dict[str, tuple[int, dict[str, bool]]] = {
    "tax-rise-4242": (4242, {"schedules": True, "tax_rise": True}),
    "tax-rise-5151": (5151, {"schedules": True, "tax_rise": True}),
    "tax-rise-6161": (6161, {"schedules": True, "tax_rise": True}),
    "tax-rise-7171": (7171, {"schedules": True, "tax_rise": True}),
    "tax-rise-8181": (8181, {"schedules": True, "tax_rise": True}),
    "tax-rise-9191": (9191, {"schedules": True, "tax_rise": True}),
    "schedules": (2026, {"schedules": True}),
    "whole-space": (2026, {}),
    "caps": (2026, {"with_cap": True}),
    "high-tax": (2026, {"high_tax": True}),
    "high-mandate": (2026, {"high_mandate": True}),
    "returns": (2026, {"returns_liability": True}),
}
SUPPORT = 8  # moca adapt's support scenarios (seeds 800-807)


def gain_standard_error(val: np.ndarray, size: int) -> np.ndarray:
    """``[steps + 1]``: the standard error of each step's paired gain over step 0 on the first
    ``size`` seeds of ``val`` (``[steps + 1, seeds]``; 0 for step 0, and for a single seed)."""
    if size < 2:
        return np.zeros(len(val))
    gain = val[:, :size] - val[:1, :size]
    return gain.std(axis=1, ddof=1) / np.sqrt(size)


def choose(val: np.ndarray, size: int, beyond_noise: bool) -> int:
    """The step kept by ``best of size`` (``beyond_noise``: only a step whose paired mean gain
    over step 0 exceeds one standard error); ``val`` is ``[steps + 1, seeds]``."""
    means = val[:, :size].mean(axis=1)
    noise = gain_standard_error(val, size)
    best = 0
    for k in range(1, len(means)):
        if means[k] > means[best] and (not beyond_noise or means[k] - means[0] > noise[k]):
            best = k
    return best


def rules(sizes: list[int]) -> dict[str, Any]:
    """Rule name -> f(val [steps+1, seeds], test [steps+1, seeds]) -> the step kept."""
    out: dict[str, Any] = {"no step": lambda val, test: 0}
    for size in sizes:
        out[f"best of {size}"] = lambda val, test, size=size: choose(val, size, False)
    for size in sizes[:2]:
        out[f"best of {size}, beyond noise"] = lambda val, test, size=size: choose(val, size, True)
    out["hindsight"] = lambda val, test: int(np.argmax(test.mean(axis=1)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 24, 32],
                        help="validation sizes compared (seeds 900+); the first is moca adapt's")
    parser.add_argument("--steps", type=non_negative_int, default=3, help="adaptation steps (moca adapt: 3)")
    parser.add_argument("--plans", type=positive_int, default=6,
                        help="plans or regimes per set (as drawn by the runs of docs/RANDOM-REGIMES.md)")
    parser.add_argument("--test", type=positive_int, default=20, help="test scenarios per plan (seeds 1000+)")
    parser.add_argument("--quick", action="store_true", help="one set, one plan, 1 step, 2 test seeds, sizes 2 4")
    parser.add_argument("--out", type=output_file_path, default=HERE / "clsc2_step_choice.json")
    args = parser.parse_args()
    if args.quick:
        args.sets, args.sizes, args.steps, args.plans, args.test = args.sets[:1], [2, 4], 1, 1, 2
    if sorted(args.sizes) != args.sizes or args.sizes[0] < 2:
        parser.error("--sizes: increasing, each at least 2 (a standard error needs two seeds)")
    torch.set_num_threads(1)
    draw_regimes = runpy.run_path(str(HERE / "bench_random_regimes.py"))["draw_regimes"]
    module, _ = load_policy2("default")
    cache = OracleCache2(module.params)
    chooser = rules(args.sizes)
    started = time.perf_counter()
    result: dict[str, Any] = {"validation_seeds": [900, 900 + args.sizes[-1] - 1],
                              "test_seeds": [1000, 1000 + args.test - 1], "steps": args.steps,
                              "support_seeds": [800, 800 + SUPPORT - 1], "sets": {}}
    for name in args.sets:
        seed, filters = SETS[name]
        rows = []
        for regime in draw_regimes("CLSC-2", seed, args.plans, **filters):
            plan = regime if isinstance(regime, RegimeSchedule) else RegimeSchedule.constant(regime)
            validation = cache.scenarios(range(900, 900 + args.sizes[-1]), plan)
            tests = cache.scenarios(range(1000, 1000 + args.test), plan)
            valid_oracle, test_oracle = cache.costs(validation), cache.costs(tests)
            val, test, violations = [], [], 0
            for k in range(args.steps + 1):
                # k steps from the meta-init, the last weights (the validation set only feeds the curve)
                weights = None if k == 0 else adapt2(module, None, plan, k, support_size=SUPPORT,
                                                     validation=validation[:1], cache=cache)[0]
                v = evaluate_policy2(module, weights, validation, valid_oracle)
                t = evaluate_policy2(module, weights, tests, test_oracle)
                val.append(v["scores"])
                test.append(t["scores"])
                violations += v["violations"] + t["violations"]
            val_a, test_a = np.asarray(val), np.asarray(test)
            chosen = {rule: f(val_a, test_a) for rule, f in chooser.items()}
            # What the rules read, per step: the validation means over the first N seeds and the
            # standard error of the paired gain over step 0 (the per-seed scores would make the
            # file ten times larger).
            rows.append({"plan": plan.to_list_with_window(),
                         "validation_mean": {str(n): val_a[:, :n].mean(axis=1).tolist() for n in args.sizes},
                         "gain_standard_error": {str(n): gain_standard_error(val_a, n).tolist() for n in args.sizes[:2]},
                         "test_mean": test_a.mean(axis=1).tolist(), "violations": violations, "chosen": chosen,
                         "score": {rule: float(test_a[k].mean()) for rule, k in chosen.items()}})
            print(f"{name} plan {len(rows)}: " + ", ".join(f"{r} {s:.4f}" for r, s in rows[-1]["score"].items()),
                  flush=True)
        result["sets"][name] = {"rows": rows, "mean": {rule: float(np.mean([r["score"][rule] for r in rows]))
                                                        for rule in chooser}}
    groups = {"plans with a tax rise or other change": [n for n in args.sets if SETS[n][1].get("schedules")],
              "regimes held all year": [n for n in args.sets if not SETS[n][1].get("schedules")]}
    result["groups"] = {g: {rule: float(np.mean([r["score"][rule] for n in names for r in result["sets"][n]["rows"]]))
                            for rule in chooser} for g, names in groups.items() if names}
    result["violations"] = sum(r["violations"] for s in result["sets"].values() for r in s["rows"])
    result.update({"wall_seconds": time.perf_counter() - started,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    write_atomic(args.out, json.dumps(result, indent=1))
    lines = ["| set | " + " | ".join(chooser) + " |", "|:---|" + "---:|" * len(chooser)]
    for name, entry in [*result["sets"].items(), *((f"**{g}**", {"mean": m}) for g, m in result["groups"].items())]:
        lines.append(f"| {name} | " + " | ".join(f"{entry['mean'][r]:.4f}" for r in chooser) + " |")
    print("\n".join(lines) + f"\n\nviolations: {result['violations']}")


if __name__ == "__main__":
    main()
