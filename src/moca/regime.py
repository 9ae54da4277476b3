"""Regulatory regimes (CLSC-1's five rules; CLSC-2 adds the mandate's accounting window).

Fields, units and ranges: docs/MODEL.md (CLSC-1) and docs/MODEL-2.md (CLSC-2).

A :class:`Regime` holds the rules in force; a :class:`RegimeSchedule` says which regime is
in force in which period (regulation may change at any period, without warning).
Everything else in moca reads regimes as the dense per-period table of
:meth:`RegimeSchedule.table`, with columns in :data:`REGIME_FIELDS` order.

CLSC-2's sixth field, ``recycled_content_window`` (periods over which the recycled-content
mandate is settled), is not a column of that table: CLSC-1 ignores it, and a regime whose
window is the default 1 dumps (``model_dump``) to CLSC-1's five fields exactly, so no
CLSC-1 file or output changes. CLSC-2 reads it through :meth:`RegimeSchedule.window_table`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from moca.files import parse_problem, unique_keys, whole_number
from moca.limits import is_whole

#: Column order of the dense regime table; an absent emission cap is stored as +inf.
REGIME_FIELDS: tuple[str, ...] = (
    "recycled_content_min",
    "carbon_tax",
    "emission_cap",
    "landfill_tax",
    "recovery_target",
)

#: The sixth field (CLSC-2 only): the mandate's accounting window in periods.
WINDOW_FIELD = "recycled_content_window"
#: Every field a regime may hold, in order (CLSC-2's regime entries carry all six).
ALL_REGIME_FIELDS: tuple[str, ...] = REGIME_FIELDS + (WINDOW_FIELD,)
#: Longest accounting window (periods): two years of weeks.
MAX_WINDOW = 104

#: Valid ranges of the spec, used in error messages and by regime samplers.
REGIME_RANGES: dict[str, str] = {
    "recycled_content_min": "[0, 0.95]",
    "carbon_tax": "[0, 2000] EUR/t CO2",
    "emission_cap": "> 0 kg CO2/period, or null for no cap",
    "landfill_tax": "[0, 100] EUR/core",
    "recovery_target": "[0, 1]",
    WINDOW_FIELD: f"whole number of periods in [1, {MAX_WINDOW}]",
}

#: Units of the fields, as ``moca regimes`` shows them.
REGIME_UNITS: dict[str, str] = {
    "recycled_content_min": "share of material input",
    "carbon_tax": "EUR/t CO2",
    "emission_cap": "kg CO2/period",
    "landfill_tax": "EUR/disposed core",
    "recovery_target": "share of processed cores",
    WINDOW_FIELD: "periods",
}

#: The share and price rules' ranges (low, high), as REGIME_RANGES writes them; the engines
#: that step a rule (the shadow prices) stop at the top.
RULE_BOUNDS: dict[str, tuple[float, float]] = {
    "recycled_content_min": (0.0, 0.95),
    "carbon_tax": (0.0, 2000.0),
    "landfill_tax": (0.0, 100.0),
    "recovery_target": (0.0, 1.0),
}


class RegimeError(ValueError):
    """An invalid regime or schedule; the message names field, value and valid range."""


class CheckedCopy:
    """A pydantic model whose ``model_copy(update=...)`` checks the result as a new one
    (pydantic's own copy checks nothing: a copy of T2 with ``carbon_tax=-500``, or of the
    default params with ``cap_produce=-1``, was taken by every engine as it was, where the
    same values as a dict are refused). The error is the model's own (:meth:`_copy_error`)."""

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False):
        if not update:
            return super().model_copy(deep=deep)
        try:
            # (the fields set, as pydantic's copy keeps them: a validator that names the field
            # given, e.g. Params2's demand_amp order, then names the one the caller changed)
            return type(self).model_validate({**self.model_dump(exclude_unset=True), **update})
        except ValidationError as err:
            raise self._copy_error(err) from None

    @classmethod
    def _copy_error(cls, err: ValidationError) -> Exception:
        return ValueError(str(err))


class Regime(CheckedCopy, BaseModel):
    """The rules in force in one period. A field left out means no such rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recycled_content_min: float = Field(0.0, description="r: minimum recycled share of material input")
    carbon_tax: float = Field(0.0, description="tau: EUR per t CO2 of virgin extraction")
    emission_cap: float | None = Field(None, description="E-bar: kg CO2 per period; None = no cap")
    landfill_tax: float = Field(0.0, description="lambda: EUR per disposed core")
    recovery_target: float = Field(0.0, description="kappa: minimum recovered share of processed cores")
    recycled_content_window: int = Field(1, description="W: periods over which the mandate is settled (CLSC-2)")

    @field_validator("recycled_content_min", "carbon_tax", "landfill_tax", "recovery_target", mode="before")
    @classmethod
    def _in_range(cls, value: Any, info) -> float:
        low, high = RULE_BOUNDS[info.field_name]
        number = _as_number(info.field_name, value)
        if not (low <= number <= high):
            raise ValueError(f"{info.field_name}={value!r} is outside its valid range {REGIME_RANGES[info.field_name]}")
        return number

    @field_validator("emission_cap", mode="before")
    @classmethod
    def _cap_positive(cls, value: Any) -> float | None:
        if value is None:
            return None
        number = _as_number("emission_cap", value)
        if not (number > 0 and math.isfinite(number)):
            raise ValueError(f"emission_cap={value!r} is outside its valid range {REGIME_RANGES['emission_cap']}")
        return number

    @field_validator("recycled_content_window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> int:
        number = _as_number(WINDOW_FIELD, value)
        # The range first: int() of an infinite window raises OverflowError, which pydantic
        # does not turn into a validation error naming the field.
        if not (1 <= number <= MAX_WINDOW) or number != int(number):
            raise ValueError(f"{WINDOW_FIELD}={value!r} is outside its valid range {REGIME_RANGES[WINDOW_FIELD]}")
        return int(number)

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict[str, Any]:
        # A window of 1 is CLSC-1's per-period mandate: leave the field out so CLSC-1's
        # files and outputs keep exactly their five fields.
        data = handler(self)
        if data.get(WINDOW_FIELD) == 1:
            data.pop(WINDOW_FIELD)
        return data

    @classmethod
    def _copy_error(cls, err: ValidationError) -> Exception:
        return RegimeError(_first_error(err))

    def as_row(self) -> np.ndarray:
        """The regime as one row of the dense table (float64, cap None -> inf)."""
        cap = math.inf if self.emission_cap is None else self.emission_cap
        return np.array(
            [self.recycled_content_min, self.carbon_tax, cap, self.landfill_tax, self.recovery_target],
            dtype=np.float64,
        )

    @classmethod
    def from_row(cls, row: Iterable[float]) -> "Regime":
        """The regime of one row ``(r, tau, cap, lambda, kappa)`` (:meth:`as_row`'s order;
        a cap of +inf or None is no cap), checked as any regime: a row of another length, an
        entry that is not a number, NaN or a value outside its range raises
        :class:`RegimeError` naming the field."""
        shape = f"expected 5 numbers ({', '.join(REGIME_FIELDS)})"
        if np.ndim(row) != 1 or isinstance(row, (str, bytes, dict)):
            raise RegimeError(f"regime row: {shape}, got {row!r}")
        values = list(row)
        if len(values) != len(REGIME_FIELDS):
            raise RegimeError(f"regime row: {shape}, got {len(values)}: {values!r}")
        cap = None if isinstance(values[2], (float, np.floating)) and values[2] == math.inf else values[2]
        try:
            return cls(recycled_content_min=values[0], carbon_tax=values[1], emission_cap=cap,
                       landfill_tax=values[3], recovery_target=values[4])
        except ValidationError as err:
            raise RegimeError(_first_error(err, "regime row: ")) from None

    def describe(self) -> str:
        """Short human label, e.g. ``r=0.20 tau=100``."""
        def share(value: float) -> str:  # (two decimals where they say it all: 0.301 and 0.304 read as one rule)
            return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"

        parts = []
        if self.recycled_content_min:
            parts.append(f"r={share(self.recycled_content_min)}")
        if self.carbon_tax:
            parts.append(f"tau={self.carbon_tax:g}")
        if self.emission_cap is not None:
            parts.append(f"cap={self.emission_cap:g}")
        if self.landfill_tax:
            parts.append(f"lambda={self.landfill_tax:g}")
        if self.recovery_target:
            parts.append(f"kappa={share(self.recovery_target)}")
        if self.recycled_content_window != 1:
            parts.append(f"W={self.recycled_content_window}")
        return " ".join(parts) or "unregulated"


def _as_number(field: str, value: Any) -> float:
    if isinstance(value, np.generic):  # a grid from np.arange holds np.int64: a number too (np.bool_ is not)
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field}={value!r} is not a number (valid range {REGIME_RANGES[field]})")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{field}=nan is not a number (valid range {REGIME_RANGES[field]})")
    return number


class ScheduledRegime(Regime):
    """A schedule entry: a regime in force from period ``start`` until the next entry's start."""

    start: int = 0

    @field_validator("start", mode="before")
    @classmethod
    def _start_int(cls, value: Any) -> int:
        if isinstance(value, np.generic):
            value = value.item()
        # isfinite before int(): int() of inf raises OverflowError and of nan a message
        # that names neither the field nor the rule.
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or float(value) != int(value) or value < 0):
            raise ValueError(f"start={value!r} must be a whole period number >= 0")
        return int(value)

    def regime(self) -> Regime:
        return Regime(**self.model_dump(exclude={"start"}))


class RegimeSchedule(BaseModel):
    """Regimes over time; ``entries[0].start`` is 0 and starts strictly increase."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entries: tuple[ScheduledRegime, ...]

    @model_validator(mode="after")
    def _ordered(self) -> "RegimeSchedule":
        if not self.entries:
            raise ValueError("regimes: a schedule needs at least one regime")
        if self.entries[0].start != 0:
            raise ValueError(f"regimes[0].start={self.entries[0].start} must be 0")
        for i in range(1, len(self.entries)):
            if self.entries[i].start <= self.entries[i - 1].start:
                raise ValueError(
                    f"regimes[{i}].start={self.entries[i].start} must be greater than "
                    f"regimes[{i - 1}].start={self.entries[i - 1].start}"
                )
        return self

    @classmethod
    def constant(cls, regime: Regime) -> "RegimeSchedule":
        if not isinstance(regime, Regime):
            raise TypeError(f"RegimeSchedule.constant: expected a Regime, got {type(regime).__name__} "
                            "(a name, a file or an object of rule fields: moca.regime.load_schedule)")
        return cls(entries=(ScheduledRegime(start=0, **regime.model_dump()),))

    @classmethod
    def from_list(cls, items: list[dict[str, Any]]) -> "RegimeSchedule":
        """Build from the scenario file's ``regimes`` list; errors name the entry and field."""
        if not isinstance(items, list):
            raise RegimeError(f"regimes: expected a list of regime entries, got {type(items).__name__}")
        entries = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                hint = (f" {item!r}: a list of regime names is a task sequence (moca continual --sequence); a plan's "
                        "entries are regime objects with start" if isinstance(item, str) else "")
                raise RegimeError(f"regimes[{i}]: expected an object, got {type(item).__name__}{hint}")
            item = dict(item)
            item.setdefault("start", 0 if i == 0 else None)
            if item["start"] is None:
                raise RegimeError(f"regimes[{i}].start is missing")
            entries.append(_validated(ScheduledRegime, item, prefix=f"regimes[{i}]."))
        try:
            return cls(entries=tuple(entries))
        except ValidationError as err:
            raise RegimeError(_first_error(err)) from None

    def to_list(self) -> list[dict[str, Any]]:
        return [
            {"start": e.start, **{k: getattr(e, k) for k in REGIME_FIELDS}}
            for e in self.entries
        ]

    def starts_beyond(self, horizon: int) -> list[int]:
        """Starts (periods) of the entries that begin at or after ``horizon``: in an episode of
        that length they never apply. Not an error (a schedule may be written for a longer
        chain), but worth a word to whoever expected the rule to bite."""
        return [entry.start for entry in self.entries if entry.start >= horizon]

    def regime_at(self, t: int) -> Regime:
        """The regime in force in period ``t`` (a whole number >= 0, as :meth:`table` takes)."""
        if not is_whole(t) or t < 0:  # (-1 and 1.5 gave a regime)
            raise RegimeError(f"t={t!r}: a period is a whole number >= 0")
        current = self.entries[0]
        for entry in self.entries:
            if entry.start <= t:
                current = entry
        return current.regime()

    def table(self, horizon: int) -> np.ndarray:
        """Dense ``[horizon, 5]`` float64 table of the regime in force each period."""
        if not is_whole(horizon) or horizon < 0:
            raise RegimeError(f"horizon={horizon!r}: a whole number of periods >= 0")
        out = np.empty((horizon, len(REGIME_FIELDS)), dtype=np.float64)
        for i, entry in enumerate(self.entries):
            end = self.entries[i + 1].start if i + 1 < len(self.entries) else horizon
            out[min(entry.start, horizon):min(end, horizon)] = entry.as_row()
        return out

    def change_periods(self) -> list[int]:
        return [e.start for e in self.entries[1:]]

    def to_list_with_window(self) -> list[dict[str, Any]]:
        """:meth:`to_list` with the sixth field on every entry (CLSC-2's scenario files)."""
        return [{**item, WINDOW_FIELD: e.recycled_content_window} for item, e in zip(self.to_list(), self.entries)]

    def window_table(self, horizon: int) -> np.ndarray:
        """``[horizon]`` int64: the accounting window ``W`` of the regime in force each period."""
        out = np.ones(horizon, dtype=np.int64)
        for i, entry in enumerate(self.entries):
            end = self.entries[i + 1].start if i + 1 < len(self.entries) else horizon
            out[min(entry.start, horizon):min(end, horizon)] = entry.recycled_content_window
        return out


def window_starts(schedule: RegimeSchedule, horizon: int) -> np.ndarray:
    """``[horizon]`` bool: does an accounting window start at t? (CLSC-2, "Accounting windows")

    Windows are calendar blocks ``[kW, (k+1)W)`` of the ``W`` in force, cut short at a
    regime change and at the horizon; a regime change always starts a new window.
    """
    t = np.arange(horizon)
    starts = (t % schedule.window_table(horizon)) == 0
    for change in schedule.change_periods():
        if change < horizon:
            starts[change] = True
    if horizon:
        starts[0] = True
    return starts


def window_ids(schedule: RegimeSchedule, horizon: int) -> np.ndarray:
    """``[horizon]`` int64: index (0, 1, ...) of the accounting window each period belongs to."""
    return np.cumsum(window_starts(schedule, horizon)) - 1


def window_periods_left(schedule: RegimeSchedule, horizon: int) -> np.ndarray:
    """``[horizon]`` int64: ``n_t``, the periods left in t's window after t (0 in its last)."""
    ids = window_ids(schedule, horizon)
    last = np.empty(horizon, dtype=np.int64)  # last period of each window, per period
    if horizon:
        ends = np.flatnonzero(np.append(ids[1:] != ids[:-1], True))
        last = ends[ids]
    return last - np.arange(horizon)


def key_not_text(key: Any) -> str:
    """What to add when a file's key is not text: YAML reads ``yes``/``no``/``on``/``off`` as
    true and false (pydantic names such a key 1 or 0)."""
    return "; YAML reads yes, no, on and off as true and false: quote the key" if isinstance(key, bool) else ""


def _first_error(err: ValidationError, prefix: str = "", fields: tuple[str, ...] = ALL_REGIME_FIELDS) -> str:
    first = err.errors()[0]
    location = ".".join(str(p) for p in first["loc"])
    if first["type"] == "invalid_key":
        location = ".".join([*(str(p) for p in first["loc"][:-1]), str(first["input"])])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] in ("extra_forbidden", "invalid_key"):  # (invalid_key: a key not text, e.g. YAML's 1 or yes)
        allowed = ", ".join(fields)
        in_plan = prefix.startswith("regimes")
        # a list under an unknown key is most likely a plan under a name moca does not read
        hint = ("; a plan of rules that change is a list of entries with start, or an object with key regimes"
                if isinstance(first.get("input"), list) and not in_plan else "")
        hint += key_not_text(first.get("input")) if first["type"] == "invalid_key" else ""
        if location == "start" and not in_plan:  # (one object with start: a plan written without its list)
            hint += "; start belongs to the entries of a plan, which is a list of them (or an object with key regimes)"
        if location.rpartition(".")[2] == "model":  # (a scenario or plan file's key: the world is --model's here)
            hint += "; a regime object names no world: the command's --model (or the library's model=) chooses it"
        return f"{prefix}{location}: unknown field (allowed: {allowed}{', start' if in_plan else ''}){hint}"
    if location and location not in message:
        return f"{prefix}{location}: {message}"
    return f"{prefix}{message}"


def _validated(model: type[BaseModel], data: dict[str, Any], prefix: str = "",
               fields: tuple[str, ...] = ALL_REGIME_FIELDS) -> Any:
    """``model`` of ``data``, or a RegimeError naming the first field at fault (an unknown
    one with ``fields``, those the reader takes)."""
    try:
        return model.model_validate(data)  # (model(**data) failed on a key that is not text, naming none)
    except ValidationError as err:
        raise RegimeError(_first_error(err, prefix, fields)) from None


# --- named tasks and presets -------------------------------------------------------------

#: The seed's tasks (spec, "The seed's task sequence").
TASKS: dict[str, Regime] = {
    "T1": Regime(recycled_content_min=0.10),
    "T2": Regime(recycled_content_min=0.20),
    "T3": Regime(recycled_content_min=0.20, carbon_tax=100.0),
}

#: Presets drawn from real rules; sources are listed in the README ("Regime presets").
PRESETS: dict[str, Regime] = {
    "unregulated": Regime(),
    # EU ETS: 2025 average allowance price, about 75 EUR/t CO2.
    "eu-ets-2025": Regime(carbon_tax=75.0),
    # Regulation (EU) 2023/1542 (batteries), Art. 8: recycled cobalt 16% from 2031, 26% from 2036.
    "eu-batteries-2031": Regime(recycled_content_min=0.16),
    "eu-batteries-2036": Regime(recycled_content_min=0.26),
    # Regulation (EU) 2025/40 (PPWR), Art. 7(1)(d) and 7(2)(d): plastic packaging other than
    # contact-sensitive and beverage bottles, 35% recycled content from 2030, 65% from 2040.
    "eu-ppwr-2030": Regime(recycled_content_min=0.35),
    "eu-ppwr-2040": Regime(recycled_content_min=0.65),
    # Directive 2012/19/EU (WEEE), Annex V: 65% recovery for the lower-target categories.
    "weee-recovery": Regime(recovery_target=0.65),
}


#: Where each named regime comes from (also in the README, "Regime presets").
REGIME_SOURCES: dict[str, str] = {
    "T1": "seed task 1",
    "T2": "seed task 2",
    "T3": "seed task 3",
    "unregulated": "no rule",
    "eu-ets-2025": "EU ETS, 2025 average allowance price",
    "eu-batteries-2031": "Reg. (EU) 2023/1542 Art. 8, from 2031",
    "eu-batteries-2036": "Reg. (EU) 2023/1542 Art. 8, from 2036",
    "eu-ppwr-2030": "Reg. (EU) 2025/40 (PPWR) Art. 7, from 2030",
    "eu-ppwr-2040": "Reg. (EU) 2025/40 (PPWR) Art. 7, from 2040",
    "weee-recovery": "Dir. 2012/19/EU (WEEE) Annex V",
}


#: The seed's tasks on CLSC-2: the mandate settled over a year (W = 52 periods).
TASKS_2: dict[str, Regime] = {
    name: Regime(**{**regime.model_dump(), WINDOW_FIELD: 52}) for name, regime in TASKS.items()
}


def named_regimes(model: str = "CLSC-1") -> dict[str, Regime]:
    """Named regimes; on ``model="CLSC-2"`` the task names T1-T3 are CLSC-2's (W = 52)."""
    if model not in ("CLSC-1", "CLSC-2"):  # (any other spelling read as CLSC-1 without a word)
        raise RegimeError(f"model={model!r}: one of CLSC-1, CLSC-2")
    return {**(TASKS_2 if model == "CLSC-2" else TASKS), **PRESETS}


def unknown_name(name: str, where: str = "regime", files: bool = True) -> RegimeError:
    """The one message for a regime name moca does not know, wherever a name is accepted."""
    known = ", ".join(named_regimes())
    return RegimeError(f"{where}={name!r}: unknown regime name (known: {known}"
                       + ("; or a YAML/JSON file)" if files else ")"))


def _missing(text: str, where: str) -> RegimeError:
    """A name or file that is neither: a bare word reads as a misspelt name."""
    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or len(path.parts) > 1:
        return RegimeError(f"{where}={text!r}: no such file")
    return unknown_name(text, where)


def _without_name(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A regime object may carry a ``name`` (a label, as in sequence files); it is no rule."""
    if "name" in data:
        if not isinstance(data["name"], str):  # (was refused as "name: unknown field")
            raise RegimeError(f"{where}name={data['name']!r}: the regime's label must be text (e.g. name: \"tight\"; "
                              "quote a label of digits: name: \"2030\")")
        data = {k: v for k, v in data.items() if k != "name"}
    return data


def _name_or_path(spec: Any, plans: bool) -> None:
    """What is left once objects and lists are read: a name or a file (``regime=5`` was
    read as the name '5')."""
    if not isinstance(spec, (str, os.PathLike)):
        raise RegimeError(f"regime: expected a name (T1, eu-ets-2025, ...), a file{',' if plans else ' or'} an object "
                          f"of the regime fields{' or a plan' if plans else ''}, got {type(spec).__name__} {spec!r:.40}")


def _is_row(spec: Any) -> bool:
    """Whether ``spec`` is a list of numbers (a regime row, as ``Regime.as_row`` gives; None
    for no cap), which was read as a plan ("regimes[0]: expected an object, got float")."""
    return (isinstance(spec, (list, tuple, np.ndarray)) and np.ndim(spec) == 1 and len(spec) > 0
            and all(x is None or isinstance(x, (int, float, np.number)) and not isinstance(x, bool) for x in spec)
            and any(x is not None for x in spec))


def _row_words(spec: Any) -> str:
    return (f"regime: a list of {len(spec)} numbers (a regime row? {', '.join(REGIME_FIELDS)}); give a name or an "
            "object of the regime fields (Regime.from_row(row) makes one of a row)")


def load_regime(spec: str | Path | dict[str, Any] | Regime, model: str = "CLSC-1") -> Regime:
    """A regime from a name (``T1``, ``eu-ets-2025``), a YAML/JSON file, or a mapping
    (an optional ``name`` key is a label and is ignored)."""
    if isinstance(spec, Regime):
        return spec
    if isinstance(spec, dict):
        return _validated(Regime, _without_name(spec), prefix="")
    names = named_regimes(model)
    if _is_row(spec):
        raise RegimeError(_row_words(spec))
    if isinstance(spec, (list, tuple, RegimeSchedule)):
        raise RegimeError(f"regime: got a {type(spec).__name__}, a plan of rules that change; "
                          "moca.regime.load_schedule reads plans")
    _name_or_path(spec, plans=False)
    text = str(spec)
    if text in names:
        return names[text]
    path = Path(text)
    if not text.strip() or not path.exists():  # (Path("") is the working directory)
        raise _missing(text, "regime")
    data = read_structured(path)
    plan = isinstance(data, list) or (isinstance(data, dict) and "regimes" in data)
    listed = data if isinstance(data, list) else data.get("regimes") if isinstance(data, dict) else None
    if plan and isinstance(listed, list) and len(listed) == 1:
        # a plan of one entry is that one regime (entries alike are not: each start cuts a
        # window); what is wrong in it is the plan reader's to say (its entry, its world)
        return Regime(**load_schedule(path, model).entries[0].model_dump(exclude={"start"}))
    if plan or not isinstance(data, dict):
        # names, or regime objects without "start": a task sequence (a plan's entries have "start")
        names = isinstance(data, list) and bool(data) and all(
            isinstance(x, str) or (isinstance(x, dict) and "start" not in x) for x in data)
        held = ("a list of regimes (a task sequence, for moca continual --sequence)" if names else
                "a plan of regimes that change (a schedule)" if plan else f"a {type(data).__name__}")
        raise RegimeError(f"{path}: a regime file must hold one object with the regime fields; this one holds "
                          f"{held}, which this command does not take")
    return _validated(Regime, _without_name(data, f"{path.name}: "), prefix=f"{path.name}: ")


def load_schedule(spec: str | Path | list[dict[str, Any]] | dict[str, Any] | Regime | RegimeSchedule,
                  model: str = "CLSC-1") -> RegimeSchedule:
    """A schedule from a YAML/JSON file holding a list of entries with ``start``
    (or an object with key ``regimes``), or such a list or object itself; a single regime
    (a name, a file, an object of the regime fields) is a constant schedule; a
    :class:`RegimeSchedule` is returned as it is. Entries may carry a ``name`` label, which is ignored.
    (``model`` chooses whose named regimes a name is; a window is refused on CLSC-1 by the
    scenario, or by the command line reading a file, :func:`check_clsc1_windows`.)"""
    if isinstance(spec, RegimeSchedule):
        return spec
    if isinstance(spec, dict) and "regimes" in spec:
        spec = _plan_entries(spec, model, "")
    if _is_row(spec):
        raise RegimeError(_row_words(spec))
    if isinstance(spec, list):
        return RegimeSchedule.from_list([_without_name(e) if isinstance(e, dict) else e for e in spec])
    if isinstance(spec, (dict, Regime)):  # one regime, in force throughout
        return RegimeSchedule.constant(load_regime(spec, model))
    _name_or_path(spec, plans=True)
    text = str(spec)
    if text in named_regimes(model):
        return RegimeSchedule.constant(named_regimes(model)[text])
    path = Path(text)
    if not text.strip() or not path.exists():  # (Path("") is the working directory)
        raise _missing(text, "regime")
    data = read_structured(path)
    if data is None:  # (an empty YAML file, or one of comments only)
        raise RegimeError(f"{path}: empty (expected a regime object or a list of regime entries)")
    if isinstance(data, dict) and "regimes" in data:
        data = _plan_entries(data, model, f"{path.name}: ")
    if isinstance(data, dict):  # one regime: its errors name the file, as load_regime's do
        where = f"{path.name}: "
        return RegimeSchedule.constant(_validated(Regime, _without_name(data, where), prefix=where))
    if isinstance(data, list):
        data = [_without_name(e) if isinstance(e, dict) else e for e in data]
    try:
        return RegimeSchedule.from_list(data)
    except RegimeError as err:  # (the entry was named, the file not: a command may read several)
        raise RegimeError(f"{path.name}: {err}") from None


def clsc1_window_refusal(where: str, window: int, advice: str = "(--model CLSC-2)", world: str = "CLSC-1") -> str:
    """The one sentence by which CLSC-1 refuses an accounting window (the commands', the
    scenario's, the sequence reader's and the sweep's): ``where`` names the entry, ``advice``
    the way to CLSC-2 for that reader."""
    return (f"{where}{WINDOW_FIELD}={window}: {world} settles the mandate every period; accounting windows are "
            f"CLSC-2's {advice}")


def check_clsc1_windows(schedule: RegimeSchedule, source: str | Path | None = None) -> None:
    """A CLSC-1 command's refusal of an accounting window other than 1 (CLSC-1 settles the
    mandate every period): the entry named (``regimes[i].``, none for a schedule of one
    regime) after ``source``'s file name where the regime came from a file. Refused later,
    by the scenario, it was "regimes[0]" of a file holding one regime, without the file's
    name, with the library's advice where the user had typed a command."""
    where = f"{Path(source).name}: " if source is not None and Path(source).is_file() else ""
    single = len(schedule.entries) == 1
    for i, entry in enumerate(schedule.entries):
        if entry.recycled_content_window != 1:
            raise RegimeError(clsc1_window_refusal(f"{where}{'' if single else f'regimes[{i}].'}",
                                                   entry.recycled_content_window))


#: The keys an object with ``regimes`` may hold beside it: a label, and those of a scenario
#: file (read for its regimes; its series and ``params`` are the scenario's, not the plan's).
PLAN_KEYS = frozenset({"regimes", "name", "model", "params", "demand_history", "demand", "return_frac", "grades",
                       "supply_up", "market_avail"})


def _plan_entries(data: dict[str, Any], model: str, where: str) -> Any:
    """The ``regimes`` of a plan given as an object. Any other key was dropped without a
    word (``{"regimes": [...], "mandate": 0.3}``), and a CLSC-2 plan was read on CLSC-1."""
    unknown = sorted(str(k) for k in data if k not in PLAN_KEYS)
    if unknown:
        raise RegimeError(f"{where}{unknown[0]}: unknown key of a plan (an object with regimes holds regimes, "
                          "and a name, or is a scenario file)")
    declared = data.get("model", model)
    if declared != model:
        raise RegimeError(f"{where}model={declared!r}: a plan of the other world; this command reads {model}'s "
                          "(--model chooses)")
    return data["regimes"]


def regime_label(spec: str, model: str = "CLSC-1") -> str:
    """How output names the regime ``spec`` (a name or a file): a file's own ``name`` label
    first (as sequence files are labelled), with the file beside it."""
    if spec in named_regimes(model) or not Path(spec).is_file():
        return spec
    try:
        data = read_structured(Path(spec))
    except RegimeError:
        return spec
    name = data.get("name") if isinstance(data, dict) else None
    return f"{name} ({Path(spec).name})" if isinstance(name, str) and name.strip() else spec


def load_sequence(spec: str | Path | list[Any], model: str = "CLSC-1") -> list[tuple[str, Regime]]:
    """A task sequence (YAML/JSON list of names or regime objects) as ``(label, regime)``;
    on CLSC-1 an accounting window is refused by its entry (CLSC-2's: ``model="CLSC-2"``).
    A name is the model's preset (on CLSC-2, T1-T3 carry W = 52); an object is read as
    written, whatever its ``name`` label."""
    data = spec
    if not isinstance(spec, list):
        path = Path(str(spec))
        if not path.exists():
            raise RegimeError(f"sequence {str(spec)!r}: no such file")
        data = read_structured(path)
        if isinstance(data, dict) and "sequence" in data:
            data = data["sequence"]
    if not isinstance(data, list) or not data:
        raise RegimeError("sequence: expected a non-empty list of regime names or regime objects")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            if item not in named_regimes(model):
                raise unknown_name(item, f"sequence[{i}]", files=False)
            out.append((item, named_regimes(model)[item]))
        elif isinstance(item, dict):
            item = dict(item)
            label = item.pop("name", None)
            if label is not None and not isinstance(label, str):
                raise RegimeError(f"sequence[{i}].name={label!r}: the regime's label must be text (quote a label "
                                  "of digits: name: \"2030\")")
            # (an unknown field's list named the window on CLSC-1 too, which is then refused)
            regime = _validated(Regime, item, prefix=f"sequence[{i}].",
                                fields=ALL_REGIME_FIELDS if model == "CLSC-2" else REGIME_FIELDS)
            if model != "CLSC-2" and regime.recycled_content_window != 1:  # (was named as its scenario's regimes[0])
                raise RegimeError(clsc1_window_refusal(f"sequence[{i}].", regime.recycled_content_window))
            out.append((str(label) if label else regime.describe(), regime))
        else:
            raise RegimeError(f"sequence[{i}]: expected a regime name or object, got {type(item).__name__}")
    return out


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 and JSON do.

    PyYAML implements YAML 1.1, whose floats need a dot and a signed exponent, so
    ``emission_cap: 1e6`` or ``carbon_tax: 1.5e2`` would arrive as text and be refused as
    "not a number"; whose integers with a leading zero are octal and whose ``a:b:c`` are
    base 60, so ``start: 026`` was period 22, ``carbon_tax: 0100`` 64 EUR/t and
    ``emission_cap: 20:00:00`` 72,000 kg CO2, without a word (``start: 08``, no octal, was
    refused). Here a number is decimal (``0x``/``0o`` say otherwise, as in YAML 1.2), and
    ``20:00:00`` is text, which the field refuses by name. A key given twice in one mapping
    is refused (the safe loader keeps the last without a word). Every other rule of the
    safe loader stays as it is."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            # Merge keys ("<<: *base") are no repetition: flattening puts the merged pairs
            # first, and a key written in the mapping itself overrides one merged (YAML's
            # rule), so only the mapping's own keys are checked against each other.
            own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
            self.flatten_mapping(node)
            seen: set = set()
            for key_node, _ in node.value[len(node.value) - own:]:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} is given twice in one mapping (which one is meant?)",
                            key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | float:
        text = self.construct_scalar(node).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits[:2] in ("0x", "0o", "0b"):
            return sign * int(digits[2:], {"x": 16, "o": 8, "b": 2}[digits[1]])
        return whole_number(text)  # (decimal, a leading zero included)


_YAML_INT, _YAML_FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
# The safe loader's resolvers without its integers and floats (YAML 1.1's leading-zero octal
# and base 60), then those of YAML 1.2's core schema; what YAML 1.1 also read and nothing
# else means is kept: underscores between digits (1_000), a sign before 0x, 0o, and 0b.
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_YAML_INT, _YAML_FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YamlLoader.add_implicit_resolver(
    _YAML_INT, re.compile(r"^[-+]?(?:[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$"), list("-+0123456789"))
_YamlLoader.add_implicit_resolver(
    _YAML_FLOAT,
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
_YamlLoader.add_constructor(_YAML_INT, _YamlLoader.construct_yaml_int)


#: The most values a YAML file may hold once its aliases are expanded. PyYAML shares an
#: aliased object rather than copying it, so "a billion laughs" (each level nine aliases of the
#: one before) parses at once, and then validating or printing it never ends.
MOST_YAML_VALUES = 1_000_000


def _expanded_values(node: yaml.Node, seen: dict[int, int]) -> int:
    """How many values ``node`` holds with its aliases expanded (each node counted once)."""
    if id(node) not in seen:
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_values(child, seen) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_values(k, seen) + _expanded_values(v, seen) for k, v in node.value)
        else:
            size = 1
        seen[id(node)] = size
    return seen[id(node)]


def _load_yaml(text: str, path: Path) -> Any:
    """``yaml.load`` with :class:`_YamlLoader`, refusing a file whose aliases expand beyond
    :data:`MOST_YAML_VALUES` before any object is built."""
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:  # (an empty document)
            return None
        if _expanded_values(node, {}) > MOST_YAML_VALUES:
            raise RegimeError(f"{path}: its aliases expand to more than {MOST_YAML_VALUES:,} values "
                              "(too many to be a moca file)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_structured(path: Path) -> Any:
    """Parse a YAML or JSON file; errors name the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # (a byte-order mark: JSON refused it, YAML did not)
    except OSError as err:
        raise RegimeError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise RegimeError(f"{path}: not a text file (UTF-8 YAML or JSON)") from None
    try:
        if str(path).endswith(".json"):
            return json.loads(text, object_pairs_hook=unique_keys, parse_int=whole_number)
        return _load_yaml(text, path)
    except RegimeError:
        raise
    except (ValueError, yaml.YAMLError) as err:  # (JSONDecodeError and unique_keys' refusal are ValueErrors)
        raise RegimeError(f"{path}: malformed {'JSON' if str(path).endswith('.json') else 'YAML'} "
                          f"({parse_problem(err)})") from None
    except RecursionError:  # (the parsers recurse per level: thousands of [ or { exhaust the stack)
        raise RegimeError(f"{path}: nested too deeply to be a moca file") from None


def sample_regime(rng: np.random.Generator, cap_probability: float = 0.25,
                  typical_emissions: float = 30000.0) -> Regime:
    """A random regime over the practical part of the spec's ranges (meta-training and tests).

    Each rule is present with some probability, so unregulated and single-rule regimes
    appear too; magnitudes are drawn where the rule changes what a good policy does.
    """
    r = float(rng.uniform(0.0, 0.5)) if rng.random() < 0.8 else 0.0
    tau = float(rng.choice([0.0, rng.uniform(0, 300), rng.uniform(300, 2000)], p=[0.35, 0.5, 0.15]))
    cap = float(rng.uniform(0.5, 1.5) * typical_emissions) if rng.random() < cap_probability else None
    lam = float(rng.uniform(0, 100)) if rng.random() < 0.4 else 0.0
    kappa = float(rng.uniform(0, 0.9)) if rng.random() < 0.3 else 0.0
    return Regime(recycled_content_min=r, carbon_tax=tau, emission_cap=cap, landfill_tax=lam, recovery_target=kappa)
