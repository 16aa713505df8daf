"""Destination types of ``[[destinations]]``: one module per type, one registry (here).

Adding a type (say ``xyz``): its config model in :mod:`aenode.config` (joined to the
``DestinationConfig`` union and ``DESTINATION_TYPES``), one module here defining
``TYPE = DestinationType("xyz", send=..., probe=..., describe=..., cleartext=...)``, and
that module's ``TYPE`` in ``_TYPES`` below.  The outbox worker then routes rows of
``kind = "xyz"`` to it; ``aenode echo``, ``/healthz`` and ``aenode config check`` use its
probe and transport flag without further changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from aenode.config import DESTINATION_TYPES, Config, DestinationConfig
from aenode.deliver.destinations import dicom, dicomweb
from aenode.deliver.destinations.base import DestinationType
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import OutboxRow
from aenode.deliver.senders import Sender, register_sender

_TYPES: dict[str, DestinationType] = {t.name: t for t in (dicom.TYPE, dicomweb.TYPE)}

if set(_TYPES) != set(DESTINATION_TYPES):  # a type configured but not implemented, or the reverse
    raise RuntimeError(f"destination types: registry {sorted(_TYPES)} != configuration {sorted(DESTINATION_TYPES)}")


def destination_type(name: str) -> DestinationType:
    """The registered type ``name`` (KeyError names the unknown type)."""
    try:
        return _TYPES[name]
    except KeyError:
        raise KeyError(f"no destination type {name!r}") from None


def destination_types() -> list[str]:
    return sorted(_TYPES)


def find_destination(config: Config, name: str) -> DestinationConfig | None:
    return next((d for d in config.destinations if d.name == name), None)


def probe(config: Config, dest: DestinationConfig, timeout: float | None = None) -> tuple[bool, str]:
    """Is ``dest`` reachable and accepting us?  (ok, short detail without secrets).

    C-ECHO for ``dicom``, an authenticated QIDO request matching nothing for ``dicomweb``.
    ``timeout`` defaults to ``[delivery] timeout_seconds``.  Never raises for a network
    problem: that is ``(False, why)``.
    """
    t = config.delivery.timeout_seconds if timeout is None else timeout
    try:
        return destination_type(dest.type).probe(config, dest, t)
    except Exception as exc:  # noqa: BLE001 - a probe answers, it does not crash /healthz
        return False, f"{type(exc).__name__}: {exc}"


def describe(dest: DestinationConfig) -> str:
    """Where ``dest`` is (AE@host:port or URL), for operators; never credentials."""
    return destination_type(dest.type).describe(dest)


def transport_warnings(config: Config) -> list[str]:
    """One line per destination that carries patient data in clear (for ``aenode config check``)."""
    out = []
    for d in config.destinations:
        why = destination_type(d.type).cleartext(d)
        if why:
            out.append(f"destinations[{d.name}] ({d.type}): results carry patient data unprotected: {why}")
    return out


def _sender(t: DestinationType) -> Sender:
    """Outbox sender for rows of ``kind = t.name`` (``destination`` = the destination's name)."""

    def send(config: Config, destination: str, rows: Sequence[OutboxRow]) -> dict[int, DeliveryError | None]:
        dest = find_destination(config, destination)
        if dest is None:
            err = DeliveryError(f"destination {destination!r} is not configured", permanent=True)
            return {r.id: err for r in rows}
        if dest.type != t.name:
            err = DeliveryError(f"destination {destination!r} is of type {dest.type!r}, row is {t.name!r}",
                                permanent=True)
            return {r.id: err for r in rows}
        return t.send(config, dest, rows)

    send.__name__ = f"send_{t.name}"
    return send


for _t in _TYPES.values():
    register_sender(_t.name, _sender(_t))

__all__ = ["DestinationType", "destination_type", "destination_types", "find_destination", "probe", "describe",
           "transport_warnings"]
