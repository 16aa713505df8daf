from __future__ import annotations

import pytest

from tests.alert.helpers import make_env
from tests.alert.servers import MLLPServer, SMTPServer, WebhookServer, self_signed


@pytest.fixture
def env(tmp_path):
    e = make_env(tmp_path)
    yield e
    e.index.close()


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def peers(cert):
    """The three peers with TLS, as the node's defaults expect: HTTPS, SMTP with STARTTLS,
    MLLP inside TLS (one self-signed certificate; the node is given it as ``ca_file``)."""
    crt, key = cert
    wh = WebhookServer(cert=crt, key=key).start()
    sm = SMTPServer(security="starttls", cert=crt, key=key).start()
    ml = MLLPServer(cert=crt, key=key).start()
    yield wh, sm, ml
    for p in (wh, sm, ml):
        p.stop()


@pytest.fixture
def plain_peers():
    """Peers without TLS (the channels then need insecure = true / tls = false)."""
    wh, sm, ml = WebhookServer().start(), SMTPServer().start(), MLLPServer().start()
    yield wh, sm, ml
    for p in (wh, sm, ml):
        p.stop()


def all_channels(wh, sm, ml, **extra) -> dict:
    """The channel tables for the peers, with TLS settings that match how they listen."""
    webhook: dict = {"url": wh.url, "secret": "shared-s3cret", "timeout_seconds": 2}
    webhook.update({"ca_file": str(wh.cert)} if wh.tls else {"insecure": True})
    smtp: dict = {"host": "127.0.0.1", "port": sm.port, "sender": "aenode@example.org",
                  "recipients": ["ic@example.org", "ic2@example.org"], "timeout_seconds": 5}
    smtp.update({"security": sm.security, "ca_file": str(sm.cert)} if sm.security != "none"
                else {"security": "none", "insecure": True})
    hl7: dict = {"host": "127.0.0.1", "port": ml.port, "timeout_seconds": 1}
    hl7.update({"tls": True, "ca_file": str(ml.cert)} if ml.tls else {})
    alerts = {"webhook": webhook, "smtp": smtp, "hl7": hl7}
    for k, v in extra.items():
        if isinstance(v, dict):
            alerts[k] = {**alerts.get(k, {}), **v}
        else:
            alerts[k] = v
    return alerts
