"""From a recorded result in the index to exactly one alert per channel, through the
durable outbox, against real peers (HTTP server, aiosmtpd, MLLP listener)."""

from __future__ import annotations

import io
import json
import logging

from aenode.alert.base import alert_key, hl7_control_id
from aenode.alert.channels.webhook import SIGNATURE_HEADER, verify_signature
from aenode.alert.store import AlertStore
from aenode.logs import configure_logging
from tests.alert.conftest import all_channels
from tests.alert.helpers import ACCESSION, CANARY_BIRTH, CANARY_NAME, MODEL, PATIENT_ID, drive, outbox_rows
from tests.alert.servers import MLLPServer, SMTPServer, WebhookServer


def test_typical_result_alerts_once_on_every_channel(env, peers):
    wh, sm, ml = peers
    config = env.config(all_channels(wh, sm, ml))
    env.record("Typical")
    drive(config, env.index)
    drive(config, env.index)  # a second pass (a restart) sends nothing more
    assert len(wh.requests) == 1 and len(sm.messages) == 1 and len(ml.messages) == 1

    req = wh.accepted[0]
    body = json.loads(req["body"])
    assert verify_signature(req["body"], "shared-s3cret", req["headers"][SIGNATURE_HEADER])
    assert req["headers"]["Idempotency-Key"] == alert_key(env.study_uid, 1, MODEL, "webhook") == body["alert_id"]
    assert body["category"] == "Typical" and body["probability"] == 0.91 and body["update"] is False
    assert body["category_code"] == {"code_value": "COV-T", "scheme_designator": "99AENCOV",
                                     "meaning": "Typical appearance"}
    study = body["study"]
    assert (study["study_date"], study["study_time"], study["study_datetime"]) == (
        "20240315", "093015.25", "2024-03-15T09:30:15")
    assert study["accession_number"] == ACCESSION and body["patient"] == {"id": PATIENT_ID}
    assert study["station_name"] == "CT-SCANNER-1" and study["institution_name"] == "Test Hospital"
    assert body["node"] == "ic-node-1" and body["model"] == {"name": MODEL, "version": "1.2.0"}
    assert body["link"] == f"http://127.0.0.1:8400/studies/{env.study_uid}"
    # Nothing else from the header.
    raw = req["body"].decode()
    assert "REFERRER" not in raw and "DESCRIPTION" not in raw

    msg = sm.parsed()
    assert sm.messages[0]["to"] == ["ic@example.org", "ic2@example.org"]
    assert "Typical" in msg["Subject"] and PATIENT_ID not in msg["Subject"] and ACCESSION not in msg["Subject"]
    assert msg["Message-ID"] == f"<alert-{alert_key(env.study_uid, 1, MODEL, 'smtp')}@ic-node-1.aenode>"
    text = msg.get_content()
    assert PATIENT_ID in text and ACCESSION in text and "/studies/" in text

    hl7 = ml.messages[0]
    assert hl7["control_id"] == hl7_control_id(alert_key(env.study_uid, 1, MODEL, "hl7"))
    seg = {line.split("|")[0] + line.split("|")[1]: line for line in hl7["text"].split("\r") if line}
    assert seg["PID1"].split("|")[3] == PATIENT_ID
    assert seg["OBR1"].split("|")[3] == ACCESSION
    assert seg["OBX1"].split("|")[5] == "COV-T^Typical appearance^99AENCOV"
    assert seg["OBX2"].split("|")[2] == "NM"

    rows = outbox_rows(config)
    assert sorted(r.kind for r in rows) == ["hl7", "smtp", "webhook"]
    assert all(r.state == "sent" and r.attempts == 1 and r.study_uid == env.study_uid for r in rows)


def test_negative_result_sends_nothing(env, peers):
    wh, sm, ml = peers
    config = env.config(all_channels(wh, sm, ml))
    env.record("Negative")
    env.record("Atypical", revision=2)
    drive(config, env.index)
    assert (wh.requests, sm.messages, ml.messages) == ([], [], [])
    assert outbox_rows(config) == []


def test_channels_that_are_down_get_the_alert_when_back(env, cert):
    # Webhook answers 503 twice, HL7 AE once, SMTP is not listening at first (all over TLS).
    crt, key = cert
    wh = WebhookServer(statuses=[503, 503], cert=crt, key=key).start()
    ml = MLLPServer(codes=["AE"], cert=crt, key=key).start()
    sm = SMTPServer(security="starttls", cert=crt, key=key)
    try:
        config = env.config(all_channels(wh, sm, ml))
        env.record("Typical")
        drive(config, env.index, timeout=1.5)
        assert [r["status"] for r in wh.requests] == [503, 503, 200]
        assert [m["ack"] for m in ml.messages] == ["AE", "AA"]
        assert len({m["control_id"] for m in ml.messages}) == 1
        assert len({r["headers"]["Idempotency-Key"] for r in wh.requests}) == 1
        smtp_row = next(r for r in outbox_rows(config) if r.kind == "smtp")
        assert smtp_row.state == "pending" and smtp_row.attempts >= 2 and "smtp" in smtp_row.last_error
        sm.start()
        drive(config, env.index)
        assert len(sm.messages) == 1
        assert all(r.state == "sent" for r in outbox_rows(config))
    finally:
        for p in (wh, ml, sm):
            p.stop()


def test_channel_down_beyond_max_attempts_is_failed_then_retry(env):
    from aenode.deliver.outbox import Outbox

    wh = WebhookServer(statuses=[500] * 3).start()
    try:
        config = env.config({"webhook": {"url": wh.url, "insecure": True}},
                            delivery={"max_attempts": 3, "backoff_base_seconds": 0.05,
                                      "backoff_cap_seconds": 0.1, "poll_seconds": 0.05})
        env.record("Typical")
        drive(config, env.index)
        (row,) = outbox_rows(config)
        assert row.state == "failed" and row.attempts == 3 and row.last_error == "webhook: HTTP 500"
        with Outbox.for_config(config) as ob:  # what `aenode retry` does
            assert ob.requeue(all_failed=True) == 1
        drive(config, env.index)
        assert [r["status"] for r in wh.requests] == [500, 500, 500, 200]
        assert outbox_rows(config)[0].state == "sent"
    finally:
        wh.stop()


def test_revisions_raise_lower_and_raise_again(env, peers):
    wh, sm, ml = peers
    config = env.config(all_channels(wh, sm, ml))
    env.record("Negative", revision=1)
    drive(config, env.index)
    assert wh.requests == []
    env.record("Typical", revision=2)  # late slices: Negative -> Typical alerts
    drive(config, env.index)
    env.record("Typical", revision=3)  # same category: no duplicate
    drive(config, env.index)
    env.record("Negative", revision=4)  # lowered: an update marked as such
    drive(config, env.index)
    bodies = [json.loads(r["body"]) for r in wh.accepted]
    assert [(b["category"], b["update"], b["previous_category"], b["cleared"], b["study"]["result_revision"])
            for b in bodies] == [("Typical", False, None, False, 2), ("Negative", True, "Typical", True, 4)]
    assert len(sm.messages) == 2 and sm.parsed(1)["Subject"].strip().startswith("[aenode ic-node-1] UPDATE:")
    assert "lowered from Typical to Negative" in sm.parsed(1)["Subject"]
    assert len(ml.messages) == 2 and "|C\r" in ml.messages[1]["text"] + "\r"
    assert "covid19-ct-previous-category" in ml.messages[1]["text"]
    assert len({m["control_id"] for m in ml.messages}) == 2


def test_typical_to_indeterminate_is_an_update(env, peers):
    wh, sm, ml = peers
    config = env.config(all_channels(wh, sm, ml))
    env.record("Typical", revision=1)
    drive(config, env.index)
    env.record("Indeterminate", revision=2)
    drive(config, env.index)
    b = [json.loads(r["body"]) for r in wh.accepted]
    assert [(x["category"], x["update"], x["previous_category"], x["cleared"]) for x in b] == [
        ("Typical", False, None, False), ("Indeterminate", True, "Typical", False)]


def test_late_older_revision_is_ignored(env, peers):
    wh, sm, ml = peers
    config = env.config({"webhook": {"url": wh.url}})
    env.record("Negative", revision=2)
    drive(config, env.index)
    env.record("Typical", revision=1)  # an out-of-date revision recorded late
    drive(config, env.index)
    assert wh.requests == []


def test_per_channel_category_override(env, peers):
    wh, sm, ml = peers
    config = env.config(all_channels(wh, sm, ml, smtp={"categories": ["Typical"]},
                                     hl7={"categories": ["Typical", "Indeterminate", "Atypical"]}))
    env.record("Indeterminate")
    drive(config, env.index)
    assert len(wh.accepted) == 1 and json.loads(wh.accepted[0]["body"])["category"] == "Indeterminate"
    assert sm.messages == []  # e-mail only for Typical
    assert len(ml.messages) == 1
    env.record("Atypical", revision=2)
    drive(config, env.index)
    # Webhook: Indeterminate -> Atypical is a lowering update; HL7 alerts Atypical (update); smtp nothing.
    assert json.loads(wh.accepted[1]["body"])["cleared"] is True
    assert "COV-A^Atypical appearance" in ml.messages[1]["text"] and sm.messages == []


def test_canary_never_leaks_with_default_configuration(env, peers):
    wh, sm, ml = peers
    log = io.StringIO()
    configure_logging("DEBUG", json=True, stream=log)
    # aiosmtpd runs in this process as the *receiver*; its DATA trace is the peer's log, not ours.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        config = env.config(all_channels(wh, sm, ml))
        env.record("Typical")
        drive(config, env.index)
    finally:
        configure_logging("INFO", json=True)
    assert len(wh.accepted) == len(sm.messages) == len(ml.messages) == 1
    # The default transport is encrypted on every channel.
    assert wh.accepted[0]["tls"] and sm.messages[0]["tls"] and ml.messages[0]["tls"]
    needles = [CANARY_NAME, "CANARY", "LEAK", CANARY_BIRTH]
    haystacks = {
        "webhook body": wh.accepted[0]["body"].decode(),
        "webhook headers": json.dumps(wh.accepted[0]["headers"]),
        "email": sm.messages[0]["raw"].decode(),
        "hl7": ml.messages[0]["text"],
        "logs": log.getvalue(),
        "outbox": json.dumps([r.as_dict() for r in outbox_rows(config)]),
    }
    for where, text in haystacks.items():
        for needle in needles:
            assert needle not in text, f"{needle!r} leaked into {where}"
    # Logs carry neither the patient ID nor the accession number either.
    assert PATIENT_ID not in log.getvalue() and ACCESSION not in log.getvalue()
    assert "alert_sent" in log.getvalue()


def test_canary_appears_only_in_bodies_when_configured(env, peers):
    wh, sm, ml = peers
    log = io.StringIO()
    configure_logging("DEBUG", json=True, stream=log)
    # aiosmtpd runs in this process as the *receiver*; its DATA trace is the peer's log, not ours.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        config = env.config(all_channels(wh, sm, ml, include_patient_name=True, include_birth_date=True))
        env.record("Typical")
        drive(config, env.index)
    finally:
        configure_logging("INFO", json=True)
    body = json.loads(wh.accepted[0]["body"])
    assert body["patient"] == {"id": PATIENT_ID, "name": CANARY_NAME, "birth_date": CANARY_BIRTH}
    msg = sm.parsed()
    assert "CANARY^PHI^SHOULD^NOT^LEAK" in msg.get_content() and CANARY_BIRTH in msg.get_content()
    assert "CANARY" not in msg["Subject"] and CANARY_BIRTH not in msg["Subject"]
    pid = next(s for s in ml.messages[0]["text"].split("\r") if s.startswith("PID"))
    assert pid.split("|")[5] == "CANARY^PHI^SHOULD^LEAK^NOT" and pid.split("|")[7] == CANARY_BIRTH
    # ... carried only inside TLS, and never into the logs, the outbox's errors or the
    # dashboard's decision.
    assert wh.accepted[0]["tls"] and sm.messages[0]["tls"] and ml.messages[0]["tls"]
    assert "CANARY" not in log.getvalue() and CANARY_BIRTH not in log.getvalue()
    assert not any(r.last_error for r in outbox_rows(config))
    with AlertStore.for_data_dir(env.data_dir) as store:
        dashboard = store.current_alert(env.study_uid, MODEL)
        assert dashboard is not None and "CANARY" not in dashboard.payload_json


def test_alert_store_records_decisions(env, peers):
    wh, sm, ml = peers
    config = env.config(all_channels(wh, sm, ml))
    env.record("Typical")
    drive(config, env.index)
    store = AlertStore.for_data_dir(env.data_dir)
    try:
        rows = store.alerts(env.study_uid)
        assert sorted(r.channel for r in rows) == ["dashboard", "hl7", "smtp", "webhook"]
        assert all(r.category == "Typical" and r.revision == 1 and r.alerting for r in rows)
        # Outbox channels are handed to the outbox; the dashboard's decision never is.
        assert {r.channel: r.enqueued for r in rows} == {"dashboard": False, "hl7": True, "smtp": True,
                                                         "webhook": True}
        assert [a.study_uid for a in store.current_alerts(10)] == [env.study_uid]
    finally:
        store.close()
    assert {r.kind for r in outbox_rows(config)} == {"hl7", "smtp", "webhook"}


def test_dashboard_decision_for_every_revision_without_channels(env):
    """With no channel configured the dashboard still gets a decision per newest revision."""
    config = env.config({})
    env.record("Typical")
    drive(config, env.index)
    with AlertStore.for_data_dir(env.data_dir) as store:
        current = store.current_alert(env.study_uid, MODEL)
        assert current is not None and current.alerting and current.category == "Typical"
        assert current.probability == 0.91 and current.revision == 1
        env.record("Negative", revision=2)
        drive(config, env.index)
        current = store.current_alert(env.study_uid, MODEL)
        assert current is not None and not current.alerting and current.revision == 2
        assert current.category == "Negative" and current.previous_category == "Typical"
        assert store.current_alerts(10) == []
        env.record("Atypical", revision=3)  # not alerting either: still recorded
        drive(config, env.index)
        assert store.current_alert(env.study_uid, MODEL).revision == 3
        assert store.counts() == {("dashboard", "Typical"): 1, ("dashboard", "cleared"): 2}
    assert outbox_rows(config) == []


def test_alert_status_for_aenode_status(env, peers):
    from aenode.alert.status import alert_status

    wh, sm, ml = peers
    config = env.config(all_channels(wh, sm, ml))
    assert alert_status(env.data_dir, env.study_uid) == {}
    env.record("Typical")
    drive(config, env.index)
    got = alert_status(env.data_dir, env.study_uid)
    assert set(got) == {"webhook", "smtp", "hl7"}
    assert all(v["state"] == "sent" and v["category"] == "Typical" and v["attempts"] == 1 for v in got.values())
