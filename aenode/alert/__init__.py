"""Infection-control alerts: webhook, e-mail and HL7 v2, delivered exactly once in effect.

Layout:

- :mod:`.base` - the alert identity (stable keys per study result revision and channel),
  channel errors, the test-only pause hook;
- :mod:`.payload` - the channel-independent alert document (minimum patient data);
- :mod:`.rules` - which results alert on which channel (model manifest + per-channel override);
- :mod:`.webhook`, :mod:`.smtp_channel`, :mod:`.hl7` - the channel senders;
- :mod:`.store` - the alert decisions, durable in the node's SQLite index;
- :mod:`.worker` - :class:`AlertWorker` turns recorded results into alert outbox rows;
- :mod:`.senders` - the outbox's senders for the three alert kinds.
"""

from aenode.alert.base import CHANNELS, AlertSendError, alert_key

__all__ = ["CHANNELS", "AlertSendError", "alert_key"]
