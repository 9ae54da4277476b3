"""moca's LSTM over the rolling-horizon LP: the third starting point of CLSC-1's adaptation.

On CLSC-1 the rolling LP (:class:`moca.baselines.mpc.MPCPolicy`) with a safety stock picked
for the regime is the strongest peer (README, "Peers"), and it is told nothing moca's own
base rule and features are not: the public seasonal mean and the chain's return mean, both
in :class:`moca.scenario.Params`. So adaptation may start from it as it starts from the
mapped threshold rule (:mod:`moca.regime_map`): :class:`MPCBasePolicy` puts the LP's first
action into the base columns of each feature frame, and a fresh (zero) head *is* the LP.

Adaptation of this candidate (``moca.portfolio``, ``base="mpc"``):

1. the safety stock is picked among :data:`SAFETY_STOCKS` on the support scenarios, one
   batched rollout per value (:func:`select_safety_stock`; the least mean cost wins);
2. then the same safeguarded gradient steps as every candidate take, on the residual.

The LP's action enters the features *detached*: the simulator's gradient sees the residual
but not how the next period's LP re-plans around it. In the measurements behind the README
that gradient was no descent direction for the closed loop (the safeguard undid every step),
so in practice this candidate is the LP with its safety stock chosen for the regime; it is
here because a user of ``moca adapt`` should get the best controller moca has for a regime,
and the validation scenarios decide which that is.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from moca.baselines.mpc import MPCPolicy
from moca.policy import LSTMPolicy, PolicyConfig, features
from moca.scenario import Params, Scenario
from moca.sim import Observation

#: Safety stocks (units of product) tried for the LP; the peers' re-tuning tries 100-1200 too.
SAFETY_STOCKS: tuple[float, ...] = (100.0, 400.0, 600.0, 800.0, 1200.0)
MPC_KIND = "mpc-policy"


class MPCBaseError(ValueError):
    """A bad safety stock or MPC checkpoint (one line naming the field)."""


def _check_stock(safety_stock: float) -> float:
    if isinstance(safety_stock, bool) or not isinstance(safety_stock, (int, float)) or not (
            np.isfinite(safety_stock) and safety_stock >= 0):
        raise MPCBaseError(f"safety_stock: {safety_stock!r} must be a finite number >= 0 (units of product)")
    return float(safety_stock)


class MPCBasePolicy(LSTMPolicy):
    """moca's LSTM over the rolling 13-period LP with ``safety_stock`` units of product in
    reserve: the LP's raw action fills the base columns of each frame, so the structured
    output is ``LP + residual``."""

    def __init__(self, params: Params = Params(), config: PolicyConfig = PolicyConfig(),
                 safety_stock: float = 400.0):
        if not config.structured:
            raise MPCBaseError("config.structured: the policy corrects the LP's action; it must be structured")
        super().__init__(params, config)
        self.safety_stock = _check_stock(safety_stock)
        self._mpc = MPCPolicy(safety_stock=self.safety_stock)
        self._scale = np.asarray(params.action_scale, dtype=np.float64)

    def rebuilt_for(self, params: Params) -> "MPCBasePolicy":
        """A fresh policy of the same config and safety stock for another chain (see
        :func:`moca.policy.with_params`, which then copies the weights)."""
        return MPCBasePolicy(params, self.config, self.safety_stock)

    def observe(self, obs: Observation) -> Tensor:
        x = features(obs, self.config)
        if obs.t == 0:  # a new episode: the LP's per-scenario warm starts start afresh
            self._mpc.reset(SimpleNamespace(horizon=obs.params.horizon, size=x.shape[0]))
        action = self._mpc.act(obs).detach()
        x = x.clone()
        x[:, self.layout.base] = (action / torch.as_tensor(self._scale, dtype=action.dtype)).to(x.dtype)
        return x

    def deployed_base_rule(self) -> "DeployedMPC":
        """The LP for one scenario on the deployment path (see :class:`moca.policy.DeployedPolicy`)."""
        return DeployedMPC(self.params, self.safety_stock)


class DeployedMPC:
    """The LP's raw action ``[6]`` for one scenario from float64 numpy inputs, each period
    warm-started from the previous period's basis (as the batched training path does)."""

    def __init__(self, params: Params, safety_stock: float):
        self.params, self.mpc = params, MPCPolicy(safety_stock=safety_stock)
        self.reset()

    def reset(self) -> None:
        self.mpc.episode_length = self.params.horizon
        self._basis = None

    def __call__(self, t: int, stocks: Sequence[float], pipeline: Sequence[float], sales_history: Sequence[float],
                 regime: Sequence[float]) -> np.ndarray:
        if t == 0:
            self.reset()
        plan = self.mpc.plan(self.params, t, np.asarray(stocks, dtype=np.float64), np.asarray(pipeline, dtype=np.float64),
                             np.asarray(sales_history, dtype=np.float64), np.asarray(regime, dtype=np.float64),
                             start=self._basis)
        self._basis = plan.basis
        return np.asarray(plan.actions[0], dtype=np.float64)


def select_safety_stock(scenarios: Sequence[Scenario], stocks: Sequence[float] = SAFETY_STOCKS
                        ) -> tuple[float, dict[str, Any]]:
    """The LP's adaptation without gradients: each safety stock of ``stocks`` is simulated on
    ``scenarios`` (the regime's support scenarios) through the safety layer; the one of
    least mean cost (EUR) is returned with the mean cost of each."""
    from moca import safety
    from moca.sim import ScenarioBatch, rollout

    if not stocks:
        raise MPCBaseError("stocks: at least one safety stock to try")
    batch = ScenarioBatch.from_scenarios(list(scenarios))
    costs = {}
    with torch.no_grad():
        for stock in stocks:
            out = rollout(batch, MPCPolicy(safety_stock=_check_stock(stock)), safety.project_batch)
            costs[float(stock)] = float(out.total_cost.double().mean())
    best = min(costs, key=costs.get)  # the first of equals: the smaller stock
    return best, {"safety_stock": best, "costs": {str(k): v for k, v in costs.items()}}


def mpc_policy(params: Params = Params(), safety_stock: float = 400.0, config: PolicyConfig = PolicyConfig(),
               seed: int = 0) -> MPCBasePolicy:
    """A fresh :class:`MPCBasePolicy` (head zero: it acts as the LP until adapted)."""
    torch.manual_seed(seed)
    return MPCBasePolicy(params, config, safety_stock)


# ----------------------------------------------------------------------------------------
# Checkpoints (safetensors + JSON, as moca.checkpoint)
# ----------------------------------------------------------------------------------------


def save_mpc_policy(directory: str | Path, module: MPCBasePolicy, metadata: Mapping[str, Any]) -> Path:
    """Write ``module``: its LSTM weights (safetensors) and, in the JSON, the params, the
    policy config and the LP's safety stock (everything :func:`load_mpc_policy` needs)."""
    from moca import checkpoint

    meta = checkpoint.merged({"kind": MPC_KIND, "model": "CLSC-1", "params": module.params.model_dump(mode="json"),
                              "policy": module.config.model_dump(mode="json"), "safety_stock": module.safety_stock},
                             metadata)
    return checkpoint.save(directory, dict(module.state_dict()), meta)


def load_mpc_policy(directory: str | Path) -> tuple[MPCBasePolicy, dict[str, Any]]:
    """Read a checkpoint of :func:`save_mpc_policy`; every problem is a one-line
    :class:`moca.checkpoint.CheckpointError` naming the checkpoint and the field."""
    from moca import checkpoint

    weights, meta, where = checkpoint.load_kind(directory, MPC_KIND)
    params, config = checkpoint.blocks(meta, where)
    module = checkpoint.build_module(where, lambda: MPCBasePolicy(
        Params(**params), PolicyConfig(**config), meta.get("safety_stock")),
        (MPCBaseError,))
    checkpoint.check_compatible(weights, module, where)
    module.load_state_dict(weights)
    return module, meta


__all__ = ["DeployedMPC", "MPCBaseError", "MPCBasePolicy", "MPC_KIND", "SAFETY_STOCKS", "load_mpc_policy",
           "mpc_policy", "save_mpc_policy", "select_safety_stock"]
