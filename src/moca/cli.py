"""The ``moca`` command line (typer + rich). ``--json`` prints machine-readable output.

Bad input never shows a traceback: one line on stderr naming the problem, exit code 2,
and nothing written. The model every command works on is described in docs/MODEL.md
(CLSC-1) and docs/MODEL-2.md (CLSC-2).

The command line starts fast because this module imports only typer, click and rich at
the top: numpy, torch, highspy, gymnasium, matplotlib and the rest of moca are imported
inside the commands that need them (``benchmarks/bench_cli.py`` measures the start).
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import typer
from rich.table import Table

from moca.limits import LARGEST_ID, LARGEST_PPO_SEED, LARGEST_SEED, MOST_CANDIDATES, MOST_SCENARIOS, MOST_STEPS, MOST_WORKERS

MODEL_DOCS = "docs/MODEL.md (CLSC-1) and docs/MODEL-2.md (CLSC-2)"
MODELS = ("CLSC-1", "CLSC-2")  # the world models --model accepts (moca.scenario.MODELS, without importing it)

# rich_markup_mode=None: help texts are printed as written (rich markup would eat the
# brackets of '{"actions": [[o, ...]]}'), and --help needs no rich import.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="moca: keep a circular supply chain's control policy optimal while regulation changes. "
                       f"The model (state, actions and their units, costs, regime fields, file formats): "
                       f"{MODEL_DOCS}.")
scenario_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                           help="Create scenarios (the JSON exchange format of docs/MODEL.md, CLSC-2: docs/MODEL-2.md).")
app.add_typer(scenario_app, name="scenario")


class _LazyConsole:
    """A rich Console made on first use (importing rich.console costs start-up time that
    ``moca --help`` does not need). Errors never go through it: see :func:`_fail`."""

    def __init__(self, **options: Any):
        self._options, self._console = options, None

    def real(self):
        """The rich Console itself (for rich objects that need one, e.g. Progress)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


# soft_wrap: a line is never cut at the terminal's (or a log's default 80) width.
# markup/emoji off: moca prints paths, regime names and file labels the user chose, and rich
# would read "[red]" or "[/i]" in them as markup (a wrong path printed, or a MarkupError
# after the work was done) and ":100:" as an emoji; bold is asked for with rich.text.Text.
PLAIN = {"markup": False, "emoji": False}
console = _LazyConsole(soft_wrap=True, **PLAIN)
err_console = _LazyConsole(stderr=True, soft_wrap=True, **PLAIN)
EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad command-line input that no library module raises itself."""


#: The library's bad-input errors, by module: (module, class name).
INPUT_ERRORS: tuple[tuple[str, str], ...] = (
    ("pydantic", "ValidationError"), ("moca.regime", "RegimeError"), ("moca.scenario", "ScenarioError"),
    ("moca.safety", "SafetyError"), ("moca.checkpoint", "CheckpointError"), ("moca.continual", "ContinualError"),
    ("moca.files", "OutputError"), ("moca.meta", "MetaError"), ("moca.policy", "PolicyError"),
    ("moca.experiment", "ExperimentError"), ("moca.metrics", "MetricsError"), ("moca.report", "ReportError"),
    ("moca.baselines.ppo", "PPOError"), ("moca.regime_map", "RegimeMapError"),
    ("moca.oracle", "OracleError"),  # (a chain beyond what HiGHS solves: the user's numbers, named)
)


def _input_errors() -> tuple[type[BaseException], ...]:
    """The error classes of the modules loaded so far: an error of a module not imported
    cannot have been raised, and importing it here (torch, for most) would cost seconds
    on every error."""
    found = [getattr(sys.modules[module], name, None) for module, name in INPUT_ERRORS if module in sys.modules]
    return (UsageError, *(cls for cls in found if cls is not None))


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """One line on stderr, never wrapped (a log or a pipe gets the whole line), and exit."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"moca: error: {text}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


@contextmanager
def _bad_input() -> Iterator[None]:
    try:
        yield
    except OSError as err:  # a path the user gave that cannot be read or written
        where = f"{err.filename}: " if err.filename else ""
        _fail(f"{where}{err.strerror or err}")
    except _input_errors() as err:
        _fail(_message(err))


def _message(err: BaseException) -> str:
    """One line naming the problem; a pydantic error names the field, the value and the rule."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or err.title
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        if first["type"] == "value_error":  # moca's own validators name the field and the value themselves
            from moca.scenario import validation_reason

            return f"{err.title}: {validation_reason(err)}{more}"
        return f"{err.title}: {where}={first.get('input')!r}: {first['msg']}{more}"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, with the user's umask; the folder must exist."""
    from moca.files import check_parent, write_atomic

    write_atomic(check_parent(path), text)


def _output_file(path: Optional[Path], option: str,
                 ours: Optional[tuple[str, Callable[[Path], bool]]] = None) -> None:
    """A file to write: not a directory, its folder existing (checked before the command's
    work, not after it). ``ours``: (what the option writes, a test of the file there): a
    file already there is replaced only where it is empty or passes the test; another
    command's results or a file of the user's under that name was replaced without a word."""
    from moca.files import check_parent, output_target

    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    check_parent(path, option)
    target, stream = output_target(path)
    if ours is None or stream or not target.is_file():
        return
    what, test = ours
    try:
        with open(target, "rb") as file:  # (read through only while it is all blank)
            blank = all(not chunk.strip() for chunk in iter(lambda: file.read(1 << 16), b""))
        if not blank and not test(target):
            link = f" (a link to {target})" if target != path else ""
            raise UsageError(f"{option} {path}: exists{link} and is not {what}, the only file moca replaces there "
                             "(give another name, or move the file aside)")
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot be read ({err.strerror}), so moca cannot tell what it would "
                         "replace; give another name") from None


def _figure_file(suffix: str) -> tuple[str, Callable[[Path], bool]]:
    """``ours`` of :func:`_output_file` for a figure: one moca drew, in that format (moca's
    name in its metadata: a user's own image of the format was replaced)."""
    from moca.files import drawn_by_moca

    # (judged by the format of the file itself: through a link, the target's, in which
    # _write_plot draws; ``suffix`` is the target's too)
    kind = suffix[1:].upper()
    return f"{'an' if kind == 'SVG' else 'a'} {kind} figure moca drew", drawn_by_moca


def _json_file(what: str, keys: tuple[str, ...], worlds: bool = False) -> tuple[str, Callable[[Path], bool]]:
    """``ours`` of :func:`_output_file` for a JSON result: an object with ``keys`` (or, with
    ``worlds``, one holding such objects, or errors, under world names)."""
    def test(path: Path) -> bool:
        try:
            data = json.loads(path.read_bytes())
        except ValueError:
            return False
        one = lambda d: isinstance(d, dict) and all(k in d for k in keys)  # noqa: E731
        return one(data) or (worlds and isinstance(data, dict) and bool(data) and all(
            w in ("CLSC-1", "CLSC-2") and (one(v) or (isinstance(v, dict) and "error" in v)) for w, v in data.items()))
    return what, test


def _plot_path(path: Optional[Path], option: str = "--plot") -> None:
    """A figure file to write (:func:`_output_file`): .png, .pdf or .svg."""
    if path is not None and path.suffix.lower() not in (".png", ".pdf", ".svg"):
        _output_file(path, option)
        raise UsageError(f"{option} {path}: expected a .png, .pdf or .svg file name")
    if path is None:
        return
    from moca.files import output_target

    # (through a link, named in its target's format, in which it is judged and drawn: a link
    # to a .txt was drawn as 'txt', an internal error after the work)
    target = output_target(path)[0]
    if target.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UsageError(f"{option} {path}: a link to {target}, not a .png, .pdf or .svg file")
    _output_file(path, option, _figure_file(target.suffix))


def _write_plot(path: Path, draw: Callable[[str], Any]) -> None:
    """``draw(file)`` into a temporary file beside ``path``, then renamed: an interrupted
    drawing leaves no half-written figure under the user's name."""
    from moca.files import output_target

    path, stream = output_target(path)  # (through a link to its target; a device or FIFO as it is)
    if stream:
        draw(str(path))
        return
    from moca.files import replace_with

    # (a temporary name of its own: a fixed one was shared by two commands drawing the same
    # figure, one renaming the other's half-written file into place)
    replace_with(path, draw, suffix=f".tmp{path.suffix}")


def _output_dir(path: Optional[Path], option: str = "-o") -> None:
    """A checkpoint folder to write: new, empty or a checkpoint's (it is replaced); its parent must exist."""
    from moca.checkpoint import check_replaceable
    from moca.files import check_parent

    if path is None:
        return
    check_replaceable(path, f"{option} {path}")
    check_parent(path, option)


def _load_params(path: Optional[Path], model: str = "CLSC-1"):
    """``--params FILE``: a JSON/YAML object of the model's parameters, or a scenario file (its params)."""
    from moca.scenario import Params, Params2, load_params

    kind = Params2 if model == "CLSC-2" else Params
    return kind() if path is None else load_params(path, kind)


def _print_json(data: Any) -> None:
    from moca.files import write_stdout

    write_stdout(json.dumps(data, indent=1) + "\n")


def _version(value: bool) -> None:
    if value:
        from moca import __version__

        sys.stdout.write(f"moca {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """moca: keep a circular supply chain's control policy optimal while regulation changes."""


PARAMS_HELP = ("JSON/YAML object of model parameters to override (names and units: docs/MODEL.md; CLSC-2: "
               "docs/MODEL-2.md), or a scenario file whose params to use.")

# --- scenarios ---------------------------------------------------------------------------


@scenario_app.command("new")
def scenario_new(
    regime: str = typer.Option("T1", "--regime", help="Regime name (T1, T2, T3, eu-ets-2025, ...; see 'moca regimes') "
                                                     "or YAML/JSON file (a schedule file works too, as for evaluate)."),
    seed: int = typer.Option(..., "--seed", min=0, max=LARGEST_SEED, help="Seed of the demand and return draws (>= 0)."),
    schedule: Optional[Path] = typer.Option(None, "--schedule", help="YAML/JSON list of regimes with 'start' (overrides --regime)."),
    output: Path = typer.Option(..., "-o", "--output", help="Scenario JSON to write (its folder must exist; an older "
                                                                  "scenario there is replaced, any other file kept)."),
    params_file: Optional[Path] = typer.Option(None, "--params", help=PARAMS_HELP),
    model: str = typer.Option("CLSC-1", "--model", help="World model: CLSC-1 (docs/MODEL.md), or CLSC-2 "
                                                        "(docs/MODEL-2.md; T1-T3 settle yearly)."),
) -> None:
    """Draw a seeded scenario and write it in the JSON format of docs/MODEL.md (CLSC-2: docs/MODEL-2.md)."""
    from moca.files import check_parent
    from moca.regime import check_clsc1_windows, load_schedule
    from moca.scenario import draw_scenario, draw_scenario2

    with _bad_input():
        check_parent(output)
        _scenario_replaceable(output)
        clsc2 = _chosen_model(model) == "CLSC-2"
        plan = load_schedule(schedule if schedule else regime, model)
        if not clsc2:
            check_clsc1_windows(plan, schedule if schedule else regime)
        params = _load_params(params_file, model)
        _warn_if_beyond_horizon(plan, params.horizon)
        scenario = (draw_scenario2 if clsc2 else draw_scenario)(seed, plan, params)
        _write_atomic(output, scenario.to_json())
    err_console.print(f"wrote {output} ({scenario.horizon} periods, {len(plan.entries)} regime(s))")


def _scenario_replaceable(output: Path) -> None:
    """A scenario to write over ``output``: new, empty, or an older scenario file (replaced). Any
    other file is refused: ``-o params.json`` replaced the user's parameters without a word,
    and a folder was named by the temporary file written beside it."""
    from moca.files import output_target
    from moca.scenario import ScenarioError, load_scenario

    target, stream = output_target(output)
    if stream or not target.exists():  # (a device or a FIFO is written to, as a stream)
        return
    if target.is_dir():
        raise UsageError(f"-o {output}: is a folder; give the scenario file's name")
    if target.stat().st_size == 0:
        return
    try:
        load_scenario(target)
    except (ScenarioError, OSError):
        raise UsageError(f"-o {output}: exists and is not a moca scenario file; a new scenario replaces only an "
                         "older scenario, so give another name (or remove the file)") from None


def _chosen_model(model: str) -> str:
    """``--model``'s value, checked."""
    if model not in MODELS:
        raise UsageError(f"--model={model!r}: expected one of {', '.join(MODELS)}")
    return model


@app.command()
def regimes(as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
            model: str = typer.Option("CLSC-1", "--model", help="CLSC-1, or CLSC-2 (adds the accounting window)."),
            ) -> None:
    """List the named regimes (the seed's tasks and presets from real rules) with units and sources.

    --json keeps its shape (name -> the rule fields); units and sources are in
    docs/MODEL.md and the README.
    """
    from moca.regime import ALL_REGIME_FIELDS, REGIME_FIELDS, REGIME_SOURCES, REGIME_UNITS, named_regimes

    with _bad_input():
        fields = ALL_REGIME_FIELDS if _chosen_model(model) == "CLSC-2" else REGIME_FIELDS
    rows = {name: {f: getattr(r, f) for f in fields} for name, r in named_regimes(model).items()}
    if as_json:
        _print_json(rows)
        return
    table = Table(title="Named regimes" + (" (CLSC-2)" if model == "CLSC-2" else "") + " (-: no such rule)",
                  caption=f"fields: {MODEL_DOCS}")
    table.add_column("name")
    for f in fields:
        table.add_column(f"{f}\n({REGIME_UNITS[f]})", justify="right")
    table.add_column("source")
    for name, r in rows.items():
        table.add_row(name, *("-" if r[f] is None or (r[f] == 0 and f != "emission_cap") else f"{r[f]:g}"
                              for f in fields), REGIME_SOURCES.get(name, ""))
    wide = console if console.is_terminal else _wide_console()
    wide.print(table)


# --- simulate / oracle ---------------------------------------------------------------------


def _wide_console():
    """A console for tables going to a file or pipe: no wrapping at 80 columns."""
    from rich.console import Console

    return Console(width=220, **PLAIN)


def simulate_actions(scenario, actions) -> dict[str, Any]:
    """Run raw actions ``[T, 6]`` through the safety layer and simulator in float64.

    Each period reports the raw action as given, the executed (projected) action, the
    correction (how far the safety layer moved it, capacity-normalised), the cost and its terms (EUR), the
    end-of-period state, sales and emissions (kg CO2)."""
    import torch

    from moca import safety
    from moca.sim import COST_TERMS, STATE_NAMES, OpenLoop, ScenarioBatch, rollout

    batch = ScenarioBatch.from_scenarios([scenario], dtype=torch.float64)
    with torch.no_grad():
        result = rollout(batch, OpenLoop(torch.as_tensor(actions[None], dtype=torch.float64)), safety.project_batch)
    executed = result.executed[0].numpy()
    # How far the safety layer moved each period's action, in capacity units (as scores report it).
    correction = ((result.executed[0] - result.raw[0]) / result.scale).norm(dim=-1).numpy()
    violations = safety.episode_violations(result.executed, result.available, batch.regime, scenario.params)
    periods = []
    for t in range(scenario.horizon):
        periods.append({
            "t": t,
            "action": [float(x) for x in executed[t]],
            "raw_action": [float(x) for x in actions[t]],
            "correction": float(correction[t]),
            "cost": float(result.cost[0, t]),
            "terms": {name: float(result.terms[name][0, t]) for name in COST_TERMS},
            "state": {name: float(result.stocks[0, t, i]) for i, name in enumerate(STATE_NAMES)},
            "sales": float(result.sales[0, t]),
            "emissions": float(result.emissions[0, t]),
        })
    corrected = sum(1 for p in periods if p["correction"] > 1e-9)
    return {"total_cost": float(result.total_cost[0]), "violations": violations, "corrected_periods": corrected,
            "terms": {name: float(result.terms[name][0].sum()) for name in COST_TERMS}, "periods": periods}


@app.command()
def simulate(
    scenario_path: Path = typer.Option(..., "--scenario", help="Scenario JSON."),
    actions_path: Path = typer.Option(..., "--actions", help='Action JSON {"actions": [[o, u_v, u_r, g, f, w], ...]}, '
                                                             "one row per period: order (kg virgin), use virgin (kg), "
                                                             "use recycled (kg), disassemble (cores), refurbish (cores), "
                                                             "dispose (cores); see docs/MODEL.md. CLSC-2: nine per row, "
                                                             "docs/MODEL-2.md. 'moca oracle --json' output works too "
                                                             "(its plan)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output: per period 'raw_action', 'action' "
                                                        "(executed), 'correction' (distance moved, in capacities), 'cost', 'terms' "
                                                        "(EUR per cost term), 'state', 'sales', 'emissions'."),
    plot_file: Optional[Path] = typer.Option(None, "--plot", help="Draw the episode period by period (demand and "
                                             "sales, the executed decisions, the stocks) to this file (PNG/PDF/SVG)."),
) -> None:
    """Execute raw actions through the safety layer; report raw and executed actions, the
    correction, cost terms, states and violations per period."""
    from moca.scenario import Scenario2, load_actions, load_scenario

    with _bad_input():
        _plot_path(plot_file)
        scenario = load_scenario(scenario_path)  # the file's "model" chooses the world
        _warn_if_beyond_horizon(scenario.schedule, scenario.horizon)
        if isinstance(scenario, Scenario2):
            return _simulate2(scenario, scenario_path, actions_path, as_json, plot_file)
        actions = load_actions(actions_path, scenario.horizon)
        out = simulate_actions(scenario, actions)
    _plot_episode(plot_file, scenario, out, f"{scenario_path.name}: the actions of {actions_path.name} as executed, "
                                            f"total cost {out['total_cost']:,.0f} EUR, violations {out['violations']}")
    if as_json:
        _print_json(out)
        return
    _simulate_table(out, f"{scenario_path.name}: ", ("o", "u_v", "u_r", "g", "f", "w"), ("V", "M", "P", "C", "B"),
                    "o, u_v, u_r in kg, g, f, w in cores; stocks V, M kg, P, C, B units; cost in EUR")
    _say_wrote(plot_file)


def _whole(value: float, grouping: str = "") -> str:
    """A whole number (``grouping`` "," for thousands); up to half a unit either way is 0
    (round-off printed "-0" in tables)."""
    return f"{value:{grouping}.0f}" if abs(value) > 0.5 else "0"


def _eur(amount: float) -> str:
    """Whole euros, thousands grouped (:func:`_whole`)."""
    return _whole(amount, ",")


def _simulate_table(out: dict, title: str, actions: tuple[str, ...], states: tuple[str, ...], units: str,
                    lost: bool = False) -> None:
    """``moca simulate``'s table, either world: each period's executed action (``raw->executed``
    where the safety layer changed it), end-of-period stocks, sales, cost and its largest terms."""
    table = Table(title=f"{title}total cost {out['total_cost']:,.0f} EUR, violations {out['violations']} (after the "
                        f"safety layer), {out['corrected_periods']} of {len(out['periods'])} periods corrected",
                  caption=f"executed action (raw -> executed where the safety layer changed it); {units}")
    for col in ("t", *actions, *states, "sales", *(("lost",) if lost else ()), "cost", "main cost terms"):
        table.add_column(col, justify="right")

    def cell(raw: float, executed: float) -> str:
        return _whole(executed) if abs(executed - raw) <= 1e-6 else f"{_whole(raw)}->{_whole(executed)}"

    for p in out["periods"]:
        top = sorted(p["terms"].items(), key=lambda kv: -kv[1])[:2]
        table.add_row(str(p["t"]), *(cell(r, a) for r, a in zip(p["raw_action"], p["action"])),
                      *(_whole(v) for v in p["state"].values()), f"{p['sales']:.0f}",
                      *((f"{p['lost']:.0f}",) if lost else ()), f"{p['cost']:,.0f}",
                      ", ".join(f"{k} {v:,.0f}" for k, v in top if v > 0))
    wide = console if console.is_terminal else _wide_console()
    wide.print(table)
    console.print("total by term (EUR): " + ", ".join(f"{k} {v:,.0f}" for k, v in out["terms"].items() if v))


def _say_wrote(path: Optional[Path]) -> None:
    if path is not None:
        console.print(f"wrote {path}")


def _plot_episode(path: Optional[Path], scenario: Any, out: dict[str, Any], title: str) -> None:
    """``--plot`` of moca simulate and moca oracle: ``out``'s periods (simulate's records) in
    the world's own action and stock units."""
    if path is None:
        return
    from moca.report import plot_episode

    names, units, state_units = _world_units(scenario)
    changes = [c for c in scenario.schedule.change_periods() if c < scenario.horizon]  # (later ones never apply)
    _write_plot(path, lambda where: plot_episode(out["periods"], scenario.demand, names, units, state_units, where,
                                                 title, changes))


def _world_units(scenario: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The scenario's world's action names, their units and its stocks' units."""
    from moca.scenario import Scenario2

    if isinstance(scenario, Scenario2):
        from moca import clsc2 as world
    else:
        from moca import sim as world
    return world.ACTION_NAMES, world.ACTION_UNITS, world.STATE_UNITS


def _simulate2(scenario, scenario_path: Path, actions_path: Path, as_json: bool,
               plot_file: Optional[Path] = None) -> None:
    """``moca simulate`` on a CLSC-2 scenario: rows of nine raw actions."""
    from moca.clsc2 import ACTION_SYMBOLS, STATE_NAMES
    from moca.scenario import load_actions
    from moca.sim2 import simulate_actions2

    out = simulate_actions2(scenario, load_actions(actions_path, scenario.horizon, ACTION_SYMBOLS))
    _plot_episode(plot_file, scenario, out, f"{scenario_path.name} (CLSC-2): the actions of {actions_path.name} as "
                                            f"executed, total cost {out['total_cost']:,.0f} EUR, violations "
                                            f"{out['violations']}")
    if as_json:
        _print_json(out)
        return
    _simulate_table(out, f"{scenario_path.name} (CLSC-2): ", ACTION_SYMBOLS, STATE_NAMES,
                    "o, o_m, u_v, u_r in kg, f, g_A, g_B, w_A, w_B in cores; stocks V, M kg, P, CA, CB units; cost in "
                    "EUR", lost=True)
    _say_wrote(plot_file)


@app.command()
def oracle(
    scenario_path: Path = typer.Option(..., "--scenario", help="Scenario JSON."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    plot_file: Optional[Path] = typer.Option(None, "--plot", help="Draw the hindsight plan period by period, replayed "
                                             "through the safety layer and the simulator as moca simulate would "
                                             "(PNG/PDF/SVG)."),
    exact_sales: bool = typer.Option(False, "--exact-sales", help="Sell all that can be sold every period, as the "
                                     "simulator does (a MIP, seconds), where the spec's LP may sell less: the best "
                                     "cost a policy can reach when the LP withholds sales (docs/MODEL-2.md)."),
) -> None:
    """The hindsight LP (HiGHS): the best cost any policy could reach on the scenario (docs/MODEL.md)."""
    from moca.oracle import solve_oracle
    from moca.scenario import Scenario2, load_scenario

    with _bad_input():
        _plot_path(plot_file)
        scenario = load_scenario(scenario_path)  # the file's "model" chooses the world
        _warn_if_beyond_horizon(scenario.schedule, scenario.horizon)
        if isinstance(scenario, Scenario2):
            from moca.oracle2 import solve_oracle2

            result = solve_oracle2(scenario, exact_sales=exact_sales)
        else:
            result = solve_oracle(scenario, exact_sales=exact_sales)
    from moca.evaluation import withheld_units

    withheld = withheld_units(result)
    if withheld:
        _warn(f"the plan sells {_units(withheld)} less than it could (the spec's LP may; the simulator sells all it "
              "can): its cost is a bound no policy reaches, and replaying it costs more; --exact-sales gives the best "
              "cost a policy can reach")
    out = {"oracle_cost": result.oracle_cost, "status": result.status,
           "plan": [[float(x) + 0.0 for x in row] for row in result.plan]}  # (+ 0.0: no "-0.0" in the file)
    if plot_file is not None:
        import numpy as np

        if isinstance(scenario, Scenario2):
            from moca.sim2 import simulate_actions2 as replay
        else:
            replay = simulate_actions
        replayed = replay(scenario, np.asarray(result.plan, dtype=np.float64))
        _plot_episode(plot_file, scenario, replayed,
                      f"{scenario_path.name}: the hindsight plan (HiGHS, cost {result.oracle_cost:,.0f} EUR) replayed "
                      f"through the safety layer and the simulator (cost {replayed['total_cost']:,.0f} EUR)")
    if as_json:
        _print_json(out)
        return
    from rich.text import Text

    kind = "oracle cost, every sale made (--exact-sales, a MIP) " if exact_sales else "oracle cost "
    console.print(Text.assemble(kind, (f"{result.oracle_cost:,.2f}", "bold"), f" EUR (status {result.status})"))
    console.print(_plan_totals(scenario, result.plan), highlight=False, soft_wrap=True)
    _say_wrote(plot_file)


def _plan_totals(scenario: Any, plan: Any) -> str:
    """One line: each decision of the plan summed over the horizon in its unit, and the
    recycled share of the material put into production."""
    import numpy as np

    names, units, _ = _world_units(scenario)
    totals = np.asarray(plan, dtype=float).sum(axis=0)
    parts = [f"{name} {total:,.0f} {unit}" for name, unit, total in zip(names, units, totals)]
    used = dict(zip(names, totals))
    material = used["use_virgin"] + used["use_recycled"]
    share = f"; recycled share of material {100 * used['use_recycled'] / material:.1f}%" if material > 0 else ""
    return f"plan over {len(plan)} periods: " + ", ".join(parts) + share


# --- evaluate ------------------------------------------------------------------------------


@app.command()
def evaluate(
    policy: str = typer.Option(..., "--policy", help="threshold | mpc | oracle | mpc-informed | mpc-forecast | "
                                                     "mpc-sampled | ppo | a checkpoint DIR ('default' = shipped "
                                                     "meta-init, 'default-reptile')."),
    regime: str = typer.Option("T1", "--regime", help="Regime name (see 'moca regimes') or YAML/JSON file (a schedule "
                                                     "file works too)."),
    scenarios: int = typer.Option(20, "--scenarios", min=1, max=MOST_SCENARIOS, help="Number of test scenarios."),
    seed: int = typer.Option(1000, "--seed", min=0, max=LARGEST_SEED, help="First test seed; scenarios use seeds seed .. seed+N-1."),
    adapt_steps: int = typer.Option(0, "--adapt-steps", min=0, max=MOST_STEPS,
                                    help="For a checkpoint: gradient steps on training scenarios of the regime first "
                                         "(CLSC-2: on a plan whose rules change, after re-tuning the base rule, as "
                                         "moca adapt does by default)."),
    base: str = typer.Option("auto", "--base", help="With --adapt-steps: auto = adapt the checkpoint, "
                                                    "the mapped policy and the LSTM over the rolling LP (CLSC-2: "
                                                    "the checkpoint and the sampled MPC), keep the "
                                                    "best on validation scenarios (seeds 900+); default = the "
                                                    "checkpoint only; map = the mapped policy only (CLSC-1); mpc = "
                                                    "the LSTM over the LP only (CLSC-2: the sampled MPC)."),
    retune: Optional[int] = typer.Option(None, "--retune", min=0, max=MOST_CANDIDATES,
                                         help="CLSC-2, with --adapt-steps: first re-tune the base rule's thresholds "
                                              "with this many candidates, as moca adapt --retune (0: off; default: "
                                              "1500 on a plan whose rules change, 0 on a regime held all year)."),
    params_file: Optional[Path] = typer.Option(None, "--params", help=PARAMS_HELP),
    scenario_files: Optional[list[Path]] = typer.Option(None, "--scenario", help="Score on this scenario file instead "
                                                        "of drawing (repeat for several of one chain and one regime "
                                                        "plan; overrides --regime, --params, "
                                                        "--scenarios and --seed; a CLSC-2 file's \"model\" chooses "
                                                        "CLSC-2)."),
    model: Optional[str] = typer.Option(None, "--model", help="The world: CLSC-1 (default) | CLSC-2 (docs/MODEL-2.md); "
                                                              "with --scenario, the files' \"model\"."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Score a policy against the hindsight oracle on seeded test scenarios (or your own scenario files).

    Under one regime, also says whether the rule itself leaves demand unmet: the hindsight
    optimum on the same scenarios with and without the rule (backlog, cost) and the rule's
    shadow price from the LP duals ("rule_impact" in --json).
    """
    from moca.regime import Regime, check_clsc1_windows, load_schedule
    from moca.scenario import draw_scenarios

    with _bad_input():
        if model is not None:
            _chosen_model(model)
        if not scenario_files:
            _seeds_within_range(seed, scenarios)
        files = None
        if scenario_files:
            from moca.chain2 import load_scenario_files

            model, files = load_scenario_files(scenario_files, model)  # the files' "model" chooses the world
        model = model or "CLSC-1"
        # (read before the policy's check imports torch: a misspelt name is answered at once)
        plan = files[0].schedule if scenario_files else load_schedule(regime, model=model)
        if model == "CLSC-1" and not scenario_files:
            check_clsc1_windows(plan, regime)
        learned = _is_learned_policy(policy)
        if learned and not scenario_files:
            _warn_if_not_held_out(seed, scenarios)
        learned2 = model == "CLSC-2" and learned
        # (CLSC-1 ignored a peer's or PPO's steps without a word; a name that is nothing, its
        # build_policy names, where CLSC-2's said "only for a learned checkpoint" of a typo)
        if adapt_steps and (not learned2 if model == "CLSC-2" else _no_steps_to_take(policy)):
            if not _names_something(policy):
                raise UsageError(f"--policy {policy!r}: no checkpoint directory of that name (--adapt-steps "
                                 "takes a learned policy checkpoint: DIR or default)")
            raise UsageError(f"--adapt-steps: only for a learned policy checkpoint (DIR or default), not {policy!r}")
        if retune is not None:
            _retune_choice(retune, base, model, adapt=learned2 and adapt_steps > 0)
    if model == "CLSC-2":
        return _evaluate2(policy, regime, plan, scenarios, seed, adapt_steps, params_file, scenario_files, files,
                          learned2, as_json, base, retune)
    with _bad_input():
        if scenario_files:
            tests, params = files, files[0].params
            regime = ", ".join(p.name for p in scenario_files)
        else:
            params = _load_params(params_file)
            tests = draw_scenarios(scenarios, plan, params, first_seed=seed)
        _warn_if_beyond_horizon(plan, tests[0].horizon)
        from moca.evaluation import evaluate_policy  # (torch: only once the input is known good)
        from moca.experiment import DeployedPolicy, build_policy

        with _progress(as_json) as progress:
            task = progress.add_task(f"preparing {policy}", total=None)
            agent = build_policy(policy, plan, adapt_steps=adapt_steps, params=params, base=_base_choice(base),
                                 progress=_phase_bars(progress))
            if isinstance(agent, DeployedPolicy):  # a learned checkpoint
                _warn_if_trained_on_other_params(policy, params, adapting=adapt_steps > 0)
            else:
                _warn_if_off_its_chain(policy, params)
            progress.update(task, description=f"evaluating {policy}", total=len(tests), completed=0)
            result = evaluate_policy(policy, agent, tests, progress=lambda n: progress.update(task, completed=n))
    summary = {"model": "CLSC-1", **result.summary()}  # (the same keys as CLSC-2's, where both have them)
    if scenario_files:
        summary["scenario_files"] = [str(p) for p in scenario_files]
    else:
        summary["test_seeds"] = [seed, seed + scenarios - 1]
    if getattr(agent, "portfolio", None) is not None:  # CLSC-1 --adapt-steps with --base auto|map|mpc
        summary["portfolio"] = agent.portfolio
    impact = None
    if len(plan.entries) == 1 and plan.entries[0].regime() != Regime() and all(t.schedule == plan for t in tests):
        # Does the rule itself leave demand unmet? The oracle with and without it, same scenarios.
        from moca.impact import rule_impact

        with _bad_input():
            impact = rule_impact(plan.entries[0].regime(), tests)
    summary["rule_impact"] = impact
    _say_withheld(summary, tests, [str(p) for p in scenario_files] if scenario_files else
                  [f"seed {s}" for s in range(seed, seed + len(tests))])
    if as_json:
        _print_json(summary)
        return
    from moca.regime import regime_label

    label = regime_label(regime)  # (once: a regime file's label is read from the file)
    source = label + ("" if scenario_files else f", {_count(scenarios, 'scenario')} from seed {seed}")
    table = Table(title=f"{policy} on {source}")
    for col in ("mean cost (EUR)", "mean oracle cost", "score", "violations", "latency p50 (µs)", "p99 (µs)"):
        table.add_column(col, justify="right")
    lat = summary["decision_latency_us"]
    table.add_row(f"{summary['mean_cost']:,.0f}", f"{summary['mean_oracle_cost']:,.0f}", f"{summary['score']:.4f}",
                  str(summary["violations"]), f"{lat['p50']:.0f}", f"{lat['p99']:.0f}")
    console.print(table)
    if "portfolio" in summary:
        scores = ", ".join(f"{n} {c['validation_score']:.4f}" for n, c in summary["portfolio"]["candidates"].items())
        console.print(f"adapted with --base {base}: deployed {summary['portfolio']['chosen']} "
                      f"(validation scores: {scores})")
    if impact is not None:
        from moca.impact import describe

        console.print(describe(label, impact), highlight=False, soft_wrap=True)


def _evaluate2(policy: str, regime: str, plan: Any, scenarios: int, seed: int, adapt_steps: int,
               params_file: Optional[Path], scenario_files: Optional[list[Path]], files: Optional[list],
               learned2: bool, as_json: bool, base: str = "auto", retune: Optional[int] = None) -> None:
    """``moca evaluate`` on CLSC-2: drawn scenarios (on --params' chain) or the --scenario files;
    a learned policy with --adapt-steps through moca adapt's portfolio of --base; ``plan``: the
    regime plan, as evaluate read it."""
    from moca.baselines.peers import evaluate_peer2
    from moca.regime import regime_label

    with _bad_input():
        _base_choice(base, model="CLSC-2")
        if files:
            tests = files
        else:
            params = _load_params(params_file, "CLSC-2")
        horizon = files[0].horizon if files else params.horizon
        _warn_if_beyond_horizon(plan, horizon)
        # --adapt-steps adapts as moca adapt does, by default re-tuning first on a plan whose rules change
        from moca.meta2 import default_retune

        retune_given = retune is not None
        if retune is None:
            retune = default_retune(plan, horizon, base) if learned2 and adapt_steps else 0
        with _progress(as_json) as progress:
            progress.add_task(f"evaluating {policy} on CLSC-2"
                              + (f" (re-tuning the rule first, {retune} candidates)" if retune else ""), total=None)
            if learned2:
                # (on --params' chain, the default one without it, as on CLSC-1: a checkpoint trained on
                # another chain was scored on its own without a word, and the oracle's withheld sales
                # were reported from the default chain's scenarios it was not scored on)
                from moca.chain2 import evaluate_learned_on2
                from moca.meta2 import OracleCache2

                if not files:
                    tests = OracleCache2(params).scenarios(range(seed, seed + scenarios), plan)
                summary = evaluate_learned_on2(policy, tests, plan, adapt_steps, warn=_warn, base=base, retune=retune,
                                               progress=_phase_bars(progress))
            elif files:
                _warn_if_off_its_chain(policy, files[0].params)
                summary = evaluate_peer2(policy, plan, None, scenarios=tests, progress=_phase_bars(progress)).summary()
            else:
                _warn_if_off_its_chain(policy, params)
                summary = evaluate_peer2(policy, plan, range(seed, seed + scenarios), params,
                                         progress=_phase_bars(progress)).summary()
        summary.setdefault("model", "CLSC-2")  # (the peers' summaries did not say; the learned policy's did)
        # (the learned policy's lacked these two keys the peers' and CLSC-1's have)
        summary.setdefault("scenarios", len(files) if files else scenarios)
        summary.setdefault("decision_latency_us", {"p50": None, "p99": None})
        if not files:
            summary.setdefault("test_seeds", [seed, seed + scenarios - 1])
        else:
            summary["scenario_files"] = [str(p) for p in scenario_files]
        if learned2 and adapt_steps:
            summary["retune_given"] = retune_given
        from moca.meta2 import OracleCache2

        labels = [str(p) for p in scenario_files] if files else [f"seed {s}" for s in range(seed, seed + scenarios)]
        _say_withheld(summary, tests if files or learned2 else OracleCache2(params).scenarios(
            range(seed, seed + scenarios), plan), labels)
    if as_json:
        _print_json(summary)
        return
    source = (", ".join(p.name for p in scenario_files) if files
              else f"{regime_label(regime, 'CLSC-2')}, {_count(scenarios, 'scenario')} from seed {seed}"
              + (f" on {params_file}" if params_file else ""))
    console.print(f"{policy}" + (f" after {adapt_steps} adaptation steps" if adapt_steps else "")
                  + f" on CLSC-2 {source}: score "
                  f"{summary['score']:.4f} (mean cost {summary['mean_cost']:,.0f} EUR, oracle "
                  f"{summary['mean_oracle_cost']:,.0f}), violations {summary['violations']}")
    start = summary.get("portfolio", {}).get("candidates", {}).get("default", {}).get("start")
    if start is not None:
        _print_retuned_start(summary["retune"], retune_given, start)
    if "portfolio" in summary:
        scores = ", ".join(f"{n} {c['validation_score']:.4f}" for n, c in summary["portfolio"]["candidates"].items())
        console.print(f"adapted with --base {base}: deployed {summary['portfolio']['chosen']} "
                      f"(validation scores: {scores})")


def _say_rule_impact(summary: dict[str, Any], label: str, regime: Any, scenarios: Sequence[Any]) -> None:
    """CLSC-1: add to ``summary`` what the rule does to demand (``rule_impact``, as
    ``moca evaluate`` gives it; None for no rule) and warn where the rule itself leaves
    demand unmet, so that a score near 1 is not read as customers served (``moca adapt``
    said 0.97 under a cap where even the optimum leaves 95% of demand unserved)."""
    from moca.regime import Regime

    summary["rule_impact"] = None
    if regime == Regime():
        return
    from moca.impact import describe, rule_impact

    try:  # (advice after the work: a failure here must not cost its results)
        summary["rule_impact"] = rule_impact(regime, scenarios)
    except (ValueError, RuntimeError) as err:
        _warn(f"{label}: what the rule does to demand could not be told ({err})")
        return
    if summary["rule_impact"]["demand_unmet_by_rule"]:
        _warn(describe(label, summary["rule_impact"]))


def _say_withheld(summary: dict[str, Any], scenarios: Sequence[Any], labels: Sequence[str], where: str = "") -> None:
    """Add to ``summary`` where the hindsight LP withholds sales, and warn when it does,
    naming those scenarios (``labels``: their seeds or files) and how to bound one exactly;
    ``where``: the regime of a sequence they are drawn under (its label)."""
    from moca.evaluation import withheld_sales

    summary["oracle_withheld_sales"] = None
    try:  # (advice after the work: a failure here must not cost its results)
        held, units, which = withheld_sales(scenarios)
    except (ValueError, RuntimeError) as err:
        _warn((f"{where}: " if where else "") + f"where the hindsight LP withholds sales could not be told ({err})")
        return
    summary["oracle_withheld_sales"] = {"scenarios": held, "units": units}
    if held:
        named = ", ".join(labels[i] for i in which[:5]) + (" and more" if held > 5 else "")
        first = labels[which[0]]
        regime = f"{where!r}'s regime as --regime" if where else "this command's --regime"
        how = (f"moca scenario new --seed {first.removeprefix('seed ')} -o s.json (with {regime}, "
               "--params and --model), then moca oracle --scenario s.json --exact-sales" if first.startswith("seed ")
               else f"moca oracle --scenario {first} --exact-sales")
        _warn((f"{where}: " if where else "") +
              f"the hindsight LP sells {_units(units)} less than it could on {held} of {len(scenarios)} scenarios "
              f"({named}; the spec's LP may, the simulator sells all it can): its cost is a bound no policy reaches "
              f"there, so its scores read low; for the bound a policy can reach: {how}")


def _units(units: float) -> str:
    """A count of units withheld as a warning says it: whole units, or two digits below one
    (0.5 was "sells 0 units less", a warning of nothing)."""
    text = f"{units:.2g}" if units < 1 else f"{units:,.0f}"
    return f"{text} unit" if text == "1" else f"{text} units"


def _print_retuned_start(retune: int, given: bool, start: dict[str, Any]) -> None:
    """Say that the rule was re-tuned first, why (unless asked for), and which start won."""
    why = "" if given else " (the default on a plan whose rules change; --retune 0: off)"
    console.print(f"--retune {retune}{why}: the steps started from the {start['chosen']} (validation scores: "
                  + ", ".join(f"{n} {v:.4f}" for n, v in start["validation_scores"].items()) + ")")


def _warn_if_not_held_out(first: int, count: int) -> None:
    """Test seeds of a learned policy that overlap the seeds moca learns or chooses on:
    say so on stderr, as its scores are then not held out (moca's own use: meta-training
    0-799, adaptation support 800-899, validation 900-999, tests 1000 on)."""
    from moca.limits import META_SEEDS, SUPPORT_SEEDS, VALIDATION_SEEDS

    last = first + count - 1
    for name, seeds in (("meta-training", META_SEEDS), ("adaptation (support)", SUPPORT_SEEDS),
                        ("validation", VALIDATION_SEEDS)):
        low, high = max(first, seeds.start), min(last, seeds.stop - 1)
        if low <= high:
            _warn(f"--seed {first}: test seeds {low}..{high} are moca's {name} seeds ({seeds.start}-"
                  f"{seeds.stop - 1}), so these scores are not held out (test seeds from {VALIDATION_SEEDS.stop} are)")


def _no_steps_to_take(policy: str) -> bool:
    """CLSC-1's ``--policy`` is one that ``--adapt-steps`` cannot adapt: a baseline, a peer
    or a checkpoint of none of moca's learned kinds (a name that is nothing: build_policy
    says so)."""
    from moca.baselines.peers import PEERS
    from moca.checkpoint import SHIPPED, declared_kind

    if policy in ("oracle", *PEERS):
        return True
    return policy not in SHIPPED and Path(policy).is_dir() and \
        declared_kind(policy) not in ("lstm-policy", "mapped-policy", "mpc-policy")


def _names_something(policy: str) -> bool:
    """``--policy`` is a baseline, a peer, a shipped checkpoint or an existing directory."""
    from moca.baselines.peers import PEERS
    from moca.checkpoint import SHIPPED

    return policy in ("oracle", *PEERS, *SHIPPED) or Path(policy).is_dir()


def _is_learned_policy(policy: str) -> bool:
    """``--policy`` names moca's learned policy: ``default`` or a directory whose checkpoint
    is an LSTM policy (a PPO directory is a peer)."""
    from moca.checkpoint import declared_kind

    return policy in ("default", "default-reptile") or declared_kind(policy) == "lstm-policy"


# --- learning ------------------------------------------------------------------------------


@app.command()
def train(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint directory to write (its parent must exist)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON object of MetaConfig fields."),
    params_file: Optional[Path] = typer.Option(None, "--params", help=PARAMS_HELP + " Replaces the config's params "
                                               "whole (a warning names what is dropped)."),
    init: Optional[str] = typer.Option(None, "--init", help="maml (second order) | fomaml | reptile (overrides the config)."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, max=LARGEST_SEED, help="Seed of task draws and initial weights (overrides the config)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Meta steps (overrides the config)."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds",
                                                help="Stop past this wall time (0: never; overrides the config). "
                                                     "A run cut short by time is not reproducible step for step."),
    ray_address: Optional[str] = typer.Option(None, "--ray", help="Run each meta step's regimes as Ray tasks: 'auto' (a local Ray) or a cluster address."),
    ray_cpus: Optional[int] = typer.Option(None, "--ray-cpus", min=1, max=MOST_WORKERS, help="CPUs of a local Ray (--ray auto; "
                                                                          "default 2)."),
    model: str = typer.Option("CLSC-1", "--model", help="The world: CLSC-1 | CLSC-2 (docs/MODEL-2.md)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Meta-train a policy initialisation over the regime distribution; write a checkpoint."""
    from moca import checkpoint
    from moca.meta import MetaConfig, meta_train

    if ray_cpus is not None and (ray_address or "").strip() not in ("auto", "local"):
        # (it was taken and ignored: a cluster has its own CPUs, and without --ray nothing uses it)
        _fail("--ray-cpus: the CPUs of a local Ray, only with --ray auto")
    ray_cpus = ray_cpus or 2
    if max_seconds is not None and not max_seconds >= 0:  # (nan was told it "should be >= 0")
        _fail(f"--max-seconds {max_seconds:g}: a wall time in seconds >= 0 (0: never)")
    with _bad_input():
        if _chosen_model(model) == "CLSC-2":
            return _train2(output, config_file, params_file, init, seed, steps, max_seconds, as_json,
                           ray_address, ray_cpus)
        config = MetaConfig(**_train_fields(config_file, params_file, init, seed, steps, max_seconds, "CLSC-1"))
        _output_dir(output)
    backend = _train_backend(ray_address, ray_cpus)
    try:
        with _progress(as_json) as progress, _stop_on_ctrl_c() as stop, _diverged(output):
            module, history = meta_train(config, progress=progress, backend=backend, stop=stop)
    finally:
        if backend is not None:
            backend.stop()
    validation = history["validation"]
    scores = {"validation_zero_shot_before": validation[0]["score"] if validation else None,
              "validation_zero_shot_after": validation[-1]["score"] if validation else None}
    command = _command_line()
    _save_trained(output, lambda where: checkpoint.save_policy(where, module, {
        "algorithm": config.algorithm, "seed": config.seed, "config": config.model_dump(mode="json"),
        "command": command, "scores": scores, "meta_steps_done": len(history["steps"]),
        "stopped_early": history["stopped_early"], "interrupted": history.get("interrupted", False),
        "wall_seconds": history["wall_seconds"], "validation_curve": validation,
    }))
    # "meta_steps" is the steps taken (the checkpoint's config holds the steps asked for):
    # "meta_steps_done" and "meta_steps_requested" say which without reading both files
    out = {"checkpoint": str(output), "algorithm": config.algorithm, "seed": config.seed,
           "meta_steps": len(history["steps"]), "meta_steps_done": len(history["steps"]),
           "meta_steps_requested": config.meta_steps, "wall_seconds": history["wall_seconds"],
           "stopped_early": history["stopped_early"], "interrupted": history.get("interrupted", False), **scores}
    if as_json:
        _print_json(out)
    else:
        console.print(_trained_line(output, config.algorithm, out, scores))
    _exit_if_interrupted(history, config.meta_steps)


def _trained_line(output: Path, what: str, out: dict[str, Any], scores: dict[str, Any]) -> str:
    """``moca train``'s closing line; the validation scores only where there are some (a
    config with ``validate_every: 0`` has none: CLSC-1's line was an internal error after the
    checkpoint was written)."""
    before, after = scores["validation_zero_shot_before"], scores["validation_zero_shot_after"]
    selected = out.get("selected_step")
    kept = (f" (the weights after meta step {selected}, the best on validation)"
            if selected is not None and selected != out["meta_steps"] else "")
    return (f"wrote {output}: {what}, {_count(out['meta_steps'], 'meta step')} in {out['wall_seconds']:.0f} s"
            + (f"; validation zero-shot score {before:.4f} -> {after:.4f}{kept}" if before is not None else
               " (no validation: validate_every is 0)"))


def _save_trained(output: Path, save: Callable[[Path], Any]) -> None:
    """``save(folder)`` a trained checkpoint to ``output``; where that fails at the end (a full
    disk, the folder made a file meanwhile), to a rescue folder beside it or else in the
    temporary folder, and say where (exit 1): the failure was an internal error, and the
    minutes of training were lost."""
    import shutil
    import tempfile
    import time

    from moca.checkpoint import CheckpointError

    try:
        save(output)
        return
    except (CheckpointError, OSError) as err:
        reason = _message(err) if isinstance(err, CheckpointError) else f"{err.strerror or err}"
    for folder in (output.parent, Path(tempfile.gettempdir())):
        try:  # (a name of its own: two runs failing in the same second would share one)
            rescue = Path(tempfile.mkdtemp(dir=folder, prefix=f"{output.name}.rescued-{time.strftime('%Y%m%d-%H%M%S')}-"))
        except OSError:
            continue
        try:
            save(rescue)
        except (CheckpointError, OSError):
            shutil.rmtree(rescue, ignore_errors=True)
            continue
        _fail(f"could not write {output} ({reason}); the trained checkpoint is in {rescue}", code=1)
    _fail(f"could not write {output} ({reason}), nor a rescue copy beside it or in {tempfile.gettempdir()}: "
          "the training is lost", code=1)


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (``timeout``, a batch scheduler's limit, ``kill``) taken as Ctrl-C while a long
    command runs: it ended training and sweeps without a word, the steps done unwritten and
    no line on what a sweep kept. The SIGINT handler in force then acts (a second SIGTERM,
    like a second Ctrl-C, stops at once)."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # (signals reach the main thread only)
        yield
        return

    def as_ctrl_c(signum: int, frame: Any) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt  # (SIGINT ignored, as for a job started with & by a script)

    previous = signal.signal(signal.SIGTERM, as_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _stop_on_ctrl_c(step: str = "meta step") -> Iterator[Any]:
    """Training's Ctrl-C (or SIGTERM): stop after the current (meta or env) step and write
    what was learned."""
    from moca.meta import StopRequest

    with StopRequest(step) as stop, _sigterm_as_ctrl_c():
        err_console.print(f"training: Ctrl-C stops after the current {step} and writes the checkpoint",
                          highlight=False)
        yield stop


@contextmanager
def _diverged(output: Path) -> Iterator[None]:
    """A meta-training whose losses or weights stopped being finite: one line, exit 1, no
    checkpoint (its weights would be the last finite ones of a run going wrong)."""
    from moca.meta import MetaError

    try:
        yield
    except MetaError as err:
        _fail(f"training diverged, nothing written to {output}: {_message(err)}", code=1)


def _exit_if_interrupted(history: dict[str, Any], planned: int) -> None:
    """Exit 130 (as for Ctrl-C) once an interrupted training's checkpoint is written."""
    if history.get("interrupted"):
        done, selected = len(history["steps"]), history.get("selected_step")
        held = (f"the weights after meta step {selected}, the best on validation of the {done} of {planned} done"
                if selected is not None and selected != done else f"{done} of {planned} meta steps")
        sys.stderr.write(f"moca: interrupted: the checkpoint holds {held}\n")
        raise typer.Exit(130)


def _train_fields(config_file: Optional[Path], params_file: Optional[Path], init: Optional[str], seed: Optional[int],
                  steps: Optional[int], max_seconds: Optional[float], model: str) -> dict[str, Any]:
    """The meta-training config's fields: the --config file's, overridden by the options."""
    from moca.meta import ALGORITHMS, MetaConfig
    from moca.meta2 import MetaConfig2
    from moca.regime import read_structured

    fields: dict[str, Any] = {}
    if config_file is not None:
        data = read_structured(config_file)
        if not isinstance(data, dict):
            raise UsageError(f"--config {config_file}: expected an object of MetaConfig fields")
        known = (MetaConfig2 if model == "CLSC-2" else MetaConfig).model_fields
        unknown = [key for key in data if key not in known]
        if unknown:  # (pydantic's own words would be "Extra inputs are not permitted")
            raise UsageError(f"--config {config_file}: unknown field {unknown[0]!r} (fields: {', '.join(known)})")
        fields.update(data)
    if init is not None:
        if init not in ALGORITHMS:
            raise UsageError(f"--init {init!r}: unknown algorithm (valid: {', '.join(ALGORITHMS)})")
        fields["algorithm"] = init
    for key, value in (("seed", seed), ("meta_steps", steps)):
        if value is not None:
            fields[key] = value
    if params_file is not None:
        given = _load_params(params_file, model)
        written = fields.get("params")
        if isinstance(written, dict):  # (replaced whole without a word: a user may have expected a merge)
            # (compared as JSON: a list in the file is a tuple in the params, e.g. grade_mean)
            kept = given.model_dump(mode="json")
            dropped = [f"{key}={value!r}" for key, value in written.items()
                       if str(key) not in kept or json.loads(json.dumps(value, default=str)) != kept[str(key)]]
            if dropped:
                _warn(f"--params {params_file} replaces the params of --config {config_file} whole: "
                      f"{', '.join(dropped)} there is not used (put it in the --params file to keep it)")
        fields["params"] = given
    if max_seconds is not None:
        fields["max_seconds"] = max_seconds or None
    fields.setdefault("validate_every", 25)
    return fields


def _train_backend(ray_address: Optional[str], ray_cpus: int):
    """The started Ray backend of ``--ray`` (None without it); an unreachable cluster or a
    missing Ray exits 2 naming it."""
    if ray_address is None:
        return None
    from moca.cluster import BackendError, backend_from_options

    try:
        backend = backend_from_options(ray_address, ray_cpus)
        with _sigterm_as_ctrl_c():  # (SIGTERM while Ray starts ended moca without a word, its agents left)
            backend.start()
    except BackendError as err:
        _fail(_message(err))
    return backend


def _train2(output: Path, config_file: Optional[Path], params_file: Optional[Path], init: Optional[str],
            seed: Optional[int], steps: Optional[int], max_seconds: Optional[float], as_json: bool,
            ray_address: Optional[str] = None, ray_cpus: int = 2) -> None:
    """``moca train --model CLSC-2``: meta-train moca.policy2's policy (moca.meta2)."""
    fields = _train_fields(config_file, params_file, init, seed, steps, max_seconds, "CLSC-2")
    _output_dir(output)
    import torch

    from moca.meta2 import MetaConfig2, meta_train2, save_policy2

    config = MetaConfig2(**fields)
    torch.set_num_threads(1)  # small batches: threads only contend (2 shared cores)
    backend = _train_backend(ray_address, ray_cpus)
    try:
        with _progress(as_json) as progress, _stop_on_ctrl_c() as stop, _diverged(output):
            bar = progress.add_task("meta-training CLSC-2", total=config.meta_steps)
            module, history = meta_train2(config, progress=lambda step, total, info: progress.update(bar, completed=step),
                                          backend=backend, stop=stop)
    finally:
        if backend is not None:
            backend.stop()
    validation = history["validation"]
    selected = history.get("selected_step", validation[-1]["step"] if validation else None)
    scores = {"validation_zero_shot_before": validation[0]["score"] if validation else None,
              "validation_zero_shot_after": next((v["score"] for v in validation if v["step"] == selected), None)}
    _save_trained(output, lambda where: save_policy2(where, module, {
        "algorithm": config.algorithm, "seed": config.seed, "config": config.model_dump(mode="json"),
        "command": _command_line(), "scores": scores, "meta_steps_done": len(history["steps"]),
        "selected_step": selected,
        "stopped_early": history["stopped_early"], "interrupted": history.get("interrupted", False),
        "wall_seconds": history["wall_seconds"], "validation_curve": validation, "history": history["steps"],
    }))
    out = {"checkpoint": str(output), "model": "CLSC-2", "algorithm": config.algorithm, "seed": config.seed,
           "meta_steps": len(history["steps"]), "meta_steps_done": len(history["steps"]),
           "meta_steps_requested": config.meta_steps, "selected_step": selected, "wall_seconds": history["wall_seconds"],
           "stopped_early": history["stopped_early"], "interrupted": history.get("interrupted", False), **scores}
    if as_json:
        _print_json(out)
    else:
        console.print(_trained_line(output, f"CLSC-2, {config.algorithm}", out, scores))
    _exit_if_interrupted(history, config.meta_steps)


def _unique_labels(tasks: list) -> list:
    """Sequence labels made unique: a regime that comes back is ``"T1 #2"``; another rule
    under a label already used is told by its fields, ``"T1 (r=0.10)"`` (it was ``"#2"`` too,
    which reads as the same rule again); never a label the sequence gives elsewhere."""
    taken = {label for label, _ in tasks}
    first: dict[str, Any] = {}
    out = []
    for label, regime in tasks:
        if label not in first:
            first[label] = regime
            out.append((label, regime))
            continue
        # (numbered from #2: the first of its kind is the plain label, a rule that comes back
        # the label itself; another rule, the label with its fields)
        stem = label if first[label] == regime else f"{label} ({regime.describe()})"
        candidate, n = (f"{stem} #2", 2) if stem == label else (stem, 1)
        while candidate in taken:
            n += 1
            candidate = f"{stem} #{n}"
        taken.add(candidate)
        out.append((candidate, regime))
    return out


ADAPT_HELP = """Adapt a policy to a regime in a few gradient steps; score it before and after.

\b
Each step is one clipped gradient step on support scenarios (seeds 800+ of the
training stream). A step is "kept" when it lowered the loss on those support
scenarios; a step not kept is undone and the next one tries half the rate.
After every step the policy is scored on validation scenarios (seeds 900+).
The weights written with -o (and scored as score_after) are those with the
best validation score, step 0 included: never worse on validation than the
start (--keep-last: the last step's weights instead). score_before and
score_after are on the test scenarios (--seed, --scenarios), used for nothing
else. In --json, "curve" lists per step: step, validation score, seconds,
kept, selected (true for the weights returned).

\b
On CLSC-1, --base auto (the default) adapts three candidates with the same
steps on the same support scenarios: the checkpoint (--base default),
moca's LSTM over the threshold rule mapped from the regime (its base picked
among the shipped map's thresholds and the nearest tuned regimes, fresh head;
--base map) and moca's LSTM over the rolling 13-period LP (its safety stock
picked on the support scenarios, fresh head; --base mpc). The one with the
best validation score is kept (the first in that order on a tie);
"portfolio" in --json gives each, seconds = the whole choice. -o writes the
winner (kind "mapped-policy" or "mpc-policy" for those two). With --params of
another lead time or return lag the checkpoint's inputs do not fit the chain:
auto and mpc then adapt the LSTM over the LP alone (it starts fresh on any
chain), and say so.

\b
On CLSC-2, --base auto (the default) has two candidates: the checkpoint
adapted as above (--base default) and the sampled MPC (two-stage LP over 4
forecast demand paths, 13 periods; --base mpc), its safety stock picked among
0-4,000 units on the first 2 support scenarios. It has no weights and takes
no steps. Both are scored on the same validation scenarios; the better is kept
(the checkpoint on a tie). -o writes the MPC as a planner checkpoint (kind
"mpc-planner": its settings in JSON, no weights) that moca evaluate --model
CLSC-2 --policy DIR scores. The MPC's choice costs about 1-2 s a scenario.
--retune N (CLSC-2) first re-tunes the base rule's seven thresholds for the
regime or plan as the threshold peer is re-tuned (N candidates on 32
training scenarios; the peer uses 1500, 10-100 s a regime or plan on 2
cores), and the checkpoint's steps start from whichever scores highest on
validation: the checkpoint, those thresholds (the regime-to-thresholds map
flattened to them), or the rule at those thresholds with the learned
residual off (the threshold peer itself). Without --retune: 1500 on a plan
whose rules change within the horizon (there it was measured to pay), 0 on
a regime held all year (there it did not); --retune 0 turns it off.
"""


@app.command(help=ADAPT_HELP)
def adapt(
    checkpoint_dir: str = typer.Option(..., "--checkpoint", help="Checkpoint directory ('default' = shipped meta-init)."),
    regime: str = typer.Option(..., "--regime", help="Regime name (see 'moca regimes') or YAML/JSON file."),
    steps: int = typer.Option(5, "--steps", min=0, max=MOST_STEPS, help="Gradient steps on support scenarios (seeds 800+)."),
    scenarios: int = typer.Option(16, "--scenarios", min=1, max=MOST_SCENARIOS, help="Test scenarios scored before and after."),
    seed: int = typer.Option(1000, "--seed", min=0, max=LARGEST_SEED, help="First test seed."),
    validation: int = typer.Option(8, "--validation", min=1, max=100,
                                   help="Validation scenarios (seeds 900-999) that choose the weights kept."),
    keep_last: bool = typer.Option(False, "--keep-last", help="Keep the last step's weights even if an earlier step "
                                                                 "validated better."),
    params_file: Optional[Path] = typer.Option(None, "--params", help=PARAMS_HELP),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the adapted policy as a checkpoint here (its parent must exist)."),
    model: str = typer.Option("CLSC-1", "--model", help="The world: CLSC-1 | CLSC-2 (docs/MODEL-2.md)."),
    base: str = typer.Option("auto", "--base", help="auto | default | map | mpc (CLSC-2: auto | default | mpc; "
                                                    "see above)."),
    retune: Optional[int] = typer.Option(None, "--retune", min=0, max=MOST_CANDIDATES,
                                         help="CLSC-2: first re-tune the base rule's thresholds with this many "
                                              "candidates (1500: as the threshold peer; 0: off; default: 1500 on a "
                                              "plan whose rules change, 0 on a regime held all year; see above)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    from moca.regime import RegimeSchedule, check_clsc1_windows, load_regime

    with _bad_input():
        _chosen_model(model)
        _seeds_within_range(seed, scenarios)
        _warn_if_not_held_out(seed, scenarios)
        if retune is not None:
            _retune_choice(retune, base, model, adapt=True)
        if model == "CLSC-2":
            return _adapt2(checkpoint_dir, regime, steps, scenarios, seed, validation, keep_last, output, as_json,
                           params_file, base, retune)
        target = load_regime(regime)
        check_clsc1_windows(RegimeSchedule.constant(target), regime)
        base = _base_choice(base)
        _output_dir(output)
        from moca.meta import OracleCache
        from moca.policy import evaluate_policy
        from moca.portfolio import adapt_portfolio, start_on_chain
        from moca.regime_map import load_learned_policy, save_learned_policy

        notes: list[str] = []
        if params_file is not None:  # another chain: a checkpoint of other inputs leaves the LP candidate
            params = _load_params(params_file)
            module, base, notes = start_on_chain(checkpoint_dir, params, base)
            if not notes:  # (a note says the checkpoint did not fit and the LP's candidate starts fresh)
                _warn_if_trained_on_other_params(checkpoint_dir, params, adapting=steps > 0)
        else:
            module, _ = load_learned_policy(checkpoint_dir)
        cache = OracleCache(module.params)
        tests = cache.scenarios(range(seed, seed + scenarios), target)
        with _progress(as_json) as progress:
            progress.add_task(f"adapting {_count(steps, 'step')}" + (" (portfolio)" if base != "default" else ""), total=None)
            start = {k: v.detach().clone() for k, v in module.named_parameters()}
            before = evaluate_policy(module, start, tests, cache.costs(tests))
            portfolio = adapt_portfolio(module, target, steps, base=base, validation_size=validation, cache=cache,
                                        keep_best=not keep_last, notes=notes, progress=_phase_bars(progress))
            chosen = portfolio.chosen
            module, weights, curve = chosen.module, chosen.weights, chosen.curve
            after = evaluate_policy(module, weights, tests, cache.costs(tests))
            others = {n: evaluate_policy(c.module, c.weights, tests, cache.costs(tests))["score"]
                      for n, c in portfolio.candidates.items() if c is not chosen}
    selected = next((c["step"] for c in curve if c.get("selected")), curve[-1]["step"])
    summary = portfolio.summary()
    for name, entry in summary["candidates"].items():
        entry["test_score"] = after["score"] if name == chosen.name else others[name]
    out = {"score_before": before["score"], "score_after": after["score"], "steps": steps,
           "selected_step": selected, "keep": "last" if keep_last else "best",
           "seconds": curve[-1]["seconds"],
           "violations": int(before["violations"] + after["violations"] + sum(c["violations"] for c in curve)),
           "curve": [{"step": c["step"], "score": c["score"], "seconds": c["seconds"], "kept": c["kept"],
                      "selected": c["step"] == selected} for c in curve],
           "regime": target.model_dump(), "test_seeds": [seed, seed + scenarios - 1],
           "validation_seeds": [900, 900 + validation - 1], "base": base, "portfolio": summary}
    out["seconds"] = portfolio.seconds if base != "default" else out["seconds"]
    from moca.regime import regime_label

    _say_rule_impact(out, regime_label(str(regime)), target, tests)  # (a file's own name first, as evaluate)
    _say_withheld(out, tests, [f"seed {s}" for s in range(seed, seed + scenarios)])
    if output is not None:
        with _bad_input():
            module.load_state_dict({**module.state_dict(), **weights})
            record = {"adapted_from": str(checkpoint_dir), "regime": target.model_dump(), "steps": steps,
                      "selected_step": selected, "command": _command_line(),
                      "scores": {"before": out["score_before"], "after": out["score_after"]},
                      "portfolio": summary}
            save_learned_policy(output, module, record)
        out["checkpoint"] = str(output)
    if as_json:
        _print_json(out)
        return
    _print_adapted(str(regime), out, selected, keep_last, output)
    if base != "default":
        scores = ", ".join(f"{n} {c['validation_score']:.4f}" for n, c in summary["candidates"].items())
        console.print(f"base {base}: kept {chosen.name} (validation scores: {scores}; "
                      f"{portfolio.seconds:.2f} s in all)" + "".join(f"; {n}" for n in portfolio.notes))


def _retune_choice(retune: int, base: str, model: str, adapt: bool) -> None:
    """``--retune`` of adapt/evaluate, refused where it would be ignored (so that no JSON
    reports a re-tuning that was never run)."""
    if model != "CLSC-2":
        raise UsageError("--retune: CLSC-2 only (on CLSC-1, --base map starts from tuned thresholds)")
    if not adapt:
        raise UsageError("--retune: only with --adapt-steps 1 or more on a learned policy (it re-tunes the start "
                         "of the adaptation)")
    if retune and base == "mpc":
        raise UsageError(f"--retune {retune}: --base mpc adapts no LSTM, so there is no base rule to re-tune "
                         "(use --base auto or default)")


def _base_choice(base: str, option: str = "--base", model: str = "CLSC-1") -> str:
    """``--base`` of adapt/evaluate: one of the world's portfolio
    bases (moca.portfolio.BASES, CLSC-2: BASES_2)."""
    from moca.portfolio import BASES, BASES_2

    bases = BASES_2 if model == "CLSC-2" else BASES
    if base not in bases:
        raise UsageError(f"{option}: {base!r} is not one of {', '.join(bases)}"
                         + (f" on {model}" if model == "CLSC-2" else "")
                         + (" (CLSC-2 has no threshold map)" if model == "CLSC-2" and base == "map" else ""))
    return base


def _retarget2(module, params, where: str, quiet: bool = False, adapting: bool = False):
    """A CLSC-2 policy rebuilt for ``--params``' chain (moca.chain2.retarget2); its warning,
    if the checkpoint was trained on other params, on stderr (``quiet``: the weights are
    not used, so nothing to warn about)."""
    from moca.chain2 import retarget2

    module, warning = retarget2(module, params, str(where), adapting)
    if warning and not quiet:
        _warn(warning)
    return module


def _warn_if_trained_on_other_params(where: str, params, trained=None, adapting: bool = False) -> None:
    """CLSC-1's learned checkpoint ``where`` on ``params``' chain: the warning CLSC-2's give
    (moca.chain2.other_params_warning), on stderr, when it was trained on other params.
    ``trained``: its params, when the caller holds them (else read from the checkpoint);
    ``adapting``: the command takes steps on this chain (the warning then says so)."""
    from moca.chain2 import other_params_warning
    from moca.regime_map import load_learned_policy

    if trained is None:
        trained = load_learned_policy(where)[0].params
    warning = other_params_warning(trained, params, str(where), adapting)
    if warning:
        _warn(warning)


def _warn_if_off_its_chain(policy: str, params) -> None:
    """A PPO policy or a CLSC-2 planner scored on another chain than the one it was made
    for: the warning a learned checkpoint gives (a PPO policy read 0.10 of the oracle on a
    chain of ten times the capacities without a word; a planner's safety stock, in units,
    was picked on its chain's support scenarios, and scored elsewhere without a word). PPO
    trains on its world's default chain, which its checkpoint records when trained elsewhere
    (``params``); a planner records the chain it was adapted on."""
    from moca import checkpoint
    from moca.chain2 import changed_fields
    from moca.scenario import Params, Params2

    kind_declared = None if policy == "ppo" else checkpoint.declared_kind(policy)
    if policy != "ppo" and kind_declared not in ("sb3-ppo", "mpc-planner"):
        return
    kind = Params2 if isinstance(params, Params2) else Params
    if policy == "ppo":
        trained = kind()
    else:
        recorded = checkpoint.load(policy)[1].get("params")
        trained = kind(**recorded) if isinstance(recorded, dict) else kind()
    changed = changed_fields(trained, params)
    if not changed:
        return
    if kind_declared == "mpc-planner":
        _warn(f"planner {policy} was picked on other params ({changed} differ here); its safety stock was "
              "chosen for that chain's scenarios; re-pick it on this chain (moca adapt --model CLSC-2 --base mpc "
              "-o DIR, with this chain's --params)")
        return
    _warn(f"PPO policy {policy} was trained on {'the default chain' if trained == kind() else 'other params'} "
          f"({changed} differ here); it runs as trained, unadapted (moca peers train-ppo trains on the default "
          "chain only), so its score is that of a policy off its chain")


def _seeds_within_range(seed: int, scenarios: int) -> None:
    """Test seeds run from --seed to --seed + --scenarios - 1: the last must be a seed too
    (--seed's largest value with 2 scenarios drew one beyond it without a word)."""
    if seed + scenarios - 1 > LARGEST_SEED:
        raise UsageError(f"--seed {seed} with --scenarios {scenarios}: the last test seed, {seed + scenarios - 1}, is "
                         f"beyond the largest seed {LARGEST_SEED}; give --seed <= {LARGEST_SEED - scenarios + 1}")


def _warn_if_beyond_horizon(plan, horizon: int) -> None:
    """Schedule entries that start at or after the episode's last period never apply: say so."""
    late = plan.starts_beyond(horizon)
    if late:
        starts = ", ".join(str(start) for start in late)
        what = f"regime starting at period {starts} never applies" if len(late) == 1 else \
            f"regimes starting at periods {starts} never apply"
        _warn(f"the {what}: the episode has {horizon} periods (0-{horizon - 1})")


def _warn(text: str) -> None:
    """One line on stderr (stdout stays machine-readable with --json)."""
    sys.stderr.write(f"moca: warning: {' '.join(text.split())}\n")
    sys.stderr.flush()


def _print_adapted(label: str, out: dict[str, Any], selected: int, keep_last: bool, output: Optional[Path],
                   kept: Optional[str] = None) -> None:
    """``moca adapt``'s one-line summary (both worlds); ``kept``: what was deployed, when
    not the learned policy's weights."""
    if kept is None:
        kept = f"weights of step {selected} (best on validation)" if not keep_last else "the last step's weights"
    console.print(f"{label}: test score {out['score_before']:.4f} -> {out['score_after']:.4f} with {kept}, "
                  f"{out['steps']} step{'' if out['steps'] == 1 else 's'} ({out['seconds']:.2f} s), "
                  f"violations {out['violations']}"
                  + (f"; wrote {output}" if output is not None else ""))


def _adapt2(checkpoint_dir: str, regime: str, steps: int, scenarios: int, seed: int, validation: int,
            keep_last: bool, output: Optional[Path], as_json: bool, params_file: Optional[Path] = None,
            base: str = "auto", retune: Optional[int] = None) -> None:
    """``moca adapt --model CLSC-2``: moca.portfolio.adapt_portfolio2 (the checkpoint's LSTM
    adapted by moca.meta2.adapt2, and/or the sampled MPC at a picked safety stock; with
    --params, on that chain: its scenarios, oracle and the policy's scaling)."""
    from moca.regime import load_schedule
    from moca.scenario import DEFAULT_PARAMS_2

    _base_choice(base, model="CLSC-2")
    plan = load_schedule(regime, model="CLSC-2")
    params = _load_params(params_file, "CLSC-2") if params_file is not None else None
    horizon = (params or DEFAULT_PARAMS_2).horizon
    _warn_if_beyond_horizon(plan, horizon)
    _output_dir(output)
    import torch

    from moca.baselines.mpc2 import save_planner2
    from moca.meta2 import OracleCache2, default_retune, load_policy2, save_policy2
    from moca.policy2 import evaluate_policy2
    from moca.portfolio import adapt_portfolio2, evaluate_candidate2, retuned_start

    torch.set_num_threads(1)
    retune_given = retune is not None
    if retune is None:
        retune = default_retune(plan, horizon, base)
    module, _ = load_policy2(checkpoint_dir)
    if params is not None:
        module = _retarget2(module, params, checkpoint_dir, adapting=steps > 0)
    cache = OracleCache2(module.params)
    tests = cache.scenarios(range(seed, seed + scenarios), plan)
    oracle = cache.costs(tests)

    with _progress(as_json) as progress:
        progress.add_task((f"re-tuning the rule ({retune} candidates), then " if retune else "")
                          + f"adapting {_count(steps, 'step')} (CLSC-2" + (", portfolio)" if base == "auto" else ")"), total=None)
        before = evaluate_policy2(module, None, tests, oracle)
        portfolio = adapt_portfolio2(module, plan, steps, base=base, validation_size=validation, cache=cache,
                                     keep_best=not keep_last, retune=retune, progress=_phase_bars(progress))
        chosen = portfolio.chosen
        scored = {name: evaluate_candidate2(c, tests, oracle) for name, c in portfolio.candidates.items()}
    after = scored[chosen.name]
    curve = chosen.curve
    selected = next((c["step"] for c in curve if c.get("selected")), curve[-1]["step"])
    summary = portfolio.summary()
    for name, entry in summary["candidates"].items():
        entry["test_score"] = scored[name]["score"]
    violations = before["violations"] + sum(s["violations"] for s in scored.values())
    violations += sum(c.get("violations", 0) for cand in portfolio.candidates.values() for c in cand.curve)
    out = {"model": "CLSC-2", "score_before": before["score"], "score_after": after["score"], "steps": steps,
           "selected_step": selected, "keep": "last" if keep_last else "best",
           "seconds": portfolio.seconds, "violations": int(violations),
           "curve": [{"step": c["step"], "score": c["score"], "seconds": c["seconds"], "kept": c["kept"],
                      "selected": c["step"] == selected} for c in curve],
           "regime": plan.to_list_with_window(), "test_seeds": [seed, seed + scenarios - 1],
           "validation_seeds": [900, 900 + validation - 1], "base": base, "deployed": chosen.name,
           "retune": retune, "retune_given": retune_given, "portfolio": summary}
    if retune and "default" in portfolio.candidates:
        out["start"] = retuned_start(portfolio.candidates["default"].curve)
    _say_withheld(out, tests, [f"seed {s}" for s in range(seed, seed + scenarios)])
    if output is not None:
        record = {"adapted_from": str(checkpoint_dir), "regime": out["regime"], "steps": steps,
                  "selected_step": selected, "command": _command_line(),
                  "scores": {"before": out["score_before"], "after": out["score_after"]}, "portfolio": summary}
        if chosen.name == "mpc":
            save_planner2(output, chosen.module, module.params, record)
        else:
            module.load_state_dict({**module.state_dict(), **chosen.weights})
            save_policy2(output, module, record)
        out["checkpoint"] = str(output)
    if as_json:
        _print_json(out)
        return
    if chosen.name == "mpc":
        kept = f"the sampled MPC at a safety stock of {chosen.selection['safety_stock']:,.0f} units"
    else:
        kept = None
    _print_adapted(f"CLSC-2 {regime}", out, selected, keep_last, output, kept)
    if "start" in out:
        _print_retuned_start(retune, retune_given, out["start"])
    if base == "auto":
        scores = ", ".join(f"{n} {c['validation_score']:.4f}" for n, c in summary["candidates"].items())
        console.print(f"base auto: kept {chosen.name} (validation scores: {scores}; {portfolio.seconds:.2f} s in all)")


@app.command()
def continual(
    sequence: Path = typer.Option(..., "--sequence", help="YAML/JSON list of regimes (names like T1 or regime objects)."),
    method: str = typer.Option("moca", "--method", help="scratch | finetune | ewc | maml | moca | fomaml | reptile."),
    checkpoint_dir: Optional[str] = typer.Option(None, "--checkpoint", help="Start from this checkpoint (not for scratch)."),
    steps: int = typer.Option(8, "--steps", min=0, max=MOST_STEPS, help="Gradient steps per regime."),
    scenarios: int = typer.Option(20, "--scenarios", min=1, max=MOST_SCENARIOS, help="Test scenarios per regime (seeds 1000+)."),
    params_file: Optional[Path] = typer.Option(None, "--params", help=PARAMS_HELP),
    model: str = typer.Option("CLSC-1", "--model", help="The world: CLSC-1 | CLSC-2 (names T1-T3 then have W = 52)."),
    keep_unchanged: bool = typer.Option(False, "--keep-unchanged", help="CLSC-2, method moca: also keep the weights "
                                        "from before a regime where they validate higher than both updates "
                                        "(opt-in; README, \"A third candidate\")."),
    plot_file: Optional[Path] = typer.Option(None, "--plot", help="Draw the score matrix to this file (PNG/PDF/SVG) "
                                             "and the validation score after each step to FILE-curves beside it."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Learn a sequence of regimes in turn with one method; report the score matrix, forgetting,
    BWT and FWT (moca.metrics; in --json, forgetting has one entry per regime, the last 0, and
    mean_forgetting averages the others).

    The sequence file is a YAML/JSON list of regime names (see 'moca regimes') or regime
    objects, optionally with a 'name' label (docs/MODEL.md, "Regime").
    """
    from moca.regime import load_sequence

    with _bad_input():
        _known_method("--method", method)
        if keep_unchanged and (_chosen_model(model) != "CLSC-2" or method != "moca"):
            raise UsageError("--keep-unchanged: only with --model CLSC-2 and --method moca (the method that chooses "
                             "its update per regime on validation)")
        _plot_path(plot_file)
        if plot_file is not None:  # the curves' figure beside it: checked before the work as well
            _plot_path(_curves_path(plot_file), "--plot (its curves figure)")
        if _chosen_model(model) == "CLSC-2":
            return _continual2(sequence, method, checkpoint_dir, steps, scenarios, as_json, params_file,
                               keep_unchanged, plot_file)
        tasks = _unique_labels(load_sequence(sequence))
        params = _load_params(params_file)
        import torch

        from moca import checkpoint  # (torch: only once the input is known good)
        from moca.continual import method_spec
        from moca.experiment import ExperimentConfig, run_continual
        from moca.meta import OracleCache
        from moca.policy import LSTMPolicy, with_params

        spec = method_spec(method)
        init = None
        if checkpoint_dir is not None:
            if spec.init == "fresh":
                raise UsageError("--checkpoint: method 'scratch' trains a fresh policy per regime; it takes no checkpoint")
            module, _ = checkpoint.load_policy(checkpoint_dir)
            if params_file is not None:
                _warn_if_trained_on_other_params(checkpoint_dir, params, module.params, adapting=True)
                module = with_params(module, params)
            init = {k: v.detach().clone() for k, v in module.named_parameters()}
        else:
            from moca.experiment import METHOD_CHECKPOINTS, shipped_policy_config

            torch.manual_seed(0)  # finetune's and ewc's fresh start, as moca run's (it was unseeded: other numbers each run)
            module = LSTMPolicy(params, shipped_policy_config())
            if params_file is not None and spec.init == "meta":  # the shipped meta-init, on the user's chain
                shipped, _ = checkpoint.load_policy(METHOD_CHECKPOINTS[method])
                _warn_if_trained_on_other_params(METHOD_CHECKPOINTS[method], params, shipped.params, adapting=True)
                init = {k: v.detach().clone() for k, v in with_params(shipped, params).named_parameters()}
        config = ExperimentConfig(steps=steps, test_size=scenarios)
        with _progress(as_json) as progress:
            bar = progress.add_task(f"{method}", total=len(tasks))
            result, _ = run_continual(method, module, tasks, OracleCache(module.params), config, init=init,
                                      progress=lambda d: progress.update(bar, description=d, advance=1))
    R = result["R"]
    out = {"method": method, "regimes": [label for label, _ in tasks], **_continual_record(tasks, steps, scenarios,
                                                                                           checkpoint_dir, params_file),
           "R": R[1:], "R_initial": R[0],
           "average_final_score": result["average_final_score"], "forgetting": result["forgetting"],
           "mean_forgetting": _mean_forgetting(R), "bwt": result["bwt"], "fwt": result["fwt"],
           "drop_first_after_second": result["drop_first_after_second"],
           "adaptation_steps": result["adaptation_steps"], "adaptation_seconds": result["adaptation_seconds"],
           "violations": result["violations"], "correction": result["correction"],
           "decision_latency_us": result["decision_latency_us"],
           "lowered_by_own_steps": _lowered_by_own_steps([label for label, _ in tasks], R)}
    _say_sequence_caveats(out, tasks, OracleCache(module.params).scenarios, scenarios, rule_impacts=True)
    _plot_continual(plot_file, method, tasks, result, config.validation_size)
    if as_json:
        _print_json(out)
        return
    _print_continual(out, [label for label, _ in tasks], R, f"{method}")
    _say_plotted(plot_file)


def _print_continual(out: dict[str, Any], labels: list[str], R: list, what: str, hint: str = "") -> None:
    """The score matrix of a continual run (after each regime, on each regime) and its summary;
    a regime that its own steps left worse is named (with ``hint``, what could keep it)."""
    table = Table(title=f"{what}: score after learning each regime (rows) on each regime (columns)")
    table.add_column("after")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_row("(start)", *(f"{x:.4f}" for x in R[0]))
    for label, row in zip(labels, R[1:]):
        table.add_row(label, *(f"{x:.4f}" for x in row))
    console.print(table)
    drop = out["drop_first_after_second"]
    console.print(f"average final score {out['average_final_score']:.4f}; "
                  + (f"drop on {labels[0]} after {labels[1]} {100 * drop:.2f}%; " if drop is not None else "")
                  + f"violations {out['violations']}")
    if len(labels) > 1:  # (the help promised forgetting; only the JSON carried it, and BWT/FWT)
        forgotten = ", ".join(f"{label} {f:+.4f}" for label, f in zip(labels[:-1], out["forgetting"]))
        console.print(f"forgetting (best score before the end minus the final one): {forgotten} "
                      f"(mean {out['mean_forgetting']:+.4f}); BWT {out['bwt']:+.4f}; FWT {out['fwt']:+.4f}")
    worse = out["lowered_by_own_steps"]
    if worse:
        console.print("learning these regimes lowered their own score: "
                      + ", ".join(f"{w['regime']} {w['before']:.4f} -> {w['after']:.4f}" for w in worse) + hint)


def _known_method(option: str, method: str) -> None:
    """Refuse a continual method moca does not have, naming the option (it was named as the
    library's ``method='bogus'``)."""
    from moca.continual import METHODS

    if method not in METHODS:
        raise UsageError(f"{option}: {method!r} is not a continual method (valid: {', '.join(METHODS)})")


def _mean_forgetting(R: list) -> float | None:
    """``moca.metrics``' mean forgetting of a continual run's matrix (row 0 before learning;
    None with one regime): the run's ``forgetting`` list holds one entry per regime, the last
    always 0 (it cannot be forgotten yet), so a mean over the whole list was diluted."""
    from moca.metrics import continual_metrics

    return continual_metrics(R[1:], initial=R[0]).mean_forgetting


def _lowered_by_own_steps(labels: list[str], R: list) -> list[dict[str, Any]]:
    """The regimes whose own steps left their score lower (``--json``'s ``lowered_by_own_steps``,
    the text's warning): R[i] holds the scores before regime i is learned, R[i + 1] after;
    lower at the printed digits."""
    return [{"regime": label, "before": R[i][i], "after": R[i + 1][i]} for i, label in enumerate(labels)
            if R[i + 1][i] < R[i][i] - 5e-5]


def _say_sequence_caveats(out: dict[str, Any], tasks: list[tuple[str, Any]], draw: Callable[[Sequence[int], Any], list],
                          scenarios: int, rule_impacts: bool) -> None:
    """``moca continual``: per regime of the sequence, what ``evaluate`` says of one: where the
    rule itself leaves demand unmet (CLSC-1, ``rule_impacts``; ``rule_impact`` by label) and
    where the hindsight LP withholds sales (``oracle_withheld_sales`` by label), each with a
    warning naming the regime; ``draw(seeds, regime)``: the run's test scenarios (``scenarios``
    of them, seeds 1000+). (Scores near 1 were reported under a rule where the optimum leaves
    95% of demand unserved, without a word.)"""
    from moca.experiment import TEST_SEED as first_seed

    impacts, withheld = {}, {}
    seeds = range(first_seed, first_seed + scenarios)
    for label, regime in tasks:
        tests, said = draw(seeds, regime), {}
        if rule_impacts:
            _say_rule_impact(said, label, regime, tests)
        _say_withheld(said, tests, [f"seed {seed}" for seed in seeds], where=label)
        impacts[label] = said["rule_impact"] if rule_impacts else None
        withheld[label] = said["oracle_withheld_sales"]
    if rule_impacts:
        out["rule_impact"] = impacts
    out["oracle_withheld_sales"] = withheld


def _plot_continual(path: Optional[Path], method: str, tasks: list[tuple[str, Any]], result: dict[str, Any],
                    validation_size: int) -> None:
    """``--plot``: the run's score matrix to ``path``, its adaptation curves to ``path``-curves
    (moca run's two figures, for one method; the curves' title names the validation seeds)."""
    if path is None:
        return
    from moca.meta import VALIDATION_SEEDS
    from moca.regime import Regime
    from moca.report import plot_adaptation_curves, plot_score_matrices

    metrics = {"tasks": [label for label, _ in tasks],
               "regimes": {label: r.model_dump(mode="json") for label, r in tasks if isinstance(r, Regime)},
               "seeds": {"validation": list(VALIDATION_SEEDS[:validation_size])},
               "methods": {method: {k: result[k] for k in ("R", "adaptation_curves", "adaptation_steps")}}}
    _write_plot(path, lambda where: plot_score_matrices(metrics, where))
    _write_plot(_curves_path(path), lambda where: plot_adaptation_curves(metrics, where))


def _continual_record(tasks: list, steps: int, scenarios: int, checkpoint_dir: Optional[str],
                      params_file: Optional[Path], windows: bool = False) -> dict[str, Any]:
    """What a continual run's ``--json`` was run on, so that it can be re-scored: each
    label's regime fields (labels alone could not tell two rules apart; ``windows``: the
    accounting window on every one, CLSC-2's), the steps per regime, the test seeds, the
    checkpoint started from (None: the method's own start) and the ``--params`` file."""
    from moca.experiment import TEST_SEED  # (CLSC-2's test seeds start there too)
    from moca.regime import WINDOW_FIELD

    fields = {label: {**regime.model_dump(mode="json"), **({WINDOW_FIELD: regime.recycled_content_window}
                                                            if windows else {})} for label, regime in tasks}
    return {"regime_fields": fields, "steps": steps, "test_seeds": [TEST_SEED, TEST_SEED + scenarios - 1],
            "checkpoint": checkpoint_dir, "params_file": None if params_file is None else str(params_file)}


def _curves_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}-curves{path.suffix}")


def _say_plotted(path: Optional[Path]) -> None:
    if path is not None:
        console.print(f"wrote {path} (score matrix) and {_curves_path(path)} (validation score after each step)")


def _continual2(sequence: Path, method: str, checkpoint_dir: Optional[str], steps: int, scenarios: int,
                as_json: bool, params_file: Optional[Path] = None, keep_unchanged: bool = False,
                plot_file: Optional[Path] = None) -> None:
    """``moca continual --model CLSC-2`` (moca.experiment2.run_continual2; with --params,
    on that chain: its scenarios, oracle and the policy's scaling, the weights carried over)."""
    from moca.regime import load_sequence

    # (the names T1-T3 are CLSC-2's, W = 52; an object labelled T1 is read as written: it was
    # given W = 52 where its own window was 1, and scored otherwise than evaluate scores it)
    tasks = _unique_labels(load_sequence(sequence, "CLSC-2"))
    params = _load_params(params_file, "CLSC-2") if params_file is not None else None
    from moca.continual import method_spec

    spec = method_spec(method)
    if checkpoint_dir is not None and spec.init == "fresh":
        raise UsageError("--checkpoint: method 'scratch' trains a fresh policy per regime; it takes no checkpoint")
    import torch

    from moca.experiment import ExperimentConfig
    from moca.experiment2 import run_continual2
    from moca.meta2 import OracleCache2, load_policy2
    from moca.policy2 import LSTMPolicy2

    torch.set_num_threads(1)
    torch.manual_seed(0)  # finetune's and ewc's fresh start, as moca run's (it was unseeded: other numbers each run)
    module, _ = load_policy2(checkpoint_dir or "default")
    if params is not None:  # (the meta-init's weights carry over: run_continual2 reads only its weights)
        module = _retarget2(module, params, checkpoint_dir or "default",
                            quiet=checkpoint_dir is None and spec.init != "meta", adapting=True)
    init = {k: v.detach().clone() for k, v in module.named_parameters()} if checkpoint_dir is not None else None
    if checkpoint_dir is None and spec.init != "meta":  # finetune/ewc/scratch without a checkpoint: the base rule
        module.load_state_dict(LSTMPolicy2(module.params, module.config).state_dict())
    config = ExperimentConfig(steps=steps, test_size=scenarios)
    with _progress(as_json) as progress:
        bar = progress.add_task(f"{method} (CLSC-2)", total=len(tasks))
        result, _ = run_continual2(method, module, tasks, OracleCache2(module.params), config, init=init,
                                   progress=lambda d: progress.update(bar, description=d, advance=1),
                                   keep_unchanged=keep_unchanged)
    R = result["R"]
    out = {"model": "CLSC-2", "method": method, "regimes": [label for label, _ in tasks],
           **_continual_record(tasks, steps, scenarios, checkpoint_dir, params_file, windows=True),
           "R": R[1:], "R_initial": R[0],
           **{k: result[k] for k in ("average_final_score", "forgetting", "bwt", "fwt", "drop_first_after_second",
                                     "adaptation_steps", "adaptation_seconds", "violations")},
           "mean_forgetting": _mean_forgetting(R),
           "lowered_by_own_steps": _lowered_by_own_steps([label for label, _ in tasks], R)}
    if "protocol_choice" in result:  # moca: the update kept per regime, by validation
        out["protocol_choice"] = result["protocol_choice"]
    _say_sequence_caveats(out, tasks, OracleCache2(module.params).scenarios, scenarios, rule_impacts=False)
    _plot_continual(plot_file, method, tasks, result, config.validation_size)
    if as_json:
        _print_json(out)
        return
    _print_continual(out, [label for label, _ in tasks], R, f"{method} on CLSC-2",
                     " (--keep-unchanged lets moca keep the weights from before a regime where they validate "
                     "higher)" if method == "moca" and not keep_unchanged else "")
    if "protocol_choice" in out:
        console.print("update kept per regime, by mean validation score on the regimes seen: "
                      + ", ".join(f"{c['task']} {c['chosen']}" for c in out["protocol_choice"]))
    _say_plotted(plot_file)


@app.command()
def run(
    quick: bool = typer.Option(False, "--quick", help="The small version (fewer scenarios and steps)."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics to this JSON file (both "
                                                                  "worlds: {\"CLSC-1\": ..., \"CLSC-2\": ...})."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where runs/<id>/ (CLSC-1) and runs/<id>-clsc2/ "
                                                                   "are created."),
    methods: Optional[str] = typer.Option(None, "--methods", help="Comma-separated subset of the methods."),
    params_file: Optional[Path] = typer.Option(None, "--params", help=PARAMS_HELP + " One world's chain: without "
                                                                      "--model it runs CLSC-1 alone; with --model "
                                                                      "CLSC-2, CLSC-2's names. (The README's figures "
                                                                      "are for the default chains.)"),
    model: Optional[str] = typer.Option(None, "--model", help="One world only: CLSC-1 | CLSC-2 (T1-T3 with W = 52). "
                                                              "Default: both, CLSC-1 then CLSC-2."),
    peers: Optional[str] = typer.Option(None, "--peers",
                                        help="CLSC-2: comma-separated peers beside the oracle (threshold, mpc, "
                                             "mpc-sampled; 'none' for none; default: all three)."),
    test_scenarios: Optional[int] = typer.Option(None, "--scenarios", min=1, max=MOST_SCENARIOS, help="CLSC-2: test scenarios per "
                                                                                     "regime (default 20, --quick 4)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", min=1, max=2, help="Both worlds: 2 runs CLSC-1 in a second "
                                                                           "process beside CLSC-2 (the default on 2 or "
                                                                           "more cores; the same numbers), 1 runs them "
                                                                           "one after the other."),
) -> None:
    """The seed experiment: T1 -> T2 -> T3 for every method beside the peers and the oracle, on
    CLSC-1 and CLSC-2 (each world its own run folder; --model: one world)."""
    with _bad_input():  # every check before any work: a typo must not cost the first world's minutes
        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
        worlds = [_chosen_model(model)] if model is not None else list(MODELS)
        if params_file is not None and model is None:
            worlds = ["CLSC-1"]  # said below, once every check has passed (an error stays one line)
        from moca.files import check_folder

        check_folder(runs_dir, "--runs-dir")
        _output_file(json_file, "--json", _json_file("a moca run's metrics", ("id", "command"), worlds=True))
        # Options of one world, or of both at once, given where they do nothing: refused (they were ignored)
        if "CLSC-2" not in worlds:
            for option, value in (("--peers", peers), ("--scenarios", test_scenarios)):
                if value is not None:
                    raise UsageError(f"{option}: CLSC-2's (the CLSC-1 run's peers and test seeds are fixed); this "
                                     "run is CLSC-1 alone")
        if jobs is not None and len(worlds) == 1:
            raise UsageError(f"--jobs: runs the two worlds side by side or one after the other; this run is "
                             f"{worlds[0]} alone")
        chosen_peers = _run_peers(peers if peers is not None else "threshold,mpc,mpc-sampled")
        params = _load_params(params_file) if "CLSC-1" in worlds else None  # (the default chain without a file)
        params2 = _load_params(params_file, "CLSC-2") if params_file is not None and worlds == ["CLSC-2"] else None
        from moca.continual import METHODS

        if chosen == []:  # (an empty --methods ran every method: minutes of work nobody asked for)
            raise UsageError(f"--methods {methods!r}: empty list (choose from {', '.join(METHODS)})")
        if chosen is not None and len(set(chosen)) < len(chosen):
            raise UsageError(f"--methods {methods!r}: a method is repeated")
        for m in chosen or []:
            _known_method("--methods", m)  # unknown names fail here, for both worlds
            if "CLSC-2" in worlds:  # (not after CLSC-1's minutes)
                from moca.experiment2 import check_init_ships

                check_init_ships(m)
    if params_file is not None and model is None:
        sys.stderr.write(f"moca: --params {params_file}: one chain's parameters, so only CLSC-1 runs "
                         "(for a CLSC-2 chain: --model CLSC-2 --params FILE)\n")
    command = _command_line()
    results: dict[str, Any] = {}  # world -> (metrics, run dir)
    failures: dict[str, tuple[str, int]] = {}  # world -> (one-line message, exit code)
    if len(worlds) > 1:
        # One time stamp for both folders, so that runs/<id> and runs/<id>-clsc2 pair up.
        suffix = "-quick" if quick else ""
        stamp = _run_stamp()
        ids: dict[str, Optional[str]] = {"CLSC-1": f"{stamp}{suffix}", "CLSC-2": f"{stamp}-clsc2{suffix}"}
    else:
        ids = {worlds[0]: None}
    # (SIGTERM, as `timeout` or a batch scheduler sends it, killed the run without a word where
    # Ctrl-C says it was interrupted, keeps a world already written and stops the second process)
    with _sigterm_as_ctrl_c():
        if len(worlds) > 1 and (jobs or (2 if (os.cpu_count() or 1) >= 2 else 1)) >= 2:
            results, failures = _both_worlds_at_once(quick, runs_dir, chosen, chosen_peers, test_scenarios, command,
                                                     ids, params)
        else:
            for world in worlds:
                try:
                    if world == "CLSC-1":
                        results[world] = _run1(quick, runs_dir, chosen, params, command, ids[world])
                    else:
                        results[world] = _run2(quick, runs_dir, chosen, chosen_peers, test_scenarios, command,
                                               ids[world], params2)
                except Exception as err:  # one world's failure must not lose the other's run (its folder is written)
                    _world_failed(failures, world, _run_failure(err), say=len(worlds) > 1)
    if json_file is not None and results:
        data: Any = (results[worlds[0]][0] if len(worlds) == 1 else
                     {w: results[w][0] if w in results else {"error": failures[w][0]} for w in worlds})
        _write_atomic(json_file, json.dumps(data, indent=1))
    if len(worlds) > 1:
        _print_run_summary(worlds, results, failures)
    if len(worlds) == 1 and failures:
        _fail(*failures[worlds[0]])
    if failures:  # each failure is already on stderr, above the summary
        raise typer.Exit(max(code for _, code in failures.values()))


def _run_peers(peers: str) -> list[str]:
    """``--peers``'s value, checked."""
    chosen = [] if peers.strip() == "none" else [p.strip() for p in peers.split(",") if p.strip()]
    for peer in chosen:
        if peer not in ("threshold", "mpc", "mpc-sampled"):
            raise UsageError(f"--peers: {peer!r} is not one of threshold, mpc, mpc-sampled, none")
    return chosen


def _run_failure(err: Exception) -> tuple[str, int]:
    """A world's run that raised: its one-line message and exit code (2 bad input, 1 a bug)."""
    if isinstance(err, OSError):
        return f"{err.filename + ': ' if err.filename else ''}{err.strerror or err}", EXIT_BAD_INPUT
    if isinstance(err, _input_errors()):
        return _message(err), EXIT_BAD_INPUT
    if isinstance(err, typer.Exit):
        return f"exited with code {err.exit_code}", err.exit_code or 1
    if os.environ.get("MOCA_TRACEBACK"):
        import traceback

        traceback.print_exc()
    return f"internal error: {type(err).__name__}: {err} (set MOCA_TRACEBACK=1 for the traceback)", 1


def _world_failed(failures: dict[str, tuple[str, int]], world: str, failure: tuple[str, int],
                  say: bool = True) -> None:
    """Record a world's failure (one-line message, exit code); ``say``: name it on stderr as it
    happens, when the other world runs on."""
    failures[world] = failure
    if say:
        sys.stderr.write(f"moca: error: {world} run failed: {failure[0]}\n")


def _run_stamp() -> str:
    """A run folder's time stamp (UTC, to the second)."""
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def _experiment1(quick: bool, runs_dir: Path, methods: Optional[list[str]], params: Any, command: str,
                 run_id: Optional[str], progress: Callable[[str, int], None], warn: Callable[[str], None],
                 config: Any = None) -> tuple[dict, Path]:
    """The seed experiment on CLSC-1 (moca.experiment.run_experiment): (metrics, run dir)."""
    from moca.experiment import run_experiment

    return run_experiment(quick=quick, methods=methods, runs_dir=runs_dir, command=command, params=params,
                          warn=warn, progress=progress, run_id=run_id, config=config)


def _experiment2(quick: bool, runs_dir: Path, methods: Optional[list[str]], peers: list[str],
                 test_scenarios: Optional[int], command: str, run_id: Optional[str], params: Any,
                 progress: Callable[[str], None]) -> tuple[dict, Path]:
    """The seed experiment on CLSC-2 (moca.experiment2.run_experiment2): (metrics, run dir)."""
    import torch

    from moca.experiment2 import quick_config2, run_experiment2

    torch.set_num_threads(1)
    config = None
    if test_scenarios is not None:
        from moca.experiment import ExperimentConfig

        config = (quick_config2() if quick else ExperimentConfig()).model_copy(update={"test_size": test_scenarios})
    return run_experiment2(quick=quick, methods=methods, runs_dir=runs_dir, config=config, peers=peers,
                           command=command, run_id=run_id, params=params, warn=_warn, progress=progress)


def _run1(quick: bool, runs_dir: Path, methods: Optional[list[str]], params: Any, command: str,
          run_id: Optional[str] = None) -> tuple[dict, Path]:
    """The seed experiment on CLSC-1 with its progress bar, then its table and targets."""
    from moca.experiment import work_units

    with _progress(False) as progress:
        bar = progress.add_task("moca run CLSC-1", total=work_units(quick, methods))
        metrics, run_dir = _experiment1(quick, runs_dir, methods, params, command, run_id,
                                        lambda d, n: progress.update(bar, description=d, completed=n), _warn)
    _show1(metrics, run_dir)
    return metrics, run_dir


def _run2(quick: bool, runs_dir: Path, methods: Optional[list[str]], peers: list[str], test_scenarios: Optional[int],
          command: str, run_id: Optional[str] = None, params: Any = None) -> tuple[dict, Path]:
    """The seed experiment on CLSC-2 with its progress bar, then its table and target."""
    with _progress(False) as progress:
        bar = progress.add_task("moca run CLSC-2", total=None)
        metrics, run_dir = _experiment2(quick, runs_dir, methods, peers, test_scenarios, command, run_id, params,
                                        lambda d: progress.update(bar, description=d))
    _show2(metrics, run_dir)
    return metrics, run_dir


def _both_worlds_at_once(quick: bool, runs_dir: Path, methods: Optional[list[str]], peers: list[str],
                         test_scenarios: Optional[int], command: str, ids: dict[str, Optional[str]],
                         params: Any) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    """CLSC-1 in a second process while CLSC-2 runs in this one; then both tables, in order.

    The two runs share nothing, and each spends its time in small tensor, projection and LP
    calls that keep about one core busy, so on 2 cores both end in about the time of the
    longer one (``moca run`` ~40% sooner). The numbers are those of one world after the
    other: the second process is fresh (spawned, not forked: a fork would copy this
    process's torch and OpenMP state) with torch's default thread count, as CLSC-1 has when
    it runs first. Returns (results, failures) as the one-after-the-other loop does."""
    import multiprocessing
    import threading

    from moca.experiment import default_config, work_units

    config = default_config(quick)  # (as this process has it: the tests shrink it)
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    second = context.Process(target=_clsc1_in_second_process, daemon=True, name="moca run CLSC-1",
                             args=(send, dict(quick=quick, runs_dir=runs_dir, methods=methods, params=params,
                                              command=command, run_id=ids["CLSC-1"], config=config)))
    results: dict[str, Any] = {}
    failures: dict[str, tuple[str, int]] = {}
    stopping = threading.Event()  # this process stops the second one: its end is no failure to report

    try:
        with _progress(False) as progress:
            bar1 = progress.add_task("moca run CLSC-1", total=work_units(quick, methods, config=config))
            bar2 = progress.add_task("moca run CLSC-2", total=None)
            # Its threads are idle between torch's parallel sections: spinning there would take the
            # core this process's CLSC-2 run needs (measured: --quick 117 s spinning, 69 s passive).
            # Set in its environment from the start: OpenMP reads it once, when torch is imported,
            # and unpickling this call's arguments imports torch there before anything else runs.
            with _environment(OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE")):
                second.start()
            send.close()  # (this process's copy: once the second process ends, recv() raises EOFError)

            def relay() -> None:
                """The second process's progress, warnings and outcome, as they come."""
                while True:
                    try:
                        kind, *what = receive.recv()
                    except (EOFError, OSError):  # it ended without its outcome: killed, or out of memory
                        if stopping.is_set():
                            return
                        second.join()
                        _world_failed(failures, "CLSC-1", (f"its process ended without a result (exit code "
                                                           f"{second.exitcode}: killed, or out of memory?)", 1))
                        return
                    if kind == "progress":  # (each bar names its world: both have an 'ewc: learning T1')
                        progress.update(bar1, description=f"[CLSC-1] {what[0]}", completed=what[1])
                    elif kind == "warn":
                        _warn(what[0])
                    elif kind == "done":
                        results["CLSC-1"] = tuple(what)
                        return
                    else:
                        _world_failed(failures, "CLSC-1", tuple(what))
                        return

            listener = threading.Thread(target=relay, daemon=True)
            listener.start()
            try:
                results["CLSC-2"] = _experiment2(quick, runs_dir, methods, peers, test_scenarios, command,
                                                 ids["CLSC-2"], None,
                                                 lambda d: progress.update(bar2, description=f"[CLSC-2] {d}"))
            except Exception as err:  # one world's failure must not lose the other's run
                _world_failed(failures, "CLSC-2", _run_failure(err))
            listener.join()
    finally:  # (Ctrl-C, or an error of this process: the second one must not outlive it)
        stopping.set()
        killed = second.is_alive()
        if killed:
            second.kill()
        if second.pid is not None:
            second.join()
        receive.close()
        if killed:  # (a kill runs no cleanup: the run folder it was writing, if any, goes here)
            from moca.files import remove_staging

            remove_staging(runs_dir, ids["CLSC-1"])
    for world, show in (("CLSC-1", _show1), ("CLSC-2", _show2)):
        if world in results:
            show(*results[world])
    return {w: results[w] for w in ("CLSC-1", "CLSC-2") if w in results}, failures


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Within: these environment variables set (for a process started here), then restored."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _clsc1_in_second_process(send: Any, arguments: dict[str, Any]) -> None:
    """The second process of :func:`_both_worlds_at_once`: CLSC-1's run, its progress and
    warnings sent back as they come, then ``("done", metrics, run dir)`` or ``("failed",
    message, exit code)``."""
    # Ctrl-C reaches both processes, and so does `timeout`'s SIGTERM (to the process group);
    # the first one stops this one, so it must not die first (with a traceback of its own, or
    # as a failed world reported beside the interruption).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        outcome = ("done", *_experiment1(**arguments, progress=lambda d, n: send.send(("progress", d, n)),
                                         warn=lambda text: send.send(("warn", text))))
    except Exception as err:
        outcome = ("failed", *_run_failure(err))
    send.send(outcome)
    send.close()


def _show1(metrics: dict, run_dir: Path) -> None:
    """CLSC-1's run: its table, targets and folder."""
    from moca.report import summary_table

    headers, cells = summary_table(metrics)
    table = Table(title=f"moca run {metrics['id']}: score = oracle cost / policy cost on test scenarios (1.0 = optimal)")
    for h in headers:
        table.add_column(h, justify="left" if h == "policy" else "right")
    for row in cells:
        table.add_row(*row)
    wide = console if console.is_terminal else _wide_console()  # a log file should get the whole table
    wide.print(table)
    for t in metrics.get("targets", []):
        console.print(f"{'met' if t['met'] else 'MISSED'}: {t['what']} — target {t['target']}, measured {t['measured']}")
    if metrics.get("aliases"):
        console.print("; ".join(f"{a} = {b} (same meta-init checkpoint)" for a, b in metrics["aliases"].items()))
    console.print(f"wrote {run_dir}/ (metrics.json, report.md, plots) in {metrics['wall_seconds']:.0f} s")


def _show2(metrics: dict, run_dir: Path) -> None:
    """CLSC-2's run: its table, target and folder."""
    table = Table(title=f"moca run --model CLSC-2 {metrics['id']}: score = oracle cost / policy cost (1.0 = optimal)")
    for h in ("policy", *metrics["tasks"], "mean", "violations"):
        table.add_column(h, justify="left" if h == "policy" else "right")
    for name, by_task in metrics["baselines"].items():
        scores = [by_task[t]["score"] for t in metrics["tasks"]]
        table.add_row(name, *(f"{x:.4f}" for x in scores), f"{sum(scores) / len(scores):.4f}",
                      str(sum(by_task[t]["violations"] for t in metrics["tasks"])))
    for name, m in metrics["methods"].items():
        table.add_row(f"{name} (after T3)", *(f"{x:.4f}" for x in m["R"][-1]), f"{m['average_final_score']:.4f}",
                      str(m["violations"]))
    (console if console.is_terminal else _wide_console()).print(table)
    t = metrics["targets"]
    if t.get("gap_to_target") is not None:
        met = t["gap_to_target"] >= 0
        console.print(f"{'met' if met else 'MISSED'}: moca >= best peer ({t['best_peer']}, "
                      f"{t['best_peer_mean_score']:.4f}) + 0.03 — measured {t['moca_average_final_score']:.4f}")
    console.print(f"wrote {run_dir}/ (metrics.json, report.md, plots) in {metrics['wall_seconds']:.0f} s")


def _print_run_summary(worlds: list[str], results: dict[str, Any], failures: dict[str, tuple[str, int]]) -> None:
    """The closing lines of a run of both worlds: each world's headline, or why it failed."""
    from moca.report import run_summary

    def number(value: Optional[float], spec: str) -> str:
        return "–" if value is None else format(value, spec)

    table = Table(title="moca run: both worlds (score = oracle cost / policy cost, mean over T1-T3 after T3)")
    for h in ("world", "moca", "best peer", "violations", "moca drop on T1 after T2", "wall s", "run folder"):
        table.add_column(h, justify="left" if h in ("world", "best peer", "run folder") else "right")
    for world in worlds:
        if world not in results:
            table.add_row(world, "FAILED", "–", "–", "–", "–", "none written (the error is on stderr)")
            continue
        metrics, run_dir = results[world]
        s = run_summary(metrics)
        peer = f"{s['best_peer']} {s['best_peer_mean_score']:.4f}" if s["best_peer"] else "–"
        drop = s["moca_drop_first_after_second"]
        table.add_row(world, number(s["moca_average_final_score"], ".4f"), peer,
                      "–" if s["violations"] is None else str(s["violations"]),
                      "–" if drop is None else f"{100 * drop:.2f}%", number(s["wall_seconds"], ".0f"), f"{run_dir}/")
    (console if console.is_terminal else _wide_console()).print(table)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    data: Path = typer.Option(Path("moca-data"), "--data", help="Directory of the database and weight files."),
    token: Optional[str] = typer.Option(None, "--token", envvar="MOCA_TOKEN",
                                        help="Require 'Authorization: Bearer TOKEN' on every mutating endpoint."),
    adapt_steps: int = typer.Option(3, "--adapt-steps", min=0, max=MOST_STEPS, help="Gradient steps per regulation event."),
    support: int = typer.Option(8, "--support", min=1, max=100, help="Support scenarios per adaptation (seeds 800+)."),
    validation: int = typer.Option(8, "--validation", min=1, max=100,
                                   help="Held-out validation scenarios (seeds 900+) a new version must pass."),
    keep_decisions: int = typer.Option(100_000, "--keep-decisions", min=0, max=LARGEST_ID,
                                       help="Decisions kept in the log per chain (0 = all)."),
    adapt_base: str = typer.Option("caps", "--adapt-base",
                                   help="CLSC-1 chains: default = adapt the version a job starts from; auto = "
                                        "through moca adapt's portfolio (that version, the LSTM over the mapped "
                                        "rule, the LSTM over the rolling LP; the best on validation becomes the "
                                        "new version); map or mpc = that candidate only; caps = auto where the new "
                                        "regime caps emissions (CLSC-1's rule does not model the cap), default "
                                        "elsewhere."),
) -> None:
    """Run the real-time controller service (FastAPI + uvicorn; OpenAPI at /docs, dashboard at /)."""
    from moca.serve import SERVICE_BASES, AdaptSettings, StartError, StoreError
    from moca.serve import serve as run_service

    from moca.files import check_folder

    with _bad_input():
        check_folder(data, "--data")
    # (click reads an empty MOCA_TOKEN as unset: a secret lookup that came back empty,
    # MOCA_TOKEN="$(cat missing-file)", started the service with authentication off)
    from_env = os.environ.get("MOCA_TOKEN")
    token = from_env if token is None else token
    if token is not None and not token.strip():
        _fail("MOCA_TOKEN: empty (unset it to run without authentication)" if token == from_env else "--token: empty")
    if adapt_base not in SERVICE_BASES:
        _fail(f"--adapt-base: {adapt_base!r} is not one of {', '.join(SERVICE_BASES)}")

    def banner() -> None:  # once the data directory and the address are this server's
        err_console.print(f"moca serve on http://{host}:{port} (data {data}, auth {'on' if token else 'off'})",
                          highlight=False)

    try:
        run_service(host=host, port=port, data=data, token=token,
                    adapt=AdaptSettings(steps=adapt_steps, support=support, validation=validation, base=adapt_base),
                    keep_decisions=keep_decisions, on_ready=banner)
    except (StartError, StoreError) as err:
        _fail(str(err))


# --- sweep ---------------------------------------------------------------------------------


@app.command()
def sweep(
    field: str = typer.Option(..., "--field", help="Regime field to vary (recycled_content_min, carbon_tax, emission_cap, landfill_tax, recovery_target; CLSC-2 also recycled_content_window)."),
    values: str = typer.Option(..., "--values", help="A list 0,0.1,0.2 or a range start:stop:step (stop included)."),
    model: str = typer.Option("CLSC-1", "--model", help="World model: CLSC-1 | CLSC-2."),
    base: Optional[str] = typer.Option(None, "--base", help="The other rules: a regime name or YAML/JSON file (default: none)."),
    policies: str = typer.Option("oracle,mpc,threshold", "--policies", help="Comma-separated: oracle, mpc, threshold, moca."),
    scenarios: int = typer.Option(20, "--scenarios", help="Test scenarios per value (seeds seed .. seed+N-1)."),
    seed: int = typer.Option(1000, "--seed", help="First test seed."),
    adapt_steps: Optional[int] = typer.Option(None, "--adapt-steps", help="moca: gradient steps of adaptation per "
                                                                          "value (default 5)."),
    moca_base: Optional[str] = typer.Option(None, "--moca-base", help="moca: default = the meta-init adapted; "
                                                           "auto|map|mpc = through moca adapt's portfolio "
                                                           "(CLSC-2: auto|mpc; see moca adapt --help); caps (the "
                                                           "default) = auto at values with an emission cap, else "
                                                           "default."),
    workers: int = typer.Option(2, "--workers", help="Local processes (1: run in this process); CPUs of a local Ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray", help="Run as Ray tasks: 'auto' (a local Ray for the run) or a cluster address."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON to this file."),
    plot_file: Optional[Path] = typer.Option(None, "--plot", help="Draw compliance cost and emissions against the value (PNG/PDF/SVG)."),
) -> None:
    """Regulatory impact analysis: sweep one rule's strength; cost of compliance, emissions, shadow price."""
    from moca.cluster import BackendError, backend_from_options
    from moca.files import OutputError
    from moca.regime import RegimeError
    from rich.text import Text

    from moca.sweep import SweepError, make_plan, run_sweep

    try:
        plan = make_plan(model, field, values, base=base, policies=policies, scenarios=scenarios, seed=seed,
                         adapt_steps=5 if adapt_steps is None else adapt_steps,
                         moca_base="caps" if moca_base is None else moca_base)
        if "moca" in plan.policies:
            _warn_if_not_held_out(seed, scenarios)
        else:  # (moca's options, valid values, were taken and ignored)
            for option, value in (("--adapt-steps", adapt_steps), ("--moca-base", moca_base)):
                if value is not None:
                    raise UsageError(f"{option}: moca's, and --policies {policies!r} has no moca")
        _output_file(json_file, "--json", _json_file("a moca sweep's results", ("field", "values", "policies")))
        _plot_path(plot_file)
        if json_file is not None and plot_file is not None and \
                os.path.realpath(json_file) == os.path.realpath(plot_file):  # (the figure was written over the JSON)
            raise UsageError(f"--json {json_file} and --plot {plot_file}: the same file; give each its own")
        backend = backend_from_options(ray_address, workers)
    except (SweepError, BackendError, RegimeError, UsageError, OutputError) as err:
        _fail(_message(err))
    # With --json, each finished task is kept beside it as it finishes: a sweep that stops is
    # taken up again by the same command (run_sweep's journal), not started over.
    from moca.files import output_target

    from moca.oracle import OracleError  # (torch and HiGHS: only once the input is known good)

    journal = (json_file.with_name(json_file.name + ".tasks.jsonl")  # (none beside a stream: /dev/stdout)
               if json_file is not None and not output_target(json_file)[1] else None)
    try:
        with _progress(False) as progress, _sigterm_as_ctrl_c():
            bar = progress.add_task(f"sweep {field} ({backend.kind})", total=None)
            result = run_sweep(plan, backend, on_done=lambda n, total: progress.update(bar, completed=n, total=total),
                               journal=journal, keep=lambda result: _keep_sweep(result, json_file, plot_file))
    except (BackendError, SweepError) as err:
        _fail(_message(err))
    except OracleError as err:  # the user's numbers are beyond HiGHS (its message says which): bad input, exit 2
        _fail(f"{_message(err)}; {_journal_note(journal, plan)}")
    except (RuntimeError, OSError) as err:  # a worker died, a solver failed: say so and what is kept
        _fail(f"sweep failed: {type(err).__name__}: {_message(err)}; {_journal_note(journal, plan)}", code=1)
    except KeyboardInterrupt:
        sys.stderr.write(f"moca: sweep stopped; {_journal_note(journal, plan)}\n")
        raise
    if result["resumed_tasks"]:
        console.print(f"{result['resumed_tasks']} of {_count(result['tasks'], 'task')} taken from {journal} (finished by an "
                      "earlier run of this sweep)")
    _sweep_table(result)
    for warning in result["warnings"]:
        console.print(Text.assemble(("warning", "bold"), f": {warning}"), highlight=False)
    wrote = ", ".join(str(p) for p in (json_file, plot_file) if p is not None)
    console.print(f"{_count(result['tasks'], 'task')} in {result['seconds']:.1f} s on {result['backend']['kind']}"
                  + (f"; wrote {wrote}" if wrote else ""))


def _keep_sweep(result: dict, json_file: Optional[Path], plot_file: Optional[Path]) -> None:
    """``--json`` and ``--plot``, written while the sweep's journal is still locked (run_sweep
    removes it after this, so a second run cannot take every task from a journal about to go)."""
    from moca.sweep import plot_sweep

    if json_file is not None:
        _write_atomic(json_file, json.dumps(result, indent=1))
    if plot_file is not None:
        _write_plot(plot_file, lambda where: plot_sweep(result, where))


def _journal_note(journal: Optional[Path], plan: Any) -> str:
    """What a stopped sweep of ``plan`` kept, and how to go on from it."""
    from moca.sweep import finished_in_journal

    if journal is None:
        return "nothing written (with --json FILE, finished tasks are kept and a rerun goes on from them)"
    done = finished_in_journal(journal, plan)  # (its lines overcounted: one cut short, another sweep's)
    if not done:
        return "no task had finished"
    return f"{_count(done, 'finished task')} kept in {journal}: the same command again goes on from them"


def _sweep_table(result: dict) -> None:
    from moca.impact import whole

    unmet = result["unmet_metric"].split(" ")[0]
    # (an emission cap's neutral value is None, no cap: ":g" of it crashed every cap sweep's table)
    neutral = f"{result['field']}={result['neutral']:g}" if result["neutral"] is not None else f"no {result['field']}"
    table = Table(title=f"{result['model']}: {result['field']} ({result['unit']}), {result['scenarios']} scenarios from "
                        f"seed {result['seeds'][0]}; compliance cost vs {neutral}")
    # (per one unit of the field: of a share, per 1.0, where moca evaluate gives it per percentage point)
    for col in ("policy", "value", "cost (EUR)", "95% interval", "compliance cost", "emissions (t CO2)",
                "recycled share", unmet, "violations", f"shadow price (EUR per {result['unit']}) / adapt."):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, entry in result["policies"].items():
        for i, value in enumerate(result["values"]):
            if name == "oracle":
                price = entry["shadow_price"][i]
                extra = ("-" if price is None else whole(price)) + (" unmet!" if entry["demand_unmet_by_rule"][i] else "")
            elif name == "moca" and entry.get("base") and entry["base"][i] != "default":
                # through the portfolio: the candidate deployed and the seconds of the whole choice
                extra = f"{entry['candidate'][i]}, {entry['adapt_seconds_total'][i]:.1f} s in all"
            elif name == "moca":
                extra = f"{_count(entry['adaptation_steps'][i], 'step')}, {entry['adaptation_seconds'][i]:.2f} s"
            else:
                extra = ""
            lo, hi = entry["cost_ci"][i]
            table.add_row(name if i == 0 else "", f"{value:g}", f"{entry['cost'][i]:,.0f}", f"{lo:,.0f} – {hi:,.0f}",
                          _eur(entry["compliance_cost"][i]), f"{entry['emissions'][i] / 1000:,.1f}",
                          f"{entry['recycled_share'][i]:.3f}", f"{entry[unmet][i]:,.1f}", str(entry["violations"][i]),
                          extra)
    wide = console if console.is_terminal else _wide_console()
    wide.print(table)


# --- peers ---------------------------------------------------------------------------------

peers_app = typer.Typer(no_args_is_help=True, help="The peers moca is compared with (PPO training).")
app.add_typer(peers_app, name="peers")


@peers_app.command("train-ppo")
def peers_train_ppo(
    output: Path = typer.Option(..., "-o", "--output", help="Checkpoint directory to write (safetensors + JSON)."),
    seconds: float = typer.Option(300.0, "--seconds", help="Wall-clock training budget (s, > 0)."),
    seed: int = typer.Option(0, "--seed", min=0, max=LARGEST_PPO_SEED,
                             help="Seed of PPO and of the training episodes (Stable-Baselines3 takes 32 bits)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop once this many env steps are "
                                            "trained on too (PPO learns from whole rollouts of 2,048: rounded up)."),
    eval_every: int = typer.Option(20000, "--eval-every", min=1, help="Env steps between learning-curve scores."),
    model: str = typer.Option("CLSC-1", "--model", help="The world: CLSC-1 | CLSC-2."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Train Stable-Baselines3 PPO on the Gymnasium env over the regime distribution; write the
    policy, its learning curve (JSON) and a plot of it."""
    from dataclasses import asdict

    from moca.baselines.ppo import PPOConfig, plot_curve, save_ppo, train_ppo

    if not (seconds > 0 and math.isfinite(seconds)):  # (0 trained 4 env steps and wrote them as a policy
        # without a word; nan was told it "should be >= 0", inf was named as the config's ppo.seconds)
        _fail(f"--seconds {seconds:g}: the training budget must be a finite number of seconds > 0 "
              "(--max-steps stops it sooner)")
    with _bad_input():
        _output_dir(output)  # before the training's minutes, not after them
        config = PPOConfig(seconds=seconds, seed=seed, max_steps=max_steps, eval_every=eval_every, model=model)
    with _progress(as_json) as progress, _stop_on_ctrl_c("env step") as stop:
        bar = progress.add_task("PPO", total=None)
        agent, curve = train_ppo(config, progress=lambda steps, score: progress.update(
            bar, description=f"PPO: {_count(steps, 'step')}, validation score {score:.3f}"), stop=stop)
    trained, unlearned = curve["trained_steps"], curve["collected_steps"] - curve["trained_steps"]
    rollout = config.n_envs * config.n_steps
    untrained = f"{_count(unlearned, 'env step')} of an unfinished rollout not learned from"
    if trained == 0:  # (4 steps, or a Ctrl-C in the first seconds, were written as a policy)
        sys.stderr.write(f"moca: {'interrupted: ' if curve.get('interrupted') else ''}no rollout of "
                         f"{rollout:,} env steps ended ({untrained}): nothing learned, nothing written to "
                         f"{output}; give more --seconds\n")
        raise typer.Exit(130 if curve.get("interrupted") else 1)
    command = "moca peers " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "moca peers train-ppo"
    _save_trained(output, lambda where: save_ppo(where, agent.policy, {
        "model": config.model, "config": asdict(config), "command": command, "env_steps": trained,
        "collected_steps": curve["collected_steps"], "wall_seconds": curve["wall_seconds"], "learning_curve": curve}))
    _write_atomic(output / "learning_curve.json", json.dumps(curve, indent=1))
    plot_curve(curve, output / "learning_curve.png", title=f"PPO on {config.model}")
    out = {"checkpoint": str(output), "env_steps": trained, "collected_steps": curve["collected_steps"],
           "wall_seconds": curve["wall_seconds"], "validation_score": curve["score"][-1],
           "learning_curve": str(output / "learning_curve.json"), "interrupted": curve.get("interrupted", False)}
    if as_json:
        _print_json(out)
    else:
        console.print(f"wrote {output}: trained on {trained:,} env steps in {out['wall_seconds']:.0f} s"
                      + (f" ({untrained})" if unlearned else "") + f", validation score {out['validation_score']:.4f}")
    if out["interrupted"]:
        sys.stderr.write(f"moca: interrupted: the policy holds {trained:,} env steps of training"
                         + (f" ({untrained})" if unlearned else "") + "\n")
        raise typer.Exit(130)


@contextmanager
def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err_console.real(), disable=quiet or not err_console.is_terminal, transient=True)
    with progress:
        yield progress


def _phase_bars(progress: Any) -> Callable[[str, int, int | None], None]:
    """A ``progress(what, done, total)`` callback of the library (moca.portfolio.adapt_portfolio2)
    as one bar per phase under the command's own line: a new phase hides the last one's bar
    (rich's ``update`` cannot take a counted bar back to an uncounted one)."""
    current: dict[str, Any] = {}

    def tell(what: str, done: int, total: int | None) -> None:
        if current.get("what") != what:
            if "task" in current:
                progress.update(current["task"], visible=False)
            current.update(what=what, task=progress.add_task(what, total=total))
        progress.update(current["task"], completed=done, total=total)  # (a phase may end short of its budget)

    return tell


def _count(n: int, noun: str) -> str:
    """``1 meta step``, ``2 meta steps``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _command_line() -> str:
    """The command as the user typed it (for report.md and checkpoints), shell-quoted."""
    import shlex

    return shlex.join(["moca", *sys.argv[1:]])


def _kinds(err: BaseException) -> set[str]:
    """Class names of ``err`` and its bases: typer >= 0.29 vendors click under another
    module, older typers raise click's own exceptions; both have the same names."""
    return {cls.__name__ for cls in type(err).__mro__}


class _CtrlC:
    """SIGINT as Python's own handler takes it (KeyboardInterrupt), remembered: typer (0.29)
    turns a KeyboardInterrupt into a silent exit 130, and moca says "interrupted" instead."""

    seen = False

    @classmethod
    def install(cls) -> None:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # (not where it is ignored)
            signal.signal(signal.SIGINT, cls.handle)

    @classmethod
    def handle(cls, signum: int, frame: Any) -> None:
        cls.seen = True
        if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
            # Raised here, it may land in the import system's module-lock callback, where
            # Python prints "Exception ignored" and runs on: the Ctrl-C was lost and the
            # command ran to its end (an evaluation imports as it goes). Sent again a moment
            # later, it arrives outside the import.
            import threading

            timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
            return
        raise KeyboardInterrupt


#: What the machine, not moca, makes fail: a full disk or quota, a file over ``ulimit -f``, a
#: read-only file system, a disk error. Said in one line (exit 1), not as an internal error.
_SYSTEM_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: every error is one line on stderr (exit 2 for bad input)."""
    command = typer.main.get_command(app)
    _CtrlC.install()
    try:
        code = command.main(args=argv, prog_name="moca", standalone_mode=False)
        if code == 130 and _CtrlC.seen:
            sys.stderr.write("moca: interrupted\n")
    except KeyboardInterrupt:
        sys.stderr.write("moca: interrupted\n")
        code = 130
    except Exception as err:
        kinds = _kinds(err)
        if "NoArgsIsHelpError" in kinds:  # plain `moca`: the help, as --help gives it
            sys.stdout.write(err.format_message() + "\n")
            code = 0
        elif "Abort" in kinds or _CtrlC.seen:  # (Ctrl-C inside an import can come out as another
            # error: an ImportError of a C extension, a RuntimeError from __set_name__; no bug)
            sys.stderr.write("moca: interrupted\n")
            code = 130
        elif "ClickException" in kinds:  # typer's own checks: ranges, missing or unknown options
            ctx = getattr(err, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if "UsageError" in kinds and ctx is not None else ""
            code = _one_line(err.format_message() + hint, getattr(err, "exit_code", EXIT_BAD_INPUT))
        elif isinstance(err, OSError) and err.errno in _SYSTEM_ERRORS:  # the machine's, not a bug
            code = _one_line(f"{f'{err.filename}: ' if err.filename else ''}{err.strerror}", 1)
        elif os.environ.get("MOCA_TRACEBACK"):
            raise
        else:  # a bug, not bad input: still one line, the traceback on request
            code = _one_line(f"internal error: {type(err).__name__}: {err} (set MOCA_TRACEBACK=1 for the traceback)", 1)
    sys.exit(code or 0)


def _one_line(message: str, code: int) -> int:
    try:
        _fail(message, code)
    except typer.Exit as done:
        return done.exit_code
    return code


if __name__ == "__main__":
    main()
