"""The shipped threshold map, the adaptation portfolio (its candidates chosen on validation
scenarios), mapped-policy checkpoints and the mapped policy on the deployment
path (every executed action feasible)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moca import checkpoint
from moca.checkpoint import CheckpointError
from moca.meta import OracleCache
from moca.policy import DeployedPolicy, LSTMPolicy, evaluate_policy
from moca.portfolio import adapt_portfolio
from moca.regime import TASKS
from moca.regime_map import (MAP_FILE, RegimeMapError, ThresholdMap, load_learned_policy, load_map,
                             load_mapped_policy, mapped_policy, save_map, save_mapped_policy, select_thresholds)
from moca.scenario import Params
from tests._cli import assert_bad_input, run
from tests._feasible import check_three_periods
from tests._checkpoints import write_meta

SHIPPED, FIT = load_map()


def test_shipped_map_round_trips_and_records_its_command(tmp_path):
    assert SHIPPED.regimes.shape == (64, 5) and SHIPPED.params == Params()
    assert "bench_regime_map.py" in FIT["command"] and "--ship" in FIT["command"] and FIT["seconds"] > 0
    save_map(tmp_path / "m", SHIPPED, FIT)
    again, fit = load_map(tmp_path / "m")
    rows = np.array([TASKS[t].as_row() for t in ("T1", "T2", "T3")])
    assert np.array_equal(again.thresholds(rows), SHIPPED.thresholds(rows)) and fit == FIT
    text = (tmp_path / "m" / MAP_FILE).read_text()
    assert "NaN" not in text and "Infinity" not in text  # plain JSON (no cap = null)


def test_a_map_is_never_saved_under_the_shipped_map_s_name(tmp_path, monkeypatch):
    """``save_map("map-clsc1")`` wrote ./map-clsc1, and loading that name gave the shipped map."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegimeMapError, match="map-clsc1: the name of the shipped map"):
        save_map("map-clsc1", SHIPPED, FIT)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("corrupt, field", [
    (lambda d: d["map"]["units"][3].pop(), "units[3]"),
    (lambda d: d["map"]["regimes"][0].__setitem__(1, "x"), "regimes[0][1]"),
    (lambda d: d["map"]["units"][5].__setitem__(2, 7.0), "units[5][2]"),
    (lambda d: d["map"].pop("units"), "units: missing"),
    (lambda d: d["map"].__setitem__("smoothing", -1), "smoothing"),
    (lambda d: d["map"]["params"].__setitem__("cap_produce", -5), "params"),
    (lambda d: d.__setitem__("format", "other"), "format"),
])
def test_a_corrupted_map_fails_with_one_line_naming_the_field(tmp_path, corrupt, field):
    folder = tmp_path / "m"
    save_map(folder, SHIPPED, FIT)
    data = json.loads((folder / MAP_FILE).read_text())
    corrupt(data)
    (folder / MAP_FILE).write_text(json.dumps(data))
    with pytest.raises(RegimeMapError) as err:
        load_map(folder)
    message = str(err.value)
    assert field in message and "\n" not in message and str(folder) in message
    (folder / MAP_FILE).write_text("{ not json")
    with pytest.raises(RegimeMapError, match="not valid JSON"):
        load_map(folder)


def _scenarios(regime, seeds):
    cache = OracleCache()
    return cache, cache.scenarios(seeds, regime)


def test_the_portfolio_keeps_the_candidate_with_the_better_validation_score():
    regime = TASKS["T2"]
    cache, support = _scenarios(regime, range(800, 802))
    validation = cache.scenarios(range(900, 902), regime)
    oracle = cache.costs(validation)
    good = LSTMPolicy()  # a zero head: moca's base rule
    # 1. A map whose every tuning is the corner of the search box: the checkpoint wins.
    corner = ThresholdMap(SHIPPED.regimes[:8], np.ones((8, 6)))
    result = adapt_portfolio(good, regime, 0, threshold_map=corner, select=2, cache=cache, support=support,
                             validation=validation)
    scores = {n: c.validation_score for n, c in result.candidates.items()}
    assert list(scores) == ["default", "map", "mpc"] and scores["default"] > scores["map"]
    assert result.chosen.name == max(scores, key=scores.get)  # the best, the first of equals
    assert result.candidates["default"].module is good
    # 2. A checkpoint that orders far too much: the mapped policy (shipped map) wins.
    bad = LSTMPolicy()
    with torch.no_grad():
        bad.head.bias.fill_(3.0)
    result = adapt_portfolio(bad, regime, 1, threshold_map=SHIPPED, select=2, cache=cache, support=support,
                             validation=validation)
    scores = {n: c.validation_score for n, c in result.candidates.items()}
    assert scores["map"] > scores["default"] and result.chosen.name == max(scores, key=scores.get)
    # The score that chose is the chosen weights' score on the validation scenarios, and the
    # summary says so; the seconds cover both candidates.
    chosen = result.chosen
    assert evaluate_policy(chosen.module, chosen.weights, validation, oracle)["score"] == pytest.approx(
        chosen.validation_score, abs=1e-9)
    summary = result.summary()
    assert summary["chosen"] == chosen.name and result.seconds >= sum(c.seconds for c in result.candidates.values())
    # Only one candidate when asked; the map refused for other params.
    assert set(adapt_portfolio(good, regime, 0, base="default", cache=cache, support=support,
                               validation=validation).candidates) == {"default"}
    other = LSTMPolicy(Params(cap_produce=2500.0))
    with pytest.raises(RegimeMapError, match="other params"):
        adapt_portfolio(other, regime, 0, base="map", threshold_map=SHIPPED, support=support[:1],
                        validation=validation[:1])
    with pytest.raises(RegimeMapError, match="base"):
        adapt_portfolio(good, regime, 0, base="best")


def _mapped(seed: int = 0):
    module = mapped_policy(SHIPPED)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))  # moves and gets projected
    return module


def test_the_portfolio_reports_its_progress_candidate_by_candidate():
    """The callback behind moca adapt's bars on CLSC-1: each candidate's base selection
    (uncounted), then its steps counted to ``steps``, in the portfolio's order."""
    regime = TASKS["T2"]
    cache, support = _scenarios(regime, range(800, 802))
    told = []
    result = adapt_portfolio(LSTMPolicy(), regime, 2, threshold_map=SHIPPED, select=2, cache=cache, support=support,
                             validation=cache.scenarios(range(900, 901), regime),
                             progress=lambda *call: told.append(call))
    phases = [what for i, (what, _, _) in enumerate(told) if i == 0 or told[i - 1][0] != what]
    assert phases == ["the checkpoint: adapting (steps)", "the mapped rule: picking its thresholds",
                      "the mapped rule: adapting (steps)", "the LSTM over the LP: picking its safety stock",
                      "the LSTM over the LP: adapting (steps)"]
    for phase in phases:
        counts = [(done, total) for what, done, total in told if what == phase]
        assert counts == ([(0, 2), (1, 2), (2, 2)] if phase.endswith("(steps)") else [(0, None)])
    assert set(result.candidates) == {"default", "map", "mpc"}


def test_mapped_checkpoint_round_trips_and_refuses_corruption(tmp_path):
    module = _mapped()
    regime = TASKS["T3"]
    cache, support = _scenarios(regime, range(800, 802))
    thresholds, _ = select_thresholds(SHIPPED, regime, support, 4)
    module.pin(regime, thresholds)
    save_mapped_policy(tmp_path / "ck", module, {"portfolio": {"chosen": "map"}})
    loaded, meta = load_learned_policy(tmp_path / "ck")
    assert meta["kind"] == "mapped-policy" and meta["portfolio"]["chosen"] == "map"
    tests = cache.scenarios([1000], regime)
    oracle = cache.costs(tests)
    assert evaluate_policy(loaded, None, tests, oracle)["score"] == evaluate_policy(module, None, tests, oracle)["score"]
    # the deployment path computes the same policy (float64 against the float32 training path)
    from moca.evaluation import evaluate_policy as evaluate_deployed

    deployed = evaluate_deployed("mapped", DeployedPolicy(loaded), tests, oracle)
    assert deployed.violations == 0
    assert float(deployed.scores.mean()) == pytest.approx(evaluate_policy(module, None, tests, oracle)["score"], abs=2e-3)
    # a plain policy checkpoint still loads through the same function
    assert type(load_learned_policy("default")[0]) is LSTMPolicy
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "ck", broken)
    data = json.loads((broken / checkpoint.META).read_text())
    data["map"]["units"][0] = [0.5] * 5
    write_meta(broken, data)
    with pytest.raises(CheckpointError) as err:
        load_mapped_policy(broken)
    assert "map.units[0]" in str(err.value) and str(broken) in str(err.value)
    data["map"]["units"][0] = [0.5] * 6
    data["pinned"][0]["thresholds"] = [1.0, math.nan]
    write_meta(broken, data)
    with pytest.raises(CheckpointError, match=r"pinned\[0\]"):
        load_mapped_policy(broken)


DEPLOYED = DeployedPolicy(_mapped(1))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_mapped_deployed_action_is_feasible(data):
    check_three_periods(DEPLOYED, data)


def test_adapt_cli_with_the_map_writes_and_reloads_the_winner(tmp_path):
    out_dir = tmp_path / "adapted"
    result = run("adapt", "--checkpoint", "default", "--regime", "T2", "--steps", 1, "--scenarios", 1,
                 "--validation", 2, "--base", "map", "-o", out_dir, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["base"] == "map" and out["portfolio"]["chosen"] == "map" and out["violations"] == 0
    assert set(out["portfolio"]["candidates"]) == {"map"} and out["seconds"] > 0
    module, meta = load_mapped_policy(out_dir)
    assert meta["portfolio"]["chosen"] == "map" and meta["scores"]["after"] == pytest.approx(out["score_after"])
    evaluated = run("evaluate", "--policy", out_dir, "--regime", "T2", "--scenarios", 1, "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout)
    assert summary["violations"] == 0 and summary["score"] == pytest.approx(out["score_after"], abs=2e-3)
    assert_bad_input(run("adapt", "--checkpoint", "default", "--regime", "T2", "--base", "best"), "--base", "best")


def test_evaluate_adapt_steps_reports_the_candidate_deployed():
    from moca.experiment import build_policy
    from moca.regime import RegimeSchedule

    agent = build_policy("default", RegimeSchedule.constant(TASKS["T1"]), adapt_steps=1, base="map")
    assert agent.portfolio["chosen"] == "map" and set(agent.portfolio["candidates"]) == {"map"}
    assert agent.base_rule is not None  # the mapped rule runs on the deployment path
    assert not hasattr(build_policy("default", RegimeSchedule.constant(TASKS["T1"])), "portfolio")


def test_cap_candidates_benchmark_quick(tmp_path, monkeypatch):
    """bench_cap_candidates.py --quick: one random capped regime (bench_random_regimes' draw),
    the three candidates adapted as a service job does, every pair's choice recorded and, where
    a pair would deploy another candidate, both scored on test seeds."""
    from _bench import run_script

    out = tmp_path / "cap.json"
    run_script("bench_cap_candidates.py", ["--quick", "--out", str(out)], monkeypatch)
    data = json.loads(out.read_text())
    assert data["command"] == "python benchmarks/bench_cap_candidates.py --regimes 1 --seed 2030 --steps 1 --quick"
    [row] = data["regimes"]
    assert row["regime"]["emission_cap"] > 0 and set(row["validation"]) == {"default", "map", "mpc"}
    best = max(row["validation"], key=row["validation"].get)
    assert row["chosen"] == best and set(row["pairs"]) == {"default+map", "default+mpc", "map+mpc"}
    for pair, name in row["pairs"].items():
        assert name in pair.split("+") and row["validation"][name] == max(row["validation"][n] for n in pair.split("+"))
        if name != row["chosen"]:
            assert set(row["test"]) >= {name, row["chosen"]} and all(0 < s <= 1.0 for s in row["test"].values())
    assert data["summary"]["chosen"][row["chosen"]] == 1 and data["test_seeds"] == [1000, 1003]


def test_the_caps_base_follows_the_regime():
    """caps: the whole portfolio where an emission cap is in force at some period (a
    schedule's later entry included, either world), the checkpoint alone elsewhere; the
    other bases are themselves."""
    from moca.portfolio import base_for
    from moca.regime import Regime, RegimeSchedule, load_regime

    later_cap = RegimeSchedule.from_list([{"start": 0, "recycled_content_min": 0.1},
                                          {"start": 20, "emission_cap": 9000.0}])
    assert base_for("caps", Regime(emission_cap=12000.0)) == "auto" and base_for("caps", later_cap) == "auto"
    assert base_for("caps", load_regime("T3")) == "default"
    assert base_for("caps", load_regime({"emission_cap": 30000.0}, model="CLSC-2")) == "auto"
    assert base_for("caps", load_regime("T2", model="CLSC-2")) == "default"
    assert [base_for(b, Regime(emission_cap=1.0)) for b in ("default", "map", "mpc")] == ["default", "map", "mpc"]


def test_evaluate_adapt_steps_passes_its_progress_to_the_portfolio(monkeypatch):
    """moca evaluate --adapt-steps (moca.experiment.build_policy) hands its bars' callback to
    the portfolio, which tells it each candidate's phases."""
    import moca.portfolio as portfolio
    from moca.experiment import build_policy
    from moca.regime import load_schedule

    given = []

    def adapt_portfolio(*args, **kwargs):
        given.append(kwargs["progress"])
        raise RuntimeError("stop here")  # what follows is tested elsewhere

    def tell(what, done, total):
        pass

    monkeypatch.setattr(portfolio, "adapt_portfolio", adapt_portfolio)
    with pytest.raises(RuntimeError, match="stop here"):
        build_policy("default", load_schedule("T2"), adapt_steps=1, base="auto", progress=tell)
    assert given == [tell]
