"""A meta-step's tasks as parallel work: each regime's inner loop on its own worker.

One meta step of :func:`moca.meta.meta_train` adapts a learner per regime and combines
their outer directions. Every algorithm's direction is a *mean over tasks* of a
per-task term (FOMAML: the query gradient at the adapted weights; MAML: the query
gradient through the inner step; Reptile: ``θ - θ_adapted``; plus ``zero_shot_weight``
times the first inner gradient), and each term depends only on the meta weights, the
task's regime and its scenario seeds. So a step splits its tasks into one share per
worker, ships ``(weights, regimes, seeds)`` to each (:func:`task_direction`, ~130 kB of
float32 weights for the default policy, the same back), averages what comes back
weighted by the shares' sizes, and takes the Adam step here. The driver keeps the
random stream (task and seed draws), the optimiser and the validation, so a run with a
given seed draws the same tasks on any backend and gives the same weights to round-off
(the local path sums the tasks' gradients inside one batched backward, in another
order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from moca.cluster import Backend


@dataclass(frozen=True)
class MetaTaskJob:
    """What one worker needs for its share of a meta step's tasks (all picklable)."""

    config: dict[str, Any]  # MetaConfig.model_dump(mode="json")
    weights: dict[str, np.ndarray]  # the meta weights, float32
    regimes: tuple[dict[str, Any], ...]
    support_seeds: tuple[tuple[int, ...], ...]  # per task
    query_seeds: tuple[tuple[int, ...], ...]


@dataclass
class MetaTaskResult:
    direction: dict[str, np.ndarray]  # mean over this share's tasks of their outer terms
    tasks: int
    support_score: float  # means over this share's scenarios
    correction: float
    query_score: float | None


def _world(config: dict[str, Any]) -> tuple[Any, Callable[[], Any], Callable, Callable]:
    """The job's world as the meta-step uses it: its config, a builder of its policy module,
    ``batch(regimes, seeds) -> (scenarios, oracle costs)`` and its task losses
    (``moca.meta`` for CLSC-1, ``moca.meta2`` for CLSC-2: same signatures)."""
    if config.get("model", "CLSC-1") == "CLSC-2":
        from moca.meta2 import MetaConfig2, OracleCache2, task_losses2
        from moca.policy2 import LSTMPolicy2

        world_config = MetaConfig2(**config)
        return (world_config, lambda: LSTMPolicy2(world_config.params, world_config.policy),
                OracleCache2(world_config.params).batch, task_losses2)
    from moca.meta import MetaConfig, OracleCache, task_batch, task_losses
    from moca.policy import LSTMPolicy

    world_config = MetaConfig(**config)
    cache = OracleCache(world_config.params)
    return (world_config, lambda: LSTMPolicy(world_config.params, world_config.policy),
            lambda regimes, seeds: task_batch(cache, regimes, seeds), task_losses)


def task_direction(job: MetaTaskJob) -> MetaTaskResult:
    """A share of a meta step's tasks: their inner loops and the mean of their outer
    terms, computed as :func:`moca.meta.meta_train` (CLSC-1) or :func:`moca.meta2.meta_train2`
    (CLSC-2, the config's ``model``) computes them (the share's tasks in one batched
    rollout, each group of rows acted on with its own learner's weights)."""
    from moca.meta import MetaLearner
    from moca.regime import Regime

    config, build, task_batch, task_losses = _world(job.config)
    with torch.random.fork_rng(devices=[]):  # building the module must not move the caller's torch stream
        module = build()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(job.weights[name]))
    meta = MetaLearner(module, config.algorithm, config.inner_lr, config.inner_steps, config.outer_lr,
                       config.inner_clip, config.zero_shot_weight)
    regimes = [Regime(**r) for r in job.regimes]
    support, support_oracle = task_batch(regimes, [list(s) for s in job.support_seeds])
    learners = [meta.clone() for _ in regimes]
    first = None  # the support's score and correction before adaptation (the last step's were kept)
    for _ in range(config.inner_steps):
        losses, info = task_losses(module, learners, support, support_oracle, config.support_size,
                                   config.correction_weight)
        meta.adapt_all(learners, losses.sum())
        first = first or info
    query_score = None
    if config.algorithm == "reptile":
        direction = meta.meta_gradient(learners)
    else:
        query, query_oracle = task_batch(regimes, [list(s) for s in job.query_seeds])
        losses, query_info = task_losses(module, learners, query, query_oracle, config.query_size,
                                         config.correction_weight)
        direction = meta.meta_gradient(learners, losses.mean())
        query_score = query_info["score"]
    return MetaTaskResult({k: v.detach().numpy().copy() for k, v in direction.items()}, len(regimes),
                          first["score"], first["correction"], query_score)


def shares(count: int, parts: int) -> list[range]:
    """``count`` tasks in ``parts`` contiguous shares, as equal as possible."""
    parts = max(1, min(parts, count))
    bounds = np.linspace(0, count, parts + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def distributed_step(meta: Any, config: Any, tasks: Sequence[Any], seeds: Sequence[np.ndarray],
                     backend: Backend) -> tuple[dict[str, Any], float]:
    """One meta step with the tasks' inner loops on ``backend``, one share of the tasks
    per worker (a share's tasks run in one batched rollout, as the local step runs all of
    them: many small rollouts would cost more than they save). Returns the history entry
    (support/query scores, correction) and the meta-gradient's norm, after the Adam step."""
    weights = {k: p.detach().numpy().copy() for k, p in meta.module.named_parameters()}
    dumped = config.model_dump(mode="json")
    jobs = [MetaTaskJob(dumped, weights, tuple(tasks[i].model_dump() for i in share),
                        tuple(tuple(int(x) for x in seeds[i][:config.support_size]) for i in share),
                        tuple(tuple(int(x) for x in seeds[i][config.support_size:]) for i in share))
            for share in shares(len(tasks), backend.parallelism())]
    results = backend.map(task_direction, jobs)
    n = sum(r.tasks for r in results)
    # Every algorithm's direction is a mean over tasks: the shares' means, weighted by size.
    direction = {k: torch.from_numpy(sum(r.direction[k].astype(np.float64) * (r.tasks / n) for r in results)
                                     .astype(np.float32)) for k in weights}
    norm = meta.apply_direction(direction)
    entry: dict[str, Any] = {"support_score": sum(r.support_score * r.tasks / n for r in results),
                             "correction": sum(r.correction * r.tasks / n for r in results)}
    if config.algorithm != "reptile":
        entry["query_score"] = sum(r.query_score * r.tasks / n for r in results)
    return entry, norm
