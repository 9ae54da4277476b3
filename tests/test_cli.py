"""End-to-end tests of the `moca` command line: outputs, and every bad-input path
(one line on stderr naming the problem, exit code 2, no traceback, nothing written)."""

import json
import math
import re

import numpy as np
import pytest

from moca.oracle import solve_oracle
from moca.scenario import Scenario, draw_scenario
from moca.regime import TASKS

from _cli import assert_bad_input, run_in_process as run


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.json"
    result = run("scenario", "new", "--regime", "T2", "--seed", 7, "-o", path)
    assert result.returncode == 0, result.stderr
    return path


def test_scenario_new_writes_spec_json(scenario_file):
    data = json.loads(scenario_file.read_text())
    assert data["model"] == "CLSC-1"
    assert len(data["demand"]) == 52 and len(data["return_frac"]) == 52
    assert data["regimes"][0]["recycled_content_min"] == 0.2
    assert Scenario.from_json(scenario_file).demand.tolist() == draw_scenario(7, TASKS["T2"]).demand.tolist()


def test_scenario_new_with_schedule(tmp_path):
    schedule = tmp_path / "sched.yaml"
    schedule.write_text("- {start: 0, recycled_content_min: 0.1}\n- {start: 26, recycled_content_min: 0.2, carbon_tax: 100}\n")
    out = tmp_path / "s.json"
    assert run("scenario", "new", "--seed", 1, "--schedule", schedule, "-o", out).returncode == 0
    regimes = json.loads(out.read_text())["regimes"]
    assert [r["start"] for r in regimes] == [0, 26] and regimes[1]["carbon_tax"] == 100
    # --regime takes a schedule file too, as evaluate's does: the same scenario
    again = tmp_path / "again.json"
    made = run("scenario", "new", "--seed", 1, "--regime", schedule, "-o", again)
    assert made.returncode == 0 and "warning" not in made.stderr  # every entry starts inside the 52 periods
    assert json.loads(again.read_text()) == json.loads(out.read_text())


def test_schedule_entries_past_the_horizon_are_named(tmp_path):
    # A rule that starts after the episode's last period never bites: kept (a schedule may be
    # written for a longer chain), but said on stderr by each command that reads schedules.
    schedule = tmp_path / "late.yaml"
    schedule.write_text("- {start: 0}\n- {start: 20, carbon_tax: 100}\n- {start: 60, landfill_tax: 10}\n")
    out = tmp_path / "s.json"
    made = run("scenario", "new", "--seed", 1, "--regime", schedule, "-o", out)
    assert made.returncode == 0, made.stderr
    expected = "moca: warning: the regime starting at period 60 never applies: the episode has 52 periods (0-51)"
    assert expected in made.stderr
    assert [r["start"] for r in json.loads(out.read_text())["regimes"]] == [0, 20, 60]  # kept as written
    for args in (("--regime", schedule, "--scenarios", 1, "--seed", 1000), ("--scenario", out)):
        scored = run("evaluate", "--policy", "mpc", *args, "--json")
        assert scored.returncode == 0, scored.stderr
        assert expected in scored.stderr and json.loads(scored.stdout)["violations"] == 0
    longer = tmp_path / "params.yaml"
    longer.write_text("horizon: 70\n")
    quiet = run("scenario", "new", "--seed", 1, "--regime", schedule, "--params", longer, "-o", out)
    assert quiet.returncode == 0 and "never appl" not in quiet.stderr
    two = run("evaluate", "--model", "CLSC-2", "--policy", "mpc", "--regime", schedule, "--scenarios", 1,
              "--seed", 1000, "--json")
    assert two.returncode == 0, two.stderr
    assert expected in two.stderr


def test_simulate_and_oracle_json(scenario_file, tmp_path):
    oracle = run("oracle", "--scenario", scenario_file, "--json")
    assert oracle.returncode == 0, oracle.stderr
    out = json.loads(oracle.stdout)
    assert set(out) == {"oracle_cost", "status", "plan"} and len(out["plan"]) == 52
    actions = tmp_path / "a.json"
    actions.write_text(oracle.stdout)  # the oracle's output is an action file as it is (its plan)
    sim = run("simulate", "--scenario", scenario_file, "--actions", actions, "--json")
    assert sim.returncode == 0, sim.stderr
    result = json.loads(sim.stdout)
    assert result["violations"] == 0
    assert len(result["periods"]) == 52
    period = result["periods"][3]
    assert set(period) == {"t", "action", "raw_action", "correction", "cost", "terms", "state", "sales", "emissions"}
    assert math.isclose(sum(period["terms"].values()), period["cost"], rel_tol=1e-9, abs_tol=1e-6)
    assert set(period["state"]) == {"V", "M", "P", "C", "B"}
    # The spec's LP may withhold sales the simulator would make; only then may replay cost more.
    withheld = solve_oracle(Scenario.from_json(scenario_file)).withheld.max()
    assert result["total_cost"] >= out["oracle_cost"] * (1 - 1e-6)
    if withheld < 1e-6:
        assert math.isclose(result["total_cost"], out["oracle_cost"], rel_tol=1e-3)
    assert math.isclose(sum(p["cost"] for p in result["periods"]), result["total_cost"], rel_tol=1e-9)
    told = run("oracle", "--scenario", scenario_file).stdout  # the plan in one line: each decision's total
    totals = np.asarray(out["plan"]).sum(axis=0)
    assert f"use_virgin {totals[1]:,.0f} kg" in told and f"dispose {totals[5]:,.0f} cores" in told
    share = float(re.search(r"recycled share of material ([0-9.]+)%", told).group(1))
    assert share == pytest.approx(100 * totals[2] / (totals[1] + totals[2]), abs=0.05) and share >= 20.0 - 0.05  # T2
    for command in (("oracle", "--scenario", scenario_file),
                    ("simulate", "--scenario", scenario_file, "--actions", actions)):
        figure = tmp_path / f"{command[0]}.svg"
        drawn = run(*command, "--plot", figure)
        assert drawn.returncode == 0 and f"wrote {figure}" in drawn.stdout, drawn.stderr
        assert "<svg" in figure.read_text()[:500]


def test_simulate_projects_infeasible_actions(scenario_file, tmp_path):
    actions = tmp_path / "a.json"
    actions.write_text(json.dumps({"actions": [[1e6, 1e6, 0, 5000, 5000, -3]] * 52}))
    result = json.loads(run("simulate", "--scenario", scenario_file, "--actions", actions, "--json").stdout)
    assert result["violations"] == 0
    o, u_v, u_r, g, f, w = result["periods"][0]["action"]
    assert o <= 4000 + 1e-6 and g <= 600 + 1e-6 and w >= 0 and u_r >= 0.2 * (u_v + u_r) - 1e-6


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(demand=d["demand"][:10]), "demand"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["params"].update(warp_speed=9), "warp_speed"),
    (lambda d: d["regimes"][0].update(recycled_content_min=1.5), "recycled_content_min"),
    (lambda d: d["regimes"][0].update(carbon_price=3), "carbon_price"),
    (lambda d: d.update(return_frac=[1.5] * 52), "return_frac"),
    (lambda d: d["demand"].__setitem__(4, -1.0), "demand[4]"),
])
def test_bad_scenarios_refused(scenario_file, tmp_path, mutate, needle):
    data = json.loads(scenario_file.read_text())
    mutate(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert_bad_input(run("oracle", "--scenario", bad, "--json"), needle)


def test_nan_and_malformed_json_refused(scenario_file, tmp_path):
    text = scenario_file.read_text()
    bad = tmp_path / "nan.json"
    data = json.loads(text)
    data["demand"][0] = float("nan")
    bad.write_text(json.dumps(data))  # json writes NaN literally
    assert_bad_input(run("oracle", "--scenario", bad), "nan")
    broken = tmp_path / "broken.json"
    broken.write_text(text[:200])
    assert_bad_input(run("oracle", "--scenario", broken), "malformed json")
    assert_bad_input(run("oracle", "--scenario", tmp_path / "missing.json"), "missing.json")


def test_bad_action_files_refused(scenario_file, tmp_path):
    actions = tmp_path / "a.json"
    actions.write_text(json.dumps({"actions": [[0, 0, 0, 0, 0, 0]] * 51}))
    assert_bad_input(run("simulate", "--scenario", scenario_file, "--actions", actions), "52")
    actions.write_text(json.dumps({"actions": [[0, 0, 0, 0, 0]] * 52}))
    assert_bad_input(run("simulate", "--scenario", scenario_file, "--actions", actions), "actions[0]")
    actions.write_text('{"actions": [' + ",".join(["[0,0,0,0,0,NaN]"] * 52) + "]}")
    assert_bad_input(run("simulate", "--scenario", scenario_file, "--actions", actions), "nan",
                     "NaN is not allowed in an actions file")
    actions.write_text(json.dumps({"actions": [[0] * 6] * 52, "extra": 1}))
    assert_bad_input(run("simulate", "--scenario", scenario_file, "--actions", actions), "extra")


def test_invalid_regime_refused_and_nothing_written(tmp_path):
    out = tmp_path / "s.json"
    regime = tmp_path / "r.yaml"
    regime.write_text("carbon_tax: 5000\n")
    assert_bad_input(run("scenario", "new", "--regime", regime, "--seed", 1, "-o", out), "r.yaml: carbon_tax", "5000",
                     "2000")
    assert not out.exists()
    assert_bad_input(run("scenario", "new", "--regime", "T9", "--seed", 1, "-o", out), "T9")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [regime]


def test_evaluate_baselines_json():
    result = run("evaluate", "--policy", "mpc", "--regime", "T1", "--scenarios", 2, "--seed", 1000, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"model", "policy", "scenarios", "test_seeds", "mean_cost", "mean_oracle_cost", "score",
                        "violations", "decision_latency_us", "rule_impact", "oracle_withheld_sales"}
    assert out["model"] == "CLSC-1" and out["test_seeds"] == [1000, 1001]  # as CLSC-2's evaluate says them
    assert out["oracle_withheld_sales"] == {"scenarios": 0, "units": 0.0}  # T1, seeds 1000-1001: none withheld
    assert out["violations"] == 0 and out["scenarios"] == 2
    assert 0.8 < out["score"] <= 1.0 + 1e-9
    assert out["decision_latency_us"]["p50"] > 0
    oracle = json.loads(run("evaluate", "--policy", "oracle", "--scenarios", 2, "--json").stdout)
    assert oracle["score"] == pytest.approx(1.0)
    assert_bad_input(run("evaluate", "--policy", "magic", "--json"), "magic")


def test_evaluate_names_a_regime_file_by_its_label_and_counts_in_words(tmp_path):
    """A regime file's ``name`` labels the output, as a sequence file's does (it was the file
    name); one scenario is "1 scenario"."""
    regime = tmp_path / "tight.yaml"
    regime.write_text("name: tight\nrecycled_content_min: 0.3\ncarbon_tax: 120\n")
    out = run("evaluate", "--policy", "threshold", "--regime", regime, "--scenarios", 1)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "threshold on tight (tight.yaml), 1 scenario from seed 1000" in text
    assert "tight (tight.yaml): the rule itself" in text
    unnamed = tmp_path / "plain.yaml"
    unnamed.write_text("carbon_tax: 120\n")
    assert f"threshold on {unnamed}, 2 scenarios from seed 1000" in " ".join(
        run("evaluate", "--policy", "threshold", "--regime", unnamed, "--scenarios", 2).stdout.split())


def test_scenario_new_replaces_only_a_scenario_file(tmp_path):
    """`moca scenario new -o params.json` replaced the user's parameters without a word, and
    `-o FOLDER` was named by the temporary file written beside it: a new scenario now
    replaces only a file that is one (or an empty one), and the file refused is kept."""
    from _cli import run_in_process

    params = tmp_path / "params.json"
    params.write_text('{"horizon": 8}')
    assert_bad_input(run_in_process("scenario", "new", "--seed", 1, "-o", params), f"-o {params}",
                     "not a moca scenario file")
    assert params.read_text() == '{"horizon": 8}'
    assert_bad_input(run_in_process("scenario", "new", "--seed", 1, "-o", tmp_path), f"-o {tmp_path}", "is a folder")
    older = tmp_path / "s.json"
    written = []
    for model, seed in (("CLSC-1", 1), ("CLSC-2", 2), ("CLSC-1", 3)):  # a scenario of either world is replaced
        made = run_in_process("scenario", "new", "--seed", seed, "--model", model, "-o", older)
        assert made.returncode == 0, made.stderr
        written.append(older.read_text())
        assert json.loads(written[-1])["model"] == model
    assert len(set(written)) == 3
    (tmp_path / "empty.json").write_text("")
    assert run_in_process("scenario", "new", "--seed", 1, "-o", tmp_path / "empty.json").returncode == 0
