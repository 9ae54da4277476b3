"""What the CLSC-2 rule gains by estimating a chain's returns, grades and market from what
its arrivals reveal, against planning on its prior alone and against being told the
chain's true means, on chains drawn with other means than the prior's.

    python benchmarks/bench_rule2_prior.py [--seeds 1000 1032] [--quick] [--scan N]

The model keeps ``return_mean``, ``grade_mean`` and ``market_avail_min`` to the generator,
so moca's rule (:func:`moca.policy2.observed_means`) starts each episode on a prior (the
default generator's means) and leaves it where the episode's arrivals tell otherwise.
Each chain below draws its scenarios with other values of those keys; on each regime the
shipped CLSC-2 meta-init (no adaptation step) and the rule at its start thresholds are
scored (oracle cost / cost, every action through the exact projection) three ways:

* ``prior``: the prior all episode (the test never passes);
* ``shipped``: as moca runs it;
* ``told``: the prior set to the chain's true means and kept (what reading the drawing keys
  gave, which the model forbids: a reference, not a policy).

``--scan N``: also counts the default chain's seeds ``0 .. N-1`` and the first ``N / 5``
training-stream scenarios on which the test would leave the prior at some period (0 means
every figure measured on those seeds is unchanged by the estimate).
Writes benchmarks/rule2_prior.json.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import check_seed_range, non_negative_int, output_file_path
import moca.policy2 as policy2
from moca.baselines.threshold2 import Threshold2Policy, start_thresholds2
from moca.experiment import machine
from moca.files import write_atomic
from moca.meta2 import load_policy2
from moca.oracle2 import solve_oracle2
from moca.policy import with_params
from moca.policy2 import PolicyAgent2
from moca.projection import project2_batch
from moca.regime import TASKS_2, Regime, RegimeSchedule
from moca.scenario import DEFAULT_PARAMS_2, TRAINING_STREAM, draw_scenario2
from moca.sim2 import ScenarioBatch2, revealed_sums, rollout2

HERE = Path(__file__).parent
#: Chains drawn otherwise than the rule's prior (return share 0.25, grades 0.3/0.45/0.25,
#: market 20-100% of its capacity): the drawing keys each changes.
CHAINS = {
    "default": {},
    "returns 12%": {"return_mean": 0.12},
    "returns 40%, grades 0.2/0.5/0.3": {"return_mean": 0.40, "grade_mean": (0.2, 0.5, 0.3)},
    "grades 0.5/0.3/0.2": {"grade_mean": (0.5, 0.3, 0.2)},
    "market 60-100%": {"market_avail_min": 0.6},
    "market 0-100%": {"market_avail_min": 0.0},
}
#: Regimes where the estimated means enter the rule: a sale's end-of-life cost under a high
#: carbon tax with a landfill tax (rule (i)), and a mandate announced to rise (rules (k), (m)).
REGIMES = {
    "T2": TASKS_2["T2"],
    "tax 800 + landfill 60": Regime(carbon_tax=800.0, landfill_tax=60.0),
    "tax 650 + landfill 90": Regime(carbon_tax=650.0, landfill_tax=90.0),
    "mandate 0.2 -> 0.5 at 20, tax 100 -> 400": RegimeSchedule.from_list([
        {"start": 0, "recycled_content_min": 0.2, "carbon_tax": 100.0},
        {"start": 20, "recycled_content_min": 0.5, "carbon_tax": 400.0}]),
}
MODES = ("prior", "shipped", "told")


def set_mode(mode: str, params) -> None:
    """Point moca.policy2's prior and test at ``mode`` (see the module docstring)."""
    policy2.PRIOR_TEST = math.inf if mode in ("prior", "told") else SHIPPED["PRIOR_TEST"]
    told = mode == "told"
    policy2.PRIOR_RETURN_SHARE = params.return_mean if told else SHIPPED["PRIOR_RETURN_SHARE"]
    policy2.PRIOR_GRADE_SHARES = tuple(params.grade_mean) if told else SHIPPED["PRIOR_GRADE_SHARES"]
    policy2.PRIOR_MARKET_SHARE = (1.0 + params.market_avail_min) / 2.0 if told else SHIPPED["PRIOR_MARKET_SHARE"]


SHIPPED = {name: getattr(policy2, name) for name in ("PRIOR_TEST", "PRIOR_RETURN_SHARE", "PRIOR_GRADE_SHARES",
                                                     "PRIOR_MARKET_SHARE")}


def leaves_prior(seeds: list) -> list:
    """The default chain's ``seeds`` on which the test leaves the prior at some period."""
    out = []
    for k in range(0, len(seeds), 200):
        chunk = seeds[k:k + 200]
        b = ScenarioBatch2.from_scenarios([draw_scenario2(s) for s in chunk], dtype=torch.float64)
        seen = revealed_sums(b)
        left = torch.zeros(len(chunk), dtype=torch.bool)
        prior = policy2.observed_means(None, b.return_frac[:, 0])
        for t in range(b.horizon):
            for got, expected in zip(policy2.observed_means(seen[:, t], b.return_frac[:, 0]), prior):
                left |= (got != expected).reshape(len(chunk), -1).any(-1)
        out += [chunk[i] for i in torch.nonzero(left).flatten().tolist()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=non_negative_int, nargs=2, default=[1000, 1032],
                        help="first and last+1 test seed")
    parser.add_argument("--quick", action="store_true", help="2 seeds, two chains, one regime")
    parser.add_argument("--scan", type=non_negative_int, default=0, metavar="N",
                        help="also count the default chain's seeds 0..N-1 (and N/5 training scenarios) that leave "
                             "the prior")
    parser.add_argument("--out", type=output_file_path, default=HERE / "rule2_prior.json")
    args = parser.parse_args()
    check_seed_range(parser, "--seeds", args.seeds)
    torch.set_num_threads(1)
    seeds = list(range(*args.seeds))[:2] if args.quick else list(range(*args.seeds))
    chains = {k: CHAINS[k] for k in ("default", "returns 12%")} if args.quick else CHAINS
    regimes = {k: REGIMES[k] for k in ("tax 800 + landfill 60",)} if args.quick else REGIMES
    module, _ = load_policy2("default")  # the shipped CLSC-2 meta-init
    result = {"seeds": [seeds[0], seeds[-1]], "scores": {}}
    try:
        for chain, drawing in chains.items():
            params = DEFAULT_PARAMS_2.model_copy(update=drawing)
            learned = with_params(module, params)
            weights = {k: v.detach().double() for k, v in learned.named_parameters()}
            for name, plan in regimes.items():
                scenarios = [draw_scenario2(s, plan, params) for s in seeds]
                oracle = np.array([solve_oracle2(s).oracle_cost for s in scenarios])
                batch = ScenarioBatch2.from_scenarios(scenarios, dtype=torch.float64)
                row = {}
                for mode in MODES:
                    set_mode(mode, params)
                    for policy, make in (("moca", lambda: PolicyAgent2(learned, weights)),
                                         ("rule", lambda: Threshold2Policy(start_thresholds2(params), params))):
                        with torch.no_grad():
                            cost = rollout2(batch, make(), project2_batch).total_cost.numpy()
                        row[f"{policy} {mode}"] = float(np.mean(oracle / cost))
                result["scores"].setdefault(chain, {})[name] = row
                print(f"{chain:<32} {name:<42} " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    finally:
        set_mode("shipped", DEFAULT_PARAMS_2)
    if args.scan:
        scanned = list(range(args.scan)) + [(TRAINING_STREAM, i) for i in range(args.scan // 5)]
        left = leaves_prior(scanned)
        result["scan"] = {"seeds": len(scanned), "leave_prior": [s if isinstance(s, int) else list(s) for s in left]}
        print(f"default chain: {len(left)} of {len(scanned)} seeds leave the prior at some period: {left[:20]}")
    result.update({"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()})
    write_atomic(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
