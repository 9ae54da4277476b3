"""The regime -> threshold-parameters map as moca's base rule, side by side with today's
policy and the re-tuned peers (issue 10, part 3).

    .venv/bin/python benchmarks/bench_regime_map.py [--quick] [--regimes 64] [--budget 600] [--select 16]
        [--map benchmarks/regime_map.json] [--refit] [--steps 1 3] [--no-default] [--no-mpc]
        [--out benchmarks/regime_map_compare.json] [--fit-only] [--ship DIR]

1. Fits the map (:func:`moca.regime_map.fit_threshold_map`: ``--regimes`` regimes of the
   meta-training distribution, each tuned with ``--budget`` candidate rules on 8
   training-stream scenarios) and writes it to ``--map`` — or loads ``--map`` if it exists
   and ``--refit`` is not given. ``--ship DIR`` also writes it as the map checkpoint
   folder ``DIR/map.json`` (the shipped one: ``src/moca/data/map-clsc1``, by
   ``--refit --fit-only --map /tmp/regime_map.json --ship src/moca/data/map-clsc1``).
2. On the README's five generalisation regimes and the seed tasks T1-T3 (test seeds
   1000-1019), scores the mapped policy (the mapped rule, its base thresholds picked among
   the map's and the ``--select`` nearest tunings on the support scenarios, + a fresh LSTM
   residual adapted with ``moca adapt``'s steps) and today's ``default`` meta-init after 0 and each of
   ``--steps`` steps, with adaptation seconds, beside the threshold rule re-tuned per
   regime (its tuning seconds) and the MPC; writes JSON (``--out``) and a markdown table
   (same name, ``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _args import non_negative_int, output_file, output_folder, positive_int, whole
from moca.experiment import GENERALISATION_GRID, grid_regime, machine
from moca.files import write_atomic
from moca.regime import TASKS
from moca.regime_map import ThresholdMap, compare, fit_threshold_map
from moca.report import markdown_table

HERE = Path(__file__).resolve().parent


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def table(result: dict) -> str:
    steps = ["0", *[str(k) for k in result["steps"]]]
    names = [n for n in ("default", "mapped") if any(n in e for e in result["regimes"].values())]
    headers = ["regime", "map's rule alone"]
    for n in names:
        headers += [f"{n} {k}" for k in steps] + [f"{n} s ({steps[-1]} steps)"]
    headers += ["threshold (re-tuned)", "tuning s", "MPC"]
    rows, means = [], {h: [] for h in headers[1:]}
    for label, e in result["regimes"].items():
        cells = [label, f"{e['mapped_rule_only']:.3f}"]
        means["map's rule alone"].append(e["mapped_rule_only"])
        for n in names:
            for k in steps:
                cells.append(f"{e[n]['scores'][k]:.3f}")
                means[f"{n} {k}"].append(e[n]["scores"][k])
            cells.append(f"{e[n]['seconds'][steps[-1]]:.1f}")
        cells += [f"{e['threshold']['score']:.3f}", f"{e['threshold']['tuning_seconds']:.1f}",
                  f"{e['mpc']['score']:.3f}" if "mpc" in e else "–"]
        means["threshold (re-tuned)"].append(e["threshold"]["score"])
        if "mpc" in e:
            means["MPC"].append(e["mpc"]["score"])
        rows.append(cells)
    for group, labels in (("mean, generalisation", [k for k in result["regimes"] if k in GENERALISATION_GRID]),
                          ("mean, T1-T3", [k for k in result["regimes"] if k in TASKS])):
        if not labels:
            continue
        cells = [f"**{group}**"]
        pick = lambda vals: np.mean([v for k, v in zip(result["regimes"], vals) if k in labels])  # noqa: E731
        for h in headers[1:]:
            vals = means.get(h, [])
            cells.append(f"{pick(vals):.3f}" if len(vals) == len(result["regimes"]) and not h.endswith("s")
                         and "steps)" not in h else "")
        rows.append(cells)
    return markdown_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 regimes, tiny tuning, 1 regime, 2 scenarios")
    parser.add_argument("--regimes", type=whole(8), default=64)
    parser.add_argument("--budget", type=positive_int, default=600)
    parser.add_argument("--map", default=str(HERE / "regime_map.json"))
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--fit-only", action="store_true")
    parser.add_argument("--ship", type=output_folder, default=None, metavar="DIR",
                        help="also write the map as a checkpoint folder (DIR/map.json, e.g. src/moca/data/map-clsc1)")
    parser.add_argument("--steps", type=positive_int, nargs="*", default=[1, 3])
    parser.add_argument("--no-default", action="store_true", help="leave today's default meta-init out")
    parser.add_argument("--no-mpc", action="store_true")
    parser.add_argument("--only", nargs="*", default=None, help="regime labels to run (default: all)")
    parser.add_argument("--select", type=non_negative_int, default=16,
                        help="nearest tunings tried as base (0: the map alone)")
    parser.add_argument("--meta-train", type=float, default=0.0, metavar="SECONDS",
                        help="meta-train the LSTM residual over the mapped base (FOMAML, moca train's defaults) "
                             "for at most this many seconds before comparing (0: a fresh head)")
    parser.add_argument("--meta-select", action="store_true",
                        help="with --meta-train: each meta-task's base picked as at adaptation (--select)")
    parser.add_argument("--out", type=output_file, default=str(HERE / "regime_map_compare.json"))
    args = parser.parse_args()
    known = [*GENERALISATION_GRID, "T1", "T2", "T3"]  # the regimes compared below
    unknown = [k for k in args.only or [] if k not in known]
    if unknown:
        parser.error(f"argument --only: unknown regimes {unknown} (known: {known})")
    torch.set_num_threads(1)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    map_path = Path(args.map)
    if map_path.exists() and not args.refit:
        data = json.loads(map_path.read_text())
        threshold_map, fit = ThresholdMap.from_dict(data["map"]), data["fit"]
        log(f"map: loaded {map_path}")
    else:
        regimes, budget = (8, 60) if args.quick else (args.regimes, args.budget)
        threshold_map, fit = fit_threshold_map(regimes, budget=budget, progress=lambda i, n: log(f"map: {i}/{n}"))
        fit.update({"command": " ".join(["benchmarks/bench_regime_map.py", *sys.argv[1:]]), "machine": machine(),
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        _write(map_path, json.dumps({"map": threshold_map.to_dict(), "fit": fit}, indent=1))
    if args.ship:
        from moca.regime_map import save_map

        save_map(args.ship, threshold_map, fit)
        log(f"map: wrote {args.ship} (fit {fit['seconds']:.0f} s)")
    if args.fit_only:
        return
    regimes = {label: grid_regime(fields) for label, fields in GENERALISATION_GRID.items()}
    regimes.update({name: TASKS[name] for name in ("T1", "T2", "T3")})
    if args.quick:
        regimes = {"tax 900": regimes["tax 900"]}
    if args.only:
        regimes = {k: v for k, v in regimes.items() if k in args.only}
    residual, history = None, None
    if args.meta_train > 0:
        from moca.meta import MetaConfig, meta_train
        from moca.regime_map import mapped_policy

        module = mapped_policy(threshold_map)
        module.auto_select = args.select if args.meta_select else 0
        config = MetaConfig(max_seconds=args.meta_train, params=threshold_map.params)
        residual, history = meta_train(config, lambda step, total, info: log(f"meta-train: {step}/{total}"),
                                       module=module)
        residual.auto_select = 0
        history = {k: history[k] for k in ("wall_seconds", "stopped_early", "config")} | {
            "steps": len(history["steps"]), "selected_base": bool(args.meta_select)}
    started = time.perf_counter()
    result = compare(regimes, threshold_map, steps=[] if args.quick else args.steps,
                     test_size=2 if args.quick else 20, include_default=not args.no_default,
                     include_mpc=not (args.no_mpc or args.quick), select=args.select, progress=log,
                     residual=residual)
    result.update({"command": " ".join(["benchmarks/bench_regime_map.py", *sys.argv[1:]]), "map_fit": fit,
                   "meta_training": history,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                   "wall_seconds": time.perf_counter() - started})
    out = Path(args.out)
    _write(out, json.dumps(result, indent=1))
    text = table(result)
    _write(out.with_suffix(".md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
