"""Sender registry of the outbox: ``kind`` -> function that delivers a batch of rows.

A sender is ``send(config, destination, rows) -> {row_id: None | DeliveryError}``; all
rows share the kind and destination name.  ``None`` means delivered.  A sender must not
raise for a per-row problem; a raised exception counts as a failed attempt of every row.
Alerts (webhook, SMTP, HL7) register their own kinds the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aenode.deliver.dicom import DeliveryError, Peer, store
from aenode.deliver.outbox import OutboxRow

Sender = Callable[[object, str, Sequence[OutboxRow]], dict[int, "DeliveryError | None"]]

_SENDERS: dict[str, Sender] = {}


def register_sender(kind: str, sender: Sender) -> None:
    if not kind or not callable(sender):
        raise ValueError("register_sender needs a kind and a callable")
    _SENDERS[kind] = sender


def get_sender(kind: str) -> Sender | None:
    return _SENDERS.get(kind)


def registered_kinds() -> list[str]:
    return sorted(_SENDERS)


def dicom_destination(config, name: str):
    return next((d for d in config.destinations if d.name == name), None)


def send_dicom(config, destination: str, rows: Sequence[OutboxRow]) -> dict[int, DeliveryError | None]:
    dest = dicom_destination(config, destination)
    if dest is None:
        err = DeliveryError(f"destination {destination!r} is not configured", permanent=True)
        return {r.id: err for r in rows}
    peer = Peer(dest.ae_title, dest.host, dest.port)
    try:
        got = store(peer, [r.payload for r in rows], config.node.ae_title, config.delivery.timeout_seconds)
    except DeliveryError as exc:
        return {r.id: exc for r in rows}
    out: dict[int, DeliveryError | None] = {}
    for r in rows:
        msg = got.get(r.payload, "not attempted")
        if msg is None:
            out[r.id] = None
        else:
            permanent = msg.startswith("permanent: ")
            out[r.id] = DeliveryError(msg.removeprefix("permanent: "), permanent=permanent)
    return out


register_sender("dicom", send_dicom)
