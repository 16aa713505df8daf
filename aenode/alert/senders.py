"""The outbox senders for alerts: kinds ``webhook``, ``smtp``, ``hl7``.

Each outbox row's ``payload`` is the alert document (JSON) and ``object_id`` the alert key;
``destination`` is the channel name.  Importing this module registers the three kinds in
:mod:`aenode.deliver.senders`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from aenode.alert.base import AlertSendError, pause_after_send
from aenode.alert.hl7 import send_hl7
from aenode.alert.payload import phi_of
from aenode.alert.smtp_channel import send_email
from aenode.alert.webhook import send_webhook
from aenode.deliver.dicom import DeliveryError
from aenode.deliver.senders import register_sender
from aenode.logs import get_logger, phi_values

log = get_logger("aenode.alert")

_CHANNEL_SEND: dict[str, Callable[[Any, dict[str, Any], str], Any]] = {
    "webhook": send_webhook,
    "smtp": send_email,
    "hl7": send_hl7,
}


def _make_sender(kind: str) -> Callable[[Any, str, Sequence[Any]], dict[int, DeliveryError | None]]:
    send = _CHANNEL_SEND[kind]

    def sender(config: Any, destination: str, rows: Sequence[Any]) -> dict[int, DeliveryError | None]:
        cfg = getattr(config.alerts, kind, None)
        out: dict[int, DeliveryError | None] = {}
        for row in rows:
            if cfg is None:
                out[row.id] = DeliveryError(f"alert channel {kind!r} is not configured", permanent=True)
                continue
            try:
                payload = json.loads(row.payload)
            except ValueError:
                out[row.id] = DeliveryError("alert payload is not valid JSON", permanent=True)
                continue
            with phi_values(phi_of(payload)):
                try:
                    send(cfg, payload, row.object_id)
                except AlertSendError as exc:
                    out[row.id] = DeliveryError(str(exc))
                    continue
                log.info("alert_sent", channel=kind, alert_id=row.object_id, study_uid=row.study_uid,
                         attempt=row.attempts + 1)
                pause_after_send()
                out[row.id] = None
        return out

    sender.__name__ = f"send_{kind}_alert"
    return sender


def register_senders() -> None:
    """Register the alert kinds with the outbox (idempotent; the node and the worker call it)."""
    for kind in _CHANNEL_SEND:
        register_sender(kind, _make_sender(kind))


register_senders()  # importing the module registers them too (the delivery worker imports it)
