"""moca's LSTM over the rolling LP (moca.mpc_base): a fresh head is the LP, its safety stock
is chosen on the support scenarios, it is the portfolio's third candidate, its checkpoints
round-trip and refuse corruption, and every executed action is feasible."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moca import checkpoint, safety
from moca.baselines.mpc import MPCPolicy
from moca.checkpoint import CheckpointError
from moca.evaluation import evaluate_policy as evaluate_deployed
from moca.meta import OracleCache
from moca.mpc_base import (MPCBaseError, MPCBasePolicy, load_mpc_policy, mpc_policy, save_mpc_policy,
                           select_safety_stock)
from moca.policy import DeployedPolicy, LSTMPolicy, evaluate_policy, with_params
from moca.portfolio import adapt_portfolio
from moca.regime import TASKS
from moca.regime_map import load_learned_policy
from moca.scenario import Params
from tests._cli import assert_bad_input, run_in_process as run
from tests._feasible import check_three_periods
from tests._checkpoints import write_meta

CACHE = OracleCache()


def test_a_fresh_head_is_the_lp_with_the_safety_stock_chosen_on_support():
    regime = TASKS["T3"]
    support = CACHE.scenarios(range(800, 803), regime)
    stocks = (100.0, 600.0, 1200.0)
    chosen, info = select_safety_stock(support, stocks)
    # The choice is the least mean cost of the LP peer itself, scored independently.
    costs = {s: float(np.mean(evaluate_deployed("mpc", MPCPolicy(safety_stock=s), support, CACHE.costs(support)).costs))
             for s in stocks}
    assert chosen == min(costs, key=costs.get)
    assert {float(k): v for k, v in info["costs"].items()} == pytest.approx(costs, rel=1e-4)
    assert len(set(np.round(list(costs.values())))) == 3  # the stocks differ, so the choice means something
    # With a zero head the policy acts as the LP: same scores on the training path (float32)
    # and the deployment path (float64), and both as the LP peer's own.
    tests = CACHE.scenarios([1000, 1001], regime)
    oracle = CACHE.costs(tests)
    module = mpc_policy(Params(), chosen)
    peer = evaluate_deployed("mpc", MPCPolicy(safety_stock=chosen), tests, oracle)
    trained = evaluate_policy(module, None, tests, oracle)
    deployed = evaluate_deployed("moca-mpc", DeployedPolicy(module), tests, oracle)
    assert trained["score"] == pytest.approx(float(peer.scores.mean()), abs=2e-4)
    assert float(deployed.scores.mean()) == pytest.approx(float(peer.scores.mean()), abs=1e-6)
    assert deployed.violations == 0 and trained["violations"] == 0
    with pytest.raises(MPCBaseError, match="safety_stock"):
        mpc_policy(Params(), -5.0)
    with pytest.raises(MPCBaseError, match="stocks"):
        select_safety_stock(support, ())


def test_the_portfolio_has_the_lp_as_its_third_candidate():
    regime = TASKS["T2"]
    support = CACHE.scenarios(range(800, 802), regime)
    validation = CACHE.scenarios(range(900, 902), regime)
    bad = LSTMPolicy()  # a checkpoint that orders far too much
    with torch.no_grad():
        bad.head.bias.fill_(3.0)
    result = adapt_portfolio(bad, regime, 1, cache=CACHE, support=support, validation=validation, select=2)
    assert list(result.candidates) == ["default", "map", "mpc"]
    mpc = result.candidates["mpc"]
    assert isinstance(mpc.module, MPCBasePolicy) and mpc.selection["safety_stock"] == mpc.module.safety_stock
    best = max(c.validation_score for c in result.candidates.values())
    assert result.chosen.validation_score == best and mpc.validation_score > result.candidates["default"].validation_score
    assert evaluate_policy(mpc.module, mpc.weights, validation, CACHE.costs(validation))["score"] == pytest.approx(
        mpc.validation_score, abs=1e-9)
    assert result.summary()["candidates"]["mpc"]["base_selection"]["safety_stock"] == mpc.module.safety_stock
    # Alone, and on a chain the threshold map was not fitted for (the LP runs on any chain).
    other = LSTMPolicy(Params(cap_produce=2500.0))
    own = OracleCache(other.params)  # (its chain's scenarios: another chain's are refused)
    support, validation = own.scenarios([800], regime), own.scenarios([900], regime)
    alone = adapt_portfolio(other, regime, 0, base="mpc", support=support, validation=validation, cache=own)
    assert set(alone.candidates) == {"mpc"} and alone.chosen.module.params == other.params
    auto = adapt_portfolio(other, regime, 0, support=support, validation=validation, cache=own)
    assert set(auto.candidates) == {"default", "mpc"} and "map candidate was left out" in auto.notes[0]


def test_mpc_checkpoint_round_trips_and_refuses_corruption(tmp_path):
    module = mpc_policy(Params(), 800.0)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    save_mpc_policy(tmp_path / "ck", module, {"portfolio": {"chosen": "mpc"}})
    loaded, meta = load_learned_policy(tmp_path / "ck")
    assert isinstance(loaded, MPCBasePolicy) and loaded.safety_stock == 800.0 and meta["kind"] == "mpc-policy"
    tests = CACHE.scenarios([1002], TASKS["T1"])
    oracle = CACHE.costs(tests)
    assert evaluate_policy(loaded, None, tests, oracle)["score"] == evaluate_policy(module, None, tests, oracle)["score"]
    # On another chain the safety stock and the weights carry over.
    moved = with_params(loaded, Params(cap_produce=1800.0))
    assert isinstance(moved, MPCBasePolicy) and moved.safety_stock == 800.0 and moved.params.cap_produce == 1800.0
    assert torch.equal(moved.head.weight, loaded.head.weight)
    broken = tmp_path / "broken"
    for corrupt, field in ((lambda d: d.__setitem__("safety_stock", -1), "safety_stock"),
                           (lambda d: d.pop("safety_stock"), "safety_stock"),
                           (lambda d: d["params"].__setitem__("cap_produce", "lots"), "params"),
                           (lambda d: d.__setitem__("kind", "lstm-policy"), None)):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(tmp_path / "ck", broken)
        data = json.loads((broken / checkpoint.META).read_text())
        corrupt(data)
        write_meta(broken, data)
        with pytest.raises(CheckpointError) as err:
            load_mpc_policy(broken)
        message = str(err.value)
        assert str(broken) in message and "\n" not in message
        assert field is None or field in message


def _moved_lp_policy() -> MPCBasePolicy:
    """The LSTM over the LP with a residual that moves the LP's action, so the projection has work to do."""
    module = mpc_policy(Params(), 400.0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    return module


DEPLOYED = DeployedPolicy(_moved_lp_policy())


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_deployed_action_over_the_lp_is_feasible(data):
    check_three_periods(DEPLOYED, data)


def test_a_tiny_mandate_with_every_stock_empty_is_solved():
    """The case hypothesis found: a mandate of 6e-8 with every stock, pipeline and history
    empty left HiGHS's simplex (no presolve) at status 'Unknown'; the LP is retried with
    presolve and the deployed action is feasible."""
    regime = np.array([5.960464477539063e-08, 0.0, math.inf, 0.0, 0.0])
    DEPLOYED.reset()
    for t in range(3):
        action = DEPLOYED.decide(t, np.zeros(5), np.zeros(1), np.zeros(6), regime, 0.0, None)
        assert np.isfinite(action).all()
        assert safety.is_feasible(action, 0.0, 0.0, 0.0, regime, DEPLOYED.params)


def test_adapt_cli_with_the_lp_writes_and_reloads_the_winner(tmp_path):
    out_dir = tmp_path / "adapted"
    result = run("adapt", "--checkpoint", "default", "--regime", "T3", "--steps", 1, "--scenarios", 1,
                 "--validation", 2, "--base", "mpc", "-o", out_dir, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["portfolio"]["chosen"] == "mpc" and set(out["portfolio"]["candidates"]) == {"mpc"}
    stock = out["portfolio"]["candidates"]["mpc"]["base_selection"]["safety_stock"]
    module, meta = load_mpc_policy(out_dir)
    assert module.safety_stock == stock and meta["scores"]["after"] == pytest.approx(out["score_after"])
    evaluated = run("evaluate", "--policy", out_dir, "--regime", "T3", "--scenarios", 1, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout)
    assert summary["violations"] == 0 and summary["score"] == pytest.approx(out["score_after"], abs=2e-3)
    write_meta(out_dir, json.loads((out_dir / checkpoint.META).read_text().replace('"safety_stock": ',
                                                                                   '"safety_stock": -')))
    assert_bad_input(run("evaluate", "--policy", out_dir, "--regime", "T3", "--scenarios", 1), "safety_stock")


def test_on_a_chain_of_another_lead_time_only_the_lp_candidate_can_start():
    from moca.policy import InputSizeError
    from moca.portfolio import start_on_chain

    longer = Params(lead_virgin=3)
    module, base, notes = start_on_chain("default", longer, "auto")
    assert isinstance(module, MPCBasePolicy) and module.params == longer and base == "mpc"
    assert "lead_virgin=2" in notes[0] and "LP" in notes[0]
    assert start_on_chain("default", longer, "mpc")[1] == "mpc"
    same, base, notes = start_on_chain("default", Params(), "auto")
    assert not isinstance(same, MPCBasePolicy) and base == "auto" and notes == []
    for base in ("default", "map"):  # these need the checkpoint's own inputs: the error says the way out
        with pytest.raises(InputSizeError, match="--base mpc"):
            start_on_chain("default", longer, base)


def test_adapt_cli_on_a_chain_of_another_lead_time_deploys_the_lp(tmp_path):
    (tmp_path / "chain.json").write_text(json.dumps({"lead_virgin": 3, "cap_produce": 1700}))
    out_dir = tmp_path / "adapted"
    result = run("adapt", "--checkpoint", "default", "--regime", "T2", "--params", tmp_path / "chain.json",
                 "--steps", 1, "--scenarios", 2, "--validation", 2, "-o", out_dir, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["base"] == "mpc" and out["portfolio"]["chosen"] == "mpc" and out["violations"] == 0
    assert "lead_virgin=2" in out["portfolio"]["notes"][0]
    # seed ranges as [first, last] alike (validation_seeds was the string "900-901")
    assert out["test_seeds"] == [1000, 1001] and out["validation_seeds"] == [900, 901]
    module, _ = load_mpc_policy(out_dir)
    assert module.params.lead_virgin == 3 and module.params.cap_produce == 1700
    evaluated = run("evaluate", "--policy", out_dir, "--regime", "T2", "--params", tmp_path / "chain.json",
                    "--scenarios", 2, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout)
    assert summary["violations"] == 0 and summary["score"] == pytest.approx(out["score_after"], abs=2e-3)
    assert_bad_input(run("adapt", "--checkpoint", "default", "--regime", "T2", "--params", tmp_path / "chain.json",
                         "--base", "default", "--steps", 1), "lead_virgin", "--base mpc")
