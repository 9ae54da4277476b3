"""Does the regime drive the policy? moca's routing and sourcing beside the oracle's and the
re-tuned threshold rule's, each rule swept over its range (issue 10, part 2).

    .venv/bin/python benchmarks/bench_regime_response.py [--quick] [--scenarios 8] [--adapt-steps 3]
        [--threshold-budget 400] [--map benchmarks/regime_map.json] [--out benchmarks/regime_response.json]
    .venv/bin/python benchmarks/bench_regime_response.py --world CLSC-2 [--quick] [--scenarios 8]
        [--adapt-steps 3] [--threshold-budget 150] [--out benchmarks/regime_response2.json]

Writes the JSON (per rule and value: disassembled / refurbished / disposed cores per year,
recycled share, virgin ordered, score, for oracle, moca zero-shot, moca after
``--adapt-steps`` steps if > 0, with ``--map`` the mapped threshold rule alone and with its
base picked on support scenarios, the threshold rule), a PNG plot beside it (same name,
``.png``) and a markdown table of the carbon-tax sweep (``.md``).

On CLSC-2 (``--world CLSC-2``: every regime with W = 52) the policies are the oracle's
plan, moca (the shipped ``default-clsc2`` meta-init, read when the script runs,
zero-shot, and with ``--adapt-steps`` also adapted to each value as ``moca adapt --model
CLSC-2`` deploys it: the best-validated weights over 0..k steps) and the CLSC-2 threshold
rule re-tuned per value (:func:`moca.baselines.threshold2.tune_threshold2`); the market
purchases are measured too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _args import check_policy_checkpoint, existing_file, non_negative_int, output_file, positive_int
from moca.experiment import machine
from moca.files import write_atomic
from moca.report import markdown_table
from moca.response import (QUICK_SWEEPS, SWEEPS, direction_agreement, learned_policy, learned_policy2, plot_response,
                           response_world, run_response, threshold2_factory, threshold_factory)

#: CLSC-2's defaults: the threshold rule re-tuned with the budget `moca run --model CLSC-2`
#: gives it per regime (150 candidates on 4 training scenarios), as each candidate is a
#: projected 52-period rollout.
HERE = Path(__file__).resolve().parent

DEFAULTS_2 = {"scenarios": 8, "threshold_budget": 150, "threshold_train_seeds": 4}


def table(result: dict, rule: str) -> str:
    points = result["rules"][rule]
    names = [k for k in points[0] if k not in ("value", "regime")]
    market = "market_bought" in points[0]["oracle"]  # CLSC-2
    what = "disassembled / recycled share / virgin t" + (" / market t" if market else "")
    headers = [rule, *[f"{n}: {what}" for n in names]]
    rows = []
    for p in points:
        cells = [f"{p['value']:g}"]
        for n in names:
            m = p[n]
            cells.append(f"{m['disassembled']:,.0f} / {m['recycled_share']:.2f} / {m['virgin_ordered'] / 1000:,.0f}"
                         + (f" / {m['market_bought'] / 1000:,.1f}" if market else "")
                         + (f" ({m['score']:.3f})" if n != "oracle" else ""))
        rows.append(cells)
    return markdown_table(headers, rows)


def agreement_table(result: dict) -> str:
    """Per rule and policy: mean absolute gap to the oracle's cores disassembled per year,
    and the sweep's steps on which the policy moves the same way as the oracle."""
    names = list(result["agreement"])
    rows = []
    for rule in result["rules"]:
        cells = [rule]
        for n in names:
            a = result["agreement"][n][rule]
            cells.append(f"{a['mean_abs_gap']:,.0f} ({a['agree']}/{a['steps']})")
        rows.append(cells)
    return markdown_table(["rule swept", *[f"{n}: gap (same-way steps)" for n in names]], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=("CLSC-1", "CLSC-2"), default="CLSC-1", help="the world (CLSC-1)")
    parser.add_argument("--quick", action="store_true", help="carbon tax only, 3 values, 2 scenarios")
    parser.add_argument("--scenarios", type=positive_int, default=None,
                        help="test scenarios per point (seeds 1000+; 8)")
    parser.add_argument("--adapt-steps", type=non_negative_int, default=0,
                        help="also moca adapted this many steps per regime")
    parser.add_argument("--threshold-budget", type=positive_int, default=None,
                        help="candidate rules per threshold tuning (400, CLSC-2: 150 on 4 training scenarios)")
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--map", type=existing_file, default=None,
                        help="also the mapped threshold rule of this map file "
                             "(benchmarks/bench_regime_map.py): moca's proposed base, zero-shot")
    parser.add_argument("--out", type=output_file, default=None,
                        help="JSON path (benchmarks/regime_response.json; CLSC-2: regime_response2.json)")
    args = parser.parse_args()
    check_policy_checkpoint(parser, "--checkpoint", args.checkpoint, args.world)
    torch.set_num_threads(1)
    if args.world == "CLSC-2":
        if args.map:
            parser.error("--map is CLSC-1's (omit it with --world CLSC-2)")
        return main2(args)
    args.out = args.out or str(HERE / "regime_response.json")
    args.threshold_budget = 400 if args.threshold_budget is None else args.threshold_budget
    scenarios = args.scenarios or (2 if args.quick else 8)
    policies = {"moca": learned_policy(args.checkpoint)}
    if args.adapt_steps:
        policies[f"moca ({args.adapt_steps} steps)"] = learned_policy(args.checkpoint, args.adapt_steps)
    if args.map:
        from moca.regime_map import MappedThresholdPolicy, ThresholdMap

        threshold_map = ThresholdMap.from_dict(json.loads(Path(args.map).read_text())["map"])
        def selected(regime):
            from moca.meta import SUPPORT_SEEDS
            from moca.regime_map import select_thresholds
            from moca.scenario import draw_scenarios

            chosen, _ = select_thresholds(threshold_map, regime, draw_scenarios(SUPPORT_SEEDS[:8], regime))
            rule = MappedThresholdPolicy(threshold_map)
            rule.pinned = [(regime.as_row(), chosen)]
            return rule

        policies["mapped rule"] = lambda regime: MappedThresholdPolicy(threshold_map)
        policies["mapped rule + selection"] = selected
    policies["threshold"] = threshold_factory(budget=args.threshold_budget)
    started = time.perf_counter()
    result = run_response(policies, QUICK_SWEEPS if args.quick else SWEEPS, scenarios=scenarios,
                          progress=lambda s: print(f"sweep: {s}", file=sys.stderr, flush=True))
    result["agreement"] = {name: direction_agreement(result, name) for name in policies}
    result.update({"command": " ".join(["benchmarks/bench_regime_response.py", *sys.argv[1:]]),
                   "checkpoint": args.checkpoint, "threshold_budget": args.threshold_budget,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                   "wall_seconds": time.perf_counter() - started})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=1))
    plot_response(result, str(out.with_suffix(".png")))
    text = "\n\n".join(table(result, rule) for rule in result["rules"])
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


def main2(args: argparse.Namespace) -> None:
    """The CLSC-2 sweep: oracle, moca (shipped default-clsc2, zero-shot and adapted), threshold rule re-tuned."""
    out = Path(args.out or HERE / "regime_response2.json")
    scenarios = args.scenarios or (2 if args.quick else DEFAULTS_2["scenarios"])
    budget = args.threshold_budget or (24 if args.quick else DEFAULTS_2["threshold_budget"])
    train_seeds = 2 if args.quick else DEFAULTS_2["threshold_train_seeds"]
    from moca.meta2 import load_policy2

    _, meta = load_policy2(args.checkpoint)
    policies = {"moca": learned_policy2(args.checkpoint)}
    if args.adapt_steps:
        policies[f"moca ({args.adapt_steps} steps)"] = learned_policy2(args.checkpoint, args.adapt_steps)
    policies["threshold"] = threshold2_factory(budget=budget, train_seeds=train_seeds)
    started = time.perf_counter()
    result = run_response(policies, QUICK_SWEEPS if args.quick else SWEEPS, scenarios=scenarios,
                          world=response_world("CLSC-2"),
                          progress=lambda s: print(f"sweep: {s}", file=sys.stderr, flush=True))
    result["agreement"] = {name: direction_agreement(result, name) for name in policies}
    result.update({"command": " ".join(["benchmarks/bench_regime_response.py", *sys.argv[1:]]),
                   "checkpoint": args.checkpoint, "adapt_steps": args.adapt_steps,
                   "checkpoint_meta": {k: meta.get(k) for k in ("created", "weights_sha256", "command")},
                   "threshold_budget": budget, "threshold_train_seeds": train_seeds, "quick": args.quick,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                   "wall_seconds": time.perf_counter() - started})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=1))
    plot_response(result, str(out.with_suffix(".png")))
    text = "\n\n".join([*(table(result, rule) for rule in result["rules"]), agreement_table(result)])
    out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
