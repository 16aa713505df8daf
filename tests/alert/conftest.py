from __future__ import annotations

import pytest

from tests.alert import feed_shim
from tests.alert.helpers import make_env
from tests.alert.servers import MLLPServer, SMTPServer, WebhookServer, self_signed

feed_shim.install()  # TEMPORARY: until Index.results_after is merged from main


@pytest.fixture
def env(tmp_path):
    e = make_env(tmp_path)
    yield e
    e.index.close()


@pytest.fixture
def peers():
    wh, sm, ml = WebhookServer().start(), SMTPServer().start(), MLLPServer().start()
    yield wh, sm, ml
    for p in (wh, sm, ml):
        p.stop()


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    return self_signed(tmp_path_factory.mktemp("tls"))


def all_channels(wh, sm, ml, **extra) -> dict:
    alerts = {
        "webhook": {"url": wh.url, "secret": "shared-s3cret", "timeout_seconds": 2},
        "smtp": {"host": "127.0.0.1", "port": sm.port, "sender": "aenode@example.org",
                 "recipients": ["ic@example.org", "ic2@example.org"], "timeout_seconds": 5},
        "hl7": {"host": "127.0.0.1", "port": ml.port, "timeout_seconds": 1},
    }
    for k, v in extra.items():
        if isinstance(v, dict):
            alerts[k] = {**alerts.get(k, {}), **v}
        else:
            alerts[k] = v
    return alerts
