"""Results into PACS, part two: durable delivery through an outbox.

Public API::

    from aenode.deliver import Outbox, DeliveryWorker, notify, register_sender
    Outbox.for_config(config).summary_for_study(study_uid)  # per-destination states
"""

from aenode.deliver.dicom import DeliveryError, Peer, echo, store
from aenode.deliver.outbox import Outbox, OutboxRow, backoff_delay
from aenode.deliver.senders import get_sender, register_sender
from aenode.deliver.worker import DeliveryWorker, notify

__all__ = ["DeliveryError", "Peer", "echo", "store", "Outbox", "OutboxRow", "backoff_delay",
           "get_sender", "register_sender", "DeliveryWorker", "notify"]
