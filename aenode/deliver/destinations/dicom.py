"""Destination type ``dicom``: C-STORE to a PACS (optionally over DICOM TLS), C-ECHO probe."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from aenode.config import Config, DestinationConfig, DicomDestination, DicomTLSConfig
from aenode.deliver.destinations.base import DestinationType
from aenode.deliver.dicom import Peer, echo, store
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import OutboxRow


def _own(dest: DestinationConfig) -> DicomDestination:
    if not isinstance(dest, DicomDestination):
        raise TypeError(f"destination {dest.name!r} is not of type 'dicom'")
    return dest


def tls_context(tls: DicomTLSConfig) -> ssl.SSLContext:
    """Client-side TLS context for DICOM TLS (PS3.15 B.1: TLS 1.2 or later)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


def peer_of(dest: DicomDestination) -> Peer:
    tls = None
    if dest.tls is not None:
        tls = (tls_context(dest.tls), dest.tls.server_name or dest.host)
    return Peer(dest.ae_title, dest.host, dest.port, tls)


def send(config: Config, dest: DestinationConfig, rows: Sequence[OutboxRow]) -> dict[int, DeliveryError | None]:
    d = _own(dest)
    try:
        peer = peer_of(d)
    except (OSError, ssl.SSLError) as exc:  # unreadable CA / certificate / key: fix the configuration
        err = DeliveryError(f"TLS set-up for {d.name!r} failed: {exc}")
        return {r.id: err for r in rows}
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


def probe(config: Config, dest: DestinationConfig, timeout: float) -> tuple[bool, str]:
    d = _own(dest)
    try:
        peer = peer_of(d)
    except (OSError, ssl.SSLError) as exc:
        return False, f"TLS set-up failed: {exc}"
    return echo(peer, config.node.ae_title, timeout)


def describe(dest: DestinationConfig) -> str:
    d = _own(dest)
    return f"{d.ae_title}@{d.host}:{d.port}" + (" (TLS)" if d.tls is not None else "")


def cleartext(dest: DestinationConfig) -> str | None:
    d = _own(dest)
    if d.tls is None:
        return "C-STORE without TLS (add a [destinations.tls] table)"
    if not d.tls.verify:
        return "TLS with verify = false (the PACS is not authenticated)"
    return None


TYPE = DestinationType("dicom", send=send, probe=probe, describe=describe, cleartext=cleartext)
