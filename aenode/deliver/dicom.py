"""C-STORE and C-ECHO to PACS destinations with pynetdicom.

For each object the association proposes, per SOP class, one presentation context with
the object's own transfer syntax plus Explicit VR Little Endian and Implicit VR Little
Endian.  If the PACS accepts the object's syntax it is sent unchanged; otherwise it is
re-encoded into an accepted uncompressed syntax (a compressed object is decompressed
first).  All objects due for one destination go over one association.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from aenode.deliver.errors import DeliveryError
from aenode.logs import get_logger

log = get_logger("aenode.deliver.dicom")

VERIFICATION = UID("1.2.840.10008.1.1")  # Verification SOP Class (C-ECHO)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

__all__ = ["DeliveryError", "Peer", "echo", "store"]


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int
    # DICOM TLS: (client context, server name to verify); None = plain TCP.
    tls: tuple[ssl.SSLContext, str] | None = None


def _ae(calling_ae_title: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def echo(peer: Peer, calling_ae_title: str, timeout: float = 10.0) -> tuple[bool, str]:
    """C-ECHO ``peer``: (ok, human-readable detail)."""
    ae = _ae(calling_ae_title, timeout)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=peer.tls)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        return False, f"association {why}" + (" over TLS" if peer.tls else "")
    try:
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code == 0x0000:
            return True, "ok"
        return False, "no response" if code is None else f"status 0x{code:04X}"
    finally:
        assoc.release()


def _load(path: str) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise DeliveryError(f"payload file missing: {p.name}", permanent=True)
    try:
        return dcmread(p)
    except Exception as exc:  # noqa: BLE001
        raise DeliveryError(f"payload is not readable DICOM: {type(exc).__name__}", permanent=True) from None


def _fit_to_context(ds: Dataset, accepted: set[str]) -> Dataset:
    """Re-encode ``ds`` for one of the accepted transfer syntaxes of its SOP class."""
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts in accepted:
        return ds
    target = next((t for t in UNCOMPRESSED if t in accepted), None)
    if target is None:
        raise DeliveryError(f"destination accepts none of {ts}, Explicit or Implicit VR Little Endian")
    if ts.is_compressed:
        ds.decompress()  # now Explicit VR Little Endian
    # An uncompressed dataset is re-encoded by pynetdicom into the accepted context's
    # uncompressed syntax (its file meta must keep describing the current encoding).
    return ds


def store(peer: Peer, paths: Sequence[str], calling_ae_title: str, timeout: float = 30.0) -> dict[str, str | None]:
    """C-STORE each file to ``peer`` over one association.

    Returns ``{path: None}`` for each stored object and ``{path: error}`` for each
    failure; raises :class:`DeliveryError` when no association could be made (all fail)
    or a payload is unusable (``permanent``) - the caller records it per row.
    """
    results: dict[str, str | None] = {}
    datasets: dict[str, Dataset] = {}
    for p in paths:
        try:
            datasets[p] = _load(p)
        except DeliveryError as exc:
            results[p] = f"permanent: {exc}"
    if not datasets:
        return results
    ae = _ae(calling_ae_title, timeout)
    by_class: dict[str, list[str]] = {}
    for ds in datasets.values():
        ts = str(ds.file_meta.TransferSyntaxUID)
        by_class.setdefault(str(ds.SOPClassUID), [])
        if ts not in by_class[str(ds.SOPClassUID)]:
            by_class[str(ds.SOPClassUID)].append(ts)
    for sop_class, syntaxes in by_class.items():
        proposed = list(dict.fromkeys([*syntaxes, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.add_requested_context(sop_class, proposed)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=peer.tls)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        over = " over TLS (handshake or certificate check may have failed)" if peer.tls else ""
        raise DeliveryError(f"association to {peer.ae_title}@{peer.host}:{peer.port} {why}{over}")
    try:
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        for p, ds in datasets.items():
            ok_ts = accepted.get(str(ds.SOPClassUID), set())
            if not ok_ts:
                results[p] = f"destination does not accept SOP class {ds.SOPClassUID}"
                continue
            try:
                ds = _fit_to_context(ds, ok_ts)
                status = assoc.send_c_store(ds)
            except DeliveryError as exc:
                results[p] = str(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one bad object must not stop the others
                results[p] = f"{type(exc).__name__}: {exc}"
                continue
            code = getattr(status, "Status", None)
            if code is None:
                results[p] = "no C-STORE response (timeout or abort)"
            elif code == 0x0000 or (code & 0xF000) == 0xB000:  # success or warning: stored
                results[p] = None
            else:
                results[p] = f"C-STORE status 0x{code:04X}"
            if not assoc.is_established:
                for q in datasets:
                    results.setdefault(q, "association lost")
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return results
