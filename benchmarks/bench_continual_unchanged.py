"""Should moca's continual learner on CLSC-2 be allowed to leave a regime unlearned? Random
sequences of regimes learned with and without that third candidate, scored on test seeds.

    python benchmarks/bench_continual_unchanged.py [--sequences 6] [--length 3] [--seed 3030] [--no-seed-tasks]
                                                   [--quick]

``moca continual --model CLSC-2`` (and ``moca run``'s moca row) learns each regime twice from
the same state, with its protected update and with plain steps, and keeps the one with the
higher mean validation score over the regimes seen (:func:`moca.experiment2.learn_by_validation`).
A regime's steps can lower its own score: a development run of the sequence "no mandate, W = 1"
→ "mandate 0.45, W = 7, tax 400, landfill tax 60" → "cap 3,000 kg, recovery 0.8, W = 26" fell
from 0.978 to 0.962 on the capped regime after learning it, its validation score falling at
nearly every step while its training loss fell. The third candidate keeps the weights from
before the regime where they validate strictly higher than both updates (``keep_unchanged``).

Here ``--sequences`` sequences of ``--length`` regimes each are drawn from the whole regime
space (``bench_random_regimes.py``'s ``draw_regimes`` for CLSC-2 with this seed, taken in
order: the first ``length`` regimes are the first sequence), and each is learned by the
``moca`` method from the shipped CLSC-2 meta-init with the settings of ``moca continual``
(8 steps per regime on training seeds 800-807, validation seeds 900-907), once with and once
without the third candidate, then scored on test seeds 1000-1019 (oracle cost / policy
cost after the last regime, every action through the exact projection). The seed tasks
T1 → T2 → T3 (W = 52; what ``moca run --model CLSC-2`` learns) come first, as sequence 0,
unless ``--no-seed-tasks``. Two worker processes, one torch thread each.

Writes benchmarks/continual_unchanged.json (per sequence: the regimes, each variant's score
matrix, average final score and choices) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import runpy
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from _args import non_negative_int, output_file_path, positive_int

HERE = Path(__file__).parent


def learn(job: tuple[int, list[dict[str, Any]], bool, int, int]) -> dict[str, Any]:
    """One sequence learned by the moca method, with or without the unchanged candidate."""
    import torch

    from moca.experiment import ExperimentConfig
    from moca.experiment2 import run_continual2
    from moca.meta2 import OracleCache2, load_policy2
    torch.set_num_threads(1)
    index, regimes, keep_unchanged, steps, test_size = job
    module, _ = load_policy2("default")
    tasks = [(r.get("name") or f"R{i + 1}", _regime(r)) for i, r in enumerate(regimes)]
    config = ExperimentConfig(steps=steps, test_size=test_size)
    began = time.perf_counter()
    result, _ = run_continual2("moca", module, tasks, OracleCache2(module.params), config,
                               keep_unchanged=keep_unchanged)
    return {"sequence": index, "keep_unchanged": keep_unchanged, "R": result["R"],
            "average_final_score": result["average_final_score"], "violations": result["violations"],
            "choices": [c["chosen"] for c in result["protocol_choice"]],
            "validation": [{k: c[k] for k in ("validation_protected", "validation_plain", "validation_unchanged")}
                           for c in result["protocol_choice"]],
            "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=positive_int, default=6)
    parser.add_argument("--length", type=positive_int, default=3)
    parser.add_argument("--seed", type=non_negative_int, default=3030,
                        help="draw seed (3030: drawn for this benchmark)")
    parser.add_argument("--no-seed-tasks", action="store_true", help="random sequences only")
    parser.add_argument("--quick", action="store_true", help="1 random sequence of 2 regimes, 1 step, 2 test seeds "
                                                             "(no seed tasks)")
    parser.add_argument("--out", type=output_file_path, default=HERE / "continual_unchanged.json")
    args = parser.parse_args()
    steps, test_size = (1, 2) if args.quick else (8, 20)
    if args.quick:
        args.sequences, args.length, args.no_seed_tasks = 1, 2, True
    from moca.experiment import machine
    from moca.files import write_atomic

    draw = runpy.run_path(str(HERE / "bench_random_regimes.py"))["draw_regimes"]
    regimes = draw("CLSC-2", args.seed, args.sequences * args.length)
    sequences = [[r.model_dump() for r in regimes[i * args.length:(i + 1) * args.length]]
                 for i in range(args.sequences)]
    if not args.no_seed_tasks:
        from moca.regime import TASKS_2

        sequences.insert(0, [{"name": n, **TASKS_2[n].model_dump()} for n in ("T1", "T2", "T3")])
    jobs = [(i, seq, keep, steps, test_size) for i, seq in enumerate(sequences) for keep in (False, True)]
    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(learn, jobs))
    rows = []
    for i, seq in enumerate(sequences):
        without, with_ = (next(r for r in results if r["sequence"] == i and r["keep_unchanged"] is k)
                          for k in (False, True))
        rows.append({"regimes": seq, "labels": [r.get("name") or _regime(r).describe() for r in seq], "without": without,
                     "with": with_, "difference": with_["average_final_score"] - without["average_final_score"]})
    drawn = rows[0 if args.no_seed_tasks else 1:]  # the random sequences: the summary is theirs
    differences = np.array([r["difference"] for r in drawn])
    out = {"command": "python benchmarks/bench_continual_unchanged.py" + (" --quick" if args.quick else ""),
           "seed_tasks": not args.no_seed_tasks,
           "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine(),
           "seed": args.seed, "steps": steps, "test_seeds": [1000, 1000 + test_size - 1],
           "seconds": time.perf_counter() - began, "sequences": rows,
           "random_mean_without": float(np.mean([r["without"]["average_final_score"] for r in drawn])),
           "random_mean_with": float(np.mean([r["with"]["average_final_score"] for r in drawn])),
           "random_mean_difference": float(differences.mean()),
           "random_standard_error": float(differences.std(ddof=1) / np.sqrt(len(drawn))) if len(drawn) > 1 else None,
           "unchanged_kept": sum(c == "unchanged" for r in rows for c in r["with"]["choices"]),
           "regimes_learned": sum(len(r["regimes"]) for r in rows)}
    write_atomic(args.out, json.dumps(out, indent=1))
    print("| sequence | without: average final | with | difference | choices with |")
    print("|:---|---:|---:|---:|:---|")
    for r in rows:
        print(f"| {' → '.join(r['labels'])} | {r['without']['average_final_score']:.4f} | "
              f"{r['with']['average_final_score']:.4f} | {r['difference']:+.4f} | {', '.join(r['with']['choices'])} |")
    print(f"\nrandom sequences: mean {out['random_mean_without']:.4f} → {out['random_mean_with']:.4f} "
          f"({out['random_mean_difference']:+.4f}"
          + (f", standard error {out['random_standard_error']:.4f}" if out["random_standard_error"] is not None
             else "")
          + f"); unchanged kept on {out['unchanged_kept']} of {out['regimes_learned']} regimes; "
          f"{out['seconds']:.0f} s; wrote {args.out}")


def _regime(entry: dict[str, Any]) -> Any:
    """A sequence entry (a regime's fields, the seed tasks with a ``name`` label) as a Regime."""
    from moca.regime import Regime

    return Regime(**{k: v for k, v in entry.items() if k != "name"})


if __name__ == "__main__":
    main()
