"""A meta-step's tasks as parallel work: each regime's inner loop on its own worker.

One meta step of :func:`moca.meta.meta_train` adapts a learner per regime and combines
their outer directions. Every algorithm's direction is a *mean over tasks* of a
per-task term (FOMAML: the query gradient at the adapted weights; MAML: the query
gradient through the inner step; Reptile: ``θ - θ_adapted``; plus ``zero_shot_weight``
times the first inner gradient), and each term depends only on the meta weights, the
task's regime and its scenario seeds. So a step ships ``(weights, regime, seeds)`` to a
worker per task (:func:`task_direction`, ~130 kB of float32 weights for the default
policy), averages what comes back, and takes the Adam step here. The driver keeps the
random stream (task and seed draws), the optimiser and the validation, so a run with a
given seed draws the same tasks on any backend and gives the same weights to round-off
(the local path sums the tasks' gradients inside one batched backward, in another
order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from moca.cluster import Backend


@dataclass(frozen=True)
class MetaTaskJob:
    """What one worker needs for one task of a meta step (all picklable)."""

    config: dict[str, Any]  # MetaConfig.model_dump(mode="json")
    weights: dict[str, np.ndarray]  # the meta weights, float32
    regime: dict[str, Any]
    support_seeds: tuple[int, ...]
    query_seeds: tuple[int, ...]


@dataclass
class MetaTaskResult:
    direction: dict[str, np.ndarray]  # this task's term of the outer direction
    support_score: float
    correction: float
    query_score: float | None


def task_direction(job: MetaTaskJob) -> MetaTaskResult:
    """One task's inner loop and outer term, as :func:`moca.meta.meta_train` computes it
    for that task inside its batched rollout."""
    from moca.meta import MetaConfig, MetaLearner, OracleCache, task_batch, task_losses
    from moca.policy import LSTMPolicy
    from moca.regime import Regime

    config = MetaConfig(**job.config)
    with torch.random.fork_rng(devices=[]):  # building the module must not move the caller's torch stream
        module = LSTMPolicy(config.params, config.policy)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.from_numpy(job.weights[name]))
    meta = MetaLearner(module, config.algorithm, config.inner_lr, config.inner_steps, config.outer_lr,
                       config.inner_clip, config.zero_shot_weight)
    cache = OracleCache(config.params)
    regime = Regime(**job.regime)
    support, support_oracle = task_batch(cache, [regime], [list(job.support_seeds)])
    learner = meta.clone()
    for _ in range(config.inner_steps):
        losses, info = task_losses(module, [learner], support, support_oracle, config.support_size,
                                   config.correction_weight)
        meta.adapt_all([learner], losses.sum())
    query_score = None
    if config.algorithm == "reptile":
        direction = meta.meta_gradient([learner])
    else:
        query, query_oracle = task_batch(cache, [regime], [list(job.query_seeds)])
        losses, query_info = task_losses(module, [learner], query, query_oracle, config.query_size,
                                         config.correction_weight)
        direction = meta.meta_gradient([learner], losses.mean())
        query_score = query_info["score"]
    return MetaTaskResult({k: v.detach().numpy().copy() for k, v in direction.items()}, info["score"],
                          info["correction"], query_score)


def distributed_step(meta: Any, config: Any, tasks: Sequence[Any], seeds: Sequence[np.ndarray],
                     backend: Backend) -> tuple[dict[str, Any], float]:
    """One meta step with the tasks' inner loops on ``backend``: the history entry
    (support/query scores, correction) and the meta-gradient's norm, after the Adam step."""
    weights = {k: p.detach().numpy().copy() for k, p in meta.module.named_parameters()}
    dumped = config.model_dump(mode="json")
    jobs = [MetaTaskJob(dumped, weights, regime.model_dump(), tuple(int(x) for x in s[:config.support_size]),
                        tuple(int(x) for x in s[config.support_size:])) for regime, s in zip(tasks, seeds)]
    results = backend.map(task_direction, jobs)
    direction = {k: torch.from_numpy(np.mean([r.direction[k] for r in results], axis=0).astype(np.float32))
                 for k in weights}
    meta.optimizer.zero_grad()
    for key, p in meta.module.named_parameters():
        p.grad = direction[key].clone()
    meta.optimizer.step()
    entry: dict[str, Any] = {"support_score": float(np.mean([r.support_score for r in results])),
                             "correction": float(np.mean([r.correction for r in results]))}
    if config.algorithm != "reptile":
        entry["query_score"] = float(np.mean([r.query_score for r in results]))
    norm = float(torch.sqrt(sum((g ** 2).sum() for g in direction.values())))
    return entry, norm
