"""moca sweep: SPEC parsing, bad input, the oracle's shadow prices against finite
differences, a small sweep's invariants, the local pool against a serial run, the plot.
(The Ray backend is tested in test_ray.py.)"""

import json
import math
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from moca.cli import app
from moca.cluster import Backend
from moca.oracle import shadow_prices, solve_oracle
from moca.regime import Regime
from moca.scenario import draw_scenario
from moca.sweep import SweepError, make_plan, parse_values, run_sweep


def test_values_spec_list_and_range():
    assert parse_values("0,0.1, 0.2") == [0.0, 0.1, 0.2]
    assert parse_values("0:0.6:0.05") == [round(0.05 * i, 12) for i in range(13)]
    assert parse_values("0:300:25")[-1] == 300.0 and len(parse_values("0:300:25")) == 13
    assert parse_values("5:5:1") == [5.0]
    for spec, needle in [("", "empty"), (" , ", "empty"), ("0,,1", "empty item"), ("a,1", "'a' is not a number"),
                         ("0:1", "three numbers"), ("0:1:0", "step must be > 0"), ("1:0:0.1", "stop is below start"),
                         ("0,nan", "not a finite"), ("0,1,0", "repeated"), ("0:1:1e-6", "at most"),
                         ("0:1e-12:1e-13", "at least 1e-12"), ("1e4:1.00000000000001e4:1e-12", "repeated")]:
        with pytest.raises(SweepError, match=needle):
            parse_values(spec)


runner = CliRunner()


@pytest.mark.parametrize("args, needles", [
    (["--field", "speed_limit", "--values", "1"], ["--field", "speed_limit", "recycled_content_min"]),
    (["--field", "recycled_content_min", "--values", "0,1.2"], ["recycled_content_min=1.2", "valid range"]),
    (["--field", "landfill_tax", "--values", "-5:10:5"], ["landfill_tax=-5", "valid range"]),
    (["--field", "emission_cap", "--values", "0,100"], ["emission_cap=0"]),
    (["--field", "carbon_tax", "--values", ""], ["--values", "empty"]),
    (["--field", "carbon_tax", "--values", "0;10"], ["--values", "not a number"]),
    (["--field", "carbon_tax", "--values", "0,10", "--policies", "oracle,genius"], ["--policies", "genius"]),
    (["--field", "carbon_tax", "--values", "0,10", "--model", "CLSC-9"], ["--model", "CLSC-9"]),
    (["--field", "carbon_tax", "--values", "0,10", "--base", "no-such-rule"], ["--base", "no-such-rule"]),
    # a CLSC-2 window on CLSC-1: each task's draw refused it, an internal error after the work began
    (["--field", "carbon_tax", "--values", "0,10", "--base", "w4.yaml"],
     ["--base: recycled_content_window=4", "CLSC-1 settles the mandate every period"]),
    (["--field", "carbon_tax", "--values", "0,10", "--scenarios", "1"], ["--scenarios"]),
    (["--field", "carbon_tax", "--values", "0,10", "--plot", "out.txt"], ["--plot", "png"]),
    # checked before the sweep's work, as --json is: no folder created, nothing computed
    (["--field", "carbon_tax", "--values", "0,10", "--plot", "no-such-folder/out.png"],
     ["--plot", "no-such-folder", "does not exist"]),
    (["--field", "carbon_tax", "--values", "0,10", "--moca-base", "best"], ["--moca-base", "best"]),
    # a process per task was started and 100000 recorded as the run's workers
    (["--field", "carbon_tax", "--values", "0,10", "--workers", "100000"], ["--workers 100000", "at most 64"]),
    (["--field", "carbon_tax", "--values", "0,10", "--model", "CLSC-2", "--moca-base", "map"],
     ["--moca-base", "map", "CLSC-2"]),
])
def test_bad_input_is_one_line_exit_2(args, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w4.yaml").write_text("recycled_content_window: 4\nrecycled_content_min: 0.1\n")
    result = runner.invoke(app, ["sweep", *args, "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moca: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "out.json").exists()
    assert not (tmp_path / "no-such-folder").exists()


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = runner.invoke(app, ["sweep", "--field", "carbon_tax", "--values", "0,10", "--ray", "auto"])
    assert result.exit_code == 2
    assert "Ray is not installed" in result.stderr and "pip install 'moca[ray]'" in result.stderr
    result = runner.invoke(app, ["train", "-o", "unused", "--ray", "auto", "--steps", "1"])
    assert result.exit_code == 2 and "pip install 'moca[ray]'" in result.stderr


# Binding points of every rule (a tight mandate, a cap below the virgin-only emissions, a
# recovery target with disposal in the plan), and central differences of the oracle cost.
@pytest.mark.parametrize("field, regime, delta", [
    ("recycled_content_min", dict(recycled_content_min=0.15, carbon_tax=80.0), 1e-4),
    ("carbon_tax", dict(recycled_content_min=0.15, carbon_tax=80.0), 0.01),
    ("emission_cap", dict(recycled_content_min=0.05, emission_cap=9000.0), 0.5),
    ("recovery_target", dict(recovery_target=0.97), 1e-4),
    ("landfill_tax", dict(landfill_tax=0.0), 0.0),
])
def test_shadow_price_is_the_finite_difference_of_the_oracle_cost(field, regime, delta):
    for seed in (1000, 1001):
        scenario = draw_scenario(seed, Regime(**regime))
        sp = shadow_prices(scenario)
        assert sp.oracle_cost == pytest.approx(solve_oracle(scenario).oracle_cost, rel=1e-9)
        if delta == 0.0:  # landfill tax: the derivative is the cores disposed
            assert sp.prices[field] == pytest.approx(float(sp.result.plan[:, 5].sum()))
            continue
        up = solve_oracle(draw_scenario(seed, Regime(**{**regime, field: regime[field] + delta}))).oracle_cost
        down = solve_oracle(draw_scenario(seed, Regime(**{**regime, field: regime[field] - delta}))).oracle_cost
        slope = (up - down) / (2 * delta) * (-1 if field == "emission_cap" else 1)  # tightening a cap = lowering it
        assert sp.prices[field] > 0, (field, sp.prices[field])  # every rule here binds
        assert sp.prices[field] == pytest.approx(slope, rel=1e-6)
    assert shadow_prices(draw_scenario(1000, Regime())).prices["emission_cap"] is None


@pytest.fixture(scope="module")
def small_sweep():
    # A small tuning budget for the threshold rule keeps this fast; the rule is still tuned.
    plan = make_plan("CLSC-1", "recycled_content_min", "0.1,0.26", policies="oracle,threshold,mpc", scenarios=3,
                     threshold_budget=96)
    return plan, run_sweep(plan, Backend("serial"))


def test_small_sweep_invariants(small_sweep):
    plan, result = small_sweep
    assert result["field"] == "recycled_content_min" and result["values"] == [0.1, 0.26]
    assert result["backend"] == {"kind": "serial", "workers": 1}
    assert result["tasks"] == 3 * 3  # two values + the neutral 0 per policy
    oracle = result["policies"]["oracle"]
    for name, entry in result["policies"].items():
        for key in ("cost", "cost_ci", "compliance_cost", "emissions", "recycled_share", "violations", "backlog"):
            assert len(entry[key]) == 2, (name, key)
        assert entry["violations"] == [0, 0]
        for i in range(2):
            lo, hi = entry["cost_ci"][i]
            assert lo < entry["cost"][i] < hi
            assert entry["recycled_share"][i] >= plan.values[i] - 1e-6  # the mandate holds
            if name != "oracle":  # the hindsight optimum bounds every policy's mean cost
                assert oracle["cost"][i] <= entry["cost"][i] + 1e-6
        # A binding mandate costs money; for the oracle adding a rule can never save any (a
        # heuristic rule may do better under a mild mandate than without, so only at 26%).
        assert entry["compliance_cost"][1] > 0
        if name == "oracle":
            assert entry["compliance_cost"][0] > 0
    # The newcomer's cliff: at 26% returns cannot supply the recycled material, and the
    # flag says so; at 10% the oracle meets demand as without the rule.
    assert oracle["demand_unmet_by_rule"] == [False, True]
    assert oracle["backlog"][1] > 10 * oracle["backlog"][0]
    assert any("recycled_content_min=0.26" in w for w in result["warnings"])
    assert all(p is not None and p > 0 for p in oracle["shadow_price"])
    assert json.loads(json.dumps(result)) == result  # JSON-ready as it is


def test_neutral_value_in_the_list_is_reused_and_costs_nothing():
    plan = make_plan("CLSC-1", "carbon_tax", "0,150", policies="oracle", scenarios=2)
    assert len(plan.tasks()) == 2
    result = run_sweep(plan, Backend("serial"))
    entry = result["policies"]["oracle"]
    assert entry["compliance_cost"][0] == 0.0 and entry["compliance_cost_ci"][0] == [0.0, 0.0]
    # The tax's shadow price is the taxed t CO2 of virgin material, and the compliance
    # cost at 150 EUR/t is at most 150 x the t CO2 taxed at 0 (the plan could stay put).
    assert 0 < entry["compliance_cost"][1] <= 150 * entry["shadow_price"][0] + 1e-6


def test_local_pool_gives_the_serial_numbers():
    plan = make_plan("CLSC-1", "emission_cap", "9000", policies="oracle,mpc", scenarios=2)
    serial = run_sweep(plan, Backend("serial"))
    pooled = run_sweep(plan, Backend("pool", workers=2))
    assert pooled["backend"] == {"kind": "pool", "workers": 2} and pooled["tasks"] == 4
    assert pooled["policies"] == serial["policies"]  # bit for bit: a task runs the same wherever
    # A cap of 9,000 kg CO2/period binds (an average virgin-only period emits ~14,000).
    assert serial["policies"]["oracle"]["shadow_price"][0] > 0
    assert serial["policies"]["mpc"]["violations"] == [0]


def test_moca_policy_reports_its_adaptation():
    plan = make_plan("CLSC-1", "recycled_content_min", "0.2", policies="moca", scenarios=2, adapt_steps=1)
    entry = run_sweep(plan, Backend("serial"))["policies"]["moca"]
    assert entry["adaptation_steps"][0] in (0, 1) and entry["adaptation_seconds"][0] >= 0
    assert entry["violations"] == [0] and entry["recycled_share"][0] >= 0.2 - 1e-6
    assert entry["compliance_cost"][0] > 0


def test_moca_through_the_portfolio_reports_the_candidate_it_deployed():
    """--moca-base mpc: moca is the LSTM over the rolling LP, its safety stock picked on the
    support scenarios; with a fresh head it acts as the LP, so it keeps every rule."""
    plan = make_plan("CLSC-1", "carbon_tax", "300", policies="moca,mpc", scenarios=2, adapt_steps=1,
                     moca_base="mpc")
    result = run_sweep(plan, Backend("serial"))
    entry = result["policies"]["moca"]
    assert entry["moca_base"] == "mpc" and entry["candidate"] == ["mpc"] and entry["violations"] == [0]
    assert "candidate" not in result["policies"]["mpc"] and entry["adaptation_seconds"][0] >= 0
    # The calibrated MPC (safety stock 100) and the candidate (stock chosen on support) differ.
    assert entry["cost"][0] != result["policies"]["mpc"]["cost"][0]


def test_moca_goes_through_the_portfolio_by_default_where_a_cap_is_in_force(monkeypatch):
    """The default --moca-base caps: the portfolio at a capped value, the meta-init alone at the
    neutral value (no cap) the compliance cost is measured against, as the service adapts."""
    import moca.portfolio as portfolio

    seen, real = [], portfolio.adapt_portfolio

    def recorded(module, regime, steps, base="auto", **kwargs):
        seen.append((regime.emission_cap, base))
        return real(module, regime, steps, base=base, **kwargs)

    monkeypatch.setattr(portfolio, "adapt_portfolio", recorded)
    plan = make_plan("CLSC-1", "emission_cap", "12000", policies="moca", scenarios=2, adapt_steps=1)
    assert plan.moca_base == "caps"
    entry = run_sweep(plan, Backend("serial"))["policies"]["moca"]
    assert sorted(seen, key=str) == [(12000.0, "auto"), (None, "default")]
    assert entry["moca_base"] == "caps" and entry["base"] == ["auto"] and entry["violations"] == [0]
    assert entry["candidate"][0] in ("default", "map", "mpc") and entry["adapt_seconds_total"][0] > 0


def test_cli_table_shows_moca_at_every_value_whichever_base(tmp_path):
    # --moca-base default has no per-value base in its JSON: its rows once failed past the first value
    for base, needle in (("default", "steps,"), ("caps", "steps,")):
        result = runner.invoke(app, ["sweep", "--field", "landfill_tax", "--values", "0,50", "--policies", "moca",
                                     "--scenarios", "2", "--adapt-steps", "0", "--workers", "1", "--moca-base", base,
                                     "--json", str(tmp_path / f"{base}.json")])
        assert result.exit_code == 0, result.output
        assert result.stdout.count(needle) == 2, result.stdout
        assert json.loads((tmp_path / f"{base}.json").read_text())["policies"]["moca"]["adaptation_steps"] == [0, 0]


def test_cli_refuses_mocas_options_without_moca(tmp_path):
    """--adapt-steps and --moca-base without moca among --policies were taken and ignored."""
    for option, value in (("--adapt-steps", "3"), ("--moca-base", "map")):
        result = runner.invoke(app, ["sweep", "--field", "landfill_tax", "--values", "0,50", "--policies", "oracle",
                                     option, value])
        assert result.exit_code == 2 and f"{option}: moca's, and --policies 'oracle' has no moca" in result.stderr


def test_cli_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    result = runner.invoke(app, ["sweep", "--field", "landfill_tax", "--values", "0,50", "--policies", "oracle",
                                 "--scenarios", "2", "--workers", "1", "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) >= {"field", "values", "policies", "seconds", "backend"}
    assert set(data["policies"]["oracle"]) >= {"cost", "cost_ci", "compliance_cost", "emissions", "recycled_share",
                                               "violations", "shadow_price", "demand_unmet_by_rule"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "landfill_tax" in result.stdout and math.isfinite(data["seconds"])
    header = " ".join(result.stdout.split())  # (the table may wrap its headers)
    assert "compliance cost vs landfill_tax=0 " in header  # (was "=0.0")
    assert "shadow price (EUR per EUR/core)" in header  # (had no unit)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    assert np.isfinite(data["policies"]["oracle"]["cost"]).all()
    # one file for both: the figure was written over the JSON, which was lost without a word
    same = runner.invoke(app, ["sweep", "--field", "landfill_tax", "--values", "0,50", "--policies", "oracle",
                               "--scenarios", "2", "--json", str(tmp_path / "both.png"), "--plot",
                               str(tmp_path / "." / "both.png")])
    assert same.exit_code == 2 and "the same file; give each its own" in same.stderr
    assert not (tmp_path / "both.png").exists()


def test_cli_sweeps_an_emission_cap_whose_neutral_value_is_none(tmp_path):
    """The README's cap sweep: its table's title formatted the neutral value (None: no cap)
    as a number, an internal error after the JSON was written, and no table or warning."""
    out = tmp_path / "cap.json"
    result = runner.invoke(app, ["sweep", "--field", "emission_cap", "--values", "16000,24000", "--policies", "oracle",
                                 "--scenarios", "2", "--workers", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "compliance cost vs no emission_cap" in " ".join(result.stdout.split())
    assert json.loads(out.read_text())["neutral"] is None


def test_amounts_below_half_a_euro_print_as_0():
    from moca.cli import _eur

    assert [_eur(x) for x in (-0.3, 0.0, 0.49, -0.6, 1234.5)] == ["0", "0", "0", "-1", "1,234"]  # (was "-0")


def test_unreachable_ray_address_fails_fast():
    pytest.importorskip("ray")
    # (a port beyond 16 bits was "no Ray cluster answers": the system wraps it)
    for address, needle in (("127.0.0.1:1", "no Ray cluster answers"), ("nonsense", "HOST:PORT"),
                            ("127.0.0.1:99999", "port 99999 is outside 1-65535"),
                            ("ray://127.0.0.1:0", "port 0 is outside 1-65535")):
        result = runner.invoke(app, ["sweep", "--field", "carbon_tax", "--values", "0,10", "--policies", "oracle",
                                     "--scenarios", "2", "--ray", address])
        assert result.exit_code == 2 and needle in result.stderr, result.stderr


def test_a_cost_interval_over_few_scenarios_never_reaches_below_zero():
    """Costs and emissions have no negative terms: a t-interval over four scenarios, one
    with an outage, would reach below 0 and is cut there; a paired difference (the
    compliance cost) may be negative and is not cut; a tight interval is left alone."""
    from moca.sweep import TaskResult, aggregate, interval

    skewed = [1000.0, 1200.0, 900.0, 40000.0]
    assert interval(skewed)[1][0] < 0 and interval(skewed, lowest=0.0)[1][0] == 0.0
    assert interval(skewed, lowest=0.0)[1][1] == interval(skewed)[1][1]
    assert interval([10.0, 11.0, 12.0], lowest=0.0) == interval([10.0, 11.0, 12.0])
    plan = make_plan("CLSC-1", "carbon_tax", "0,100", policies="threshold", scenarios=4)

    def metrics(cost):
        return {"cost": cost, "emissions": cost, "recycled_share": [0.1] * 4, plan.model.unmet: [0.0] * 4,
                "violations": [0] * 4}

    results = [TaskResult(0, "threshold", metrics([1000.0] * 4)), TaskResult(1, "threshold", metrics(skewed))]
    out = aggregate(plan, results)["policies"]["threshold"]
    assert out["cost_ci"][1][0] == 0.0 and out["emissions_ci"][1][0] == 0.0
    assert out["compliance_cost_ci"][1][0] < 0  # a difference: not cut


def test_a_stopped_sweep_keeps_its_finished_tasks_and_a_rerun_goes_on_from_them(tmp_path, monkeypatch):
    import moca.sweep as sweep_module

    plan = make_plan("CLSC-1", "carbon_tax", "0,150,300", policies="oracle,mpc", scenarios=2)
    fresh = run_sweep(plan, Backend("serial"))
    journal = tmp_path / "out.json.tasks.jsonl"
    real, ran, fail = sweep_module.run_task, [], {"on": True}

    def failing(task):
        ran.append((task.policy, task.index))
        if fail["on"] and task.policy == "oracle" and task.index == 2:
            raise RuntimeError("worker lost")
        return real(task)

    monkeypatch.setattr(sweep_module, "run_task", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_sweep(plan, Backend("serial"), journal=journal)
    finished = len(ran) - 1
    assert len(journal.read_text().splitlines()) == finished > 0  # each finished task, as it finished
    with journal.open("a") as f:
        f.write('{"code": "0", "task": {"model"')  # a line cut short by the stop is skipped
    ran.clear()
    told, fail["on"] = [], False
    again = run_sweep(plan, Backend("serial"), journal=journal, on_done=lambda n, total: told.append((n, total)))
    assert len(ran) == len(plan.tasks()) - finished  # only what had not finished ran
    assert again["resumed_tasks"] == finished and told[0] == (finished, len(plan.tasks()))
    assert again["policies"] == fresh["policies"]  # bit for bit: a task is a pure function of its input
    ran.clear()
    assert run_sweep(plan, Backend("serial"), journal=journal)["resumed_tasks"] == len(plan.tasks()) and ran == []
    # keep: the result is kept while the journal is still locked, then the journal goes (moca sweep's
    # --json was written after the lock was let go: a second run in that instant took every task)
    from moca.sweep import SweepError

    def failing_keep(result):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):  # not kept: the journal stays for a rerun
        run_sweep(plan, Backend("serial"), journal=journal, keep=failing_keep)
    assert len(journal.read_text().splitlines()) >= len(plan.tasks())  # (and the line cut short above)
    kept = []

    def keep(result):
        with pytest.raises(SweepError, match="in use by another run"):
            run_sweep(plan, Backend("serial"), journal=journal)
        kept.append(result["resumed_tasks"])

    run_sweep(plan, Backend("serial"), journal=journal, keep=keep)
    assert kept == [len(plan.tasks())] and not journal.exists()
    # records of other code (another checkout or version), or of another sweep's tasks, are not taken
    stale = tmp_path / "stale.jsonl"
    fail["on"] = True
    ran.clear()
    with pytest.raises(RuntimeError):
        run_sweep(plan, Backend("serial"), journal=stale)
    stale.write_text(stale.read_text().replace('"code": "', '"code": "old-'))
    ran.clear()
    with pytest.raises(RuntimeError):
        run_sweep(plan, Backend("serial"), journal=stale)
    assert len(ran) == finished + 1  # all ran again up to the failing task
    early = tmp_path / "early.jsonl"  # stopped before any task finished: no empty file left
    monkeypatch.setattr(sweep_module, "run_task", lambda task: (_ for _ in ()).throw(RuntimeError("at once")))
    with pytest.raises(RuntimeError, match="at once"):
        run_sweep(plan, Backend("serial"), journal=early)
    assert not early.exists()
    # a different sweep given the same file kept its result and deleted the stopped one's tasks:
    # they stay now, and the stopped sweep goes on from them
    from moca.sweep import finished_in_journal

    shared = tmp_path / "shared.jsonl"
    monkeypatch.setattr(sweep_module, "run_task", failing)
    fail["on"] = True
    with pytest.raises(RuntimeError):
        run_sweep(plan, Backend("serial"), journal=shared)
    with shared.open("a") as f:
        f.write('{"code": "0", "task": {"model"')  # a line cut short by the stop: not counted
    assert finished_in_journal(shared, plan) == finished < len(shared.read_text().splitlines())
    other = make_plan("CLSC-1", "landfill_tax", "0,50", policies="threshold", scenarios=2)
    fail["on"] = False
    run_sweep(other, Backend("serial"), journal=shared, keep=lambda result: None)
    assert finished_in_journal(shared, plan) == finished and finished_in_journal(shared, other) == 0
    ran.clear()
    resumed = run_sweep(plan, Backend("serial"), journal=shared, keep=lambda result: None)
    assert resumed["resumed_tasks"] == finished and len(ran) == len(plan.tasks()) - finished
    assert not shared.exists()  # (nothing of another sweep left in it)


def test_cli_sweep_oracle_unsolved_is_bad_input(tmp_path, monkeypatch):
    """An LP HiGHS leaves unsolved inside a sweep is the user's numbers (oracle.UNSOLVED says
    which), exit 2 with that text and what was kept, not an internal 'sweep failed'."""
    import moca.sweep as sweep_module
    from moca.oracle import UNSOLVED, OracleError

    out = tmp_path / "sweep.json"
    real = sweep_module.run_task

    def failing(task):
        if task.index == 1:
            raise OracleError(f"HiGHS ended with status 'Unknown': {UNSOLVED}")
        return real(task)

    monkeypatch.setattr(sweep_module, "run_task", failing)
    result = runner.invoke(app, ["sweep", "--field", "landfill_tax", "--values", "0,50", "--policies", "oracle",
                                 "--scenarios", "2", "--workers", "1", "--json", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "sweep failed" not in text and "bring them closer" in text
    assert f"1 finished task kept in {out}.tasks.jsonl" in text
    assert not out.exists()


def test_cli_sweep_stopped_then_rerun(tmp_path, monkeypatch):
    import moca.sweep as sweep_module

    out = tmp_path / "sweep.json"
    args = ["sweep", "--field", "landfill_tax", "--values", "0,50", "--policies", "oracle", "--scenarios", "2",
            "--workers", "1", "--json", str(out)]
    real = sweep_module.run_task

    def failing(task):
        if task.index == 1:
            raise RuntimeError("solver failed")
        return real(task)

    monkeypatch.setattr(sweep_module, "run_task", failing)
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert ("sweep failed: RuntimeError: solver failed; 1 finished task kept in "
            f"{out}.tasks.jsonl: the same command again goes on from them") in " ".join(result.output.split())
    assert not out.exists()
    monkeypatch.setattr(sweep_module, "run_task", real)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 of 2 tasks taken from" in " ".join(result.stdout.split())
    assert json.loads(out.read_text())["resumed_tasks"] == 1
    assert not (tmp_path / "sweep.json.tasks.jsonl").exists()
    monkeypatch.setattr(sweep_module, "run_task", failing)  # without --json, nothing is kept, and it says how
    result = runner.invoke(app, args[:-2])
    assert result.exit_code == 1 and "with --json FILE, finished tasks are kept" in " ".join(result.output.split())


@pytest.mark.skipif(sys.platform == "win32", reason="journals are locked with POSIX flock")
def test_a_second_run_of_a_running_sweep_is_refused_and_leaves_its_journal_alone(tmp_path):
    import fcntl

    out = tmp_path / "sweep.json"
    journal = tmp_path / "sweep.json.tasks.jsonl"
    args = ["sweep", "--field", "landfill_tax", "--values", "0,50", "--policies", "oracle", "--scenarios", "2",
            "--workers", "1", "--json", str(out)]
    journal.write_text('{"a record": "of the run going on"}\n')
    with journal.open("a") as running:  # the lock a run of this sweep holds while it runs
        fcntl.flock(running.fileno(), fcntl.LOCK_EX)
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"{journal} is in use by another run of this sweep" in " ".join(result.output.split())
        assert "Traceback" not in result.output and not out.exists()
        assert journal.read_text() == '{"a record": "of the run going on"}\n'
    result = runner.invoke(app, args)  # once that run is over, the same command runs
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["resumed_tasks"] == 0 and not journal.exists()


def test_make_plan_checks_a_library_list_and_numbers_as_the_command_line_does():
    """A list of values skipped the text form's checks (a repeated value, 600 values); a
    fractional count or seed, a bool and a NaN budget were taken or failed in a raw TypeError."""
    for kwargs, needle in (({"values": [0.1, 0.1]}, "a value is repeated"),
                           ({"values": list(range(600))}, "600 values"),
                           ({"values": [0.1, float("nan")]}, "every value must be a finite number"),
                           ({"values": [True]}, "every value must be a finite number"),
                           ({"scenarios": 3.5}, "--scenarios 3.5: a whole number"),
                           ({"seed": 1.5}, "--seed 1.5: a whole number"), ({"seed": "a"}, "--seed 'a'"),
                           ({"adapt_steps": 1.5}, "--adapt-steps 1.5"), ({"adapt_steps": True}, "--adapt-steps True"),
                           ({"adapt_steps": None}, "--adapt-steps None"),
                           ({"threshold_budget": float("nan")}, "threshold_budget nan")):
        with pytest.raises(SweepError, match=needle):
            make_plan("CLSC-1", "carbon_tax", **{"values": "0,10", **kwargs})
    plan = make_plan("CLSC-1", "carbon_tax", [np.float64(0.0), 10], scenarios=np.int64(3))
    assert plan.values == [0.0, 10.0] and len(plan.seeds) == 3


def test_a_killed_sweep_leaves_no_worker_computing(tmp_path):
    """After a `kill -9` of `moca sweep`, its pool's workers went on computing, orphaned,
    until killed one by one; they now end with it."""
    from _cli import orphans_outlive_a_kill

    left = orphans_outlive_a_kill("sweep", "--field", "carbon_tax", "--values", "0:300:10", "--policies", "oracle",
                                  "--scenarios", "20", "--workers", "2", "--json", tmp_path / "sweep.json", ready=2)
    assert left == []


@pytest.mark.parametrize("field", ["recycled_content_min", "recovery_target"])
def test_a_share_rules_price_at_zero_is_the_cost_of_tightening_it(field):
    """At 0 a share rule's row is slack and its dual 0: `moca sweep` reported a shadow price
    of 0 at the first value of every mandate or recovery sweep, where the oracle's cost rises
    by about 20,000 EUR per share from 0. There the price is the one-sided difference."""
    from moca.oracle import KINK_STEP

    scenario = draw_scenario(1000, Regime())
    sp = shadow_prices(scenario, fields=[field])
    assert list(sp.prices) == [field]
    tighter = solve_oracle(draw_scenario(1000, Regime(**{field: KINK_STEP}))).oracle_cost
    assert sp.prices[field] > 1000.0
    assert sp.prices[field] == pytest.approx((tighter - sp.oracle_cost) / KINK_STEP, rel=1e-9)
