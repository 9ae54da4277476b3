"""How fast the ``moca`` command starts: ``moca --help``, ``moca regimes``, ``moca --version``.

    .venv/bin/python benchmarks/bench_cli.py [--repeats 7]

Each command runs in a fresh interpreter (as from a shell), wall time from start to exit,
best and median of ``--repeats`` runs, the commands interleaved round by round so a slow
phase of a shared machine hits them all alike. The baseline measured in the same run is
the interpreter alone (``python -c pass``); ``import torch`` is shown for scale (what every
command paid before the command line imported its heavy libraries lazily). Target: under
0.5 s for ``moca --help`` and ``moca regimes``. Also lists which heavy libraries each
command loaded (must be none). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from _args import positive_int

HEAVY = ("torch", "highspy", "gymnasium", "matplotlib", "scipy", "fastapi", "ray", "daqp", "quadprog", "pandas")

COMMANDS = {
    "python -c pass (baseline)": ["-c", "pass"],
    "moca --help": ["-m", "moca.cli", "--help"],
    "moca regimes": ["-m", "moca.cli", "regimes"],
    "moca --version": ["-m", "moca.cli", "--version"],
    "import torch (for scale)": ["-c", "import torch"],
}
TARGET_S = 0.5

# Runs a command in-process, then reports which heavy modules it imported.
_PROBE = """
import sys
from moca import cli
try:
    cli.main({args!r})
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def _seconds(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env={"COLUMNS": "120",
                                                                                        **_env()})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_cli: {' '.join(args)} failed: {done.stderr.strip()[-300:]}")
    return elapsed


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def heavy_imports(args: list[str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(args=args, heavy=HEAVY)], capture_output=True,
                          text=True, env=_env())
    line = [x for x in done.stderr.splitlines() if x.startswith("HEAVY=")]
    return [m for m in line[-1].removeprefix("HEAVY=").split(",") if m] if line else ["(probe failed)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            times[name].append(_seconds(command))
    base = min(times["python -c pass (baseline)"])
    out: dict = {"repeats": args.repeats, "target_s": TARGET_S, "commands": {}}
    for name, values in times.items():
        out["commands"][name] = {"best_s": min(values), "median_s": statistics.median(values),
                                 "best_over_baseline": min(values) / base}
    for name in ("moca --help", "moca regimes", "moca --version"):
        entry = out["commands"][name]
        entry["heavy_imports"] = heavy_imports(COMMANDS[name][2:])
        entry["met"] = entry["best_s"] < TARGET_S and not entry["heavy_imports"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
