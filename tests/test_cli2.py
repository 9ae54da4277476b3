"""`moca` on CLSC-2: scenario new --model CLSC-2, simulate with nine-action rows, the
oracle's plan replayed through simulate, and bad input refused naming the field.

The commands run in-process (typer's test runner: the same code path as the console
script, without a Python start per call); the first test runs one in a subprocess.
"""

import json

import numpy as np
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
    table = run("simulate", "--scenario", scenario_file, "--actions", actions, "--plot", tmp_path / "sim.png")
    assert table.returncode == 0 and "CLSC-2" in table.stdout and "CA" in table.stdout
    assert f"wrote {tmp_path / 'sim.png'}" in table.stdout
    assert (tmp_path / "sim.png").read_bytes()[:4] == b"\x89PNG"
    # the plan's own figure: the same JSON on stdout, the figure beside it
    drawn = run("oracle", "--scenario", scenario_file, "--json", "--plot", tmp_path / "plan.pdf")
    assert drawn.returncode == 0 and json.loads(drawn.stdout) == out
    assert (tmp_path / "plan.pdf").read_bytes()[:5] == b"%PDF-"
    assert_bad_input(run("oracle", "--scenario", scenario_file, "--plot", tmp_path / "plan.txt"), "--plot", ".svg")
    assert not (tmp_path / "plan.txt").exists()


def test_episode_figure_puts_each_decision_in_its_units_panel(scenario_file, tmp_path):
    """The oracle's plan replayed, drawn with text kept as text: kg decisions and core
    decisions by the world's declared units, a decision never taken left out of the legend."""
    import matplotlib

    from moca import clsc2
    from moca.oracle2 import solve_oracle2
    from moca.report import plot_episode
    from moca.sim2 import simulate_actions2

    scenario = Scenario2.from_json(scenario_file)
    plan = np.asarray(solve_oracle2(scenario).plan, dtype=np.float64)
    plan[:, clsc2.ACTION_NAMES.index("dispose_a")] = 0.0  # a decision never taken
    out = simulate_actions2(scenario, plan)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        path = plot_episode(out["periods"], scenario.demand, clsc2.ACTION_NAMES, clsc2.ACTION_UNITS,
                            clsc2.STATE_UNITS, tmp_path / "e.svg", "title", changes=[20])
    svg = path.read_text()
    for text in ("material decisions (kg)", "core decisions (cores)", "use_recycled", "disassemble_a", "V (kg)",
                 "CA (units)", "lost sales", "dotted: a new regime in force"):
        assert f">{text}" in svg or text in svg, text
    assert "dispose_a" not in svg


def test_simulate_projects_infeasible_rows(scenario_file, tmp_path):
    actions = tmp_path / "big.json"
    actions.write_text(json.dumps({"actions": [[1e5] * 9] * 52}))
    result = json.loads(run("simulate", "--scenario", scenario_file, "--actions", actions, "--json").stdout)
    assert result["violations"] == 0
    first = result["periods"][0]
    assert first["raw_action"] == [1e5] * 9 and first["correction"] > 1.0
    assert first["action"][0] <= 4000 + 1e-6  # row 1: o <= K_o
    # the cost by term, per period and over the episode, as CLSC-1's simulate gives it (the README said so of
    # both worlds; CLSC-2's had none)
    from moca.clsc2 import COST_TERMS

    assert list(first["terms"]) == list(COST_TERMS) and list(result["terms"]) == list(COST_TERMS)
    assert sum(first["terms"].values()) == pytest.approx(first["cost"], rel=1e-9)
    assert sum(result["terms"].values()) == pytest.approx(result["total_cost"], rel=1e-9)
    assert result["corrected_periods"] == sum(p["correction"] > 1e-9 for p in result["periods"]) > 0
    table = run("simulate", "--scenario", scenario_file, "--actions", actions)
    assert table.returncode == 0 and "main cost terms" in table.stdout and "total by term (EUR): virgin" in \
        table.stdout and "100000->" in table.stdout


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
