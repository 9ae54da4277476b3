"""The Gymnasium environment: API conformance, and agreement with the batched simulator."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from moca.env import ENV_ID, CircularSupplyChainEnv, make_vector_env
from moca.regime import TASKS, Regime, RegimeSchedule
from moca.scenario import Params, draw_scenario
from moca.sim import COST_TERMS, OpenLoop, ScenarioBatch, Simulator, rollout

SWITCH = RegimeSchedule.from_list([
    {"start": 0, "recycled_content_min": 0.1},
    {"start": 10, "recycled_content_min": 0.3, "carbon_tax": 150.0, "landfill_tax": 20.0, "recovery_target": 0.6},
    {"start": 30, "emission_cap": 12000.0, "carbon_tax": 40.0},
])


def test_passes_the_gymnasium_env_checker_without_warnings():
    env = gym.make(ENV_ID, regime="T2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_spaces_and_one_episode():
    env = gym.make(ENV_ID, regime="T1")
    assert env.action_space.shape == (6,) and env.action_space.dtype == np.float32
    assert float(env.action_space.low.min()) == 0.0 and float(env.action_space.high.max()) == 1.0
    obs, info = env.reset(seed=1000)
    unwrapped = env.unwrapped
    assert obs.shape == env.observation_space.shape == (len(unwrapped.observation_names()),)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    env.action_space.seed(0)
    total, steps, terminated = 0.0, 0, False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and not truncated
        assert info["violations"] == 0
        assert set(info["terms"]) == set(COST_TERMS)
        assert reward == pytest.approx(-info["cost"] / 1e4)
        assert info["cost"] == pytest.approx(sum(info["terms"].values()), rel=1e-12)
        assert info["regime"].tolist() == [0.1, 0.0, np.inf, 0.0, 0.0]
        assert np.all(info["executed"] >= -1e-9)
        total += info["cost"]
        steps += 1
    assert steps == 52
    with pytest.raises(RuntimeError, match="ended"):
        env.step(env.action_space.sample())


def test_seed_names_the_scenario_and_the_observation_reads_the_state():
    env = CircularSupplyChainEnv(regime=TASKS["T3"])
    obs, _ = env.reset(seed=1234)
    expected = draw_scenario(1234, TASKS["T3"])
    assert np.array_equal(env.scenario.demand, expected.demand)
    assert np.array_equal(env.scenario.return_frac, expected.return_frac)
    p = Params()
    names = env.observation_names()
    value = dict(zip(names, obs.tolist()))
    # Post-arrival at t = 0: V = 4000 + 2000 (pipeline), C = 200 + rho_0 * 1000.
    assert value["V"] == pytest.approx(6000 / (p.mass * p.cap_produce), rel=1e-6)
    assert value["C"] == pytest.approx((200 + expected.return_frac[0] * 1000) / p.cap_produce, rel=1e-6)
    assert value["rho"] == pytest.approx(expected.return_frac[0], rel=1e-6)
    assert value["tau_k"] == pytest.approx(0.1) and value["r"] == pytest.approx(0.2)
    assert value["cap_code"] == 1.0 and value["t_frac"] == 0.0
    # Same seed, same episode; another seed, another scenario.
    env.reset(seed=1234)
    first = env.step(np.full(6, 0.3, np.float32))
    env.reset(seed=1234)
    again = env.step(np.full(6, 0.3, np.float32))
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    env.reset(seed=1235)
    assert not np.array_equal(env.scenario.demand, expected.demand)


def test_emission_cap_is_encoded_relative_to_full_capacity_emissions():
    env = CircularSupplyChainEnv(regime=Regime(emission_cap=13980.0))
    obs, _ = env.reset(seed=1)
    full = 6.0 * 4000 + 2.0 * 1500 + 1.0 * 0.8 * 2.0 * 600  # e_v K_o + e_p K_p + e_r eta_d m K_d = 27960
    assert dict(zip(env.observation_names(), obs.tolist()))["cap_code"] == pytest.approx(13980 / full)


@pytest.mark.parametrize("regime, params", [
    (TASKS["T1"], None), (TASKS["T3"], None), (SWITCH, None),
    (Regime(recovery_target=0.8, landfill_tax=50.0, emission_cap=15000.0), None),
    (TASKS["T2"], Params(horizon=20, lead_virgin=1, lag_return=1)),  # no order in transit after arrival
    (TASKS["T3"], Params(horizon=20, lead_virgin=4, lag_return=3)),
], ids=["T1", "T3", "schedule", "cap-kappa", "lead-1", "lead-4"])
def test_env_step_matches_the_batched_simulator(regime, params):
    """Two implementations of the same equations: the env's float step and moca.sim."""
    env = CircularSupplyChainEnv(regime=regime, params=params, check_violations=True)
    rng = np.random.default_rng(7)
    for seed in (1000, 1001):
        env.reset(seed=seed)
        executed, costs, terms, sales, emissions, available = [], [], [], [], [], []
        stocks = []
        terminated = False
        while not terminated:
            s = env.state_units()
            available.append([s["V"], s["M"], s["C"]])
            _, _, terminated, _, info = env.step(rng.uniform(0.0, 1.0, 6).astype(np.float32))
            assert info["violations"] == 0
            executed.append(info["executed"])
            costs.append(info["cost"])
            terms.append([info["terms"][k] for k in COST_TERMS])
            sales.append(info["sales"])
            emissions.append(info["emissions"])
            stocks.append([env.virgin, env.recycled, env.product, env.cores, env.backlog])
        batch = ScenarioBatch.from_scenarios([env.scenario], torch.float64)
        ref = rollout(batch, OpenLoop(torch.tensor(np.array(executed))[None]), None,
                      Simulator(env.params, torch.float64))
        # States: bit for bit (same float64 operations in the same order). The env's last
        # recorded stocks are post-arrival of the next period except at the end; compare
        # the end-of-period stocks through the post-arrival ones of the next period.
        assert np.array_equal(np.array(available), ref.available[0].numpy())
        assert np.array_equal(np.array(stocks[-1]), ref.stocks[0, -1].numpy())
        assert np.array_equal(np.array(sales), ref.sales[0].numpy())
        np.testing.assert_allclose(costs, ref.cost[0].numpy(), rtol=1e-13)
        np.testing.assert_allclose(np.array(terms), torch.stack([ref.terms[k][0] for k in COST_TERMS], -1).numpy(),
                                   rtol=1e-13, atol=1e-9)
        np.testing.assert_allclose(emissions, ref.emissions[0].numpy(), rtol=1e-13)


def test_regime_schedule_switches_inside_the_episode():
    env = CircularSupplyChainEnv(regime=SWITCH)
    env.reset(seed=3)
    regimes = []
    for _ in range(52):
        _, _, _, _, info = env.step(np.full(6, 0.5, np.float32))
        regimes.append(info["regime"])
        u_v, u_r = info["executed"][1:3]
        assert u_r >= info["regime"][0] * (u_v + u_r) - 1e-6  # row 6 within the spec's tolerance
    assert regimes[9][0] == 0.1 and regimes[10][0] == 0.3 and regimes[30][2] == 12000.0


def test_schedule_entries_past_the_horizon_are_warned_of():
    from moca.env2 import CircularSupplyChain2Env

    late = [{"start": 0}, {"start": 52, "carbon_tax": 100.0}]
    for make in (CircularSupplyChainEnv, CircularSupplyChain2Env):
        with pytest.warns(UserWarning, match=r"entries starting at periods \[52\] never apply in an episode of 52"):
            make(regime=late)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            make(regime=late[:1] + [{"start": 51, "carbon_tax": 100.0}])  # the last period: it applies


def test_fixed_scenario_and_regime_override():
    scenario = draw_scenario(99, TASKS["T1"])
    env = CircularSupplyChainEnv(scenario=scenario)
    env.reset(seed=5)
    assert env.scenario is scenario  # the seed does not replace a fixed scenario
    env2 = CircularSupplyChainEnv(regime="T3", scenario=scenario)
    env2.reset()
    assert np.array_equal(env2.scenario.demand, scenario.demand)
    assert env2.scenario.regime_table()[0, 1] == 100.0
    other = draw_scenario(5, TASKS["T2"])
    env.reset(options={"scenario": other})
    assert env.scenario is other
    with pytest.raises(ValueError, match="params"):
        CircularSupplyChainEnv(scenario=scenario, params=Params(cost_virgin=4.0))


def test_bad_actions_and_calls_are_refused():
    env = CircularSupplyChainEnv(regime="T1")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(6, np.float32))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([0.1, np.nan, 0, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="cost_scale"):
        CircularSupplyChainEnv(cost_scale=0.0)
    with pytest.raises(ValueError, match="no-such-regime"):
        CircularSupplyChainEnv(regime="no-such-regime")


def test_the_other_worlds_inputs_are_refused_when_the_env_is_built_naming_them():
    """CLSC-2's parameters, scenario or accounting window given to CLSC-1's env (and the
    reverse): refused by name at construction, not as a missing attribute deep inside
    pydantic nor at the first reset (after a vector env of them was built)."""
    from moca.env2 import CircularSupplyChain2Env
    from moca.scenario import Params2, ScenarioError, draw_scenario2

    with pytest.raises(ScenarioError, match="params: expected a Params or .* got Params2"):
        gym.make(ENV_ID, params=Params2())
    with pytest.raises(ScenarioError, match="params: expected a Params2 or .* got Params"):
        CircularSupplyChain2Env(params=Params())
    with pytest.raises(ScenarioError, match="scenario: expected a CLSC-1 Scenario, got Scenario2"):
        CircularSupplyChainEnv(scenario=draw_scenario2(1))
    with pytest.raises(ScenarioError, match="scenario: expected a CLSC-2 Scenario2, got Scenario"):
        CircularSupplyChain2Env(scenario=draw_scenario(1))
    with pytest.raises(ScenarioError, match="recycled_content_window=4: CLSC-1 settles"):
        CircularSupplyChainEnv(regime={"recycled_content_min": 0.2, "recycled_content_window": 4})
    with pytest.raises(ValueError, match="action: expected 6 numbers .* got str"):
        env = CircularSupplyChainEnv(regime="T1")
        env.reset(seed=0)
        env.step("abc")


def test_actions_outside_the_box_are_projected_not_executed():
    env = CircularSupplyChainEnv(regime="T2")
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([5.0, 3.0, -1.0, 9.0, 9.0, 9.0], np.float32))
    a = info["executed"]
    p = Params()
    assert info["violations"] == 0
    assert a[0] <= p.cap_order * (1 + 1e-9) and a[2] >= 0.2 * (a[1] + a[2]) - 1e-6
    assert a[3] + a[4] + a[5] <= 200 + env.scenario.return_frac[0] * 1000 + 1e-6


def test_vector_env_matches_single_envs_and_autoresets():
    n = 3
    vec = make_vector_env(n, regime="T1")
    obs, _ = vec.reset(seed=1000)
    assert obs.shape == (n, vec.single_observation_space.shape[0])
    singles = [CircularSupplyChainEnv(regime="T1") for _ in range(n)]
    single_obs = [e.reset(seed=1000 + i)[0] for i, e in enumerate(singles)]
    assert np.array_equal(obs, np.stack(single_obs))
    rng = np.random.default_rng(0)
    for t in range(52):
        actions = rng.uniform(0, 1, (n, 6)).astype(np.float32)
        obs, rewards, terminated, truncated, info = vec.step(actions)
        for i, env in enumerate(singles):
            o, r, term, _, _ = env.step(actions[i])
            assert np.array_equal(obs[i], o) and rewards[i] == r and terminated[i] == term
    assert terminated.all() and not truncated.any()
    # Next-step autoreset: the step after the end starts new episodes (reward 0).
    obs, rewards, terminated, _, _ = vec.step(np.zeros((n, 6), np.float32))
    assert np.all(rewards == 0) and not terminated.any()
    assert np.all(obs[:, -6] == 0.0)  # t / T is back at 0
    vec.close()


def test_a_vector_env_refuses_a_batch_with_a_bad_row_before_any_copy_steps():
    """SyncVectorEnv steps copy by copy: a NaN in copy 2 was refused after copies 0 and 1
    had stepped, and a retry left them a period ahead for the rest of the episode."""
    from moca.safety import SafetyError

    vec = make_vector_env(3, regime="T2")
    vec.reset(seed=1000)
    actions = np.zeros((3, 6), np.float32)
    actions[2, 0] = np.nan
    with pytest.raises(SafetyError, match=r"actions\[2\].*non-finite"):
        vec.step(actions)
    assert [e.unwrapped.t for e in vec.envs] == [0, 0, 0]
    with pytest.raises(SafetyError, match="actions: expected one row per copy, 3, got 2"):
        vec.step(np.zeros((2, 6), np.float32))  # (zip(strict=True) found it after two copies had stepped)
    assert [e.unwrapped.t for e in vec.envs] == [0, 0, 0]
    actions[2, 0] = 0.5
    vec.step(actions)
    assert [e.unwrapped.t for e in vec.envs] == [1, 1, 1]
    for _ in range(51):
        vec.step(actions)
    # the next step resets every copy (next-step autoreset): their actions are not used, so a
    # placeholder is not refused
    vec.step(np.full((3, 6), np.nan, np.float32))
    assert [e.unwrapped.t for e in vec.envs] == [0, 0, 0]
    vec.close()


def test_render_before_reset_params_as_a_dict_and_the_oracle_of_the_other_world():
    """Render before the first reset drew attributes that did not exist yet (AttributeError;
    CLSC-2's env returned None); params given as a dict beside a fixed scenario were refused
    even when equal (a dict never equals a Params); the oracle of one world on the other
    world's scenario failed on a missing attribute."""
    from moca.env2 import CircularSupplyChain2Env
    from moca.oracle import solve_oracle
    from moca.oracle2 import solve_oracle2
    from moca.scenario import draw_scenario, draw_scenario2

    for mode in ("ansi", "rgb_array"):
        assert CircularSupplyChainEnv(render_mode=mode).render() is None
        env = CircularSupplyChainEnv(render_mode=mode)
        env.reset(seed=1)
        assert env.render() is not None
    scenario = draw_scenario(7)
    assert CircularSupplyChainEnv(scenario=scenario, params={}).params == scenario.params
    with pytest.raises(ValueError, match="params: differ from the fixed scenario's params"):
        CircularSupplyChainEnv(scenario=scenario, params={"cap_order": 5000.0})
    scenario2 = draw_scenario2(7)
    assert CircularSupplyChain2Env(scenario=scenario2, params={}).params == scenario2.params
    with pytest.raises(TypeError, match=r"got Scenario2 \(a CLSC-2 scenario: moca.oracle2.solve_oracle2\)"):
        solve_oracle(scenario2)
    with pytest.raises(TypeError, match=r"got Scenario \(a CLSC-1 scenario: moca.oracle.solve_oracle\)"):
        solve_oracle2(scenario)
    with pytest.raises(TypeError, match="got NoneType"):
        solve_oracle(None)


def test_an_action_too_far_to_project_in_float64_is_refused_both_worlds():
    """Up to 1e12 capacities the projection of a far action is the nearest feasible point
    (the same as at 1e2); at 1e16 float64 lost it and the env executed zeros (CLSC-1) or
    one disassembly (CLSC-2) without a word, at 1e305 NaN stocks."""
    from moca.env2 import CircularSupplyChain2Env
    from moca.safety import SafetyError

    rng = np.random.default_rng(0)
    for Env, n in ((CircularSupplyChainEnv, 6), (CircularSupplyChain2Env, 9)):
        direction = rng.normal(size=n)
        direction /= np.abs(direction).max()
        executed = []
        for size in (1e2, 1e12):
            env = Env(regime="T3")
            env.reset(seed=3)
            executed.append(env.step(size * direction)[4]["executed"])
        assert np.allclose(executed[0], executed[1], rtol=0, atol=1e-6) and np.abs(executed[0]).sum() > 0
        for size in (1e16, 1e305):
            env = Env(regime="T3")
            env.reset(seed=3)
            with pytest.raises(SafetyError, match=r"action has an entry beyond ±1e\+12"):
                env.step(size * direction)


def test_an_unknown_reset_option_is_refused_both_worlds():
    """A misspelt option was ignored without a word: the episode ran another scenario."""
    from moca.env2 import CircularSupplyChain2Env

    for Env in (CircularSupplyChainEnv, CircularSupplyChain2Env):
        env = Env()
        with pytest.raises(ValueError, match=r"options: unknown key\(s\) scenaro \(this env reads 'scenario'\)"):
            env.reset(seed=1, options={"scenaro": None})
        assert env.reset(seed=1, options={})[0].shape == env.observation_space.shape


@pytest.mark.parametrize("name, value, words", [
    ("V", -1.0, r"entry 0 \(V\) is -1; it must be >= 0"),
    ("B", -1.0, r"entry 4 \(B\) is -1; it must be >= 0"),
    ("pipeline[0]", -0.5, r"entry 5 \(pipeline\[0\]\) is -0.5; it must be >= 0"),
    ("rho", 5.0, r"\(rho\) is 5; it must be <= 1"),
    ("r", 0.99, r"\(r\) is 0.99; it must be <= 0.95"),
    ("tau_k", -1.0, r"\(tau_k\) is -1; it must be >= 0"),
    ("cap_code", 0.0, r"regime entries .* read as no valid regime: .*emission_cap"),
    ("V", math.nan, r"entry 0 \(V\) is nan; it must be a finite number"),
    ("last_demand", math.inf, r"entry \d+ \(last_demand\) is inf; it must be a finite number"),
    ("V", 1e9, r"entry 0 \(V\) is 1e\+09; it must be <= 1e\+06"),  # (the env clamps at 1e6 capacities)
])
def test_an_observation_of_no_state_of_the_chain_is_refused_naming_its_entry(name, value, words):
    """A negative stock, a return share of 5 or a negative tax gave an ordinary-looking
    action (a mandate of 0.99 was read as 0.95), and a cap coded 0 a bare ZeroDivisionError."""
    from moca import checkpoint
    from moca.env import observation_inputs, observation_names
    from moca.policy import DeployedPolicy

    env = CircularSupplyChainEnv(regime="T1")
    obs, _ = env.reset(seed=1000)
    assert observation_names() == env.observation_names()
    observation_inputs(obs)  # the env's own observation reads
    bad = obs.copy()
    bad[env.observation_names().index(name)] = value
    with pytest.raises(ValueError, match=words):
        observation_inputs(bad)
    controller = DeployedPolicy(checkpoint.load_policy("default")[0])
    with pytest.raises(ValueError, match=words):
        controller.decide_observation(bad)


def test_an_observation_that_is_no_float_vector_is_refused_saying_what_it_is():
    """A masked array was read through its mask, text was numpy's "could not convert", and a
    tensor with a gradient torch's "Can't call numpy()"; integers read as the same floats."""
    import torch

    from moca.env import observation_inputs

    obs, _ = CircularSupplyChainEnv(regime="T1").reset(seed=1000)
    expected = observation_inputs(obs)
    assert list(observation_inputs(torch.tensor(obs, requires_grad=True))["stocks"]) == list(expected["stocks"])
    assert list(observation_inputs(obs.tolist())["stocks"]) == list(expected["stocks"])
    rounded = np.round(obs)  # (t = 0, whole numbers throughout: integers read as the same floats)
    as_ints = observation_inputs(rounded.astype(np.int64))
    assert list(as_ints["stocks"]) == list(observation_inputs(rounded)["stocks"]) and as_ints["t"] == 0
    for given, words in ((obs > 0, "got booleans"),
                         (np.ma.masked_array(obs, mask=[True] + [False] * (obs.size - 1)), "a masked array"),
                         ("abc", "an array of 22 numbers, got text"),
                         ({"V": 1.0}, "got a dict whose entries are not all real numbers"),
                         (None, "got a NoneType whose"), ([[1.0, 2.0], [3.0]], "got a list whose"),
                         ([0.5] * 21 + [None], "got a list whose"), (obs.astype(complex), "got a ndarray whose")):
        with pytest.raises(ValueError, match=f"obs: .*{words}"):
            observation_inputs(given)


def test_a_deployed_policy_is_built_from_a_clsc1_policy_and_reset_with_a_batch():
    from moca import checkpoint
    from moca.meta2 import load_policy2
    from moca.policy import DeployedPolicy, PolicyError

    with pytest.raises(PolicyError, match=r"module: a \(module, metadata\) pair, as load_policy returns it"):
        DeployedPolicy(checkpoint.load_policy("default"))
    with pytest.raises(PolicyError, match="module: expected a CLSC-1 LSTMPolicy, got LSTMPolicy2"):
        DeployedPolicy(load_policy2("default")[0])
    with pytest.raises(PolicyError, match="batch: expected a ScenarioBatch of one scenario or None, got str"):
        DeployedPolicy(checkpoint.load_policy("default")[0]).reset("x")


def test_params_that_do_not_validate_are_one_line_naming_the_field():
    """Pydantic's several lines and a web link, where moca's errors are one line (worded as a
    scenario file's or --params' are)."""
    from moca.scenario import ScenarioError

    for params, words in (({"horizn": 10}, r"^params\.horizn: unknown parameter$"),
                          ({"horizon": -1}, r"^params\.horizon=-1 must be a whole number >= 1$")):
        with pytest.raises(ScenarioError, match=words):
            CircularSupplyChainEnv(params=params)
