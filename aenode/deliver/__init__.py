"""Results into PACS, part two: durable delivery through an outbox.

Public API::

    from aenode.deliver import Outbox, DeliveryWorker, notify, register_sender, probe
    Outbox.for_config(config).summary_for_study(study_uid)  # per-destination states
    probe(config, dest)              # (ok, detail): C-ECHO or DICOMweb query, per type
    transport_warnings(config)       # destinations that carry patient data in clear
"""

from aenode.deliver.destinations import describe, destination_types, probe, transport_warnings
from aenode.deliver.dicom import Peer, echo, store
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import DeliverySummary, Outbox, OutboxRow, OutboxStats, backoff_delay
from aenode.deliver.senders import get_sender, register_sender
from aenode.deliver.worker import DeliveryWorker, notify

__all__ = ["DeliveryError", "Peer", "echo", "store", "Outbox", "OutboxRow", "OutboxStats", "DeliverySummary", "backoff_delay",
           "get_sender", "register_sender", "DeliveryWorker", "notify", "probe", "describe",
           "destination_types", "transport_warnings"]
