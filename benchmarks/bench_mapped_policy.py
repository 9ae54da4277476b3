"""Decision latency of the mapped policy on the deployment path, beside the plain policy in
the same run (issue 10: the mapped rule in ``DeployedPolicy``).

    .venv/bin/python benchmarks/bench_mapped_policy.py [--scenarios 5] [--out benchmarks/mapped_policy.json]

Both policies drive whole episodes of T1-T3 (seeds 5000.., float64 simulator) through
:class:`moca.evaluation.TimedDecisions` (``DeployedPolicy.decide`` timed: features, the
LSTM step and the exact projection; for the mapped policy also the threshold rule of the
regime in force, in numpy). The plain one is the shipped ``default`` (fused path); the
mapped one is the LSTM over the shipped map's rule (fresh weights: latency does not depend
on their values). Scenarios alternate between the two, so load on a shared machine hits
both alike. Prints and writes one JSON object; ``ratio`` = mapped / plain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from _args import output_file, positive_int  # noqa: E402
from moca import checkpoint  # noqa: E402
from moca.evaluation import TimedDecisions  # noqa: E402
from moca.experiment import machine  # noqa: E402
from moca.files import write_atomic  # noqa: E402
from moca.policy import DeployedPolicy  # noqa: E402
from moca.regime import TASKS, RegimeSchedule  # noqa: E402
from moca.regime_map import load_map, mapped_policy  # noqa: E402
from moca.scenario import Params, draw_scenarios  # noqa: E402
from moca.sim import ScenarioBatch, rollout  # noqa: E402


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
            "mean": round(float(a.mean()), 1), "n": int(a.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=positive_int, default=5, help="per task (T1-T3)")
    parser.add_argument("--out", type=output_file, default=str(HERE / "mapped_policy.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = Params()
    plain = DeployedPolicy(checkpoint.load_policy("default")[0])
    mapped = DeployedPolicy(mapped_policy(load_map()[0]))
    timers = {"plain": TimedDecisions(plain), "mapped": TimedDecisions(mapped)}
    first = {"plain": [], "mapped": []}  # t = 0: a new episode (the rule's set-up, the map evaluated)
    started = time.perf_counter()
    for task in ("T1", "T2", "T3"):
        for scenario in draw_scenarios(args.scenarios, RegimeSchedule.constant(TASKS[task]), params, first_seed=5000):
            batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
            for name, timer in timers.items():
                before = len(timer.latencies)
                with torch.no_grad():
                    rollout(batch, timer, timer.projector)
                first[name].append(timer.latencies[before])
    result = {name: summary(timer.latencies) for name, timer in timers.items()}
    result["first_decision"] = {name: summary(values) for name, values in first.items()}
    result["ratio"] = {k: round(result["mapped"][k] / result["plain"][k], 2) for k in ("p50", "p99", "mean")}
    result.update({"command": " ".join(["benchmarks/bench_mapped_policy.py", *sys.argv[1:]]), "machine": machine(),
                   "load_average": os.getloadavg(), "seconds": time.perf_counter() - started,
                   "unit": "microseconds per decision (one scenario, one period), DeployedPolicy.decide"})
    text = json.dumps(result, indent=1)
    write_atomic(Path(args.out), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
