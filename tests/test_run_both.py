"""Plain `moca run` runs the seed experiment on both worlds, CLSC-1 then CLSC-2, each into
its own run folder (runs/<id> and runs/<id>-clsc2), with a closing summary of both;
`--model` runs one world; the CLSC-2 run writes its plots; a world that fails leaves the
other's results and gives a non-zero exit.

In-process (typer's test runner) with the quick configs shrunk to one scenario and one
step, so both worlds run for real in seconds; the orchestration tests use stand-ins for
the experiments (what they check is which world runs and what survives a failure).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from moca import experiment, experiment2
from moca.cli import app
from moca.report import PLOTS_2, check_metrics

TINY = experiment.ExperimentConfig(steps=1, train_size=1, memory_size=1, validation_size=1, test_size=1,
                                   generalisation=[], generalisation_steps=[])
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny(monkeypatch):
    """`--quick` shrunk to one scenario per use; torch's thread count restored afterwards
    (the CLSC-2 run sets one thread for the process)."""
    monkeypatch.setattr(experiment, "quick_config", lambda: TINY)
    monkeypatch.setattr(experiment2, "quick_config2", lambda: TINY)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(*args):
    result = CliRunner().invoke(app, ["run", *map(str, args)], env={"COLUMNS": "250"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def assert_clsc2_run(folder: Path) -> dict:
    """A complete CLSC-2 run folder: valid metrics, report.md embedding every plot, the
    plots non-empty PNG files."""
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["model"] == "CLSC-2" and metrics["tasks"] == ["T1", "T2", "T3"]
    moca = metrics["methods"]["moca"]
    assert moca["violations"] == 0 and len(moca["R"]) == 4
    oracle = [metrics["baselines"]["oracle"][t]["mean_cost"] for t in metrics["tasks"]]
    # The final weights' cost per task, which the cost plot shows against the oracle's.
    assert len(moca["final_mean_cost"]) == 3
    assert all(c >= o * (1 - 1e-9) for c, o in zip(moca["final_mean_cost"], oracle))
    report = (folder / "report.md").read_text()
    for name in PLOTS_2:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        assert f"]({name})" in report, name
    return metrics


def test_plain_run_runs_both_worlds(tiny, tmp_path):
    runs, out_json = tmp_path / "runs", tmp_path / "both.json"
    done = run("--quick", "--methods", "moca", "--peers", "none", "--runs-dir", runs, "--json", out_json)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = sorted(p.name for p in runs.iterdir())
    assert len(folders) == 2, folders
    first, second = sorted(folders, key=len)
    assert first.endswith("-quick") and second == first.replace("-quick", "-clsc2-quick")  # paired by time stamp
    clsc1 = json.loads((runs / first / "metrics.json").read_text())
    check_metrics(clsc1)
    assert list(clsc1["methods"]) == ["moca"] and clsc1["methods"]["moca"]["violations"] == 0
    assert (runs / first / "score_matrices.png").read_bytes().startswith(PNG)
    clsc2 = assert_clsc2_run(runs / second)
    assert json.loads(out_json.read_text()) == {"CLSC-1": clsc1, "CLSC-2": clsc2}
    # Both worlds' tables, then the closing summary naming both folders.
    assert f"moca run {first}" in done.stdout and f"moca run --model CLSC-2 {second}" in done.stdout
    summary = done.stdout[done.stdout.index("both worlds"):]
    assert "CLSC-1" in summary and "CLSC-2" in summary and first in summary and second in summary
    assert f"{clsc2['methods']['moca']['average_final_score']:.4f}" in summary


def test_a_failing_world_keeps_the_others_results(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom in the baselines")

    monkeypatch.setattr(experiment, "baseline_results", broken)
    runs, out_json = tmp_path / "runs", tmp_path / "both.json"
    done = run("--quick", "--methods", "moca", "--peers", "none", "--runs-dir", runs, "--json", out_json)
    assert done.returncode == 1  # a bug, not bad input
    assert "CLSC-1 run failed" in done.stderr and "boom in the baselines" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    (folder,) = runs.iterdir()  # CLSC-2 ran anyway; CLSC-1 left nothing half-written
    assert folder.name.endswith("-clsc2-quick")
    clsc2 = assert_clsc2_run(folder)
    saved = json.loads(out_json.read_text())
    assert saved["CLSC-2"] == clsc2 and "boom in the baselines" in saved["CLSC-1"]["error"]
    assert "FAILED" in done.stdout[done.stdout.index("both worlds"):]


# --- the orchestration, with stand-ins for the two experiments ------------------------------


def stand_in_metrics(run_id: str, world: str) -> dict:
    tasks = ["T1", "T2", "T3"]
    return {"id": run_id, "tasks": tasks, "wall_seconds": 1.0, "targets": [] if world == "CLSC-1" else {},
            "methods": {"moca": {"R": [[0.9, 0.9, 0.9]] * 4, "average_final_score": 0.9,
                                 "drop_first_after_second": 0.0, "violations": 0}},
            "baselines": {"oracle": {t: {"score": 1.0, "violations": 0} for t in tasks},
                          "mpc": {t: {"score": 0.8, "violations": 0} for t in tasks}}}


@pytest.fixture
def stand_ins(monkeypatch):
    """Both experiments replaced by functions that record their call and write a run folder."""
    calls = []

    def fake(world):
        def experiment_function(**kwargs):
            calls.append(world)
            run_id = kwargs.get("run_id") or f"20260101-000000{'-clsc2' if world == 'CLSC-2' else ''}"
            folder = Path(kwargs["runs_dir"]) / run_id
            folder.mkdir(parents=True)
            metrics = stand_in_metrics(run_id, world)
            (folder / "metrics.json").write_text(json.dumps(metrics))
            return metrics, folder
        return experiment_function

    monkeypatch.setattr(experiment, "run_experiment", fake("CLSC-1"))
    monkeypatch.setattr(experiment2, "run_experiment2", fake("CLSC-2"))
    threads = torch.get_num_threads()
    yield calls
    torch.set_num_threads(threads)


def test_model_runs_one_world(stand_ins, tmp_path):
    for world in ("CLSC-1", "CLSC-2"):
        stand_ins.clear()
        out_json = tmp_path / f"{world}.json"
        done = run("--model", world, "--runs-dir", tmp_path / world, "--json", out_json)
        assert done.returncode == 0, done.stderr
        assert stand_ins == [world]
        assert json.loads(out_json.read_text())["id"].startswith("20260101")  # one world: its metrics, unwrapped
        assert "both worlds" not in done.stdout
    stand_ins.clear()
    assert run("--runs-dir", tmp_path / "both").returncode == 0
    assert stand_ins == ["CLSC-1", "CLSC-2"]
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["20260101-000000", "20260101-000000-clsc2"]
    # --params describes a CLSC-1 chain: CLSC-1 alone, and it says so.
    params = tmp_path / "chain.yaml"
    params.write_text("cap_produce: 1200\n")
    stand_ins.clear()
    done = run("--params", params, "--runs-dir", tmp_path / "own")
    assert done.returncode == 0 and stand_ins == ["CLSC-1"] and "only CLSC-1 runs" in done.stderr


def test_bad_options_stop_before_either_world_runs(stand_ins, tmp_path):
    for args, needle in ((["--model", "CLSC-3"], "--model"), (["--methods", "moca,magic"], "magic"),
                         (["--peers", "oracle2"], "--peers"), (["--json", tmp_path], "--json")):
        done = run(*args, "--runs-dir", tmp_path / "runs")
        assert done.returncode == 2 and needle in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert stand_ins == [] and not (tmp_path / "runs").exists()
    # A runs folder that cannot be made fails before the work too, not when the run is written.
    (tmp_path / "a-file").write_text("x")
    for runs, needle in ((tmp_path / "a-file", "exists and is not a directory"),
                         (tmp_path / "a-file" / "runs", "a-file is not a directory")):
        done = run("--runs-dir", runs)
        assert done.returncode == 2 and "--runs-dir" in done.stderr and needle in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert stand_ins == []


def test_a_later_world_failing_leaves_the_first_ones_folder(stand_ins, tmp_path, monkeypatch):
    def corrupted(**kwargs):
        raise experiment.ExperimentError("checkpoint 'default': its policy architecture differs")

    monkeypatch.setattr(experiment2, "run_experiment2", corrupted)
    out_json = tmp_path / "both.json"
    done = run("--runs-dir", tmp_path / "runs", "--json", out_json)
    assert done.returncode == 2  # the failure was bad input (a checkpoint), not a bug
    assert "CLSC-2 run failed: checkpoint 'default'" in done.stderr
    assert stand_ins == ["CLSC-1"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["20260101-000000"]
    saved = json.loads(out_json.read_text())
    assert saved["CLSC-1"]["id"] == "20260101-000000" and "architecture differs" in saved["CLSC-2"]["error"]
