"""The CLSC-2 Gymnasium environment, registration for gymnasium.make, and SB3's pipeline."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import moca
from moca.env2 import ENV_ID_2, CircularSupplyChain2Env
from moca.projection import project2_batch
from moca.regime import TASKS_2
from moca.safety import SafetyError
from moca.scenario import Params2, Scenario2, draw_scenario2
from moca.sim2 import OpenLoop2, ScenarioBatch2, rollout2

SHORT = Params2(horizon=8)


def test_passes_gymnasium_check_env():
    # Made through gymnasium.make so that check_env also tries every render mode.
    check_env(gym.make(ENV_ID_2, regime=TASKS_2["T2"], params=SHORT).unwrapped, skip_render_check=False)


def test_import_moca_registers_both_envs_without_importing_gymnasium():
    code = ("import sys, moca; assert 'gymnasium' not in sys.modules; import gymnasium as gym; "
            "ids = [k for k in gym.registry if k.startswith('moca/')]; print(sorted(ids))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['moca/CircularSupplyChain-v0', 'moca/CircularSupplyChain2-v0']"
    env = gym.make(ENV_ID_2, params=SHORT)
    assert env.observation_space.shape == (len(env.unwrapped.observation_names()),)
    assert moca.GYM_ENVS[ENV_ID_2] == "moca.env2:CircularSupplyChain2Env"


@pytest.mark.parametrize("env_id, width, kwargs", [("moca/CircularSupplyChain-v0", 6, {}),
                                                   ("moca/CircularSupplyChain2-v0", 9, {"params": SHORT})])
def test_either_worlds_vector_env_checks_the_whole_batch_before_any_copy_steps(env_id, width, kwargs):
    """Gymnasium's SyncVectorEnv steps copy by copy: a NaN in copy 2 was refused after copies
    0 and 1 had stepped (a retry left them a period ahead). CLSC-1's make_vector_env checked
    the batch first; CLSC-2 had no such form. ``gym.make_vec`` stays Gymnasium's own (made
    the checked form by default, it refused make_vec's wrappers= and max_episode_steps=)."""
    import moca.env

    make = moca.env.make_vector_env if width == 6 else moca.env2.make_vector_env
    vec = make(3, regime="T2", **kwargs)
    vec.reset(seed=7)
    actions = np.full((3, width), 0.1, np.float32)
    actions[2, 1] = np.nan
    with pytest.raises(SafetyError, match=r"actions\[2\] has a non-finite entry"):
        vec.step(actions)
    assert [e.unwrapped.t for e in vec.envs] == [0, 0, 0]
    with pytest.raises(SafetyError, match=rf"actions\[0\]: expected shape \[{width}\]"):
        vec.step(np.zeros((3, width + 1), np.float32))
    actions[2, 1] = 0.1
    obs, reward, *_ = vec.step(actions)
    assert [e.unwrapped.t for e in vec.envs] == [1, 1, 1] and np.isfinite(reward).all()
    vec.close()
    # the same episodes as one env per seed (copy i: seed + i), as Gymnasium's class gives
    single = gym.make(env_id, regime="T2", **kwargs)
    first, _ = single.reset(seed=8)
    np.testing.assert_array_equal(make(2, regime="T2", **kwargs).reset(seed=7)[0][1], first)
    theirs = gym.make_vec(env_id, num_envs=2, regime="T2", wrappers=[gym.wrappers.RecordEpisodeStatistics],
                          max_episode_steps=1000, **kwargs)
    assert type(theirs) is gym.vector.SyncVectorEnv
    np.testing.assert_array_equal(theirs.reset(seed=7)[0][1], first)
    with pytest.raises(ValueError, match="n=0"):
        make(0, **kwargs)


@pytest.mark.parametrize("env_id, kwargs", [("moca/CircularSupplyChain-v0", {}),
                                            ("moca/CircularSupplyChain2-v0", {"params": SHORT})])
def test_stable_baselines3_make_vec_env(env_id, kwargs):
    from stable_baselines3.common.env_util import make_vec_env

    vec = make_vec_env(env_id, n_envs=2, seed=3, env_kwargs=kwargs)  # passes render_mode="rgb_array"
    obs = vec.reset()
    assert obs.shape == (2,) + vec.observation_space.shape
    obs, reward, done, info = vec.step(np.stack([vec.action_space.sample() for _ in range(2)]))
    assert np.all(reward < 0) and info[0]["violations"] == 0
    frame = vec.env_method("render")[0]
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    vec.close()


def test_unknown_render_mode_warns_instead_of_raising():
    with pytest.warns(UserWarning, match="render_mode='human'"):
        env = CircularSupplyChain2Env(params=SHORT, render_mode="human")
    env.reset(seed=0)
    assert env.render() is None


def test_steps_match_the_batched_simulator_and_info_is_complete():
    scenario = draw_scenario2(5, TASKS_2["T3"], SHORT)
    env = CircularSupplyChain2Env(scenario=scenario)
    env.reset()
    rng = np.random.default_rng(1)
    z = rng.uniform(0, 1, size=(SHORT.horizon, 9))
    costs, executed = [], []
    for t in range(SHORT.horizon):
        _, reward, terminated, truncated, info = env.step(z[t].astype(np.float32))
        assert set(info) >= {"raw", "executed", "correction", "cost", "terms", "violations", "sales", "lost",
                             "emissions", "scrap", "demand", "regime"}
        assert info["violations"] == 0
        assert info["cost"] == pytest.approx(sum(info["terms"].values()), rel=1e-12)
        assert info["correction"] == pytest.approx(np.linalg.norm((info["executed"] - info["raw"]) / env.scale))
        assert reward == pytest.approx(-info["cost"] / 1e4)
        assert terminated == (t == SHORT.horizon - 1) and not truncated
        costs.append(info["cost"])
        executed.append(info["executed"])
    # The same raw actions through the batched simulator and the batched projection.
    raw = torch.as_tensor((z.astype(np.float32).astype(np.float64) * env.scale)[None])
    result = rollout2(ScenarioBatch2.from_scenarios([scenario], torch.float64), OpenLoop2(raw), project2_batch)
    assert np.allclose(result.executed[0].numpy(), np.array(executed), rtol=1e-6, atol=1e-6)
    assert np.allclose(result.cost[0].numpy(), costs, rtol=1e-6)


def test_observation_never_reveals_the_drawing_parameters():
    # Two parameter sets that differ only in drawing-only keys, the same series: the
    # observations must be identical (a policy cannot read how the scenario was drawn).
    scenario = draw_scenario2(2, TASKS_2["T1"], SHORT)
    other_params = Params2(horizon=8, demand_base=5000.0, demand_amp_hi=0.9, supply_down_prob=0.5,
                           grade_concentration=3.0, market_avail_min=0.9, return_mean=0.6)
    twin = Scenario2(**{**scenario.__dict__, "params": other_params})
    a, b = CircularSupplyChain2Env(scenario=scenario), CircularSupplyChain2Env(scenario=twin)
    obs_a, _ = a.reset()
    obs_b, _ = b.reset()
    assert np.array_equal(obs_a, obs_b)
    action = np.full(9, 0.3, dtype=np.float32)
    for _ in range(3):
        assert np.array_equal(a.step(action)[0], b.step(action)[0])


def test_observation_holds_history_window_and_announced_change():
    schedule = moca.regime.RegimeSchedule.from_list([
        {"start": 0, "recycled_content_min": 0.1, "recycled_content_window": 4},
        {"start": 5, "recycled_content_min": 0.3, "recycled_content_window": 52}])
    env = CircularSupplyChain2Env(schedule, params=SHORT)
    obs, _ = env.reset(seed=4)
    names = env.observation_names()
    at = dict(zip(names, obs))
    history = env.scenario.demand_history
    assert at["demand[t-1]"] == pytest.approx(history[-1] / 1500, rel=1e-6)
    assert at["demand[t-52]"] == pytest.approx(history[0] / 1500, rel=1e-6)
    assert at["window_left"] == pytest.approx(3 / 4) and at["next_change"] == pytest.approx(5 / 8)
    assert at["next_r"] == pytest.approx(0.3) and at["next_window"] == pytest.approx(52 / 104)
    obs, *_ = env.step(np.zeros(9, dtype=np.float32))
    at = dict(zip(names, obs))
    assert at["demand[t-1]"] == pytest.approx(env.scenario.demand[0] / 1500, rel=1e-6)
    assert at["used_virgin"] == 0.0 and at["window_left"] == pytest.approx(2 / 4)


@pytest.mark.parametrize("late", [8, 12])
def test_an_entry_starting_at_or_after_the_horizon_never_applies(late):
    """docs/MODEL.md: such an entry is kept with a warning and never applies; CLSC-2's env
    (and `moca evaluate --policy ppo --model CLSC-2`) failed at reset on an IndexError."""
    first = {"start": 0, "recycled_content_min": 0.1, "recycled_content_window": 4}
    with pytest.warns(UserWarning, match="never appl"):
        env = CircularSupplyChain2Env([first, {"start": late, "carbon_tax": 100.0}], params=SHORT)
    plain = CircularSupplyChain2Env([first], params=SHORT)
    obs, _ = env.reset(seed=4)
    expected, _ = plain.reset(seed=4)
    for t in range(SHORT.horizon):  # the same episode as without the entry, to its end
        np.testing.assert_array_equal(obs, expected)
        action = np.full(9, 0.3, dtype=np.float32)
        obs, cost, *_ = env.step(action)
        expected, cost_plain, *_ = plain.step(action)
        assert cost == cost_plain


def test_bad_actions_refused():
    """The same error type as CLSC-1's env (SafetyError, a ValueError), and the episode goes on."""
    env = CircularSupplyChain2Env(params=SHORT)
    env.reset(seed=0)
    with pytest.raises(SafetyError, match=r"expected shape \[9\].*got \[6\]"):
        env.step(np.zeros(6))
    with pytest.raises(SafetyError, match="non-finite entry"):
        env.step(np.full(9, np.nan))
    with pytest.raises(SafetyError, match="non-finite entry"):
        env.step(torch.full((9,), float("inf")))
    # Numbers only: text was converted ('0.5'), complex cut to its real part, a mask ignored.
    for raw, message in ((np.array(["0.5"] * 9), "got ndarray of <U3"), (["0.5"] * 9, "got list"),
                         (np.full(9, 0.5 + 1j), "of complex128"), ([True] * 9, "got list"), ([None] * 9, "got list"),
                         (np.ma.array(np.zeros(9), mask=[1] + [0] * 8), "has masked entries")):
        with pytest.raises(SafetyError, match=rf"expected 9 numbers|{message}") as info:
            env.step(raw)
        assert message in str(info.value), (raw, info.value)
    for options in ("abc", [("scenario", None)]):  # (a text was read key by key: "unknown key(s) a, b, c")
        with pytest.raises(ValueError, match=r"options: expected a dict such as \{'scenario': ...\} or None, got"):
            env.reset(options=options)
    assert env.t == 0
    env.step(torch.zeros(9))  # a tensor is an action too
    env.step(np.ma.array(np.full(9, 0.5)))  # (nothing masked) as is a list of ints
    env.step([0] * 9)
    assert env.t == 3


def test_violations_from_the_layer_and_from_an_independent_recount_agree():
    rng = np.random.default_rng(5)
    envs = [CircularSupplyChain2Env(TASKS_2["T3"], params=SHORT, check_violations=check) for check in (False, True)]
    for env in envs:
        env.reset(seed=2)
    for _ in range(SHORT.horizon):
        z = rng.uniform(0, 1.3, 9).astype(np.float32)
        infos = [env.step(z)[4] for env in envs]
        assert infos[0]["violations"] == infos[1]["violations"] == 0
        assert np.array_equal(infos[0]["executed"], infos[1]["executed"])


def test_last_observation_closes_the_episode():
    env = CircularSupplyChain2Env(TASKS_2["T2"], params=SHORT)
    env.reset(seed=1)
    for _ in range(SHORT.horizon):
        obs, _, terminated, _, _ = env.step(np.full(9, 0.2, dtype=np.float32))
    at = dict(zip(env.observation_names(), obs))
    assert terminated and at["t_frac"] == 1.0 and at["window_left"] == 0.0
    assert at["demand[t-1]"] == pytest.approx(env.scenario.demand[-1] / 1500, rel=1e-6)
    assert env.observation_space.contains(obs)
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step(np.zeros(9, dtype=np.float32))


@pytest.mark.parametrize("env_id", ["moca/CircularSupplyChain-v0", ENV_ID_2])
def test_regime_and_params_as_plain_objects(env_id):
    # gym.make's kwargs often come from a config file: objects, not moca's classes.
    env = gym.make(env_id, regime={"carbon_tax": 100}, params={"cap_order": 5000})
    env.reset(seed=0)
    assert env.unwrapped.params.cap_order == 5000
    assert env.unwrapped.schedule.regime_at(30).carbon_tax == 100
    schedule = [{"start": 0}, {"start": 10, "carbon_tax": 50}]
    env = gym.make(env_id, regime=schedule)
    assert [env.unwrapped.schedule.regime_at(t).carbon_tax for t in (9, 10)] == [0, 50]
    from moca.regime import RegimeError

    with pytest.raises(RegimeError, match="carbon_tax=5000 is outside its valid range"):
        gym.make(env_id, regime={"carbon_tax": 5000})
    with pytest.raises(ValueError, match="params.mass=-1 must be > 0"):
        gym.make(env_id, params={"mass": -1})
