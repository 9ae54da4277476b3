"""Stable-Baselines3 PPO trained on moca's Gymnasium environment, as a peer.

What PPO is told: the environment's observation (the post-arrival state, pipeline, sales
history, this period's return fraction, last period's demand, the season's clock, ``t / T``
and the regime in force, see :mod:`moca.env`) and the reward ``-cost / 10 000 EUR``.
Its actions go through the environment's safety layer (the deployment projection), so the
executed action is always feasible. It is trained over a distribution of regimes (the
regime of each training episode drawn like moca's meta-training tasks,
:func:`moca.meta.sample_task`, on training-stream scenarios, never test seeds), so one
policy serves every regime, as moca's meta-init does.

Training (:func:`train_ppo`) runs for a wall-clock budget and records a learning curve:
the mean episode cost of the training episodes and, every ``eval_every`` steps, the score
(oracle cost / policy cost) of the deterministic policy on fixed validation scenarios.

Shipping: the policy's weights as safetensors and its architecture as JSON
(:func:`save_ppo` / :func:`load_ppo`, through :mod:`moca.checkpoint`, never SB3's pickled
zip). Loading rebuilds SB3's ``ActorCriticPolicy`` from the JSON and loads the tensors.
:class:`PPOPolicy` runs a loaded policy as a :class:`moca.sim.Policy`, building the
environment's observation from the simulator's state (tests check that the two agree).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from moca import checkpoint
from moca.files import figure_metadata
from moca.limits import LARGEST_PPO_SEED
from moca.regime import Regime, load_schedule
from moca.scenario import MODELS, TRAINING_STREAM, Params, draw_scenario
from moca.sim import R_CAP, R_LANDFILL, R_MANDATE, R_RECOVERY, R_TAX, Observation, ScenarioBatch

KIND = "sb3-ppo"
#: Training episodes draw scenarios (TRAINING_STREAM, PPO_OFFSET + k): the training stream,
#: apart from the indices tuning and adaptation use.
PPO_OFFSET = 5_000_000
_HIGH = 1.0e6  # the environment's bound of non-negative observations


class PPOError(ValueError):
    """A bad PPO configuration or checkpoint; the message names the field."""


@dataclass
class PPOConfig:
    """PPO's settings (SB3 names). ``seconds``: wall-clock budget of training;
    ``eval_every``: env steps between validation scores on the learning curve."""

    seconds: float = 300.0
    seed: int = 0
    n_envs: int = 4
    n_steps: int = 512
    batch_size: int = 256
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    log_std_init: float = -1.0
    action_bias_init: float | None = 0.5  # start the actor's mean mid-box (None: SB3's 0, half the actions clip to 0)
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    normalize_reward: bool = True
    eval_every: int = 20_000
    eval_regimes: list[str] = field(default_factory=lambda: ["T1", "T2", "T3"])
    eval_scenarios: int = 4
    max_steps: int | None = None  # stop once this many env steps are trained on (whole rollouts: rounded up)
    model: str = "CLSC-1"  # the world: CLSC-1 or CLSC-2

    def __post_init__(self) -> None:
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs", "eval_every", "eval_scenarios"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PPOError(f"ppo.{name}={value!r}: must be a whole number >= 1")
        if self.eval_scenarios > 100:  # moca's validation seeds 900-999: more would be cut without a word
            raise PPOError(f"ppo.eval_scenarios={self.eval_scenarios!r}: must be <= 100 (validation seeds 900-999)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= LARGEST_PPO_SEED:
            raise PPOError(f"ppo.seed={self.seed!r}: must be a whole number in [0, {LARGEST_PPO_SEED}]")
        if not (self.seconds >= 0 and math.isfinite(self.seconds)):
            raise PPOError(f"ppo.seconds={self.seconds!r}: must be a finite number >= 0")
        if self.model not in ("CLSC-1", "CLSC-2"):
            raise PPOError(f"ppo.model={self.model!r}: expected CLSC-1 or CLSC-2")
        if not self.net_arch or any(int(n) < 1 for n in self.net_arch):
            raise PPOError(f"ppo.net_arch={self.net_arch!r}: layer widths must be >= 1")


# --- the environment: one regime per episode from moca's task distribution --------------------


#: CLSC-2's accounting windows for training episodes: W = 52 (the seed tasks) half the time.
WINDOWS = (1, 4, 13, 26, 52)
WINDOW_WEIGHTS = (0.15, 0.1, 0.1, 0.15, 0.5)


def sample_regime(rng: np.random.Generator, model: str = "CLSC-1") -> Regime:
    """A training regime: moca's meta-training distribution (:func:`moca.meta.sample_task`);
    on CLSC-2 with an accounting window drawn from :data:`WINDOWS`."""
    from moca.meta import sample_task

    regime = sample_task(rng, Params())
    if model == "CLSC-2":
        window = int(rng.choice(WINDOWS, p=WINDOW_WEIGHTS))
        regime = Regime(**{**regime.model_dump(), "recycled_content_window": window})
    return regime


def draw_world_scenario(seed, regime, model: str = "CLSC-1"):
    """A scenario of the world ``model`` (its default parameters)."""
    if model == "CLSC-2":
        from moca.scenario import draw_scenario2

        return draw_scenario2(seed, regime)
    return draw_scenario(seed, regime, Params())


def make_env(model: str = "CLSC-1", **kwargs) -> gym.Env:
    if model == "CLSC-2":
        from moca.env2 import CircularSupplyChain2Env

        return CircularSupplyChain2Env(**kwargs)
    from moca.env import CircularSupplyChainEnv

    return CircularSupplyChainEnv(**kwargs)


class RegimeSampling(gym.Wrapper):
    """Each ``reset`` draws a regime (:func:`sample_regime`) and a training-stream scenario
    under it, and starts the episode on that scenario."""

    def __init__(self, env: gym.Env, seed: int, stream: int, model: str = "CLSC-1"):
        super().__init__(env)
        self._rng = np.random.default_rng([TRAINING_STREAM, PPO_OFFSET, seed, stream])
        self._episode = 0
        self._stream = stream
        self._seed = seed
        self._model = model

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        regime = sample_regime(self._rng, self._model)
        index = PPO_OFFSET + (self._seed * 64 + self._stream) * 1_000_000 + self._episode
        self._episode += 1
        scenario = draw_world_scenario((TRAINING_STREAM, index), regime, self._model)
        return self.env.reset(seed=seed, options={"scenario": scenario})


def make_training_env(config: PPOConfig, params: Params | None = None):
    """SB3's vectorised form of ``n_envs`` regime-sampling copies of the environment."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    def factory(i: int):
        kwargs = {"params": params} if config.model == "CLSC-1" else {}
        return lambda: Monitor(RegimeSampling(make_env(config.model, **kwargs), config.seed, i, config.model))

    return DummyVecEnv([factory(i) for i in range(config.n_envs)])


def env_evaluation(name: str, policy, scenarios, oracle_costs: np.ndarray, model: str = "CLSC-1"):
    """Score the deterministic policy through the Gymnasium environment (its safety layer,
    its cost): one episode per scenario. Returns a :class:`moca.evaluation.Evaluation`."""
    from moca.evaluation import Evaluation

    env = make_env(model, params=scenarios[0].params) if scenarios else make_env(model)
    costs, violations = np.empty(len(scenarios)), 0
    for i, scenario in enumerate(scenarios):
        observation, _ = env.reset(options={"scenario": scenario})
        total, done = 0.0, False
        while not done:
            with torch.no_grad():
                z = policy._predict(torch.as_tensor(observation[None]), deterministic=True)[0]
            observation, _, done, _, info = env.step(z.clamp(0.0, 1.0).numpy())
            total += info["cost"]
            violations += int(info["violations"])
        costs[i] = total
    return Evaluation(name, costs, np.asarray(oracle_costs, dtype=float), violations, np.zeros(0))


# --- the policy as moca sees it ---------------------------------------------------------------


def observation_of(obs: Observation) -> np.ndarray:
    """``[B, n_obs]`` float32: the environment's observation (:mod:`moca.env`) of a batch of
    simulator states at event 2 of period ``t``."""
    p = obs.params
    s = obs.state
    kg, units = p.mass * p.cap_produce, float(p.cap_produce)
    as_np = lambda x: x.detach().to(torch.float64).cpu().numpy()  # noqa: E731
    stocks = np.stack([as_np(s.virgin) / kg, as_np(s.recycled) / kg, as_np(s.product) / units,
                       as_np(s.cores) / units, as_np(s.backlog) / units], axis=1)
    pipeline = as_np(s.pipeline)[:, -(p.lead_virgin - 1):] / kg if p.lead_virgin > 1 else np.zeros((len(stocks), 0))
    history = as_np(s.sales_history) / units
    state = np.clip(np.concatenate([stocks, pipeline, history], axis=1), 0.0, _HIGH)
    B = state.shape[0]
    rho = as_np(obs.return_frac)
    last = as_np(obs.last_demand) if obs.last_demand is not None else np.full(B, float(p.init_sales))
    t = obs.t
    clock = np.array([math.sin(2.0 * math.pi * t / 52.0), math.cos(2.0 * math.pi * t / 52.0), t / p.horizon])
    regime = as_np(obs.regime)
    full = (p.emis_virgin * p.cap_order + p.emis_produce * p.cap_produce
            + p.emis_recycle * p.yield_disassembly * p.mass * p.cap_disassemble)
    cap = np.ones(B) if full <= 0 else np.minimum(regime[:, R_CAP] / full, 1.0)
    exogenous = np.column_stack([rho, last / units, np.tile(clock, (B, 1)), regime[:, R_MANDATE],
                                 regime[:, R_TAX] / 1000.0, cap, regime[:, R_LANDFILL] / 100.0,
                                 regime[:, R_RECOVERY]])
    return np.concatenate([state, np.minimum(exogenous, _HIGH)], axis=1).astype(np.float32)


class PPOPolicy:
    """A trained PPO actor as a :class:`moca.sim.Policy`: the deterministic action (the
    Gaussian's mean, clipped to the action box) times the action scale, in raw units; the
    rollout's safety layer projects it."""

    def __init__(self, policy, meta: dict[str, Any] | None = None):
        self.policy = policy.eval()
        self.meta = meta or {}

    def reset(self, batch: ScenarioBatch) -> None:
        self._scale = torch.as_tensor(np.asarray(batch.params.action_scale), dtype=torch.float64)

    def act(self, obs: Observation) -> Tensor:
        features = torch.as_tensor(observation_of(obs))
        with torch.no_grad():
            z = self.policy._predict(features, deterministic=True).to(torch.float64).clamp(0.0, 1.0)
        return (z * self._scale).to(obs.state.virgin.dtype)


# --- saving and loading (safetensors + JSON) ----------------------------------------------------


def _build_policy(obs_dim: int, act_dim: int, net_arch: list[int], log_std_init: float):
    from stable_baselines3.common.policies import ActorCriticPolicy

    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(0.0, 1.0, (act_dim,), np.float32)
    return ActorCriticPolicy(obs_space, act_space, lambda _: 0.0, net_arch=list(net_arch),
                             activation_fn=torch.nn.Tanh, log_std_init=log_std_init)


def save_ppo(directory: str | Path, policy, metadata: dict[str, Any]) -> Path:
    """Write the SB3 policy's tensors (safetensors) and what rebuilds it (JSON)."""
    obs_dim = int(policy.observation_space.shape[0])
    act_dim = int(policy.action_space.shape[0])
    meta = checkpoint.merged({"kind": KIND, "obs_dim": obs_dim, "act_dim": act_dim}, metadata)
    return checkpoint.save(directory, dict(policy.state_dict()), meta)


def load_ppo(directory: str | Path, model: str | None = None) -> PPOPolicy:
    """Read a PPO checkpoint (of the world ``model``, when given: another world's checkpoint
    of any kind is refused as such); any problem is a :class:`moca.checkpoint.CheckpointError`."""
    weights, meta = checkpoint.load(directory)
    where = checkpoint.resolve(directory)
    if meta.get("kind") != KIND:
        raise checkpoint.refuse(where, meta, model, KIND)
    try:
        config = meta["config"]
        policy = _build_policy(int(meta["obs_dim"]), int(meta["act_dim"]), [int(n) for n in config["net_arch"]],
                               float(config["log_std_init"]))
    except (KeyError, TypeError, ValueError) as err:
        raise checkpoint.CheckpointError(f"checkpoint {where}: invalid PPO metadata ({err})") from None
    checkpoint.check_compatible(weights, policy, where)
    policy.load_state_dict(weights)
    return PPOPolicy(policy, meta)


def check_fits(loaded: PPOPolicy, name: str, model: str, params: Any) -> None:
    """Refuse (:class:`moca.checkpoint.CheckpointError`, naming ``--policy name``) a PPO
    policy of the other world, or one whose observations the chain of ``params`` does not
    give (their size follows lead_virgin and lag_return): run, it would fail on a shape."""
    trained = loaded.meta.get("model", "CLSC-1")
    if trained not in MODELS:  # (hand-edited: it was told "use --model CLSC-9")
        raise checkpoint.unknown_world(f"--policy {name}", trained)
    if trained != model:
        raise checkpoint.CheckpointError(f"--policy {name}: a PPO policy of {trained}, not of {model} "
                                         f"(use --model {trained}, or a {model} policy)")
    ours, theirs = make_env(model, params=params).observation_space.shape, loaded.policy.observation_space.shape
    if ours != theirs:
        planners = "mpc or mpc-sampled" if model == "CLSC-2" else "mpc"
        raise checkpoint.CheckpointError(f"--policy {name}: params lead_virgin={params.lead_virgin}, lag_return="
                                         f"{params.lag_return} give observations of {ours[0]} numbers, the policy "
                                         f"was trained on {theirs[0]} (score this chain with threshold, {planners})")


#: Where ``--policy ppo`` finds the shipped policy of each world.
SHIPPED = {"CLSC-1": "ppo-clsc1", "CLSC-2": "ppo-clsc2"}


def shipped_path(model: str = "CLSC-1") -> Path:
    from importlib import resources

    if model not in SHIPPED:
        raise PPOError(f"--model {model!r}: no shipped PPO policy (known: {', '.join(SHIPPED)})")
    return Path(str(resources.files("moca") / "data" / SHIPPED[model]))


# --- training -------------------------------------------------------------------------------------


def _validation(config: PPOConfig, params: Params):
    from moca.evaluation import scorable
    from moca.meta import VALIDATION_SEEDS

    seeds = VALIDATION_SEEDS[: config.eval_scenarios]
    if config.model == "CLSC-2":
        from moca.oracle2 import solve_oracle2

        scenarios = [draw_world_scenario(int(seed), load_schedule(name, model="CLSC-2"), "CLSC-2")
                     for name in config.eval_regimes for seed in seeds]
        return scenarios, scorable([solve_oracle2(s).oracle_cost for s in scenarios])
    from moca.oracle import oracle_costs

    scenarios = [draw_scenario(int(seed), load_schedule(name), params) for name in config.eval_regimes for seed in seeds]
    return scenarios, scorable(oracle_costs(scenarios))


def validation_score(policy, scenarios, oracle: np.ndarray, model: str = "CLSC-1") -> float:
    """Mean score of the deterministic policy on ``scenarios``: on CLSC-1 through the
    batched simulator (float64, the exact batched projection), on CLSC-2 through its
    environment."""
    if model == "CLSC-2":
        return float(env_evaluation("ppo", policy, scenarios, oracle, model).scores.mean())
    from moca.safety import project_batch
    from moca.sim import rollout

    batch = ScenarioBatch.from_scenarios(scenarios, dtype=torch.float64)
    with torch.no_grad():
        out = rollout(batch, PPOPolicy(policy), project_batch)
    return float(np.mean(oracle / out.total_cost.numpy()))


def train_ppo(config: PPOConfig = PPOConfig(), params: Params | None = None,
              progress: Callable[[int, float], None] | None = None,
              stop: Callable[[], bool] | None = None) -> tuple[Any, dict[str, Any]]:
    """Train PPO for ``config.seconds`` of wall clock (or ``config.max_steps`` env steps,
    rounded up to whole rollouts); returns the SB3 model and the learning curve ``{"steps",
    "seconds", "episode_cost", "score"}`` (lists; ``steps``: the env steps the policy scored
    was trained on). ``stop``: asked after every env step (a :class:`moca.meta.StopRequest`);
    True ends the training there, with ``curve["interrupted"]`` set. PPO learns from whole
    rollouts of ``n_envs * n_steps`` env steps: ``curve["trained_steps"]`` counts those it
    learned from, ``curve["collected_steps"]`` those it ran (an unfinished rollout's too)."""
    params = params or Params()
    if config.model == "CLSC-2" and params != Params():
        raise PPOError("params: CLSC-2 training uses the CLSC-2 defaults (Params2); pass no CLSC-1 params")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: SB3's small MLP runs ~10x faster on one thread here
    try:
        return _train(config, params, progress, stop)
    finally:
        torch.set_num_threads(threads)


def _train(config: PPOConfig, params: Params, progress, stop) -> tuple[Any, dict[str, Any]]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import VecNormalize

    torch.manual_seed(config.seed)
    env = make_training_env(config, params)
    if config.normalize_reward:
        env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=config.gamma)
    model = PPO("MlpPolicy", env, learning_rate=config.learning_rate, n_steps=config.n_steps,
                batch_size=config.batch_size, n_epochs=config.n_epochs, gamma=config.gamma,
                gae_lambda=config.gae_lambda, clip_range=config.clip_range, ent_coef=config.ent_coef,
                policy_kwargs={"net_arch": list(config.net_arch), "activation_fn": torch.nn.Tanh,
                               "log_std_init": config.log_std_init},
                seed=config.seed, device="cpu", verbose=0)
    # A logger that writes nothing: SB3's default makes an empty /tmp/SB3-<time> folder per
    # training (69 of them after a day of tests); moca keeps its own curve.
    model.set_logger(Logger(folder=None, output_formats=[]))
    if config.action_bias_init is not None:
        with torch.no_grad():
            model.policy.action_net.bias.fill_(config.action_bias_init)
    valid, valid_oracle = _validation(config, params)
    curve: dict[str, list] = {"steps": [], "seconds": [], "episode_cost": [], "score": []}
    started = time.perf_counter()

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.costs: list[float] = []
            self.running = np.zeros(config.n_envs)
            self.next_eval = 0
            self.trained = 0  # env steps of the rollouts trained on (a rollout ends, then PPO trains on it)

        def _on_rollout_end(self) -> None:
            self.trained = int(self.num_timesteps)

        def _record(self) -> None:
            elapsed = time.perf_counter() - started
            score = validation_score(self.model.policy, valid, valid_oracle, config.model)
            recent = self.costs[-50:]
            curve["steps"].append(self.trained)  # (what the policy scored learned from; it ran more)
            curve["seconds"].append(elapsed)
            curve["episode_cost"].append(float(np.mean(recent)) if recent else None)
            curve["score"].append(score)
            self.next_eval = self.trained + config.eval_every
            if progress:
                progress(self.trained, score)

        def _on_training_start(self) -> None:
            self._record()

        def _on_step(self) -> bool:
            for i, info in enumerate(self.locals["infos"]):
                self.running[i] += info.get("cost", 0.0)
                if self.locals["dones"][i]:
                    self.costs.append(float(self.running[i]))
                    self.running[i] = 0.0
            # (by the steps learned from: the policy changes once a rollout ends; a score taken
            # within a rollout was the last one's, repeated, --eval-every below 2,048)
            if self.trained >= self.next_eval:
                self._record()
            over_time = time.perf_counter() - started >= config.seconds
            if stop is not None and stop():
                curve["interrupted"] = True
                return False
            return not over_time

    callback = Curve()
    # max_steps as SB3's total: whole rollouts until that many steps, each trained on (a stop
    # in the callback mid-rollout leaves that rollout unlearned: 2,600 steps learned 2,048).
    model.learn(total_timesteps=config.max_steps or 10**12, callback=callback)
    if not curve["steps"] or curve["steps"][-1] != callback.trained:
        callback._record()
    curve["trained_steps"], curve["collected_steps"] = callback.trained, int(model.num_timesteps)
    curve["wall_seconds"] = time.perf_counter() - started
    curve["validation"] = {"regimes": config.eval_regimes, "seeds": [int(s) for s in range(900, 900 + config.eval_scenarios)]}
    return model, curve


def plot_curve(curve: dict[str, Any], path: str | Path, title: str = "PPO learning curve") -> None:
    """Validation score and training episode cost against env steps (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(curve["steps"], curve["score"], marker="o", color="tab:blue", label="validation score")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("score = oracle cost / policy cost", color="tab:blue")
    costs = [(s, c) for s, c in zip(curve["steps"], curve["episode_cost"]) if c is not None]
    if costs:
        twin = ax.twinx()
        twin.plot(*zip(*costs), color="tab:orange", label="training episode cost")
        twin.set_ylabel("mean training episode cost (EUR)", color="tab:orange")
    ax.set_title(f"{title} ({curve.get('wall_seconds', 0):.0f} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=figure_metadata(path))
    plt.close(fig)


__all__ = ["KIND", "PPOConfig", "PPOError", "PPOPolicy", "RegimeSampling", "load_ppo", "make_training_env",
           "observation_of", "plot_curve", "save_ppo", "shipped_path", "train_ppo", "validation_score"]
