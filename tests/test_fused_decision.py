"""The fused deployment path (FusedDecision) computes exactly what the reference
(deployed_decision, feature_columns + _NumpyStep) computes: bit for bit, for random
states, regimes, periods, and policy architectures."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moca.policy import FusedDecision, LSTMPolicy, PolicyConfig, _NumpyStep, deployed_decision, feature_spec
from moca.scenario import Params

CONFIGS = [
    (Params(), PolicyConfig()),
    (Params(lead_virgin=3, lag_return=2, horizon=20), PolicyConfig(window=3, hidden=16)),
    (Params(lead_virgin=1, horizon=12), PolicyConfig(window=1, hidden=8, regime_conditioned=False)),
    (Params(), PolicyConfig(hidden=8, structured=False)),
]


def _paths(index: int):
    params, config = CONFIGS[index]
    torch.manual_seed(index)
    module = LSTMPolicy(params, config)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape))  # a non-zero head, so the raw action moves and is projected
    step = _NumpyStep(module)
    spec = feature_spec(params, config)
    return params, step, spec, FusedDecision(step, spec)


PATHS = [_paths(i) for i in range(len(CONFIGS))]
amount = st.floats(0, 6000, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, len(CONFIGS) - 1), data=st.data())
def test_fused_decision_is_bit_identical_to_the_reference(index, data):
    params, step, spec, fused = PATHS[index]
    cap = data.draw(st.one_of(st.just(math.inf), st.floats(1000, 60000)))
    regime = np.array([data.draw(st.floats(0, 0.95)), data.draw(st.floats(0, 2000)), cap,
                       data.draw(st.floats(0, 100)), data.draw(st.floats(0, 1))])
    frames = state = frames_f = state_f = None
    start = data.draw(st.integers(0, params.horizon - 3))
    for t in range(start, start + 3):
        stocks = np.array([data.draw(amount) for _ in range(5)])
        pipeline = np.array([data.draw(amount) for _ in range(params.lead_virgin - 1)])
        history = np.array([data.draw(amount) for _ in range(params.lag_return)])
        rho = data.draw(st.floats(0, 1))
        last = data.draw(st.one_of(st.none(), amount))
        a, raw, frames, state = deployed_decision(step, spec, frames, state, t, stocks, pipeline, history, regime,
                                                  rho, last)
        # the same inputs as lists (the path without one tolist per vector): the same decision
        listed = fused(frames_f, state_f, t, stocks.tolist(), pipeline.tolist(), history.tolist(), regime.tolist(),
                       rho, last)
        b, raw_f, frames_f, state_f = fused(frames_f, state_f, t, stocks, pipeline, history, regime, rho, last)
        assert np.array_equal(a, b) and np.array_equal(raw, raw_f)
        assert np.array_equal(listed[0], b) and np.array_equal(listed[1], raw_f) and np.array_equal(listed[2], frames_f)
        assert np.array_equal(frames, frames_f)
        assert np.array_equal(state[0], state_f[0]) and np.array_equal(state[1], state_f[1])
