"""Where one received C-STORE data set is streamed: a journal record, or a temporary file.

:class:`JournalEntry` (the normal case) appends the data set to the connection's journal
segment (``aenode/store/journal.py``) and computes its CRC32 on the way; the C-STORE
handler seals it with one ``fdatasync``.  :class:`SpoolTempFile` is the fallback when no
journal segment can be had (the journal folder cannot be written): it goes the older way,
fsync, rename and folder sync, and reports the error where it happens.

The association (``association.py``) writes the P-DATA fragments of a C-STORE data set to
the sink its connection gives it; a :class:`SpoolTempFile` lives in the spool's ``.tmp``
folder, so that the committed instance is one rename away.  It is written from the
network thread, so errors are remembered rather than raised: the C-STORE handler
answers 0xA700 (disk full, I/O error) or 0xC000 (``max_instance_bytes`` exceeded) and the
association carries on.  Past ``max_instance_bytes`` nothing more is written.

Every file is registered with its connection, which closes and removes any file still open
when the connection ends (a peer that drops in the middle of a C-STORE leaks nothing).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from aenode.receive.dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, even
from aenode.store.journal import RECORD_HEADER, Segment


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002 (PS3.5 7.1.2)."""
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHI", 0x0002, tag, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, tag, vr, len(value)) + value


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, 'DICM' and File Meta Information (PS3.10 7.1) for a received data set, so
    that the stored instance is a DICOM file, the data set byte for byte as sent.

    Encoded here rather than with pydicom's ``write_file_meta_info``: seven fixed elements,
    and pydicom's writer took 0.18 ms per instance, a fifth of what DCMTK's whole storescp
    spends on one (tests/receive/test_dimse.py reads the result back with pydicom).
    The UIDs are the peer's, as sent (cut at 64 characters: the C-STORE handler refuses
    malformed ones anyway)."""
    body = (_explicit(0x0001, b"OB", b"\x00\x01")
            + _explicit(0x0002, b"UI", even(sop_class_uid[:64], b"\0"))
            + _explicit(0x0003, b"UI", even(sop_instance_uid[:64], b"\0"))
            + _explicit(0x0010, b"UI", even(transfer_syntax, b"\0"))
            + _explicit(0x0012, b"UI", even(IMPLEMENTATION_CLASS_UID, b"\0"))
            + _explicit(0x0013, b"SH", even(IMPLEMENTATION_VERSION_NAME, b" ")))
    if source_ae:
        body += _explicit(0x0016, b"AE", even(source_ae[:16], b" "))
    return b"\0" * 128 + b"DICM" + _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


class InstanceTooLarge(Exception):
    """The data set exceeded ``max_instance_bytes`` (the rest was discarded)."""


HEAD_BYTES = 64 * 1024
"""How much of each data set's start a sink keeps in memory for the C-STORE handler's
header checks (``aenode/receive/headscan.py``): a CT header is 2-4 KB."""


class _LimitedSink:
    """What both sinks below do with the association's writes: count every byte, keep at most
    ``max_bytes`` (past it, or after a write error, the rest is discarded and ``error``
    says why, so the handler answers with a refusal instead of the association failing).

    ``head`` holds the first :data:`HEAD_BYTES` of the data set (what follows the Part 10
    header given to :meth:`begin`), so that its header can be read without a file read."""

    max_bytes: int
    error: OSError | InstanceTooLarge | None
    size: int
    head: bytearray
    data_start: int = 0

    def begin(self, part10: bytes) -> None:
        """Write the Part 10 header that precedes the data set."""
        self.write(part10)
        self.data_start = len(part10)
        self.head = bytearray()

    @property
    def head_is_whole(self) -> bool:
        """``head`` holds the whole data set."""
        return len(self.head) == self.size - self.data_start

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        self.size += n
        if len(self.head) < HEAD_BYTES:
            self.head += data[:HEAD_BYTES - len(self.head)]
        if self.error is None:
            if self.size > self.max_bytes:
                self.error = InstanceTooLarge()
            else:
                try:
                    with memoryview(data) as view:
                        self._put(view)
                except OSError as exc:
                    self.error = exc
        return n

    def _put(self, view: memoryview) -> None:
        raise NotImplementedError


class SpoolTempFile(_LimitedSink):
    """A received data set in its own temporary file (the fallback, see the module doc)."""

    def __init__(self, directory: Path, max_bytes: int, suffix: str = ".dcm"):
        fd, name = tempfile.mkstemp(suffix=suffix, dir=str(directory))
        self.name = name
        self._fd = fd
        self.max_bytes = max_bytes
        self.error: OSError | InstanceTooLarge | None = None
        self.size = 0  # bytes received (also those discarded past the limit)
        self.head = bytearray()
        self.closed = False

    @property
    def path(self) -> Path:
        return Path(self.name)

    def _put(self, view: memoryview) -> None:
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def fileno(self) -> int:
        return self._fd

    def reader(self) -> BinaryIO:
        """The data set as received, to read its header."""
        return open(self.name, "rb")  # noqa: SIM115 - the caller closes it

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)

    def finish(self) -> None:
        """The C-STORE handler is done with it: close it and remove it unless it was
        committed (renamed into the spool)."""
        if not self.closed:
            self.close()
        try:
            os.unlink(self.name)
        except OSError:
            pass

    def discard(self) -> None:
        """Close and remove the file unless it was already closed (committed or handled)."""
        if self.closed:
            return
        self.close()
        try:
            os.unlink(self.name)
        except OSError:
            pass


class _Window(io.RawIOBase):
    """Bytes ``[start, start + length)`` of a file descriptor, read with ``pread`` (the
    header reader wraps it in a BufferedReader: few system calls, nothing else held)."""

    name = "<journal record>"  # pydicom reads ``.name`` of a file object

    def __init__(self, fd: int, start: int, length: int):
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._length - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(buffer)[:n]], self._start + self._pos)
        self._pos += got
        return got


class JournalEntry(_LimitedSink):
    """One data set streamed into a journal segment (the normal case).

    The payload goes to ``offset + RECORD_HEADER``; the header is written when the handler
    seals the record (:meth:`aenode.store.journal.Segment.append`).  Until then the bytes
    are not a record: an entry that is refused or dropped leaves nothing to replay."""

    def __init__(self, segment: Segment, max_bytes: int):
        self.segment = segment
        self.offset = segment.cursor
        self._pos = self.offset + RECORD_HEADER
        self.max_bytes = max_bytes
        self.error: OSError | InstanceTooLarge | None = None
        self.size = 0
        self.crc = 0
        self.head = bytearray()
        self.closed = False

    def _put(self, view: memoryview) -> None:
        self.crc = zlib.crc32(view, self.crc)
        while view:
            written = os.pwrite(self.segment.fd, view, self._pos)
            self._pos += written
            view = view[written:]

    def reader(self) -> BinaryIO:
        return io.BufferedReader(_Window(self.segment.fd, self.offset + RECORD_HEADER, self.size),
                                 buffer_size=64 * 1024)

    def close(self) -> None:
        """Sealed or refused: the connection may start the next entry."""
        if not self.closed:
            self.closed = True
            if self.segment.entry is self:
                self.segment.entry = None

    def finish(self) -> None:
        """The C-STORE handler is done with it (sealed or refused)."""
        self.close()

    def discard(self) -> None:
        self.close()
