"""moca's per-task choice of update on CLSC-2: the protected update (EWC + GEM), plain
steps, or the weights left unchanged, kept by mean validation score over the tasks seen so
far.

The learner's part (``fork``, ``protect=False``, the default path unchanged) on a toy
linear regression; the choice itself with a validation function that is told which
candidate it sees; then one tiny real CLSC-2 run (1 step, 2 scenarios).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from moca.continual import ContinualConfig, ContinualLearner, project_update
from moca.experiment import ExperimentConfig, ExperimentError
from moca.experiment2 import learn_by_validation, report2, run_continual2


class Linear:
    """Task protocol on ``nn.Linear(P, 1, bias=False)``: per-sample loss ½(w·x_i − y_i)²."""

    def __init__(self, name: str, module: nn.Module, seed: int, coords: list[int], p: int = 6, n: int = 12):
        gen = torch.Generator().manual_seed(seed)
        self.name, self.module = name, module
        self.x = torch.zeros(n, p, dtype=torch.float64)
        self.x[:, coords] = torch.randn(n, len(coords), generator=gen, dtype=torch.float64)
        self.y = self.x @ (2.0 * torch.randn(p, generator=gen, dtype=torch.float64)) \
            + torch.randn(n, generator=gen, dtype=torch.float64)

    def per_sample_losses(self, weights: dict[str, Tensor]) -> Tensor:
        return 0.5 * (functional_call(self.module, weights, (self.x,)).squeeze(-1) - self.y) ** 2

    def loss(self, weights):
        return self.per_sample_losses(weights).mean()

    def memory_loss(self, weights):
        return self.per_sample_losses(weights)[:4].mean()


def setup(config: ContinualConfig = ContinualConfig(lr=0.05, ewc_lambda=2.0)):
    """A moca learner that has consolidated task A; task B shares weight 2 with A (they conflict)."""
    module = nn.Linear(6, 1, bias=False).double()
    a, b = Linear("A", module, 0, [0, 1, 2]), Linear("B", module, 1, [2, 3, 4])
    init = {"weight": torch.zeros(1, 6, dtype=torch.float64)}
    learner = ContinualLearner(module, "moca", init, config)
    learner.learn(a, 10)
    learner.consolidate(a)
    return module, learner, a, b


# ----------------------------------------------------------------------------------------
# The learner: the default (protected) path is unchanged; protect=False is maml's step
# ----------------------------------------------------------------------------------------


def test_default_step_is_the_protected_step_by_hand():
    _, learner, a, b = setup()
    twin = learner.fork()
    w = learner.flat.detach().clone().requires_grad_(True)
    weights = learner.layout.unflatten(w)
    (grad,) = torch.autograd.grad(b.loss(weights) + learner.ewc.penalty(w), w)
    (memory,) = torch.autograd.grad(a.memory_loss(weights), w)
    direction = project_update(grad, memory[None])
    assert direction is not grad  # B's gradient conflicts with A's memory: GEM acts here
    expected = w.detach() - 0.05 * direction

    loss, penalty, projected = learner.step(b)  # the default: every caller's path
    assert projected and penalty == 0.0  # at the anchor the penalty is 0; its gradient too
    assert torch.allclose(learner.flat.detach(), expected, rtol=0, atol=1e-12)
    twin.step(b, protect=True)
    assert torch.equal(twin.flat.detach(), learner.flat.detach())
    # later steps, away from the anchor, carry a positive penalty
    stats = learner.learn(b, 3)
    assert all(p > 0 for p in stats.penalties)


def test_plain_steps_are_maml_steps_and_keep_the_protection_for_later():
    module, learner, a, b = setup()
    maml = ContinualLearner(module, "maml", learner.weights, learner.config)
    plain = learner.learn(b, 5, protect=False)
    reference = maml.learn(b, 5)
    assert torch.equal(plain.weights["weight"], reference.weights["weight"])
    assert plain.penalties == [0.0] * 5 and not any(plain.projected)
    # the learner's consolidated state is untouched: it still protects A afterwards
    assert len(learner.ewc.fishers) == 1 and [m.name for m in learner.memories] == ["A"]
    assert learner.learn(b, 3).penalties[-1] > 0


def test_fork_is_independent_and_copies_the_optimizer_state():
    config = ContinualConfig(lr=0.02, momentum=0.9, reset_optimizer=False, ewc_lambda=2.0)
    _, learner, a, b = setup(config)
    learner.learn(b, 3)  # momentum built up on B, task still in progress
    before = learner.weights["weight"].clone()
    twin = learner.fork()
    assert twin.module is learner.module and twin.memories[0] is learner.memories[0]
    twin_steps = twin.learn(b, 2)
    assert torch.equal(learner.weights["weight"], before)  # the fork's steps do not move the original
    own_steps = learner.learn(b, 2)
    # same optimizer state (momentum) copied, not shared: the same two steps from the same state
    assert torch.equal(twin_steps.weights["weight"], own_steps.weights["weight"])
    twin.consolidate(b)
    assert len(twin.ewc.fishers) == 2 and len(learner.ewc.fishers) == 1
    assert len(twin.memories) == 2 and len(learner.memories) == 1


# ----------------------------------------------------------------------------------------
# The choice
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protected_score, plain_score, chosen",
                         [(0.90, 0.95, "plain"), (0.95, 0.90, "protected"), (0.93, 0.93, "protected")])
def test_keeps_the_candidate_with_the_higher_validation_mean(protected_score, plain_score, chosen):
    _, learner, a, b = setup()
    protected_w = learner.fork().learn(b, 4).weights["weight"]
    plain_w = learner.fork().learn(b, 4, protect=False).weights["weight"]
    assert not torch.allclose(protected_w, plain_w)

    def validation_mean(weights):  # told apart by the weights each candidate ends with
        return plain_score if torch.equal(weights["weight"], plain_w) else protected_score

    calls = []
    kept, stats, choice = learn_by_validation(learner, b, 4, validation_mean,
                                              on_step=lambda k, w: calls.append(k) or float(k))
    assert choice == {"task": "B", "chosen": chosen, "validation_protected": protected_score,
                      "validation_plain": plain_score, "validation_unchanged": None,
                      "comparison_seconds": choice["comparison_seconds"]}
    assert torch.equal(kept.weights["weight"], plain_w if chosen == "plain" else protected_w)
    assert (kept is learner) == (chosen == "protected")
    assert calls == [0, 1, 2, 3, 4] * 2  # both candidates learned, each curve recorded
    assert stats.scores == [0.0, 1.0, 2.0, 3.0, 4.0] and len(stats.seconds) == 5
    assert stats.seconds[0] == 0.0 and all(s2 >= s1 > 0 for s1, s2 in zip(stats.seconds[1:], stats.seconds[2:]))
    kept.consolidate(b)  # whichever won, B is consolidated and protected from then on
    assert len(kept.ewc.fishers) == 2 and [m.name for m in kept.memories] == ["A", "B"]


def test_first_task_is_learned_once_since_both_candidates_are_the_same():
    module = nn.Linear(6, 1, bias=False).double()
    a = Linear("A", module, 0, [0, 1, 2])
    learner = ContinualLearner(module, "moca", {"weight": torch.zeros(1, 6, dtype=torch.float64)},
                               ContinualConfig(lr=0.05, ewc_lambda=1.0))
    assert not learner.protecting
    plain_w = learner.fork().learn(a, 3, protect=False).weights["weight"]
    calls = []
    kept, stats, choice = learn_by_validation(learner, a, 3, lambda w: 0.5, on_step=lambda k, w: calls.append(k))
    assert kept is learner and calls == [0, 1, 2, 3]
    assert torch.equal(kept.weights["weight"], plain_w)  # nothing consolidated: the same steps
    assert choice["chosen"] == "protected" and choice["validation_plain"] == choice["validation_protected"] == 0.5
    kept.consolidate(a)
    assert kept.protecting


@pytest.mark.parametrize("protecting", [True, False])
def test_the_weights_before_the_task_are_kept_when_they_validate_strictly_higher(protecting):
    """Steps that lower the validation mean over the tasks seen (both candidates) are not
    kept: the learner leaves the task as it found it, still consolidates it, and the curve
    is step 0's alone with the seconds the choice cost."""
    from moca.metrics import adaptation_speed

    if protecting:
        _, learner, a, b = setup()
    else:
        module = nn.Linear(6, 1, bias=False).double()
        b = Linear("B", module, 1, [2, 3, 4])
        learner = ContinualLearner(module, "moca", {"weight": torch.zeros(1, 6, dtype=torch.float64)},
                                   ContinualConfig(lr=0.05, ewc_lambda=2.0))
    start = learner.weights["weight"].clone()

    def validation_mean(weights):
        return 0.99 if torch.equal(weights["weight"], start) else 0.9

    kept, stats, choice = learn_by_validation(learner, b, 4, validation_mean, on_step=lambda k, w: 0.5 + k,
                                              keep_unchanged=True)
    assert choice["chosen"] == "unchanged" and choice["validation_unchanged"] == 0.99
    assert choice["validation_protected"] == choice["validation_plain"] == 0.9
    assert torch.equal(kept.weights["weight"], start) and kept is not learner
    assert stats.scores == [0.5] and len(stats.seconds) == 1 and stats.seconds[0] > 0
    assert adaptation_speed(stats.scores, stats.seconds).steps == 0
    tasks_before = len(kept.memories)
    kept.consolidate(b)
    assert kept.protecting and len(kept.memories) == tasks_before + 1


# ----------------------------------------------------------------------------------------
# A tiny real CLSC-2 run
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clsc2():
    from moca.meta2 import OracleCache2, load_policy2
    from moca.regime import TASKS_2

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    module, _ = load_policy2("default")
    yield module, [(n, TASKS_2[n]) for n in ("T1", "T2", "T3")], OracleCache2(module.params)
    torch.set_num_threads(threads)


TINY2 = ExperimentConfig(steps=1, train_size=2, memory_size=1, validation_size=2, test_size=2)


def test_tiny_clsc2_run_records_a_choice_per_task(clsc2):
    module, tasks, cache = clsc2
    result, _ = run_continual2("moca", module, tasks, cache, TINY2)
    assert result["select_protocol"] is True and result["violations"] == 0
    choices = result["protocol_choice"]
    assert [c["task"] for c in choices] == ["T1", "T2", "T3"]
    for c in choices:
        assert c["chosen"] == ("plain" if c["validation_plain"] > c["validation_protected"] else "protected")
        assert 0 < c["validation_protected"] <= 1.5 and 0 < c["validation_plain"] <= 1.5
        assert c["validation_unchanged"] is None  # the third candidate is opt-in
    # on T1 the mean over the tasks seen is T1's own score: the kept candidate's last curve point
    first = choices[0]
    kept = first[f"validation_{first['chosen']}"]
    assert math.isclose(kept, result["adaptation_curves"][0][-1], rel_tol=1e-12)
    assert all(math.isfinite(s) for s in result["adaptation_seconds"])

    metrics = {"id": "t", "command": "moca run --model CLSC-2", "machine": {}, "wall_seconds": 1.0,
               "seeds": {"test": [1000, 1001]}, "tasks": ["T1", "T2", "T3"], "baselines": {},
               "methods": {"moca": result}, "targets": {}}
    line = [x for x in report2(metrics).splitlines() if x.startswith("moca: update kept per task")]
    assert len(line) == 1 and all(f"{c['task']} {c['chosen']} (" in line[0] for c in choices)


def test_selection_is_moca_only_by_default(clsc2):
    module, tasks, cache = clsc2
    with pytest.raises(ExperimentError, match="select_protocol"):
        run_continual2("maml", module, tasks[:1], cache, TINY2, select_protocol=True)
    with pytest.raises(ExperimentError, match="keep_unchanged: method 'maml'"):
        run_continual2("maml", module, tasks[:1], cache, TINY2, keep_unchanged=True)
    result, _ = run_continual2("maml", module, tasks[:1], cache, TINY2.model_copy(update={"steps": 0}))
    assert result["select_protocol"] is False and "protocol_choice" not in result


def test_cli_continual_shows_the_choice(clsc2, tmp_path):
    import json

    from typer.testing import CliRunner

    from moca.cli import app

    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- T1\n")
    args = ["continual", "--model", "CLSC-2", "--sequence", str(sequence), "--method", "moca", "--steps", "1",
            "--scenarios", "1"]
    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert [c["task"] for c in out["protocol_choice"]] == ["T1"] and out["violations"] == 0
    assert out["protocol_choice"][0]["chosen"] in ("protected", "plain")
    assert out["protocol_choice"][0]["validation_unchanged"] is None
    third = json.loads(CliRunner().invoke(app, [*args, "--json", "--keep-unchanged"]).stdout)["protocol_choice"][0]
    assert third["chosen"] in ("protected", "unchanged") and 0 < third["validation_unchanged"] <= 1.5
    for refused in (["--method", "maml"], ["--model", "CLSC-1"]):
        done = CliRunner().invoke(app, [*args, "--keep-unchanged", *refused])
        assert done.exit_code == 2 and "--keep-unchanged: only with --model CLSC-2 and --method moca" in done.output


def test_the_unchanged_candidate_benchmark_quick(tmp_path):
    """bench_continual_unchanged.py --quick (a real process: it runs two spawned workers): one
    random sequence learned with and without the third candidate; where a regime was left
    unchanged its row of test scores repeats the row before it (the same weights)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_continual_unchanged.py"
    out = tmp_path / "unchanged.json"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    [row] = data["sequences"]
    assert len(row["regimes"]) == 2 and row["without"]["keep_unchanged"] is False and row["with"]["keep_unchanged"]
    assert "unchanged" not in row["without"]["choices"] and len(row["with"]["choices"]) == 2
    assert math.isclose(row["difference"], row["with"]["average_final_score"] - row["without"]["average_final_score"])
    for k, (chosen, validation) in enumerate(zip(row["with"]["choices"], row["with"]["validation"])):
        left = validation["validation_unchanged"] > max(validation["validation_protected"],
                                                        validation["validation_plain"])
        assert (chosen == "unchanged") == left
        if left:  # R[0] is before any regime: row k + 1 is after regime k
            assert row["with"]["R"][k + 1] == row["with"]["R"][k]
    assert row["with"]["violations"] == row["without"]["violations"] == 0
    assert data["unchanged_kept"] == row["with"]["choices"].count("unchanged") and data["test_seeds"] == [1000, 1001]
    assert data["seed_tasks"] is False and data["random_mean_difference"] == row["difference"]


def test_the_cli_names_a_regime_its_own_steps_left_worse(capsys):
    """``moca continual``'s table is followed by the regimes whose own score fell when they
    were learned (R[i][i] before, R[i + 1][i] after), with the hint given; none, no line."""
    from moca.cli import _lowered_by_own_steps, _print_continual

    R = [[0.90, 0.95, 0.978], [0.91, 0.95, 0.978], [0.91, 0.96, 0.9781], [0.91, 0.96, 0.9617]]
    labels = ["a", "b", "capped"]
    # --json says it as the text does (it had only the matrix)
    assert _lowered_by_own_steps(labels, R) == [{"regime": "capped", "before": 0.9781, "after": 0.9617}]
    from moca.metrics import continual_metrics

    summary = continual_metrics(R[1:], initial=R[0])  # (the forgetting line beside it: moca.metrics')
    out = {"average_final_score": 0.94, "drop_first_after_second": 0.0, "violations": 0,
           "forgetting": summary.forgetting + [0.0], "mean_forgetting": summary.mean_forgetting,
           "bwt": summary.bwt, "fwt": summary.fwt, "lowered_by_own_steps": _lowered_by_own_steps(labels, R)}
    _print_continual(out, labels, R, "moca on CLSC-2", " (hint)")
    text = capsys.readouterr().out
    assert "learning these regimes lowered their own score: capped 0.9781 -> 0.9617 (hint)" in text
    R[3][2] = 0.9781
    out["lowered_by_own_steps"] = _lowered_by_own_steps(labels, R)
    assert out["lowered_by_own_steps"] == []
    _print_continual(out, labels, R, "moca on CLSC-2", " (hint)")
    assert "lowered their own score" not in capsys.readouterr().out
