"""Infection-control alerts: webhook, e-mail and HL7 v2, delivered at least once with stable keys.

Layout:

- :mod:`.base` - the alert identity (stable keys per study result revision and channel),
  the :class:`Channel` interface, channel errors, the test-only pause hook;
- :mod:`.channels` - the channel registry (:data:`REGISTRY`), one module per channel
  (:mod:`.channels.webhook`, :mod:`.channels.smtp`, :mod:`.channels.hl7`), and
  :func:`transport_warnings` for ``aenode config check``;
- :mod:`.payload` - the channel-independent alert document (minimum patient data);
- :mod:`.rules` - which results alert on which channel (model manifest + per-channel override);
- :mod:`.store` - the alert decisions (the alert stage's own database), including the
  built-in "dashboard" channel the dashboard reads;
- :mod:`.worker` - :class:`AlertWorker` turns recorded results into alert outbox rows;
- :mod:`.senders` - the outbox's senders, one per registered channel;
- :mod:`.status` - alert state per study for ``aenode status`` and the dashboard.
"""

from aenode.alert.base import AlertSendError, Channel, alert_key
from aenode.alert.channels import REGISTRY, transport_warnings

__all__ = ["REGISTRY", "AlertSendError", "Channel", "alert_key", "transport_warnings"]
