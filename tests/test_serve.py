"""moca serve: decisions, regulation events, versions, bad input, auth, and crash safety.

In-process tests use FastAPI's TestClient without the worker process (jobs are run by
calling :func:`moca.serve.run_job`); the crash tests start the real service (uvicorn and
its worker) on 127.0.0.1, kill it with SIGKILL and restart it on the same data
directory. Every process a test starts is killed in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from moca import checkpoint, safety
from moca.limits import MOST_STEPS, SUPPORT_SEEDS, VALIDATION_SEEDS
from moca.policy import DeployedPolicy
from moca.regime import TASKS, RegimeSchedule, ScheduledRegime
from moca.regime_map import load_learned_policy
from moca.scenario import Params, draw_scenario
from moca.serve import ACTION_NAMES, STATE_NAMES, AdaptSettings, Store, create_app, run_job, warm_start
from moca.sim import ScenarioBatch, Simulator, rollout

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = AdaptSettings(steps=2, support=4, validation=4)  # a small job: these tests check the plumbing
OBS0 = {"t": 0, "state": {"virgin": 4000, "recycled": 500, "product": 1000, "cores": 200, "backlog": 0},
        "pipeline": [2000], "sales_history": [1000] * 6, "return_frac": 0.25}


def _delete_directory(path: Path) -> None:
    """Delete a running service's data directory as an operator's `rm -rf` would. SQLite may
    remove its -wal file (or make one) while the tree is walked, which made `shutil.rmtree`
    fail now and then (FileNotFoundError in CI); walk it again until it is gone."""
    import shutil

    deadline = time.time() + 10
    while path.exists():
        assert time.time() < deadline, f"{path} is still there after 10 s (made again?)"
        try:
            shutil.rmtree(path)
        except OSError:
            time.sleep(0.01)


def _obs(t: int, **change) -> dict:
    return {**OBS0, "t": t, "last_demand": None if t == 0 else 1000.0, **change}


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(tmp_path / "data", worker=False)) as c:
        yield c


def _claim(store: Store, job: int) -> None:
    with store.tx() as c:
        c.execute("UPDATE jobs SET state='running', attempts=attempts+1 WHERE id=?", (job,))


def _run_jobs(store: Store, jobs, settings: AdaptSettings = SMALL) -> None:
    """Claim and run ``jobs`` in this process, one thread as in the worker process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for job in jobs:
            _claim(store, job)
            run_job(store, job, settings)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------
# decisions
# ----------------------------------------------------------------------------------------


class _Recorder:
    """DeployedPolicy driving an episode; keeps each decision's inputs and action."""

    def __init__(self, deployed: DeployedPolicy):
        self.deployed, self.records = deployed, []

    def reset(self, batch):
        self.deployed.reset(batch)

    def act(self, obs):
        args = DeployedPolicy.inputs(obs)
        action = self.deployed.decide(*args)
        self.records.append((args, action))
        return torch.as_tensor(action, dtype=obs.state.virgin.dtype)[None]


def test_decisions_equal_the_deployed_policy_and_obey_a_new_rule_from_its_first_period(client):
    """The service's executed actions are DeployedPolicy's, bit for bit, for an episode in
    which T3 replaces T1 at t = 10 (announced at t = 3, no adapted version yet): from
    t = 10 every action is the projection for T3 and keeps T3's rows."""
    module, _ = checkpoint.load_policy("default")
    schedule = RegimeSchedule(entries=(ScheduledRegime(start=0, **TASKS["T1"].model_dump()),
                                       ScheduledRegime(start=10, **TASKS["T3"].model_dump())))
    recorder = _Recorder(DeployedPolicy(module))
    batch = ScenarioBatch.from_scenarios([draw_scenario(5001, schedule)], dtype=torch.float64)
    with torch.no_grad():
        rollout(batch, recorder, None, simulator=Simulator(module.params, dtype=torch.float64))
    assert client.post("/v1/chains", json={"id": "p1", "regime": "T1"}).status_code == 201
    for (t, stocks, pipeline, history, regime, rho, last), expected in recorder.records[:20]:
        if t == 3:
            r = client.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 10})
            assert r.status_code == 202, r.text
        body = {"t": t, "state": dict(zip(STATE_NAMES, stocks.tolist())), "pipeline": pipeline.tolist(),
                "sales_history": history.tolist(), "return_frac": rho, "last_demand": last}
        out = client.post("/v1/chains/p1/decide", json=body).json()
        action = np.array([out["action"][k] for k in ACTION_NAMES])
        assert np.array_equal(action, expected), (t, action, expected)
        in_force = TASKS["T3"] if t >= 10 else TASKS["T1"]
        assert out["regime"]["carbon_tax"] == in_force.carbon_tax
        assert safety.is_feasible(action, stocks[0], stocks[1], stocks[3], in_force.as_row(), module.params)
        assert out["policy_version"] == 1 and out["latency_us"] > 0
    repeated = client.post("/v1/chains/p1/decide", json=_obs(19))  # t must move forward
    assert repeated.status_code == 409 and "t: period 19 was already decided in this episode" in repeated.text
    earlier = client.post("/v1/chains/p1/decide", json=_obs(5))
    assert earlier.status_code == 409 and "t: period 5 is before period 19, decided already" in earlier.text
    assert client.post("/v1/chains/p1/reset").json()["episode"] == 1
    assert client.post("/v1/chains/p1/decide", json=_obs(0)).json()["regime"]["carbon_tax"] == 100.0
    history = client.get("/v1/chains/p1/decisions?limit=500").json()
    assert [d["t"] for d in history] == list(range(20)) + [0]
    assert {type(d["projected"]) for d in history} == {bool}  # as /decide says it (it was 0/1 here)


def test_a_reset_answered_is_never_undone_by_a_decision_in_flight(client):
    """Decisions and resets of one chain from two clients at once: each reset answered
    starts a new episode (they were answered 1, 1, 2, 2, ... when a decision in flight
    stored its older episode over the reset), and no decision sent after a reset's answer
    runs in an older episode. Bounded: 30 resets, at most 600 decisions."""
    assert client.post("/v1/chains", json={"id": "p1", "regime": "T1"}).status_code == 201
    resets: list[tuple[float, int]] = []
    late: list[tuple[int, int]] = []
    done = threading.Event()

    def decider() -> None:
        t = 0
        for _ in range(600):
            if done.is_set():
                return
            sent = time.monotonic()
            r = client.post("/v1/chains/p1/decide", json=_obs(t))
            if r.status_code == 200:
                before = [e for at, e in resets if at < sent]
                if before and r.json()["episode"] < max(before):
                    late.append((r.json()["episode"], max(before)))
                t = (t + 1) % 52
            else:
                assert r.status_code == 409, r.text
                t = 0

    thread = threading.Thread(target=decider)
    thread.start()
    try:
        for _ in range(30):
            time.sleep(0.01)
            r = client.post("/v1/chains/p1/reset")
            assert r.status_code == 200, r.text
            resets.append((time.monotonic(), r.json()["episode"]))
    finally:
        done.set()
        thread.join(timeout=60)
    assert [e for _, e in resets] == list(range(1, 31))
    assert late == []
    assert client.get("/v1/chains/p1").json()["episode"] == 30


def test_a_validated_version_is_activated_at_effective_and_rolled_back(client):
    rt = client.app.state.runtime
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    client.post("/v1/chains/p1/decide", json=_obs(0))
    answer = client.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 2, "name": "t3"}).json()
    assert answer["effective"] == 2 and answer["in_force_from"] == 2
    job = answer["job"]
    _run_jobs(rt.store, [job])
    result = client.get(f"/v1/jobs/{job}").json()
    assert result["state"] == "done", result  # (deterministic: seeded scenarios, one thread)
    assert result["violations"] == 0 and result["steps"] > 0 and result["score_before"] > 0
    assert result["score_after"] >= result["score_before"] and result["version"] == 2
    versions = client.get("/v1/chains/p1/versions").json()
    assert [v["state"] for v in versions] == ["active", "scheduled"]  # not before t = 2
    assert versions[1]["parent"] == 1 and len(versions[1]["sha256"]) == 64 and versions[1]["regime_id"] == 2
    assert client.post("/v1/chains/p1/decide", json=_obs(1)).json()["policy_version"] == 1
    assert client.post("/v1/chains/p1/decide", json=_obs(2)).json()["policy_version"] == 2
    assert client.post("/v1/chains/p1/rollback").json() == {"chain": "p1", "from": 2, "policy_version": 1}
    assert client.post("/v1/chains/p1/decide", json=_obs(3)).json()["policy_version"] == 1
    assert client.post("/v1/chains/p1/rollback", json={"version": 2}).json()["policy_version"] == 2
    assert client.post("/v1/chains/p1/rollback", json={"version": 9}).status_code == 404
    # the memory: T3 now has a learned version, and is the nearest regime to itself
    nearest = client.get("/v1/regimes", params={"nearest": json.dumps(TASKS["T3"].model_dump())}).json()
    assert nearest[0]["name"] == "t3" and nearest[0]["distance"] == 0.0
    assert any(v["version"] == 2 for v in nearest[0]["learned"])


def test_a_regulation_label_names_one_regime(client):
    """``similar_to`` finds a regime by label or id: a label of digits, a preset's name given
    to another rule, or a label another regime has is refused (422, nothing stored); a
    preset's own name, and a label posted again for its regime, are accepted; a regime keeps
    its first label, which the answer's ``regime_name`` gives."""
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    before = client.get("/v1/regimes").json()
    for body, named in (({"regime": {"carbon_tax": 10}, "name": "T1"}, "is a preset's name"),
                        ({"regime": {"carbon_tax": 10}, "name": "1"}, "reads as a regime id"),
                        ({"regime": "T3", "name": "12"}, "reads as a regime id")):
        r = client.post("/v1/chains/p1/regulations", json={**body, "effective": 5})
        assert r.status_code == 422 and r.json()["detail"].startswith("name:") and named in r.json()["detail"], r.text
    assert client.get("/v1/regimes").json() == before and client.get("/v1/chains/p1").json()["pending_regulations"] == []
    ok = client.post("/v1/chains/p1/regulations", json={"regime": {"carbon_tax": 10}, "name": "tax 10", "effective": 5})
    assert ok.status_code == 202, ok.text
    again = client.post("/v1/chains/p1/regulations", json={"regime": {"carbon_tax": 10}, "name": "tax 10",
                                                            "effective": 6})
    assert again.status_code == 202 and again.json()["regime_name"] == "tax 10", again.text
    # a regime keeps its first label, and the answer says so (another name was dropped without a word)
    other = client.post("/v1/chains/p1/regulations", json={"regime": {"carbon_tax": 10}, "name": "eu 2027",
                                                            "effective": 7})
    assert other.status_code == 202 and other.json()["regime_name"] == "tax 10", other.text
    assert other.json()["regime_id"] == again.json()["regime_id"] == ok.json()["regime_id"]
    r = client.post("/v1/chains/p1/regulations", json={"regime": {"carbon_tax": 20}, "name": "tax 10", "effective": 7})
    assert r.status_code == 422 and "already labels regime" in r.json()["detail"], r.text
    assert client.post("/v1/chains/p1/regulations", json={"regime": TASKS["T3"].model_dump(), "name": "T3",
                                                           "effective": 8}).status_code == 202
    names = sorted(str(g["name"]) for g in client.get("/v1/regimes").json())
    assert names == ["T1", "T3", "tax 10"], names
    # a label is the model's: CLSC-2's T1 (W = 52) is another rule than CLSC-1's, also named T1
    assert client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "T1"}).status_code == 201
    r = client.post("/v1/chains/p2/regulations", json={"regime": "T1", "name": "T1", "effective": 5})
    assert r.status_code == 202, r.text


def test_a_version_for_a_later_rule_waits_for_it_while_an_earlier_one_takes_force(client):
    """Two rules announced ahead, both adapted before the first takes force: each version is
    active from its own rule's period (the first's activation retired the second's, and the
    chain kept deciding with the first rule's version under the second rule)."""
    rt = client.app.state.runtime
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    client.post("/v1/chains/p1/decide", json=_obs(0))
    first = client.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 2}).json()
    second = client.post("/v1/chains/p1/regulations", json={"regime": "T1", "effective": 4}).json()  # (back)
    _run_jobs(rt.store, [first["job"], second["job"]])
    made = [client.get(f"/v1/jobs/{j}").json()["version"] for j in (first["job"], second["job"])]
    assert made == [2, 3], made
    assert [v["state"] for v in client.get("/v1/chains/p1/versions").json()] == ["active", "scheduled", "scheduled"]
    got = [(a["policy_version"], a["regime"]["id"]) for a in
           (client.post("/v1/chains/p1/decide", json=_obs(t)).json() for t in range(1, 6))]
    assert got == [(1, 1), (2, first["regime_id"]), (2, first["regime_id"]), (3, second["regime_id"]),
                   (3, second["regime_id"])], got
    assert [v["state"] for v in client.get("/v1/chains/p1/versions").json()] == ["retired", "retired", "active"]


def test_a_rule_effective_in_a_decided_period_says_it_holds_from_the_next_decision(client):
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    for t in range(4):
        client.post("/v1/chains/p1/decide", json=_obs(t))
    answer = client.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 1}).json()
    assert answer["effective"] == 1 and answer["in_force_from"] == 4 and answer["episode"] == 0
    assert client.post("/v1/chains/p1/decide", json=_obs(4)).json()["regime"]["carbon_tax"] == TASKS["T3"].carbon_tax
    default = client.post("/v1/chains/p1/regulations", json={"regime": "T2"}).json()  # no effective: the next one
    assert default["effective"] == default["in_force_from"] == 5
    # after the episode's last period, the next decision is the next episode's first (no effective was a 422)
    client.post("/v1/chains/p1/decide", json=_obs(51))
    after = client.post("/v1/chains/p1/regulations", json={"regime": "T3"})
    assert after.status_code == 202 and (after.json()["effective"], after.json()["in_force_from"],
                                         after.json()["episode"]) == (0, 0, 1), after.text
    assert client.post("/v1/chains/p1/reset").status_code == 200
    assert client.post("/v1/chains/p1/decide", json=_obs(0)).json()["regime"]["carbon_tax"] == TASKS["T3"].carbon_tax


def test_a_regulation_posted_again_while_pending_is_the_same_event(client):
    """A client's retry of a regulation (its answer lost) made a second job and a second
    version of the same weights. The event posted last, posted again while pending, is
    now answered 200 with its own job; after another rule for that period, posting the
    first again is a new event, which the later post makes the one in force."""
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    client.post("/v1/chains/p1/decide", json=_obs(0))
    first = client.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 2})
    again = client.post("/v1/chains/p1/regulations", json={"regime": TASKS["T3"].model_dump(), "effective": 2})
    assert first.status_code == 202 and first.json()["repeated"] is False
    assert again.status_code == 200 and again.json() == {**first.json(), "repeated": True}
    assert len(client.get("/v1/chains/p1/jobs").json()) == 1
    assert len(client.get("/v1/chains/p1").json()["pending_regulations"]) == 1
    for body in ({"regime": "T3", "effective": 3}, {"regime": "T3", "effective": 2, "similar_to": "T1"},
                 {"regime": "T2", "effective": 2}, {"regime": "T3", "effective": 2}):  # each differs from the last
        answer = client.post("/v1/chains/p1/regulations", json=body)
        assert answer.status_code == 202 and answer.json()["repeated"] is False, (body, answer.text)
    assert len(client.get("/v1/chains/p1/jobs").json()) == 5
    client.post("/v1/chains/p1/decide", json=_obs(1))
    assert client.post("/v1/chains/p1/decide", json=_obs(2)).json()["regime"]["carbon_tax"] == TASKS["T3"].carbon_tax
    after = client.post("/v1/chains/p1/regulations", json={"regime": "T2", "effective": 2})  # decided: from 3
    assert after.status_code == 202 and after.json()["repeated"] is False and after.json()["in_force_from"] == 3
    again = client.post("/v1/chains/p1/regulations", json={"regime": "T2", "effective": 3})  # the same event
    assert again.status_code == 200 and again.json()["job"] == after.json()["job"]
    assert client.post("/v1/chains/p1/decide", json=_obs(3)).json()["regime"]["carbon_tax"] == TASKS["T2"].carbon_tax


def test_a_candidate_below_the_current_version_is_rejected_and_nothing_changes(client):
    rt = client.app.state.runtime
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    job = client.post("/v1/chains/p1/regulations",
                      json={"regime": {"recycled_content_min": 0.3, "carbon_tax": 50}, "effective": 0}).json()["job"]
    _run_jobs(rt.store, [job])
    out = client.get(f"/v1/jobs/{job}").json()
    # (deterministic: on these validation scenarios two steps lose a little score)
    assert out["state"] == "rejected" and out["score_after"] < out["score_before"], out
    assert out["error"].startswith("validation: score") and out["version"] is None
    assert [v["number"] for v in client.get("/v1/chains/p1/versions").json()] == [1]
    decision = client.post("/v1/chains/p1/decide", json=_obs(0)).json()
    assert decision["policy_version"] == 1 and decision["regime"]["recycled_content_min"] == 0.3  # the rule holds


def test_a_version_for_a_rule_already_replaced_is_kept_for_the_memory_not_activated(client):
    rt = client.app.state.runtime
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    first = client.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 1}).json()["job"]
    second = client.post("/v1/chains/p1/regulations", json={"regime": "eu-ets-2025", "effective": 2}).json()["job"]
    for t in range(3):
        client.post("/v1/chains/p1/decide", json=_obs(t))
    _run_jobs(rt.store, [first, second], AdaptSettings(steps=1, support=2, validation=2))
    states = {v["regime_id"]: v["state"] for v in client.get("/v1/chains/p1/versions").json() if v["source"] == "adapted"}
    jobs = [client.get(f"/v1/jobs/{j}").json() for j in (first, second)]
    assert [j["state"] for j in jobs] == ["done", "done"], jobs  # (deterministic: seeded scenarios)
    assert states == {2: "retired", 3: "active"}  # T3 was replaced by the ETS price before its version was ready
    assert client.post("/v1/chains/p1/decide", json=_obs(3)).json()["policy_version"] == jobs[1]["version"]
    assert client.get("/v1/chains/p1").json()["regime"]["id"] == 3


def test_warm_start_prefers_the_hint_then_the_nearest_learned_regime(client):
    rt = client.app.state.runtime
    store = rt.store
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    r_ids = {}
    for name in ("eu-ppwr-2030", "eu-ets-2025", "T2"):
        r_ids[name] = client.post("/v1/chains/p1/regulations", json={"regime": name, "effective": 40}).json()["regime_id"]
    assert warm_start(store, "p1", _hash(store), r_ids["T2"], None)[2] == 1  # nothing learned yet: the current one
    with store.tx() as c:  # two learned versions (same weights file as v1, only their regimes matter here)
        path, sha = c.execute("SELECT path, sha256 FROM versions WHERE chain='p1' AND number=1").fetchone()
        for number, name in ((2, "eu-ppwr-2030"), (3, "eu-ets-2025")):
            c.execute("INSERT INTO versions(chain, number, regime_id, parent, path, sha256, score, source, state, "
                      "created) VALUES('p1',?,?,1,?,?,0.9,'adapted','retired',0)", (number, r_ids[name], path, sha))
    # T2 (r = 0.2) is nearer PPWR 2030 (r = 0.35) than the EU ETS price (tau = 75, r = 0)
    assert warm_start(store, "p1", _hash(store), r_ids["T2"], None)[2] == 2
    assert warm_start(store, "p1", _hash(store), r_ids["T2"], "eu-ets-2025")[2] == 3
    with store.tx() as c:  # an operator rolled version 2 back: not learned from again
        c.execute("UPDATE versions SET state='rolled_back' WHERE chain='p1' AND number=2")
    assert warm_start(store, "p1", _hash(store), r_ids["T2"], None)[2] == 3
    assert warm_start(store, "p1", _hash(store), r_ids["T2"], "eu-ppwr-2030")[2] == 3


def _hash(store: Store) -> str:
    return store.one("SELECT params_hash FROM chains WHERE id='p1'")[0]


# ----------------------------------------------------------------------------------------
# bad input and auth
# ----------------------------------------------------------------------------------------


def _counts(client) -> tuple:
    store = client.app.state.runtime.store
    return tuple(store.one(f"SELECT COUNT(*) FROM {t}")[0] for t in ("chains", "regulations", "decisions", "jobs"))


@pytest.mark.parametrize("path, body, status, field", [
    ("/v1/chains", {"id": "p2", "regime": "T1", "colour": 1}, 422, "colour"),
    ("/v1/chains", {"id": "p2", "regime": {"carbon_tax": 5000}}, 422, "carbon_tax"),
    ("/v1/chains", {"id": "p2", "regime": {"recycled_content_min": 0.1, "tarif": 1}}, 422, "tarif"),
    ("/v1/chains", {"id": "p2", "regime": "T9"}, 422, "regime"),
    ("/v1/chains", {"id": "p2", "model": "clsc-9", "regime": "T1"}, 422, "model"),
    ("/v1/chains", {"id": "p2", "regime": "T1", "params": {"horizon": -3}}, 422, "horizon"),
    ("/v1/chains", {"id": "../x", "regime": "T1"}, 422, "id"),
    ("/v1/chains", {"id": "p2", "regime": "T1", "checkpoint": "../../etc"}, 422, "checkpoint"),
    ("/v1/chains", {"id": "p2", "regime": "T1", "checkpoint": ""}, 422, "checkpoint: String should have at least 1"),
    ("/v1/chains", {"id": "p1", "regime": "T1"}, 409, "id"),
    ("/v1/chains/p1/decide", _obs(0, pipeline=[2000, 1]), 422, "pipeline"),
    ("/v1/chains/p1/decide", _obs(0, sales_history=[1000] * 5), 422, "sales_history"),
    ("/v1/chains/p1/decide", _obs(0, return_frac=1.5), 422, "return_frac"),
    ("/v1/chains/p1/decide", _obs(0, state={**OBS0["state"], "virgin": -1}), 422, "state.virgin"),
    ("/v1/chains/p1/decide", _obs(0, state={**OBS0["state"], "extra": 1}), 422, "state.extra"),
    ("/v1/chains/p1/decide", _obs(60), 422, "t"),
    # numbers no chain has: 422 by name, not a NaN action and a 500
    ("/v1/chains/p1/decide", _obs(0, state={**OBS0["state"], "virgin": 1e300}), 422, "state.virgin"),
    ("/v1/chains/p1/decide", _obs(0, pipeline=[1e300]), 422, "pipeline[0]=1e+300 must be <= 1e+12"),
    ("/v1/chains/p1/decide", _obs(1, last_demand=1e300), 422, "last_demand"),
    # null after t = 0: the features read the chain's base demand in its place, another action
    ("/v1/chains/p1/decide", _obs(1, last_demand=None), 422, "last_demand: required at t = 1"),
    ("/v1/chains", {"id": "p2", "regime": "T1", "params": {"mass": 1e30}}, 422, "params.mass=1e+30 must be <="),
    ("/v1/chains/nope/decide", _obs(0), 404, "chain"),
    ("/v1/chains/p1/regulations", {"regime": {"recovery_target": 2}}, 422, "recovery_target"),
    ("/v1/chains/p1/regulations", {"regime": "T2", "similar_to": "never-seen"}, 422, "similar_to"),
    ("/v1/chains/p1/regulations", {"regime": "T2", "effective": 52}, 422, "effective"),
    # a schedule where one regime goes: the refusal pointed to a schedule file's form, which no endpoint takes
    ("/v1/chains/p1/regulations", {"regime": {"regimes": [{"start": 0, "carbon_tax": 50}]}}, 422,
     "regime: one regime, without start or regimes"),
    ("/v1/chains/p1/regulations", {"regime": {"start": 5, "carbon_tax": 50}}, 422, "one regulation event per change"),
    # a window on a CLSC-1 chain would be ignored: a rule other than the one asked for
    ("/v1/chains/p1/regulations", {"regime": {"recycled_content_window": 4}}, 422, "recycled_content_window=4"),
    ("/v1/chains", {"id": "p2", "regime": {"recycled_content_min": 0.2, "recycled_content_window": 13}}, 422,
     "accounting windows need a clsc-2 chain"),
    ("/v1/chains/nope/regulations", {"regime": "T2"}, 404, "chain"),
    ("/v1/chains/p1/rollback", {"version": 7}, 404, "version"),
    ("/v1/chains/p1/rollback", {"version": 2**70}, 422, "version: Input should be less than or equal to"),  # not a 500
    ("/v1/chains/p1/rollback", {}, 409, "version"),
    # a bool is not a number: pydantic took true as 1 (t = 1 decided, a rule in force from 1)
    ("/v1/chains/p1/decide", {**_obs(0), "t": True}, 422, "t: Input should be a valid integer, got true"),
    ("/v1/chains/p1/decide", _obs(0, pipeline=[True]), 422, "pipeline.0: Input should be a valid number"),
    ("/v1/chains/p1/decide", _obs(0, state={**OBS0["state"], "cores": False}), 422, "state.cores: Input should be a valid number"),
    ("/v1/chains/p1/regulations", {"regime": "T2", "effective": True}, 422, "effective: Input should be a valid integer, got true"),
    ("/v1/chains/p1/rollback", {"version": True}, 422, "version: Input should be a valid integer"),
])
def test_bad_input_is_refused_by_name_and_nothing_is_stored(client, path, body, status, field):
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    before = _counts(client)
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert field in r.json()["detail"], r.json()
    assert _counts(client) == before


def test_a_body_not_declared_json_is_415_and_malformed_json_is_named(client):
    """/decide read a text/plain or form body as JSON (a browser page can send those to a
    service without a token, no CORS check in the way) and moved the chain's clock; the
    other endpoints answered '28: JSON decode error' for malformed JSON, the offset as a field."""
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    before = _counts(client)
    body = json.dumps(_obs(0))
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": kind} if kind else {}
        for path in ("/v1/chains/p1/decide", "/v1/chains", "/v1/chains/p1/regulations"):
            r = client.post(path, content=body, headers=headers)
            assert r.status_code == 415, (path, kind, r.status_code)
            assert r.json()["detail"].startswith("content-type: " + ("expected application/json, got" if kind
                                                                     else "missing; expected application/json"))
    assert _counts(client) == before and client.get("/v1/chains/p1").json()["last_t"] == -1
    answer = client.post("/v1/chains/p1/decide", content=body, headers={"content-type": "application/json; "
                                                                                        "charset=utf-8"})
    assert answer.status_code == 200
    assert client.post("/v1/chains/p1/reset").status_code == 200  # no body, no content type: as before
    r = client.post("/v1/chains", content='{"id": "z1", "regime": "T1"}}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"] == "body: malformed JSON at character 28 (Extra data)"


def test_a_body_no_parser_reads_is_refused_naming_why_and_reset_takes_no_fields(client):
    """Bytes that are not UTF-8, a compressed body and arrays nested past the parser's
    recursion were a bare 400 "There was an error parsing the body" (a gzip body on the
    decide path: "malformed JSON"); a reset's body was not read at all, so malformed JSON or
    unknown fields started a new episode all the same, and then ``null`` still did."""
    import gzip

    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    before = _counts(client)
    json_type = {"content-type": "application/json"}
    deep = ('{"id": "p2", "regime": ' + "[" * 5000 + "]" * 5000 + "}").encode()
    r = client.post("/v1/chains/p1/decide", content=b'{"id": "p2\xff", "regime": "T1"}', headers=json_type)
    assert r.status_code == 422 and r.json()["detail"] == "body: not UTF-8 text (byte 10; JSON is sent as UTF-8)"
    # (decide's own parser said "invalid unicode code point"; its depth refusal says "recursion limit")
    for path in ("/v1/chains", "/v1/chains/p1/regulations", "/v1/chains/p1/reset", "/v1/chains/p1/rollback"):
        r = client.post(path, content=b'{"id": "p2\xff", "regime": "T1"}', headers=json_type)
        assert r.status_code == 422 and r.json()["detail"] == "body: not UTF-8 text (byte 10; JSON is sent as UTF-8)"
        r = client.post(path, content=deep, headers=json_type)
        assert r.status_code == 422 and r.json()["detail"] == "body: nested too deeply to read", (path, r.text)
    for path in ("/v1/chains", "/v1/chains/p1/decide", "/v1/chains/p1/reset"):
        r = client.post(path, content=gzip.compress(json.dumps(_obs(0)).encode()),
                        headers={**json_type, "content-encoding": "gzip"})
        assert r.status_code == 415 and r.json()["detail"].startswith("content-encoding: 'gzip' is not supported")
    for body, named in (("{garbage", "body: malformed JSON at character 1"), ('{"episode": 0}', "episode: unknown field"),
                        ("[]", "body:"), ("null", "body: null, expected an object")):
        r = client.post("/v1/chains/p1/reset", content=body, headers=json_type)
        assert r.status_code == 422 and r.json()["detail"].startswith(named), r.text
    # FastAPI read null as no body on rollback too (a 409 about versions), as an object elsewhere
    for path in ("/v1/chains", "/v1/chains/p1/regulations", "/v1/chains/p1/rollback"):
        r = client.post(path, content=" null ", headers=json_type)
        assert r.status_code == 422 and r.json()["detail"].startswith("body: null, expected an object"), (path, r.text)
    assert _counts(client) == before and client.get("/v1/chains/p1").json()["episode"] == 0
    assert client.post("/v1/chains/p1/reset", content="{}", headers=json_type).json()["episode"] == 1
    assert client.post("/v1/chains/p1/reset").json()["episode"] == 2


def test_a_body_with_a_key_given_twice_is_refused_naming_the_key(client):
    """The JSON parser keeps the last of a key given twice, so a decision was taken on
    5,000 kg where the body also said 100 kg, and a regulation of 0.2 then 0 posted the
    0: the service refuses such a body as moca's file readers do, on every route."""
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    before = _counts(client)
    json_type = {"content-type": "application/json"}
    body = json.dumps(_obs(0)).replace('"virgin": ', '"virgin": 100.0, "virgin": ', 1)
    r = client.post("/v1/chains/p1/decide", content=body, headers=json_type)
    assert r.status_code == 422 and r.json()["detail"] == ("body: key 'virgin' is given twice in one object "
                                                           "(which one is meant?)")
    escaped = json.dumps(_obs(0)).replace('"t": 0', '"t": 0, "\\u0074": 0', 1)  # the same key, written escaped
    r = client.post("/v1/chains/p1/decide", content=escaped, headers=json_type)
    assert r.status_code == 422 and "key 't' is given twice" in r.json()["detail"]
    regulation = '{"regime": {"recycled_content_min": 0.2, "recycled_content_min": 0}, "effective": 3}'
    r = client.post("/v1/chains/p1/regulations", content=regulation, headers=json_type)
    assert r.status_code == 422 and "key 'recycled_content_min' is given twice" in r.json()["detail"]
    r = client.post("/v1/chains", content='{"id": "p2", "id": "p3", "regime": "T1"}', headers=json_type)
    assert r.status_code == 422 and "key 'id' is given twice" in r.json()["detail"]
    assert _counts(client) == before and client.get("/v1/chains/p1").json()["last_t"] == -1
    # The same key in two objects is two things, not one said twice; malformed JSON is named as before.
    r = client.post("/v1/chains", content='{"id": "z1", "id": "z2"', headers=json_type)
    assert r.status_code == 422 and r.json()["detail"].startswith("body: malformed JSON"), r.text
    assert client.post("/v1/chains/p1/decide", json=_obs(0)).status_code == 200
    r = client.post("/v1/chains/p1/regulations", content='{"regime": {"name": "tax 5", "carbon_tax": 5}, '
                                                         '"name": "tax 5"}', headers=json_type)
    assert r.status_code == 202, r.text


def test_nan_oversized_and_unknown_reads(client):
    client.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    before = _counts(client)
    nan = json.dumps(_obs(0)).replace('"return_frac": 0.25', '"return_frac": NaN')
    r = client.post("/v1/chains/p1/decide", content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "return_frac" in r.json()["detail"]
    big = {**_obs(0), "pipeline": [1.0] * 20000}
    r = client.post("/v1/chains/p1/decide", json=big)
    assert r.status_code == 413 and "body" in r.json()["detail"]
    chunks = (b"[" + b"1," * 5000 for _ in range(20))  # no Content-Length: counted as it streams in
    r = client.post("/v1/chains", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    assert _counts(client) == before
    assert client.get("/v1/jobs/99").status_code == 404
    # ids beyond SQLite's integers were an OverflowError (500), now a 422 naming the field
    r = client.get(f"/v1/jobs/{2**70}")
    assert r.status_code == 422 and r.json()["detail"].startswith("path.job: ")
    assert client.get("/v1/chains/nope").status_code == 404
    assert client.get("/v1/chains/nope/versions").status_code == 404


def test_the_decision_log_stays_bounded_and_the_openapi_page_is_served(tmp_path):
    with TestClient(create_app(tmp_path / "data", worker=False, keep_decisions=5)) as c:
        c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
        for t in range(12):
            assert c.post("/v1/chains/p1/decide", json=_obs(t)).status_code == 200
        kept = [d["t"] for d in c.get("/v1/chains/p1/decisions?limit=100").json()]
        assert kept == list(range(12 - len(kept), 12)) and 5 <= len(kept) < 10
        assert c.get("/v1/chains/p1").json()["last_t"] == 11  # the recurrent state is not part of the log
        schema = c.get("/openapi.json").json()
        assert "/v1/chains/{chain}/decide" in schema["paths"] and "/v1/regimes" in schema["paths"]
        docs = c.get("/docs")
        assert docs.status_code == 200  # Swagger UI from the service itself, not from a CDN (blank offline)
        assert "https://" not in docs.text and "/docs-assets/swagger-ui-bundle.js" in docs.text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert c.get(f"/docs-assets/{asset}").status_code == 200
    # chains deciding in turn: each log is bounded (pruned at multiples of 4 of the shared row
    # id, only the chain whose rows are even was: the other kept all 24)
    with TestClient(create_app(tmp_path / "two", worker=False, keep_decisions=4)) as c:
        for chain in ("p2", "p3"):
            c.post("/v1/chains", json={"id": chain, "regime": "T1"})
        for t in range(24):
            for chain in ("p2", "p3"):
                assert c.post(f"/v1/chains/{chain}/decide", json=_obs(t)).status_code == 200
        for chain in ("p2", "p3"):
            kept = [d["t"] for d in c.get(f"/v1/chains/{chain}/decisions?limit=100").json()]
            assert kept == list(range(24 - len(kept), 24)) and 4 <= len(kept) < 8, (chain, kept)
    # a chain deciding less often per start than the pruning's period: bounded across restarts
    for start in range(8):
        with TestClient(create_app(tmp_path / "two", worker=False, keep_decisions=4)) as c:
            for t in range(24 + 3 * start, 27 + 3 * start):
                assert c.post("/v1/chains/p2/decide", json=_obs(t)).status_code == 200
    with TestClient(create_app(tmp_path / "two", worker=False, keep_decisions=4)) as c:
        kept = [d["t"] for d in c.get("/v1/chains/p2/decisions?limit=100").json()]
        assert kept == list(range(48 - len(kept), 48)) and 4 <= len(kept) < 8, kept


def test_a_decision_log_that_cannot_be_pruned_keeps_the_decision_and_a_bound_past_sqlite_is_refused(tmp_path, capfd):
    """``--keep-decisions`` of 2**63 or more passed SQLite's OFFSET: the pruning raised after
    the decision was stored, so it was answered 500 with the chain's memory a period behind,
    and the client's retry logged the period twice."""
    from moca.serve import StartError

    for bad in (2**63, -1, 2.5, True):
        with pytest.raises(StartError, match=r"keep_decisions=.*: must be a whole number of decisions in 0\.\."):
            create_app(tmp_path / "refused", worker=False, keep_decisions=bad)
    assert not (tmp_path / "refused").exists()
    app = create_app(tmp_path / "data", worker=False, keep_decisions=5)
    with TestClient(app) as c:
        c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
        app.state.runtime.keep_decisions = 2**63  # (a pruning that fails, as that bound made it)
        assert c.post("/v1/chains/p1/decide", json=_obs(0)).status_code == 200
        assert "the decision log was not pruned" in capfd.readouterr().err
        assert c.post("/v1/chains/p1/decide", json=_obs(0)).status_code == 409  # (decided: not twice)
        assert c.post("/v1/chains/p1/decide", json=_obs(1)).status_code == 200
        assert [d["t"] for d in c.get("/v1/chains/p1/decisions").json()] == [0, 1]


def test_token_guards_every_mutating_endpoint(tmp_path):
    with TestClient(create_app(tmp_path / "data", token="s3cret", worker=False)) as c:
        ok = {"Authorization": "Bearer s3cret"}
        for path, body in [("/v1/chains", {"id": "p1", "regime": "T1"}), ("/v1/chains/p1/decide", _obs(0)),
                           ("/v1/chains/p1/reset", None), ("/v1/chains/p1/regulations", {"regime": "T2"}),
                           ("/v1/chains/p1/rollback", {})]:
            assert c.post(path, json=body).status_code == 401, path
            assert c.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
            for near in ("Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret", "Bearers3cret"):
                assert c.post(path, json=body, headers={"Authorization": near}).status_code == 401, (path, near)
        assert _counts(c) == (0, 0, 0, 0)
        assert c.post("/v1/chains", json={"id": "p1", "regime": "T1"}, headers=ok).status_code == 201
        assert c.post("/v1/chains/p1/decide", json=_obs(0), headers=ok).status_code == 200
        # the scheme's name in any case, as HTTP has it (lower case was refused), on both paths
        lower = {"Authorization": "bearer s3cret"}
        assert c.post("/v1/chains", json={"id": "p2", "regime": "T1"}, headers=lower).status_code == 201
        assert c.post("/v1/chains/p2/decide", json=_obs(0), headers={"Authorization": "BEARER s3cret"}).status_code == 200
        assert c.get("/v1/chains/p1").status_code == 200 and c.get("/health").json()["auth"] is True


def test_weights_failing_their_checksum_are_refused_by_name(tmp_path):
    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)) as c:
        c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    weights = data / "weights" / "p1" / "v1" / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with TestClient(create_app(data, worker=False)) as c:  # a restart: nothing cached
        # /health tells before any decision did (it said "ok" until the first decision or the
        # watcher's first pass, seconds after the start, had tried the version)
        health = c.get("/health").json()
        assert health["status"] == "degraded" and [(v["chain"], v["version"]) for v in
                                                   health["unloadable_versions"]] == [("p1", 1)]
        r = c.post("/v1/chains/p1/decide", json=_obs(0))
        assert r.status_code == 503 and "version 1" in r.json()["detail"] and "corrupted" in r.json()["detail"]
        assert c.get("/v1/chains/p1/decisions").json() == []
        # /health said "ok" while the chain could not decide: it names the version now
        health = c.get("/health").json()
        assert health["status"] == "degraded" and [(v["chain"], v["version"]) for v in
                                                   health["unloadable_versions"]] == [("p1", 1)]
        assert "corrupted" in health["unloadable_versions"][0]["error"]
    blob[-1] ^= 0xFF  # repaired (e.g. restored from a backup): decisions and /health are back
    weights.write_bytes(bytes(blob))
    with TestClient(create_app(data, worker=False)) as c:
        assert c.post("/v1/chains/p1/decide", json=_obs(0)).status_code == 200
        assert c.get("/health").json()["status"] == "ok" and c.get("/health").json()["unloadable_versions"] == []


def test_health_says_when_the_database_was_deleted_or_replaced_under_the_service(tmp_path):
    """Deleting the data directory under a running service went unnoticed (decisions went
    on into the file SQLite had open, lost at the stop; /health said ok)."""
    import shutil

    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)) as c:
        c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
        assert c.get("/health").json()["status"] == "ok" and c.get("/health").json()["database"] == "ok"
        # a load balancer's check may be a HEAD (it was 405)
        assert c.head("/health").status_code == 200 and c.head("/").status_code == 200
        db = data / "moca.sqlite3"
        shutil.copy(db, tmp_path / "copy.sqlite3")
        os.replace(tmp_path / "copy.sqlite3", db)  # a restore over the open file: another file now
        health = c.get("/health").json()
        assert health["status"] == "degraded" and health["database"].startswith(f"{db}: replaced by another file")
        _delete_directory(data)
        health = c.get("/health").json()
        assert health["status"] == "degraded" and health["database"].startswith(f"{db}: deleted while the service")
        assert "lost when it stops" in health["database"]
        assert c.post("/v1/chains/p1/decide", json=_obs(0)).status_code == 200  # the plant is still answered


def test_a_version_whose_checkpoint_json_was_edited_is_refused_by_name(tmp_path):
    """'structured: false' written into a deployed version's JSON was served after a
    restart (another policy from the same weights, the weights' checksum intact)."""
    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)) as c:
        c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    meta = data / "weights" / "p1" / "v1" / "checkpoint.json"
    meta.write_text(meta.read_text().replace('"structured": true', '"structured": false'))
    with TestClient(create_app(data, worker=False)) as c:  # a restart: nothing cached
        r = c.post("/v1/chains/p1/decide", json=_obs(0))
        assert r.status_code == 503 and "version 1" in r.json()["detail"]
        assert "checkpoint.json was altered after it was written" in r.json()["detail"]
        assert c.get("/v1/chains/p1/decisions").json() == []


def test_a_job_through_the_portfolio_deploys_the_lp_candidate_and_keeps_it_across_a_restart(tmp_path):
    """With ``base="mpc"`` a job adapts moca's LSTM over the rolling LP: the new version is
    an mpc-policy checkpoint, its decisions are DeployedPolicy's with the LP as base (bit
    for bit), feasible under the new rule, and a restarted service loads it again."""
    from moca.mpc_base import MPCBasePolicy, load_mpc_policy

    data = tmp_path / "data"
    settings = AdaptSettings(steps=1, support=3, validation=3, base="mpc")
    with TestClient(create_app(data, worker=False)) as c:
        rt = c.app.state.runtime
        c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
        job = c.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 0}).json()["job"]
        _run_jobs(rt.store, [job], settings)
        result = c.get(f"/v1/jobs/{job}").json()
        assert result["state"] == "done" and result["version"] == 2, result
        assert "portfolio chose mpc" in result["warm_start"] and result["violations"] == 0
        assert result["score_after"] >= result["score_before"]
        decided = [c.post("/v1/chains/p1/decide", json=_obs(t)).json() for t in range(3)]
        assert [d["policy_version"] for d in decided] == [2, 2, 2]
    path = data / "weights" / "p1" / "v2"
    module, meta = load_mpc_policy(path)
    assert isinstance(module, MPCBasePolicy) and meta["kind"] == "mpc-policy" and meta["version"] == 2
    reference = DeployedPolicy(module)
    reference.reset()
    params = module.params
    for t, out in enumerate(decided):
        body = _obs(t)
        state = np.array([body["state"][k] for k in STATE_NAMES])
        expected = reference.decide(t, state, np.array(body["pipeline"]), np.array(body["sales_history"]),
                                    TASKS["T3"].as_row(), body["return_frac"], body["last_demand"])
        action = np.array([out["action"][k] for k in ACTION_NAMES])
        assert np.array_equal(action, expected), (t, action, expected)
        assert safety.is_feasible(action, state[0], state[1], state[3], TASKS["T3"].as_row(), params)
    with TestClient(create_app(data, worker=False)) as c:  # a restart: the version is read from disk
        again = c.post("/v1/chains/p1/decide", json=_obs(3)).json()
        assert again["policy_version"] == 2
        assert np.isfinite([again["action"][k] for k in ACTION_NAMES]).all()


def test_the_serve_command_refuses_bad_options(tmp_path):
    from typer.testing import CliRunner

    from moca.cli import app

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    out = CliRunner().invoke(app, ["serve", "--data", str(not_a_dir)])
    assert out.exit_code == 2 and "--data" in out.output and "Traceback" not in out.output
    # a data folder under a file: refused before the service starts, not an internal error
    out = CliRunner().invoke(app, ["serve", "--data", str(not_a_dir / "data")])
    assert out.exit_code == 2 and "file is not a directory" in out.output and "internal error" not in out.output
    # a damaged database: refused by name, exit 2, and left as it was (it may be the only copy)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "moca.sqlite3").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    before = (damaged / "moca.sqlite3").read_bytes()
    out = CliRunner().invoke(app, ["serve", "--data", str(damaged), "--port", str(_free_port())])
    assert out.exit_code == 2 and "not a usable moca database" in out.output and "internal error" not in out.output
    assert (damaged / "moca.sqlite3").read_bytes() == before
    out = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert out.exit_code == 2 and "port" in out.output.lower()
    out = CliRunner().invoke(app, ["serve", "--data", str(tmp_path / "d"), "--adapt-base", "best"])
    assert out.exit_code == 2 and "--adapt-base" in out.output and "Traceback" not in out.output
    assert "caps, default, auto, map, mpc" in out.output
    # an empty token, given or from the environment (a secret lookup that came back empty),
    # is refused: it started the service with authentication off
    for args, env, named in ((["--token", ""], {}, "--token: empty"), (["--token", " "], {}, "--token: empty"),
                             ([], {"MOCA_TOKEN": ""}, "MOCA_TOKEN: empty"), ([], {"MOCA_TOKEN": " "}, "MOCA_TOKEN: empty")):
        # (an address never ours: a service that passed the check fails to bind instead of running on)
        out = CliRunner().invoke(app, ["serve", "--data", str(tmp_path / "t"), "--host", "192.0.2.1", *args], env=env)
        assert out.exit_code == 2 and named in out.output, (args, env, out.output)
        assert not (tmp_path / "t").exists()


def test_a_database_damaged_past_its_first_pages_is_found_and_answered_503(tmp_path):
    """Damage the first open does not read: a damaged page of the decisions table gave a
    traceback in the start-up recovery or bare 500s while /health said ok (a probe's
    corrupted copy). Now SQLite's page check, run beside the service once it listens,
    finds it (/health degraded) and requests that meet it are 503s naming the file; text
    that is not UTF-8 inside a record passes the page check and is found by a request."""
    import sqlite3

    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)) as c:
        for chain in ("p1", "p2"):
            assert c.post("/v1/chains", json={"id": chain, "regime": "T1"}).status_code == 201
            assert c.post(f"/v1/chains/{chain}/decide", json=_obs(0)).status_code == 200
    db = data / "moca.sqlite3"
    intact = db.read_bytes()
    # a page of the decisions table made unreadable (its b-tree page type byte)
    with sqlite3.connect(db) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name='decisions'").fetchone()
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    damaged = bytearray(intact)
    damaged[(root - 1) * page] = 0x07
    db.write_bytes(bytes(damaged))
    with TestClient(create_app(data, worker=False)) as c:
        for _ in range(100):  # (the check runs beside the service)
            health = c.get("/health").json()
            if health["status"] != "ok":
                break
            time.sleep(0.05)
        assert health["status"] == "degraded" and "damaged" in health["database"], health
        answer = c.get("/v1/chains/p1/decisions")
        assert answer.status_code == 503 and "moca.sqlite3: cannot be read (" in answer.json()["detail"], answer.text
    assert db.read_bytes()[:len(damaged)] != b"" and db.read_bytes()[(root - 1) * page] == 0x07  # left as it was
    # intact pages, one record's text not UTF-8
    db.write_bytes(intact)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE chains SET params=CAST(X'80FF' AS TEXT) WHERE id='p2'")
    with TestClient(create_app(data, worker=False)) as c:
        assert c.get("/health").json()["status"] == "ok"
        for answer in (c.get("/v1/chains/p2"), c.post("/v1/chains/p2/decide", json=_obs(1))):
            assert answer.status_code == 503, answer.text
            assert "moca.sqlite3: cannot be read (" in answer.json()["detail"]
            assert "restore the database from a backup" in answer.json()["detail"]
        health = c.get("/health").json()
        assert health["status"] == "degraded" and "damaged" in health["database"], health
        assert c.post("/v1/chains/p1/decide", json=_obs(1)).status_code == 200  # the rest still decides


# ----------------------------------------------------------------------------------------
# the real service: kill -9 and restart
# ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parent(proc: Path) -> int | None:
    """The parent pid of the process ``/proc/PID`` (None once it is gone)."""
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Service:
    """``moca serve`` in its own process group on 127.0.0.1 (a stop or a kill of the group does not
    reach the test runner); its worker runs in a session of its own and dies with the server."""

    def __init__(self, data: Path, env: dict | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "moca.cli", "serve", "--port", str(self.port),
                                      "--data", str(data), "--adapt-steps", "2", "--support", "4", "--validation", "4"],
                                     env=environment, start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.http = httpx.Client(base_url=self.url, timeout=10.0)
        deadline = time.time() + 120
        while True:
            try:
                health = self.http.get("/health").json()
                # (and the first pass over the versions done: "starting" until then)
                if health["worker"] == "running" and health["status"] != "starting":
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                raise RuntimeError(f"service did not start: {self.proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL to the server's group, as a crash would; the kernel then kills the worker
        (moca.serve's PR_SET_PDEATHSIG)."""
        self.http.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self, everyone: bool = False) -> None:
        """SIGTERM to the server alone, as ``kill PID`` sends it; ``everyone``: to its process
        group and to each of its children too, as systemd's stop and a terminal's Ctrl-C do."""
        self.http.close()
        if everyone:
            children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == self.proc.pid]
            assert children, "the worker process was not found"
            os.killpg(self.proc.pid, signal.SIGTERM)
            for child in children:
                os.kill(child, signal.SIGTERM)
        else:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)

    def wait_job(self, job: int, until: tuple[str, ...], timeout: float = 240) -> dict:
        """The job once its state is one of ``until``. The worker runs at nice 10: where the
        scheduler honours that beside two busy processes (no autogroup), one of its lives
        (torch's import and a job) can take tens of seconds, so the deadline is generous."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.http.get(f"/v1/jobs/{job}").json()
            if out["state"] in until:
                return out
            time.sleep(0.05)
        raise AssertionError(f"job {job} still {out['state']} after {timeout} s")


@pytest.fixture()
def services():
    started: list[Service] = []

    def start(data: Path, env: dict | None = None) -> Service:
        started.append(Service(data, env))
        return started[-1]

    try:
        yield start
    finally:
        for s in started:
            s.kill()


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (Linux /proc/net/tcp, IPv4)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, p = local.split(":")
        if int(p, 16) == port and state == "0A":  # LISTEN
            out.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return out


def test_a_second_server_on_the_same_data_or_port_is_refused_before_it_starts(services, tmp_path):
    # A second server's start-up recovery would re-queue the first's running job and delete the
    # weights it writes, and each would answer from its own copy of the recurrent memory.
    from _cli import run

    from moca.serve import StartError

    data = tmp_path / "data"
    s = services(data)
    chain = s.http.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    assert chain.status_code == 201
    second = run("serve", "--data", data, "--port", _free_port(), timeout=60)
    assert second.returncode == 2, second.stderr
    assert second.stderr == (f"moca: error: --data {data}: in use by another moca serve (pid {s.proc.pid}); "
                             "stop that one first, or give this one another --data\n")  # no banner, no traceback
    with pytest.raises(StartError, match="in use by another moca serve"):
        create_app(data, worker=False)
    taken = run("serve", "--data", tmp_path / "other", "--port", s.port, timeout=60)
    assert taken.returncode == 2 and "moca serve on" not in taken.stderr
    assert f"moca: error: --port {s.port}: 127.0.0.1:{s.port} cannot be bound (Address already in use); " \
           "another server holds it" in taken.stderr
    elsewhere = run("serve", "--host", "192.0.2.1", "--data", tmp_path / "other", timeout=60)  # TEST-NET-1: never ours
    assert elsewhere.returncode == 2 and "moca: error: --host 192.0.2.1: not an address of this machine" in elsewhere.stderr
    assert s.http.get("/v1/chains/p1").status_code == 200  # the first one serves on, untouched
    (tmp_path / "odd" / "serve.lock").mkdir(parents=True)  # (an internal error, IsADirectoryError)
    with pytest.raises(StartError, match=r"--data .*odd: cannot open its lock file .*serve.lock \(Is a directory\)"):
        create_app(tmp_path / "odd", worker=False)
    s.kill()  # a crash releases the directory: the next server takes it and finds the chain
    again = services(data)
    assert again.http.get("/v1/chains/p1").status_code == 200


def test_kill9_mid_adaptation_and_mid_decisions_loses_nothing_acknowledged(services, tmp_path):
    data = tmp_path / "data"
    s = services(data)
    if Path("/proc/net/tcp").exists():
        assert _listening(s.port) == {"127.0.0.1"}  # loopback unless --host says otherwise
    assert s.http.post("/v1/chains", json={"id": "p1", "regime": "T1"}).status_code == 201
    acknowledged: list[int] = []
    for t in range(3):
        assert s.http.post("/v1/chains/p1/decide", json=_obs(t)).status_code == 200
        acknowledged.append(t)
    reg = s.http.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 40}).json()
    s.wait_job(reg["job"], ("running",))
    stop = threading.Event()

    def fire() -> None:  # decisions keep coming until the crash
        client = httpx.Client(base_url=s.url, timeout=5.0)
        t = 3
        while not stop.is_set() and t < 40:
            try:
                if client.post("/v1/chains/p1/decide", json=_obs(t)).status_code == 200:
                    acknowledged.append(t)
            except httpx.HTTPError:
                return
            t += 1

    thread = threading.Thread(target=fire)
    thread.start()
    time.sleep(0.3)
    s.kill()  # mid-adaptation (the job is running) and mid-write (decisions in flight)
    stop.set()
    thread.join(timeout=10)
    # (the job takes >= 1.3 s, so it is nearly always still running at the crash; one that
    # ended first under a quirk of scheduling is not re-run, and is checked as such: its
    # state as the restart's recovery will read it)
    with contextlib.closing(sqlite3.connect(data / "moca.sqlite3")) as db:
        running_at_crash = db.execute("SELECT state FROM jobs WHERE id=?", (reg["job"],)).fetchone()[0] == "running"
    s = services(data)
    chain = s.http.get("/v1/chains/p1").json()
    assert chain["pending_regulations"][0]["effective"] == 40
    stored = [d["t"] for d in s.http.get("/v1/chains/p1/decisions?limit=100").json()]
    assert stored[:len(acknowledged)] == acknowledged  # every acknowledged decision, in order
    assert len(stored) - len(acknowledged) <= 1  # at most the one in flight, committed before its answer
    assert chain["last_t"] == stored[-1]
    job = s.wait_job(reg["job"], ("done", "rejected", "failed"))
    assert job["state"] in ("done", "rejected"), job
    assert job["attempts"] == (2 if running_at_crash else 1), job  # re-run, not half-applied
    numbers = [v["number"] for v in s.http.get("/v1/chains/p1/versions").json()]
    assert numbers == ([1, 2] if job["state"] == "done" else [1])
    # the recurrent state survived: the next period continues the episode
    assert s.http.post("/v1/chains/p1/decide", json=_obs(stored[-1] + 1)).status_code == 200


def test_one_chain_registered_twice_at_once_keeps_the_winner_s_weights(services, tmp_path):
    """A client's retry racing its first request: one 201, one 409, and the chain's weights
    are the ones recorded (the loser deleted and rewrote them: 503s on checksum, or a 409 for
    a chain whose first answer was a 503)."""
    from concurrent.futures import ThreadPoolExecutor

    s = services(tmp_path / "data")
    body = {"regime": "T1"}
    for attempt in range(6):
        chain = f"race{attempt}"
        with ThreadPoolExecutor(2) as pool:
            codes = sorted(pool.map(lambda _: httpx.post(s.url + "/v1/chains", json={**body, "id": chain},
                                                         timeout=30).status_code, range(2)))
        assert codes == [201, 409], codes
        assert s.http.post(f"/v1/chains/{chain}/decide", json=_obs(0)).status_code == 200
    s.kill()
    s = services(tmp_path / "data")  # (the cache of the weights no longer masks them)
    assert s.http.get("/health").json()["status"] == "ok"
    assert all(s.http.post(f"/v1/chains/race{a}/decide", json=_obs(1)).status_code == 200 for a in range(6))


def test_health_says_starting_until_every_version_was_tried_then_names_the_broken_one(services, tmp_path):
    """With the worker, the versions are loaded by the watcher's first pass, seconds after the
    start (behind the first imports): /health said "ok" meanwhile of a chain whose decisions
    were 503s. It says "starting" until that pass is done (the fixture waits for it), then
    "degraded", naming the version, before any decision has tried it."""
    s = services(tmp_path / "data")
    assert s.http.post("/v1/chains", json={"id": "p1", "regime": "T1"}).status_code == 201
    s.kill()
    weights = tmp_path / "data" / "weights" / "p1" / "v1" / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    s = services(tmp_path / "data")
    health = s.http.get("/health").json()
    assert health["status"] == "degraded" and [(v["chain"], v["version"]) for v in
                                               health["unloadable_versions"]] == [("p1", 1)]


def test_weights_that_cannot_be_written_are_a_503_naming_the_folder(tmp_path, monkeypatch):
    """A read-only or full disk under DATA/weights was a bare 500 with a traceback."""
    from moca import serve

    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    def too_large(*args, **kwargs):  # (what safetensors raises where the disk is full: not an OSError)
        raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

    for where, failing, said in ((serve.ChainModel, full, "No space left on device"),
                                 (safetensors.torch, too_large, "File too large")):
        with monkeypatch.context() as patch:
            patch.setattr(where, "save" if where is serve.ChainModel else "save_file", failing)
            with TestClient(create_app(tmp_path / "data", worker=False)) as c:
                r = c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
                assert r.status_code == 503 and "weights cannot be written under" in r.json()["detail"], r.text
                assert said in r.json()["detail"] and c.get("/v1/chains/p1").status_code == 404


def test_stopping_the_service_mid_job_spends_no_attempt_and_leaves_the_database_whole(services, tmp_path):
    """Two routine stops (SIGTERM) during one job failed it ("interrupted 2 times; not
    applied"), as two crashes do; a stop now queues it again as it was, also where the signal
    reaches the worker too (systemd, Ctrl-C: it died first and was counted as a crash). After
    a stop the database file alone holds everything (the WAL folded into it), so a copy of it
    is a backup."""
    data = tmp_path / "data"
    s = services(data)
    assert s.http.post("/v1/chains", json={"id": "p1", "regime": "T1"}).status_code == 201
    assert s.http.post("/v1/chains/p1/decide", json=_obs(0)).status_code == 200
    job = s.http.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 40}).json()["job"]
    for everyone in (True, False):
        s.wait_job(job, ("running",))
        s.stop(everyone)
        assert s.proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), s.proc.returncode
        wal = data / "moca.sqlite3-wal"
        assert not wal.exists() or wal.stat().st_size == 0
        s = services(data)
        assert s.http.get(f"/v1/jobs/{job}").json()["error"] == "stopped with the service; re-run"
    out = s.wait_job(job, ("done", "rejected", "failed"))
    assert out["state"] in ("done", "rejected") and out["attempts"] == 1, out


def test_a_database_this_user_cannot_write_is_refused_before_the_service_starts(tmp_path, monkeypatch):
    """A database file the service's user may read but not write opens read-only without a
    word; the start-up recovery's first write then failed with a traceback after the banner.
    (Opened here read-only as SQLite opens such a file: tests may run as root.)"""

    from moca import serve
    from moca.serve import StoreError

    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)):
        pass
    writable = serve.connect
    monkeypatch.setattr(serve, "connect", lambda path, **_: sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False))
    with pytest.raises(StoreError, match="moca.sqlite3: not a usable moca database \\(attempt to write a readonly "
                                         "database\\); it is left as it is: give this user write access"):
        create_app(data, worker=False)
    monkeypatch.setattr(serve, "connect", writable)
    with TestClient(create_app(data, worker=False)) as client:
        assert client.get("/health").json()["status"] == "ok"


def test_a_lost_database_beside_weight_folders_is_refused_and_nothing_is_deleted(tmp_path):
    """A zero-byte or missing moca.sqlite3 (a truncation, a restore without it) made an empty
    memory, and the start-up recovery then deleted every weight folder as an orphan: the
    only copies left. Refused now, naming what is there; nothing is touched."""
    from moca.serve import StoreError

    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)) as client:
        assert client.post("/v1/chains", json={"id": "p1", "regime": "T1"}).status_code == 201
    folders = sorted(p.relative_to(data) for p in (data / "weights").rglob("*"))
    assert folders
    for lose in ("truncate", "delete"):
        db = data / "moca.sqlite3"
        if lose == "truncate":
            db.write_bytes(b"")
        else:
            db.unlink()
        for extra in ("-wal", "-shm"):
            db.with_name(db.name + extra).unlink(missing_ok=True)
        with pytest.raises(StoreError, match=r"moca.sqlite3: (empty|missing), but .*weights holds 1 version folder\(s\) "
                                             r"of p1: the database that records them is gone"):
            create_app(data, worker=False)
        assert sorted(p.relative_to(data) for p in (data / "weights").rglob("*")) == folders


def test_the_worker_opens_the_servers_database_and_never_makes_one(tmp_path):
    """A worker still starting (importing torch) when the data directory was deleted made a
    new, empty database where the old one had been: the server then reported its database
    replaced, and rmtree of the directory raced the worker's new files (CI's failure of
    c47a103). The worker now opens the server's database or nothing."""
    from moca.serve import StoreError

    data = tmp_path / "data"
    Store(data).conn.close()
    assert Store(data, create=False).one("SELECT count(*) FROM chains") == (0,)
    (data / "moca.sqlite3").unlink()
    made = sorted(p.name for p in data.iterdir())
    with pytest.raises(StoreError, match="moca.sqlite3: gone .*nothing made in its place"):
        Store(data, create=False)
    assert sorted(p.name for p in data.iterdir()) == made
    _delete_directory(data)
    with pytest.raises(StoreError, match="moca.sqlite3: gone"):
        Store(data, create=False)
    assert not data.exists()


def test_a_service_whose_data_directory_is_deleted_says_so_once_and_makes_no_new_one(services, tmp_path):
    """With its data directory deleted, the service went on as if nothing had happened, and
    the worker it restarts after a death would have made an empty database where the old
    one was. It now says so once on stderr (and in /health) and restarts no worker."""
    data = tmp_path / "data"
    s = services(data)
    assert s.http.post("/v1/chains", json={"id": "p1", "regime": "T1"}).status_code == 201
    _delete_directory(data)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == s.proc.pid]
    # (a worker still starting when the directory went has ended already: it makes no database)
    assert len(workers) <= 1
    for worker in workers:
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 20
    while s.http.get("/health").json()["worker"] == "running" and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # several of the watcher's rounds (every 0.25 s)
    health = s.http.get("/health").json()
    assert health["worker"] == "stopped" and health["status"] == "degraded" and "deleted" in health["database"]
    assert not data.exists()
    assert s.http.post("/v1/chains/p1/decide", json=_obs(0)).status_code == 200
    s.stop()
    assert s.proc.stderr.read().decode().count("moca.sqlite3: deleted while the service runs") == 1


def test_a_job_killed_after_writing_weights_is_failed_never_half_applied(services, tmp_path):
    data = tmp_path / "data"
    s = services(data, {"MOCA_SERVE_FAILPOINT": "after-weights-written"})
    s.http.post("/v1/chains", json={"id": "p1", "regime": "T1"})
    s.http.post("/v1/chains/p1/decide", json=_obs(0))
    job = s.http.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 1}).json()["job"]
    out = s.wait_job(job, ("failed", "done", "rejected"))
    # the worker died twice (SIGKILL after the weights were written, before the transaction)
    assert out["state"] == "failed" and out["attempts"] == 2 and "not applied" in out["error"], out
    # /health counts what was recovered since the start, the worker's deaths included (was: the start only)
    deadline = time.time() + 10
    while s.http.get("/health").json()["recovered"]["failed"] < 1 and time.time() < deadline:
        time.sleep(0.05)
    assert s.http.get("/health").json()["recovered"] | {"orphans_removed": 0} == \
        {"requeued": 1, "failed": 1, "orphans_removed": 0}
    assert [v["number"] for v in s.http.get("/v1/chains/p1/versions").json()] == [1]
    assert s.http.post("/v1/chains/p1/decide", json=_obs(1)).json()["policy_version"] == 1
    s.kill()
    s = services(data)  # restart: the orphan weight files are removed, history is intact
    assert not (data / "weights" / "p1" / "v2").exists()
    assert s.http.get("/health").json()["recovered"]["orphans_removed"] >= 1
    assert s.http.get(f"/v1/jobs/{job}").json()["state"] == "failed"
    assert s.http.get("/v1/chains/p1").json()["regime"]["regime"]["carbon_tax"] == 100.0  # the rule stays in force


# ----------------------------------------------------------------------------------------
# the dashboard, in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
# ----------------------------------------------------------------------------------------

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)


def _dashboard_text(url: str) -> str:
    """The dashboard's text once its first refresh is done, in headless Chromium, with no
    console error (a missing favicon was one on every load)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(url + "/", timeout=20000)
            page.wait_for_selector("body[data-ready='1']", timeout=20000)
            page.wait_for_timeout(300)
            assert not errors, errors
            return page.inner_text("body")
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_dashboard_renders_in_headless_chromium(tmp_path):
    import io

    import uvicorn
    from PIL import Image
    from playwright.sync_api import sync_playwright

    app = create_app(tmp_path / "data", worker=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=10) as http:
            for _ in range(200):
                try:
                    http.get("/health")
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)
            empty = _dashboard_text(url)  # before any chain: said so (the page stayed empty, never ready)
            assert "no chain registered yet" in empty
            http.post("/v1/chains", json={"id": "plant-1", "regime": "T1"})
            for t in range(24):
                if t == 8:  # announced at t = 8, in force from t = 12, adapted (in process) meanwhile
                    # a client's label is text on the page, never markup (it was put into innerHTML as is)
                    job = http.post("/v1/chains/plant-1/regulations", json={
                        "regime": "T3", "effective": 12, "name": "T3 <img src=x id=injected>"}).json()
                    _claim(app.state.runtime.store, job["job"])
                    threads = torch.get_num_threads()
                    torch.set_num_threads(1)
                    try:
                        run_job(app.state.runtime.store, job["job"], SMALL)
                    finally:
                        torch.set_num_threads(threads)
                    # a job says the regime its regulation brings (a rejected one made no version that would)
                    finished = http.get(f"/v1/jobs/{job['job']}").json()
                    assert finished["regime_id"] == job["regime_id"] and finished["state"] in ("done", "rejected")
                    assert [j["regime_id"] for j in http.get("/v1/chains/plant-1/jobs").json()] == [job["regime_id"]]
                demand = 1000.0 * (1 + 0.3 * np.sin(2 * np.pi * t / 52))
                http.post("/v1/chains/plant-1/decide", json=_obs(t, last_demand=None if t == 0 else demand,
                                                                 return_frac=0.2 + 0.01 * (t % 7)))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 820})
                page.goto(url + "/", timeout=20000)
                page.wait_for_selector("body[data-ready='1']", timeout=20000)
                assert "plant-1" in page.inner_text("#chain-name")
                assert "recycled_content_min" in page.inner_text("#regime") and "100" in page.inner_text("#regime")
                assert "T3 <img src=x id=injected>" in page.inner_text("#regime")
                assert page.locator("#injected").count() == 0
                assert page.locator("#versions tbody tr").count() == 2  # v1 retired, v2 (adapted to T3) active
                # regimes by name (they were ids), every job with its state (a rejected one showed nowhere)
                assert f"T3 <img src=x id=injected> ({job['regime_id']})" in page.inner_text("#versions")
                assert page.locator("#jobs tbody tr").count() == 1
                row = page.inner_text("#jobs tbody tr")
                assert row.startswith(str(job["job"])) and finished["state"] in row and "T3 <img" in row
                assert "policy v2" in page.inner_text("#chain-name")
                assert page.locator("#decisions tbody tr").count() == 15
                assert page.locator("#chart polyline").count() == 2
                assert re.fullmatch(r"\(bottom [\d-]+ EUR, top [\d-]+ EUR\)", page.inner_text("#cost-range"))
                png = page.screenshot(full_page=True)
                # a chain registered while another is chosen: the chosen one stays (it jumped to the first)
                httpx.post(url + "/v1/chains", json={"id": "plant-2", "regime": "T2"}, timeout=10)
                page.wait_for_function("document.getElementById('chain-select').options.length === 2", timeout=20000)
                page.select_option("#chain-select", "plant-2")
                page.wait_for_function("document.getElementById('chain-name').textContent.startsWith('plant-2')",
                                       timeout=20000)
                httpx.post(url + "/v1/chains", json={"id": "plant-3", "regime": "T3"}, timeout=10)
                page.wait_for_function("document.getElementById('chain-select').options.length === 3", timeout=20000)
                page.wait_for_timeout(2500)  # one more refresh
                assert page.input_value("#chain-select") == "plant-2"
                assert page.inner_text("#chain-name").startswith("plant-2")
                # /docs renders offline: every request it makes goes to the service
                requested: list[str] = []
                page.on("request", lambda request: requested.append(request.url))
                page.goto(url + "/docs", timeout=20000)
                page.wait_for_selector(".opblock", timeout=20000)
                assert page.locator(".opblock").count() >= 10
                assert requested and all(u.startswith(url) for u in requested), requested
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] == 1100 and image.size[1] >= 600
    pixels = np.asarray(image).reshape(-1, 3)
    assert pixels.std() > 20  # not blank
    colours = {tuple(c) for c in pixels[:: 7].tolist()}
    assert len(colours) > 50
    # the header's blue bar and both chart lines are drawn
    for rgb in ((0x20, 0x40, 0x6A), (0x2A, 0x62, 0xB5), (0x2D, 0x9B, 0x54)):
        assert (np.abs(pixels.astype(int) - rgb).sum(1) < 30).sum() > 200, rgb
    if os.environ.get("MOCA_DASHBOARD_PNG"):  # how docs/serve-dashboard.png is made
        image.quantize(colors=48).save(os.environ["MOCA_DASHBOARD_PNG"], optimize=True)


def test_a_chain_of_another_lead_time_runs_the_lp_checkpoint_adapted_for_it(tmp_path):
    """``moca adapt --params`` of a lead time the shipped checkpoint was not trained for writes
    an mpc-policy checkpoint for that chain (tests/test_mpc_base.py); a chain registered with
    those params and that checkpoint decides through it, feasible and bit-equal to DeployedPolicy."""
    from moca.mpc_base import mpc_policy, save_mpc_policy

    params = Params(lead_virgin=3)
    data = tmp_path / "data"
    save_mpc_policy(data / "checkpoints" / "lead3", mpc_policy(params, 600.0), {"note": "test"})
    body = {**_obs(0), "pipeline": [1500.0, 2500.0]}
    with TestClient(create_app(data, worker=False)) as c:
        refused = c.post("/v1/chains", json={"id": "p0", "regime": "T2", "checkpoint": "lead3"})
        assert refused.status_code == 422 and "params" in refused.text
        # a chain of its own params on the shipped checkpoint: what differs, and the way to a checkpoint for it
        world = c.post("/v1/chains", json={"id": "p1", "model": "clsc-2", "regime": "T2", "checkpoint": "lead3"})
        assert world.status_code == 422 and "a policy over the rolling LP of CLSC-1, not of CLSC-2 (use " \
            '"model": "clsc-1"' in world.json()["detail"]
        other = c.post("/v1/chains", json={"id": "p1", "regime": "T2", "params": {"cap_order": 5000}})
        assert other.status_code == 422
        assert other.json()["detail"].startswith("params: differ from the checkpoint's (cap_order=4000.0->5000.0); ")
        assert "moca adapt --checkpoint default --regime REGIME --params FILE -o DATA/checkpoints/NAME" in other.text
        created = c.post("/v1/chains", json={"id": "p3", "regime": "T2", "checkpoint": "lead3",
                                             "params": {"lead_virgin": 3}})
        assert created.status_code == 201, created.text
        out = c.post("/v1/chains/p3/decide", json=body).json()
        assert c.post("/v1/chains/p3/decide", json={**_obs(1), "pipeline": [1.0]}).status_code == 422
    reference = DeployedPolicy(load_learned_policy(data / "checkpoints" / "lead3")[0])
    reference.reset()
    state = np.array([body["state"][k] for k in STATE_NAMES])
    expected = reference.decide(0, state, np.array(body["pipeline"]), np.array(body["sales_history"]),
                                TASKS["T2"].as_row(), body["return_frac"], None)
    action = np.array([out["action"][k] for k in ACTION_NAMES])
    assert np.array_equal(action, expected)
    assert safety.is_feasible(action, state[0], state[1], state[3], TASKS["T2"].as_row(), params)


def test_a_refusal_speaks_of_the_request_s_model_field_and_leaves_a_quoted_command_alone():
    from moca import checkpoint
    from moca.serve import _in_request_words

    other = checkpoint.refuse("c", {"kind": "lstm-policy", "model": "CLSC-2"}, "CLSC-1", "lstm-policy")
    assert '(use "model": "clsc-2", or a CLSC-1 policy)' in _in_request_words(str(other))
    planner = str(checkpoint.refuse("p", {"kind": "mpc-planner", "model": "CLSC-2"}, "CLSC-2", "lstm-policy"))
    assert "score it with moca evaluate --model CLSC-2 --policy DIR" in _in_request_words(planner)


def test_a_fresh_data_directory_has_the_folder_a_chain_names_checkpoints_in(tmp_path):
    """The 422 for a chain of its own params points to ``moca adapt -o DATA/checkpoints/NAME``:
    that folder exists from the server's start (moca adapt -o needs its parent)."""
    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)):
        assert (data / "checkpoints").is_dir()


def test_a_422_names_the_field_once():
    from moca.serve import _validation_answer

    own = [{"loc": ("body", "grades"), "msg": "Value error, grades: sum to 1.5, must be 1", "type": "value_error"}]
    assert _validation_answer(own)["detail"] == "grades: sum to 1.5, must be 1"
    entry = [{"loc": ("body", "pipeline"), "msg": "Value error, pipeline[0]=-1 must be >= 0", "type": "value_error"}]
    assert _validation_answer(entry)["detail"] == "pipeline[0]=-1 must be >= 0"
    pydantic = [{"loc": ("body", "t"), "msg": "Input should be greater than or equal to 0", "type": "greater_than_equal"}]
    assert _validation_answer(pydantic)["detail"] == "t: Input should be greater than or equal to 0"
    # a union's members (an object or a name) in one line, not pydantic's "regime.dict[str,any]: ... (and 1 more)"
    union = [{"loc": ("body", "regime", "dict[str,any]"), "msg": "Input should be a valid dictionary",
              "type": "dict_type", "input": [1]},
             {"loc": ("body", "regime", "str"), "msg": "Input should be a valid string", "type": "string_type",
              "input": [1]}]
    assert _validation_answer(union)["detail"] == "regime: expected an object or a string, got a list"
    extra = union + [{"loc": ("body", "colour"), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}]
    assert _validation_answer(extra)["detail"] == "regime: expected an object or a string, got a list (and 1 more)"


def test_by_default_a_job_under_an_emission_cap_adapts_through_the_portfolio(tmp_path):
    """``caps``, the service's default base: the portfolio (with the LSTM over the LP) where
    the new regime caps emissions, the version alone elsewhere; an explicit base stands."""
    from moca.regime import Regime
    from moca.serve import job_base

    assert AdaptSettings().base == "caps"
    assert job_base("caps", Regime(emission_cap=12000.0)) == "auto" and job_base("caps", TASKS["T3"]) == "default"
    assert job_base("default", Regime(emission_cap=12000.0)) == "default" and job_base("mpc", TASKS["T3"]) == "mpc"
    with TestClient(create_app(tmp_path / "data", worker=False)) as c:
        rt = c.app.state.runtime
        c.post("/v1/chains", json={"id": "p1", "regime": "T1"})
        capped = c.post("/v1/chains/p1/regulations", json={"regime": {"emission_cap": 8000.0}, "effective": 0})
        _run_jobs(rt.store, [capped.json()["job"]], AdaptSettings(steps=1, support=2, validation=2))
        result = c.get(f"/v1/jobs/{capped.json()['job']}").json()
        assert result["state"] in ("done", "rejected") and "portfolio chose" in result["warm_start"], result
        assert result["violations"] == 0
        plain = c.post("/v1/chains/p1/regulations", json={"regime": "T3", "effective": 0}).json()["job"]
        _run_jobs(rt.store, [plain], AdaptSettings(steps=1, support=2, validation=2))
        result = c.get(f"/v1/jobs/{plain}").json()
        assert result["state"] in ("done", "rejected") and "portfolio" not in result["warm_start"], result


def test_adapt_settings_beyond_their_seeds_are_refused():
    for change in ({"support": 101}, {"validation": 0}, {"validation": 101}, {"steps": -1}, {"steps": 101},
                   {"support": 2.5}):
        with pytest.raises(ValueError, match=f"adapt.{next(iter(change))}="):
            AdaptSettings(**change)
    # the bounds are the library's: every support and validation seed, moca's most steps
    largest = AdaptSettings(steps=MOST_STEPS, support=len(SUPPORT_SEEDS), validation=len(VALIDATION_SEEDS))
    assert largest.argv()[:3] == ["100", "100", "100"]
    with pytest.raises(ValueError, match="adapt.base='best': must be one of caps, default, auto, map, mpc"):
        AdaptSettings(base="best")


def test_a_chain_registered_with_adapt_gets_a_job_for_its_regime_and_its_version_decides_once_it_passes(tmp_path):
    """``adapt: true`` on registration: the registered regime is adapted to as a regulation
    in force from period 0 would be (here under a cap, where the meta-init alone is far
    behind); the checkpoint decides until the job's version passes, then that version."""
    with TestClient(create_app(tmp_path / "data", worker=False)) as c:
        rt = c.app.state.runtime
        plain = c.post("/v1/chains", json={"id": "p0", "regime": "T1"})
        assert plain.status_code == 201 and plain.json()["adaptation_job"] is None
        assert c.get("/v1/chains/p0/jobs").json() == []
        answer = c.post("/v1/chains", json={"id": "p1", "regime": {"emission_cap": 12000.0}, "adapt": True})
        assert answer.status_code == 201, answer.text
        job = answer.json()["adaptation_job"]
        assert answer.json()["policy_version"] == 1 and answer.json()["pending_regulations"] == []
        assert [j["id"] for j in c.get("/v1/chains/p1/jobs").json()] == [job]
        assert c.post("/v1/chains/p1/decide", json=_obs(0)).json()["policy_version"] == 1  # the job has not run
        _run_jobs(rt.store, [job], AdaptSettings(steps=1, support=2, validation=2))
        result = c.get(f"/v1/jobs/{job}").json()
        assert result["state"] == "done" and result["version"] == 2, result
        assert result["score_after"] > result["score_before"] and "portfolio chose" in result["warm_start"]
        out = c.post("/v1/chains/p1/decide", json=_obs(1)).json()
        assert out["policy_version"] == 2 and out["regime"]["emission_cap"] == 12000.0
        versions = c.get("/v1/chains/p1/versions").json()
        assert [(v["number"], v["state"]) for v in versions] == [(1, "retired"), (2, "active")]
