"""Run every benchmark (what ``make bench`` runs) and write their results in one place.

    .venv/bin/python benchmarks/run_all.py [--quick] [--out benchmarks/results.json]

Each benchmark script prints one JSON object; this collects them, with the machine they
ran on, into ``--out`` and prints a short summary with the targets of the issues. The
score table (threshold rule, MPC against the oracle, >= 20 test scenarios per task) comes
from ``bench_oracle.py --scores`` and ``moca evaluate --policy threshold``.
Benchmarks run one after another so they do not compete for the two cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(args: list[str], timeout: float = 1800) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
                "seconds": time.perf_counter() - started}
    try:
        out = json.loads(done.stdout)
    except json.JSONDecodeError:  # (one step's stray output ended the whole run, and lost the rest)
        return {"error": f"not JSON: {done.stdout.strip()[:200]!r}", "seconds": time.perf_counter() - started}
    out["seconds"] = time.perf_counter() - started
    return out


def _write(results: dict, out: Path) -> None:
    """``results`` so far, whole or not at all: a step that fails or a Ctrl-C keeps what ran."""
    from moca.files import write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(results, indent=1))


def _machine() -> dict:
    from moca.experiment import machine

    return machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and scenarios (a smoke run)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args()
    if args.out.is_dir():  # (a folder: an IsADirectoryError at the write after the first step; a new one is made)
        parser.error(f"argument --out: {str(args.out)!r}: a directory, expected a file to write")
    quick = ["--quick"] if args.quick else []
    n = "5" if args.quick else "20"
    results: dict = {"machine": _machine(), "quick": args.quick,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    steps = [
        ("sim", [str(HERE / "bench_sim.py"), *quick]),
        ("safety", [str(HERE / "bench_safety.py"), *quick]),
        ("oracle_mpc", [str(HERE / "bench_oracle.py"), "--scores", "--scenarios", n, *quick]),
        ("policy", [str(HERE / "bench_policy.py"), "--scenarios", "3" if args.quick else "10",
                    "--weights", str(HERE.parent / "src/moca/data/default/weights.safetensors")]),
        ("losses", [str(HERE / "bench_losses.py"), "--steps", "6" if args.quick else "20"]),
        ("service", [str(HERE / "bench_service.py"), *quick]),
        # serial vs process pool vs local Ray; its own copy beside --out (sweep_results.json)
        ("sweep", [str(HERE / "bench_sweep.py"), *quick,
                   "--out", str(args.out.with_name("sweep_results-quick.json" if args.quick else "sweep_results.json"))]),
        ("cli", [str(HERE / "bench_cli.py"), "--repeats", "3" if args.quick else "7"]),
        # moca run with both worlds at once against one after the other (--quick: 3 min; full: 12)
        ("run", [str(HERE / "bench_run.py"), *([] if args.quick else ["--full"]),
                 "--out", str(args.out.with_name("run_jobs.json" if args.quick else "run_jobs_full.json"))]),
        # Every peer on both worlds (tuning included: the longest step, up to an hour on 2 cores).
        ("peers", [str(HERE / "bench_peers.py"), *quick,
                   "--out", str(args.out.with_name("peers-quick.json" if args.quick else "peers.json"))]),
    ]
    for name, command in steps:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = _run(command, timeout=7200 if name == "peers" else 1800)
        if name == "peers" and "worlds" in results[name]:  # the full table lives in its own file
            results[name] = {"see": command[-1], "seconds": results[name]["seconds"]}
        _write(results, args.out)
    threshold = {}
    for task in ("T1", "T2", "T3"):
        print(f"running threshold score on {task} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, "-m", "moca.cli", "evaluate", "--policy", "threshold", "--regime", task,
                               "--scenarios", n, "--seed", "1000", "--json"], capture_output=True, text=True)
        threshold[task] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip()}
    results["threshold_scores"] = threshold
    _write(results, args.out)
    print(json.dumps({k: (v if k in ("machine", "threshold_scores") else "see " + str(args.out))
                      for k, v in results.items() if isinstance(v, dict)}, indent=1))
    print(f"wrote {args.out} on {platform.node()}", file=sys.stderr)


if __name__ == "__main__":
    main()
