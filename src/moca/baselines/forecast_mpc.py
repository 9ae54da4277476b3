"""MPC told only what a planner knows: demand forecast by ETS fitted to the observed history.

:class:`moca.baselines.MPCPolicy` plans with the seasonal mean of the scenario generator,
i.e. it is *told the demand model* (the "informed" MPC). The peers here are not:

* :class:`ForecastMPCPolicy` -- the same rolling 13-period LP with a point forecast from
  :class:`moca.forecast.DemandForecaster` (exponential smoothing refitted as demand is
  observed) and the return fraction estimated as the mean of the fractions observed so far;
  its safety stock is tuned on training scenarios (:func:`tune_safety_stock`);
* :class:`SampledMPCPolicy` -- the two-stage sample-average version: ``samples`` demand
  paths simulated from the fitted ETS model, one copy of the window LP per path, the first
  period's action shared by all copies (non-anticipativity), the mean cost minimised. The
  first-stage action then hedges against the spread of the forecast instead of against a
  fixed buffer.

What each is told on CLSC-1 (no history series in a CLSC-1 scenario): the ``L_r`` = 6
pre-horizon sales the state shows at ``t = 0`` and the demand observed so far,
``d_0 .. d_{t-1}``; the return fractions observed so far; the regime in force; the state.
Not the demand base, amplitude, noise or the return mean of the scenario generator.
Less than a year of observations cannot identify a 52-week season, so the forecaster is
simple exponential smoothing (ETS(A,N,N)): measured on 8 training scenarios, 13-period
forecasts every 4 periods, its mean absolute percentage error is 22.1%, against 26.5%
with a damped trend, 29.0% with a trend, and 11.0% for the generator's seasonal mean.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import highspy
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from moca.baselines.mpc import MPCPolicy
from moca.forecast import DemandForecaster, ForecastConfig
from moca.oracle import (ACTION_COLS, N_COL, Basis, OracleError, WindowLP, _solver, build_lp, rerun_with_presolve,
                         solve_window)
from moca.sim import Observation, ScenarioBatch

#: CLSC-1's forecaster (see the module docstring for why no trend and no season).
CLSC1_FORECAST = ForecastConfig(trend=False, refit_every=4)


class ForecastMPCPolicy(MPCPolicy):
    """Rolling-horizon LP with an ETS demand forecast fitted to the observations so far.

    Arguments as :class:`MPCPolicy`, plus ``forecast`` (the ETS model) and, for the
    sampled version, ``samples`` paths and their ``seed``.
    """

    def __init__(self, horizon: int = 13, safety_stock: float = 100.0, safety_penalty: float = 1.0,
                 virgin_buffer: float = 500.0, virgin_buffer_penalty: float = 0.5,
                 forecast: ForecastConfig = CLSC1_FORECAST):
        super().__init__(horizon, safety_stock, safety_penalty, virgin_buffer, virgin_buffer_penalty)
        self.forecast = forecast

    def reset(self, batch: ScenarioBatch) -> None:
        super().reset(batch)
        self._series: list[list[float]] = [[] for _ in range(batch.size)]
        self._rho: list[list[float]] = [[] for _ in range(batch.size)]
        self._forecasters = [DemandForecaster(self.forecast) for _ in range(batch.size)]

    def observe(self, obs: Observation) -> None:
        """Record what period ``t`` revealed: ``d_{t-1}`` and ``rho_t`` (at ``t = 0`` the
        pre-horizon sales the state shows)."""
        history = obs.state.sales_history.detach().to(torch.float64).cpu().numpy()
        rho = obs.return_frac.detach().to(torch.float64).cpu().numpy()
        last = None if obs.last_demand is None else obs.last_demand.detach().to(torch.float64).cpu().numpy()
        for i in range(len(self._series)):
            if obs.t == 0 or not self._series[i]:
                self._series[i] = [float(x) for x in history[i]]
            elif last is not None:
                self._series[i].append(float(last[i]))
            self._rho[i].append(float(rho[i]))

    def act(self, obs: Observation) -> Tensor:
        self.observe(obs)
        state = obs.state
        stocks = state.stocks().detach().to(torch.float64).cpu().numpy()
        pipeline = state.pipeline.detach().to(torch.float64).cpu().numpy()
        history = state.sales_history.detach().to(torch.float64).cpu().numpy()
        regime = obs.regime.detach().to(torch.float64).cpu().numpy()
        T = self.episode_length
        actions = np.empty((stocks.shape[0], 6))
        for i in range(stocks.shape[0]):
            H = max(1, min(self.horizon, T - obs.t))
            base = self.window(obs.params, obs.t, stocks[i], pipeline[i], history[i], regime[i],
                               demand=np.zeros(H), return_frac=float(np.mean(self._rho[i])))
            actions[i] = self._first_action(obs.params, base, i)
        return torch.as_tensor(actions, dtype=state.virgin.dtype, device=state.virgin.device)

    def _first_action(self, params, base, i: int) -> np.ndarray:
        demand = self._forecasters[i].forecast(np.asarray(self._series[i]), base.horizon)
        plan = solve_window(params, replace(base, demand=demand), start=self._bases[i])
        self._bases[i] = plan.basis
        return plan.actions[0]


class SampledMPCPolicy(ForecastMPCPolicy):
    """Two-stage sample-average MPC: one window LP per simulated demand path, the first
    period's action common to all of them, the mean cost minimised."""

    def __init__(self, samples: int = 8, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if samples < 1:
            raise ValueError(f"samples={samples!r}: must be >= 1")
        self.samples = samples
        self.seed = seed

    def _first_action(self, params, base, i: int) -> np.ndarray:
        n_done = len(self._rho[i])
        paths = self._forecasters[i].sample_paths(np.asarray(self._series[i]), base.horizon, self.samples,
                                                  seed=self.seed + 7919 * n_done)
        lps = [build_lp(params, replace(base, demand=path)) for path in paths]
        x, basis = solve_two_stage(lps, np.arange(N_COL)[ACTION_COLS], start=self._bases[i])
        self._bases[i] = basis
        return x[0, ACTION_COLS].copy()


def solve_two_stage(lps: Sequence[WindowLP], first_stage: np.ndarray,
                    start: Basis | None = None) -> tuple[np.ndarray, Basis]:
    """Minimise the mean cost of ``lps`` (same shape) with the columns ``first_stage`` of
    period 0 equal across them. Returns ``x`` of the first LP as ``[H, N_COL]`` and the
    optimal basis."""
    n = len(lps)
    rows, cols = lps[0].shape
    blocks = [sp.csc_matrix((lp.value, lp.index, lp.start), shape=(rows, cols)) for lp in lps]
    # Non-anticipativity: x^0_c - x^j_c = 0 for every first-stage column c and path j >= 1.
    k = len(first_stage)
    link_rows = np.repeat(np.arange((n - 1) * k), 2)
    link_cols = np.stack([np.tile(first_stage, n - 1),
                          (np.arange(1, n)[:, None] * cols + first_stage[None, :]).ravel()], axis=1).ravel()
    link_vals = np.tile([1.0, -1.0], (n - 1) * k)
    link = sp.csc_matrix((link_vals, (link_rows, link_cols)), shape=((n - 1) * k, n * cols))
    matrix = sp.vstack([sp.block_diag(blocks, format="csc"), link], format="csc")
    stacked = WindowLP(
        cost=np.concatenate([lp.cost for lp in lps]) / n,
        col_lower=np.concatenate([lp.col_lower for lp in lps]),
        col_upper=np.concatenate([lp.col_upper for lp in lps]),
        row_lower=np.concatenate([*(lp.row_lower for lp in lps), np.zeros((n - 1) * k)]),
        row_upper=np.concatenate([*(lp.row_upper for lp in lps), np.zeros((n - 1) * k)]),
        start=matrix.indptr.astype(np.int32), index=matrix.indices.astype(np.int32), value=matrix.data,
    )
    highs = _solver()
    stacked.pass_to(highs)
    if start is not None and start.shape == stacked.shape:
        highs.setBasis(start.highs)
    highs.run()
    status = highs.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        status = rerun_with_presolve(highs)
    if status != highspy.HighsModelStatus.kOptimal:
        raise OracleError(f"two-stage MPC LP not solved to optimality: {highs.modelStatusToString(status)!r}")
    x = np.asarray(highs.getSolution().col_value)[:cols]
    return x.reshape(-1, N_COL), Basis(stacked.shape, highs.getBasis())


__all__ = ["CLSC1_FORECAST", "ForecastMPCPolicy", "SampledMPCPolicy", "solve_two_stage"]
