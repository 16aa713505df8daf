"""A deliberately small DICOM Upper Layer client on raw sockets, for attacks and fuzzing.

Real peers (DCMTK, pynetdicom) refuse to send what an attacker sends: oversized or
truncated PDUs, trickled bytes, half messages, a data set that contradicts its
presentation context.  This builds those byte by byte (PS3.8 section 9.3, PS3.7 annex E).
"""

from __future__ import annotations

import socket
import time

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.7433.1"


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _item(kind: int, data: bytes) -> bytes:
    return bytes((kind, 0)) + len(data).to_bytes(2, "big") + data


def associate_rq(called: str = "AENODE", calling: str = "RAWSCU",
                 contexts: tuple[tuple[int, str, tuple[str, ...]], ...] = ((1, VERIFICATION, (IMPLICIT_LE,)),
                                                                          (3, CT, (EXPLICIT_LE,))),
                 max_pdu: int = 16384) -> bytes:
    body = (1).to_bytes(2, "big") + b"\0\0" + called.ljust(16).encode() + calling.ljust(16).encode() + b"\0" * 32
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for cid, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        body += _item(0x20, bytes((cid, 0, 0, 0)) + sub)
    body += _item(0x50, _item(0x51, max_pdu.to_bytes(4, "big")) + _item(0x52, IMPLEMENTATION_UID.encode()))
    return bytes((1, 0)) + len(body).to_bytes(4, "big") + body


def _element(element: int, value: bytes) -> bytes:
    return (0).to_bytes(2, "little") + element.to_bytes(2, "little") + len(value).to_bytes(4, "little") + value


def command(field: int, sop_class: str, message_id: int = 1, sop_instance: str | None = None,
            data_set: bool = False) -> bytes:
    """An encoded request command set (implicit VR little endian, group length first)."""
    elements = _element(0x0002, _uid(sop_class)) + _element(0x0100, field.to_bytes(2, "little"))
    elements += _element(0x0110, message_id.to_bytes(2, "little"))
    if field == 0x0001:
        elements += _element(0x0700, (0).to_bytes(2, "little"))
    elements += _element(0x0800, (0x0001 if data_set else 0x0101).to_bytes(2, "little"))
    if sop_instance is not None:
        elements += _element(0x1000, _uid(sop_instance))
    return _element(0x0000, len(elements).to_bytes(4, "little")) + elements


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    return (len(data) + 2).to_bytes(4, "big") + bytes((context_id, control)) + data


def p_data(*items: bytes) -> bytes:
    body = b"".join(items)
    return bytes((4, 0)) + len(body).to_bytes(4, "big") + body


def encode_dataset(ds: Dataset, implicit: bool = False) -> bytes:
    raw = encode(ds, implicit, True)
    assert raw is not None
    return raw


def recv_pdu(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """One whole PDU, or b"" when the peer closed first."""
    sock.settimeout(timeout)
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return b""
        head += chunk
    length = int.from_bytes(head[2:6], "big")
    body = b""
    while len(body) < length:
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            return b""
        body += chunk
    return head + body


def accepted_contexts(ac: bytes) -> dict[int, int]:
    """{context id: result} of an A-ASSOCIATE-AC (result 0 = acceptance)."""
    out: dict[int, int] = {}
    offset = 6 + 68
    while offset + 4 <= len(ac):
        kind, length = ac[offset], int.from_bytes(ac[offset + 2:offset + 4], "big")
        if kind == 0x21:
            out[ac[offset + 4]] = ac[offset + 6]
        offset += 4 + length
    return out


def response_status(pdu: bytes) -> int | None:
    """The Status (0000,0900) of a response command carried in a P-DATA-TF PDU."""
    data = pdu[12:]
    offset = 0
    while offset + 8 <= len(data):
        element = int.from_bytes(data[offset + 2:offset + 4], "little")
        length = int.from_bytes(data[offset + 4:offset + 8], "little")
        if element == 0x0900:
            return int.from_bytes(data[offset + 8:offset + 10], "little")
        offset += 8 + length
    return None


def connect(port: int, source: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class RawAssociation:
    """An association made by hand; ``ok`` tells whether it was accepted."""

    def __init__(self, port: int, source: str = "127.0.0.1", calling: str = "RAWSCU",
                 contexts: tuple[tuple[int, str, tuple[str, ...]], ...] | None = None, timeout: float = 5.0):
        self.sock = connect(port, source, timeout)
        self.sock.sendall(associate_rq(calling=calling, **({"contexts": contexts} if contexts else {})))
        try:
            reply = recv_pdu(self.sock, timeout)
        except OSError:
            reply = b""
        self.reply = reply
        self.ok = bool(reply) and reply[0] == 2
        self.contexts = accepted_contexts(reply) if self.ok else {}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def echo(self, message_id: int = 1) -> int | None:
        self.send(p_data(pdv(1, 3, command(0x0030, VERIFICATION, message_id))))
        return response_status(recv_pdu(self.sock))

    def store(self, ds: Dataset, context_id: int = 3, sop_class: str | None = None, message_id: int = 1) -> int | None:
        cmd = command(0x0001, sop_class or str(ds.SOPClassUID), message_id, str(ds.SOPInstanceUID), data_set=True)
        self.send(p_data(pdv(context_id, 3, cmd)))
        self.send(p_data(pdv(context_id, 2, encode_dataset(ds))))
        return response_status(recv_pdu(self.sock, timeout=30))

    def release(self) -> None:
        try:
            self.send(bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
            recv_pdu(self.sock, timeout=2)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the peer closes (or aborts) the connection within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            return True
        if not data:
            return True
    return False
