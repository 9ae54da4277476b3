"""Meta-training and adaptation of :class:`moca.policy2.LSTMPolicy2` on CLSC-2.

The algorithms are :mod:`moca.meta`'s (:class:`moca.meta.MetaLearner`: MAML, FOMAML,
Reptile; :func:`moca.meta.clipped_sgd` for the inner and the adaptation steps); this
module supplies CLSC-2's task distribution, scenarios, oracle (:func:`moca.oracle2.solve_oracle2`)
and losses (:func:`moca.policy2.episode_losses2`). Seeds as CLSC-1's: meta-training
0-799, support 800-899, validation 900-999, never the test seeds (1000+).

Task distribution: :func:`moca.meta.sample_task`'s regimes (named-regime neighbourhoods and
independent rules over the spec's ranges) with an accounting window W: 52 (the seed
tasks' yearly settlement) half of the time, else uniform over 1..104.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pydantic import ConfigDict, Field, field_validator

from moca.meta import (META_SEEDS, SUPPORT_SEEDS, VALIDATION_SEEDS, MetaConfig, MetaError, MetaLearner,
                       adapt_loop, as_config, check_adapt_arguments, check_cache, check_scenarios, first_seeds,
                       sample_task, step_reporter)
from moca.evaluation import scorable
from moca.policy import PolicyConfig, Weights
from moca.policy2 import MODEL, LSTMPolicy2, episode_losses2, evaluate_policy2
from moca.regime import MAX_WINDOW, WINDOW_FIELD, Regime, RegimeSchedule, load_regime
from moca.scenario import DEFAULT_PARAMS_2, Params, Params2, SERIES_2, Scenario2, draw_scenario2, validation_reason
from moca.sim2 import ScenarioBatch2

#: Where the shipped CLSC-2 meta-init lives (``--policy default`` with ``--model CLSC-2``).
SHIPPED_2 = Path(__file__).parent / "data" / "default-clsc2"


def sample_task2(rng: np.random.Generator, named_share: float = 0.3) -> Regime:
    """A random CLSC-2 regime for meta-training (see the module docstring)."""
    regime = sample_task(rng, Params(), named_share)
    window = 52 if rng.random() < 0.5 else int(rng.integers(1, MAX_WINDOW + 1))
    return Regime(**{**regime.model_dump(), WINDOW_FIELD: window})


class OracleCache2:
    """Scenarios and their hindsight costs (EUR) per (seed, regime) within a run."""

    def __init__(self, params: Params2 = DEFAULT_PARAMS_2):
        self.params = params
        self._costs: dict[tuple, float] = {}

    def scenarios(self, seeds: Sequence[int], plan: Regime | RegimeSchedule) -> list[Scenario2]:
        return [draw_scenario2(int(s), plan, self.params) for s in seeds]

    def costs(self, scenarios: Sequence[Scenario2]) -> np.ndarray:
        from moca.oracle2 import solve_oracle2

        out = np.empty(len(scenarios))
        for i, s in enumerate(scenarios):
            # Everything the LP reads: the params (another chain's scenario of the same draws
            # has another optimum) and every series, the demand history too (the first L_r
            # periods' returns are its sales): a stale cost scored a scenario without a word.
            key = (s.params, *(getattr(s, name).tobytes() for name in SERIES_2),
                   s.regime_table().tobytes(), s.window_table().tobytes())
            if key not in self._costs:
                self._costs[key] = solve_oracle2(s).oracle_cost
            out[i] = self._costs[key]
        return scorable(out)

    def batch(self, plans: Sequence[Regime], seeds: Sequence[Sequence[int]]) -> tuple[ScenarioBatch2, torch.Tensor]:
        """The scenarios of ``seeds[i]`` under ``plans[i]``, task after task, as one float32
        batch, and their oracle costs."""
        scenarios = [s for plan, task_seeds in zip(plans, seeds) for s in self.scenarios(task_seeds, plan)]
        return ScenarioBatch2.from_scenarios(scenarios), torch.as_tensor(self.costs(scenarios), dtype=torch.float32)


class MetaConfig2(MetaConfig):
    """:class:`moca.meta.MetaConfig` for CLSC-2 (its parameters; longer default budget:
    a CLSC-2 meta step costs ~2 s here, and the 15-minute limit of issue 10 holds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(MODEL, pattern="^CLSC-2$")
    params: Params2 = DEFAULT_PARAMS_2  # type: ignore[assignment]
    meta_steps: int = Field(300, ge=1)
    # Twice CLSC-1's rate: at 1e-3 the validation score was still climbing after 240 steps
    # (0.949 against 0.955 at 2e-3, same seed, same validation tasks).
    outer_lr: float = Field(2e-3, gt=0, le=1, description="Adam rate of the meta weights")
    max_seconds: float | None = Field(600.0, gt=0, description="stop early past this wall time (None: never)")
    rule_lr_scale: float = Field(30.0, gt=0, le=1000, description="outer rate of the base rule's parameters / outer_lr")
    keep_best: bool = Field(True, description="end on the weights of the best validation score (needs validate_every)")

    @field_validator("policy")
    @classmethod
    def _no_rule_safety_stock(cls, policy: PolicyConfig) -> PolicyConfig:
        # CLSC-2's base rule learns its safety stocks (the thresholds s_P, s_V): a value here
        # would be accepted and change nothing.
        if policy.safety_stock != PolicyConfig().safety_stock:
            raise ValueError(f"policy.safety_stock={policy.safety_stock:g} is CLSC-1's; CLSC-2's base rule learns its "
                             "safety stocks (thresholds safety_product, safety_virgin): leave it out")
        return policy


def task_losses2(module: LSTMPolicy2, learners, batch: ScenarioBatch2, oracle: torch.Tensor, group: int,
                 correction_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Each task's mean loss over its ``group`` scenarios (rows task after task), and the
    batch's mean score and correction."""
    per, ratio, correction = episode_losses2(module, [l.weights for l in learners], batch, oracle,
                                             [group] * len(learners), correction_weight)
    return per.view(len(learners), group).mean(1), {"score": float((1.0 / ratio.detach()).mean()),
                                                    "correction": float(correction.detach().mean())}


def meta_train2(config: MetaConfig2 = MetaConfig2(), progress: Any = None, *,
                backend: Any = None, stop: Callable[[], bool] | None = None,
                module: LSTMPolicy2 | None = None) -> tuple[LSTMPolicy2, dict[str, Any]]:
    """Meta-train a CLSC-2 initialisation (as :func:`moca.meta.meta_train`: per step
    ``tasks_per_step`` regimes, inner steps on support scenarios, the outer step from the
    query scenarios or, for Reptile, the learners' displacement, plus ``zero_shot_weight``
    times the loss before adaptation). ``backend``: a started :class:`moca.cluster.Backend`
    (e.g. Ray) to run each step's tasks on workers (:mod:`moca.meta_dist`); the draws, the
    Adam step (both parameter groups) and the validation stay here, so the weights are the
    local run's to round-off. ``stop``: asked after every meta step (a
    :class:`moca.meta.StopRequest`); True ends the training there (``history["interrupted"]``).
    ``module``: meta-train these weights instead of a fresh ``LSTMPolicy2`` (e.g. the shipped
    meta-init, ``load_policy2("default")[0]``, to train it further); trained in place; its
    params and policy config must be the config's. ``progress``: a callable ``(step, total,
    info)`` or a ``rich.progress.Progress``, as for ``meta_train``.
    Returns the module and the history."""
    config = as_config(config, MetaConfig2)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if module is None:
        module = LSTMPolicy2(config.params, config.policy)
    elif not isinstance(module, LSTMPolicy2):
        raise MetaError(f"module: expected a CLSC-2 policy (LSTMPolicy2), got {type(module).__name__}")
    elif module.params != config.params or module.config != config.policy:
        raise MetaError("module: its params or policy config differ from config.params / config.policy")
    elif backend is not None and not all(p.requires_grad for p in module.parameters()):
        raise MetaError("module: a module with frozen parameters meta-trains here only (backend=None): the workers "
                        "rebuild an LSTMPolicy2 from the weights, every parameter trainable")
    elif backend is not None and type(module) is not LSTMPolicy2:  # (the workers build an LSTMPolicy2)
        raise MetaError(f"module: a {type(module).__name__} meta-trains here only (backend=None): the workers "
                        "rebuild an LSTMPolicy2 from the weights")
    meta = MetaLearner(module, config.algorithm, config.inner_lr, config.inner_steps, config.outer_lr,
                       config.inner_clip, config.zero_shot_weight)
    if config.rule_lr_scale != 1.0:  # the thresholds' logits move ~outer_lr per step: too slow at 1e-3
        rule = [p for n, p in module.named_parameters() if n.startswith("rule_")]
        rest = [p for n, p in module.named_parameters() if not n.startswith("rule_")]
        meta.optimizer = torch.optim.Adam([{"params": rest}, {"params": rule,
                                                               "lr": config.outer_lr * config.rule_lr_scale}],
                                          lr=config.outer_lr)
    cache = OracleCache2(config.params)
    history: dict[str, Any] = {"config": config.model_dump(mode="json"), "steps": [], "validation": [],
                               "stopped_early": False}
    validate = _validator(config, cache) if config.validate_every else None
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    if validate is not None:
        history["validation"].append({"step": 0, "score": validate(module)})
        best = (history["validation"][0]["score"], 0, {k: v.detach().clone() for k, v in module.state_dict().items()})
    tell = step_reporter(progress, config.meta_steps)
    started = time.perf_counter()
    for step in range(1, config.meta_steps + 1):
        tasks = [sample_task2(rng, config.named_share) for _ in range(config.tasks_per_step)]
        seeds = [rng.choice(len(META_SEEDS), config.support_size + config.query_size, replace=False) + META_SEEDS.start
                 for _ in tasks]
        if backend is not None:  # the tasks' inner loops on workers (moca.meta_dist)
            from moca.meta_dist import distributed_step

            distributed, grad_norm = distributed_step(meta, config, tasks, seeds, backend)
            entry: dict[str, Any] = {"step": step, **distributed}
        else:
            support, support_oracle = cache.batch(tasks, [s[:config.support_size] for s in seeds])
            learners = [meta.clone() for _ in tasks]
            first = None  # the support's score and correction before adaptation (the last step's were kept)
            for _ in range(config.inner_steps):
                losses, info = task_losses2(module, learners, support, support_oracle, config.support_size,
                                            config.correction_weight)
                meta.adapt_all(learners, losses.sum())
                first = first or info
            entry = {"step": step, "support_score": first["score"], "correction": first["correction"]}
            if config.algorithm == "reptile":
                grad_norm = meta.outer_step(learners)
            else:
                query, query_oracle = cache.batch(tasks, [s[config.support_size:] for s in seeds])
                losses, query_info = task_losses2(module, learners, query, query_oracle, config.query_size,
                                                  config.correction_weight)
                grad_norm = meta.outer_step(learners, losses.mean())
                entry["query_score"] = query_info["score"]
        entry["meta_grad_norm"] = grad_norm
        entry["seconds"] = time.perf_counter() - started
        out_of_time = config.max_seconds is not None and entry["seconds"] > config.max_seconds
        asked = not out_of_time and stop is not None and stop()
        # A stop validates the weights it ends on, so that keep_best chooses among them too
        # (an early stop kept step 0's weights and called them the steps done).
        if validate is not None and (step % config.validate_every == 0 or step == config.meta_steps
                                     or out_of_time or asked):
            history["validation"].append({"step": step, "score": validate(module)})
            entry["validation_score"] = history["validation"][-1]["score"]
            if best is not None and entry["validation_score"] > best[0]:
                best = (entry["validation_score"], step, {k: v.detach().clone() for k, v in module.state_dict().items()})
        history["steps"].append(entry)
        tell(step, entry)
        if out_of_time:
            history["stopped_early"] = True
            break
        if asked:
            history["stopped_early"] = history["interrupted"] = True
            break
    history["wall_seconds"] = time.perf_counter() - started
    history["oracle_solves"] = len(cache._costs)
    if config.keep_best and best is not None:
        # The validation curve is not monotone (a meta step can overshoot for the regimes it
        # did not draw): early stopping on the held-out validation tasks, never the test seeds.
        module.load_state_dict(best[2])
        history["selected_step"] = best[1]
    return module, history


def _validator(config: MetaConfig2, cache: OracleCache2) -> Callable[[LSTMPolicy2], float]:
    """Mean zero-shot score on fixed random regimes (own seed stream, validation seeds)."""
    rng = np.random.default_rng([config.seed, 1])
    tasks = [sample_task2(rng, config.named_share) for _ in range(config.validation_tasks)]
    scenarios = [s for regime in tasks for s in cache.scenarios(VALIDATION_SEEDS[:2], regime)]
    oracle = cache.costs(scenarios)
    return lambda module: evaluate_policy2(module, None, scenarios, oracle)["score"]


#: The re-tuning ``moca adapt --model CLSC-2`` runs first, unless told otherwise, on a plan
#: that changes a rule within the year: the threshold peer's 1,500 candidates (docs/RANDOM-REGIMES.md,
#: "The default re-tuning": on 36 tax-rise plans it took what moca deploys from 0.0057 to 0.0006
#: behind the best re-tuned peer on the mean; on regimes held all year it added nothing, so
#: there it is off).
RETUNE_ON_CHANGES = 1500


def default_retune(plan: Regime | RegimeSchedule, horizon: int, base: str = "auto") -> int:
    """Threshold candidates ``moca adapt --model CLSC-2`` re-tunes first when ``--retune``
    is not given: :data:`RETUNE_ON_CHANGES` where a rule changes before period ``horizon``,
    0 on a regime held all year, and 0 for ``base`` ``mpc`` (it adapts no LSTM, so there is
    no start to re-tune). Why only there: the meta-init was trained on regimes held all year,
    so a plan with a change is where its start is furthest from a re-tuned rule's."""
    if isinstance(plan, Regime) or base == "mpc":
        return 0
    rules = [entry.regime() for entry in plan.entries if entry.start < horizon]
    return RETUNE_ON_CHANGES if any(a != b for a, b in zip(rules, rules[1:])) else 0


def adapt2(module: LSTMPolicy2, weights: Weights | None, regime: Regime | RegimeSchedule | str, steps: int = 3,
           support: Sequence[Scenario2] | None = None, validation: Sequence[Scenario2] | None = None,
           lr: float = 1.0, clip: float | None = 0.03, safeguard: bool = True, correction_weight: float = 0.1,
           support_size: int = 8, validation_size: int = 8, cache: OracleCache2 | None = None,
           keep_best: bool = False, retune: int = 0, retune_scenarios: int = 32,
           progress: Callable[[str, int, int | None], None] | None = None
           ) -> tuple[Weights, list[dict[str, Any]]]:
    """``steps`` adaptation steps on CLSC-2 support scenarios of ``regime`` (seeds 800+),
    scored after each on validation scenarios (seeds 900+): as :func:`moca.meta.adapt`
    (``safeguard``: a step is kept only if it lowers the support loss, else undone and the
    rate halved; ``keep_best``: the weights of the best validation score over 0..steps).

    ``retune`` > 0: first re-tune the base rule's seven thresholds for the plan as the
    threshold peer does (:func:`moca.baselines.threshold2.tune_threshold2`, ``retune``
    candidates on ``retune_scenarios`` training-stream scenarios; the peer uses 1,500 on 32),
    and start the steps from whichever scores highest on validation of the given weights
    (``checkpoint``), :func:`threshold_start` on the re-tuned thresholds (``re-tuned
    thresholds``) and that with the residual off (``re-tuned rule``, :func:`without_residual`:
    the threshold peer itself); on a tie the first of them in that order. Step 0 of the curve
    says which (``start``), the three scores (``start_scores``) and the thresholds; its
    ``seconds``, counted in every later step's, are the tuning's and the scorings'. Returns
    the weights (detached) and the curve. ``progress(what, done, total)``, if given, is told
    the candidates re-tuned so far and the steps taken so far (for a progress bar)."""
    check_adapt_arguments(module, weights, steps, lr, clip, correction_weight)
    if retune < 0 or (retune > 0 and retune_scenarios < 1):
        raise MetaError(f"retune: {retune!r} candidates on {retune_scenarios!r} scenarios; "
                        "candidates must be >= 0 and scenarios >= 1")
    plan = regime if isinstance(regime, (Regime, RegimeSchedule)) else load_regime(regime, model=MODEL)
    cache = check_cache(cache, module.params, OracleCache2)
    support = check_scenarios(support, module.params, Scenario2, "support") if support is not None else \
        cache.scenarios(first_seeds(SUPPORT_SEEDS, support_size, "support_size"), plan)
    validation = check_scenarios(validation, module.params, Scenario2, "validation") if validation is not None \
        else cache.scenarios(first_seeds(VALIDATION_SEEDS, validation_size, "validation_size"), plan)
    valid_oracle = cache.costs(validation)
    start = weights if weights is not None else dict(module.named_parameters())
    current = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}

    tell = progress or (lambda what, done, total: None)

    def score(w: Weights) -> dict[str, Any]:
        out = evaluate_policy2(module, w, validation, valid_oracle)
        out.pop("scores")
        return out

    began = time.perf_counter()
    scored_start = score(current)
    curve = [{"step": 0, "seconds": 0.0, "kept": True, "support_loss": math.nan, **scored_start}]
    if retune > 0:
        from moca.baselines.threshold2 import tune_threshold2

        # the budget bounds the search from above (it stops sooner once its steps are small;
        # a budget below one generation still runs one), so the bar ends where the search did
        evaluated = [0]

        def tuning(done: int) -> None:
            evaluated[0] = done
            tell("re-tuning the rule (candidates)", done, max(done, retune))

        tell("re-tuning the rule (candidates)", 0, retune)
        tuned = tune_threshold2(plan, module.params, train_seeds=retune_scenarios, budget=retune, progress=tuning)
        tell("re-tuning the rule (candidates)", evaluated[0], evaluated[0] or retune)
        retuned = threshold_start(module, current, tuned.thresholds)
        # The re-tuned rule alone (the residual's head zeroed) is the threshold peer itself:
        # where the learned residual costs more than it earns (under a carbon tax above about
        # 1,000 EUR/t it did), moca can start from, and keep, what the peer would deploy.
        starts = {"checkpoint": current, "re-tuned thresholds": retuned, "re-tuned rule": without_residual(retuned)}
        scored = {name: scored_start if name == "checkpoint" else score(w) for name, w in starts.items()}
        chosen = max(starts, key=lambda name: scored[name]["score"])  # the first of equals: checkpoint first
        current, scored_start = starts[chosen], scored[chosen]
        curve[0] = {**curve[0], **scored_start}
        curve[0].update(start=chosen, start_scores={name: out["score"] for name, out in scored.items()},
                        seconds=time.perf_counter() - began, thresholds=tuned.as_dict())
    else:
        began = time.perf_counter()
    batch = ScenarioBatch2.from_scenarios(support)
    oracle = torch.as_tensor(cache.costs(support), dtype=torch.float32)

    def loss_and_grad(w: Weights) -> tuple[float, Weights]:
        loss = episode_losses2(module, w, batch, oracle, correction_weight=correction_weight)[0].mean()
        return float(loss.detach()), dict(zip(w, torch.autograd.grad(loss, list(w.values()))))

    tell("adapting (steps)", 0, steps)
    return adapt_loop(current, curve, began, loss_and_grad, score, steps, lr, clip, safeguard, keep_best,
                      scored=scored_start, stepped=lambda step: tell("adapting (steps)", step, steps))


#: Where a re-tuned threshold on its search box's edge is put, as a share of the box in
#: from the edge: LSTMPolicy2 maps a logit through a sigmoid, and the edge itself would need
#: an infinite logit.
THRESHOLD_EDGE = 1e-3


def threshold_start(module: LSTMPolicy2, weights: Weights, thresholds: Any) -> Weights:
    """``weights`` (leaves that require grad) with the base rule's thresholds held at
    ``thresholds`` (``[7]``, the rule's units, order of
    :data:`moca.baselines.threshold2.THRESHOLD2_NAMES`) under every regime: ``rule_bias``
    the logit of their share of the box and ``rule_regime`` zero; the LSTM and its head as
    given. With a zero head it acts as the threshold rule at those thresholds."""
    low, span = module.rule_low.double(), module.rule_span.double()
    share = ((torch.as_tensor(np.asarray(thresholds, dtype=np.float64)) - low) / span).clamp(
        THRESHOLD_EDGE, 1.0 - THRESHOLD_EDGE)
    out = {k: v.detach().clone() for k, v in weights.items()}
    out["rule_bias"] = torch.logit(share).to(out["rule_bias"].dtype)
    out["rule_regime.weight"] = torch.zeros_like(out["rule_regime.weight"])
    out["rule_regime.bias"] = torch.zeros_like(out["rule_regime.bias"])
    return {k: v.requires_grad_(True) for k, v in out.items()}


def without_residual(weights: Weights) -> Weights:
    """``weights`` (leaves that require grad) with the residual's head zeroed: the policy then
    acts as its base rule alone (at the thresholds the weights give it)."""
    return {k: (torch.zeros_like(v) if k.startswith("head.") else v.detach().clone()).requires_grad_(True)
            for k, v in weights.items()}


# --- checkpoints ----------------------------------------------------------------------------


def save_policy2(directory: str | Path, module: LSTMPolicy2, metadata: dict[str, Any]) -> Path:
    """Save a CLSC-2 policy (safetensors + JSON) with its model, params and config."""
    from moca import checkpoint

    if not isinstance(module, LSTMPolicy2):  # (a CLSC-1 policy was written labelled CLSC-2, and never loaded back)
        raise checkpoint.CheckpointError(f"module: a {type(module).__name__}, not a CLSC-2 LSTMPolicy2 (CLSC-1 "
                                         "policies: moca.checkpoint.save_policy)")
    meta = checkpoint.merged({"kind": "lstm-policy", "model": MODEL, "params": module.params.model_dump(mode="json"),
                              "policy": module.config.model_dump(mode="json")}, metadata)
    return checkpoint.save(directory, dict(module.state_dict()), meta)


def load_policy2(directory: str | Path) -> tuple[LSTMPolicy2, dict[str, Any]]:
    """Read a CLSC-2 policy checkpoint (``"default"``: the shipped meta-init). A CLSC-1
    checkpoint, or anything else that is not a CLSC-2 policy, is a
    :class:`moca.checkpoint.CheckpointError` naming it."""
    from pydantic import ValidationError

    from moca import checkpoint
    from moca.policy import PolicyConfig

    where = SHIPPED_2 if str(directory) == "default" else directory
    weights, meta = checkpoint.load(where)
    path = checkpoint.resolve(where)
    if meta.get("kind") != "lstm-policy" or meta.get("model", "CLSC-1") != MODEL:
        raise checkpoint.refuse(path, meta, MODEL, "lstm-policy")
    params, config = checkpoint.blocks(meta, path)
    try:
        module = LSTMPolicy2(Params2(**params), PolicyConfig(**config))
    except (ValidationError, TypeError) as err:
        raise checkpoint.CheckpointError(f"checkpoint {path}: invalid params/policy "
                                         f"({validation_reason(err)})") from None
    checkpoint.check_compatible(weights, module, path)
    module.load_state_dict(weights)
    return module, meta


__all__ = ["MetaConfig2", "OracleCache2", "SHIPPED_2", "adapt2", "load_policy2", "meta_train2", "sample_task2",
           "save_policy2", "task_losses2", "threshold_start", "without_residual"]
