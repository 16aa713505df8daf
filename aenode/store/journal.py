"""The receive journal: one ``fdatasync`` per received instance before the sender hears success.

Why: making each instance durable as its own spool file costs two syncs (the file, then
its folder after the rename), each of which on ext4 also commits file-system metadata.
Instead each association appends its instances to a **journal segment**, a preallocated,
already written file, and syncs once with ``fdatasync``: no size change, no extent
conversion, so the sync flushes data blocks and the device cache only.  After the
response a background materialiser (``aenode/receive/materialise.py``) writes every
record out as the ordinary spool file ``spool/<study>/<series>/<sop>.dcm`` without a
sync, indexes it, and a segment is reused only after one ``syncfs`` has made every file
it produced durable.  The spool layout, and everything the later stages read, is unchanged.

Segment file (``<data_dir>/journal/<host>.<pid>.<thread>.<random>.jnl``)::

    [4 KiB segment header: magic, generation, CRC32]
    [record header, 512 bytes][payload: the DICOM file as received][padding to 4 KiB] ...

A record header holds the magic, the segment's generation, the payload's length and
CRC32, the arrival time and the study/series/SOP instance/SOP class UIDs, the transfer
syntax and the calling AE title, and its own CRC32.  A record is valid when both CRCs
match and its generation is the segment's current one.  Records start at 4 KiB
boundaries; scanning stops at the first record header that is not valid and has no valid
one after it (the tail).  Reusing a segment writes a new random generation into its header
(after the ``syncfs``), which invalidates every older record at once without rewriting it.

Crash safety: the payload and its header are written, then ``fdatasync``, then the
response.  A crash before the sync leaves a torn tail record (bad CRC or no header),
never acknowledged, dropped on replay; a record with a valid header and a payload that
fails its CRC in the middle of a segment (bit rot) is not materialised and is logged
(``journal_record_corrupt``); a damaged record header in the middle is logged the same way
and the records after it are still found.  A segment whose own header is not valid was being (re)set
when the crash came, after its records were already durable in the spool: it is empty.

Ownership and sharing: a segment is locked (``flock``, exclusive) by the process that
uses it for as long as it lives.  At start-up, and every :data:`ORPHAN_SCAN_SECONDS`
afterwards, a receive process replays every segment it can lock (those of a process or
node that died), so with a spool shared by several nodes any node replays a dead node's
segments; ``flock`` works across hosts on NFSv4 (lock leases expire with the host).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aenode.logs import get_logger
from aenode.store.spool import fsync_dir, writer_id

log = get_logger("aenode.store")

SUFFIX = ".jnl"
SEGMENT_BYTES = 16 << 20          # a segment's preallocated size (a larger record grows it)
SEGMENT_HEADER = 4096
RECORD_HEADER = 512
ALIGN = 4096
FREE_KEEP = 32                    # free segments kept per process for reuse (512 MiB); more are removed
RETIRE_BACKLOG = 8                # while receiving, segments left un-retired before one is retired
ORPHAN_SCAN_SECONDS = 30.0
_SEG_MAGIC = b"AEJSEG01"
_REC_MAGIC = b"AEJREC01"
_SEG_FMT = struct.Struct("<8sQ")         # magic, generation (then CRC32 of these)
_REC_FMT = struct.Struct("<8sQQQI")      # magic, generation, payload length, arrival ns, payload CRC32


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN




_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def sync_file_system(path: Path) -> None:
    """Make everything written to the file system holding ``path`` durable (``syncfs``).

    One flush for all the spool files a segment produced, instead of a sync per file and
    folder; there is no ``os.syncfs``, hence ctypes (``os.sync`` where it is missing)."""
    fn = getattr(_libc, "syncfs", None)
    if fn is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What a record header says about its payload."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    calling_ae: str
    received_ns: int
    length: int
    crc: int


def pack_record(generation: int, info: RecordInfo) -> bytes:
    strings = b"".join(struct.pack("<H", len(s)) + s for s in (
        v.encode("ascii", "replace") for v in (info.study_uid, info.series_uid, info.sop_instance_uid,
                                                info.sop_class_uid, info.transfer_syntax, info.calling_ae)))
    body = _REC_FMT.pack(_REC_MAGIC, generation, info.length, info.received_ns, info.crc) + strings
    if len(body) > RECORD_HEADER - 4:
        raise ValueError("record header too long")
    body = body.ljust(RECORD_HEADER - 4, b"\0")
    return body + struct.pack("<I", zlib.crc32(body))


def unpack_record(buf: bytes, generation: int) -> RecordInfo | None:
    """The record header in ``buf`` if it is valid and of ``generation``, else None."""
    if len(buf) < RECORD_HEADER or buf[:8] != _REC_MAGIC:
        return None
    body = buf[:RECORD_HEADER - 4]
    if struct.unpack("<I", buf[RECORD_HEADER - 4:RECORD_HEADER])[0] != zlib.crc32(body):
        return None
    magic, gen, length, received_ns, crc = _REC_FMT.unpack_from(body)
    if gen != generation:
        return None
    pos = _REC_FMT.size
    strings = []
    for _ in range(6):
        (n,) = struct.unpack_from("<H", body, pos)
        strings.append(body[pos + 2:pos + 2 + n].decode("ascii", "replace"))
        pos += 2 + n
    study, series, sop, sop_class, ts, calling = strings
    return RecordInfo(study, series, sop, sop_class, ts, calling, received_ns, length, crc)


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@dataclass(eq=False)
class Segment:
    """One journal file, locked by this process while it is open."""

    path: Path
    fd: int
    generation: int
    cursor: int = SEGMENT_HEADER      # where the next record goes
    records: int = 0                  # records written in this generation
    pending: int = 0                  # of which not yet materialised
    busy: bool = False                # held by a connection
    entry: object | None = None       # the data set being streamed into it (one at a time)
    last_used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def full(self) -> bool:
        return self.cursor >= SEGMENT_BYTES

    @classmethod
    def create(cls, directory: Path) -> Segment:
        """A new segment, preallocated (``posix_fallocate``: no size change on sync).  Its
        first use still converts unwritten extents at each sync; reused, it no longer does."""
        for _attempt in range(100):
            path = directory / f"{writer_id()}.{os.urandom(4).hex()}{SUFFIX}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            if not _lock(fd):  # another process scanning for orphans got it first
                os.close(fd)
                continue
            break
        else:
            raise OSError(errno.EEXIST, "no free journal segment name")
        try:
            os.posix_fallocate(fd, 0, SEGMENT_BYTES)
            seg = cls(path, fd, 0)
            seg._new_generation(sync=False)
            os.fsync(fd)
            fsync_dir(directory)
            return seg
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise

    @classmethod
    def adopt(cls, path: Path) -> Segment | None:
        """Open and lock an existing segment (None: another process holds it, or it is gone)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None
        if not _lock(fd):
            os.close(fd)
            return None
        if not path.exists():  # removed by its previous owner between open and lock
            os.close(fd)
            return None
        head = os.pread(fd, _SEG_FMT.size + 4, 0)
        gen = -1  # matches no record: an invalid header means an empty segment (see module doc)
        if len(head) == _SEG_FMT.size + 4 and head[:8] == _SEG_MAGIC and \
                struct.unpack("<I", head[-4:])[0] == zlib.crc32(head[:-4]):
            gen = _SEG_FMT.unpack(head[:-4])[1]
        return cls(path, fd, gen)

    def _new_generation(self, sync: bool = True) -> None:
        gen = int.from_bytes(os.urandom(8), "little")
        head = _SEG_FMT.pack(_SEG_MAGIC, gen)
        os.pwrite(self.fd, head + struct.pack("<I", zlib.crc32(head)), 0)
        if sync:
            os.fdatasync(self.fd)
        self.generation, self.cursor, self.records, self.pending = gen, SEGMENT_HEADER, 0, 0

    def reset(self) -> None:
        """Invalidate every record (they are durable in the spool by now) and start again."""
        if os.fstat(self.fd).st_size > SEGMENT_BYTES:
            os.ftruncate(self.fd, SEGMENT_BYTES)  # a big record grew it
            os.fsync(self.fd)
        self._new_generation()

    def append(self, offset: int, info: RecordInfo) -> None:
        """Seal the record whose payload was written at ``offset + RECORD_HEADER``: write
        its header, then one ``fdatasync`` for both (the response may follow)."""
        os.pwrite(self.fd, pack_record(self.generation, info), offset)
        os.fdatasync(self.fd)
        self.cursor = _align(offset + RECORD_HEADER + info.length)
        self.records += 1

    def scan(self) -> tuple[list[tuple[int, RecordInfo]], list[tuple[int, str]]]:
        """(valid records as (offset, info), dropped ones as (offset, reason))."""
        good: list[tuple[int, RecordInfo]] = []
        bad: list[tuple[int, str]] = []
        size = os.fstat(self.fd).st_size
        offset = SEGMENT_HEADER
        while offset + RECORD_HEADER <= size:
            info = unpack_record(os.pread(self.fd, RECORD_HEADER, offset), self.generation)
            if info is None:
                # The tail, or a record header damaged in the middle: every valid header of
                # this generation is a sealed record (a sender cannot forge one without the
                # random generation), so look for one further on, at record alignment.
                following = self._next_header(offset + ALIGN, size)
                if following is None:
                    break
                bad.append((offset, "header_corrupt"))
                offset = following
                continue
            end = offset + RECORD_HEADER + info.length
            if end > size or self.payload_crc(offset, info.length) != info.crc:
                bad.append((offset, "crc_mismatch"))
            else:
                good.append((offset, info))
            offset = _align(end)
        # A bad record with nothing valid after it is the torn tail of a crash (never answered).
        if bad and (not good or bad[-1][0] > good[-1][0]):
            bad[-1] = (bad[-1][0], "torn_tail")
        self.cursor, self.records = offset, len(good) + len(bad)
        return good, bad

    def _next_header(self, start: int, size: int) -> int | None:
        for offset in range(start, size - RECORD_HEADER + 1, ALIGN):
            head = os.pread(self.fd, RECORD_HEADER, offset)
            if head[:8] == _REC_MAGIC and unpack_record(head, self.generation) is not None:
                return offset
        return None

    def payload_crc(self, offset: int, length: int) -> int:
        crc, pos, end = 0, offset + RECORD_HEADER, offset + RECORD_HEADER + length
        while pos < end:
            chunk = os.pread(self.fd, min(1 << 20, end - pos), pos)
            if not chunk:
                return -1
            crc = zlib.crc32(chunk, crc)
            pos += len(chunk)
        return crc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.close()




class Journal:
    """This process's journal segments: a pool handed to connections and reused."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.last_seal = 0.0              # monotonic time of the last record sealed
        self._lock = threading.Lock()
        self._mine: dict[Path, Segment] = {}
        self._free: list[Segment] = []

    def segments(self) -> list[Segment]:
        with self._lock:
            return list(self._mine.values())

    def open(self) -> list[Segment]:
        """Create the folder, lock every segment nobody holds and return them (the caller
        replays their records, then calls :meth:`recycle`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.orphans()

    def orphans(self) -> list[Segment]:
        """Segments left by a process (or node) that died: locked by us from now on."""
        found = []
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):
            with self._lock:
                if path in self._mine:
                    continue
            seg = Segment.adopt(path)
            if seg is not None:
                with self._lock:
                    self._mine[path] = seg
                seg.busy = True  # not handed out before it is replayed
                found.append(seg)
        return found

    def recycle(self, seg: Segment) -> None:
        """``seg``'s records are durable in the spool: reset it and keep it for reuse (or
        remove it when enough are kept)."""
        with self._lock:
            keep = len(self._free) < FREE_KEEP
            if not keep:
                self._mine.pop(seg.path, None)
        if not keep:
            seg.remove()
            return
        seg.reset()
        with self._lock:
            seg.busy = False
            self._free.append(seg)

    def take(self) -> Segment:
        """A segment for one connection: a partly used one first (fewer segments to
        retire), else an empty one, else a new one."""
        with self._lock:
            candidates = [s for s in self._free if not s.full]
            if candidates:
                seg = max(candidates, key=lambda s: s.records)
                self._free.remove(seg)
                seg.busy = True
                return seg
        seg = Segment.create(self.dir)
        with self._lock:
            self._mine[seg.path] = seg
            seg.busy = True
        return seg

    def seal(self, seg: Segment, offset: int, info: RecordInfo) -> None:
        """Make one record durable (:meth:`Segment.append`); it is pending until materialised."""
        seg.append(offset, info)
        with self._lock:
            seg.pending += 1
            self.last_seal = time.monotonic()

    def materialised(self, seg: Segment) -> None:
        with self._lock:
            seg.pending -= 1

    def give_back(self, seg: Segment, now: float) -> None:
        with self._lock:
            seg.busy = False
            seg.last_used = now
            if not seg.full:
                self._free.append(seg)

    def receiving(self, now: float, quiet_seconds: float) -> bool:
        """A data set is being streamed into one of this process's segments, or a record was
        sealed within ``quiet_seconds``."""
        with self._lock:
            if now - self.last_seal < quiet_seconds:
                return True
            return any(s.entry is not None for s in self._mine.values())

    def retirable(self, now: float, idle_seconds: float) -> list[Segment]:
        """Segments to retire now (after one sync of the spool they can be reset): those
        whose every record is materialised, once nothing was sealed for ``idle_seconds``,
        or, while receiving, the full ones when more than :data:`RETIRE_BACKLOG` segments
        hold records.  Why wait: the sync writes back every spool file materialised since
        the last one, and on the same disk that delays the journal's fdatasyncs (each a
        sender waiting for its response); idle, it delays nobody."""
        with self._lock:
            idle = now - self.last_seal >= idle_seconds
            backlog = sum(1 for s in self._mine.values() if s.records) > RETIRE_BACKLOG
            out = [s for s in self._mine.values() if not s.busy and s.records and not s.pending
                   and (idle or (backlog and s.full))]
            for s in out:
                s.busy = True
                if s in self._free:
                    self._free.remove(s)
            return out

    def close(self) -> None:
        """Let the segments go (their locks with them).  One still held by a connection
        that did not end stays open: its threads may still write to the descriptor, which
        must not become another file's meanwhile; the process's exit closes it."""
        with self._lock:
            segs, self._mine, self._free = list(self._mine.values()), {}, []
        for s in segs:
            if not s.busy:
                s.close()

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments())
