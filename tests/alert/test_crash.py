"""kill -9 between "the channel accepted the alert" and "the outbox recorded it".

On restart the alert is sent again - it must be recognisably the same alert: the webhook's
Idempotency-Key and the HL7 message control ID (MSH-10) are identical, so the receiver
de-duplicates; e-mail cannot be de-duplicated by the server, so at most one extra copy,
with the same Message-ID.  The alert is decided once: no second decision, no new key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aenode.alert.base import PAUSE_AFTER_SEND_ENV, alert_key, hl7_control_id
from tests.alert.conftest import all_channels
from tests.alert.helpers import MODEL, outbox_rows
from tests.alert.servers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _run(cfg_file: Path, pause: bool) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(PAUSE_AFTER_SEND_ENV, None)
    if pause:
        env[PAUSE_AFTER_SEND_ENV] = "60"
    return subprocess.Popen([sys.executable, "-m", "tests.alert.crash_node", str(cfg_file)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("channel", ["webhook", "hl7", "smtp"])
def test_sigkill_after_send_before_record(env, peers, channel, tmp_path):
    wh, sm, ml = peers
    alerts = {channel: all_channels(wh, sm, ml)[channel]}
    config = env.config(alerts)
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(config.model_dump(mode="json", exclude_none=True)))
    env.record("Typical")
    received = {"webhook": lambda: wh.accepted, "hl7": lambda: ml.accepted, "smtp": lambda: sm.messages}[channel]

    first = _run(cfg_file, pause=True)
    try:
        assert wait_for(lambda: len(received()) == 1, timeout=30), "first delivery never arrived"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    (row,) = outbox_rows(config)
    assert row.state == "sending"  # the send was not recorded

    second = _run(cfg_file, pause=False)
    assert second.wait(40) == 0
    (row,) = outbox_rows(config)
    assert row.state == "sent"

    key = alert_key(env.study_uid, 1, MODEL, channel)
    got = received()
    assert len(got) == 2  # re-sent once after the restart, recognisably the same alert
    if channel == "webhook":
        assert {r["headers"]["Idempotency-Key"] for r in got} == {key}
        assert len({r["body"] for r in got}) == 1  # same bytes, same signature
    elif channel == "hl7":
        assert {m["control_id"] for m in got} == {hl7_control_id(key)}
    else:
        assert len({sm.parsed(i)["Message-ID"] for i in range(len(got))}) == 1
