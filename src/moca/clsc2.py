"""CLSC-2 declared as data: actions, stocks, how actions move stocks, costs, emissions.

Everything that happens to the stocks within a period, after the arrivals, is linear in
the executed action ``a`` [9] and the sales ``s``:

    end-of-period stocks = post-arrival stocks + E a - s e_P          (E = action_effect)

and the period cost is linear in the action, the end-of-period stocks, the lost sales
and the scrap landfilled at once:

    cost = c_a(regime) . a + h . stocks + p_l * lost + (c_w + lambda) * scrap

So this module holds only coefficients. The simulator (:mod:`moca.sim2`), the
Gymnasium environment (:mod:`moca.env2`) and the hindsight LP read them from here; none
of them restates a cost or a yield. The rows the safety layer enforces are declared the
same way in :mod:`moca.world`.

Action order (docs/MODEL-2.md): ``(o, o_m, u_v, u_r, f, g_A, g_B, w_A, w_B)`` in
(kg, kg, kg, kg, cores, cores, cores, cores, cores).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODEL_NAME = "CLSC-2"

ACTION_NAMES: tuple[str, ...] = ("order", "buy_recycled", "use_virgin", "use_recycled", "refurbish",
                                 "disassemble_a", "disassemble_b", "dispose_a", "dispose_b")
ACTION_SYMBOLS: tuple[str, ...] = ("o", "o_m", "u_v", "u_r", "f", "g_A", "g_B", "w_A", "w_B")
ACTION_UNITS: tuple[str, ...] = ("kg", "kg", "kg", "kg", "cores", "cores", "cores", "cores", "cores")
O, OM, UV, UR, F, GA, GB, WA, WB = range(9)

#: Stocks on hand, in the order of the state vector and of ``periods[].state`` in JSON.
STATE_NAMES: tuple[str, ...] = ("V", "M", "P", "CA", "CB")
STATE_UNITS: tuple[str, ...] = ("kg", "kg", "units", "units", "units")
V, M, P, CA, CB = range(5)

#: The per-decision inputs of the rows (moca.world.CLSC2_ROWS.inputs), in order.
ROW_INPUTS: tuple[str, ...] = ("virgin", "recycled", "cores_a", "cores_b", "used_virgin", "used_recycled",
                               "periods_left", "supply_up", "market_avail")

#: The period cost's terms (EUR), in the order :func:`cost_terms` reports them.
COST_TERMS: tuple[str, ...] = (
    "virgin", "carbon", "market", "produce", "refurbish", "disassemble", "dispose", "landfill_tax",
    "hold_virgin", "hold_recycled", "hold_product", "hold_core", "lost_sales",
)

# Columns of a regime row (REGIME_FIELDS order).
R_MANDATE, R_TAX, R_CAP, R_LANDFILL, R_RECOVERY = range(5)


def action_scale(params: Any) -> np.ndarray:
    """``S`` [9]: the capacity scale of each action (the projection's metric, the env's box)."""
    return np.asarray(params.action_scale, dtype=np.float64)


def action_effect(params: Any) -> np.ndarray:
    """``E`` [5, 9]: change of each end-of-period stock per unit of each executed action.

    Material used leaves V and M at once and returns as product ``1/m`` per kg at the end
    of the period; refurbished grade-A cores become ``η_f`` products; disassembled cores
    yield ``m η`` kg of recycled material of their grade. Orders and market purchases are
    in transit (they arrive in later periods), so they move no stock here.
    """
    p = params
    E = np.zeros((5, 9))
    E[V, UV] = -1.0
    E[M, UR] = -1.0
    E[M, GA] = p.mass * p.yield_disassembly_a
    E[M, GB] = p.mass * p.yield_disassembly_b
    E[P, UV] = E[P, UR] = 1.0 / p.mass
    E[P, F] = p.yield_refurbish
    E[CA, [F, GA, WA]] = -1.0
    E[CB, [GB, WB]] = -1.0
    return E


#: Change of the stocks per unit sold (sales leave P).
SALES_EFFECT = np.array([0.0, 0.0, -1.0, 0.0, 0.0])


def emission_coefficients(params: Any) -> np.ndarray:
    """kg CO2 per unit of each action; ``coefficients . a`` is a period's emissions (row 7)."""
    p = params
    e = np.zeros(9)
    e[O] = p.emis_virgin
    e[OM] = p.emis_market
    e[UV] = e[UR] = p.emis_produce / p.mass
    e[GA] = p.emis_recycle * p.mass * p.yield_disassembly_a
    e[GB] = p.emis_recycle * p.mass * p.yield_disassembly_b
    return e


def action_cost(params: Any, regime: np.ndarray) -> np.ndarray:
    """EUR per unit of each action ``[..., 9]`` under regime rows ``[..., 5]``: the carbon tax
    is charged on virgin extraction (``τ e_v / 1000`` per kg ordered), the landfill tax on
    every disposed core."""
    p = params
    regime = np.asarray(regime, dtype=np.float64)
    c = np.zeros(regime.shape[:-1] + (9,))
    c[..., O] = p.cost_virgin + regime[..., R_TAX] * p.emis_virgin / 1000.0
    c[..., OM] = p.cost_market
    c[..., UV] = c[..., UR] = p.cost_produce / p.mass
    c[..., F] = p.cost_refurbish
    c[..., GA] = c[..., GB] = p.cost_disassemble
    c[..., WA] = c[..., WB] = p.cost_dispose + regime[..., R_LANDFILL]
    return c


def stock_cost(params: Any) -> np.ndarray:
    """EUR per unit of each end-of-period stock per period (holding) ``[5]``."""
    p = params
    return np.array([p.hold_virgin, p.hold_recycled, p.hold_product, p.hold_core, p.hold_core])


def scrap_cost(params: Any, regime: np.ndarray) -> np.ndarray:
    """EUR per scrap core (landfilled on arrival, like a disposed core) ``[...]``."""
    return params.cost_dispose + np.asarray(regime, dtype=np.float64)[..., R_LANDFILL]


def cost_terms(action, stocks, lost, scrap, regime, params: Any) -> dict[str, Any]:
    """EUR per cost term (:data:`COST_TERMS`) of periods with executed ``action`` ``[..., 9]``,
    end-of-period ``stocks`` ``[..., 5]``, ``lost`` sales and ``scrap`` cores ``[...]`` and
    the ``regime`` ``[..., 5]`` in force; numpy arrays or torch tensors, any leading shape.
    Their sum is the period cost."""
    p = params
    a = [action[..., i] for i in range(9)]
    s = [stocks[..., i] for i in range(5)]
    tax, landfill = regime[..., R_TAX], regime[..., R_LANDFILL]
    disposed = a[WA] + a[WB] + scrap
    return {
        "virgin": p.cost_virgin * a[O],
        "carbon": tax * (p.emis_virgin / 1000.0) * a[O],
        "market": p.cost_market * a[OM],
        "produce": (p.cost_produce / p.mass) * (a[UV] + a[UR]),
        "refurbish": p.cost_refurbish * a[F],
        "disassemble": p.cost_disassemble * (a[GA] + a[GB]),
        "dispose": p.cost_dispose * disposed,
        "landfill_tax": landfill * disposed,
        "hold_virgin": p.hold_virgin * s[V],
        "hold_recycled": p.hold_recycled * s[M],
        "hold_product": p.hold_product * s[P],
        "hold_core": p.hold_core * (s[CA] + s[CB]),
        "lost_sales": p.lost_sale_cost * lost,
    }
