"""Sender registry of the outbox: ``kind`` -> function that delivers a batch of rows.

A sender is ``send(config, destination, rows) -> {row_id: None | DeliveryError}``; all
rows share the kind and destination name.  ``None`` means delivered.  A sender must not
raise for a per-row problem; a raised exception counts as a failed attempt of every row.

Destination types (:mod:`aenode.deliver.destinations`) register theirs under the type
name (``dicom``, ``dicomweb``); alerts (webhook, SMTP, HL7) register their own kinds the
same way.  Senders must keep the outbox's at-least-once contract: a resend of a row uses
the same key (``row.object_id``) so the receiver can deduplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aenode.config import Config
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import OutboxRow

Sender = Callable[[Config, str, Sequence[OutboxRow]], dict[int, DeliveryError | None]]

_SENDERS: dict[str, Sender] = {}


def register_sender(kind: str, sender: Sender) -> None:
    if not kind or not callable(sender):
        raise ValueError("register_sender needs a kind and a callable")
    _SENDERS[kind] = sender


def get_sender(kind: str) -> Sender | None:
    return _SENDERS.get(kind)


def registered_kinds() -> list[str]:
    return sorted(_SENDERS)
