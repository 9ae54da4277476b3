"""A base rule that starts where a re-tuned rule would: regime -> threshold parameters.

The tuned threshold rule (:mod:`moca.baselines.threshold`) follows a regime's economics
because it is re-tuned for each regime by simulation (~10 s). moca's own base rule
(:func:`moca.policy.base_action`) reads only the mandate and the landfill tax, so a carbon
tax or a cap must be learned by the LSTM on top of it. This module learns, *offline and
once*, what the re-tuning would give:

1. :func:`fit_threshold_map` draws regimes from the meta-training distribution
   (:func:`moca.meta.sample_task`), tunes the threshold rule for each on training-stream
   scenarios, and interpolates the tuned parameters over the regime features with a
   smoothed linear radial basis function plus a constant (``scipy.interpolate.RBFInterpolator``:
   few, noisy, 6-dimensional samples, where a smooth interpolant beats a network);
2. :class:`MappedThresholdPolicy` is the threshold rule whose six parameters come from the
   map for the regime in force, period by period (no tuning at deployment);
3. :class:`MappedPolicy` is moca's LSTM over *that* rule: the rule's action replaces the
   base columns of the features, so a fresh head (zero) is exactly the mapped rule and
   adaptation learns corrections of it with the usual :func:`moca.meta.adapt`.

The map's parameters are in the tuner's unit box (``u`` with ``threshold = low + span *
u ** power``), clipped to it after interpolation. The mapped rule's action is computed in
numpy from the observed state, so backpropagation through the episode sees the base
action as a constant of the state (the residual's gradient is exact; the state's effect
through the base rule is left out).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.interpolate import RBFInterpolator
from torch import Tensor

from moca.baselines.threshold import SEARCH_POWER, THRESHOLD_NAMES, ThresholdPolicy, threshold_bounds, tune_threshold
from moca.policy import LSTMPolicy, PolicyConfig, features, reference_emissions
from moca.regime import Regime
from moca.scenario import Params
from moca.sim import R_CAP, R_LANDFILL, R_MANDATE, R_RECOVERY, R_TAX, Observation


class RegimeMapError(ValueError):
    """Bad input to the regime map; the message names the argument and the problem."""


def regime_features(rows: np.ndarray, params: Params = Params()) -> np.ndarray:
    """``[N, 6]`` features of regime rows ``[N, 5]`` (the policy's regime features:
    mandate, tax / 1000, has cap, reference emissions / cap clipped to 4, landfill / 100,
    recovery target)."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    cap = rows[:, R_CAP]
    has_cap = np.isfinite(cap)
    tight = np.where(has_cap, np.clip(reference_emissions(params) / np.where(has_cap, cap, 1.0), 0.0, 4.0), 0.0)
    return np.stack([rows[:, R_MANDATE], rows[:, R_TAX] / 1000.0, has_cap.astype(np.float64), tight,
                     rows[:, R_LANDFILL] / 100.0, rows[:, R_RECOVERY]], axis=-1)


class ThresholdMap:
    """Regime rows -> the six thresholds (units of :data:`THRESHOLD_NAMES`), interpolated
    from per-regime tunings. Serialisable as plain JSON (:meth:`to_dict`)."""

    def __init__(self, regimes: np.ndarray, units: np.ndarray, params: Params = Params(), smoothing: float = 0.05):
        regimes, units = np.asarray(regimes, dtype=np.float64), np.asarray(units, dtype=np.float64)
        if regimes.ndim != 2 or regimes.shape[1] != 5 or units.shape != (regimes.shape[0], len(THRESHOLD_NAMES)):
            raise RegimeMapError(f"regimes/units: shapes {list(regimes.shape)} and {list(units.shape)}, "
                                 f"expected [N, 5] and [N, {len(THRESHOLD_NAMES)}]")
        if regimes.shape[0] < 8:
            raise RegimeMapError(f"regimes: {regimes.shape[0]} tuned regimes, the map needs at least 8")
        if not (np.isfinite(units).all() and math.isfinite(smoothing) and smoothing >= 0):
            raise RegimeMapError("units/smoothing: must be finite (smoothing >= 0)")
        self.regimes, self.units, self.params, self.smoothing = regimes, np.clip(units, 0.0, 1.0), params, smoothing
        bounds = threshold_bounds(params)
        self._low, self._span = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
        self._rbf = RBFInterpolator(regime_features(regimes, params), self.units, kernel="linear",
                                    smoothing=smoothing, degree=0)

    def unit(self, rows: np.ndarray) -> np.ndarray:
        """``[N, 6]`` thresholds in the tuner's unit box for regime rows ``[N, 5]``."""
        return np.clip(self._rbf(regime_features(rows, self.params)), 0.0, 1.0)

    def thresholds(self, rows: np.ndarray) -> np.ndarray:
        """``[N, 6]`` thresholds in their units for regime rows ``[N, 5]``."""
        return self._low + self._span * self.unit(rows) ** SEARCH_POWER

    def candidates(self, row: np.ndarray, k: int = 8) -> np.ndarray:
        """``[k + 1, 6]`` thresholds for one regime row: the map's, then those tuned for the
        ``k`` nearest regimes of the fit (distance between regime features)."""
        feats = regime_features(self.regimes, self.params)
        distance = np.linalg.norm(feats - regime_features(row, self.params), axis=1)
        nearest = np.argsort(distance, kind="stable")[:k]
        tuned = self._low + self._span * self.units[nearest] ** SEARCH_POWER
        return np.concatenate([self.thresholds(row), tuned])

    def to_dict(self) -> dict[str, Any]:
        return {"regimes": [[None if not math.isfinite(x) else float(x) for x in r] for r in self.regimes],
                "units": self.units.tolist(), "smoothing": self.smoothing, "params": self.params.model_dump()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ThresholdMap":
        try:
            rows = np.array([[math.inf if x is None else float(x) for x in r] for r in data["regimes"]])
            return cls(rows, np.asarray(data["units"], dtype=np.float64), Params(**data.get("params", {})),
                       float(data.get("smoothing", 0.05)))
        except (KeyError, TypeError, ValueError) as err:
            raise RegimeMapError(f"threshold map: malformed ({err})") from None


#: The map shipped in the package (``moca.data``), fitted by the command in its ``map.json``.
SHIPPED_MAP = "map-clsc1"
MAP_FORMAT = "moca-threshold-map/1"
MAP_FILE = "map.json"


def save_map(folder: str | Path, threshold_map: ThresholdMap, fit: Mapping[str, Any]) -> Path:
    """Write ``folder/map.json``: the map as plain JSON (:meth:`ThresholdMap.to_dict`: the
    tuned regimes and their thresholds), with the fit's record (command, seconds, ...)."""
    from moca.files import write_atomic

    if str(folder) == SHIPPED_MAP:  # (it wrote ./map-clsc1, and loading that name gave the shipped map back)
        raise RegimeMapError(f"{folder}: the name of the shipped map, which loading it reads; give another folder")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / MAP_FILE, json.dumps({"format": MAP_FORMAT, "map": threshold_map.to_dict(),
                                                "fit": dict(fit)}, indent=1) + "\n")
    return folder


def _map_folder(folder: str | Path) -> Path:
    if str(folder) == SHIPPED_MAP:
        from importlib import resources

        return Path(str(resources.files("moca") / "data" / SHIPPED_MAP))
    return Path(folder)


def validate_map_dict(data: Any, where: str = "map") -> None:
    """Check the fields of :meth:`ThresholdMap.to_dict`'s output; a :class:`RegimeMapError`
    names the first bad field (``where.field``) and the problem."""
    if not isinstance(data, Mapping):
        raise RegimeMapError(f"{where}: expected an object, got {type(data).__name__}")
    for name in ("regimes", "units"):
        if name not in data:
            raise RegimeMapError(f"{where}.{name}: missing")
        if not isinstance(data[name], list) or not data[name]:
            raise RegimeMapError(f"{where}.{name}: expected a non-empty list of rows")
    if len(data["regimes"]) != len(data["units"]):
        raise RegimeMapError(f"{where}.units: {len(data['units'])} rows for {len(data['regimes'])} regimes")
    for name, width in (("regimes", 5), ("units", len(THRESHOLD_NAMES))):
        for i, row in enumerate(data[name]):
            if not isinstance(row, list) or len(row) != width:
                raise RegimeMapError(f"{where}.{name}[{i}]: expected {width} numbers, got {row!r:.60}")
            for j, x in enumerate(row):
                if x is None and name == "regimes" and j == R_CAP:
                    continue  # no emission cap
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                    raise RegimeMapError(f"{where}.{name}[{i}][{j}]: {x!r} is not a finite number")
                if name == "units" and not 0.0 <= x <= 1.0:
                    raise RegimeMapError(f"{where}.{name}[{i}][{j}]: {x!r} outside the tuner's unit box [0, 1]")
    smoothing = data.get("smoothing", 0.05)
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not (
            math.isfinite(smoothing) and smoothing >= 0):
        raise RegimeMapError(f"{where}.smoothing: {smoothing!r} must be a finite number >= 0")
    if not isinstance(data.get("params", {}), Mapping):
        raise RegimeMapError(f"{where}.params: expected an object")
    try:
        Params(**data.get("params", {}))
    except (ValueError, TypeError) as err:
        raise RegimeMapError(f"{where}.params: invalid ({str(err).strip().splitlines()[0]})") from None


def load_map(folder: str | Path = SHIPPED_MAP) -> tuple[ThresholdMap, dict[str, Any]]:
    """Read ``folder/map.json`` (``map-clsc1`` = the shipped map); returns the map and the
    fit's record. Every problem is a one-line :class:`RegimeMapError` naming the field."""
    path = _map_folder(folder) / MAP_FILE
    if not path.is_file():
        raise RegimeMapError(f"threshold map {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RegimeMapError(f"threshold map {path}: not valid JSON ({err})") from None
    except RecursionError:
        raise RegimeMapError(f"threshold map {path}: nested too deeply to be a map") from None
    if not isinstance(data, dict) or data.get("format") != MAP_FORMAT:
        raise RegimeMapError(f"threshold map {path}: format: not a {MAP_FORMAT} file")
    validate_map_dict(data.get("map"), f"threshold map {path}: map")
    if not isinstance(data.get("fit", {}), dict):
        raise RegimeMapError(f"threshold map {path}: fit: expected an object")
    return ThresholdMap.from_dict(data["map"]), data.get("fit", {})


def fit_threshold_map(regimes: int = 48, seed: int = 0, budget: int = 600, train_seeds: int = 8,
                      params: Params = Params(), smoothing: float = 0.05,
                      progress: Callable[[int, int], None] | None = None) -> tuple[ThresholdMap, dict[str, Any]]:
    """Tune the threshold rule on ``regimes`` regimes of the meta-training distribution
    (training-stream scenarios, never test ones) and fit the map; returns the map and a
    record (seconds, tuning seconds per regime, the sampled regimes)."""
    from moca.meta import sample_task

    if regimes < 8:
        raise RegimeMapError(f"regimes: {regimes!r} must be >= 8")
    rng = np.random.default_rng([seed, 10])
    started = time.perf_counter()
    bounds = threshold_bounds(params)
    low, span = bounds[:, 0], bounds[:, 1] - bounds[:, 0]
    rows, units, seconds = [], [], []
    for i in range(regimes):
        regime = sample_task(rng, params)
        t0 = time.perf_counter()
        rule = tune_threshold(regime, params, train_seeds=train_seeds, budget=budget, seed=seed)
        seconds.append(time.perf_counter() - t0)
        th = rule.thresholds.numpy()
        rows.append(regime.as_row())
        units.append(np.clip((th - low) / np.where(span > 0, span, 1.0), 0.0, 1.0) ** (1.0 / SEARCH_POWER))
        if progress:
            progress(i + 1, regimes)
    fitted = ThresholdMap(np.array(rows), np.array(units), params, smoothing)
    record = {"regimes": regimes, "seed": seed, "budget": budget, "train_seeds": train_seeds,
              "smoothing": smoothing, "tuning_seconds": seconds, "seconds": time.perf_counter() - started}
    return fitted, record


def select_thresholds(threshold_map: ThresholdMap, regime: Regime, scenarios: Sequence[Any], k: int = 8
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """Adaptation of the base rule without gradients: the map's thresholds and the ``k``
    nearest tunings (:meth:`ThresholdMap.candidates`) are simulated on ``scenarios`` (the
    regime's support scenarios) in ONE batched rollout through the safety layer; the one
    of least mean cost is returned with the costs of all."""
    from moca import safety
    from moca.sim import ScenarioBatch, rollout

    params = threshold_map.params
    candidates = threshold_map.candidates(regime.as_row()[None], k)
    base = ScenarioBatch.from_scenarios(list(scenarios))
    n, c = base.size, candidates.shape[0]
    batch = ScenarioBatch(params, base.demand.repeat(c, 1), base.return_frac.repeat(c, 1), base.regime.repeat(c, 1, 1))
    with torch.no_grad():
        out = rollout(batch, ThresholdPolicy(np.repeat(candidates, n, axis=0), params), safety.project_batch)
    costs = out.total_cost.double().reshape(c, n).mean(-1).numpy()
    best = int(np.argmin(costs))
    return candidates[best], {"chosen": best, "costs": costs.tolist()}


def _same_regime(rows: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Rows equal to ``row`` up to float32 round-off (training batches hold the regime in float32)."""
    return np.all(np.isclose(rows, row, rtol=1e-6, atol=1e-9) | (np.isinf(rows) & np.isinf(row)), axis=1)


class MappedThresholdPolicy(ThresholdPolicy):
    """The threshold rule with its parameters read from a :class:`ThresholdMap` for the
    regime in force in each row, each period (a regime change mid-episode is followed)."""

    def __init__(self, threshold_map: ThresholdMap, params: Params | None = None):
        params = params or threshold_map.params
        super().__init__(np.zeros(len(THRESHOLD_NAMES)), params)
        self.map = threshold_map
        self.pinned: list[tuple[np.ndarray, np.ndarray]] = []  # (regime row, thresholds) chosen by adaptation
        self._key: bytes | None = None

    def reset(self, batch: Any) -> None:
        super().reset(batch)
        self._key = None

    def act(self, obs: Observation) -> Tensor:
        regime = obs.regime.detach().cpu().numpy()
        key = regime.tobytes()
        if key != self._key:  # the map is evaluated only when the rows' regimes change
            dtype = np.float32 if obs.state.virgin.dtype == torch.float32 else np.float64
            th = self.map.thresholds(regime)
            for row, values in self.pinned:
                th[_same_regime(regime, row)] = values
            th = th.astype(dtype)
            self._th = [np.ascontiguousarray(th[:, i]) for i in range(th.shape[1])]
            self._key = key
        return super().act(obs)


class MappedPolicy(LSTMPolicy):
    """moca's LSTM over the mapped threshold rule: the rule's (raw) action fills the base
    columns of each feature frame, so the structured output is ``rule + residual``."""

    def __init__(self, threshold_map: ThresholdMap, params: Params | None = None,
                 config: PolicyConfig = PolicyConfig()):
        if not config.structured:
            raise RegimeMapError("config.structured: a mapped policy corrects its base rule; it must be structured")
        params = params or threshold_map.params
        super().__init__(params, config)
        self.threshold_map = threshold_map
        self._rule = MappedThresholdPolicy(threshold_map, params)
        self._scale = np.asarray(params.action_scale, dtype=np.float64)
        #: > 0: at the start of each episode, every regime of the batch not pinned yet gets
        #: its base picked among the map's and this many nearest tunings, on 4
        #: training-stream scenarios (for meta-training over the base used at adaptation).
        self.auto_select = 0
        self._selected: dict[bytes, np.ndarray] = {}

    def pin(self, regime: Regime, thresholds: np.ndarray) -> None:
        """Use ``thresholds`` (e.g. from :func:`select_thresholds`) whenever ``regime`` is in force."""
        row = regime.as_row()
        self._rule.pinned = [(r, v) for r, v in self._rule.pinned if not _same_regime(r[None], row)[0]]
        self._rule.pinned.append((row, np.asarray(thresholds, dtype=np.float64).copy()))
        self._rule._key = None

    def observe(self, obs: Observation) -> Tensor:
        x = features(obs, self.config)
        if obs.t == 0:  # a new episode: the rule's per-episode set-up (forecast, horizon)
            self._rule.reset(SimpleNamespace(params=obs.params, size=x.shape[0], horizon=obs.params.horizon,
                                             demand=x, dtype=obs.state.virgin.dtype))
            if self.auto_select:
                self._select_for(obs.regime.detach().double().cpu().numpy())
        action = self._rule.act(obs)
        x = x.clone()
        x[:, self.layout.base] = (action / torch.as_tensor(self._scale, dtype=action.dtype)).to(x.dtype)
        return x


def _auto_select(self: MappedPolicy, rows: np.ndarray) -> None:
    from moca.scenario import draw_training_scenarios

    pins = []
    for row in np.unique(rows, axis=0):
        key = np.round(row.astype(np.float32), 6).tobytes()
        if key not in self._selected:
            regime = Regime.from_row(row)
            scenarios = draw_training_scenarios(4, regime, self.params)
            self._selected[key] = select_thresholds(self.threshold_map, regime, scenarios, self.auto_select)[0]
        pins.append((row, self._selected[key]))
    self._rule.pinned = pins  # only this batch's regimes: the list stays short
    self._rule._key = None


MappedPolicy._select_for = _auto_select


class DeployedRule:
    """The mapped threshold rule for one scenario on the deployment path (float64 numpy in,
    raw rule action ``[6]`` out): what :class:`moca.policy.DeployedPolicy` puts into the
    base columns of a :class:`MappedPolicy`. The rule is the tuner's vectorised one
    (:meth:`ThresholdPolicy.act`) on a batch of one; the map is evaluated only when the
    regime changes."""

    def __init__(self, rule: MappedThresholdPolicy):
        self.rule, self.params = rule, rule.params
        self._started = False

    def reset(self) -> None:
        p = self.params
        self.rule.reset(SimpleNamespace(params=p, size=1, horizon=p.horizon, demand=torch.zeros(1, dtype=torch.float64),
                                        dtype=torch.float64))
        self._started = True

    def __call__(self, t: int, stocks: Sequence[float], pipeline: Sequence[float], sales_history: Sequence[float],
                 regime: Sequence[float]) -> np.ndarray:
        if t == 0 or not self._started:
            self.reset()
        one = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
        state = SimpleNamespace(virgin=one(stocks[0]), recycled=one(stocks[1]), product=one(stocks[2]),
                                cores=one(stocks[3]), backlog=one(stocks[4]),
                                pipeline=one([float(x) for x in pipeline]),
                                sales_history=one([float(x) for x in sales_history]))
        obs = SimpleNamespace(params=self.params, t=t, state=state, regime=one([float(x) for x in regime]))
        return self.rule.act(obs)[0].numpy().astype(np.float64)


def _deployed_base_rule(self: MappedPolicy) -> DeployedRule:
    import copy

    return DeployedRule(copy.deepcopy(self._rule))


MappedPolicy.deployed_base_rule = _deployed_base_rule


def mapped_policy(threshold_map: ThresholdMap, config: PolicyConfig = PolicyConfig(), seed: int = 0) -> MappedPolicy:
    """A fresh :class:`MappedPolicy` (head zero: it acts as the mapped rule until adapted)."""
    torch.manual_seed(seed)
    return MappedPolicy(threshold_map, threshold_map.params, config)


# ----------------------------------------------------------------------------------------
# Checkpoints of an adapted mapped policy (safetensors + JSON, as moca.checkpoint)
# ----------------------------------------------------------------------------------------

MAPPED_KIND = "mapped-policy"


def _row_json(row: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(float(x)) else float(x) for x in row]


def save_mapped_policy(directory: str | Path, module: MappedPolicy, metadata: Mapping[str, Any]) -> Path:
    """Write ``module`` as a checkpoint: its LSTM weights (safetensors) and, in the JSON,
    the params, the policy config, the whole threshold map and the pinned base thresholds
    (everything :func:`load_mapped_policy` needs; no pickle)."""
    from moca import checkpoint

    meta = checkpoint.merged({"kind": MAPPED_KIND, "model": "CLSC-1", "params": module.params.model_dump(mode="json"),
                              "policy": module.config.model_dump(mode="json"), "map": module.threshold_map.to_dict(),
                              "pinned": [{"regime": _row_json(row), "thresholds": [float(x) for x in values]}
                                         for row, values in module._rule.pinned]}, metadata)
    return checkpoint.save(directory, dict(module.state_dict()), meta)


def load_mapped_policy(directory: str | Path) -> tuple[MappedPolicy, dict[str, Any]]:
    """Read a checkpoint of :func:`save_mapped_policy`; every problem is a one-line
    :class:`moca.checkpoint.CheckpointError` naming the checkpoint and the field."""
    from moca import checkpoint
    from moca.checkpoint import CheckpointError

    weights, meta, where = checkpoint.load_kind(directory, MAPPED_KIND)
    params, config = checkpoint.blocks(meta, where)

    def make() -> MappedPolicy:
        validate_map_dict(meta.get("map"), "map")
        return MappedPolicy(ThresholdMap.from_dict(meta["map"]), Params(**params), PolicyConfig(**config))

    module = checkpoint.build_module(where, make, (RegimeMapError,))
    pinned = meta.get("pinned", [])
    if not isinstance(pinned, list):
        raise CheckpointError(f"checkpoint {where}: pinned: expected a list")
    for i, entry in enumerate(pinned):
        try:
            row = np.array([math.inf if x is None else float(x) for x in entry["regime"]])
            values = np.asarray(entry["thresholds"], dtype=np.float64)
            if row.shape != (5,) or values.shape != (len(THRESHOLD_NAMES),) or not np.isfinite(values).all():
                raise ValueError("expected a regime row of 5 and 6 finite thresholds")
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {where}: pinned[{i}]: malformed ({err})") from None
        module.pin(Regime.from_row(row), values)
    checkpoint.check_compatible(weights, module, where)
    module.load_state_dict(weights)
    return module, meta


def load_learned_policy(directory: str | Path) -> tuple[LSTMPolicy, dict[str, Any]]:
    """A CLSC-1 learned policy checkpoint of any kind: moca's LSTM (``lstm-policy``), the
    LSTM over the mapped rule (``mapped-policy``) or over the rolling LP (``mpc-policy``)."""
    from moca import checkpoint

    kind = checkpoint.declared_kind(directory)  # (None: the plain loader says what is wrong)
    if kind == MAPPED_KIND:
        return load_mapped_policy(directory)
    from moca.mpc_base import MPC_KIND, load_mpc_policy

    if kind == MPC_KIND:
        return load_mpc_policy(directory)
    return checkpoint.load_policy(directory)


def learned_policy_on(directory: str | Path, params: Params) -> LSTMPolicy:
    """:func:`load_learned_policy` on the chain of ``params`` (:func:`moca.policy.with_params`);
    a mapped policy runs only on the chain its threshold map was fitted for."""
    from moca.policy import with_params

    module, _ = load_learned_policy(directory)
    if isinstance(module, MappedPolicy) and params != module.params:
        raise RegimeMapError("--params: a mapped policy runs only on the chain its threshold map was fitted for")
    return with_params(module, params)


def save_learned_policy(directory: str | Path, module: LSTMPolicy, metadata: Mapping[str, Any]) -> Path:
    """Write a CLSC-1 learned policy of any kind as the checkpoint :func:`load_learned_policy`
    reads back (``mapped-policy``, ``mpc-policy`` or moca's plain ``lstm-policy``)."""
    from moca import checkpoint
    from moca.mpc_base import MPCBasePolicy, save_mpc_policy

    if isinstance(module, MappedPolicy):
        return save_mapped_policy(directory, module, metadata)
    if isinstance(module, MPCBasePolicy):
        return save_mpc_policy(directory, module, metadata)
    return checkpoint.save_policy(directory, module, dict(metadata))


# ----------------------------------------------------------------------------------------
# Side by side with today's policy and the re-tuned peers
# ----------------------------------------------------------------------------------------


def compare(regimes: Mapping[str, Regime], threshold_map: ThresholdMap, steps: Sequence[int] = (1, 3, 5),
            test_size: int = 20, first_seed: int = 1000, params: Params = Params(), include_default: bool = True,
            include_mpc: bool = True, select: int = 8, progress: Callable[[str], None] | None = None,
            residual: MappedPolicy | None = None) -> dict[str, Any]:
    """Per regime, scores on its test scenarios (seeds ``first_seed``+, training path for
    the learned policies as in ``moca run``'s generalisation table, deployment path for the
    peers): today's meta-init (``default``) and the mapped policy after 0 and each of
    ``steps`` adaptation steps (with the adaptation seconds), the threshold rule re-tuned
    for the regime (with its tuning seconds) and the MPC. With ``select`` > 0 the mapped
    policy first picks its base thresholds among the map's and the ``select`` nearest
    tunings on the support scenarios (:func:`select_thresholds`; its seconds count as
    adaptation seconds from step 0 on); ``mapped_rule_only`` is the map's rule alone.
    ``residual``: a (meta-trained) mapped policy whose LSTM weights start the adaptation
    instead of a fresh head."""
    from moca import checkpoint
    from moca.evaluation import evaluate_policy as evaluate_deployed
    from moca.experiment import build_policy
    from moca.meta import SUPPORT_SEEDS, OracleCache, adapt
    from moca.policy import evaluate_policy
    from moca.regime import RegimeSchedule

    cache = OracleCache(params)
    most = max(steps, default=0)
    default_module = checkpoint.load_policy("default")[0] if include_default else None
    out: dict[str, Any] = {"steps": list(steps), "test_seeds": [first_seed, first_seed + test_size - 1],
                           "regimes": {}}
    for label, regime in regimes.items():
        tests = cache.scenarios(range(first_seed, first_seed + test_size), regime)
        oracle = cache.costs(tests)
        entry: dict[str, Any] = {"regime": regime.model_dump()}
        mapped = mapped_policy(threshold_map)
        entry["mapped_rule_only"] = evaluate_policy(mapped, None, tests, oracle)["score"]  # a fresh head: the rule
        if residual is not None:
            mapped.load_state_dict(residual.state_dict())
        selecting = 0.0
        if select:
            started = time.perf_counter()
            chosen, info = select_thresholds(threshold_map, regime, cache.scenarios(SUPPORT_SEEDS[:8], regime), select)
            mapped.pin(regime, chosen)
            selecting = time.perf_counter() - started
            entry["selection"] = {**info, "seconds": selecting}
        learned = {"mapped": (mapped, selecting)}
        if default_module is not None:
            learned["default"] = (default_module, 0.0)
        for name, (module, extra) in learned.items():
            if progress:
                progress(f"{label}: {name}")
            _, curve = adapt(module, None, regime, most, validation=tests, cache=cache)
            entry[name] = {"scores": {str(k): curve[k]["score"] for k in (0, *steps) if k <= most},
                           "seconds": {str(k): extra + curve[k]["seconds"] for k in (0, *steps) if k <= most},
                           "violations": int(sum(c["violations"] for c in curve))}
        plan = RegimeSchedule.constant(regime)
        if progress:
            progress(f"{label}: threshold (re-tuned)")
        started = time.perf_counter()
        rule = build_policy("threshold", plan, params=params)
        tuning = time.perf_counter() - started
        summary = evaluate_deployed("threshold", rule, tests, oracle).summary()
        entry["threshold"] = {"score": summary["score"], "tuning_seconds": tuning, "violations": summary["violations"]}
        if include_mpc:
            if progress:
                progress(f"{label}: mpc")
            summary = evaluate_deployed("mpc", build_policy("mpc", plan, params=params), tests, oracle).summary()
            entry["mpc"] = {"score": summary["score"], "tuning_seconds": 0.0, "violations": summary["violations"]}
        out["regimes"][label] = entry
    return out
