"""Regulatory impact analysis: sweep one rule's strength and measure what it costs.

``moca sweep --field recycled_content_min --values 0:0.6:0.05`` answers "what does a 35%
recycled-content mandate cost us against 26%?": for every value of the field (the other
rules from ``--base``) and every policy, on the same seeded test scenarios,

* episode cost (EUR, mean and 95% interval over scenarios);
* cost of compliance: the policy's cost minus *the same policy's* cost on the same
  scenarios with the field at its neutral value (no such rule), paired per scenario;
* emissions (kg CO2 per episode), recycled share of material input, backlog (mean units
  on backlog per period; a model with lost sales reports those), violations (must be 0);
* for ``moca`` (the shipped meta-init adapted to the value): adaptation steps (to 99% of
  the validation plateau) and seconds;
* for the ``oracle`` (hindsight LP): the rule's shadow price from the LP duals
  (:func:`moca.oracle.shadow_prices`, EUR per unit of the field: the marginal cost of
  tightening it) and a flag where the rule itself leaves demand unmet: the *oracle's*
  backlog grows over its backlog at the neutral value, so no policy could avoid it.

Work is split into tasks, one per (value, policy): a task is a pure function of its
input (regime, seeds, policy), so any backend of :mod:`moca.cluster` — this process, a
local process pool, Ray — gives the same numbers. A world model plugs in as a
:class:`SweepModel` in :data:`MODELS` (its fields, their ranges and neutral values, how to
draw scenarios and run a policy); CLSC-1 is :class:`CLSC1Sweep`, CLSC-2 :class:`CLSC2Sweep`
(lost sales instead of backlog; the accounting window W as a sixth field).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

try:  # POSIX: a journal is locked while its sweep runs
    import fcntl
except ImportError:  # pragma: no cover - Windows: not locked
    fcntl = None

from moca.cluster import Backend
from moca.files import figure_metadata, write_atomic
from moca.limits import LARGEST_SEED, MOST_SCENARIOS, MOST_STEPS, is_finite_number, is_whole
from moca.regime import REGIME_RANGES, Regime, RegimeError, clsc1_window_refusal, load_regime

POLICIES: tuple[str, ...] = ("oracle", "mpc", "threshold", "moca")
MAX_VALUES = 500  # a longer list is almost certainly a typo in a range's step


class SweepError(ValueError):
    """Bad sweep input (unknown field or policy, value out of range, bad SPEC); the
    message names the option and the problem."""


@dataclass(frozen=True)
class FieldSpec:
    """A regime field a sweep can vary: valid range (``high`` None = unbounded, ``low_open``:
    the bound itself is not allowed), the neutral value (no such rule) and the unit."""

    name: str
    low: float
    high: float | None
    neutral: float | None
    unit: str
    low_open: bool = False

    def check(self, value: float) -> None:
        bad = (value <= self.low if self.low_open else value < self.low) or (self.high is not None and value > self.high)
        if bad or not math.isfinite(value):
            raise SweepError(f"--values: {self.name}={value:g} is outside its valid range {REGIME_RANGES.get(self.name, '')}".rstrip())


# ----------------------------------------------------------------------------------------
# Parsing --values
# ----------------------------------------------------------------------------------------


def parse_values(spec: str) -> list[float]:
    """``"0,0.1,0.2"`` (a list) or ``"start:stop:step"`` (a range, ``stop`` included when
    the steps land on it to round-off). Errors name the bad part."""
    text = (spec or "").strip()
    if not text:
        raise SweepError("--values: empty list (give e.g. 0,0.1,0.2 or a range 0:0.6:0.05)")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise SweepError(f"--values {spec!r}: a range is start:stop:step (three numbers)")
        start, stop, step = (_number(p, spec) for p in parts)
        if step <= 0:
            raise SweepError(f"--values {spec!r}: the step must be > 0")
        if step < 1e-12:  # (the values are rounded to 12 decimals below: 0:1e-12:1e-13 ran 0 six times)
            raise SweepError(f"--values {spec!r}: the step must be at least 1e-12 (values are kept to 12 decimals)")
        if stop < start:
            raise SweepError(f"--values {spec!r}: stop is below start")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        if count > MAX_VALUES:
            raise SweepError(f"--values {spec!r}: {count} values (at most {MAX_VALUES})")
        # round() removes the float noise of start + i*step (0.30000000000000004 -> 0.3).
        return checked_values([round(start + i * step, 12) for i in range(count)], spec)
    items = [p.strip() for p in text.split(",")]
    if any(not p for p in items):
        raise SweepError(f"--values {spec!r}: an empty item in the list")
    return checked_values([_number(p, spec) for p in items], spec)


def checked_values(values: list[float], spec: Any) -> list[float]:
    """A list of values as the text form's is checked (a library's list skipped this: a
    repeated value ran twice, 600 values ran past the limit)."""
    if len(values) > MAX_VALUES:
        raise SweepError(f"--values: {len(values)} values (at most {MAX_VALUES})")
    if len(set(values)) != len(values):
        raise SweepError(f"--values {spec!r}: a value is repeated")
    return values


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SweepError(f"--values {spec!r}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise SweepError(f"--values {spec!r}: {text.strip()!r} is not a finite number")
    return value


def parse_policies(spec: str) -> list[str]:
    names = [p.strip() for p in (spec or "").split(",") if p.strip()]
    if not names:
        raise SweepError(f"--policies: empty list (choose from {', '.join(POLICIES)})")
    for name in names:
        if name not in POLICIES:
            raise SweepError(f"--policies: unknown policy {name!r} (valid: {', '.join(POLICIES)})")
    if len(set(names)) != len(names):
        raise SweepError("--policies: a policy is repeated")
    return names


# ----------------------------------------------------------------------------------------
# World models
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepTask:
    """One (value, policy) of a sweep: everything a worker needs, all small and picklable.
    ``regime`` is the regime's field dict; ``index`` is the value's position (-1: the
    neutral value)."""

    model: str
    policy: str
    index: int
    regime: dict[str, Any]
    seeds: tuple[int, ...]
    adapt_steps: int = 5
    shadow_field: str | None = None
    threshold_budget: int = 1200  # candidate rules the threshold tuner simulates
    moca_base: str = "caps"  # moca: the meta-init alone, or moca.portfolio's choice (caps: under a cap)


@dataclass
class TaskResult:
    """Per-scenario metrics of one task (arrays of length ``len(seeds)``) and extras."""

    index: int
    policy: str
    metrics: dict[str, list[float]]
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # this process's CPU time (what the task costs on a machine of its own)


class SweepModel:
    """A world model as a sweep sees it. Subclasses give the fields, the unmet-demand
    measure, the scenarios and how each policy runs on them."""

    name: str = ""
    fields: dict[str, FieldSpec] = {}
    unmet: str = "backlog"  # name of the unmet-demand metric ("backlog" or "lost_sales")
    unmet_unit: str = "units/period"

    def field(self, name: str) -> FieldSpec:
        if name not in self.fields:
            raise SweepError(f"--field {name!r}: unknown field of {self.name} (valid: {', '.join(self.fields)})")
        return self.fields[name]

    def base_regime(self, spec: str | None) -> Regime:
        regime = Regime() if spec is None else load_regime(spec)
        if regime.recycled_content_window != 1:  # (each task's draw refused it: an internal error, work lost)
            raise SweepError(clsc1_window_refusal("--base: ", regime.recycled_content_window, world=self.name))
        return regime

    def regime_with(self, base: Regime, name: str, value: float | None) -> dict[str, Any]:
        try:
            return load_regime({**base.model_dump(), name: value}).model_dump()
        except RegimeError as err:  # names the field, the value and its range
            raise SweepError(f"--values: {err}") from None

    def mean_demand(self) -> float:
        raise NotImplementedError

    def run(self, task: SweepTask) -> TaskResult:
        raise NotImplementedError


class CLSC1Sweep(SweepModel):
    """CLSC-1: the five rules of :mod:`moca.regime`, the spec's default parameters."""

    name = "CLSC-1"
    fields = {
        "recycled_content_min": FieldSpec("recycled_content_min", 0.0, 0.95, 0.0, "share of material input"),
        "carbon_tax": FieldSpec("carbon_tax", 0.0, 2000.0, 0.0, "EUR/t CO2"),
        "emission_cap": FieldSpec("emission_cap", 0.0, None, None, "kg CO2/period", low_open=True),
        "landfill_tax": FieldSpec("landfill_tax", 0.0, 100.0, 0.0, "EUR/core"),
        "recovery_target": FieldSpec("recovery_target", 0.0, 1.0, 0.0, "share of processed cores"),
    }
    unmet = "backlog"
    unmet_unit = "units/period"

    def mean_demand(self) -> float:
        from moca.scenario import DEFAULT_PARAMS

        return float(DEFAULT_PARAMS.demand_base)

    def run(self, task: SweepTask) -> TaskResult:
        from moca.regime import Regime
        from moca.scenario import draw_scenarios

        started, cpu = time.perf_counter(), time.process_time()
        regime = Regime(**task.regime)
        scenarios = draw_scenarios(list(task.seeds), regime)
        extra: dict[str, Any] = {}
        if task.policy == "oracle":
            metrics = _oracle_metrics(scenarios, task.shadow_field)
        else:
            policy, extra = _build(task.policy, regime, task.adapt_steps, task.threshold_budget, task.moca_base)
            metrics = _policy_metrics(policy, scenarios)
        return TaskResult(task.index, task.policy, metrics, extra, time.perf_counter() - started,
                          time.process_time() - cpu)


class CLSC2Sweep(SweepModel):
    """CLSC-2 (docs/MODEL-2.md): the five rules and the accounting window W of the mandate;
    sales are lost, not backlogged. Policies: the oracle (:func:`moca.oracle2.shadow_prices2`),
    the forecast MPC peer (safety stock as tuned by bench_peers.py), threshold2 re-tuned per
    value on a small budget, and the shipped CLSC-2 meta-init adapted per value."""

    name = "CLSC-2"
    fields = {
        **CLSC1Sweep.fields,
        # W = 1 settles the mandate every period (CLSC-1's rule): a longer window is a looser
        # rule, so its compliance cost against W = 1 is a saving (negative).
        "recycled_content_window": FieldSpec("recycled_content_window", 1.0, 104.0, 1.0, "periods"),
    }
    unmet = "lost_sales"
    unmet_unit = "units/period"
    #: The threshold rule's tuning per value: at most this many candidates, on this many
    #: training scenarios (a sweep tunes once per value; moca run --model CLSC-2 uses 150 x 4).
    threshold_budget_cap = 150
    threshold_train_seeds = 4

    def base_regime(self, spec: str | None) -> Regime:
        return Regime() if spec is None else load_regime(spec, model="CLSC-2")  # T1-T3: W = 52

    def mean_demand(self) -> float:
        from moca.scenario import DEFAULT_PARAMS_2

        return float(DEFAULT_PARAMS_2.demand_base)

    def run(self, task: SweepTask) -> TaskResult:
        from moca.scenario import draw_scenarios2

        started, cpu = time.perf_counter(), time.process_time()
        regime = Regime(**task.regime)
        scenarios = draw_scenarios2(list(task.seeds), regime)
        extra: dict[str, Any] = {}
        if task.policy == "oracle":
            metrics = _oracle_metrics2(scenarios, task.shadow_field)
        else:
            policy, extra = self._build(task.policy, regime, task.adapt_steps, task.threshold_budget, task.moca_base)
            metrics = _policy_metrics2(policy, scenarios)
        return TaskResult(task.index, task.policy, metrics, extra, time.perf_counter() - started,
                          time.process_time() - cpu)

    def _build(self, name: str, regime: Regime, adapt_steps: int, threshold_budget: int,
               moca_base: str = "default") -> tuple[Any, dict[str, Any]]:
        if name == "threshold":
            from moca.baselines.threshold2 import tune_threshold2

            budget = min(threshold_budget, self.threshold_budget_cap)
            policy = tune_threshold2(regime, train_seeds=self.threshold_train_seeds, budget=budget)
            return policy, {"tuning_candidates": int(policy.tuning.candidates)}
        if name == "mpc":
            from moca.baselines.mpc2 import MPC2Policy
            from moca.baselines.peers import TUNED_SAFETY_STOCK_2

            return MPC2Policy(safety_stock=TUNED_SAFETY_STOCK_2["mpc-forecast"]), {}
        if name == "moca":
            from moca.meta2 import load_policy2
            from moca.policy2 import PolicyAgent2
            from moca.portfolio import adapt_portfolio2, base_for

            # base "default" is moca.meta2.adapt2 of the meta-init alone (support 800-807, validation 900-907)
            moca_base = base_for(moca_base, regime)
            result = adapt_portfolio2(load_policy2("default")[0], regime, adapt_steps, base=moca_base)
            chosen, extra = result.chosen, _adaptation_extras(result, moca_base)
            if chosen.name == "mpc":
                return chosen.module, extra
            return PolicyAgent2(chosen.module, {k: v.detach().double() for k, v in chosen.weights.items()}), extra
        raise SweepError(f"--policies: unknown policy {name!r}")


def _policy_metrics2(policy: Any, scenarios: Sequence[Any]) -> dict[str, list[float]]:
    """Roll a CLSC-2 policy out on each scenario (float64, one at a time, every raw action
    through the exact projection; violations recounted per period, window settlements
    included), as :func:`moca.baselines.peers.evaluate2` scores the peers."""
    import torch

    from moca.projection import episode_violations2, project2_batch
    from moca.sim2 import ScenarioBatch2, rollout2

    out: dict[str, list[float]] = {k: [] for k in ("cost", "emissions", "recycled_share", "lost_sales", "violations")}
    with torch.no_grad():
        for scenario in scenarios:
            batch = ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64)
            result = rollout2(batch, policy, project2_batch)
            executed, inputs, table = result.executed[0].numpy(), result.inputs[0].numpy(), scenario.regime_table()
            out["cost"].append(float(result.total_cost[0]))
            out["emissions"].append(float(result.emissions[0].sum()))
            out["recycled_share"].append(_recycled_share(executed[:, 2], executed[:, 3]))
            out["lost_sales"].append(float(result.lost[0].mean()))
            out["violations"].append(float(episode_violations2(executed, inputs, table, scenario.params)))
    return out


def _oracle_metrics2(scenarios: Sequence[Any], shadow_field: str | None) -> dict[str, list[float]]:
    """The CLSC-2 hindsight LP of each scenario: its cost, its plan's emissions (the
    simulator's coefficients), recycled share and lost sales, the shadow price."""
    from moca import clsc2
    from moca.oracle2 import shadow_prices2

    out: dict[str, list[float]] = {k: [] for k in ("cost", "emissions", "recycled_share", "lost_sales", "violations",
                                                  "shadow_price")}
    for scenario in scenarios:
        sp = shadow_prices2(scenario, fields=[shadow_field] if shadow_field else [])
        plan = sp.result.plan
        out["cost"].append(sp.oracle_cost)
        out["emissions"].append(float((plan @ clsc2.emission_coefficients(scenario.params)).sum()))
        out["recycled_share"].append(_recycled_share(plan[:, 2], plan[:, 3]))
        out["lost_sales"].append(float(np.mean(sp.result.lost)))
        out["violations"].append(0.0)  # the LP's rows are the hard constraints
        price = sp.prices.get(shadow_field) if shadow_field else None
        out["shadow_price"].append(math.nan if price is None else float(price))
    return out


#: The models a sweep can run.
MODELS: dict[str, SweepModel] = {"CLSC-1": CLSC1Sweep(), "CLSC-2": CLSC2Sweep()}


def get_model(name: str) -> SweepModel:
    if name not in MODELS:
        raise SweepError(f"--model {name!r}: unknown model (available: {', '.join(MODELS)})")
    return MODELS[name]


def _build(name: str, regime: Regime, adapt_steps: int, threshold_budget: int = 1200,
           moca_base: str = "default") -> tuple[Any, dict[str, Any]]:
    """The policy for ``regime``: the tuned threshold rule, MPC, or the shipped meta-init
    adapted ``adapt_steps`` steps (support seeds 800+, validation 900+: never test seeds);
    with ``moca_base`` other than ``default``, adapted through :func:`moca.portfolio.adapt_portfolio`
    (validation seeds 900-907 choose the candidate, as they choose the weights; ``caps``: there
    where the regime caps emissions, :func:`moca.portfolio.base_for`)."""
    if name == "threshold":
        from moca.baselines import tune_threshold

        return tune_threshold(regime, budget=threshold_budget), {}
    if name == "mpc":
        from moca.baselines import MPCPolicy

        return MPCPolicy(), {}
    if name == "moca":
        from moca import checkpoint
        from moca.policy import DeployedPolicy
        from moca.portfolio import adapt_portfolio, base_for

        # base "default" is moca.meta.adapt of the meta-init alone (support 800-807, validation 900-907)
        moca_base = base_for(moca_base, regime)
        portfolio = adapt_portfolio(checkpoint.load_policy("default")[0], regime, adapt_steps, base=moca_base,
                                    validation_size=8, keep_best=False)
        chosen = portfolio.chosen
        return DeployedPolicy(chosen.module, chosen.weights), _adaptation_extras(portfolio, moca_base)
    raise SweepError(f"--policies: unknown policy {name!r}")


def _adaptation_extras(result: Any, base: str) -> dict[str, Any]:
    """What a sweep reports of moca's adaptation at one value, either world: steps and seconds
    to its plateau (:func:`moca.metrics.adaptation_speed`), the seconds in all (the whole
    portfolio's choice where ``base`` ran one), the candidate deployed and the base used."""
    from moca.metrics import adaptation_speed

    curve = result.chosen.curve
    speed = adaptation_speed([c["score"] for c in curve], [c["seconds"] for c in curve])
    return {"adaptation_steps": int(speed.steps), "adaptation_seconds": float(speed.seconds),
            "adapt_seconds_total": float(curve[-1]["seconds"] if base == "default" else result.seconds),
            "candidate": result.chosen.name, "base": base}


def _policy_metrics(policy: Any, scenarios: Sequence[Any]) -> dict[str, list[float]]:
    """Roll ``policy`` out on each scenario (float64, deployment path, every action
    through the exact projection, one scenario at a time as ``moca evaluate`` does)."""
    import torch

    from moca import safety
    from moca.evaluation import TimedDecisions
    from moca.sim import ScenarioBatch, rollout

    out: dict[str, list[float]] = {k: [] for k in ("cost", "emissions", "recycled_share", "backlog", "violations")}
    timed = TimedDecisions(policy)
    with torch.no_grad():
        for scenario in scenarios:
            batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
            result = rollout(batch, timed, timed.projector)
            executed = result.executed[0].numpy()
            out["cost"].append(float(result.total_cost[0]))
            out["emissions"].append(float(result.emissions[0].sum()))
            out["recycled_share"].append(_recycled_share(executed[:, 1], executed[:, 2]))
            out["backlog"].append(float(result.stocks[0, :, 4].mean()))
            out["violations"].append(float(safety.episode_violations(result.executed, result.available, batch.regime,
                                                                      scenario.params)))
    return out


def _oracle_metrics(scenarios: Sequence[Any], shadow_field: str | None) -> dict[str, list[float]]:
    """The hindsight LP of each scenario (cold start, so each is independent of the
    others): its cost, its plan's emissions, recycled share and backlog, and the shadow
    price of ``shadow_field``."""
    import torch

    from moca.oracle import shadow_prices
    from moca.sim import emissions_of

    out: dict[str, list[float]] = {k: [] for k in ("cost", "emissions", "recycled_share", "backlog", "violations",
                                                  "shadow_price")}
    for scenario in scenarios:
        sp = shadow_prices(scenario, fields=[shadow_field] if shadow_field else [])
        plan = sp.result.plan
        out["cost"].append(sp.oracle_cost)
        out["emissions"].append(float(emissions_of(torch.as_tensor(plan), scenario.params).sum()))
        out["recycled_share"].append(_recycled_share(plan[:, 1], plan[:, 2]))
        out["backlog"].append(float(sp.result.stocks[:, 4].mean()))
        out["violations"].append(0.0)  # the LP's rows are the hard constraints
        price = sp.prices.get(shadow_field) if shadow_field else None
        out["shadow_price"].append(math.nan if price is None else float(price))
    return out


def _recycled_share(u_v: np.ndarray, u_r: np.ndarray) -> float:
    used = float(np.sum(u_v) + np.sum(u_r))
    return float(np.sum(u_r)) / used if used > 1e-9 else 0.0


def run_task(task: SweepTask) -> TaskResult:
    """What a worker runs (module level, so every backend can ship it by reference)."""
    return get_model(task.model).run(task)


# ----------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------


#: An oracle backlog more than this above its neutral-value backlog (share of mean demand per
#: period) flags the value: the rule itself makes demand go unmet.
UNMET_FLAG_SHARE = 0.05


@dataclass
class SweepPlan:
    """A validated sweep: model, field, values, base regime, policies, seeds."""

    model: SweepModel
    field: FieldSpec
    values: list[float]
    base: Regime
    policies: list[str]
    seeds: tuple[int, ...]
    adapt_steps: int = 5
    threshold_budget: int = 1200
    moca_base: str = "caps"

    def tasks(self) -> list[SweepTask]:
        """Every (value, policy) and the neutral value per policy (index -1), reusing a
        listed value equal to the neutral one. Slow policies first, so a pool's last
        tasks are short."""
        points = [(i, v) for i, v in enumerate(self.values)]
        if self.neutral_index() is None:
            points.append((-1, self.field.neutral))
        order = {"moca": 0, "mpc": 1, "threshold": 2, "oracle": 3}
        out = []
        for policy in sorted(self.policies, key=lambda p: order.get(p, 9)):
            for i, v in points:
                out.append(SweepTask(self.model.name, policy, i, self.model.regime_with(self.base, self.field.name, v),
                                     self.seeds, self.adapt_steps,
                                     self.field.name if policy == "oracle" else None, self.threshold_budget,
                                     self.moca_base))
        return out

    def neutral_index(self) -> int | None:
        for i, v in enumerate(self.values):
            if v == self.field.neutral:
                return i
        return None


def make_plan(model: str, field_name: str, values: str | Sequence[float], base: str | None = None,
              policies: str | Sequence[str] = ("oracle", "mpc", "threshold"), scenarios: int = 20,
              seed: int = 1000, adapt_steps: int = 5, threshold_budget: int = 1200,
              moca_base: str = "caps") -> SweepPlan:
    """Validate a sweep's input; every problem is a :class:`SweepError` (or
    :class:`moca.regime.RegimeError` for ``base``) naming the option."""
    world = get_model(model)
    spec = world.field(field_name)
    if isinstance(values, str):
        numbers = parse_values(values)
    else:
        if not all(map(is_finite_number, values)):
            raise SweepError(f"--values {list(values)!r}: every value must be a finite number")
        numbers = checked_values([float(v) for v in values], list(values))
    if not numbers:
        raise SweepError("--values: empty list")
    for v in numbers:
        spec.check(v)
    chosen = parse_policies(policies) if isinstance(policies, str) else parse_policies(",".join(policies))
    if not is_whole(scenarios):
        raise SweepError(f"--scenarios {scenarios!r}: a whole number of scenarios per value")
    if scenarios < 2:
        raise SweepError(f"--scenarios {scenarios!r}: need at least 2 scenarios for an interval")
    if scenarios > MOST_SCENARIOS:
        raise SweepError(f"--scenarios {scenarios}: at most {MOST_SCENARIOS} per value")
    if not is_whole(seed) or not 0 <= seed <= LARGEST_SEED:
        raise SweepError(f"--seed {seed!r}: a whole number in [0, {LARGEST_SEED}]")
    if seed + scenarios - 1 > LARGEST_SEED:  # (the seeds run seed .. seed + scenarios - 1)
        raise SweepError(f"--seed {seed} with --scenarios {scenarios}: the last seed is beyond {LARGEST_SEED}")
    if not is_whole(adapt_steps) or not 0 <= adapt_steps <= MOST_STEPS:
        raise SweepError(f"--adapt-steps {adapt_steps!r}: a whole number in [0, {MOST_STEPS}]")
    scenarios, seed, adapt_steps = int(scenarios), int(seed), int(adapt_steps)
    try:
        base_regime = world.base_regime(base)
    except RegimeError as err:
        raise SweepError(f"--base: {err}") from None
    if not is_whole(threshold_budget) or threshold_budget < 24:
        raise SweepError(f"threshold_budget {threshold_budget!r}: a whole number of candidate rules >= 24")
    from moca.portfolio import BASES, BASES_2, CAPS

    bases = (CAPS, *(BASES if world.name == "CLSC-1" else BASES_2))
    if moca_base not in bases:
        raise SweepError(f"--moca-base {moca_base!r}: not one of {', '.join(bases)} on {world.name}")
    plan = SweepPlan(world, spec, numbers, base_regime, chosen, tuple(range(seed, seed + scenarios)), adapt_steps,
                     threshold_budget, moca_base)
    plan.tasks()  # every value must make a valid regime with the base
    return plan


def run_sweep(plan: SweepPlan, backend: Backend | None = None,
              on_done: Callable[[int, int], None] | None = None, journal: str | Path | None = None,
              keep: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every task of ``plan`` on ``backend`` (default: a 2-process local pool) and
    aggregate. ``on_done(done, total)`` after each task. Returns the JSON-ready result.

    ``journal``: a JSON-lines file that gets each task's input and result the moment it
    finishes. A sweep that stops (a failed task, Ctrl-C, a lost machine) leaves it; the same
    sweep run again with it takes the tasks it holds instead of running them again (a task
    is a pure function of its input and of moca's code; records of other code, i.e. another
    checkout or version, or of other tasks are not used). ``keep``, if given, is called with
    the result while the journal is still locked (``moca sweep`` writes ``--json`` there);
    once it returns, the journal is removed (what it holds of other sweeps' tasks stays in
    it: a different sweep given the same file deleted a stopped one's finished tasks). Without
    ``keep`` the journal stays, and a rerun
    takes every task from it. ``resumed_tasks`` in the result says how many came from it.
    While the sweep runs (and ``keep`` keeps) its journal is locked: a second run with the
    same journal is refused (:class:`SweepError`) instead of doing the same tasks beside it,
    or taking them all from a journal about to go."""
    backend = backend or Backend("pool", workers=2)
    tasks = plan.tasks()
    writer = _open_journal(Path(journal)) if journal is not None else None
    done_with_journal = False
    try:
        text = writer.read() if writer is not None else ""
        kept, others = _read_journal(text, tasks)
        todo = [t for t in tasks if _task_key(t) not in kept]
        counter = {"done": len(kept)}
        if on_done and kept:
            on_done(counter["done"], len(tasks))
        if text and not text.endswith("\n"):
            writer.write("\n")  # a line cut short by a stop: the next record starts on a line of its own

        def progress(i: int, result: TaskResult) -> None:
            counter["done"] += 1
            if writer is not None:
                record = {"code": code_fingerprint(), "task": asdict(todo[i]), "result": asdict(result)}
                writer.write(json.dumps(record, default=_plain) + "\n")
                writer.flush()
            if on_done:
                on_done(counter["done"], len(tasks))

        started = time.perf_counter()
        with backend.session():
            results = backend.map(run_task, todo, progress) if todo else []
            described = backend.describe()
        results = list(kept.values()) + list(results)
        seconds = time.perf_counter() - started
        out = aggregate(plan, results)
        out["seconds"] = seconds
        out["task_seconds"] = float(sum(r.seconds for r in results))
        out["task_cpu_seconds"] = float(sum(r.cpu_seconds for r in results))
        out["tasks"] = len(tasks)
        out["resumed_tasks"] = len(kept)
        out["backend"] = described
        if keep is not None:
            keep(out)
            done_with_journal = True  # the result is kept: the journal goes while still locked
    finally:
        if writer is not None:
            try:
                writer.flush()
                if done_with_journal and others:
                    # Other sweeps' tasks stay; the file is replaced while still locked (a run
                    # opening it meanwhile locks the one at the path, see _open_journal). If that
                    # fails, the journal stays whole: the result is kept already.
                    try:
                        write_atomic(journal, "".join(others))
                    except OSError:
                        pass
                elif done_with_journal or os.fstat(writer.fileno()).st_size == 0:  # (no task finished: no file)
                    Path(journal).unlink(missing_ok=True)
            finally:
                writer.close()
    return out


def _open_journal(path: Path):
    """``path`` opened to read and append, locked for this run (POSIX ``flock``; the lock goes
    with the process, so a run that was killed leaves none)."""
    while True:
        handle = open(path, "a+", encoding="utf-8")
        handle.seek(0)
        if fcntl is None:
            return handle
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SweepError(f"{path} is in use by another run of this sweep (the same command with the same "
                             "--json is running): wait for it to finish, or write to another file") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # the run that held it removed it meanwhile: lock the file at the path now


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 of moca's installed files (code and shipped weights): a task's result is a
    function of them, and the version string stays the same from commit to commit."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _task_key(task: SweepTask | dict[str, Any]) -> str:
    """A task's identity: every input field, as JSON (a tuple and a list of seeds alike)."""
    return json.dumps(asdict(task) if isinstance(task, SweepTask) else task, sort_keys=True, default=_plain)


def _plain(value: Any) -> Any:
    """numpy's numbers and arrays as JSON's (a task's metrics may hold either)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _read_journal(text: str, tasks: Sequence[SweepTask]) -> tuple[dict[str, TaskResult], list[str]]:
    """A journal's ``text`` read once: the finished tasks that are tasks of this sweep, by key
    (records of other code skipped), and the lines that record tasks of other sweeps (another
    field, values or policies given the same ``--json``), each with its newline. A line cut
    short (the process stopped while writing it) is neither."""
    wanted = {_task_key(t) for t in tasks}
    kept: dict[str, TaskResult] = {}
    others: list[str] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
            key = _task_key(record["task"])
            if key not in wanted:
                others.append(line + "\n")
            elif record.get("code") == code_fingerprint():
                kept[key] = TaskResult(**record["result"])
        except (ValueError, KeyError, TypeError):
            continue
    return kept, others


def finished_in_journal(path: str | Path, plan: SweepPlan) -> int:
    """How many of ``plan``'s tasks the journal at ``path`` holds, finished and usable by a
    rerun (a line cut short by a stop, or a record of another sweep or code, is not)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return 0
    return len(_read_journal(text, plan.tasks())[0])


def interval(samples: Sequence[float], lowest: float | None = None) -> tuple[float, list[float]]:
    """Mean and 95% t-interval of the mean (NaN-free samples; one sample: [mean, mean]).

    ``lowest``: the least value the quantity can take (0 for a cost or emissions). A
    t-interval over a few scenarios with outages can reach below it; the interval is then
    cut there, which keeps its coverage (the mean cannot lie below) and never shows a
    negative cost."""
    from scipy import stats

    x = np.asarray(samples, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, [mean, mean]
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    low = mean - half if lowest is None else max(mean - half, lowest)
    return mean, [low, mean + half]


def aggregate(plan: SweepPlan, results: Sequence[TaskResult]) -> dict[str, Any]:
    """Per value and policy: means and 95% intervals (the JSON of ``moca sweep --json``)."""
    by_key = {(r.policy, r.index): r for r in results}
    neutral = plan.neutral_index()
    neutral_key = -1 if neutral is None else neutral
    unmet = plan.model.unmet
    policies: dict[str, Any] = {}
    for policy in plan.policies:
        entry: dict[str, Any] = {k: [] for k in ("cost", "cost_ci", "compliance_cost", "compliance_cost_ci",
                                                 "emissions", "emissions_ci", "recycled_share", unmet, "violations")}
        base = np.asarray(by_key[(policy, neutral_key)].metrics["cost"])
        for i in range(len(plan.values)):
            m = by_key[(policy, i)].metrics
            mean, ci = interval(m["cost"], lowest=0.0)  # EUR, no revenue term
            entry["cost"].append(mean)
            entry["cost_ci"].append(ci)
            mean, ci = interval(np.asarray(m["cost"]) - base)  # paired: same scenarios
            entry["compliance_cost"].append(mean)
            entry["compliance_cost_ci"].append(ci)
            mean, ci = interval(m["emissions"], lowest=0.0)
            entry["emissions"].append(mean)
            entry["emissions_ci"].append(ci)
            entry["recycled_share"].append(float(np.mean(m["recycled_share"])))
            entry[unmet].append(float(np.mean(m[unmet])))
            entry["violations"].append(int(round(sum(m["violations"]))))
        if policy == "moca":
            extras = [by_key[(policy, i)].extra for i in range(len(plan.values))]
            entry["adaptation_steps"] = [e["adaptation_steps"] for e in extras]
            entry["adaptation_seconds"] = [e["adaptation_seconds"] for e in extras]
            if plan.moca_base != "default":  # which candidate the portfolio deployed at each value, in how long
                entry["moca_base"] = plan.moca_base
                entry["candidate"] = [e["candidate"] for e in extras]
                entry["base"] = [e["base"] for e in extras]  # caps: auto or default, by the value's regime
                entry["adapt_seconds_total"] = [e["adapt_seconds_total"] for e in extras]
        if policy == "oracle":
            prices, cis = [], []
            for i in range(len(plan.values)):
                p = np.asarray(by_key[(policy, i)].metrics["shadow_price"])
                if np.isnan(p).any():
                    prices.append(None)
                    cis.append(None)
                else:
                    mean, ci = interval(p)
                    prices.append(mean)
                    cis.append(ci)
            entry["shadow_price"] = prices
            entry["shadow_price_ci"] = cis
            entry["shadow_price_unit"] = f"EUR per {plan.field.unit} of {plan.field.name} (tightening)"
            neutral_unmet = float(np.mean(by_key[(policy, neutral_key)].metrics[unmet]))
            limit = UNMET_FLAG_SHARE * plan.model.mean_demand()
            entry["demand_unmet_by_rule"] = [bool(v - neutral_unmet > limit) for v in entry[unmet]]
        policies[policy] = entry
    warnings = []
    if "oracle" in policies:
        o = policies["oracle"]
        neutral_unmet = float(np.mean(by_key[("oracle", neutral_key)].metrics[unmet]))
        for v, flagged, u in zip(plan.values, o["demand_unmet_by_rule"], o[unmet]):
            if flagged:
                warnings.append(f"{plan.field.name}={v:g}: the rule itself leaves demand unmet: even the hindsight "
                                f"optimum carries {u:,.0f} {plan.model.unmet_unit} of {unmet}, against "
                                f"{neutral_unmet:,.0f} without the rule")
    neutral_value = plan.field.neutral
    return {
        "model": plan.model.name, "field": plan.field.name, "unit": plan.field.unit, "values": list(plan.values),
        "neutral": neutral_value, "base": plan.base.model_dump(), "scenarios": len(plan.seeds),
        "seeds": [plan.seeds[0], plan.seeds[-1]], "unmet_metric": f"{unmet} ({plan.model.unmet_unit})",
        "policies": policies, "warnings": warnings,
    }


# ----------------------------------------------------------------------------------------
# The plot
# ----------------------------------------------------------------------------------------


def plot_sweep(result: dict[str, Any], path: str) -> None:
    """Cost of compliance and emissions against the field's value, one line per policy,
    shaded 95% intervals; values where the rule leaves demand unmet are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(result["values"], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=90)
    for name, entry in result["policies"].items():
        for ax, key, scale in ((axes[0], "compliance_cost", 1e-3), (axes[1], "emissions", 1e-3)):
            y = np.asarray(entry[key]) * scale
            ci = np.asarray(entry[f"{key}_ci"]) * scale
            line, = ax.plot(x, y, marker="o", markersize=3, label=name)
            ax.fill_between(x, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.2, linewidth=0)
    oracle = result["policies"].get("oracle")
    if oracle and any(oracle["demand_unmet_by_rule"]):
        flagged = x[np.asarray(oracle["demand_unmet_by_rule"])]
        for xv in flagged:
            axes[0].axvline(xv, color="grey", alpha=0.25, linewidth=4)
        axes[0].plot([], [], color="grey", alpha=0.4, linewidth=4, label="rule leaves demand unmet")
    label = f"{result['field']} ({result['unit']})"
    axes[0].set(xlabel=label, ylabel="cost of compliance (k EUR / episode)", title="cost of compliance")
    axes[1].set(xlabel=label, ylabel="emissions (t CO2 / episode)", title="emissions")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['model']}: {result['field']} sweep, {result['scenarios']} scenarios, 95% intervals",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata=figure_metadata(path))
    plt.close(fig)
