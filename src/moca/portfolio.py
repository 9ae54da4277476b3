"""moca's adaptation as a small portfolio: several starting points, one choice.

CLSC-2's two candidates (the adapted LSTM or the sampled MPC) are at the end of this
module (:func:`adapt_portfolio2`); what follows first is CLSC-1's three.

No starting point of moca's is best everywhere (README, "The lever"): the shipped
meta-init (``default``) adapts best on the seed tasks among the learned ones, the LSTM over
the mapped threshold rule (:class:`moca.regime_map.MappedPolicy`, base picked among the
map's and the nearest tunings, fresh head) off them, and the LSTM over the rolling LP
(:class:`moca.mpc_base.MPCBasePolicy`) wherever planning with the seasonal mean pays. So
adaptation tries all three:

* ``default``: the checkpoint adapted as ``moca adapt`` always did (:func:`moca.meta.adapt`);
* ``map``: the mapped policy, its base thresholds selected on the support scenarios
  (:func:`moca.regime_map.select_thresholds`), then the same gradient steps;
* ``mpc``: the LSTM over the LP, its safety stock selected on the support scenarios
  (:func:`moca.mpc_base.select_safety_stock`), then the same gradient steps;

each with the same number of steps on the *same* support scenarios (seeds 800+), scored
on the *same* validation scenarios (seeds 900+, never test seeds); the candidate with the
better validation score is deployed (the first of equals in the order above, on a tie).
``base="default"``, ``"map"`` or ``"mpc"`` runs one candidate only. The seconds reported are
the wall clock of the whole choice: oracle solves of the support and validation scenarios,
the base selections, the adaptations and their validation scoring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from moca.meta import SUPPORT_SEEDS, VALIDATION_SEEDS, OracleCache, adapt, first_seeds
from moca.mpc_base import mpc_policy, select_safety_stock
from moca.policy import InputSizeError, LSTMPolicy, Weights
from moca.regime import Regime, load_regime
from moca.regime_map import (RegimeMapError, ThresholdMap, learned_policy_on, load_map, mapped_policy,
                             select_thresholds)
from moca.scenario import Params, Scenario

BASES: tuple[str, ...] = ("auto", "default", "map", "mpc")
#: How progress bars name CLSC-1's candidates.
CANDIDATE_NAMES = {"default": "the checkpoint", "map": "the mapped rule", "mpc": "the LSTM over the LP"}
#: The base that follows the regime: :func:`base_for`.
CAPS = "caps"


def base_for(base: str, plan: Any) -> str:
    """The base to adapt by for ``plan`` (a regime or schedule): :data:`CAPS` is ``auto``, the
    whole portfolio, where an emission cap is in force at some period, and ``default``, the
    checkpoint alone, elsewhere; any other base is itself. Under a cap CLSC-1's rule does not
    model the cap, and the checkpoint alone stays far below the LP's candidate (0.87-0.97
    against 0.98-0.999 after 3 steps, caps of 4,000-30,000 kg: README, "The controller
    service"); elsewhere it adapts in a second or two and decides without an LP solve."""
    if base != CAPS:
        return base
    capped = any(regime.emission_cap is not None for regime in getattr(plan, "entries", (plan,)))
    return "auto" if capped else "default"


@dataclass
class Candidate:
    """One adapted starting point: its module and weights, its adaptation curve (validation
    scores per step), the validation score of the weights returned, and its seconds."""

    name: str
    module: Any  # an LSTMPolicy; on CLSC-2 an LSTMPolicy2, or the MPC2Policy of the "mpc" candidate
    weights: Weights
    curve: list[dict[str, Any]]
    validation_score: float
    seconds: float
    selection: dict[str, Any] | None = None


@dataclass
class PortfolioResult:
    chosen: Candidate
    candidates: dict[str, Candidate]
    seconds: float  # wall seconds of the whole choice (see the module docstring)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Plain JSON: the chosen candidate and each candidate's validation score and seconds
        (and, for an LSTM adapted from a re-tuned rule, which start its steps took)."""
        return {"chosen": self.chosen.name, "seconds": self.seconds, "notes": self.notes,
                "candidates": {n: _candidate_summary(c) for n, c in self.candidates.items()}}


def _candidate_summary(candidate: Candidate) -> dict[str, Any]:
    out = {"validation_score": candidate.validation_score, "seconds": candidate.seconds,
           "selected_step": _selected_step(candidate.curve)}
    if candidate.selection:
        out["base_selection"] = candidate.selection
    start = retuned_start(candidate.curve)
    if start is not None:
        out["start"] = start
    return out


def retuned_start(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Which start the steps took after a re-tuning (:func:`moca.meta2.adapt2`'s ``retune``):
    ``chosen``, the starts' ``validation_scores`` and the re-tuned ``thresholds``; None
    without a re-tuning."""
    first = curve[0] if curve else {}
    if "start" not in first:
        return None
    return {"chosen": first["start"], "validation_scores": first["start_scores"], "thresholds": first["thresholds"]}


def _selected_step(curve: list[dict[str, Any]]) -> int:
    return next((c["step"] for c in curve if c.get("selected")), curve[-1]["step"])


def _validation_score(curve: list[dict[str, Any]]) -> float:
    return float(next((c["score"] for c in curve if c.get("selected")), curve[-1]["score"]))


def map_usable(threshold_map: ThresholdMap, module: LSTMPolicy) -> bool:
    """The map was fitted for these params (a map of another chain would pick wrong thresholds)."""
    return threshold_map.params == module.params


def start_on_chain(directory: str, params: Params, base: str) -> tuple[LSTMPolicy, str, list[str]]:
    """The learned policy of checkpoint ``directory`` on the chain of ``params``, the base to
    adapt it by, and notes for the user.

    A checkpoint trained for another lead time or return lag has another number of inputs
    and cannot run on this chain. The LP candidate can: its head starts fresh, sized for the
    chain. So ``auto`` and ``mpc`` then adapt it alone (its module, untrained, is returned
    as the start) and say so; ``default`` and ``map`` fail with the checkpoint's error and
    that way out."""
    try:
        return learned_policy_on(directory, params), base, []
    except InputSizeError as err:
        if base not in ("auto", "mpc"):
            raise InputSizeError(f"{err}; or adapt moca's LSTM over the LP, which starts fresh on any chain: "
                                 "--base mpc", trained=err.trained) from None
        note = (f"the checkpoint was trained for lead_virgin={err.trained.lead_virgin}, lag_return="
                f"{err.trained.lag_return}: its inputs do not fit this chain, so the LSTM over the LP "
                "(fresh head) was adapted alone")
        return mpc_policy(params), "mpc", [note]


def adapt_portfolio(module: LSTMPolicy, regime: Regime | str, steps: int, base: str = "auto",
                    threshold_map: ThresholdMap | None = None, select: int = 16, support_size: int = 8,
                    validation_size: int = 16, cache: OracleCache | None = None, keep_best: bool = True,
                    support: Sequence[Scenario] | None = None, validation: Sequence[Scenario] | None = None,
                    notes: Sequence[str] = (),
                    progress: Callable[[str, int, int | None], None] | None = None) -> PortfolioResult:
    """Adapt the candidates of ``base`` (``auto``: all three; ``default``: ``module`` only;
    ``map``: the mapped policy only; ``mpc``: the LSTM over the LP only) ``steps`` steps to
    ``regime`` and choose by validation score. ``threshold_map``: the shipped map when None
    (only ``auto`` and ``map`` load it). ``auto`` leaves the map's candidate out, with a
    note, when the map was fitted for other params; ``map`` then fails with a
    :class:`RegimeMapError`. The LP's candidate runs on ``module``'s params, whatever they are.
    ``notes``: what the caller has to tell the user first (:func:`start_on_chain`'s).
    ``progress(what, done, total)``, if given, is told each candidate's phases (``total`` None
    where a phase is not counted), for a progress bar."""
    if base not in BASES:
        raise RegimeMapError(f"base: {base!r} is not one of {', '.join(BASES)}")
    regime = load_regime(regime)
    started = time.perf_counter()
    cache = cache or OracleCache(module.params)
    support = list(support) if support is not None else cache.scenarios(
        first_seeds(SUPPORT_SEEDS, support_size, "support_size"), regime)
    validation = list(validation) if validation is not None else cache.scenarios(
        first_seeds(VALIDATION_SEEDS, validation_size, "validation_size"), regime)
    notes = list(notes)
    names = ["default", "map", "mpc"] if base == "auto" else [base]
    if "map" in names:
        threshold_map = threshold_map if threshold_map is not None else load_map()[0]
        if not map_usable(threshold_map, module):
            if base == "map":
                raise RegimeMapError("base: the threshold map was fitted for other params than the policy's; "
                                     "use --base default")
            names.remove("map")
            notes.append("the threshold map was fitted for other params: the map candidate was left out")
    tell = progress or (lambda what, done, total: None)
    candidates: dict[str, Candidate] = {}
    for name in names:
        began = time.perf_counter()
        selection = None
        if name == "default":
            candidate_module = module
        elif name == "mpc":
            tell(f"{CANDIDATE_NAMES[name]}: picking its safety stock", 0, None)
            stock, selection = select_safety_stock(support)
            candidate_module = mpc_policy(module.params, stock)
        else:
            tell(f"{CANDIDATE_NAMES[name]}: picking its thresholds", 0, None)
            candidate_module = mapped_policy(threshold_map)
            chosen, info = select_thresholds(threshold_map, regime, support, select)
            candidate_module.pin(regime, chosen)
            selection = {**info, "thresholds": chosen.tolist()}
        phase = f"{CANDIDATE_NAMES[name]}: adapting (steps)"
        tell(phase, 0, steps)
        weights, curve = adapt(candidate_module, None, regime, steps, support=support, validation=validation,
                               cache=cache, keep_best=keep_best, stepped=lambda step: tell(phase, step, steps))
        candidates[name] = Candidate(name, candidate_module, weights, curve, _validation_score(curve),
                                     time.perf_counter() - began, selection)
    best = max(candidates.values(), key=lambda c: c.validation_score)  # the first of equals
    return PortfolioResult(best, candidates, time.perf_counter() - started, notes)


# --- CLSC-2: the adapted LSTM or the sampled MPC -----------------------------------------------
#
# CLSC-2 has no threshold map and no LSTM over an LP. Its second candidate is the peer itself:
# the sampled MPC (moca.baselines.mpc2), its safety stock picked on support scenarios. Measured
# over random regimes (docs/RANDOM-REGIMES.md, "Two candidates"), the adapted LSTM is ahead over the whole
# space and the MPC under high mandates, high carbon taxes and some tight caps. The MPC has no
# weights: it is deployed as a planner checkpoint (moca.baselines.mpc2.save_planner2).

#: ``--base`` of CLSC-2: both candidates, the checkpoint's LSTM only, the sampled MPC only.
BASES_2: tuple[str, ...] = ("auto", "default", "mpc")
#: Support scenarios the MPC's safety stock is picked on (each stock costs one 52-period run
#: with a two-stage LP per period, about 1-2 s a scenario; the LSTM's steps use all of them).
#: Two rank the stocks noisily, but shortlisting the best two and deciding on the validation
#: scenarios changed no choice for the better on the 24 random regimes of docs/RANDOM-REGIMES.md,
#: one for the worse, for about 10 s more a regime: measured and not kept ("Two candidates" there).
STOCK_SCENARIOS_2 = 2


def adapt_portfolio2(module: Any, plan: Any, steps: int, base: str = "auto", support_size: int = 8,
                     validation_size: int = 8, cache: Any = None, keep_best: bool = True,
                     stocks: Sequence[float] | None = None, retune: int = 0, retune_scenarios: int = 32,
                     progress: Callable[[str, int, int | None], None] | None = None) -> PortfolioResult:
    """Adapt CLSC-2's candidates of ``base`` to ``plan`` (a regime or schedule) and choose by
    validation score (the LSTM on a tie): ``default``, ``module`` (a
    :class:`moca.policy2.LSTMPolicy2`) adapted ``steps`` steps by :func:`moca.meta2.adapt2` on
    the support scenarios (seeds 800+); ``mpc``, the sampled MPC at the safety stock that
    scores best on the first :data:`STOCK_SCENARIOS_2` support scenarios
    (:func:`moca.baselines.mpc2.select_safety_stock2`). Both are scored on the same
    validation scenarios (seeds 900+). The MPC candidate's ``module`` is the
    :class:`moca.baselines.mpc2.MPC2Policy` and its weights are empty. ``stocks``: the safety
    stocks (units) to pick from (default :data:`moca.baselines.mpc2.SAFETY_STOCKS_2`);
    ``retune``, ``retune_scenarios``: the LSTM's re-tuned start (:func:`moca.meta2.adapt2`).
    ``progress(what, done, total)``, if given, is told what is being done (``total`` None where
    it is not counted), for a progress bar."""
    from moca.baselines.mpc2 import PLANNER_SAMPLES, SAFETY_STOCKS_2, MPC2Policy, select_safety_stock2
    from moca.meta2 import OracleCache2, adapt2

    if base not in BASES_2:
        raise RegimeMapError(f"base: {base!r} is not one of {', '.join(BASES_2)} on CLSC-2")
    started = time.perf_counter()
    cache = cache or OracleCache2(module.params)
    support = cache.scenarios(first_seeds(SUPPORT_SEEDS, support_size, "support_size"), plan)
    validation = cache.scenarios(first_seeds(VALIDATION_SEEDS, validation_size, "validation_size"), plan)
    candidates: dict[str, Candidate] = {}
    if base in ("auto", "default"):
        began = time.perf_counter()
        weights, curve = adapt2(module, None, plan, steps, support=support, validation=validation, cache=cache,
                                keep_best=keep_best, retune=retune, retune_scenarios=retune_scenarios,
                                progress=progress)
        candidates["default"] = Candidate("default", module, weights, curve, _validation_score(curve),
                                          time.perf_counter() - began)
    if base in ("auto", "mpc"):
        began = time.perf_counter()
        tell = progress or (lambda what, done, total: None)
        picked = support[:STOCK_SCENARIOS_2]
        tell("the sampled MPC: picking its safety stock", 0, None)
        stock, scores = select_safety_stock2(picked, cache.costs(picked),  # ([] is refused, not the default)
                                             tuple(SAFETY_STOCKS_2 if stocks is None else stocks))
        planner = MPC2Policy(safety_stock=stock, samples=PLANNER_SAMPLES)
        tell("the sampled MPC: scoring it on validation", 0, None)
        out = _planner_evaluation(planner, validation, cache.costs(validation))
        seconds = time.perf_counter() - began
        curve = [{"step": 0, "score": out["score"], "violations": out["violations"], "seconds": seconds,
                  "kept": True, "selected": True}]
        candidates["mpc"] = Candidate("mpc", planner, {}, curve, curve[0]["score"], seconds,
                                      {"safety_stock": stock, "support_scores": {str(k): v for k, v in scores.items()},
                                       "support_seeds": [SUPPORT_SEEDS[0], SUPPORT_SEEDS[len(picked) - 1]]})
    best = max(candidates.values(), key=lambda c: c.validation_score)  # the first of equals: the LSTM
    return PortfolioResult(best, candidates, time.perf_counter() - started)


def evaluate_candidate2(candidate: Candidate, scenarios: Sequence[Any], oracle_costs: Sequence[float]) -> dict[str, Any]:
    """Score one of :func:`adapt_portfolio2`'s candidates on ``scenarios`` as
    :func:`moca.policy2.evaluate_policy2` scores a learned policy (``score``, ``scores``,
    ``mean_cost``, ``violations``; every action through the exact projection), whichever it is."""
    if candidate.name == "mpc":
        return _planner_evaluation(candidate.module, scenarios, oracle_costs)
    from moca.policy2 import evaluate_policy2

    return evaluate_policy2(candidate.module, candidate.weights, scenarios, oracle_costs)


def _planner_evaluation(planner: Any, scenarios: Sequence[Any], oracle_costs: Sequence[float]) -> dict[str, Any]:
    """The sampled MPC scored by :func:`moca.baselines.peers.evaluate2`, in evaluate_policy2's keys."""
    from moca.baselines.peers import evaluate2

    out = evaluate2("mpc-sampled", planner, scenarios, oracle_costs)
    return {"score": float(out.scores.mean()), "scores": [float(x) for x in out.scores],
            "mean_cost": float(out.costs.mean()), "violations": int(out.violations)}


__all__ = ["BASES", "BASES_2", "CAPS", "Candidate", "PortfolioResult", "adapt_portfolio", "adapt_portfolio2",
           "base_for", "evaluate_candidate2", "map_usable", "retuned_start", "start_on_chain"]
