"""The `moca run` report: a run's metrics dict as ``report.md`` and PNG plots.

Everything here reads the plain metrics dict that ``moca.experiment`` saves as
``runs/<id>/metrics.json`` (described by :class:`Metrics` below), so a report can be
rebuilt from a saved ``metrics.json`` without running anything. Every score is
``oracle cost / policy cost`` on held-out test scenarios (1.0 = optimal).

Only ``methods.<name>.R`` is required of a method; every other part may be missing and
is then left out of the report (or shown as "–"). Malformed parts raise
:class:`ReportError`, naming the part.

Plots use matplotlib's object API (``Figure`` rendered by the Agg canvas), not pyplot:
no display is needed, no global backend is switched, and no figure is left open.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter
from pydantic import TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict  # pydantic needs these on Python < 3.12

from moca.files import figure_metadata, parse_problem

# --- the metrics dict ----------------------------------------------------------------------

Score = float | None  # None (or NaN) = not measured


class Latency(TypedDict):
    """Decision latency of the deployment path (policy + exact projection), microseconds:
    wall clock, and (moca's methods) the deciding thread's CPU time."""

    p50: float | None
    p99: float | None
    cpu_p50: NotRequired[float | None]
    cpu_p99: NotRequired[float | None]


class Machine(TypedDict, total=False):
    cpu: str
    cores: int
    python: str
    torch: str


class Seeds(TypedDict, total=False):
    train: str  # how training scenarios are seeded, in words
    test: list[int]
    validation: list[int]


class BaselineTask(TypedDict):
    """A baseline (oracle, threshold rule, MPC) on one task's test scenarios."""

    score: Score
    mean_cost: NotRequired[float | None]  # EUR per episode
    violations: NotRequired[int | None]
    decision_latency_us: NotRequired[Latency]


class MethodResult(TypedDict):
    """One continual method over the task sequence (N tasks)."""

    R: list[list[Score]]  # [N+1][N]: row 0 before learning, row i+1 after task i; column = task scored
    average_final_score: NotRequired[Score]  # mean of R[N]
    forgetting: NotRequired[list[Score]]  # [N]
    bwt: NotRequired[Score]
    fwt: NotRequired[Score]
    drop_first_after_second: NotRequired[Score]  # (R[1][0] - R[2][0]) / R[1][0], a fraction
    adaptation_steps: NotRequired[list[int | None]]  # [N]; None = 99% of plateau never reached
    adaptation_seconds: NotRequired[list[float | None]]  # [N] wall seconds
    adaptation_curves: NotRequired[list[list[Score]]]  # [N][steps+1] validation score after k steps
    violations: NotRequired[int | None]
    correction: NotRequired[float | None]  # mean normalised distance the safety layer moved raw actions
    decision_latency_us: NotRequired[Latency]
    wall_seconds: NotRequired[float | None]
    final_mean_cost: NotRequired[list[float | None]]  # [N] EUR per episode with the final weights, per task


class PeriodSeries(TypedDict, total=False):
    """One episode of one policy on one task, period by period (length T)."""

    recycled_share: list[float | None]  # u_r / (u_v + u_r); None when nothing is produced
    material: list[float | None]  # u_v + u_r, kg put into production (the share's denominator)
    emissions: list[float | None]  # kg CO2 per period (row 7's left-hand side)
    recycled_content_min: list[float | None]  # mandate r in force
    emission_cap: list[float | None]  # kg CO2 per period; None = no cap
    cost_terms: dict[str, float]  # EUR over the episode, per cost term


class GeneralisationRegime(TypedDict):
    label: str
    regime: dict[str, Any]


class Generalisation(TypedDict, total=False):
    regimes: list[GeneralisationRegime]
    policies: dict[str, dict[str, dict[str, Score]]]  # policy -> regime label -> "zero_shot" | "1" | ... -> score
    baselines: dict[str, dict[str, Score]]  # baseline -> regime label -> score


class Target(TypedDict):
    what: str
    target: str
    measured: str
    met: bool


class Metrics(TypedDict, total=False):
    """The content of ``runs/<id>/metrics.json``."""

    id: str
    created: str  # ISO 8601
    quick: bool
    machine: Machine
    command: str
    params: dict[str, Any]  # the chain's parameters
    params_note: str | None  # the meta-init was trained on other params (None: on these)
    seeds: Seeds
    tasks: list[str]
    regimes: dict[str, dict[str, Any]]  # task -> regime fields
    baselines: dict[str, dict[str, BaselineTask]]  # "oracle" | "threshold" | "mpc" -> task -> result
    methods: dict[str, MethodResult]
    per_period: dict[str, dict[str, PeriodSeries]]  # policy -> task -> series
    generalisation: Generalisation
    targets: list[Target]
    rule_impact: dict[str, dict[str, Any]]  # task -> moca.impact.rule_impact(...): the rule's effect on demand
    retuned: dict[str, dict[str, dict[str, Any]]]  # "mpc-retuned" | "moca-adapt" -> task -> score, seconds, ...


class ReportError(ValueError):
    """A metrics dict the report cannot be built from; the message names the part."""


_METRICS = TypeAdapter(Metrics)


def check_metrics(metrics: dict[str, Any]) -> Metrics:
    """Validate types and shapes; returns the metrics with numbers coerced (ints to floats)."""
    if not isinstance(metrics, dict):
        raise ReportError(f"metrics: expected a dict, got {type(metrics).__name__}")
    try:
        checked: Metrics = _METRICS.validate_python(metrics)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metrics"
        raise ReportError(f"metrics.{where}: {first['msg']}") from None
    tasks = task_names(checked)
    n = len(tasks)
    for name, result in checked.get("methods", {}).items():
        R = result["R"]
        if len(R) != n + 1 or any(len(row) != n for row in R):
            shape = f"{len(R)} rows of {sorted({len(row) for row in R})} scores"
            raise ReportError(
                f"metrics.methods.{name}.R: expected {n + 1} rows (before learning, then after each of "
                f"{n} tasks) of {n} scores, got {shape}"
            )
        for key in ("forgetting", "adaptation_steps", "adaptation_seconds", "adaptation_curves"):
            if key in result and len(result[key]) != n:
                raise ReportError(f"metrics.methods.{name}.{key}: expected one entry per task ({n}), got {len(result[key])}")
    for policy, by_task in checked.get("per_period", {}).items():
        for task, series in by_task.items():
            lengths = {k: len(v) for k, v in series.items() if isinstance(v, list)}
            if len(set(lengths.values())) > 1:
                raise ReportError(f"metrics.per_period.{policy}.{task}: series of different lengths {lengths}")
    return checked


def task_names(metrics: Metrics) -> list[str]:
    """The task labels: ``tasks`` if given, else ``T1..TN`` from the width of a score matrix."""
    if metrics.get("tasks"):
        return list(metrics["tasks"])
    for result in metrics.get("methods", {}).values():
        if result["R"]:
            return [f"T{j + 1}" for j in range(len(result["R"][0]))]
    for by_task in metrics.get("baselines", {}).values():
        return list(by_task)
    return []


# --- the summary table ---------------------------------------------------------------------

#: Baselines in the order the table shows them (others follow in the dict's order).
BASELINE_ORDER: tuple[str, ...] = ("threshold", "mpc", "oracle")
BASELINE_LABELS: dict[str, str] = {"threshold": "threshold rule", "mpc": "MPC", "oracle": "oracle (hindsight)"}


def _number(value: Any) -> float | None:
    """None for missing or NaN, else a float."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def summary_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per method, then per baseline, with raw values (None = not measured).

    Keys: ``policy``, ``kind`` ("method" | "baseline"), ``average_final_score``,
    ``drop_first_after_second`` (fraction), ``bwt``, ``fwt``, ``adaptation_steps`` and
    ``adaptation_seconds`` (lists, one per task), ``violations``, ``correction``,
    ``latency_p50_us``, ``latency_p99_us``. A baseline's score is its mean over the tasks,
    its violations the sum, and its latencies those of its worst task (an upper bound on
    the pooled percentile).
    """
    m = check_metrics(metrics)
    tasks = task_names(m)
    rows: list[dict[str, Any]] = []
    for name, result in m.get("methods", {}).items():
        latency = result.get("decision_latency_us") or {}
        rows.append({
            "policy": name,
            "kind": "method",
            "average_final_score": _number(result.get("average_final_score")),
            "drop_first_after_second": _number(result.get("drop_first_after_second")),
            "bwt": _number(result.get("bwt")),
            "fwt": _number(result.get("fwt")),
            "adaptation_steps": result.get("adaptation_steps"),
            "adaptation_seconds": result.get("adaptation_seconds"),
            "violations": result.get("violations"),
            "correction": _number(result.get("correction")),
            "latency_p50_us": _number(latency.get("p50")),
            "latency_p99_us": _number(latency.get("p99")),
        })
    for name in _baseline_order(m):
        by_task = m["baselines"][name]
        scores = [_number(by_task[t]["score"]) if t in by_task else None for t in tasks]
        violations = [by_task[t].get("violations") for t in tasks if t in by_task]
        p50 = [_number((by_task[t].get("decision_latency_us") or {}).get("p50")) for t in tasks if t in by_task]
        p99 = [_number((by_task[t].get("decision_latency_us") or {}).get("p99")) for t in tasks if t in by_task]
        rows.append({
            "policy": name,
            "kind": "baseline",
            # A mean over only some tasks would not compare with the methods' rows.
            "average_final_score": float(np.mean(scores)) if scores and None not in scores else None,
            "drop_first_after_second": None, "bwt": None, "fwt": None,
            "adaptation_steps": None, "adaptation_seconds": None,
            "violations": sum(violations) if violations and None not in violations else None,
            "correction": None,
            "latency_p50_us": max(p50) if p50 and None not in p50 else None,
            "latency_p99_us": max(p99) if p99 and None not in p99 else None,
        })
    return rows


def run_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline of one world's run, for the closing lines of ``moca run``: moca's average
    final score and drop on the first task after the second, the best peer (the non-oracle
    baseline or re-tuned peer, CLSC-1's ``retuned`` block, with the highest mean score over
    the tasks; moca's own per-task adaptation there is not a peer), every policy's
    violations summed, wall seconds. Reads either world's metrics (None = not measured)."""
    methods, baselines = metrics.get("methods") or {}, metrics.get("baselines") or {}
    moca = methods.get("moca") or {}
    # (the re-tuned MPC too: the line named the threshold rule as the best peer where the
    # same run's MPC re-tuned per task scored above moca, 0.9802 against 0.9727)
    retuned = metrics.get("retuned") or {}
    peers = {}
    for name, by_task in {**baselines, **{n: b for n, b in retuned.items() if not n.startswith("moca")}}.items():
        scores = [_number(v.get("score")) for v in by_task.values()]
        if name != "oracle" and scores and None not in scores:
            peers[name] = float(np.mean(scores))
    best = max(peers, key=peers.get) if peers else None
    counts = [r.get("violations") for r in methods.values()]
    counts += [v.get("violations") for block in (baselines, retuned)
               for by_task in block.values() for v in by_task.values()]
    return {"id": metrics.get("id"), "moca_average_final_score": _number(moca.get("average_final_score")),
            "moca_drop_first_after_second": _number(moca.get("drop_first_after_second")),
            "best_peer": best, "best_peer_mean_score": peers.get(best) if best else None,
            "violations": sum(int(c) for c in counts) if counts and None not in counts else None,
            "wall_seconds": _number(metrics.get("wall_seconds"))}


def _baseline_order(m: Metrics) -> list[str]:
    names = list(m.get("baselines", {}))
    return [b for b in BASELINE_ORDER if b in names] + [b for b in names if b not in BASELINE_ORDER]


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _fmt_us(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _fmt_each(values: Sequence[Any] | None, spec: str) -> str:
    """Per-task values joined by " / "; "–" for a task without a value."""
    if not values:
        return "–"
    return " / ".join(_fmt(_number(v), spec) for v in values)


def summary_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the summary table (for report.md and the CLI)."""
    m = check_metrics(metrics)
    tasks = task_names(m)
    per_task = "/".join(tasks)
    drop = f"forgetting {tasks[0]} (drop after {tasks[1]})" if len(tasks) >= 2 else "forgetting"
    headers = [
        "policy", "avg final score", drop, "BWT", "FWT", f"adapt. steps ({per_task})",
        f"adapt. seconds ({per_task})", "violations", "correction", "latency p50 (µs)", "latency p99 (µs)",
    ]
    cells = []
    for row in summary_rows(m):
        name = row["policy"] if row["kind"] == "method" else BASELINE_LABELS.get(row["policy"], row["policy"])
        drop_value = row["drop_first_after_second"]
        cells.append([
            name,
            _fmt(row["average_final_score"], ".3f"),
            "–" if drop_value is None else f"{100 * drop_value:.1f}%",
            _fmt(row["bwt"], "+.3f"),
            _fmt(row["fwt"], "+.3f"),
            _fmt_each(row["adaptation_steps"], ".0f"),
            _fmt_each(row["adaptation_seconds"], ".2f"),
            "–" if row["violations"] is None else str(row["violations"]),
            _fmt(row["correction"], ".3g"),
            _fmt_us(row["latency_p50_us"]),
            _fmt_us(row["latency_p99_us"]),
        ])
    return headers, cells


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """A GitHub-flavoured markdown table; the first ``left`` columns left-aligned, the rest right."""
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join(":---" if i < left else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- colours and labels shared by the plots ------------------------------------------------

# Fixed colours per known policy, so a method looks the same in every plot and every run.
_POLICY_COLORS: dict[str, str] = {
    "moca": "tab:blue", "finetune": "tab:orange", "ewc": "tab:green", "scratch": "tab:purple",
    "maml": "tab:red", "fomaml": "tab:pink", "reptile": "tab:brown",
    "oracle": "black", "mpc": "tab:gray", "threshold": "tab:olive",
}
_SPARE_COLORS: tuple[str, ...] = ("tab:cyan", "#17becf80", "#8c564b80", "#e377c280", "#1f77b480", "#ff7f0e80")

# Cost terms grouped by colour family: material (blues), recovery (greens/browns),
# holding (purples/oranges), backlog red; unknown terms take the spare colours.
_TERM_COLORS: dict[str, str] = {
    "virgin": "#1f77b4", "produce": "#aec7e8", "carbon": "#555555",
    "disassemble": "#2ca02c", "refurbish": "#98df8a", "dispose": "#8c564b", "landfill_tax": "#c49c94",
    "hold_virgin": "#c5b0d5", "hold_recycled": "#9467bd", "hold_product": "#ff7f0e", "hold_core": "#ffbb78",
    "backlog": "#d62728",
}


def policy_order(metrics: Metrics) -> list[str]:
    """Methods in the dict's order, then baselines, then any other policy with per-period data."""
    names = list(metrics.get("methods", {})) + _baseline_order(metrics)
    names += [p for p in metrics.get("per_period", {}) if p not in names]
    return names


def _colors(names: Sequence[str]) -> dict[str, str]:
    spare = iter(_SPARE_COLORS * (1 + len(names)))
    return {n: _POLICY_COLORS.get(n) or next(spare) for n in names}


def _short_label(name: str) -> str:
    """Policy name as plots show it."""
    return {"mpc": "MPC"}.get(name, name)


def _line_width(name: str) -> float:
    return 2.4 if name == "moca" else 1.5


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1)))


def _styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A marker and a dash per line, so lines lying on top of each other stay told apart."""
    return {n: {"marker": _MARKERS[i % len(_MARKERS)], "ls": _DASHES[i % len(_DASHES)]} for i, n in enumerate(names)}


def _same_as(curves: dict[str, list[np.ndarray]]) -> dict[str, str]:
    """For each curve set equal (to 1e-9) to an earlier one: the name of that earlier one."""
    same: dict[str, str] = {}
    names = list(curves)
    for i, name in enumerate(names):
        for other in names[:i]:
            a, b = curves[name], curves[other]
            if other not in same and len(a) == len(b) and all(
                    x.shape == y.shape and np.allclose(x, y, atol=1e-9, equal_nan=True) for x, y in zip(a, b)):
                same[name] = other
                break
    return same


def _regime_text(fields: dict[str, Any] | None) -> str:
    """Short label of a regime's fields, e.g. ``r=0.20 tau=100``; "" when none were recorded."""
    if not fields:
        return ""
    from moca.regime import Regime  # light import; Regime.describe is the one short label

    try:
        return Regime.model_validate(fields).describe()
    except ValidationError:  # still show what was recorded rather than nothing
        return ", ".join(f"{k}={v}" for k, v in fields.items())


def _regime_label(metrics: Metrics, task: str) -> str:
    """``T2 (r=0.20)``, from the task's regime fields when the run recorded them."""
    text = _regime_text(metrics.get("regimes", {}).get(task))
    return f"{task} ({text})" if text else task


def _array(values: Iterable[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor="white", metadata=figure_metadata(path))
    return path


def _kilo(x: float, _: Any = None) -> str:
    """``1.25k``, ``250k``, ``0k``; plain below 1,000 (an axis from 0 to 2,500 ticks at 500s)."""
    if abs(x) < 1e3 and x != 0:
        return f"{x:,.0f}"
    text = f"{x / 1e3:,.2f}"
    return text.rstrip("0").rstrip(".") + "k"


_THOUSANDS = FuncFormatter(_kilo)


# --- plots ---------------------------------------------------------------------------------


def plot_score_matrices(metrics: dict[str, Any], path: str | Path) -> Path | None:
    """One annotated heatmap of R per method (rows: before / after each task; columns:
    task scored), on one colour scale. None when the run has no methods."""
    m = check_metrics(metrics)
    methods = m.get("methods", {})
    if not methods:
        return None
    tasks = task_names(m)
    matrices = {name: np.array([_array(row) for row in r["R"]]) for name, r in methods.items()}
    finite = np.concatenate([x[np.isfinite(x)] for x in matrices.values()] + [np.array([])])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-3:  # one colour for everything would hide nothing but looks broken
        low, high = low - 0.05, high + 0.05
    norm = Normalize(low, high)
    cmap = colormaps["viridis"].with_extremes(bad="0.88")

    ncols = min(4, len(methods))
    nrows = math.ceil(len(methods) / ncols)
    # (at least 5.5 in wide: one method over two tasks, as moca continual --plot draws, must hold the title)
    width = max(5.5, 0.9 + 0.95 * len(tasks) * ncols + 0.9)
    fig = Figure(figsize=(width, 0.6 + 0.55 * (len(tasks) + 1) * nrows + 0.5), layout="constrained")
    fig.get_layout_engine().set(wspace=0.06, hspace=0.08)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    rows = ["before"] + [f"after {t}" for t in tasks]
    for k, (ax, name) in enumerate(zip(axes.flat, matrices)):
        R = matrices[name]
        ax.imshow(np.ma.masked_invalid(R), cmap=cmap, norm=norm, aspect="auto")
        for i in range(R.shape[0]):
            for j in range(R.shape[1]):
                v = R[i, j]
                dark = np.isfinite(v) and norm(v) < 0.55  # white on viridis' dark end
                ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center",
                        fontsize=9, color="white" if dark else "black")
        # Outline the cell of each task right after learning it: the plasticity diagonal.
        for j in range(R.shape[1]):
            ax.add_patch(Rectangle((j - 0.5, j + 0.5), 1, 1, fill=False, edgecolor="black", lw=1.6))
        ax.set_title(name, fontsize=11, fontweight="bold" if name == "moca" else "normal")
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_yticks(range(len(rows)), rows if k % ncols == 0 else [])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if k // ncols == nrows - 1 or k + ncols >= len(matrices):
            ax.set_xlabel("scored on")
    for ax in list(axes.flat)[len(matrices):]:
        ax.set_visible(False)
    fig.colorbar(ScalarMappable(norm, cmap), ax=axes.ravel().tolist(), shrink=0.85,
                 label="score = oracle cost / policy cost")
    title = f"Score matrix R{' per method' if len(matrices) > 1 else ''} (outlined: score on a task right after learning it)"
    fig.suptitle(textwrap.fill(title, width=int(width * 11)), fontsize=11)
    return _save(fig, path)


def _validation_seeds(m: dict[str, Any]) -> str:
    """The validation seeds of a run's metrics as "900-907" ("–" when not recorded)."""
    seeds = m.get("seeds", {}).get("validation") or []
    return f"{seeds[0]}-{seeds[-1]}" if seeds else "–"


def plot_adaptation_curves(metrics: dict[str, Any], path: str | Path) -> Path | None:
    """Validation score vs gradient steps on each task, one line per method, and the oracle
    (1.0) dotted. None when no curves were recorded. (The MPC's score was drawn here too, but
    it is measured on the test seeds: on the validation axis moca's curve showed below an MPC
    it beats on the same test seeds, report.md's comparison.)"""
    m = check_metrics(metrics)
    methods = {n: r for n, r in m.get("methods", {}).items() if r.get("adaptation_curves")}
    if not methods:
        return None
    tasks = task_names(m)
    colors = _colors(policy_order(m))
    styles = _styles(list(methods))
    # Methods that share a meta-init can have identical curves: say so in the legend, and
    # shift each method's points sideways a little so no line hides another.
    same = _same_as({n: [_array(c) for c in r["adaptation_curves"]] for n, r in methods.items()})
    offsets = {n: (i - (len(methods) - 1) / 2) * min(0.08, 0.4 / max(len(methods), 1)) for i, n in enumerate(methods)}
    fig = Figure(figsize=(1.5 + 3.8 * len(tasks), 3.8), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
    handles: dict[str, Any] = {}
    for j, (ax, task) in enumerate(zip(axes, tasks)):
        for name, result in methods.items():
            y = _array(result["adaptation_curves"][j])
            if not y.size:
                continue
            x = np.arange(y.size) + offsets[name]
            label = f"{name} (same curve as {same[name]})" if name in same else name
            (line,) = ax.plot(x, y, color=colors[name], lw=_line_width(name), label=label, ls=styles[name]["ls"],
                              marker=styles[name]["marker"], ms=4 if name in same else 5,
                              markevery=max(1, y.size // 12), mfc="white" if name in same else colors[name],
                              zorder=3 if name == "moca" else 2)
            handles.setdefault(name, line)
            steps = (result.get("adaptation_steps") or [None] * len(tasks))[j]
            if steps is not None and 0 <= steps < y.size and np.isfinite(y[steps]):
                ax.plot([x[steps]], [y[steps]], marker="*", ms=13, color=colors[name], mec="white", mew=0.8, zorder=4)
        handles.setdefault("oracle", ax.axhline(1.0, color="black", ls=":", lw=1.0, label="oracle (1.0)"))
        ax.set_title(_regime_label(m, task), fontsize=10)
        ax.set_xlabel(f"gradient steps on {task}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation score")
    handles["reached"] = Line2D([], [], color="0.3", marker="*", ms=11, ls="none", label="99% of plateau reached")
    fig.legend(handles=list(handles.values()), loc="outside right upper", fontsize=9, frameon=False)
    title = f"Adaptation: validation score after k gradient steps (seeds {_validation_seeds(m)})" + (
        " (points of each method shifted slightly sideways so none hides another)" if len(methods) > 1 else "")
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 14)), fontsize=10)
    return _save(fig, path)


def plot_cost_breakdown(metrics: dict[str, Any], path: str | Path) -> Path | None:
    """Stacked bars of the episode's cost terms (EUR) per policy, one panel per task.
    Terms that are zero for every policy are left out. None without per-period data."""
    m = check_metrics(metrics)
    per_period = m.get("per_period", {})
    tasks = [t for t in task_names(m) if any("cost_terms" in s.get(t, {}) for s in per_period.values())]
    if not tasks:
        return None
    policies = [p for p in policy_order(m) if p in per_period]
    terms: list[str] = []  # union in first-seen order, which is the simulator's COST_TERMS order
    for p in policies:
        for t in tasks:
            for term, value in per_period[p].get(t, {}).get("cost_terms", {}).items():
                if term not in terms and abs(value) > 1e-9:
                    terms.append(term)
    spare = iter(_SPARE_COLORS * (1 + len(terms)))
    term_colors = {term: _TERM_COLORS.get(term) or next(spare) for term in terms}

    fig = Figure(figsize=(2.0 + max(3.2, 0.42 * len(policies)) * len(tasks), 4.6), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
    x = np.arange(len(policies))
    for ax, task in zip(axes, tasks):
        bottom = np.zeros(len(policies))
        for term in terms:
            values = np.array([per_period[p].get(task, {}).get("cost_terms", {}).get(term, 0.0) for p in policies])
            ax.bar(x, values, bottom=bottom, width=0.72, color=term_colors[term], label=term,
                   edgecolor="white", linewidth=0.3)
            bottom += values
        for xi, total, p in zip(x, bottom, policies):
            if "cost_terms" in per_period[p].get(task, {}):
                ax.text(xi, total, f"{total / 1e3:,.0f}k", ha="center", va="bottom", fontsize=7, color="0.25")
            else:
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
        ax.set_xticks(x, [_short_label(p) for p in policies], rotation=40, ha="right", rotation_mode="anchor")
        ax.set_title(_regime_label(m, task), fontsize=10)
        ax.yaxis.set_major_formatter(_THOUSANDS)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.08)
    axes[0].set_ylabel("episode cost (EUR)")
    handles, labels = axes[0].get_legend_handles_labels()
    # Reversed, so the legend reads top to bottom like the stack.
    fig.legend(handles[::-1], labels[::-1], loc="outside right upper", fontsize=8, frameon=False, title="cost term")
    fig.suptitle("Cost breakdown of one test episode per policy and task", fontsize=11)
    return _save(fig, path)


#: Policies shown in the compliance plot when none are named (the first four present).
COMPLIANCE_PREFERENCE: tuple[str, ...] = ("moca", "finetune", "mpc", "oracle", "threshold")


def plot_compliance(metrics: dict[str, Any], path: str | Path, policies: Sequence[str] | None = None,
                    max_policies: int = 4) -> Path | None:
    """Per task: recycled share per period against the mandate (step line, shortfall
    shaded) and emissions per period against the cap (when one is set), for a few
    policies. None without per-period data."""
    m = check_metrics(metrics)
    per_period = m.get("per_period", {})
    if policies is None:
        present = [p for p in COMPLIANCE_PREFERENCE if p in per_period]
        present += [p for p in policy_order(m) if p in per_period and p not in present]
        policies = present[:max_policies]
    else:
        unknown = [p for p in policies if p not in per_period]
        if unknown:
            raise ReportError(f"plot_compliance: no per-period data for {unknown} (have {list(per_period)})")
    def has_series(s: PeriodSeries) -> bool:
        return any(isinstance(v, list) and v for v in s.values())

    tasks = [t for t in task_names(m) if any(has_series(per_period[p].get(t, {})) for p in policies)]
    if not tasks:
        return None
    colors = _colors(policy_order(m))
    styles = _styles(list(policies))

    fig = Figure(figsize=(1.8 + 4.0 * len(tasks), 6.6), layout="constrained")
    axes = fig.subplots(2, len(tasks), squeeze=False, sharex="col", sharey="row")
    handles: dict[str, Any] = {}
    for j, task in enumerate(tasks):
        share_ax, emis_ax = axes[0, j], axes[1, j]
        series = {p: per_period[p][task] for p in policies if has_series(per_period[p].get(task, {}))}
        horizon = max(len(v) for s in series.values() for v in s.values() if isinstance(v, list))
        edges = np.arange(horizon + 1)  # a period t spans [t, t+1); its value is drawn at t + 0.5
        centres = np.arange(horizon) + 0.5
        mandate = next((_array(s["recycled_content_min"]) for s in series.values() if "recycled_content_min" in s), None)
        cap = next((_array(s["emission_cap"]) for s in series.values() if "emission_cap" in s), None)
        idle_any = np.zeros(horizon, dtype=bool)
        below: dict[str, int] = {}
        over: dict[str, int] = {}
        for i, (name, s) in enumerate(series.items()):
            style = dict(color=colors[name], lw=_line_width(name), label=_short_label(name), ls=styles[name]["ls"],
                         marker=styles[name]["marker"], ms=4, markevery=(i % 4, 4), zorder=3 if name == "moca" else 2)
            if "recycled_share" in s:
                share = _array(s["recycled_share"])
                # A share of (almost) nothing means nothing: in the last period nothing made can
                # still be sold, so production stops and u_r / (u_v + u_r) of a few kg jumps about.
                idle = _idle_periods(s, share.size)
                idle_any[:idle.size] |= idle
                shown = np.where(idle, np.nan, share)
                handles.setdefault(name, share_ax.plot(centres[:shown.size], shown, **style)[0])
                if mandate is not None:
                    below[name] = int(np.sum((shown < mandate[:shown.size] - 1e-6) & np.isfinite(shown)))
            if "emissions" in s:
                emissions = _array(s["emissions"])
                handles.setdefault(name, emis_ax.plot(centres[:emissions.size], emissions / 1e3, **style)[0])
                if cap is not None and np.isfinite(cap).any():
                    over[name] = int(np.sum(emissions > cap[:emissions.size] * (1 + 1e-6)))
        # The limits are the same for every policy on a task; drawn wide and pale under the
        # policies' lines, so a policy that sits exactly on the limit stays visible on top.
        if mandate is not None:
            stair = np.append(mandate, mandate[-1])
            share_ax.fill_between(edges, 0, stair, step="post", color="tab:red", alpha=0.08, lw=0)
            handles.setdefault("mandate", share_ax.step(edges, stair, where="post", color="0.55", ls="-", lw=4.5,
                                                        alpha=0.45, zorder=1, label="recycled-content mandate")[0])
        for t in np.flatnonzero(idle_any):
            share_ax.axvspan(t, t + 1, color="0.85", zorder=0, lw=0)
        if idle_any.any():
            handles.setdefault("idle", Rectangle((0, 0), 1, 1, color="0.85",
                                                 label="little or no production: share not shown\n(last period: "
                                                       "nothing made then can be sold)"))
        verdict = _compliance_text(below, "below the mandate")
        if verdict:
            share_ax.text(0.02, 0.03, verdict, transform=share_ax.transAxes, fontsize=7.5, va="bottom",
                          color="darkgreen" if not any(below.values()) else "darkred",
                          bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1.5))
        if cap is not None and np.isfinite(cap).any():
            handles.setdefault("cap", emis_ax.step(edges, np.append(cap, cap[-1]) / 1e3, where="post", color="tab:red",
                                                   ls="-", lw=4.5, alpha=0.35, zorder=1, label="emission cap")[0])
            verdict = _compliance_text(over, "above the cap")
            emis_ax.text(0.02, 0.03, verdict, transform=emis_ax.transAxes, fontsize=7.5, va="bottom",
                         color="darkgreen" if not any(over.values()) else "darkred",
                         bbox=dict(facecolor="white", alpha=0.8, lw=0, pad=1.5))
        else:
            emis_ax.text(0.98, 0.96, "no emission cap", transform=emis_ax.transAxes, ha="right", va="top",
                         fontsize=8, color="0.35")
        share_ax.set_title(_regime_label(m, task), fontsize=10)
        share_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        emis_ax.set_xlabel("period (week)")
        emis_ax.set_xlim(0, horizon)
        for ax in (share_ax, emis_ax):
            ax.grid(alpha=0.3)
    # Rows share a y range from 0 to above the highest line or limit. Set once here, after
    # all panels are drawn: set_ylim switches autoscaling off for every shared panel.
    for row in axes:
        tops = [np.nanmax(np.append(line.get_ydata(), 0.0)) for ax in row for line in ax.get_lines()]
        row[0].set_ylim(0, 1.12 * max(tops + [1e-9]))
    axes[0, 0].set_ylabel("recycled share of material")
    axes[1, 0].set_ylabel("emissions (t CO₂ per period)")
    fig.legend(handles=list(handles.values()), loc="outside right upper", fontsize=9, frameon=False)
    fig.suptitle("Compliance over one test episode (pink: below the mandate)", fontsize=11)
    return _save(fig, path)


def _idle_periods(series: PeriodSeries, horizon: int) -> np.ndarray:
    """Periods whose production input is under 2% of the episode's largest: their recycled
    share is not a statement about compliance. Without recorded input (older runs), the
    periods without a share."""
    share = _array(series.get("recycled_share", []))
    idle = ~np.isfinite(share) if share.size else np.zeros(horizon, dtype=bool)
    material = _array(series.get("material", []))
    if material.size == share.size and material.size and np.nanmax(material) > 0:
        idle |= material < 0.02 * np.nanmax(material)
    return idle


def _compliance_text(counts: dict[str, int], what: str) -> str:
    """e.g. "every period complies: moca, MPC" or "MPC: 3 periods above the cap"."""
    if not counts:
        return ""
    ok = [_short_label(n) for n, c in counts.items() if c == 0]
    bad = [f"{_short_label(n)}: {c} period{'s' if c > 1 else ''} {what}" for n, c in counts.items() if c]
    parts = ([f"complies in every period: {', '.join(ok)}"] if ok else []) + bad
    return "\n".join(parts)


def plot_scores_by_stage(metrics: dict[str, Any], path: str | Path) -> Path | None:
    """Per task, each method's test score before learning and after each stage of the
    sequence (a column of R per panel), beside each baseline's score on that task as a
    horizontal line. None when the run has no methods."""
    m = check_metrics(metrics)
    methods = m.get("methods", {})
    if not methods:
        return None
    tasks = task_names(m)
    colors = _colors(policy_order(m))
    styles = _styles(list(methods))
    matrices = {name: np.array([_array(row) for row in r["R"]]) for name, r in methods.items()}
    same = _same_as({n: [R] for n, R in matrices.items()})
    # Methods sharing a meta-init score almost alike: shift each one's points a little sideways.
    offsets = {n: (i - (len(methods) - 1) / 2) * min(0.06, 0.3 / len(methods)) for i, n in enumerate(methods)}
    stages = ["before"] + [f"after {t}" for t in tasks]
    baselines = {b: m["baselines"][b] for b in _baseline_order(m) if b != "oracle"}
    fig = Figure(figsize=(1.8 + 3.6 * len(tasks), 3.9), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False, sharey=True)[0]
    handles: dict[str, Any] = {}
    x = np.arange(len(stages))
    for j, (ax, task) in enumerate(zip(axes, tasks)):
        # The stage in which this task is learned: the score should rise there and hold after.
        ax.axvspan(j + 0.5, j + 1.5, color="0.92", zorder=0, lw=0)
        for name, R in matrices.items():
            label = f"{name} (same as {same[name]})" if name in same else name
            (line,) = ax.plot(x + offsets[name], R[:, j], color=colors[name], lw=_line_width(name), label=label,
                              ls=styles[name]["ls"], marker=styles[name]["marker"], ms=5,
                              mfc="white" if name in same else colors[name], zorder=3 if name == "moca" else 2)
            handles.setdefault(name, line)
        for k, (name, by_task) in enumerate(baselines.items()):
            score = _number(by_task.get(task, {}).get("score")) if task in by_task else None
            if score is not None:
                handles.setdefault(name, ax.axhline(score, color=colors[name], ls=_DASHES[1 + k % (len(_DASHES) - 1)],
                                                    lw=1.3, label=_short_label(name)))
        handles.setdefault("oracle", ax.axhline(1.0, color="black", ls=":", lw=1.0, label="oracle (1.0)"))
        ax.set_xticks(x, stages, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_title(f"scored on {_regime_label(m, task)}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test score (oracle cost / policy cost)")
    handles["learning"] = Rectangle((0, 0), 1, 1, color="0.92", label="stage that learns this task")
    fig.legend(handles=list(handles.values()), loc="outside right upper", fontsize=9, frameon=False)
    fig.suptitle("Score on each task before learning and after each stage of the sequence", fontsize=11)
    return _save(fig, path)


def plot_cost_vs_oracle(metrics: dict[str, Any], path: str | Path) -> Path | None:
    """Per task, how much more each policy's mean episode cost is than the oracle's (%),
    as grouped bars: the baselines and each method's final weights (``final_mean_cost``).
    None without the oracle's cost or any policy's."""
    m = check_metrics(metrics)
    tasks = task_names(m)
    oracle = m.get("baselines", {}).get("oracle", {})
    oracle_cost = {t: _number(oracle.get(t, {}).get("mean_cost")) if t in oracle else None for t in tasks}
    costs: dict[str, list[float | None]] = {}
    for name, result in m.get("methods", {}).items():
        if result.get("final_mean_cost"):
            costs[name] = [_number(c) for c in result["final_mean_cost"]]
    for name in _baseline_order(m):
        if name != "oracle":
            by_task = m["baselines"][name]
            costs[name] = [_number(by_task[t].get("mean_cost")) if t in by_task else None for t in tasks]
    costs = {n: c for n, c in costs.items() if any(v is not None for v in c)}
    if not costs or all(v is None for v in oracle_cost.values()):
        return None
    colors = _colors(policy_order(m))
    methods = set(m.get("methods", {}))
    width = 0.8 / len(costs)
    fig = Figure(figsize=(2.6 + 1.0 * len(tasks) * max(2, len(costs)) * 0.55, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, (name, values) in enumerate(costs.items()):
        excess = np.array([100 * (c / oracle_cost[t] - 1) if c is not None and oracle_cost[t] else np.nan
                           for c, t in zip(values, tasks)])
        xs = np.arange(len(tasks)) - 0.4 + width * (k + 0.5)
        label = f"{name} (after {tasks[-1]})" if name in methods and tasks else _short_label(name)
        ax.bar(xs, np.nan_to_num(excess), width=width * 0.92, color=colors[name], label=label,
               edgecolor="black" if name == "moca" else "white", linewidth=1.0 if name == "moca" else 0.3)
        for xi, v in zip(xs, excess):
            ax.text(xi, max(v, 0) if np.isfinite(v) else 0, f"{v:.1f}" if np.isfinite(v) else "n/a",
                    ha="center", va="bottom", fontsize=7, color="0.25")
    ax.set_xticks(np.arange(len(tasks)), [_regime_label(m, t) for t in tasks])
    ax.set_ylabel("mean episode cost above the oracle's (%)")
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.12)
    fig.legend(loc="outside right upper", fontsize=9, frameon=False)
    fig.suptitle("Cost relative to the hindsight optimum on each task's test scenarios (lower is better)",
                 fontsize=11)
    return _save(fig, path)


def plot_episode(periods: Sequence[dict[str, Any]], demand: Sequence[float], action_names: Sequence[str],
                 action_units: Sequence[str], state_units: Sequence[str], path: str | Path, title: str,
                 changes: Sequence[int] = ()) -> Path:
    """One episode, period by period, in four panels: demand and sales (units; lost sales
    where the world loses them); the material decisions (kg); the core decisions (cores);
    the stocks (kg dashed, units solid). ``periods`` are ``moca simulate --json``'s records
    (``action`` in ``action_names``' order, ``state`` by name, ``sales``, optional ``lost``);
    the units say which panel an action or stock belongs to, so both worlds draw alike.
    ``changes``: periods where a new regime comes into force (vertical lines)."""
    t = np.arange(len(periods))
    actions = np.array([p["action"] for p in periods], dtype=float)
    fig = Figure(figsize=(10, 9.5), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True)
    ax = axes[0]
    ax.plot(t, [p["sales"] for p in periods], color="tab:blue", lw=2.2, label="sales")
    ax.plot(t, np.asarray(demand, dtype=float)[: len(t)], color="black", ls="--", lw=1.0, label="demand")
    if "lost" in periods[0]:
        ax.bar(t, [p["lost"] for p in periods], color="tab:red", alpha=0.5, label="lost sales")
    ax.set_ylabel("units")
    ax.yaxis.set_major_formatter(_THOUSANDS)
    for ax, unit, what in ((axes[1], "kg", "material decisions (kg)"), (axes[2], "cores", "core decisions (cores)")):
        for j, (name, u) in enumerate(zip(action_names, action_units)):
            if u == unit and np.any(actions[:, j] > 1e-9):  # (an action never taken would only crowd the legend)
                ax.plot(t, actions[:, j], lw=1.4, label=name, drawstyle="steps-mid")
        ax.set_ylabel(what)
        ax.yaxis.set_major_formatter(_THOUSANDS)
    ax = axes[3]
    for (name, unit) in zip(periods[0]["state"], state_units):
        ax.plot(t, [p["state"][name] for p in periods], lw=1.4, ls="--" if unit == "kg" else "-",
                label=f"{name} ({unit})")
    ax.set_ylabel("stocks at period end")
    ax.yaxis.set_major_formatter(_THOUSANDS)
    ax.set_xlabel("period")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        for c in changes:
            ax.axvline(c - 0.5, color="black", lw=0.9, ls=":")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(textwrap.fill(title + (" (dotted: a new regime in force)" if changes else ""), width=120),
                 fontsize=10)
    return _save(fig, path)


# --- report.md -----------------------------------------------------------------------------

#: File names of the plots inside a run directory, with their section titles.
PLOTS: dict[str, tuple[str, Any]] = {
    "score_matrices.png": ("Score matrices", plot_score_matrices),
    "adaptation_curves.png": ("Adaptation curves", plot_adaptation_curves),
    "cost_breakdown.png": ("Cost breakdown", plot_cost_breakdown),
    "compliance.png": ("Compliance with the regime's limits", plot_compliance),
}


#: What a reader needs to read a plot right, printed under it in report.md.
PLOT_NOTES: dict[str, str] = {
    "compliance.png": (
        "Each panel says which policies comply in every period (all should: every executed action goes through "
        "the safety layer). "
        "Grey periods produce (almost) nothing, so their recycled share is not shown: in the last period "
        "nothing made can still be sold, so production stops and the share of a few kg would read anywhere "
        "from 0 to 100%. The limits are drawn wide and pale under the policies' lines: a line lying on the "
        "mandate complies with it exactly."),
    "adaptation_curves.png": (
        "Each method's points are shifted a little sideways and have their own marker and dash, so a line "
        "lying on another stays visible; methods with identical curves (the same meta-init) say so in the "
        "legend."),
    "scores_by_stage.png": (
        "Each panel is one task's column of the score matrix R: the score on that task before learning and after "
        "each stage. The shaded stage learns the task; a line that falls after it is forgetting. Each method's points are shifted "
        "a little sideways so none hides another. Horizontal lines: each baseline's score on that task."),
    "cost_vs_oracle.png": (
        "Mean episode cost over the task's test scenarios divided by the oracle's mean cost, minus 1 (the "
        "score in the tables is the mean of the per-scenario ratios oracle / policy, so the two differ a "
        "little). Methods: their final weights, after the last task."),
}

#: The plots of a CLSC-2 run (``moca run --model CLSC-2``): the same functions, on its metrics.
PLOTS_2: dict[str, tuple[str, Any]] = {
    "scores_by_stage.png": ("Score on each task after each stage", plot_scores_by_stage),
    "cost_vs_oracle.png": ("Cost relative to the oracle", plot_cost_vs_oracle),
    "score_matrices.png": PLOTS["score_matrices.png"],
    "adaptation_curves.png": PLOTS["adaptation_curves.png"],
}


def write_plots(metrics: dict[str, Any], run_dir: str | Path, plots: dict[str, tuple[str, Any]] = PLOTS) -> list[str]:
    """Write ``plots`` (file name -> (title, function)) into ``run_dir``; returns the names
    written (a plot whose data the run did not record is skipped)."""
    m = check_metrics(metrics)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return [name for name, (_, plot) in plots.items() if plot(m, run_dir / name) is not None]


def plot_markdown(images: Sequence[str], plots: dict[str, tuple[str, Any]] = PLOTS) -> list[str]:
    """report.md lines embedding ``images`` (names in the run folder), each under its title and note."""
    lines: list[str] = []
    for name in images:
        title_text = plots.get(name, (Path(name).stem.replace("_", " ").capitalize(), None))[0]
        lines += [f"## {title_text}", "", f"![{title_text}]({name})", ""]
        if name in PLOT_NOTES:
            lines += [PLOT_NOTES[name], ""]
    return lines


def _seed_text(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if not seeds:
        return "none"
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]} ({len(seeds)} scenarios)"
    shown = ", ".join(str(s) for s in seeds[:12])
    return f"{shown}{', …' if len(seeds) > 12 else ''} ({len(seeds)} scenarios)"


def _generalisation_section(m: Metrics) -> list[str]:
    gen = m.get("generalisation") or {}
    policies = gen.get("policies") or {}
    if not policies:
        return []
    labels = [r["label"] for r in gen.get("regimes", [])]
    for by_label in policies.values():
        labels += [label for label in by_label if label not in labels]
    steps: list[str] = []
    for by_label in policies.values():
        for result in by_label.values():
            steps += [k for k in result if k not in steps]
    # zero-shot first, then numeric step counts ascending, then anything else.
    steps.sort(key=lambda k: (0, 0) if k == "zero_shot" else (1, int(k)) if k.isdigit() else (2, 0))
    step_headers = ["zero-shot" if k == "zero_shot" else f"{k} step{'s' if k != '1' else ''}" if k.isdigit() else k
                    for k in steps]
    baselines = gen.get("baselines") or {}
    regime_text = {r["label"]: _regime_text(r["regime"]) for r in gen.get("regimes", [])}

    headers = ["regime", "policy", *step_headers, *(BASELINE_LABELS.get(b, b) for b in baselines)]
    rows = []
    for label in labels:
        first = True
        for name, by_label in policies.items():
            if label not in by_label:
                continue
            text = regime_text.get(label, "")
            shown = f"{label} ({text})" if text and text != label else label
            rows.append([shown if first else "", name,
                         *(_fmt(_number(by_label[label].get(k)), ".3f") for k in steps),
                         *(_fmt(_number(baselines[b].get(label)), ".3f") if first else "" for b in baselines)])
            first = False
    for k_policy, (name, by_label) in enumerate(policies.items()):
        means = []
        for k in steps:
            values = [_number(by_label.get(label, {}).get(k)) for label in labels]
            means.append(_fmt(float(np.mean(values)) if values and None not in values else None, ".3f"))
        base_means = []
        for b in baselines:
            values = [_number(baselines[b].get(label)) for label in labels]
            base_means.append(_fmt(float(np.mean(values)) if values and None not in values else None, ".3f"))
        # Baseline means once, on the first policy's row, as on the regimes' rows above.
        rows.append([f"**mean of {len(labels)}**" if k_policy == 0 else "", name, *means,
                     *(base_means if k_policy == 0 else [""] * len(base_means))])
    return [
        "## Generalisation to regimes never seen in training", "",
        "Score zero-shot and after k gradient steps on each regime, beside the baselines on the same "
        "scenarios. A mean is shown only when every regime has a value.", "",
        markdown_table(headers, rows, left=2), "",
    ]


def _rule_impact_section(m: Metrics) -> list[str]:
    """Does the rule itself leave demand unmet? (the oracle with and without it)."""
    impact = m.get("rule_impact") or {}
    if not impact:
        return []
    from moca.impact import cost_change, describe, whole

    rows = []
    for task, x in impact.items():
        prices = "; ".join(f"{f}: {whole(v)} {x.get('price_units', {}).get(f, '')}"
                           for f, v in (x.get("shadow_prices") or {}).items()) or "–"
        rows.append([task, cost_change(x), f"{x['backlog_per_period']:,.0f}",
                     f"{x['backlog_per_period_without_rule']:,.0f}", f"{x['backlog_at_end']:,.0f}",
                     "**yes**" if x["demand_unmet_by_rule"] else "no", prices])
    lines = ["## What the rules themselves do to demand", "",
             "The hindsight optimum on the same test scenarios with each task's rule and without any rule "
             "(same demand and returns). Backlog: units of demand waiting at the end of a period (mean over the "
             "horizon) and still unserved at the end of the horizon. Shadow price: what tightening the rule by one "
             "unit adds to the optimal episode cost, from the LP's duals (mean over scenarios).", "",
             markdown_table(["task", "oracle cost vs no rule", "oracle backlog per period", "without the rule",
                             "unserved at the end", "rule leaves demand unmet", "shadow price"], rows, left=1), ""]
    lines += [f"- {describe(task, x)}" for task, x in impact.items()]
    return lines + [""]


def _retuned_section(m: Metrics) -> list[str]:
    """Each task on its own, moca adapt beside the MPC re-tuned for it (experiment.retuned_per_task)."""
    retuned = m.get("retuned") or {}
    tasks = [t for t in task_names(m) if all(t in by_task for by_task in retuned.values())]
    if not retuned or not tasks:
        return []
    labels = {"mpc-retuned": "MPC, safety stock re-picked per task", "moca-adapt": "moca adapt (portfolio)"}
    rows = []
    for name, by_task in retuned.items():
        scores = [by_task[t]["score"] for t in tasks]
        how = [by_task[t].get("candidate", "") + (f" {by_task[t]['safety_stock']:.0f}"
                                                  if by_task[t].get("safety_stock") is not None else "")
               for t in tasks]
        rows.append([labels.get(name, name), *[f"{x:.4f}" for x in scores], f"{np.mean(scores):.4f}",
                     " / ".join(f"{by_task[t]['seconds']:.1f}" for t in tasks), " / ".join(h.strip() for h in how),
                     str(sum(int(by_task[t].get("violations") or 0) for t in tasks))])
    steps = next(iter(retuned.get("moca-adapt", {}).values()), {}).get("steps")
    return ["## Each task on its own: moca adapt against the re-tuned MPC", "",
            "What a user does when a rule changes, task by task from the same start: the MPC's safety stock "
            "re-picked on the task's support scenarios (seeds 800+), and `moca adapt` from the shipped meta-init "
            f"({steps} steps on the same scenarios; its portfolio keeps the candidate best on validation seeds "
            "900+). Test scenarios as above.", "",
            markdown_table(["policy", *tasks, "mean", "seconds", "chosen (safety stock)", "violations"], rows),
            ""]


def report_markdown(metrics: dict[str, Any], images: Sequence[str] = ()) -> str:
    """The text of report.md; ``images`` are the PNG file names (in the same folder) to embed."""
    m = check_metrics(metrics)
    tasks = task_names(m)
    title = f"# moca run {m['id']}" if m.get("id") else "# moca run"
    lines = [title, ""]
    facts = []
    if m.get("created"):
        facts.append(f"created {m['created']}")
    if "quick" in m:
        facts.append("**quick mode** (fewer scenarios and steps; numbers are indicative)" if m["quick"] else "full run")
    if facts:
        lines += [" · ".join(facts), ""]
    lines += [
        "Every score is oracle cost / policy cost on held-out test scenarios (1.0 = the hindsight "
        "optimum; higher is better).", "",
    ]
    if tasks:
        rows = [[t, _regime_text(m.get("regimes", {}).get(t)) or "–"] for t in tasks]
        lines += ["## Tasks", "", markdown_table(["task", "regime"], rows, left=2), ""]

    headers, cells = summary_table(m)
    if cells:
        lines += [
            "## Summary", "", markdown_table(headers, cells), "",
            f"- *forgetting*: relative drop of the score on {tasks[0] if tasks else 'the first task'} after learning "
            f"{tasks[1] if len(tasks) > 1 else 'the second'}, (R[1][0] − R[2][0]) / R[1][0]; BWT/FWT: backward "
            "and forward transfer.",
            "- *adapt. steps / seconds*: gradient steps and wall seconds until the validation score reaches "
            "99% of its plateau, per task (– = not reached or not measured).",
            "- *violations*: executed actions breaking a hard constraint (must be 0); *correction*: mean "
            "normalised distance the safety layer moved the raw action.",
            "- *latency*: one decision (policy + exact projection), wall clock; for baselines, their worst "
            "task. metrics.json also has the deciding thread's CPU time of moca's methods (`cpu_p50`, "
            "`cpu_p99`), which another process on the same cores does not add to.", "",
        ]

    if m.get("targets"):
        rows = [[t["what"], t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in m["targets"]]
        lines += ["## Targets", "", markdown_table(["what", "target", "measured", "met"], rows, left=4), ""]

    lines += plot_markdown(images)

    lines += _rule_impact_section(m)
    lines += _retuned_section(m)
    lines += _generalisation_section(m)

    run = []
    if m.get("command"):
        run.append(f"- command: `{m['command']}`")
    chain = chain_note(m)
    if chain:
        run.append(f"- {chain}")
    machine = m.get("machine") or {}
    if machine:
        parts = [machine.get("cpu"), f"{machine['cores']} cores" if machine.get("cores") else None,
                 f"Python {machine['python']}" if machine.get("python") else None,
                 f"torch {machine['torch']}" if machine.get("torch") else None]
        run.append("- machine: " + ", ".join(p for p in parts if p))
    seeds = m.get("seeds") or {}
    if seeds.get("train"):
        run.append(f"- training seeds: {seeds['train']}")
    if "test" in seeds:
        run.append(f"- test seeds: {_seed_text(seeds['test'])}")
    if "validation" in seeds:
        run.append(f"- validation seeds: {_seed_text(seeds['validation'])}")
    walls = {n: r.get("wall_seconds") for n, r in m.get("methods", {}).items() if r.get("wall_seconds") is not None}
    if walls:
        run.append("- wall seconds per method: " + ", ".join(f"{n} {s:.1f}" for n, s in walls.items()))
    if run:
        lines += ["## Run", "", *run, ""]
    return "\n".join(lines)


def chain_note(metrics: dict[str, Any]) -> str | None:
    """One line where a run's chain is not its world's default: the fields that differ, and
    the meta-init's note (trained on other params); None on the default chain. The report
    showed neither, only metrics.json (a report read alone passed for the default chain's)."""
    from moca.chain2 import changed_fields
    from moca.scenario import Params, Params2, validation_reason

    recorded = metrics.get("params")
    if not isinstance(recorded, dict):
        return None
    kind = Params2 if metrics.get("model") == "CLSC-2" else Params
    try:
        changed = changed_fields(kind(), kind(**recorded))
    except ValueError as err:  # (an edited metrics.json: named as its other parts are)
        raise ReportError(f"metrics.{validation_reason(err)}") from None
    if not changed:
        return None
    note = metrics.get("params_note")
    return f"Chain: not the default ({changed})" + (f"; {note}" if note else "") + "."


def write_report(metrics: dict[str, Any], run_dir: str | Path) -> Path:
    """Write the PNG plots and ``report.md`` into ``run_dir``; returns the report's path.

    A plot whose data the run did not record is skipped (and not linked).
    """
    m = check_metrics(metrics)
    run_dir = Path(run_dir)
    written = write_plots(m, run_dir)
    report = run_dir / "report.md"
    report.write_text(report_markdown(m, written))
    return report


def write_report_from_file(metrics_path: str | Path, run_dir: str | Path | None = None) -> Path:
    """Rebuild a report from a saved ``metrics.json`` (into its own folder by default)."""
    metrics_path = Path(metrics_path)
    try:
        metrics = json.loads(metrics_path.read_text())
    except OSError as err:
        raise ReportError(f"{metrics_path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ReportError(f"{metrics_path}: malformed JSON ({parse_problem(err)})") from None
    return write_report(metrics, run_dir if run_dir is not None else metrics_path.parent)
