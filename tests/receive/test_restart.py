"""Crash and restart: kill -9 mid-study, re-send, persisted states; TLS handshakes."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

from pydicom.uid import generate_uid
from pynetdicom import AE

from aenode.node import running_node
from aenode.store.index import ANALYSED, ANALYSING, COMPLETE, RECEIVING, SKIPPED, Index

from .conftest import echoscu, make_config, storescu, wait_for, write_toml
from .dicomgen import ct_slice, save


def _indexed(db: Path, study_uid: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as c:
            return c.execute("SELECT COUNT(*) FROM instances WHERE study_uid=?", (study_uid,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def _serve(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(cfg)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def test_kill9_mid_study_then_resend(tmp_path):
    n = 120
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "study"
    for i in range(n):
        save(ct_slice(study_uid, series_uid, i, size=256), folder / f"ct{i:03d}.dcm")
    # quiet timer long enough that the resend (not the timer) finishes the study
    config = make_config(tmp_path, stability={"quiet_seconds": 8.0, "after_release_seconds": 0.5})
    cfg = write_toml(tmp_path / "node.toml", config)
    db = config.node.data_dir / "index.sqlite"
    log = tmp_path / "node.log"
    port = config.node.port

    node = _serve(cfg, log)
    try:
        wait_for(lambda: echoscu(port).returncode == 0, timeout=30, interval=0.2)
        sender = subprocess.Popen(["/usr/bin/storescu", "-aec", "AENODE", "127.0.0.1", str(port), "+sd", str(folder)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
        wait_for(lambda: _indexed(db, study_uid) >= 5, timeout=30, interval=0.005)
        node.send_signal(signal.SIGKILL)
        node.wait(10)
        sender.wait(60)
        before = _indexed(db, study_uid)
        assert 5 <= before < n, "the kill must land mid-study"

        node = _serve(cfg, log)
        wait_for(lambda: echoscu(port).returncode == 0, timeout=30, interval=0.2)
        idx = Index.for_data_dir(config.node.data_dir)
        assert idx.study(study_uid).state == RECEIVING  # in flight at kill time
        r = storescu(port, folder)  # the scanner re-sends the whole study
        assert r.returncode == 0, r.stderr
        # complete, or already taken further by the analysis process of ``aenode serve``
        # (this synthetic study is skipped within milliseconds of completing)
        wait_for(lambda: idx.study(study_uid).state in (COMPLETE, ANALYSING, ANALYSED, SKIPPED), timeout=15)
        study = idx.study(study_uid)
        assert study.instance_count == n and study.revision == 1  # completed once
        files = list((config.node.data_dir / "spool" / study_uid).rglob("*.dcm"))
        assert len(files) == n and len({f.name for f in files}) == n
        assert not list((config.node.data_dir / "spool" / ".tmp").iterdir())
        idx.close()
    finally:
        node.terminate()
        node.wait(15)
    assert node.returncode == 0  # SIGTERM: clean shutdown
    text = log.read_text()
    assert "CANARY" not in text and "CANARYID123" not in text


def test_restart_keeps_states(tmp_path):
    config = make_config(tmp_path, stability={"quiet_seconds": 0.5, "after_release_seconds": 0.2})
    uids = [generate_uid() for _ in range(3)]
    for k, uid in enumerate(uids):
        save(ct_slice(uid, generate_uid(), 0), tmp_path / "in" / f"{k}.dcm")
    with running_node(config, workers=()) as node:
        assert storescu(node.port, tmp_path / "in").returncode == 0
        assert node.scp.flush_index(10)
        wait_for(lambda: all(node.index.study(u).state == COMPLETE for u in uids), timeout=10)
        claims = [node.index.claim_next_complete("w1") for _ in range(2)]
        assert all(claims)
        done, running = claims
        assert node.index.finish_study(done.study_uid, done.revision, ANALYSED)
    # restart: the unfinished analysis goes back to complete; finished work stays finished
    with running_node(config, workers=()) as node:
        states = {u: node.index.study(u).state for u in uids}
        assert states[done.study_uid] == ANALYSED
        assert states[running.study_uid] == COMPLETE
        assert list(states.values()).count(COMPLETE) == 2
        # the stale claim from before the restart cannot finish the study
        again = node.index.claim_next_complete("w2")
        assert again is not None
        time.sleep(0.8)
        assert node.index.study(done.study_uid).state == ANALYSED  # not re-run


def test_receiving_study_completes_by_persisted_timer_after_restart(tmp_path):
    config = make_config(tmp_path, stability={"quiet_seconds": 1.5, "after_release_seconds": 0})
    uid = generate_uid()
    save(ct_slice(uid, generate_uid(), 0), tmp_path / "a.dcm")
    with running_node(config, workers=()) as node:
        assert storescu(node.port, tmp_path / "a.dcm").returncode == 0
        assert node.scp.flush_index(10)
        assert node.index.study(uid).state == RECEIVING
        last = node.index.study(uid).last_arrival
    with running_node(config, workers=()) as node:
        wait_for(lambda: node.index.study(uid).state == COMPLETE, timeout=10)
        assert time.time() - last >= 1.5


def _certs(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"], capture_output=True)
    assert r.returncode == 0, r.stderr
    return cert, key


def test_tls_and_idle_tls_client_does_not_block(tmp_path):
    cert, key = _certs(tmp_path)
    config = make_config(tmp_path, node={"tls": {"cert": str(cert), "key": str(key),
                                                 "handshake_timeout_seconds": 2}})
    with running_node(config, workers=()) as node:
        idle = socket.create_connection(("127.0.0.1", node.port))  # never starts the handshake
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
            ctx.check_hostname = False
            ae = AE(ae_title="TLSSCU")
            ae.add_requested_context("1.2.840.10008.1.1")
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
            t0 = time.monotonic()
            assoc = ae.associate("127.0.0.1", node.port, ae_title="AENODE", tls_args=(ctx, None))
            assert assoc.is_established and time.monotonic() - t0 < 1.5
            uid = generate_uid()
            status = assoc.send_c_store(ct_slice(uid, generate_uid(), 0))
            assert status.Status == 0
            assoc.release()
            assert len(node.index.instances(uid)) == 1
            # a plain (non-TLS) DICOM client gets nowhere
            assert echoscu(node.port).returncode != 0
        finally:
            idle.close()
