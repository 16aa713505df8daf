"""Each channel against its real peer: TLS variants, ACK handling, message structure."""

from __future__ import annotations

import time

import pytest
from hl7apy.parser import parse_message
from pydantic import ValidationError

from aenode.alert.base import AlertSendError, alert_key, hl7_control_id
from aenode.alert.channels.hl7 import build_oru, send_hl7
from aenode.alert.channels.smtp import send_email
from aenode.alert.channels.webhook import SIGNATURE_HEADER, send_webhook, verify_signature
from aenode.alert.payload import build_payload
from aenode.config import HL7Config, SMTPConfig, WebhookConfig, parse_config
from tests.alert.servers import MLLPServer, SMTPServer, WebhookServer, free_port, self_signed

KEY = alert_key("1.2.3.4", 1, "covid19-ct", "x")


def payload(**over) -> dict:
    config = parse_config({"alerts": {"include_patient_name": True, "include_birth_date": True}})
    args = dict(
        config=config, key=KEY, channel="x", study_uid="1.2.3.4", revision=1, model="covid19-ct",
        model_version="1.2.0", category="Typical",
        category_code={"code_value": "COV-T", "scheme_designator": "99AENCOV", "meaning": "Typical appearance"},
        probability=0.91, result_category="Typical", probabilities={"Typical": 0.91},
        header={"StudyInstanceUID": "1.2.3.4", "StudyDate": "20240315", "StudyTime": "0930",
                "AccessionNumber": "A|1^2", "PatientID": "P&1~2\\3", "StationName": "CT1",
                "InstitutionName": "Hosp", "PatientName": "YAMADA^TARO^^DR", "PatientBirthDate": "19610203"},
        update=False, previous_category=None, alerting=True, created=time.time())
    args.update(over)
    return build_payload(**args)


def test_webhook_signature_timeout_and_errors(cert):
    crt, key = cert
    wh = WebhookServer(statuses=[500], cert=crt, key=key).start()
    try:
        cfg = WebhookConfig(url=wh.url, secret="k3y", timeout_seconds=2, ca_file=crt)
        with pytest.raises(AlertSendError, match="HTTP 500"):
            send_webhook(cfg, payload(), KEY)
        assert send_webhook(cfg, payload(), KEY) == 200
        req = wh.accepted[0]
        assert req["tls"] and wh.url.startswith("https://")
        assert verify_signature(req["body"], "k3y", req["headers"][SIGNATURE_HEADER])
        assert not verify_signature(req["body"], "other", req["headers"][SIGNATURE_HEADER])
        assert req["headers"]["Idempotency-Key"] == KEY
        # The receiver's certificate is verified: without its CA the self-signed one is refused.
        with pytest.raises(AlertSendError, match="webhook: ConnectError"):
            send_webhook(WebhookConfig(url=wh.url, timeout_seconds=2), payload(), KEY)
        assert len(wh.requests) == 2
    finally:
        wh.stop()
    with pytest.raises(AlertSendError, match="webhook"):
        send_webhook(WebhookConfig(url=f"https://127.0.0.1:{free_port()}/", timeout_seconds=1), payload(), KEY)


def test_webhook_http_only_with_insecure():
    with pytest.raises(ValidationError, match="http:// sends patient identifiers in clear"):
        WebhookConfig(url="http://127.0.0.1:1/hook")
    with pytest.raises(ValidationError):  # no other spelling slips through
        WebhookConfig(url="HTTP://127.0.0.1:1/hook")
    wh = WebhookServer().start()
    try:
        assert send_webhook(WebhookConfig(url=wh.url, insecure=True, timeout_seconds=2), payload(), KEY) == 200
        assert not wh.accepted[0]["tls"]
        # A configuration built around validation is still refused at send time.
        forged = WebhookConfig.model_construct(url=wh.url, insecure=False, timeout_seconds=2, secret=None,
                                               ca_file=None, categories=None)
        with pytest.raises(AlertSendError, match="insecure"):
            send_webhook(forged, payload(), KEY)
        assert len(wh.requests) == 1
    finally:
        wh.stop()


def test_smtp_starttls_with_auth(cert):
    crt, key = cert
    sm = SMTPServer(security="starttls", cert=crt, key=key, auth=("alerts", "pw")).start()
    try:
        base = dict(host="127.0.0.1", port=sm.port, sender="a@example.org", recipients=["ic@example.org"],
                    security="starttls", ca_file=crt, timeout_seconds=5)
        with pytest.raises(AlertSendError):
            send_email(SMTPConfig(**base, username="alerts", password="wrong"), payload(), KEY)
        send_email(SMTPConfig(**base, username="alerts", password="pw"), payload(), KEY)
        assert len(sm.messages) == 1 and sm.messages[0]["tls"] and sm.messages[0]["auth"]
        msg = sm.parsed()
        assert msg["Message-ID"] == f"<alert-{KEY}@aenode.aenode>"
        assert "YAMADA" not in msg["Subject"] and "Typical" in msg["Subject"]
        # Without the CA the self-signed certificate is refused.
        with pytest.raises(AlertSendError, match="SSLCertVerificationError"):
            send_email(SMTPConfig(**{**base, "ca_file": None}, username="alerts", password="pw"), payload(), KEY)
        assert len(sm.messages) == 1
    finally:
        sm.stop()


def test_smtp_starttls_is_the_default_and_never_downgrades():
    sm = SMTPServer().start()  # plain: does not offer STARTTLS
    try:
        base = dict(host="127.0.0.1", port=sm.port, sender="a@example.org", recipients=["ic@example.org"],
                    timeout_seconds=5)
        assert SMTPConfig(**base).security == "starttls"
        with pytest.raises(AlertSendError, match="STARTTLS"):
            send_email(SMTPConfig(**base), payload(), KEY)
        assert sm.messages == []
        # Cleartext only when asked for explicitly (a relay on this machine) ...
        with pytest.raises(ValidationError, match="sends patient identifiers in clear"):
            SMTPConfig(**base, security="none")
        send_email(SMTPConfig(**base, security="none", insecure=True), payload(), KEY)
        assert len(sm.messages) == 1 and not sm.messages[0]["tls"]
        # ... and AUTH never goes in clear, insecure or not.
        with pytest.raises(ValidationError, match="AUTH is never sent in clear"):
            SMTPConfig(**base, security="none", insecure=True, username="u", password="p")
        forged = SMTPConfig.model_construct(**{**SMTPConfig(**base, security="none", insecure=True).__dict__,
                                               "username": "u", "password": "p"})
        with pytest.raises(AlertSendError, match="refusing to send in clear"):
            send_email(forged, payload(), KEY)
        assert len(sm.messages) == 1
    finally:
        sm.stop()


def test_smtp_implicit_tls(cert):
    crt, key = cert
    sm = SMTPServer(security="tls", cert=crt, key=key).start()
    try:
        send_email(SMTPConfig(host="127.0.0.1", port=sm.port, sender="a@example.org",
                              recipients=["ic@example.org"], security="tls", ca_file=crt), payload(), KEY)
        assert len(sm.messages) == 1 and sm.messages[0]["tls"]
    finally:
        sm.stop()


def test_hl7_message_is_valid_v25_oru_with_escaping():
    text = build_oru(payload(update=True, previous_category="Indeterminate",
                             previous_category_code={"code_value": "COV-I", "scheme_designator": "99AENCOV",
                                                     "meaning": "Indeterminate appearance"}), KEY)
    msg = parse_message(text, find_groups=True)
    assert msg.validate()
    assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and msg.msh.msh_12.to_er7() == "2.5"
    assert msg.msh.msh_10.to_er7() == hl7_control_id(KEY)
    pr = msg.oru_r01_patient_result
    pid = pr.oru_r01_patient.pid
    assert pid.pid_3.cx_1.to_er7() == "P\\T\\1\\R\\2\\E\\3"  # escaped, not split
    assert pid.pid_5.to_er7() == "YAMADA^TARO^^^DR"  # DICOM prefix -> XPN-5
    oo = pr.oru_r01_order_observation
    assert oo.obr.obr_3.to_er7() == "A\\F\\1\\S\\2" and oo.obr.obr_25.to_er7() == "C"
    obx = [o.obx for o in oo.oru_r01_observation]
    assert obx[0].obx_2.to_er7() == "CWE" and obx[0].obx_5.to_er7() == "COV-T^Typical appearance^99AENCOV"
    assert obx[1].obx_2.to_er7() == "NM" and float(obx[1].obx_5.to_er7()) == pytest.approx(0.91)
    assert obx[2].obx_5.to_er7() == "COV-I^Indeterminate appearance^99AENCOV"
    assert all(o.obx_11.to_er7() == "C" for o in obx)


def test_hl7_ae_ar_and_silence_are_failures_then_aa():
    ml = MLLPServer(codes=["AE", "AR"], silent=1).start()
    try:
        cfg = HL7Config(host="127.0.0.1", port=ml.port, timeout_seconds=0.5)
        p = payload()  # stored once per alert: every retry sends the same document
        for expected in ("timed out", "AE", "AR"):
            with pytest.raises(AlertSendError, match=expected):
                send_hl7(cfg, p, KEY)
        assert send_hl7(cfg, p, KEY) == "AA"
        # Every attempt carried the same message control ID (and the same message).
        assert {m["control_id"] for m in ml.messages} == {hl7_control_id(KEY)}
        assert len({m["text"] for m in ml.messages}) == 1
    finally:
        ml.stop()
    with pytest.raises(AlertSendError):
        send_hl7(HL7Config(host="127.0.0.1", port=free_port(), timeout_seconds=0.5), payload(), KEY)


def test_hl7_mllp_over_tls(cert, tmp_path):
    crt, key = cert
    ml = MLLPServer(cert=crt, key=key).start()
    try:
        cfg = HL7Config(host="127.0.0.1", port=ml.port, timeout_seconds=2, tls=True, ca_file=crt)
        assert send_hl7(cfg, payload(), KEY) == "AA"
        assert ml.messages[0]["tls"] and ml.messages[0]["control_id"] == hl7_control_id(KEY)
        # Verification is on: the system CAs do not know the self-signed certificate ...
        with pytest.raises(AlertSendError, match="SSLCertVerificationError"):
            send_hl7(HL7Config(host="127.0.0.1", port=ml.port, timeout_seconds=2, tls=True), payload(), KEY)
        # ... and the name is checked ("other.example" is not in the certificate).
        with pytest.raises(AlertSendError, match="SSLCertVerificationError"):
            send_hl7(cfg.model_copy(update={"server_name": "other.example"}), payload(), KEY)
        # Plain MLLP to a TLS listener is no message at all.
        with pytest.raises(AlertSendError):
            send_hl7(HL7Config(host="127.0.0.1", port=ml.port, timeout_seconds=1), payload(), KEY)
        assert len(ml.accepted) == 1
    finally:
        ml.stop()
    with pytest.raises(ValidationError, match="tls = false"):
        HL7Config(host="h", port=1, ca_file=crt)


def test_hl7_mllp_over_tls_with_client_certificate(cert, tmp_path):
    crt, key = cert
    client_crt, client_key = self_signed(tmp_path, "client")
    ml = MLLPServer(cert=crt, key=key, client_ca=client_crt).start()
    try:
        base = dict(host="127.0.0.1", port=ml.port, timeout_seconds=2, tls=True, ca_file=crt)
        with pytest.raises(AlertSendError):
            send_hl7(HL7Config(**base), payload(), KEY)  # no client certificate: refused
        assert send_hl7(HL7Config(**base, cert_file=client_crt, key_file=client_key), payload(), KEY) == "AA"
        assert len(ml.accepted) == 1 and ml.tls_failures >= 1
    finally:
        ml.stop()
