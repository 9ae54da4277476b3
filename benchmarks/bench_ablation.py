"""The seed's naive design reproduced, and what each part of moca adds (issue 10).

    .venv/bin/python benchmarks/bench_ablation.py [--world CLSC-1|CLSC-2] [--quick] [--seed-steps N]
        [--moca-steps N] [--train-size N] [--test-size N] [--out benchmarks/ablation.json]

Runs every row of :data:`moca.ablation.ROWS` through the world's T1 -> T2 -> T3 (CLSC-2:
W = 52, the shipped ``default-clsc2`` meta-init for the meta-init rows) under its training
protocol (the seed's: Adam, 30 steps per regime; moca's: 8 clipped SGD steps, as
``moca run``; :class:`moca.ablation.AblationConfig`) and writes the
results as JSON (``--out``; default ``benchmarks/ablation.json`` on CLSC-1,
``benchmarks/ablation2.json`` on CLSC-2) and the markdown table beside it (same name, ``.md``).
The README's CLSC-2 table is ``--world CLSC-2 --test-size 20`` (test seeds 1000-1019, as
``moca run --model CLSC-2``): about 3 CPU minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _args import non_negative_int, output_file, positive_int
from moca.ablation import WORLD_NAMES, AblationConfig, markdown, quick_config, run_ablation
from moca.experiment import machine
from moca.files import write_atomic

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small version (a few steps, few scenarios)")
    parser.add_argument("--seed-steps", type=non_negative_int, default=None,
                        help="Adam steps per regime, seed protocol (30)")
    parser.add_argument("--moca-steps", type=non_negative_int, default=None,
                        help="clipped SGD steps per regime, moca protocol (8)")
    parser.add_argument("--world", choices=WORLD_NAMES, default="CLSC-1", help="the world (CLSC-1)")
    parser.add_argument("--train-size", type=positive_int, default=None, help="training scenarios per regime (4)")
    parser.add_argument("--validation-size", type=positive_int, default=None,
                        help="validation scenarios per regime (4)")
    parser.add_argument("--test-size", type=positive_int, default=None, help="test scenarios per regime (8)")
    parser.add_argument("--out", type=output_file, default=None, help="JSON path (benchmarks/ablation.json; CLSC-2: ablation2.json)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the markdown table from --out's JSON")
    args = parser.parse_args()
    args.out = args.out or str(HERE / ("ablation.json" if args.world == "CLSC-1" else "ablation2.json"))
    if args.table_only:
        if not Path(args.out).is_file():
            parser.error(f"argument --out: {args.out!r}: no such file (--table-only reads it)")
        table = markdown(json.loads(Path(args.out).read_text()))
        Path(args.out).with_suffix(".md").write_text(table + "\n")
        print(table)
        return
    torch.set_num_threads(1)
    config = quick_config(args.world) if args.quick else AblationConfig()
    for key in ("seed_steps", "moca_steps", "train_size", "validation_size", "test_size"):
        if getattr(args, key) is not None:
            config = config.model_copy(update={key: getattr(args, key)})
    started = time.perf_counter()
    result = run_ablation(config=config, world_name=args.world,
                          progress=lambda label: print(f"ablation: {label}", file=sys.stderr, flush=True))
    result.update({"command": " ".join(["benchmarks/bench_ablation.py", *sys.argv[1:]]), "quick": args.quick,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                   "wall_seconds": time.perf_counter() - started})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=1))
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
