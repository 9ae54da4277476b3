"""CLSC-2's adaptation portfolio (moca.portfolio.adapt_portfolio2): the adapted LSTM or the
sampled MPC, chosen on validation scenarios; the MPC's safety stock picked on support
scenarios; the planner checkpoint it deploys as (save, load, refuse, evaluate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moca import checkpoint
from moca.baselines.mpc2 import (PLANNER_KIND, MPC2Policy, is_planner2, load_planner2, save_planner2,
                                 select_safety_stock2)
from moca.baselines.peers import evaluate2, evaluate_peer2
from moca.checkpoint import CheckpointError
from moca.meta import SUPPORT_SEEDS, VALIDATION_SEEDS
from moca.meta2 import OracleCache2, load_policy2
from moca.policy2 import evaluate_policy2
from moca.portfolio import RegimeMapError, adapt_portfolio2
from moca.regime import Regime, RegimeSchedule, load_schedule
from moca.scenario import DEFAULT_PARAMS_2
from tests._cli import assert_bad_input, run_in_process as run
from tests._checkpoints import write_meta

HIGH_TAX = RegimeSchedule.constant(Regime(carbon_tax=2000.0))


@pytest.fixture(scope="module")
def cache():
    torch.set_num_threads(1)
    return OracleCache2(DEFAULT_PARAMS_2)


def test_safety_stock_is_the_best_scoring_of_the_grid(cache):
    scenarios = cache.scenarios([800], HIGH_TAX)
    stock, scores = select_safety_stock2(scenarios, cache.costs(scenarios), (300.0, 4000.0))
    assert set(scores) == {300.0, 4000.0} and scores[stock] == max(scores.values())
    assert scores[300.0] != scores[4000.0]  # the grid matters: the choice is not a tie broken by order
    again = evaluate2("x", MPC2Policy(safety_stock=stock, samples=4), scenarios, cache.costs(scenarios))
    assert float(again.scores.mean()) == pytest.approx(scores[stock], rel=1e-12)


def test_portfolio_keeps_the_candidate_with_the_better_validation_score(cache):
    module, _ = load_policy2("default")
    result = adapt_portfolio2(module, HIGH_TAX, 1, support_size=2, validation_size=2, cache=cache,
                              stocks=(600.0, 4000.0))
    assert set(result.candidates) == {"default", "mpc"}
    lstm, mpc = result.candidates["default"], result.candidates["mpc"]
    assert result.chosen is max((lstm, mpc), key=lambda c: c.validation_score)
    # each validation score is that candidate's score on the validation scenarios, recomputed here
    validation = cache.scenarios(VALIDATION_SEEDS[:2], HIGH_TAX)
    oracle = cache.costs(validation)
    assert evaluate_policy2(module, lstm.weights, validation, oracle)["score"] == pytest.approx(lstm.validation_score,
                                                                                                 rel=1e-9)
    assert float(evaluate2("x", mpc.module, validation, oracle).scores.mean()) == pytest.approx(
        mpc.validation_score, rel=1e-12)
    # the MPC's stock was picked on the first support scenarios, not on validation
    support = cache.scenarios(SUPPORT_SEEDS[:2], HIGH_TAX)
    stock, _ = select_safety_stock2(support, cache.costs(support), (600.0, 4000.0))
    assert mpc.module.safety_stock == stock == mpc.selection["safety_stock"]
    summary = result.summary()
    assert summary["chosen"] == result.chosen.name and set(summary["candidates"]) == {"default", "mpc"}
    json.dumps(summary)  # plain JSON
    only = adapt_portfolio2(module, HIGH_TAX, 0, base="default", support_size=2, validation_size=2, cache=cache)
    assert set(only.candidates) == {"default"} and only.chosen.name == "default"
    with pytest.raises(RegimeMapError, match="base: 'map'"):
        adapt_portfolio2(module, HIGH_TAX, 0, base="map", cache=cache)


def test_planner_checkpoint_round_trips_and_scores_as_the_policy_it_describes(tmp_path, cache):
    policy = MPC2Policy(safety_stock=1500.0, samples=2)
    save_planner2(tmp_path / "p", policy, DEFAULT_PARAMS_2, {"note": "test"})
    assert is_planner2(tmp_path / "p") and not is_planner2(tmp_path)
    loaded, meta = load_planner2(tmp_path / "p")
    assert meta["kind"] == PLANNER_KIND and meta["note"] == "test"
    assert (loaded.horizon, loaded.safety_stock, loaded.samples) == (13, 1500.0, 2)
    plan = load_schedule("T2", model="CLSC-2")
    by_dir = evaluate_peer2(str(tmp_path / "p"), plan, [1000])
    scenarios = cache.scenarios([1000], plan)
    direct = evaluate2("x", policy, scenarios, cache.costs(scenarios))
    assert by_dir.costs[0] == pytest.approx(direct.costs[0], rel=1e-12) and by_dir.violations == 0
    # a learned-policy loader says what the planner is and where it can go
    with pytest.raises(CheckpointError, match="a planner .* moca evaluate --model CLSC-2"):
        load_policy2(tmp_path / "p")


@pytest.mark.parametrize("field, value, words", [("samples", -1, "planner.samples"),
                                                  ("samples", 2.5, "planner.samples"),
                                                  ("safety_stock", -5.0, "safety_stock"),
                                                  ("horizon", 0, "horizon"),
                                                  ("safety_penalty", float("nan"), "planner.safety_penalty")])
def test_a_planner_with_a_bad_field_is_refused_naming_it(tmp_path, field, value, words):
    save_planner2(tmp_path / "p", MPC2Policy(safety_stock=600.0), DEFAULT_PARAMS_2, {})
    path = tmp_path / "p" / checkpoint.META
    meta = json.loads(path.read_text())
    meta["planner"][field] = value
    write_meta(path.parent, meta)
    with pytest.raises(CheckpointError, match=words):
        load_planner2(tmp_path / "p")


def test_cli_adapt_deploys_the_mpc_as_a_planner_that_evaluate_scores(tmp_path):
    regime = tmp_path / "tax.json"
    regime.write_text(json.dumps({"carbon_tax": 2000}))
    out = tmp_path / "deployed"
    adapted = run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", regime, "--base", "mpc",
                  "--steps", 0, "--scenarios", 1, "--validation", 1, "-o", out, "--json")
    assert adapted.returncode == 0, adapted.stderr
    result = json.loads(adapted.stdout)
    assert result["deployed"] == "mpc" and result["violations"] == 0 and result["base"] == "mpc"
    stock = result["portfolio"]["candidates"]["mpc"]["base_selection"]["safety_stock"]
    meta = json.loads((out / checkpoint.META).read_text())
    assert meta["kind"] == PLANNER_KIND and meta["planner"]["safety_stock"] == stock
    scored = run("evaluate", "--model", "CLSC-2", "--policy", out, "--regime", regime, "--scenarios", 1, "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["score"] == pytest.approx(result["score_after"], rel=1e-12)
    assert_bad_input(run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--base", "map"),
                     "--base", "no threshold map")
    assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "default", "--adapt-steps", 1,
                         "--base", "best"), "--base", "best")
    assert_bad_input(run("adapt", "--model", "CLSC-2", "--checkpoint", out, "--regime", "T2"), "planner")
    assert np.isfinite(result["score_before"])
