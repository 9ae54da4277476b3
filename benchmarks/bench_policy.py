"""Decision latency of the deployed LSTM policy (policy forward + exact projection), one
core, beside the MPC baseline's on the same states; and the cost of one training step.

    python benchmarks/bench_policy.py [--scenarios 10] [--weights W.safetensors] [--no-training]

The policy decides through the fused path (:class:`moca.policy.FusedDecision`); today's
reference path (:func:`moca.policy.deployed_decision`) is timed on the same states beside
it and its actions compared (``actions_differing`` must be 0). ``fused_breakdown_*`` splits
the fused decision into its LSTM step, its projection and the rest (the feature map and the
base rule), each timed alone on the same states.

Prints one JSON object. Latencies are per decision (one scenario, one period) in
microseconds, measured with ``time.perf_counter`` around ``DeployedPolicy.decide`` /
``MPCPolicy.decide``: the policy drives whole episodes (T1-T3, seeds 5000+, float64
simulator), then the MPC decides on the very same observations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from _args import positive_int, safetensors_file
from moca.evaluation import TimedDecisions
from moca.policy import DeployedPolicy, LSTMPolicy, PolicyConfig, deployed_decision, policy_loss
from moca.regime import TASKS
from moca.scenario import Params, draw_scenarios
from moca.sim import ScenarioBatch, Simulator, rollout


class _TimedDecisions(TimedDecisions):
    """moca's decision timer (``decide`` only) that also keeps the observations, on which
    the MPC's decision is timed afterwards (a second pass, so that neither evicts the
    other's working set from the cache between decisions), and counts projected decisions."""

    def __init__(self, deployed: DeployedPolicy):
        super().__init__(deployed)
        self.observations: list[tuple] = []
        self.inputs: list[tuple] = []
        self.actions: list[np.ndarray] = []
        self.projected = 0

    def act(self, obs):
        action = super().act(obs)
        self.projected += int(not np.array_equal(action[0].numpy(), self.policy.last_raw))
        self.observations.append((obs.params, *DeployedPolicy.inputs(obs)[:5]))
        self.inputs.append(DeployedPolicy.inputs(obs))
        self.actions.append(action[0].numpy().copy())
        return action


def _mpc_latency(observations: list[tuple], repeats: int = 1) -> tuple[list[float], list[float]]:
    """The MPC's decision on each observation: as first timed, and the fastest of ``repeats``."""
    from moca.baselines.mpc import MPCPolicy

    mpc = MPCPolicy()
    mpc.episode_length = observations[0][0].horizon
    first, best = [], []
    for params, t, stocks, pipeline, history, regime in observations:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            mpc.decide(params, t, stocks, pipeline, history, regime)
            times.append((time.perf_counter() - started) * 1e6)
        first.append(times[0])
        best.append(min(times))
    return first, best


def _side_by_side(deployed: DeployedPolicy, inputs: list[tuple], actions: list[np.ndarray], repeats: int
                  ) -> tuple[dict[str, list[float]], int]:
    """The fused path and today's reference path (``deployed_decision``: feature_columns
    on Python floats and the plain numpy LSTM step) timed on the same observations in
    one pass, alternating which goes first; each decision is repeated ``repeats`` times
    from the same recurrent memory (both paths are functions of it, so every repeat
    computes the same action), keeping the first time and the fastest (a shared machine
    only ever adds time: the fastest is the decision's own cost, without preemption).
    Also counts actions that differ from the rollout's (must be 0: bit for bit)."""
    times: dict[str, list[float]] = {"fused": [], "reference": [], "fused_best": [], "reference_best": []}
    differ = 0
    memory = {"fused": (None, None), "reference": (None, None)}
    for k, (args, rollout_action) in enumerate(zip(inputs, actions)):
        if args[0] == 0:
            memory = {"fused": (None, None), "reference": (None, None)}
        for name in (("fused", "reference") if k % 2 else ("reference", "fused")):
            frames, state = memory[name]
            spent = []
            for _ in range(repeats):
                started = time.perf_counter()
                if name == "fused":
                    out = deployed.fused(frames, state, *args)
                else:
                    out = deployed_decision(deployed.step, deployed.spec, frames, state, *args)
                spent.append((time.perf_counter() - started) * 1e6)
            action, _, frames, state = out
            times[name].append(spent[0])
            times[name + "_best"].append(min(spent))
            memory[name] = (frames, state)
            differ += not np.array_equal(action, rollout_action)
    return times, differ


def _breakdown(deployed: DeployedPolicy, inputs: list[tuple], repeats: int) -> dict[str, list[float]]:
    """Where a fused decision's time goes, on the same observations: the whole call, its
    LSTM step alone (on the frames and state that call saw) and its projection alone (of
    the raw action it made), each the fastest of ``repeats``; what is left of the whole is
    the feature map and the base rule in Python floats (``features`` = whole - LSTM -
    projection, per decision)."""
    from moca import safety

    fused, params = deployed.fused, deployed.params
    out: dict[str, list[float]] = {"whole": [], "lstm": [], "projection": [], "features": []}
    frames, state = None, None

    def fastest(call) -> float:
        spent = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            spent.append((time.perf_counter() - started) * 1e6)
        return min(spent)

    for args in inputs:
        if args[0] == 0:
            frames, state = None, None
        _, raw, new_frames, new_state = fused(frames, state, *args)
        stocks, regime = args[1], args[4]
        whole = fastest(lambda: fused(frames, state, *args))
        lstm = fastest(lambda: fused._lstm(new_frames, state))
        projection = fastest(lambda: safety.project(raw, float(stocks[0]), float(stocks[1]), float(stocks[3]),
                                                    regime, params))
        for name, value in (("whole", whole), ("lstm", lstm), ("projection", projection),
                            ("features", whole - lstm - projection)):
            out[name].append(value)
        frames, state = new_frames, new_state
    return out


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
            "mean": round(float(a.mean()), 1), "n": int(a.size)}


def _training_steps(params: Params) -> dict[str, float]:
    """Seconds of one inner (adaptation) step and one FOMAML meta step at default sizes."""
    from moca.meta import MetaConfig, MetaLearner, OracleCache, task_batch, sample_task, task_losses

    cache = OracleCache(params)
    module = LSTMPolicy(params)
    batch, oracle = task_batch(cache, [TASKS["T2"]], [range(800, 808)])
    times = []
    for _ in range(3):
        started = time.perf_counter()
        loss, _ = policy_loss(module, None, batch, oracle)
        torch.autograd.grad(loss, list(module.parameters()))
        times.append(time.perf_counter() - started)
    config = MetaConfig()
    meta = MetaLearner(module, config.algorithm, config.inner_lr, config.inner_steps, config.outer_lr,
                       config.inner_clip, config.zero_shot_weight)  # as meta_train builds it
    rng = np.random.default_rng(0)
    tasks = [sample_task(rng) for _ in range(config.tasks_per_step)]
    seeds = [list(range(10 * i, 10 * i + config.support_size + config.query_size)) for i in range(len(tasks))]
    # (oracle costs are solved here, before the timer starts)
    sup_b, sup_o = task_batch(cache, tasks, [ts[:config.support_size] for ts in seeds])
    qry_b, qry_o = task_batch(cache, tasks, [ts[config.support_size:] for ts in seeds])
    started = time.perf_counter()
    learners = [meta.clone() for _ in tasks]
    losses, _ = task_losses(module, learners, sup_b, sup_o, config.support_size, config.correction_weight)
    meta.adapt_all(learners, losses.sum())
    losses, _ = task_losses(module, learners, qry_b, qry_o, config.query_size, config.correction_weight)
    meta.outer_step(learners, losses.mean())
    meta_step = time.perf_counter() - started
    return {"inner_step_s": round(float(np.median(times)), 3), "inner_step_batch": batch.size,
            "meta_step_s": round(meta_step, 3),
            "meta_step_batch": f"{config.tasks_per_step} tasks x ({config.support_size} support + "
                               f"{config.query_size} query), {config.inner_steps} inner step, oracle excluded"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=positive_int, default=10, help="episodes per task (T1-T3)")
    parser.add_argument("--weights", type=safetensors_file,
                        help="safetensors state dict of an LSTMPolicy (default: a perturbed fresh one)")
    parser.add_argument("--no-training", action="store_true", help="skip the training-step timings")
    parser.add_argument("--no-mpc", action="store_true", help="skip the MPC latency")
    parser.add_argument("--repeats", type=positive_int, default=5, help="repeats per decision in the side-by-side pass")
    args = parser.parse_args()

    torch.set_num_threads(1)  # the target is one core
    params = Params()
    module = LSTMPolicy(params, PolicyConfig())
    if args.weights:
        from safetensors.torch import load_file

        module.load_state_dict(load_file(args.weights))
    else:
        # A fresh structured policy is exactly the base rule, whose raw actions are often
        # feasible (the projection is then skipped): perturb it so the QP runs as it would
        # for a learned policy.
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    timer = _TimedDecisions(DeployedPolicy(module))
    for k, name in enumerate(("T1", "T2", "T3")):
        for scenario in draw_scenarios(args.scenarios, TASKS[name], params, first_seed=5000 + 100 * k):
            batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
            with torch.no_grad():
                rollout(batch, timer, None, simulator=Simulator(params, dtype=torch.float64))
    side, differ = _side_by_side(timer.policy, timer.inputs, timer.actions, args.repeats)
    mpc_us: list[float] = []
    mpc_best: list[float] = []
    if not args.no_mpc:
        try:
            mpc_us, mpc_best = _mpc_latency(timer.observations, max(1, min(args.repeats, 3)))
        except ImportError:
            mpc_us = []
    policy = _percentiles(timer.latencies[5:])  # the first calls warm caches up
    result = {
        "benchmark": "policy_decision_latency",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "decide_us": policy,
        # the fused and today's reference path side by side on the same states (second pass)
        "fused_decide_us": _percentiles(side["fused"][5:]),
        "reference_decide_us": _percentiles(side["reference"][5:]),
        f"fused_decide_best_of_{args.repeats}_us": _percentiles(side["fused_best"][5:]),
        f"reference_decide_best_of_{args.repeats}_us": _percentiles(side["reference_best"][5:]),
        "actions_differing": differ,
        "projected_share": round(timer.projected / max(len(timer.latencies), 1), 3),  # decisions that ran the QP
        "mpc_decide_us": _percentiles(mpc_us[5:]),
        f"mpc_decide_best_of_{max(1, min(args.repeats, 3))}_us": _percentiles(mpc_best[5:]),
    }
    if policy and result["mpc_decide_us"]:
        result["mpc_over_policy_p50"] = round(result["mpc_decide_us"]["p50"] / policy["p50"], 1)
        result["mpc_over_policy_p99"] = round(result["mpc_decide_us"]["p99"] / policy["p99"], 1)
    if policy and result["reference_decide_us"]:
        fast, ref = result["fused_decide_us"], result["reference_decide_us"]
        result["reference_over_fused"] = {"p50": round(ref["p50"] / fast["p50"], 2), "p99": round(ref["p99"] / fast["p99"], 2)}
        best, ref_best = _percentiles(side["fused_best"][5:]), _percentiles(side["reference_best"][5:])
        result["reference_over_fused_best"] = {"p50": round(ref_best["p50"] / best["p50"], 2),
                                               "p99": round(ref_best["p99"] / best["p99"], 2)}
        if mpc_best:
            mpc = _percentiles(mpc_best[5:])
            result["mpc_over_fused_best"] = {"p50": round(mpc["p50"] / best["p50"], 1),
                                             "p99": round(mpc["p99"] / best["p99"], 1)}
    parts = _breakdown(timer.policy, timer.inputs, args.repeats)
    result[f"fused_breakdown_best_of_{args.repeats}_us"] = {name: _percentiles(v[5:]) for name, v in parts.items()}
    if not args.no_training:
        result["training"] = _training_steps(params)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
