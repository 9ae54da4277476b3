"""moca serve on CLSC-2: decisions equal the library's deployed CLSC-2 policy and keep
every row (window settlements included), a regulation event adapts and activates a
validated version, bad CLSC-2 input is refused by name. In-process (TestClient, no worker
process: jobs are run by calling :func:`moca.serve.run_job`); no port is opened."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from moca import clsc2
from moca.meta2 import load_policy2
from moca.policy2 import PolicyAgent2
from moca.projection import project2, project2_batch, violations2
from moca.regime import RegimeSchedule, ScheduledRegime, load_regime
from moca.scenario import DEFAULT_PARAMS_2, HISTORY, draw_scenario2
from moca.serve import AdaptSettings, create_app, run_job
from moca.sim2 import ScenarioBatch2, rollout2

TINY = AdaptSettings(steps=1, support=2, validation=2)  # the plumbing, not the learning
#: A rule announced for t = 20 with a quarterly window: windows [0, 20), [20, 26), [26, 39), [39, 52).
RULE = {"recycled_content_min": 0.3, "carbon_tax": 80.0, "emission_cap": None, "landfill_tax": 40.0,
        "recovery_target": 0.5, "recycled_content_window": 13}


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(tmp_path / "data", worker=False)) as c:
        yield c


class _Recorder(PolicyAgent2):
    """The library's CLSC-2 agent, keeping each observation it was shown."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = []

    def act(self, obs):
        self.seen.append(obs)
        return super().act(obs)


def _body(obs) -> dict:
    """The service's JSON observation of a library observation (post-arrival, spec names)."""
    s = obs.state
    return {"t": obs.t, "state": {n: float(x[0]) for n, x in zip(clsc2.STATE_NAMES, s.columns)},
            "pipeline": [float(x[0]) for x in s.pipeline_slots], "sales_history": [float(x[0]) for x in s.history_slots],
            "used_virgin": float(s.used_virgin[0]), "used_recycled": float(s.used_recycled[0]),
            "supply_up": bool(obs.inputs["supply_up"][0] > 0.5), "market_avail": float(obs.inputs["market_avail"][0]),
            "return_frac": float(obs.return_frac_t[0]), "grades": obs.grades_t[0].tolist(),
            "demand_history": obs.demand_seen[0, -HISTORY:].tolist()}


def test_clsc2_decisions_equal_the_library_policy_and_keep_every_row_across_a_window_change(client):
    """An episode of T1 (yearly window) with RULE announced before t = 0 for t = 20: the
    service's periods_left is the scenario's schedule's, its executed action is the exact
    projection (project2) of its raw action for the regime in force, breaks no row and no
    settlement, and equals the library's rollout of the same shipped policy."""
    t1 = load_regime("T1", model="CLSC-2")
    rule = load_regime(RULE, model="CLSC-2")
    schedule = RegimeSchedule(entries=(ScheduledRegime(start=0, **t1.model_dump()),
                                       ScheduledRegime(start=20, **rule.model_dump())))
    scenario = draw_scenario2(1000, schedule, DEFAULT_PARAMS_2)
    module, _ = load_policy2("default")
    agent = _Recorder(module, {k: v.detach().double() for k, v in module.named_parameters()})
    with torch.no_grad():
        out = rollout2(ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64), agent, project2_batch)
    periods_left, table = scenario.periods_left(), scenario.regime_table()

    r = client.post("/v1/chains", json={"id": "plant2", "model": "CLSC-2", "regime": "T1"})
    assert r.status_code == 201, r.text
    assert r.json()["model"] == "clsc-2"
    # the command line's spelling of the other world too (it was "not one of clsc-1, clsc-2")
    r = client.post("/v1/chains", json={"id": "plant1", "model": "CLSC-1", "regime": "T1"})
    assert r.status_code == 201 and r.json()["model"] == "clsc-1", r.text
    r = client.post("/v1/chains/plant2/regulations", json={"regime": RULE, "effective": 20, "name": "quarterly"})
    assert r.status_code == 202, r.text
    projected = 0
    for obs in agent.seen:
        r = client.post("/v1/chains/plant2/decide", json=_body(obs))
        assert r.status_code == 200, r.text
        answer = r.json()
        action = np.array([answer["action"][n] for n in clsc2.ACTION_NAMES])
        raw = np.array([answer["raw_action"][n] for n in clsc2.ACTION_NAMES])
        inputs = {k: float(v[0]) for k, v in obs.inputs.items()}
        assert answer["window"] == {"recycled_content_window": 52 if obs.t < 20 else 13,
                                    "periods_left": int(periods_left[obs.t])}
        assert answer["regime"]["recycled_content_window"] == (52 if obs.t < 20 else 13)
        assert np.array_equal(action, project2(raw, inputs, table[obs.t], DEFAULT_PARAMS_2))
        assert violations2(action, inputs, table[obs.t], DEFAULT_PARAMS_2) == 0 == answer["violations"]
        assert np.allclose(raw, out.raw[0, obs.t].numpy(), rtol=1e-5, atol=1e-4)  # (LSTM state kept in float32)
        assert np.allclose(action, out.executed[0, obs.t].numpy(), rtol=1e-5, atol=1e-3)
        projected += answer["projected"]
    assert len(agent.seen) == DEFAULT_PARAMS_2.horizon and projected > 0  # the safety layer did work
    decisions = client.get("/v1/chains/plant2/decisions?limit=5").json()
    assert set(decisions[-1]["action"]) == set(clsc2.ACTION_NAMES)


def test_a_clsc2_regulation_adapts_and_activates_a_validated_version(client):
    """T2 announced for t = 0 of a fresh chain: the job adapts the CLSC-2 policy (adapt2),
    validates it (0 violations incl. settlements, score not below version 1's), and the
    first decision under T2 uses the new version; rollback returns to version 1."""
    assert client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "T1"}).status_code == 201
    job = client.post("/v1/chains/p2/regulations", json={"regime": "T2", "effective": 0}).json()["job"]
    store = client.app.state.runtime.store
    with store.tx() as c:
        c.execute("UPDATE jobs SET state='running', attempts=attempts+1 WHERE id=?", (job,))
    run_job(store, job, TINY)
    done = client.get(f"/v1/jobs/{job}").json()
    assert done["state"] == "done", done
    assert done["violations"] == 0 and done["score_after"] >= done["score_before"] > 0
    first = json.loads(json.dumps(_first_obs()))
    r = client.post("/v1/chains/p2/decide", json=first)
    assert r.status_code == 200, r.text
    assert r.json()["policy_version"] == 2 and r.json()["regime"]["recycled_content_min"] == \
        load_regime("T2", model="CLSC-2").recycled_content_min
    versions = client.get("/v1/chains/p2/versions").json()
    assert [(v["number"], v["state"], v["parent"]) for v in versions] == [(1, "retired", None), (2, "active", 1)]
    assert versions[1]["score"] == done["score_after"]
    memory = client.get("/v1/regimes").json()
    assert {r["model"] for r in memory} == {"clsc-2"} and len(memory) == 2
    assert len(memory[0]["features"]) == 7  # the CLSC-2 policy's regime columns, window included
    assert client.post("/v1/chains/p2/rollback", json={}).json()["policy_version"] == 1


def test_a_late_rule_opens_its_window_where_it_holds_and_an_unreachable_settlement_is_told(client):
    """A rule posted for a period decided already holds from the next decision, and a
    window opens there (it was stored as posted: the old window's counters ran on into the
    new one); where a change announced late leaves a window no settlement can reach, the
    answer counts the broken rule (it was a 200 like any other)."""
    assert client.post("/v1/chains", json={"id": "late", "model": "clsc-2", "regime": "T1"}).status_code == 201
    for t in range(6):
        body = {**_first_obs(), "t": t, "used_virgin": 1000.0 * t, "used_recycled": 300.0 * t}
        assert client.post("/v1/chains/late/decide", json=body).status_code == 200
    answer = client.post("/v1/chains/late/regulations", json={"regime": {"recycled_content_min": 0.1,
                                                                         "recycled_content_window": 4}, "effective": 3})
    assert answer.status_code == 202 and (answer.json()["effective"], answer.json()["in_force_from"]) == (3, 6)
    assert [r["effective"] for r in client.get("/v1/chains/late").json()["pending_regulations"]] == [6]
    carried = {**_first_obs(), "t": 6, "used_virgin": 6000.0, "used_recycled": 1800.0}
    r = client.post("/v1/chains/late/decide", json=carried)
    assert r.status_code == 422 and r.json()["detail"].startswith("used_virgin: 6000.0 must be 0 at t=6, the first "
                                                                  "period of an accounting window (W=4"), r.text
    r = client.post("/v1/chains/late/decide", json={**_first_obs(), "t": 6})
    assert r.status_code == 200 and r.json()["window"] == {"recycled_content_window": 4, "periods_left": 1}, r.text

    assert client.post("/v1/chains", json={"id": "cut", "model": "clsc-2", "regime": "T2"}).status_code == 201
    assert client.post("/v1/chains/cut/decide", json=_first_obs()).status_code == 200
    client.post("/v1/chains/cut/regulations", json={"regime": "T1", "effective": 31})  # T2's window ends at 30
    behind = {**_first_obs(), "t": 30, "state": {**_first_obs()["state"], "M": 8000.0}, "used_virgin": 40000.0,
              "used_recycled": 2000.0}  # 20% of the window's material is out of reach in one period
    r = client.post("/v1/chains/cut/decide", json=behind)
    assert r.status_code == 200 and r.json()["window"]["periods_left"] == 0, r.text
    assert r.json()["violations"] >= 1


def test_stock_round_off_an_unknown_chain_and_a_weekly_rules_window(client):
    """A simulator executing the service's own use_recycled = M ended at M = -1e-13 kg, and the
    next decision was a 422 (the safety layer reads such round-off as 0); a CLSC-2 body
    for an unknown chain was a 422 on CLSC-1's fields, not the 404; a CLSC-2 rule with
    W = 1 was shown without its window."""
    assert client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "eu-ets-2025"}).status_code == 201
    assert client.get("/v1/chains/p2").json()["regime"]["regime"]["recycled_content_window"] == 1
    for value, status in ((-1e-13, 200), (-1.0, 422)):
        body = {**_first_obs(), "state": {**_first_obs()["state"], "M": value}}
        r = client.post("/v1/chains/p2/decide", json=body)
        assert r.status_code == status, r.text
        if status == 200:
            assert r.json()["regime"]["recycled_content_window"] == 1 and r.json()["action"]["use_recycled"] == 0.0
    assert r.json()["detail"] == "state.M: Input should be greater than or equal to 0"
    assert len(client.get("/v1/chains/p2/decisions").json()) == 1
    r = client.post("/v1/chains/nope/decide", json=_first_obs())
    assert r.status_code == 404 and r.json()["detail"] == "chain: no chain 'nope'", r.text


def _first_obs() -> dict:
    return {"t": 0, "state": {"V": 20000.0, "M": 3000.0, "P": 1000.0, "CA": 100.0, "CB": 50.0},
            "pipeline": [0.0] * (DEFAULT_PARAMS_2.lead_virgin - 1),
            "sales_history": [900.0] * DEFAULT_PARAMS_2.lag_return, "used_virgin": 0.0, "used_recycled": 0.0,
            "supply_up": True, "market_avail": 0.8, "return_frac": 0.3, "grades": [0.5, 0.3, 0.2],
            "demand_history": [1000.0] * HISTORY}


@pytest.mark.parametrize("change, status, field", [
    ({"demand_history": [1000.0] * 51}, 422, "demand_history: 51 values, expected 52"),
    ({"sales_history": [900.0] * 2}, 422, "sales_history: 2 values"),
    ({"grades": [0.5, 0.5]}, 422, "grades"),
    ({"grades": [0.5, 0.3, 0.3]}, 422, "grades"),
    ({"market_avail": 1.5}, 422, "market_avail"),
    ({"used_recycled": -1.0}, 422, "used_recycled"),
    ({"used_virgin": 5.0}, 422, "used_virgin: 5.0 must be 0 at t=0, the first period of an accounting window"),
    ({"state": {"virgin": 1.0, "recycled": 1.0, "product": 1.0, "cores": 1.0, "backlog": 0.0}}, 422, "state"),
    ({"last_demand": 1000.0}, 422, "last_demand: unknown field"),
    ({"t": 52}, 422, "t: 52 is past the episode"),
])
def test_bad_clsc2_input_is_refused_by_name_and_nothing_is_stored(client, change, status, field):
    assert client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "T1"}).status_code == 201
    r = client.post("/v1/chains/p2/decide", json={**_first_obs(), **change})
    assert r.status_code == status and r.json()["detail"].startswith(field), r.text
    nan = json.dumps(_first_obs()).replace('"used_virgin": 0.0', '"used_virgin": NaN')
    r = client.post("/v1/chains/p2/decide", content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"].startswith("used_virgin"), r.text
    assert client.get("/v1/chains/p2/decisions").json() == []
    assert client.get("/v1/chains/p2").json()["last_t"] == -1


def test_clsc2_registration_refuses_bad_regimes_params_and_checkpoints_by_name(client, tmp_path):
    bad = {**RULE, "recycled_content_window": 0}
    r = client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": bad})
    assert r.status_code == 422 and "recycled_content_window" in r.json()["detail"], r.text
    r = client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "T1", "params": {"horizon": -3}})
    assert r.status_code == 422 and r.json()["detail"].startswith("params.horizon"), r.text
    r = client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "T1", "checkpoint": "default-reptile"})
    assert r.status_code == 422 and r.json()["detail"].startswith("checkpoint:"), r.text  # a CLSC-1 policy
    r = client.post("/v1/chains", json={"id": "p2", "model": "clsc-3", "regime": "T1"})
    assert r.status_code == 422 and r.json()["detail"].startswith("model:"), r.text
    # moca adapt's sampled MPC (a planner, no weights) is not a version the service can deploy
    from moca.baselines.mpc2 import MPC2Policy, save_planner2
    from moca.scenario import DEFAULT_PARAMS_2

    save_planner2(tmp_path / "data" / "checkpoints" / "planner", MPC2Policy(safety_stock=600.0), DEFAULT_PARAMS_2, {})
    r = client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "T1", "checkpoint": "planner"})
    assert r.status_code == 422 and "a planner" in r.json()["detail"] and "serve" in r.json()["detail"], r.text
    assert client.get("/v1/chains").json() == []


def test_the_regime_memory_holds_both_models_and_finds_the_nearest_clsc2_rule(client):
    """A CLSC-1 and a CLSC-2 chain share the memory; ``?nearest=`` a quarterly-window rule
    finds that rule first (each regime compared by its own model's features); a target no
    model reads is refused by name."""
    assert client.post("/v1/chains", json={"id": "p1", "regime": "T3"}).status_code == 201
    assert client.post("/v1/chains", json={"id": "p2", "model": "clsc-2", "regime": "T1"}).status_code == 201
    assert client.post("/v1/chains/p2/regulations", json={"regime": RULE, "effective": 5}).status_code == 202
    r = client.get("/v1/regimes", params={"nearest": json.dumps(RULE)})
    assert r.status_code == 200, r.text
    ranked = [(x["model"], x["regime"].get("recycled_content_window", 1), x["distance"]) for x in r.json()]
    assert sorted(m for m, _, _ in ranked) == ["clsc-1", "clsc-2", "clsc-2"]
    assert ranked[0] == ("clsc-2", 13, 0.0) and all(d > 0 for _, _, d in ranked[1:])
    r = client.get("/v1/regimes", params={"nearest": json.dumps({**RULE, "recycled_content_window": 0})})
    assert r.status_code == 422 and "recycled_content_window" in r.json()["detail"], r.text
    # a key given twice is refused, as in a body (the parser kept the last without a word)
    r = client.get("/v1/regimes", params={"nearest": '{"carbon_tax": 1, "carbon_tax": 2}'})
    assert r.status_code == 422 and "nearest: key 'carbon_tax' is given twice" in r.json()["detail"], r.text
    r = client.get("/v1/regimes", params={"nearest": '{"carbon_tax": ' + "[" * 3000 + "]" * 3000 + "}"})
    assert r.status_code == 422 and r.json()["detail"] == "nearest: nested too deeply to read", r.text  # (a 500)


def test_a_clsc2_chain_registered_with_adapt_decides_as_a_plain_one_until_its_job_passes(client):
    """``adapt: true``: the registered regime held as a regulation in force from period 0
    changes nothing in the decisions (regime table, window) until the job's version passes;
    then that version decides."""
    for chain, adapt in (("plain", False), ("adapted", True)):
        r = client.post("/v1/chains", json={"id": chain, "model": "clsc-2", "regime": "T2", "adapt": adapt})
        assert r.status_code == 201, r.text
    job = r.json()["adaptation_job"]
    assert job is not None and client.get("/v1/chains/plain/jobs").json() == []
    first = _first_obs()
    answers = [client.post(f"/v1/chains/{c}/decide", json=first).json() for c in ("plain", "adapted")]
    assert answers[0]["action"] == answers[1]["action"] and answers[0]["window"] == answers[1]["window"]
    assert answers[1]["policy_version"] == 1
    store = client.app.state.runtime.store
    with store.tx() as c:
        c.execute("UPDATE jobs SET state='running', attempts=attempts+1 WHERE id=?", (job,))
    run_job(store, job, TINY)
    done = client.get(f"/v1/jobs/{job}").json()
    assert done["state"] == "done" and done["version"] == 2 and done["violations"] == 0, done
    r = client.post("/v1/chains/adapted/decide", json={**first, "t": 1, "used_virgin": 1.0, "used_recycled": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["policy_version"] == 2 and r.json()["window"]["periods_left"] == 50


def test_what_the_arrivals_revealed_is_kept_across_a_restart_and_decides_as_the_library(tmp_path):
    """A chain that returns 12% of its sales (the rule's prior: 25%) under a carbon tax of
    800 EUR/t and a landfill tax of 60 EUR/core: the rule leaves its prior once the returns
    tell otherwise, which keeps its virgin orders on. The service sums what each request
    revealed, keeps it across a restart in mid-episode (a new app on the same data), and
    decides as the library's rollout does; the same agent without the sums decides otherwise."""
    import dataclasses

    from moca.scenario import Scenario2

    regime = {"carbon_tax": 800.0, "landfill_tax": 60.0}
    drawn = draw_scenario2(1001, load_regime(regime, model="CLSC-2"), DEFAULT_PARAMS_2.model_copy(
        update={"return_mean": 0.12}))
    scenario = Scenario2(**{**drawn.__dict__, "params": DEFAULT_PARAMS_2})  # the chain's declared params
    module, _ = load_policy2("default")
    weights = {k: v.detach().double() for k, v in module.named_parameters()}
    agent = _Recorder(module, weights)

    class PriorOnly(PolicyAgent2):
        def act(self, obs):
            return super().act(dataclasses.replace(obs, seen=None))

    batch = ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64)
    with torch.no_grad():
        out = rollout2(batch, agent, project2_batch)
        prior_only = rollout2(batch, PriorOnly(module, weights), project2_batch)
    assert not torch.allclose(out.raw, prior_only.raw, rtol=1e-3, atol=1.0)  # the sums change the decisions
    half = len(agent.seen) // 2
    for part in (agent.seen[:half], agent.seen[half:]):
        with TestClient(create_app(tmp_path / "data", worker=False)) as client:
            if part[0].t == 0:
                r = client.post("/v1/chains", json={"id": "plant", "model": "CLSC-2", "regime": regime})
                assert r.status_code == 201, r.text
            for obs in part:
                r = client.post("/v1/chains/plant/decide", json=_body(obs))
                assert r.status_code == 200, r.text
                raw = np.array([r.json()["raw_action"][n] for n in clsc2.ACTION_NAMES])
                assert np.allclose(raw, out.raw[0, obs.t].numpy(), rtol=1e-5, atol=1e-3), obs.t


def test_a_database_of_a_moca_before_the_sums_gains_them_and_keeps_its_chains(tmp_path):
    """A database written before the service kept what the arrivals revealed (no ``seen``
    columns, the old trigger) opens, gains the columns in one transaction, and its chain
    decides on where it was: its history and decisions are all there."""
    import sqlite3

    if sqlite3.sqlite_version_info < (3, 35):
        pytest.skip(f"SQLite {sqlite3.sqlite_version} cannot drop a column to make the old schema")
    scenario = draw_scenario2(1000, load_regime("T2", model="CLSC-2"), DEFAULT_PARAMS_2)
    module, _ = load_policy2("default")
    agent = _Recorder(module, {k: v.detach().double() for k, v in module.named_parameters()})
    with torch.no_grad():
        rollout2(ScenarioBatch2.from_scenarios([scenario], dtype=torch.float64), agent, project2_batch)
    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)) as client:
        assert client.post("/v1/chains", json={"id": "plant", "model": "CLSC-2", "regime": "T2"}).status_code == 201
        for obs in agent.seen[:3]:
            assert client.post("/v1/chains/plant/decide", json=_body(obs)).status_code == 200
    conn = sqlite3.connect(data / "moca.sqlite3", isolation_level=None)
    conn.executescript("""
        DROP TRIGGER decision_state;
        ALTER TABLE chain_state DROP COLUMN seen;
        ALTER TABLE decisions DROP COLUMN seen;
        CREATE TRIGGER decision_state AFTER INSERT ON decisions BEGIN
          INSERT OR REPLACE INTO chain_state(chain, episode, last_t, frames, h, c)
            VALUES(NEW.chain, NEW.episode, NEW.t, NEW.frames, NEW.h, NEW.c);
          UPDATE decisions SET frames=NULL, h=NULL, c=NULL WHERE id=NEW.id;
        END;""")
    conn.close()
    with TestClient(create_app(data, worker=False)) as client:
        for obs in agent.seen[3:6]:
            r = client.post("/v1/chains/plant/decide", json=_body(obs))
            assert r.status_code == 200, r.text
        assert [d["t"] for d in client.get("/v1/chains/plant/decisions").json()] == list(range(6))
    conn = sqlite3.connect(data / "moca.sqlite3")
    seen = conn.execute("SELECT seen FROM chain_state WHERE chain='plant'").fetchone()[0]
    assert np.frombuffer(seen)[0] == 3.0  # the periods seen since the columns came (the older ones were never kept)
    assert "seen" in {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
    conn.close()


def test_a_database_in_use_by_another_server_is_not_migrated_under_it(tmp_path):
    """The opening migrated the database (an older moca's, without the seen columns) before
    the data directory was claimed: an older server holding it found its schema changed."""
    import fcntl
    import os
    import sqlite3

    from moca.serve import StartError, Store

    if sqlite3.sqlite_version_info < (3, 35):
        pytest.skip(f"SQLite {sqlite3.sqlite_version} cannot drop a column to make the old schema")
    data = tmp_path / "data"
    Store(data).conn.close()
    conn = sqlite3.connect(data / "moca.sqlite3", isolation_level=None)
    conn.executescript("DROP TRIGGER decision_state; ALTER TABLE chain_state DROP COLUMN seen;")
    holder = os.open(data / "serve.lock", os.O_RDWR | os.O_CREAT)  # another server's claim (its own open file)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StartError, match="in use by another moca serve"):
            create_app(data, worker=False)
        assert "seen" not in {row[1] for row in conn.execute("PRAGMA table_info(chain_state)")}
    finally:
        os.close(holder)
    with TestClient(create_app(data, worker=False)):
        pass
    assert "seen" in {row[1] for row in conn.execute("PRAGMA table_info(chain_state)")}
    conn.close()


def test_a_database_error_in_the_watchers_pass_does_not_end_it(tmp_path):
    """A locked (or damaged) database while the watcher loaded the versions ended the
    watcher for good: a worker that died later was never replaced."""
    import sqlite3
    import time

    app = create_app(tmp_path / "data", worker=True)
    rt = app.state.runtime
    real, failed = rt.store.all, []

    def locked_once(sql, args=()):
        if "v.state IN ('active', 'scheduled')" in sql and not failed:  # the watcher's pass
            failed.append(sql)
            raise sqlite3.OperationalError("database is locked")
        return real(sql, args)

    rt.store.all = locked_once
    with TestClient(app) as client:
        deadline = time.time() + 60
        while (not failed or client.get("/health").json()["status"] == "starting") and time.time() < deadline:
            time.sleep(0.1)
        assert failed and client.get("/health").json()["worker"] == "running"
        first = rt.worker
        first.kill()
        first.wait(timeout=30)
        while (rt.worker is first or rt.worker.poll() is not None) and time.time() < deadline:
            time.sleep(0.1)
        assert rt.worker is not first and rt.worker.poll() is None  # replaced


def test_a_data_directory_that_cannot_be_opened_is_not_held(tmp_path):
    """Claimed before its database is opened, a directory whose database was refused stayed
    held by a library caller that went on: another server was told it is in use."""
    import fcntl
    import os

    from moca.serve import StoreError

    data = tmp_path / "data"
    data.mkdir()
    (data / "moca.sqlite3").write_text("not a database\n")
    with pytest.raises(StoreError):
        create_app(data, worker=False)
    other = os.open(data / "serve.lock", os.O_RDWR)  # another process's claim, as its own open file
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (BlockingIOError while held)
    finally:
        os.close(other)


def test_a_half_migrated_database_gains_the_missing_column_and_the_trigger_once(tmp_path):
    import sqlite3

    from moca.serve import _add_seen

    if sqlite3.sqlite_version_info < (3, 35):
        pytest.skip(f"SQLite {sqlite3.sqlite_version} cannot drop a column to make the old schema")
    data = tmp_path / "data"
    with TestClient(create_app(data, worker=False)):
        pass
    conn = sqlite3.connect(data / "moca.sqlite3", isolation_level=None)
    conn.executescript("DROP TRIGGER decision_state; ALTER TABLE chain_state DROP COLUMN seen;")
    _add_seen(conn)
    _add_seen(conn)  # a second opener finds it done
    for table in ("chain_state", "decisions"):
        assert "seen" in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    trigger = conn.execute("SELECT sql FROM sqlite_master WHERE type='trigger' AND name='decision_state'").fetchone()
    assert trigger is not None and "NEW.seen" in trigger[0]
    conn.close()
    with TestClient(create_app(data, worker=False)) as client:
        assert client.post("/v1/chains", json={"id": "plant", "model": "CLSC-2", "regime": "T2"}).status_code == 201
