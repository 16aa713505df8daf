"""Two ``aenode serve`` processes, one PostgreSQL, one spool, real peers (DCMTK storescu,
Orthanc, a webhook receiver): every study analysed once, one SR per study and model in
the PACS, one alert per alerting study and model; a node killed mid-analysis loses its
study to the other node once the lease runs out."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import aenode.phantom as phantom
from aenode.alert.store import AlertStore
from aenode.deliver.outbox import Outbox
from aenode.peers.orthanc import Orthanc
from aenode.peers.webhook import WebhookServer
from aenode.store.index import ANALYSED, ANALYSING, FINAL_STATES, Index
from tests.pg import PgServer
from tests.store.twonode import analysed_counts, make_nodes, orthanc_sr_counts, send


def _wait(pred, timeout: float, what: str, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"not reached in {timeout} s: {what}")


def _series(tmp: Path, name: str, pattern: str, seed: int, slices: int,
            thickness: float = 3.0) -> tuple[str, list[Path]]:
    """A small chest CT that the models accept (<= 3 mm slices, >= 150 mm)."""
    s = phantom.generate_study(tmp / name, pattern, seed=seed, slices=slices, slice_thickness=thickness,
                               extra_series=False)
    folder = tmp / name / Path(s.series[0][3]).name
    return s.study_instance_uid, sorted(folder.glob("*.dcm"))


@pytest.fixture
def peers(tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc").start()
    webhook = WebhookServer().start()
    yield orthanc, webhook
    webhook.stop()
    orthanc.stop()


def _settled(url: str, data: Path, studies: list[str]) -> bool:
    index = Index.for_data_dir(data, url=url)
    box = Outbox(data / "outbox.sqlite", url=url)
    try:
        done = all((s := index.study(uid)) is not None and s.state in FINAL_STATES for uid in studies)
        return done and box.counts()["pending"] == 0 and box.counts()["sending"] == 0 and box.rows() != []
    finally:
        index.close()
        box.close()


def test_two_nodes_share_studies_and_analyse_each_once(tmp_path, postgres: PgServer, peers):
    orthanc, webhook = peers
    url = postgres.new_database()
    split_uid, split = _series(tmp_path, "split", "typical", 3, 60)
    a_uid, a_files = _series(tmp_path, "only-a", "typical", 4, 56)
    b_uid, b_files = _series(tmp_path, "only-b", "negative", 5, 56)
    studies = [split_uid, a_uid, b_uid]
    data = tmp_path / "shared-data"
    nodes = make_nodes(tmp_path, 2, url=url, orthanc=orthanc, webhook=webhook, data_dir=data,
                       quiet=2.0, after_release=0.3)
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        a, b = nodes
        # Half of one study's slices to each node at once, plus a whole study to each.
        senders = [send(a.port, split[0::2]), send(b.port, split[1::2]), send(a.port, a_files),
                   send(b.port, b_files)]
        for p in senders:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
        _wait(lambda: _settled(url, data, studies), 240, "every study analysed and delivered")
        time.sleep(1.5)   # a duplicate analysis or alert would show within a few polls
        index = Index.for_data_dir(data, url=url)
        alerts = AlertStore.for_data_dir(data, url=url)
        try:
            for uid in studies:
                s = index.study(uid)
                assert s is not None and (s.state, s.revision) == (ANALYSED, 1), (uid, s)
            assert index.study(split_uid).instance_count == 60
            assert analysed_counts(nodes) == {uid: 1 for uid in studies}
            # Exactly one SR per study and model in the PACS.
            srs = orthanc_sr_counts(orthanc)
            for uid in studies:
                models = {r.model for r in index.results(uid)}
                assert models and srs[uid] == len(models), (uid, srs, models)
            # One alert per alerting (study, model); none for the others.
            sent: dict[tuple[str, str], int] = {}
            for req in webhook.accepted:
                body = webhook.json(webhook.accepted.index(req))
                key = (body["study"]["study_instance_uid"], body["model"]["name"])
                sent[key] = sent.get(key, 0) + 1
            expected = {(uid, r.model): 1 for uid in studies for r in index.results(uid)
                        if (c := alerts.current_alert(uid, r.model)) is not None and c.alerting}
            assert expected and sent == expected
            # One dashboard for all: each node's web process reads the shared stores.
            for n in nodes:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{n.web_port}/healthz", timeout=30) as r:
                        health = json.loads(r.read())
                except urllib.error.HTTPError as exc:   # 503 names what failed
                    health = json.loads(exc.read())
                assert health["checks"]["database"]["ok"], health
        finally:
            index.close()
            alerts.close()
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.slow
def test_killed_node_loses_its_study_after_the_lease(tmp_path, postgres: PgServer, peers):
    orthanc, webhook = peers
    url = postgres.new_database()
    uid, files = _series(tmp_path, "k", "typical", 7, 160, thickness=1.25)
    data = tmp_path / "shared-data"
    lease = 4.0
    nodes = make_nodes(tmp_path, 2, url=url, orthanc=orthanc, webhook=webhook, data_dir=data,
                       quiet=1.0, after_release=0.2, lease=lease)
    index = Index.for_data_dir(data, url=url)
    box = Outbox(data / "outbox.sqlite", url=url)
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        p = send(nodes[0].port, files)
        assert p.wait(timeout=120) == 0
        claim = _wait(lambda: (s := index.study(uid)) is not None and s.state == ANALYSING and s, 60,
                      "the study claimed", interval=0.01)
        owner = next(n for n in nodes if claim.claimed_by.startswith(f"{n.name}@"))
        other = next(n for n in nodes if n is not owner)
        assert box.rows(study_uid=uid) == []          # killed before anything was published
        owner.kill9()
        killed_at = time.monotonic()
        done = _wait(lambda: (s := index.study(uid)) is not None and s.state in FINAL_STATES and s, 240,
                     "the other node finished the study")
        assert done.state == ANALYSED and done.claimed_by.startswith(f"{other.name}@")
        assert time.monotonic() - killed_at >= lease * 0.5   # not before the lease ran out
        assert analysed_counts([other]) == {uid: 1} and analysed_counts([owner]) == {}
        _wait(lambda: box.rows(study_uid=uid) and all(r.state == "sent" for r in box.rows(study_uid=uid)), 120,
              "results delivered")
        assert orthanc_sr_counts(orthanc)[uid] == len({r.model for r in index.results(uid)})
    finally:
        index.close()
        box.close()
        for n in nodes:
            n.stop()
