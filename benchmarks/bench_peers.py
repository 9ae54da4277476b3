"""Score every peer on each world: the seed tasks T1-T3 and regimes outside them.

    .venv/bin/python benchmarks/bench_peers.py [--world CLSC-1] [--peers a,b] [--scenarios 10]
        [--ppo DIR] [--out benchmarks/peers.json] [--quick]

Each peer is told only what a planner knows (see ``moca.baselines.peers``). Tuning uses
training-stream scenarios only, never test seeds; test scenarios are seeds 1000.. (the
same for every peer). Per peer the JSON records what it was told, how it was tuned or
trained and in how many seconds, and per regime the mean score (oracle cost / policy
cost), the mean cost and the violations. Results of peers run earlier into the same
``--out`` file are kept (so peers can be run one at a time); each entry says when it ran.
Prints the collected JSON on stdout (for ``run_all.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from _args import existing_dir_path, existing_file_path, one_of, output_file_path, positive_int  # noqa: E402
from moca.evaluation import evaluate_policy  # noqa: E402
from moca.experiment import GENERALISATION_GRID, grid_regime, machine  # noqa: E402
from moca.files import write_atomic  # noqa: E402
from moca.oracle import oracle_costs  # noqa: E402
from moca.regime import RegimeSchedule, load_schedule  # noqa: E402
from moca.scenario import Params, draw_scenarios, draw_training_scenarios  # noqa: E402

SEED_TASKS = ("T1", "T2", "T3")
OUTSIDE = ("mandate 0.45 + tax 150", "tax 900", "cap 0.7x + landfill 60")
TOLD = {
    "threshold": "state, regime, the public seasonal mean forecast; 6 thresholds tuned per regime by simulation",
    "mpc": "state, regime, the demand model (seasonal mean) and return mean; safety stock 100 (the calibrated MPC)",
    "mpc-informed": "as mpc (told the demand model: a reference), safety stock tuned on training scenarios",
    "mpc-forecast": "state, regime, the L_r pre-horizon sales and the demand and return fractions observed so far "
                    "(ETS refitted every 4 periods); safety stock tuned on training scenarios",
    "mpc-sampled": "as mpc-forecast; 8 ETS sample paths, first action shared (two-stage SAA); safety stock tuned",
    "ppo": "the Gymnasium observation; trained by SB3 PPO over the regime distribution for a wall-clock budget",
}


def clsc1_regimes(params: Params) -> dict[str, RegimeSchedule]:
    out = {name: load_schedule(name) for name in SEED_TASKS}
    for label in OUTSIDE:
        out[label] = RegimeSchedule.constant(grid_regime(GENERALISATION_GRID[label], params))
    return out


def score_regimes(entry: dict, regimes: dict, evaluate_one: Callable[[str], Any]) -> dict:
    """Fill ``entry`` with each regime's mean score, violations, mean cost and seconds
    (``evaluate_one(label)`` returns a :class:`moca.evaluation.Evaluation`) and the means
    over the seed tasks and over the regimes outside them."""
    scores = {}
    for label in regimes:
        started = time.perf_counter()
        result = evaluate_one(label)
        scores[label] = {"score": float(result.scores.mean()), "violations": int(result.violations),
                         "mean_cost": float(result.costs.mean()), "seconds": time.perf_counter() - started}
        print(f"  {label}: {scores[label]['score']:.4f}", file=sys.stderr, flush=True)
    entry["scores"] = scores
    entry["mean_seed_tasks"] = float(np.mean([scores[t]["score"] for t in SEED_TASKS]))
    entry["mean_outside"] = float(np.mean([scores[t]["score"] for t in OUTSIDE]))
    return entry


def tune_stock(make: Callable[[float], Any], train: list, oracle: np.ndarray, candidates: list[float]) -> dict:
    """The safety stock with the best mean training score (training scenarios of T1-T3 pooled:
    the stock hedges demand, which no regime changes)."""
    started = time.perf_counter()
    scores = {}
    for value in candidates:
        scores[str(value)] = float(evaluate_policy("tune", make(value), train, oracle).scores.mean())
        print(f"  safety stock {value}: training score {scores[str(value)]:.4f}", file=sys.stderr, flush=True)
    best = float(max(scores, key=scores.get))
    return {"tuned": {"safety_stock": best}, "training_scores": scores, "tuning_seconds": time.perf_counter() - started}


def run_clsc1(peers: list[str], n_test: int, n_train: int, ppo_dir: Path | None, quick: bool) -> dict[str, dict]:
    from moca.baselines.forecast_mpc import ForecastMPCPolicy, SampledMPCPolicy
    from moca.baselines.mpc import MPCPolicy
    from moca.baselines.peers import SAMPLES
    from moca.baselines.threshold import tune_threshold

    params = Params()
    regimes = clsc1_regimes(params)
    tests = {label: draw_scenarios(n_test, plan, params, first_seed=1000) for label, plan in regimes.items()}
    print("oracle on the test scenarios ...", file=sys.stderr, flush=True)
    oracle = {label: oracle_costs(s) for label, s in tests.items()}
    train = [s for name in SEED_TASKS for s in draw_training_scenarios(n_train, load_schedule(name), params)]
    train_oracle = oracle_costs(train) if any(p.startswith("mpc-") for p in peers) else None
    stocks = [100.0, 400.0] if quick else [100.0, 200.0, 400.0, 600.0, 800.0, 1200.0, 1600.0]
    results: dict[str, dict] = {}
    for name in peers:
        print(f"{name} ...", file=sys.stderr, flush=True)
        entry: dict[str, Any] = {"told": TOLD[name], "ran": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        per_regime: Callable[[str], Any]
        if name == "threshold":
            seconds = {}

            def per_regime(label, seconds=seconds):
                policy = tune_threshold(regimes[label], params, budget=300 if quick else 1200)
                seconds[label] = policy.tuning.seconds
                return policy
            entry["tuning_seconds_per_regime"] = seconds
        elif name == "mpc":
            entry["tuning_seconds"] = 0.0
            per_regime = lambda label: MPCPolicy()  # noqa: E731
        elif name == "ppo":
            from moca.baselines.ppo import load_ppo, shipped_path

            where = ppo_dir or shipped_path("CLSC-1")
            policy = load_ppo(where)
            entry.update({"checkpoint": str(where), "training_seconds": policy.meta.get("wall_seconds"),
                          "env_steps": policy.meta.get("env_steps"), "command": policy.meta.get("command")})
            per_regime = lambda label: policy  # noqa: E731
        else:
            make = {"mpc-informed": lambda v: MPCPolicy(safety_stock=v),
                    "mpc-forecast": lambda v: ForecastMPCPolicy(safety_stock=v),
                    "mpc-sampled": lambda v: SampledMPCPolicy(samples=SAMPLES, safety_stock=v)}[name]
            entry.update(tune_stock(make, train, train_oracle, stocks))
            best = entry["tuned"]["safety_stock"]
            per_regime = lambda label: make(best)  # noqa: E731
        results[name] = score_regimes(entry, regimes, lambda label: evaluate_policy(
            name, per_regime(label), tests[label], oracle[label]))
    return results


TOLD_2 = {
    "threshold": "state, window counters, supplier and market status, regime, demand seen (seasonal level "
                 "forecast fitted to it); 7 thresholds tuned per regime by simulation",
    "mpc-informed": "state, announced schedule, the scenario's noise-free demand curve (level path, drift, jumps, "
                    "season: all but the period noise); observed means of returns, grades, market, supplier; "
                    "safety stock tuned on training scenarios",
    "mpc-forecast": "state, announced schedule, the 52-period demand history and the demand observed since "
                    "(local level + one-harmonic yearly season on log demand, refitted every 13 periods); observed "
                    "means of returns, grades, market, supplier; safety stock tuned on training scenarios",
    "mpc-sampled": "as mpc-forecast; 4 sample paths of the fitted model, first action shared (two-stage SAA); "
                   "safety stock tuned on training scenarios",
    "ppo": "the CLSC-2 Gymnasium observation; trained by SB3 PPO over the regime distribution (accounting "
           "windows sampled) for a wall-clock budget",
}


def clsc2_regimes(params: Params) -> dict[str, RegimeSchedule]:
    from moca.regime import Regime

    out = {name: load_schedule(name, model="CLSC-2") for name in SEED_TASKS}
    for label in OUTSIDE:
        regime = grid_regime(GENERALISATION_GRID[label], params)
        out[label] = RegimeSchedule.constant(Regime(**{**regime.model_dump(), "recycled_content_window": 52}))
    return out


def run_clsc2(peers: list[str], n_test: int, n_train: int, ppo_dir: Path | None, quick: bool,
              retune: bool = False) -> dict[str, dict]:
    from moca.baselines.mpc2 import PLANNER_SAMPLES, SAFETY_STOCKS_2, InformedMPC2, MPC2Policy, demand_curve2
    from moca.baselines.peers import evaluate2
    from moca.baselines.threshold2 import tune_threshold2
    from moca.oracle2 import solve_oracle2
    from moca.scenario import DEFAULT_PARAMS_2, TRAINING_STREAM, draw_scenario2

    params2 = DEFAULT_PARAMS_2
    regimes = clsc2_regimes(Params())
    test_seeds = list(range(1000, 1000 + n_test))
    tests = {label: [draw_scenario2(s, plan, params2) for s in test_seeds] for label, plan in regimes.items()}
    print("CLSC-2 oracle on the test scenarios ...", file=sys.stderr, flush=True)
    oracle = {label: np.array([solve_oracle2(s).oracle_cost for s in sc]) for label, sc in tests.items()}
    # Training scenarios: the training stream (offset 0 ..), disjoint from integer test seeds.
    train_seeds = [(TRAINING_STREAM, i) for i in range(n_train)]
    train = [draw_scenario2(seed, load_schedule(name, model="CLSC-2"), params2) for name in SEED_TASKS
             for seed in train_seeds]
    train_curves = np.stack([demand_curve2(seed, params2) for _ in SEED_TASKS for seed in train_seeds])
    train_oracle = np.array([solve_oracle2(s).oracle_cost for s in train]) if any(
        p.startswith("mpc-") for p in peers) else None
    test_curves = np.stack([demand_curve2(s, params2) for s in test_seeds])
    # The grid moca's own re-tuning of the sampled MPC uses (0 included: under a high carbon
    # tax the peers pick no stock where they may, and a grid from 300 stopped them short).
    stocks = [100.0, 400.0] if quick else list(SAFETY_STOCKS_2)
    samples = PLANNER_SAMPLES

    results: dict[str, dict] = {}
    for name in peers:
        print(f"CLSC-2 {name} ...", file=sys.stderr, flush=True)
        entry: dict[str, Any] = {"told": TOLD_2[name], "ran": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if name == "threshold":
            seconds = {}

            def per_regime(label, seconds=seconds):
                policy = tune_threshold2(regimes[label], params2, train_seeds=32 if not quick else 1,
                                         budget=1500 if not quick else 60)
                seconds[label] = policy.tuning.seconds
                return policy
            entry["tuning_seconds_per_regime"] = seconds
            entry["tuning"] = "budget 1500 candidates, 32 training scenarios per regime"
        elif name == "ppo":
            from moca.baselines.ppo import load_ppo, shipped_path

            where = ppo_dir or shipped_path("CLSC-2")
            loaded = load_ppo(where)
            entry.update({"checkpoint": str(where), "training_seconds": loaded.meta.get("wall_seconds"),
                          "env_steps": loaded.meta.get("env_steps"), "command": loaded.meta.get("command")})
            per_regime = None
        elif name in ("mpc-informed", "mpc-forecast", "mpc-sampled"):
            make = {"mpc-informed": lambda v, curves: InformedMPC2(curves, v),
                    "mpc-forecast": lambda v, curves: MPC2Policy(safety_stock=v),
                    "mpc-sampled": lambda v, curves: MPC2Policy(safety_stock=v, samples=samples)}[name]
            if retune:
                # Re-tuned for each regime: the safety stock chosen on that regime's own training
                # scenarios (the "best peer re-tuned for that regime").
                chosen, seconds = {}, {}
                curves_one = np.stack([demand_curve2(seed, params2) for seed in train_seeds])

                def per_regime(label, make=make, chosen=chosen, seconds=seconds):
                    began = time.perf_counter()
                    own = [draw_scenario2(seed, regimes[label], params2) for seed in train_seeds]
                    own_oracle = np.array([solve_oracle2(x).oracle_cost for x in own])
                    scores = {v: float(evaluate2("tune", make(v, curves_one), own, own_oracle).scores.mean())
                              for v in stocks}
                    chosen[label] = max(scores, key=scores.get)
                    seconds[label] = time.perf_counter() - began
                    print(f"  {label}: safety stock {chosen[label]}", file=sys.stderr, flush=True)
                    return make(chosen[label], test_curves)
                entry.update({"tuned_per_regime": chosen, "tuning_seconds_per_regime": seconds})
            else:
                started = time.perf_counter()
                scores = {}
                for value in stocks:
                    scores[str(value)] = float(evaluate2("tune", make(value, train_curves), train,
                                                         train_oracle).scores.mean())
                    print(f"  safety stock {value}: training score {scores[str(value)]:.4f}", file=sys.stderr,
                          flush=True)
                best = float(max(scores, key=scores.get))
                entry.update({"tuned": {"safety_stock": best}, "training_scores": scores,
                              "tuning_seconds": time.perf_counter() - started})
                per_regime = lambda label, best=best, make=make: make(best, test_curves)  # noqa: E731
        else:
            raise SystemExit(f"bench_peers: peer {name!r} has no CLSC-2 form")
        if name == "ppo":
            from moca.baselines.ppo import env_evaluation

            evaluate_one = lambda label: env_evaluation(  # noqa: E731
                name, loaded.policy, tests[label], oracle[label], "CLSC-2")
        else:
            evaluate_one = lambda label: evaluate2(name, per_regime(label), tests[label], oracle[label])  # noqa: E731
        results[name] = score_regimes(entry, regimes, evaluate_one)
    return results


WORLDS = {"CLSC-1": run_clsc1, "CLSC-2": run_clsc2}


def markdown(data: dict) -> str:
    """One table per world: each peer's score per regime, the two means, violations and
    its tuning or training seconds."""
    lines = []
    for world, block in data.get("worlds", {}).items():
        labels = [*block["seed_tasks"], *block["outside"]]
        lines.append(f"**{world}** (test seeds {block.get('test_seeds', '?')}):\n")
        lines.append("| peer | " + " | ".join(labels) + " | mean T1-T3 | mean outside | violations | "
                     "tuning / training s |")
        lines.append("|---|" + "---:|" * (len(labels) + 4))
        for name in ALL_PEERS:
            entry = block["peers"].get(name)
            if entry is None:
                continue
            if "tuning_seconds_per_regime" in entry:
                per = entry["tuning_seconds_per_regime"]
                seconds = f"{np.mean(list(per.values())):.0f} per regime"
            elif "training_seconds" in entry:
                seconds = f"{entry['training_seconds']:.0f} ({entry.get('env_steps', 0):,} steps)"
            else:
                seconds = f"{entry.get('tuning_seconds', 0.0):.0f}"
            violations = sum(v["violations"] for v in entry["scores"].values())
            lines.append(f"| {name} | " + " | ".join(f"{entry['scores'][x]['score']:.3f}" for x in labels)
                         + f" | {entry['mean_seed_tasks']:.3f} | {entry['mean_outside']:.3f} | {violations} | "
                         + f"{seconds} |")
        lines.append("")
    return "\n".join(lines)
ALL_PEERS = ("threshold", "mpc", "mpc-informed", "mpc-forecast", "mpc-sampled", "ppo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=one_of((*WORLDS, "all")), default="all", help="CLSC-1 | CLSC-2 | all")
    parser.add_argument("--peers", default=",".join(ALL_PEERS))
    parser.add_argument("--scenarios", type=positive_int, default=10, help="test scenarios per regime (seeds 1000..)")
    parser.add_argument("--train", type=positive_int, default=4,
                        help="training scenarios per seed task for the MPC tuning")
    parser.add_argument("--ppo", type=existing_dir_path, default=None, help="PPO checkpoint (default: the shipped one)")
    parser.add_argument("--out", type=output_file_path, default=HERE / "peers.json")
    parser.add_argument("--quick", action="store_true", help="2 scenarios, 1 training scenario, fewer candidates")
    parser.add_argument("--retune-per-regime", action="store_true",
                        help="CLSC-2 MPCs: choose the safety stock on each regime's own training scenarios")
    parser.add_argument("--table", action="store_true", help="only print --out as markdown tables (the README's)")
    parser.add_argument("--merge", type=existing_file_path, nargs="*", default=None,
                        help="only merge these result files (runs of single peers side by side) into --out")
    args = parser.parse_args()
    if args.table and not args.out.is_file():
        parser.error(f"argument --out: {str(args.out)!r}: no such file (--table reads it)")
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return
    if args.merge is not None:
        out = json.loads(args.out.read_text()) if args.out.exists() else {}
        for part in args.merge:
            data = json.loads(part.read_text())
            for key in ("machine", "updated", "test_seeds", "quick"):
                out[key] = data.get(key, out.get(key))
            for world, block in data.get("worlds", {}).items():
                mine = out.setdefault("worlds", {}).setdefault(world, {})
                mine.update({k: v for k, v in block.items() if k not in ("peers", "last_run_seconds")})
                mine.setdefault("peers", {}).update(block.get("peers", {}))
        args.out.write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
        return
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in ALL_PEERS]
    worlds = list(WORLDS) if args.world == "all" else [args.world]
    if unknown:  # (a wrong --world was named "unknown peers [] or world ...")
        parser.error(f"argument --peers: unknown {', '.join(map(repr, unknown))} (peers: {', '.join(ALL_PEERS)})")
    n_test, n_train = (2, 1) if args.quick else (args.scenarios, args.train)
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out.update({"machine": machine(), "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "test_seeds": f"1000..{999 + n_test} per regime", "quick": args.quick})
    out.setdefault("worlds", {})
    for world in worlds:
        started = time.perf_counter()
        # CLSC-2 has no public demand model, so no calibrated `mpc` (its `mpc` is `mpc-forecast`).
        chosen = [p for p in peers if not (world == "CLSC-2" and p == "mpc")]
        extra = {"retune": True} if args.retune_per_regime and world == "CLSC-2" else {}
        if args.retune_per_regime and world != "CLSC-2":
            parser.error("--retune-per-regime: CLSC-2 only (CLSC-1's re-tuned peers: benchmarks/bench_generalisation.py)")
        results = WORLDS[world](chosen, n_test, n_train, args.ppo, args.quick, **extra)
        for entry in results.values():  # peers kept from earlier runs may come from another machine
            entry["machine"] = machine()
        out["worlds"].setdefault(world, {"seed_tasks": list(SEED_TASKS), "outside": list(OUTSIDE), "peers": {}})
        out["worlds"][world]["peers"].update(results)
        out["worlds"][world]["last_run_seconds"] = time.perf_counter() - started
        out["worlds"][world]["test_seeds"] = f"1000..{999 + n_test} per regime"
        out["worlds"][world]["training_scenarios_per_seed_task"] = n_train
        write_atomic(args.out, json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
