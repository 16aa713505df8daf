"""Dashboard and API: authentication, roles, CSRF, every endpoint, audit, no PHI in logs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from pydicom import dcmread

from aenode.config import ConfigError, parse_config
from tests.web.conftest import (
    ACCESSION,
    CANARY_NAME,
    MODEL,
    PATIENT_ID,
    TOKEN,
    free_port,
    login,
    open_app,
    session_csrf,
)

BEARER = {"Authorization": f"Bearer {TOKEN}"}
PAGES = ["/", "/alerts", "/studies", "/audit"]
APIS = ["/api/alerts", "/api/studies", "/api/outbox", "/api/audit", "/metrics"]


def test_unauthenticated_pages_redirect_to_login(client, web_env):
    for path in PAGES + [f"/studies/{web_env.study_uid}",
                         f"/studies/{web_env.study_uid}/sc.png?model={MODEL}&revision=1"]:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next="), path
        assert PATIENT_ID not in r.text
    for action in ("acknowledge", "confirm"):
        r = client.post(f"/studies/{web_env.study_uid}/{action}", data={"model": MODEL}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


def test_unauthenticated_api_is_401(client, web_env):
    for path in APIS + [f"/api/studies/{web_env.study_uid}", f"/api/studies/{web_env.study_uid}/results"]:
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.get("/api/alerts", headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401
    r = client.get("/api/alerts", headers={"Authorization": "Basic dmVyYTp4"})
    assert r.status_code == 401
    for path in (f"/api/studies/{web_env.study_uid}/acknowledge", f"/api/studies/{web_env.study_uid}/confirm"):
        assert client.post(path, json={"model": MODEL}).status_code == 401


def test_login(client):
    # No CSRF token: refused.
    r = client.post("/login", data={"username": "vera", "password": "viewer-pass-1"}, follow_redirects=False)
    assert r.status_code == 403
    assert login(client, "vera", "wrong").headers["location"].startswith("/login?error=1")
    assert login(client, "nobody", "wrong").headers["location"].startswith("/login?error=1")
    r = login(client, "vera")
    assert r.status_code == 303 and r.headers["location"] == "/alerts"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert client.get("/alerts").status_code == 200
    # Open redirect refused.
    page = client.get("/login?next=//evil.example/")
    assert 'name="next" value="/alerts"' in page.text
    # Logout needs the CSRF token too.
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    r = client.post("/logout", data={"csrf_token": session_csrf(client)}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.clear()
    assert client.get("/alerts", follow_redirects=False).status_code == 303


def test_tampered_session_is_rejected(client):
    login(client, "vera")
    value = client.cookies.get("aenode_session")
    client.cookies.set("aenode_session", value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
    assert client.get("/api/alerts").status_code == 401


def test_viewer_reads_everything_but_cannot_act(client, web_env):
    login(client, "vera")
    uid = web_env.study_uid
    alerts = client.get("/api/alerts").json()["alerts"]
    assert len(alerts) == 1
    a = alerts[0]
    assert a["study_uid"] == uid and a["category"] == "typical" and a["model"] == MODEL
    assert a["probability"] == pytest.approx(0.86) and a["acknowledged"] is None
    assert a["patient"]["patient_id"] == PATIENT_ID and a["patient"]["accession_number"] == ACCESSION
    assert "patient_name" not in a["patient"]

    page = client.get("/alerts")
    assert page.status_code == 200 and PATIENT_ID in page.text and uid in page.text
    assert CANARY_NAME not in page.text and "CANARY" not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]

    studies = client.get("/api/studies").json()["studies"]
    assert [s["study_uid"] for s in studies] == [uid]
    assert studies[0]["state"] == "analysed" and studies[0]["instances"] == len(web_env.sops)

    s = client.get(f"/api/studies/{uid}").json()
    assert s["results"][0]["category"] == "typical" and s["results"][0]["has_sc"] and s["results"][0]["has_sr"]
    assert s["results"][0]["involvement"] == 12.5
    assert s["results"][0]["classes"] == ["typical", "indeterminate", "atypical", "negative"]
    assert [x["analysed"] for x in s["series"]] == [True]
    assert s["history"][0]["revision"] == 1
    assert s["delivery"] == {} and s["alert_channels"] == {}
    assert "CANARY" not in json.dumps(s)
    res = client.get(f"/api/studies/{uid}/results").json()
    assert res["current"][0]["probabilities"]["typical"] == 0.86 and "patient" not in res

    page = client.get(f"/studies/{uid}")
    assert page.status_code == 200
    assert "ack-form" not in page.text and "confirm-form" not in page.text  # viewer: no action forms
    assert f"/studies/{uid}/sc.png?model={MODEL}&amp;revision=1" in page.text

    png = client.get(f"/studies/{uid}/sc.png", params={"model": MODEL, "revision": 1})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(png.content))
    sc = dcmread(web_env.data_dir / "results" / uid / MODEL / "r1" / "sc.dcm")
    assert img.mode == "RGB" and img.size == (sc.Columns, sc.Rows)
    assert client.get(f"/studies/{uid}/sc.png", params={"model": MODEL, "revision": 7}).status_code == 404
    assert client.get("/studies/1.2.3/sc.png", params={"model": "../../etc", "revision": 1}).status_code == 404
    assert client.get("/studies/not-a-uid").status_code == 404
    assert client.get("/api/studies/1.2.3").status_code == 404

    outbox = client.get("/api/outbox").json()
    assert outbox["counts"] == {"pending": 0, "sending": 0, "sent": 0, "failed": 0}

    # Forbidden actions (403, not 401): the right CSRF token does not help.
    csrf = session_csrf(client)
    r = client.post(f"/studies/{uid}/acknowledge", data={"model": MODEL, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 403
    r = client.post(f"/studies/{uid}/confirm", data={"model": MODEL, "category": "typical", "csrf_token": csrf,
                                                     "infection_status": "unknown", "radiologist_id": "R1"})
    assert r.status_code == 403
    r = client.post(f"/api/studies/{uid}/acknowledge", json={"model": MODEL}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403
    assert client.get("/audit").status_code == 403
    assert client.get("/api/audit").status_code == 403


def test_acknowledge_with_csrf(client, web_env):
    uid = web_env.study_uid
    login(client, "ines")
    form = {"model": MODEL, "note": "isolated, PCR ordered", "category": "typical", "revision": "1"}
    # Without and with a wrong CSRF token: refused, nothing stored.
    assert client.post(f"/studies/{uid}/acknowledge", data=form, follow_redirects=False).status_code == 403
    r = client.post(f"/studies/{uid}/acknowledge", data={**form, "csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    assert client.get("/api/alerts?unacknowledged=true").json()["alerts"]
    # The session's token works.
    page = client.get(f"/studies/{uid}")
    assert "ack-form" in page.text and "confirm-form" not in page.text  # infection-control: no confirm
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post(f"/studies/{uid}/acknowledge", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/studies/{uid}?done=acknowledged"
    a = client.get("/api/alerts").json()["alerts"][0]
    assert a["acknowledged"]["user"] == "ines" and a["acknowledged"]["note"] == "isolated, PCR ordered"
    assert client.get("/api/alerts?unacknowledged=true").json()["alerts"] == []
    assert "Acknowledged by ines" in client.get(f"/studies/{uid}").text
    # Stale guard: the client saw another category.
    r = client.post(f"/api/studies/{uid}/acknowledge", json={"model": MODEL, "category": "indeterminate"},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 409
    # JSON API with the cookie needs the header.
    assert client.post(f"/api/studies/{uid}/acknowledge", json={"model": MODEL}).status_code == 403
    r = client.post(f"/api/studies/{uid}/acknowledge", json={"model": MODEL, "note": "again"},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["user"] == "ines"
    assert client.post(f"/api/studies/{uid}/acknowledge", json={"model": "nope"},
                       headers={"X-CSRF-Token": csrf}).status_code == 404
    # Infection control may not confirm.
    r = client.post(f"/api/studies/{uid}/confirm", headers={"X-CSRF-Token": csrf}, json={
        "model": MODEL, "category": "typical", "infection_status": "pcr-positive", "radiologist_id": "R1"})
    assert r.status_code == 403
    audit = client.get("/api/audit").json()["audit"]
    acks = [e for e in audit if e["action"] == "acknowledge"]
    assert len(acks) == 2 and acks[-1]["user"] == "ines" and acks[-1]["study_uid"] == uid
    assert acks[-1]["detail"]["note"] == "isolated, PCR ordered"
    assert "isolated, PCR ordered" in client.get("/audit").text


def test_radiologist_confirms_and_corrects(client, web_env):
    uid = web_env.study_uid
    login(client, "rada")
    page = client.get(f"/studies/{uid}")
    assert "confirm-form" in page.text and "ack-form" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    form = {"model": MODEL, "category": "typical", "infection_status": "pcr-positive",
            "radiologist_id": "RAD-0042", "note": "agree"}
    assert client.post(f"/studies/{uid}/confirm", data=form, follow_redirects=False).status_code == 403
    assert client.post(f"/studies/{uid}/confirm", data={**form, "csrf_token": csrf + "x"},
                       follow_redirects=False).status_code == 403
    r = client.post(f"/studies/{uid}/confirm", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    r = client.post(f"/api/studies/{uid}/confirm", headers={"X-CSRF-Token": csrf}, json={
        "model": MODEL, "category": "indeterminate", "infection_status": "unknown", "radiologist_id": "RAD-0042"})
    assert r.status_code == 200 and r.json()["agrees"] is False and r.json()["verified_sr"] is None
    for bad in ({"category": "covid"}, {"infection_status": "maybe"}, {"radiologist_id": ""}):
        body = {"model": MODEL, "category": "typical", "infection_status": "unknown", "radiologist_id": "R", **bad}
        assert client.post(f"/api/studies/{uid}/confirm", headers={"X-CSRF-Token": csrf},
                           json=body).status_code == 422, bad
    s = client.get(f"/api/studies/{uid}").json()
    conf = s["confirmations"]
    assert [(c["category"], c["agrees"], c["infection_status"], c["radiologist_id"], c["user"]) for c in conf] == [
        ("typical", True, "pcr-positive", "RAD-0042", "rada"), ("indeterminate", False, "unknown", "RAD-0042", "rada")]
    assert all(c["at"] > 0 and c["revision"] == 1 and c["ai_category"] == "typical" for c in conf)
    page = client.get(f"/studies/{uid}").text
    assert "RAD-0042" in page and "corrected" in page
    actions = [e["action"] for e in client.get("/api/audit").json()["audit"]]
    assert "confirm" in actions and "correct" in actions
    # No verified SR unless configured.
    assert not list((web_env.data_dir / "results").rglob("sr-verified-*.dcm"))


def test_bearer_token(client, web_env):
    assert client.get("/api/alerts", headers=BEARER).status_code == 200
    r = client.get("/metrics", headers=BEARER)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    # The token's role is viewer: no actions (no CSRF needed, still 403 by role).
    r = client.post(f"/api/studies/{web_env.study_uid}/acknowledge", json={"model": MODEL}, headers=BEARER)
    assert r.status_code == 403


def test_metrics_from_databases(client, web_env):
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics", headers=BEARER).text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert value[("aenode_instances_received_total", (("origin", "external"),))] == len(web_env.sops)
    size = sum(p.stat().st_size for p in (web_env.data_dir / "spool").rglob("*.dcm"))
    assert value[("aenode_received_bytes_total", (("origin", "external"),))] == size
    assert value[("aenode_studies", (("state", "analysed"),))] == 1
    assert value[("aenode_studies", (("state", "receiving"),))] == 0
    assert value[("aenode_results_total", (("category", "typical"), ("model", MODEL)))] == 1
    assert value[("aenode_dashboard_alerts", (("acknowledged", "false"),))] == 1
    assert value[("aenode_stage_seconds_count", (("stage", "result"),))] == 1
    assert "process_cpu_seconds_total" in {s.name for f in fams.values() for s in f.samples}
    assert PATIENT_ID not in text and ACCESSION not in text and web_env.study_uid not in text


def test_security_headers_and_static(client):
    r = client.get("/static/style.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/static/missing.css").status_code == 404
    r = client.get("/login")
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_no_patient_data_in_logs(web_env):
    from fastapi.testclient import TestClient

    from aenode.logs import configure_logging

    buf = io.StringIO()
    configure_logging("DEBUG", json=True, stream=buf)
    try:
        with open_app(web_env.config) as app, TestClient(app, base_url="http://127.0.0.1") as c:
            login(c, "ines")
            c.get("/alerts")
            c.get(f"/studies/{web_env.study_uid}")
            csrf = session_csrf(c)
            c.post(f"/api/studies/{web_env.study_uid}/acknowledge", headers={"X-CSRF-Token": csrf},
                   json={"model": MODEL, "note": f"patient {PATIENT_ID} isolated"})
            c.get("/healthz")
            c.get("/metrics")
    finally:
        configure_logging("INFO")
    out = buf.getvalue()
    assert "alert_acknowledged" in out and "web_login" in out
    for secret in (PATIENT_ID, ACCESSION, "CANARY", "infection-pass-1"):
        assert secret not in out, secret


def test_default_admin_on_loopback(tmp_path):
    """The generated admin password goes to a private file only: never to stderr nor the log."""
    from fastapi.testclient import TestClient

    from aenode.logs import configure_logging
    from aenode.web.auth import read_admin_password

    config = parse_config({"node": {"data_dir": str(tmp_path / "d")}, "web": {"port": free_port()}})
    buf, err, out = io.StringIO(), io.StringIO(), io.StringIO()
    configure_logging("DEBUG", json=True, stream=buf)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), open_app(config):
            pass
        pw_file = tmp_path / "d" / "web" / "admin-password"
        password = pw_file.read_text().strip()
        assert oct(pw_file.stat().st_mode & 0o777) == "0o600" and len(password) >= 20
        assert oct(pw_file.parent.stat().st_mode & 0o777) == "0o700"
        assert read_admin_password(tmp_path / "d") == password  # what the demo prints on its own terminal
        with open_app(config) as app2, TestClient(app2, base_url="http://127.0.0.1") as c:  # same password
            assert login(c, "admin", "wrong").headers["location"].startswith("/login?error")
            assert login(c, "admin", password).headers["location"] == "/alerts"
            assert c.get("/api/alerts").status_code == 200
    finally:
        configure_logging("INFO")
    assert "web_default_admin" in buf.getvalue() and str(pw_file) in buf.getvalue()
    for text in (err.getvalue(), out.getvalue(), buf.getvalue()):
        assert password not in text
    secret = tmp_path / "d" / "web" / "session-secret"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"


def test_non_loopback_without_users_is_refused(tmp_path, hashes):
    with pytest.raises(ConfigError) as exc:
        parse_config({"node": {"data_dir": str(tmp_path)}, "web": {"host": "0.0.0.0"}})
    assert "web" in str(exc.value) and "users" in str(exc.value)
    parse_config({"node": {"data_dir": str(tmp_path)}, "web": {"host": "0.0.0.0", "enabled": False}})
    parse_config({"node": {"data_dir": str(tmp_path)}, "web": {
        "host": "0.0.0.0", "users": [{"name": "a", "role": "viewer", "password_hash": hashes["vera"]}]}})
    with pytest.raises(ConfigError) as exc:
        parse_config({"web": {"users": [{"name": "a", "role": "admin", "password_hash": hashes["vera"]}]}})
    assert "web.users[0].role" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_config({"web": {"users": [{"name": "a", "role": "viewer", "password_hash": "plain"}]}})
    assert "web.users[0].password_hash" in str(exc.value)


def test_hash_password_cli(tmp_path):
    from aenode.web.auth import verify_password

    r = subprocess.run([sys.executable, "-m", "aenode", "web", "hash-password", "--stdin"], input="s3cret-pass\n",
                       capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("$argon2id$") and verify_password(h, "s3cret-pass") and not verify_password(h, "x")
    r = subprocess.run([sys.executable, "-m", "aenode", "web", "new-token"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and re.search(r"token_sha256.*: +[0-9a-f]{64}", r.stdout)


def test_reissue_verified_sr(tmp_path, web_env, hashes):
    from fastapi.testclient import TestClient

    from aenode.deliver.outbox import Outbox
    from tests.web.conftest import web_section

    config = parse_config({
        "node": {"data_dir": str(web_env.data_dir), "name": "web-test-node"},
        "model": {"path": str(web_env.config.model.path)},
        "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
        "web": web_section(hashes, reissue_verified_sr=True),
    })
    uid = web_env.study_uid
    with open_app(config) as app, TestClient(app, base_url="http://127.0.0.1") as c:
        login(c, "rada")
        csrf = session_csrf(c)
        body = {"model": MODEL, "category": "typical", "infection_status": "pcr-positive", "radiologist_id": "RAD-7"}
        r = c.post(f"/api/studies/{uid}/confirm", headers={"X-CSRF-Token": csrf}, json=body)
        assert r.status_code == 200 and r.json()["verified_sr"], r.text
        # A correction is stored but never becomes a verified SR.
        r2 = c.post(f"/api/studies/{uid}/confirm", headers={"X-CSRF-Token": csrf},
                    json={**body, "category": "negative"})
        assert r2.status_code == 200 and r2.json()["verified_sr"] is None
    path = web_env.data_dir / r.json()["verified_sr"]
    original = dcmread(path.parent / "sr.dcm")
    ds = dcmread(path)
    assert original.VerificationFlag == "UNVERIFIED"
    assert ds.VerificationFlag == "VERIFIED" and ds.PreliminaryFlag == "FINAL"
    obs = ds.VerifyingObserverSequence[0]
    assert str(obs.VerifyingObserverName) == "rada"
    assert obs.VerifyingObserverIdentificationCodeSequence[0].CodeValue == "RAD-7"
    assert ds.SOPInstanceUID != original.SOPInstanceUID and ds.SeriesInstanceUID == original.SeriesInstanceUID
    pred = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert ds.ContentSequence == original.ContentSequence
    with Outbox.for_config(config) as box:
        rows = box.rows(study_uid=uid)
    assert [(r.kind, r.destination, r.object_id) for r in rows] == [("dicom", "pacs", str(ds.SOPInstanceUID))]
    if shutil.which("dciodvfy"):
        v = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (v.stdout + v.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, "\n".join(errors)
    if os.path.exists("/usr/bin/dsrdump"):
        d = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, timeout=60)
        assert d.returncode == 0 and "VERIFIED" in d.stdout, d.stderr
