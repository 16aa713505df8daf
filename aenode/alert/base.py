"""Alert identity, the channel interface, and the errors every channel raises.

One alert is one (study, result revision, model, channel).  Its key is a pure function of
those, so a retry, a restart or a crash between sending and recording re-sends the same
key: the webhook's ``Idempotency-Key``, the e-mail's ``Message-ID`` and the HL7 message
control ID (MSH-10) all derive from it, and a receiver can de-duplicate.  The contract
is **at-least-once with stable keys**: a receiver may see an alert twice (a crash after
the peer accepted it and before the outbox recorded that), never with a different key.
"""

from __future__ import annotations

import hashlib
import os
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from aenode.config import AlertChannelConfig

# Test-only: seconds to sleep after a channel accepted an alert, before the outbox marks
# the row sent (lets a test SIGKILL the node in exactly that window).
PAUSE_AFTER_SEND_ENV = "AENODE_TEST_ALERT_PAUSE_AFTER_SEND"


class AlertSendError(Exception):
    """The channel did not accept the alert; the outbox retries with backoff.

    Messages never contain patient data (they are logged and shown in status).
    """


class Channel(ABC):
    """One alert channel kind: its ``[alerts.<kind>]`` table, how it sends, and whether
    it carries patient identifiers in clear.

    A new channel is one module in ``aenode/alert/channels/`` with a subclass of this,
    plus its config model as a field of :class:`aenode.config.AlertsConfig`; the module
    is listed once in :mod:`aenode.alert.channels`, and the worker, the outbox senders,
    status and ``transport_warnings`` all read that registry.
    """

    kind: ClassVar[str]                           # = the AlertsConfig field / outbox kind
    config_type: ClassVar[type[AlertChannelConfig]]
    key_carrier: ClassVar[str]                    # where a receiver finds the alert key

    @abstractmethod
    def send(self, cfg: AlertChannelConfig, payload: dict[str, Any], key: str) -> None:
        """Deliver one alert document; raises :class:`AlertSendError` when not accepted."""

    @abstractmethod
    def cleartext(self, cfg: AlertChannelConfig) -> str | None:
        """Why this configuration sends the alert unencrypted, or None when it does not."""


def alert_key(study_uid: str, revision: int, model: str, channel: str) -> str:
    """The stable identity of one alert: 32 hex digits."""
    text = "\x1f".join(("aenode-alert-v1", study_uid, str(int(revision)), model, channel))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def hl7_control_id(key: str) -> str:
    """MSH-10 (ST, at most 20 characters in v2.5), derived from the alert key."""
    return key[:20]


def pause_after_send() -> None:
    """The test hook; a no-op unless the environment variable is set."""
    value = os.environ.get(PAUSE_AFTER_SEND_ENV)
    if value:
        time.sleep(float(value))
