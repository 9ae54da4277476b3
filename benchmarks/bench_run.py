"""How long ``moca run`` takes with both worlds at once (``--jobs 2``, the default on 2 cores)
against one world after the other (``--jobs 1``), and whether the two give the same numbers.

    .venv/bin/python benchmarks/bench_run.py [--full] [--out FILE]
    .venv/bin/python benchmarks/bench_run.py --compare RUN_A RUN_B

``--compare``: only say where two ``moca run`` folders' ``metrics.json`` differ (the same
rule: ids, clock times, timings and latencies left out), e.g. a fresh clone's run against
an earlier commit's on the same machine; exit 1 when they differ.

Runs ``moca run --quick`` (``--full``: plain ``moca run``, about 12 minutes in all) with
``--jobs 1`` and then ``--jobs 2``, each in a fresh interpreter as from a shell, into a
temporary runs folder, and reports each one's wall seconds (start to exit) and each world's
own ``wall_seconds``, the ratio of the two wall times (measured in the same run, so a slow
hour of a shared machine hits both), and every metric that differs between the two runs
(leaving out ids, clock times, timings and latencies: there must be none). Issue 10's
budget is ``--quick`` <= 120 s and ``moca run`` <= 600 s on 2 cores. Prints one JSON object
and writes it to ``--out`` (default ``benchmarks/run_jobs.json``, with ``--full``
``benchmarks/run_jobs_full.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _args import existing_dir_path, output_file_path

HERE = Path(__file__).resolve().parent
BUDGET_S = {"quick": 120.0, "full": 600.0}
#: What differs from run to run, by whole key name or by the end of one ("validation" and
#: "candidate" hold "id": matched as a part of the name, they went uncompared).
RUN_TO_RUN = ("id", "created", "machine", "command", "measured", "seconds")
RUN_TO_RUN_ENDINGS = ("_seconds", "_latency_us")
#: A target's verdict: derived from its "measured" (left out above), so it differs where a timing
#: does (the 20x latency ratio was met in one of two --quick runs and failed the comparison);
#: the scores a score target judges are compared where the metrics hold them.
DERIVED = ("met",)


def differences(first, second, path: str = "") -> list[str]:
    """Where two runs' metrics differ, leaving out what differs from run to run."""
    if isinstance(first, dict) and isinstance(second, dict):
        keys = [k for k in {*first, *second}
                if k not in RUN_TO_RUN and not k.endswith(RUN_TO_RUN_ENDINGS) and k not in DERIVED]
        return [d for k in sorted(keys) for d in differences(first.get(k), second.get(k), f"{path}/{k}")]
    if isinstance(first, list) and isinstance(second, list) and len(first) == len(second):
        return [d for j, (x, y) in enumerate(zip(first, second)) for d in differences(x, y, f"{path}[{j}]")]
    return [] if first == second else [f"{path}: {first!r} != {second!r}"]


def timed_run(jobs: int, quick: bool, folder: Path) -> dict:
    """``moca run [--quick] --jobs N``: wall seconds, each world's own seconds, its metrics."""
    out_json = folder / f"jobs{jobs}.json"
    command = [sys.executable, "-m", "moca.cli", "run", "--jobs", str(jobs), "--runs-dir", str(folder / f"runs{jobs}"),
               "--json", str(out_json), *(["--quick"] if quick else [])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench_run: moca run --jobs {jobs} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    metrics = json.loads(out_json.read_text())
    return {"wall_seconds": wall, "worlds_seconds": {w: m["wall_seconds"] for w, m in metrics.items()},
            "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="plain moca run (default: --quick)")
    parser.add_argument("--out", type=output_file_path, default=None)
    parser.add_argument("--compare", nargs=2, type=existing_dir_path, metavar=("RUN_A", "RUN_B"),
                        help="two run folders (runs/<id>): print where their metrics differ, run nothing")
    args = parser.parse_args()
    if args.compare:
        for folder in args.compare:
            if not (folder / "metrics.json").is_file():
                parser.error(f"argument --compare: {str(folder)!r}: no metrics.json in it (not a moca run folder)")
        first, second = (json.loads((folder / "metrics.json").read_text()) for folder in args.compare)
        found = differences(first, second)
        print(json.dumps({"runs": [str(f) for f in args.compare], "differences": found, "same_numbers": not found},
                         indent=1))
        sys.exit(1 if found else 0)
    out = args.out or HERE / ("run_jobs_full.json" if args.full else "run_jobs.json")
    from moca.experiment import machine

    size = "full" if args.full else "quick"
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        runs = {jobs: timed_run(jobs, not args.full, Path(tmp)) for jobs in (1, 2)}
    diffs = {w: differences(runs[2]["metrics"][w], runs[1]["metrics"][w]) for w in ("CLSC-1", "CLSC-2")}
    result = {
        "machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": f"moca run{'' if args.full else ' --quick'} --jobs N", "budget_s": BUDGET_S[size],
        **{f"jobs{j}": {k: v for k, v in runs[j].items() if k != "metrics"} for j in (1, 2)},
        "speedup": runs[1]["wall_seconds"] / runs[2]["wall_seconds"],
        "jobs2_within_budget": runs[2]["wall_seconds"] <= BUDGET_S[size],
        "metrics_differences": {w: d[:20] for w, d in diffs.items()},
        "same_numbers": not any(diffs.values()),
    }
    text = json.dumps(result, indent=1)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
