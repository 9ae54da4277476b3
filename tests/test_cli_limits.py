"""Counts and seeds beyond what a run can hold are refused up front, naming the option
(a typo such as --scenarios 100000000 used to draw scenarios for minutes while memory
grew, a seed beyond 64 bits was an internal error in torch, one beyond 32 bits in PPO's)."""

import json

import pytest

from moca.limits import LARGEST_PPO_SEED, LARGEST_SEED, MOST_CANDIDATES, MOST_SCENARIOS, MOST_STEPS
from tests._cli import assert_bad_input, run_in_process


@pytest.fixture
def sequence_file(tmp_path):
    path = tmp_path / "seq.yaml"
    path.write_text("[T1, T2]\n")
    return path


CASES = [
    (["evaluate", "--policy", "threshold", "--scenarios", MOST_SCENARIOS + 1], ["--scenarios", str(MOST_SCENARIOS)]),
    (["evaluate", "--policy", "threshold", "--seed", LARGEST_SEED + 1], ["--seed"]),
    (["evaluate", "--policy", "default", "--adapt-steps", MOST_STEPS + 1], ["--adapt-steps", str(MOST_STEPS)]),
    (["evaluate", "--policy", "threshold", "--regime", ""], ["regime=''", "unknown regime name"]),
    (["evaluate", "--policy", "threshold", "--regime", " ", "--model", "CLSC-2"], ["regime=' '"]),
    (["adapt", "--checkpoint", "default", "--regime", "T1", "--steps", MOST_STEPS + 1], ["--steps"]),
    (["adapt", "--checkpoint", "default", "--regime", "T1", "--scenarios", MOST_SCENARIOS + 1], ["--scenarios"]),
    (["adapt", "--checkpoint", "default", "--regime", "T1", "--model", "CLSC-2", "--retune", MOST_CANDIDATES + 1],
     ["--retune", str(MOST_CANDIDATES)]),
    (["run", "--quick", "--scenarios", MOST_SCENARIOS + 1], ["--scenarios"]),
    (["run", "--quick", "--methods", ""], ["--methods", "empty", "moca"]),
    (["run", "--quick", "--methods", " , "], ["--methods", "empty"]),
    (["run", "--quick", "--methods", "moca,maml,moca"], ["--methods", "repeated"]),
    (["scenario", "new", "--seed", LARGEST_SEED + 1, "-o", "x.json"], ["--seed"]),
    (["sweep", "--field", "carbon_tax", "--values", "0,10", "--scenarios", MOST_SCENARIOS + 1],
     ["--scenarios", str(MOST_SCENARIOS)]),
    (["sweep", "--field", "carbon_tax", "--values", "0,10", "--seed", LARGEST_SEED + 1], ["--seed", str(LARGEST_SEED)]),
    (["sweep", "--field", "carbon_tax", "--values", "0,10", "--policies", "moca", "--adapt-steps", MOST_STEPS + 1],
     ["--adapt-steps", str(MOST_STEPS)]),
]


@pytest.mark.parametrize("argv,needles", CASES, ids=[" ".join(map(str, a))[:60] for a, _ in CASES])
def test_counts_beyond_the_bounds_are_refused(argv, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_bad_input(run_in_process(*argv), *needles)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_continual_steps_bounded(sequence_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_in_process("continual", "--sequence", sequence_file, "--method", "moca", "--steps", MOST_STEPS + 1)
    assert_bad_input(result, "--steps")


@pytest.mark.parametrize("seed", [-1, LARGEST_PPO_SEED + 1])
def test_ppo_seed_bounded(seed, tmp_path):
    out = tmp_path / "ppo"
    assert_bad_input(run_in_process("peers", "train-ppo", "-o", out, "--seed", seed), "--seed")
    assert not out.exists()


@pytest.mark.parametrize("seed", [LARGEST_SEED + 1, 10**20])
def test_train_seed_bounded(seed, tmp_path):
    out = tmp_path / "ckpt"
    assert_bad_input(run_in_process("train", "-o", out, "--steps", 1, "--seed", seed), "--seed")
    assert not out.exists()


def test_the_largest_seed_is_accepted(tmp_path):
    out = tmp_path / "s.json"
    result = run_in_process("scenario", "new", "--seed", LARGEST_SEED, "-o", out)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(out.read_text())["demand"]) == 52


def test_the_last_test_seed_must_be_a_seed_too(tmp_path):
    """--seed's largest value with 2 scenarios drew seed 2**63, beyond it, without a word."""
    for command in (("evaluate", "--policy", "threshold"), ("adapt", "--checkpoint", "default", "--regime", "T2", "-o",
                                                            tmp_path / "a"),
                    ("sweep", "--field", "carbon_tax", "--values", "0,10", "--policies", "oracle")):
        assert_bad_input(run_in_process(*command, "--seed", LARGEST_SEED, "--scenarios", 2), "--seed",
                         "--scenarios 2", "beyond")
    assert not (tmp_path / "a").exists()


def test_library_configs_bounded():
    from pydantic import ValidationError

    from moca.baselines.ppo import PPOConfig, PPOError
    from moca.meta import MetaConfig
    from moca.sweep import SweepError, make_plan

    PPOConfig(seed=LARGEST_PPO_SEED)  # the bound itself is a seed
    with pytest.raises(PPOError, match="ppo.seed"):
        PPOConfig(seed=LARGEST_PPO_SEED + 1)
    with pytest.raises(PPOError, match="ppo.seed"):
        PPOConfig(seed=-1)
    MetaConfig(seed=LARGEST_SEED, inner_steps=MOST_STEPS)
    with pytest.raises(ValidationError, match="seed"):
        MetaConfig(seed=LARGEST_SEED + 1)
    with pytest.raises(ValidationError, match="inner_steps"):
        MetaConfig(inner_steps=MOST_STEPS + 1)
    make_plan("CLSC-1", "carbon_tax", "0,10", scenarios=MOST_SCENARIOS, seed=LARGEST_SEED - MOST_SCENARIOS + 1,
              adapt_steps=MOST_STEPS)  # (its seeds end at the largest)
    for kwargs, needle in (({"scenarios": MOST_SCENARIOS + 1}, "--scenarios"), ({"seed": LARGEST_SEED + 1}, "--seed"),
                           ({"adapt_steps": MOST_STEPS + 1}, "--adapt-steps"), ({"seed": -1}, "--seed")):
        with pytest.raises(SweepError, match=needle):
            make_plan("CLSC-1", "carbon_tax", "0,10", **kwargs)


def test_chains_at_the_edge_of_their_ranges_evaluate_without_numpy_warnings(tmp_path):
    """Capacities near 0 overflowed the deployed sigmoid's exp and a yield of 0 divided by
    zero in the threshold rule: the results were right, but numpy's RuntimeWarnings with
    moca's source lines reached the user's terminal."""
    from tests._cli import run

    (tmp_path / "tiny.json").write_text(json.dumps({"horizon": 8, **{f"cap_{k}": 1e-6 for k in (
        "order", "produce", "disassemble", "refurbish", "dispose")}}))
    (tmp_path / "y0.json").write_text(json.dumps({"horizon": 8, "yield_disassembly": 0, "yield_refurbish": 0}))
    (tmp_path / "rules.yaml").write_text("recycled_content_min: 0.95\ncarbon_tax: 2000\nemission_cap: 5000\n"
                                         "landfill_tax: 100\nrecovery_target: 1\n")
    for policy, params in (("default", "tiny.json"), ("threshold", "y0.json")):
        result = run("evaluate", "--policy", policy, "--regime", tmp_path / "rules.yaml", "--params",
                     tmp_path / params, "--scenarios", 1, "--json")
        assert result.returncode == 0, result.stderr
        assert "RuntimeWarning" not in result.stderr and "Warning:" not in result.stderr, result.stderr
        summary = json.loads(result.stdout)
        assert summary["violations"] == 0 and 0 < summary["score"] <= 1 + 1e-9


def test_oracle_and_simulate_warn_of_a_schedule_entry_that_never_applies(tmp_path):
    """moca scenario new and evaluate warned of an entry starting at or after the horizon;
    moca oracle and simulate, reading the same file, did not (docs/MODEL.md says they do)."""
    from tests._cli import run

    (tmp_path / "plan.yaml").write_text("- {start: 0, carbon_tax: 10}\n- {start: 8, carbon_tax: 50}\n")
    (tmp_path / "chain.json").write_text(json.dumps({"horizon": 8}))
    made = run("scenario", "new", "--regime", tmp_path / "plan.yaml", "--params", tmp_path / "chain.json", "--seed", 1,
               "-o", tmp_path / "s.json")
    assert made.returncode == 0 and "period 8 never applies" in made.stderr, made.stderr
    oracle = run("oracle", "--scenario", tmp_path / "s.json", "--json")
    assert oracle.returncode == 0 and "the regime starting at period 8 never applies" in oracle.stderr
    (tmp_path / "plan.json").write_text(oracle.stdout)
    replay = run("simulate", "--scenario", tmp_path / "s.json", "--actions", tmp_path / "plan.json", "--json")
    assert replay.returncode == 0 and "the regime starting at period 8 never applies" in replay.stderr


@pytest.mark.parametrize("seconds", ["0", "nan", "inf", "1e400"])
def test_ppo_seconds_refused_by_the_option(seconds, tmp_path):
    """--seconds is named with the bound its help gives (> 0, finite); inf was refused as the
    config's ppo.seconds, 'a finite number >= 0'."""
    out = tmp_path / "ppo"
    result = run_in_process("peers", "train-ppo", "-o", out, "--seconds", seconds)
    assert_bad_input(result, "--seconds", "finite number of seconds > 0")
    assert "ppo.seconds" not in result.stderr and ">= 0" not in result.stderr
    assert not out.exists()
