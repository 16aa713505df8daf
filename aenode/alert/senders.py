"""The outbox senders for alerts: one kind per registered channel.

Each outbox row's ``payload`` is the alert document (JSON) and ``object_id`` the alert key;
``kind`` and ``destination`` are the channel kind.  :func:`register_senders` registers
every channel of :data:`aenode.alert.channels.REGISTRY` with :mod:`aenode.deliver.senders`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from aenode.alert.base import AlertSendError, Channel, pause_after_send
from aenode.alert.channels import REGISTRY
from aenode.alert.payload import phi_of
from aenode.config import Config
from aenode.deliver.dicom import DeliveryError
from aenode.deliver.outbox import OutboxRow
from aenode.deliver.senders import Sender, register_sender
from aenode.logs import get_logger, phi_values

log = get_logger("aenode.alert")


def _make_sender(channel: Channel) -> Sender:
    kind = channel.kind

    def sender(config: object, destination: str, rows: Sequence[OutboxRow]) -> dict[int, DeliveryError | None]:
        if not isinstance(config, Config):
            raise TypeError(f"alert sender {kind!r} needs the node's Config")
        cfg = config.alerts.channels().get(kind)
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
                    channel.send(cfg, payload, row.object_id)
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
    """Register every alert channel with the outbox (idempotent; the node and the worker call it)."""
    for channel in REGISTRY.values():
        register_sender(channel.kind, _make_sender(channel))


register_senders()  # importing the module registers them too (the delivery worker imports it)
