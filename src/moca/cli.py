"""The ``moca`` command line (typer + rich). ``--json`` prints machine-readable output.

Bad input never shows a traceback: one line on stderr naming the problem, exit code 2,
and nothing written.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="moca: keep a circular supply chain's control policy optimal while regulation changes.")
scenario_app = typer.Typer(no_args_is_help=True, help="Create scenarios (the JSON exchange format of CLSC-1 or CLSC-2).")
app.add_typer(scenario_app, name="scenario")

console = Console()
err_console = Console(stderr=True)
EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad command-line input that no library module raises itself."""


def _input_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from moca.regime import RegimeError
    from moca.safety import SafetyError
    from moca.scenario import ScenarioError
    from moca.checkpoint import CheckpointError
    from moca.continual import ContinualError
    from moca.meta import MetaError
    from moca.policy import PolicyError
    from moca.experiment import ExperimentError
    from moca.metrics import MetricsError
    from moca.report import ReportError
    from moca.baselines.ppo import PPOError

    return (RegimeError, ScenarioError, SafetyError, UsageError, ValidationError, CheckpointError, ContinualError,
            MetaError, PolicyError, ReportError, ExperimentError, MetricsError, PPOError)


@contextmanager
def _bad_input() -> Iterator[None]:
    try:
        yield
    except _input_errors() as err:
        message = _message(err)
        err_console.print(f"moca: error: {message}", markup=False, highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _message(err: BaseException) -> str:
    """One line naming the problem; a pydantic error names the field, the value and the rule."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or err.title
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        return f"{err.title}: {where}={first.get('input')!r}: {first['msg']}{more}"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a failure never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=1) + "\n")


# --- scenarios ---------------------------------------------------------------------------


@scenario_app.command("new")
def scenario_new(
    regime: str = typer.Option("T1", "--regime", help="Regime name (T1, T2, T3, eu-ets-2025, ...) or YAML/JSON file."),
    seed: int = typer.Option(..., "--seed", help="Seed of the demand and return draws."),
    schedule: Optional[Path] = typer.Option(None, "--schedule", help="YAML/JSON list of regimes with 'start' (overrides --regime)."),
    output: Path = typer.Option(..., "-o", "--output", help="Scenario JSON to write."),
    params_file: Optional[Path] = typer.Option(None, "--params", help="JSON/YAML object of the model's parameters to override."),
    model: str = typer.Option("CLSC-1", "--model", help="World model: CLSC-1 or CLSC-2 (docs/MODEL-2.md)."),
) -> None:
    """Draw a seeded scenario and write it in the spec's JSON format."""
    from moca.regime import RegimeSchedule, load_regime, load_schedule, read_structured
    from moca.scenario import MODELS, Params, Params2, ScenarioError, draw_scenario, draw_scenario2

    with _bad_input():
        if model not in MODELS:
            raise UsageError(f"--model={model!r}: expected one of {', '.join(MODELS)}")
        clsc2 = model == "CLSC-2"
        plan = load_schedule(schedule, model) if schedule else RegimeSchedule.constant(load_regime(regime, model))
        params = Params2() if clsc2 else Params()
        if params_file:
            data = read_structured(params_file)
            if not isinstance(data, dict):
                raise ScenarioError(f"{params_file}: expected an object of parameters")
            params = (Params2 if clsc2 else Params)(**data)
        scenario = (draw_scenario2 if clsc2 else draw_scenario)(seed, plan, params)
        _write_atomic(output, scenario.to_json())
    err_console.print(f"wrote {output} ({scenario.horizon} periods, {len(plan.entries)} regime(s))")


@app.command()
def regimes(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the named regimes (the seed's tasks and presets from real rules)."""
    from moca.regime import REGIME_FIELDS, named_regimes

    rows = {name: r.model_dump() for name, r in named_regimes().items()}
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Named regimes")
    table.add_column("name")
    for f in REGIME_FIELDS:
        table.add_column(f, justify="right")
    for name, r in rows.items():
        table.add_row(name, *("-" if r[f] is None else f"{r[f]:g}" for f in REGIME_FIELDS))
    console.print(table)


# --- simulate / oracle ---------------------------------------------------------------------


def simulate_actions(scenario, actions: np.ndarray) -> dict[str, Any]:
    """Run raw actions ``[T, 6]`` through the safety layer and simulator in float64."""
    import torch

    from moca import safety
    from moca.sim import STATE_NAMES, OpenLoop, ScenarioBatch, rollout

    batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
    with torch.no_grad():
        result = rollout(batch, OpenLoop(torch.as_tensor(actions[None], dtype=torch.float64)), safety.project_batch)
    executed = result.executed[0].numpy()
    violations = safety.episode_violations(result.executed, result.available, batch.regime, scenario.params)
    periods = []
    for t in range(scenario.horizon):
        periods.append({
            "t": t,
            "action": [float(x) for x in executed[t]],
            "cost": float(result.cost[0, t]),
            "state": {name: float(result.stocks[0, t, i]) for i, name in enumerate(STATE_NAMES)},
            "sales": float(result.sales[0, t]),
            "emissions": float(result.emissions[0, t]),
        })
    return {"total_cost": float(result.total_cost[0]), "violations": violations, "periods": periods}


@app.command()
def simulate(
    scenario_path: Path = typer.Option(..., "--scenario", help="Scenario JSON."),
    actions_path: Path = typer.Option(..., "--actions", help='Action JSON {"actions": [[o, u_v, u_r, g, f, w], ...]} (CLSC-2: nine per row).'),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Execute raw actions through the safety layer and report cost, states and violations."""
    from moca.scenario import Scenario2, load_actions, load_scenario

    with _bad_input():
        scenario = load_scenario(scenario_path)  # the file's "model" chooses the world
        if isinstance(scenario, Scenario2):
            return _simulate2(scenario, scenario_path, actions_path, as_json)
        actions = load_actions(actions_path, scenario.horizon)
        out = simulate_actions(scenario, actions)
    if as_json:
        _print_json(out)
        return
    table = Table(title=f"{scenario_path.name}: total cost {out['total_cost']:,.0f} EUR, violations {out['violations']}")
    for col in ("t", "o", "u_v", "u_r", "g", "f", "w", "V", "M", "P", "C", "B", "sales", "cost"):
        table.add_column(col, justify="right")
    for p in out["periods"]:
        table.add_row(str(p["t"]), *(f"{a:.0f}" for a in p["action"]), *(f"{v:.0f}" for v in p["state"].values()),
                      f"{p['sales']:.0f}", f"{p['cost']:,.0f}")
    console.print(table)


def _simulate2(scenario, scenario_path: Path, actions_path: Path, as_json: bool) -> None:
    """``moca simulate`` on a CLSC-2 scenario: rows of nine raw actions."""
    from moca.clsc2 import ACTION_SYMBOLS, STATE_NAMES
    from moca.scenario import load_actions
    from moca.sim2 import simulate_actions2

    out = simulate_actions2(scenario, load_actions(actions_path, scenario.horizon, ACTION_SYMBOLS))
    if as_json:
        _print_json(out)
        return
    table = Table(title=f"{scenario_path.name} (CLSC-2): total cost {out['total_cost']:,.0f} EUR, "
                        f"violations {out['violations']}")
    for col in ("t", *ACTION_SYMBOLS, *STATE_NAMES, "sales", "lost", "cost"):
        table.add_column(col, justify="right")
    for p in out["periods"]:
        table.add_row(str(p["t"]), *(f"{a:.0f}" for a in p["action"]), *(f"{v:.0f}" for v in p["state"].values()),
                      f"{p['sales']:.0f}", f"{p['lost']:.0f}", f"{p['cost']:,.0f}")
    console.print(table)


@app.command()
def oracle(
    scenario_path: Path = typer.Option(..., "--scenario", help="Scenario JSON."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The hindsight LP (HiGHS): the best cost any policy could reach on the scenario."""
    from moca.oracle import solve_oracle
    from moca.scenario import Scenario2, load_scenario

    with _bad_input():
        scenario = load_scenario(scenario_path)  # the file's "model" chooses the world
        if isinstance(scenario, Scenario2):
            from moca.oracle2 import solve_oracle2 as solve_oracle
        result = solve_oracle(scenario)
    out = {"oracle_cost": result.oracle_cost, "status": result.status,
           "plan": [[float(x) for x in row] for row in result.plan]}
    if as_json:
        _print_json(out)
        return
    console.print(f"oracle cost [bold]{result.oracle_cost:,.2f}[/bold] EUR (status {result.status})")


# --- evaluate ------------------------------------------------------------------------------


@app.command()
def evaluate(
    policy: str = typer.Option(..., "--policy", help="threshold | mpc | oracle | mpc-informed | mpc-forecast | mpc-sampled | ppo | a checkpoint DIR ('default' = shipped meta-init)."),
    regime: str = typer.Option("T1", "--regime", help="Regime name or YAML/JSON file (a schedule file works too)."),
    scenarios: int = typer.Option(20, "--scenarios", min=1, help="Number of test scenarios."),
    seed: int = typer.Option(1000, "--seed", help="First test seed; scenarios use seeds seed .. seed+N-1."),
    adapt_steps: int = typer.Option(0, "--adapt-steps", min=0, help="For a checkpoint: gradient steps on training scenarios of the regime first."),
    model: str = typer.Option("CLSC-1", "--model", help="The world: CLSC-1 | CLSC-2 (CLSC-2: the peers and PPO checkpoints)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Score a policy against the hindsight oracle on seeded test scenarios."""
    from moca.experiment import build_policy
    from moca.evaluation import evaluate_policy
    from moca.regime import load_schedule
    from moca.scenario import draw_scenarios

    with _bad_input():
        if model not in ("CLSC-1", "CLSC-2"):
            raise UsageError(f"--model {model!r}: expected CLSC-1 or CLSC-2")
        if model == "CLSC-2" and adapt_steps:
            raise UsageError("--adapt-steps: no learned CLSC-2 policy to adapt yet (the peers are tuned or trained)")
    if model == "CLSC-2":
        from moca.baselines.peers import evaluate_peer2

        with _bad_input():
            plan = load_schedule(regime, model="CLSC-2")
            with _progress(as_json) as progress:
                progress.add_task(f"evaluating {policy} on CLSC-2", total=None)
                result = evaluate_peer2(policy, plan, range(seed, seed + scenarios))
        summary = result.summary()
        if as_json:
            _print_json(summary)
            return
        console.print(f"{policy} on CLSC-2 {regime}, {scenarios} scenarios from seed {seed}: score "
                      f"{summary['score']:.4f} (mean cost {summary['mean_cost']:,.0f} EUR, oracle "
                      f"{summary['mean_oracle_cost']:,.0f}), violations {summary['violations']}")
        return
    with _bad_input():
        plan = load_schedule(regime)
        tests = draw_scenarios(scenarios, plan, first_seed=seed)
        with _progress(as_json) as progress:
            task = progress.add_task(f"preparing {policy}", total=None)
            agent = build_policy(policy, plan, adapt_steps=adapt_steps)
            progress.update(task, description=f"evaluating {policy}", total=len(tests), completed=0)
            result = evaluate_policy(policy, agent, tests, progress=lambda n: progress.update(task, completed=n))
    summary = result.summary()
    if as_json:
        _print_json(summary)
        return
    table = Table(title=f"{policy} on {regime}, {scenarios} scenarios from seed {seed}")
    for col in ("mean cost (EUR)", "mean oracle cost", "score", "violations", "latency p50 (µs)", "p99 (µs)"):
        table.add_column(col, justify="right")
    lat = summary["decision_latency_us"]
    table.add_row(f"{summary['mean_cost']:,.0f}", f"{summary['mean_oracle_cost']:,.0f}", f"{summary['score']:.4f}",
                  str(summary["violations"]), f"{lat['p50']:.0f}", f"{lat['p99']:.0f}")
    console.print(table)


# --- learning ------------------------------------------------------------------------------


@app.command()
def train(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint directory to write."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON object of MetaConfig fields."),
    init: Optional[str] = typer.Option(None, "--init", help="maml (second order) | fomaml | reptile (overrides the config)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of task draws and initial weights (overrides the config)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Meta steps (overrides the config)."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", min=0,
                                                help="Stop past this wall time (0: never; overrides the config). "
                                                     "A run cut short by time is not reproducible step for step."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Meta-train a policy initialisation over the regime distribution; write a checkpoint."""
    from moca import checkpoint
    from moca.meta import ALGORITHMS, MetaConfig, meta_train
    from moca.regime import read_structured

    with _bad_input():
        fields: dict[str, Any] = {}
        if config_file is not None:
            data = read_structured(config_file)
            if not isinstance(data, dict):
                raise UsageError(f"--config {config_file}: expected an object of MetaConfig fields")
            fields.update(data)
        if init is not None:
            if init not in ALGORITHMS:
                raise UsageError(f"--init {init!r}: unknown algorithm (valid: {', '.join(ALGORITHMS)})")
            fields["algorithm"] = init
        if seed is not None:
            fields["seed"] = seed
        if steps is not None:
            fields["meta_steps"] = steps
        if max_seconds is not None:
            fields["max_seconds"] = max_seconds or None
        fields.setdefault("validate_every", 25)
        config = MetaConfig(**fields)
        if output.exists() and not output.is_dir():
            raise UsageError(f"-o {output}: exists and is not a directory")
    with _progress(as_json) as progress:
        module, history = meta_train(config, progress=progress)
    validation = history["validation"]
    scores = {"validation_zero_shot_before": validation[0]["score"] if validation else None,
              "validation_zero_shot_after": validation[-1]["score"] if validation else None}
    command = "moca train " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "moca train"
    checkpoint.save_policy(output, module, {
        "algorithm": config.algorithm, "seed": config.seed, "config": config.model_dump(mode="json"),
        "command": command, "scores": scores, "meta_steps_done": len(history["steps"]),
        "stopped_early": history["stopped_early"], "wall_seconds": history["wall_seconds"],
        "validation_curve": validation,
    })
    out = {"checkpoint": str(output), "algorithm": config.algorithm, "seed": config.seed,
           "meta_steps": len(history["steps"]), "wall_seconds": history["wall_seconds"],
           "stopped_early": history["stopped_early"], **scores}
    if as_json:
        _print_json(out)
        return
    console.print(f"wrote {output}: {config.algorithm}, {out['meta_steps']} meta steps in {out['wall_seconds']:.0f} s; "
                  f"validation zero-shot score {scores['validation_zero_shot_before']:.4f} -> "
                  f"{scores['validation_zero_shot_after']:.4f}")


def _unique_labels(tasks: list) -> list:
    """Sequence labels made unique (a regime may come back later in a sequence)."""
    seen: dict[str, int] = {}
    out = []
    for label, regime in tasks:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label} #{seen[label]}", regime))
    return out


@app.command()
def adapt(
    checkpoint_dir: str = typer.Option(..., "--checkpoint", help="Checkpoint directory ('default' = shipped meta-init)."),
    regime: str = typer.Option(..., "--regime", help="Regime name or YAML/JSON file."),
    steps: int = typer.Option(5, "--steps", min=0, help="Gradient steps on support scenarios (seeds 800+)."),
    scenarios: int = typer.Option(16, "--scenarios", min=1, help="Test scenarios scored before and after."),
    seed: int = typer.Option(1000, "--seed", help="First test seed."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the adapted policy as a checkpoint here."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Adapt a policy to a regime in a few gradient steps; score it before and after."""
    from moca import checkpoint
    from moca.meta import OracleCache
    from moca.meta import adapt as adapt_policy
    from moca.regime import load_regime

    with _bad_input():
        target = load_regime(regime)
        module, meta = checkpoint.load_policy(checkpoint_dir)
        if output is not None and output.exists() and not output.is_dir():
            raise UsageError(f"-o {output}: exists and is not a directory")
        cache = OracleCache(module.params)
        tests = cache.scenarios(range(seed, seed + scenarios), target)
        with _progress(as_json) as progress:
            progress.add_task(f"adapting {steps} steps", total=None)
            weights, curve = adapt_policy(module, None, target, steps, validation=tests, cache=cache)
    out = {"score_before": curve[0]["score"], "score_after": curve[-1]["score"], "steps": steps,
           "seconds": curve[-1]["seconds"], "violations": int(sum(c["violations"] for c in curve)),
           "curve": [{"step": c["step"], "score": c["score"], "seconds": c["seconds"], "kept": c["kept"]} for c in curve],
           "regime": target.model_dump(), "test_seeds": [seed, seed + scenarios - 1]}
    if output is not None:
        module.load_state_dict({**module.state_dict(), **weights})
        checkpoint.save_policy(output, module, {"adapted_from": str(checkpoint_dir), "regime": target.model_dump(),
                                                "steps": steps, "scores": {"before": out["score_before"],
                                                                           "after": out["score_after"]}})
        out["checkpoint"] = str(output)
    if as_json:
        _print_json(out)
        return
    console.print(f"{regime}: score {out['score_before']:.4f} -> {out['score_after']:.4f} after {steps} steps "
                  f"({out['seconds']:.2f} s), violations {out['violations']}")


@app.command()
def continual(
    sequence: Path = typer.Option(..., "--sequence", help="YAML/JSON list of regimes (names like T1 or regime objects)."),
    method: str = typer.Option("moca", "--method", help="scratch | finetune | ewc | maml | moca | fomaml | reptile."),
    checkpoint_dir: Optional[str] = typer.Option(None, "--checkpoint", help="Start from this checkpoint (not for scratch)."),
    steps: int = typer.Option(8, "--steps", min=0, help="Gradient steps per regime."),
    scenarios: int = typer.Option(20, "--scenarios", min=1, help="Test scenarios per regime (seeds 1000+)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Learn a sequence of regimes in turn with one method; report the score matrix and forgetting."""
    from moca import checkpoint
    from moca.continual import method_spec
    from moca.experiment import ExperimentConfig, run_continual
    from moca.meta import OracleCache
    from moca.policy import LSTMPolicy
    from moca.regime import load_sequence

    with _bad_input():
        tasks = _unique_labels(load_sequence(sequence))
        spec = method_spec(method)
        init = None
        if checkpoint_dir is not None:
            if spec.init == "fresh":
                raise UsageError("--checkpoint: method 'scratch' trains a fresh policy per regime; it takes no checkpoint")
            module, _ = checkpoint.load_policy(checkpoint_dir)
            init = {k: v.detach().clone() for k, v in module.named_parameters()}
        else:
            from moca.experiment import shipped_policy_config

            module = LSTMPolicy(config=shipped_policy_config())
        config = ExperimentConfig(steps=steps, test_size=scenarios)
        with _progress(as_json) as progress:
            bar = progress.add_task(f"{method}", total=len(tasks))
            result, _ = run_continual(method, module, tasks, OracleCache(module.params), config, init=init,
                                      progress=lambda d: progress.update(bar, description=d, advance=1))
    R = result["R"]
    out = {"method": method, "regimes": [label for label, _ in tasks], "R": R[1:], "R_initial": R[0],
           "average_final_score": result["average_final_score"], "forgetting": result["forgetting"],
           "bwt": result["bwt"], "fwt": result["fwt"], "drop_first_after_second": result["drop_first_after_second"],
           "adaptation_steps": result["adaptation_steps"], "adaptation_seconds": result["adaptation_seconds"],
           "violations": result["violations"], "correction": result["correction"],
           "decision_latency_us": result["decision_latency_us"]}
    if as_json:
        _print_json(out)
        return
    table = Table(title=f"{method}: score after learning each regime (rows) on each regime (columns)")
    table.add_column("after")
    for label, _ in tasks:
        table.add_column(label, justify="right")
    table.add_row("(start)", *(f"{x:.4f}" for x in R[0]))
    for (label, _), row in zip(tasks, R[1:]):
        table.add_row(label, *(f"{x:.4f}" for x in row))
    console.print(table)
    drop = out["drop_first_after_second"]
    console.print(f"average final score {out['average_final_score']:.4f}; "
                  + (f"drop on {tasks[0][0]} after {tasks[1][0]} {100 * drop:.2f}%; " if drop is not None else "")
                  + f"violations {out['violations']}")


@app.command()
def run(
    quick: bool = typer.Option(False, "--quick", help="The small version (fewer scenarios and steps, < 90 s)."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where runs/<id>/ is created."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated subset of the methods."),
) -> None:
    """The seed experiment: T1 -> T2 -> T3 for every method beside threshold, MPC and oracle."""
    from moca.experiment import run_experiment, work_units
    from moca.report import summary_table

    with _bad_input():
        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        if json_file is not None and json_file.is_dir():
            raise UsageError(f"--json {json_file}: is a directory")
        command = "moca run" + (" --quick" if quick else "") + (f" --methods {methods}" if methods else "")
        with _progress(False) as progress:
            bar = progress.add_task("moca run", total=work_units(quick, chosen))  # unknown methods fail here
            metrics, run_dir = run_experiment(quick=quick, methods=chosen, runs_dir=runs_dir, command=command,
                                              progress=lambda d, n: progress.update(bar, description=d, completed=n))
    headers, cells = summary_table(metrics)
    table = Table(title=f"moca run {metrics['id']}: score = oracle cost / policy cost on test scenarios (1.0 = optimal)")
    for h in headers:
        table.add_column(h, justify="left" if h == "policy" else "right")
    for row in cells:
        table.add_row(*row)
    wide = console if console.is_terminal else Console(width=220)  # a log file should get the whole table
    wide.print(table)
    for t in metrics.get("targets", []):
        console.print(f"{'met' if t['met'] else 'MISSED'}: {t['what']} — target {t['target']}, measured {t['measured']}")
    if metrics.get("aliases"):
        console.print("; ".join(f"{a} = {b} (same meta-init checkpoint)" for a, b in metrics["aliases"].items()))
    if json_file is not None:
        _write_atomic(json_file, json.dumps(metrics, indent=1))
    console.print(f"wrote {run_dir}/ (metrics.json, report.md, plots) in {metrics['wall_seconds']:.0f} s")


# --- peers ---------------------------------------------------------------------------------

peers_app = typer.Typer(no_args_is_help=True, help="The peers moca is compared with (PPO training).")
app.add_typer(peers_app, name="peers")


@peers_app.command("train-ppo")
def peers_train_ppo(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint directory to write (safetensors + JSON)."),
    seconds: float = typer.Option(300.0, "--seconds", min=0, help="Wall-clock training budget (s)."),
    seed: int = typer.Option(0, "--seed", help="Seed of PPO and of the training episodes."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after this many env steps too."),
    eval_every: int = typer.Option(20000, "--eval-every", min=1, help="Env steps between learning-curve scores."),
    model: str = typer.Option("CLSC-1", "--model", help="The world: CLSC-1 | CLSC-2."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Train Stable-Baselines3 PPO on the Gymnasium env over the regime distribution; write the
    policy, its learning curve (JSON) and a plot of it."""
    from dataclasses import asdict

    from moca.baselines.ppo import PPOConfig, plot_curve, save_ppo, train_ppo

    with _bad_input():
        if output.exists() and not output.is_dir():
            raise UsageError(f"-o {output}: exists and is not a directory")
        config = PPOConfig(seconds=seconds, seed=seed, max_steps=max_steps, eval_every=eval_every, model=model)
    with _progress(as_json) as progress:
        bar = progress.add_task("PPO", total=None)
        agent, curve = train_ppo(config, progress=lambda steps, score: progress.update(
            bar, description=f"PPO: {steps} steps, validation score {score:.3f}"))
    command = "moca peers " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "moca peers train-ppo"
    save_ppo(output, agent.policy, {"model": config.model, "config": asdict(config), "command": command,
                                    "env_steps": int(agent.num_timesteps), "wall_seconds": curve["wall_seconds"],
                                    "learning_curve": curve})
    _write_atomic(output / "learning_curve.json", json.dumps(curve, indent=1))
    plot_curve(curve, output / "learning_curve.png", title=f"PPO on {config.model}")
    out = {"checkpoint": str(output), "env_steps": int(agent.num_timesteps), "wall_seconds": curve["wall_seconds"],
           "validation_score": curve["score"][-1], "learning_curve": str(output / "learning_curve.json")}
    if as_json:
        _print_json(out)
        return
    console.print(f"wrote {output}: {out['env_steps']} env steps in {out['wall_seconds']:.0f} s, "
                  f"validation score {out['validation_score']:.4f}")


@contextmanager
def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console, disable=quiet or not err_console.is_terminal, transient=True)
    with progress:
        yield progress


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("moca: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
