"""Scenarios: parameters, regime schedule and the seeded exogenous draws.

A scenario is exactly what the JSON exchange format holds (``to_json`` / ``from_json``),
so that any two tools compute the same numbers on it. CLSC-1 has :class:`Params` and
:class:`Scenario`; CLSC-2 (docs/MODEL-2.md) has :class:`Params2` and :class:`Scenario2`.
A file's ``"model"`` key says which; :func:`load_scenario` reads either.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from moca.files import parse_problem, unique_keys, whole_number
from moca.limits import is_whole
from moca.regime import CheckedCopy, Regime, RegimeError, RegimeSchedule, clsc1_window_refusal, key_not_text

MODEL_NAME = "CLSC-1"


class ScenarioError(ValueError):
    """A malformed scenario or action file; the message names the field and the problem."""


#: The largest magnitude of any parameter or series value (kg, units, EUR, kg CO2, per period).
#: Far above any real chain, and low enough that the hindsight LP's coefficients and
#: right-hand sides stay well inside what HiGHS solves (it reads 1e20 as infinity and
#: refuses matrix entries above 1e15): a larger number is a typo, not a chain.
LARGEST_VALUE = 1e12
#: The longest horizon (a hundred years of weeks), and the longest lead time or return lag
#: (ten), in periods: a typo such as 52000000 must not allocate and simulate for hours.
LONGEST_HORIZON = 5200
LONGEST_DELAY = 520
#: The widest log-spread of the mean-one lognormal noises (demand_sigma, return_sigma). At 3
#: the noise's median is already 1% of its mean; at 1e12 every draw was 0 (exp(-sd**2/2)
#: underflows) and a chain "with demand 1000 on average" sold nothing, without a word.
WIDEST_LOG_SPREAD = 3.0


def params_problem(err: ValidationError) -> str:
    """One line for params that did not validate: an unknown key named as such, else the
    first rule broken (the validators' messages name the parameter)."""
    first = err.errors()[0]
    if first["type"] == "extra_forbidden":
        return f"params.{'.'.join(str(p) for p in first['loc'])}: unknown parameter"
    return first["msg"].removeprefix("Value error, ")


def validation_reason(err: Exception) -> str:
    """One line for a block that did not validate (params, a policy config): the field and
    the rule it breaks (pydantic's first error), not only the field's name."""
    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        return f"{where}: {msg}" if where and where not in msg else msg
    return str(err).strip().splitlines()[0]


def _check_magnitude(name: str, value: float) -> None:
    """Refuse a parameter beyond the limits above (whole-number fields by their own limit)."""
    if name == "horizon" and value > LONGEST_HORIZON:
        raise ValueError(f"params.horizon={value!r} must be <= {LONGEST_HORIZON} periods")
    if name in ("lead_virgin", "lag_return") and value > LONGEST_DELAY:
        raise ValueError(f"params.{name}={value!r} must be <= {LONGEST_DELAY} periods")
    if name in ("demand_sigma", "return_sigma") and value > WIDEST_LOG_SPREAD:
        raise ValueError(f"params.{name}={value!r} must be <= {WIDEST_LOG_SPREAD:g}: the noise is lognormal "
                         f"with mean 1, and beyond that spread nearly every draw is about 0")
    if float(value) > LARGEST_VALUE:  # (every parameter is >= 0: a negative one is refused as such)
        raise ValueError(f"params.{name}={value!r} must be <= {LARGEST_VALUE:g} (larger numbers are beyond "
                         "what the hindsight LP solves reliably)")


class Params(CheckedCopy, BaseModel):
    """CLSC-1 parameters (spec, "Default parameters"); JSON keys as in the scenario file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def _copy_error(cls, err: ValidationError) -> Exception:
        return ScenarioError(params_problem(err))

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
        if isinstance(value, np.generic):  # numpy's numbers (np.int64(52), np.float32(2.0)) are numbers too
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"params.{info.field_name}={value!r} is not a number")
        if not math.isfinite(float(value)):
            raise ValueError(f"params.{info.field_name}={value!r} must be finite")
        _check_magnitude(info.field_name, value)
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


def check_schedule1(schedule: RegimeSchedule) -> None:
    """Refuse a schedule with an accounting window on CLSC-1, which settles the mandate every
    period: ignoring the field would run another rule than the one given."""
    for i, entry in enumerate(schedule.entries):
        if entry.recycled_content_window != 1:
            raise ScenarioError(clsc1_window_refusal(
                f"regimes[{i}].", entry.recycled_content_window,
                '("model": "CLSC-2" in a file, the env moca/CircularSupplyChain2-v0, draw_scenario2)'))


def _check_parts(params: Any, kind: type, schedule: Any) -> None:
    """A scenario built in Python with another object as its params or schedule (a regime's
    name, a :class:`Regime`) was taken as given and failed later, as an AttributeError deep
    in a rollout or an env's reset: refused here, by field."""
    if not isinstance(params, kind):
        raise ScenarioError(f"params: expected moca.scenario.{kind.__name__}, got {type(params).__name__}")
    if not isinstance(schedule, RegimeSchedule):
        model = ", model=\"CLSC-2\"" if kind is Params2 else ""
        raise ScenarioError(f"schedule: expected a moca.regime.RegimeSchedule (e.g. "
                            f"moca.regime.load_schedule(\"T2\"{model})), got {type(schedule).__name__}")


def _held(series: Any) -> np.ndarray:
    """A scenario's own read-only float64 copy of ``series``: its checks run once, when it
    is built, so an edit afterwards (``scenario.demand[5] = -5000``) was scored by the oracle
    and the simulators without a word; now it is numpy's "read-only" error, and the caller's
    array stays theirs (writable, not shared)."""
    held = np.array(series, dtype=np.float64)
    held.flags.writeable = False
    return held


class _HeldSeries:
    """A scenario's copies (copy.deepcopy, pickle, Ray's included) restore its series writable:
    they are checked and held again, as when it was built."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()


@dataclass
class Scenario(_HeldSeries):
    """One scenario: parameters, regime schedule, demand (units) and return fractions."""

    params: Params
    schedule: RegimeSchedule
    demand: np.ndarray  # [T] units
    return_frac: np.ndarray  # [T]

    def __post_init__(self) -> None:
        _check_parts(self.params, Params, self.schedule)
        self.demand = _held(self.demand)
        self.return_frac = _held(self.return_frac)
        _check_series("demand", self.demand, self.params.horizon, low=0.0)
        _check_series("return_frac", self.return_frac, self.params.horizon, low=0.0, high=1.0)
        check_schedule1(self.schedule)

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
        params, schedule = _read_header(data, Params, MODEL_NAME, ("demand", "return_frac"),
                                        wrong_model=f"only {MODEL_NAME!r} is supported", default_model=True)
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
        return cls.from_dict(_read_json(source))


def _read_header(data: Any, params_model: type[BaseModel], model: str, series: Sequence[str], wrong_model: str,
                 default_model: bool) -> tuple[Any, RegimeSchedule]:
    """Check a scenario object's keys and model; parse its ``params`` and ``regimes``."""
    if not isinstance(data, dict):
        raise ScenarioError("scenario: expected a JSON object")
    allowed = {"model", "params", "regimes", *series}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ScenarioError(f"scenario: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    if data.get("model", model if default_model else None) != model:
        raise ScenarioError(f"model={data.get('model')!r}: {wrong_model}")
    for key in ("regimes", *series):
        if key not in data:
            raise ScenarioError(f"scenario: missing key {key!r}")
    params_data = data.get("params", {}) or {}
    if not isinstance(params_data, dict):
        raise ScenarioError("params: expected an object")
    try:
        params = params_model(**params_data)
    except ValidationError as err:
        raise ScenarioError(params_problem(err)) from None
    except TypeError as err:  # e.g. non-string keys
        raise ScenarioError(f"params: {err}") from None
    try:
        schedule = RegimeSchedule.from_list(data["regimes"])
    except RegimeError as err:
        raise ScenarioError(str(err)) from None
    return params, schedule


def _read_json(source: str | Path) -> Any:
    if not isinstance(source, (str, os.PathLike)):  # (None was pathlib's TypeError)
        raise ScenarioError(f"scenario: expected a file path or JSON text, got {type(source).__name__}")
    text = str(source)
    if not text.lstrip().startswith("{"):
        try:
            text = Path(source).read_text(encoding="utf-8-sig")  # (a byte-order mark, as YAML takes it)
        except OSError as err:
            raise ScenarioError(f"{source}: cannot read scenario ({err.strerror})") from None
        except UnicodeDecodeError:
            raise ScenarioError(f"{source}: not a text file (a UTF-8 JSON scenario)") from None
    try:
        # NaN/Infinity parse to floats here so that validation rejects them with the
        # name of the field that holds them (every field checks finiteness).
        return json.loads(text, object_pairs_hook=unique_keys, parse_int=whole_number)
    except json.JSONDecodeError as err:
        raise ScenarioError(f"scenario: malformed JSON ({parse_problem(err)})") from None
    except ValueError as err:
        raise ScenarioError(f"scenario: {err}") from None
    except RecursionError:  # (json recurses per level: thousands of [ or { exhaust the stack)
        raise ScenarioError(f"{source}: nested too deeply to be a scenario") from None


def check_batch_dtype(dtype: Any) -> None:
    """A batch's float type: float32 (training) or float64 (scoring). float16 made every cost
    inf, bfloat16 rounded demand to 3 digits, and int64 truncated return fractions to 0."""
    import torch

    if dtype not in (torch.float32, torch.float64):
        raise ScenarioError(f"dtype: {dtype!r} is not torch.float32 or torch.float64 (the simulators' precisions)")


def common_params(scenarios: Sequence[Any], kind: type | None = None) -> Any:
    """The parameter set every scenario of a batch shares (a batch is simulated with one);
    ``kind``: the scenario class the batch takes (Scenario or Scenario2), checked per entry."""
    if kind is not None:
        if isinstance(scenarios, kind) or not isinstance(scenarios, Sequence):
            raise ScenarioError(f"scenarios: expected a list of {kind.__name__}, got {type(scenarios).__name__}")
        for i, s in enumerate(scenarios):
            if not isinstance(s, kind):
                raise ScenarioError(f"scenarios[{i}]: expected a {kind.__name__}, got {type(s).__name__}"
                                    + (" (the other world's: batch it with its own simulator)"
                                       if type(s).__name__.startswith("Scenario") else ""))
    if not scenarios:
        raise ScenarioError("a scenario batch needs at least one scenario")
    params = scenarios[0].params
    for i, s in enumerate(scenarios[1:], 1):
        if s.params != params:
            raise ScenarioError(f"scenario {i} has other params than scenario 0; batch them separately")
    return params


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in an actions file (values must be finite)")


def _check_series(name: str, values: np.ndarray, horizon: int, low: float, high: float | None = None,
                  row_width: int = 0) -> None:
    """Length, finiteness and range of a series; ``row_width`` > 0: ``values`` is a flattened
    table of rows that wide, and errors name ``name[row][column]``."""
    if values.ndim != 1 or values.shape[0] != horizon:
        size = "entries" if name != "demand_history" else "entries (the periods before t = 0)"
        limit = f"horizon={horizon}" if name != "demand_history" else str(horizon)
        raise ScenarioError(f"{name}: expected exactly {limit} {size}, got {values.size}")
    where = (lambda i: f"{name}[{i // row_width}][{i % row_width}]") if row_width else (lambda i: f"{name}[{i}]")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ScenarioError(f"{where(bad[0])}={values[bad[0]]} is not finite")
    bad = np.flatnonzero(values < low)
    if bad.size:
        raise ScenarioError(f"{where(bad[0])}={values[bad[0]]} must be >= {low:g}")
    bad = np.flatnonzero(values > LARGEST_VALUE)
    if bad.size:
        raise ScenarioError(f"{where(bad[0])}={values[bad[0]]} must be <= {LARGEST_VALUE:g} (larger numbers are "
                            "beyond what the hindsight LP solves reliably)")
    if high is not None:
        bad = np.flatnonzero(values > high)
        if bad.size:
            raise ScenarioError(f"{where(bad[0])}={values[bad[0]]} must be <= {high:g}")


def _seed_rng(seed: int | tuple[int, ...]) -> np.random.Generator:
    """The generator a scenario draw starts from for ``seed`` (a whole number >= 0, or a
    tuple of them as a list seed), checked the same way for both worlds."""
    parts = seed if isinstance(seed, tuple) and seed else (seed,)
    if not all(map(is_whole, parts)):
        raise ScenarioError(f"seed={seed!r}: a seed is a whole number >= 0 (or a tuple of them)")
    if any(s < 0 for s in parts):
        raise ScenarioError(f"seed={seed!r}: seeds must be >= 0")
    return np.random.default_rng([int(s) for s in seed] if isinstance(seed, tuple) else int(seed))


def draw_scenario(
    seed: int | tuple[int, ...],
    regime: Regime | RegimeSchedule | None = None,
    params: Params = DEFAULT_PARAMS,
) -> Scenario:
    """Draw demand and returns for one scenario, seeded (spec, "Exogenous draws").
    ``regime``: a :class:`Regime`, a schedule, or anything :func:`moca.regime.load_schedule`
    reads (a name, a file, an object of rule fields, a list of entries with ``start``);
    ``params``: a :class:`Params` or an object of the fields to change."""
    rng = _seed_rng(seed)
    params = as_params(params, Params)
    schedule = _as_schedule(regime)
    demand, return_frac = draw_exogenous(rng, params, 1)
    beyond = np.flatnonzero(~(demand[0] <= LARGEST_VALUE))
    if beyond.size:  # the draw, not a file: name the parameters that made it (as CLSC-2's draw does)
        k = int(beyond[0])
        raise ScenarioError(
            f"seed {seed} draws demand[{k}]={demand[0, k]:.3g}, beyond {LARGEST_VALUE:g} units: demand_base="
            f"{params.demand_base:g} times the season (demand_amp={params.demand_amp:g}) and the noise "
            f"(demand_sigma={params.demand_sigma:g}); lower them")
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
    return [draw_scenario(s, regime, params) for s in _seed_list(seeds, first_seed)]


def _seed_list(seeds: Any, first_seed: int) -> Sequence[Any]:
    """The seeds of a batch draw, both worlds: a count ``n`` (an int or a numpy integer) is
    seeds ``first_seed .. first_seed+n-1``; a list of seeds is checked seed by seed by the
    one-scenario draw (``int(s)`` drew seed 1 for 1.5; True counted one scenario; a numpy
    count was 'not iterable')."""
    if is_whole(seeds):
        if seeds < 0:  # (range() of a negative count is empty: no scenario and no word)
            raise ScenarioError(f"seeds={seeds!r}: a count of scenarios must be >= 0")
        if not is_whole(first_seed):
            raise ScenarioError(f"first_seed={first_seed!r}: a seed is a whole number >= 0")
        return range(int(first_seed), int(first_seed) + int(seeds))
    if isinstance(seeds, (bool, float, str, bytes, dict)) or not hasattr(seeds, "__iter__"):
        raise ScenarioError(f"seeds={seeds!r}: expected a count of scenarios or a list of seeds (whole numbers >= 0)")
    return list(seeds)


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


def _as_schedule(regime: Any, model: str = "CLSC-1") -> RegimeSchedule:
    if regime is None:
        return RegimeSchedule.constant(Regime())
    if isinstance(regime, RegimeSchedule):
        return regime
    if isinstance(regime, Regime):
        return RegimeSchedule.constant(regime)
    from moca.regime import load_schedule

    return load_schedule(regime, model=model)  # a name, a file, an object or a list: checked by name


def as_params(params: Any, kind: type) -> Any:
    """``params`` as ``kind`` (Params or Params2): an object of the fields to change is taken
    as those changes; anything else (the other world's parameters included) is refused
    naming what was given, not as a missing attribute deep inside a simulator."""
    if isinstance(params, kind):
        return params
    if isinstance(params, dict):
        try:
            return kind.model_validate(params)  # (kind(**params) raised TypeError on a key that is not text)
        except ValidationError as err:  # (pydantic's several lines and a web link, where moca's errors are one line)
            problem = params_problem(err)  # (as a scenario file's or --params' are said)
            raise ScenarioError(problem if problem.startswith("params.") else f"params: {problem}") from None
    raise ScenarioError(f"params: expected a {kind.__name__} or an object of its fields, got {type(params).__name__}")


def load_params(source: str | Path, kind: type = None) -> "Params | Params2":
    """Parameters from a JSON/YAML file: an object of parameter overrides (names as in the
    scenario file's ``params``), or a whole scenario file, whose ``params`` are used.
    ``kind``: :class:`Params` (CLSC-1, the default) or :class:`Params2` (CLSC-2)."""
    kind = kind or Params
    from moca.regime import read_structured

    try:
        data = read_structured(Path(source))
    except RegimeError as err:
        raise ScenarioError(f"--params {err}") from None
    # this world, and the other one's name and parameters (for the hints below)
    wanted, theirs, other = ("CLSC-2", "CLSC-1", Params) if kind is Params2 else ("CLSC-1", "CLSC-2", Params2)
    if isinstance(data, dict) and "params" in data and ("model" in data or "demand" in data):
        world = data.get("model", "CLSC-1")  # (a CLSC-1 scenario file may predate "model")
        if world != wanted and world in ("CLSC-1", "CLSC-2"):  # (was "params.cap_market: unknown parameter")
            raise ScenarioError(f"--params {source}: a {world} scenario file (its \"model\"), and these are "
                                f"{wanted}'s parameters: use --model {world}, or a {wanted} file")
        data = data["params"] or {}
    if not isinstance(data, dict):
        raise ScenarioError(f"--params {source}: expected an object of parameters (or a scenario file)")
    try:
        return kind.model_validate(data)  # (kind(**data) raised TypeError on a key that is not text)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if first["type"] == "invalid_key":  # (a key that is not text: YAML's 1, or yes read as true)
            field = str(first["input"])
        if first["type"] in ("extra_forbidden", "invalid_key"):
            hint = f"; it is a parameter of {theirs} (--model {theirs})" if field in other.model_fields else ""
            raise ScenarioError(f"--params {source}: params.{field}: unknown parameter{hint} "
                                f"(known: {', '.join(kind.model_fields)})"
                                f"{key_not_text(first['input']) if first['type'] == 'invalid_key' else ''}") from None
        raise ScenarioError(f"--params {source}: {first['msg'].removeprefix('Value error, ')}") from None


def load_actions(source: str | Path, horizon: int,
                 columns: Sequence[str] = ("o", "u_v", "u_r", "g", "f", "w")) -> np.ndarray:
    """An action file ``{"actions": [[o, u_v, u_r, g, f, w], ...]}`` as a ``[T, 6]`` array
    (``columns``: the model's action symbols, e.g. CLSC-2's nine). ``moca oracle --json``'s
    output is one too: its ``plan`` are the actions (to replay the hindsight plan)."""
    try:
        data = json.loads(Path(source).read_text(encoding="utf-8-sig"), parse_constant=_reject_constant, parse_int=whole_number,
                          object_pairs_hook=unique_keys)
    except OSError as err:
        raise ScenarioError(f"{source}: cannot read actions ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ScenarioError(f"actions: malformed JSON ({parse_problem(err)})") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{source}: not a text file (UTF-8 JSON actions)") from None
    except ValueError as err:
        raise ScenarioError(f"actions: {err}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: nested too deeply to be an action file") from None
    if not isinstance(data, dict):
        raise ScenarioError("actions: expected an object with key 'actions'")
    key = "plan" if "plan" in data and "actions" not in data else "actions"  # (an oracle's output)
    allowed = {"plan", "oracle_cost", "status"} if key == "plan" else {"actions"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ScenarioError(f"actions: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    rows = data.get(key)
    if not isinstance(rows, list):
        raise ScenarioError(f"{key}: missing or not a list")
    if len(rows) != horizon:
        raise ScenarioError(f"{key}: expected exactly horizon={horizon} rows, got {len(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise ScenarioError(f"{key}[{i}]: expected {len(columns)} numbers [{', '.join(columns)}]")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ScenarioError(f"{key}[{i}][{j}]={v!r} is not a number")
            if not math.isfinite(v):
                raise ScenarioError(f"{key}[{i}][{j}]={v} is not finite")
            if abs(v) > LARGEST_VALUE:
                # the projection's squared distances would overflow: its answer would be feasible but not the nearest
                raise ScenarioError(f"{key}[{i}][{j}]={v!r} must be within ±{LARGEST_VALUE:g}")
    return np.array(rows, dtype=np.float64)


# --- CLSC-2 (docs/MODEL-2.md) ---------------------------------------------------------------

MODEL_NAME_2 = "CLSC-2"
MODELS: tuple[str, ...] = (MODEL_NAME, MODEL_NAME_2)
#: Periods of observable demand history before t = 0.
HISTORY = 52

_WHOLE_2 = {"horizon", "lead_virgin", "lag_return"}
# demand_base too: moca's rule and policy state their stock thresholds and features per unit
# of it (a chain declaring 0 made them 0/0: a NaN action, an internal error).
_POSITIVE_2 = {"mass", "cap_order", "cap_produce", "cap_disassemble", "cap_refurbish", "cap_dispose",
               "cap_market", "grade_concentration", "demand_base"}
_SHARE_2 = {"yield_refurbish", "yield_disassembly_a", "yield_disassembly_b", "return_mean", "demand_jump_prob",
            "supply_down_prob", "supply_up_prob", "market_avail_min"}


class Params2(CheckedCopy, BaseModel):
    """CLSC-2 parameters; attribute names are the scenario file's JSON keys.

    Keys marked "drawing only" shape how :func:`draw_scenario2` draws a scenario's series;
    no policy, forecast or engine other than the generator reads them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def _copy_error(cls, err: ValidationError) -> Exception:
        return ScenarioError(params_problem(err))

    horizon: int = 52
    mass: float = 2.0  # kg material per product
    lead_virgin: int = 2  # periods
    lag_return: int = 6  # periods
    cap_order: float = 4000.0  # kg per period
    cap_produce: float = 1500.0  # units per period
    cap_disassemble: float = 600.0  # cores per period (grades A and B together)
    cap_refurbish: float = 300.0  # cores per period
    cap_dispose: float = 2000.0  # cores per period (grades A and B together)
    cap_market: float = 800.0  # kg per period the secondary market offers at full availability
    yield_refurbish: float = 0.85  # products per refurbished grade-A core
    yield_disassembly_a: float = 0.9  # share of a grade-A core's material recovered
    yield_disassembly_b: float = 0.7  # share of a grade-B core's material recovered
    cost_virgin: float = 3.0  # EUR/kg
    cost_market: float = 4.0  # EUR/kg recycled material bought
    cost_produce: float = 2.0  # EUR/unit
    cost_disassemble: float = 6.0  # EUR/core
    cost_refurbish: float = 7.0  # EUR/core
    cost_dispose: float = 0.5  # EUR/core (scrap included)
    hold_virgin: float = 0.01  # EUR/kg/period
    hold_recycled: float = 0.01  # EUR/kg/period
    hold_product: float = 0.2  # EUR/unit/period
    hold_core: float = 0.05  # EUR/core/period
    lost_sale_cost: float = 20.0  # EUR/unit of demand not met
    emis_virgin: float = 6.0  # kg CO2/kg virgin
    emis_market: float = 1.0  # kg CO2/kg recycled material bought
    emis_recycle: float = 1.0  # kg CO2/kg recycled material recovered
    emis_produce: float = 2.0  # kg CO2/unit
    init_virgin: float = 4000.0  # kg
    init_recycled: float = 500.0  # kg
    init_product: float = 1000.0  # units
    init_core_a: float = 100.0  # units
    init_core_b: float = 100.0  # units
    init_pipeline: float = 2000.0  # kg in each pipeline slot
    init_market: float = 0.0  # kg of recycled material arriving at t = 0
    demand_base: float = 1000.0  # units per period (drawing only)
    demand_amp_lo: float = 0.1  # seasonal amplitude range (drawing only)
    demand_amp_hi: float = 0.4
    demand_drift_sigma: float = 0.005  # sd of the log-level's drift per period (drawing only)
    demand_jump_prob: float = 0.05  # probability of a level jump per period (drawing only)
    demand_jump_sigma: float = 0.25  # sd of a jump of the log-level (drawing only)
    demand_sigma: float = 0.15  # sd of the lognormal noise (drawing only)
    return_mean: float = 0.25  # drawing only
    return_sigma: float = 0.1  # drawing only
    grade_mean: tuple[float, float, float] = (0.3, 0.45, 0.25)  # mean shares A, B, scrap (drawing only)
    grade_concentration: float = 30.0  # Dirichlet concentration (drawing only)
    supply_down_prob: float = 0.04  # per-period failure probability of the supplier (drawing only)
    supply_up_prob: float = 0.25  # per-period recovery probability (drawing only)
    market_avail_min: float = 0.2  # lowest market availability (drawing only)

    @field_validator("grade_mean", mode="before")
    @classmethod
    def _grade_mean(cls, value: Any) -> tuple[float, float, float]:
        if isinstance(value, np.ndarray) and value.ndim == 1:  # a numpy vector is 3 numbers too
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"params.grade_mean={value!r} must be 3 numbers (shares of grades A, B, scrap)")
        value = [v.item() if isinstance(v, np.generic) else v for v in value]
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or v < 0:
                raise ValueError(f"params.grade_mean[{i}]={v!r} must be a finite number >= 0")
        if abs(sum(float(v) for v in value) - 1.0) > 1e-6:
            raise ValueError(f"params.grade_mean={list(value)!r} must sum to 1")
        return tuple(float(v) for v in value)

    @field_validator("*", mode="before")
    @classmethod
    def _checked(cls, value: Any, info) -> Any:
        name = info.field_name
        if name == "grade_mean":
            return value
        if isinstance(value, np.generic):  # numpy's numbers are numbers too
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"params.{name}={value!r} is not a number")
        if not math.isfinite(float(value)):
            raise ValueError(f"params.{name}={value!r} must be finite")
        if name in _WHOLE_2:
            if float(value) != int(value) or int(value) < 1:
                raise ValueError(f"params.{name}={value!r} must be a whole number >= 1")
            if name == "lag_return" and int(value) > HISTORY:
                raise ValueError(f"params.lag_return={value!r} must be <= {HISTORY} (returns of pre-horizon "
                                 "sales come from the demand history)")
            _check_magnitude(name, value)
            return int(value)
        _check_magnitude(name, value)
        if name in _POSITIVE_2 and float(value) <= 0:
            raise ValueError(f"params.{name}={value!r} must be > 0")
        if name in _SHARE_2 and not 0 <= float(value) <= 1:
            raise ValueError(f"params.{name}={value!r} must be in [0, 1]")
        if float(value) < 0:
            raise ValueError(f"params.{name}={value!r} must be >= 0")
        return value

    @model_validator(mode="after")
    def _amp_order(self) -> "Params2":
        # A model check, not a field one: a field's validator does not run on a default, so
        # demand_amp_lo given above the default demand_amp_hi slipped through to the draw.
        if self.demand_amp_hi < self.demand_amp_lo:
            given = self.model_fields_set
            if "demand_amp_hi" in given:
                raise ValueError(f"params.demand_amp_hi={self.demand_amp_hi!r} must be >= "
                                 f"demand_amp_lo={self.demand_amp_lo!r}")
            raise ValueError(f"params.demand_amp_lo={self.demand_amp_lo!r} must be <= demand_amp_hi="
                             f"{self.demand_amp_hi!r} (the default; give demand_amp_hi too)")
        return self

    @property
    def action_scale(self) -> np.ndarray:
        """S: capacity-normalising scale of the nine actions (kg, kg, kg, kg, cores x5)."""
        mk = self.mass * self.cap_produce
        return np.array([self.cap_order, self.cap_market, mk, mk, self.cap_refurbish, self.cap_disassemble,
                         self.cap_disassemble, self.cap_dispose, self.cap_dispose])


DEFAULT_PARAMS_2 = Params2()

#: The CLSC-2 scenario file's series: key -> (shape as a function of T, low, high).
SERIES_2: tuple[str, ...] = ("demand_history", "demand", "return_frac", "grades", "supply_up", "market_avail")


@dataclass
class Scenario2(_HeldSeries):
    """One CLSC-2 scenario: parameters, regime schedule (with accounting windows) and series.

    ``demand_history`` [52] and ``demand`` [T] in units; ``return_frac`` [T] share of the
    sales of ``t - L_r`` returned at t; ``grades`` [T, 3] shares of the returns that are
    grade A, grade B and scrap (rows sum to 1); ``supply_up`` [T] 1.0 when the virgin
    supplier accepts orders, else 0.0; ``market_avail`` [T] share of ``cap_market`` on offer.
    """

    params: Params2
    schedule: RegimeSchedule
    demand: np.ndarray
    return_frac: np.ndarray
    grades: np.ndarray
    supply_up: np.ndarray
    market_avail: np.ndarray
    demand_history: np.ndarray

    model = MODEL_NAME_2

    def __post_init__(self) -> None:
        _check_parts(self.params, Params2, self.schedule)
        T = self.params.horizon
        for name in SERIES_2:
            setattr(self, name, _held(getattr(self, name)))
        _check_series("demand_history", self.demand_history, HISTORY, low=0.0)
        _check_series("demand", self.demand, T, low=0.0)
        _check_series("return_frac", self.return_frac, T, low=0.0, high=1.0)
        _check_series("market_avail", self.market_avail, T, low=0.0, high=1.0)
        _check_series("supply_up", self.supply_up, T, low=0.0, high=1.0)
        bad = np.flatnonzero((self.supply_up != 0.0) & (self.supply_up != 1.0))
        if bad.size:
            raise ScenarioError(f"supply_up[{bad[0]}]={self.supply_up[bad[0]]} must be 0 or 1")
        if self.grades.ndim != 2 or self.grades.shape != (T, 3):
            raise ScenarioError(f"grades: expected horizon={T} rows of 3 shares [A, B, scrap], "
                                f"got shape {list(self.grades.shape)}")
        _check_series("grades", self.grades.reshape(-1), 3 * T, low=0.0, high=1.0, row_width=3)
        off = np.flatnonzero(np.abs(self.grades.sum(axis=1) - 1.0) > 1e-6)
        if off.size:
            raise ScenarioError(f"grades[{off[0]}]={self.grades[off[0]].tolist()} must sum to 1")

    @property
    def horizon(self) -> int:
        return self.params.horizon

    def regime_at(self, t: int) -> Regime:
        return self.schedule.regime_at(t)

    def regime_table(self) -> np.ndarray:
        """``[T, 5]`` regime in force per period (columns in ``REGIME_FIELDS`` order)."""
        return self.schedule.table(self.horizon)

    def window_table(self) -> np.ndarray:
        """``[T]`` accounting window ``W`` in force per period."""
        return self.schedule.window_table(self.horizon)

    def window_starts(self) -> np.ndarray:
        """``[T]`` bool: an accounting window starts at t (``U_v = U_r = 0`` then)."""
        from moca.regime import window_starts

        return window_starts(self.schedule, self.horizon)

    def periods_left(self) -> np.ndarray:
        """``[T]`` int: ``n_t``, periods left in t's accounting window after t."""
        from moca.regime import window_periods_left

        return window_periods_left(self.schedule, self.horizon)

    def presales(self) -> np.ndarray:
        """``[L_r]`` units: the sales whose cores return in periods ``0 .. L_r-1`` (the
        last ``L_r`` periods of the demand history)."""
        return self.demand_history[HISTORY - self.params.lag_return:]

    # --- JSON exchange format -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "model": MODEL_NAME_2,
            "params": {**self.params.model_dump(), "grade_mean": list(self.params.grade_mean)},
            "regimes": self.schedule.to_list_with_window(),
            "demand_history": [float(x) for x in self.demand_history],
            "demand": [float(x) for x in self.demand],
            "return_frac": [float(x) for x in self.return_frac],
            "grades": [[float(x) for x in row] for row in self.grades],
            "supply_up": [float(x) for x in self.supply_up],
            "market_avail": [float(x) for x in self.market_avail],
        }

    to_json = Scenario.to_json

    @classmethod
    def from_dict(cls, data: Any) -> "Scenario2":
        params, schedule = _read_header(data, Params2, MODEL_NAME_2, SERIES_2,
                                        wrong_model=f"expected {MODEL_NAME_2!r}", default_model=False)
        series = {}
        for key in SERIES_2:
            values = data[key]
            rows = values if key == "grades" and isinstance(values, list) else [values]
            for i, row in enumerate(rows):
                if not isinstance(row, list) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
                    where = f"{key}[{i}]" if key == "grades" else key
                    raise ScenarioError(f"{where}: expected a list of numbers")
            if key == "grades" and any(len(row) != 3 for row in values):
                i = next(i for i, row in enumerate(values) if len(row) != 3)
                raise ScenarioError(f"grades[{i}]: expected 3 shares [A, B, scrap], got {len(values[i])}")
            series[key] = np.array(values, dtype=np.float64).reshape(-1, 3) if key == "grades" \
                else np.array(values, dtype=np.float64)
        return cls(params=params, schedule=schedule, **series)

    @classmethod
    def from_json(cls, source: str | Path) -> "Scenario2":
        """Load from a path (or a JSON string starting with ``{``)."""
        return cls.from_dict(_read_json(source))


def load_scenario(source: str | Path) -> "Scenario | Scenario2":
    """A scenario file of either model; its ``"model"`` key chooses (absent = CLSC-1)."""
    data = _read_json(source)
    model = data.get("model", MODEL_NAME) if isinstance(data, dict) else MODEL_NAME
    if model == MODEL_NAME_2:
        return Scenario2.from_dict(data)
    if model != MODEL_NAME:
        raise ScenarioError(f"model={model!r}: expected one of {', '.join(MODELS)}")
    return Scenario.from_dict(data)


def draw_scenario2(
    seed: int | tuple[int, ...],
    regime: Regime | RegimeSchedule | None = None,
    params: Params2 = DEFAULT_PARAMS_2,
) -> Scenario2:
    """Draw one CLSC-2 scenario, seeded (docs/MODEL-2.md, "How a scenario is drawn").

    The draws come from one ``numpy.random.default_rng(seed)`` in this order: drift,
    amplitude, phase, jump indicators [52+T], jump sizes [52+T], demand noise [52+T],
    return noise [T], grade shares [T, 3], supplier transitions [T], market availability [T].
    """
    rng = _seed_rng(seed)
    p = params = as_params(params, Params2)
    schedule = _as_schedule(regime, "CLSC-2")
    T, n = p.horizon, HISTORY + p.horizon
    parts = _demand_parts2(rng, p)
    curve = _curve_from_parts(parts, p)
    sd = p.demand_sigma
    noise = rng.lognormal(-sd**2 / 2, sd, size=n) if sd > 0 else np.ones(n)
    with np.errstate(over="ignore", invalid="ignore"):  # a demand beyond range is refused by name below
        demand = np.maximum(curve * noise, 0.0)  # an amplitude above 1 would otherwise give negative demand
    sr = p.return_sigma
    xi = rng.lognormal(-sr**2 / 2, sr, size=T) if sr > 0 else np.ones(T)
    return_frac = np.clip(p.return_mean * xi, 0.0, 1.0)
    grades = _draw_grades(rng, np.asarray(p.grade_mean), p.grade_concentration, T)
    u = rng.random(T)
    supply_up = np.empty(T)
    up = True  # the chain starts up
    for t in range(T):
        if t > 0:
            up = (u[t] >= p.supply_down_prob) if up else (u[t] < p.supply_up_prob)
        supply_up[t] = 1.0 if up else 0.0
    market_avail = rng.uniform(p.market_avail_min, 1.0, size=T)
    beyond = np.flatnonzero(~(demand <= LARGEST_VALUE))  # (the other series are clipped to their ranges)
    if beyond.size:  # the draw, not a file: name the parameters that made it, which the user can change
        k = int(beyond[0])
        where = f"demand[{k - HISTORY}]" if k >= HISTORY else f"demand_history[{k}]"
        raise ScenarioError(
            f"seed {seed} draws {where}={demand[k]:.3g}, beyond {LARGEST_VALUE:g} units: the demand walks over "
            f"{n} periods (52 of history) from demand_base={p.demand_base:g} with demand_drift_sigma="
            f"{p.demand_drift_sigma:g}, demand_jump_prob={p.demand_jump_prob:g}, demand_jump_sigma="
            f"{p.demand_jump_sigma:g} and demand_sigma={sd:g}, times a season of amplitude "
            f"{parts['amplitude']:.3g} (drawn between demand_amp_lo={p.demand_amp_lo:g} and demand_amp_hi="
            f"{p.demand_amp_hi:g}); lower them")
    return Scenario2(params=p, schedule=schedule, demand=demand[HISTORY:], return_frac=return_frac,
                     grades=grades, supply_up=supply_up, market_avail=market_avail,
                     demand_history=demand[:HISTORY])


def _demand_parts2(rng: np.random.Generator, p: Params2) -> dict[str, Any]:
    """The generator's first draws (drift, amplitude, phase, jump indicators, jump sizes, in
    that order) and the log-level path ``[52 + T]`` they make."""
    n = HISTORY + p.horizon
    drift = rng.normal(0.0, p.demand_drift_sigma)
    amplitude = rng.uniform(p.demand_amp_lo, p.demand_amp_hi)
    phase = rng.uniform(0.0, 52.0)
    jumps = rng.random(n) < p.demand_jump_prob
    jump_sizes = rng.normal(0.0, p.demand_jump_sigma, size=n)
    # The log-level walks with the drift and the jumps, shifted to 0 at the last history period.
    level = np.cumsum(drift + jumps * jump_sizes)
    return {"drift": float(drift), "amplitude": float(amplitude), "phase": float(phase),
            "log_level": level - level[HISTORY - 1]}


def season_factor2(k: np.ndarray, amplitude: float, phase: float) -> np.ndarray:
    """The seasonal factor ``1 + A sin(2 pi (k + phase) / 52)`` of periods ``k`` (0 = the first
    history period)."""
    return 1 + amplitude * np.sin(2 * np.pi * (np.asarray(k) + phase) / 52)


def _curve_from_parts(parts: dict[str, Any], p: Params2) -> np.ndarray:
    """``[52 + T]`` units: the demand before its period noise, from :func:`_demand_parts2`'s
    draws (inf where it overflows: the draw refuses a demand beyond range by name, without
    numpy's overflow warning before its message)."""
    k = np.arange(HISTORY + p.horizon)
    with np.errstate(over="ignore", invalid="ignore"):
        return p.demand_base * np.exp(parts["log_level"]) * season_factor2(k, parts["amplitude"], parts["phase"])


def _demand_curve2(rng: np.random.Generator, p: Params2) -> np.ndarray:
    """``[52 + T]`` units: the demand before its period noise."""
    return _curve_from_parts(_demand_parts2(rng, p), p)


def demand_parts2(seed: int | tuple[int, ...], params: Params2 = DEFAULT_PARAMS_2) -> dict[str, Any]:
    """How the scenario :func:`draw_scenario2` draws with ``seed`` made its demand: ``drift``
    (log-level per period), ``amplitude``, ``phase`` and ``log_level`` ``[52 + T]`` (jumps
    included). A reference only (``benchmarks/bench_clsc2_ceiling.py`` asks what a rule told
    them would score); no planner knows them."""
    return _demand_parts2(_seed_rng(seed), params)



def demand_curve2(seed: int | tuple[int, ...], params: Params2 = DEFAULT_PARAMS_2) -> np.ndarray:
    """``[52 + T]`` units: the noise-free demand of the scenario :func:`draw_scenario2` draws
    with ``seed`` (``demand = curve * noise``). Only a reference policy told the demand model
    may read it (the informed MPC); no planner knows it."""
    return np.maximum(_demand_curve2(_seed_rng(seed), params), 0.0)


def _draw_grades(rng: np.random.Generator, mean: np.ndarray, concentration: float, count: int) -> np.ndarray:
    """``[count, 3]`` Dirichlet(concentration * mean) rows; a grade of mean share 0 stays 0
    (numpy's Dirichlet refuses zero parameters)."""
    out = np.zeros((count, 3))
    present = mean > 0
    if present.sum() == 1:
        out[:, present] = 1.0
    else:
        out[:, present] = rng.dirichlet(concentration * mean[present], size=count)
    return out


def draw_training_scenarios2(count: int, regime: Regime | RegimeSchedule | None = None,
                             params: Params2 = DEFAULT_PARAMS_2, offset: int = 0) -> list[Scenario2]:
    """``count`` CLSC-2 training scenarios from the training stream (see :data:`TRAINING_STREAM`)."""
    return [draw_scenario2((TRAINING_STREAM, offset + i), regime, params) for i in range(count)]


def draw_scenarios2(seeds: Sequence[int] | int, regime: Regime | RegimeSchedule | None = None,
                    params: Params2 = DEFAULT_PARAMS_2, first_seed: int = 0) -> list[Scenario2]:
    """One CLSC-2 scenario per seed (an int ``n`` means seeds ``first_seed .. first_seed+n-1``)."""
    return [draw_scenario2(s, regime, params) for s in _seed_list(seeds, first_seed)]
