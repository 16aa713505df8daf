"""The Database adapter on both engines, and what several nodes sharing one PostgreSQL
rely on: leased claims, concurrent writers, ids in commit order, reconnection."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from pydicom.uid import generate_uid

from aenode.config import ConfigError, parse_config, render_toml
from aenode.store.db import StoreError, _pg_sql, _sqlite_sql, is_transient, open_store_database
from aenode.store.index import _MIGRATIONS, ANALYSING, COMPLETE, RECEIVING, Index, node_identity
from aenode.web.store import WebStore
from tests.pg import PgServer, restart
from tests.store.test_index import meta


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _complete(index: Index, uid: str, tmp_path) -> None:
    index.record_instance(meta(uid), tmp_path / f"{uid}.dcm", 1, "SCU")
    assert index.mark_complete(uid, index.study(uid).last_arrival)


def test_placeholders_translated_outside_quotes_only():
    assert _pg_sql("SELECT '?', \"a?\" FROM t WHERE x=? AND y LIKE 'a%'") == \
        "SELECT '?', \"a?\" FROM t WHERE x=%s AND y LIKE 'a%%'"
    assert _sqlite_sql("SELECT a FROM t ORDER BY b LIMIT 1 FOR UPDATE SKIP LOCKED") == \
        "SELECT a FROM t ORDER BY b LIMIT 1"


def test_database_url_validated_and_masked():
    c = parse_config({"database": {"url": "postgresql://aenode:canary-pw@db.example:5432/aenode"}})
    text = render_toml(c)
    assert "canary-pw" not in text and "postgresql://aenode:********@db.example:5432/aenode" in text
    with pytest.raises(ConfigError, match="database.url"):
        parse_config({"database": {"url": "sqlite:///x.db"}})
    assert parse_config({}).database.url is None


def test_leases_between_two_nodes(tmp_path, db_url):
    """Node A claims; node B cannot take it while A renews, can once A's lease ran out;
    A then learns it lost the claim."""
    clock = Clock()
    a = Index.for_data_dir(tmp_path, clock=clock, url=db_url)
    b = Index.for_data_dir(tmp_path, clock=clock, url=db_url)
    try:
        _complete(a, "1.3.1", tmp_path)
        claim = a.claim_next_complete("node-a@h:1/1-1", lease_seconds=30)
        assert claim is not None and b.claim_next_complete("node-b@h:2/1-1", 30) is None
        clock.t += 20
        assert a.renew_lease("1.3.1", 1, "node-a@h:1/1-1", 30)
        clock.t += 20                                   # 40 s after the claim, 20 after renewal
        assert b.claim_next_complete("node-b@h:2/1-1", 30) is None
        clock.t += 11                                   # A died: its lease ran out
        taken = b.claim_next_complete("node-b@h:2/1-1", 30)
        assert taken is not None and taken.study_uid == "1.3.1"
        assert b.study("1.3.1").claimed_by == "node-b@h:2/1-1"
        assert not a.renew_lease("1.3.1", 1, "node-a@h:1/1-1", 30)
        # a late instance reopens the study: B's claim is stale too
        b.record_instance(meta("1.3.1"), tmp_path / "late.dcm", 1, "SCU")
        assert b.study("1.3.1").state == RECEIVING
        assert not b.renew_lease("1.3.1", 1, "node-b@h:2/1-1", 30)
    finally:
        a.close()
        b.close()


def test_recovery_leaves_live_nodes_studies_alone(tmp_path, db_url):
    clock = Clock()
    idx = Index.for_data_dir(tmp_path, clock=clock, url=db_url)
    try:
        me, other = "n1@host:104", "n2@host:105"
        for uid in ("1.4.1", "1.4.2", "1.4.3"):
            _complete(idx, uid, tmp_path)
        assert idx.claim_next_complete(f"{me}/99-1", 60).study_uid == "1.4.1"       # my previous run
        assert idx.claim_next_complete(f"{other}/7-1", 60).study_uid == "1.4.2"     # alive
        assert idx.claim_next_complete(f"{other}/7-2", 5).study_uid == "1.4.3"      # dead
        clock.t += 10
        assert idx.recover_interrupted(me) == 2
        states = {s.study_uid: s.state for s in idx.studies()}
        assert states == {"1.4.1": COMPLETE, "1.4.2": ANALYSING, "1.4.3": COMPLETE}
        assert idx.recover_interrupted() == 1          # alone on its database: everything
        assert node_identity("n1", 104).startswith("n1@") and node_identity("n1", 104).endswith(":104")
    finally:
        idx.close()


def test_concurrent_writers_of_one_study(tmp_path, db_url):
    """Two nodes receiving the same study at once: every instance counted once, one
    study row, one revision; the result ids come out in commit order."""
    nodes = [Index.for_data_dir(tmp_path, url=db_url) for _ in range(3)]
    study = generate_uid()
    sops = [generate_uid() for _ in range(60)]
    errors: list[BaseException] = []

    def receive(k: int) -> None:
        try:
            for sop in sops[k::3]:
                nodes[k].record_instance(meta(study, sop), tmp_path / f"{sop}.dcm", 1, "SCU")
                nodes[k].record_instance(meta(study, sops[0]), tmp_path / "dup.dcm", 1, "SCU")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=receive, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        s = nodes[0].study(study)
        assert (s.state, s.revision, s.instance_count) == (RECEIVING, 1, 60)
        ids: list[int] = []
        lock = threading.Lock()

        def results(k: int) -> None:
            for j in range(10):
                rid = nodes[k].record_result(f"1.9.{k}.{j}", 1, "m", "negative")
                with lock:
                    ids.append(rid)
                seen = [r.id for r in nodes[k].results_after(0, 1000)]
                assert seen == sorted(seen) and rid in seen

        threads = [threading.Thread(target=results, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.id for r in nodes[0].results_after(0, 1000)) == sorted(ids)
    finally:
        for n in nodes:
            n.close()


def test_web_store_on_both_engines(tmp_path, db_url):
    store = WebStore.for_data_dir(tmp_path, url=db_url)
    try:
        ack = store.acknowledge("1.2", "m", "Typical", 1, "ic-nurse", "ic", None)
        assert store.acknowledgement("1.2", "m", "Typical") == ack
        conf = store.confirm(study_uid="1.2", model="m", revision=1, ai_category="Typical", category="Typical",
                             infection_status="unknown", radiologist_id="R1", user="rad", role="radiologist",
                             note="50% sure?")
        assert conf.id >= 1 and store.confirmations("1.2")[0].note == "50% sure?"
        store.open_session("h1", "rad", "radiologist", "csrf", "cred", time.time() + 60)
        assert store.live_sessions("rad") == 1 and store.end_session("h1", "logout", "radiologist")
        assert [e.action for e in store.audit_log()] == ["logout", "login", "confirm", "acknowledge"]
        store.check()
    finally:
        store.close()


def test_schemas_are_per_store_and_migrations_versioned(postgres: PgServer, tmp_path):
    url = postgres.new_database()
    idx = Index.for_data_dir(tmp_path, url=url)
    web = WebStore.for_data_dir(tmp_path, url=url)
    idx.close()
    web.close()
    with psycopg.connect(url) as conn:
        schemas = {r[0] for r in conn.execute("SELECT schema_name FROM information_schema.schemata")}
        assert {"aenode_index", "aenode_web"} <= schemas
        assert conn.execute("SELECT version FROM aenode_index.schema_version").fetchone() == (len(_MIGRATIONS),)
        assert conn.execute("SELECT version FROM aenode_web.schema_version").fetchone() == (0,)
    # A newer release adds a migration: only that one runs, once, also when two nodes start together.
    v1 = "CREATE TABLE IF NOT EXISTS t (id {id}, a TEXT)"
    dbs = [open_store_database("demo", tmp_path / "x", v1, ("ALTER TABLE t ADD COLUMN b TEXT",), url)
           for _ in range(2)]
    with dbs[0].tx() as t:
        assert t.insert_id("INSERT INTO t (a, b) VALUES (?, ?)", ("x", "y")) == 1
    assert dbs[1].one("SELECT version FROM schema_version") == (1,)
    for d in dbs:
        d.close()


def test_reconnects_after_server_restart(postgres: PgServer, tmp_path):
    url = postgres.new_database()
    idx = Index.for_data_dir(tmp_path, url=url)
    try:
        _complete(idx, "1.6.1", tmp_path)
        restart(postgres)
        # Pooled connections died with the server; the pool checks and replaces them.
        assert idx.study("1.6.1").state == COMPLETE
        assert idx.claim_next_complete("w", 60) is not None
        idx.check()
    finally:
        idx.close()
    with pytest.raises(StoreError) as err:
        Index.for_data_dir(tmp_path, url=postgres.url("nodb").replace("canary-secret", "wrong-canary"))
    assert "wrong-canary" not in str(err.value) and "aenode_index" in str(err.value)
    assert is_transient(psycopg.OperationalError("server closed the connection"))


def test_two_stabilisers_complete_a_shared_study_once(tmp_path, db_url):
    """Study X arrives on node A and node B; A's association ends first.  A's release
    shortcut must not complete X while B may still be receiving: X completes once, after
    the quiet period since the last instance on either node.  Study Y, sent to A alone,
    still takes the shortcut."""
    from aenode.store.stabilise import ActivityTracker, Stabiliser

    clock = Clock()
    a_idx = Index.for_data_dir(tmp_path, clock=clock, url=db_url)
    b_idx = Index.for_data_dir(tmp_path, clock=clock, url=db_url)
    try:
        ta, tb = ActivityTracker(clock=clock), ActivityTracker(clock=clock)
        sa = Stabiliser(a_idx, ta, quiet_seconds=5, after_release_seconds=0.5, clock=clock, shared=True)
        sb = Stabiliser(b_idx, tb, quiet_seconds=5, after_release_seconds=0.5, clock=clock, shared=True)
        for k in range(2):
            a_idx.record_instance(meta("1.8.1"), tmp_path / f"a{k}.dcm", 1, "SCU")
            ta.instance("assoc-a", "1.8.1")
        a_idx.record_instance(meta("1.8.2"), tmp_path / "y.dcm", 1, "SCU")
        ta.instance("assoc-a", "1.8.2")
        b_idx.record_instance(meta("1.8.1"), tmp_path / "b0.dcm", 1, "SCU")
        tb.instance("assoc-b", "1.8.1")
        ta.ended("assoc-a")
        clock.t += 1
        assert sa.tick() == ["1.8.2"] and sb.tick() == []   # X: B shares it, no shortcut
        clock.t += 3
        b_idx.record_instance(meta("1.8.1"), tmp_path / "b1.dcm", 1, "SCU")   # B's sender goes on
        tb.instance("assoc-b", "1.8.1")
        clock.t += 4.9
        assert sa.tick() == [] and sb.tick() == []
        clock.t += 0.2
        done = sa.tick() + sb.tick() + sa.tick()
        assert done == ["1.8.1"]
        assert a_idx.study("1.8.1").state == COMPLETE and a_idx.study("1.8.1").instance_count == 4
        # Without the shared flag (one node), A would have completed X on release.
        solo = Stabiliser(a_idx, ta, quiet_seconds=5, after_release_seconds=0.5, clock=clock)
        a_idx.record_instance(meta("1.8.3"), tmp_path / "z.dcm", 1, "SCU")
        b_idx.record_instance(meta("1.8.3"), tmp_path / "z2.dcm", 1, "SCU")
        ta.instance("assoc-a2", "1.8.3")
        ta.ended("assoc-a2")
        clock.t += 1
        assert solo.tick() == ["1.8.3"]
    finally:
        a_idx.close()
        b_idx.close()


def test_shared_spool_nodes_keep_their_temporary_files_apart(tmp_path):
    """Two nodes on one spool: a starting node leaves the other's files in flight alone,
    and the same instance stored by both at once ends as one whole copy."""
    from aenode.store.spool import Spool

    a, b = Spool(tmp_path, "n1@h:104"), Spool(tmp_path, "n2@h:105")
    a.prepare()
    in_flight = a.tmp_dir / "incoming.part"
    in_flight.write_bytes(b"x")
    b.prepare()
    assert in_flight.exists() and a.tmp_dir != b.tmp_dir
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    payloads = [bytes([k]) * 2_000_000 for k in range(1, 9)]

    def store(k: int) -> None:
        (a if k % 2 else b).write_bytes(payloads[k], study, series, sop)

    threads = [threading.Thread(target=store, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (final,) = list(a.files())
    assert final.read_bytes() in payloads
    assert sorted(p.name for p in a.tmp_dir.iterdir()) == ["incoming.part"] and not list(b.tmp_dir.iterdir())


def test_surveillance_and_model_version_stores_on_both_engines(tmp_path, db_url):
    """The stores merged later open through the same factory and run unchanged."""
    from aenode.infer.promotions import Promotions
    from aenode.surveil.store import Signal, SurveillanceStore

    with SurveillanceStore.for_data_dir(tmp_path, url=db_url) as st:
        assert st.backfill_found([("1.2.1", "20240301"), ("1.2.2", None)]) == 2
        assert st.backfill_found([("1.2.1", "20240301")]) == 0
        st.backfill_done("1.2.1", "retrieved")
        assert {(b.study_uid, b.state) for b in st.backfill_items()} >= {("1.2.1", "retrieved")}
        sig = Signal("k1", "2024-W10", "C2", 5, 3.2, "{}", 1.0)
        assert st.add_signals([sig]) == [sig] and st.add_signals([sig]) == []
        st.mark_signal_enqueued("k1")
        assert st.unqueued_signals() == [] and len(st.signals()) == 1
        st.note_submission(123.5)
        assert st.last_submission() == 123.5 and st.cursor() == 0 and st.records() == []
        st.check()
    promotions = Promotions.for_data_dir(tmp_path, url=db_url)
    try:
        promotions.promote("m", "1.0", user="admin")
        second = promotions.promote("m", "1.1", user="admin")
        assert second.previous == "1.0" and promotions.active() == {"m": "1.1"}
        assert [p.version for p in promotions.log("m")][-1] in ("1.0", "1.1")
    finally:
        promotions.close()


def test_index_reads_and_retention_on_both_engines(tmp_path, db_url):
    clock = Clock()
    idx = Index.for_data_dir(tmp_path, clock=clock, url=db_url)
    try:
        _complete(idx, "1.7.1", tmp_path)
        claim = idx.claim_next_complete("w", 60)
        idx.record_result("1.7.1", 1, "m", "typical", {"typical": 0.9}, detail={"timings_s": {"load": 0.5}})
        clock.t += 2
        idx.record_result("1.7.1", 1, "m", "negative", {"negative": 0.8})   # replaced: a new id
        assert idx.finish_study("1.7.1", claim.revision, "analysed")
        (latest,) = idx.latest_results(10)
        assert latest.category == "negative" and [r.id for r in idx.results_after(0, 10)] == [latest.id]
        st = idx.stats()
        assert st.instances["external"] == (1, 1) and st.studies_by_state["analysed"] == 1
        assert st.results_by_model_category == {("m", "negative"): 1}
        idx.mark_backfilled(["1.7.1", "1.7.1"])
        assert idx.is_backfilled("1.7.1") and not idx.is_backfilled("1.7.9") and idx.has_study("1.7.1")
        clock.t += 10
        assert [c.study_uid for c in idx.purge_candidates(clock.t)] == ["1.7.1"]
        purged = idx.purge_instances("1.7.1", 1)
        assert purged is not None and purged[0] == clock.t and len(purged[1]) == 1
        assert idx.purged_studies() == {"1.7.1": clock.t} and idx.instances("1.7.1") == []
    finally:
        idx.close()
