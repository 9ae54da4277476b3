"""How fast a sweep and a meta step run, serially, on the local process pool and on a
local Ray, and whether the backends agree. Prints one JSON object (``--out`` also writes it).

    python benchmarks/bench_sweep.py [--quick] [--workers 2] [--out FILE]

Sweep: ``--values`` of ``--field`` (default carbon_tax 0:300:25, 13 values) x
``--scenarios`` (20) x oracle + MPC + threshold rule on CLSC-1, once per backend (serial,
process pool, local Ray), each timed end to end (a local Ray's start reported apart).
Meta step: ``--meta-steps`` steps of the default MetaConfig (8 regimes a step) on the
local path, then with each regime's inner loop as a task serially and on a local Ray.
The cost model: seconds per task by policy, bytes moved per task (pickled in and out).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time

import numpy as np

from _args import output_file_path, positive_int, sweep_values, whole
from moca.limits import MOST_SCENARIOS, MOST_WORKERS


def _sweep(plan, kind: str, workers: int) -> tuple[dict, float]:
    from moca.cluster import Backend
    from moca.sweep import run_sweep

    backend = Backend(kind, workers=workers, address="auto" if kind == "ray" else None)
    start = 0.0
    if kind == "ray":  # started (and timed) apart: a cluster would already be running
        started = time.perf_counter()
        backend.start()
        start = time.perf_counter() - started
    try:
        result = run_sweep(plan, backend)
    finally:
        backend.stop()
    return result, start


def _max_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for name, entry in a["policies"].items():
        for key, value in entry.items():
            if isinstance(value, list) and value and isinstance(value[0], (int, float, list)) and value[0] is not None:
                x = np.asarray(value, dtype=float)
                y = np.asarray(b["policies"][name][key], dtype=float)
                worst = max(worst, float(np.nanmax(np.abs(x - y) / np.maximum(np.abs(x), 1.0))))
    return worst


def bench_sweep(args) -> dict:
    from moca.sweep import make_plan, run_task

    plan = make_plan("CLSC-1", args.field, args.values, policies="oracle,mpc,threshold", scenarios=args.scenarios)
    out: dict = {"field": args.field, "values": plan.values, "scenarios": args.scenarios,
                 "policies": plan.policies, "tasks": len(plan.tasks()), "runs": {}}
    results = {}
    for kind in args.backends:
        print(f"sweep on {kind} ...", file=sys.stderr, flush=True)
        result, start = _sweep(plan, kind, 1 if kind == "serial" else args.workers)
        results[kind] = result
        out["runs"][kind] = {"seconds": result["seconds"], "task_seconds": result["task_seconds"],
                             "task_cpu_seconds": result["task_cpu_seconds"],
                             "backend": result["backend"], "ray_start_seconds": start if kind == "ray" else None}
    serial = out["runs"]["serial"]["seconds"]
    for kind in args.backends:
        out["runs"][kind]["speedup_over_serial"] = serial / out["runs"][kind]["seconds"]
        out["runs"][kind]["max_relative_difference_to_serial"] = _max_difference(results["serial"], results[kind])
    # The cost model: a task of each policy (its seconds in the serial run are not kept
    # per task, so one task of each policy is timed again, alone) and the bytes it moves.
    model = {}
    for policy in plan.policies:
        task = next(t for t in plan.tasks() if t.policy == policy and t.index == len(plan.values) // 2)
        started = time.perf_counter()
        result = run_task(task)
        model[policy] = {"seconds": time.perf_counter() - started, "cpu_seconds": result.cpu_seconds,
                         "bytes_in": len(pickle.dumps(task)),
                         "bytes_out": len(pickle.dumps(result))}
    out["per_task"] = model
    out["carbon_tax_result"] = {k: results["serial"]["policies"][k]["compliance_cost"] for k in plan.policies}
    return out


def bench_meta(args) -> dict:
    import torch

    from moca.cluster import Backend
    from moca.meta import MetaConfig, meta_train
    from moca.meta_dist import MetaTaskJob, task_direction

    config = MetaConfig(meta_steps=args.meta_steps, max_seconds=None)
    out: dict = {"meta_steps": args.meta_steps, "tasks_per_step": config.tasks_per_step, "runs": {}}
    torch.set_num_threads(1)
    weights = {}
    for kind in ["local", *[k for k in args.backends if k != "pool"]]:
        print(f"meta steps on {kind} ...", file=sys.stderr, flush=True)
        backend = None if kind == "local" else Backend(kind, workers=args.workers, address="auto")
        start = 0.0
        if backend is not None and kind == "ray":
            started = time.perf_counter()
            backend.start()
            start = time.perf_counter() - started
        try:
            started = time.perf_counter()
            module, history = meta_train(config, backend=backend)
            seconds = time.perf_counter() - started
        finally:
            if backend is not None:
                backend.stop()
        weights[kind] = {k: p.detach().numpy().copy() for k, p in module.named_parameters()}
        out["runs"][kind] = {"seconds_per_step": seconds / args.meta_steps,
                             "ray_start_seconds": start if kind == "ray" else None}
    for kind in weights:
        out["runs"][kind]["max_abs_weight_difference_to_local"] = float(max(
            np.abs(weights[kind][k] - weights["local"][k]).max() for k in weights["local"]))
    if "serial" in out["runs"]:
        base = out["runs"]["serial"]["seconds_per_step"]
        for kind in out["runs"]:
            out["runs"][kind]["speedup_over_serial_tasks"] = base / out["runs"][kind]["seconds_per_step"]
    # The cost of one worker's share as a function of its size (tasks batched in one
    # rollout): what a step on K workers costs, with 8/K tasks a share.
    out["share"] = {}
    for size in (1, 2, 4, 8):
        job = MetaTaskJob(config.model_dump(mode="json"), weights["local"],
                          tuple({"carbon_tax": 50.0 * i} for i in range(size)),
                          tuple((4 * i, 4 * i + 1) for i in range(size)), tuple((4 * i + 2, 4 * i + 3) for i in range(size)))
        started, cpu = time.perf_counter(), time.process_time()
        result = task_direction(job)
        out["share"][size] = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
                              "bytes_in": len(pickle.dumps(job)), "bytes_out": len(pickle.dumps(result))}
    return out


def _noop(x: int) -> int:
    return x


def bench_overhead(args) -> dict:
    """Round trip of tasks that do nothing: what a backend adds per task."""
    from moca.cluster import Backend

    out = {}
    for kind in [k for k in args.backends if k != "serial"]:
        backend = Backend(kind, workers=args.workers, address="auto")
        with backend.session():
            backend.map(_noop, range(2 * args.workers))  # workers up and warm
            started = time.perf_counter()
            backend.map(_noop, range(200))
            out[kind] = {"tasks": 200, "ms_per_task": (time.perf_counter() - started) / 200 * 1000}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 values x 4 scenarios, 1 meta step (where those options are not given)")
    parser.add_argument("--field", default="carbon_tax")
    parser.add_argument("--values", type=sweep_values, default=None, help="default 0:300:25 (--quick 0:300:100)")
    parser.add_argument("--scenarios", type=whole(2, MOST_SCENARIOS), default=None, help="default 20 (--quick 4)")
    parser.add_argument("--meta-steps", type=positive_int, default=None, help="default 3 (--quick 1)")
    parser.add_argument("--workers", type=whole(1, MOST_WORKERS), default=2)
    parser.add_argument("--no-meta", action="store_true", help="skip the meta-step part")
    parser.add_argument("--out", type=output_file_path, default=None)
    args = parser.parse_args()
    # (--quick replaced the values, scenarios and meta steps given beside it without a word)
    for name, full, quick in (("values", "0:300:25", "0:300:100"), ("scenarios", 20, 4), ("meta_steps", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    from moca.sweep import SweepError, make_plan

    try:  # what depends on the field (an unknown one, a value outside its range) is said here
        make_plan("CLSC-1", args.field, args.values, policies="oracle,mpc,threshold", scenarios=args.scenarios)
    except SweepError as err:
        parser.error(str(err))
    try:
        import ray  # noqa: F401

        args.backends = ["serial", "pool", "ray"]
    except ImportError:
        args.backends = ["serial", "pool"]
    from moca.experiment import machine
    from moca.files import write_atomic

    out = {"benchmark": "sweep", "machine": machine(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "load_average_at_start": list(os.getloadavg()), "sweep": bench_sweep(args)}
    out["overhead"] = bench_overhead(args)
    if not args.no_meta:
        out["meta_step"] = bench_meta(args)
    out["load_average_at_end"] = list(os.getloadavg())
    text = json.dumps(out, indent=1)
    if args.out is not None:
        write_atomic(args.out, text)
    print(text)
    print(f"done on {platform.node()}", file=sys.stderr)


if __name__ == "__main__":
    main()
