"""`moca` on CLSC-2 with the user's own chain: --params on evaluate, adapt, continual and run
(the scenarios, the oracle and the policy's scaling follow the file; a checkpoint trained
on other params is used with a warning naming the fields, one whose input size they
change is refused), evaluate --scenario on CLSC-2 scenario files (the file's "model"
chooses the world; malformed files are refused naming the field), and train --ray
--model CLSC-2 refused saying why. Tiny settings: one scenario, zero or one step.

The commands run in-process (typer's test runner); one error runs in a subprocess.
"""

import json
from types import SimpleNamespace

import pytest
import torch

from moca.oracle2 import solve_oracle2
from moca.regime import TASKS_2
from moca.scenario import Params2, Scenario2, draw_scenario2

from _cli import assert_bad_input, run as run_subprocess, run_in_process as run

CHAIN = {"cap_order": 5000, "lost_sale_cost": 30}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A params file of another chain, a CLSC-2 scenario file drawn on it, and its oracle cost."""
    where = tmp_path_factory.mktemp("cli2gaps")
    params = where / "chain.yaml"
    params.write_text("".join(f"{k}: {v}\n" for k, v in CHAIN.items()))
    scenario = where / "s.json"
    made = run("scenario", "new", "--model", "CLSC-2", "--regime", "T2", "--seed", 5, "--params", params, "-o", scenario)
    assert made.returncode == 0, made.stderr
    return SimpleNamespace(dir=where, params=params, scenario=scenario,
                           oracle=solve_oracle2(Scenario2.from_json(scenario)).oracle_cost)


def test_evaluate_params_reach_the_scenarios_the_oracle_and_the_policy(files):
    chain = Params2(**CHAIN)
    expected = solve_oracle2(draw_scenario2(1000, TASKS_2["T1"], chain)).oracle_cost
    default = solve_oracle2(draw_scenario2(1000, TASKS_2["T1"])).oracle_cost
    assert expected != pytest.approx(default, rel=1e-3)  # the chain really is another one
    oracle = run("evaluate", "--model", "CLSC-2", "--policy", "oracle", "--scenarios", 1, "--params", files.params,
                 "--json")
    assert oracle.returncode == 0, oracle.stderr
    assert json.loads(oracle.stdout)["mean_oracle_cost"] == pytest.approx(expected, rel=1e-9)
    learned = run("evaluate", "--model", "CLSC-2", "--policy", "default", "--scenarios", 1, "--params", files.params,
                  "--json")
    assert learned.returncode == 0, learned.stderr
    out = json.loads(learned.stdout)  # stdout stays JSON: the warning is on stderr
    assert out["model"] == "CLSC-2" and out["test_seeds"] == [1000, 1000]
    # the keys the peers' and CLSC-1's summaries have (the learned policy's lacked them)
    assert out["scenarios"] == 1 and out["decision_latency_us"] == {"p50": None, "p99": None}
    assert out["mean_oracle_cost"] == pytest.approx(expected, rel=1e-9)
    assert out["violations"] == 0 and 0.5 < out["score"] <= 1.0 + 1e-9
    assert "warning" in learned.stderr and "cap_order=4000.0->5000.0" in learned.stderr
    assert "lost_sale_cost" in learned.stderr and len(learned.stderr.strip().splitlines()) == 1


def test_the_policy_is_rebuilt_for_the_chain_and_refused_when_its_input_size_changes():
    from moca.chain2 import retarget2
    from moca.meta2 import load_policy2
    from moca.policy import PolicyError

    module, _ = load_policy2("default")
    same, warning = retarget2(module, module.params, "default")
    assert same is module and warning is None
    chain = Params2(cap_order=5000, cap_produce=1200)
    rebuilt, warning = retarget2(module, chain, "default")
    assert rebuilt.params == chain and "cap_produce=1500.0->1200.0" in warning
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), module.state_dict().values()))
    assert float(rebuilt.scale[0]) == 5000.0 and float(module.scale[0]) == 4000.0  # the action scale follows
    with pytest.raises(PolicyError, match="lag_return=8.*moca train --model CLSC-2 --params"):
        retarget2(module, Params2(lag_return=8), "default")


def test_evaluate_on_clsc2_scenario_files(files):
    # No --model: the file's "model" chooses; the chain is the file's.
    out = run("evaluate", "--policy", "default", "--scenario", files.scenario, "--scenario", files.scenario, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["model"] == "CLSC-2" and len(summary["scores"]) == 2 and summary["scenarios"] == 2
    assert summary["scenario_files"] == [str(files.scenario)] * 2
    assert summary["mean_oracle_cost"] == pytest.approx(files.oracle, rel=1e-9)
    assert summary["violations"] == 0 and 0.5 < summary["score"] <= 1.0 + 1e-9
    assert "cap_order" in out.stderr  # the shipped policy was trained on the default chain
    oracle = run("evaluate", "--model", "CLSC-2", "--policy", "oracle", "--scenario", files.scenario)
    assert oracle.returncode == 0, oracle.stderr
    assert "s.json" in oracle.stdout and "score 1.0000" in oracle.stdout


def test_malformed_or_mismatched_clsc2_scenario_files_name_the_field(files, tmp_path):
    data = json.loads(files.scenario.read_text())

    def broken(name, change):
        copy = json.loads(json.dumps(data))
        change(copy)
        path = tmp_path / name
        path.write_text(json.dumps(copy))
        return path

    cases = [
        (broken("g.json", lambda d: d["grades"].__setitem__(3, [0.5, 0.5, 0.5])), ("grades[3]", "sum to 1")),
        (broken("m.json", lambda d: d.pop("supply_up")), ("supply_up", "missing")),
        (broken("d.json", lambda d: d["demand"].pop()), ("demand", "horizon=52")),
        (broken("p.json", lambda d: d["params"].__setitem__("cap_market", -1)), ("params.cap_market", "> 0")),
        (broken("u.json", lambda d: d["params"].__setitem__("warp", 1)), ("params.warp", "unknown")),
        (broken("w.json", lambda d: d["regimes"][0].__setitem__("recycled_content_window", 0)),
         ("recycled_content_window",)),
    ]
    for path, needles in cases:
        assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "oracle", "--scenario", path), *needles)
    (tmp_path / "j.json").write_text('{"model": "CLSC-2", "params": {')
    assert_bad_input(run("evaluate", "--policy", "oracle", "--scenario", tmp_path / "j.json"), "j.json",
                     "malformed JSON")
    other_chain = broken("o.json", lambda d: d["params"].__setitem__("cap_order", 4500))
    assert_bad_input(run("evaluate", "--policy", "oracle", "--scenario", files.scenario, "--scenario", other_chain),
                     "o.json", "cap_order", "params differ")
    # another plan: a policy is prepared for one (the first file's), so the score hung on the order
    other_plan = broken("plan.json", lambda d: d["regimes"][0].__setitem__("carbon_tax", 55.0))
    assert_bad_input(run("evaluate", "--policy", "threshold", "--scenario", files.scenario, "--scenario", other_plan),
                     "plan.json", "regime schedule differs", "one plan at a time")
    clsc1 = tmp_path / "one.json"
    assert run("scenario", "new", "--seed", 1, "-o", clsc1).returncode == 0
    assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "oracle", "--scenario", clsc1),
                     "one.json", "CLSC-1", "--model CLSC-2")
    assert_bad_input(run("evaluate", "--policy", "oracle", "--scenario", files.scenario, "--scenario", clsc1),
                     "one.json", "CLSC-1")
    clsc1_t2 = tmp_path / "two.json"
    assert run("scenario", "new", "--seed", 1, "--regime", "T2", "-o", clsc1_t2).returncode == 0
    assert_bad_input(run("evaluate", "--policy", "threshold", "--scenario", clsc1, "--scenario", clsc1_t2),
                     "two.json", "regime schedule differs")
    same_plan = tmp_path / "same.json"  # (one plan written another way: its entry repeated from period 10)
    data = json.loads(clsc1.read_text())
    data["regimes"].append({**data["regimes"][0], "start": 10})
    same_plan.write_text(json.dumps(data))
    assert run("evaluate", "--policy", "oracle", "--scenario", clsc1, "--scenario", same_plan).returncode == 0
    assert_bad_input(run("evaluate", "--policy", "mpc-informed", "--scenario", files.scenario), "mpc-informed")


def test_bad_params_for_clsc2_exit_2_naming_the_field(files, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cap_market: -1\n")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("backlog_cost: 5\n")  # CLSC-1's, not CLSC-2's
    longer = tmp_path / "lag.yaml"
    longer.write_text("lag_return: 8\n")
    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- T1\n")
    out = tmp_path / "adapted"
    assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "oracle", "--params", bad), "cap_market", "> 0")
    amplitude = tmp_path / "amplitude.yaml"  # above the default demand_amp_hi (0.4): no draw can honour it
    amplitude.write_text("demand_amp_lo: 0.55\n")
    assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "threshold", "--params", amplitude),
                     "demand_amp_lo=0.55 must be <= demand_amp_hi=0.4")
    assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "default", "--params", unknown),
                     "backlog_cost", "unknown parameter")
    assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "default", "--scenarios", 1, "--params", longer),
                     "lag_return", "moca train --model CLSC-2 --params")
    assert_bad_input(run("evaluate", "--model", "CLSC-2", "--policy", "ppo", "--scenarios", 1, "--params", longer),
                     "lag_return=8", "observations")
    assert_bad_input(run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--params", bad,
                         "-o", out), "cap_market")
    assert not out.exists()
    assert_bad_input(run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--params",
                         longer), "lag_return")
    assert_bad_input(run("continual", "--model", "CLSC-2", "--sequence", sequence, "--params", bad), "cap_market")
    assert_bad_input(run("continual", "--model", "CLSC-2", "--sequence", sequence, "--params", tmp_path / "none.yaml"),
                     "none.yaml")
    runs = tmp_path / "runs"
    assert_bad_input(run("run", "--model", "CLSC-2", "--quick", "--params", bad, "--runs-dir", runs), "cap_market")
    assert_bad_input(run("run", "--model", "CLSC-2", "--quick", "--params", longer, "--runs-dir", runs), "lag_return")
    assert not runs.exists() or not any(runs.iterdir())


def test_run_on_clsc2_takes_the_chain(files, tmp_path):
    """`moca run --model CLSC-2 --params`: scenarios, oracle, peers and the policy's scaling on
    the chain; the shipped meta-init (default chain) is used with a warning naming the fields."""
    out_json = tmp_path / "run.json"
    done = run("run", "--model", "CLSC-2", "--quick", "--params", files.params, "--methods", "moca", "--peers",
               "threshold", "--scenarios", 1, "--runs-dir", tmp_path / "runs", "--json", out_json)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out_json.read_text())
    assert metrics["params"]["cap_order"] == CHAIN["cap_order"] and metrics["params"]["lost_sale_cost"] == 30
    assert "cap_order" in metrics["params_note"] and "cap_order" in done.stderr
    assert metrics["targets"]["violations"] == 0
    chain = Params2(**CHAIN)
    # the oracle cost behind every score is the chain's: T1's first test scenario, drawn on it
    first = draw_scenario2(metrics["seeds"]["test"][0], TASKS_2["T1"], chain)
    assert metrics["baselines"]["oracle"]["T1"]["mean_cost"] == pytest.approx(solve_oracle2(first).oracle_cost, rel=1e-9)
    assert 0.5 < metrics["methods"]["moca"]["average_final_score"] <= 1.0 + 1e-9


def test_adapt_writes_a_checkpoint_of_the_chain_that_evaluates_without_warning(files, tmp_path):
    out = tmp_path / "adapted"
    adapted = run("adapt", "--model", "CLSC-2", "--checkpoint", "default", "--regime", "T2", "--steps", 0,
                  "--scenarios", 1, "--validation", 1, "--params", files.params, "--base", "default", "-o", out,
                  "--json")
    assert adapted.returncode == 0, adapted.stderr
    result = json.loads(adapted.stdout)
    assert result["score_before"] == result["score_after"] and 0.5 < result["score_after"] <= 1.0 + 1e-9
    assert "cap_order" in adapted.stderr
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["params"]["cap_order"] == 5000 and meta["params"]["lost_sale_cost"] == 30
    on_file = run("evaluate", "--policy", out, "--scenario", files.scenario, "--json")
    assert on_file.returncode == 0, on_file.stderr
    assert "warning" not in on_file.stderr  # trained (adapted) on this chain
    assert json.loads(on_file.stdout)["mean_oracle_cost"] == pytest.approx(files.oracle, rel=1e-9)


def test_continual_runs_on_the_chain(files, tmp_path):
    sequence = tmp_path / "seq.yaml"
    # the name T1 is CLSC-2's (W = 52); an object labelled T1 is read as written (it was given
    # W = 52 too, where evaluate and adapt score it with its window of 1)
    sequence.write_text("- T1\n- {name: T1, recycled_content_min: 0.1}\n")
    done = run("continual", "--model", "CLSC-2", "--sequence", sequence, "--method", "moca", "--steps", 0,
               "--scenarios", 1, "--params", files.params, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["model"] == "CLSC-2" and out["violations"] == 0 and 0.5 < out["R"][0][0] <= 1.0 + 1e-9
    assert out["regimes"] == ["T1", "T1 (r=0.10)"] and out["R_initial"][0] != pytest.approx(out["R_initial"][1], abs=1e-6)
    assert [out["regime_fields"][label]["recycled_content_window"] for label in out["regimes"]] == [52, 1]
    assert (out["steps"], out["test_seeds"], out["checkpoint"]) == (0, [1000, 1000], None)
    assert out["params_file"] == str(files.params)
    assert set(out["oracle_withheld_sales"]) == {"T1", "T1 (r=0.10)"} and "rule_impact" not in out
    assert "cap_order" in done.stderr  # the shipped meta-init is the default chain's


def test_train_clsc2_on_an_unreachable_ray_fails_fast_saying_why(tmp_path):
    # CLSC-2 meta-training takes --ray as CLSC-1's does (tests/test_ray.py runs it on a local
    # Ray); an address nothing answers on is bad input, and no checkpoint is written.
    out = tmp_path / "ckpt"
    assert_bad_input(run("train", "--model", "CLSC-2", "--ray", "127.0.0.1:1", "--steps", 1, "-o", out),
                     "no Ray cluster answers")
    assert not out.exists()


def test_a_bad_clsc2_scenario_file_in_a_real_process(files, tmp_path):
    data = json.loads(files.scenario.read_text())
    data["market_avail"][7] = 1.5
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    result = run_subprocess("evaluate", "--policy", "default", "--scenario", path)
    assert_bad_input(result, "market_avail[7]", "<= 1")
    assert len(result.stderr.strip().splitlines()) == 1
