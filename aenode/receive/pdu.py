"""Bounded reading of DICOM Upper Layer PDUs (PS3.8 section 9.3), independent of pynetdicom.

Everything a peer sends passes through :class:`PDUReader` before pynetdicom decodes it, so
that no declared length, slow sender or endless message can make the node allocate memory,
hold a thread or keep an association slot beyond the configured ``[limits]``:

* a PDU's declared length is checked against its limit *before* anything is allocated
  (``max_pdu_bytes`` for P-DATA-TF, ``max_associate_request_bytes`` for everything else);
  a large P-DATA-TF is read into a buffer that grows as bytes actually arrive;
* each PDU must arrive completely within ``pdu_timeout_seconds`` of its first byte, the
  A-ASSOCIATE-RQ within ``associate_timeout_seconds`` of the TCP accept;
* :class:`MessageWatch` follows the PDV items of P-DATA-TF PDUs: one DIMSE message
  (command plus data set) must be complete within ``message_timeout_seconds``; the command
  set is bounded (:data:`MAX_COMMAND_BYTES`); only C-STORE-RQ, C-ECHO-RQ and C-CANCEL-RQ
  are accepted (the node is a Storage and Verification SCP) and only C-STORE carries a data
  set (its size is bounded where it is written to disk, see ``spoolfile.py``).

A violation raises :class:`PDURefused` (a reason code in snake_case and, where a setting
decides it, the name of that ``[limits]`` key); a closed or broken connection raises
:class:`PeerClosed`.  Nothing else is raised for any input (fuzzed in
tests/receive/test_fuzz.py).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aenode.config import LimitsConfig

# PDU types (PS3.8 table 9-1)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_TYPES = frozenset({A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF,
                       A_RELEASE_RQ, A_RELEASE_RP, A_ABORT})
HEADER = 6

# DIMSE command fields (PS3.7 E.1) the node serves as an SCP.
C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
ACCEPTED_COMMANDS = frozenset({C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ})
NO_DATA_SET = 0x0101

# A command set is a few hundred bytes; 64 KiB is far beyond any real one.
MAX_COMMAND_BYTES = 64 * 1024
# The first allocation for a PDU body; larger bodies grow as their bytes arrive.
INITIAL_BUFFER = 1024 * 1024

Clock = Callable[[], float]


class PDURefused(Exception):
    """The peer broke a protocol rule or a configured bound; the association is aborted."""

    def __init__(self, reason: str, limit: str | None = None):
        super().__init__(reason if limit is None else f"{reason} ({limit})")
        self.reason = reason
        self.limit = limit


class PeerClosed(Exception):
    """The connection was closed, reset or failed while reading."""


@dataclass(frozen=True, slots=True)
class AssociateHeader:
    """The fixed fields of an A-ASSOCIATE-RQ (PS3.8 table 9-11)."""

    protocol_version: int
    called_ae: str
    calling_ae: str


def parse_associate_header(pdu: bytes | bytearray | memoryview) -> AssociateHeader:
    """Called and calling AE titles of a complete A-ASSOCIATE-RQ PDU (header included)."""
    if len(pdu) < HEADER + 68 or pdu[0] != A_ASSOCIATE_RQ:
        raise PDURefused("malformed_associate_request")
    version = int.from_bytes(pdu[6:8], "big")

    def title(raw: bytes | bytearray | memoryview) -> str:
        return bytes(raw).decode("ascii", errors="replace").strip(" \x00")

    return AssociateHeader(version, title(pdu[10:26]), title(pdu[26:42]))


def abort_pdu(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8); source 2 = service provider, reason 0 = not specified."""
    return bytes((A_ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason))


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 permanent, 2 transient."""
    return bytes((A_ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0, result, source, reason))


def _fill(sock: socket.socket, buf: bytearray, start: int, end: int, deadline: float,
          clock: Clock, timeout_reason: str, timeout_limit: str) -> None:
    """Receive exactly ``buf[start:end]`` before ``deadline``."""
    got = start
    with memoryview(buf) as view:
        while got < end:
            remaining = deadline - clock()
            if remaining <= 0:
                raise PDURefused(timeout_reason, timeout_limit)
            try:
                sock.settimeout(min(remaining, 86400.0))
                with view[got:end] as part:
                    n = sock.recv_into(part)
            except TimeoutError:
                raise PDURefused(timeout_reason, timeout_limit) from None
            except (OSError, ValueError):
                raise PeerClosed() from None
            if not n:
                raise PeerClosed()
            got += n


def read_pdu(sock: socket.socket, limits: LimitsConfig, deadline: float, *, clock: Clock = time.monotonic,
             associate: bool = False) -> bytearray:
    """Read one whole PDU (its 6-byte header included) before ``deadline``.

    ``associate``: the first PDU of a connection, which must be an A-ASSOCIATE-RQ; the
    deadline is then the association deadline rather than a PDU deadline.
    """
    if associate:
        reason, limit = "associate_timeout", "associate_timeout_seconds"
    else:
        reason, limit = "pdu_timeout", "pdu_timeout_seconds"
    header = bytearray(HEADER)
    _fill(sock, header, 0, HEADER, deadline, clock, reason, limit)
    pdu_type = header[0]
    length = int.from_bytes(header[2:6], "big")
    if pdu_type not in PDU_TYPES:
        raise PDURefused("unknown_pdu_type")
    if associate and pdu_type != A_ASSOCIATE_RQ:
        raise PDURefused("expected_associate_request")
    if pdu_type == P_DATA_TF:
        if length > limits.max_pdu_bytes:
            raise PDURefused("pdu_too_large", "max_pdu_bytes")
    elif length > limits.max_associate_request_bytes:
        raise PDURefused("pdu_too_large", "max_associate_request_bytes")
    total = HEADER + length
    buf = bytearray(min(total, HEADER + INITIAL_BUFFER))
    buf[:HEADER] = header
    got = HEADER
    while True:
        _fill(sock, buf, got, len(buf), deadline, clock, reason, limit)
        got = len(buf)
        if got >= total:
            return buf
        # The peer has sent everything asked so far: grow (at most doubling) and go on.
        buf.extend(bytes(min(got, total - got)))


def command_elements(command: bytes | bytearray) -> dict[int, bytes]:
    """The elements of an encoded command set (implicit VR LE, group 0000) by element number."""
    out: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if end - offset < 8:
            raise PDURefused("malformed_command")
        group, element, length = struct.unpack_from("<HHI", command, offset)
        offset += 8
        if group != 0x0000 or length > end - offset:
            raise PDURefused("malformed_command")
        out[element] = bytes(command[offset:offset + length])
        offset += length
    return out


def parse_command(command: bytes | bytearray) -> tuple[int, int | None]:
    """(CommandField, CommandDataSetType) of an encoded command set (implicit VR LE)."""
    elements = command_elements(command)
    values: list[int | None] = []
    for element in (0x0100, 0x0800):
        raw = elements.get(element)
        if raw is not None and len(raw) != 2:
            raise PDURefused("malformed_command")
        values.append(None if raw is None else int.from_bytes(raw, "little"))
    field, data_set_type = values
    if field is None:
        raise PDURefused("malformed_command")
    return field, data_set_type


def pdv_items(pdu: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(presentation context ID, message control header, start, end of the fragment) of
    each PDV item of a complete P-DATA-TF PDU (PS3.8 9.3.5); ``PDURefused`` on bad framing."""
    offset, end = HEADER, len(pdu)
    if end <= HEADER:
        raise PDURefused("malformed_pdv")
    while offset < end:
        if end - offset < 6:
            raise PDURefused("malformed_pdv")
        item = int.from_bytes(pdu[offset:offset + 4], "big")
        if item < 2 or item > end - offset - 4:
            raise PDURefused("malformed_pdv")
        yield pdu[offset + 4], pdu[offset + 5], offset + 6, offset + 4 + item
        offset += 4 + item


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Best effort (an A-ABORT or A-ASSOCIATE-RJ to a peer that may be gone): at most 1 s."""
    try:
        sock.settimeout(1.0)
        sock.sendall(data)
    except (OSError, ValueError):
        pass


class MessageWatch:
    """Follows the DIMSE message carried by P-DATA-TF PDUs (PS3.8 annex E)."""

    def __init__(self, limits: LimitsConfig):
        self.limits = limits
        self.reset()

    def reset(self) -> None:
        self.started: float | None = None
        self.command = bytearray()
        self.command_done = False
        self.has_data_set = False
        self.data_set_bytes = 0

    @property
    def in_message(self) -> bool:
        return self.started is not None

    def check_deadline(self, now: float) -> None:
        if self.started is not None and now - self.started > self.limits.message_timeout_seconds:
            raise PDURefused("message_timeout", "message_timeout_seconds")

    def feed(self, pdu: bytes | bytearray | memoryview, now: float) -> None:
        """Check one complete P-DATA-TF PDU (header included)."""
        self.check_deadline(now)
        for _context_id, control, data_start, data_end in pdv_items(pdu):
            if self.started is None:
                self.started = now
            if control & 1:  # command fragment
                if self.command_done:
                    raise PDURefused("unexpected_command_fragment")
                if len(self.command) + (data_end - data_start) > MAX_COMMAND_BYTES:
                    raise PDURefused("command_too_large")
                self.command += pdu[data_start:data_end]
                if control & 2:  # last fragment of the command
                    field, data_set_type = parse_command(self.command)
                    if field not in ACCEPTED_COMMANDS:
                        raise PDURefused("unsupported_command")
                    self.command_done = True
                    if data_set_type == NO_DATA_SET:
                        self.reset()
                    elif field != C_STORE_RQ:
                        raise PDURefused("unexpected_data_set")
                    else:
                        self.has_data_set = True
            else:  # data set fragment
                if not self.has_data_set:
                    raise PDURefused("unexpected_data_set")
                self.data_set_bytes += data_end - data_start
                if control & 2:
                    self.reset()


class PDUReader:
    """Reads the PDUs of one connection with the configured bounds."""

    def __init__(self, limits: LimitsConfig, clock: Clock = time.monotonic):
        self.limits = limits
        self.clock = clock
        self.watch = MessageWatch(limits)

    def read_associate_request(self, sock: socket.socket, deadline: float) -> bytearray:
        return read_pdu(sock, self.limits, deadline, clock=self.clock, associate=True)

    def read(self, sock: socket.socket) -> bytearray:
        """The next PDU of an association (called once data is waiting on the socket)."""
        start = self.clock()
        pdu = read_pdu(sock, self.limits, start + self.limits.pdu_timeout_seconds, clock=self.clock)
        if pdu[0] == P_DATA_TF:
            self.watch.feed(pdu, self.clock())
        try:
            sock.settimeout(self.limits.idle_timeout_seconds)  # for pynetdicom's sends
        except OSError:
            pass
        return pdu

    def check_idle(self) -> None:
        """Raise :class:`PDURefused` when the message in progress is past its deadline."""
        self.watch.check_deadline(self.clock())
