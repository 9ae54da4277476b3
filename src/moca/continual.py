"""Continual learning over a sequence of regimes: EWC, online EWC, GEM-projected updates.

The learner goes through tasks one after the other (a task = one regulatory regime and its
training scenarios), takes gradient steps on each, and after each task *consolidates* it:
it remembers how much each weight mattered (EWC's diagonal Fisher) and keeps a small
memory of the task's scenarios (GEM's constraints). It is generic: it sees an
``nn.Module`` (only for the names and shapes of its parameters, and for fresh
initialisations) and loss closures of the :class:`Task` protocol, never the policy's
internals.

Methods, by name (:data:`METHODS`):

========  =====================  ==========  ==================
method    start of each task     EWC         projected updates
========  =====================  ==========  ==================
scratch   fresh init (per task)  no          no
finetune  previous weights       no          no
ewc       previous weights       yes         no
maml      meta-init, then prev.  no          no
moca      meta-init, then prev.  yes         yes
fomaml    as moca (init from first-order MAML)
reptile   as moca (init from Reptile)
========  =====================  ==========  ==================

References: Kirkpatrick et al. 2017 (EWC); Schwarz et al. 2018 (online EWC, "Progress &
Compress"); Lopez-Paz & Ranzato 2017 (GEM). Written here from those definitions.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Protocol, runtime_checkable

import numpy as np
import quadprog
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from moca.limits import is_finite_number, is_whole

Weights = dict[str, Tensor]


class ContinualError(ValueError):
    """Bad input to the continual learner; the message names the argument and the problem."""


# ----------------------------------------------------------------------------------------
# The task protocol (implemented by the experiment for the policy; by toy tasks in tests)
# ----------------------------------------------------------------------------------------


@runtime_checkable
class Task(Protocol):
    """One regime to learn, seen only through losses of a weights dict.

    ``weights`` maps every parameter name of the learner's module (``module.named_parameters()``)
    to a tensor of that parameter's shape; the tensors are differentiable views of the
    learner's flat weight vector, so implement the losses with
    ``torch.func.functional_call(module, weights, ...)`` and do not detach them. All losses
    are dimensionless and "lower is better" (for the policy: episode cost / oracle cost,
    plus any safety-layer penalty); they should be on a common scale across regimes so
    that one EWC strength λ fits every regime.

    - ``loss``: the training loss that one gradient step follows (scalar). It may draw a
      fresh mini-batch of training scenarios per call.
    - ``per_sample_losses``: ``[n]`` losses, one per training scenario, from ONE forward
      pass; the learner takes one backward pass per entry to get per-scenario gradients
      for the diagonal Fisher (called once per task, at consolidation). ``n`` of 8–32
      scenarios is plenty.
    - ``memory_loss``: the loss on a small, fixed memory of this task's scenarios (scalar);
      after the task is consolidated, GEM-projected methods evaluate its gradient at
      every later step, so keep the memory small (a few scenarios).
    """

    name: str

    def loss(self, weights: Weights) -> Tensor: ...

    def per_sample_losses(self, weights: Weights) -> Tensor: ...

    def memory_loss(self, weights: Weights) -> Tensor: ...


# ----------------------------------------------------------------------------------------
# Flat weights: the learner steps one vector; tasks see a dict of named views of it
# ----------------------------------------------------------------------------------------


class WeightLayout:
    """Names, shapes and offsets of a module's parameters inside one flat vector.

    Flat vectors make the Fisher, the EWC anchor and the GEM Gram matrix plain vector
    algebra; :meth:`unflatten` gives differentiable views, so gradients reach the vector.
    """

    def __init__(self, module: nn.Module):
        named = list(module.named_parameters())
        if not named:
            raise ContinualError("module: has no parameters to learn")
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) != 1:
            raise ContinualError(f"module: parameters must share one dtype, found {sorted(map(str, dtypes))}")
        self.names: tuple[str, ...] = tuple(n for n, _ in named)
        self.shapes: tuple[torch.Size, ...] = tuple(p.shape for _, p in named)
        self.sizes: tuple[int, ...] = tuple(p.numel() for _, p in named)
        self.dtype: torch.dtype = dtypes.pop()
        self.numel: int = sum(self.sizes)

    def flatten(self, weights: Mapping[str, Tensor]) -> Tensor:
        """The flat ``[P]`` vector of a weights dict (checked: same names and shapes)."""
        missing = [n for n in self.names if n not in weights]
        extra = [n for n in weights if n not in self.names]
        if missing or extra:
            raise ContinualError(f"weights: missing {missing}, unexpected {extra} (module has {list(self.names)})")
        for name, shape in zip(self.names, self.shapes):
            if tuple(weights[name].shape) != tuple(shape):
                raise ContinualError(
                    f"weights[{name!r}]: shape {tuple(weights[name].shape)}, the module's is {tuple(shape)}"
                )
        return torch.cat([weights[n].detach().reshape(-1).to(self.dtype) for n in self.names])

    def unflatten(self, flat: Tensor) -> Weights:
        """Named views of ``flat`` (differentiable), in the module's parameter shapes."""
        if flat.shape != (self.numel,):
            raise ContinualError(f"flat weights: shape {tuple(flat.shape)}, expected ({self.numel},)")
        return {n: part.view(s) for n, part, s in zip(self.names, flat.split(self.sizes), self.shapes)}


def fresh_weights(module: nn.Module, seed: int) -> Weights:
    """A fresh, seeded initialisation of ``module``'s parameters (the module is not touched).

    Uses the module's own ``reset_parameters()`` when it has one (so a policy can keep its
    custom init), else that of every submodule that has one (``nn.Linear``, ``nn.LSTM``...).
    The global torch RNG is left as it was.
    """
    clone = copy.deepcopy(module)
    if hasattr(clone, "reset_parameters"):
        resets = [clone.reset_parameters]
    else:
        resets = [m.reset_parameters for m in clone.modules() if m is not clone and hasattr(m, "reset_parameters")]
    if not resets:
        raise ContinualError("module: 'scratch' needs reset_parameters() on the module or its submodules")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for reset in resets:
            reset()
    return {n: p.detach().clone() for n, p in clone.named_parameters()}


# ----------------------------------------------------------------------------------------
# EWC and online EWC
# ----------------------------------------------------------------------------------------


def diagonal_fisher(per_sample_losses: Callable[[Weights], Tensor], layout: WeightLayout, flat: Tensor) -> Tensor:
    """Empirical diagonal Fisher ``F = mean_i g_i²`` (``[P]``), ``g_i`` = gradient of scenario i's loss.

    The losses are episode costs, not log-likelihoods, so this is the *empirical* Fisher
    (mean squared per-scenario gradient), as used by EWC in practice.

    Per-scenario gradients come from one forward pass and one ``torch.autograd.grad`` per
    scenario, with the graph retained. Why a loop: ``torch.func.vmap`` has no batching rule
    for ``nn.LSTM`` (and ``autograd.grad(is_grads_batched=True)`` vmaps the backward, with
    the same limit), and the Fisher is taken once per task, so the loop's cost is minor.
    """
    theta = flat.detach().clone().requires_grad_(True)
    losses = per_sample_losses(layout.unflatten(theta))
    if losses.dim() != 1 or losses.numel() == 0:
        raise ContinualError(f"per_sample_losses: expected a non-empty [n] tensor, got shape {tuple(losses.shape)}")
    if not torch.isfinite(losses).all():
        raise ContinualError("per_sample_losses: returned non-finite losses")
    squares = torch.zeros_like(theta)
    n = losses.numel()
    for i in range(n):
        (grad,) = torch.autograd.grad(losses[i], theta, retain_graph=i < n - 1, allow_unused=True)
        if grad is not None:  # None: scenario i does not depend on the weights
            squares += grad * grad
    return (squares / n).detach()


class EWC:
    """Elastic weight consolidation penalty ``(λ/2) Σ_k Σ_p F_k,p (θ_p − θ*_k,p)²``.

    Classic EWC (``online=False``) keeps one (Fisher, anchor) pair per consolidated task.
    Online EWC (``online=True``, Schwarz et al. 2018) keeps one running Fisher
    ``F ← γ F + F_new`` and one anchor, the weights after the latest task.
    """

    def __init__(self, lam: float, online: bool = False, gamma: float = 1.0):
        if not is_finite_number(lam) or not lam >= 0:
            raise ContinualError(f"ewc_lambda={lam!r}: must be a finite number >= 0")
        if not is_finite_number(gamma) or not 0 < gamma <= 1:
            raise ContinualError(f"gamma={gamma!r}: must be in (0, 1]")
        self.lam, self.online, self.gamma = float(lam), online, float(gamma)
        self.fishers: list[Tensor] = []  # online: at most one entry
        self.anchors: list[Tensor] = []

    def consolidate(self, fisher: Tensor, anchor: Tensor) -> None:
        """Add a finished task: its diagonal Fisher ``[P]`` and the weights after it ``[P]``."""
        if fisher.shape != anchor.shape or fisher.dim() != 1:
            raise ContinualError(f"fisher {tuple(fisher.shape)} and anchor {tuple(anchor.shape)}: need equal [P] shapes")
        if self.fishers and fisher.shape != self.fishers[0].shape:  # (it failed in every later penalty)
            raise ContinualError(f"fisher {tuple(fisher.shape)}: the earlier tasks' are {tuple(self.fishers[0].shape)}")
        if (fisher < 0).any() or not torch.isfinite(fisher).all():
            raise ContinualError("fisher: must be finite and >= 0")
        fisher, anchor = fisher.detach().clone(), anchor.detach().clone()
        if self.online and self.fishers:
            self.fishers = [self.gamma * self.fishers[0] + fisher]
            self.anchors = [anchor]
        else:
            self.fishers.append(fisher)
            self.anchors.append(anchor)

    def curvature(self) -> Tensor | None:
        """Diagonal Hessian of the penalty, ``λ Σ_k F_k`` (``[P]``); None before any task."""
        return self.lam * torch.stack(self.fishers).sum(dim=0) if self.fishers else None

    def penalty(self, flat: Tensor) -> Tensor:
        """The penalty at flat weights ``flat`` (scalar, differentiable); 0 before any task."""
        total = flat.new_zeros(())
        for fisher, anchor in zip(self.fishers, self.anchors):
            total = total + (fisher * (flat - anchor) ** 2).sum()
        return 0.5 * self.lam * total


# ----------------------------------------------------------------------------------------
# GEM: project the update so that no earlier regime's memory loss goes up (to first order)
# ----------------------------------------------------------------------------------------


def project_update(g: Tensor, memory_grads: Tensor, margin: float = 0.0) -> Tensor:
    """GEM projection of a proposed update direction ``g`` ``[P]`` (a gradient: the step is −d).

    With memory gradients ``G`` ``[K, P]`` (one row per earlier regime), ``g`` is returned
    unchanged when ``G g ≥ 0`` (no earlier loss increases to first order). Otherwise the
    result is ``d = Gᵀ v + g`` with ``v`` solving the dual QP (one variable per regime)::

        min_v  ½ vᵀ (G Gᵀ) v + (G g)ᵀ v    s.t.  v ≥ margin

    With ``margin = 0`` this is the Euclidean projection of ``g`` onto the cone
    ``{d : G d ≥ 0}``. A ``margin > 0`` is GEM's "memory strength": each memory gradient
    is added with weight at least ``margin``, which biases the update toward improving
    earlier regimes (backward transfer); the result still satisfies ``G d ≥ 0``.

    Solved in float64 with quadprog (Goldfarb-Idnani). When memory gradients are linearly
    dependent (singular Gram matrix), a tiny diagonal jitter (relative 1e-10, raised if
    needed) makes it positive definite. All-zero rows constrain nothing and are dropped.
    The result is ``g`` itself (same object) when nothing was projected.
    """
    for name, value in (("g", g), ("memory_grads", memory_grads)):
        if not isinstance(value, Tensor):
            raise ContinualError(f"{name}: expected a torch tensor, got {type(value).__name__}")
    if g.dim() != 1:
        raise ContinualError(f"g: expected a [P] vector, got shape {tuple(g.shape)}")
    if memory_grads.dim() != 2 or memory_grads.shape[1] != g.shape[0]:
        raise ContinualError(f"memory_grads: expected [K, {g.shape[0]}], got shape {tuple(memory_grads.shape)}")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ContinualError(f"margin={margin!r}: must be a finite number >= 0")
    # float64 for the small dense algebra; vector ops over P dominate, so each is done once.
    gd = g.detach().to(torch.float64)
    mem = memory_grads.detach().to(torch.float64)
    norms = (mem * mem).sum(dim=1)  # ||g_k||²; non-finite iff the row is
    if not (math.isfinite(float(gd @ gd)) and torch.isfinite(norms).all()):
        raise ContinualError("g / memory_grads: contain non-finite values")
    if not bool((norms > 0).all()):
        mem = mem[norms > 0]
    dots = mem @ gd
    if mem.shape[0] == 0 or bool((dots >= 0).all()):
        return g
    if margin == 0 and mem.shape[0] >= mem.shape[1]:
        # As many constraints as weights (tiny models): the Gram matrix is singular and the
        # jittered dual leaves a small violation, while the primal QP is small and exact.
        # Rows through the origin can make quadprog call the (always consistent: d = 0)
        # constraints inconsistent; a relative slack of 1e-12, then 1e-10, settles it.
        slack = np.sqrt(norms[norms > 0].numpy() * float(gd @ gd))
        for relax in (0.0, 1e-12, 1e-10):
            try:
                d = quadprog.solve_qp(np.eye(mem.shape[1]), gd.numpy(), mem.numpy().T, -relax * slack)[0]
                break
            except ValueError:
                continue
        else:  # pragma: no cover - d = 0 is strictly feasible for the relaxed rows
            raise ContinualError("project_update: the GEM primal QP could not be solved")
        return torch.from_numpy(d).to(dtype=g.dtype, device=g.device)
    gram = (mem @ mem.T).numpy()
    gram = 0.5 * (gram + gram.T)  # exact symmetry for the Cholesky inside quadprog
    k = gram.shape[0]
    scale = max(float(np.trace(gram)) / k, np.finfo(np.float64).tiny)
    for jitter in (0.0, 1e-10, 1e-7, 1e-4):
        try:
            v = quadprog.solve_qp(gram + jitter * scale * np.eye(k), -dots.numpy(), np.eye(k), np.full(k, float(margin)))[0]
            break
        except ValueError:  # "matrix G is not positive definite": retry with more jitter
            continue
    else:  # pragma: no cover - a PSD Gram plus 1e-4 relative jitter is positive definite
        raise ContinualError("project_update: the GEM dual QP could not be solved")
    d = torch.from_numpy(v) @ mem + gd
    return d.to(dtype=g.dtype, device=g.device)


# ----------------------------------------------------------------------------------------
# The learner
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """What a method name means: where each task starts, and which protections apply."""

    init: Literal["fresh", "given", "meta"]  # fresh per task / module or given weights / meta-init (required)
    ewc: bool
    project: bool


#: Every valid method name; the meta-init methods differ only in which checkpoint is passed.
METHODS: dict[str, MethodSpec] = {
    "scratch": MethodSpec(init="fresh", ewc=False, project=False),
    "finetune": MethodSpec(init="given", ewc=False, project=False),
    "ewc": MethodSpec(init="given", ewc=True, project=False),
    "maml": MethodSpec(init="meta", ewc=False, project=False),
    "moca": MethodSpec(init="meta", ewc=True, project=True),
    "fomaml": MethodSpec(init="meta", ewc=True, project=True),
    "reptile": MethodSpec(init="meta", ewc=True, project=True),
}


def method_spec(method: str) -> MethodSpec:
    """The spec of a method name; unknown names raise a :class:`ContinualError` listing the valid ones."""
    if method not in METHODS:
        raise ContinualError(f"method={method!r}: unknown continual method (valid: {', '.join(METHODS)})")
    return METHODS[method]


class ContinualConfig(BaseModel):
    """Hyper-parameters of the continual learner (shared by every method; unused ones are ignored)."""

    # inf refused (an infinite rate, EWC strength or margin gave NaN weights a step later)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="step rule on the flat weights; GEM's no-increase guarantee is for plain SGD"
    )
    lr: float = Field(0.01, gt=0, description="step size")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the (projected) update to this norm")
    reset_optimizer: bool = Field(True, description="fresh optimizer state at the start of each task")
    ewc_lambda: float = Field(
        1.0, ge=0, description="EWC strength λ; its scale depends on the loss and the Fisher: tune it on held-out regimes"
    )
    online: bool = Field(False, description="online EWC (one running Fisher, latest anchor)")
    gamma: float = Field(1.0, gt=0, le=1, description="online EWC Fisher decay γ")
    margin: float = Field(0.0, ge=0, description="GEM memory strength (lower bound on the dual variables)")
    memory_every: int = Field(
        1, ge=0, description="recompute memory gradients every k steps (1 = GEM exactly; 0 = once per task, cheaper)"
    )
    seed: int = Field(0, description="seed of 'scratch' re-initialisations (seed + task index)")

    @field_validator("*", mode="before")
    @classmethod
    def _as_given(cls, value: Any, info) -> Any:
        from moca.policy import refuse_conversion

        return refuse_conversion(cls, value, info.field_name)


@dataclass
class LearnStats:
    """What :meth:`ContinualLearner.learn` did on one task."""

    task: str
    losses: list[float] = field(default_factory=list)  # task loss at the weights each step started from
    penalties: list[float] = field(default_factory=list)  # EWC penalty at the same weights
    projected: list[bool] = field(default_factory=list)  # whether the GEM projection changed the step
    seconds: list[float] = field(default_factory=list)  # wall s of learning after 0..steps steps (callbacks excluded)
    scores: list[Any] = field(default_factory=list)  # on_step's returns for steps 0..steps (empty without callback)
    weights: Weights = field(default_factory=dict)  # weights after the last step (detached copies)

    @property
    def total_seconds(self) -> float:
        return self.seconds[-1] if self.seconds else 0.0


@dataclass
class ConsolidateStats:
    task: str
    seconds: float  # wall s for the Fisher and the memory bookkeeping
    max_curvature: float | None = None  # max of λ Σ F (EWC methods): SGD on the penalty is stable iff lr · this < 2


class ContinualLearner:
    """Learns a sequence of tasks with one of :data:`METHODS`.

    Usage, per task: ``stats = learner.learn(task, steps, on_step=...)`` then
    ``learner.consolidate(task)``. ``on_step(step, weights)`` is called with the weights
    before any step (step 0) and after each step (1..steps); what it returns (e.g. a
    validation score) is kept in ``stats.scores``, and its time is not counted in
    ``stats.seconds``.

    ``init_weights`` (a weights dict) is required by the meta-init methods; 'finetune' and
    'ewc' start from it when given, else from the module's current parameters; 'scratch'
    refuses it (it re-initialises the module with ``config.seed + task index``).
    The module itself is never modified. ``learner.fork()`` copies the learner's state, e.g.
    to learn a task two ways (``learn(..., protect=False)``: plain steps) and keep one.
    """

    def __init__(
        self,
        module: nn.Module,
        method: str,
        init_weights: Mapping[str, Tensor] | None = None,
        config: ContinualConfig | None = None,
    ):
        self.module = module
        self.method = method
        self.spec = method_spec(method)
        self.config = config or ContinualConfig()
        self.layout = WeightLayout(module)
        if self.spec.init == "meta" and init_weights is None:
            raise ContinualError(f"init_weights: method {method!r} starts from a meta-init; pass its weights")
        if self.spec.init == "fresh" and init_weights is not None:
            raise ContinualError("init_weights: method 'scratch' trains a fresh policy per regime; it takes no init")
        if init_weights is not None:
            start = self.layout.flatten(init_weights)
        elif self.spec.init == "fresh":
            start = self.layout.flatten(fresh_weights(module, self.config.seed))
        else:
            start = self.layout.flatten(dict(module.named_parameters()))
        if not torch.isfinite(start).all():
            raise ContinualError("init_weights: contain non-finite values")
        self.flat: Tensor = start.clone().requires_grad_(True)
        c = self.config
        self.ewc = EWC(c.ewc_lambda, online=c.online, gamma=c.gamma) if self.spec.ewc else None
        self.memories: list[Task] = []  # consolidated tasks whose memory losses constrain updates
        self.tasks_done: int = 0
        # The task being learned (None between tasks) and the one consolidated last, until the
        # next begins: by identity, as two tasks may share a name (PolicyTask's default, say)
        # and a new one must begin afresh (optimizer state, a fresh start for 'scratch').
        self._active: Task | None = None
        self._closed: Task | None = None
        self._optimizer = self._new_optimizer()
        self._memory_grads: Tensor | None = None  # [K, P] cache, see ContinualConfig.memory_every
        self._memory_age = 0  # steps since the cache was filled

    # -- state ---------------------------------------------------------------------------

    @property
    def protecting(self) -> bool:
        """Whether a protected step can differ from a plain one: an EWC term or a GEM memory is consolidated."""
        return bool(self.memories) or (self.ewc is not None and bool(self.ewc.fishers))

    def fork(self) -> ContinualLearner:
        """An independent copy, to try another update from the same state: its own weights,
        EWC terms, memories list and optimizer state; the module and the consolidated
        tasks (read-only here) are shared, not copied."""
        twin = copy.copy(self)
        twin.flat = self.flat.detach().clone().requires_grad_(True)
        if self.ewc is not None:
            twin.ewc = copy.copy(self.ewc)  # its tensors are replaced, never changed in place
            twin.ewc.fishers, twin.ewc.anchors = list(self.ewc.fishers), list(self.ewc.anchors)
        twin.memories = list(self.memories)
        twin._optimizer = twin._new_optimizer()
        twin._optimizer.load_state_dict(copy.deepcopy(self._optimizer.state_dict()))
        return twin

    @property
    def weights(self) -> Weights:
        """Current weights (detached copies), by parameter name."""
        return {n: w.detach().clone() for n, w in self.layout.unflatten(self.flat).items()}

    def _new_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":
            return torch.optim.Adam([self.flat], lr=c.lr)
        return torch.optim.SGD([self.flat], lr=c.lr, momentum=c.momentum)

    def _begin(self, task: Task) -> None:
        """Start a new task: fresh weights for 'scratch', fresh optimizer state if configured."""
        if self.spec.init == "fresh" and self.tasks_done > 0:
            fresh = self.layout.flatten(fresh_weights(self.module, self.config.seed + self.tasks_done))
            with torch.no_grad():
                self.flat.copy_(fresh)
        if self.config.reset_optimizer or self.spec.init == "fresh":
            self._optimizer = self._new_optimizer()
        self._memory_grads = None
        self._active, self._closed = task, None

    def _memory_gradients(self) -> Tensor:
        """``[K, P]`` gradients of the earlier regimes' memory losses (GEM's constraints).

        GEM recomputes them at the current weights every step (``memory_every=1``), one
        backward pass per earlier regime; a larger ``memory_every`` (or 0: once per task)
        reuses them, a good approximation over a few small adaptation steps.
        """
        every = self.config.memory_every
        stale = self._memory_grads is None or (every > 0 and self._memory_age >= every)
        if stale:
            self._memory_grads = torch.stack(
                [self._gradient(self._loss(m.memory_loss, f"task {m.name!r} memory_loss")) for m in self.memories]
            )
            self._memory_age = 0
        self._memory_age += 1
        return self._memory_grads

    # -- one update ----------------------------------------------------------------------

    def _loss(self, loss_fn: Callable[[Weights], Tensor], what: str) -> Tensor:
        """``loss_fn`` at the current weights, checked to be a finite scalar (graph kept)."""
        loss = loss_fn(self.layout.unflatten(self.flat))
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ContinualError(f"{what}: expected a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        if not torch.isfinite(loss):
            raise ContinualError(f"{what}: loss is not finite ({loss.item()})")
        return loss

    def _gradient(self, objective: Tensor) -> Tensor:
        (grad,) = torch.autograd.grad(objective, self.flat, allow_unused=True)
        return torch.zeros_like(self.flat) if grad is None else grad

    def step(self, task: Task, protect: bool = True) -> tuple[float, float, bool]:
        """One update on ``task``; returns (task loss, EWC penalty, projected?) at the weights before it.

        ``protect=False``: a plain step on the task loss alone (no EWC penalty, reported as
        0, and no GEM projection), i.e. the 'maml' update, with the learner's consolidated
        state kept for later protected steps.
        """
        if self._active is not task:
            self._begin(task)
        loss = self._loss(task.loss, f"task {task.name!r} loss")
        penalty = self.ewc.penalty(self.flat) if self.ewc is not None and protect else torch.zeros_like(loss)
        grad = self._gradient(loss + penalty)
        projected = False
        if self.memories and protect:  # only projected methods keep memories
            direction = project_update(grad, self._memory_gradients(), self.config.margin)
            projected = direction is not grad
            grad = direction
        if self.config.max_grad_norm is not None:
            # Scaling by a positive number keeps every GEM constraint g_k·d >= 0 satisfied.
            norm = float(grad.norm())
            if norm > self.config.max_grad_norm:
                grad = grad * (self.config.max_grad_norm / norm)
        self.flat.grad = grad.detach().clone()
        before = self.flat.detach().clone()
        self._optimizer.step()
        self.flat.grad = None
        if not bool(torch.isfinite(self.flat).all()):  # (else NaN weights surfaced a rollout later)
            with torch.no_grad():
                self.flat.copy_(before)
            raise ContinualError(f"task {task.name!r}: a step made the weights non-finite (lr={self.config.lr:g}); "
                                 "the weights are as before it")
        return float(loss.detach()), float(penalty.detach()), projected

    # -- a whole task --------------------------------------------------------------------

    def learn(
        self,
        task: Task,
        steps: int,
        on_step: Callable[[int, Weights], Any] | None = None,
        protect: bool = True,
    ) -> LearnStats:
        """``steps`` gradient steps on ``task`` (continuing it if it is the task in progress);
        ``protect=False``: plain steps, see :meth:`step`."""
        if not is_whole(steps) or steps < 0:
            raise ContinualError(f"steps={steps!r}: must be a whole number >= 0")
        steps = int(steps)
        if self._active is not task:
            self._begin(task)
        stats = LearnStats(task=task.name, seconds=[0.0])
        if on_step is not None:
            stats.scores.append(on_step(0, self.weights))
        elapsed = 0.0
        for k in range(1, steps + 1):
            start = time.perf_counter()
            loss, penalty, projected = self.step(task, protect=protect)
            elapsed += time.perf_counter() - start
            stats.losses.append(loss)
            stats.penalties.append(penalty)
            stats.projected.append(projected)
            stats.seconds.append(elapsed)
            if on_step is not None:
                stats.scores.append(on_step(k, self.weights))
        stats.weights = self.weights
        return stats

    def consolidate(self, task: Task) -> ConsolidateStats:
        """Close ``task``: Fisher and anchor for EWC methods, memory for projected methods."""
        if self._active is not None and self._active is not task:
            other = "another task of that name" if self._active.name == task.name else repr(self._active.name)
            raise ContinualError(f"consolidate: task {task.name!r} is not the one being learned ({other})")
        if self._active is None and self._closed is task:  # (it doubled the Fisher and the memory)
            raise ContinualError(f"consolidate: task {task.name!r} is already consolidated; learn it again first")
        start = time.perf_counter()
        max_curvature = None
        if self.ewc is not None:
            fisher = diagonal_fisher(task.per_sample_losses, self.layout, self.flat)
            self.ewc.consolidate(fisher, self.flat.detach())
            max_curvature = float(self.ewc.curvature().max())
            if (self.config.optimizer == "sgd" and self.config.max_grad_norm is None
                    and self.config.lr * max_curvature >= 2):
                # Plain (unclipped) SGD on a quadratic of curvature c diverges when lr · c >= 2.
                warnings.warn(
                    f"EWC after task {task.name!r}: lr·λ·max F = {self.config.lr * max_curvature:.3g} >= 2, "
                    "SGD steps will oscillate and diverge on the penalty; lower lr or ewc_lambda, "
                    "or use optimizer='adam' / max_grad_norm",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if self.spec.project:
            self.memories.append(task)
        self.tasks_done += 1
        self._active, self._closed = None, task
        return ConsolidateStats(task=task.name, seconds=time.perf_counter() - start, max_curvature=max_curvature)
