"""Destination type ``dicomweb``: STOW-RS (PS3.18 10.5) with httpx, QIDO-RS probe.

All rows due for one destination go in one ``POST {url}/studies`` request,
``multipart/related; type="application/dicom"``, one part per file, sent unchanged.
The answer is read per instance (PS3.18 10.5.3):

- 200: every instance stored (a ``FailedSOPSequence`` would contradict it and is honoured);
- 202: some stored, possibly with warnings (stored), some in ``FailedSOPSequence``;
- 409: none stored, reasons in ``FailedSOPSequence``;
- other 4xx (except 408 and 429): the request itself is wrong (auth, URL, media type):
  retrying cannot help, the rows fail at once (``aenode retry`` after fixing it);
- 408, 429, 5xx, timeouts and connection errors: retried with the outbox's backoff.

Resending an instance is safe: it keeps its SOP Instance UID, which a PACS stores once.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx

from aenode.config import Config, DestinationConfig, DicomWebDestination
from aenode.deliver.destinations.base import DestinationType
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import OutboxRow

# Failure reasons (PS3.4 Annex GG / PS3.18 Table 10.5.3-1) after which a later attempt
# can succeed: out of resources (A7xx) and "processing failure" (0110).  Every other
# reason (SOP class not supported, data set does not match, cannot understand) is final.
_TRANSIENT_REASONS = (0x0110,)

_REFERENCED = "00081199"  # ReferencedSOPSequence
_FAILED = "00081198"  # FailedSOPSequence
_SOP_INSTANCE = "00081155"  # ReferencedSOPInstanceUID
_FAILURE_REASON = "00081197"  # FailureReason
_WARNING_REASON = "00081196"  # WarningReason


def _own(dest: DestinationConfig) -> DicomWebDestination:
    if not isinstance(dest, DicomWebDestination):
        raise TypeError(f"destination {dest.name!r} is not of type 'dicomweb'")
    return dest


def client(config: Config, dest: DicomWebDestination) -> httpx.Client:
    """An httpx client for ``dest``: its auth, TLS verification (always on for https;
    ``ca_file`` for a private CA) and the delivery timeout."""
    verify: ssl.SSLContext | bool = True
    if dest.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(dest.ca_file))
    auth: httpx.Auth | None = None
    headers = {"User-Agent": "aenode"}
    if dest.token is not None:
        headers["Authorization"] = f"Bearer {dest.token}"
    elif dest.username is not None and dest.password is not None:
        auth = httpx.BasicAuth(dest.username, dest.password)
    return httpx.Client(verify=verify, auth=auth, headers=headers,
                        timeout=httpx.Timeout(config.delivery.timeout_seconds), follow_redirects=False)


def _multipart(files: Sequence[Path], boundary: str) -> bytes:
    """multipart/related body.  Written here because httpx builds only
    multipart/form-data, which STOW-RS does not accept.  Built whole (results are a few MB)
    so the request carries a Content-Length: not every server or proxy takes a chunked POST."""
    b = boundary.encode()
    parts: list[bytes] = []
    for f in files:
        parts += [b"--" + b + b"\r\nContent-Type: application/dicom\r\n\r\n", f.read_bytes(), b"\r\n"]
    parts.append(b"--" + b + b"--\r\n")
    return b"".join(parts)


def _uids_in(doc: dict[str, object], tag: str) -> dict[str, int | None]:
    """SOP Instance UID -> failure/warning reason (None when absent) of one sequence."""
    out: dict[str, int | None] = {}
    seq = doc.get(tag)
    items = seq.get("Value", []) if isinstance(seq, dict) else []
    reason_tag = _FAILURE_REASON if tag == _FAILED else _WARNING_REASON
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        uid_el, reason_el = item.get(_SOP_INSTANCE), item.get(reason_tag)
        uid = _first(uid_el)
        reason = _first(reason_el)
        if isinstance(uid, str):
            out[uid] = reason if isinstance(reason, int) else None
    return out


def _first(element: object) -> object:
    if isinstance(element, dict):
        value = element.get("Value")
        if isinstance(value, list) and value:
            return value[0]
    return None


def _response_doc(resp: httpx.Response) -> dict[str, object] | None:
    try:
        got = resp.json()
    except ValueError:
        return None
    if isinstance(got, list) and got and isinstance(got[0], dict):  # some servers wrap it in an array
        got = got[0]
    return got if isinstance(got, dict) else None


def _read_uid(path: Path) -> str | None:
    """The file's SOP Instance UID (to find it in the response); None if unreadable."""
    from pydicom import dcmread

    try:
        return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
    except Exception:  # noqa: BLE001 - any unreadable file is a permanent failure of that row
        return None


def send(config: Config, dest: DestinationConfig, rows: Sequence[OutboxRow]) -> dict[int, DeliveryError | None]:
    d = _own(dest)
    out: dict[int, DeliveryError | None] = {}
    todo: list[tuple[OutboxRow, Path, str]] = []
    for r in rows:
        p = Path(r.payload)
        uid = _read_uid(p) if p.is_file() else None
        if uid is None:
            out[r.id] = DeliveryError(f"payload file missing or not DICOM: {p.name}", permanent=True)
        else:
            todo.append((r, p, uid))
    if not todo:
        return out
    boundary = uuid.uuid4().hex
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    url = d.url.rstrip("/") + "/studies"
    try:
        with client(config, d) as c:
            resp = c.post(url, content=_multipart([p for _, p, _ in todo], boundary), headers=headers)
    except httpx.HTTPError as exc:  # connect/read timeouts, refused, TLS failures: try again later
        err = DeliveryError(f"STOW-RS to {d.name!r}: {type(exc).__name__}: {exc}")
        return {**out, **{r.id: err for r, _, _ in todo}}
    code = resp.status_code
    if code not in (200, 202, 409):
        permanent = 400 <= code < 500 and code not in (408, 429)
        err = DeliveryError(f"STOW-RS to {d.name!r}: HTTP {code}", permanent=permanent)
        return {**out, **{r.id: err for r, _, _ in todo}}
    doc = _response_doc(resp) or {}
    failed = _uids_in(doc, _FAILED)
    stored = _uids_in(doc, _REFERENCED)
    for r, _, uid in todo:
        if uid in failed:
            reason = failed[uid]
            transient = reason is not None and ((reason & 0xFF00) == 0xA700 or reason in _TRANSIENT_REASONS)
            text = "no reason given" if reason is None else f"reason 0x{reason:04X}"
            out[r.id] = DeliveryError(f"STOW-RS to {d.name!r}: instance refused ({text})", permanent=not transient)
        elif uid in stored or (code == 200 and not stored):
            out[r.id] = None  # 200 without a reference list: the whole request was stored
        else:
            out[r.id] = DeliveryError(f"STOW-RS to {d.name!r}: HTTP {code} did not acknowledge the instance")
    return out


def probe(config: Config, dest: DestinationConfig, timeout: float) -> tuple[bool, str]:
    """A QIDO-RS query that matches nothing (so no patient data comes back), authenticated
    as deliveries are: proves the URL, TLS and credentials, not just an open port."""
    d = _own(dest)
    try:
        with client(config, d) as c:
            resp = c.get(d.url.rstrip("/") + "/studies", params={"StudyInstanceUID": "2.25.1"},
                         headers={"Accept": "application/dicom+json"}, timeout=timeout)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    if resp.status_code in (200, 204):
        return True, "ok"
    if resp.status_code in (401, 403):
        return False, f"HTTP {resp.status_code} (credentials refused)"
    return False, f"HTTP {resp.status_code}"


def describe(dest: DestinationConfig) -> str:
    url = httpx.URL(_own(dest).url)
    return str(url.copy_with(username=None, password=None, query=None))


def cleartext(dest: DestinationConfig) -> str | None:
    d = _own(dest)
    return "http:// (insecure = true): no TLS" if d.url.lower().startswith("http://") else None


TYPE = DestinationType("dicomweb", send=send, probe=probe, describe=describe, cleartext=cleartext)
