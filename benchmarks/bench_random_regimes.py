"""moca against the peers re-tuned per regime on random regimes no issue, task or preset names.

    python benchmarks/bench_random_regimes.py [--world CLSC-1|CLSC-2|both] [--regimes 6] [--seed 2026]
                                              [--scenarios 20] [--with-cap] [--high-tax] [--high-mandate]
                                              [--returns-liability] [--schedules] [--tax-rise] [--portfolio]
                                              [--retune [--retune-budget 1500]] [--out FILE] [--quick]

The regimes are drawn from the whole regime space by ``moca.meta.sample_task`` (CLSC-2:
``sample_task2``, accounting windows included) with ``named_share=0`` — every rule drawn
over its spec range, present or absent — from a seed meta-training never used, so none is a
task, a preset or a neighbourhood of one. On each, scored on test seeds 1000+ (oracle cost /
policy cost, every action through the exact projection), with the seconds each took:

* CLSC-1: ``moca adapt`` (the portfolio, 3 steps, support seeds 800-807, chosen on
  validation seeds 900-907); the threshold rule re-tuned for the regime
  (``tune_threshold``); the MPC with its safety stock re-picked on the regime's support
  scenarios (``select_safety_stock``).
* CLSC-2: ``moca adapt --model CLSC-2`` (the shipped meta-init, 3 steps, the same seeds);
  the threshold rule re-tuned for the regime as the peers benchmark re-tunes it (1,500
  candidates on 32 training scenarios); the two-stage sampled MPC with its safety stock
  re-picked on 2 training scenarios of the regime, as ``bench_peers.py --retune-per-regime``.

``--with-cap`` keeps only the draws that have an emission cap (drawn log-uniform over 0.4-2x
the emissions of an average virgin-only period), to look at that rule alone; ``--high-tax``
keeps only the draws whose carbon tax is above 1,000 EUR/t, where a unit made from virgin
bought at that tax costs more than the sale it saves (``order_virgin`` of
``moca.policy2.routing_economics``; 30% of taxed draws are U(300, 2000)); ``--high-mandate``
the draws whose recycled-content mandate is 0.5 or more (15% of mandates are U(0.35, 0.95));
``--returns-liability`` the draws whose carbon tax is at most 1,000 EUR/t, but where a unit
made from virgin bought now, with the landfill charge of the scrap its sale brings back
(return_mean x the scrap share x (c_w + landfill tax), on the default chain), costs more than
the lost sale (rule (i), ``return_liability`` of ``routing_economics``; about one draw in a
hundred, so ``--seed`` is the only thing to vary). ``--schedules`` (CLSC-2) scores regime
plans instead of single regimes: each starts with a draw and changes to one to three more at
random periods, announced as the spec announces them; every policy, moca's adaptation and
the peers' re-tuning included, is given the whole plan (moca adapts once, over the plan), and
the meta-init without a step is scored beside the adapted LSTM; with ``--tax-rise`` only the
plans where a later rule's carbon tax is at least 50 EUR/t above an earlier one's (where
rule (k) may order ahead).
``--portfolio`` (CLSC-2) adds what ``moca adapt --model CLSC-2 --retune 0`` deploys (``--base auto``,
``moca.portfolio.adapt_portfolio2``): the adapted LSTM or the sampled MPC at a safety stock
picked on support seeds 800-801, whichever scores better on validation seeds 900-907; its
seconds are the whole choice's. Its ``moca`` column is then that run's LSTM candidate.
``--retune`` (CLSC-2) is ``moca adapt --model CLSC-2 --retune 1500``: before its steps, moca
re-tunes its base rule's seven thresholds for the plan exactly as the threshold peer is
re-tuned (``moca.meta2.adapt2``'s ``retune``), starts from the meta-init, from them, or from
the rule at them with the residual off (the peer itself), whichever scores highest on
validation seeds 900-907, and counts the tuning in its seconds; the
adaptation without it (``moca steps from the meta-init only``) is scored beside. ``moca adapt``
re-tunes first by default on a plan whose rules change, so with ``--schedules``, ``--portfolio
--retune`` is what it deploys as shipped; the flags stay explicit so that a committed run's
command reproduces it. Writes
benchmarks/random_regimes.json (``--out``) and prints a markdown table per world.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _args import non_negative_int, output_file_path, positive_int
from moca.experiment import machine
from moca.files import write_atomic
from moca.regime import Regime, RegimeSchedule

HERE = Path(__file__).parent
HIGH_TAX = 1000.0  # EUR/t CO2: above it virgin bought now costs more per unit than a lost sale
HIGH_MANDATE = 0.5  # recycled share of material input
TAX_RISE = 50.0  # EUR/t CO2: --tax-rise keeps plans with a later tax at least this far above an earlier one


def tax_rises(plan: RegimeSchedule) -> bool:
    """Whether a later rule of ``plan`` has a carbon tax at least TAX_RISE above an earlier one's."""
    taxes = [entry.carbon_tax for entry in plan.entries]
    return any(later >= earlier + TAX_RISE for i, earlier in enumerate(taxes) for later in taxes[i + 1:])


def returns_tip_the_sale(regime: Regime) -> bool:
    """Virgin bought now pays for the sale it saves (carbon tax below ~1,000 EUR/t) until, in some
    period, the end-of-life cost that sale brings back is added: rule (i) of
    ``moca.policy2.routing_economics`` on CLSC-2's default chain. Restated from the model's
    prices here, not imported, so that the same filter draws the same regimes when the script
    runs on a source from before the rule."""
    from moca.scenario import DEFAULT_PARAMS_2 as p

    price = p.cost_virgin + regime.carbon_tax * p.emis_virgin / 1000.0  # EUR/kg virgin
    unit = p.mass * price + p.cost_produce  # EUR a unit made from virgin bought now
    dispose = p.cost_dispose + regime.landfill_tax  # EUR/core
    share_a, share_b, share_scrap = p.grade_mean
    for t in range(p.horizon):
        back = t + p.lead_virgin + 1 + p.lag_return  # when the returns of that unit's sale arrive
        if back > p.horizon - 1:
            break
        graded = min(dispose, p.hold_core * (p.horizon - 1 - back))
        liability = max(0.0, p.return_mean * (share_scrap * dispose
                                              + share_a * min(graded, p.cost_disassemble - p.yield_disassembly_a * p.mass * price)
                                              + share_b * min(graded, p.cost_disassemble - p.yield_disassembly_b * p.mass * price)))
        if unit < p.lost_sale_cost <= unit + liability:
            return True
    return False


#: The options of :func:`draw_regimes` (the script's flags that choose which draws are kept).
DRAW_FILTERS = ("with_cap", "high_tax", "high_mandate", "returns_liability", "schedules", "tax_rise")


def draw_regimes(world: str, seed: int, n: int, with_cap: bool = False, high_tax: bool = False,
                 high_mandate: bool = False, returns_liability: bool = False, schedules: bool = False,
                 tax_rise: bool = False) -> list[Regime | RegimeSchedule]:
    """The ``n`` regimes (or, with ``schedules``, plans) this script scores for ``world`` and
    ``seed``, drawn as the module docstring says; other benchmarks import it to score the same
    draws."""
    from moca.meta import sample_task
    from moca.meta2 import sample_task2
    from moca.scenario import Params

    rng = np.random.default_rng([seed, 1 if world == "CLSC-1" else 2])
    draw = (lambda: sample_task(rng, Params(), named_share=0.0)) if world == "CLSC-1" else \
        (lambda: sample_task2(rng, named_share=0.0))
    regimes: list[Regime | RegimeSchedule] = []
    while schedules and len(regimes) < n:
        starts = sorted({0, *(int(s) for s in rng.integers(1, 51, size=rng.integers(1, 4)))})
        plan = RegimeSchedule.from_list([{"start": s, **draw().model_dump()} for s in starts])
        if not tax_rise or tax_rises(plan):
            regimes.append(plan)
    while len(regimes) < n:
        regime = draw()
        if (regime.emission_cap is not None or not with_cap) and \
                (regime.carbon_tax > HIGH_TAX or not high_tax) and \
                (regime.recycled_content_min >= HIGH_MANDATE or not high_mandate) and \
                (not returns_liability or returns_tip_the_sale(regime)):
            regimes.append(regime)
    return regimes


def clsc1(regimes: list[Regime], n_test: int, quick: bool) -> list[dict[str, Any]]:
    from moca.baselines import MPCPolicy, tune_threshold
    from moca.evaluation import evaluate_policy
    from moca.meta import SUPPORT_SEEDS, OracleCache
    from moca.mpc_base import select_safety_stock
    from moca.policy import DeployedPolicy
    from moca.portfolio import adapt_portfolio
    from moca.regime_map import load_learned_policy
    from moca.scenario import Params

    cache = OracleCache(Params())
    module, _ = load_learned_policy("default")  # adaptation leaves the module as it is
    rows = []
    for regime in regimes:
        tests = cache.scenarios(range(1000, 1000 + n_test), regime)
        oracle = cache.costs(tests)
        support = cache.scenarios(SUPPORT_SEEDS[:4 if quick else 8], regime)
        row: dict[str, Any] = {"regime": regime.model_dump(), "label": regime.describe()}
        began = time.perf_counter()
        result = adapt_portfolio(module, regime, 1 if quick else 3, support=support,
                                 validation_size=4 if quick else 8, cache=cache)
        seconds = time.perf_counter() - began
        chosen = result.chosen
        out = evaluate_policy("moca", DeployedPolicy(chosen.module, chosen.weights), tests, oracle)
        row["moca"] = {"score": float(out.scores.mean()), "violations": out.violations, "seconds": seconds,
                       "candidate": chosen.name}
        began = time.perf_counter()
        threshold = tune_threshold(RegimeSchedule.constant(regime), Params(), **({"budget": 60, "train_seeds": 2}
                                                                                if quick else {}))
        seconds = time.perf_counter() - began
        out = evaluate_policy("threshold", threshold, tests, oracle)
        row["threshold (re-tuned)"] = {"score": float(out.scores.mean()), "violations": out.violations,
                                       "seconds": seconds}
        began = time.perf_counter()
        stock, _ = select_safety_stock(support)
        seconds = time.perf_counter() - began
        out = evaluate_policy("mpc", MPCPolicy(safety_stock=stock), tests, oracle)
        row["mpc (safety stock re-picked)"] = {"score": float(out.scores.mean()), "violations": out.violations,
                                               "seconds": seconds, "safety_stock": stock}
        rows.append(row)
        print(f"CLSC-1 {row['label']}: " + ", ".join(f"{k} {v['score']:.4f}" for k, v in row.items()
                                                      if isinstance(v, dict) and "score" in v), flush=True)
    return rows


def plan_label(plan: RegimeSchedule) -> str:
    """``0: <regime> → 16: <regime>``: each entry's start period and its rules."""
    return " → ".join(f"{e.start}: {e.describe()}" for e in plan.entries)


def clsc2(regimes: list[Regime | RegimeSchedule], n_test: int, quick: bool, portfolio: bool = False,
          retune: bool = False, retune_budget: int | None = None) -> list[dict[str, Any]]:
    from moca.baselines.mpc2 import MPC2Policy, select_safety_stock2
    from moca.baselines.peers import evaluate2
    from moca.baselines.threshold2 import tune_threshold2
    from moca.meta2 import OracleCache2, adapt2, load_policy2
    from moca.oracle2 import solve_oracle2
    from moca.policy2 import evaluate_policy2
    from moca.portfolio import adapt_portfolio2
    from moca.scenario import DEFAULT_PARAMS_2, TRAINING_STREAM, draw_scenario2

    module, _ = load_policy2("default")
    cache = OracleCache2(module.params)
    stocks = (300.0, 1000.0) if quick else None  # None: the shipped grid, SAFETY_STOCKS_2
    steps, size = (1, 4) if quick else (3, 8)
    tuning = {"train_seeds": 1, "budget": 60} if quick else {"train_seeds": 32, "budget": 1500}  # the peer's
    # --retune: moca's adaptation first re-tunes its base rule's thresholds as the peer is re-tuned
    # (--retune-budget: fewer candidates for moca's re-tuning than the peer's, to see what a cheaper one keeps)
    retuning = {"retune": retune_budget or tuning["budget"], "retune_scenarios": tuning["train_seeds"]} if retune else {}
    rows = []
    for regime in regimes:
        plan = regime if isinstance(regime, RegimeSchedule) else RegimeSchedule.constant(regime)
        tests = cache.scenarios(range(1000, 1000 + n_test), plan)
        oracle = np.asarray(cache.costs(tests))
        row: dict[str, Any] = {"plan": plan.to_list_with_window(), "label": plan_label(plan)} \
            if isinstance(regime, RegimeSchedule) else {"regime": regime.model_dump(), "label": regime.describe()}
        if portfolio:  # moca adapt --model CLSC-2 (its --retune as given here); its LSTM candidate is --base default
            result = adapt_portfolio2(module, plan, steps, support_size=size, validation_size=size, cache=cache,
                                      stocks=stocks, **retuning)
            candidate = result.candidates["default"]
            weights, seconds, curve = candidate.weights, candidate.seconds, candidate.curve
        else:
            began = time.perf_counter()
            weights, curve = adapt2(module, None, plan, steps, support_size=size, validation_size=size, cache=cache,
                                    keep_best=True, **retuning)
            seconds = time.perf_counter() - began
        out = evaluate_policy2(module, weights, tests, oracle)
        row["moca"] = {"score": out["score"], "violations": out["violations"], "seconds": seconds}
        if retune:
            row["moca"]["start"] = curve[0]["start"]
            row["moca"]["start_scores"] = curve[0]["start_scores"]
        if isinstance(regime, RegimeSchedule):  # what the 3 steps add over the plan, on the test seeds
            out = evaluate_policy2(module, None, tests, oracle)
            row[ZERO_SHOT] = {"score": out["score"], "violations": out["violations"], "seconds": 0.0}
        if retune:  # the adaptation without the re-tuned start, as before --retune
            began = time.perf_counter()
            weights, _ = adapt2(module, None, plan, steps, support_size=size, validation_size=size, cache=cache,
                                keep_best=True)
            seconds = time.perf_counter() - began
            out = evaluate_policy2(module, weights, tests, oracle)
            row[STEPS_ONLY] = {"score": out["score"], "violations": out["violations"], "seconds": seconds}
        began = time.perf_counter()
        threshold = tune_threshold2(plan, DEFAULT_PARAMS_2, **tuning)
        seconds = time.perf_counter() - began
        out = evaluate2("threshold", threshold, tests, oracle)
        row["threshold (re-tuned)"] = {"score": float(out.scores.mean()), "violations": out.violations,
                                       "seconds": seconds}
        began = time.perf_counter()
        own = [draw_scenario2((TRAINING_STREAM, i), plan, DEFAULT_PARAMS_2) for i in range(1 if quick else 2)]
        stock, _ = select_safety_stock2(own, np.array([solve_oracle2(x).oracle_cost for x in own]),
                                        *([stocks] if stocks else []))
        seconds = time.perf_counter() - began
        out = evaluate2("mpc-sampled", MPC2Policy(safety_stock=stock, samples=4), tests, oracle)
        row[MPC] = {"score": float(out.scores.mean()), "violations": out.violations, "seconds": seconds,
                    "safety_stock": stock}
        if portfolio:
            row[PORTFOLIO] = deployed(result, row, tests, oracle)
        rows.append(row)
        print(f"CLSC-2 {row['label']}: " + ", ".join(f"{k} {v['score']:.4f}" for k, v in row.items()
                                                      if isinstance(v, dict) and "score" in v), flush=True)
    return rows


MPC = "mpc-sampled (safety stock re-picked)"
PORTFOLIO = "moca adapt (LSTM or sampled MPC)"
ZERO_SHOT = "moca zero-shot (meta-init, no step)"
STEPS_ONLY = "moca steps from the meta-init only"


def deployed(result, row: dict[str, Any], tests, oracle: np.ndarray) -> dict[str, Any]:
    """The test score of what ``moca adapt --model CLSC-2`` deployed (``result``): the LSTM
    candidate's is ``row["moca"]``'s (the same weights); the MPC's is the peer's when the
    safety stocks agree (the same deterministic policy: samples 4, seed 0), else scored here."""
    from moca.portfolio import evaluate_candidate2

    chosen = result.chosen
    entry = {"seconds": result.seconds, "chosen": "LSTM" if chosen.name == "default" else "sampled MPC",
             "validation_scores": {n: c.validation_score for n, c in result.candidates.items()},
             "safety_stock": result.candidates["mpc"].selection["safety_stock"]}
    if chosen.name == "default":
        return {**entry, "score": row["moca"]["score"], "violations": row["moca"]["violations"]}
    if chosen.module.safety_stock == row[MPC]["safety_stock"]:
        return {**entry, "score": row[MPC]["score"], "violations": row[MPC]["violations"]}
    out = evaluate_candidate2(chosen, tests, oracle)
    return {**entry, "score": out["score"], "violations": out["violations"]}


def table(rows: list[dict[str, Any]]) -> str:
    policies = [k for k, v in rows[0].items() if isinstance(v, dict) and "score" in v]
    peers = [p for p in policies if not p.startswith("moca")]
    ours = [p for p in policies if p.startswith("moca")]
    head = "| regime | " + " | ".join(policies) + " | " + " | ".join(f"{p} − best peer" for p in ours) + " |"
    lines = [head, "|:---|" + "---:|" * (len(policies) + len(ours))]
    for row in rows:
        best = max(row[p]["score"] for p in peers)
        cells = [f"{row[p]['score']:.4f} ({row[p]['seconds']:.1f} s)" for p in policies]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{row[p]['score'] - best:+.4f}" for p in ours) + " |")
    means = {p: float(np.mean([r[p]["score"] for r in rows])) for p in policies}
    best_each = float(np.mean([max(r[p]["score"] for p in peers) for r in rows]))
    lines.append("| **mean** | " + " | ".join(f"**{means[p]:.4f}**" for p in policies) + " | "
                 + " | ".join(f"{means[p] - best_each:+.4f}" for p in ours) + " (against each regime's best peer) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="both", choices=["CLSC-1", "CLSC-2", "both"])
    parser.add_argument("--regimes", type=positive_int, default=6, help="random regimes per world")
    parser.add_argument("--seed", type=non_negative_int, default=2026,
                        help="seed of the regime draws (meta-training used 0..)")
    parser.add_argument("--scenarios", type=positive_int, default=20, help="test scenarios per regime (seeds 1000+)")
    parser.add_argument("--with-cap", action="store_true",
                        help="keep only draws with an emission cap (the rest of each draw as usual)")
    parser.add_argument("--high-tax", action="store_true",
                        help="keep only draws with a carbon tax above 1,000 EUR/t (the rest of each draw as usual)")
    parser.add_argument("--high-mandate", action="store_true",
                        help="keep only draws with a recycled-content mandate of 0.5 or more")
    parser.add_argument("--returns-liability", action="store_true",
                        help="CLSC-2: keep only draws where the landfill charge of a sale's returns tips virgin "
                             "below the lost sale (rule (i))")
    parser.add_argument("--schedules", action="store_true",
                        help="CLSC-2: regime plans with one to three announced changes instead of single regimes")
    parser.add_argument("--tax-rise", action="store_true",
                        help=f"with --schedules: keep only plans where a later carbon tax is at least {TAX_RISE:g} "
                             "EUR/t above an earlier one")
    parser.add_argument("--portfolio", action="store_true",
                        help="CLSC-2: also what moca adapt deploys (--base auto: the LSTM or the sampled MPC)")
    parser.add_argument("--retune", action="store_true",
                        help="CLSC-2: moca's adaptation first re-tunes its base rule's thresholds as the threshold "
                             "peer does and starts its steps from the meta-init, from them or from the rule at them "
                             "with the residual off, whichever validates highest (moca adapt --retune 1500); "
                             "the adaptation without it is scored beside")
    parser.add_argument("--retune-budget", type=positive_int, default=None,
                        help="with --retune: moca's re-tuning candidates (default: the peer's, 1500; on the same "
                             "training scenarios as the peer's)")
    parser.add_argument("--quick", action="store_true", help="2 regimes, 2 scenarios, small budgets")
    parser.add_argument("--out", type=output_file_path, default=HERE / "random_regimes.json")
    args = parser.parse_args()
    if args.quick:
        args.regimes, args.scenarios = 2, 2
    if args.schedules and args.world != "CLSC-2":
        parser.error("--schedules: CLSC-2 only (CLSC-1's moca adapt adapts to one regime)")
    if args.tax_rise and not args.schedules:
        parser.error("--tax-rise: only with --schedules (a single regime has no rise)")
    if args.retune_budget is not None and (not args.retune or args.retune_budget < 1):
        parser.error("--retune-budget: a count of candidates >= 1, with --retune")
    torch.set_num_threads(1)
    worlds = ["CLSC-1", "CLSC-2"] if args.world == "both" else [args.world]
    flags = (*DRAW_FILTERS, "portfolio", "retune", "quick")
    result: dict[str, Any] = {"command": "python benchmarks/bench_random_regimes.py "
                                         f"--world {args.world} --regimes {args.regimes} --seed {args.seed} "
                                         f"--scenarios {args.scenarios}"
                                         + "".join(f" --{f.replace('_', '-')}" for f in flags if getattr(args, f))
                                         + (f" --retune-budget {args.retune_budget}" if args.retune_budget else ""),
                              "test_seeds": [1000, 1000 + args.scenarios - 1], "worlds": {}}
    started = time.perf_counter()
    for world in worlds:
        regimes = draw_regimes(world, args.seed, args.regimes, **{f: getattr(args, f) for f in DRAW_FILTERS})
        rows = clsc1(regimes, args.scenarios, args.quick) if world == "CLSC-1" else \
            clsc2(regimes, args.scenarios, args.quick, args.portfolio, args.retune, args.retune_budget)
        result["worlds"][world] = rows
        print(f"\n{world}\n" + table(rows) + "\n", flush=True)
    result.update({"wall_seconds": time.perf_counter() - started,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    write_atomic(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
