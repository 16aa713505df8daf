"""After the response: journal records become spool files and index rows.

The C-STORE handler answers once an instance is sealed in the connection's journal
segment (one ``fdatasync``, ``aenode/store/journal.py``).  This thread then, in the order
the instances were answered:

1. copies the record's payload (``copy_file_range``: the kernel copies page cache to page
   cache) to ``spool/<study>/<series>/<sop>.dcm``, in place when the instance is new, else
   through ``spool/.tmp`` and an atomic rename over the old copy; no sync;
2. builds the instance's header record (``meta_from_dataset``, the costliest part of the
   header work, taken off the critical path) and queues its index row to the
   ``IndexWriter`` (group commit);
3. once every record of a segment is materialised and nothing was sealed for
   :data:`IDLE_RETIRE_SECONDS` (or, during a long burst, when too many segments wait),
   makes the spool durable with one ``syncfs`` and resets the segments for reuse.

While this process is receiving (a data set streaming in, or one sealed within
:data:`YIELD_SECONDS`) the thread waits, up to :data:`DEFER_MAX_BYTES` of records and as
long as the oldest waiting record is younger than ``max_defer_seconds`` (at most
:data:`MAX_DEFER_SECONDS`, a quarter of ``[stability] quiet_seconds`` when that is shorter:
the quiet rule counts from the last *indexed* arrival, so rows must never lag it): on a
small machine its work (a second copy of every byte, a header parse, index commits) competes
with the associations for the cores and the interpreter lock, and every instance's response
waits on that competition (measured in docs/BENCHMARKS.md, Ingest).  Past that backlog,
or when someone waits on :meth:`flush`, it works during the receive too.  An association
that ends (after its release was answered) waits for steps 1 and 2 of everything answered
before (:meth:`flush`) before the stabiliser hears of it, so a study is never completed
while its last instances are still in the journal.  If a spool file cannot be
written (disk full), the record stays in the journal, is retried, and new instances are
answered 0xA700 meanwhile.

Start-up (:meth:`Materialiser.start`) replays every segment this process can lock (its own
from before a crash, or those of a dead process or node sharing the spool); every
:data:`aenode.store.journal.ORPHAN_SCAN_SECONDS` it looks again for segments whose owner
died.  Replay is idempotent: the same record gives the same file, and a record older than
the indexed copy of its instance is skipped.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from aenode.logs import PHI_KEYWORDS, get_logger
from aenode.receive._flush import BackgroundWorker
from aenode.receive.indexer import IndexWriter
from aenode.store.index import Index, InstanceRecord
from aenode.store.journal import ORPHAN_SCAN_SECONDS, RECORD_HEADER, Journal, RecordInfo, Segment, sync_file_system
from aenode.store.meta import BadInstance, InstanceHeader, meta_from_dataset, read_meta
from aenode.store.spool import Spool, UnsafePath

log = get_logger("aenode.receive")

IDLE_RETIRE_SECONDS = 1.0
RETRY_SECONDS = 0.5
YIELD_SECONDS = 0.05
DEFER_MAX_BYTES = 384 << 20     # below journal.FREE_KEEP segments: a burst reuses written segments
MAX_DEFER_SECONDS = 1.0         # and never a record older than this (or a quarter of quiet_seconds)


@dataclass(frozen=True, slots=True)
class Sealed:
    """An answered instance whose record awaits materialisation."""

    segment: Segment
    offset: int
    info: RecordInfo
    header: Dataset | None        # parsed by the handler (None: read it from the file)
    own: bool


class Materialiser(BackgroundWorker):
    def __init__(self, journal: Journal, spool: Spool, writer: IndexWriter, own_ae: str,
                 max_defer_seconds: float = MAX_DEFER_SECONDS):
        super().__init__()
        self.max_defer_ns = int(min(max_defer_seconds, MAX_DEFER_SECONDS) * 1e9)
        self.journal = journal
        self.spool = spool
        self.writer = writer
        self.own_ae = own_ae
        self._queue: deque[Sealed] = deque()
        self._queued_bytes = 0
        self._flushing = 0       # callers waiting in flush(): no yielding to the receive meanwhile
        self._done = 0
        self._next_scan = 0.0
        self._maintenance_error: OSError | None = None
        self.replayed = 0          # records materialised by replays (tests, figures)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, index: Index) -> None:
        """Replay what a crash left, prepare spare segments, start the thread."""
        self.replay(self.journal.open(), index)
        self.spool.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
        with self._cond:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, args=(index,), name="aenode-materialiser",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Materialise what is queued, make it durable and reset the segments (a clean stop
        leaves nothing to replay), then end the thread and let the segments go."""
        self.flush(timeout)
        self._end_thread(timeout)
        if not self.failing:
            try:
                self._retire(idle_seconds=0.0)
            except OSError as exc:
                log.error("journal_retire_failed", error=type(exc).__name__)
        self.journal.close()

    def submit(self, item: Sealed) -> None:
        with self._cond:
            self._submitted += 1
            self._queue.append(item)
            self._queued_bytes += item.info.length
            if len(self._queue) == 1 or self._flushing:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every instance answered before this call is materialised and its index
        row committed; False on timeout, or at once while either cannot be written."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._flushing += 1
            self._cond.notify_all()
            try:
                if not self._wait_until(lambda: self._done >= target, deadline):
                    return False
            finally:
                self._flushing -= 1
        return self.writer.flush(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ---- the thread ------------------------------------------------------------------

    def _run(self, index: Index) -> None:
        while True:
            with self._cond:
                if not self._queue and not self._stopping:
                    self._cond.wait(0.25)
                if not self._queue and self._stopping:
                    return
                if self._queue and self._yielding():
                    age_left = (self._queue[0].info.received_ns + self.max_defer_ns - time.time_ns()) / 1e9
                    self._cond.wait(max(0.001, min(YIELD_SECONDS, age_left)))
                    continue
                item = self._queue[0] if self._queue else None
            if item is not None:
                try:
                    self._materialise(item)
                except OSError as exc:  # e.g. disk full: the record is safe in the journal; retry
                    with self._cond:
                        if self._failing is None:
                            log.error("materialise_failed", error=type(exc).__name__,
                                      errno=errno.errorcode.get(exc.errno or 0), queued=len(self._queue))
                        self._failing = exc
                        if not self._stopping:
                            self._cond.wait(RETRY_SECONDS)
                        else:
                            return  # the journal keeps it for the next start
                    continue
                except Exception:  # noqa: BLE001 - never lose the thread; the record stays in the journal
                    # Its segment keeps a pending record, so it is not reused: the next
                    # start-up replays it.
                    log.exception("materialise_error", sop_instance_uid=item.info.sop_instance_uid)
                with self._cond:
                    self._queued_bytes -= self._queue.popleft().info.length
                    self._done += 1
                    if self._failing is not None:
                        log.info("materialise_recovered")
                        self._failing = None
                    self._cond.notify_all()
                if self._queue:
                    continue
            try:
                self._retire(IDLE_RETIRE_SECONDS)
                if time.monotonic() >= self._next_scan:
                    self._next_scan = time.monotonic() + ORPHAN_SCAN_SECONDS
                    orphans = self.journal.orphans()
                    if orphans:
                        self.replay(orphans, index)
                self._maintenance_error = None
            except OSError as exc:
                if self._maintenance_error is None:
                    log.error("journal_maintenance_failed", error=type(exc).__name__)
                self._maintenance_error = exc
                time.sleep(RETRY_SECONDS)

    def _yielding(self) -> bool:
        """Wait for the receive to pause? (see the module docstring; called holding the lock)"""
        return (not self._stopping and not self._flushing and self._queued_bytes < DEFER_MAX_BYTES
                and time.time_ns() - self._queue[0].info.received_ns < self.max_defer_ns
                and self.journal.receiving(time.monotonic(), YIELD_SECONDS))

    def _retire(self, idle_seconds: float) -> None:
        ready = self.journal.retirable(time.monotonic(), idle_seconds)
        if not ready:
            return
        try:
            sync_file_system(self.spool.root)
        except BaseException:
            for seg in ready:
                self.journal.give_back(seg, time.monotonic())
            raise
        for seg in ready:
            self.journal.recycle(seg)

    # ---- one record --------------------------------------------------------------------

    def _write(self, seg: Segment, offset: int, info: RecordInfo) -> Path:
        """The record's payload as the instance's spool file (not synced): written in place
        when the instance is new, else through a temporary file renamed over the old copy."""
        created = self.spool.create_new(info.study_uid, info.series_uid, info.sop_instance_uid)
        if created is not None:
            fd, final = created
            _copy_into(seg, offset, info, fd, final)
            return final
        tmp = self.spool.tmp_path(info.sop_instance_uid)
        _copy_into(seg, offset, info, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), tmp)
        try:
            return self.spool.place(tmp, info.study_uid, info.series_uid, info.sop_instance_uid)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise

    def _materialise(self, item: Sealed) -> None:
        info = item.info
        try:
            final = self._write(item.segment, item.offset, info)
        except UnsafePath:  # cannot happen: the handler validated the UIDs
            log.error("materialise_unsafe_path", sop_instance_uid=info.sop_instance_uid)
            self.journal.materialised(item.segment)
            return
        meta = _header(item.header, info) if item.header is not None else _header_of_file(final, info)
        self.writer.submit(InstanceRecord(meta, final, info.length, info.calling_ae,
                                          info.received_ns / 1e9, item.own))
        self.journal.materialised(item.segment)

    # ---- replay ----------------------------------------------------------------------

    def replay(self, segments: list[Segment], index: Index) -> int:
        """Materialise and index every valid record of ``segments`` (locked by us), oldest
        first, make them durable, reset the segments; returns how many were materialised."""
        if not segments:
            return 0
        found: list[tuple[Segment, int, RecordInfo]] = []
        for seg in segments:
            good, bad = seg.scan()
            for offset, reason in bad:
                event = "journal_torn_tail_dropped" if reason == "torn_tail" else "journal_record_corrupt"
                log.warning(event, segment=seg.path.name, offset=offset, reason=reason)
            found += [(seg, offset, info) for offset, info in good]
        found.sort(key=lambda r: r[2].received_ns)
        indexed = index.received_times([info.sop_instance_uid for _, _, info in found])
        done = skipped = 0
        for seg, offset, info in found:
            at = indexed.get(info.sop_instance_uid)
            if at is not None and at > info.received_ns / 1e9 + 1e-6:
                skipped += 1  # a newer copy of the instance arrived (and was indexed) since
                continue
            try:
                final = self._write(seg, offset, info)
            except UnsafePath:
                log.error("journal_record_unusable", segment=seg.path.name, offset=offset)
                continue
            meta = _header_of_file(final, info)
            own = info.calling_ae == self.own_ae or meta.own_output
            self.writer.submit(InstanceRecord(meta, final, info.length, info.calling_ae,
                                              info.received_ns / 1e9, own))
            done += 1
        self.writer.flush(60)
        sync_file_system(self.spool.root)
        for seg in segments:
            self.journal.recycle(seg)
        self.replayed += done
        if found or done:
            log.info("journal_replayed", segments=len(segments), records=done, skipped_older=skipped)
        return done


def _copy(src_fd: int, src: int, length: int, dst_fd: int) -> None:
    """``length`` bytes from ``src`` in the journal to the start of ``dst_fd``: in the
    kernel (``copy_file_range``, page cache to page cache), or by reading and writing
    where the file system does not offer it."""
    left = length
    try:
        while left:
            n = os.copy_file_range(src_fd, dst_fd, left, src)
            if n <= 0:
                raise OSError(errno.EIO, "journal record shorter than its header")
            src, left = src + n, left - n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        while left:
            chunk = os.pread(src_fd, min(left, 1 << 20), src)
            if not chunk:
                raise OSError(errno.EIO, "journal record shorter than its header") from None
            os.write(dst_fd, chunk)
            src, left = src + len(chunk), left - len(chunk)


def _copy_into(seg: Segment, offset: int, info: RecordInfo, fd: int, path: Path) -> None:
    """The record's payload into ``fd`` (a new file at ``path``), which is closed; on any
    failure the partial file is removed."""
    try:
        _copy(seg.fd, offset + RECORD_HEADER, info.length, fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _minimal(info: RecordInfo) -> InstanceHeader:
    return InstanceHeader(study_uid=info.study_uid, series_uid=info.series_uid,
                          sop_instance_uid=info.sop_instance_uid, sop_class_uid=info.sop_class_uid,
                          transfer_syntax=info.transfer_syntax or None)


# The header record's ``phi`` (identifiers to mask in log lines while an instance is handled)
# is never stored, and this thread logs none: dropping those elements first spares
# ``meta_from_dataset`` converting every one of them (half of this thread's time).
_PHI_TAGS = [int(t) for t in (tag_for_keyword(k) for k in sorted(PHI_KEYWORDS)) if t is not None]


def _header(ds: Dataset, info: RecordInfo) -> InstanceHeader:
    for tag in _PHI_TAGS:
        if tag in ds:
            del ds[tag]
    try:
        return meta_from_dataset(ds, info.transfer_syntax or None)
    except BadInstance:
        # Already answered: index it with what the handler checked rather than lose it.
        log.warning("materialise_header_incomplete", sop_instance_uid=info.sop_instance_uid)
        return _minimal(info)


def _header_of_file(path: Path, info: RecordInfo) -> InstanceHeader:
    try:
        return read_meta(path, info.transfer_syntax or None)
    except BadInstance:
        log.warning("materialise_header_incomplete", sop_instance_uid=info.sop_instance_uid)
        return _minimal(info)
