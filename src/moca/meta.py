"""Meta-learning an initialisation of the policy that adapts to a new regime in a few steps.

The whole method in one place (CleanRL-like), with a small explicit API in the spirit of
learn2learn, written here on ``torch.func.functional_call`` + ``torch.autograd.grad``:

    meta = MetaLearner(module, algorithm="fomaml", inner_lr=1.0, inner_clip=0.03)
    learner = meta.clone()                  # its own weights dict, starting at the meta weights
    learner.adapt(support_loss(learner.weights))   # one inner SGD step
    meta.outer_step([learner], query_loss(learner.weights))

Algorithms (Finn et al. 2017; Nichol et al. 2018), written from their definitions:

- ``maml`` (second order): the meta-gradient is d/dθ L_query(θ - α ∇L_support(θ)); the inner
  step keeps its graph (``create_graph=True``).
- ``fomaml`` (first order, the default): ∇L_query evaluated at the adapted weights,
  taken as the gradient at θ (the inner step is detached).
- ``reptile``: the direction θ - θ_adapted (no query loss needed).

Two choices of moca's, both documented where they live: the inner step is SGD on the
gradient clipped to a norm (:func:`clipped_sgd`: the gradient's scale varies ~30x across
regimes), and the outer loss may add the loss *before* adaptation (``zero_shot_weight``,
free: its gradient is the first inner gradient), because a regime-conditioned policy
is used zero-shot too.

Caveat for second-order MAML on the policy: :func:`moca.safety.project_batch` computes
its backward in numpy, so a double backward does not see how the upstream gradient of
the actions the layer *moved* depends on θ (its Jacobian itself is piecewise constant).
The meta-gradient is then exact through the network and the simulator but not through
those rows; the closed-form checks in the tests use models without the layer.

Tasks are regimes drawn from :func:`sample_task` (every rule of the spec over its range);
each task's support and query scenarios have different seeds, all below 1000 (test and
benchmark seeds are 1000+ and 5000+): meta-training draws from ``[0, 800)``, :func:`adapt`
uses ``[800, 900)`` for support and ``[900, 1000)`` for validation. Several tasks run in
ONE rollout (their scenarios stacked, each group of rows acted on with its own weights,
:class:`moca.policy.PolicyAgent`), since ``vmap`` has no batching rule for LSTMs.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.func import functional_call

from moca.chain2 import changed_fields
from moca.evaluation import scorable
from moca.limits import (LARGEST_SEED, META_SEEDS, MOST_STEPS, SUPPORT_SEEDS, VALIDATION_SEEDS, is_finite_number,
                         is_whole)
from moca.policy import (LSTMPolicy, PolicyConfig, Weights, check_weights, episode_losses, evaluate_policy,
                         reference_emissions, refuse_conversion)
from moca.regime import PRESETS, TASKS, Regime, load_regime
from moca.scenario import Params, Scenario, draw_scenarios
from moca.sim import ScenarioBatch

Algorithm = Literal["maml", "fomaml", "reptile"]
ALGORITHMS: tuple[str, ...] = ("maml", "fomaml", "reptile")


class MetaError(ValueError):
    """Bad input to meta-learning; the message names the argument and the problem."""


def first_seeds(seeds: range, count: int, what: str) -> range:
    """The first ``count`` seeds of ``seeds``; more than it holds is refused (a slice would
    hand back fewer without a word, or a larger range would reach the test seeds)."""
    if not is_whole(count) or not 1 <= count <= len(seeds):
        raise MetaError(f"{what}={count!r}: must be in 1..{len(seeds)} (seeds {seeds.start}-{seeds.stop - 1})")
    return seeds[:count]


def clipped_sgd(weights: Weights, grads: Weights, lr: float, clip: float | None) -> Weights:
    """``w - lr * min(1, clip / ||g||) * g``: SGD on the gradient clipped to norm ``clip``.

    Why clip: the gradient's scale differs ~30x between regimes (a binding mandate makes
    backlog, and its gradient, large) while its direction is stable from batch to batch,
    so one SGD rate overshoots on some regimes and crawls on others. The clip factor is
    differentiable, so second-order MAML differentiates through it.
    """
    scale: Tensor | float = lr
    if clip is not None:
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()) + 1e-30)
        scale = lr * torch.clamp(clip / norm, max=1.0)
    return {k: w - scale * grads[k] for k, w in weights.items()}


# ----------------------------------------------------------------------------------------
# The explicit API: MetaLearner.clone() -> Learner.adapt(loss) -> MetaLearner.outer_step()
# ----------------------------------------------------------------------------------------


class Learner:
    """A task-specific copy of the meta weights. ``weights`` is a dict of tensors that
    :func:`torch.func.functional_call` evaluates the module at; the module is never touched."""

    def __init__(self, meta: "MetaLearner", weights: Weights):
        self.meta = meta
        self.weights = weights
        self.start_grad: Weights | None = None  # gradient of the first inner loss, at the meta weights
        #: A MAML outer step took the meta-gradient through this learner's inner steps, and
        #: freed their graph: another one through it would fail deep in torch.
        self.spent = False

    def __call__(self, *args: Any) -> Any:
        return functional_call(self.meta.module, self.weights, args)

    def adapt(self, loss: Tensor) -> None:
        """One inner SGD step on ``loss`` (a function of ``self.weights``)."""
        self.meta.adapt_all([self], loss)


def _check_loss(loss: Any, what: str) -> None:
    """``loss`` must be one number that gradients can flow back from."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = f"a tensor of shape {list(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise MetaError(f"{what}: expected a one-number tensor (e.g. a mean over scenarios), got {shape}")
    if loss.is_complex():  # (torch: "grad can be implicitly created only for real scalar outputs")
        raise MetaError(f"{what}: a complex number; expected a real loss")
    if not loss.requires_grad:
        raise MetaError(f"{what}: does not depend on the learners' weights (no gradient flows back from it): "
                        "compute it through the learner, learner(inputs)")


def _check_learners(learners: Sequence[Learner], meta: "MetaLearner") -> None:
    if len(learners) == 0:
        raise MetaError("learners: empty; a step needs at least one learner from clone()")
    for j, learner in enumerate(learners):
        if not isinstance(learner, Learner) or learner.meta is not meta:
            raise MetaError(f"learners[{j}]: not a learner of this MetaLearner (make one with its clone())")


def _per_learner(grads: Sequence[Tensor | None], learners: Sequence[Learner],
                 keys: Sequence[str]) -> list[dict[str, Tensor | None]]:
    """Split gradients taken over ``[learner.weights[k] for learner in learners for k in keys]``
    back into one dict per learner."""
    it = iter(grads)
    return [{k: next(it) for k in keys} for _ in learners]


class MetaLearner:
    """Holds the meta weights (the module's parameters) and their outer optimiser (Adam)."""

    def __init__(self, module: nn.Module, algorithm: Algorithm = "fomaml", inner_lr: float = 1.0,
                 inner_steps: int = 1, outer_lr: float = 1e-3, inner_clip: float | None = 0.03,
                 zero_shot_weight: float = 0.0):
        if not isinstance(module, nn.Module) or not any(p.requires_grad for p in module.parameters()):
            raise MetaError(f"module: expected a torch module with parameters to meta-learn, got "
                            f"{type(module).__name__}"
                            f"{'' if not isinstance(module, nn.Module) else ' without any that requires grad'}")
        if algorithm not in ALGORITHMS:
            raise MetaError(f"algorithm: {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if not (is_finite_number(inner_lr) and inner_lr > 0):
            raise MetaError(f"inner_lr: {inner_lr!r} must be a finite number > 0")
        if not (is_whole(inner_steps) and inner_steps >= 1):
            raise MetaError(f"inner_steps: {inner_steps!r} must be a whole number >= 1")
        if not (is_finite_number(outer_lr) and outer_lr > 0):
            raise MetaError(f"outer_lr: {outer_lr!r} must be a finite number > 0")
        if inner_clip is not None and not (is_finite_number(inner_clip) and inner_clip > 0):
            raise MetaError(f"inner_clip: {inner_clip!r} must be a finite number > 0, or None")
        if not (is_finite_number(zero_shot_weight) and zero_shot_weight >= 0):
            raise MetaError(f"zero_shot_weight: {zero_shot_weight!r} must be a finite number >= 0")
        self.module = module
        self.algorithm = algorithm
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.inner_clip = inner_clip
        self.zero_shot_weight = zero_shot_weight
        # A parameter frozen (requires_grad=False) when the learner is made is outside the
        # outer optimiser, as torch's own optimisers are given only the trainable ones.
        self.optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=outer_lr)
        self.steps_taken = 0  # outer steps applied (for the messages of a diverging run)

    @property
    def second_order(self) -> bool:
        return self.algorithm == "maml"

    @property
    def trainable(self) -> list[str]:
        """The names of the parameters that require grad now: one frozen at any time is held
        as it is by the inner steps and the outer step alike (no gradient, so Adam skips it)."""
        return [k for k, p in self.module.named_parameters() if p.requires_grad]

    @property
    def weights(self) -> Weights:
        """The meta weights (the module's own parameters that require grad)."""
        params = dict(self.module.named_parameters())
        return {k: params[k] for k in self.trainable}

    def clone(self) -> Learner:
        """A learner starting at the meta weights. Second order: ``clone()`` keeps the
        graph to θ (and makes each learner's start a distinct node, so one backward over
        several learners gives each its own gradient); first order: detached leaves."""
        trainable = set(self.trainable)
        if self.second_order:
            start = {k: p.clone() if k in trainable else p.detach() for k, p in self.module.named_parameters()}
        else:
            start = {k: p.detach().clone().requires_grad_(True) if k in trainable else p.detach()
                     for k, p in self.module.named_parameters()}
        return Learner(self, start)

    def adapt_all(self, learners: Sequence[Learner], loss: Tensor) -> None:
        """One inner SGD step for every learner from ONE backward of ``loss``.

        ``loss`` must be a sum of per-learner terms, each depending only on its own
        learner's weights (e.g. per-task mean losses of a task-batched rollout), so the
        gradient with respect to a learner's weights is that learner's own gradient.
        """
        _check_learners(learners, self)
        _check_loss(loss, "loss")
        keys = self.trainable
        flat = [learner.weights[k] for learner in learners for k in keys]
        grads = torch.autograd.grad(loss, flat, create_graph=self.second_order, allow_unused=True)
        for j, (learner, own) in enumerate(zip(learners, _per_learner(grads, learners, keys))):
            if all(g is None for g in own.values()):
                raise MetaError(f"loss: does not depend on {'the learner' if len(learners) == 1 else f'learner {j}'}"
                                "'s weights: compute it through the learner, learner(inputs)")
            own = {k: torch.zeros_like(learner.weights[k]) if g is None else g for k, g in own.items()}
            if learner.start_grad is None:  # the first inner step
                learner.start_grad = {k: g.detach() for k, g in own.items()}
            new = clipped_sgd({k: learner.weights[k] for k in keys}, own, self.inner_lr, self.inner_clip)
            if not all(torch.isfinite(w).all() for w in new.values()):
                raise MetaError(f"meta step {self.steps_taken + 1}: an inner step made a learner's weights non-finite "
                                "(NaN or inf): the losses diverged; lower inner_lr or correction_weight, or set "
                                "inner_clip")
            if not self.second_order:
                new = {k: w.detach().requires_grad_(True) for k, w in new.items()}
            learner.weights = {**learner.weights, **new}

    def meta_gradient(self, learners: Sequence[Learner], query_loss: Tensor | None = None) -> Weights:
        """The outer-loop direction for the meta weights (a dict like ``weights``).

        ``query_loss``: the query loss of the adapted learners, summed or averaged over
        tasks as the caller wants the tasks weighted (not used by Reptile). With
        ``zero_shot_weight`` β > 0 the direction also descends β·mean_i L_support,i(θ), the
        loss *before* adaptation: its gradient is the learners' first inner gradient, so it
        costs nothing, and it keeps the initialisation good on its own (plain MAML only
        optimises the loss after adaptation, and may trade the zero-shot score for it).
        """
        _check_learners(learners, self)
        starts = [l.start_grad for l in learners if l.start_grad is not None]
        if self.zero_shot_weight > 0 and len(starts) != len(learners):
            raise MetaError("learners: zero_shot_weight needs every learner to have taken an inner step")
        if query_loss is not None and self.algorithm != "reptile":
            _check_loss(query_loss, "query_loss")
            # Checked before the gradient is taken: taking it frees the learners' inner steps,
            # and a retry with a finite loss failed in torch ("backward through the graph a
            # second time").
            if not torch.isfinite(query_loss.detach()).all():
                # (no step number: a worker of the sharded meta-training counts none)
                raise MetaError(f"query_loss is {float(query_loss.detach()):g}, not finite: the losses diverged; "
                                "lower inner_lr, outer_lr or correction_weight")
        if self.algorithm == "maml" and any(learner.spent for learner in learners):
            raise MetaError("learners: a MAML outer step already went through their inner steps, and freed them: "
                            "clone and adapt new learners for the next step")
        direction = self._direction(learners, query_loss)
        if self.zero_shot_weight > 0:
            for k in direction:
                direction[k] = direction[k] + self.zero_shot_weight * torch.stack([g[k] for g in starts]).mean(0)
        return direction

    def _direction(self, learners: Sequence[Learner], query_loss: Tensor | None) -> Weights:
        params = self.weights
        keys = list(params)
        if self.algorithm == "reptile":
            return {k: torch.stack([p.detach() - l.weights[k].detach() for l in learners]).mean(0)
                    for k, p in params.items()}
        if query_loss is None:
            raise MetaError(f"query_loss: {self.algorithm} needs the query loss of the adapted learners")
        # maml: through the learners to the meta weights; fomaml: the gradient at the adapted
        # weights stands in for the gradient at θ.
        flat = list(params.values()) if self.algorithm == "maml" else \
            [learner.weights[k] for learner in learners for k in keys]
        grads = torch.autograd.grad(query_loss, flat, allow_unused=True)
        if all(g is None for g in grads):
            raise MetaError("query_loss: does not depend on the learners' weights: compute it through the adapted "
                            "learners, learner(inputs)")
        if self.algorithm == "maml":
            for learner in learners:
                learner.spent = True
            return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}
        out = {k: torch.zeros_like(p) for k, p in params.items()}
        for own in _per_learner(grads, learners, keys):
            for key, g in own.items():
                if g is not None:
                    out[key] += g.detach()
        return out

    def outer_step(self, learners: Sequence[Learner], query_loss: Tensor | None = None) -> float:
        """Apply the meta-gradient with the outer optimiser; returns its norm."""
        return self.apply_direction(self.meta_gradient(learners, query_loss))

    def apply_direction(self, direction: Weights) -> float:
        """One step of the outer optimiser along ``direction``; returns its norm. A direction
        or a step that is not finite raises :class:`MetaError` and leaves the meta weights as
        they were (a diverging config, e.g. rates or a correction weight far too high, made
        NaN weights that failed later as an internal error in the projection)."""
        if not all(torch.isfinite(g).all() for g in direction.values()):
            raise MetaError(f"meta step {self.steps_taken + 1}: the meta-gradient is not finite (NaN or inf): the "
                            "losses diverged; lower inner_lr, outer_lr or correction_weight")
        params = self.weights
        before = {k: p.detach().clone() for k, p in params.items()}
        self.optimizer.zero_grad()
        for key, p in params.items():
            p.grad = direction[key].detach().clone()
        self.optimizer.step()
        if not all(torch.isfinite(p).all() for p in params.values()):
            with torch.no_grad():
                for key, p in params.items():
                    p.copy_(before[key])
            raise MetaError(f"meta step {self.steps_taken + 1}: the outer step made the meta weights non-finite "
                            "(NaN or inf): lower outer_lr")
        self.steps_taken += 1
        return float(torch.sqrt(sum((g.detach() ** 2).sum() for g in direction.values())))


# ----------------------------------------------------------------------------------------
# The task distribution
# ----------------------------------------------------------------------------------------


def sample_task(rng: np.random.Generator, params: Params = Params(), named_share: float = 0.3) -> Regime:
    """A random regime for meta-training.

    With probability ``named_share`` a named regime (T1-T3 and the presets) with every
    numeric rule scaled by U(0.7, 1.3) and, half the time, one more random rule; otherwise
    every rule drawn independently over the spec's range, present with some probability
    so that unregulated and single-rule regimes appear too:

    - recycled_content_min: absent 30%; else U(0, 0.35) (85%) or U(0.35, 0.95) (15%: only
      a fraction of production is then possible, the returns limit recycled supply);
    - carbon_tax: absent 35%; else U(0, 300) (70%) or U(300, 2000);
    - emission_cap: absent 75%; else log-uniform over [0.4, 2] x the emissions of an
      average virgin-only period (:func:`moca.policy.reference_emissions`);
    - landfill_tax: absent 60%; else U(0, 100);
    - recovery_target: absent 70%; else U(0, 1).
    """
    if rng.random() < named_share:
        named = [*TASKS.values(), *PRESETS.values()]
        base = named[int(rng.integers(len(named)))].model_dump()
        for key in ("recycled_content_min", "carbon_tax", "landfill_tax", "recovery_target"):
            base[key] = base[key] * float(rng.uniform(0.7, 1.3))
        base["recycled_content_min"] = min(base["recycled_content_min"], 0.95)
        base["carbon_tax"] = min(base["carbon_tax"], 2000.0)
        base["landfill_tax"] = min(base["landfill_tax"], 100.0)
        base["recovery_target"] = min(base["recovery_target"], 1.0)
        if rng.random() < 0.5:
            extra = _random_rules(rng, params)
            key = str(rng.choice(list(extra)))
            base[key] = extra[key]
        return Regime(**base)
    return Regime(**_random_rules(rng, params))


def _random_rules(rng: np.random.Generator, params: Params) -> dict[str, Any]:
    r = 0.0 if rng.random() < 0.3 else float(rng.uniform(0, 0.35) if rng.random() < 0.85 else rng.uniform(0.35, 0.95))
    tau = 0.0 if rng.random() < 0.35 else float(rng.uniform(0, 300) if rng.random() < 0.7 else rng.uniform(300, 2000))
    cap = None
    if rng.random() >= 0.75:  # log-uniform over [0.4, 2] x an average virgin-only period's emissions
        cap = float(reference_emissions(params) * np.exp(rng.uniform(np.log(0.4), np.log(2.0))))
    lam = 0.0 if rng.random() < 0.6 else float(rng.uniform(0, 100))
    kappa = 0.0 if rng.random() < 0.7 else float(rng.uniform(0, 1))
    return {"recycled_content_min": r, "carbon_tax": tau, "emission_cap": cap, "landfill_tax": lam,
            "recovery_target": kappa}


class OracleCache:
    """Oracle costs (EUR) per (seed, regime) within a run, in memory (an LP is ≈ 10 ms)."""

    def __init__(self, params: Params = Params()):
        self.params = params
        self._costs: dict[tuple, float] = {}

    def scenarios(self, seeds: Sequence[int], regime: Regime) -> list[Scenario]:
        return draw_scenarios(seeds, regime, self.params)

    def costs(self, scenarios: Sequence[Scenario]) -> np.ndarray:
        from moca.oracle import solve_oracle

        out = np.empty(len(scenarios))
        for i, s in enumerate(scenarios):
            key = (s.params, s.demand.tobytes(), s.return_frac.tobytes(), s.regime_table().tobytes())
            if key not in self._costs:
                self._costs[key] = solve_oracle(s).oracle_cost
            out[i] = self._costs[key]
        return scorable(out)


# ----------------------------------------------------------------------------------------
# Meta-training
# ----------------------------------------------------------------------------------------


class MetaConfig(BaseModel):
    """Everything :func:`meta_train` needs (pydantic, so it serialises into checkpoints).

    Defaults measured on the 2-core development machine: ~1.8 s per meta step (16
    scenarios per rollout, 32 oracle LPs), 150 steps ≈ 4.5-5 min; the zero-shot score on
    the validation regimes stops rising after ~150 steps. The run is deterministic for a
    seed (same machine and library versions).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: Algorithm = "fomaml"
    policy: PolicyConfig = PolicyConfig()
    params: Params = Params()
    meta_steps: int = Field(150, ge=1)
    # Upper bounds: what a meta step can hold (1e6 inner steps ran for hours before the first
    # max_seconds check; support + query beyond the 800 meta-training seeds was an internal error).
    tasks_per_step: int = Field(8, ge=1, le=1024, description="regimes per meta step")
    support_size: int = Field(2, ge=1, le=100, description="support scenarios per task")
    query_size: int = Field(2, ge=1, le=100, description="query scenarios per task (other seeds)")
    inner_steps: int = Field(1, ge=1, le=MOST_STEPS)
    # The upper bounds of the rates and weights: far above anything that trains (the defaults
    # are 1.0, 1e-3, 1.0 and 0.1); beyond them a step overflowed the weights or the actions to
    # NaN (the steps also check it, MetaLearner.adapt_all / apply_direction).
    inner_lr: float = Field(1.0, gt=0, le=100, description="inner SGD rate (on the clipped gradient)")
    inner_clip: float | None = Field(0.03, gt=0, description="inner gradient clipped to this norm (None: plain SGD)")
    outer_lr: float = Field(1e-3, gt=0, le=1, description="Adam rate of the meta weights")
    zero_shot_weight: float = Field(1.0, ge=0, le=1000,
                                    description="weight of the loss before adaptation in the outer loss")
    correction_weight: float = Field(0.1, ge=0, le=1000)
    named_share: float = Field(0.3, ge=0, le=1, description="share of tasks near a named regime")
    seed: int = Field(0, ge=0, le=LARGEST_SEED)
    max_seconds: float | None = Field(540.0, gt=0, description="stop early past this wall time (None: never)")
    validate_every: int = Field(0, ge=0, description="zero-shot score on fixed validation tasks every N steps (0: off)")
    validation_tasks: int = Field(8, ge=1, le=100, description="random regimes of the validation set (own seed stream)")

    @field_validator("*", mode="before")
    @classmethod
    def _as_given(cls, value: Any, info) -> Any:
        return refuse_conversion(cls, value, info.field_name)


def task_batch(cache: OracleCache, tasks: Sequence[Regime], seeds: Sequence[Sequence[int]]
               ) -> tuple[ScenarioBatch, Tensor]:
    """The scenarios of ``seeds[i]`` under ``tasks[i]``, task after task, as one batch, and
    their oracle costs (EUR, float32)."""
    scenarios = [s for regime, task_seeds in zip(tasks, seeds) for s in cache.scenarios(task_seeds, regime)]
    return ScenarioBatch.from_scenarios(scenarios), torch.as_tensor(cache.costs(scenarios), dtype=torch.float32)


def task_losses(module: LSTMPolicy, learners: Sequence[Learner], batch: ScenarioBatch, oracle: Tensor,
                group: int, correction_weight: float) -> tuple[Tensor, dict[str, float]]:
    """``[n_tasks]`` mean losses, one rollout for all tasks (``group`` scenarios each)."""
    terms = episode_losses(module, [l.weights for l in learners], batch, oracle, groups=[group] * len(learners))
    per_task = terms.total(correction_weight, 0.0).view(len(learners), group).mean(1)
    info = {"score": float((1.0 / terms.cost_ratio.detach()).mean()),
            "correction": float(terms.correction.detach().mean())}
    return per_task, info


class StopRequest:
    """Ctrl-C as a request to stop meta-training at the end of the current meta step, so
    that the steps done are written rather than lost (``moca train``; ``moca peers
    train-ppo`` asks it after every env step, ``step`` naming it). The first SIGINT
    sets :attr:`requested` and says so on stderr; a second one interrupts at once, as Ctrl-C
    normally does. A context manager; call it to ask whether a stop was requested. Signals
    reach only the main thread, so elsewhere it installs nothing and never requests a stop.

    Why at a step's end, not by catching KeyboardInterrupt: an interrupt inside Adam's
    update would leave some tensors stepped and others not, and the history one step off."""

    def __init__(self, step: str = "meta step") -> None:
        self.step = step
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            previous = self._previous
            self.__exit__()
            if callable(previous):  # Ctrl-C as it was before (moca's CLI: says "interrupted")
                previous(signum, frame)
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write(f"\nmoca: stopping after this {self.step} and writing the checkpoint "
                         "(Ctrl-C again: stop now, write nothing)\n")


def as_config(config: Any, kind: type[MetaConfig]) -> Any:
    """``config`` as a ``kind``: one already, or a dict of its fields (checked as the class
    checks them, each problem named by field)."""
    if isinstance(config, kind):
        return config
    if isinstance(config, dict):
        return kind.model_validate(config)
    raise MetaError(f"config: expected a {kind.__name__} or a dict of its fields, got {type(config).__name__}")


def meta_train(config: MetaConfig = MetaConfig(), progress: Any = None, *,
               backend: Any = None, module: LSTMPolicy | None = None,
               stop: Callable[[], bool] | None = None) -> tuple[LSTMPolicy, dict[str, Any]]:
    """Meta-train an initialisation; returns the module (meta weights) and the history.

    Each meta step: draw ``tasks_per_step`` regimes; every learner takes ``inner_steps``
    SGD steps on its support scenarios (all tasks in one rollout per step), then the
    query scenarios (other seeds) give the outer loss (MAML/FOMAML) or the learners'
    displacement gives the direction (Reptile), plus ``zero_shot_weight`` times the
    support loss before adaptation. ``progress``: a callable ``(step, total, info)`` or a
    ``rich.progress.Progress``. The history holds per-step scores (support before,
    query after adaptation), meta-gradient norms, wall seconds and, with
    ``validate_every``, the zero-shot validation score (step 0 = the untrained policy).

    ``backend``: a started :class:`moca.cluster.Backend` (e.g. Ray) to run each step's
    tasks on, one inner loop per worker (:mod:`moca.meta_dist`): the same tasks and seeds
    are drawn, and the weights agree with the local run (None) to round-off.
    ``module``: meta-train these weights (e.g. a subclass with another base rule, such as
    :class:`moca.regime_map.MappedPolicy`) instead of a fresh ``LSTMPolicy``; trained in place.
    ``stop``: asked after every meta step (e.g. a :class:`StopRequest`); True ends the
    training there, with ``history["interrupted"]`` set.
    """
    config = as_config(config, MetaConfig)
    if not isinstance(config.params, Params):
        raise MetaError(f"config: its params are another world's ({type(config.params).__name__}): for CLSC-2 use "
                        "moca.meta2.meta_train2 with a MetaConfig2")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if module is None:
        module = LSTMPolicy(config.params, config.policy)
    elif not isinstance(module, LSTMPolicy):  # (a checkpoint's name was 'str' has no attribute 'params')
        raise MetaError(f"module: expected a CLSC-1 policy (LSTMPolicy, e.g. checkpoint.load_policy(...)[0]), got "
                        f"{type(module).__name__}")
    elif module.params != config.params or module.config != config.policy:
        raise MetaError("module: its params or policy config differ from config.params / config.policy")
    elif backend is not None and not all(p.requires_grad for p in module.parameters()):
        raise MetaError("module: a module with frozen parameters meta-trains here only (backend=None): the workers "
                        "rebuild an LSTMPolicy from the weights, every parameter trainable")
    elif backend is not None and type(module) is not LSTMPolicy:  # (its steps were another policy's gradients)
        raise MetaError(f"module: a {type(module).__name__} meta-trains here only (backend=None): the workers "
                        "rebuild an LSTMPolicy from the weights")
    meta = MetaLearner(module, config.algorithm, config.inner_lr, config.inner_steps, config.outer_lr,
                       config.inner_clip, config.zero_shot_weight)
    cache = OracleCache(config.params)
    report = step_reporter(progress, config.meta_steps)
    history: dict[str, Any] = {"config": config.model_dump(mode="json"), "steps": [], "validation": [],
                               "stopped_early": False}
    validate = _validator(config, cache) if config.validate_every else None
    if validate is not None:
        history["validation"].append({"step": 0, "score": validate(module)})
    started = time.perf_counter()
    for step in range(1, config.meta_steps + 1):
        tasks = [sample_task(rng, config.params, config.named_share) for _ in range(config.tasks_per_step)]
        seeds = [rng.choice(len(META_SEEDS), config.support_size + config.query_size, replace=False) + META_SEEDS.start
                 for _ in tasks]
        if backend is not None:  # the tasks' inner loops on workers (moca.meta_dist)
            from moca.meta_dist import distributed_step

            distributed, grad_norm = distributed_step(meta, config, tasks, seeds, backend)
            entry = {"step": step, **distributed}
        else:
            support, support_oracle = task_batch(cache, tasks, [s[:config.support_size] for s in seeds])
            learners = [meta.clone() for _ in tasks]
            first = None  # the support's score and correction before adaptation (the last step's were kept)
            for _ in range(config.inner_steps):
                losses, support_info = task_losses(module, learners, support, support_oracle, config.support_size,
                                                   config.correction_weight)
                meta.adapt_all(learners, losses.sum())
                first = first or support_info
            entry: dict[str, Any] = {"step": step, "support_score": first["score"], "correction": first["correction"]}
            if config.algorithm == "reptile":
                grad_norm = meta.outer_step(learners)
            else:
                query, query_oracle = task_batch(cache, tasks, [s[config.support_size:] for s in seeds])
                losses, query_info = task_losses(module, learners, query, query_oracle, config.query_size,
                                                 config.correction_weight)
                grad_norm = meta.outer_step(learners, losses.mean())
                entry["query_score"] = query_info["score"]
        entry["meta_grad_norm"] = grad_norm
        entry["seconds"] = time.perf_counter() - started
        out_of_time = config.max_seconds is not None and entry["seconds"] > config.max_seconds
        asked = not out_of_time and stop is not None and stop()
        # A stop validates the weights it ends on: the "after" score was the last scheduled
        # validation's, of weights that are not the ones written.
        if validate is not None and (step % config.validate_every == 0 or step == config.meta_steps
                                     or out_of_time or asked):
            history["validation"].append({"step": step, "score": validate(module)})
            entry["validation_score"] = history["validation"][-1]["score"]
        history["steps"].append(entry)
        report(step, entry)
        if out_of_time:
            history["stopped_early"] = True
            break
        if asked:
            history["stopped_early"] = history["interrupted"] = True
            break
    history["wall_seconds"] = time.perf_counter() - started
    history["oracle_solves"] = len(cache._costs)
    return module, history


def _validator(config: MetaConfig, cache: OracleCache) -> Callable[[LSTMPolicy], float]:
    """Mean zero-shot score on fixed random regimes (their own seed stream, validation
    scenario seeds), to follow meta-training; not used for any decision."""
    rng = np.random.default_rng([config.seed, 1])
    tasks = [sample_task(rng, config.params, config.named_share) for _ in range(config.validation_tasks)]
    scenarios = [s for regime in tasks for s in cache.scenarios(VALIDATION_SEEDS[:2], regime)]
    oracle = cache.costs(scenarios)
    batch = ScenarioBatch.from_scenarios(scenarios)
    return lambda module: evaluate_policy(module, None, batch, oracle)["score"]


def step_reporter(progress: Any, total: int) -> Callable[[int, dict], None]:
    """``(step, info)`` -> ``progress``: a callable ``(step, total, info)``, a
    ``rich.progress.Progress`` (one bar, "meta-training") or None (nothing)."""
    if progress is None:
        return lambda step, info: None
    if hasattr(progress, "add_task"):  # a rich.progress.Progress
        task = progress.add_task("meta-training", total=total)
        return lambda step, info: progress.update(task, completed=step)
    return lambda step, info: progress(step, total, info)


# ----------------------------------------------------------------------------------------
# Adaptation to one regime (what `moca adapt` and the experiment run)
# ----------------------------------------------------------------------------------------


def adapt(module: LSTMPolicy, weights: Weights | None, regime: Regime | str, steps: int = 5,
          support: Sequence[Scenario] | None = None, validation: Sequence[Scenario] | None = None,
          lr: float = 1.0, clip: float | None = 0.03, safeguard: bool = True, correction_weight: float = 0.1,
          support_size: int = 8, validation_size: int = 16, cache: OracleCache | None = None,
          keep_best: bool = False, stepped: Callable[[int], None] | None = None
          ) -> tuple[Weights, list[dict[str, float]]]:
    """``steps`` inner-loop steps (:func:`clipped_sgd`, as in meta-training) on support
    scenarios of ``regime``; each step costs one rollout (forward + backward) of the
    support batch.

    ``safeguard``: a step is kept only if it lowers the support loss, else it is undone
    and the rate halved (the loss at the candidate comes with the gradient there, so
    this costs one extra rollout in all). BPTT gradients of this piecewise-linear world
    point the right way but are a poor guide to the step length: plain steps sometimes
    lose a point of score that the next step wins back.

    Returns the adapted weights (detached) and the curve: after 0..steps steps, the
    score/violations/correction on the validation scenarios, whether the step was kept,
    the support loss of the weights held (safeguard only; its loss before any step at 0),
    and the wall seconds spent adapting so far (oracle normalisation of the support
    scenarios included, evaluation excluded). Default scenarios: support seeds 800+,
    validation seeds 900+ (never the test seeds); given ones carry their own regime.

    ``keep_best``: return the weights with the best validation score over steps 0..steps
    (the first of equals) instead of the last ones, so the result is never worse on the
    validation scenarios than the start; the curve's entry of those weights gets
    ``"selected": True`` (the others ``False``).

    ``stepped(step)``, if given, is called after each step (a progress bar's tick).
    """
    check_adapt_arguments(module, weights, steps, lr, clip, correction_weight)
    regime = load_regime(regime)
    cache = check_cache(cache, module.params, OracleCache)
    support = check_scenarios(support, module.params, Scenario, "support") if support is not None else \
        cache.scenarios(first_seeds(SUPPORT_SEEDS, support_size, "support_size"), regime)
    validation = check_scenarios(validation, module.params, Scenario, "validation") if validation is not None \
        else cache.scenarios(first_seeds(VALIDATION_SEEDS, validation_size, "validation_size"), regime)
    valid_oracle = cache.costs(validation)
    validation = ScenarioBatch.from_scenarios(validation)  # built once, scored after every step
    start = weights if weights is not None else dict(module.named_parameters())
    current = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}
    scored = evaluate_policy(module, current, validation, valid_oracle)
    curve = [{"step": 0, "seconds": 0.0, "kept": True, "support_loss": math.nan, **scored}]
    began = time.perf_counter()
    batch = ScenarioBatch.from_scenarios(support)
    oracle = torch.as_tensor(cache.costs(support), dtype=torch.float32)

    def loss_and_grad(w: Weights) -> tuple[float, Weights]:
        loss = episode_losses(module, w, batch, oracle).total(correction_weight, 0.0).mean()
        return float(loss.detach()), dict(zip(w, torch.autograd.grad(loss, list(w.values()))))

    return adapt_loop(current, curve, began, loss_and_grad,
                      lambda w: evaluate_policy(module, w, validation, valid_oracle),
                      steps, lr, clip, safeguard, keep_best, scored=scored, stepped=stepped)


def check_adapt_arguments(module: nn.Module, weights: Weights | None, steps: Any, lr: Any, clip: Any,
                          correction_weight: Any = 0.0) -> None:
    """:func:`adapt`'s and :func:`moca.meta2.adapt2`'s arguments, each named: a negative
    rate or clip would step uphill (``clipped_sgd`` scales by ``lr * min(1, clip / |g|)``)."""
    if not is_whole(steps) or steps < 0:
        raise MetaError(f"steps: {steps!r} must be a whole number >= 0")
    if not is_finite_number(lr) or lr <= 0:
        raise MetaError(f"lr: {lr!r} must be a finite number > 0")
    if clip is not None and (not is_finite_number(clip) or clip <= 0):
        raise MetaError(f"clip: {clip!r} must be a finite number > 0, or None")
    if not is_finite_number(correction_weight) or correction_weight < 0:
        raise MetaError(f"correction_weight: {correction_weight!r} must be a finite number >= 0")
    if weights is not None:
        check_weights(module, weights)


def check_cache(cache: Any, params: Any, kind: type) -> Any:
    """``cache`` (None: a new one) of ``kind`` and on ``params`` (the policy's chain), else a
    :class:`MetaError`: its draws are its chain's, so another chain's cache adapted and
    scored the policy on that chain without a word."""
    if cache is None:
        return kind(params)
    if not isinstance(cache, kind):
        raise MetaError(f"cache: expected a {kind.__name__}, got {type(cache).__name__}")
    if cache.params != params:
        raise MetaError(f"cache: built on other params than the policy's ({changed_fields(params, cache.params)})")
    return cache


def check_scenarios(scenarios: Any, params: Any, kind: type, what: str) -> list:
    """Given support or validation scenarios as a list, each of ``kind`` and drawn on
    ``params`` (the policy's chain), else a :class:`MetaError` naming the first that is not:
    another chain's scenarios adapted and scored without a word."""
    items = list(scenarios)
    if not items:
        raise MetaError(f"{what}: no scenarios given")
    for i, scenario in enumerate(items):
        if not isinstance(scenario, kind):
            raise MetaError(f"{what}[{i}]: expected a {kind.__name__}, got {type(scenario).__name__}")
        if scenario.params != params:
            raise MetaError(f"{what}[{i}]: drawn on other params than the policy's "
                            f"({changed_fields(params, scenario.params)})")
    return items


def adapt_loop(current: Weights, curve: list[dict[str, Any]], began: float,
               loss_and_grad: Callable[[Weights], tuple[float, Weights]], score: Callable[[Weights], dict[str, Any]],
               steps: int, lr: float, clip: float | None, safeguard: bool, keep_best: bool,
               scored: dict[str, Any] | None = None, stepped: Callable[[int], None] | None = None,
               ) -> tuple[Weights, list[dict[str, Any]]]:
    """The steps of :func:`adapt` for any world: ``current`` the starting weights (leaves
    that require grad), ``curve`` holding step 0's score, ``began`` when the adaptation's
    clock started, ``loss_and_grad(w)`` the support loss and its gradient, ``score(w)``
    the validation entry of a curve point (with ``"score"``); ``scored``: ``score(current)``
    where the caller has it (curve[0]'s); ``stepped(step)``, if given, is called after each
    step (a progress bar's tick)."""
    best = (curve[0]["score"], 0, {k: v.detach() for k, v in current.items()})
    loss, grads = loss_and_grad(current) if steps else (math.nan, {})
    curve[0]["support_loss"] = loss
    spent = time.perf_counter() - began
    for step in range(1, steps + 1):
        began = time.perf_counter()
        # A gradient that is not finite gives no direction, and a step along it would turn
        # every weight NaN: the step is not taken (reported as not kept).
        kept = all(bool(torch.isfinite(g).all()) for g in grads.values())
        if kept:
            candidate = {k: w.detach().requires_grad_(True) for k, w in clipped_sgd(current, grads, lr, clip).items()}
            if safeguard:
                candidate_loss, candidate_grads = loss_and_grad(candidate)
                kept = candidate_loss <= loss
                if kept:
                    current, loss, grads = candidate, candidate_loss, candidate_grads
                else:
                    lr *= 0.5
            else:
                current = candidate
                if step < steps:
                    loss, grads = loss_and_grad(current)
        spent += time.perf_counter() - began
        # A step not kept leaves the weights as they were, and scoring is deterministic: the
        # last score stands. Under the LP's base (moca.mpc_base) the safeguard undoes most
        # steps and each validation rollout solves an LP a period, so this is most of a
        # service job's time under an emission cap.
        if kept or scored is None:
            scored = score(current)
        curve.append({"step": step, "seconds": spent, "kept": kept, "support_loss": loss if safeguard else math.nan,
                      **scored})
        if stepped is not None:
            stepped(step)
        if keep_best and curve[-1]["score"] > best[0]:
            best = (curve[-1]["score"], step, {k: v.detach() for k, v in current.items()})
    if keep_best:
        for entry in curve:
            entry["selected"] = entry["step"] == best[1]
        return best[2], curve
    return {k: v.detach() for k, v in current.items()}, curve
