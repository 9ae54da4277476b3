"""CLSC-2 on the user's own chain: the learned policy on other parameters (``--params``)
and scoring on the user's scenario files (``--scenario``), for ``moca evaluate``,
``moca adapt`` and ``moca continual`` with ``--model CLSC-2``.

Why a checkpoint carries over to other parameters: :class:`moca.policy2.LSTMPolicy2`
reads the chain only through quantities normalised by its capacities, yields and means
(features in kg per production capacity, units per capacity; the base rule's thresholds
as shares of a box scaled by the capacities; the action scale ``S``), so its weights act
sensibly on a chain of other sizes. Only ``lead_virgin`` and ``lag_return`` change the
input size; :func:`moca.policy.with_params` refuses those with a one-line error.

The decision for a checkpoint trained on other parameters than the chain's: it is used,
with a warning naming the fields that differ (its weights were tuned for another chain;
adapting a few steps, or training on the chain, is what makes it the chain's). The
warning goes to stderr so that ``--json`` output stays machine-readable. CLSC-1's learned
policies are normalised the same way and give the same warning (:func:`other_params_warning`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from moca.regime import RegimeSchedule
from moca.scenario import Params, Params2, Scenario2, ScenarioError, load_scenario

#: How many differing fields a warning names before it says "and N more".
SHOWN_FIELDS = 4


def differing_fields(trained: Params | Params2, params: Params | Params2) -> list[str]:
    """``field=trained->chain`` for every parameter in which the chain differs (either world)."""
    return [f"{name}={getattr(trained, name)!r}->{getattr(params, name)!r}" for name in type(params).model_fields
            if getattr(trained, name) != getattr(params, name)]


def changed_fields(trained: Params | Params2, params: Params | Params2) -> str:
    """The first :data:`SHOWN_FIELDS` of :func:`differing_fields`, joined, with "and N more"
    beyond them ("" when none differ)."""
    changed = differing_fields(trained, params)
    more = f" and {len(changed) - SHOWN_FIELDS} more" if len(changed) > SHOWN_FIELDS else ""
    return ", ".join(changed[:SHOWN_FIELDS]) + more


def retarget2(module: Any, params: Params2, where: str, adapting: bool = False) -> tuple[Any, str | None]:
    """The policy ``module`` (a :class:`moca.policy2.LSTMPolicy2`) rebuilt for ``params``,
    and a one-line warning when its checkpoint ``where`` was trained on other parameters
    (None when they are the same). A change of ``lead_virgin`` or ``lag_return`` is a
    :class:`moca.policy.PolicyError`."""
    from moca.policy import with_params

    rebuilt = with_params(module, params)
    return rebuilt, other_params_warning(module.params, params, where, adapting)


def other_params_warning(trained: Any, params: Any, where: str, adapting: bool = False) -> str | None:
    """One line when checkpoint ``where`` was trained on ``trained`` parameters and runs on
    the chain of ``params`` (either world's), naming the fields that differ; None when they
    are the same. ``adapting``: the command takes steps on this chain already (so the line
    does not send the user to what they are running)."""
    changed = changed_fields(trained, params)
    if not changed:
        return None
    world = "--model CLSC-2 " if isinstance(params, Params2) else ""
    if adapting:
        return (f"checkpoint {where} was trained on other params ({changed}); its capacity-normalised features "
                "carry the weights over and the steps taken here adapt it to this chain; to train on it from the "
                f"start: moca train {world}--params FILE")
    return (f"checkpoint {where} was trained on other params ({changed}); "
            "its capacity-normalised features carry the weights over, but for this chain adapt it "
            f"(--adapt-steps, moca adapt {world}--params FILE) or train on it (moca train {world}--params FILE)")


def _same_plan(a: Any, b: Any) -> bool:
    """Whether two scenarios of one chain have the same rules in every period (CLSC-2: and
    the same accounting windows): compared period by period, so that two ways of writing one
    plan (an entry repeated, one starting past the horizon) are one plan."""
    if not np.array_equal(a.regime_table(), b.regime_table()):
        return False
    return not hasattr(a, "window_table") or np.array_equal(a.window_table(), b.window_table())


def load_scenario_files(paths: Sequence[Path], model: str | None) -> tuple[str, list[Any]]:
    """The scenarios of ``--scenario`` files and their world: each file's ``"model"``
    (absent = CLSC-1) must agree with the others and with ``model`` (``--model``, None:
    not given). Every file must have the same parameters and regime schedule (one chain
    and one plan per evaluation)."""
    scenarios = []
    for path in paths:
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as err:
            text = str(err)
            raise ScenarioError(text if text.startswith(str(path)) else f"--scenario {path}: {text}") from None
    worlds = ["CLSC-2" if isinstance(s, Scenario2) else "CLSC-1" for s in scenarios]
    chosen = model or worlds[0]
    for path, world in zip(paths, worlds):
        if world != chosen:
            other = f"not {chosen} (--model {chosen})" if model else f"but {paths[0]} is {chosen}"
            raise ScenarioError(f"--scenario {path}: model={world!r} (the file's \"model\"), {other}; "
                                "score one world at a time")
    for path, scenario in zip(paths[1:], scenarios[1:]):
        if scenario.params != scenarios[0].params:
            changed = differing_fields(scenarios[0].params, scenario.params)[:1] if chosen == "CLSC-2" else []
            raise ScenarioError(f"--scenario {path}: params differ from {paths[0]}'s"
                                + (f" ({changed[0]})" if changed else "")
                                + "; score the files of one chain at a time")
        # (a policy is prepared for the first file's plan: the rule tuned, the MPC's stock
        # re-picked and its plan read, the checkpoint adapted; the others were scored with it,
        # and the result hung on the files' order: 0.936 or 0.972 for the same two files)
        if not _same_plan(scenario, scenarios[0]):
            raise ScenarioError(f"--scenario {path}: its regime schedule differs from {paths[0]}'s, and a policy is "
                                "prepared for one plan (tuned, re-picked or adapted for it); score the files of one "
                                "plan at a time")
    return chosen, scenarios


def evaluate_learned_on2(where: str, tests: Sequence[Scenario2], plan: RegimeSchedule, adapt_steps: int = 0,
                         warn=None, cache: Any = None, base: str = "default", retune: int = 0,
                         progress: Any = None) -> dict[str, Any]:
    """Score the CLSC-2 policy checkpoint ``where`` (``"default"``: the shipped meta-init)
    on ``tests`` (one chain: their common params), after ``adapt_steps`` adaptation steps
    on support scenarios of ``plan`` drawn on that chain (seeds 800+, the weights of the
    best validation score over steps 0..K, validation seeds 900+). With ``adapt_steps`` and
    ``base`` ``auto`` or ``mpc``, through moca adapt's portfolio
    (:func:`moca.portfolio.adapt_portfolio2`): the candidate deployed is scored, and
    ``"portfolio"`` says which; ``retune``: the LSTM's re-tuned start (threshold candidates,
    :func:`moca.meta2.adapt2`). ``warn`` receives the warning of :func:`retarget2`; ``cache``
    (a :class:`moca.meta2.OracleCache2` of that chain) keeps the oracle costs of a caller's
    run; ``progress`` goes to the portfolio's adaptation (a progress bar's callback).
    :func:`moca.experiment2.evaluate_learned2` is this on the checkpoint's own chain."""
    from moca.meta2 import OracleCache2, load_policy2
    from moca.policy2 import MODEL, evaluate_policy2
    from moca.portfolio import adapt_portfolio2, evaluate_candidate2

    module, meta = load_policy2(where)
    module, warning = retarget2(module, tests[0].params, str(where), adapting=adapt_steps > 0)
    if warning and warn is not None:
        warn(warning)
    cache = cache if cache is not None else OracleCache2(module.params)
    oracle = cache.costs(tests)
    if adapt_steps:
        result = adapt_portfolio2(module, plan, adapt_steps, base=base, cache=cache, retune=retune,
                                  progress=progress)
        seconds, portfolio = result.seconds, result.summary()
        out = evaluate_candidate2(result.chosen, tests, oracle)
    else:
        seconds, portfolio = 0.0, None
        out = evaluate_policy2(module, None, tests, oracle)
    return {"policy": str(where), "model": MODEL, "score": out["score"], "scores": out["scores"],
            "mean_cost": out["mean_cost"], "mean_oracle_cost": float(np.mean(oracle)),
            "violations": out["violations"], "adapt_steps": adapt_steps, "adaptation_seconds": seconds,
            "retune": retune if adapt_steps else 0,
            "checkpoint_command": meta.get("command"), **({"portfolio": portfolio} if portfolio else {})}


__all__ = ["differing_fields", "evaluate_learned_on2", "load_scenario_files", "retarget2"]
