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
adapted). The actions are read by name through :class:`ActionIndex`, and everything
world-specific (drawing scenarios, the oracle, the rollout with its safety layer and
violation count, the cap's scale) sits in a :class:`ResponseWorld` (:func:`response_world`:
``"CLSC-1"`` or ``"CLSC-2"``, where every regime carries the seed tasks' yearly window
W = 52 and the market purchases are measured too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from moca.evaluation import scorable
from moca.files import figure_metadata
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
    """Where the measured quantities sit in an action row (CLSC-1's ``o, u_v, u_r, g, f, w``);
    a quantity spread over several columns (CLSC-2's grades) is a tuple of them, summed;
    ``market`` (kg bought on the recycled market) only where the world has one."""

    order: int = 0
    virgin_used: int = 1
    recycled_used: int = 2
    disassembled: int | tuple[int, ...] = 3
    refurbished: int | tuple[int, ...] = 4
    disposed: int | tuple[int, ...] = 5
    market: tuple[int, ...] = ()


#: CLSC-2's ``o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B`` (:data:`moca.clsc2.ACTION_NAMES`).
ACTION_INDEX_2 = ActionIndex(order=0, virgin_used=2, recycled_used=3, disassembled=(5, 6), refurbished=(4,),
                             disposed=(7, 8), market=(1,))


PolicyFactory = Callable[[Regime], Any]


class ResponseError(ValueError):
    """Bad input to the sweep; the message names the argument and the problem."""


@dataclass(frozen=True)
class ResponseWorld:
    """What the sweep needs of a world: its chain, where the actions sit, the scale of the
    emission cap (kg CO2 of an average virgin-only period), the fields every swept regime
    carries besides the rule, and three engines: ``draw(seeds, regime)`` -> scenarios,
    ``oracle(scenarios)`` -> (plans ``[B, T, A]``, costs EUR ``[B]``) and
    ``rollout(policy, scenarios)`` -> (executed ``[B, T, A]``, costs EUR ``[B]``,
    violations) with every action through the world's exact safety layer, float64."""

    name: str
    params: Any
    index: ActionIndex
    reference_emissions: float
    regime_fields: Mapping[str, Any]
    draw: Callable[[Sequence[int], Regime], list]
    oracle: Callable[[Sequence[Any]], tuple[np.ndarray, np.ndarray]]
    rollout: Callable[[Any, Sequence[Any]], tuple[np.ndarray, np.ndarray, int]]


def _oracle1(scenarios: Sequence[Scenario]) -> tuple[np.ndarray, np.ndarray]:
    from moca.oracle import solve_oracle

    results = [solve_oracle(s) for s in scenarios]
    return np.stack([r.plan for r in results]), scorable([r.oracle_cost for r in results])


def _rollout1(policy: Any, scenarios: Sequence[Scenario]) -> tuple[np.ndarray, np.ndarray, int]:
    from moca import safety

    batch = ScenarioBatch.from_scenarios(list(scenarios), dtype=torch.float64)
    with torch.no_grad():
        out = rollout(batch, policy, safety.project_batch)
    violations = int(safety.episode_violations(out.executed, out.available, batch.regime, batch.params))
    return out.executed.detach().double().numpy(), out.total_cost.double().numpy(), violations


def _oracle2(scenarios: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    from moca.oracle2 import solve_oracle2

    results = [solve_oracle2(s) for s in scenarios]
    return np.stack([r.plan for r in results]), scorable([r.oracle_cost for r in results])


def _rollout2(policy: Any, scenarios: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """CLSC-2: violations recounted per period by :func:`moca.projection.violations2`
    (rows 1-8, 6a/6b and the window settlements), as :func:`moca.policy2.evaluate_policy2`."""
    from moca.projection import episode_violations2, project2_batch
    from moca.sim2 import ScenarioBatch2, rollout2

    batch = ScenarioBatch2.from_scenarios(list(scenarios), dtype=torch.float64)
    with torch.no_grad():
        out = rollout2(batch, policy, project2_batch)
    executed, inputs, table = out.executed.numpy(), out.inputs.numpy(), batch.regime.numpy()
    violations = episode_violations2(executed, inputs, table, batch.params)
    return executed, out.total_cost.numpy(), int(violations)


def response_world(name: str = "CLSC-1", params: Any = None) -> ResponseWorld:
    """The sweep's view of world ``name`` (``params``: its chain, default the spec's)."""
    if name == "CLSC-1":
        from moca.policy import reference_emissions

        params = Params() if params is None else params
        return ResponseWorld("CLSC-1", params, ActionIndex(), reference_emissions(params), {},
                             lambda seeds, regime: draw_scenarios(seeds, regime, params), _oracle1, _rollout1)
    if name == "CLSC-2":
        from moca.policy2 import reference_emissions2
        from moca.regime import WINDOW_FIELD
        from moca.scenario import DEFAULT_PARAMS_2, draw_scenarios2

        params = DEFAULT_PARAMS_2 if params is None else params
        return ResponseWorld("CLSC-2", params, ACTION_INDEX_2, reference_emissions2(params), {WINDOW_FIELD: 52},
                             lambda seeds, regime: draw_scenarios2(seeds, regime, params),
                             _oracle2, _rollout2)
    raise ResponseError(f"world: {name!r} is not a world (valid: CLSC-1, CLSC-2)")


def sweep_regime(rule: str, value: float, params: Params = Params(), world: ResponseWorld | None = None) -> Regime:
    """The regime with only ``rule`` set to ``value`` (the cap as a multiple, see :data:`SWEEPS`)
    and the world's fixed fields (CLSC-2: W = 52)."""
    from moca.policy import reference_emissions

    if rule not in UNITS:
        raise ResponseError(f"rule: {rule!r} is not a rule of the regime ({', '.join(UNITS)})")
    fields = dict(world.regime_fields) if world is not None else {}
    if rule == "emission_cap":
        scale = world.reference_emissions if world is not None else reference_emissions(params)
        return Regime(**fields, emission_cap=float(value) * scale)
    return Regime(**fields, **{rule: float(value)})


def _columns(total: np.ndarray, where: int | tuple[int, ...]) -> np.ndarray:
    return total[:, list(where)].sum(-1) if isinstance(where, tuple) else total[:, where]


def measure(actions: np.ndarray, index: ActionIndex = ActionIndex()) -> dict[str, float]:
    """Yearly routing and sourcing of executed actions ``[B, T, A]``, averaged over scenarios."""
    total = actions.sum(axis=1)  # [B, A]: per-episode totals
    material = total[:, index.virgin_used] + total[:, index.recycled_used]
    share = np.where(material > 0, total[:, index.recycled_used] / np.maximum(material, 1e-12), 0.0)
    out = {"disassembled": float(_columns(total, index.disassembled).mean()),
           "refurbished": float(_columns(total, index.refurbished).mean()),
           "disposed": float(_columns(total, index.disposed).mean()),
           "recycled_share": float(share.mean()), "virgin_ordered": float(total[:, index.order].mean())}
    if index.market:
        out["market_bought"] = float(_columns(total, index.market).mean())
    return out


def oracle_response(scenarios: Sequence[Scenario], index: ActionIndex = ActionIndex(),
                    world: ResponseWorld | None = None) -> tuple[dict[str, float], np.ndarray]:
    """The hindsight LP's plan, measured; returns the measures and the oracle costs (EUR)."""
    plans, costs = (world.oracle if world is not None else _oracle1)(scenarios)
    out = measure(plans, world.index if world is not None else index)
    out["score"] = 1.0
    return out, costs


def policy_response(policy: Any, scenarios: Sequence[Scenario], oracle: np.ndarray,
                    index: ActionIndex = ActionIndex(), world: ResponseWorld | None = None) -> dict[str, float]:
    """One batched rollout of ``policy`` (every action through the exact batched safety
    layer, float64), measured on the executed actions."""
    executed, cost, violations = (world.rollout if world is not None else _rollout1)(policy, scenarios)
    result = measure(executed, world.index if world is not None else index)
    result["score"] = float(np.mean(oracle / cost))
    result["violations"] = violations
    return result


def threshold_factory(params: Params = Params(), budget: int = 400, train_seeds: int = 8) -> PolicyFactory:
    """The threshold rule re-tuned for each regime (training-stream scenarios, never test ones)."""
    from moca.baselines import tune_threshold

    return lambda regime: tune_threshold(regime, params, train_seeds=train_seeds, budget=budget)


def threshold2_factory(params: Any = None, budget: int = 150, train_seeds: int = 4) -> PolicyFactory:
    """CLSC-2's threshold rule re-tuned for each regime (training-stream scenarios)."""
    from moca.baselines.threshold2 import tune_threshold2
    from moca.scenario import DEFAULT_PARAMS_2

    params = params or DEFAULT_PARAMS_2
    return lambda regime: tune_threshold2(regime, params, train_seeds=train_seeds, budget=budget)


def learned_policy2(name: str = "default", adapt_steps: int = 0) -> PolicyFactory:
    """A CLSC-2 moca checkpoint (``"default"``: the shipped ``default-clsc2`` meta-init, read
    when called) as a factory, acting in float64 as :func:`moca.policy2.evaluate_policy2`:
    zero-shot, or adapted ``adapt_steps`` steps to each regime first as ``moca adapt --model
    CLSC-2`` does (support seeds 800+, the weights of the best validation score on seeds
    900+ over steps 0..adapt_steps)."""
    from moca.meta2 import adapt2, load_policy2
    from moca.policy2 import PolicyAgent2

    module, _ = load_policy2(name)
    zero_shot = {k: v.detach().double() for k, v in module.named_parameters()}

    def make(regime: Regime) -> Any:
        if not adapt_steps:
            return PolicyAgent2(module, zero_shot)
        weights, _ = adapt2(module, None, regime, adapt_steps, keep_best=True)
        return PolicyAgent2(module, {k: v.detach().double() for k, v in weights.items()})

    return make


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
                 index: ActionIndex = ActionIndex(), progress: Callable[[str], None] | None = None,
                 world: ResponseWorld | None = None) -> dict[str, Any]:
    """Sweep every rule; per rule and value, the oracle's and each policy's measures (and
    the seconds each factory took to build its policy, e.g. the threshold rule's tuning).
    ``world``: CLSC-1 (``params``, ``index``) unless given (:func:`response_world`)."""
    if scenarios < 1:
        raise ResponseError(f"scenarios: {scenarios!r} must be >= 1")
    world = world or replace(response_world("CLSC-1", params), index=index)
    out: dict[str, Any] = {"world": world.name, "scenarios": list(range(first_seed, first_seed + scenarios)),
                           "units": {}, "rules": {}}
    for rule, values in sweeps.items():
        out["units"][rule] = UNITS.get(rule, "")
        points = []
        for value in values:
            if progress:
                progress(f"{rule} = {value:g}")
            regime = sweep_regime(rule, value, world=world)
            tests = world.draw(range(first_seed, first_seed + scenarios), regime)
            oracle_measures, oracle_costs = oracle_response(tests, world=world)
            point: dict[str, Any] = {"value": float(value), "regime": regime.model_dump(),
                                     "oracle": oracle_measures}
            for name, factory in policies.items():
                started = time.perf_counter()
                policy = factory(regime)
                built = time.perf_counter() - started
                point[name] = {**policy_response(policy, tests, oracle_costs, world=world), "build_seconds": built}
                if getattr(policy, "tuning", None) is not None:  # a re-tuned rule: what its tuning tried
                    point[name]["tuning_candidates"] = int(policy.tuning.candidates)
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
    """One row of panels per rule (disassembled, recycled share, virgin ordered; market
    bought where the world has a market), one line per policy; written as a PNG."""
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
    if "market_bought" in first["oracle"]:  # CLSC-2
        panels += (("market_bought", "market bought (kg / yr)"),)
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
    fig.savefig(path, dpi=110, metadata=figure_metadata(path))
    plt.close(fig)
