"""Issue 10 on CLSC-2: the ablation and the regime-response sweep, each through its
benchmark script's ``--quick`` path (the measured runs live in benchmarks/)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _bench import run_script
from moca.ablation import ROWS, AblationError, world
from moca.response import ACTION_INDEX_2, ResponseError, measure, response_world, sweep_regime


def test_ablation_clsc2_quick(tmp_path, monkeypatch):
    out = tmp_path / "ablation2.json"
    run_script("bench_ablation.py", ["--world", "CLSC-2", "--quick", "--out", str(out)], monkeypatch)
    result = json.loads(out.read_text())
    assert result["world"] == "CLSC-2" and result["tasks"] == ["T1", "T2", "T3"] and result["quick"]
    assert len(result["meta_init"]["weights_sha256"]) == 64  # which shipped meta-init was read
    assert result["oracle_seconds"] > 0
    assert [(r["label"], r["protocol"]) for r in result["rows"]] == [(r.label, r.protocol) for r in ROWS]
    for row in result["rows"]:
        R = np.asarray(row["R"])
        assert R.shape == (4, 3) and np.all((R > 0) & (R <= 1 + 1e-6)), row["label"]
        assert row["violations"] == 0, row["label"]  # window settlements included
        assert row["cpu_seconds"] > 0 and row["seconds"] > 0
        assert row["average_final_score"] == pytest.approx(R[-1].mean())
        assert row["drop_first_after_second"] == pytest.approx((R[1][0] - R[2][0]) / R[1][0])
    by_label = {(r["label"], r["protocol"]): r for r in result["rows"]}
    plain = by_label[("plain LSTM (seed's design)", "moca")]
    moca = by_label[("+ GEM (= moca)", "moca")]
    assert not plain["regime_input"] and not plain["base_rule"] and moca["meta_init"]
    # A barely trained plain LSTM (no base rule) is far below the shipped meta-init.
    assert plain["average_final_score"] < moca["average_final_score"] - 0.2
    table = out.with_suffix(".md").read_text()
    assert "plain LSTM (seed's design)" in table and "drop on T1 after T2" in table and "CPU s" in table
    with pytest.raises(AblationError, match="world"):
        world("CLSC-3")


def test_regime_response_clsc2_quick(tmp_path, monkeypatch):
    out = tmp_path / "regime_response2.json"
    run_script("bench_regime_response.py", ["--world", "CLSC-2", "--quick", "--adapt-steps", "1", "--out", str(out)],
               monkeypatch)
    result = json.loads(out.read_text())
    assert result["world"] == "CLSC-2" and list(result["rules"]) == ["carbon_tax"]
    points = result["rules"]["carbon_tax"]
    assert [p["value"] for p in points] == [0.0, 150.0, 300.0]
    for p in points:
        assert p["regime"]["recycled_content_window"] == 52
        for name in ("oracle", "moca", "moca (1 steps)", "threshold"):
            assert {"disassembled", "recycled_share", "virgin_ordered", "market_bought", "score"} <= set(p[name])
            assert 0 <= p[name]["recycled_share"] <= 1
        assert p["threshold"]["tuning_candidates"] > 0
        for name in ("moca", "moca (1 steps)", "threshold"):
            assert p[name]["violations"] == 0, (p["value"], name)
            assert 0 < p[name]["score"] <= 1 + 1e-6
    # The hindsight plan recycles more under a high carbon tax than under none.
    assert points[-1]["oracle"]["disassembled"] > points[0]["oracle"]["disassembled"] + 1000
    assert points[-1]["oracle"]["recycled_share"] > points[0]["oracle"]["recycled_share"]
    # Adapting took gradient steps (it built its policy much slower than the zero-shot one).
    assert all(p["moca (1 steps)"]["build_seconds"] > 10 * p["moca"]["build_seconds"] for p in points)
    assert result["adapt_steps"] == 1
    for name in ("moca", "moca (1 steps)", "threshold"):
        agreement = result["agreement"][name]["carbon_tax"]
        assert agreement["steps"] >= 1 and 0 <= agreement["agree"] <= agreement["steps"]
        assert agreement["mean_abs_gap"] >= 0
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "market t" in out.with_suffix(".md").read_text()


def test_clsc2_measures_sum_the_grades_and_the_cap_scales():
    actions = np.zeros((1, 2, 9))
    actions[0, :, 5] = 10.0  # grade-A cores disassembled
    actions[0, :, 6] = 5.0  # grade-B
    actions[0, :, 2], actions[0, :, 3] = 3.0, 1.0  # virgin, recycled used
    actions[0, 0, 1] = 40.0  # market kg
    out = measure(actions, ACTION_INDEX_2)
    assert out["disassembled"] == pytest.approx(30.0) and out["market_bought"] == pytest.approx(40.0)
    assert out["recycled_share"] == pytest.approx(0.25)
    clsc2 = response_world("CLSC-2")
    capped = sweep_regime("emission_cap", 1.0, world=clsc2)
    assert capped.emission_cap == pytest.approx(clsc2.reference_emissions)
    assert capped.recycled_content_window == 52
    with pytest.raises(ResponseError, match="world"):
        response_world("CLSC-3")
