"""DICOMweb STOW-RS destination against a real Orthanc with its DICOMweb plugin.

Rows are enqueued as the report stage does for a ``[[destinations]]`` entry: ``kind`` =
the destination's type, ``destination`` = its name, payload = the DICOM file's absolute
path, object_id = its SOP Instance UID.  Response semantics that Orthanc cannot be made
to produce on demand (202 with a failed instance, 503, bearer tokens) are checked
against a small real HTTP server on loopback (``StowServer``).
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from aenode.cli import main as aenode_main
from aenode.config import ConfigError, load_config, parse_config
from aenode.deliver.destinations import find_destination, probe, transport_warnings
from aenode.deliver.outbox import Outbox
from aenode.report.publish import write_results
from tests.deliver.conftest import NODE_AE
from tests.deliver.test_delivery import drain
from tests.orthanc import Orthanc, free_port
from tests.report.factory import make_input


def write_config(tmp_path: Path, dest: dict[str, object], **delivery: object):
    d: dict[str, object] = {"max_attempts": 50, "backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.3,
                            "poll_seconds": 0.1, "timeout_seconds": 5}
    d.update(delivery)
    tmp_path.mkdir(parents=True, exist_ok=True)
    lines = [f'[node]\ndata_dir = "{tmp_path / "data"}"\nae_title = "{NODE_AE}"\n', "[delivery]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in d.items()]
    lines.append("[[destinations]]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in dest.items()]
    toml = tmp_path / "aenode.toml"
    toml.write_text("\n".join(lines) + "\n")
    return load_config(toml), toml


def enqueue_result(config, n: int = 6, seed_uid: str | None = None) -> tuple[str, list[Path], list[int]]:
    """Write an SR + SC and enqueue them for every destination, as the report stage does."""
    inp = make_input(n=n)
    paths = write_results(config.node.data_dir, inp, node_name="aenode")
    ids = []
    with Outbox.for_config(config) as box:
        for p in paths:
            uid = str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for dest in config.destinations:
                ids.append(box.enqueue(dest.type, dest.name, uid, str(p.resolve()), study_uid=inp.study_instance_uid))
    return inp.study_instance_uid, paths, ids


def study_instances(pacs: Orthanc, study_uid: str) -> list[dict]:
    return [t for t in pacs.all_tags() if t.get("StudyInstanceUID") == study_uid]


@pytest.fixture(scope="module")
def web_pacs(tmp_path_factory):
    o = Orthanc(tmp_path_factory.mktemp("webpacs"), dicomweb=True).start()
    yield o
    o.stop()


def test_stow_delivers_sr_and_sc_into_the_study(tmp_path, web_pacs, capsys):
    config, toml = write_config(tmp_path, {"type": "dicomweb", "name": "web", "url": web_pacs.dicomweb_url,
                                           "insecure": True})
    study, paths, ids = enqueue_result(config)
    box = drain(config)
    assert [box.get(i).state for i in ids] == ["sent", "sent"], [box.get(i).last_error for i in ids]
    got = study_instances(web_pacs, study)
    assert sorted(t["Modality"] for t in got) == ["OT", "SR"]
    assert {t["SOPInstanceUID"] for t in got} == {str(dcmread(p).SOPInstanceUID) for p in paths}
    assert box.summary_for_study(study)["web"]["state"] == "sent"
    assert probe(config, config.destinations[0]) == (True, "ok")
    assert aenode_main(["echo", "--config", str(toml), "--timeout", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"web\t{web_pacs.dicomweb_url}\tOK")
    # at-least-once: a resend (a crash between POST and mark_sent) leaves one copy per UID
    from aenode.deliver.destinations import dicomweb

    dest = find_destination(config, "web")
    assert dest is not None
    assert set(dicomweb.send(config, dest, [box.get(i) for i in ids]).values()) == {None}
    assert len(study_instances(web_pacs, study)) == 2


def test_orthanc_down_then_up_gives_exactly_one_copy(tmp_path):
    pacs = Orthanc(tmp_path / "pacs", dicomweb=True)  # configured, not started yet
    config, _ = write_config(tmp_path, {"type": "dicomweb", "name": "web", "url": pacs.dicomweb_url,
                                        "insecure": True})
    study, _, ids = enqueue_result(config)
    box = drain(config, timeout=1.0)
    rows = [box.get(i) for i in ids]
    assert all(r.state == "pending" and r.attempts >= 1 and "ConnectError" in (r.last_error or "") for r in rows)
    assert probe(config, config.destinations[0], 2)[0] is False
    pacs.start()
    try:
        box = drain(config)
        assert [box.get(i).state for i in ids] == ["sent", "sent"]
        # the report stage enqueueing again after a crash is a no-op:
        with Outbox.for_config(config) as b2:
            for r in rows:
                assert b2.enqueue(r.kind, r.destination, r.object_id, r.payload, study_uid=study) == r.id
        assert drain(config).counts() == {"pending": 0, "sending": 0, "sent": 2, "failed": 0}
        assert len(study_instances(pacs, study)) == 2
        assert len(pacs.instances()) == 2
    finally:
        pacs.stop()


def test_basic_auth_permanent_failure_then_retry_delivers(tmp_path, capsys):
    pacs = Orthanc(tmp_path / "pacs", dicomweb=True, users={"aenode": "right-password"}).start()
    try:
        dest = {"type": "dicomweb", "name": "web", "url": pacs.dicomweb_url, "insecure": True,
                "username": "aenode", "password": "wrong-password"}
        config, toml = write_config(tmp_path, dest)
        ok, detail = probe(config, config.destinations[0], 3)
        assert not ok and "401" in detail
        study, _, ids = enqueue_result(config)
        box = drain(config)
        for i in ids:  # 401 is final at once: no 50 attempts against a wrong password
            r = box.get(i)
            assert (r.state, r.attempts) == ("failed", 1) and "HTTP 401" in (r.last_error or "")
        assert study_instances(pacs, study) == []
        # the operator fixes the password and retries
        config, toml = write_config(tmp_path, {**dest, "password": "right-password"})
        assert probe(config, config.destinations[0], 3) == (True, "ok")
        assert aenode_main(["retry", "--config", str(toml), "--all"]) == 0
        assert "requeued 2 failed deliveries" in capsys.readouterr().out
        box = drain(config)
        assert [box.get(i).state for i in ids] == ["sent", "sent"]
        assert sorted(t["Modality"] for t in study_instances(pacs, study)) == ["OT", "SR"]
    finally:
        pacs.stop()


class StowServer:
    """A minimal real STOW-RS endpoint: answers each POST with the next scripted
    (status, failed-UIDs) and records the Authorization header and body size."""

    def __init__(self, script: list[tuple[int, dict[str, int]]], tls: tuple[Path, Path] | None = None):
        self.script = list(script)
        self.seen: list[tuple[str | None, str, int]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                owner.seen.append((self.headers.get("Authorization"), self.headers.get("Content-Type", ""),
                                   len(body)))
                status, failed = owner.script.pop(0) if owner.script else (200, {})
                doc: dict[str, object] = {}
                if failed:
                    doc["00081198"] = {"vr": "SQ", "Value": [
                        {"00081155": {"vr": "UI", "Value": [u]}, "00081197": {"vr": "US", "Value": [r]}}
                        for u, r in failed.items()]}
                    ok = [u for u in owner.uids(body) if u not in failed]
                    doc["00081199"] = {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [u]}} for u in ok]}
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.known: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        scheme = "http"
        if tls is not None:  # (certificate, key)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/rs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def uids(self, body: bytes) -> list[str]:
        return [u for u in self.known if u.encode() in body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stow_status_semantics_and_bearer_token(tmp_path):
    srv = StowServer([(503, {}), (202, {}), (200, {})])
    try:
        config, _ = write_config(tmp_path, {"type": "dicomweb", "name": "web", "url": srv.url, "insecure": True,
                                            "token": "canary-token-123"})
        _, paths, ids = enqueue_result(config)
        sr_uid, sc_uid = (str(dcmread(p).SOPInstanceUID) for p in paths)
        srv.known = [sr_uid, sc_uid]
        srv.script = [(503, {}), (202, {sc_uid: 0xA700}), (202, {sc_uid: 0xC000})]
        box = drain(config)
        sr, sc = (box.get(i) for i in ids)
        assert sr.state == "sent" and sr.attempts == 2  # 503 retried, then stored in the 202
        assert sc.state == "failed" and sc.attempts == 3  # A700 (out of resources) retried, C000 final
        assert "0xC000" in (sc.last_error or "")
        assert all(auth == "Bearer canary-token-123" for auth, _, _ in srv.seen)
        assert all(ct.startswith("multipart/related") and 'type="application/dicom"' in ct for _, ct, _ in srv.seen)
        assert len(srv.seen) == 3 and all(size > 1000 for _, _, size in srv.seen)
        srv.script = [(400, {})]
        box.requeue(all_failed=True)
        box = drain(config)
        assert box.get(sc.id).state == "failed" and box.get(sc.id).attempts == 1  # 4xx: final at once
        srv.script = [(429, {}), (200, {})]
        box.requeue(all_failed=True)
        box = drain(config)
        assert box.get(sc.id).state == "sent" and box.get(sc.id).attempts == 2  # 429: retried
    finally:
        srv.close()


def test_destination_config_union_and_transport_rules(tmp_path):
    base = {"node": {"data_dir": str(tmp_path)}}
    c = parse_config({**base, "destinations": [{"name": "p", "ae_title": "PACS", "host": "h", "port": 104}]})
    assert c.destinations[0].type == "dicom"  # default: the first wave's keys still work
    with pytest.raises(ConfigError, match="http:// sends patient data in clear"):
        parse_config({**base, "destinations": [{"type": "dicomweb", "name": "w", "url": "http://pacs/rs"}]})
    with pytest.raises(ConfigError, match="token and username"):
        parse_config({**base, "destinations": [{"type": "dicomweb", "name": "w", "url": "https://pacs/rs",
                                                 "token": "t", "username": "u", "password": "p"}]})
    with pytest.raises(ConfigError, match="basic auth needs both"):
        parse_config({**base, "destinations": [{"type": "dicomweb", "name": "w", "url": "https://pacs/rs",
                                                 "username": "u"}]})
    with pytest.raises(ConfigError, match=r"destinations\[0\]"):
        parse_config({**base, "destinations": [{"type": "ftp", "name": "w"}]})
    with pytest.raises(ConfigError, match="ae_title"):  # dicom keys on a dicomweb entry are unknown keys
        parse_config({**base, "destinations": [{"type": "dicomweb", "name": "w", "url": "https://pacs/rs",
                                                 "ae_title": "X"}]})
    c = parse_config({**base, "destinations": [
        {"name": "plain", "ae_title": "PACS", "host": "h", "port": 104},
        {"name": "tls", "ae_title": "PACS", "host": "h", "port": 2762, "tls": {"ca_file": "/ca.pem"}},
        {"name": "noverify", "ae_title": "PACS", "host": "h", "port": 2762, "tls": {"verify": False}},
        {"type": "dicomweb", "name": "web-clear", "url": "http://pacs/rs", "insecure": True},
        {"type": "dicomweb", "name": "web-tls", "url": "https://pacs/rs", "token": "t"},
    ]})
    warnings = transport_warnings(c)
    assert len(warnings) == 3
    assert [w.split("]")[0] for w in warnings] == ["destinations[plain", "destinations[noverify",
                                                     "destinations[web-clear"]


def test_rows_route_by_destination_type(tmp_path, web_pacs):
    """The worker routes ``kind = dest.type`` rows to that type's sender; a row whose kind
    does not match its destination's type, or names no configured destination, fails for
    good (a configuration change, not a network problem) instead of retrying 50 times."""
    config, _ = write_config(tmp_path, {"type": "dicomweb", "name": "web", "url": web_pacs.dicomweb_url,
                                        "insecure": True})
    _, paths, _ = enqueue_result(config)
    with Outbox.for_config(config) as box:
        wrong_type = box.enqueue("dicom", "web", "2.25.11", str(paths[0]))
        gone = box.enqueue("dicomweb", "removed-pacs", "2.25.12", str(paths[0]))
    box = drain(config)
    assert box.get(wrong_type).state == "failed" and "is of type 'dicomweb'" in (box.get(wrong_type).last_error or "")
    assert box.get(gone).state == "failed" and "not configured" in (box.get(gone).last_error or "")
    assert box.get(gone).attempts == 1
    assert box.counts()["sent"] == 2
