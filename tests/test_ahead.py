"""Issue 10 groundwork: the ablation harness, the regime-response sweep and the
regime -> threshold map (tiny versions; the measured runs live in benchmarks/)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moca.ablation import ROWS, AblationConfig, AblationError, markdown, run_ablation
from moca.baselines.threshold import SEARCH_POWER, ThresholdPolicy, threshold_bounds
from moca.regime import TASKS, Regime
from moca.regime_map import MappedPolicy, MappedThresholdPolicy, RegimeMapError, ThresholdMap, regime_features
from moca.response import (ResponseError, direction_agreement, measure, plot_response, run_response,
                           sweep_regime)
from moca.scenario import Params, draw_scenarios
from moca.sim import ScenarioBatch, rollout


def test_ablation_rows_and_tiny_run():
    seed_rows = [r for r in ROWS if r.protocol == "seed"]
    assert [r.label for r in seed_rows][0].startswith("plain LSTM")
    plain = seed_rows[0]
    assert not plain.regime_conditioned and not plain.structured and not plain.meta_init
    moca_row = [r for r in ROWS if r.protocol == "moca"][-1]
    assert moca_row.method == "moca" and moca_row.meta_init
    config = AblationConfig(seed_steps=1, moca_steps=1, train_size=1, validation_size=1, test_size=1)
    result = run_ablation([plain, moca_row], config, tasks=[("T1", TASKS["T1"]), ("T2", TASKS["T2"])])
    assert [r["label"] for r in result["rows"]] == [plain.label, moca_row.label]
    for row in result["rows"]:
        assert np.asarray(row["R"]).shape == (3, 2)
        assert row["violations"] == 0
        assert 0 < row["average_final_score"] <= 1.0 + 1e-6
        expected = (row["R"][1][0] - row["R"][2][0]) / row["R"][1][0]
        assert row["drop_first_after_second"] == pytest.approx(expected)
    # The seed's plain LSTM, barely trained, is far from moca's meta-init.
    assert result["rows"][0]["average_final_score"] < result["rows"][1]["average_final_score"] - 0.3
    table = markdown(result)
    assert plain.label in table and "drop on T1 after T2" in table
    with pytest.raises(AblationError, match="tasks"):
        run_ablation([plain], config, tasks=[("T1", TASKS["T1"])])


def test_measure_counts_per_year():
    actions = np.zeros((2, 3, 6))
    actions[0, :, 3] = 10.0  # 30 cores disassembled in scenario 0
    actions[:, :, 1] = 3.0  # virgin used
    actions[1, :, 2] = 1.0  # recycled used in scenario 1: share 3/12
    actions[:, 0, 0] = 100.0
    out = measure(actions)
    assert out["disassembled"] == pytest.approx(15.0)
    assert out["recycled_share"] == pytest.approx((0.0 + 0.25) / 2)
    assert out["virgin_ordered"] == pytest.approx(100.0)


def test_response_sweep_follows_the_oracle(tmp_path):
    params = Params()
    thresholds = threshold_bounds(params)[:, 0]  # a fixed rule: every level at its lower bound
    result = run_response({"fixed": lambda regime: ThresholdPolicy(thresholds, params)},
                          {"carbon_tax": [0.0, 300.0]}, scenarios=1)
    low, high = result["rules"]["carbon_tax"]
    assert low["regime"]["carbon_tax"] == 0.0 and high["regime"]["carbon_tax"] == 300.0
    # The hindsight plan disassembles nothing without a tax and recycles under a high one.
    assert low["oracle"]["disassembled"] == pytest.approx(0.0, abs=1e-6)
    assert high["oracle"]["disassembled"] > 1000 and high["oracle"]["recycled_share"] > 0.1
    assert low["fixed"]["violations"] == 0 and 0 < low["fixed"]["score"] <= 1.0 + 1e-9
    agreement = direction_agreement(result, "fixed")["carbon_tax"]
    assert agreement["steps"] == 1 and agreement["agree"] in (0, 1)
    plot_response(result, str(tmp_path / "r.png"))
    assert (tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ResponseError, match="rule"):
        sweep_regime("speed_limit", 1.0)


def _synthetic_map(smoothing: float = 0.0) -> ThresholdMap:
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.uniform(0, 0.5, 12), rng.uniform(0, 300, 12), np.full(12, np.inf),
                            rng.uniform(0, 100, 12), rng.uniform(0, 1, 12)])
    units = np.clip(0.2 + 0.5 * regime_features(rows)[:, [0, 1, 4, 5, 0, 1]], 0, 1)
    return ThresholdMap(rows, units, Params(), smoothing=smoothing)


def test_threshold_map_interpolates_and_round_trips():
    fitted = _synthetic_map()
    assert np.allclose(fitted.unit(fitted.regimes), fitted.units, atol=1e-6)
    again = ThresholdMap.from_dict(json.loads(json.dumps(fitted.to_dict())))
    probe = Regime(recycled_content_min=0.2, carbon_tax=150.0).as_row()[None]
    assert np.allclose(again.thresholds(probe), fitted.thresholds(probe))
    bounds = threshold_bounds(Params())
    assert np.all(fitted.thresholds(probe) >= bounds[:, 0] - 1e-9)
    assert np.all(fitted.thresholds(probe) <= bounds[:, 1] + 1e-9)
    with pytest.raises(RegimeMapError, match="at least 8"):
        ThresholdMap(fitted.regimes[:3], fitted.units[:3])
    with pytest.raises(RegimeMapError, match="malformed"):
        ThresholdMap.from_dict({"units": []})


def test_mapped_rule_and_fresh_mapped_policy_act_as_the_rule():
    fitted = _synthetic_map(smoothing=0.01)
    regime = Regime(recycled_content_min=0.2, carbon_tax=150.0)
    scenarios = draw_scenarios(range(1000, 1002), regime)
    batch = ScenarioBatch.from_scenarios(scenarios)
    from moca import safety

    with torch.no_grad():
        mapped = rollout(batch, MappedThresholdPolicy(fitted), safety.project_batch)
        fixed = rollout(batch, ThresholdPolicy(fitted.thresholds(regime.as_row()[None])[0]), safety.project_batch)
        torch.manual_seed(0)
        module = MappedPolicy(fitted)
        from moca.policy import PolicyAgent

        learned = rollout(batch, PolicyAgent(module), safety.project_batch)
    assert torch.allclose(mapped.executed, fixed.executed)
    # A fresh head is zero: the mapped policy is the mapped rule (float32 round-off aside).
    assert torch.allclose(learned.executed, mapped.executed, rtol=1e-4, atol=1e-2)
    # One adaptation step moves the residual (the gradient reaches the head).
    from moca.meta import adapt

    weights, curve = adapt(module, None, regime, 1, support=scenarios[:1], validation=scenarios[1:], safeguard=False)
    assert not torch.equal(weights["head.bias"], module.head.bias.detach())
    assert curve[-1]["violations"] == 0
    assert SEARCH_POWER.shape == (6,)


def test_selection_picks_the_cheapest_candidate_and_pins_it():
    from moca.regime_map import select_thresholds

    fitted = _synthetic_map(smoothing=0.01)
    regime = Regime(recycled_content_min=0.1, carbon_tax=150.3)  # not exact in float32: pinning must still match
    candidates = fitted.candidates(regime.as_row()[None], 3)
    assert candidates.shape == (4, 6)
    scenarios = draw_scenarios(range(800, 802), regime)
    chosen, info = select_thresholds(fitted, regime, scenarios, 3)
    assert len(info["costs"]) == 4 and info["costs"][info["chosen"]] == min(info["costs"])
    assert np.allclose(chosen, candidates[info["chosen"]])
    from moca.regime_map import _same_regime

    as_float32 = regime.as_row().astype(np.float32)[None]
    assert _same_regime(as_float32, regime.as_row())[0]
    assert not _same_regime(as_float32 * 1.01, regime.as_row())[0]
    module = MappedPolicy(fitted)
    module.pin(regime, chosen)
    batch = ScenarioBatch.from_scenarios(scenarios)
    from moca import safety
    from moca.policy import PolicyAgent

    with torch.no_grad():
        pinned = rollout(batch, PolicyAgent(module), safety.project_batch)
        fixed = rollout(batch, ThresholdPolicy(chosen), safety.project_batch)
    assert torch.allclose(pinned.executed, fixed.executed, rtol=1e-4, atol=1e-2)
    assert float(pinned.total_cost.mean()) == pytest.approx(info["costs"][info["chosen"]], rel=1e-4)


def test_meta_train_takes_a_mapped_module():
    from moca.meta import MetaConfig, MetaError, meta_train

    fitted = _synthetic_map(smoothing=0.01)
    torch.manual_seed(0)
    module = MappedPolicy(fitted)
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    config = MetaConfig(meta_steps=1, tasks_per_step=1, support_size=1, query_size=1, max_seconds=None)
    trained, history = meta_train(config, module=module)
    assert trained is module and len(history["steps"]) == 1
    assert not torch.equal(before["head.bias"], module.head.bias.detach())
    with pytest.raises(MetaError, match="module"):
        meta_train(config.model_copy(update={"policy": config.policy.model_copy(update={"hidden": 8})}),
                   module=module)
    # the workers of a backend rebuild a plain LSTMPolicy: its steps were another policy's
    from moca.cluster import Backend

    with pytest.raises(MetaError, match="MappedPolicy meta-trains here only"):
        meta_train(config, module=module, backend=Backend("serial"))


def test_auto_select_pins_each_regime_of_the_batch_once():
    fitted = _synthetic_map(smoothing=0.01)
    regimes = [Regime(carbon_tax=150.3), Regime(recycled_content_min=0.1)]
    scenarios = [s for r in regimes for s in draw_scenarios(range(1000, 1001), r)]
    torch.manual_seed(0)
    module = MappedPolicy(fitted)
    module.auto_select = 2
    from moca import safety
    from moca.policy import PolicyAgent

    with torch.no_grad():
        rollout(ScenarioBatch.from_scenarios(scenarios), PolicyAgent(module), safety.project_batch)
        assert len(module._selected) == 2 and len(module._rule.pinned) == 2
        rollout(ScenarioBatch.from_scenarios(scenarios[:1]), PolicyAgent(module), safety.project_batch)
    assert len(module._selected) == 2 and len(module._rule.pinned) == 1  # cached, and only this batch's pins
