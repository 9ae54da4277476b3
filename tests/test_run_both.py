"""Plain `moca run` runs the seed experiment on both worlds, each into its own run folder
(runs/<id> and runs/<id>-clsc2), with a closing summary of both: CLSC-1 in a second process
beside CLSC-2 (`--jobs 2`, the default on 2 cores), with the same numbers as one world after
the other (`--jobs 1`); `--model` runs one world; the CLSC-2 run writes its plots; a world
that fails, in either process, leaves the other's results and gives a non-zero exit.

In-process (typer's test runner) with the quick configs shrunk to one scenario and one
step, so both worlds run for real in seconds; the orchestration tests use stand-ins for
the experiments (what they check is which world runs and what survives a failure).
"""

import json
import multiprocessing
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _bench import load_script
from _cli import cpu_seconds, ctrl_c_once, start_in_own_session
from typer.testing import CliRunner

from moca import cli, experiment, experiment2
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


def run_both(tmp_path, jobs: int, *args) -> tuple[SimpleNamespace, Path, Path]:
    runs, out_json = tmp_path / f"runs-{jobs}", tmp_path / f"both-{jobs}.json"
    done = run("--quick", "--methods", "moca", "--peers", "none", "--runs-dir", runs, "--json", out_json,
               "--jobs", jobs, *args)
    return done, runs, out_json


differences = load_script("bench_run.py").differences  # (what the benchmark reports, the same way)


def test_differences_leave_out_only_what_differs_from_run_to_run():
    run = {"id": "a", "wall_seconds": 3.0, "targets": [{"measured": "99 µs", "met": True}], "R": [[0.9, 0.8]],
           "baselines": {"mpc": {"T1": {"score": 0.97, "decision_latency_us": {"p50": 800.0}}}}}
    other = json.loads(json.dumps(run))
    # (a target's verdict follows its measurement: the 20x latency ratio was met in one of two runs)
    other.update(id="b", wall_seconds=4.0, targets=[{"measured": "101 µs", "met": False}])
    other["baselines"]["mpc"]["T1"]["decision_latency_us"]["p50"] = 810.0
    assert differences(run, other) == []
    other["R"][0][1] = 0.80000001
    other["baselines"]["mpc"]["T1"]["score"] = 0.96
    assert differences(run, other) == ["/R[0][1]: 0.8 != 0.80000001", "/baselines/mpc/T1/score: 0.97 != 0.96"]
    assert differences({"methods": {"moca": 1}}, {"methods": {"moca": 2}}) == ["/methods/moca: 1 != 2"]
    # names that hold a left-out word are compared ("validation" and "candidate" hold "id": they
    # went uncompared, and two runs whose validation or chosen candidate differed read as the same)
    assert differences({"validation_plain": 0.9, "candidate": "mpc", "latency_scenarios": 20, "adaptation_seconds": 1},
                       {"validation_plain": 0.1, "candidate": "default", "latency_scenarios": 10,
                        "adaptation_seconds": 2}) == ["/candidate: 'mpc' != 'default'", "/latency_scenarios: 20 != 10",
                                                      "/validation_plain: 0.9 != 0.1"]


def test_plain_run_runs_both_worlds_at_once_with_the_numbers_of_one_after_the_other(tiny, tmp_path):
    saved = {}
    for jobs in (2, 1):
        done, runs, out_json = run_both(tmp_path, jobs)
        assert done.returncode == 0, done.stderr[-3000:]
        folders = sorted(p.name for p in runs.iterdir())
        assert len(folders) == 2, folders
        first, second = sorted(folders, key=len)
        assert first.endswith("-quick") and second == first.replace("-quick", "-clsc2-quick")  # paired by time stamp
        clsc1 = json.loads((runs / first / "metrics.json").read_text())
        check_metrics(clsc1)
        assert list(clsc1["methods"]) == ["moca"] and clsc1["methods"]["moca"]["violations"] == 0
        assert clsc1["config"] == TINY.model_dump(mode="json")  # (the second process ran the config given here)
        assert (runs / first / "score_matrices.png").read_bytes().startswith(PNG)
        clsc2 = assert_clsc2_run(runs / second)
        saved[jobs] = json.loads(out_json.read_text())
        assert saved[jobs] == {"CLSC-1": clsc1, "CLSC-2": clsc2}
        # Both worlds' tables, CLSC-1's first whichever ended first, then the summary naming both folders.
        tables = [done.stdout.index(f"moca run {first}"), done.stdout.index(f"moca run --model CLSC-2 {second}")]
        assert tables == sorted(tables)
        summary = done.stdout[done.stdout.index("both worlds"):]
        assert "CLSC-1" in summary and "CLSC-2" in summary and first in summary and second in summary
        assert f"{clsc2['methods']['moca']['average_final_score']:.4f}" in summary
        assert not multiprocessing.active_children()  # the second process is gone
    for world in ("CLSC-1", "CLSC-2"):
        assert differences(saved[2][world], saved[1][world]) == [], world
    assert saved[2]["CLSC-1"]["methods"]["moca"]["R"] == saved[1]["CLSC-1"]["methods"]["moca"]["R"]


def test_a_failing_world_keeps_the_others_results(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom in the baselines")

    monkeypatch.setattr(experiment, "baseline_results", broken)  # (this process only: one after the other)
    done, runs, out_json = run_both(tmp_path, 1)
    assert done.returncode == 1  # a bug, not bad input
    assert "CLSC-1 run failed" in done.stderr and "boom in the baselines" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    (folder,) = runs.iterdir()  # CLSC-2 ran anyway; CLSC-1 left nothing half-written
    assert folder.name.endswith("-clsc2-quick")
    clsc2 = assert_clsc2_run(folder)
    saved = json.loads(out_json.read_text())
    assert saved["CLSC-2"] == clsc2 and "boom in the baselines" in saved["CLSC-1"]["error"]
    assert "FAILED" in done.stdout[done.stdout.index("both worlds"):]


def stand_in_run(kwargs: dict, world: str) -> tuple[dict, Path]:
    """A stand-in experiment's run folder (written) and metrics."""
    run_id = kwargs.get("run_id") or f"20260101-000000{'-clsc2' if world == 'CLSC-2' else ''}"
    folder = Path(kwargs["runs_dir"]) / run_id
    folder.mkdir(parents=True)
    metrics = stand_in_metrics(run_id, world)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return metrics, folder


def test_a_failure_in_the_second_process_comes_back_by_name(tmp_path, monkeypatch):
    # The second process is a fresh interpreter: what breaks its CLSC-1 run must be in it from
    # the start, so a sitecustomize on its path replaces the experiment by one that fails as a
    # corrupted checkpoint would. CLSC-2, here, is a stand-in.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "from moca import experiment\n\n\n"
        "def corrupted(**kwargs):\n"
        "    raise experiment.ExperimentError(\"checkpoint 'default': its policy architecture differs\")\n\n\n"
        "experiment.run_experiment = corrupted\n")
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setattr(experiment2, "run_experiment2", lambda **kwargs: stand_in_run(kwargs, "CLSC-2"))
    threads = torch.get_num_threads()
    done, runs, out_json = run_both(tmp_path, 2)
    torch.set_num_threads(threads)
    assert done.returncode == 2, done.stderr[-3000:]  # bad input (a checkpoint), as in one process
    assert "moca: error: CLSC-1 run failed: checkpoint 'default': its policy architecture differs" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    (folder,) = runs.iterdir()
    assert folder.name.endswith("-clsc2-quick")
    saved = json.loads(out_json.read_text())
    assert "architecture differs" in saved["CLSC-1"]["error"] and saved["CLSC-2"]["id"] == folder.name
    assert "FAILED" in done.stdout[done.stdout.index("both worlds"):]
    assert not multiprocessing.active_children()


def test_a_second_process_that_dies_is_reported_and_the_other_world_kept(tmp_path, monkeypatch):
    def clsc2_that_kills_the_other(**kwargs):
        (second,) = [p for p in multiprocessing.active_children() if p.name == "moca run CLSC-1"]
        second.kill()  # as the kernel's out-of-memory killer would
        return stand_in_run(kwargs, "CLSC-2")

    monkeypatch.setattr(experiment2, "run_experiment2", clsc2_that_kills_the_other)
    threads = torch.get_num_threads()
    done, runs, out_json = run_both(tmp_path, 2)
    torch.set_num_threads(threads)
    assert done.returncode == 1
    assert "CLSC-1 run failed: its process ended without a result (exit code -9: killed" in done.stderr
    (folder,) = runs.iterdir()
    assert folder.name.endswith("-clsc2-quick")
    assert "ended without a result" in json.loads(out_json.read_text())["CLSC-1"]["error"]
    assert not multiprocessing.active_children()


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
            return stand_in_run(kwargs, world)
        return experiment_function

    monkeypatch.setattr(experiment, "run_experiment", fake("CLSC-1"))
    monkeypatch.setattr(experiment2, "run_experiment2", fake("CLSC-2"))
    monkeypatch.setattr(cli, "_run_stamp", lambda: "20260101-000000")
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
    assert run("--runs-dir", tmp_path / "both", "--jobs", "1").returncode == 0
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
                         (["--peers", "oracle2"], "--peers"), (["--json", tmp_path], "--json"),
                         # an option of a world not run, or of both worlds on one: was ignored without a word
                         (["--model", "CLSC-1", "--peers", "threshold"], "--peers: CLSC-2's"),
                         (["--model", "CLSC-1", "--scenarios", "2"], "--scenarios: CLSC-2's"),
                         (["--model", "CLSC-2", "--jobs", "2"], "--jobs: runs the two worlds")):
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
    done = run("--runs-dir", tmp_path / "runs", "--json", out_json, "--jobs", "1")
    assert done.returncode == 2  # the failure was bad input (a checkpoint), not a bug
    assert "CLSC-2 run failed: checkpoint 'default'" in done.stderr
    assert stand_ins == ["CLSC-1"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["20260101-000000"]
    saved = json.loads(out_json.read_text())
    assert saved["CLSC-1"]["id"] == "20260101-000000" and "architecture differs" in saved["CLSC-2"]["error"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the processes' parents from /proc")
@pytest.mark.parametrize("sigterm", [False, True], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_both_processes(tmp_path, sigterm):
    """Ctrl-C, and SIGTERM to both processes (as `timeout` sends it, to the process group:
    the run was killed without a word, or, once taken as Ctrl-C, the second process died of
    it first and was reported as a failed world), stop both and say so."""
    import signal

    def children(pid: int) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # (ended meanwhile)
                continue
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
        return found

    def command_line(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # (a short-lived child, e.g. `uname -p`, ended meanwhile)
            return b""

    proc = start_in_own_session("run", "--quick", "--jobs", "2", "--runs-dir", tmp_path / "runs")
    second: list[int] = []

    def both_at_work() -> bool:  # (imports take ~2 s of CPU)
        second[:] = [pid for pid in children(proc.pid) if b"spawn_main" in command_line(pid)]
        try:
            return bool(second) and cpu_seconds(second[0]) >= 4.0
        except OSError:  # (it ended meanwhile)
            return False

    stderr = ctrl_c_once(proc, both_at_work, sigterm=sigterm)
    assert proc.returncode in ((130,) if sigterm else (130, -signal.SIGINT)), (proc.returncode, stderr)
    assert stderr.endswith("moca: interrupted\n") and "Traceback" not in stderr, stderr
    assert "run failed" not in stderr, stderr  # (the second process stopped by the first is no failure)
    assert not Path(f"/proc/{second[0]}").exists()  # the second process did not outlive the first
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
