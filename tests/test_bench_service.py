"""benchmarks/bench_service.py --quick: a real service on loopback, timed and then stopped."""

import json
import subprocess
from pathlib import Path

from _bench import run_script


def test_service_benchmark_times_a_capped_regulation_event_and_stops_what_it_started(monkeypatch, capsys):
    started = []

    class Recorded(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            super().__init__(args, *rest, **kwargs)
            started.append((self, list(args)))

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    run_script("bench_service.py", ["--quick", "--capped", "--chains", "2", "--connections", "2"], monkeypatch)
    result = json.loads(capsys.readouterr().out)

    assert result["command"] == "python benchmarks/bench_service.py --quick --capped --chains 2 --connections 2"
    quiet = result["quiet"]
    assert quiet["decisions"] > 0 and 0 < quiet["p50_ms"] <= quiet["p99_ms"] <= quiet["max_ms"]
    assert result["adapting"]["job"]["state"] == "done" and result["adapting"]["decisions"] > 0
    [event] = result["regulation_events"]  # --quick: one event, the first capped one
    assert event["regime"] == {"emission_cap": 12000.0} and event["state"] == "done"
    # the service's default adapts through the portfolio under a cap, and says which candidate won
    assert "portfolio chose" in event["warm_start"] and event["active_version"] == 2
    assert event["score_after"] > event["score_before"]
    assert 0 < event["job_seconds"] <= event["seconds_to_active"]
    assert 0 < event["decide_p50_ms"] <= event["decide_p99_ms"]

    [(server, args)] = [(p, a) for p, a in started if "serve" in a]
    assert server.poll() is not None, "the benchmark left its service running"
    assert not Path(args[args.index("--data") + 1]).exists(), "the benchmark left its data directory behind"
