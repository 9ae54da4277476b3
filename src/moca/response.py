"""Does the regime drive the policy? Routing and sourcing against each rule's value.

For each rule of the spec swept alone over its range (:data:`SWEEPS`; the other rules
absent), every policy runs the same test scenarios and we record, per year (the whole
episode) and averaged over scenarios, what it *did* (the executed actions):

- ``disassembled``: cores disassembled (units/yr), ``refurbished`` and ``disposed`` likewise;
- ``recycled_share``: recycled material / all material used in production;
- ``virgin_ordered``: virgin material ordered (kg/yr);
- ``score``: oracle cost / policy cost.

The oracle's figures come from its hindsight plan (the LP's own actions), the tuned
threshold rule is re-tuned for every regime of the sweep, and any other policy is given as
a factory ``regime -> Policy`` (:func:`learned_policy` for a moca checkpoint, optionally
adapted). The actions are read by name through :class:`ActionIndex`, so a world with other
actions plugs in by passing its own index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from moca.regime import Regime
from moca.scenario import Params, Scenario, draw_scenarios
from moca.sim import ScenarioBatch, rollout

#: Rule values swept, one rule at a time. ``emission_cap`` as multiples of an average
#: virgin-only period's emissions (:func:`moca.policy.reference_emissions`).
SWEEPS: dict[str, list[float]] = {
    "carbon_tax": [0.0, 50.0, 100.0, 150.0, 200.0, 300.0],
    "recycled_content_min": [0.0, 0.1, 0.2, 0.35, 0.5, 0.65],
    "emission_cap": [2.0, 1.5, 1.0, 0.8, 0.6],
    "landfill_tax": [0.0, 25.0, 50.0, 100.0],
    "recovery_target": [0.0, 0.25, 0.5, 0.75, 1.0],
}

QUICK_SWEEPS: dict[str, list[float]] = {"carbon_tax": [0.0, 150.0, 300.0]}

UNITS = {"carbon_tax": "EUR/t CO2", "recycled_content_min": "share", "emission_cap": "x virgin-only emissions",
         "landfill_tax": "EUR/core", "recovery_target": "share"}

MEASURES = ("disassembled", "refurbished", "disposed", "recycled_share", "virgin_ordered")


@dataclass(frozen=True)
class ActionIndex:
    """Where the measured quantities sit in an action row (CLSC-1's ``o, u_v, u_r, g, f, w``)."""

    order: int = 0
    virgin_used: int = 1
    recycled_used: int = 2
    disassembled: int = 3
    refurbished: int = 4
    disposed: int = 5


PolicyFactory = Callable[[Regime], Any]


class ResponseError(ValueError):
    """Bad input to the sweep; the message names the argument and the problem."""


def sweep_regime(rule: str, value: float, params: Params = Params()) -> Regime:
    """The regime with only ``rule`` set to ``value`` (the cap as a multiple, see :data:`SWEEPS`)."""
    from moca.policy import reference_emissions

    if rule not in UNITS:
        raise ResponseError(f"rule: {rule!r} is not a rule of the regime ({', '.join(UNITS)})")
    if rule == "emission_cap":
        return Regime(emission_cap=float(value) * reference_emissions(params))
    return Regime(**{rule: float(value)})


def measure(actions: np.ndarray, index: ActionIndex = ActionIndex()) -> dict[str, float]:
    """Yearly routing and sourcing of executed actions ``[B, T, A]``, averaged over scenarios."""
    total = actions.sum(axis=1)  # [B, A]: per-episode totals
    material = total[:, index.virgin_used] + total[:, index.recycled_used]
    share = np.where(material > 0, total[:, index.recycled_used] / np.maximum(material, 1e-12), 0.0)
    return {"disassembled": float(total[:, index.disassembled].mean()),
            "refurbished": float(total[:, index.refurbished].mean()),
            "disposed": float(total[:, index.disposed].mean()),
            "recycled_share": float(share.mean()), "virgin_ordered": float(total[:, index.order].mean())}


def oracle_response(scenarios: Sequence[Scenario], index: ActionIndex = ActionIndex()
                    ) -> tuple[dict[str, float], np.ndarray]:
    """The hindsight LP's plan, measured; returns the measures and the oracle costs (EUR)."""
    from moca.oracle import solve_oracle

    results = [solve_oracle(s) for s in scenarios]
    out = measure(np.stack([r.plan for r in results]), index)
    out["score"] = 1.0
    return out, np.array([r.oracle_cost for r in results])


def policy_response(policy: Any, scenarios: Sequence[Scenario], oracle: np.ndarray,
                    index: ActionIndex = ActionIndex()) -> dict[str, float]:
    """One batched rollout of ``policy`` (every action through the exact batched safety
    layer, float64), measured on the executed actions."""
    from moca import safety

    batch = ScenarioBatch.from_scenarios(list(scenarios), dtype=torch.float64)
    with torch.no_grad():
        out = rollout(batch, policy, safety.project_batch)
    result = measure(out.executed.detach().double().numpy(), index)
    result["score"] = float(np.mean(oracle / out.total_cost.double().numpy()))
    result["violations"] = int(safety.episode_violations(out.executed, out.available, batch.regime, batch.params))
    return result


def threshold_factory(params: Params = Params(), budget: int = 400, train_seeds: int = 8) -> PolicyFactory:
    """The threshold rule re-tuned for each regime (training-stream scenarios, never test ones)."""
    from moca.baselines import tune_threshold

    return lambda regime: tune_threshold(regime, params, train_seeds=train_seeds, budget=budget)


def learned_policy(name: str = "default", adapt_steps: int = 0) -> PolicyFactory:
    """A moca checkpoint as a factory: zero-shot, or adapted ``adapt_steps`` steps to each
    regime on its support scenarios (seeds 800+) first. Acts on the batched path
    (:class:`moca.policy.PolicyAgent`, the module's float32)."""
    from moca import checkpoint
    from moca.meta import adapt
    from moca.policy import PolicyAgent

    module, _ = checkpoint.load_policy(name)

    def make(regime: Regime) -> Any:
        weights = None
        if adapt_steps:
            weights, _ = adapt(module, None, regime, adapt_steps)
        return PolicyAgent(module, weights)

    return make


def run_response(policies: Mapping[str, PolicyFactory], sweeps: Mapping[str, Sequence[float]] = SWEEPS,
                 scenarios: int = 8, first_seed: int = 1000, params: Params = Params(),
                 index: ActionIndex = ActionIndex(), progress: Callable[[str], None] | None = None
                 ) -> dict[str, Any]:
    """Sweep every rule; per rule and value, the oracle's and each policy's measures (and
    the seconds each factory took to build its policy, e.g. the threshold rule's tuning)."""
    if scenarios < 1:
        raise ResponseError(f"scenarios: {scenarios!r} must be >= 1")
    out: dict[str, Any] = {"scenarios": list(range(first_seed, first_seed + scenarios)), "units": {},
                           "rules": {}}
    for rule, values in sweeps.items():
        out["units"][rule] = UNITS.get(rule, "")
        points = []
        for value in values:
            if progress:
                progress(f"{rule} = {value:g}")
            regime = sweep_regime(rule, value, params)
            tests = draw_scenarios(range(first_seed, first_seed + scenarios), regime, params)
            oracle_measures, oracle_costs = oracle_response(tests, index)
            point: dict[str, Any] = {"value": float(value), "regime": regime.model_dump(),
                                     "oracle": oracle_measures}
            for name, factory in policies.items():
                started = time.perf_counter()
                policy = factory(regime)
                built = time.perf_counter() - started
                point[name] = {**policy_response(policy, tests, oracle_costs, index), "build_seconds": built}
            points.append(point)
        out["rules"][rule] = points
    return out


def direction_agreement(result: Mapping[str, Any], policy: str, measure_name: str = "disassembled") -> dict[str, Any]:
    """Per rule: the sign of each step of ``measure_name`` along the sweep for ``policy``
    against the oracle's, and the share of steps where both move the same way (steps where
    the oracle moves by less than 2% of its range count as 'flat' and are skipped), and the
    mean absolute gap to the oracle's value over the sweep (direction alone is lenient: a
    policy that moves a little the right way agrees on every step)."""
    out = {}
    for rule, points in result["rules"].items():
        oracle = np.array([p["oracle"][measure_name] for p in points])
        mine = np.array([p[policy][measure_name] for p in points])
        span = max(float(np.ptp(oracle)), 1e-9)
        steps = [(float(np.sign(b - a)), float(np.sign(d - c))) for a, b, c, d in
                 zip(oracle[:-1], oracle[1:], mine[:-1], mine[1:]) if abs(b - a) > 0.02 * span]
        agree = sum(1 for o, m in steps if o == m)
        out[rule] = {"steps": len(steps), "agree": agree,
                     "share": agree / len(steps) if steps else None,
                     "mean_abs_gap": float(np.mean(np.abs(mine - oracle))),
                     "oracle_range": [float(oracle.min()), float(oracle.max())],
                     "policy_range": [float(mine.min()), float(mine.max())]}
    return out


def plot_response(result: Mapping[str, Any], path: str, policies: Sequence[str] | None = None) -> None:
    """One row of panels per rule (disassembled, recycled share, virgin ordered), one line
    per policy; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = list(result["rules"])
    first = result["rules"][rules[0]][0]
    names = ["oracle", *[k for k in first if k not in ("value", "regime", "oracle")]]
    if policies is not None:
        names = [n for n in names if n in policies or n == "oracle"]
    panels = (("disassembled", "cores disassembled / yr"), ("recycled_share", "recycled share of material"),
              ("virgin_ordered", "virgin ordered (kg / yr)"))
    fig, axes = plt.subplots(len(rules), len(panels), figsize=(4.2 * len(panels), 2.8 * len(rules)), squeeze=False)
    for i, rule in enumerate(rules):
        points = result["rules"][rule]
        x = [p["value"] for p in points]
        for j, (key, label) in enumerate(panels):
            ax = axes[i][j]
            for name in names:
                style = {"color": "black", "lw": 2.2} if name == "oracle" else {"lw": 1.5, "marker": "o", "ms": 3}
                ax.plot(x, [p[name][key] for p in points], label=name, **style)
            ax.set_xlabel(f"{rule} ({result['units'].get(rule, '')})", fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
