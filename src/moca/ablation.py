"""What each part of moca adds: the seed's naive design reproduced, then one part at a time.

The seed describes a plain LSTM that maps observations to actions (no regime input, no
base rule) and is fine-tuned task after task; it reports that such a model collapses on
T1 once T2 is learned. moca adds five parts to it. Each row of :data:`ROWS` is one
measured run of :func:`moca.experiment.run_continual` through the same regimes, with the
same scenarios, adding one part to the row before, under one of two training protocols:

- ``seed``: the seed's recipe, each regime trained to competence with Adam (30 steps of
  rate 0.01 by default) before the next one;
- ``moca``: the seed experiment's (``moca run``): 8 SGD steps per regime on the gradient
  clipped to norm 0.03 (the step every method of the README's seed table takes).

The moca protocol runs every row; the seed protocol runs the rows that start from a
fresh policy (a meta-init is never trained that way: one Adam step of 0.01 moves every
weight by about 0.01, far beyond the meta-init's basin).

====================  ==============  ==========  ============  =====  =====
row                   regime input    base rule   start         EWC    GEM
====================  ==============  ==========  ============  =====  =====
plain LSTM (seed)     no              no          fresh         no     no
+ base rule           no              yes         fresh         no     no
+ regime input        yes             yes         fresh         no     no
+ meta-init           yes             yes         ``default``   no     no
+ EWC                 yes             yes         ``default``   yes    no
+ GEM (= moca)        yes             yes         ``default``   yes    yes
====================  ==============  ==========  ============  =====  =====

A fresh structured policy *is* the base rule (its head starts at zero), so "fresh" there
means the base rule plus an untrained LSTM.

Generic over the world (:data:`WORLDS`): a world supplies its seed tasks, its policy module
and shipped meta-init, its oracle cache and its continual run (CLSC-1:
:func:`moca.experiment.run_continual`; CLSC-2: :func:`moca.experiment2.run_continual2`
through T1 -> T2 -> T3 with W = 52). The rows, protocols and metrics are shared; the
scores, forgetting and transfer come from :mod:`moca.metrics` through the world's run.
The meta-init rows read whatever meta-init is shipped (its architecture sets every row's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from moca import checkpoint
from moca.continual import ContinualConfig
from moca.experiment import ExperimentConfig, _init_weights, run_continual, shipped_policy_config
from moca.experiment import TEST_SEED
from moca.meta import SUPPORT_SEEDS, VALIDATION_SEEDS, OracleCache
from moca.policy import LSTMPolicy, PolicyConfig
from moca.regime import TASKS
from moca.scenario import Params

#: The worlds the ablation runs on (``--world``).
WORLD_NAMES = ("CLSC-1", "CLSC-2")


class AblationError(ValueError):
    """Bad input to the ablation; the message names the argument and the problem."""


@dataclass(frozen=True)
class Row:
    """One configuration of the ablation."""

    label: str
    regime_conditioned: bool
    structured: bool
    meta_init: bool
    method: str  # a method of moca.continual: finetune / ewc (given init) or moca (EWC + GEM)
    protocol: Literal["seed", "moca"] = "moca"


_PARTS: tuple[tuple[str, bool, bool, bool, str], ...] = (
    ("plain LSTM (seed's design)", False, False, False, "finetune"),
    ("+ base rule", False, True, False, "finetune"),
    ("+ regime input", True, True, False, "finetune"),
    ("+ meta-init", True, True, True, "finetune"),
    ("+ EWC", True, True, True, "ewc"),
    ("+ GEM (= moca)", True, True, True, "moca"),
)

ROWS: tuple[Row, ...] = (
    *(Row(label, c, s, m, method, "seed") for label, c, s, m, method in _PARTS if not m),
    *(Row(label, c, s, m, method, "moca") for label, c, s, m, method in _PARTS),
)


class AblationConfig(BaseModel):
    """The training protocol shared by every row (pydantic: it goes into the JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed_steps: int = Field(30, ge=0, description="Adam steps per regime (seed protocol)")
    seed_lr: float = Field(1e-2, gt=0, description="Adam rate (seed protocol)")
    moca_steps: int = Field(8, ge=0, description="clipped SGD steps per regime (moca protocol)")
    train_size: int = Field(4, ge=1, description="training scenarios per regime (seeds 800+)")
    validation_size: int = Field(4, ge=1, description="validation scenarios per regime (seeds 900+)")
    test_size: int = Field(8, ge=1, description="test scenarios per regime (seeds 1000+)")
    ewc_lambda: float = Field(100.0, ge=0, description="EWC strength (the seed experiment's value)")
    seed: int = Field(0, ge=0, description="seed of the fresh initialisations")

    def experiment(self, protocol: str) -> ExperimentConfig:
        """The seed experiment's config with this protocol's steps and optimiser."""
        base = ExperimentConfig()  # moca's protocol: clipped SGD as in `moca run`
        if protocol == "seed":
            continual = ContinualConfig(optimizer="adam", lr=self.seed_lr, ewc_lambda=self.ewc_lambda)
            steps = self.seed_steps
        else:
            continual = base.continual.model_copy(update={"ewc_lambda": self.ewc_lambda})
            steps = self.moca_steps
        return base.model_copy(update={
            "steps": steps, "train_size": self.train_size, "memory_size": 1, "validation_size": self.validation_size,
            "test_size": self.test_size, "latency_scenarios": 1, "generalisation": [], "continual": continual})


def quick_config(world_name: str = "CLSC-1") -> AblationConfig:
    """The small version (``--quick``): a few steps on few scenarios (CLSC-2's, whose
    52-period episodes each cost a projected rollout, smaller still: a test runs it)."""
    if world_name == "CLSC-2":
        return AblationConfig(seed_steps=2, moca_steps=1, train_size=1, validation_size=1, test_size=2)
    return AblationConfig(seed_steps=3, moca_steps=2, train_size=2, validation_size=2, test_size=2)


@dataclass(frozen=True)
class World:
    """What the ablation needs of a world: its seed tasks, the shipped meta-init's policy
    config, a policy module of a config, the shipped meta-init's weights for a module, an
    oracle cache and the continual run ``(method, module, tasks, cache, config, init)``."""

    name: str
    tasks: Callable[[], list[tuple[str, Any]]]
    shipped_config: Callable[[], PolicyConfig]
    module: Callable[[PolicyConfig], torch.nn.Module]
    shipped_init: Callable[[torch.nn.Module], Any]
    cache: Callable[[], Any]
    run_continual: Callable[..., tuple[dict[str, Any], Any]]
    checkpoint: Callable[[], dict[str, Any]] = dict  # the shipped meta-init's metadata


def _provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """Which shipped meta-init a run read (it is re-shipped from time to time)."""
    return {k: meta.get(k) for k in ("created", "weights_sha256", "command")}


def _clsc1(params: Params | None = None) -> World:
    params = params or Params()
    return World(
        name="CLSC-1", tasks=lambda: [(n, TASKS[n]) for n in ("T1", "T2", "T3")],
        shipped_config=shipped_policy_config, module=lambda policy: LSTMPolicy(params, policy),
        shipped_init=lambda module: _init_weights("moca", module), cache=lambda: OracleCache(params),
        run_continual=lambda method, module, tasks, cache, config, init: run_continual(
            method, module, tasks, cache, config, init=init),
        checkpoint=lambda: _provenance(checkpoint.load("default")[1]))


def _clsc2(params: Any = None) -> World:
    from moca.experiment2 import run_continual2, shipped_init2
    from moca.meta2 import OracleCache2, load_policy2
    from moca.policy2 import LSTMPolicy2
    from moca.regime import TASKS_2

    shipped_module, shipped_meta = load_policy2("default")
    params = params or shipped_module.params
    return World(
        name="CLSC-2", tasks=lambda: [(n, TASKS_2[n]) for n in ("T1", "T2", "T3")],
        shipped_config=lambda: shipped_module.config, module=lambda policy: LSTMPolicy2(params, policy),
        shipped_init=shipped_init2, cache=lambda: OracleCache2(params),
        # One part per row: the moca row measures the protected update itself, not moca's choice of update.
        run_continual=lambda method, module, tasks, cache, config, init: run_continual2(
            method, module, tasks, cache, config, init=init, select_protocol=False),
        checkpoint=lambda: _provenance(shipped_meta))


def world(name: str = "CLSC-1", params: Any = None) -> World:
    """The ablation's view of world ``name`` (``params``: its chain; default the shipped one's)."""
    if name not in WORLD_NAMES:
        raise AblationError(f"world: {name!r} is not a world (valid: {', '.join(WORLD_NAMES)})")
    return _clsc1(params) if name == "CLSC-1" else _clsc2(params)


def run_ablation(rows: Sequence[Row] = ROWS, config: AblationConfig = AblationConfig(),
                 tasks: Sequence[tuple[str, Any]] | None = None, params: Any = None,
                 progress: Callable[[str], None] | None = None, world_name: str = "CLSC-1") -> dict[str, Any]:
    """Every row through ``tasks`` (default the world's T1 -> T2 -> T3); returns the
    JSON-ready results: per row the score matrix ``R`` (row 0 = before learning), average
    final score, the seed's drop on T1 after T2, BWT, FWT, mean forgetting, violations
    (CLSC-2: window settlements included) and wall seconds."""
    w = world(world_name, params)
    tasks = list(tasks) if tasks is not None else w.tasks()
    if len(tasks) < 2:
        raise AblationError(f"tasks: the ablation needs at least 2 regimes, got {len(tasks)}")
    shipped = w.shipped_config()
    cache = w.cache()
    # Every scenario's oracle cost first, so a row's seconds are its own (the first row's
    # used to carry every hindsight solve of the run).
    started = time.perf_counter()
    for _, plan in tasks:
        for seeds in (SUPPORT_SEEDS[:config.train_size], VALIDATION_SEEDS[:config.validation_size],
                      range(TEST_SEED, TEST_SEED + config.test_size)):
            cache.costs(cache.scenarios(seeds, plan))
    out: dict[str, Any] = {"world": w.name, "config": config.model_dump(), "tasks": [n for n, _ in tasks],
                           "policy": shipped.model_dump(), "meta_init": w.checkpoint(),
                           "oracle_seconds": time.perf_counter() - started, "rows": []}
    for row in rows:
        if progress:
            progress(row.label)
        policy = shipped.model_copy(update={"regime_conditioned": row.regime_conditioned,
                                            "structured": row.structured})
        if row.meta_init and policy != shipped:
            raise AblationError(f"row {row.label!r}: the shipped meta-init has another architecture")
        torch.manual_seed(config.seed)
        module = w.module(PolicyConfig(**policy.model_dump()))
        init = w.shipped_init(module) if row.meta_init else None
        started, cpu = time.perf_counter(), time.process_time()
        result, _ = w.run_continual(row.method, module, tasks, cache, config.experiment(row.protocol), init)
        R = result["R"]
        out["rows"].append({
            "label": row.label, "regime_input": row.regime_conditioned, "base_rule": row.structured,
            "meta_init": row.meta_init, "method": row.method, "protocol": row.protocol,
            "steps_per_regime": config.seed_steps if row.protocol == "seed" else config.moca_steps, "R": R,
            "average_final_score": result["average_final_score"],
            "drop_first_after_second": result["drop_first_after_second"],
            "bwt": result["bwt"], "fwt": result["fwt"],
            "mean_forgetting": sum(result["forgetting"][:-1]) / max(len(result["forgetting"]) - 1, 1),
            "best_on_first": max(r[0] for r in R[1:]),
            "violations": result["violations"], "seconds": time.perf_counter() - started,
            "cpu_seconds": time.process_time() - cpu,  # this process's CPU time: steadier than wall on a busy machine
        })
    return out


def markdown(result: dict[str, Any]) -> str:
    """The ablation as a markdown table (one line per row)."""
    from moca.report import markdown_table

    tasks = result["tasks"]
    headers = ["row", "protocol", "avg final score", f"{tasks[0]} after {tasks[0]}", f"{tasks[0]} after {tasks[1]}",
               f"drop on {tasks[0]} after {tasks[1]}", f"{tasks[0]} at the end", "BWT", "FWT", "violations",
               "seconds"]
    cpu = all("cpu_seconds" in row for row in result["rows"])  # runs before it was recorded have none
    if cpu:
        headers.append("CPU s")
    lines = []
    for row in result["rows"]:
        R = row["R"]
        protocol = f"{row['protocol']} ({row['steps_per_regime']} steps)"
        lines.append([row["label"], protocol, f"{row['average_final_score']:.3f}", f"{R[1][0]:.3f}", f"{R[2][0]:.3f}",
                      f"{100 * row['drop_first_after_second']:.1f}%", f"{R[-1][0]:.3f}", f"{row['bwt']:+.3f}",
                      f"{row['fwt']:+.3f}" if row["fwt"] is not None else "–", str(row["violations"]),
                      f"{row['seconds']:.0f}", *([f"{row['cpu_seconds']:.0f}"] if cpu else [])])
    return markdown_table(headers, lines, left=2)
