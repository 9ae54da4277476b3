"""One property shared by the policies with another base rule (the mapped rule, the LP):
every executed action on the deployment path is feasible, from random states and regimes."""

import math

import numpy as np
from hypothesis import strategies as st

from moca import safety

amount = st.floats(0, 8000, allow_nan=False)


def check_three_periods(deployed, data) -> None:
    """Three consecutive decisions of ``deployed`` (a :class:`moca.policy.DeployedPolicy`)
    from random post-arrival states under a random CLSC-1 regime: each finite and feasible."""
    params = deployed.params
    cap = data.draw(st.one_of(st.just(math.inf), st.floats(500, 60000)))
    regime = np.array([data.draw(st.floats(0, 0.95)), data.draw(st.floats(0, 2000)), cap,
                       data.draw(st.floats(0, 100)), data.draw(st.floats(0, 1))])
    deployed.reset()
    start = data.draw(st.integers(0, params.horizon - 3))
    for t in range(start, start + 3):
        stocks = np.array([data.draw(amount) for _ in range(5)])
        pipeline = np.array([data.draw(amount) for _ in range(params.lead_virgin - 1)])
        history = np.array([data.draw(amount) for _ in range(params.lag_return)])
        action = deployed.decide(t, stocks, pipeline, history, regime, data.draw(st.floats(0, 1)),
                                 data.draw(st.one_of(st.none(), amount)))
        assert np.isfinite(action).all() and np.isfinite(deployed.last_raw).all()
        assert safety.is_feasible(action, stocks[0], stocks[1], stocks[3], regime, params)
