"""Demand forecasts fitted to the observed history, as a planner without the demand model
would make them: exponential smoothing (ETS, statsmodels' state-space ``ETSModel``).

A forecaster sees only a series of past demand (units per period, oldest first) and
returns point forecasts and sample paths of the next periods. It never reads a scenario's
draw parameters. What the series holds is the caller's choice; the peers give it

* CLSC-1: the ``L_r`` pre-horizon sales the state shows at ``t = 0`` (the only history a
  CLSC-1 scenario has) followed by the demand observed so far ``d_0 .. d_{t-1}``;
* CLSC-2: the scenario's 52-period ``demand_history`` followed by ``d_0 .. d_{t-1}``.

Refitting is the expensive part (a maximum-likelihood fit, ~20-200 ms), so the model's
parameters are re-estimated only every ``refit_every`` new observations; in between the
last estimates are run over the longer series (``ETSModel.smooth``, a filter pass of well
under a millisecond per period), which updates the level, trend and season to the newest
observation without re-optimising.

Why ETS from statsmodels rather than a hand-written smoother: the likelihood fit, the
admissible parameter region and the simulation of sample paths (used by the sampled-
scenario MPC) are exactly what that library maintains.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

SEASON = 52  # periods per year (weeks)


@dataclass(frozen=True)
class ForecastConfig:
    """Which model. ``kind="ets"``: ETS with ``trend`` additive (damped when ``damped``),
    ``seasonal`` ``"add"``, ``"mul"`` or None (a seasonal model is used only once the series
    has ``min_seasons * season`` observations; statsmodels needs two full years to start a
    52-week season); ``log``: model the log of demand (multiplicative level and season).
    ``kind="trig"``: the state-space form of simple exponential smoothing (a local level)
    with a trigonometric season of ``harmonics`` harmonics of period ``season``, on the log of
    demand (``UnobservedComponents``): two seasonal parameters instead of 52, so one year
    of history is enough."""

    kind: str = "ets"
    harmonics: int = 1

    trend: bool = True
    damped: bool = True
    seasonal: str | None = None
    season: int = SEASON
    min_seasons: float = 1.0
    log: bool = False
    refit_every: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("ets", "trig"):
            raise ValueError(f"kind={self.kind!r}: expected 'ets' or 'trig'")
        if self.seasonal not in (None, "add", "mul"):
            raise ValueError(f"seasonal={self.seasonal!r}: expected None, 'add' or 'mul'")
        if self.refit_every < 1:
            raise ValueError(f"refit_every={self.refit_every!r}: must be >= 1")


class DemandForecaster:
    """ETS forecasts of one demand series that grows by one observation a period.

    ``forecast(series, H)`` -> ``[H]`` mean forecast (units, >= 0);
    ``sample_paths(series, H, n, seed)`` -> ``[n, H]`` simulated futures of the fitted model.
    One forecaster per scenario: it caches the last fit of *its* series.
    """

    def __init__(self, config: ForecastConfig = ForecastConfig()):
        self.config = config
        self._params: np.ndarray | None = None
        self._fitted_len = -1
        self._spec: tuple | None = None
        self.fits = 0  # maximum-likelihood fits done (for the cost report)

    def _model(self, series: np.ndarray):
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        c = self.config
        if c.kind == "trig":
            from statsmodels.tsa.statespace.structural import UnobservedComponents

            y = np.log(np.maximum(series, 1.0))
            model = UnobservedComponents(y, level="local level",
                                         freq_seasonal=[{"period": c.season, "harmonics": c.harmonics}])
            return model, ("trig",)
        y = np.log(np.maximum(series, 1.0)) if c.log else np.maximum(series, 1e-3)
        seasonal = c.seasonal if c.seasonal and len(y) >= c.min_seasons * c.season + 2 else None
        if seasonal == "mul" and c.log:
            seasonal = "add"
        trend = "add" if c.trend and len(y) >= 4 else None
        spec = (trend, seasonal)
        model = ETSModel(y, error="add", trend=trend, damped_trend=bool(trend and c.damped), seasonal=seasonal,
                         seasonal_periods=c.season if seasonal else None, initialization_method="estimated")
        return model, spec

    def _results(self, series: np.ndarray):
        series = np.asarray(series, dtype=float)
        model, spec = self._model(series)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on short series
            stale = (self._params is None or spec != self._spec
                     or len(series) - self._fitted_len >= self.config.refit_every or len(series) < self._fitted_len)
            if stale:
                # Warm start from the last estimates of the same model: fewer L-BFGS iterations.
                start = self._params if self._params is not None and spec == self._spec else None
                extra = {"cov_type": "none"} if self.config.kind == "trig" else {}
                results = model.fit(start_params=start, disp=False, maxiter=200, **extra)
                self._params, self._fitted_len, self._spec = np.asarray(results.params), len(series), spec
                self.fits += 1
                return results
            # A filter pass is all a forecast needs (the state-space smoother costs ~25x more).
            if self.config.kind == "trig":
                return model.filter(self._params, cov_type="none")  # no parameter covariance: not used
            return model.smooth(self._params)

    def _back(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        if self.config.log:
            values = np.exp(np.clip(values, -20.0, 20.0))
        return np.maximum(values, 0.0)

    def forecast(self, series: np.ndarray, horizon: int) -> np.ndarray:
        """Mean forecast of the next ``horizon`` periods (units, >= 0)."""
        if len(series) < 2:
            level = float(series[-1]) if len(series) else 0.0
            return np.full(horizon, max(level, 0.0))
        results = self._results(series)
        if self.config.kind == "trig":
            prediction = results.get_forecast(horizon)
            mean = np.asarray(prediction.predicted_mean, dtype=float) + 0.5 * np.asarray(prediction.var_pred_mean)
            return np.maximum(np.exp(np.clip(mean, -20.0, 20.0)), 0.0)
        if self.config.log:
            # The mean of a log-normal forecast, not its median: exp(mu + var / 2).
            mu = np.asarray(results.forecast(horizon), dtype=float)
            var = float(np.var(np.asarray(results.resid)[-min(len(series), 104):]))
            return self._back(mu + 0.5 * var)
        return self._back(results.forecast(horizon))

    def sample_paths(self, series: np.ndarray, horizon: int, n: int, seed: int = 0) -> np.ndarray:
        """``[n, horizon]`` futures simulated from the fitted model (units, >= 0)."""
        if len(series) < 2:
            return np.tile(self.forecast(series, horizon), (n, 1))
        results = self._results(series)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.config.kind == "trig":
                paths = results.simulate(horizon, anchor="end", repetitions=n, rng=np.random.default_rng(seed))
                return np.exp(np.clip(np.asarray(paths, dtype=float).reshape(horizon, n).T, -20.0, 20.0))
            paths = results.simulate(horizon, anchor="end", repetitions=n, rng=np.random.default_rng(seed))
        return self._back(np.asarray(paths, dtype=float).reshape(horizon, n).T)


def forecast_errors(series_list: list[np.ndarray], start: int, config: ForecastConfig, horizon: int = 13,
                    every: int = 4) -> dict[str, float]:
    """Mean absolute percentage error of the forecasts of ``config`` on full series, the
    forecaster told the first ``start + t`` values at ``t = 0, every, 2 every, ...``
    (used to choose the forecaster on training scenarios)."""
    errors = []
    for series in series_list:
        forecaster = DemandForecaster(config)
        for t in range(0, len(series) - start - 1, every):
            known = series[: start + t]
            future = series[start + t: start + t + horizon]
            guess = forecaster.forecast(known, len(future))
            errors.append(np.mean(np.abs(guess - future) / np.maximum(future, 1.0)))
    return {"mape": float(np.mean(errors)), "forecasts": len(errors)}


@functools.lru_cache(maxsize=16)
def _harmonic_design(n: int, ahead: int, season: int):
    """``[n + ahead, 4]`` regressors (1, s / season, sin, cos) of periods ``0 .. n + ahead - 1``
    and the Gram matrix of the first ``n``: the same for every call with the same window,
    so built once (every period of every rollout asks for them)."""
    import torch

    s = torch.arange(n + ahead, dtype=torch.float64)
    angle = 2.0 * math.pi * s / season
    X = torch.stack([torch.ones_like(s), s / season, torch.sin(angle), torch.cos(angle)], dim=-1)
    seen = X[:n]
    return X, seen.T @ seen + 1e-9 * torch.eye(4, dtype=torch.float64)


@functools.lru_cache(maxsize=16)
def _level_weights(n: int, alpha: float, dtype):
    """Exponential-smoothing weights of ``n`` periods, oldest first (the oldest carries the
    start value's weight)."""
    import torch

    weights = alpha * (1.0 - alpha) ** torch.arange(n - 1, -1, -1, dtype=dtype)
    weights[0] = (1.0 - alpha) ** (n - 1)
    return weights


def seasonal_level_forecast(demand_seen, ahead: int, alpha: float = 0.3, season: int = SEASON):
    """``[B, ahead]`` mean forecasts (units) of ``d_t .. d_{t+ahead-1}`` from the demand seen so
    far, ``demand_seen`` ``[B, n]`` (torch, oldest first: the 52-period history and
    ``d_0 .. d_{t-1}``).

    A yearly harmonic (``a + b s + c sin + d cos`` fitted to log demand by least squares over
    everything seen; the linear term soaks up the drift so it does not bend the season) gives
    the seasonal factor; the level is an exponentially weighted mean (weight ``alpha`` on
    the newest period) of the demand divided by that factor, in units, so it is a mean
    rather than a median of the log-normal noise and follows a level jump within a few
    periods. Written by hand rather than with statsmodels because it runs inside every
    period of a batched, differentiable training rollout (tens of microseconds per call for
    a whole batch, against ~1 ms per series for a state-space filter); the statsmodels
    forecaster in :class:`DemandForecaster` stays the MPC peers'."""
    import torch

    values = torch.as_tensor(demand_seen)
    dtype = values.dtype if values.is_floating_point() else torch.float64
    values = values.to(dtype)
    if values.ndim != 2 or values.shape[1] < 4:
        raise ValueError(f"demand_seen: expected [B, n >= 4] units, got {list(values.shape)}")
    n = values.shape[1]
    X, gram = _harmonic_design(n, ahead, season)
    seen = X[:n]
    y = torch.log(torch.clamp(values.detach().to(torch.float64), min=1.0))
    beta = torch.linalg.solve(gram, seen.T @ y.T).T  # [B, 4]
    factor = torch.exp(beta[:, 2:] @ X[:, 2:].T).to(dtype)  # [B, n + ahead]
    level = (values / factor[:, :n]) @ _level_weights(n, alpha, dtype)
    return level[:, None] * factor[:, n:]


__all__ = ["DemandForecaster", "ForecastConfig", "forecast_errors", "SEASON", "seasonal_level_forecast"]
