"""`moca` on CLSC-2: scenario new --model CLSC-2, simulate with nine-action rows, the
oracle's plan replayed through simulate, and bad input refused naming the field.

The commands run in-process (typer's test runner: the same code path as the console
script, without a Python start per call); the first test runs one in a subprocess.
"""

import json

import pytest

from moca.scenario import Scenario2, draw_scenario2
from moca.regime import TASKS_2

from _cli import assert_bad_input, run as run_subprocess, run_in_process as run


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli2") / "s.json"
    result = run_subprocess("scenario", "new", "--model", "CLSC-2", "--regime", "T3", "--seed", 11, "-o", path)
    assert result.returncode == 0, result.stderr
    return path


def test_scenario_new_clsc2(scenario_file):
    data = json.loads(scenario_file.read_text())
    assert data["model"] == "CLSC-2"
    assert data["regimes"][0]["recycled_content_window"] == 52 and data["regimes"][0]["carbon_tax"] == 100
    assert len(data["demand_history"]) == 52 and len(data["grades"]) == 52
    assert Scenario2.from_json(scenario_file).demand.tolist() == draw_scenario2(11, TASKS_2["T3"]).demand.tolist()


def test_oracle_plan_replays_to_its_cost_through_simulate(scenario_file, tmp_path):
    oracle = run("oracle", "--scenario", scenario_file, "--json")
    assert oracle.returncode == 0, oracle.stderr
    out = json.loads(oracle.stdout)
    assert set(out) == {"oracle_cost", "status", "plan"} and out["status"] == "optimal"
    assert len(out["plan"]) == 52 and all(len(row) == 9 for row in out["plan"])
    actions = tmp_path / "plan.json"
    actions.write_text(oracle.stdout)  # the oracle's output is an action file as it is (docs/MODEL-2.md)
    sim = run("simulate", "--scenario", scenario_file, "--actions", actions, "--json")
    assert sim.returncode == 0, sim.stderr
    result = json.loads(sim.stdout)
    assert result["model"] == "CLSC-2" and result["violations"] == 0
    period = result["periods"][10]
    assert set(period) >= {"t", "action", "raw_action", "correction", "cost", "state", "sales", "lost",
                           "emissions"}
    assert list(period["state"]) == ["V", "M", "P", "CA", "CB"]
    assert len(period["action"]) == 9 and len(period["raw_action"]) == 9
    assert result["total_cost"] == pytest.approx(out["oracle_cost"], rel=1e-6)
    table = run("simulate", "--scenario", scenario_file, "--actions", actions)
    assert table.returncode == 0 and "CLSC-2" in table.stdout and "CA" in table.stdout


def test_simulate_projects_infeasible_rows(scenario_file, tmp_path):
    actions = tmp_path / "big.json"
    actions.write_text(json.dumps({"actions": [[1e5] * 9] * 52}))
    result = json.loads(run("simulate", "--scenario", scenario_file, "--actions", actions, "--json").stdout)
    assert result["violations"] == 0
    first = result["periods"][0]
    assert first["raw_action"] == [1e5] * 9 and first["correction"] > 1.0
    assert first["action"][0] <= 4000 + 1e-6  # row 1: o <= K_o


def test_bad_clsc2_input_exits_2_naming_the_field(scenario_file, tmp_path):
    out = tmp_path / "x.json"
    assert_bad_input(run("scenario", "new", "--model", "CLSC-3", "--seed", 1, "-o", out), "--model", "CLSC-3")
    assert not out.exists()
    bad_regime = tmp_path / "r.yaml"
    bad_regime.write_text("recycled_content_min: 0.2\nrecycled_content_window: 0\n")
    assert_bad_input(run("scenario", "new", "--model", "CLSC-2", "--regime", bad_regime, "--seed", 1, "-o", out),
                     "recycled_content_window")
    data = json.loads(scenario_file.read_text())
    data["grades"][4] = [0.5, 0.5, 0.5]
    broken = tmp_path / "b.json"
    broken.write_text(json.dumps(data))
    six = tmp_path / "six.json"
    six.write_text(json.dumps({"actions": [[0] * 6] * 52}))
    assert_bad_input(run("simulate", "--scenario", broken, "--actions", six), "grades[4]", "sum to 1")
    assert_bad_input(run("oracle", "--scenario", broken), "grades[4]")
    assert_bad_input(run("simulate", "--scenario", scenario_file, "--actions", six), "actions[0]", "9 numbers")
    data = json.loads(scenario_file.read_text())
    data["params"]["cap_market"] = -1
    broken.write_text(json.dumps(data))
    assert_bad_input(run("oracle", "--scenario", broken), "params.cap_market")


def test_regimes_model_clsc2_lists_the_window():
    out = json.loads(run("regimes", "--model", "CLSC-2", "--json").stdout)
    assert out["T2"] == {"recycled_content_min": 0.2, "carbon_tax": 0.0, "emission_cap": None, "landfill_tax": 0.0,
                         "recovery_target": 0.0, "recycled_content_window": 52}
    assert out["eu-ets-2025"]["recycled_content_window"] == 1
    assert "recycled_content_window" not in json.loads(run("regimes", "--json").stdout)["T2"]
    assert_bad_input(run("regimes", "--model", "CLSC-9"), "--model")
