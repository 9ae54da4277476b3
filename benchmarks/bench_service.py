"""moca serve under load: decisions per second and latency over HTTP on loopback, quiet
and while an adaptation job runs; seconds from a regulation event to an activated,
validated version.

    python benchmarks/bench_service.py [--seconds 10] [--connections 4] [--chains 8] [--capped]
                                       [--adapt-base caps|default|auto|map|mpc] [--quick]

Starts ``moca serve`` (uvicorn, its adaptation worker) on 127.0.0.1 with a fresh data
directory, registers ``--chains`` chains (CLSC-1, T1, the shipped meta-init) and drives
them with the bundled load generator: ``--connections`` keep-alive HTTP/1.1 connections
in one asyncio process, each sending the next decision as soon as the last is answered
(closed loop; one chain per connection at a time, ``t`` = 0..51 then ``reset``). The
observations are a real episode's (the simulator driven by the same policy), so the
projection runs as often as it does in operation. Latency is from the first byte sent to
the last byte of the answer, as the client sees it. Phases: ``quiet``; ``adapting``
(only decisions answered while the job is running count); then regulation events, each
timed from its POST until ``GET /v1/jobs`` says done and the version is active, then one
episode of decisions by that version timed over HTTP (an LP version solves an LP per
decision). ``--capped``: the events bring emission caps, where the service's default
``--adapt-base caps`` adapts through the portfolio; ``--adapt-base`` starts the service with
another.
Prints one JSON object. Every process started here is killed before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _args import non_negative_int, one_of, positive_float, positive_int

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _episode() -> list[dict]:
    """52 decide bodies from one simulated episode (scenario seed 5000, T1)."""
    import torch

    from moca import checkpoint
    from moca.policy import DeployedPolicy
    from moca.regime import TASKS
    from moca.scenario import draw_scenario
    from moca.sim import ScenarioBatch, Simulator, rollout

    module, _ = checkpoint.load_policy("default")
    deployed = DeployedPolicy(module)
    bodies: list[dict] = []

    class Recorder:
        def reset(self, batch):
            deployed.reset(batch)

        def act(self, obs):
            t, stocks, pipeline, history, _, rho, last = DeployedPolicy.inputs(obs)
            bodies.append({"t": t, "state": dict(zip(("virgin", "recycled", "product", "cores", "backlog"),
                                                      stocks.tolist())),
                           "pipeline": pipeline.tolist(), "sales_history": history.tolist(), "return_frac": rho,
                           "last_demand": last})
            return deployed.act(obs)

    batch = ScenarioBatch.from_scenarios([draw_scenario(5000, TASKS["T1"])], dtype=torch.float64)
    with torch.no_grad():
        rollout(batch, Recorder(), None, simulator=Simulator(module.params, dtype=torch.float64))
    return bodies


def _request(path: str, body: dict | None, port: int) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def _connection(port: int, chains: list[str], requests: dict, until: float, out: list, errors: list) -> None:
    """One keep-alive connection driving its chains in turn, closed loop."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        k = 0
        while time.perf_counter() < until:
            chain = chains[k % len(chains)]
            k += 1
            await _exchange(reader, writer, requests[chain]["reset"])
            for request in requests[chain]["decide"]:
                started = time.perf_counter()
                status = await _exchange(reader, writer, request)
                done = time.perf_counter()
                if status != 200:
                    errors.append(status)
                out.append((time.time(), (done - started) * 1e3))
                if done >= until:
                    return
    finally:
        writer.close()


def _load(port: int, chains: list[str], requests: dict, seconds: float, connections: int) -> list[tuple[float, float]]:
    """Run the load for ``seconds``; returns (wall time answered, latency ms) per decision."""
    out: list[tuple[float, float]] = []
    errors: list[int] = []

    async def main() -> None:
        until = time.perf_counter() + seconds
        groups = [chains[i::connections] for i in range(connections)]
        await asyncio.gather(*(_connection(port, g, requests, until, out, errors) for g in groups))

    asyncio.run(main())
    if errors:
        raise RuntimeError(f"{len(errors)} decisions failed (HTTP {sorted(set(errors))})")
    return out


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(samples: list[tuple[float, float]], seconds: float) -> dict:
    if not samples:
        return {"decisions": 0}
    lat = np.array([s[1] for s in samples])
    return {"decisions": len(samples), "seconds": round(seconds, 2), "per_s": round(len(samples) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "max_ms": round(float(lat.max()), 2)}


def main() -> None:
    from moca.serve import SERVICE_BASES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=positive_float, default=10.0, help="length of the quiet phase")
    parser.add_argument("--connections", type=positive_int, default=4)
    parser.add_argument("--chains", type=positive_int, default=8)
    parser.add_argument("--events", type=non_negative_int, default=3, help="regulation events timed to activation")
    parser.add_argument("--capped", action="store_true", help="regulation events with emission caps (kg CO2 a "
                                                                "period), where jobs adapt through the portfolio")
    parser.add_argument("--adapt-base", type=one_of(SERVICE_BASES), default=None,
                        help="moca serve --adapt-base (default: the service's own)")
    parser.add_argument("--quick", action="store_true", help="3 s phases, 1 event")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.events = 3.0, 1
    import httpx

    bodies = _episode()
    port = _free_port()
    data = Path(tempfile.mkdtemp(prefix="moca-bench-serve-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = ["--adapt-base", args.adapt_base] if args.adapt_base else []
    server = subprocess.Popen([sys.executable, "-m", "moca.cli", "serve", "--port", str(port), "--data", str(data),
                               *base], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)
    result: dict = {"benchmark": "service", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
                    "connections": args.connections, "chains": args.chains,
                    "command": "python benchmarks/bench_service.py " + " ".join(sys.argv[1:]),
                    "adapt_base": args.adapt_base or "the service's default"}
    try:
        deadline = time.time() + 120
        while True:
            try:
                if http.get("/health").json()["worker"] == "running":
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.1)
        chains = [f"plant-{i}" for i in range(args.chains)]
        requests = {}
        for chain in chains:
            http.post("/v1/chains", json={"id": chain, "regime": "T1"}).raise_for_status()
            requests[chain] = {"reset": _request(f"/v1/chains/{chain}/reset", None, port),
                               "decide": [_request(f"/v1/chains/{chain}/decide", b, port) for b in bodies]}
        _load(port, chains, requests, 1.0, args.connections)  # warm-up: caches, weights loaded
        started, cpu = time.perf_counter(), _cpu_seconds(server.pid)
        quiet = _load(port, chains, requests, args.seconds, args.connections)
        result["quiet"] = _summary(quiet, time.perf_counter() - started)
        if cpu is not None:  # the server's own CPU time per decision: what one free core would allow
            used = _cpu_seconds(server.pid) - cpu
            result["quiet"]["server_cpu_ms_per_decision"] = round(1e3 * used / max(len(quiet), 1), 3)
            result["quiet"]["per_s_one_free_core"] = round(len(quiet) / used, 1) if used > 0 else None

        # while adapting: a regulation on a chain outside the load; count what is answered while the job runs
        http.post("/v1/chains", json={"id": "adapting", "regime": "T1"}).raise_for_status()
        job = http.post("/v1/chains/adapting/regulations", json={"regime": "T3"}).json()["job"]
        while http.get(f"/v1/jobs/{job}").json()["state"] == "queued":
            time.sleep(0.01)
        # run the load until the job ends (at most 120 s)
        samples: list[tuple[float, float]] = []
        began = time.perf_counter()
        while time.perf_counter() - began < 120:
            samples += _load(port, chains, requests, 1.0, args.connections)
            info = http.get(f"/v1/jobs/{job}").json()
            if info["state"] not in ("queued", "running"):
                break
        window = [s for s in samples if info["started"] <= s[0] <= (info["finished"] or time.time())]
        result["adapting"] = _summary(window, (info["finished"] or time.time()) - info["started"])
        result["adapting"]["job"] = {k: info[k] for k in ("state", "seconds", "score_before", "score_after")}
        if result["quiet"].get("p99_ms") and result["adapting"].get("p99_ms"):
            result["adapting_over_quiet_p99"] = round(result["adapting"]["p99_ms"] / result["quiet"]["p99_ms"], 2)

        # regulation event -> activated, validated version (decisions keep coming on that chain)
        events = []
        rules = [("T3", "T1"), ({"recycled_content_min": 0.2, "carbon_tax": 250.0}, "T1"), ("T3", "T1")]
        if args.capped:
            rules = [({"emission_cap": 12000.0}, "T1"), ({"emission_cap": 8000.0, "recycled_content_min": 0.2}, "T1"),
                     ({"emission_cap": 20000.0, "carbon_tax": 100.0}, "T1")]
        for k in range(args.events):
            rule, start = rules[k % len(rules)]
            chain = f"event-{k}"
            http.post("/v1/chains", json={"id": chain, "regime": start}).raise_for_status()
            http.post(f"/v1/chains/{chain}/decide", json=bodies[0]).raise_for_status()
            posted = time.perf_counter()
            job = http.post(f"/v1/chains/{chain}/regulations", json={"regime": rule}).json()["job"]
            t = 1
            while True:
                http.post(f"/v1/chains/{chain}/decide", json=bodies[t]).raise_for_status()  # the rule is in force
                t += 1
                if t == len(bodies):
                    http.post(f"/v1/chains/{chain}/reset").raise_for_status()
                    t = 0
                info = http.get(f"/v1/jobs/{job}").json()
                if info["state"] not in ("queued", "running"):
                    break
                time.sleep(0.05)
            seconds = time.perf_counter() - posted
            active = [v for v in http.get(f"/v1/chains/{chain}/versions").json() if v["state"] == "active"]
            http.post(f"/v1/chains/{chain}/reset").raise_for_status()
            decided = []  # one episode by the version now active, one decision at a time
            for body in bodies:
                sent = time.perf_counter()
                answer = http.post(f"/v1/chains/{chain}/decide", json=body)
                decided.append(1e3 * (time.perf_counter() - sent))
                answer.raise_for_status()
            events.append({"regime": rule, "state": info["state"], "seconds_to_active": round(seconds, 2),
                           "job_seconds": round(info["seconds"], 2), "active_version": active[0]["number"],
                           "decide_p50_ms": round(float(np.percentile(decided, 50)), 3),
                           "decide_p99_ms": round(float(np.percentile(decided, 99)), 3),
                           "score_before": info["score_before"], "score_after": info["score_after"],
                           "warm_start": info["warm_start"]})
        result["regulation_events"] = events
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        http.close()
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)
        import shutil

        shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
