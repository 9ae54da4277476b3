"""CLSC-2 adaptation from re-tuned thresholds (moca.meta2.adapt2's ``retune``): the starts it
builds are the threshold rule at those thresholds (with the learned residual, and without it),
the choice among them and the checkpoint follows the validation scores, and bad settings are
refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from moca.baselines.peers import evaluate2
from moca.baselines.threshold2 import THRESHOLD2_NAMES, Threshold2Policy, threshold2_bounds, tune_threshold2
from moca.meta import MetaError
from moca.meta2 import (RETUNE_ON_CHANGES, THRESHOLD_EDGE, OracleCache2, adapt2, default_retune, load_policy2,
                        threshold_start, without_residual)
from moca.policy import PolicyConfig
from moca.policy2 import LSTMPolicy2, evaluate_policy2
from moca.regime import Regime, RegimeSchedule
from moca.scenario import DEFAULT_PARAMS_2, draw_scenario2
from tests._cli import assert_bad_input, run, run_in_process

BOUNDS = threshold2_bounds(DEFAULT_PARAMS_2)
# A mandate, then a tax rise with a landfill tax: the regime and its window change in the episode.
PLAN = RegimeSchedule.from_list([
    {"start": 0, "recycled_content_min": 0.2, "recycled_content_window": 52},
    {"start": 20, "recycled_content_min": 0.2, "carbon_tax": 600.0, "landfill_tax": 40.0, "recycled_content_window": 52},
])


def rule_thresholds(module: LSTMPolicy2, weights) -> np.ndarray:
    """The base rule's thresholds under ``weights`` for a few unrelated regimes ([regimes, 7])."""
    regimes = [Regime(), Regime(recycled_content_min=0.4, carbon_tax=900.0, landfill_tax=30.0, recycled_content_window=13),
               Regime(carbon_tax=50.0, emission_cap=1e4, recovery_target=0.9, recycled_content_window=104)]
    scenarios = [draw_scenario2(1000, RegimeSchedule.constant(r)) for r in regimes]
    regime_t = torch.as_tensor(np.stack([s.regime_table()[0] for s in scenarios]))
    window_t = torch.as_tensor(np.stack([s.window_table()[0] for s in scenarios]))
    module = LSTMPolicy2(module.params, module.config)
    module.load_state_dict({**module.state_dict(), **{k: v.detach() for k, v in weights.items()}})
    with torch.no_grad():
        return module.thresholds(regime_t, window_t).double().numpy()


def test_threshold_start_acts_as_the_threshold_rule_at_those_thresholds():
    fresh = LSTMPolicy2(DEFAULT_PARAMS_2, PolicyConfig(hidden=8))  # its head is zero: the action is the rule's
    rng = np.random.default_rng(3)
    thresholds = BOUNDS[:, 0] + (BOUNDS[:, 1] - BOUNDS[:, 0]) * rng.uniform(0.05, 0.95, len(THRESHOLD2_NAMES))
    weights = threshold_start(fresh, dict(fresh.named_parameters()), thresholds)
    assert all(w.requires_grad for w in weights.values())
    held = rule_thresholds(fresh, weights)
    np.testing.assert_allclose(held, np.broadcast_to(thresholds, held.shape), rtol=1e-5, atol=1e-3)
    scenarios = [draw_scenario2(seed, PLAN) for seed in (1000, 1001)]
    ones = np.ones(len(scenarios))  # the costs are compared, so no oracle is needed
    ours = evaluate_policy2(fresh, weights, scenarios, ones)
    peer = evaluate2("threshold", Threshold2Policy(thresholds), scenarios, ones)
    assert ours["violations"] == 0 and peer.violations == 0
    np.testing.assert_allclose(ours["mean_cost"], float(np.mean(peer.costs)), rtol=1e-6)
    # The rest of the weights are the given ones.
    for name, value in fresh.named_parameters():
        if not name.startswith("rule_"):
            assert torch.equal(weights[name].detach(), value.detach())


def test_threshold_start_puts_thresholds_on_the_box_edge_just_inside_it():
    fresh = LSTMPolicy2(DEFAULT_PARAMS_2, PolicyConfig(hidden=8))
    outside = np.where(np.arange(len(THRESHOLD2_NAMES)) % 2 == 0, BOUNDS[:, 0] - 10.0, BOUNDS[:, 1] + 10.0)
    held = rule_thresholds(fresh, threshold_start(fresh, dict(fresh.named_parameters()), outside))
    share = (held - BOUNDS[:, 0]) / (BOUNDS[:, 1] - BOUNDS[:, 0])
    expected = np.where(np.arange(len(THRESHOLD2_NAMES)) % 2 == 0, THRESHOLD_EDGE, 1.0 - THRESHOLD_EDGE)
    np.testing.assert_allclose(share, np.broadcast_to(expected, share.shape), atol=1e-5)


@pytest.fixture(scope="module")
def shipped():
    return load_policy2("default")[0]


def test_retuned_start_is_the_peers_tuning_and_the_better_start_on_validation(shipped):
    cache = OracleCache2(shipped.params)
    weights, curve = adapt2(shipped, None, PLAN, steps=1, support_size=2, validation_size=2, cache=cache,
                            keep_best=True, retune=24, retune_scenarios=1)
    first = curve[0]
    peer = tune_threshold2(PLAN, shipped.params, train_seeds=1, budget=24)
    assert first["thresholds"] == peer.as_dict()
    scores = first["start_scores"]
    assert list(scores) == ["checkpoint", "re-tuned thresholds", "re-tuned rule"]
    better = max(scores, key=scores.get)  # the first of equals, in that order
    assert first["start"] == better and first["score"] == scores[better]
    assert 0 < first["seconds"] <= curve[1]["seconds"]  # the tuning is counted in the adaptation's seconds
    assert all(c["violations"] == 0 for c in curve)
    assert next(c for c in curve if c["selected"])["score"] == max(c["score"] for c in curve)


def test_a_better_retuned_start_is_taken_and_returned(monkeypatch):
    # The search stubbed by a fixed answer so that which start is better is known: on this
    # plan the rule at the bottom of its box validates higher than at the top.
    import moca.baselines.threshold2 as threshold2

    fresh = LSTMPolicy2(DEFAULT_PARAMS_2, PolicyConfig(hidden=8))
    monkeypatch.setattr(threshold2, "tune_threshold2", lambda plan, params, train_seeds, budget, progress=None:
                        Threshold2Policy(BOUNDS[:, 0], params))
    cache = OracleCache2(fresh.params)
    top = threshold_start(fresh, dict(fresh.named_parameters()), BOUNDS[:, 1])
    weights, curve = adapt2(fresh, top, PLAN, steps=0, support_size=2, validation_size=2, cache=cache,
                            keep_best=True, retune=8, retune_scenarios=1)
    scores = curve[0]["start_scores"]
    assert scores["re-tuned thresholds"] > scores["checkpoint"] and curve[0]["start"] == "re-tuned thresholds"
    held = rule_thresholds(fresh, weights)
    edge = BOUNDS[:, 0] + THRESHOLD_EDGE * (BOUNDS[:, 1] - BOUNDS[:, 0])
    np.testing.assert_allclose(held, np.broadcast_to(edge, held.shape), rtol=1e-5, atol=1e-3)
    # The other way round the checkpoint is kept, and its weights come back as given.
    monkeypatch.setattr(threshold2, "tune_threshold2", lambda plan, params, train_seeds, budget, progress=None:
                        Threshold2Policy(BOUNDS[:, 1], params))
    bottom = threshold_start(fresh, dict(fresh.named_parameters()), BOUNDS[:, 0])
    weights, curve = adapt2(fresh, bottom, PLAN, steps=0, support_size=2, validation_size=2, cache=cache,
                            keep_best=True, retune=8, retune_scenarios=1)
    assert curve[0]["start"] == "checkpoint"
    assert all(torch.equal(weights[k], bottom[k].detach()) for k in bottom)


def harmful(module: LSTMPolicy2, thresholds: np.ndarray):
    """The rule at ``thresholds`` with a residual that pushes every decision up: a learned part
    that costs more than it earns."""
    weights = threshold_start(module, dict(module.named_parameters()), thresholds)
    with torch.no_grad():
        weights["head.bias"].fill_(2.0)
    return weights


def test_without_residual_is_the_rule_alone():
    fresh = LSTMPolicy2(DEFAULT_PARAMS_2, PolicyConfig(hidden=8))
    thresholds = 0.5 * (BOUNDS[:, 0] + BOUNDS[:, 1])
    weights = harmful(fresh, thresholds)
    scenarios = [draw_scenario2(seed, PLAN) for seed in (1000, 1001)]
    ones = np.ones(len(scenarios))
    peer = evaluate2("threshold", Threshold2Policy(thresholds), scenarios, ones)
    assert evaluate_policy2(fresh, weights, scenarios, ones)["mean_cost"] > 1.01 * float(np.mean(peer.costs))
    alone = without_residual(weights)
    assert all(w.requires_grad for w in alone.values()) and not bool(weights["head.bias"].eq(0).all())
    np.testing.assert_allclose(evaluate_policy2(fresh, alone, scenarios, ones)["mean_cost"],
                               float(np.mean(peer.costs)), rtol=1e-6)


def test_the_retuned_rule_is_taken_where_the_residual_costs(monkeypatch):
    # The checkpoint's residual is harmful, so the rule alone at the re-tuned thresholds
    # validates highest of the three starts; the search is stubbed by a fixed answer.
    import moca.baselines.threshold2 as threshold2

    fresh = LSTMPolicy2(DEFAULT_PARAMS_2, PolicyConfig(hidden=8))
    monkeypatch.setattr(threshold2, "tune_threshold2", lambda plan, params, train_seeds, budget, progress=None:
                        Threshold2Policy(BOUNDS[:, 0], params))
    weights, curve = adapt2(fresh, harmful(fresh, BOUNDS[:, 1]), PLAN, steps=0, support_size=2, validation_size=2,
                            cache=OracleCache2(fresh.params), keep_best=True, retune=8, retune_scenarios=1)
    scores = curve[0]["start_scores"]
    assert scores["re-tuned rule"] > max(scores["checkpoint"], scores["re-tuned thresholds"])
    assert curve[0]["start"] == "re-tuned rule" and curve[0]["score"] == scores["re-tuned rule"]
    assert bool(weights["head.weight"].eq(0).all()) and bool(weights["head.bias"].eq(0).all())
    edge = BOUNDS[:, 0] + THRESHOLD_EDGE * (BOUNDS[:, 1] - BOUNDS[:, 0])
    held = rule_thresholds(fresh, weights)
    np.testing.assert_allclose(held, np.broadcast_to(edge, held.shape), rtol=1e-5, atol=1e-3)


def test_retune_settings_are_checked(shipped):
    with pytest.raises(MetaError, match="retune"):
        adapt2(shipped, None, PLAN, steps=0, retune=-1)
    with pytest.raises(MetaError, match="retune"):
        adapt2(shipped, None, PLAN, steps=0, retune=10, retune_scenarios=0)


def test_cli_adapt_retune(tmp_path):
    out = run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--steps", 0,
              "--scenarios", 1, "--validation", 1, "--base", "default", "--retune", 16, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["start"]["chosen"] in ("checkpoint", "re-tuned thresholds", "re-tuned rule")
    assert list(data["start"]["validation_scores"]) == ["checkpoint", "re-tuned thresholds", "re-tuned rule"]
    assert sorted(data["start"]["thresholds"]) == sorted(THRESHOLD2_NAMES) and data["violations"] == 0
    out = run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--steps", 0,
              "--scenarios", 1, "--validation", 1, "--base", "default", "--retune", 16)
    assert out.returncode == 0, out.stderr
    assert "--retune 16: the steps started from the" in out.stdout and "re-tuned thresholds" in out.stdout
    assert_bad_input(run("adapt", "--checkpoint", "default", "--regime", "T2", "--retune", 5), "--retune", "CLSC-2")
    assert_bad_input(run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--retune", -3),
                     "--retune")


def test_default_retune_is_on_only_where_a_rule_changes_within_the_horizon():
    horizon = DEFAULT_PARAMS_2.horizon
    assert default_retune(PLAN, horizon) == RETUNE_ON_CHANGES == 1500
    assert default_retune(Regime(carbon_tax=300.0), horizon) == 0
    assert default_retune(RegimeSchedule.constant(Regime(carbon_tax=300.0)), horizon) == 0
    # a change announced for the horizon's end or later is not in the plan scored
    assert default_retune(PLAN, 20) == 0 and default_retune(PLAN, 21) == RETUNE_ON_CHANGES
    # a second entry with the same rules is no change
    same = RegimeSchedule.from_list([{"start": 0, "carbon_tax": 100.0}, {"start": 30, "carbon_tax": 100.0}])
    assert default_retune(same, horizon) == 0
    window_only = RegimeSchedule.from_list([{"start": 0, "recycled_content_min": 0.2, "recycled_content_window": 52},
                                            {"start": 30, "recycled_content_min": 0.2, "recycled_content_window": 13}])
    assert default_retune(window_only, horizon) == RETUNE_ON_CHANGES


def test_cli_adapt_retunes_by_default_on_a_plan_with_a_change_only(tmp_path, monkeypatch):
    import moca.meta2

    monkeypatch.setattr(moca.meta2, "RETUNE_ON_CHANGES", 12)  # the plumbing, not the peer's 1,500
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([entry.model_dump() for entry in PLAN.entries]))
    fast = ("--steps", 0, "--scenarios", 1, "--validation", 1, "--base", "default")
    out = run_in_process("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", plan, *fast, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["retune"], data["retune_given"]) == (12, False)
    assert data["test_seeds"] == [1000, 1000] and data["validation_seeds"] == [900, 900]
    assert data["start"]["chosen"] in data["start"]["validation_scores"]
    out = run_in_process("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", plan, *fast)
    assert out.returncode == 0, out.stderr
    assert "--retune 12 (the default on a plan whose rules change; --retune 0: off)" in out.stdout
    for regime, retune in ((plan, ("--retune", 0)), ("T2", ())):  # asked off, or a regime held all year
        out = run_in_process("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", regime, *fast,
                             *retune, "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["retune"] == 0 and "start" not in data


def test_cli_evaluate_adapts_as_moca_adapt_does(tmp_path, monkeypatch):
    import moca.meta2

    monkeypatch.setattr(moca.meta2, "RETUNE_ON_CHANGES", 12)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([entry.model_dump() for entry in PLAN.entries]))
    for regime, adapt_steps, retune in ((plan, 1, 12), (plan, 0, 0), ("T2", 1, 0)):
        out = run_in_process("evaluate", "--model", "CLSC-2", "--policy", "default", "--regime", regime,
                             "--adapt-steps", adapt_steps, "--base", "default", "--scenarios", 1, "--json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["retune"] == retune and summary["violations"] == 0
        assert summary.get("retune_given") is (False if adapt_steps else None)
        start = summary.get("portfolio", {}).get("candidates", {}).get("default", {}).get("start")
        assert (start is not None) is (retune > 0)  # which start the steps took, as moca adapt says
        if start is not None:
            assert start["chosen"] in start["validation_scores"] and sorted(start["thresholds"]) == sorted(
                THRESHOLD2_NAMES)
    # --retune sets it, as moca adapt's does: off on the plan, on for a regime held all year
    out = run_in_process("evaluate", "--model", "CLSC-2", "--policy", "default", "--regime", plan,
                         "--adapt-steps", 1, "--base", "default", "--scenarios", 1, "--retune", 0, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["retune"], summary["retune_given"], summary["violations"]) == (0, True, 0)
    out = run_in_process("evaluate", "--model", "CLSC-2", "--policy", "default", "--regime", "T2",
                         "--adapt-steps", 1, "--base", "default", "--scenarios", 1, "--retune", 2)
    assert out.returncode == 0, out.stderr
    assert "--retune 2: the steps started from the" in out.stdout and "violations 0" in out.stdout


def test_retune_is_refused_where_it_would_be_ignored(tmp_path, monkeypatch):
    """--retune where nothing would re-tune (CLSC-1, no adaptation, a peer, --base mpc) is bad
    input naming the option, never a JSON that reports a re-tuning not run; --base mpc's
    default is no re-tuning."""
    import moca.meta2

    monkeypatch.setattr(moca.meta2, "RETUNE_ON_CHANGES", 12)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([entry.model_dump() for entry in PLAN.entries]))
    evaluate = ("evaluate", "--model", "CLSC-2", "--regime", plan, "--scenarios", 1)
    for args, needles in (
            (("evaluate", "--policy", "default", "--adapt-steps", 1, "--retune", 5), ("--retune", "CLSC-2")),
            ((*evaluate, "--policy", "default", "--retune", 5), ("--retune", "--adapt-steps")),
            ((*evaluate, "--policy", "threshold", "--retune", 0), ("--retune", "--adapt-steps")),
            ((*evaluate, "--policy", "default", "--adapt-steps", 1, "--base", "mpc", "--retune", 5),
             ("--retune 5", "--base mpc")),
            (("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", plan, "--base", "mpc",
              "--retune", 5), ("--retune 5", "--base mpc"))):
        assert_bad_input(run_in_process(*args), *needles)
    out = run_in_process("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", plan, "--steps", 0,
                         "--scenarios", 1, "--validation", 1, "--base", "mpc", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["retune"], data["retune_given"], data["deployed"]) == (0, False, "mpc") and "start" not in data


def test_adaptation_reports_its_progress_phase_by_phase(shipped):
    """The callback behind moca adapt's progress bars: the re-tuning counts its candidates up
    to what it evaluated and ends complete, the steps count to ``steps``, then the sampled
    MPC's two uncounted phases, in that order."""
    from moca.portfolio import adapt_portfolio2

    calls = []
    tuned = tune_threshold2(PLAN, shipped.params, train_seeds=1, budget=40, progress=lambda n: calls.append(n))
    assert calls == sorted(calls) and calls[-1] == tuned.tuning.candidates and len(calls) >= 2
    told = []
    result = adapt_portfolio2(shipped, PLAN, 2, support_size=2, validation_size=1, stocks=(300.0,), retune=24,
                              retune_scenarios=1, progress=lambda *call: told.append(call))
    phases = [what for i, (what, _, _) in enumerate(told) if i == 0 or told[i - 1][0] != what]
    assert phases == ["re-tuning the rule (candidates)", "adapting (steps)",
                      "the sampled MPC: picking its safety stock", "the sampled MPC: scoring it on validation"]
    retuning = [(done, total) for what, done, total in told if what == phases[0]]
    assert retuning[0] == (0, 24) and retuning[-1][0] == retuning[-1][1] > 0  # ends complete
    assert all(0 < done <= total for done, total in retuning[1:]) and retuning == sorted(retuning)
    assert [done for what, done, total in told if what == phases[1]] == [0, 1, 2]
    assert all(total is None for what, _, total in told if what.startswith("the sampled MPC"))
    assert set(result.candidates) == {"default", "mpc"}


def test_cli_shows_one_bar_per_phase():
    """moca adapt's bars: a phase's bar counts, the next phase hides it and gets its own
    (uncounted where the library gives no total)."""
    from rich.progress import Progress

    from moca.cli import _phase_bars

    with Progress(disable=True) as progress:
        tell = _phase_bars(progress)
        tell("re-tuning the rule (candidates)", 0, 1500)
        tell("re-tuning the rule (candidates)", 700, 1500)
        first = progress.tasks[-1]
        assert (first.description, first.completed, first.total, first.visible) == (
            "re-tuning the rule (candidates)", 700, 1500, True)
        tell("re-tuning the rule (candidates)", 1190, 1190)  # a search that stopped short of its budget
        assert (first.completed, first.total, first.finished) == (1190, 1190, True)
        tell("the sampled MPC: picking its safety stock", 0, None)
        assert not first.visible and len(progress.tasks) == 2
        second = progress.tasks[-1]
        assert (second.description, second.total, second.visible) == ("the sampled MPC: picking its safety stock",
                                                                      None, True)
