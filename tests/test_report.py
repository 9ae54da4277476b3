import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from moca.report import (
    ReportError, check_metrics, plot_compliance, plot_score_matrices, summary_rows, summary_table, write_report, write_report_from_file,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = ["T1", "T2", "T3"]
T = 8
TERMS = ["virgin", "carbon", "produce", "disassemble", "refurbish", "dispose", "landfill_tax",
         "hold_virgin", "hold_recycled", "hold_product", "hold_core", "backlog"]


def _metrics() -> dict:
    """A small run: 2 methods, 3 tasks, 8 periods, every optional section present."""
    rng = np.random.default_rng(0)
    regimes = {"T1": {"recycled_content_min": 0.1}, "T2": {"recycled_content_min": 0.2},
               "T3": {"recycled_content_min": 0.2, "carbon_tax": 100.0, "emission_cap": 20000.0}}
    methods = {
        "moca": {
            "R": [[0.80, 0.75, 0.70], [0.962, 0.90, 0.85], [0.955, 0.958, 0.90], [0.951, 0.953, 0.961]],
            "average_final_score": 0.955, "forgetting": [0.011, 0.005, 0.0], "bwt": -0.0085, "fwt": 0.0412,
            "drop_first_after_second": 0.00728, "adaptation_steps": [3, 4, None],
            "adaptation_seconds": [0.81, 1.234, None],
            "adaptation_curves": [[0.80, 0.93, 0.955, 0.962, 0.962], [0.90, 0.94, 0.95, 0.956, 0.958],
                                  [0.85, 0.88, 0.90, 0.91, 0.92]],
            "violations": 0, "correction": 0.0123, "decision_latency_us": {"p50": 41.2, "p99": 187.6},
            "wall_seconds": 12.5,
        },
        "finetune": {
            "R": [[0.50, 0.45, 0.40], [0.94, 0.70, 0.65], [0.60, 0.95, 0.80], [0.55, 0.85, 0.955]],
            "average_final_score": 0.785, "forgetting": [0.39, 0.10, 0.0], "bwt": -0.245, "fwt": 0.2,
            "drop_first_after_second": 0.3617, "adaptation_steps": [12, 15, 9],
            "adaptation_seconds": [3.5, 4.25, 2.0],
            "adaptation_curves": [list(np.linspace(0.5, 0.94, 16)), list(np.linspace(0.7, 0.95, 16)),
                                  list(np.linspace(0.8, 0.955, 16))],
            "violations": 0, "correction": 0.05, "decision_latency_us": {"p50": 40.0, "p99": 1234.5},
            "wall_seconds": 8.0,
        },
    }
    baselines = {
        "oracle": {t: {"score": 1.0, "mean_cost": 3.0e5, "violations": 0} for t in TASKS},
        "threshold": {t: {"score": s, "mean_cost": 3.3e5, "violations": 0,
                          "decision_latency_us": {"p50": 20.0 + i, "p99": 60.0 + i}}
                      for i, (t, s) in enumerate(zip(TASKS, [0.90, 0.88, 0.86]))},
        "mpc": {t: {"score": s, "mean_cost": 3.1e5, "violations": 0,
                    "decision_latency_us": {"p50": 4000.0 + 10 * i, "p99": 9000.0 + 100 * i}}
                for i, (t, s) in enumerate(zip(TASKS, [0.97, 0.96, 0.965]))},
    }
    per_period = {}
    for policy in ["moca", "finetune", "oracle", "threshold", "mpc"]:
        per_period[policy] = {}
        for t in TASKS:
            r = regimes[t]["recycled_content_min"]
            cap = regimes[t].get("emission_cap")
            share = list(np.clip(r + rng.normal(0.02, 0.01, T), 0, 1))
            share[3] = None  # a period with no production
            per_period[policy][t] = {
                "recycled_share": share,
                "emissions": list(rng.uniform(12000, 19000, T)),
                "recycled_content_min": [r] * T,
                "emission_cap": [cap] * T,
                "cost_terms": {k: (0.0 if k == "landfill_tax" else float(rng.uniform(1e3, 8e4))) for k in TERMS},
            }
    return {
        "id": "20260101-120000-test", "created": "2026-01-01T12:00:00+00:00", "quick": True,
        "machine": {"cpu": "Test CPU", "cores": 2, "python": "3.11.7", "torch": "2.13.0"},
        "command": "moca run --quick", "seeds": {"train": "0..9999 drawn per step", "test": list(range(1000, 1008)),
                                                 "validation": [500, 502, 507]},
        "tasks": TASKS, "regimes": regimes, "baselines": baselines, "methods": methods, "per_period": per_period,
        "generalisation": {
            "regimes": [{"label": "G1", "regime": {"recycled_content_min": 0.35}},
                        {"label": "G2", "regime": {"carbon_tax": 500.0, "landfill_tax": 20.0}}],
            "policies": {"moca": {"G1": {"zero_shot": 0.81, "1": 0.9, "3": 0.93, "5": 0.946},
                                  "G2": {"zero_shot": 0.77, "1": 0.88, "3": 0.92, "5": 0.94}},
                         "finetune": {"G1": {"zero_shot": 0.6, "1": 0.65, "3": 0.7, "5": 0.74},
                                      "G2": {"zero_shot": 0.5, "1": 0.55, "3": 0.6, "5": None}}},
            "baselines": {"threshold": {"G1": 0.85, "G2": 0.8}, "mpc": {"G1": 0.96, "G2": 0.955}},
        },
        "targets": [{"what": "drop on T1 after T2, moca", "target": "<= 2%", "measured": "0.7%", "met": True},
                    {"what": "adaptation steps", "target": "<= 5", "measured": "3 / 4 / –", "met": False}],
    }


PLOT_NAMES = ["score_matrices.png", "adaptation_curves.png", "cost_breakdown.png", "compliance.png"]


def _table(markdown: str, first_header: str) -> dict[str, dict[str, str]]:
    """The markdown table whose first header cell is ``first_header``, as {row name: {header: cell}}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    headers = [c.strip() for c in lines[start].strip("|").split(" | ")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == len(headers), line
        rows[cells[0]] = dict(zip(headers, cells))
    return rows


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 400 < width < 3000 and 200 < height < 2000, (path, width, height)


def test_full_report_writes_every_plot_and_the_right_numbers(tmp_path):
    metrics = _metrics()
    original = copy.deepcopy(metrics)
    report = write_report(metrics, tmp_path / "run")
    assert report == tmp_path / "run" / "report.md"
    assert metrics == original  # the caller's dict is not touched
    for name in PLOT_NAMES:
        _assert_png(tmp_path / "run" / name)
    text = report.read_text()
    for name in PLOT_NAMES:
        assert f"]({name})" in text  # relative links

    summary = _table(text, "policy")
    assert list(summary) == ["moca", "finetune", "threshold rule", "MPC", "oracle (hindsight)"]
    moca, finetune = summary["moca"], summary["finetune"]
    assert moca["avg final score"] == "0.955"
    assert moca["forgetting T1 (drop after T2)"] == "0.7%"
    assert finetune["forgetting T1 (drop after T2)"] == "36.2%"
    assert moca["BWT"] == "-0.009" and moca["FWT"] == "+0.041"
    assert moca["adapt. steps (T1/T2/T3)"] == "3 / 4 / –"
    assert moca["adapt. seconds (T1/T2/T3)"] == "0.81 / 1.23 / –"
    assert finetune["adapt. steps (T1/T2/T3)"] == "12 / 15 / 9"
    assert moca["violations"] == "0" and moca["correction"] == "0.0123"
    assert moca["latency p50 (µs)"] == "41.2" and moca["latency p99 (µs)"] == "188"
    assert finetune["latency p99 (µs)"] == "1,234"  # 1234.5 rounds half to even
    # Baselines: mean score over the tasks, worst task's latency.
    assert summary["MPC"]["avg final score"] == f"{np.mean([0.97, 0.96, 0.965]):.3f}"
    assert summary["MPC"]["latency p99 (µs)"] == "9,200"
    assert summary["threshold rule"]["avg final score"] == "0.880"
    assert summary["oracle (hindsight)"]["avg final score"] == "1.000"
    assert summary["oracle (hindsight)"]["latency p50 (µs)"] == "–"
    assert summary["MPC"]["BWT"] == "–"

    targets = _table(text, "what")
    assert targets["drop on T1 after T2, moca"]["met"] == "yes"
    assert targets["adaptation steps"]["met"] == "**no**"

    generalisation = _table(text, "regime")
    assert generalisation["G1 (r=0.35)"]["5 steps"] == "0.946"
    assert generalisation["G1 (r=0.35)"]["MPC"] == "0.960"
    assert "| **mean of 2** | moca | 0.790 | 0.890 | 0.925 | 0.943 | 0.825 | 0.958 |" in text
    assert "|  | finetune | 0.550 | 0.600 | 0.650 | – |  |  |" in text  # a missing value gives no mean

    assert "| T3 | r=0.20 tau=100 cap=20000 |" in text
    assert "`moca run --quick`" in text and "Test CPU, 2 cores, Python 3.11.7, torch 2.13.0" in text
    assert "1000–1007 (8 scenarios)" in text and "500, 502, 507 (3 scenarios)" in text
    assert "quick mode" in text


def test_summary_rows_hold_raw_values():
    rows = {r["policy"]: r for r in summary_rows(_metrics())}
    assert rows["moca"]["kind"] == "method" and rows["moca"]["drop_first_after_second"] == pytest.approx(0.00728)
    assert rows["moca"]["adaptation_steps"] == [3, 4, None]
    assert rows["mpc"]["kind"] == "baseline"
    assert rows["mpc"]["average_final_score"] == pytest.approx(np.mean([0.97, 0.96, 0.965]))
    assert rows["mpc"]["latency_p50_us"] == 4020.0 and rows["mpc"]["violations"] == 0
    headers, cells = summary_table(_metrics())
    assert len(headers) == len(cells[0]) == 11 and len(cells) == 5


def test_the_closing_line_names_the_best_peer_of_the_run_re_tuned_ones_included():
    """``moca run``'s closing table read the baselines block alone: it named the threshold
    rule the best peer where the same run's MPC re-tuned per task scored 0.012 above moca."""
    from moca.report import run_summary

    metrics = _metrics()
    plain = run_summary(metrics)
    assert plain["best_peer"] == "mpc" and plain["best_peer_mean_score"] == pytest.approx(np.mean([0.97, 0.96, 0.965]))
    metrics["retuned"] = {
        "mpc-retuned": {t: {"score": 0.99, "violations": 0} for t in TASKS},
        "moca-adapt": {t: {"score": 0.995, "violations": 2 if t == "T2" else 0} for t in TASKS},  # moca's: no peer
    }
    s = run_summary(metrics)
    assert s["best_peer"] == "mpc-retuned" and s["best_peer_mean_score"] == pytest.approx(0.99)
    assert s["violations"] == plain["violations"] + 2


@pytest.mark.parametrize("drop", [
    ["generalisation", "targets", "per_period"],
    ["baselines", "machine", "seeds", "command", "created", "quick", "id", "regimes", "tasks"],
])
def test_missing_optional_sections_do_not_crash(tmp_path, drop):
    metrics = _metrics()
    for key in drop:
        del metrics[key]
    for result in metrics["methods"].values():
        for key in ("adaptation_curves", "decision_latency_us", "forgetting", "correction"):
            result.pop(key)
    text = write_report(metrics, tmp_path).read_text()
    assert "| moca | 0.955 |" in text
    if "per_period" in drop:
        assert not (tmp_path / "compliance.png").exists() and "compliance.png" not in text
        assert "## Targets" not in text and "Generalisation" not in text
    if "baselines" in drop:
        assert "MPC" not in _table(text, "policy")
        assert "| T1 | – |" in text  # tasks inferred from the width of R
        _assert_png(tmp_path / "compliance.png")
    _assert_png(tmp_path / "score_matrices.png")
    assert not (tmp_path / "adaptation_curves.png").exists()


def test_nearly_empty_metrics_give_a_short_report(tmp_path):
    text = write_report({}, tmp_path).read_text()
    assert text.startswith("# moca run")
    assert list(tmp_path.glob("*.png")) == []


def test_nan_and_none_scores_show_as_dash(tmp_path):
    metrics = _metrics()
    metrics["methods"]["moca"]["R"][0] = [None, float("nan"), 0.7]
    metrics["methods"]["moca"]["bwt"] = float("nan")
    headers, cells = summary_table(metrics)
    assert cells[0][headers.index("BWT")] == "–"
    _assert_png(plot_score_matrices(metrics, tmp_path / "R.png"))


@pytest.mark.parametrize("mutate,match", [
    (lambda m: m["methods"]["moca"]["R"].pop(), r"methods\.moca\.R: expected 4 rows"),
    (lambda m: m["methods"]["finetune"]["R"][2].append(0.5), r"methods\.finetune\.R"),
    (lambda m: m["methods"]["moca"].pop("R"), r"methods\.moca\.R"),
    (lambda m: m["methods"]["moca"].__setitem__("bwt", "large"), r"methods\.moca\.bwt"),
    (lambda m: m["methods"]["moca"]["adaptation_steps"].pop(), r"methods\.moca\.adaptation_steps: expected one entry per task"),
    (lambda m: m["per_period"]["mpc"]["T2"]["emissions"].pop(), r"per_period\.mpc\.T2: series of different lengths"),
    (lambda m: m["baselines"]["mpc"]["T1"].pop("score"), r"baselines\.mpc\.T1\.score"),
    (lambda m: m.__setitem__("params", {"cap_produce": "abc"}), r"metrics\.params\.cap_produce='abc' is not a number"),
])
def test_malformed_metrics_are_refused_naming_the_part(tmp_path, mutate, match):
    metrics = _metrics()
    mutate(metrics)
    with pytest.raises(ReportError, match=match):
        write_report(metrics, tmp_path)
    assert not (tmp_path / "report.md").exists()


def test_compliance_refuses_unknown_policy(tmp_path):
    with pytest.raises(ReportError, match="no per-period data for \\['ppo'\\]"):
        plot_compliance(_metrics(), tmp_path / "c.png", policies=["ppo"])


def test_rebuild_from_saved_metrics_json(tmp_path):
    metrics = _metrics()
    del metrics["per_period"]  # fewer plots: this test is about the file, not the drawing
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    report = write_report_from_file(tmp_path / "metrics.json")
    assert report.parent == tmp_path and re.search(r"\| moca \| 0\.955 \|", report.read_text())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReportError, match="bad.json: malformed JSON"):
        write_report_from_file(tmp_path / "bad.json")
    assert check_metrics(json.loads((tmp_path / "metrics.json").read_text()))["tasks"] == TASKS


def test_a_run_on_another_chain_says_so_in_its_report(tmp_path):
    """report.md of `moca run --params FILE` read as the default chain's: only metrics.json
    said which chain it ran on; both worlds' reports now name the fields that differ."""
    from moca.experiment2 import report2
    from moca.report import chain_note
    from moca.scenario import Params, Params2

    metrics = {**_metrics(), "params": {**Params().model_dump(), "cap_produce": 1200.0},
               "params_note": "checkpoint default was trained on other params (cap_produce=1500.0->1200.0)"}
    text = write_report(metrics, tmp_path / "run").read_text()
    assert "- Chain: not the default (cap_produce=1500.0->1200.0); checkpoint default was trained on" in text
    assert chain_note({**metrics, "params": Params().model_dump()}) is None
    assert "Chain:" not in write_report({**_metrics(), "params": Params().model_dump()}, tmp_path / "d").read_text()
    two = {"id": "x", "model": "CLSC-2", "command": "moca run --model CLSC-2", "machine": {}, "wall_seconds": 1.0,
           "seeds": {"test": [1000, 1001]}, "tasks": ["T1"], "baselines": {}, "methods": {}, "targets": {},
           "params": {**Params2().model_dump(), "horizon": 26}}
    assert "\nChain: not the default (horizon=52->26).\n" in report2(two)
    assert "Chain:" not in report2({**two, "params": Params2().model_dump()})


def test_adaptation_curves_show_no_test_seed_score_on_their_validation_axis(tmp_path, monkeypatch):
    """The MPC's score (test seeds) was drawn across the validation curves: moca showed below
    an MPC it beats on the same test seeds. The curves name their validation seeds instead."""
    import moca.report as report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or Path(path))
    metrics = _metrics()
    metrics["seeds"] = {"validation": [900, 901, 902, 903]}
    report.plot_adaptation_curves(metrics, tmp_path / "curves.png")
    (figure,) = figures
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert "oracle (1.0)" in labels and not any("MPC" in label for label in labels)
    assert "seeds 900-903" in figure._suptitle.get_text()


def test_moca_continual_curves_name_their_validation_seeds(tmp_path, monkeypatch):
    """``moca continual --plot``'s curves figure said "seeds –": its metrics held no seeds."""
    import moca.report
    from moca.cli import _plot_continual
    from moca.regime import TASKS

    seen = {}
    monkeypatch.setattr(moca.report, "plot_adaptation_curves", lambda m, where: seen.setdefault("title", m))
    result = {"R": [[0.9, 0.8], [0.95, 0.85], [0.94, 0.9]], "adaptation_curves": [[0.9, 0.95], [0.85, 0.9]],
              "adaptation_steps": [1, 1]}
    _plot_continual(tmp_path / "R.png", "moca", [("T1", TASKS["T1"]), ("T2", TASKS["T2"])], result, 8)
    assert moca.report._validation_seeds(seen["title"]) == "900-907"
    assert (tmp_path / "R.png").read_bytes()[:8] == PNG_SIGNATURE
