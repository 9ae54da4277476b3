"""The learning half of the command line: train, adapt, continual, evaluate with a checkpoint,
and their bad-input paths (one line on stderr, exit code 2, no traceback)."""

import json

import pytest
import torch

from moca import checkpoint
from moca.policy import PolicyConfig
from moca.regime import TASKS, Regime

from _cli import assert_bad_input, run_in_process as run
from _checkpoints import write_meta


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny meta-training run through the CLI (2 tasks, 1 meta step, small policy)."""
    root = tmp_path_factory.mktemp("learn")
    config = root / "meta.yaml"
    config.write_text("tasks_per_step: 2\nsupport_size: 1\nquery_size: 1\nvalidation_tasks: 2\n"
                      "policy: {hidden: 8}\n")
    out = root / "ck"
    result = run("train", "--config", config, "--init", "reptile", "--steps", 1, "--seed", 3, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["algorithm"] == "reptile" and summary["meta_steps"] == 1 and summary["seed"] == 3
    return out


def test_train_writes_a_loadable_checkpoint_with_metadata(trained):
    module, meta = checkpoint.load_policy(trained)
    assert module.config == PolicyConfig(hidden=8)
    assert meta["algorithm"] == "reptile" and meta["seed"] == 3 and meta["config"]["tasks_per_step"] == 2
    assert set(meta["versions"]) >= {"moca", "torch", "python"}
    assert 0.5 < meta["scores"]["validation_zero_shot_after"] <= 1.0
    assert "train" in meta["command"] and not list(trained.glob("*.pt")) and not list(trained.glob("*.pkl"))


def test_adapt_reports_scores_and_writes_the_adapted_policy(trained, tmp_path):
    out_dir = tmp_path / "adapted"
    result = run("adapt", "--checkpoint", trained, "--regime", "T2", "--steps", 1, "--scenarios", 2, "-o", out_dir,
                 "--base", "default", "--json")  # the checkpoint alone (the portfolio: tests/test_portfolio.py)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"score_before", "score_after", "steps", "seconds", "violations"} <= set(out)
    assert out["steps"] == 1 and out["violations"] == 0 and out["seconds"] > 0
    assert 0.3 < out["score_before"] <= 1.0 and 0.3 < out["score_after"] <= 1.0
    adapted, meta = checkpoint.load_policy(out_dir)
    assert meta["scores"]["after"] == pytest.approx(out["score_after"])
    original, _ = checkpoint.load_policy(trained)
    # The step was either kept (weights moved) or undone by the safeguard (score unchanged).
    moved = any(not torch.equal(a, b) for a, b in zip(adapted.state_dict().values(), original.state_dict().values()))
    assert moved or out["score_after"] == pytest.approx(out["score_before"])


def test_test_seeds_that_are_not_held_out_are_named(trained):
    # Seeds below 1000 are moca's own (meta-training, support, validation): a score on them is not held out.
    result = run("adapt", "--checkpoint", trained, "--regime", "T2", "--steps", 0, "--scenarios", 2, "--seed", 899,
                 "--validation", 1, "--base", "default", "--json")
    assert result.returncode == 0, result.stderr
    assert "test seeds 899..899 are moca's adaptation (support) seeds (800-899)" in result.stderr
    assert "test seeds 900..900 are moca's validation seeds (900-999)" in result.stderr
    assert "moca: warning: --seed 899: test seeds 899..899" in result.stderr  # moca's own prefix, as other warnings
    json.loads(result.stdout)  # the warning stays off stdout
    held_out = run("evaluate", "--policy", trained, "--scenarios", 1, "--seed", 1000, "--json")
    assert held_out.returncode == 0 and "warning" not in held_out.stderr, held_out.stderr
    peer = run("evaluate", "--policy", "threshold", "--scenarios", 1, "--seed", 3, "--json")
    assert peer.returncode == 0 and "warning" not in peer.stderr  # a peer learned nothing on them
    learned = run("evaluate", "--policy", trained, "--scenarios", 1, "--seed", 3, "--json")
    assert "test seeds 3..3 are moca's meta-training seeds (0-799)" in learned.stderr
    # More validation scenarios than its seeds hold would have been cut to 100 without a word.
    assert_bad_input(run("adapt", "--checkpoint", trained, "--regime", "T2", "--validation", 150), "--validation", "100")


def test_continual_json(trained, tmp_path):
    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- T1\n- {name: tight, recycled_content_min: 0.3, carbon_tax: 50}\n")
    result = run("continual", "--sequence", sequence, "--method", "ewc", "--checkpoint", trained, "--steps", 1,
                 "--scenarios", 2, "--plot", tmp_path / "R.png", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    for figure in ("R.png", "R-curves.png"):  # the score matrix and the adaptation curves
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R-curves.png", "R.png", "seq.yaml"]  # no temporary left
    for key in ("method", "regimes", "R", "forgetting", "bwt", "fwt", "drop_first_after_second",
                "adaptation_steps", "adaptation_seconds", "violations"):
        assert key in out, key
    assert out["regimes"] == ["T1", "tight"] and out["method"] == "ewc"
    # what it ran on, to be re-scored (labels alone could not tell two rules apart)
    assert out["regime_fields"]["tight"] == {**Regime().model_dump(), "recycled_content_min": 0.3, "carbon_tax": 50.0}
    assert out["regime_fields"]["T1"] == TASKS["T1"].model_dump()
    assert (out["steps"], out["test_seeds"], out["checkpoint"]) == (1, [1000, 1001], str(trained))
    assert out["params_file"] is None
    assert len(out["R"]) == 2 and all(len(row) == 2 for row in out["R"]) and len(out["R_initial"]) == 2
    assert out["violations"] == 0
    # the text's warning, in the JSON too: each regime whose own steps lowered its score (R_initial before the first)
    before = [out["R_initial"][0], out["R"][0][1]]
    assert [w["regime"] for w in out["lowered_by_own_steps"]] == [
        label for i, label in enumerate(out["regimes"]) if out["R"][i][i] < before[i] - 5e-5]
    drop = (out["R"][0][0] - out["R"][1][0]) / out["R"][0][0]
    assert out["drop_first_after_second"] == pytest.approx(drop)
    assert out["forgetting"][0] == pytest.approx(out["R"][0][0] - out["R"][1][0])  # max over l < N of one row


def test_evaluate_a_checkpoint(trained):
    result = run("evaluate", "--policy", trained, "--regime", "T3", "--scenarios", 2, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["violations"] == 0 and 0.3 < out["score"] <= 1.0 and out["decision_latency_us"]["p99"] > 0


def test_corrupted_and_mismatched_checkpoints_refused(trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    data = bytearray((broken / checkpoint.WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (broken / checkpoint.WEIGHTS).write_bytes(bytes(data))
    assert_bad_input(run("adapt", "--checkpoint", broken, "--regime", "T1", "--steps", 1, "--json"), "corrupted")
    assert_bad_input(run("evaluate", "--policy", broken, "--scenarios", 1, "--json"), "corrupted")
    mismatched = tmp_path / "mismatched"
    shutil.copytree(trained, mismatched)
    meta = json.loads((mismatched / checkpoint.META).read_text())
    meta["policy"]["hidden"] = 16  # the weights are for 8 units
    write_meta(mismatched, meta)
    assert_bad_input(run("continual", "--sequence", tmp_path / "none.yaml", "--method", "ewc"), "none.yaml")
    seq = tmp_path / "seq.yaml"
    seq.write_text("- T1\n- T2\n")
    assert_bad_input(run("continual", "--sequence", seq, "--method", "ewc", "--checkpoint", mismatched, "--json"),
                     "do not fit")
    assert_bad_input(run("adapt", "--checkpoint", tmp_path / "nowhere", "--regime", "T1"), "no such directory")


def test_bad_learning_input_refused(trained, tmp_path):
    seq = tmp_path / "seq.yaml"
    seq.write_text("- T1\n- T2\n")
    # the option named (it was the library's "method='magic'")
    assert_bad_input(run("continual", "--sequence", seq, "--method", "magic"), "--method: 'magic' is not a continual "
                     "method (valid: scratch, finetune")
    # a figure moca cannot write is refused before the run, not after it
    assert_bad_input(run("continual", "--sequence", seq, "--plot", tmp_path / "R.txt"), "--plot", ".png, .pdf or .svg")
    assert_bad_input(run("continual", "--sequence", seq, "--plot", tmp_path / "none" / "R.png"), "--plot",
                     "does not exist")
    assert_bad_input(run("continual", "--sequence", seq, "--model", "CLSC-2", "--plot", tmp_path), "--plot",
                     "is a directory")
    (tmp_path / "Z-curves.png").mkdir()  # the curves figure's name: was an internal error after the whole run
    assert_bad_input(run("continual", "--sequence", seq, "--plot", tmp_path / "Z.png"),
                     "--plot (its curves figure)", "Z-curves.png: is a directory")
    assert not (tmp_path / "Z.png").exists()
    assert_bad_input(run("continual", "--sequence", seq, "--method", "scratch", "--checkpoint", trained), "scratch")
    bad_seq = tmp_path / "bad.yaml"
    bad_seq.write_text("- T1\n- {recycled_content_min: 1.5}\n")
    assert_bad_input(run("continual", "--sequence", bad_seq, "--method", "ewc"), "recycled_content_min")
    assert_bad_input(run("train", "--init", "maml2", "-o", tmp_path / "x"), "maml2")
    # taken and ignored before: the CPUs of a local Ray without one
    assert_bad_input(run("train", "--ray-cpus", 4, "-o", tmp_path / "x"), "--ray-cpus", "only with --ray auto")
    config = tmp_path / "c.yaml"
    config.write_text("inner_lr: -1\n")
    assert_bad_input(run("train", "--config", config, "-o", tmp_path / "x"), "inner_lr")
    # a field that is not one names the fields there are (pydantic said "Extra inputs are not permitted")
    config.write_text("steps: 3\n")
    for model in ("CLSC-1", "CLSC-2"):
        assert_bad_input(run("train", "--model", model, "--config", config, "-o", tmp_path / "x"),
                         f"--config {config}: unknown field 'steps' (fields: algorithm, policy, params, meta_steps,")
    # sizes a meta step cannot hold: refused, not hours of inner steps or an internal error
    for line, field in (("inner_steps: 1000000", "inner_steps=1000000: Input should be less than or equal to 100"),
                        ("support_size: 500\nquery_size: 400", "support_size=500: Input should be less than"),
                        ("tasks_per_step: 100000", "tasks_per_step=100000: Input should be less than or equal to 1024")):
        config.write_text(line + "\n")
        assert_bad_input(run("train", "--config", config, "-o", tmp_path / "x"), field)
    # a residual scale whose raw actions overflow to NaN (an internal error at evaluation), on both
    # worlds; and CLSC-1's rule safety stock on CLSC-2, whose rule learns its own (it changed nothing)
    config.write_text("policy: {residual_scale: 1.0e+308}\n")
    for model in ("CLSC-1", "CLSC-2"):
        assert_bad_input(run("train", "--model", model, "--config", config, "-o", tmp_path / "x"),
                         "policy.residual_scale=1e+308: Input should be less than or equal to 100")
    config.write_text("policy: {safety_stock: 900}\n")
    assert_bad_input(run("train", "--model", "CLSC-2", "--config", config, "-o", tmp_path / "x"),
                     "MetaConfig2: policy.safety_stock=900 is CLSC-1's; CLSC-2's base rule learns its safety stocks")
    assert not (tmp_path / "x").exists()
    assert_bad_input(run("adapt", "--checkpoint", trained, "--regime", "T9"), "T9")
    assert_bad_input(run("run", "--methods", "finetune,magic"), "--methods: 'magic' is not a continual method")


def test_stop_request_turns_the_first_ctrl_c_into_a_request():
    import os
    import signal

    from moca.meta import StopRequest

    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a request, no KeyboardInterrupt
        assert stop() is True
        with pytest.raises(KeyboardInterrupt):  # the second: at once, as Ctrl-C normally does
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_sigterm_is_taken_as_ctrl_c_while_a_long_command_runs():
    """A sweep under `timeout` ended without a word on what it kept; SIGTERM now acts as the
    SIGINT handler in force would (KeyboardInterrupt by default, a stop request in training)."""
    import os
    import signal

    from moca.cli import _sigterm_as_ctrl_c
    from moca.meta import StopRequest

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with _sigterm_as_ctrl_c():
            os.kill(os.getpid(), signal.SIGTERM)
    with StopRequest() as stop, _sigterm_as_ctrl_c():
        os.kill(os.getpid(), signal.SIGTERM)  # the first: a request, no KeyboardInterrupt
        assert stop() is True
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # (a job started with & by a script)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigterm_as_ctrl_c():
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, ignored)
    assert signal.getsignal(signal.SIGTERM) is before  # put back


@pytest.mark.parametrize("model, stop", [("CLSC-1", "SIGINT"), ("CLSC-2", "SIGINT"), ("CLSC-1", "SIGTERM")])
def test_ctrl_c_during_train_writes_the_steps_done(tmp_path, model, stop):
    """Ctrl-C, and SIGTERM as `timeout` or a batch scheduler sends it (which ended the
    training without a word, its steps unwritten), stop after the step and write them."""
    import signal

    from _cli import interrupt_once_ready

    config = tmp_path / "meta.yaml"
    config.write_text("tasks_per_step: 2\nsupport_size: 1\nquery_size: 1\nvalidation_tasks: 2\nvalidate_every: 0\n"
                      "policy: {hidden: 8}\n")
    out = tmp_path / "ck"
    returncode, stdout, stderr = interrupt_once_ready("train", "--model", model, "--config", config, "--steps",
                                                      100000, "-o", out, "--json",
                                                      ready="Ctrl-C stops after the current meta step",
                                                      signal_number=getattr(signal, stop))
    assert returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and 1 <= summary["meta_steps"] < 100000
    assert f"the checkpoint holds {summary['meta_steps']} of 100000 meta steps" in stderr
    meta = json.loads((out / checkpoint.META).read_text())
    assert meta["interrupted"] is True and meta["meta_steps_done"] == summary["meta_steps"]
    # the summary's counts say which is which (the checkpoint's config holds the steps asked for)
    assert summary["meta_steps_done"] == summary["meta_steps"]
    assert summary["meta_steps_requested"] == meta["config"]["meta_steps"] == 100000
    load = checkpoint.load_policy
    if model == "CLSC-2":
        from moca.meta2 import load_policy2 as load
    module, _ = load(out)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_train_without_validation_says_so_instead_of_failing(tmp_path):
    # validate_every: 0 (a whole MetaConfig dump has it) leaves no validation scores: CLSC-1's
    # closing line formatted None and exited 1 after writing the checkpoint
    config = tmp_path / "meta.yaml"
    config.write_text("validate_every: 0\ntasks_per_step: 1\nsupport_size: 1\nquery_size: 1\npolicy: {hidden: 4}\n")
    result = run("train", "--config", config, "--steps", 1, "-o", tmp_path / "ck")
    assert result.returncode == 0, result.stderr
    assert "1 meta step" in result.stdout and "no validation: validate_every is 0" in result.stdout
    assert checkpoint.load_policy(tmp_path / "ck")[1]["scores"]["validation_zero_shot_after"] is None


@pytest.mark.parametrize("model", ["CLSC-1", "CLSC-2"])
def test_a_training_that_diverges_says_so_and_writes_nothing(model, tmp_path, monkeypatch):
    # (within MetaConfig's bounds a step has not been seen to diverge: the step's own check is
    # made to fire here, as a config beyond them would make it)
    from moca.meta import MetaError, MetaLearner
    from tests._cli import run_in_process

    def diverge(self, direction):
        raise MetaError(f"meta step {self.steps_taken + 1}: the meta-gradient is not finite (NaN or inf)")

    monkeypatch.setattr(MetaLearner, "apply_direction", diverge)
    config = tmp_path / "meta.yaml"
    config.write_text("tasks_per_step: 1\nsupport_size: 1\nquery_size: 1\nvalidate_every: 0\nkeep_best: false\n"
                      if model == "CLSC-2" else "tasks_per_step: 1\nsupport_size: 1\nquery_size: 1\nvalidate_every: 0\n")
    result = run_in_process("train", "--model", model, "--config", config, "--steps", 2, "-o", tmp_path / "ck")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "training diverged, nothing written to" in result.stderr and "meta step 1: the meta-gradient" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "ck").exists()


@pytest.mark.parametrize("model", ["CLSC-1", "CLSC-2"])
def test_continual_from_a_fresh_start_gives_the_same_numbers_twice(tmp_path, model):
    """finetune and ewc without --checkpoint start from a fresh LSTM, which was drawn from
    torch's unseeded generator: each run gave other scores. It is seeded as moca run seeds it."""
    from _cli import run_in_process

    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- T1\n")
    args = ("continual", "--model", model, "--sequence", sequence, "--method", "finetune", "--steps", 1,
            "--scenarios", 1, "--json")
    first, second = run_in_process(*args), run_in_process(*args)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert json.loads(first.stdout)["R"] == json.loads(second.stdout)["R"]


def test_reptile_on_clsc2_needs_its_own_checkpoint(tmp_path):
    """No CLSC-2 Reptile meta-init ships: reptile ran from the first-order MAML one and
    reported fomaml's numbers as its own. It is refused, before any work, naming the way out."""
    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- T1\n")
    assert_bad_input(run("continual", "--model", "CLSC-2", "--sequence", sequence, "--method", "reptile"),
                     "no CLSC-2 Reptile meta-init ships", "--checkpoint")
    for world in (("--model", "CLSC-2"), ()):  # plain moca run: before CLSC-1's minutes
        out = tmp_path / "runs"
        assert_bad_input(run("run", *world, "--methods", "moca,reptile", "--quick", "--runs-dir", out), "reptile")
        assert not out.exists()


def test_a_trained_checkpoint_that_cannot_be_written_is_rescued_beside_it(tmp_path, monkeypatch):
    """A full disk (or -o made a file meanwhile) at the end of a training was an internal
    error, and the minutes of training were lost."""
    import errno
    import os
    import re
    from pathlib import Path

    config = tmp_path / "meta.yaml"
    config.write_text("validate_every: 0\ntasks_per_step: 1\nsupport_size: 1\nquery_size: 1\npolicy: {hidden: 4}\n")
    out = tmp_path / "ck"
    real = checkpoint.save

    def full(directory, weights, metadata):
        if Path(directory) == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
        return real(directory, weights, metadata)

    monkeypatch.setattr(checkpoint, "save", full)
    result = run("train", "--config", config, "--steps", 1, "-o", out)
    assert result.returncode == 1, result.stderr
    found = re.search(rf"\nmoca: error: could not write {re.escape(str(out))} \(No space left on device\); "
                      r"the trained checkpoint is in (\S+)\n$", result.stderr)
    assert found, result.stderr
    rescued = Path(found.group(1))
    assert rescued.parent == tmp_path and not out.exists()
    assert checkpoint.load_policy(rescued)[1]["meta_steps_done"] == 1


@pytest.mark.parametrize("model", ["CLSC-1", "CLSC-2"])
def test_continual_reports_forgetting_bwt_and_fwt_in_text_and_json(tmp_path, model):
    """The help promised forgetting; the text printed neither it nor BWT/FWT (only --json had
    them), and the JSON's per-regime list ends with the last regime's 0, so its mean was not
    moca.metrics' mean forgetting: ``mean_forgetting`` is."""
    import re

    from moca.metrics import continual_metrics

    sequence = tmp_path / "seq.yaml"
    sequence.write_text("- T1\n- T2\n- T3\n")
    args = ("continual", "--model", model, "--sequence", sequence, "--method", "moca", "--steps", 0, "--scenarios", 1)
    data, text = run(*args, "--json"), run(*args)
    assert data.returncode == 0 and text.returncode == 0, (data.stderr, text.stderr)
    out = json.loads(data.stdout)
    expected = continual_metrics(out["R"], initial=out["R_initial"])
    assert out["forgetting"] == pytest.approx(expected.forgetting + [0.0])
    assert out["mean_forgetting"] == pytest.approx(expected.mean_forgetting)
    line = next(line for line in text.stdout.splitlines() if line.startswith("forgetting"))
    shown = dict(re.findall(r"(T\d) ([+-]\d\.\d{4})", line))
    assert shown == {label: f"{value:+.4f}" for label, value in zip(("T1", "T2"), expected.forgetting)}
    assert f"(mean {expected.mean_forgetting:+.4f})" in line
    assert f"BWT {expected.bwt:+.4f}" in line and f"FWT {expected.fwt:+.4f}" in line


@pytest.mark.parametrize("model", ["CLSC-1", "CLSC-2"])
def test_train_says_which_config_params_its_params_file_replaces(tmp_path, model):
    """--params replaces the config's params whole: cap_produce 1200 of the config was
    trained as the default 1500 without a word."""
    config = tmp_path / "c.yaml"
    cost = "lost_sale_cost" if model == "CLSC-2" else "backlog_cost"
    # (a list in the file, a tuple in the params: the same grade_mean was said to be dropped)
    same = ", grade_mean: [0.3, 0.45, 0.25]" if model == "CLSC-2" else ""
    config.write_text(f"params: {{cap_produce: 1200, {cost}: 8{same}}}\n")
    params = tmp_path / "p.json"
    params.write_text(f'{{"{cost}": 8' + (', "grade_mean": [0.3, 0.45, 0.25]' if same else "") + "}")
    result = run("train", "--model", model, "--config", config, "--params", params, "-o", tmp_path / "none" / "ck")
    assert_bad_input(result, "-o")  # (stopped before any work: the warning comes first)
    assert (f"warning: --params {params} replaces the params of --config {config} whole: cap_produce=1200 there is "
            "not used") in " ".join(result.stderr.split())
    assert cost not in result.stderr and "grade_mean" not in result.stderr  # the same in both
