"""The DIMSE messages the node serves (PS3.7): C-STORE-RQ and C-ECHO-RQ in, their responses out.

Why by hand rather than pynetdicom's ``dimse_messages``: a command set is a handful of
implicit VR little endian elements of group 0000, and the node needs five of them from a
request and writes seven into a response.  pynetdicom builds a pydicom ``Dataset`` and a
primitive for each message and hands it between two threads; on a 400-instance study that
machinery alone took longer than DCMTK's whole storescp (docs/BENCHMARKS.md, "Ingest").
Here decoding is one pass over bytes already bounded by ``pdu.MessageWatch`` (which has
checked the element framing, the command and the 64 KiB bound), and a response is a few
``struct.pack`` calls, fragmented to the peer's maximum PDU length.  Tests check both
directions against pydicom's decoder and real peers (DCMTK storescu, Orthanc).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aenode import __version__
from aenode.receive.pdu import C_ECHO_RQ, NO_DATA_SET, P_DATA_TF, command_elements

# The node's identity in A-ASSOCIATE-AC and in the File Meta of what it stores: the 2.25
# form of a fixed UUID (uuid5 of the project's URL) and the version.
IMPLEMENTATION_CLASS_UID = "2.25.183520535974778629483531637697343576644"
IMPLEMENTATION_VERSION_NAME = f"AENODE_{__version__.replace('.', '')}"[:16]

STATUS_SUCCESS = 0x0000
C_STORE_RSP = 0x8001
C_ECHO_RSP = 0x8030
# Command set elements (PS3.7 E.1-1), group 0000.
_GROUP_LENGTH = 0x0000
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_RESPONDED = 0x0120
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_AFFECTED_SOP_INSTANCE = 0x1000
# PDV message control header bits (PS3.8 E.2): command, last fragment.
COMMAND = 0x01
LAST = 0x02


@dataclass(frozen=True, slots=True)
class Command:
    """What the node reads from a request's command set (UIDs as sent, NUL/space padding removed)."""

    field: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_data_set: bool

    @property
    def is_echo(self) -> bool:
        return self.field == C_ECHO_RQ


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("ascii", errors="replace").rstrip("\0 ")


def _ushort(raw: bytes | None) -> int:
    return int.from_bytes(raw, "little") if raw is not None and len(raw) == 2 else 0


def decode_command(command: bytes | bytearray) -> Command:
    """A request's command set (already checked by ``pdu.MessageWatch``)."""
    elements = command_elements(command)
    return Command(field=_ushort(elements.get(_COMMAND_FIELD)),
                   message_id=_ushort(elements.get(_MESSAGE_ID)),
                   sop_class_uid=_text(elements.get(_AFFECTED_SOP_CLASS)),
                   sop_instance_uid=_text(elements.get(_AFFECTED_SOP_INSTANCE)),
                   has_data_set=_ushort(elements.get(_DATA_SET_TYPE)) != NO_DATA_SET)


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def even(value: str, pad: bytes) -> bytes:
    """``value`` as ASCII padded to an even length (PS3.5 7.1: UIs with NUL, text with a space)."""
    raw = value.encode("ascii", errors="replace")
    return raw + pad if len(raw) % 2 else raw


def response(request: Command, status: int) -> bytes:
    """The encoded command set answering ``request`` (C-STORE-RSP or C-ECHO-RSP, no data set)."""
    field = C_ECHO_RSP if request.is_echo else C_STORE_RSP
    body = _element(_AFFECTED_SOP_CLASS, even(request.sop_class_uid, b"\0"))
    body += _element(_COMMAND_FIELD, struct.pack("<H", field))
    body += _element(_MESSAGE_ID_RESPONDED, struct.pack("<H", request.message_id))
    body += _element(_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    body += _element(_STATUS, struct.pack("<H", status))
    if not request.is_echo:
        body += _element(_AFFECTED_SOP_INSTANCE, even(request.sop_instance_uid, b"\0"))
    return _element(_GROUP_LENGTH, struct.pack("<I", len(body))) + body


def command_pdus(context_id: int, command: bytes, peer_max_pdu: int) -> bytes:
    """``command`` as P-DATA-TF PDUs of one PDV each, none longer than the peer accepts
    (``peer_max_pdu`` 0: no limit)."""
    room = len(command) if peer_max_pdu <= 0 else max(1, peer_max_pdu - 6)  # PDV item header
    out = bytearray()
    for start in range(0, len(command), room):
        fragment = command[start:start + room]
        control = COMMAND | (LAST if start + room >= len(command) else 0)
        out += struct.pack(">BBIIBB", P_DATA_TF, 0, len(fragment) + 6, len(fragment) + 2, context_id, control)
        out += fragment
    return bytes(out)

