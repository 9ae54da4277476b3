"""moca's learned controller on CLSC-2 (moca.policy2, moca.meta2, moca.experiment2) and its
commands: the fresh policy is the threshold rule, gradients reach every part, adaptation
with keep-best is never worse on validation, a tiny meta-train moves the weights, the CLI
(evaluate / adapt / continual / run --quick) answers with 0 violations, and a checkpoint
of the other world is refused in one line naming it.

Commands run in-process (typer's runner) on 1-2 scenarios; the policy tests use the
float64 evaluation path (every action through the projection, violations recounted).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import moca

from moca.baselines.threshold2 import Threshold2Policy
from moca.cli import app
from moca.meta2 import MetaConfig2, OracleCache2, adapt2, load_policy2, meta_train2, save_policy2
from moca.policy import PolicyConfig
from moca.policy2 import LSTMPolicy2, PolicyAgent2, episode_losses2, evaluate_policy2
from moca.regime import TASKS_2
from moca.scenario import DEFAULT_PARAMS_2, Params2
from moca.sim2 import ScenarioBatch2

SHIPPED_1 = Path(moca.__file__).parent / "data" / "default"  # the CLSC-1 meta-init


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches of 1-8 scenarios: torch's threads only contend (as the commands run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache():
    return OracleCache2()


@pytest.fixture(scope="module")
def small_policy():
    torch.manual_seed(0)
    return LSTMPolicy2(DEFAULT_PARAMS_2, PolicyConfig(hidden=8))


def test_fresh_policy_is_the_threshold_rule(small_policy, cache):
    scenarios = cache.scenarios([1000, 1001], TASKS_2["T2"])
    oracle = cache.costs(scenarios)
    regime = torch.tensor(TASKS_2["T2"].as_row(), dtype=torch.float32)[None]
    thresholds = small_policy.thresholds(regime, torch.tensor([52.0]))[0].detach().double().numpy()
    from moca.baselines.peers import evaluate2

    rule = evaluate2("threshold", Threshold2Policy(thresholds), scenarios, oracle)
    ours = evaluate_policy2(small_policy, None, scenarios, oracle)
    assert ours["violations"] == 0 and rule.violations == 0
    assert ours["score"] == pytest.approx(float(rule.scores.mean()), rel=1e-9)
    assert 0.5 < ours["score"] < 1.0


def test_gradient_reaches_head_rule_and_lstm(small_policy, cache):
    scenarios = cache.scenarios([800, 801], TASKS_2["T3"])
    batch = ScenarioBatch2.from_scenarios(scenarios)
    loss, ratio, correction = episode_losses2(small_policy, None, batch, torch.as_tensor(cache.costs(scenarios)))
    assert loss.shape == (2,) and bool(torch.all(ratio >= 1.0 - 1e-3))  # never below the hindsight optimum
    grads = torch.autograd.grad(loss.mean(), list(small_policy.parameters()), allow_unused=True)
    named = dict(zip([n for n, _ in small_policy.named_parameters()], grads))
    for name in ("head.weight", "rule_bias", "rule_regime.weight"):
        assert named[name] is not None and torch.isfinite(named[name]).all() and float(named[name].abs().sum()) > 0
    # The head starts at zero, so the LSTM's gradient appears after one step; the rule's
    # regime map sees the regime (T3 has a mandate and a tax: non-zero columns).
    assert float(named["rule_regime.weight"][:, 0].abs().sum()) > 0


def test_adapt_keep_best_never_worse_on_validation(small_policy, cache):
    weights, curve = adapt2(small_policy, None, "T2", steps=2, support_size=2, validation_size=2, cache=cache,
                            keep_best=True)
    assert [c["step"] for c in curve] == [0, 1, 2]
    chosen = next(c for c in curve if c["selected"])
    assert chosen["score"] >= curve[0]["score"] and chosen["score"] == max(c["score"] for c in curve)
    assert all(c["violations"] == 0 for c in curve)
    kept = [c for c in curve[1:] if c["kept"]]
    assert all(c["support_loss"] <= curve[0]["support_loss"] for c in kept)  # the safeguard: kept steps lower it
    with pytest.raises(ValueError, match="steps"):
        adapt2(small_policy, None, "T2", steps=-1)


def test_tiny_meta_train_moves_the_weights_and_round_trips(tmp_path):
    config = MetaConfig2(meta_steps=1, tasks_per_step=2, support_size=1, query_size=1, validate_every=0,
                         policy=PolicyConfig(hidden=8))
    module, history = meta_train2(config)
    torch.manual_seed(config.seed)
    fresh = LSTMPolicy2(config.params, config.policy)
    moved = sum(float((a.detach() - b.detach()).abs().sum()) for a, b in zip(module.parameters(), fresh.parameters()))
    assert moved > 0 and len(history["steps"]) == 1 and "query_score" in history["steps"][0]
    save_policy2(tmp_path / "ck", module, {"command": "test"})
    loaded, meta = load_policy2(tmp_path / "ck")
    assert meta["model"] == "CLSC-2" and meta["command"] == "test"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), module.state_dict().values()))
    with pytest.raises(ValueError, match="model|CLSC-2"):
        MetaConfig2(model="CLSC-1")


def test_cli_evaluate_adapt_and_checkpoint_of_the_other_world(tmp_path):
    out = run("evaluate", "--model", "CLSC-2", "--policy", "default", "--regime", "T2", "--scenarios", 1,
              "--adapt-steps", 1, "--base", "default", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "CLSC-2" and data["violations"] == 0 and 0.5 < data["score"] <= 1.0 + 1e-9
    assert data["adapt_steps"] == 1
    out = run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T3", "--steps", 1,
              "--scenarios", 1, "--validation", 2, "--base", "default", "-o", tmp_path / "adapted", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["violations"] == 0 and data["model"] == "CLSC-2"
    assert json.loads((tmp_path / "adapted" / "checkpoint.json").read_text())["model"] == "CLSC-2"
    # A checkpoint of the other world: one line, exit 2, naming the checkpoint's model.
    out = run("evaluate", "--model", "CLSC-2", "--policy", SHIPPED_1, "--scenarios", 1)
    assert out.returncode == 2 and "a policy of CLSC-1, not of CLSC-2" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = run("evaluate", "--policy", tmp_path / "adapted", "--scenarios", 1)
    assert out.returncode == 2 and "a policy of CLSC-2, not of CLSC-1" in out.stderr
    out = run("evaluate", "--model", "CLSC-2", "--policy", "threshold", "--adapt-steps", 2)
    assert out.returncode == 2 and "--adapt-steps" in out.stderr
    out = run("run", "--model", "CLSC-2", "--peers", "oracle2")
    assert out.returncode == 2 and "--peers" in out.stderr


def test_cli_continual_and_run_quick(tmp_path):
    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- T1\n- T2\n")
    out = run("continual", "--model", "CLSC-2", "--sequence", sequence, "--method", "moca", "--steps", 1,
              "--scenarios", 1, "--plot", tmp_path / "R.svg", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for figure in ("R.svg", "R-curves.svg"):
        assert "<svg" in (tmp_path / figure).read_text()[:500], figure
    assert data["violations"] == 0 and len(data["R"]) == 2 and len(data["R"][0]) == 2
    out = run("run", "--model", "CLSC-2", "--quick", "--methods", "moca", "--peers", "none", "--scenarios", 1,
              "--runs-dir", tmp_path / "runs", "--json", tmp_path / "m.json")
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["model"] == "CLSC-2" and metrics["tasks"] == ["T1", "T2", "T3"]
    assert all(r["recycled_content_window"] == 52 for r in metrics["regimes"].values())
    moca = metrics["methods"]["moca"]
    assert moca["violations"] == 0 and np.asarray(moca["R"]).shape == (4, 3)
    assert metrics["baselines"]["oracle"]["T1"]["score"] == 1.0
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "report.md").exists()


def test_checkpoints_record_their_model(tmp_path):
    from moca import checkpoint
    from moca.checkpoint import CheckpointError
    from moca.policy import LSTMPolicy

    checkpoint.save_policy(tmp_path / "one", LSTMPolicy(), {"command": "test"})
    assert json.loads((tmp_path / "one" / "checkpoint.json").read_text())["model"] == "CLSC-1"
    assert checkpoint.load_policy(tmp_path / "one")[1]["model"] == "CLSC-1"
    with pytest.raises(CheckpointError, match="a policy of CLSC-1, not of CLSC-2"):
        load_policy2(tmp_path / "one")
    with pytest.raises(CheckpointError, match="a policy of CLSC-1, not of CLSC-2"):
        load_policy2(SHIPPED_1)  # shipped before the field: absent = CLSC-1


def test_rule_lr_scale_moves_the_rule_faster():
    config = MetaConfig2(meta_steps=1, tasks_per_step=1, support_size=1, query_size=1, validate_every=0,
                         policy=PolicyConfig(hidden=4))
    start = LSTMPolicy2(config.params, config.policy).rule_bias.detach().clone()
    plain, _ = meta_train2(config.model_copy(update={"rule_lr_scale": 1.0}))
    fast, _ = meta_train2(config.model_copy(update={"rule_lr_scale": 30.0}))
    moved_plain = float((plain.rule_bias.detach() - start).abs().max())
    moved_fast = float((fast.rule_bias.detach() - start).abs().max())
    assert moved_plain > 0 and moved_fast > 10 * moved_plain  # Adam's first step: ~lr x sign(g)
    assert torch.equal(plain.head.weight, fast.head.weight)  # the other parameters: the same rate


def test_an_evaluation_refuses_weights_chains_and_costs_that_do_not_fit_both_worlds():
    """A partial weights dict took the rest from the module without a word (CLSC-2: a dtype
    RuntimeError), scenarios of another horizon were scored, a negative oracle cost gave a
    negative score, a CLSC-1 scenario failed on a missing attribute."""
    from moca.policy import LSTMPolicy, PolicyError, evaluate_policy
    from moca.scenario import Params, Params2, draw_scenario, draw_scenario2

    for module, draw, evaluate, params in (
            (LSTMPolicy(Params(horizon=5), PolicyConfig(hidden=8)), draw_scenario, evaluate_policy, Params),
            (LSTMPolicy2(Params2(horizon=5), PolicyConfig(hidden=8)), draw_scenario2, evaluate_policy2, Params2)):
        own = [draw(1, None, module.params)]
        evaluate(module, None, own, np.array([1000.0]))  # fits: scored
        with pytest.raises(PolicyError, match="weights: missing"):
            evaluate(module, {"head.bias": torch.ones(module.head.bias.shape)}, own, np.array([1000.0]))
        with pytest.raises(PolicyError, match=r"scenarios: drawn on other params than the policy's \(horizon=5->6\)"):
            evaluate(module, None, [draw(1, None, params(horizon=6))], np.array([1000.0]))
        for costs in ([-1000.0], [float("nan")], [1.0, 2.0]):
            with pytest.raises(PolicyError, match="oracle_costs"):
                evaluate(module, None, own, np.array(costs))
    with pytest.raises(PolicyError, match="scenarios: expected CLSC-2 Scenario2s, got Scenario"):
        evaluate_policy2(module, None, [draw_scenario(1)], np.array([1000.0]))


def test_group_sizes_that_are_not_whole_numbers_of_scenarios_are_refused(small_policy):
    from moca.policy import PolicyError
    from moca.policy2 import PolicyAgent2

    weights = [dict(small_policy.named_parameters())] * 2
    for groups in ([3, -1], [1.5, 0.5], [0, 2], 2, "11"):  # a negative size took scenarios from the next group
        with pytest.raises(PolicyError, match=r"groups: sizes .* must be a list of whole numbers >= 1"):
            PolicyAgent2(small_policy, weights, groups=groups)
    assert PolicyAgent2(small_policy, weights, groups=[np.int64(1), 2]).groups == [1, 2]


def test_meta_train2_trains_a_given_module_further_in_place():
    config = MetaConfig2(meta_steps=1, tasks_per_step=1, support_size=1, query_size=1,
                         params=DEFAULT_PARAMS_2.model_copy(update={"horizon": 6}), policy=PolicyConfig(hidden=8))
    torch.manual_seed(3)
    start = LSTMPolicy2(config.params, config.policy)
    before = {k: v.detach().clone() for k, v in start.named_parameters()}
    from rich.progress import Progress

    with Progress(disable=True) as bar:  # a rich Progress, as meta_train takes (a callable only before)
        trained, history = meta_train2(config, module=start, progress=bar)
    assert trained is start and len(history["steps"]) == 1
    assert [(t.description, t.completed, t.total) for t in bar.tasks] == [("meta-training", 1, 1)]
    assert any(not torch.equal(before[k], v) for k, v in start.named_parameters())  # moved, in place
    fresh, _ = meta_train2(config)  # from its own fresh start: other weights than the given one's
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), start.parameters()))
    from moca.meta import MetaError

    with pytest.raises(MetaError, match="module: its params or policy config differ"):
        meta_train2(config, module=LSTMPolicy2(config.params, PolicyConfig(hidden=4)))
    with pytest.raises(MetaError, match="module: expected a CLSC-2 policy .LSTMPolicy2., got LSTMPolicy"):
        from moca.policy import LSTMPolicy
        from moca.scenario import Params

        meta_train2(config, module=LSTMPolicy(Params(horizon=6), PolicyConfig(hidden=8)))


SHIPPED_2 = Path(moca.__file__).parent / "data" / "default-clsc2"
SHARE = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=6, deadline=None)
@given(demand_base=st.floats(100.0, 5000.0), return_mean=SHARE, grades=st.tuples(SHARE, SHARE, SHARE),
       market_avail_min=SHARE, supply_down_prob=SHARE, demand_sigma=st.floats(0.0, 1.0))
def test_the_rule_and_the_network_never_read_how_a_scenario_was_drawn(demand_base, return_mean, grades,
                                                                     market_avail_min, supply_down_prob,
                                                                     demand_sigma):
    # The model keeps its drawing parameters to the generator: the same series under
    # parameters that differ only there must get the same raw actions, bit for bit, from
    # the rule (the threshold peer at its start thresholds) and the shipped meta-init, over
    # a plan whose mandate rises (the rule plans it on the recycled material it expects).
    from moca.baselines.threshold2 import Threshold2Policy, start_thresholds2
    from moca.projection import project2_batch
    from moca.regime import RegimeSchedule
    from moca.scenario import Scenario2, draw_scenario2
    from moca.sim2 import rollout2

    assume(sum(grades) > 0.0)
    plan = RegimeSchedule.from_list([
        {"start": 0, "recycled_content_min": 0.2, "carbon_tax": 100.0, "recycled_content_window": 4},
        {"start": 6, "recycled_content_min": 0.5, "carbon_tax": 800.0, "landfill_tax": 60.0},
        {"start": 12, "recycled_content_min": 0.3, "emission_cap": 9000.0, "recovery_target": 0.5}])
    params = DEFAULT_PARAMS_2.model_copy(update={"horizon": 20})
    drawn = params.model_copy(update={
        "demand_base": demand_base, "return_mean": return_mean, "grade_mean": tuple(g / sum(grades) for g in grades),
        "market_avail_min": market_avail_min, "supply_down_prob": supply_down_prob, "demand_sigma": demand_sigma})
    scenario = draw_scenario2(1003, plan, params)
    twin = Scenario2(**{**scenario.__dict__, "params": Params2.model_validate(drawn.model_dump())})
    from moca.policy import with_params

    module, _ = load_policy2(SHIPPED_2)
    weights = {k: v.detach().double() for k, v in module.named_parameters()}
    # the network built for each scenario's params: its rule reads the module's, not the observation's
    for make in (lambda p: Threshold2Policy(start_thresholds2(p), p),
                 lambda p: PolicyAgent2(with_params(module, p), weights)):
        raw = []
        for s in (scenario, twin):
            with torch.no_grad():
                raw.append(rollout2(ScenarioBatch2.from_scenarios([s], dtype=torch.float64), make(s.params),
                                    project2_batch).raw[0])
        assert torch.isfinite(raw[0]).all() and raw[0].abs().sum() > 0
        assert torch.equal(raw[0], raw[1])
