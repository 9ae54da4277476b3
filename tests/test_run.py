"""`moca run --quick --model CLSC-1` end to end: the seed experiment's small version on
CLSC-1 writes a valid metrics.json, report.md and plots, and prints the table. (Plain
`moca run` runs both worlds: tests/test_run_both.py.)"""

import json
import os
import subprocess
import sys

import pytest

from moca.report import check_metrics

MOCA = [sys.executable, "-m", "moca.cli"]


def test_run_quick_writes_valid_metrics(tmp_path):
    env = {**os.environ, "COLUMNS": "250"}
    out_json = tmp_path / "copy.json"
    done = subprocess.run([*MOCA, "run", "--quick", "--model", "CLSC-1", "--runs-dir", tmp_path / "runs", "--json", out_json],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.endswith("-quick")
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    check_metrics(metrics)
    assert json.loads(out_json.read_text()) == metrics
    assert metrics["quick"] is True and metrics["tasks"] == ["T1", "T2", "T3"]
    assert set(metrics["methods"]) == {"scratch", "finetune", "ewc", "maml", "moca", "reptile"}
    assert metrics["aliases"] == {"fomaml": "moca"}
    assert set(metrics["baselines"]) == {"oracle", "threshold", "mpc"}
    for name, result in metrics["methods"].items():
        R = result["R"]
        assert len(R) == 4 and all(len(row) == 3 for row in R), name
        assert all(0.3 < s <= 1.0 + 1e-9 for row in R for s in row), (name, R)
        assert result["violations"] == 0, name
        drop = (R[1][0] - R[2][0]) / R[1][0]
        assert abs(result["drop_first_after_second"] - drop) < 1e-12
        assert abs(result["average_final_score"] - sum(R[3]) / 3) < 1e-12
    for task in ("T1", "T2", "T3"):
        assert abs(metrics["baselines"]["oracle"][task]["score"] - 1.0) < 1e-12
        for baseline in ("threshold", "mpc"):
            assert 0.5 < metrics["baselines"][baseline][task]["score"] <= 1.0 + 1e-9
    # Meta-init methods start from the shipped checkpoint, the others from the base rule.
    assert metrics["methods"]["moca"]["R"][0] == metrics["methods"]["maml"]["R"][0]
    assert metrics["methods"]["finetune"]["R"][0] == metrics["methods"]["scratch"]["R"][0]
    assert metrics["methods"]["moca"]["R"][0] != metrics["methods"]["finetune"]["R"][0]
    assert metrics["methods"]["moca"]["checkpoint"] == "default"
    assert metrics["methods"]["reptile"]["checkpoint"] == "default-reptile"
    assert "checkpoint" not in metrics["methods"]["finetune"]
    assert metrics["generalisation"]["policies"]["moca"]
    assert metrics["params_note"] is None and "trained on other params" not in done.stderr  # the default chain
    # Each task on its own: moca adapt's portfolio beside the MPC re-tuned for the task.
    retuned = metrics["retuned"]
    assert set(retuned) == {"mpc-retuned", "moca-adapt"}
    for task in ("T1", "T2", "T3"):
        peer, ours = retuned["mpc-retuned"][task], retuned["moca-adapt"][task]
        assert peer["violations"] == 0 and ours["violations"] == 0
        assert peer["safety_stock"] in (100.0, 400.0, 600.0, 800.0, 1200.0) and peer["seconds"] > 0
        assert ours["candidate"] in ("default", "map", "mpc") and ours["steps"] == 1 and ours["seconds"] > 0
        assert 0.5 < peer["score"] <= 1.0 + 1e-9 and 0.5 < ours["score"] <= 1.0 + 1e-9
        if ours["candidate"] == "mpc" and ours["safety_stock"] == peer["safety_stock"]:
            assert abs(ours["score"] - peer["score"]) < 1e-6  # the same LP, through float32 base columns
    target = next(t for t in metrics["targets"] if t["what"].startswith("moca adapt"))
    ours = sum(v["score"] for v in retuned["moca-adapt"].values()) / 3
    peer = sum(v["score"] for v in retuned["mpc-retuned"].values()) / 3
    assert target["met"] == (ours >= peer or ("a tie" in target["measured"] and abs(ours - peer) <= 1e-6))
    names = {p.name for p in runs[0].iterdir()}
    assert {"metrics.json", "report.md", "score_matrices.png", "adaptation_curves.png"} <= names
    report = (runs[0] / "report.md").read_text()
    assert "moca" in report and "![" in report
    assert "## Each task on its own" in report and "MPC, safety stock re-picked per task" in report
    assert "moca" in done.stdout and "oracle" in done.stdout
    for name, result in metrics["methods"].items():  # wall clock and the deciding thread's CPU time
        latency = result["decision_latency_us"]
        assert 0 < latency["cpu_p50"] <= latency["cpu_p99"] and 0 < latency["p50"] <= latency["p99"], name
    (p99,) = [t for t in metrics["targets"] if "p99" in t["what"]]
    cpu_p99 = metrics["methods"]["moca"]["decision_latency_us"]["cpu_p99"]
    assert p99["met"] == (cpu_p99 <= 300) and p99["measured"].startswith(f"{cpu_p99:.0f} µs CPU time (wall clock")


def test_a_callers_own_init_is_not_labelled_as_the_shipped_checkpoint():
    """run_continual names the shipped checkpoint a method started from, and names none when
    the caller passed its own init (as `moca continual --checkpoint` does)."""
    from moca.experiment import ExperimentConfig, run_continual, shipped_policy_config
    from moca.meta import OracleCache
    from moca.policy import LSTMPolicy
    from moca.regime import TASKS

    module = LSTMPolicy(config=shipped_policy_config())
    config = ExperimentConfig(steps=0, train_size=1, memory_size=1, validation_size=1, test_size=1)
    cache = OracleCache(module.params)
    own = {k: v.detach().clone() for k, v in module.named_parameters()}
    shipped, _ = run_continual("moca", module, [("T1", TASKS["T1"])], cache, config)
    mine, _ = run_continual("moca", module, [("T1", TASKS["T1"])], cache, config, init=own)
    assert shipped["checkpoint"] == "default"
    assert "checkpoint" not in mine
    assert mine["R"][0] != shipped["R"][0]  # it really started elsewhere


def test_experiment_config_refuses_what_it_ignored_or_refused_minutes_later():
    from pydantic import ValidationError

    from moca.continual import ContinualConfig
    from moca.experiment import ExperimentConfig

    for kwargs, message in (({"steps": True}, "steps=True is not a number"),
                            ({"correction_weight": float("inf")}, "correction_weight"),
                            ({"generalisation": ["bogus"]}, r"generalisation: unknown grid regimes \['bogus'\]"),
                            ({"generalisation_steps": [-1]}, r"generalisation_steps: \[-1\] must be whole numbers >= 0"),
                            ({"memory_size": 50, "train_size": 2}, "memory_size=50: at most train_size=2"),
                            ({"continual": ContinualConfig(seed=7)}, "continual.seed=7: the experiment seeds scratch")):
        with pytest.raises(ValidationError, match=message):
            ExperimentConfig(**kwargs)
    assert ExperimentConfig(continual=ContinualConfig(seed=7), scratch_seed=7).scratch_seed == 7


def test_decisions_are_timed_on_the_wall_clock_and_in_the_deciding_threads_cpu_time():
    """With both worlds at once, the other world's run takes time slices from the core that
    CLSC-1's timed decisions run on: the wall clock counts them, the thread's CPU time does
    not, and the p99 target is judged on the decision's own cost, both shown."""
    import time

    import torch

    from moca.evaluation import TimedDecisions
    from moca.experiment import targets
    from moca.policy import DeployedPolicy, LSTMPolicy, PolicyConfig
    from moca.regime import Regime
    from moca.scenario import Params, draw_scenario
    from moca.sim import ScenarioBatch, rollout

    class Preempted(DeployedPolicy):
        def decide(self, *args):
            time.sleep(0.003)  # the core given to another process meanwhile
            return super().decide(*args)

    params = Params(horizon=6)
    policy = Preempted(LSTMPolicy(params, PolicyConfig(hidden=8)))
    batch = ScenarioBatch.from_scenarios([draw_scenario(1000, Regime(), params)], dtype=torch.float64)
    for _ in range(2):  # (the first episode warms up: a first decision in a fresh process took 28 ms of CPU)
        timed = TimedDecisions(policy)
        with torch.no_grad():
            rollout(batch, timed, timed.projector)
    assert len(timed.latencies) == len(timed.cpu_latencies) == 6
    assert min(timed.latencies) >= 3000 and max(timed.cpu_latencies) < 1500
    moca = {"decision_latency_us": {"p50": 99.0, "p99": 1933.0, "cpu_p50": 98.0, "cpu_p99": 131.0}}
    (p99,) = [t for t in targets({"methods": {"moca": moca}}) if "p99" in t["what"]]
    assert p99["met"] and p99["measured"] == "131 µs CPU time (wall clock 1933 µs)"
    moca["decision_latency_us"] = {"p50": 99.0, "p99": 1933.0}  # a run from before: the wall clock
    (p99,) = [t for t in targets({"methods": {"moca": moca}}) if "p99" in t["what"]]
    assert not p99["met"] and p99["measured"] == "1933 µs"
