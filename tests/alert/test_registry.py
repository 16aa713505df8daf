"""The channel registry and the configuration agree; cleartext channels are named."""

from __future__ import annotations

import pytest

from aenode.alert import REGISTRY, transport_warnings
from aenode.alert import channels as channels_mod
from aenode.alert.channels import check_registry, configured_channels
from aenode.alert.store import DASHBOARD
from aenode.config import AlertsConfig, parse_config

SMTP = {"host": "127.0.0.1", "port": 25, "sender": "a@example.org", "recipients": ["ic@example.org"]}


def test_registry_matches_alerts_config():
    assert list(REGISTRY) == AlertsConfig.channel_kinds() == ["webhook", "smtp", "hl7"]
    assert DASHBOARD not in REGISTRY
    for kind, channel in REGISTRY.items():
        assert channel.kind == kind and channel.key_carrier
    check_registry()


def test_registry_mismatch_fails_loudly(monkeypatch):
    monkeypatch.setattr(channels_mod, "REGISTRY", {k: v for k, v in REGISTRY.items() if k != "hl7"})
    with pytest.raises(RuntimeError, match="AlertsConfig has"):
        check_registry()


def test_configured_channels_in_registry_order():
    config = parse_config({"alerts": {"hl7": {"host": "h", "port": 1}, "smtp": SMTP}})
    assert list(configured_channels(config)) == ["smtp", "hl7"]
    assert list(configured_channels(parse_config({}))) == []


def test_transport_warnings_name_every_cleartext_channel():
    secure = parse_config({"alerts": {
        "webhook": {"url": "https://ic.example.org/hook"},
        "smtp": SMTP,  # STARTTLS by default
        "hl7": {"host": "h", "port": 1, "tls": True}}})
    assert transport_warnings(secure) == []
    clear = parse_config({"alerts": {
        "include_patient_name": True,
        "webhook": {"url": "http://127.0.0.1:1/hook", "insecure": True},
        "smtp": {**SMTP, "security": "none", "insecure": True},
        "hl7": {"host": "h", "port": 1}}})
    warnings = transport_warnings(clear)
    assert [w.split(":")[0] for w in warnings] == ["alerts.webhook", "alerts.smtp", "alerts.hl7"]
    assert all("patient ID, accession number, patient name in clear" in w for w in warnings)
    assert "birth date" not in " ".join(warnings)
    assert "http://" in warnings[0] and "security" in warnings[1] and "MLLP" in warnings[2]
