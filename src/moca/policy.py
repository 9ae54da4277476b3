"""The learned control policy of moca: an LSTM over recent observations, trained by
backpropagation through the differentiable simulator and safety layer.

Read top to bottom:

1. :class:`PolicyConfig` and :func:`features` — what the policy sees, normalised to O(1).
2. :func:`base_action` — a mandate-aware order-up-to rule. The network outputs its action
   *relative to* this rule (a residual in capacity units), so an untrained policy already
   runs the supply chain sensibly and learning only has to add what the regime asks for.
3. :class:`LSTMPolicy` — the ``nn.Module`` (recent feature frames + LSTM state -> raw
   action, kg/units).
4. :class:`PolicyAgent` — the Policy protocol of :mod:`moca.sim` over any weights dict,
   through ``torch.func.functional_call`` (adapted weights never touch the module).
5. :func:`policy_loss` — episode cost / oracle cost + safety-layer correction penalty
   (+ optional DAgger-style imitation of the MPC or the oracle).
6. :func:`evaluate_policy`, :func:`train_policy`, :func:`compare_losses`.
7. :class:`DeployedPolicy` — one decision for one scenario with the exact projection.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn
from torch.func import functional_call

from moca import safety
from moca.limits import is_finite_number, is_whole
from moca.scenario import LARGEST_VALUE, Params, Scenario, seasonal_mean_demand
from moca.sim import (
    R_CAP, R_LANDFILL, R_MANDATE, R_RECOVERY, R_TAX, Observation, Projector, ScenarioBatch,
    rollout,
)

Weights = dict[str, Tensor]

# The deployed step's sigmoid is 1 / (1 + exp(-x)): for a gate below about -709 the exp
# overflows to inf and the gate is 0, as it should be, but numpy warns on stderr (seen on
# chains of capacities near 0). Silenced for this module's one line rather than an
# np.errstate on the decision path, which costs ~2 us of the ~100 us a decision takes.
warnings.filterwarnings("ignore", message="overflow encountered in exp", category=RuntimeWarning,
                        module=__name__)


class PolicyError(ValueError):
    """Bad input to the policy; the message names the argument and the problem."""


class InputSizeError(PolicyError):
    """A checkpoint's weights do not fit a chain: its lead time or return lag differs, and
    with them the number of the policy's inputs. ``trained``: the checkpoint's params."""

    def __init__(self, message: str, trained: Any = None):
        super().__init__(message)
        self.trained = trained


class PolicyConfig(BaseModel):
    """Architecture of :class:`LSTMPolicy` (pydantic, so it serialises into checkpoints)."""

    # (an infinite safety stock in a checkpoint's JSON was taken and ordered at capacity)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hidden: int = Field(64, ge=1, le=1024, description="LSTM hidden size")
    window: int = Field(2, ge=1, le=52, description="recent observation frames stacked into each LSTM input")
    regime_conditioned: bool = Field(True, description="False: the ablation that does not see the regime")
    structured: bool = Field(True, description="actions relative to the order-up-to base rule (else from 0)")
    # At 1e308 the raw action overflowed to NaN, an internal error in evaluation; 100 times the
    # capacities is far beyond any residual worth learning.
    residual_scale: float = Field(0.5, gt=0, le=100, description="head output 1.0 = this share of capacity S")
    safety_stock: float = Field(300.0, ge=0, le=LARGEST_VALUE,
                                description="units of product the base rule keeps in reserve")

    @field_validator("*", mode="before")
    @classmethod
    def _as_given(cls, value: Any, info) -> Any:
        return refuse_conversion(cls, value, info.field_name)


def refuse_conversion(model: type[BaseModel], value: Any, name: str) -> Any:
    """``value`` as it is, unless pydantic would convert it: it takes ``true`` as 1, so
    ``hidden: true`` or ``seed: true`` trained with 1 without a word, ``"64"`` as 64 and
    ``"no"`` or ``0`` as False (a checkpoint's ``structured: "no"`` rebuilt another policy).
    Configs and checkpoints take numbers and booleans as they are, as scenario files do."""
    annotation = model.model_fields[name].annotation
    kinds = {annotation, *get_args(annotation)}
    if value is None and type(None) in kinds:
        return value
    if int in kinds or float in kinds:
        if isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name}={value!r} is not a number")
        if isinstance(value, str):
            raise ValueError(f"{name}={value!r} is text, not a number (write it without quotes)")
        if isinstance(value, (float, np.floating)) and math.isnan(value):  # (a bound's check then named
            # the bound: "inner_lr=nan: Input should be less than or equal to 100")
            raise ValueError(f"{name}=nan is not a number")
    elif bool in kinds and not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} must be true or false")
    return value


# ----------------------------------------------------------------------------------------
# 1-2. Features and the base rule (written once for numpy and torch: ``xp`` is the module)
# ----------------------------------------------------------------------------------------

#: Names of the regime features (zeroed when the policy is not regime-conditioned).
REGIME_FEATURES = ("mandate", "carbon_tax/1000", "has_cap", "cap_tightness", "landfill_tax/100", "recovery_target")


def reference_emissions(params: Params) -> float:
    """kg CO2 of an average period made from virgin material only (scale of the cap)."""
    return (params.emis_virgin * params.mass + params.emis_produce) * params.demand_base


@dataclass(frozen=True)
class FeatureLayout:
    """Where each group sits in one frame of features (depends on ``L_v`` and ``L_r``)."""

    size: int
    regime: slice
    base: slice


def feature_layout(params: Params) -> FeatureLayout:
    n_pipeline = params.lead_virgin - 1  # slots left after event 1 popped the arriving one
    start_regime = 5 + n_pipeline + params.lag_return + 2
    start_base = start_regime + len(REGIME_FEATURES)
    return FeatureLayout(size=start_base + 6 + 3, regime=slice(start_regime, start_base),
                         base=slice(start_base, start_base + 6))


#: Periods of the mandate's recycled need that the base rule keeps in reserve.
RESERVE_PERIODS = 4


class FeatureSpec:
    """The constants of the feature map for one (params, config), computed once: the
    per-column scaling and the seasonal forecast of every period (0 after the horizon)."""

    def __init__(self, params: Params, config: PolicyConfig):
        p = self.params = params
        self.config = config
        self.layout = feature_layout(params)
        n_pipe, n_sales = p.lead_virgin - 1, p.lag_return
        # A divisor of inf zeroes the regime columns of the unconditioned ablation.
        regime = [1.0, 1000.0, 1.0, 1.0, 100.0, 1.0] if config.regime_conditioned else [math.inf] * 6
        self.divisor = np.array([p.cap_order, p.mass * p.cap_produce, p.cap_produce, p.cap_disassemble, p.cap_produce]
                                + [p.cap_order] * n_pipe + [p.cap_produce] * n_sales
                                + [max(p.return_mean, 1e-6), max(p.demand_base, 1e-6)] + regime + list(p.action_scale))
        self.divisor = np.concatenate([self.divisor, np.ones(3)])  # season sin, cos and t/T as they are
        self.offset = np.zeros_like(self.divisor)
        start = self.layout.regime.start  # rho_t and d_{t-1} sit just before the regime
        self.offset[start - 2:start] = [p.return_mean, p.demand_base]
        self.ahead = max(p.lead_virgin + 1, RESERVE_PERIODS + 1) + 1
        periods = np.arange(p.horizon + self.ahead)
        # Python floats: a numpy scalar on the left of a tensor would turn the result into numpy.
        self.forecast = tuple(float(x) if k < p.horizon else 0.0
                              for k, x in zip(periods, seasonal_mean_demand(p, periods)))
        self.cap_reference = reference_emissions(p)
        self._torch: dict[tuple, tuple[Tensor, Tensor]] = {}

    def affine(self, like: Any) -> tuple[Any, Any]:
        """``(divisor, offset)`` as arrays of ``like``'s kind (numpy, or torch dtype/device)."""
        if not isinstance(like, Tensor):
            return self.divisor, self.offset
        key = (like.dtype, like.device)
        if key not in self._torch:
            self._torch[key] = tuple(torch.as_tensor(a, dtype=like.dtype, device=like.device)
                                     for a in (self.divisor, self.offset))
        return self._torch[key]


@lru_cache(maxsize=64)
def feature_spec(params: Params, config: PolicyConfig) -> FeatureSpec:
    return FeatureSpec(params, config)


class _Scalars:
    """The array functions :func:`feature_columns` needs, for plain Python floats: one
    scenario on the deployment hot path, where numpy's ~1-2 µs per call on 1-element
    arrays would cost ~200 µs per decision (Python float arithmetic: ~10 µs)."""

    @staticmethod
    def clip(x: float, low: float, high: float | None) -> float:
        return max(x, low) if high is None else min(max(x, low), high)

    minimum = staticmethod(min)

    @staticmethod
    def stack(columns: list, axis: int) -> np.ndarray:
        return np.array(columns, dtype=np.float64)


def base_action(xp: Any, spec: FeatureSpec, t: int, stocks: Sequence, pipeline: Sequence, mandate,
                landfill_tax) -> list:
    """A mandate-aware order-up-to rule (kg, kg, kg, cores x3), as 6 columns ``[B]``.

    Material used in period ``k`` becomes product at the end of ``k``, for the demand of
    ``k+1`` (products and material left at the end of the horizon are waste), so:

    - product: produce so that the end-of-period stock covers next period's mean demand
      plus a safety stock; nothing in the last period;
    - recycled material: use the mandate's share ``r`` of the input, plus whatever
      exceeds a reserve of ``RESERVE_PERIODS`` periods of the mandate's need; disassemble
      just enough cores to refill that reserve;
    - virgin material: use the rest; order up to the virgin need of the periods until the
      order arrives (``t+1 .. t+L_v``) plus the safety stock's material;
    - cores not disassembled: dispose of them unless holding them to the end of the
      horizon is cheaper (``h_C`` per period against ``c_w + lambda`` once).
    Without regulation this is the plain order-up-to rule that disposes of spare cores.
    The network learns the rest: carbon taxes, caps, recovery targets, seasonal build-up.
    ``stocks`` are the columns (V, M, P, C, B), ``pipeline`` the ``L_v - 1`` columns in
    transit; ``mandate`` and ``landfill_tax`` come from the regime (zeros for the
    unconditioned ablation). The forecast is the seasonal mean (no peeking at demand).
    """
    p, safety_stock = spec.params, spec.config.safety_stock
    virgin, recycled, product, cores, backlog = stocks
    forecast = spec.forecast[t:t + spec.ahead]

    def reserve_stock(k: int) -> float:  # safety stock wanted at the end of period t+k
        return safety_stock if t + k + 1 < p.horizon else 0.0

    last = 0.0 if t + 1 >= p.horizon else 1.0
    produce = last * xp.clip(forecast[0] + forecast[1] + reserve_stock(0) - product + backlog, 0.0, p.cap_produce)
    material = p.mass * produce
    reserve = mandate * (p.mass * sum(forecast[2:RESERVE_PERIODS + 2]))
    surplus = xp.clip(recycled - reserve, 0.0, None)
    use_recycled = xp.minimum(xp.minimum(recycled, material), surplus + mandate * material)
    use_virgin = material - use_recycled
    per_core = max(p.yield_disassembly * p.mass, 1e-9)  # kg recycled per disassembled core
    disassemble = xp.minimum(xp.clip((reserve - recycled + use_recycled) / per_core, 0.0, p.cap_disassemble), cores)
    need = sum(forecast[2:p.lead_virgin + 2])  # demand served by production in t+1 .. t+L_v
    target = p.mass * ((1.0 - mandate) * need + reserve_stock(p.lead_virgin))
    position = virgin - use_virgin + sum(pipeline)
    order = xp.clip(target - position, 0.0, p.cap_order)
    worth_disposing = p.hold_core * (p.horizon - 1 - t) > p.cost_dispose + landfill_tax
    dispose = xp.clip(cores - disassemble, 0.0, p.cap_dispose) * worth_disposing
    return [order, use_virgin, use_recycled, disassemble, cores * 0.0, dispose]


def feature_columns(xp: Any, spec: FeatureSpec, t: int, stocks: Sequence, pipeline: Sequence,
                    sales_history: Sequence, regime: Sequence, return_frac, last_demand) -> Any:
    """One frame of the normalised observation: ``[B, F]`` (``xp`` = torch or numpy, with
    ``[B]`` columns) or ``[F]`` (``xp`` = :class:`_Scalars`, with float columns).

    Columns: ``stocks`` (V, M, P, C, B) post-arrival; ``pipeline`` the ``L_v - 1`` orders
    in transit (kg); ``sales_history`` the last ``L_r`` sales (units); ``regime`` the 5
    fields; ``return_frac``; ``last_demand`` (None at t = 0). Stocks are divided by the
    capacity that moves them, so every feature is O(1). Written once for all three
    kinds of input so that training and deployment cannot drift apart.
    """
    p = spec.params
    zero = stocks[0] * 0.0
    last = zero + p.demand_base if last_demand is None else last_demand
    phase = 2.0 * math.pi * t / 52.0
    # The regime in force; an absent cap is +inf, so ref/cap is 0 and has_cap is 0.
    mandate, tax, cap = regime[R_MANDATE], regime[R_TAX], regime[R_CAP]
    landfill, recovery = regime[R_LANDFILL], regime[R_RECOVERY]
    cond = 1.0 if spec.config.regime_conditioned else 0.0
    regime_columns = [mandate, tax, (cap < math.inf) + zero, xp.clip(spec.cap_reference / cap, 0.0, 4.0), landfill,
                      recovery]
    base = base_action(xp, spec, t, stocks, pipeline, cond * mandate, cond * landfill)
    season = [zero + math.sin(phase), zero + math.cos(phase), zero + t / p.horizon]
    raw = xp.stack([*stocks, *pipeline, *sales_history, return_frac, last, *regime_columns, *base, *season], -1)
    divisor, offset = spec.affine(raw)
    return (raw - offset) / divisor


def features(obs: Observation, config: PolicyConfig = PolicyConfig()) -> Tensor:
    """The policy's normalised input ``[B, F]`` (one frame) at an observation of :mod:`moca.sim`."""
    s = obs.state
    return feature_columns(torch, feature_spec(obs.params, config), obs.t,
                           (s.virgin, s.recycled, s.product, s.cores, s.backlog), s.pipeline.unbind(-1),
                           s.sales_history.unbind(-1), obs.regime.unbind(-1), obs.return_frac, obs.last_demand)


# ----------------------------------------------------------------------------------------
# 3. The module
# ----------------------------------------------------------------------------------------

LSTMState = tuple[Tensor, Tensor]


class LSTMPolicy(nn.Module):
    """One period: stacked frames ``[B, W*F]`` and the LSTM state -> raw action ``[B, 6]``
    (kg, kg, kg, cores x3) and the new state.

    The input is the last ``window`` feature frames side by side; an LSTM cell carries its
    state ``(h, c)`` through the episode (one step per period, so a decision costs one
    cell step however long the memory). A linear head sees ``h`` and the input (a linear
    skip, so order-up-to-like corrections are easy to learn). With ``structured`` the
    action is ``base + residual_scale * S * head`` (the base rule's action is part of the
    features), else ``S * head``. The head starts at zero, so a fresh structured policy
    *is* the base rule. Reconstructible from (params, config) and a state dict.
    """

    def __init__(self, params: Params = Params(), config: PolicyConfig = PolicyConfig()):
        super().__init__()
        self.params, self.config = params, config
        self.layout = feature_layout(params)
        inputs = self.layout.size * config.window
        self.cell = nn.LSTMCell(inputs, config.hidden)
        self.head = nn.Linear(config.hidden + inputs, 6)
        last = self.layout.size * (config.window - 1)  # the current frame is the last one
        self._base = slice(last + self.layout.base.start, last + self.layout.base.stop)
        self.register_buffer("scale", torch.as_tensor(params.action_scale, dtype=torch.float32), persistent=False)
        self.reset_parameters()

    def observe(self, obs: Observation) -> Tensor:
        """One feature frame ``[B, F]`` at a simulator observation (what :class:`PolicyAgent`
        feeds the module); a subclass may put another base rule into the base columns."""
        return features(obs, self.config)

    def reset_parameters(self) -> None:
        self.cell.reset_parameters()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, frames: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        h, c = self.cell(frames, state)
        head = self.head(torch.cat([h, frames], dim=-1))
        if self.config.structured:
            return frames[:, self._base] * self.scale + self.config.residual_scale * self.scale * head, (h, c)
        return self.scale * head, (h, c)


def with_params(module: "LSTMPolicy", params: Params) -> "LSTMPolicy":
    """The same policy (config and weights) for a chain with other parameters; either
    world's policy (``type(module)`` is rebuilt: :class:`moca.policy2.LSTMPolicy2` too).

    The features are normalised by the chain's capacities, so the weights carry over; their
    shapes depend on the lead time and the return lag only, and differ when those do."""
    if params == module.params:
        return module
    # A subclass with more to its base than (params, config) rebuilds itself (moca.mpc_base).
    rebuild = getattr(module, "rebuilt_for", None)
    rebuilt = rebuild(params) if rebuild is not None else type(module)(params, module.config)
    ours = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if ours != theirs:
        world = "--model CLSC-2 " if type(params).__name__ == "Params2" else ""
        raise InputSizeError(f"params: lead_virgin={params.lead_virgin}, lag_return={params.lag_return} change the "
                          f"policy's input size; the checkpoint was trained for lead_virgin="
                          f"{module.params.lead_virgin}, lag_return={module.params.lag_return} (run it with --params "
                          f"of a chain with those, or train one for this chain with 'moca train {world}--params FILE')",
                          trained=module.params)
    rebuilt.load_state_dict(module.state_dict())
    return rebuilt


def module_weights(module: nn.Module) -> Weights:
    """The module's own parameters as a weights dict (shared tensors, not copies)."""
    return dict(module.named_parameters())


def check_weights(module: nn.Module, weights: Any, what: str = "weights", finite: bool = True) -> None:
    """Refuse a weights dict that does not fit ``module``'s parameters: a name missing or
    unknown, a value that is not a tensor, a shape or (``finite``) a non-finite entry, each
    named (:class:`PolicyError`; a KeyError, a broadcast error or a NaN action later otherwise)."""
    if not isinstance(weights, Mapping):
        raise PolicyError(f"{what}: expected a dict of parameter name -> tensor, got {type(weights).__name__}")
    expected = {name: tuple(p.shape) for name, p in module.named_parameters()}
    missing, unknown = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unknown:
        listed = lambda names: ", ".join(map(str, names[:3])) + (", ..." if len(names) > 3 else "")  # noqa: E731
        parts = ([f"missing {listed(missing)}"] if missing else []) + ([f"unknown {listed(unknown)}"] if unknown else [])
        raise PolicyError(f"{what}: {'; '.join(parts)} (they must be the policy's {len(expected)} parameters)")
    for name, shape in expected.items():
        value = weights[name]
        if not isinstance(value, Tensor):
            raise PolicyError(f"{what}[{name!r}]: expected a torch tensor, got {type(value).__name__}")
        if tuple(value.shape) != shape:
            raise PolicyError(f"{what}[{name!r}]: shape {list(value.shape)}, expected {list(shape)}")
        if finite and not bool(torch.isfinite(value.detach()).all()):
            raise PolicyError(f"{what}[{name!r}]: holds NaN or infinite entries")


def check_evaluation(module: nn.Module, weights: Any, params: Any, oracle_costs: Any, size: int) -> np.ndarray:
    """An evaluation's inputs, each named, and its oracle costs as float64 ``[size]``: the
    weights fit the module (a partial dict took the rest from the module without a word),
    the scenarios are the module's chain (another horizon was scored without a word), and
    the oracle costs are ``size`` finite numbers > 0 (a negative one gave a negative score)."""
    if weights is not None:
        many = isinstance(weights, (list, tuple))  # one dict per group of scenarios
        for i, one in enumerate(weights if many else [weights]):
            check_weights(module, one, f"weights[{i}]" if many else "weights")
    if params != module.params:
        from moca.chain2 import changed_fields

        changed = changed_fields(module.params, params) if type(params) is type(module.params) else \
            f"{type(params).__name__}, not {type(module.params).__name__}"
        raise PolicyError(f"scenarios: drawn on other params than the policy's ({changed})")
    oracle = np.asarray(oracle_costs.detach().cpu().numpy() if isinstance(oracle_costs, Tensor) else oracle_costs,
                        dtype=np.float64)
    if oracle.shape != (size,):
        raise PolicyError(f"oracle_costs: shape {list(oracle.shape)}, expected [{size}]")
    if not (np.isfinite(oracle).all() and (oracle > 0).all()):
        raise PolicyError(f"oracle_costs: expected {size} finite costs > 0 (EUR), got {oracle.tolist()[:4]}")
    return oracle


# ----------------------------------------------------------------------------------------
# 4. The agent: the Policy protocol over a weights dict (or one dict per group of scenarios)
# ----------------------------------------------------------------------------------------


def agent_weights(module: nn.Module, weights: Any, groups: Sequence[int] | None) -> tuple[list, list[int] | None]:
    """A policy agent's weight dicts (``None``: the module's own) as a list, each checked for
    names and shapes, and their group sizes (:func:`check_groups`). functional_call took a
    missing or misspelt name from the module without a word: a loss of the module's own
    weight where the caller's was meant. Not the NaN scan: it cost 200 µs an agent, the
    service builds one per CLSC-2 decision from weights checked when loaded, and training
    guards its own steps."""
    weights = module_weights(module) if weights is None else weights
    listed = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    for i, one in enumerate(listed):
        check_weights(module, one, f"weights[{i}]" if len(listed) > 1 else "weights", finite=False)
    return listed, check_groups(listed, groups)


def check_groups(weights: list, groups: Sequence[int] | None) -> list[int] | None:
    """The sizes of the consecutive groups of a batch that ``weights`` (a list of weight
    dicts) act on, one each: whole numbers >= 1, as many as the dicts when there are several."""
    if groups is not None and (isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__")
                               or not all(is_whole(size) and size >= 1 for size in groups)):
        raise PolicyError(f"groups: sizes {groups!r} must be a list of whole numbers >= 1 (scenarios per weight "
                          "dict)")
    if len(weights) > 1 and (groups is None or len(groups) != len(weights)):
        raise PolicyError(f"groups: {len(weights)} weight dicts need as many group sizes, got {groups}")
    return [int(size) for size in groups] if groups is not None else None


class PolicyAgent:
    """Acts with ``module`` evaluated at ``weights`` via ``functional_call``.

    ``weights`` may be a list of dicts with ``groups`` their batch sizes: the batch is
    then split into consecutive groups, each acted on with its own weights, while the
    simulator and safety layer run once for the whole batch. This is how moca batches
    several tasks (each with its own adapted weights) into one rollout; ``torch.func.vmap``
    has no batching rule for ``nn.LSTM`` or ``nn.LSTMCell``. Rows of a batch never interact, so the gradient
    of a group's loss reaches only that group's weights.
    """

    def __init__(self, module: LSTMPolicy, weights: Weights | Sequence[Weights] | None = None,
                 project: Projector | None = None, groups: Sequence[int] | None = None):
        self.module = module
        self.project = project if project is not None else safety.project_batch
        self.weights, self.groups = agent_weights(module, weights, groups)
        self._frames: list[Tensor] = []
        self._states: list[LSTMState | None] = [None] * len(self.weights)

    def reset(self, batch: ScenarioBatch) -> None:
        if self.groups is not None and sum(self.groups) != batch.size:
            raise PolicyError(f"groups: sizes {self.groups} sum to {sum(self.groups)}, the batch has {batch.size}")
        self._frames = []
        self._states: list[LSTMState | None] = [None] * len(self.weights)

    def act(self, obs: Observation) -> Tensor:
        x = self.module.observe(obs)
        if not self._frames:
            self._frames = [x] * self.module.config.window  # pad the start with the first observation
        self._frames = self._frames[1:] + [x]
        frames = torch.cat(self._frames, dim=-1).to(next(iter(self.weights[0].values())).dtype)
        if len(self.weights) == 1:
            raw, self._states[0] = functional_call(self.module, self.weights[0], (frames, self._states[0]))
        else:
            raws = []
            for i, (w, part) in enumerate(zip(self.weights, frames.split(self.groups))):
                raw_i, self._states[i] = functional_call(self.module, w, (part, self._states[i]))
                raws.append(raw_i)
            raw = torch.cat(raws)
        return raw.to(obs.state.virgin.dtype)


# ----------------------------------------------------------------------------------------
# 5. The learning signal
# ----------------------------------------------------------------------------------------


class Teacher(Protocol):
    """Target actions (kg/units, feasible) for imitation, queried on visited states."""

    def reset(self, batch: ScenarioBatch) -> None: ...

    def target(self, obs: Observation) -> Tensor: ...


class PolicyTeacher:
    """DAgger: ask a closed-loop policy (e.g. the MPC) what it would do in the state the
    *learner* is in; its raw action goes through the exact safety layer (no gradient)."""

    def __init__(self, policy: Any, project: Projector | None = None):
        self.policy = policy
        self.project = project if project is not None else safety.project_batch

    def reset(self, batch: ScenarioBatch) -> None:
        self.policy.reset(batch)

    def target(self, obs: Observation) -> Tensor:
        with torch.no_grad():
            detached = Observation(obs.t, obs.state.detach(), obs.regime, obs.return_frac, obs.last_demand, obs.params)
            raw = self.policy.act(detached)
            return self.project(raw.to(obs.state.virgin.dtype), detached.state, obs.regime, obs.params).detach()


class PlanTeacher:
    """Open-loop targets ``[B, T, 6]`` (the oracle's hindsight plans). The plan was made
    for the oracle's own trajectory, so on the learner's states it is only approximate."""

    def __init__(self, plans: Tensor):
        self.plans = plans

    def reset(self, batch: ScenarioBatch) -> None:
        if self.plans.shape[:2] != (batch.size, batch.horizon):
            raise PolicyError(
                f"plans: shape {list(self.plans.shape)}, the batch needs [{batch.size}, {batch.horizon}, 6]")

    def target(self, obs: Observation) -> Tensor:
        return self.plans[:, obs.t].to(obs.state.virgin.dtype)


def mpc_teacher(**mpc_options: Any) -> PolicyTeacher:
    """The rolling-horizon LP baseline as a DAgger teacher."""
    from moca.baselines.mpc import MPCPolicy

    return PolicyTeacher(MPCPolicy(**mpc_options))


def oracle_teacher(scenarios: Sequence[Scenario], dtype: torch.dtype = torch.float32) -> PlanTeacher:
    """The hindsight oracle's plans of ``scenarios`` as (open-loop) imitation targets."""
    from moca.oracle import solve_oracle

    return PlanTeacher(torch.as_tensor(np.stack([solve_oracle(s).plan for s in scenarios]), dtype=dtype))


class _Imitating:
    """Acts as ``agent`` and, beside it, lets the same policy (``imitator``: same module,
    weights and recurrence) decide on the observation with the state *detached*, where
    the teacher's target is recorded. DAgger trains the decision in the visited state,
    not how the state came about: backpropagating the imitation error through the
    simulator as well (as the cost term must) made imitation of the MPC diverge. With
    ``imitation_only`` the imitator's (detached) action is the one executed, so no
    gradient through the episode is built at all."""

    def __init__(self, agent: PolicyAgent, teacher: Teacher, imitation_only: bool = False):
        self.agent, self.teacher, self.imitation_only = agent, teacher, imitation_only
        self.imitator = PolicyAgent(agent.module, agent.weights, agent.project, agent.groups)
        self.targets: list[Tensor] = []
        self.imitated: list[Tensor] = []

    def reset(self, batch: ScenarioBatch) -> None:
        self.agent.reset(batch)
        self.imitator.reset(batch)
        self.teacher.reset(batch)
        self.targets, self.imitated = [], []

    def act(self, obs: Observation) -> Tensor:
        detached = Observation(obs.t, obs.state.detach(), obs.regime, obs.return_frac, obs.last_demand, obs.params)
        self.targets.append(self.teacher.target(detached))
        self.imitated.append(self.imitator.act(detached))
        if self.imitation_only:
            return self.imitated[-1].detach()
        return self.agent.act(obs)


@dataclass
class EpisodeLoss:
    """Per-scenario terms of :func:`policy_loss` (each ``[B]``, dimensionless)."""

    cost_ratio: Tensor  # episode cost / oracle cost
    correction: Tensor  # mean capacity-normalised distance the safety layer moved the action
    imitation: Tensor | None  # mean squared capacity-normalised distance to the teacher

    def total(self, correction_weight: float, imitation_weight: float, cost_weight: float = 1.0) -> Tensor:
        per = cost_weight * self.cost_ratio + correction_weight * self.correction
        if self.imitation is not None:
            per = per + imitation_weight * self.imitation
        return per


def episode_losses(module: LSTMPolicy, weights: Weights | Sequence[Weights] | None, batch: ScenarioBatch,
                   oracle_cost: Tensor, teacher: Teacher | None = None, project: Projector | None = None,
                   groups: Sequence[int] | None = None, imitation_only: bool = False) -> EpisodeLoss:
    """Roll the batch out (backpropagation through the whole episode) and return the
    per-scenario loss terms."""
    oracle_cost = torch.as_tensor(oracle_cost, dtype=batch.dtype)
    if oracle_cost.shape != (batch.size,):
        raise PolicyError(f"oracle_cost: shape {list(oracle_cost.shape)}, expected [{batch.size}]")
    if not bool(torch.all(oracle_cost > 0)):
        raise PolicyError("oracle_cost: every entry must be > 0 (EUR) to normalise the cost")
    agent = PolicyAgent(module, weights, project, groups)
    policy = _Imitating(agent, teacher, imitation_only) if teacher is not None else agent
    out = rollout(batch, policy, agent.project)
    imitation = None
    if teacher is not None:
        targets = torch.stack(policy.targets, dim=1)
        imitated = torch.stack(policy.imitated, dim=1)
        imitation = (((imitated - targets) / out.scale) ** 2).mean(dim=(-1, -2))
    correction = correction_distance(out.executed, out.raw, out.scale)
    return EpisodeLoss(cost_ratio=out.total_cost / oracle_cost, correction=correction, imitation=imitation)


def correction_distance(executed: Tensor, raw: Tensor, scale: Tensor) -> Tensor:
    """``[B]`` mean over periods of ``||(executed - raw) / S||`` (as ``Rollout.correction``),
    with a norm that stays differentiable twice at 0 (the safety layer often moves
    nothing, and second-order MAML differentiates through this term)."""
    squared = (((executed - raw) / scale) ** 2).sum(-1)
    eps = 1e-12
    return (torch.sqrt(squared + eps) - math.sqrt(eps)).mean(-1)


def policy_loss(module: LSTMPolicy, weights: Weights | None, batch: ScenarioBatch, oracle_cost: Tensor,
                correction_weight: float = 0.1, imitation: Teacher | None = None, imitation_weight: float = 1.0,
                cost_weight: float = 1.0, project: Projector | None = None) -> tuple[Tensor, dict[str, float]]:
    """``mean(cost/oracle) + correction_weight * mean(correction) [+ imitation_weight * MSE]``.

    - cost / oracle cost makes regimes of different cost scale weigh alike (1.0 = optimal);
    - the correction term (capacity-normalised distance the safety layer moved the raw
      action) teaches the policy to propose feasible actions itself;
    - ``imitation``: a :class:`Teacher` (``mpc_teacher()`` for DAgger on the MPC's decision
      in the learner's own states; ``oracle_teacher(scenarios)`` for the hindsight plan,
      open-loop so only approximate off the oracle's path). The imitation error is
      taken in the visited states, without backpropagating it through the simulator.
      ``cost_weight=0`` gives pure imitation (no gradient through the episode at all, so
      the correction term then carries no gradient either).
    Returns the scalar loss and floats for logging (score = mean oracle/cost).
    """
    terms = episode_losses(module, weights, batch, oracle_cost, imitation, project,
                           imitation_only=imitation is not None and cost_weight == 0)
    loss = terms.total(correction_weight, imitation_weight, cost_weight).mean()
    info = {
        "loss": float(loss.detach()), "cost_ratio": float(terms.cost_ratio.detach().mean()),
        "score": float((1.0 / terms.cost_ratio.detach()).mean()), "correction": float(terms.correction.detach().mean()),
    }
    if terms.imitation is not None:
        info["imitation"] = float(terms.imitation.detach().mean())
    return loss, info


# ----------------------------------------------------------------------------------------
# 6. Evaluation and plain training
# ----------------------------------------------------------------------------------------


def evaluate_policy(module: LSTMPolicy, weights: Weights | None, scenarios: Sequence[Scenario] | ScenarioBatch,
                    oracle_costs: np.ndarray | Tensor, project: Projector | None = None) -> dict[str, float]:
    """Score on scenarios (training path, batched, no gradient).

    ``score`` = mean of oracle/cost; ``violations`` counts executed actions with a broken
    row of the spec (:func:`moca.safety.violations`); ``correction`` is the mean
    capacity-normalised distance the safety layer moved the raw actions.
    """
    batch = scenarios if isinstance(scenarios, ScenarioBatch) else ScenarioBatch.from_scenarios(list(scenarios))
    oracle = check_evaluation(module, weights, batch.params, oracle_costs, batch.size)
    agent = PolicyAgent(module, weights, project)
    with torch.no_grad():
        out = rollout(batch, agent, agent.project)
    cost = out.total_cost.double().numpy()
    return {
        "score": float(np.mean(oracle / cost)), "mean_cost": float(cost.mean()),
        "violations": safety.episode_violations(out.executed, out.available, batch.regime, batch.params),
        "correction": float(out.correction.mean()),
    }


def train_policy(module: LSTMPolicy, weights: Weights | None, batch: ScenarioBatch, oracle_cost: Tensor,
                 steps: int, lr: float = 3e-3, callback: Callable[[int, Weights, dict], None] | None = None,
                 **loss_kwargs: Any) -> Weights:
    """``steps`` Adam steps of :func:`policy_loss` on one batch; returns new weights
    (detached copies; the module is not touched)."""
    start = weights if weights is not None else module_weights(module)
    current = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}
    optimizer = torch.optim.Adam(list(current.values()), lr=lr)
    for step in range(steps):
        optimizer.zero_grad()
        loss, info = policy_loss(module, current, batch, oracle_cost, **loss_kwargs)
        loss.backward()
        optimizer.step()
        if callback:
            callback(step + 1, current, info)
    return {k: v.detach() for k, v in current.items()}


LossKind = Literal["cost", "imitation", "mixed"]


def compare_losses(params: Params = Params(), regime: Any = "T1", config: PolicyConfig = PolicyConfig(),
                   steps: int = 20, batch_size: int = 8, eval_every: int = 5, lr: float = 3e-3,
                   teacher: Literal["mpc", "oracle"] = "mpc", imitation_weight: float = 10.0,
                   losses: Sequence[LossKind] = ("cost", "imitation", "mixed"), train_seed: int = 0,
                   validation_seed: int = 900, validation_size: int = 8, seed: int = 0,
                   init: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
    """Which learning signal reaches a higher score sooner on a small budget?

    The same initial policy is trained ``steps`` Adam steps on one batch of training
    scenarios with each loss (cost only; imitation only; both), and scored on validation
    scenarios every ``eval_every`` steps. The winner has the highest mean score over the
    evaluations (area under the score-vs-step curve: higher sooner); the final scores
    and wall seconds are reported beside it. Seeds: training from ``train_seed``,
    validation from ``validation_seed`` (both < 1000, disjoint from test seeds).
    """
    from moca.oracle import oracle_costs
    from moca.regime import load_regime
    from moca.scenario import draw_scenarios

    known = {"cost", "imitation", "mixed"}
    for kind in losses:
        if kind not in known:
            raise PolicyError(f"losses: unknown loss {kind!r} (known: {', '.join(sorted(known))})")
    regime = load_regime(regime)
    if set(range(train_seed, train_seed + batch_size)) & set(range(validation_seed, validation_seed + validation_size)):
        raise PolicyError("train_seed/validation_seed: the training and validation seeds overlap")
    train = draw_scenarios(batch_size, regime, params, first_seed=train_seed)
    valid = draw_scenarios(validation_size, regime, params, first_seed=validation_seed)
    train_batch, valid_oracle = ScenarioBatch.from_scenarios(train), oracle_costs(valid)
    valid = ScenarioBatch.from_scenarios(valid)  # built once, scored at every evaluation point
    train_oracle = torch.as_tensor(oracle_costs(train), dtype=torch.float32)
    torch.manual_seed(seed)
    module = LSTMPolicy(params, config)
    if init is not None:
        module.load_state_dict(dict(init))
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    teach = mpc_teacher() if teacher == "mpc" else oracle_teacher(train)
    result: dict[str, Any] = {"steps": steps, "regime": regime.describe(), "teacher": teacher, "losses": {}}
    for kind in losses:
        loss_kwargs: dict[str, Any] = {}
        if kind != "cost":
            loss_kwargs = {"imitation": teach, "imitation_weight": imitation_weight,
                           "cost_weight": 0.0 if kind == "imitation" else 1.0}
        curve = {"step": [0], "score": [evaluate_policy(module, start, valid, valid_oracle)["score"]], "seconds": [0.0]}
        started = time.perf_counter()

        def record(step: int, weights: Weights, info: dict) -> None:
            if step % eval_every == 0 or step == steps:
                elapsed = time.perf_counter() - started
                curve["step"].append(step)
                curve["score"].append(evaluate_policy(module, weights, valid, valid_oracle)["score"])
                curve["seconds"].append(elapsed)

        train_policy(module, start, train_batch, train_oracle, steps, lr=lr, callback=record, **loss_kwargs)
        curve["final_score"] = curve["score"][-1]
        curve["mean_score"] = float(np.mean(curve["score"][1:])) if len(curve["score"]) > 1 else curve["score"][0]
        result["losses"][kind] = curve
    result["winner"] = max(result["losses"], key=lambda k: result["losses"][k]["mean_score"])
    result["best_final"] = max(result["losses"], key=lambda k: result["losses"][k]["final_score"])
    return result


# ----------------------------------------------------------------------------------------
# 7. Deployment: one decision, one scenario, exact projection
# ----------------------------------------------------------------------------------------


class _NumpyStep:
    """:meth:`LSTMPolicy.forward` for one scenario in float32 numpy (the module's own
    precision), with the weights exported once. Hand-written on purpose, for the hot path
    only: torch dispatches each of the ~10 operations of a 64-unit LSTM step at ~10 µs
    apiece on one CPU core, numpy at ~2 µs (measured here: 100 µs against 23 µs per
    step; float32 also halves the weights a cold cache must fetch). Tests check it
    against the module's own forward."""

    def __init__(self, module: LSTMPolicy):
        get = lambda t: t.detach().to(torch.float32).cpu().numpy().copy()  # noqa: E731
        self.w_input, self.w_hidden = get(module.cell.weight_ih), get(module.cell.weight_hh)
        self.bias = get(module.cell.bias_ih) + get(module.cell.bias_hh)
        hidden = module.config.hidden
        self.w_head_h, self.w_head_x = get(module.head.weight[:, :hidden]), get(module.head.weight[:, hidden:])
        self.b_head = get(module.head.bias)
        self.scale = np.asarray(module.params.action_scale, dtype=np.float32)
        self.residual = module.config.residual_scale * self.scale
        self.hidden, self.base, self.config = hidden, module._base, module.config

    def __call__(self, frames: np.ndarray, state: tuple[np.ndarray, np.ndarray] | None
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        H = self.hidden
        frames = np.asarray(frames, dtype=np.float32)
        gates = self.w_input @ frames + self.bias
        if state is not None:
            gates += self.w_hidden @ state[0]
        sig = 1.0 / (1.0 + np.exp(-gates))  # torch's gate order: input, forget, cell, output
        c = sig[:H] * np.tanh(gates[2 * H:3 * H])
        if state is not None:
            c += sig[H:2 * H] * state[1]
        h = sig[3 * H:] * np.tanh(c)
        head = self.w_head_h @ h + self.w_head_x @ frames + self.b_head
        if self.config.structured:
            return frames[self.base] * self.scale + self.residual * head, (h, c)
        return self.scale * head, (h, c)


class DeployedPolicy:
    """The policy on the hot path: numpy in, executed action out (kg/units, feasible).

    Features are computed in numpy (the same :func:`feature_columns` as training), one
    LSTM step runs in numpy (:class:`_NumpyStep`, the module's weights exported once) and
    the raw action goes through the exact projection :func:`moca.safety.project`. The
    recent frames and the LSTM state are kept between calls; :meth:`reset` starts a new
    episode. Also a Policy of :mod:`moca.sim` for batches of one scenario (its actions are
    already projected: roll it out with ``project=None``). ``last_raw`` is the last raw
    action.

    One instance per chain, called from one thread at a time: it holds that chain's
    memory, so two chains (or threads) through one instance mix their memories where the
    period numbers happen to agree. Instances built from the same module are independent.
    """

    def __init__(self, module: LSTMPolicy, weights: Mapping[str, Tensor] | None = None):
        import copy

        if isinstance(module, tuple) and module and isinstance(module[0], LSTMPolicy):
            raise PolicyError("module: a (module, metadata) pair, as load_policy returns it; pass its module: "
                              "module, _ = load_policy(...)")
        if not isinstance(module, LSTMPolicy):
            raise PolicyError(f"module: expected a CLSC-1 LSTMPolicy, got {type(module).__name__}"
                              + (" (CLSC-2's policy is deployed by moca serve --model CLSC-2 and moca evaluate)"
                                 if type(module).__name__ == "LSTMPolicy2" else ""))
        if weights is not None:
            check_weights(module, weights)
        self.module = copy.deepcopy(module).eval()
        if weights is not None:
            with torch.no_grad():
                for name, param in self.module.named_parameters():
                    param.copy_(weights[name].detach())
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.params, self.config = module.params, module.config
        self.spec = feature_spec(module.params, module.config)
        self.step = _NumpyStep(self.module)
        self.fused = FusedDecision(self.step, self.spec)  # the same numbers as deployed_decision, faster
        #: A module with another base rule (moca.regime_map.MappedPolicy) brings it for one
        #: scenario in numpy; its decisions then take the reference path with that rule.
        self.base_rule = module.deployed_base_rule() if hasattr(module, "deployed_base_rule") else None
        self.last_raw: np.ndarray | None = None
        self._frames: np.ndarray | None = None
        self._state: tuple[np.ndarray, np.ndarray] | None = None
        self._next_t = 0  # the period the LSTM's memory expects next

    def reset(self, batch: ScenarioBatch | None = None) -> None:
        if batch is not None and not isinstance(batch, ScenarioBatch):
            raise PolicyError(f"batch: expected a ScenarioBatch of one scenario or None, got {type(batch).__name__}")
        if batch is not None and batch.size != 1:
            raise PolicyError(f"batch: a deployed policy decides for one scenario, got {batch.size}")
        self._frames, self._state, self._next_t = None, None, 0
        if self.base_rule is not None:
            self.base_rule.reset()

    def decide(self, t: int, stocks: np.ndarray, pipeline: np.ndarray, sales_history: np.ndarray,
               regime: np.ndarray, return_frac: float, last_demand: float | None) -> np.ndarray:
        """The executed action ``[6]`` at period ``t`` from the post-arrival state:
        ``stocks`` (V, M, P, C, B), ``pipeline`` ``[L_v-1]`` kg, ``sales_history`` ``[L_r]``
        units, ``regime`` ``[5]`` (cap absent = inf), ``return_frac`` rho_t, ``last_demand``
        d_{t-1} (None at t = 0). The hot path: it trusts its inputs, which the simulator and
        the service have checked (a negative stock or a skipped period gives an action, NaN a
        :class:`moca.safety.SafetyError` about the raw action); :meth:`decide_period` and
        :meth:`decide_observation` check each input by name."""
        if self.base_rule is not None:
            action, self.last_raw, self._frames, self._state = deployed_decision(
                self.step, self.spec, self._frames, self._state, t, stocks, pipeline, sales_history, regime,
                return_frac, last_demand, base_rule=self.base_rule)
        else:
            action, self.last_raw, self._frames, self._state = self.fused(
                self._frames, self._state, t, stocks, pipeline, sales_history, regime, return_frac, last_demand)
        self._next_t = t + 1
        return action

    def _in_order(self, t: int) -> None:
        """The named entry points' check that ``t`` is the period the recurrent memory is
        at: a period repeated or skipped, or a new episode without :meth:`reset`, gave
        another action without a word (the LSTM's state had moved on)."""
        if t != self._next_t:
            raise PolicyError(f"t={t}: this episode's next period is {self._next_t} (periods come in order; "
                              "call reset() to start an episode)")

    def decide_observation(self, obs: np.ndarray) -> np.ndarray:
        """The executed action ``[6]`` (order kg, use virgin kg, use recycled kg,
        disassemble, refurbish, dispose cores) for an observation of the Gymnasium env
        ``moca/CircularSupplyChain-v0`` built with this policy's params. Call
        :meth:`reset` at the start of each episode (the LSTM carries state). To step the
        env with it, divide by the env's action scale: ``env.step(action / env.unwrapped.scale)``."""
        from moca.env import observation_inputs

        q = observation_inputs(obs, self.params)
        self._in_order(q["t"])
        return self.decide(q["t"], q["stocks"], q["pipeline"], q["sales_history"], q["regime"], q["return_frac"],
                           q["last_demand"])

    def decide_period(self, t: int, *, virgin: float, recycled: float, product: float, cores: float,
                      backlog: float, pipeline: Sequence[float], sales_history: Sequence[float],
                      regime: Any, return_frac: float, last_demand: float | None = None) -> np.ndarray:
        """The executed action ``[6]`` from the named quantities of period ``t``, after the
        period's arrivals: stocks ``virgin``, ``recycled`` (kg), ``product``, ``cores``,
        ``backlog`` (units); ``pipeline`` the ``L_v - 1`` virgin orders still in transit
        (kg, next to arrive first); ``sales_history`` the last ``L_r`` periods' sales
        (units, oldest first: its cores return this period); ``regime`` a
        :class:`moca.regime.Regime`, a name or a row (r, tau, cap, lambda, kappa);
        ``return_frac`` this period's return fraction; ``last_demand`` last period's demand
        (units; None at t = 0). Periods must come in order from :meth:`reset`."""
        from moca.regime import Regime, load_regime

        if isinstance(regime, (str, dict)):
            regime = load_regime(regime)
        if isinstance(regime, Regime) and regime.recycled_content_window != 1:  # (its row has no window: it
            # was kept every period without a word, where draw_scenario and safety.project refuse it)
            raise PolicyError(f"regime: recycled_content_window={regime.recycled_content_window} is CLSC-2's "
                              "(CLSC-1 settles the mandate every period)")
        row = regime.as_row() if isinstance(regime, Regime) else Regime.from_row(regime).as_row()
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.params.horizon:
            raise PolicyError(f"t={t!r}: must be a whole period in 0..{self.params.horizon - 1}")
        named = [("virgin", virgin), ("recycled", recycled), ("product", product), ("cores", cores),
                 ("backlog", backlog), ("return_frac", return_frac)]
        if last_demand is not None:
            named.append(("last_demand", last_demand))
        for name, values in (("pipeline", pipeline), ("sales_history", sales_history)):
            if isinstance(values, (str, bytes, dict)) or np.ndim(values) != 1:
                raise PolicyError(f"{name}={values!r}: expected a list of numbers")
        if len(pipeline) != self.params.lead_virgin - 1 or len(sales_history) != self.params.lag_return:
            raise PolicyError(f"pipeline/sales_history: expected {self.params.lead_virgin - 1} and "
                              f"{self.params.lag_return} entries, got {len(pipeline)} and {len(sales_history)}")
        named += [(f"pipeline[{i}]", v) for i, v in enumerate(pipeline)]
        named += [(f"sales_history[{i}]", v) for i, v in enumerate(sales_history)]
        for name, value in named:
            if not is_finite_number(value) or value < 0:
                raise PolicyError(f"{name}={value!r}: must be a finite number >= 0")
            # beyond it the network's sums overflow to NaN: name the input, not the NaN action it would give
            if value > LARGEST_VALUE:
                raise PolicyError(f"{name}={value!r}: must be <= {LARGEST_VALUE:g}")
        if return_frac > 1:
            raise PolicyError(f"return_frac={return_frac!r}: must be <= 1")
        if last_demand is None and t > 0:  # the features would read the base demand in its place: another action
            raise PolicyError(f"last_demand: required at t={t} (last period's demand, units; None only at t = 0)")
        self._in_order(int(t))
        return self.decide(t, np.array([virgin, recycled, product, cores, backlog], dtype=float),
                           np.asarray(pipeline, dtype=float), np.asarray(sales_history, dtype=float), row,
                           return_frac, last_demand)

    @staticmethod
    def inputs(obs: Observation) -> tuple:
        """The arguments of :meth:`decide` read from the simulator's observation of one scenario."""
        s = obs.state
        if s.virgin.shape[0] != 1:
            raise PolicyError(f"obs: a deployed policy decides for one scenario, got {s.virgin.shape[0]}")
        last = None if obs.last_demand is None else float(obs.last_demand[0])
        return (obs.t, s.stocks()[0].detach().double().numpy(), s.pipeline[0].detach().double().numpy(),
                s.sales_history[0].detach().double().numpy(), obs.regime[0].double().numpy(),
                float(obs.return_frac[0]), last)

    def act(self, obs: Observation) -> Tensor:
        return torch.as_tensor(self.decide(*self.inputs(obs)), dtype=obs.state.virgin.dtype)[None]


def deployed_decision(step: _NumpyStep, spec: FeatureSpec, frames: np.ndarray | None,
                      state: tuple[np.ndarray, np.ndarray] | None, t: int, stocks: Sequence, pipeline: Sequence,
                      sales_history: Sequence, regime: Sequence, return_frac: float, last_demand: float | None,
                      base_rule: Callable[..., np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The reference decision (what :class:`FusedDecision` computes, written plainly on
    :func:`feature_columns`), as a function of the recurrent memory it carries
    (the recent ``frames`` and the LSTM ``state``; both None at the start of an episode),
    so that a service can keep that memory per chain and swap the weights (``step``)
    between periods. Returns ``(executed action, raw action, frames, state)``.

    ``base_rule(t, stocks, pipeline, sales_history, regime)``: another base rule's raw
    action ``[6]`` for the base columns (as :meth:`LSTMPolicy.observe` of a subclass puts it there)."""
    stocks = [float(x) for x in stocks]
    x = feature_columns(_Scalars, spec, t, stocks, [float(x) for x in pipeline],
                        [float(x) for x in sales_history], [float(x) for x in regime], float(return_frac),
                        None if last_demand is None else float(last_demand)).astype(np.float32)
    if base_rule is not None:
        rule = base_rule(t, stocks, pipeline, sales_history, regime)
        x[spec.layout.base] = (rule / np.asarray(spec.params.action_scale, dtype=np.float64)).astype(np.float32)
    if frames is None:
        frames = np.tile(x, spec.config.window)  # pad the start with the first observation
    else:
        frames = np.concatenate([frames[x.size:], x])
    raw, state = step(frames, state)
    raw = raw.astype(np.float64)
    return safety.project(raw, stocks[0], stocks[1], stocks[3], regime, spec.params), raw, frames, state


def _floats(values: Sequence) -> list[float]:
    """A vector's entries as Python floats: one ``tolist`` call for a float64 array (the
    very floats ``float(v)`` gives, without a call per entry), else ``float(v)`` each."""
    if type(values) is np.ndarray and values.dtype == np.float64 and values.ndim == 1:
        return values.tolist()
    return [float(v) for v in values]


class FusedDecision:
    """:func:`deployed_decision` with the same numbers and less interpreter work per call.

    Identical by construction, not approximately: every float operation of
    :func:`base_action` and :func:`feature_columns` runs in the same order on the same
    Python floats (the terms that depend on ``t`` only, like forecast sums and the
    season, are summed once per period in advance, in the order the reference sums
    them), the normalisation is the same two numpy operations written straight into the
    frame buffer, and the LSTM step runs the same numpy calls in the same order into
    preallocated buffers. What goes: the ``_Scalars`` dispatch, per-call list slicing
    and closures, and ~10 temporary arrays. Hand-written because no library fuses a
    Python scalar feature map with a float32 LSTM step bit-exactly: numba or a C
    kernel would compute ``exp``/``tanh`` and the matrix products with other rounding
    than numpy's, and move CLSC-1's published numbers. Tests compare it bit for bit.
    """

    def __init__(self, step: _NumpyStep, spec: FeatureSpec):
        self.step, self.spec = step, spec
        p, cfg = spec.params, spec.config
        self.params = p
        H, safety_stock = p.horizon, cfg.safety_stock
        rows = []
        for t in range(H):
            f = spec.forecast[t:t + spec.ahead]
            reserve_stock = lambda k: safety_stock if t + k + 1 < H else 0.0  # noqa: E731
            phase = 2.0 * math.pi * t / 52.0
            rows.append((f[0] + f[1] + reserve_stock(0), 0.0 if t + 1 >= H else 1.0,
                         p.mass * sum(f[2:RESERVE_PERIODS + 2]), sum(f[2:p.lead_virgin + 2]),
                         reserve_stock(p.lead_virgin), p.hold_core * (H - 1 - t), math.sin(phase), math.cos(phase),
                         t / H))
        self.rows = tuple(rows)
        self.cond = 1.0 if cfg.regime_conditioned else 0.0
        self.per_core = max(p.yield_disassembly * p.mass, 1e-9)
        self.size = spec.layout.size
        self.window = cfg.window
        self.divisor, self.offset = spec.divisor, spec.offset

    def __call__(self, frames: np.ndarray | None, state: tuple[np.ndarray, np.ndarray] | None, t: int,
                 stocks: Sequence, pipeline: Sequence, sales_history: Sequence, regime: Sequence,
                 return_frac: float, last_demand: float | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        p = self.params
        virgin, recycled, product, cores, backlog = stocks = _floats(stocks)
        regime_row = _floats(regime)
        pipeline = _floats(pipeline)
        mandate, tax, cap = regime_row[R_MANDATE], regime_row[R_TAX], regime_row[R_CAP]
        landfill, recovery = regime_row[R_LANDFILL], regime_row[R_RECOVERY]
        first, last, reserve_need, need, reserve_lead, hold_left, sin_t, cos_t, t_share = self.rows[t]
        # base_action, the same operations in the same order
        b_mandate, b_landfill = self.cond * mandate, self.cond * landfill
        produce = last * min(max(first - product + backlog, 0.0), p.cap_produce)
        material = p.mass * produce
        reserve = b_mandate * reserve_need
        surplus = max(recycled - reserve, 0.0)
        use_recycled = min(min(recycled, material), surplus + b_mandate * material)
        use_virgin = material - use_recycled
        disassemble = min(min(max((reserve - recycled + use_recycled) / self.per_core, 0.0), p.cap_disassemble), cores)
        target = p.mass * ((1.0 - b_mandate) * need + reserve_lead)
        position = virgin - use_virgin + sum(pipeline)
        order = min(max(target - position, 0.0), p.cap_order)
        worth_disposing = hold_left > p.cost_dispose + b_landfill
        dispose = min(max(cores - disassemble, 0.0), p.cap_dispose) * worth_disposing
        # feature_columns
        zero = virgin * 0.0
        last_d = zero + p.demand_base if last_demand is None else float(last_demand)
        raw = np.array([*stocks, *pipeline, *_floats(sales_history), float(return_frac), last_d,
                        mandate, tax, (cap < math.inf) + zero, min(max(self.spec.cap_reference / cap, 0.0), 4.0),
                        landfill, recovery, order, use_virgin, use_recycled, disassemble, cores * 0.0, dispose,
                        zero + sin_t, zero + cos_t, zero + t_share], dtype=np.float64)
        np.subtract(raw, self.offset, out=raw)
        np.divide(raw, self.divisor, out=raw)
        F = self.size
        new = np.empty(F * self.window, dtype=np.float32)
        new[-F:] = raw  # the float64 -> float32 cast of astype
        if frames is None:
            for k in range(self.window - 1):
                new[k * F:(k + 1) * F] = new[-F:]
        else:
            new[:-F] = frames[F:]
        action_raw, state = self._lstm(new, state)
        return safety.project(action_raw, virgin, recycled, cores, regime, p), action_raw, new, state

    def _lstm(self, frames: np.ndarray, state: tuple[np.ndarray, np.ndarray] | None
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """:meth:`_NumpyStep.__call__`: the same ufuncs in the same order, into buffers."""
        s, H = self.step, self.step.hidden
        gates = np.matmul(s.w_input, frames)
        np.add(gates, s.bias, out=gates)
        if state is not None:
            np.add(gates, np.matmul(s.w_hidden, state[0]), out=gates)
        sig = np.negative(gates)
        np.exp(sig, out=sig)
        np.add(1.0, sig, out=sig)
        np.divide(1.0, sig, out=sig)
        c = np.tanh(gates[2 * H:3 * H])
        np.multiply(sig[:H], c, out=c)
        if state is not None:
            np.add(c, np.multiply(sig[H:2 * H], state[1]), out=c)
        h = np.tanh(c)
        np.multiply(sig[3 * H:], h, out=h)
        head = np.matmul(s.w_head_h, h)
        np.add(head, np.matmul(s.w_head_x, frames), out=head)
        np.add(head, s.b_head, out=head)
        if s.config.structured:
            out = np.multiply(frames[s.base], s.scale)
            np.add(out, np.multiply(s.residual, head), out=out)
        else:
            out = np.multiply(s.scale, head)
        return out.astype(np.float64), (h, c)
