"""The seed experiment on CLSC-2 (``moca run --model CLSC-2``), continual learning of a
CLSC-2 regime sequence (``moca continual --model CLSC-2``) and scoring of a CLSC-2 policy
checkpoint (``moca evaluate --model CLSC-2 --policy DIR|default``).

The continual learner, its methods (EWC, GEM-style projection, meta-init) and the metrics
are CLSC-1's (:mod:`moca.continual`, :mod:`moca.metrics`); a CLSC-2 regime becomes one of
its tasks through :class:`PolicyTask2`. Seeds as CLSC-1's: per-regime training 800+,
validation 900+, test 1000+ (every score in R and the tables).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from moca.continual import ContinualLearner, LearnStats, Task, method_spec
from moca.experiment import ExperimentConfig, ExperimentError, Scorer, check_run_inputs, machine
from moca.files import write_folder
from moca.meta import SUPPORT_SEEDS, VALIDATION_SEEDS, first_seeds
from moca.meta2 import OracleCache2, load_policy2
from moca.metrics import adaptation_speed, continual_metrics
from moca.policy import Weights
from moca.policy2 import MODEL, LSTMPolicy2, episode_losses2, evaluate_policy2
from moca.regime import TASKS_2, Regime, RegimeSchedule
from moca.scenario import Params2
from moca.sim2 import ScenarioBatch2

TEST_SEED = 1000
#: Methods of the CLSC-2 run (the meta-init ones start from the shipped CLSC-2 meta-init).
METHODS_2 = ("moca", "maml", "finetune", "ewc")


class PolicyTask2:
    """One CLSC-2 regime for :class:`moca.continual.ContinualLearner`: the policy's loss at
    a weights dict on the regime's training scenarios (seeds 800+), oracle-normalised."""

    def __init__(self, name: str, plan: Regime | RegimeSchedule, module: LSTMPolicy2, cache: OracleCache2,
                 train_size: int = 8, memory_size: int = 2, correction_weight: float = 0.1):
        self.name, self.module, self.correction_weight = name, module, correction_weight
        train = cache.scenarios(first_seeds(SUPPORT_SEEDS, train_size, "train_size"), plan)
        self.batch = ScenarioBatch2.from_scenarios(train)
        self.oracle = torch.as_tensor(cache.costs(train), dtype=torch.float32)
        self.memory_batch = ScenarioBatch2.from_scenarios(train[:memory_size])
        self.memory_oracle = self.oracle[:memory_size]

    def per_sample_losses(self, weights: Weights) -> Tensor:
        return episode_losses2(self.module, weights, self.batch, self.oracle,
                               correction_weight=self.correction_weight)[0]

    def loss(self, weights: Weights) -> Tensor:
        return self.per_sample_losses(weights).mean()

    def memory_loss(self, weights: Weights) -> Tensor:
        return episode_losses2(self.module, weights, self.memory_batch, self.memory_oracle,
                               correction_weight=self.correction_weight)[0].mean()


def scorer2(module: LSTMPolicy2, cache: OracleCache2, plans: Sequence[Any], config: ExperimentConfig) -> Scorer:
    """:class:`moca.experiment.Scorer` for CLSC-2: scored by ``evaluate_policy2`` on the lists."""
    return Scorer(module, cache, plans, config, evaluate=evaluate_policy2, prepare=list)


def check_init_ships(method: str) -> None:
    """Refuse a method whose meta-init does not ship for CLSC-2 (reptile ran from the
    first-order MAML init and reported fomaml's numbers as its own)."""
    if method == "reptile":
        raise ExperimentError("method 'reptile': no CLSC-2 Reptile meta-init ships (default-clsc2 is first-order "
                              "MAML's); train one (moca train --model CLSC-2 --init reptile -o DIR) and run it with "
                              "moca continual --model CLSC-2 --method reptile --checkpoint DIR")


def shipped_init2(module: LSTMPolicy2, where: str = "default") -> Weights:
    """The shipped CLSC-2 meta-init's weights (its architecture must be ``module``'s)."""
    meta_module, _ = load_policy2(where)
    if meta_module.config != module.config:
        raise ExperimentError(f"checkpoint {where!r}: its policy architecture differs from the experiment's")
    return {k: v.detach().clone() for k, v in meta_module.named_parameters()}


def learn_by_validation(learner: ContinualLearner, task: Task, steps: int,
                        validation_mean: Callable[[Weights], float],
                        on_step: Callable[[int, Weights], Any] | None = None, keep_unchanged: bool = False
                        ) -> tuple[ContinualLearner, LearnStats, dict[str, Any]]:
    """Learn ``task`` two ways from the learner's current state and keep the better one.

    (a) the learner's protected update (EWC penalty, GEM projection), (b) as many plain
    steps (the 'maml' update) on a fork of it. The candidate with the higher
    ``validation_mean`` (the mean validation score over every task seen so far) is
    returned, ties to (a); neither is consolidated here. The returned stats are the kept
    candidate's, but their ``seconds`` count both candidates' steps and the comparison
    (what the choice costs). The choice: task, chosen ("protected" or "plain"), both
    validation means, the comparison's seconds. Before anything is consolidated (the first
    task) both candidates take the same steps, so the task is learned once and kept.

    ``keep_unchanged``: a third candidate, the weights from before the task, kept
    ("unchanged") where they validate strictly higher than both updates: a regime's steps
    can lower its own score (a capped regime with a recovery target fell from 0.978 to
    0.962 after its 8 steps; in a development trace its validation score fell at nearly
    every step while its training loss fell). Its stats are then step 0's alone, with the
    seconds the choice cost; the choice adds ``validation_unchanged`` (None without this
    candidate). Off by default: on random sequences it added 0.0005 (standard error 0.0004)
    and on the seed tasks it cost 0.0017 (``benchmarks/bench_continual_unchanged.py``, README).
    """
    unchanged, validation_unchanged, comparison = None, None, 0.0
    if keep_unchanged:
        unchanged = learner.fork()
        unchanged.learn(task, 0)  # begun with no step, so it can be consolidated as the task's learner
        started = time.perf_counter()
        validation_unchanged = float(validation_mean(unchanged.weights))
        comparison = time.perf_counter() - started
    if not learner.protecting:
        kept, chosen = learner, "protected"
        stats = learner.learn(task, steps, on_step=on_step)
        started = time.perf_counter()
        validation_protected = validation_plain = float(validation_mean(stats.weights))
        if keep_unchanged:  # then it is needed to choose, and its seconds count
            comparison += time.perf_counter() - started
            stats.seconds = [0.0] + [s + comparison for s in stats.seconds[1:]]
    else:
        plain = learner.fork()
        protected_stats = learner.learn(task, steps, on_step=on_step)
        plain_stats = plain.learn(task, steps, on_step=on_step, protect=False)
        started = time.perf_counter()
        validation_protected = float(validation_mean(protected_stats.weights))
        validation_plain = float(validation_mean(plain_stats.weights))
        comparison += time.perf_counter() - started
        keep_plain = validation_plain > validation_protected
        kept, stats = (plain, plain_stats) if keep_plain else (learner, protected_stats)
        chosen = "plain" if keep_plain else "protected"
        stats.seconds = [0.0] + [a + b + comparison for a, b in zip(protected_stats.seconds[1:],
                                                                    plain_stats.seconds[1:])]
    if unchanged is not None and validation_unchanged > max(validation_protected, validation_plain):
        spent = stats.seconds[-1] if len(stats.seconds) > 1 else comparison
        stats = LearnStats(task=task.name, seconds=[spent], scores=stats.scores[:1], weights=unchanged.weights)
        kept, chosen = unchanged, "unchanged"
    return kept, stats, {"task": task.name, "chosen": chosen, "validation_protected": validation_protected,
                         "validation_plain": validation_plain, "validation_unchanged": validation_unchanged,
                         "comparison_seconds": comparison}


def run_continual2(method: str, module: LSTMPolicy2, tasks: Sequence[tuple[str, Any]], cache: OracleCache2,
                   config: ExperimentConfig = ExperimentConfig(), scorer: Scorer | None = None,
                   init: Weights | None = None, progress: Callable[[str], None] | None = None,
                   select_protocol: bool | None = None, keep_unchanged: bool = False
                   ) -> tuple[dict[str, Any], Weights]:
    """Learn ``tasks`` (label, regime or schedule) in order with ``method``; the score
    matrix ``R`` (row 0 before learning), forgetting, transfer, adaptation speed,
    violations. Meta-init methods start from ``init`` or the shipped CLSC-2 meta-init.

    ``select_protocol`` (default: on for 'moca' only): per task, the protected update or
    plain steps, whichever has the higher mean validation score (seeds 900+) over the
    tasks seen so far (:func:`learn_by_validation`); the kept learner is consolidated as
    usual, so later tasks can still be protected. The choices are in ``protocol_choice``.
    Why: on CLSC-2 neither update wins everywhere, so it is chosen by measurement, never on test data.
    ``keep_unchanged`` (with the selection): also the weights from before the task, where
    they validate higher (:func:`learn_by_validation`)."""
    spec = method_spec(method)
    if init is not None and spec.init == "fresh":
        raise ExperimentError("checkpoint: method 'scratch' trains a fresh policy per regime; it takes no checkpoint")
    if select_protocol is not None and not isinstance(select_protocol, bool):  # ("no" is true)
        raise ExperimentError(f"select_protocol: {select_protocol!r} must be True, False or None")
    tasks = check_run_inputs(module, tasks, cache, OracleCache2)
    select = method == "moca" if select_protocol is None else select_protocol
    if select and not (spec.ewc or spec.project):
        raise ExperimentError(f"select_protocol: method {method!r} has no protected update to choose against")
    if keep_unchanged and not select:
        raise ExperimentError(f"keep_unchanged: method {method!r} does not choose its update by validation "
                              "(only 'moca' does)")
    if init is None and spec.init == "meta":
        check_init_ships(method)
        init = shipped_init2(module)
    started = time.perf_counter()
    scorer = scorer or scorer2(module, cache, [p for _, p in tasks], config)
    scorer.violations = 0
    learner = ContinualLearner(module, method, init, config.continual.model_copy(update={"seed": config.scratch_seed}))
    n = len(tasks)
    R = [[scorer.test_score(learner.weights, j)["score"] for j in range(n)]]
    curves, steps_to, seconds_to = [], [], []
    last_row: list[dict[str, Any]] = []
    choices: list[dict[str, Any]] = []
    for i, (name, plan) in enumerate(tasks):
        if progress:
            progress(f"{method}: learning {name}")
        task = PolicyTask2(name, plan, module, cache, config.train_size, config.memory_size, config.correction_weight)
        curve = lambda k, w, i=i: scorer.validation_score(w, i)
        if select:
            seen_mean = lambda w, i=i: float(np.mean([scorer.validation_score(w, j) for j in range(i + 1)]))
            learner, stats, choice = learn_by_validation(learner, task, config.steps, seen_mean, on_step=curve,
                                                         keep_unchanged=keep_unchanged)
            choices.append(choice)
        else:
            stats = learner.learn(task, config.steps, on_step=curve)
        learner.consolidate(task)
        speed = adaptation_speed(stats.scores, stats.seconds)
        curves.append([float(s) for s in stats.scores])
        steps_to.append(speed.steps)
        seconds_to.append(speed.seconds)
        last_row = [scorer.test_score(learner.weights, j) for j in range(n)]
        R.append([e["score"] for e in last_row])
    summary = continual_metrics(np.asarray(R[1:]), initial=R[0])
    return {
        "R": R, "average_final_score": summary.average_final, "forgetting": summary.forgetting + [0.0],
        "bwt": summary.bwt, "fwt": summary.fwt, "drop_first_after_second": summary.drop_first_after_second,
        "adaptation_steps": steps_to, "adaptation_seconds": seconds_to, "adaptation_curves": curves,
        "violations": scorer.violations, "wall_seconds": time.perf_counter() - started,
        "final_mean_cost": [float(e["mean_cost"]) for e in last_row],  # EUR per episode, the final weights
        "select_protocol": select, **({"protocol_choice": choices} if select else {}),
    }, learner.weights


def evaluate_learned2(where: str, plan: Any, seeds: Sequence[int], adapt_steps: int = 0,
                      cache: OracleCache2 | None = None, base: str = "default", retune: int = 0,
                      progress: Callable[[str, int, int | None], None] | None = None) -> dict[str, Any]:
    """Score a CLSC-2 policy checkpoint (``"default"``: the shipped meta-init) on the test
    scenarios of ``seeds`` drawn on its own chain (:func:`moca.chain2.evaluate_learned_on2`:
    after ``adapt_steps`` adaptation steps, support seeds 800+, the weights of the best
    validation score over steps 0..K, validation seeds 900+; ``base``, ``retune`` and
    ``progress`` as there)."""
    from moca.chain2 import evaluate_learned_on2

    if cache is None:
        module, _ = load_policy2(where)
        cache = OracleCache2(module.params)
    out = evaluate_learned_on2(where, cache.scenarios(seeds, plan), plan, adapt_steps, cache=cache, base=base,
                               retune=retune, progress=progress)
    return {**out, "test_seeds": [int(seeds[0]), int(seeds[-1])]}


def quick_config2() -> ExperimentConfig:
    """The small run (``--quick``): few scenarios and steps."""
    return ExperimentConfig(steps=2, train_size=4, memory_size=2, validation_size=4, test_size=4)


def run_experiment2(quick: bool = False, methods: Sequence[str] | None = None, runs_dir: str | Path = "runs",
                    config: ExperimentConfig | None = None,
                    peers: Sequence[str] = ("threshold", "mpc", "mpc-sampled"),
                    progress: Callable[[str], None] | None = None, command: str = "moca run --model CLSC-2",
                    run_id: str | None = None, params: Params2 | None = None,
                    warn: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Path]:
    """T1 -> T2 -> T3 (W = 52) on CLSC-2 for the learned methods beside the peers (the
    threshold rule tuned per regime now, with a budget shown in the metrics; the forecast
    MPC and the two-stage sampled MPC, the best peer of ``benchmarks/peers.json``) and the
    oracle, on the same test scenarios; writes ``runs/<id>-clsc2/metrics.json``,
    ``report.md`` and the PNG plots (:data:`moca.report.PLOTS_2`). ``run_id``: the folder's
    name (default: the start time, ``-clsc2``, ``-quick`` for a quick run). ``params``: another
    chain (scenarios, oracle, peers and the policy's scaling; the shipped meta-init's weights
    carry over, and ``warn`` gets one line when it was trained on other parameters).
    Returns (metrics, run dir)."""
    from moca.baselines.peers import evaluate2, make_peer2
    from moca.baselines.threshold2 import tune_threshold2
    from moca.report import PLOTS_2, write_plots

    config = config or (quick_config2() if quick else ExperimentConfig(test_size=20))
    chosen = list(methods) if methods is not None else list(METHODS_2)
    for m in chosen:
        method_spec(m)
        check_init_ships(m)
    tasks = [(name, TASKS_2[name]) for name in ("T1", "T2", "T3")]
    tell = progress or (lambda description: None)
    started = time.perf_counter()
    torch.manual_seed(0)
    module, _ = load_policy2("default")  # the shipped architecture; methods start from their own init
    params_note = None
    if params is not None:
        from moca.chain2 import retarget2

        module, params_note = retarget2(module, params, "default", adapting=True)  # (the run's methods adapt it)
        if params_note and warn is not None:
            warn(params_note)
    module.load_state_dict(LSTMPolicy2(module.params, module.config).state_dict())
    cache = OracleCache2(module.params)
    tell("drawing scenarios, oracle costs")
    scorer = scorer2(module, cache, [r for _, r in tasks], config)
    run_id = run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-clsc2" + ("-quick" if quick else "")
    tuning = {"budget": 40 if quick else 1500, "train_seeds": 2 if quick else 32}
    metrics: dict[str, Any] = {
        "id": run_id, "model": MODEL, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "machine": machine(), "command": command,
        "seeds": {"test": list(range(TEST_SEED, TEST_SEED + config.test_size)),
                  "validation": list(VALIDATION_SEEDS[:config.validation_size]),
                  "train": f"{SUPPORT_SEEDS.start}-{SUPPORT_SEEDS.start + config.train_size - 1}"},
        "tasks": [n for n, _ in tasks], "regimes": {n: r.model_dump() for n, r in tasks},
        "config": config.model_dump(mode="json"), "threshold_tuning": tuning, "baselines": {}, "methods": {},
        "params": module.params.model_dump(mode="json"), "params_note": params_note,
    }
    for name in ("oracle", *peers):
        metrics["baselines"][name] = {}
        for j, (label, regime) in enumerate(tasks):
            tell(f"{name} on {label}")
            if name == "oracle":
                entry = {"score": 1.0, "mean_cost": float(np.mean(scorer.test_oracle[j])), "violations": 0}
            else:
                began = time.perf_counter()
                policy = (tune_threshold2(RegimeSchedule.constant(regime), module.params,
                                          train_seeds=tuning["train_seeds"], budget=tuning["budget"])
                          if name == "threshold" else make_peer2(name))
                summary = evaluate2(name, policy, scorer.test[j], scorer.test_oracle[j]).summary()
                entry = {k: summary[k] for k in ("score", "mean_cost", "violations")}
                entry["seconds"] = time.perf_counter() - began
            metrics["baselines"][name][label] = entry
    for method in chosen:
        metrics["methods"][method], _ = run_continual2(method, module, tasks, cache, config, scorer=scorer,
                                                       progress=tell)
    best_peer = max((float(np.mean([v["score"] for v in metrics["baselines"][p].values()])), p) for p in peers) \
        if peers else (None, None)
    moca = metrics["methods"].get("moca")
    metrics["targets"] = {
        "best_peer": best_peer[1], "best_peer_mean_score": best_peer[0],
        "moca_average_final_score": moca["average_final_score"] if moca else None,
        "gap_to_target": (moca["average_final_score"] - (best_peer[0] + 0.03)) if moca and peers else None,
        "violations": sum(m["violations"] for m in metrics["methods"].values()),
        "drop_first_after_second": moca["drop_first_after_second"] if moca else None,
    }
    metrics["wall_seconds"] = time.perf_counter() - started
    run_dir = Path(runs_dir) / run_id
    suffix = 1
    while run_dir.exists():
        run_dir = Path(runs_dir) / f"{run_id}-{suffix}"
        suffix += 1

    def write(staging: Path) -> None:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=1))
        # The plots read the parts CLSC-1's metrics share (tasks, R, baselines); CLSC-2's
        # ``targets`` is a summary dict, not CLSC-1's list of checks, and no plot reads it.
        images = write_plots({k: v for k, v in metrics.items() if k != "targets"}, staging, PLOTS_2)
        (staging / "report.md").write_text(report2(metrics, images))

    write_folder(run_dir, write)  # the run appears whole or not at all
    return metrics, run_dir


def report2(metrics: dict[str, Any], images: Sequence[str] = ()) -> str:
    """A short markdown report of a CLSC-2 run: final scores per task, forgetting, peers;
    ``images``: the PNG plots in the run folder to embed (:func:`moca.report.plot_markdown`)."""
    from moca.report import PLOTS_2, chain_note, plot_markdown

    tasks = metrics["tasks"]
    chain = chain_note(metrics)
    lines = [f"# CLSC-2 seed experiment {metrics['id']}", "",
             f"`{metrics['command']}` on {metrics['machine'].get('cpu', '?')} "
             f"({metrics['machine'].get('cores', '?')} cores), {metrics['wall_seconds']:.0f} s; test seeds "
             f"{metrics['seeds']['test'][0]}-{metrics['seeds']['test'][-1]}; score = oracle cost / cost.", "",
             *([chain, ""] if chain else []),
             "| policy | " + " | ".join(tasks) + " | mean | violations | drop on T1 after T2 |",
             "|---" * (len(tasks) + 4) + "|"]
    for name, by_task in metrics["baselines"].items():
        scores = [by_task[t]["score"] for t in tasks]
        lines.append(f"| {name} | " + " | ".join(f"{s:.4f}" for s in scores)
                     + f" | {np.mean(scores):.4f} | {sum(by_task[t]['violations'] for t in tasks)} | |")
    for name, m in metrics["methods"].items():
        final = m["R"][-1]
        drop = m["drop_first_after_second"]
        lines.append(f"| {name} (after T3) | " + " | ".join(f"{s:.4f}" for s in final)
                     + f" | {m['average_final_score']:.4f} | {m['violations']} | "
                     + (f"{100 * drop:.2f}% |" if drop is not None else "|"))
    for name, m in metrics["methods"].items():
        if m.get("protocol_choice"):
            third = any(c.get("validation_unchanged") is not None for c in m["protocol_choice"])
            lines += ["", f"{name}: update kept per task, by mean validation score on the tasks seen "
                      f"(protected vs plain{' vs unchanged' if third else ''}): "
                      + "; ".join(f"{c['task']} {c['chosen']} ({c['validation_protected']:.4f} vs "
                                  f"{c['validation_plain']:.4f}"
                                  + (f" vs {c['validation_unchanged']:.4f}" if third else "") + ")"
                                  for c in m["protocol_choice"]) + "."]
    t = metrics["targets"]
    if t.get("gap_to_target") is not None:
        lines += ["", f"Target (issue 10): moca >= best peer ({t['best_peer']}, {t['best_peer_mean_score']:.4f}) "
                      f"+ 0.03; moca {t['moca_average_final_score']:.4f}, gap {t['gap_to_target']:+.4f}."]
    if images:
        lines += ["", *plot_markdown(images, PLOTS_2)]
    return "\n".join(lines).rstrip("\n") + "\n"


__all__ = ["METHODS_2", "PolicyTask2", "evaluate_learned2", "learn_by_validation", "quick_config2", "report2",
           "run_continual2", "run_experiment2", "shipped_init2"]
