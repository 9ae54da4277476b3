"""Scenarios of CLSC-1: parameters, regime schedule and the seeded exogenous draws.

A scenario is exactly what the spec's JSON exchange format holds (``to_json`` /
``from_json``), so that any two tools compute the same numbers on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from moca.regime import Regime, RegimeError, RegimeSchedule

MODEL_NAME = "CLSC-1"


class ScenarioError(ValueError):
    """A malformed scenario or action file; the message names the field and the problem."""


class Params(BaseModel):
    """CLSC-1 parameters (spec, "Default parameters"); JSON keys as in the scenario file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    horizon: int = 52
    mass: float = 2.0  # kg material per product
    lead_virgin: int = 2  # periods
    lag_return: int = 6  # periods
    cap_order: float = 4000.0  # kg
    cap_produce: float = 1500.0  # units
    cap_disassemble: float = 600.0  # cores
    cap_refurbish: float = 300.0  # cores
    cap_dispose: float = 2000.0  # cores
    yield_disassembly: float = 0.8
    yield_refurbish: float = 0.7
    cost_virgin: float = 3.0  # EUR/kg
    cost_produce: float = 2.0  # EUR/unit
    cost_disassemble: float = 6.0  # EUR/core
    cost_refurbish: float = 7.0  # EUR/core
    cost_dispose: float = 0.5  # EUR/core
    hold_virgin: float = 0.01  # EUR/kg/period
    hold_recycled: float = 0.01
    hold_product: float = 0.2  # EUR/unit/period
    hold_core: float = 0.05
    backlog_cost: float = 5.0  # EUR/unit/period
    emis_virgin: float = 6.0  # kg CO2/kg virgin
    emis_recycle: float = 1.0  # kg CO2/kg recycled recovered
    emis_produce: float = 2.0  # kg CO2/unit
    init_virgin: float = 4000.0
    init_recycled: float = 500.0
    init_product: float = 1000.0
    init_core: float = 200.0
    init_backlog: float = 0.0
    init_pipeline: float = 2000.0
    init_sales: float = 1000.0
    demand_base: float = 1000.0
    demand_amp: float = 0.3
    demand_sigma: float = 0.15
    return_mean: float = 0.25
    return_sigma: float = 0.1

    @field_validator("*", mode="before")
    @classmethod
    def _finite(cls, value: Any, info) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"params.{info.field_name}={value!r} is not a number")
        if not math.isfinite(float(value)):
            raise ValueError(f"params.{info.field_name}={value!r} must be finite")
        if info.field_name in {"horizon", "lead_virgin", "lag_return"}:
            if float(value) != int(value) or int(value) < 1:
                raise ValueError(f"params.{info.field_name}={value!r} must be a whole number >= 1")
            return int(value)
        if info.field_name in {"mass", "cap_order", "cap_produce", "cap_disassemble", "cap_refurbish", "cap_dispose"}:
            if float(value) <= 0:
                raise ValueError(f"params.{info.field_name}={value!r} must be > 0")
        elif info.field_name in {"yield_disassembly", "yield_refurbish", "return_mean"}:
            if not 0 <= float(value) <= 1:
                raise ValueError(f"params.{info.field_name}={value!r} must be in [0, 1]")
        elif float(value) < 0:
            raise ValueError(f"params.{info.field_name}={value!r} must be >= 0")
        return value

    @property
    def action_scale(self) -> np.ndarray:
        """S of the spec: capacity-normalising scale of (o, u_v, u_r, g, f, w)."""
        mk = self.mass * self.cap_produce
        return np.array([self.cap_order, mk, mk, self.cap_disassemble, self.cap_refurbish, self.cap_dispose])


DEFAULT_PARAMS = Params()


@dataclass
class Scenario:
    """One scenario: parameters, regime schedule, demand (units) and return fractions."""

    params: Params
    schedule: RegimeSchedule
    demand: np.ndarray  # [T] units
    return_frac: np.ndarray  # [T]

    def __post_init__(self) -> None:
        self.demand = np.asarray(self.demand, dtype=np.float64)
        self.return_frac = np.asarray(self.return_frac, dtype=np.float64)
        _check_series("demand", self.demand, self.params.horizon, low=0.0)
        _check_series("return_frac", self.return_frac, self.params.horizon, low=0.0, high=1.0)

    @property
    def horizon(self) -> int:
        return self.params.horizon

    def regime_table(self) -> np.ndarray:
        """``[T, 5]`` regime in force per period (columns in ``REGIME_FIELDS`` order)."""
        return self.schedule.table(self.horizon)

    # --- JSON exchange format -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": MODEL_NAME,
            "params": self.params.model_dump(),
            "regimes": self.schedule.to_list(),
            "demand": [float(x) for x in self.demand],
            "return_frac": [float(x) for x in self.return_frac],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: Any) -> "Scenario":
        if not isinstance(data, dict):
            raise ScenarioError("scenario: expected a JSON object")
        allowed = {"model", "params", "regimes", "demand", "return_frac"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ScenarioError(f"scenario: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        if data.get("model", MODEL_NAME) != MODEL_NAME:
            raise ScenarioError(f"model={data.get('model')!r}: only {MODEL_NAME!r} is supported")
        for key in ("regimes", "demand", "return_frac"):
            if key not in data:
                raise ScenarioError(f"scenario: missing key {key!r}")
        params_data = data.get("params", {}) or {}
        if not isinstance(params_data, dict):
            raise ScenarioError("params: expected an object")
        try:
            params = Params(**params_data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            if first["type"] == "extra_forbidden":
                raise ScenarioError(f"params.{field}: unknown parameter") from None
            raise ScenarioError(first["msg"].removeprefix("Value error, ")) from None
        try:
            schedule = RegimeSchedule.from_list(data["regimes"])
        except RegimeError as err:
            raise ScenarioError(str(err)) from None
        for key in ("demand", "return_frac"):
            values = data[key]
            if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise ScenarioError(f"{key}: expected a list of {params.horizon} numbers")
        return cls(params=params, schedule=schedule, demand=np.array(data["demand"], float),
                   return_frac=np.array(data["return_frac"], float))

    @classmethod
    def from_json(cls, source: str | Path) -> "Scenario":
        """Load from a path (or a JSON string starting with ``{``)."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            try:
                text = Path(source).read_text()
            except OSError as err:
                raise ScenarioError(f"{source}: cannot read scenario ({err.strerror})") from None
        try:
            # NaN/Infinity parse to floats here so that validation rejects them with the
            # name of the field that holds them (every field checks finiteness).
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ScenarioError(f"scenario: malformed JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
        except ValueError as err:
            raise ScenarioError(f"scenario: {err}") from None
        return cls.from_dict(data)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a scenario file (values must be finite)")


def _check_series(name: str, values: np.ndarray, horizon: int, low: float, high: float | None = None) -> None:
    if values.ndim != 1 or values.shape[0] != horizon:
        raise ScenarioError(f"{name}: expected exactly horizon={horizon} entries, got {values.size}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ScenarioError(f"{name}[{bad[0]}]={values[bad[0]]} is not finite")
    bad = np.flatnonzero(values < low)
    if bad.size:
        raise ScenarioError(f"{name}[{bad[0]}]={values[bad[0]]} must be >= {low:g}")
    if high is not None:
        bad = np.flatnonzero(values > high)
        if bad.size:
            raise ScenarioError(f"{name}[{bad[0]}]={values[bad[0]]} must be <= {high:g}")


def draw_scenario(
    seed: int | tuple[int, ...],
    regime: Regime | RegimeSchedule | None = None,
    params: Params = DEFAULT_PARAMS,
) -> Scenario:
    """Draw demand and returns for one scenario, seeded (spec, "Exogenous draws")."""
    if any(int(s) < 0 for s in (seed if isinstance(seed, tuple) else (seed,))):
        raise ScenarioError(f"seed={seed!r}: seeds must be >= 0")
    demand, return_frac = draw_exogenous(np.random.default_rng(list(seed) if isinstance(seed, tuple) else seed), params, 1)
    schedule = _as_schedule(regime)
    return Scenario(params=params, schedule=schedule, demand=demand[0], return_frac=return_frac[0])


#: Entropy tag of the training stream: scenarios drawn for training (tuning, meta-training,
#: adaptation) come from ``SeedSequence([TRAINING_STREAM, i])`` and so never coincide with
#: a test scenario drawn from a plain integer seed, whatever seed a user picks.
TRAINING_STREAM = 0x6D6F6361


def draw_training_scenarios(
    count: int,
    regime: Regime | RegimeSchedule | None = None,
    params: Params = DEFAULT_PARAMS,
    offset: int = 0,
) -> list[Scenario]:
    """``count`` training scenarios (indices ``offset ..``) from the training stream."""
    return [draw_scenario((TRAINING_STREAM, offset + i), regime, params) for i in range(count)]


def draw_scenarios(
    seeds: Sequence[int] | int,
    regime: Regime | RegimeSchedule | None = None,
    params: Params = DEFAULT_PARAMS,
    first_seed: int = 0,
) -> list[Scenario]:
    """One scenario per seed (an int ``n`` means seeds ``first_seed .. first_seed+n-1``)."""
    if isinstance(seeds, int):
        seeds = range(first_seed, first_seed + seeds)
    return [draw_scenario(int(s), regime, params) for s in seeds]


def draw_exogenous(rng: np.random.Generator, params: Params, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` paths of demand [count, T] (units) and return fractions [count, T]."""
    t = np.arange(params.horizon)
    sd, sr = params.demand_sigma, params.return_sigma
    eps = rng.lognormal(-sd**2 / 2, sd, size=(count, params.horizon)) if sd > 0 else np.ones((count, params.horizon))
    xi = rng.lognormal(-sr**2 / 2, sr, size=(count, params.horizon)) if sr > 0 else np.ones((count, params.horizon))
    demand = params.demand_base * (1 + params.demand_amp * np.sin(2 * np.pi * t / 52)) * eps
    demand = np.maximum(demand, 0.0)  # an amplitude above 1 would otherwise give negative demand
    return_frac = np.clip(params.return_mean * xi, 0.0, 1.0)
    return demand, return_frac


def seasonal_mean_demand(params: Params, periods: np.ndarray) -> np.ndarray:
    """E[d_t] (units): the seasonal mean, the point forecast available to every policy."""
    return np.maximum(params.demand_base * (1 + params.demand_amp * np.sin(2 * np.pi * np.asarray(periods) / 52)), 0.0)


def _as_schedule(regime: Regime | RegimeSchedule | None) -> RegimeSchedule:
    if regime is None:
        return RegimeSchedule.constant(Regime())
    if isinstance(regime, RegimeSchedule):
        return regime
    return RegimeSchedule.constant(regime)


def load_params(source: str | Path) -> Params:
    """Parameters from a JSON/YAML file: an object of parameter overrides (names as in the
    scenario file's ``params``), or a whole scenario file, whose ``params`` are used."""
    from moca.regime import read_structured

    try:
        data = read_structured(Path(source))
    except RegimeError as err:
        raise ScenarioError(f"--params {err}") from None
    if isinstance(data, dict) and "params" in data and ("model" in data or "demand" in data):
        data = data["params"] or {}
    if not isinstance(data, dict):
        raise ScenarioError(f"--params {source}: expected an object of parameters (or a scenario file)")
    try:
        return Params(**data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ScenarioError(f"--params {source}: params.{field}: unknown parameter "
                                f"(known: {', '.join(Params.model_fields)})") from None
        raise ScenarioError(f"--params {source}: {first['msg'].removeprefix('Value error, ')}") from None


def load_actions(source: str | Path, horizon: int) -> np.ndarray:
    """An action file ``{"actions": [[o, u_v, u_r, g, f, w], ...]}`` as a ``[T, 6]`` array."""
    try:
        data = json.loads(Path(source).read_text(), parse_constant=_reject_constant)
    except OSError as err:
        raise ScenarioError(f"{source}: cannot read actions ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ScenarioError(f"actions: malformed JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except ValueError as err:
        raise ScenarioError(f"actions: {err}") from None
    if not isinstance(data, dict):
        raise ScenarioError("actions: expected an object with key 'actions'")
    unknown = sorted(set(data) - {"actions"})
    if unknown:
        raise ScenarioError(f"actions: unknown key {unknown[0]!r} (allowed: actions)")
    rows = data.get("actions")
    if not isinstance(rows, list):
        raise ScenarioError("actions: missing or not a list")
    if len(rows) != horizon:
        raise ScenarioError(f"actions: expected exactly horizon={horizon} rows, got {len(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 6:
            raise ScenarioError(f"actions[{i}]: expected 6 numbers [o, u_v, u_r, g, f, w]")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ScenarioError(f"actions[{i}][{j}]={v!r} is not a number")
            if not math.isfinite(v):
                raise ScenarioError(f"actions[{i}][{j}]={v} is not finite")
    return np.array(rows, dtype=np.float64)
