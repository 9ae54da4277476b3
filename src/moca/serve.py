"""``moca serve``: the real-time controller of one or more plants (chains).

Read top to bottom:

1. :class:`ChainModel` and :data:`MODELS` — what the service needs from a world model
   (CLSC-1 today; CLSC-2 plugs in as one more entry): params, regimes and their features,
   the observation's shapes, the deployed policy, adaptation and validation.
2. :class:`Store` — the SQLite database (WAL) that *is* the service's memory: chains,
   their recurrent state, regimes seen, regulation events, jobs, versions, decisions.
   Nothing that matters lives only in process memory; weight files are moca checkpoints
   (safetensors + JSON with SHA-256), written to a temporary name and renamed.
3. :func:`run_job` and :func:`worker_main` — the background adaptation worker, a separate
   process (so decisions are not slowed), warm-started from the most similar regime in
   memory, validated on held-out scenarios before it may become a version.
4. :func:`create_app` — the FastAPI app (JSON everywhere, OpenAPI at ``/docs``).
5. :func:`serve` — uvicorn on 127.0.0.1 by default; what ``moca serve`` runs.

Periods and episodes: ``t`` is the period of the chain's current episode (0 .. horizon-1)
and must increase within an episode; ``POST /reset`` starts the next one. A regulation
announced with ``effective`` is in force from the first decision with ``t >= effective``
in the episode it was announced in, or from the start of any later episode.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from moca.files import unique_keys
from moca.limits import LARGEST_ID, MOST_STEPS, SUPPORT_SEEDS, VALIDATION_SEEDS
from moca.scenario import LARGEST_VALUE, validation_reason

#: Request bodies larger than this are refused with 413 before they are parsed.
MAX_BODY_BYTES = 64 * 1024
#: A job interrupted this many times (worker killed mid-adaptation) is marked failed.
MAX_ATTEMPTS = 2


#: ``--adapt-base`` of the service: ``caps`` (the default) and the CLSC-1 portfolio's bases.
SERVICE_BASES = ("caps", "default", "auto", "map", "mpc")


def job_base(base: str, regime: Any) -> str:
    """The base a CLSC-1 job adapts through (:func:`moca.portfolio.base_for`): ``caps`` is
    ``auto`` (the portfolio) where the regime caps emissions and ``default`` (the version
    alone) elsewhere, where the version decides in about 0.1 ms against an LP solve's 1 ms or
    more. The whole portfolio, not the LSTM over the LP alone: with a cap and a mandate of 0.2
    the LP candidate scored 0.84 where the version's own steps kept 0.97, and on 12 random
    capped regimes every smaller portfolio chose worse (benchmarks/bench_cap_candidates.py)."""
    from moca.portfolio import base_for  # (here: the service's front end does not import torch)

    return base_for(base, regime)


@dataclass(frozen=True)
class AdaptSettings:
    """What a regulation's job spends: gradient steps on ``support`` scenarios (seeds
    800+), then validation on ``validation`` held-out scenarios (seeds 900+). ``base``
    (CLSC-1 chains): ``default`` adapts the version the job starts from; ``auto``,
    ``map`` or ``mpc`` adapt through :func:`moca.portfolio.adapt_portfolio` (that version,
    the LSTM over the mapped rule, the LSTM over the LP), and the candidate best on
    validation becomes the new version; ``caps`` (the default) is ``auto`` under an
    emission cap and ``default`` elsewhere (:func:`job_base`)."""

    steps: int = 3
    support: int = 8
    validation: int = 8
    base: str = "caps"

    def __post_init__(self) -> None:
        # Support and validation draw from their seed ranges (800-899, 900-999), so more
        # scenarios than a range holds would be cut without a word.
        for name, low, high in (("steps", 0, MOST_STEPS), ("support", 1, len(SUPPORT_SEEDS)),
                                ("validation", 1, len(VALIDATION_SEEDS))):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"adapt.{name}={value!r}: must be a whole number in {low}..{high}")
        if self.base not in SERVICE_BASES:
            raise ValueError(f"adapt.base={self.base!r}: must be one of {', '.join(SERVICE_BASES)}")

    def argv(self) -> list[str]:
        return [str(self.steps), str(self.support), str(self.validation), self.base]

#: Fault injection for the crash tests: the worker kills itself with SIGKILL at this point.
FAILPOINT_ENV = "MOCA_SERVE_FAILPOINT"
ACTION_NAMES = ("order", "use_virgin", "use_recycled", "disassemble", "refurbish", "dispose")
STATE_NAMES = ("virgin", "recycled", "product", "cores", "backlog")


class ServeError(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line ``message`` naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ----------------------------------------------------------------------------------------
# 1. World models the service can run
# ----------------------------------------------------------------------------------------


def _one_regime(data: Any) -> None:
    """A schedule where one regime goes: the library's refusal pointed to the form of a
    schedule file, which an endpoint does not take."""
    if isinstance(data, dict) and ("regimes" in data or "start" in data):
        raise ServeError(422, "regime: one regime, without start or regimes (a regulation event's period is its "
                              "effective); rules that change over time are one regulation event per change")


class ChainModel:
    """CLSC-1 (`moca.scenario.Params`, `moca.regime.Regime`, the LSTM policy). A second
    world model subclasses this and overrides what differs; the service is generic over it."""

    name = "clsc-1"
    default_checkpoint = "default"
    action_names = ACTION_NAMES

    @property
    def body(self):
        return DecideIn

    def observation(self, body) -> "Observation":
        return Observation(body)

    def decision_row(self, rt: "Runtime", chain: str, episode: int, t: int, regime, row: np.ndarray, params):
        """What :meth:`decide` is given of the regime in force at ``t`` (CLSC-1: its row)."""
        return row

    def decision_extra(self, row) -> dict[str, Any]:
        """Fields the decision's answer adds for this model (CLSC-1: none)."""
        return {}

    def params(self, data: dict[str, Any] | None):
        from moca.scenario import Params

        try:
            return Params(**(data or {}))
        except ValidationError as err:
            raise ServeError(422, "params." + validation_reason(err).removeprefix("params.")) from None
        except TypeError as err:
            raise ServeError(422, f"params: {err}") from None

    def regime(self, data: Any, any_window: bool = False):
        """A regime from an object (the spec's fields) or a preset name; 422 names the field.
        ``any_window``: a target to compare with (``?nearest=``) or a regime already stored,
        not a new rule for a chain, so an accounting window is let through."""
        from moca.regime import RegimeError, load_regime, named_regimes

        _one_regime(data)
        if isinstance(data, str) and data not in named_regimes():
            raise ServeError(422, f"regime: {data!r} is not a known name ({', '.join(named_regimes())})")
        if not isinstance(data, (str, dict)):
            raise ServeError(422, f"regime: expected an object or a name, got {type(data).__name__}")
        try:
            regime = load_regime(data)
        except RegimeError as err:
            raise ServeError(422, f"regime.{err}") from None
        if regime.recycled_content_window != 1 and not any_window:  # CLSC-1 would ignore it: another rule
            raise ServeError(422, f"regime.recycled_content_window={regime.recycled_content_window}: a clsc-1 chain "
                                  "settles the mandate every period; accounting windows need a clsc-2 chain")
        return regime

    def regime_dict(self, regime) -> dict[str, Any]:
        """The regime's JSON as the memory stores it (its key: a regime is found again by it)."""
        return regime.model_dump(mode="json")

    def shown(self, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored regime's JSON as answers show it (CLSC-1: as stored)."""
        return stored

    def regime_row(self, regime) -> np.ndarray:
        return regime.as_row()

    def regime_features(self, regime, params) -> list[float]:
        """The regime as the policy sees it (O(1) columns): what "similar" means."""
        from moca.policy import reference_emissions

        cap = math.inf if regime.emission_cap is None else regime.emission_cap
        return [regime.recycled_content_min, regime.carbon_tax / 1000.0, float(cap < math.inf),
                min(max(reference_emissions(params) / cap, 0.0), 4.0), regime.landfill_tax / 100.0,
                regime.recovery_target]

    def shapes(self, params) -> dict[str, int]:
        return {"pipeline": params.lead_virgin - 1, "sales_history": params.lag_return}

    def load(self, directory: str | Path):
        from moca.regime_map import load_learned_policy  # any CLSC-1 kind: plain, mapped, over the LP

        module, _ = load_learned_policy(directory)
        return module

    def save(self, directory: Path, module, metadata: dict[str, Any]) -> str:
        from moca import checkpoint
        from moca.regime_map import save_learned_policy

        save_learned_policy(directory, module, metadata)
        return json.loads((directory / checkpoint.META).read_text())["weights_sha256"]

    def deployed(self, module) -> "Deployed":
        from moca.policy import FusedDecision, _NumpyStep, deployed_decision, feature_spec

        step, spec = _NumpyStep(module), feature_spec(module.params, module.config)
        if not hasattr(module, "deployed_base_rule"):
            return Deployed(FusedDecision(step, spec), module.params)
        # Another base rule (the mapped rule, the LP): DeployedPolicy's reference path, the
        # rule held per deployed version, so per chain (runtime caches by chain and version).
        rule = module.deployed_base_rule()
        return Deployed(lambda *inputs: deployed_decision(step, spec, *inputs, base_rule=rule), module.params)

    def decide(self, deployed: "Deployed", memory: "ChainMemory", obs: "Observation", regime_row: np.ndarray):
        s = obs.state
        action, raw, memory.frames, memory.state = deployed.decide(
            memory.frames, memory.state, obs.t,
            [s.virgin, s.recycled, s.product, s.cores, s.backlog], obs.pipeline, obs.sales_history, regime_row,
            obs.return_frac, obs.last_demand)
        return action, raw, 0  # (CLSC-1's feasible set is never empty: the projection keeps every rule)

    def summary(self, action: np.ndarray, regime, params) -> tuple[float, float]:
        """(EUR of the action's own terms of the period cost, recycled share of material)."""
        o, u_v, u_r, g, f, w = (float(x) for x in action)
        cost = ((params.cost_virgin + regime.carbon_tax * params.emis_virgin / 1000.0) * o
                + params.cost_produce * (u_v + u_r) / params.mass + params.cost_disassemble * g
                + params.cost_refurbish * f + (params.cost_dispose + regime.landfill_tax) * w)
        return cost, (u_r / (u_v + u_r) if u_v + u_r > 1e-9 else 0.0)

    def adapt(self, module, regime, settings: AdaptSettings) -> tuple[Any, dict, list[dict], Any, str | None]:
        """Adapt ``module`` in ``steps`` steps on support scenarios (seeds 800+), alone or
        through the portfolio (``settings.base``); the curve is scored on held-out validation
        scenarios (seeds 900+). Returns the module to deploy (``module`` or the portfolio's
        choice), its weights, its curve, a scorer of any module on those same validation
        scenarios, and the portfolio's summary (None without one)."""
        from moca.meta import OracleCache, adapt
        from moca.policy import evaluate_policy
        from moca.sim import ScenarioBatch

        cache = OracleCache(module.params)
        support = cache.scenarios(SUPPORT_SEEDS[:settings.support], regime)
        validation = cache.scenarios(VALIDATION_SEEDS[:settings.validation], regime)
        oracle = cache.costs(validation)
        batch = ScenarioBatch.from_scenarios(validation)
        score = lambda m: evaluate_policy(m, dict(m.named_parameters()), batch, oracle)  # noqa: E731
        base = job_base(settings.base, regime)
        if base == "default":
            new, curve = adapt(module, None, regime, settings.steps, support=support, validation=validation,
                               cache=cache)
            return module, new, curve, score, None
        from moca.portfolio import adapt_portfolio

        portfolio = adapt_portfolio(module, regime, settings.steps, base=base, support=support,
                                    validation=validation, cache=cache)
        chosen = portfolio.chosen
        return chosen.module, chosen.weights, chosen.curve, score, portfolio.summary()


MODELS: dict[str, ChainModel] = {"clsc-1": ChainModel()}


@dataclass
class Deployed:
    decide: Any  # (frames, state, t, stocks, pipeline, sales_history, regime, rho, d_prev) -> (action, raw, frames, state)
    params: Any


@dataclass
class ChainMemory:
    """The recurrent memory of one chain's episode (mirrored in the ``chain_state`` table)."""

    episode: int = 0
    last_t: int = -1
    frames: np.ndarray | None = None
    state: tuple[np.ndarray, np.ndarray] | None = None
    #: CLSC-2: what the arrivals revealed this episode (float64 ``[11]``, :attr:`moca.sim2.Observation2.seen`)
    seen: np.ndarray | None = None

    def blobs(self) -> tuple[bytes | None, bytes | None, bytes | None, bytes | None]:
        seen = None if self.seen is None else self.seen.tobytes()  # (float64: the sums as the library keeps them)
        if self.frames is None:
            return None, None, None, seen
        return (self.frames.astype(np.float32).tobytes(), None if self.state is None else self.state[0].tobytes(),
                None if self.state is None else self.state[1].tobytes(), seen)

    @classmethod
    def from_row(cls, row) -> "ChainMemory":
        episode, last_t, frames, h, c, seen = row
        arr = lambda b: None if b is None else np.frombuffer(b, dtype=np.float32).copy()  # noqa: E731
        state = None if h is None else (arr(h), arr(c))
        return cls(episode, last_t, arr(frames), state, None if seen is None else np.frombuffer(seen).copy())


# ----------------------------------------------------------------------------------------
# Request bodies (pydantic: unknown fields, NaN and wrong types are refused by name)
# ----------------------------------------------------------------------------------------


class Strict(BaseModel):
    # strict: no coercion of a JSON value into a number of another type. Lax, pydantic took
    # true as 1 ("t": true decided period 1, "effective": true put a rule in force from period
    # 1, "pipeline": [true] held 1 kg in transit) and "3" as 3. Checked in pydantic's core: a
    # validator of our own over every field cost 40 µs a CLSC-2 decision.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ChainIn(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="chain (plant) name")
    model: str = Field("clsc-1", description="world model: clsc-1 or clsc-2 (CLSC-2 also accepted)")
    params: dict[str, Any] | None = Field(None, description="the model's parameters (spec names); default: the spec's")
    regime: dict[str, Any] | str = Field(description="regime in force now: the spec's fields, or a preset name")
    checkpoint: str | None = Field(None, min_length=1,  # ("" deployed the shipped default without a word)
                                   description="policy checkpoint: 'default', 'default-reptile' or a directory "
                                               "under DATA/checkpoints")
    adapt: bool = Field(False, description="queue an adaptation job for the regime registered, as for a "
                                           "regulation in force from t = 0 (the answer's adaptation_job); "
                                           "until it is done the checkpoint decides")


def _non_negative_entries(cls, values: list[float], info) -> list[float]:
    for i, v in enumerate(values):
        if v < 0:
            raise ValueError(f"{info.field_name}[{i}]={v!r} must be >= 0")
        if v > LARGEST_VALUE:  # no chain holds that much; the policy's arithmetic would overflow
            raise ValueError(f"{info.field_name}[{i}]={v!r} must be <= {LARGEST_VALUE:g}")
    return values


#: What both models' observations share (the spec's names and units).
Period = Annotated[int, Field(ge=0, description="period of the episode")]
Pipeline = Annotated[list[float], Field(description="virgin orders still in transit after arrivals (L_v - 1 slots), kg")]
SalesHistory = Annotated[list[float], Field(description="sales of the last L_r periods, oldest first, units")]
ReturnFrac = Annotated[float, Field(ge=0, le=1, description="rho_t, share of the sales of t - L_r returned this period")]
#: A stock's round-off below 0 that is read as 0 (the safety layer's reading of a stock): a
#: simulator executing the service's own action (use_recycled = M, exactly, in floats) may
#: end at -1e-13 kg, and the next decision was a 422 that stopped the closed loop.
STOCK_ROUNDOFF = 1e-6


def _stock_value(value: float) -> float:
    if not value >= -STOCK_ROUNDOFF:  # (NaN is refused before: not a JSON number)
        raise ValueError("Input should be greater than or equal to 0")
    return value if value > 0.0 else 0.0


#: A stock, kg or units (>= 0; round-off down to -STOCK_ROUNDOFF is read as 0).
Stock = Annotated[float, Field(le=LARGEST_VALUE, json_schema_extra={"minimum": 0}), AfterValidator(_stock_value)]


class StateIn(Strict):
    virgin: Stock = Field(description="V, kg, after this period's arrivals")
    recycled: Stock = Field(description="M, kg")
    product: Stock = Field(description="P, units")
    cores: Stock = Field(description="C, units, after this period's returns")
    backlog: Stock = Field(description="B, units")


class DecideIn(Strict):
    t: Period
    state: StateIn
    pipeline: Pipeline
    sales_history: SalesHistory
    return_frac: ReturnFrac
    last_demand: float | None = Field(None, ge=0, le=LARGEST_VALUE, description="d_{t-1}, units (null at t = 0)")

    _non_negative = field_validator("pipeline", "sales_history")(_non_negative_entries)


class Observation:
    """The validated observation, with plain floats (the hot path reads attributes)."""

    __slots__ = ("t", "state", "pipeline", "sales_history", "return_frac", "last_demand")

    def __init__(self, body: DecideIn):
        self.t, self.state, self.pipeline = body.t, body.state, body.pipeline
        self.sales_history, self.return_frac, self.last_demand = body.sales_history, body.return_frac, body.last_demand


class StateIn2(Strict):
    V: Stock = Field(description="virgin material, kg, after this period's arrivals")
    M: Stock = Field(description="recycled material, kg, after arrivals (last period's market purchase, market_in, "
                                 "has arrived into it)")
    P: Stock = Field(description="finished products, units")
    CA: Stock = Field(description="grade-A cores, units, after this period's returns")
    CB: Stock = Field(description="grade-B cores, units, after this period's returns")


class DecideIn2(Strict):
    """One CLSC-2 period's observation (after the period's arrivals and window reset)."""

    t: Period
    state: StateIn2
    pipeline: Pipeline
    sales_history: SalesHistory
    used_virgin: float = Field(ge=0, le=LARGEST_VALUE, description="U_v: virgin material used in the current accounting window "
                                                 "before this period, kg (0 at a window's first period)")
    used_recycled: float = Field(ge=0, le=LARGEST_VALUE, description="U_r: recycled material used in the window so far, kg")
    supply_up: bool = Field(description="whether the virgin supplier accepts orders this period")
    market_avail: float = Field(ge=0, le=1, description="share of cap_market on offer this period")
    return_frac: ReturnFrac
    grades: list[float] = Field(description="shares of this period's returns that are grade A, grade B, scrap "
                                            "(3 values summing to 1)")
    demand_history: list[float] = Field(description="demand of the last 52 periods (d_{t-52} .. d_{t-1}, the "
                                                    "pre-episode history first), oldest first, units")

    _non_negative = field_validator("pipeline", "sales_history", "demand_history")(_non_negative_entries)

    @field_validator("grades")
    @classmethod
    def _shares(cls, values: list[float]) -> list[float]:
        if len(values) != 3:
            raise ValueError(f"grades: {len(values)} values, expected 3 (A, B, scrap)")
        for i, v in enumerate(values):
            if not 0 <= v <= 1:
                raise ValueError(f"grades[{i}]={v!r} must be in [0, 1]")
        if abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"grades: sum to {sum(values)!r}, must be 1")
        return values


class Clsc2Model(ChainModel):
    """CLSC-2 (`moca.scenario.Params2`, regimes with their accounting window, the policy of
    :mod:`moca.policy2` deployed through its own agent, :func:`moca.meta2.adapt2`). The
    executed action is :func:`moca.projection.project2` for the regime in force, with
    ``periods_left`` from the chain's regime schedule (its window and announced changes)."""

    name = "clsc-2"
    body = DecideIn2
    action_names = ("order", "buy_recycled", "use_virgin", "use_recycled", "refurbish", "disassemble_a",
                    "disassemble_b", "dispose_a", "dispose_b")

    def params(self, data: dict[str, Any] | None):
        from moca.scenario import Params2

        try:
            return Params2(**(data or {}))
        except ValidationError as err:  # (Params2's own messages already say "params.")
            raise ServeError(422, "params." + validation_reason(err).removeprefix("params.")) from None
        except TypeError as err:
            raise ServeError(422, f"params: {err}") from None

    def regime(self, data: Any, any_window: bool = False):
        from moca.policy2 import MODEL
        from moca.regime import RegimeError, load_regime, named_regimes

        names = named_regimes(MODEL)
        _one_regime(data)
        if isinstance(data, str) and data not in names:
            raise ServeError(422, f"regime: {data!r} is not a known name ({', '.join(names)})")
        if not isinstance(data, (str, dict)):
            raise ServeError(422, f"regime: expected an object or a name, got {type(data).__name__}")
        try:
            return load_regime(data, model=MODEL)
        except RegimeError as err:
            raise ServeError(422, f"regime.{err}") from None

    def shown(self, stored: dict[str, Any]) -> dict[str, Any]:
        """With its window always: the regime's JSON leaves out W = 1 (CLSC-1's five fields),
        and a client reading the sixth field of a weekly CLSC-2 rule found none. Stored as
        it was, so that the memory's key stays the same."""
        from moca.regime import WINDOW_FIELD

        return {**stored, WINDOW_FIELD: stored.get(WINDOW_FIELD, 1)}

    def decision_extra(self, row) -> dict[str, Any]:
        return {"window": {"recycled_content_window": row[1], "periods_left": row[2]}}

    def observation(self, body: DecideIn2) -> DecideIn2:
        return body  # (read as is: the agent builds its tensors from it)

    def shapes(self, params) -> dict[str, int]:
        from moca.sim2 import HISTORY

        return {"pipeline": params.lead_virgin - 1, "sales_history": params.lag_return, "demand_history": HISTORY}

    def regime_features(self, regime, params) -> list[float]:
        """The regime columns the CLSC-2 policy sees (:data:`moca.policy2.REGIME_FEATURES_2`)."""
        import torch

        from moca.policy2 import regime_columns

        row = torch.as_tensor(regime.as_row(), dtype=torch.float64)[None]
        window = torch.tensor([float(regime.recycled_content_window)], dtype=torch.float64)
        return [float(c[0]) for c in regime_columns(row, window, params)]

    def load(self, directory: str | Path):
        from moca.meta2 import load_policy2

        module, _ = load_policy2(directory)
        return module

    def save(self, directory: Path, module, metadata: dict[str, Any]) -> str:
        from moca import checkpoint
        from moca.meta2 import save_policy2

        save_policy2(directory, module, metadata)
        return json.loads((directory / checkpoint.META).read_text())["weights_sha256"]

    def deployed(self, module) -> "Deployed":
        weights = {k: v.detach().double() for k, v in module.named_parameters()}  # as evaluate_policy2
        return Deployed((module, weights), module.params)

    def decision_row(self, rt: "Runtime", chain: str, episode: int, t: int, regime, row: np.ndarray, params):
        """(regime row, W, periods_left n_t): t's window is the calendar block of the W in
        force, cut short at the next announced change in this episode and at the horizon
        (:func:`moca.regime.window_periods_left` over the chain's schedule)."""
        window = int(regime.recycled_content_window)
        announced = rt.store.all("SELECT effective, regime_id FROM regulations WHERE chain=? AND state='pending' AND "
                                 "episode=? AND effective > ? ORDER BY effective, id", (chain, episode, t))
        nxt = announced[0][0] if announced else None
        end = min((t // window + 1) * window, params.horizon, nxt if nxt is not None else params.horizon)
        starts = t == 0 or t % window == 0 or rt.store.one(
            "SELECT 1 FROM regulations WHERE chain=? AND state='in_force' AND episode=? AND effective=?",
            (chain, episode, t)) is not None
        # The regime of every period of the episode, as the library's observation carries it:
        # the past as it was in force (the rule uses virgin held beyond need first after a
        # change within the episode), the future as announced now (the rule orders virgin
        # ahead of an announced tax rise).
        table = np.repeat(np.asarray(row, dtype=np.float64)[None], params.horizon, axis=0)
        changes = rt.store.all("SELECT effective, regime_id FROM regulations WHERE chain=? AND state='in_force' AND "
                               "episode=? AND effective <= ? ORDER BY effective, id", (chain, episode, t))
        if changes:
            # in force from the episode's start: the last rule of an earlier episode, else the chain's first
            start = rt.store.one("SELECT regime_id FROM regulations WHERE chain=? AND state='in_force' AND episode < ? "
                                 "ORDER BY episode DESC, effective DESC, id DESC LIMIT 1", (chain, episode)) \
                or rt.store.one("SELECT regime_id FROM versions WHERE chain=? AND number=1", (chain,))
            table[:t] = _regime(rt, self, start[0])[1]
            for effective, regime_id in changes:  # in order: a later one overrides from its period on
                table[effective:t] = _regime(rt, self, regime_id)[1]
        for effective, regime_id in announced:
            table[effective:] = _regime(rt, self, regime_id)[1]
        return row, window, end - 1 - t, starts, table

    def decide(self, deployed: "Deployed", memory: "ChainMemory", obs: "Observation", regime_row):
        import torch

        from moca.policy2 import PolicyAgent2
        from moca.projection import project2_counted
        from moca.sim2 import Observation2, State2, revealed_terms

        (module, weights), p = deployed.decide, deployed.params
        row, window, periods_left, starts, table = regime_row
        b = obs
        for name in ("used_virgin", "used_recycled"):  # counters that disagree with the schedule: refused
            if starts and getattr(b, name) != 0:
                raise ServeError(422, f"{name}: {getattr(b, name)!r} must be 0 at t={b.t}, the first period of an "
                                      f"accounting window (W={window} in force)")
        one = lambda x: torch.tensor([float(x)], dtype=torch.float64)  # noqa: E731
        s = b.state
        state = State2(tuple(one(x) for x in (s.V, s.M, s.P, s.CA, s.CB)), tuple(one(x) for x in b.pipeline),
                       one(0.0), one(b.used_virgin), one(b.used_recycled), tuple(one(x) for x in b.sales_history))
        inputs = {"virgin": s.V, "recycled": s.M, "cores_a": s.CA, "cores_b": s.CB, "used_virgin": b.used_virgin,
                  "used_recycled": b.used_recycled, "periods_left": float(periods_left),
                  "supply_up": float(b.supply_up), "market_avail": b.market_avail}
        regime_t = torch.as_tensor(row, dtype=torch.float64)[None]
        row_inputs = {k: one(v) for k, v in inputs.items()}
        return_frac, grades = one(b.return_frac), torch.tensor([b.grades], dtype=torch.float64)
        # what the arrivals revealed this episode, this period's included (as the library's rollout counts it)
        seen = revealed_terms(return_frac, grades, row_inputs["market_avail"])
        if memory.seen is not None:
            seen = seen + torch.from_numpy(memory.seen)
        memory.seen = seen[0].numpy()
        observation = Observation2(
            b.t, state, row_inputs, regime_t,
            torch.as_tensor(table, dtype=torch.float64)[None], torch.full((1, p.horizon), window, dtype=torch.int64),
            return_frac, grades, torch.tensor([b.demand_history], dtype=torch.float64), p, seen)
        # the library's own agent, its frames and LSTM state restored from the chain's memory
        agent = PolicyAgent2(module, weights)
        size = module.frame_size
        if memory.frames is not None:
            frames = torch.from_numpy(memory.frames.astype(np.float64))
            agent._frames = [frames[i * size:(i + 1) * size][None] for i in range(len(frames) // size)]
            if memory.state is not None:
                agent._states = [tuple(torch.from_numpy(x.astype(np.float64))[None] for x in memory.state)]
        with torch.no_grad():
            raw = agent.act(observation)[0].numpy().astype(np.float64)
        memory.frames = torch.cat(agent._frames, dim=-1)[0].numpy().astype(np.float32)
        memory.state = tuple(x[0].numpy().astype(np.float32) for x in agent._states[0])
        # Counted: a window whose settlement is out of reach (cut short by a change announced
        # late, or counters no action can settle) has no feasible action; the answer says so.
        action, broken = project2_counted(raw, inputs, row, p)
        return action, raw, broken

    def summary(self, action: np.ndarray, regime, params) -> tuple[float, float]:
        from moca import clsc2

        terms = clsc2.cost_terms(action, np.zeros(5), 0.0, 0.0, regime.as_row(), params)
        own = ("virgin", "carbon", "market", "produce", "refurbish", "disassemble", "dispose", "landfill_tax")
        u_v, u_r = float(action[clsc2.UV]), float(action[clsc2.UR])
        return float(sum(terms[k] for k in own)), (u_r / (u_v + u_r) if u_v + u_r > 1e-9 else 0.0)

    def adapt(self, module, regime, settings: AdaptSettings) -> tuple[Any, dict, list[dict], Any, None]:
        """:func:`moca.meta2.adapt2` as ``moca adapt --model CLSC-2`` runs it (the weights of the
        best validation score over steps 0..steps), support seeds 800+, validation 900+
        (``settings.base`` is CLSC-1's: CLSC-2's portfolio may deploy the sampled MPC, a
        planner with no weights that solves an LP per decision, and the service deploys
        learned policies only)."""
        from moca.meta2 import OracleCache2, adapt2
        from moca.policy2 import evaluate_policy2

        cache = OracleCache2(module.params)
        support = cache.scenarios(SUPPORT_SEEDS[:settings.support], regime)
        validation = cache.scenarios(VALIDATION_SEEDS[:settings.validation], regime)
        oracle = cache.costs(validation)
        new, curve = adapt2(module, None, regime, settings.steps, support=support, validation=validation,
                            cache=cache, keep_best=True)
        return module, new, curve, lambda m: evaluate_policy2(m, dict(m.named_parameters()), validation, oracle), None


MODELS["clsc-2"] = Clsc2Model()
#: Other spellings of a model's name that registration accepts.
MODEL_ALIASES = {"CLSC-1": "clsc-1", "CLSC-2": "clsc-2"}  # (the command line's spelling of both)


class DecisionOut(BaseModel):
    """What ``decide`` answers (documentation of the JSON; kg/units as in the spec)."""

    action: dict[str, float] = Field(description="executed action: " + ", ".join(ACTION_NAMES))
    raw_action: dict[str, float] = Field(description="the policy's action before the safety layer")
    projected: bool = Field(description="whether the safety layer moved the raw action")
    policy_version: int
    regime: dict[str, Any] = Field(description="the regime in force at t (its memory id and fields)")
    t: int
    episode: int
    action_cost: float = Field(description="EUR: the period cost's terms the action sets (purchases, taxes, "
                                           "production, recovery, disposal)")
    recycled_share: float = Field(description="recycled share of this period's material input")
    latency_us: float = Field(description="µs from the validated observation to the executed action (in the service)")
    violations: int = Field(description="hard rules the executed action breaks: 0, except where no action keeps them "
                                        "all (CLSC-2: a window's settlement out of reach, e.g. cut short by a change "
                                        "announced late); the action is then the nearest to keeping them")
    window: dict[str, int] | None = Field(None, description="CLSC-2 only: the accounting window W in force and "
                                                            "periods_left n_t after t in it (from the regime schedule)")


class RegulationIn(Strict):
    regime: dict[str, Any] | str = Field(description="the new rule: the spec's regime fields, or a preset name")
    effective: int | None = Field(None, ge=0, description="first period it is in force (default: the next decision)")
    similar_to: str | None = Field(None, description="hint: a regime of the memory (name or id) to warm-start from")
    name: str | None = Field(None, max_length=80, description="a label for the regime in the memory")


class ResetIn(Strict):
    """A reset takes no fields: a body, if any, is ``{}`` (one with fields, or malformed,
    started a new episode all the same, where every other endpoint answers 422)."""


class RollbackIn(Strict):
    version: int | None = Field(None, ge=1, le=LARGEST_ID,
                                description="version to return to (default: the current one's parent)")


# ----------------------------------------------------------------------------------------
# 2. The store
# ----------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS chains(id TEXT PRIMARY KEY, model TEXT NOT NULL, params TEXT NOT NULL,
  params_hash TEXT NOT NULL, regime_id INTEGER NOT NULL, version INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chain_state(chain TEXT PRIMARY KEY, episode INTEGER NOT NULL, last_t INTEGER NOT NULL,
  frames BLOB, h BLOB, c BLOB, seen BLOB);
CREATE TABLE IF NOT EXISTS regimes(id INTEGER PRIMARY KEY, model TEXT NOT NULL, key TEXT NOT NULL,
  name TEXT, regime TEXT NOT NULL, features TEXT NOT NULL, created REAL NOT NULL, UNIQUE(model, key));
CREATE TABLE IF NOT EXISTS regulations(id INTEGER PRIMARY KEY, chain TEXT NOT NULL, regime_id INTEGER NOT NULL,
  effective INTEGER NOT NULL, episode INTEGER NOT NULL, similar_to TEXT, state TEXT NOT NULL, job INTEGER,
  created REAL NOT NULL, in_force REAL);
CREATE INDEX IF NOT EXISTS regulations_pending ON regulations(chain, state);
CREATE TABLE IF NOT EXISTS versions(chain TEXT NOT NULL, number INTEGER NOT NULL, regime_id INTEGER NOT NULL,
  parent INTEGER, path TEXT NOT NULL, sha256 TEXT NOT NULL, score REAL, parent_score REAL, source TEXT NOT NULL,
  job INTEGER, regulation INTEGER, effective INTEGER, episode INTEGER, state TEXT NOT NULL, created REAL NOT NULL,
  activated REAL, PRIMARY KEY(chain, number));
CREATE INDEX IF NOT EXISTS versions_state ON versions(chain, state);
CREATE TABLE IF NOT EXISTS jobs(id INTEGER PRIMARY KEY, chain TEXT NOT NULL, regulation INTEGER NOT NULL,
  state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, score_before REAL, score_after REAL, violations INTEGER,
  warm_start TEXT, steps INTEGER, seconds REAL, version INTEGER, error TEXT, created REAL NOT NULL, started REAL,
  finished REAL);
CREATE TABLE IF NOT EXISTS decisions(id INTEGER PRIMARY KEY, chain TEXT NOT NULL, episode INTEGER NOT NULL,
  t INTEGER NOT NULL, version INTEGER NOT NULL, regime_id INTEGER NOT NULL, action BLOB NOT NULL, raw BLOB NOT NULL,
  projected INTEGER NOT NULL, cost REAL NOT NULL, recycled_share REAL NOT NULL, latency_us REAL NOT NULL,
  at REAL NOT NULL, frames BLOB, h BLOB, c BLOB, seen BLOB);
CREATE INDEX IF NOT EXISTS decisions_chain ON decisions(chain, id);
"""
#: A decision and the recurrent state after it are ONE statement (one transaction, one
#: write): the row brings the state, which moves to chain_state.
STATE_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS decision_state AFTER INSERT ON decisions BEGIN
  INSERT OR REPLACE INTO chain_state(chain, episode, last_t, frames, h, c, seen)
    VALUES(NEW.chain, NEW.episode, NEW.t, NEW.frames, NEW.h, NEW.c, NEW.seen);
  UPDATE decisions SET frames=NULL, h=NULL, c=NULL, seen=NULL WHERE id=NEW.id;
END;
"""


def _add_seen(conn: sqlite3.Connection) -> None:
    """A database of a moca before CLSC-2's rule kept what the arrivals revealed gains the
    ``seen`` columns and the trigger that moves them, in one transaction (all or nothing;
    checked inside it, so two processes opening the database at once migrate it once)."""
    def columns(table: str) -> set[str]:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}

    if "seen" in columns("chain_state") and "seen" in columns("decisions"):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table in ("chain_state", "decisions"):
            if "seen" not in columns(table):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN seen BLOB")
        conn.execute("DROP TRIGGER IF EXISTS decision_state")
        conn.execute(STATE_TRIGGER)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def connect(path: Path, create: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN IMMEDIATE``),
    WAL journal: a committed transaction survives kill -9 of any process; readers never
    block the writer.

    Durability: every transaction of :meth:`Store.tx` (chains, regulation events, jobs,
    versions, rollbacks, resets) is committed with ``synchronous=FULL`` (fsync of the
    WAL: it survives a power cut too, and takes every earlier decision with it). A
    decision alone is written with ``synchronous=OFF``: committed into the WAL, so it
    survives the death of any process (kill -9), without an fsync on the hot path (~50
    µs per decision here); only a power cut could lose the decisions since the last
    durable commit."""
    # create=False: the file must be there (SQLite's mode=rw), else SQLite made a new, empty one
    target, uri = (str(path), False) if create else (Path(path).resolve().as_uri() + "?mode=rw", True)
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30.0, uri=uri)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _is_damage(err: sqlite3.DatabaseError) -> bool:
    """Whether a database error says the file is damaged: SQLite's corrupt-file codes, or
    text in a record that does not decode (Python's error, without a code)."""
    code = getattr(err, "sqlite_errorname", None) or ""
    return code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or str(err).startswith("Could not decode")


class StoreError(ValueError):
    """A data directory whose database cannot be used (not SQLite, or damaged)."""


class StartError(ValueError):
    """The service cannot start: its data directory is another server's, or its address is taken."""


# One server per data directory: a second one's start-up recovery would re-queue the first's
# running job and delete the weights it is writing, and each would answer from its own copy of
# a chain's recurrent memory. SQLite's own locking covers single statements, not that, hence
# an advisory lock (flock) on DATA/serve.lock, held while the process lives. Apps of one
# process share it (tests restart the app on the same directory); the worker never takes it.
_DATA_LOCKS: dict[str, int] = {}


def claim_data_dir(data: Path) -> None:
    """Hold ``data`` for this process, or raise :class:`StartError` naming the holder."""
    try:
        import fcntl
    except ImportError:  # (not POSIX: no advisory locks; run one server per directory)
        return
    key = str(Path(data).resolve())
    if key in _DATA_LOCKS:
        return
    path = Path(data) / "serve.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # (a folder or an unreadable file there: an internal error)
        raise StartError(f"--data {data}: cannot open its lock file {path} ({err.strerror}); "
                         "remove or fix it, or give another --data") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartError(f"--data {data}: in use by another moca serve (pid {holder}); stop that one first, "
                         "or give this one another --data") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _DATA_LOCKS[key] = fd


def release_data_dir(data: Path) -> None:
    """Give up this process's hold on ``data`` (:func:`claim_data_dir`)."""
    fd = _DATA_LOCKS.pop(str(Path(data).resolve()), None)
    if fd is not None:
        os.close(fd)  # (the lock goes with the descriptor)


def _in_request_words(text: str) -> str:
    """A loader's refusal of another world's checkpoint, "(use --model CLSC-1, ...": here the
    world is the request's "model" field. Only that advice is reworded; a command line the
    message quotes (e.g. "moca evaluate --model CLSC-2 ...") stays one."""
    return re.sub(r"\(use --model (CLSC-\d)", lambda m: f'(use "model": "{m.group(1).lower()}"', text)


class Store:
    """The data directory: ``moca.sqlite3``, ``weights/<chain>/v<N>/`` (the chains' versions)
    and ``checkpoints/`` (the checkpoints a chain may start from)."""

    def __init__(self, data: Path, create: bool = True):
        """``create=False`` (the server's worker): open the database the server made and
        make nothing. A worker still starting when the data directory was deleted made a
        new, empty database there, which the server then saw as its own replaced."""
        self.data = Path(data)
        self.db_path = self.data / "moca.sqlite3"
        if create:
            self.data.mkdir(parents=True, exist_ok=True)
            # Where the checkpoints a chain may name go ("checkpoint": NAME; moca adapt -o
            # DATA/checkpoints/NAME): made here so that the way a refusal points to works on a
            # fresh data directory.
            (self.data / "checkpoints").mkdir(exist_ok=True)
        elif not self.db_path.is_file():
            raise StoreError(f"{self.db_path}: gone (the data directory was deleted or moved); nothing made in its place")
        self._refuse_lost_database()
        try:
            self.conn = connect(self.db_path, create=create)
            self.conn.executescript(SCHEMA)
            _add_seen(self.conn)
            self.conn.executescript(STATE_TRIGGER)
            # A file this process may read but not write opens read-only without a word, and
            # the first write (the start-up recovery) failed after the banner: find out now.
            self.conn.execute("BEGIN IMMEDIATE")
            try:  # (a write rolled back: only a page write finds a read-only file)
                self.conn.execute(f"PRAGMA user_version={int(self.conn.execute('PRAGMA user_version').fetchone()[0])}")
            finally:
                self.conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as err:
            # Never replaced or repaired here: it may hold the only copy of the chains' history.
            raise StoreError(f"{self.db_path}: not a usable moca database ({err}); it is left as it is: "
                             + ("give this user write access to it and its folder" if "readonly" in str(err) else
                                "move it aside to start with an empty one, or restore it from a backup")) from None
        self.lock = threading.RLock()
        opened = os.stat(self.db_path)
        self._identity = (opened.st_dev, opened.st_ino)
        #: Damage a request met after the start (what no check at the start reads, e.g. text
        #: that is not UTF-8 inside a record): /health reports it until the service stops.
        self.damage: str | None = None

    def unreadable(self, err: sqlite3.DatabaseError) -> "ServeError":
        """The 503 for a database error a request met (it was a bare 500). Damage (SQLite's
        corrupt-file codes, text that does not decode) is recorded for /health; a busy or
        locked database is a retry; a full, failing, read-only or unopenable file a 503 that
        names it. Anything else (a constraint, an SQL error) is moca's own bug, not the
        file's: raised on, a 500 as before."""
        text, code = str(err), getattr(err, "sqlite_errorname", None) or ""
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return ServeError(503, f"{self.db_path}: busy ({text}); retry")
        if code.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")):
            return ServeError(503, f"{self.db_path}: cannot be written or read ({text}); fix the disk or the file's "
                                   "permissions")
        if not _is_damage(err):
            raise err
        self.damage = self.damage or text
        return ServeError(503, f"{self.db_path}: cannot be read ({text}); the service leaves the file as it is: "
                               "stop it and restore the database from a backup")

    def check_pages(self) -> None:
        """SQLite's check of every page and record (``PRAGMA quick_check``), on a connection
        of its own so that decisions go on meanwhile (it reads the whole file: seconds for a
        large database, so not before the service listens); damage found is recorded as a
        request's would be. Damaged pages were met by the start-up recovery (a traceback)
        or by requests (bare 500s) while /health said ok."""
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as conn:
                found = [" ".join(str(row[0]).split()) for row in conn.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as err:  # (busy, or the file gone meanwhile: not damage, said elsewhere)
            found = [str(err)] if _is_damage(err) else ["ok"]
        if found != ["ok"]:
            self.damage = self.damage or "; ".join(found)

    def database_problem(self) -> str | None:
        """Why the file at ``db_path`` is no longer the database this store writes (None when
        it is): deleted or replaced while the service runs, SQLite goes on writing to the
        file it opened, which no one can read after the stop, without a word."""
        try:
            now = os.stat(self.db_path)
        except FileNotFoundError:
            what = "deleted"
        else:
            if (now.st_dev, now.st_ino) == self._identity:
                if self.damage is not None:
                    return (f"{self.db_path}: damaged ({self.damage}); stop the service and "
                            "restore the database from a backup")
                return None
            what = "replaced by another file"
        return (f"{self.db_path}: {what} while the service runs; what it records from now on is lost when it "
                "stops: stop it, put the data directory back (from a backup) and start again")

    def tx(self) -> "_Tx":
        return _Tx(self)

    def one(self, sql: str, args: tuple = ()) -> Any:
        with self.lock:
            return self.conn.execute(sql, args).fetchone()

    def all(self, sql: str, args: tuple = ()) -> list:
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def weights_dir(self, chain: str, number: int) -> Path:
        return self.data / "weights" / chain / f"v{number}"

    # -- regime memory --

    def regime_id(self, model: ChainModel, regime, params, name: str | None = None) -> int:
        """The memory's id of ``regime`` (added on first sight; inside a transaction)."""
        data = model.regime_dict(regime)
        key = json.dumps(data, sort_keys=True)
        row = self.conn.execute("SELECT id, name FROM regimes WHERE model=? AND key=?", (model.name, key)).fetchone()
        if row:
            if name and not row[1]:
                self.conn.execute("UPDATE regimes SET name=? WHERE id=?", (name, row[0]))
            return row[0]
        features = model.regime_features(regime, params)
        cur = self.conn.execute("INSERT INTO regimes(model, key, name, regime, features, created) VALUES(?,?,?,?,?,?)",
                                (model.name, key, name, key, json.dumps(features), time.time()))
        return cur.lastrowid

    def check_label(self, model: ChainModel, regime, name: str) -> None:
        """A regulation's ``name`` must label this regime alone (inside a transaction):
        ``similar_to`` finds regimes by name or id, so a label of digits, a preset's name
        given to another rule, or another regime's label made it warm-start from the wrong
        regime, and the dashboard showed two regimes under one name."""
        from moca.regime import named_regimes

        if re.fullmatch(r"0|[1-9][0-9]*", name):  # (as CAST(id AS TEXT) writes an id)
            raise ServeError(422, f"name: {name!r} reads as a regime id in similar_to (a label needs a letter)")
        key = json.dumps(model.regime_dict(regime), sort_keys=True)
        if name in named_regimes() and json.dumps(model.regime_dict(model.regime(name)), sort_keys=True) != key:
            raise ServeError(422, f"name: {name!r} is a preset's name, and this rule is not that preset "
                                  "(give it another label)")
        # (within the model: a warm start only looks at chains of the same params, and a chain
        # of each model registered under "T1" labels two regimes "T1" by design)
        row = self.conn.execute("SELECT id FROM regimes WHERE name=? AND model=? AND key<>?",
                                (name, model.name, key)).fetchone()
        if row:
            raise ServeError(422, f"name: {name!r} already labels regime {row[0]} of the memory, another rule "
                                  "(give it another label)")

    def regime_row(self, regime_id: int) -> dict[str, Any]:
        r = self.one("SELECT id, model, name, regime, features, created FROM regimes WHERE id=?", (regime_id,))
        return {"id": r[0], "model": r[1], "name": r[2], "regime": MODELS[r[1]].shown(json.loads(r[3])),
                "features": json.loads(r[4]), "created": r[5]}

    def _refuse_lost_database(self) -> None:
        """A missing or empty database beside weight folders of versions: the record of
        those chains is gone (deleted, truncated, a restore without it). Starting would
        make an empty memory and the recovery would delete every weight folder as an
        orphan, the only copies left; refuse instead."""
        wal = self.db_path.with_name(self.db_path.name + "-wal")
        if any(p.exists() and p.stat().st_size > 0 for p in (self.db_path, wal)):
            return
        versions = sorted(p for p in (self.data / "weights").glob("*/*") if p.is_dir())
        if versions:
            chains = sorted({p.parent.name for p in versions})
            state = "empty" if self.db_path.exists() else "missing"
            raise StoreError(f"{self.db_path}: {state}, but {self.data / 'weights'} holds {len(versions)} version "
                             f"folder(s) of {', '.join(chains[:5])}{' and more' if len(chains) > 5 else ''}: the "
                             "database that records them is gone. Restore it from a backup, or move weights/ aside "
                             "to start with an empty memory (nothing was changed)")

    def stopped(self) -> None:
        """A stop of the service (not a crash): a job it cut short did not fail, so it is
        queued again without spending one of its ``MAX_ATTEMPTS`` (two routine restarts
        during one job failed it); the WAL is folded into the database file, so that the
        file alone, once the service is stopped, holds everything (a backup of it only)."""
        with self.tx() as c:
            c.execute("UPDATE jobs SET state='queued', attempts=MAX(attempts - 1, 0), error='stopped with the "
                      "service; re-run' WHERE state='running'")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def recover(self, cleanup: bool = True) -> dict[str, int]:
        """After a crash: jobs that were running are queued again (or failed after
        ``MAX_ATTEMPTS``); weight directories no version refers to (written by a job that
        died before its transaction) and half-written staging directories are removed."""
        with self.tx() as c:
            requeued = c.execute("UPDATE jobs SET state='queued', error='interrupted; re-run' "
                                 "WHERE state='running' AND attempts < ?", (MAX_ATTEMPTS,)).rowcount
            failed = c.execute("UPDATE jobs SET state='failed', finished=?, error='interrupted ' || attempts || "
                               "' times; not applied' WHERE state='running'", (time.time(),)).rowcount
            known = {str(self.data / p) for (p,) in c.execute("SELECT path FROM versions")}
        removed = 0
        root = self.data / "weights"
        if cleanup and root.is_dir():
            for chain_dir in root.iterdir():
                for d in chain_dir.iterdir() if chain_dir.is_dir() else []:
                    if str(d) not in known:
                        shutil.rmtree(d, ignore_errors=True)
                        removed += 1
        return {"requeued": requeued, "failed": failed, "orphans_removed": removed}


class _Tx:
    """``with store.tx() as conn:`` one write transaction (BEGIN IMMEDIATE .. COMMIT)."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store.lock.acquire()
        try:
            self.store.conn.execute("PRAGMA synchronous=FULL")
            self.store.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.store.lock.release()
            raise
        return self.store.conn

    def __exit__(self, kind, value, tb) -> None:
        try:
            self.store.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            try:
                self.store.conn.execute("PRAGMA synchronous=OFF")
            finally:
                self.store.lock.release()


def _params_hash(params_json: str) -> str:
    return hashlib.sha256(params_json.encode()).hexdigest()[:16]


def _queue_regulation(c: sqlite3.Connection, chain: str, regime_id: int, effective: int, episode: int,
                      similar_to: str | None = None, in_force: bool = False) -> tuple[int, int]:
    """A regulation event and its adaptation job, inside the caller's transaction:
    ``(regulation id, job id)``. ``in_force``: already in force (the regime a chain is
    registered in), else pending until its period."""
    now = time.time()
    reg = c.execute("INSERT INTO regulations(chain, regime_id, effective, episode, similar_to, state, created, "
                    "in_force) VALUES(?,?,?,?,?,?,?,?)",
                    (chain, regime_id, effective, episode, similar_to, "in_force" if in_force else "pending", now,
                     now if in_force else None)).lastrowid
    job = c.execute("INSERT INTO jobs(chain, regulation, state, created) VALUES(?,?,'queued',?)",
                    (chain, reg, now)).lastrowid
    c.execute("UPDATE regulations SET job=? WHERE id=?", (job, reg))
    return reg, job


# ----------------------------------------------------------------------------------------
# 3. The adaptation worker (a separate process)
# ----------------------------------------------------------------------------------------


def _distance(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def warm_start(store: Store, chain: str, params_hash: str, regime_id: int, hint: str | None) -> tuple[str, int, int]:
    """The version to start adapting from: ``(why, chain, version)``. The ``similar_to``
    hint first (the best version learned for that regime), else the version learned for
    the nearest regime of the memory (by regime features), else the chain's current one."""
    learned = store.all(
        "SELECT v.chain, v.number, v.regime_id, v.score, r.name, r.features FROM versions v "
        "JOIN regimes r ON r.id = v.regime_id JOIN chains c ON c.id = v.chain "
        # (a version an operator rolled back is not learned from again)
        "WHERE c.params_hash=? AND v.source != 'initial' AND v.score IS NOT NULL AND v.state != 'rolled_back'",
        (params_hash,))
    if hint is not None:
        ids = {row[0] for row in store.all("SELECT id FROM regimes WHERE name=? OR CAST(id AS TEXT)=?", (hint, hint))}
        candidates = [row for row in learned if row[2] in ids]
        if candidates:
            best = max(candidates, key=lambda row: (row[0] == chain, row[3]))
            return f"similar_to {hint}", best[0], best[1]
    target = json.loads(store.one("SELECT features FROM regimes WHERE id=?", (regime_id,))[0])
    if learned:
        best = min(learned, key=lambda row: (_distance(json.loads(row[5]), target), -row[3]))
        return f"nearest regime {best[2]} (distance {_distance(json.loads(best[5]), target):.3g})", best[0], best[1]
    current = store.one("SELECT version FROM chains WHERE id=?", (chain,))[0]
    return "current version (memory empty)", chain, current


def load_version(store: Store, model: ChainModel, chain: str, number: int):
    """The module of a version, its checkpoint's checksum checked against the database's."""
    row = store.one("SELECT path, sha256 FROM versions WHERE chain=? AND number=?", (chain, number))
    if row is None:
        raise ServeError(404, f"version: chain {chain!r} has no version {number}")
    from moca.checkpoint import CheckpointError

    path = store.data / row[0]
    try:
        module = model.load(path)
        recorded = json.loads((path / "checkpoint.json").read_text())["weights_sha256"]
    except (CheckpointError, OSError, KeyError, ValueError) as err:
        raise ServeError(503, f"version {number} of {chain!r}: {err}") from None
    if recorded != row[1]:
        raise ServeError(503, f"version {number} of {chain!r}: weights checksum {recorded[:12]} is not the "
                              f"recorded {row[1][:12]}")
    return module


def _failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def run_job(store: Store, job_id: int, settings: AdaptSettings = AdaptSettings()) -> None:
    """Adapt, validate, and (if it passes) add the version in ONE transaction with the
    job's end, so an interrupted job leaves nothing half-applied."""
    import torch

    started = time.time()
    job = store.one("SELECT chain, regulation FROM jobs WHERE id=?", (job_id,))
    chain, regulation = job
    c_model, params_hash, current = store.one("SELECT model, params_hash, version FROM chains WHERE id=?", (chain,))
    model = MODELS[c_model]
    regime_id, similar_to = store.one("SELECT regime_id, similar_to FROM regulations WHERE id=?", (regulation,))
    regime = model.regime(json.loads(store.one("SELECT regime FROM regimes WHERE id=?", (regime_id,))[0]),
                          any_window=True)  # stored: accepted when it came
    why, from_chain, from_version = warm_start(store, chain, params_hash, regime_id, similar_to)
    start_module = load_version(store, model, from_chain, from_version)
    current_module = load_version(store, model, chain, current)
    with torch.enable_grad():
        module, weights, curve, score, portfolio = model.adapt(start_module, regime, settings)
    _failpoint("mid-adaptation")
    # Step 0 of the curve is the current version only when the job adapted that version itself.
    same_start = module is start_module and (from_chain, from_version) == (chain, current)
    before = curve[0] if same_start else score(current_module)
    after = next((c for c in curve if c.get("selected")), curve[-1])  # (keep_best: the weights returned)
    passed = after["violations"] == 0 and after["score"] >= before["score"]
    seconds = time.time() - started
    started_from = f"{why}: {from_chain} v{from_version}"
    if portfolio is not None:  # which candidate the portfolio deployed, and each one's validation score
        started_from += "; portfolio chose {} ({})".format(portfolio["chosen"], ", ".join(
            f"{n} {c['validation_score']:.4f}" for n, c in portfolio["candidates"].items()))
    result = {"score_before": before["score"], "score_after": after["score"], "violations": after["violations"],
              "warm_start": started_from, "steps": settings.steps}
    if not passed:
        reason = (f"validation: {after['violations']} violations" if after["violations"]
                  else f"validation: score {after['score']:.4f} below the current version's {before['score']:.4f}")
        with store.tx() as c:
            c.execute("UPDATE jobs SET state='rejected', score_before=?, score_after=?, violations=?, warm_start=?, "
                      "steps=?, seconds=?, error=?, finished=? WHERE id=? AND state='running'",
                      (*result.values(), seconds, reason, time.time(), job_id))
        return
    module.load_state_dict({**module.state_dict(), **weights})
    number = store.one("SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE chain=?", (chain,))[0]
    path = store.weights_dir(chain, number)
    shutil.rmtree(path, ignore_errors=True)  # a leftover of an interrupted attempt
    sha = model.save(path, module, {"chain": chain, "version": number, "regime": model.regime_dict(regime),
                                          "parent": current, "job": job_id, "scores": result})
    _failpoint("after-weights-written")
    with store.tx() as c:
        state, effective, episode = c.execute("SELECT state, effective, episode FROM regulations WHERE id=?",
                                              (regulation,)).fetchone()
        taken = c.execute("SELECT 1 FROM versions WHERE chain=? AND number=?", (chain, number)).fetchone()
        if taken:  # a rollback or another job took the number meanwhile: try again later
            raise RuntimeError(f"version number {number} taken meanwhile")
        # in force and still the chain's regime: active now; a rule already replaced by a
        # later one: kept for the memory (retired); else it waits for its period
        in_force_regime = c.execute("SELECT regime_id FROM chains WHERE id=?", (chain,)).fetchone()[0]
        active = state == "in_force" and in_force_regime == regime_id
        c.execute("INSERT INTO versions(chain, number, regime_id, parent, path, sha256, score, parent_score, source, "
                  "job, regulation, effective, episode, state, created, activated) "
                  "VALUES(?,?,?,?,?,?,?,?,'adapted',?,?,?,?,?,?,?)",
                  (chain, number, regime_id, current, str(path.relative_to(store.data)), sha, after["score"],
                   before["score"], job_id, regulation, effective, episode,
                   "active" if active else "retired" if state == "in_force" else "scheduled",
                   time.time(), time.time() if active else None))
        if active:
            c.execute("UPDATE versions SET state='retired' WHERE chain=? AND state='active' AND number != ?",
                      (chain, number))
            c.execute("UPDATE chains SET version=? WHERE id=?", (number, chain))
        c.execute("UPDATE jobs SET state='done', score_before=?, score_after=?, violations=?, warm_start=?, steps=?, "
                  "seconds=?, version=?, error=NULL, finished=? WHERE id=?",
                  (*result.values(), time.time() - started, number, time.time(), job_id))


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to the worker when the server dies (even by kill -9)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(data: str, parent: int, settings: AdaptSettings = AdaptSettings()) -> None:
    """Claim queued jobs one at a time until the server (``parent``) is gone."""
    _die_with_parent()
    if os.getppid() != parent:  # (the server died before the kernel was told to end us with it)
        return
    # A stop is the server's to make (systemd's stop sends SIGTERM to every process of the
    # service): the server ends the worker and records the job as stopped, not crashed.
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.SIG_IGN)
    try:
        os.nice(10)  # decisions first: the worker gets what the server leaves
    except OSError:
        pass
    import torch

    torch.set_num_threads(1)
    import moca.meta  # noqa: F401  (warm: the first job should not pay the imports)

    try:
        store = Store(Path(data), create=False)
    except (StoreError, sqlite3.Error) as err:  # (the server says so too, and starts no other worker)
        print(f"moca serve worker: {err}", file=sys.stderr, flush=True)
        return
    while os.getppid() == parent:
        with store.tx() as c:
            row = c.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1").fetchone()
            if row:
                c.execute("UPDATE jobs SET state='running', attempts=attempts+1, started=? WHERE id=?",
                          (time.time(), row[0]))
        if not row:
            time.sleep(0.1)
            continue
        try:
            run_job(store, row[0], settings)
        except Exception as err:  # noqa: BLE001 - any failure ends the job, not the worker
            message = (str(err).strip().splitlines() or [type(err).__name__])[0]
            with store.tx() as c:
                c.execute("UPDATE jobs SET state='failed', error=?, finished=? WHERE id=?",
                          (f"{type(err).__name__}: {message}", time.time(), row[0]))


# ----------------------------------------------------------------------------------------
# 4. The app
# ----------------------------------------------------------------------------------------


@dataclass
class Runtime:
    """Caches of what the database holds (rebuilt from it after a restart)."""

    store: Store
    token: str | None
    memories: dict[str, ChainMemory] = field(default_factory=dict)
    chains: dict[str, tuple] = field(default_factory=dict)  # id -> (model, params, regimes by id)
    deployed: dict[tuple[str, int], Deployed] = field(default_factory=dict)
    regimes: dict[int, tuple[Any, np.ndarray, dict]] = field(default_factory=dict)
    worker: subprocess.Popen | None = None
    keep_decisions: int = 0  # per chain; 0 keeps every decision
    #: Held from a registration's check that its id is free to its insert: two at once (a
    #: client's retry) each rewrote the weights the other had recorded.
    registering: threading.Lock = field(default_factory=threading.Lock)
    #: Decisions stored per chain since its log was last pruned (since the start).
    unpruned: dict[str, int] = field(default_factory=dict)
    recovered: dict[str, int] = field(default_factory=dict)
    #: Versions whose checkpoint failed to load (chain, number) -> why: /health names them.
    unloadable: dict[tuple[str, int], str] = field(default_factory=dict)
    #: Until the first pass over the versions the chains decide with has tried each: /health
    #: says "starting" (it said "ok" of versions nothing had tried to load yet).
    starting: bool = False


def _chain(rt: Runtime, chain: str) -> tuple:
    if chain not in rt.chains:
        row = rt.store.one("SELECT model, params FROM chains WHERE id=?", (chain,))
        if row is None:
            raise ServeError(404, f"chain: no chain {chain!r}")
        model = MODELS[row[0]]
        rt.chains[chain] = (model, model.params(json.loads(row[1])))
    return rt.chains[chain]


def _body_model(rt: Runtime, chain: str) -> type[BaseModel]:
    """The decide body of the chain's model; an unknown chain is a 404 before its body is
    read (a CLSC-2 body was checked against CLSC-1's: "422 state.virgin: Field required")."""
    return _chain(rt, chain)[0].body


def _regime(rt: Runtime, model: ChainModel, regime_id: int) -> tuple[Any, np.ndarray, dict]:
    """(regime, its row, its JSON form) of a memory id; regimes never change once stored."""
    if regime_id not in rt.regimes:
        regime = model.regime(json.loads(rt.store.one("SELECT regime FROM regimes WHERE id=?", (regime_id,))[0]),
                              any_window=True)  # stored: accepted when it came (a database of an older moca)
        rt.regimes[regime_id] = (regime, model.regime_row(regime),
                                 {"id": regime_id, **model.shown(model.regime_dict(regime))})
    return rt.regimes[regime_id]


def _deployed(rt: Runtime, model: ChainModel, chain: str, number: int) -> Deployed:
    key = (chain, number)
    if key not in rt.deployed:
        try:
            rt.deployed[key] = model.deployed(load_version(rt.store, model, chain, number))
        except ServeError as err:
            rt.unloadable[key] = err.message
            raise
        rt.unloadable.pop(key, None)
    return rt.deployed[key]


def _memory(rt: Runtime, chain: str) -> ChainMemory:
    if chain not in rt.memories:
        row = rt.store.one("SELECT episode, last_t, frames, h, c, seen FROM chain_state WHERE chain=?", (chain,))
        rt.memories[chain] = ChainMemory.from_row(row) if row else ChainMemory()
    return rt.memories[chain]


def _promote(c: sqlite3.Connection, chain: str, episode: int, t: int) -> None:
    """Regulations whose period has come are in force from now on; versions validated for
    them become the chain's version (inside the decision's transaction)."""
    due = c.execute("SELECT id, regime_id FROM regulations WHERE chain=? AND state='pending' AND "
                    "(episode < ? OR effective <= ?) ORDER BY effective, id", (chain, episode, t)).fetchall()
    now = time.time()
    for reg_id, regime_id in due:
        c.execute("UPDATE regulations SET state='in_force', in_force=? WHERE id=?", (now, reg_id))
        c.execute("UPDATE chains SET regime_id=? WHERE id=?", (regime_id, chain))
    regime_id = c.execute("SELECT regime_id FROM chains WHERE id=?", (chain,)).fetchone()[0]
    ready = c.execute("SELECT v.number FROM versions v JOIN regulations r ON r.id = v.regulation WHERE v.chain=? "
                      "AND v.state='scheduled' AND r.state='in_force' AND v.regime_id=? ORDER BY v.number DESC",
                      (chain, regime_id)).fetchall()
    # versions for rules that a later rule replaced before they took effect: memory only
    c.execute("UPDATE versions SET state='retired' WHERE chain=? AND state='scheduled' AND regime_id != ? AND "
              "regulation IN (SELECT id FROM regulations WHERE state='in_force')", (chain, regime_id))
    if ready:
        # (a version scheduled for a rule still pending stays scheduled: retiring it kept the
        # chain on this rule's version after that rule had come into force)
        c.execute("UPDATE versions SET state='retired' WHERE chain=? AND number != ? AND (state='active' OR "
                  "(state='scheduled' AND regulation IN (SELECT id FROM regulations WHERE state='in_force')))",
                  (chain, ready[0][0]))
        c.execute("UPDATE versions SET state='active', activated=? WHERE chain=? AND number=?", (now, chain, ready[0][0]))
        c.execute("UPDATE chains SET version=? WHERE id=?", (ready[0][0], chain))


def _current(rt: Runtime, chain: str, episode: int, t: int) -> tuple[int, int, bool]:
    """(version, regime id, whether a regulation or a version is due at ``t``) in one query."""
    return rt.store.one(
        "SELECT version, regime_id, EXISTS(SELECT 1 FROM regulations WHERE chain=?1 AND state='pending' AND "
        "(episode < ?2 OR effective <= ?3)) OR EXISTS(SELECT 1 FROM versions v JOIN regulations r ON "
        "r.id = v.regulation WHERE v.chain=?1 AND v.state='scheduled' AND r.state='in_force') FROM chains WHERE id=?1",
        (chain, episode, t))


def decide(rt: Runtime, chain: str, body: DecideIn) -> dict[str, Any]:
    """One decision: the executed action is the exact projection for the regime in force at ``t``."""
    started = time.perf_counter()
    model, params = _chain(rt, chain)
    shapes = model.shapes(params)
    for name, size in shapes.items():
        got = len(getattr(body, name))
        if got != size:
            raise ServeError(422, f"{name}: {got} values, expected {size} for this chain's params")
    if body.t >= params.horizon:
        raise ServeError(422, f"t: {body.t} is past the episode (periods 0..{params.horizon - 1})")
    if body.t > 0 and getattr(body, "last_demand", 0.0) is None:  # (CLSC-2 reads demand_history instead)
        # the features would read the chain's base demand in its place: another action without a word
        raise ServeError(422, f"last_demand: required at t = {body.t} (last period's demand, units; null only at t = 0)")
    memory = _memory(rt, chain)
    if body.t <= memory.last_t:
        done = (f"period {body.t} was already decided" if body.t == memory.last_t else
                f"period {body.t} is before period {memory.last_t}, decided already")
        raise ServeError(409, f"t: {done} in this episode; POST /v1/chains/{chain}/reset starts a new one")
    store = rt.store
    version, regime_id, due = _current(rt, chain, memory.episode, body.t)
    if due:
        with store.tx() as c:
            _promote(c, chain, memory.episode, body.t)
        version, regime_id, _ = _current(rt, chain, memory.episode, body.t)
    regime, row, regime_out = _regime(rt, model, regime_id)
    deployed = _deployed(rt, model, chain, version)
    trial = ChainMemory(memory.episode, body.t, memory.frames, memory.state, memory.seen)
    row = model.decision_row(rt, chain, memory.episode, body.t, regime, row, params)
    action, raw, broken = model.decide(deployed, trial, model.observation(body), row)
    cost, share = model.summary(action, regime, params)
    projected = not np.array_equal(action, raw)
    latency = (time.perf_counter() - started) * 1e6
    with store.lock:  # one statement = one transaction (autocommit); the trigger stores the state
        store.conn.execute(
            "INSERT INTO decisions(chain, episode, t, version, regime_id, action, raw, projected, cost, recycled_share, "
            "latency_us, at, frames, h, c, seen) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (chain, memory.episode, body.t, version, regime_id, action.tobytes(), raw.tobytes(), int(projected), cost,
             share, latency, time.time(), *trial.blobs()))
        rt.memories[chain] = trial  # only once it is stored, and before the pruning (were it to fail, the
        # period would be stored and answered 500, and the client's retry decided it again)
        # Each chain's log is pruned every so many of its own decisions (counted by the row id
        # all chains share, a chain whose turn never fell on a multiple kept all), and at its
        # first decision since the start (a chain deciding less often than that per start was
        # never pruned).
        rt.unpruned[chain] = rt.unpruned.get(chain, -1) + 1
        if rt.keep_decisions and (rt.unpruned[chain] == 0 or rt.unpruned[chain] >= min(1024, rt.keep_decisions)):
            try:  # (a log pruned later: the decision is stored, and is answered)
                store.conn.execute("DELETE FROM decisions WHERE chain=?1 AND id <= (SELECT id FROM decisions WHERE "
                                   "chain=?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)", (chain, rt.keep_decisions))
                rt.unpruned[chain] = 0
            except (sqlite3.Error, OverflowError) as err:
                print(f"moca serve: {chain}: the decision log was not pruned ({err}); it is tried again later",
                      file=sys.stderr, flush=True)
    names = model.action_names
    return {"action": dict(zip(names, action.tolist())), "raw_action": dict(zip(names, raw.tolist())),
            "projected": projected, "policy_version": version, "regime": regime_out, "t": body.t,
            "episode": memory.episode, "action_cost": cost, "recycled_share": share, "latency_us": round(latency, 1),
            "violations": broken, **model.decision_extra(row)}


def _version_out(store: Store, row) -> dict[str, Any]:
    keys = ("number", "regime_id", "parent", "sha256", "score", "parent_score", "source", "job", "regulation",
            "effective", "episode", "state", "created", "activated")
    return dict(zip(keys, row))


VERSION_COLUMNS = ("number, regime_id, parent, sha256, score, parent_score, source, job, regulation, effective, "
                   "episode, state, created, activated")
JOB_COLUMNS = ("id, chain, regulation, state, attempts, score_before, score_after, violations, warm_start, steps, "
               "seconds, version, error, created, started, finished")


#: A job's columns and the regime its regulation brings (a rejected or failed job made no
#: version that would say which).
JOB_SELECT = f"SELECT {JOB_COLUMNS}, (SELECT regime_id FROM regulations WHERE regulations.id = jobs.regulation) FROM jobs"


JOB_KEYS = (*(c.strip() for c in JOB_COLUMNS.split(",")), "regime_id")  # (JOB_SELECT's, in order)


def _job_out(row) -> dict[str, Any]:
    return dict(zip(JOB_KEYS, row))


class _TooLarge(BaseException):  # not Exception: FastAPI would turn that into a 400
    pass


def _not_json(headers: dict[bytes, bytes]) -> str | None:
    """Why a request's body is not declared JSON (None when it is, or has none): every body
    the service takes is JSON, and /decide read a text/plain or form body as JSON, which
    a web page in the user's browser can send to a service without a token (no CORS
    check guards such a "simple" request). ``headers``: the request's, by lower-case name."""
    kind = headers.get(b"content-type")
    if kind is None:
        sized = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        return "missing; expected application/json" if sized else None
    media = kind.split(b";", 1)[0].strip().lower()
    if media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json")):
        return None
    return f"expected application/json, got {media.decode('latin-1')[:60]!r}"


_KEY = re.compile(rb'"([^"\\]*)"\s*:')  # a key in a body without escapes: a string followed by ':'


def _key_given_twice(body: bytes) -> str | None:
    """Why a JSON body says one thing twice (a key given twice in one object; None when
    not): the parser keeps the last without a word, so ``{"state": {"V": 100, "V": 5000}}``
    decided with 5,000 kg, where moca's file readers refuse the same. A scan for keys
    first (~4 us on a CLSC-2 observation, ~18 us for a parse that checks): only a body
    with a repeated key or an escape is parsed again. Malformed JSON is left to the
    parser after, which says where it breaks."""
    if b"\\" not in body:
        keys = _KEY.findall(body)
        if len(keys) == len(set(keys)):
            return None
    try:
        json.loads(body, object_pairs_hook=unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    except ValueError as err:
        return f"body: {err}"
    return None  # (the same key in two different objects)


def _not_utf8(body: bytes) -> str | None:
    """Why ``body`` is no JSON text, where its bytes are not UTF-8 (None when they are)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"body: not UTF-8 text (byte {err.start}; JSON is sent as UTF-8)"
    return None


def _body_problem(body: bytes) -> str | None:
    """Why a body of the routes other than decide is refused before FastAPI parses it, from
    one parse (they are not the hot path, so no key scan first as in :func:`_key_given_twice`):
    a key given twice in one object, bytes that are not UTF-8, or arrays and objects nested
    deeper than the parser recurses (FastAPI answered these two with a bare 400, "There was
    an error parsing the body"), and a body of ``null``: on the routes whose body is
    optional (reset, rollback) FastAPI reads it as no body, so ``null`` started an episode
    where ``[]`` is refused. None otherwise; malformed JSON is left to FastAPI's parser,
    which says at which character. (The decide fast path's parser names these itself.)"""
    if not body:
        return None
    try:
        if json.loads(body, object_pairs_hook=unique_keys) is None:
            return "body: null, expected an object ({} or no body where no field is needed)"
    except UnicodeDecodeError:
        return _not_utf8(body)
    except RecursionError:
        return "body: nested too deeply to read"
    except json.JSONDecodeError:
        return None
    except ValueError as err:  # (unique_keys: a key given twice)
        return f"body: {err}"
    return None


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before the
    app parses it (by its Content-Length, or while a chunked body streams in), and a body
    that is not declared JSON 415. Plain ASGI rather than ``@app.middleware``: that one
    costs ~0.1 ms per request. A compressed body (``Content-Encoding``) is answered 415 too."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}  # (one pass over the headers for both checks)
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                return await self._refuse(send)
            headers[name] = value
        if scope["method"] in ("POST", "PUT", "PATCH"):
            problem = _not_json(headers)
            if problem is not None:
                return await self._refuse(send, 415, f"content-type: {problem}")
            encoding = headers.get(b"content-encoding", b"identity").strip().lower()
            if encoding != b"identity":  # (a gzip body was "malformed JSON", or a 400 naming nothing)
                return await self._refuse(send, 415, f"content-encoding: {encoding.decode('latin-1')!r} is not "
                                                     "supported; send the JSON uncompressed")
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send, status: int = 413, detail: str | None = None) -> None:
        body = json.dumps({"detail": detail or f"body: larger than {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _json_kind(part: Any) -> str | None:
    """What a union member asks for, from its tag in a pydantic error location
    (``regime.dict[str,any]``, ``regime.str``); None for a field's name."""
    return {"dict": "an object", "list": "a list", "str": "a string", "int": "a whole number", "float": "a number",
            "bool": "true or false"}.get(str(part).split("[", 1)[0])


def _validation_answer(errors: list[dict]) -> dict[str, Any]:
    """422 body: one line naming the first field and the problem, and the list."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # (its location is a character offset, not a field)
        offset = [p for p in first.get("loc", ()) if p != "body"]
        at = f" at character {offset[0]}" if offset else ""
        why = (first.get("ctx") or {}).get("error", "")
        return {"detail": f"body: malformed JSON{at}" + (f" ({why})" if why else ""),
                "errors": [{"field": "body", "message": first.get("msg")}]}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    msg = str(first.get("msg", "")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif str(first.get("type", "")).endswith("_type") and "input" in first:  # the value refused, as JSON
        got = json.dumps(first["input"], default=str)
        msg += f", got {got if len(got) <= 40 else got[:37] + '...'}"
    counted = 1
    if loc and _json_kind(loc[-1]):
        # A union (an object or a name): one line for all its members, not pydantic's first.
        field, kinds = loc[:-1], []
        for e in errors:
            parts = [str(p) for p in e.get("loc", ()) if p != "body"]
            if parts[:-1] == field and parts and _json_kind(parts[-1]):
                kinds.append(_json_kind(parts[-1]))
        counted = len(kinds)
        got = {dict: "an object", list: "a list", str: "a string", bool: "true or false", int: "a number",
               float: "a number", type(None): "null"}.get(type(first.get("input")), "something else")
        where, msg = ".".join(field) or "body", f"expected {' or '.join(dict.fromkeys(kinds))}, got {got}"
    more = f" (and {len(errors) - counted} more)" if len(errors) > counted else ""
    named = msg.startswith((f"{where}:", f"{where}[", f"{where}="))  # our validators name the field themselves
    return {"detail": f"{msg if named else f'{where}: {msg}'}{more}", "errors": [
        {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "message": e.get("msg")}
        for e in errors[:10]]}


def token_matches(header: bytes, token: str) -> bool:
    """Whether an ``Authorization`` header's bytes are ``Bearer <token>``; the scheme's name
    in any case, as HTTP has it (RFC 9110: "bearer" was refused), the token compared in
    constant time."""
    scheme, _, credentials = header.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token.encode())


class DecideFastPath:
    """ASGI middleware answering ``POST /v1/chains/{id}/decide`` itself, the same way the
    FastAPI route does (same body model, token check, errors and answer) but without
    FastAPI's routing and dependency solving, which cost ~0.2 ms of CPU per request: the
    hot path of the service. The route stays declared, so that OpenAPI documents the
    endpoint; requests to it are answered here."""

    def __init__(self, app, runtime: Runtime):
        self.app, self.rt = app, runtime

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if not (scope["type"] == "http" and scope["method"] == "POST" and path.startswith("/v1/chains/")
                and path.endswith("/decide") and "/" not in path[11:-7] and path[11:-7]):
            return await self.app(scope, receive, send)
        status, answer = 200, None
        if self.rt.token is not None:
            if not token_matches(dict(scope["headers"]).get(b"authorization", b""), self.rt.token):
                status, answer = 401, {"detail": "authorization: missing or wrong bearer token"}
        if answer is None:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            twice = _key_given_twice(body)
            if twice is not None:
                status, answer = 422, {"detail": twice}
            else:
                try:
                    answer = decide(self.rt, path[11:-7], _body_model(self.rt, path[11:-7]).model_validate_json(body))
                except ValidationError as err:
                    errors = err.errors()
                    # (bytes that are not UTF-8: its parser said "invalid unicode code point")
                    problem = _not_utf8(body) if errors[0].get("type") == "json_invalid" else None
                    status, answer = 422, {"detail": problem} if problem else _validation_answer(errors)
                except ServeError as err:
                    status, answer = err.status, {"detail": err.message}
                except sqlite3.DatabaseError as err:
                    refused = self.rt.store.unreadable(err)
                    status, answer = refused.status, {"detail": refused.message}
        data = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


def _mount_docs(app) -> None:
    """``/docs``: Swagger UI served by the service itself (FastAPI's default page loads it
    from a CDN, so it was blank on a network without the internet)."""
    from importlib.resources import files

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    # The package's Swagger UI files (5.x: it reads FastAPI's OpenAPI 3.1), served as they
    # are; its own patch_fastapi would also take the service's "/" (the dashboard).
    app.mount("/docs-assets", StaticFiles(directory=str(files("fastapi_swagger") / "resources")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


def _keys_once_route():
    """FastAPI's route class answering a body with a key given twice 422 (the routes the
    fast path does not answer: registration, regulation, reset, rollback), before the
    body is parsed, in the order a malformed body is refused."""
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute

    class KeysOnceRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def checked(request):
                if request.method in ("POST", "PUT", "PATCH"):
                    body = await request.body()
                    problem = _body_problem(body)
                    if problem is not None:
                        return JSONResponse({"detail": problem}, status_code=422)
                return await handler(request)  # (it reads the body kept by the request)

            return checked

    return KeysOnceRoute


def create_app(data: str | Path = "moca-data", token: str | None = None, worker: bool = True,
               adapt: AdaptSettings = AdaptSettings(), keep_decisions: int = 100_000):
    """The FastAPI app over the data directory ``data``. ``token``: mutating endpoints need
    ``Authorization: Bearer <token>``. ``worker``: start the adaptation worker process.
    ``keep_decisions``: the decision log keeps (about) the last so many per chain (0: all)."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, Header, Query
    from fastapi import Path as PathParameter
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    # (beyond SQLite's 64-bit OFFSET the log's pruning failed each decision after storing it:
    # a 500, and the client's retry logged the period twice)
    if isinstance(keep_decisions, bool) or not isinstance(keep_decisions, int) or not 0 <= keep_decisions <= LARGEST_ID:
        raise StartError(f"keep_decisions={keep_decisions!r}: must be a whole number of decisions in 0..{LARGEST_ID} "
                         "(0 keeps all)")
    claimed = Path(data).is_dir() and str(Path(data).resolve()) not in _DATA_LOCKS
    if claimed:  # (before the database is opened: the opening migrates it, under a server of an
        # older moca that holds the directory)
        claim_data_dir(Path(data))
    try:
        store = Store(Path(data))
    except BaseException:  # (a library caller that goes on held the directory it could not open)
        if claimed:
            release_data_dir(Path(data))
        raise
    try:
        claim_data_dir(store.data)  # (before the lifespan's recovery touches the jobs and weights)
    except StartError:
        store.conn.close()  # (a library caller that goes on would keep the refused data's database open)
        raise
    rt = Runtime(store, token or None, keep_decisions=keep_decisions)

    def start_worker() -> None:
        # Its own session: a Ctrl-C in a terminal (or a kill of the server's process group)
        # reaches the server alone, whose stop then ends the worker and queues its job as
        # stopped; the worker dying of the signal first was counted as a crash.
        rt.worker = subprocess.Popen([sys.executable, "-m", "moca.serve", "--worker", str(store.data), str(os.getpid()),
                                      *adapt.argv()],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(store.data / "worker.log", "ab"), start_new_session=True)

    async def watch_worker() -> None:
        """A worker that dies (killed, out of memory) is replaced; its job is re-run or
        failed. Versions the worker adds are loaded here, off the event loop, before
        their first decision needs them (a cold load takes ~10 ms)."""
        told = False
        while True:
            await asyncio.sleep(0.25)
            problem = store.database_problem()
            if problem and not told:  # (once: /health goes on saying it)
                print(f"moca serve: {problem}", file=sys.stderr, flush=True)
            told = bool(problem)
            # (not replaced then: a new worker would make an empty database where the old one was)
            if not problem and rt.worker is not None and rt.worker.poll() is not None:
                found = store.recover(cleanup=False)  # (a registration may be writing its weights now)
                # /health's "recovered" counts since the start, a worker's death included
                rt.recovered = {k: rt.recovered.get(k, 0) + v for k, v in found.items()}
                start_worker()
            try:
                await asyncio.to_thread(preload)
            finally:
                rt.starting = False

    def preload() -> None:
        """Load the versions the chains decide with (or will)."""
        try:
            for chain, number, model in store.all("SELECT v.chain, v.number, c.model FROM versions v JOIN chains c "
                                                  "ON c.id = v.chain WHERE v.state IN ('active', 'scheduled')"):
                if (chain, number) not in rt.deployed:
                    try:
                        _deployed(rt, MODELS[model], chain, number)
                    except ServeError:
                        pass  # a decision will report it (503 naming the version)
        except sqlite3.DatabaseError:  # (locked or damaged: tried again on the watcher's next round;
            pass  # it ended the watcher, and with it the replacement of a worker that dies)

    @asynccontextmanager
    async def lifespan(app):
        try:
            rt.recovered = store.recover()
        except sqlite3.DatabaseError as err:
            if not _is_damage(err):  # busy, a full disk, moca's own error: the start fails as before
                raise
            print(f"moca serve: recovering: {store.unreadable(err).message}", file=sys.stderr, flush=True)  # degraded
            rt.recovered = {}
        threading.Thread(target=store.check_pages, name="moca page check", daemon=True).start()
        watcher = None
        if worker:  # the watcher's first pass loads them while the service answers ("starting")
            rt.starting = True
            start_worker()
            watcher = asyncio.create_task(watch_worker())
        else:  # (no watcher: loaded before the first request, so /health knows them at once)
            await asyncio.to_thread(preload)
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()
            if rt.worker is not None and rt.worker.poll() is None:
                rt.worker.kill()
                rt.worker.wait(timeout=10)
            try:
                store.stopped()
            except sqlite3.Error as err:  # (the data folder gone or full): the next start recovers as after a crash
                print(f"moca serve: stopping: {store.db_path}: {err}", file=sys.stderr)

    app = FastAPI(title="moca serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Real-time controller of circular supply chains: decisions within milliseconds, "
                              "regulation events adapted in the background, versioned hot swap, regime memory.")
    app.state.runtime = rt
    app.router.route_class = _keys_once_route()  # (before the routes are declared: each is made of it)
    _mount_docs(app)

    @app.exception_handler(ServeError)
    async def _serve_error(request, err: ServeError):
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(sqlite3.DatabaseError)
    async def _unreadable(request, err: sqlite3.DatabaseError):
        refused = store.unreadable(err)
        return JSONResponse({"detail": refused.message}, status_code=refused.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        return JSONResponse(_validation_answer(err.errors()), status_code=422)

    app.add_middleware(DecideFastPath, runtime=rt)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)  # (added last: outermost, so it caps the fast path too)

    async def authorised(authorization: str | None = Header(None, description="Bearer <token> when the server has one")):
        if rt.token is None:
            return
        # (starlette decodes a header's bytes as latin-1: encoded back, they are the bytes sent)
        if authorization is None or not token_matches(authorization.encode("latin-1", "replace"), rt.token):
            raise ServeError(401, "authorization: missing or wrong bearer token")

    mutating = [Depends(authorised)]

    @app.head("/health", include_in_schema=False)  # (what a load balancer's check may send; it was 405)
    @app.get("/health")
    def health() -> dict[str, Any]:
        counts = {name: store.one(f"SELECT COUNT(*) FROM {name}")[0] for name in ("chains", "regimes", "versions")}
        queued = store.one("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")[0]
        alive = rt.worker is not None and rt.worker.poll() is None
        # A version a chain decides with (or will) whose checkpoint does not load: its decisions
        # are 503s, so the service is not "ok" (it said so while a chain could not decide).
        serving = {tuple(r) for r in store.all("SELECT chain, number FROM versions WHERE state IN ('active', "
                                               "'scheduled')")} if rt.unloadable else set()
        broken = [{"chain": chain, "version": number, "error": why}
                  for (chain, number), why in sorted(dict(rt.unloadable).items()) if (chain, number) in serving]
        database = store.database_problem()
        # "starting" until the watcher's first pass has tried every version the chains decide
        # with (seconds after a start, behind the first imports): it said "ok" meanwhile of a
        # service whose decisions were 503s
        status = "degraded" if broken or database else "starting" if rt.starting else "ok"
        return {"status": status, "models": list(MODELS),
                "database": database or "ok",
                "worker": "running" if alive else "stopped", "jobs_pending": queued, "recovered": rt.recovered,
                **counts, "auth": rt.token is not None, "unloadable_versions": broken}

    @app.post("/v1/chains", status_code=201, dependencies=mutating)
    def register(body: ChainIn) -> dict[str, Any]:
        name = MODEL_ALIASES.get(body.model, body.model)
        if name not in MODELS:
            raise ServeError(422, f"model: {body.model!r} is not one of {', '.join(MODELS)}")
        model = MODELS[name]
        params = model.params(body.params)
        regime = model.regime(body.regime)
        if store.one("SELECT 1 FROM chains WHERE id=?", (body.id,)):
            raise ServeError(409, f"id: chain {body.id!r} exists")
        source = body.checkpoint or model.default_checkpoint
        from safetensors import SafetensorError

        from moca.checkpoint import SHIPPED, CheckpointError

        if source not in SHIPPED:
            allowed = (store.data / "checkpoints").resolve()
            path = (allowed / source).resolve()
            if allowed not in path.parents:
                raise ServeError(422, f"checkpoint: {source!r} is neither a shipped name ({', '.join(SHIPPED)}) "
                                      f"nor a directory under {allowed}")
            source = str(path)
        try:
            module = model.load(source)
        except CheckpointError as err:
            raise ServeError(422, f"checkpoint: {_in_request_words(str(err))}") from None
        if module.params != params:
            from moca.chain2 import changed_fields

            world = " --model CLSC-2 --base default" if name == "clsc-2" else ""  # (the service runs no planner)
            raise ServeError(422, f"params: differ from the checkpoint's ({changed_fields(module.params, params)}); "
                                  "a chain runs a checkpoint trained or adapted for its own params: write one with "
                                  f"'moca adapt{world} --checkpoint {body.checkpoint or model.default_checkpoint} "
                                  "--regime REGIME --params FILE -o DATA/checkpoints/NAME' and register with "
                                  "\"checkpoint\": \"NAME\"")
        params_json = json.dumps(params.model_dump(mode="json"), sort_keys=True)
        # (the weights are written outside the database's lock: decisions of other chains go on)
        with rt.registering:
            if store.one("SELECT 1 FROM chains WHERE id=?", (body.id,)):
                raise ServeError(409, f"id: chain {body.id!r} exists")
            path = store.weights_dir(body.id, 1)
            shutil.rmtree(path, ignore_errors=True)  # (an earlier attempt's, stopped before its insert)
            try:
                sha = model.save(path, module, {"chain": body.id, "version": 1,
                                                "from": body.checkpoint or model.default_checkpoint})
            except (OSError, SafetensorError) as err:  # (a read-only or full disk under DATA/weights was a
                # bare 500; safetensors reports a failed write as its own error, not an OSError)
                raise ServeError(503, f"data: the chain's weights cannot be written under {path.parent} "
                                      f"({getattr(err, 'strerror', None) or err}); nothing was registered") from None
            with store.tx() as c:
                regime_id = store.regime_id(model, regime, params,
                                            body.regime if isinstance(body.regime, str) else None)
                c.execute("INSERT INTO chains(id, model, params, params_hash, regime_id, version, created) "
                          "VALUES(?,?,?,?,?,1,?)", (body.id, model.name, params_json, _params_hash(params_json),
                                                     regime_id, time.time()))
                c.execute("INSERT INTO versions(chain, number, regime_id, parent, path, sha256, source, state, "
                          "created, activated) VALUES(?,1,?,NULL,?,?,'initial','active',?,?)",
                          (body.id, regime_id, str(path.relative_to(store.data)), sha, time.time(), time.time()))
                c.execute("INSERT INTO chain_state(chain, episode, last_t) VALUES(?,0,-1)", (body.id,))
                # The registered regime as a regulation already in force from period 0: the job is
                # then an ordinary one (warm start from the memory, validation gate) and its version
                # becomes active as soon as it passes.
                job = _queue_regulation(c, body.id, regime_id, 0, 0, in_force=True)[1] if body.adapt else None
        _deployed(rt, model, body.id, 1)  # loaded now, not by the first decision
        return {**chain_out(body.id), "adaptation_job": job}

    def chain_out(chain: str) -> dict[str, Any]:
        _chain(rt, chain)
        row = store.one("SELECT id, model, params, regime_id, version, created FROM chains WHERE id=?", (chain,))
        state = store.one("SELECT episode, last_t FROM chain_state WHERE chain=?", (chain,))
        pending = store.all("SELECT id, regime_id, effective, episode, job FROM regulations WHERE chain=? AND "
                            "state='pending' ORDER BY id", (chain,))
        return {"id": row[0], "model": row[1], "params": json.loads(row[2]), "regime": store.regime_row(row[3]),
                "policy_version": row[4], "created": row[5], "episode": state[0], "last_t": state[1],
                "pending_regulations": [dict(zip(("id", "regime_id", "effective", "episode", "job"), p))
                                        for p in pending]}

    @app.get("/v1/chains")
    def list_chains() -> list[dict[str, Any]]:
        return [{"id": r[0], "model": r[1], "policy_version": r[2]}
                for r in store.all("SELECT id, model, version FROM chains ORDER BY created")]

    @app.get("/v1/chains/{chain}")
    def get_chain(chain: str) -> dict[str, Any]:
        return chain_out(chain)

    # async: runs on the event loop itself, no thread hop (~0.1 ms saved per decision);
    # it never awaits, so decisions of one chain are serialised.
    @app.post("/v1/chains/{chain}/decide", dependencies=mutating, response_model=DecisionOut)
    async def decide_endpoint(chain: str, body: DecideIn):  # answered as is (already JSON), documented as DecisionOut
        return Response(json.dumps(decide(rt, chain, body)), media_type="application/json")

    # async as decide is: on the event loop, so a chain's decisions, resets and regulations
    # never interleave (a reset in a thread was answered, then undone by a decision in
    # flight storing its older episode over it).
    @app.post("/v1/chains/{chain}/reset", dependencies=mutating)
    async def reset(chain: str, body: ResetIn | None = None) -> dict[str, Any]:
        _chain(rt, chain)
        memory = _memory(rt, chain)
        fresh = ChainMemory(memory.episode + 1, -1)
        with store.tx() as c:
            c.execute("INSERT OR REPLACE INTO chain_state(chain, episode, last_t, frames, h, c, seen) "
                      "VALUES(?,?,-1,NULL,NULL,NULL,NULL)", (chain, fresh.episode))
            _promote(c, chain, fresh.episode, -1)
        rt.memories[chain] = fresh
        return {"chain": chain, "episode": fresh.episode}

    @app.get("/v1/chains/{chain}/decisions")
    def decisions(chain: str, limit: int = Query(100, ge=1, le=5000)) -> list[dict[str, Any]]:
        model, _ = _chain(rt, chain)
        rows = store.all("SELECT episode, t, version, regime_id, action, projected, cost, recycled_share, latency_us, "
                         "at FROM decisions WHERE chain=? ORDER BY id DESC LIMIT ?", (chain, limit))
        keys = ("episode", "t", "version", "regime_id", "action", "projected", "action_cost", "recycled_share",
                "latency_us", "at")
        out = [dict(zip(keys, r)) for r in reversed(rows)]
        for d in out:
            d["action"] = dict(zip(model.action_names, np.frombuffer(d["action"], dtype=np.float64).tolist()))
            d["projected"] = bool(d["projected"])  # (SQLite's 0/1: /decide answered true/false)
        return out

    @app.post("/v1/chains/{chain}/regulations", status_code=202, dependencies=mutating,
              responses={200: {"description": "the event posted last, pending, posted again (a retry): its answer, "
                                              "\"repeated\": true; no second job"}})
    async def regulation(chain: str, body: RegulationIn) -> Any:  # (async: as reset, above)
        model, params = _chain(rt, chain)
        regime = model.regime(body.regime)
        name = body.name or (body.regime if isinstance(body.regime, str) else None)
        if body.similar_to is not None and not store.one(
                "SELECT 1 FROM regimes WHERE name=? OR CAST(id AS TEXT)=?", (body.similar_to, body.similar_to)):
            raise ServeError(422, f"similar_to: no regime named or numbered {body.similar_to!r} in the memory")
        memory = _memory(rt, chain)
        if body.effective is not None and body.effective >= params.horizon:
            raise ServeError(422, f"effective: {body.effective} is past the episode (periods 0..{params.horizon - 1})")
        # A period already decided cannot be redone: the rule holds from the next decision, and
        # is stored so (a window opens there, the past is the old rule's, its version says so;
        # stored as posted, a late rule opened no window). After the episode's last period that
        # is the next episode's first, also where no `effective` is given (it was a 422).
        in_force = max(body.effective or 0, memory.last_t + 1)  # (no effective: the next decision)
        next_episode = in_force >= params.horizon
        with store.tx() as c:
            if body.name is not None:
                store.check_label(model, regime, body.name)
            regime_id = store.regime_id(model, regime, params, name)
            # (a regime keeps its first label: a regime's label is what similar_to and the
            # dashboard find it by, so a name posted later is not kept; the answer says which is)
            regime_name = c.execute("SELECT name FROM regimes WHERE id=?", (regime_id,)).fetchone()[0]
            # The event posted last, posted again while it is pending (a client's retry after a
            # lost answer), is the same event: answered 200 with it, not a second job and
            # version. (Only the last: after another rule posted for the same period, posting
            # the first again means it, and the later post wins.)
            last = c.execute("SELECT id, job, regime_id, effective, episode, similar_to FROM regulations WHERE "
                             "chain=? AND state='pending' ORDER BY id DESC LIMIT 1", (chain,)).fetchone()
            same = last[:2] if last and last[2:] == (regime_id, in_force, memory.episode, body.similar_to) else None
            reg, job = same or _queue_regulation(c, chain, regime_id, in_force, memory.episode, body.similar_to)
        # The answer says from when, rather than let a client read `effective` as applied.
        answer = {"job": job, "regime_id": regime_id, "regime_name": regime_name, "regulation": reg,
                  "effective": body.effective if body.effective is not None else 0 if next_episode else in_force,
                  "in_force_from": 0 if next_episode else in_force, "episode": memory.episode + int(next_episode),
                  "repeated": same is not None}
        return JSONResponse(answer, status_code=200) if same else answer

    @app.get("/v1/jobs/{job}")
    def get_job(job: int = PathParameter(ge=1, le=LARGEST_ID)) -> dict[str, Any]:
        row = store.one(f"{JOB_SELECT} WHERE id=?", (job,))
        if row is None:
            raise ServeError(404, f"job: no job {job}")
        return _job_out(row)

    @app.get("/v1/chains/{chain}/jobs")
    def chain_jobs(chain: str) -> list[dict[str, Any]]:
        _chain(rt, chain)
        return [_job_out(r) for r in store.all(f"{JOB_SELECT} WHERE chain=? ORDER BY id", (chain,))]

    @app.get("/v1/chains/{chain}/versions")
    def versions(chain: str) -> list[dict[str, Any]]:
        _chain(rt, chain)
        return [_version_out(store, r) for r in
                store.all(f"SELECT {VERSION_COLUMNS} FROM versions WHERE chain=? ORDER BY number", (chain,))]

    @app.post("/v1/chains/{chain}/rollback", dependencies=mutating)
    def rollback(chain: str, body: RollbackIn | None = None) -> dict[str, Any]:
        model, _ = _chain(rt, chain)
        current, = store.one("SELECT version FROM chains WHERE id=?", (chain,))
        target = body.version if body is not None and body.version is not None else \
            store.one("SELECT parent FROM versions WHERE chain=? AND number=?", (chain, current))[0]
        if target is None:
            raise ServeError(409, f"version: version {current} is the first; there is nothing to roll back to")
        if not store.one("SELECT 1 FROM versions WHERE chain=? AND number=?", (chain, target)):
            raise ServeError(404, f"version: chain {chain!r} has no version {target}")
        _deployed(rt, model, chain, target)  # refuse a version whose weights fail their checksum
        with store.tx() as c:
            c.execute("UPDATE versions SET state='rolled_back' WHERE chain=? AND number=?", (chain, current))
            c.execute("UPDATE versions SET state='active', activated=? WHERE chain=? AND number=?",
                      (time.time(), chain, target))
            c.execute("UPDATE chains SET version=? WHERE id=?", (target, chain))
        return {"chain": chain, "from": current, "policy_version": target}

    @app.get("/v1/regimes")
    def regimes(nearest: str | None = Query(None, description="a regime (JSON object or preset name): the memory "
                                                                "sorted by distance to it")) -> list[dict[str, Any]]:
        rows = [store.regime_row(r[0]) for r in store.all("SELECT id FROM regimes ORDER BY id")]
        for r in rows:
            r["learned"] = [dict(zip(("chain", "version", "score", "state"), v)) for v in store.all(
                "SELECT chain, number, score, state FROM versions WHERE regime_id=? ORDER BY number", (r["id"],))]
        if nearest is None:
            return rows
        try:  # (a key given twice is refused, as in a request's body)
            target = json.loads(nearest, object_pairs_hook=unique_keys) if nearest.lstrip().startswith("{") else nearest
        except json.JSONDecodeError as err:
            raise ServeError(422, f"nearest: not a JSON object ({err})") from None
        except ValueError as err:
            raise ServeError(422, f"nearest: {err}") from None
        except RecursionError:  # (as a body's: it was a 500)
            raise ServeError(422, "nearest: nested too deeply to read") from None
        out = []
        for r in rows:
            model = MODELS[r["model"]]
            params = model.params(None)
            features = model.regime_features(model.regime(target, any_window=True), params)
            out.append({**r, "distance": _distance(features, r["features"])})
        return sorted(out, key=lambda r: r["distance"])

    @app.head("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return DASHBOARD

    return app


# The dashboard: one HTML page, plain JavaScript and inline SVG (no build step, nothing
# fetched from elsewhere): it reads the same JSON endpoints a client does.
DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moca serve</title><link rel="icon" href="data:,">
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#20406a;color:#fff;padding:10px 18px}header h1{font-size:18px;margin:0}
main{display:grid;grid-template-columns:1fr 1fr;gap:14px;padding:14px}
section{background:#fff;border:1px solid #d8dde6;border-radius:6px;padding:10px 14px}
h2{font-size:15px;margin:4px 0 8px}table{border-collapse:collapse;width:100%;font-size:12px}
td,th{border-bottom:1px solid #e4e7ed;padding:3px 6px;text-align:left}
.wide{grid-column:1 / span 2}code{background:#eef1f6;padding:1px 4px;border-radius:3px}
</style></head><body>
<header><h1>moca serve &mdash; <span id="chain-name">no chain yet</span></h1></header>
<main>
<section><h2>Regime in force</h2><div id="regime">&ndash;</div>
<label>chain <select id="chain-select"></select></label></section>
<section><h2>Version history</h2><table id="versions"><thead><tr><th>v</th><th>state</th><th>regime</th>
<th>score</th><th>parent</th><th>source</th><th>sha256</th></tr></thead><tbody></tbody></table></section>
<section class="wide"><h2>Action cost (EUR) and recycled share per decision</h2>
<svg id="chart" width="100%" height="220" viewBox="0 0 900 220" preserveAspectRatio="none"></svg>
<div><span style="color:#2a62b5">&#9632; action cost <span id="cost-range"></span></span> &nbsp;
<span style="color:#2d9b54">&#9632; recycled share (bottom 0, top 1)</span></div></section>
<section class="wide"><h2>Recent decisions</h2><table id="decisions"><thead><tr><th>episode</th><th>t</th>
<th>version</th><th>regime</th><th>order</th><th>use_virgin</th><th>use_recycled</th><th>projected</th>
<th>cost</th><th>recycled share</th><th>latency &micro;s</th></tr></thead><tbody></tbody></table></section>
<section class="wide"><h2>Adaptation jobs</h2><table id="jobs"><thead><tr><th>job</th><th>state</th>
<th>regime</th><th>score before</th><th>score after</th><th>steps</th><th>seconds</th><th>version</th>
<th>error</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
const $ = (id) => document.getElementById(id);
const fmt = (x, d) => (x === null || x === undefined) ? "&ndash;" : Number(x).toFixed(d);
// Labels come from clients (a regulation's "name"): shown as text, never read as HTML.
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
async function get(path) { const r = await fetch(path); if (!r.ok) throw new Error(path + ": " + r.status); return r.json(); }
function line(points, color, lo, hi) {
  if (points.length < 2) return "";
  const span = (hi - lo) || 1, n = points.length - 1;
  const xy = points.map((v, i) => (10 + 880 * i / n).toFixed(1) + "," + (210 - 200 * (v - lo) / span).toFixed(1));
  return '<polyline fill="none" stroke="' + color + '" stroke-width="2" points="' + xy.join(" ") + '"/>';
}
const names = new Map();  // regime id -> name (null: none)
let sinceNames = 0;  // refreshes since the memory's names were read
async function refresh() {
  const chains = await get("/v1/chains");
  const select = $("chain-select");
  if (!chains.length) {
    $("regime").textContent = "no chain registered yet (POST /v1/chains)";
    document.body.dataset.ready = "1";
    return;
  }
  if (select.options.length !== chains.length) {  // (rebuilt: keep the chain the user chose)
    const chosen = select.value;
    select.innerHTML = chains.map(c => '<option>' + esc(c.id) + '</option>').join("");
    if (chains.some(c => c.id === chosen)) select.value = chosen;
  }
  const id = select.value || chains[0].id;
  const [chain, versions, decisions, jobs] = await Promise.all([get("/v1/chains/" + id),
    get("/v1/chains/" + id + "/versions"), get("/v1/chains/" + id + "/decisions?limit=200"),
    get("/v1/chains/" + id + "/jobs")]);
  // A regime by its name where it has one (a preset's, or a regulation's label), else its id.
  // The memory is read when an id not seen yet appears, and every 30 s (a regime may get its
  // name later): it grows with every rule, and read every 2 s it held the service's lock for
  // tens of ms once it had thousands.
  const shown = [chain.regime.id, ...chain.pending_regulations.map(p => p.regime_id), ...versions.map(v => v.regime_id),
                 ...decisions.map(d => d.regime_id), ...jobs.map(j => j.regime_id)];
  if (shown.some(rid => rid !== null && !names.has(rid)) || ++sinceNames >= 15) {
    for (const r of await get("/v1/regimes")) names.set(r.id, r.name);
    sinceNames = 0;
  }
  const regimeText = (rid) => names.get(rid) ? esc(names.get(rid)) + " (" + rid + ")" : (rid ?? "&ndash;");
  $("chain-name").textContent = id + " (" + chain.model + ", policy v" + chain.policy_version + ")";
  const reg = chain.regime;
  $("regime").innerHTML = '<b>' + esc(reg.name || ("regime " + reg.id)) + '</b><br>' +
    Object.entries(reg.regime).map(([k, v]) => '<code>' + esc(k) + '</code> ' + (v === null ? "none" : esc(v))).join("<br>") +
    (chain.pending_regulations.length ? '<p>announced: ' + chain.pending_regulations.map(p => regimeText(p.regime_id) +
      ' from t=' + p.effective).join(", ") + '</p>' : "");
  $("versions").tBodies[0].innerHTML = versions.map(v => '<tr><td>' + v.number + '</td><td>' + esc(v.state) + '</td><td>' +
    regimeText(v.regime_id) + '</td><td>' + fmt(v.score, 4) + '</td><td>' + (v.parent ?? "&ndash;") + '</td><td>' + esc(v.source) +
    '</td><td><code>' + v.sha256.slice(0, 12) + '</code></td></tr>').join("");
  $("decisions").tBodies[0].innerHTML = decisions.slice(-15).reverse().map(d => '<tr><td>' + d.episode + '</td><td>' +
    d.t + '</td><td>' + d.version + '</td><td>' + regimeText(d.regime_id) + '</td><td>' + fmt(d.action.order, 0) + '</td><td>' +
    fmt(d.action.use_virgin, 0) + '</td><td>' + fmt(d.action.use_recycled, 0) + '</td><td>' + (d.projected ? "yes" : "no") +
    '</td><td>' + fmt(d.action_cost, 0) + '</td><td>' + fmt(d.recycled_share, 3) + '</td><td>' + fmt(d.latency_us, 0) +
    '</td></tr>').join("");
  // Every job, the rejected and failed ones too (a rejected adaptation left no version to show it).
  $("jobs").tBodies[0].innerHTML = jobs.slice(-15).reverse().map(j => '<tr><td>' + j.id + '</td><td>' + esc(j.state) +
    '</td><td>' + regimeText(j.regime_id) +
    '</td><td>' + fmt(j.score_before, 4) + '</td><td>' + fmt(j.score_after, 4) + '</td><td>' + (j.steps ?? "&ndash;") +
    '</td><td>' + fmt(j.seconds, 1) + '</td><td>' + (j.version ?? "&ndash;") + '</td><td>' + esc(j.error ?? "") +
    '</td></tr>').join("");
  const costs = decisions.map(d => d.action_cost), shares = decisions.map(d => d.recycled_share);
  const lowest = Math.min(...costs), highest = Math.max(...costs);
  $("chart").innerHTML = '<rect x="0" y="0" width="900" height="220" fill="#fbfcfe"/>' +
    line(costs, "#2a62b5", lowest, highest) + line(shares, "#2d9b54", 0, 1);
  // (the cost line spans the chart from its own lowest to its highest value: say which)
  $("cost-range").textContent = costs.length ? "(bottom " + fmt(lowest, 0) + " EUR, top " + fmt(highest, 0) + " EUR)" : "";
  document.body.dataset.ready = "1";
}
$("chain-select").addEventListener("change", refresh);
refresh().catch(e => { $("regime").textContent = String(e); document.body.dataset.ready = "1"; });
setInterval(() => refresh().catch(() => {}), 2000);
</script></body></html>
"""


# ----------------------------------------------------------------------------------------
# 5. Running it
# ----------------------------------------------------------------------------------------


def listening_socket(host: str, port: int):
    """A socket bound to ``host:port`` (uvicorn listens on it), or :class:`StartError` saying
    why not, before anything is started (uvicorn would log the bind error after start-up)."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise StartError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as uvicorn does: a restart need not wait)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRNOTAVAIL:
            raise StartError(f"--host {host}: not an address of this machine ({err.strerror})") from None
        hint = "; another server holds it: choose another --port" if err.errno == errno.EADDRINUSE else ""
        raise StartError(f"--port {port}: {host}:{port} cannot be bound ({err.strerror}){hint}") from None
    return sock


def serve(host: str = "127.0.0.1", port: int = 8000, data: str | Path = "moca-data", token: str | None = None,
          log_level: str = "warning", adapt: AdaptSettings = AdaptSettings(), keep_decisions: int = 100_000,
          on_ready=None) -> None:
    """Run the service under uvicorn (one process; the adaptation worker is its child).
    :class:`StartError` or :class:`StoreError` before anything runs when it cannot start;
    ``on_ready()`` once the data directory and the address are this server's."""
    import uvicorn

    sock = listening_socket(host, port)
    try:
        app = create_app(data, token, adapt=adapt, keep_decisions=keep_decisions)
        if on_ready is not None:
            on_ready()
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
        server.run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], int(sys.argv[3]), AdaptSettings(*(int(a) for a in sys.argv[4:7]), sys.argv[7]))
    else:
        print("usage: moca serve [--host H] [--port P] [--data DIR] [--token T] "
              "(python -m moca.serve --worker DIR PID is the service's own worker)", file=sys.stderr)
        sys.exit(2)
