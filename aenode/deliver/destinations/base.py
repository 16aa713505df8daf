"""What one destination type provides (the registry in ``__init__`` holds one per type)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aenode.config import Config, DestinationConfig
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import OutboxRow

SendFn = Callable[[Config, DestinationConfig, Sequence[OutboxRow]], dict[int, DeliveryError | None]]
ProbeFn = Callable[[Config, DestinationConfig, float], tuple[bool, str]]


@dataclass(frozen=True)
class DestinationType:
    """One ``[[destinations]] type``.

    - ``send``: deliver a batch of outbox rows (payload = absolute path of a DICOM file,
      object_id = its SOP Instance UID) to one destination; per row ``None`` (stored) or a
      :class:`DeliveryError` (``permanent`` when retrying cannot help).
    - ``probe``: is the destination reachable and accepting us? (``aenode echo``, ``/healthz``)
    - ``describe``: where it is, for operators (no secrets).
    - ``cleartext``: why patient data travels to it unprotected (no TLS, or TLS without
      verification), or None (``aenode config check``)
    """

    name: str
    send: SendFn
    probe: ProbeFn
    describe: Callable[[DestinationConfig], str]
    cleartext: Callable[[DestinationConfig], str | None]
