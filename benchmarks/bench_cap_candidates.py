"""Which of CLSC-1's adaptation candidates wins under an emission cap, and what each costs:
the evidence behind ``moca serve --adapt-base caps`` adapting through the whole portfolio.

    python benchmarks/bench_cap_candidates.py [--regimes 12] [--seed 2030] [--steps 3] [--quick]

Under a cap the service's job runs :func:`moca.portfolio.adapt_portfolio` with its three
candidates (``default``, ``map``, ``mpc``), and that job can take more than the 10-second
target (README, "The controller service"). The two LP-free candidates are the cheap ones, so
the question is whether a smaller portfolio would choose as well. Here ``--regimes`` random
CLSC-1 regimes with a cap are drawn exactly as ``bench_random_regimes.py --with-cap`` draws
them (its ``draw_regimes``, the same seed gives the same regimes), and each is adapted as a
service job from a fresh chain does it: the shipped meta-init, ``--steps`` steps on support
seeds 800-807, validation on seeds 900-907, one torch thread. For every pair of candidates
the one it would deploy (the better validation score) is recorded; where a pair's choice
differs from the whole portfolio's, both are scored on the test seeds 1000-1019 (oracle
cost / policy cost, every action through the exact projection).

Writes benchmarks/cap_candidates.json (per regime: each candidate's validation score and
seconds, each choice and, where they differ, the test scores); prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import runpy
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from _args import non_negative_int, output_file_path, positive_int
from moca.experiment import machine
from moca.files import write_atomic
from moca.meta import SUPPORT_SEEDS, VALIDATION_SEEDS, OracleCache
from moca.policy import evaluate_policy
from moca.portfolio import adapt_portfolio
from moca.regime_map import load_learned_policy
from moca.scenario import Params
from moca.sim import ScenarioBatch

HERE = Path(__file__).parent
TEST_SEEDS = range(1000, 1020)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", type=positive_int, default=12)
    parser.add_argument("--seed", type=non_negative_int, default=2030, help="bench_random_regimes' draw seed (2030: "
                                                                  "drawn for this benchmark)")
    parser.add_argument("--steps", type=non_negative_int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 regime, 1 step, 4 test seeds")
    parser.add_argument("--out", type=output_file_path, default=HERE / "cap_candidates.json")
    args = parser.parse_args()
    if args.quick:
        args.regimes, args.steps = 1, 1
    test_seeds = TEST_SEEDS[:4] if args.quick else TEST_SEEDS
    torch.set_num_threads(1)  # as the service's worker process runs its jobs
    draw_regimes = runpy.run_path(str(HERE / "bench_random_regimes.py"))["draw_regimes"]
    module, _ = load_learned_policy("default")
    cache = OracleCache(Params())
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for regime in draw_regimes("CLSC-1", args.seed, args.regimes, with_cap=True):
        support = cache.scenarios(SUPPORT_SEEDS[:8], regime)
        validation = cache.scenarios(VALIDATION_SEEDS[:8], regime)
        result = adapt_portfolio(module, regime, args.steps, base="auto", support=support, validation=validation,
                                 cache=cache)
        candidates = result.candidates
        pairs = {"+".join(pair): max((candidates[n] for n in pair), key=lambda c: c.validation_score).name
                 for pair in itertools.combinations(candidates, 2)}
        row: dict[str, Any] = {
            "regime": regime.model_dump(exclude_defaults=True), "chosen": result.chosen.name, "pairs": pairs,
            "validation": {n: c.validation_score for n, c in candidates.items()},
            "seconds": {n: round(c.seconds, 2) for n, c in candidates.items()},
            "job_seconds": round(result.seconds, 2)}
        differing = {name for name in pairs.values() if name != result.chosen.name}
        if differing:
            test = cache.scenarios(test_seeds, regime)
            batch, oracle = ScenarioBatch.from_scenarios(test), cache.costs(test)
            row["test"] = {n: evaluate_policy(candidates[n].module, candidates[n].weights, batch, oracle)["score"]
                           for n in sorted({result.chosen.name, *differing})}
        rows.append(row)
        print(json.dumps(row), flush=True)
    pair_names = list(rows[0]["pairs"]) if rows else []
    summary = {"chosen": {n: sum(r["chosen"] == n for r in rows) for n in ("default", "map", "mpc")},
               "pair_differs": {p: sum(r["pairs"][p] != r["chosen"] for r in rows) for p in pair_names},
               "pair_test_loss": {p: sum(r["test"][r["chosen"]] - r["test"][r["pairs"][p]] for r in rows
                                         if r["pairs"][p] != r["chosen"]) / max(len(rows), 1) for p in pair_names},
               "mean_seconds": {n: sum(r["seconds"][n] for r in rows) / max(len(rows), 1)
                                for n in ("default", "map", "mpc")}}
    out = {"benchmark": "cap_candidates",
           "command": "python benchmarks/bench_cap_candidates.py" + f" --regimes {args.regimes} --seed {args.seed}"
                      f" --steps {args.steps}" + (" --quick" if args.quick else ""),
           "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
           "seconds": round(time.perf_counter() - started, 1), "test_seeds": [test_seeds[0], test_seeds[-1]],
           "summary": summary, "regimes": rows}
    write_atomic(args.out, json.dumps(out, indent=1) + "\n")
    print("| regime | default | map | mpc | chosen | without map | without mpc | test (where a pair differs) |")
    print("|:---|---:|---:|---:|:---|:---|:---|:---|")
    for r in rows:
        v, s = r["validation"], r["seconds"]
        print(f"| {r['regime']} | " + " | ".join(f"{v[n]:.4f} ({s[n]:.1f} s)" for n in ("default", "map", "mpc"))
              + f" | {r['chosen']} | {r['pairs'].get('default+mpc')} | {r['pairs'].get('default+map')} | "
              + ", ".join(f"{n} {x:.4f}" for n, x in r.get("test", {}).items()) + " |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
