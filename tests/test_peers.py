"""The peers told only what a planner knows: forecast MPC, sampled (two-stage) MPC, PPO."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from moca.baselines.forecast_mpc import ForecastMPCPolicy, SampledMPCPolicy, solve_two_stage
from moca.baselines.mpc import MPCPolicy
from moca.baselines.ppo import PPOConfig, load_ppo, observation_of, save_ppo, train_ppo, validation_score
from moca.checkpoint import CheckpointError
from moca.env import CircularSupplyChainEnv
from moca.evaluation import evaluate_policy
from moca.forecast import DemandForecaster, ForecastConfig
from moca.oracle import build_lp, solve_oracle, solve_window
from moca.regime import load_schedule
from moca.safety import project_batch
from moca.scenario import Params, Scenario, draw_scenario
from moca.sim import ScenarioBatch, rollout


# --- the forecaster -------------------------------------------------------------------------------


def test_forecaster_follows_a_level_and_refits_sparingly():
    rng = np.random.default_rng(0)
    series = 800.0 + rng.normal(0, 20, 30)
    forecaster = DemandForecaster(ForecastConfig(trend=False, refit_every=5))
    guess = forecaster.forecast(series, 6)
    assert guess.shape == (6,) and np.all(np.abs(guess - 800.0) < 40.0)
    for n in range(31, 40):  # nine more observations: one refit at +5, filter passes otherwise
        forecaster.forecast(np.append(series, np.full(n - 30, 800.0)), 6)
    assert forecaster.fits == 2
    paths = forecaster.sample_paths(series, 4, 16, seed=1)
    assert paths.shape == (16, 4) and (paths >= 0).all() and paths.std(0).min() > 0


def test_seasonal_forecaster_on_two_years_beats_the_level():
    t = np.arange(104 + 13)
    rng = np.random.default_rng(3)
    demand = 1000 * (1 + 0.3 * np.sin(2 * np.pi * t / 52)) * rng.lognormal(0, 0.05, t.size)
    known, future = demand[:104], demand[104:]
    seasonal = DemandForecaster(ForecastConfig(trend=False, seasonal="mul")).forecast(known, 13)
    level = DemandForecaster(ForecastConfig(trend=False)).forecast(known, 13)
    assert np.abs(seasonal - future).mean() < np.abs(level - future).mean()


# --- the forecast MPC is told only what a planner knows -----------------------------------------------


def test_forecast_mpc_never_reads_the_generators_parameters():
    """Same demand and returns, other generator parameters (demand base, amplitude, noise,
    return mean): the forecast MPC takes the same actions; the informed MPC does not."""
    base = draw_scenario(1003, load_schedule("T2"))
    other = Params(demand_base=400.0, demand_amp=0.0, demand_sigma=0.5, return_mean=0.6)
    twin = Scenario(other, base.schedule, base.demand, base.return_frac)
    actions = {}
    for label, scenario in (("base", base), ("twin", twin)):
        for name, policy in (("forecast", ForecastMPCPolicy(horizon=6)), ("informed", MPCPolicy(horizon=6))):
            batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
            with torch.no_grad():
                actions[label, name] = rollout(batch, policy, project_batch).executed[0, :12].numpy()
    np.testing.assert_array_equal(actions["base", "forecast"], actions["twin", "forecast"])
    assert not np.allclose(actions["base", "informed"], actions["twin", "informed"])


def test_forecast_and_sampled_mpc_are_feasible_and_below_the_oracle():
    scenarios = [draw_scenario(s, load_schedule("T3")) for s in (1000, 1001)]
    oracle = np.array([solve_oracle(s).oracle_cost for s in scenarios])
    for policy in (ForecastMPCPolicy(horizon=8), SampledMPCPolicy(samples=3, horizon=8)):
        result = evaluate_policy("peer", policy, scenarios, oracle)
        assert result.violations == 0
        assert np.all(result.scores <= 1.0 + 1e-9) and np.all(result.scores > 0.5)


def test_two_stage_lp_of_identical_paths_is_the_single_lp():
    scenario = draw_scenario(1002, load_schedule("T2"))
    policy = MPCPolicy(horizon=8)
    p = scenario.params
    window = policy.window(p, 0, np.array([p.init_virgin, p.init_recycled, p.init_product, p.init_core, 0.0]),
                           np.full(p.lead_virgin - 1, p.init_pipeline), np.full(p.lag_return, p.init_sales),
                           scenario.regime_table()[0])
    single = solve_window(p, window)
    lp = build_lp(p, window)
    x, _ = solve_two_stage([lp, lp, lp], np.arange(6))
    # The same path three times: the mean cost is the single LP's, so is the first action's cost.
    penalties = window.safety_penalty * x[:, 12].sum() + window.virgin_buffer_penalty * x[:, 13].sum()
    assert float(lp.cost @ x.ravel()) - penalties == pytest.approx(single.cost, rel=1e-7)
    mixed, _ = solve_two_stage([lp, build_lp(p, replace(window, demand=window.demand * 1.5))], np.arange(6))
    assert not np.allclose(mixed[0, :6], x[0, :6])  # a second, different path moves the first action


# --- PPO ------------------------------------------------------------------------------------------


def test_ppo_observation_is_the_environments():
    scenario = draw_scenario(5, load_schedule("T3"))
    env = CircularSupplyChainEnv(scenario=scenario)
    first, _ = env.reset()
    z = np.random.default_rng(0).uniform(0, 1, (scenario.horizon, 6)).astype(np.float32)
    env_obs = [first] + [env.step(z[t])[0] for t in range(scenario.horizon - 1)]

    class Replay:
        seen = []

        def reset(self, batch):
            self.scale = torch.as_tensor(batch.params.action_scale)

        def act(self, obs):
            self.seen.append(observation_of(obs)[0])
            return (torch.as_tensor(z[obs.t], dtype=torch.float64) * self.scale)[None]

    batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
    rollout(batch, Replay(), project_batch)
    np.testing.assert_allclose(np.stack(Replay.seen), np.stack(env_obs), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_ppo(tmp_path_factory):
    config = PPOConfig(seconds=120, max_steps=256, n_envs=2, n_steps=64, batch_size=64, n_epochs=2,
                       eval_every=128, eval_regimes=["T1"], eval_scenarios=1)
    model, curve = train_ppo(config)
    where = tmp_path_factory.mktemp("ppo") / "ppo"
    from dataclasses import asdict

    save_ppo(where, model.policy, {"model": "CLSC-1", "config": asdict(config), "learning_curve": curve})
    return model, curve, where


def test_tiny_ppo_run_records_a_learning_curve(tiny_ppo):
    model, curve, _ = tiny_ppo
    assert model.num_timesteps == curve["collected_steps"] == curve["trained_steps"] == 256  # two whole rollouts
    assert curve["steps"][0] == 0 and curve["steps"][-1] == 256 and len(curve["steps"]) >= 3
    assert all(0.0 < s <= 1.0 for s in curve["score"])
    assert curve["seconds"] == sorted(curve["seconds"])


def test_ppo_checkpoint_round_trip_and_corruption(tiny_ppo, tmp_path):
    model, _, where = tiny_ppo
    loaded = load_ppo(where)
    assert not (where / "weights.safetensors").read_bytes().startswith(b"PK")  # not a zip/pickle
    scenario = [draw_scenario(1000, load_schedule("T2"))]
    oracle = np.array([1.0])
    assert validation_score(loaded.policy, scenario, oracle) == validation_score(model.policy, scenario, oracle)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.json").write_text((where / "checkpoint.json").read_text())
    data = bytearray((where / "weights.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (broken / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_ppo(broken)


def test_cli_evaluates_a_ppo_checkpoint_and_refuses_bad_input(tiny_ppo, tmp_path):
    """In-process (typer's runner): a subprocess per call would spend its time importing torch."""
    from typer.testing import CliRunner

    from moca.cli import app

    _, _, where = tiny_ppo
    runner = CliRunner()
    done = runner.invoke(app, ["evaluate", "--policy", str(where), "--regime", "T1", "--scenarios", "1", "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["violations"] == 0 and 0 < summary["score"] <= 1.0
    bad = runner.invoke(app, ["evaluate", "--policy", "ppo-nonsense", "--scenarios", "1"])
    assert bad.exit_code == 2 and "ppo-nonsense" in bad.stderr and "Traceback" not in bad.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = runner.invoke(app, ["peers", "train-ppo", "-o", str(blocker), "--seconds", "1"])
    assert bad.exit_code == 2 and "-o" in bad.stderr and "Traceback" not in bad.output
    # a budget of 0 s trained 4 env steps and wrote them as a policy without a word
    bad = runner.invoke(app, ["peers", "train-ppo", "-o", str(tmp_path / "zero"), "--seconds", "0"])
    assert bad.exit_code == 2 and "--seconds" in bad.stderr and not (tmp_path / "zero").exists()
    # nan was told it "should be greater than or equal to 0"; train's --max-seconds the same
    for command in (["peers", "train-ppo", "--seconds"], ["train", "--max-seconds"]):
        bad = runner.invoke(app, [*command, "nan", "-o", str(tmp_path / "zero")])
        assert bad.exit_code == 2 and f"{command[-1]} nan: " in bad.stderr and "greater" not in bad.stderr
        assert not (tmp_path / "zero").exists()
    # a folder that cannot be made: refused before training, not after it (it was an internal error)
    for where, needle in ((blocker / "ppo", "is not a directory"), (tmp_path / "missing" / "ppo", "does not exist")):
        bad = runner.invoke(app, ["peers", "train-ppo", "-o", str(where), "--seconds", "600"])
        assert bad.exit_code == 2 and needle in bad.stderr and "Traceback" not in bad.output


def test_ppo_counts_the_steps_it_learned_from(tmp_path, monkeypatch):
    """PPO learns from whole rollouts: --max-steps 2600 stopped mid-rollout and learned from
    2,048 (the same weights as --max-steps 3000) while both said they held their own count,
    and --max-steps 1 wrote the untrained start as '4 env steps' of training."""
    config = PPOConfig(seconds=120, max_steps=200, n_envs=2, n_steps=64, batch_size=64, n_epochs=1,
                       eval_every=1, eval_regimes=["T1"], eval_scenarios=1)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # (SB3's logger made an empty SB3-<time> folder there)
    model, curve = train_ppo(config)  # rounded up to two rollouts of 128, both learned from
    assert list(tmp_path.glob("SB3-*")) == []
    assert curve["trained_steps"] == curve["collected_steps"] == model.num_timesteps == 256
    assert curve["steps"] == [0, 128, 256]  # a score per policy (was one per env step: 0, 0, ..., the same score)
    stops = iter([False] * 100 + [True])  # Ctrl-C after 100 vector steps: rollout 2 of 64 unfinished
    model, curve = train_ppo(PPOConfig(**{**config.__dict__, "max_steps": None}), stop=lambda: next(stops))
    assert curve["interrupted"] and curve["trained_steps"] == 128 and curve["collected_steps"] == 202
    assert curve["steps"][-1] == 128
    out = tmp_path / "ppo"
    from typer.testing import CliRunner

    from moca.cli import app

    quick = CliRunner().invoke(app, ["peers", "train-ppo", "-o", str(out), "--seconds", "0.01"])  # no rollout ends
    assert quick.exit_code == 1 and "no rollout of 2,048 env steps ended" in quick.stderr, quick.output
    assert "nothing written" in quick.stderr and not out.exists()


def test_ppo_config_names_what_is_wrong():
    from moca.baselines.ppo import PPOConfig, PPOError

    for change, message in (({"eval_scenarios": 101}, "ppo.eval_scenarios=101: must be <= 100"),
                            ({"n_envs": 0}, "ppo.n_envs=0"), ({"seconds": float("nan")}, "ppo.seconds=nan")):
        with pytest.raises(PPOError, match=message):
            PPOConfig(**change)


def test_ctrl_c_during_ppo_training_writes_the_policy_so_far(tmp_path):
    import os
    import signal
    import time

    from _cli import cpu_seconds, start_in_own_session

    out = tmp_path / "ppo"
    proc = start_in_own_session("peers", "train-ppo", "--seconds", 600, "-o", out, "--json")
    try:  # past the imports (~3 s of CPU) and some rollouts: an interrupt before the first writes nothing
        deadline = time.time() + 120
        while cpu_seconds(proc.pid) < 8.0:
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and summary["wall_seconds"] < 600
    assert f"the policy holds {summary['env_steps']:,} env steps" in stderr
    assert summary["env_steps"] % 2048 == 0 and summary["collected_steps"] >= summary["env_steps"]
    assert (out / "weights.safetensors").exists() and json.loads((out / "learning_curve.json").read_text())["interrupted"]


# --- CLSC-2 -----------------------------------------------------------------------------------------


def test_informed_curve_times_the_noise_is_the_demand():
    from moca.baselines.mpc2 import demand_curve2
    from moca.scenario import HISTORY, Params2, draw_scenario2

    p = Params2()
    scenario = draw_scenario2(1001, None, p)
    rng = np.random.default_rng(1001)
    n = HISTORY + p.horizon
    rng.normal(), rng.uniform(), rng.uniform(), rng.random(n), rng.normal(size=n)  # drift .. jump sizes
    noise = rng.lognormal(-p.demand_sigma ** 2 / 2, p.demand_sigma, size=n)
    np.testing.assert_allclose(demand_curve2(1001, p) * noise,
                               np.concatenate([scenario.demand_history, scenario.demand]), rtol=1e-12)


def test_clsc2_forecast_mpc_never_reads_the_generators_parameters():
    from moca.baselines.mpc2 import MPC2Policy
    from moca.projection import project2_batch
    from moca.scenario import Params2, Scenario2, draw_scenario2
    from moca.sim2 import ScenarioBatch2, rollout2

    base = draw_scenario2(1004, load_schedule("T2", model="CLSC-2"), Params2(horizon=8))  # short: fast
    other = Params2(horizon=8, demand_base=300.0, demand_amp_lo=0.0, demand_amp_hi=0.0, demand_sigma=0.5,
                    return_mean=0.6, supply_down_prob=0.5, market_avail_min=0.9)
    twin = Scenario2(**{**base.__dict__, "params": other})
    executed = []
    for scenario in (base, twin):
        batch = ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64)
        with torch.no_grad():
            executed.append(rollout2(batch, MPC2Policy(horizon=4), project2_batch).executed[0].numpy())
    np.testing.assert_allclose(executed[0], executed[1], rtol=1e-9, atol=1e-9)


def test_clsc2_threshold_rule_tunes_and_keeps_every_row():
    from moca.baselines.peers import evaluate2
    from moca.baselines.threshold2 import tune_threshold2
    from moca.scenario import draw_scenario2

    policy = tune_threshold2("T3", train_seeds=1, budget=16, popsize=2)
    assert policy.tuning.candidates <= 16 + 14 and set(policy.as_dict()) == {
        "safety_product", "safety_virgin", "target_recycled", "target_market", "free_recycled", "refurbish_level",
        "dispose_level"}
    result = evaluate2("threshold", policy, [draw_scenario2(1000, load_schedule("T3", model="CLSC-2"))])
    assert result.violations == 0 and 0.3 < result.scores[0] <= 1.0 + 1e-9


def test_clsc2_peer_evaluation_tells_each_phase_to_its_end():
    """moca evaluate --model CLSC-2 --policy threshold showed one bar with no count for the
    whole tuning (55 s under a 1 kg cap): each phase now counts to its total."""
    from moca.baselines.peers import evaluate_peer2
    from moca.scenario import Params2

    told: dict[str, list[tuple[int, int | None]]] = {}
    result = evaluate_peer2("threshold", load_schedule("T2", model="CLSC-2"), [1000, 1001], Params2(horizon=6),
                            progress=lambda what, done, total: told.setdefault(what, []).append((done, total)))
    assert result.violations == 0 and len(result.costs) == 2
    phases = list(told)
    assert phases == ["hindsight LP (HiGHS), scenarios", "tuning the threshold rule for the plan (candidates)",
                      "evaluating threshold (scenarios)"]
    for what in phases:
        counts = [done for done, _ in told[what]]
        assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == told[what][-1][1]  # ends at its total
    assert told[phases[1]][0] == (0, 1500) and 0 < told[phases[1]][-1][0] <= 1500 and told[phases[2]][-1] == (2, 2)


def test_clsc2_sampled_mpc_and_ppo_through_the_env_keep_every_row():
    from moca.baselines.mpc2 import MPC2Policy
    from moca.baselines.peers import evaluate2
    from moca.baselines.ppo import _build_policy, env_evaluation, make_env
    from moca.oracle2 import solve_oracle2
    from moca.scenario import Params2, draw_scenario2

    scenario = [draw_scenario2(1001, load_schedule("T1", model="CLSC-2"), Params2(horizon=12))]  # short: fast
    oracle = np.array([solve_oracle2(scenario[0]).oracle_cost])
    sampled = evaluate2("mpc-sampled", MPC2Policy(horizon=4, samples=2), scenario, oracle)
    assert sampled.violations == 0 and 0.3 < sampled.scores[0] <= 1.0 + 1e-9
    env = make_env("CLSC-2", params=Params2(horizon=12))
    untrained = _build_policy(env.observation_space.shape[0], 9, [16], -1.0)
    ppo = env_evaluation("ppo", untrained, scenario, oracle, "CLSC-2")
    assert ppo.violations == 0 and 0.0 < ppo.scores[0] <= 1.0 + 1e-9


def test_cli_evaluates_clsc2_peers_and_refuses_bad_input():
    from typer.testing import CliRunner

    from moca.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["evaluate", "--model", "CLSC-2", "--policy", "oracle", "--regime", "T2",
                               "--scenarios", "1", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["score"] == pytest.approx(1.0)
    for args, needle in ((["--model", "CLSC-2", "--policy", "nonsense"], "nonsense"),
                         (["--model", "CLSC-9", "--policy", "ppo"], "--model"),
                         (["--model", "CLSC-2", "--policy", "mpc", "--adapt-steps", "2"], "--adapt-steps"),
                         # CLSC-1 too: a peer has no steps to take (they were ignored without a word)
                         (["--policy", "mpc", "--adapt-steps", "2"], "--adapt-steps: only for a learned policy"),
                         (["--policy", "ppo", "--adapt-steps", "1"], "--adapt-steps: only for a learned policy"),
                         # a typo is named as one on both worlds (CLSC-2 said "only for a learned checkpoint")
                         (["--model", "CLSC-2", "--policy", "defualt", "--adapt-steps", "1"],
                          "'defualt': no checkpoint directory of that name"),
                         (["--policy", "defualt", "--adapt-steps", "1"], "no checkpoint directory of that name")):
        bad = runner.invoke(app, ["evaluate", *args, "--scenarios", "1"])
        assert bad.exit_code == 2 and needle in bad.stderr and "Traceback" not in bad.output, bad.output


def test_the_sampled_mpc_refuses_settings_it_took_without_a_word():
    from moca.baselines.mpc2 import MPC2Policy, select_safety_stock2

    for kwargs, message in (({"safety_penalty": -1.0}, "safety_penalty=-1.0: must be a finite number >= 0"),
                            ({"safety_penalty": float("nan")}, "safety_penalty=nan"),
                            ({"samples": -3}, "samples=-3: a whole number of demand paths >= 0"),
                            ({"samples": 2.5}, "samples=2.5")):
        with pytest.raises(ValueError, match=message):
            MPC2Policy(**kwargs)
    assert MPC2Policy(horizon=np.int64(5)).horizon == 5
    with pytest.raises(ValueError, match="stocks: at least one safety stock to try"):
        select_safety_stock2([], np.zeros(0), ())


def test_ppo_scored_off_its_chain_says_so(tmp_path):
    """A PPO policy read 0.10 of the oracle on a chain of ten times the capacities without
    a word, where a learned checkpoint warns of the params it was not trained on."""
    from typer.testing import CliRunner

    from moca.cli import app

    chain = tmp_path / "big.json"
    chain.write_text('{"cap_produce": 15000, "cap_order": 40000}')
    for model in ("CLSC-1", "CLSC-2"):
        off = CliRunner().invoke(app, ["evaluate", "--policy", "ppo", "--regime", "T2", "--params", str(chain),
                                       "--scenarios", "1", "--model", model])
        assert off.exit_code == 0, off.output
        assert "PPO policy ppo was trained on the default chain (cap_order=4000.0->40000.0, cap_produce=1500.0->" \
               "15000.0 differ here)" in " ".join(off.stderr.split()), off.stderr
        on = CliRunner().invoke(app, ["evaluate", "--policy", "ppo", "--regime", "T2", "--scenarios", "1",
                                      "--model", model])
        assert on.exit_code == 0 and "PPO policy" not in on.stderr


def test_a_planner_scored_off_its_chain_says_so(tmp_path):
    """moca adapt's sampled MPC written for one chain (its safety stock picked on that
    chain's support scenarios) was scored on another without a word, where a learned
    checkpoint and a PPO policy warn; on its own chain it says nothing."""
    from typer.testing import CliRunner

    from moca.baselines.mpc2 import MPC2Policy, save_planner2
    from moca.cli import app
    from moca.scenario import Params2

    chain = tmp_path / "chain.json"
    chain.write_text('{"cap_order": 8000, "lost_sale_cost": 60}')
    planner = tmp_path / "planner"
    save_planner2(planner, MPC2Policy(safety_stock=300.0, samples=0), Params2(cap_order=8000, lost_sale_cost=60), {})
    off = CliRunner().invoke(app, ["evaluate", "--model", "CLSC-2", "--policy", str(planner), "--regime", "T2",
                                   "--scenarios", "1"])
    assert off.exit_code == 0, off.output
    assert (f"planner {planner} was picked on other params (cap_order=8000.0->4000.0, lost_sale_cost=60.0->20.0 "
            "differ here)") in " ".join(off.stderr.split()), off.stderr
    on = CliRunner().invoke(app, ["evaluate", "--model", "CLSC-2", "--policy", str(planner), "--regime", "T2",
                                  "--scenarios", "1", "--params", str(chain)])
    assert on.exit_code == 0 and "planner" not in on.stderr, on.stderr
