"""moca's CLSC-1 adaptation (the portfolio) against every peer re-tuned per regime, off and
on the seed tasks (issue 10: "moca after <= 3 steps >= the best re-tuned peer").

    .venv/bin/python benchmarks/bench_generalisation.py [--steps 0 1 3] [--scenarios 20]
        [--validation 16] [--peers threshold mpc mpc-informed mpc-forecast mpc-sampled]
        [--stocks 100 400 800 1200] [--train 4] [--only LABEL ...] [--resume]
        [--out benchmarks/generalisation.json] [--quick] [--table]

For the README's generalisation regimes (``moca.experiment.GENERALISATION_GRID``) and the
seed tasks T1-T3, on test seeds 1000.. (20 per regime):

* **moca**: :func:`moca.portfolio.adapt_portfolio` from the shipped ``default`` with the
  shipped map (``src/moca/data/map-clsc1``), after each of ``--steps`` steps (a separate
  adaptation per step count): the three candidates (the checkpoint, the LSTM over the
  mapped rule, the LSTM over the rolling LP) adapted on the same support scenarios (seeds
  800-807), the one with the best score on validation scenarios (seeds 900+,
  ``--validation``) deployed. Its seconds are the wall clock of the whole choice with a
  fresh oracle cache (support and validation oracle solves, base selections, the
  adaptations and their validation scoring). Scores on the training path, as the README's
  generalisation table; every candidate's test score is recorded too.
* **threshold**: re-tuned for the regime (``tune_threshold`` defaults), tuning seconds.
* **mpc**: the calibrated rolling LP (safety stock 100), not tuned (0 s).
* **mpc-informed / mpc-forecast / mpc-sampled**: safety stock re-tuned for the regime
  among ``--stocks`` on ``--train`` training-stream scenarios of the regime (never test
  seeds), tuning seconds.

Writes JSON after every regime (``--resume`` keeps regimes already in ``--out``) and a
markdown table (same name, ``.md``); prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _args import non_negative_int, one_of, output_file, positive_int  # noqa: E402
from moca import checkpoint  # noqa: E402
from moca.evaluation import evaluate_policy as evaluate_deployed  # noqa: E402
from moca.experiment import GENERALISATION_GRID, grid_regime, machine  # noqa: E402
from moca.files import write_atomic  # noqa: E402
from moca.meta import OracleCache  # noqa: E402
from moca.oracle import oracle_costs  # noqa: E402
from moca.policy import evaluate_policy  # noqa: E402
from moca.portfolio import adapt_portfolio  # noqa: E402
from moca.regime import TASKS, RegimeSchedule  # noqa: E402
from moca.regime_map import load_map  # noqa: E402
from moca.report import markdown_table  # noqa: E402
from moca.scenario import Params, draw_training_scenarios  # noqa: E402

MPC_TUNED = ("mpc-informed", "mpc-forecast", "mpc-sampled")
CANDIDATES = ("default", "map", "mpc")  # moca.portfolio's, in its order


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_mpc(name: str, stock: float):
    from moca.baselines.forecast_mpc import ForecastMPCPolicy, SampledMPCPolicy
    from moca.baselines.mpc import MPCPolicy
    from moca.baselines.peers import SAMPLES

    if name == "mpc":
        return MPCPolicy()
    return {"mpc-informed": lambda: MPCPolicy(safety_stock=stock),
            "mpc-forecast": lambda: ForecastMPCPolicy(safety_stock=stock),
            "mpc-sampled": lambda: SampledMPCPolicy(samples=SAMPLES, safety_stock=stock)}[name]()


def moca_entry(module, threshold_map, regime, steps, validation, tests, oracle) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in steps:
        result = adapt_portfolio(module, regime, k, base="auto", threshold_map=threshold_map,
                                 validation_size=validation, cache=OracleCache(module.params))
        summary = result.summary()
        scored = {name: evaluate_policy(c.module, c.weights, tests, oracle) for name, c in result.candidates.items()}
        for name, score in scored.items():
            summary["candidates"][name].update(test_score=score["score"], test_violations=int(score["violations"]))
        chosen = scored[result.chosen.name]
        out[str(k)] = {"score": chosen["score"], "violations": int(chosen["violations"]), **summary}
        log(f"  moca {k} steps: {chosen['score']:.4f} ({result.chosen.name}, {result.seconds:.1f} s)")
    return out


def peer_entries(label: str, regime, peers, stocks, n_train, tests, oracle, params) -> dict[str, Any]:
    from moca.baselines.threshold import tune_threshold

    plan = RegimeSchedule.constant(regime)
    out: dict[str, Any] = {}
    train = train_oracle = None
    for name in peers:
        started = time.perf_counter()
        tuned: dict[str, Any] = {}
        if name == "threshold":
            policy = tune_threshold(plan, params)
            tuned = policy.as_dict()
        elif name == "mpc":
            policy = make_mpc(name, 100.0)
        else:
            if train is None:
                train = draw_training_scenarios(n_train, plan, params)
                train_oracle = oracle_costs(train)
            scores = {str(v): float(evaluate_deployed("tune", make_mpc(name, v), train, train_oracle).scores.mean())
                      for v in stocks}
            best = float(max(scores, key=scores.get))
            policy, tuned = make_mpc(name, best), {"safety_stock": best, "training_scores": scores}
        tuning = time.perf_counter() - started if name != "mpc" else 0.0
        result = evaluate_deployed(name, policy, tests, oracle)
        out[name] = {"score": float(result.scores.mean()), "violations": int(result.violations),
                     "tuning_seconds": tuning, "tuned": tuned}
        log(f"  {name}: {out[name]['score']:.4f} (tuning {tuning:.1f} s)")
    return out


def table(result: dict) -> str:
    steps = [str(k) for k in result["steps"]]
    peers = result["peers"]
    last = steps[-1]
    headers = (["regime"] + [f"moca {k}" for k in steps] + ["chosen (" + "/".join(steps) + ")", f"moca s ({last})",
                                                           f"default {last}", f"map {last}", f"mpc {last}"]
               + [x for p in peers for x in ((p,) if p == "mpc" else (p, "s"))] + ["best peer"])
    rows = []
    regimes = result["regimes"]
    for label, e in regimes.items():
        cells = [label] + [f"{e['moca'][k]['score']:.3f}" for k in steps]
        cells.append("/".join(e["moca"][k]["chosen"] for k in steps))
        cells.append(f"{e['moca'][last]['seconds']:.1f}")
        candidates = e["moca"][last]["candidates"]
        cells += [f"{candidates[n]['test_score']:.3f}" if n in candidates else "–" for n in CANDIDATES]
        for p in peers:
            cells.append(f"{e['peers'][p]['score']:.3f}")
            if p != "mpc":
                cells.append(f"{e['peers'][p]['tuning_seconds']:.1f}")
        best = max(peers, key=lambda p: e["peers"][p]["score"])
        cells.append(f"{best} {e['peers'][best]['score']:.3f}")
        rows.append(cells)
    groups = (("mean, generalisation", [k for k in regimes if k in GENERALISATION_GRID]),
              ("mean, T1-T3", [k for k in regimes if k in TASKS]))
    for group, labels in groups:
        if not labels:
            continue
        mean = lambda f: float(np.mean([f(regimes[k]) for k in labels]))  # noqa: E731
        cells = [f"**{group}**"] + [f"**{mean(lambda e, k=k: e['moca'][k]['score']):.4f}**" for k in steps] + ["", ""]
        cells += [f"{mean(lambda e, n=n: e['moca'][last]['candidates'][n]['test_score']):.4f}"
                  if all(n in regimes[k]["moca"][last]["candidates"] for k in labels) else "" for n in CANDIDATES]
        for p in peers:
            cells.append(f"{mean(lambda e, p=p: e['peers'][p]['score']):.4f}")
            if p != "mpc":
                cells.append("")
        best = max(peers, key=lambda p: mean(lambda e, p=p: e["peers"][p]["score"]))
        cells.append(f"{best} {mean(lambda e: e['peers'][best]['score']):.4f}")
        rows.append(cells)
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=non_negative_int, nargs="+", default=[0, 1, 3])
    parser.add_argument("--scenarios", type=positive_int, default=20, help="test scenarios per regime (seeds 1000..)")
    parser.add_argument("--validation", type=positive_int, default=16,
                        help="validation scenarios that choose (seeds 900..)")
    parser.add_argument("--peers", type=one_of(("threshold", "mpc", *MPC_TUNED)), nargs="+",
                        default=["threshold", "mpc", *MPC_TUNED])
    parser.add_argument("--stocks", type=float, nargs="+", default=[100.0, 400.0, 800.0, 1200.0])
    parser.add_argument("--train", type=positive_int, default=4,
                        help="training-stream scenarios for an MPC's safety stock")
    parser.add_argument("--only", nargs="*", default=None, help="regime labels to run (default: all)")
    parser.add_argument("--resume", action="store_true", help="keep the regimes already in --out")
    parser.add_argument("--out", type=output_file, default=str(HERE / "generalisation.json"))
    parser.add_argument("--quick", action="store_true", help="one regime, 2 scenarios, steps 0 1, threshold + mpc")
    parser.add_argument("--table", action="store_true", help="only print (and write) the table of --out")
    args = parser.parse_args()
    if args.table:
        if not Path(args.out).is_file():
            parser.error(f"argument --out: {args.out!r}: no such file (--table reads it)")
        text = table(json.loads(Path(args.out).read_text()))
        write_atomic(Path(args.out).with_suffix(".md"), text + "\n")
        print(text)
        return
    torch.set_num_threads(1)
    if args.quick:
        args.steps, args.scenarios, args.validation, args.peers = [0, 1], 2, 4, ["threshold", "mpc"]
        args.only = args.only or ["tax 900"]
    params = Params()
    regimes = {label: grid_regime(fields, params) for label, fields in GENERALISATION_GRID.items()}
    regimes.update({name: TASKS[name] for name in ("T1", "T2", "T3")})
    if args.only:
        unknown = [k for k in args.only if k not in regimes]
        if unknown:
            parser.error(f"--only: unknown regimes {unknown} (known: {list(regimes)})")
        regimes = {k: v for k, v in regimes.items() if k in args.only}
    out_path = Path(args.out)
    result: dict[str, Any] = {"command": " ".join(["benchmarks/bench_generalisation.py", *sys.argv[1:]]),
                              "steps": args.steps, "peers": args.peers, "test_seeds": [1000, 999 + args.scenarios],
                              "validation_seeds": [900, 899 + args.validation], "support_seeds": [800, 807],
                              "stocks": args.stocks, "train_scenarios": args.train, "regimes": {}}
    if args.resume and out_path.exists():
        previous = json.loads(out_path.read_text())
        result["regimes"] = previous.get("regimes", {})
    started = time.perf_counter()
    map_started = time.perf_counter()
    threshold_map, fit = load_map()
    result["map"] = {"seconds_to_load": time.perf_counter() - map_started, "fit_seconds": fit.get("seconds"),
                     "fit_command": fit.get("command"), "regimes": int(threshold_map.regimes.shape[0])}
    module = checkpoint.load_policy("default")[0]
    cache = OracleCache(params)
    for label, regime in regimes.items():
        if label in result["regimes"]:
            log(f"{label}: kept from {out_path}")
            continue
        log(f"{label} ...")
        began = time.perf_counter()
        tests = cache.scenarios(range(1000, 1000 + args.scenarios), regime)
        oracle = cache.costs(tests)
        entry = {"regime": regime.model_dump(), "moca": moca_entry(module, threshold_map, regime, args.steps,
                                                                   args.validation, tests, oracle),
                 "peers": peer_entries(label, regime, args.peers, args.stocks, args.train, tests, oracle, params)}
        entry["seconds"] = time.perf_counter() - began
        result["regimes"][label] = entry
        result.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                       "load_average": os.getloadavg(), "wall_seconds": time.perf_counter() - started})
        write_atomic(out_path, json.dumps(result, indent=1))
    text = table(result)
    write_atomic(out_path.with_suffix(".md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
