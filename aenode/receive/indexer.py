"""Index rows written after the C-STORE response, group-committed across associations.

Why: with SQLite in WAL mode and ``synchronous=FULL`` every commit is a sync of the
database file; one commit per instance on the receive thread was one of three syncs
per instance.  The journal record (on the fallback path, the fsynced spool file) is the
durable record of a received instance; its index row follows, written by one thread that
commits everything queued so far in one transaction
(:meth:`aenode.store.index.Index.record_instances`).

The gap is closed in two ways:

* a crash (kill -9, power loss) between the response and the commit loses only index
  rows of durable spool files, and start-up reconciliation
  (:func:`aenode.store.stabilise.reconcile`) re-indexes exactly those;
* once an association has ended, every row it produced is committed before the stabiliser
  hears of it (:meth:`IndexWriter.flush`, through ``Materialiser.flush`` in
  ``StorageSCP.association_ended``), so a study is never completed whose last rows are
  still queued.

If the index cannot be written (disk full, database locked), rows stay queued and are
retried; meanwhile new instances are answered 0xA700 (out of resources) so senders
retry, as before this change.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from aenode.logs import get_logger
from aenode.receive._flush import BackgroundWorker
from aenode.store.index import Index, InstanceRecord

log = get_logger("aenode.receive")

MAX_BATCH = 512            # rows per transaction
MAX_QUEUED = 100_000       # beyond this, rows are dropped (start-up reconciliation covers them)
RETRY_SECONDS = 0.5


class IndexWriter(BackgroundWorker):
    """One thread committing queued :class:`InstanceRecord` rows in batches."""

    def __init__(self, index: Index, *, max_batch: int = MAX_BATCH, retry_seconds: float = RETRY_SECONDS):
        super().__init__()       # _submitted: rows ever submitted
        self.index = index
        self.max_batch = max_batch
        self.retry_seconds = retry_seconds
        self._queue: deque[InstanceRecord] = deque()
        self._committed = 0      # rows ever committed (or dropped), in submission order
        self.batches = 0         # commits made (for tests and figures)

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="aenode-index-writer", daemon=True)
            self._thread.start()

    def submit(self, record: InstanceRecord) -> None:
        """Queue one row (its spool file is already durable)."""
        if self._thread is None:
            self.start()
        with self._cond:
            self._submitted += 1
            if len(self._queue) >= MAX_QUEUED:
                self._committed += 1  # dropped: start-up reconciliation indexes the file
                log.warning("index_queue_full", queued=len(self._queue))
                return
            self._queue.append(record)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every row submitted before this call is committed; False on timeout,
        or at once while the index cannot be written (nobody waits on a full disk)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            return self._wait_until(lambda: self._committed >= target, deadline)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued (within ``timeout``; at once while failing: start-up
        reconciliation indexes the rest), then end the thread."""
        self.flush(timeout)
        self._end_thread(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return  # stopping and drained
                if self._stopping and self._failing is not None:
                    return  # cannot write: leave the rest to start-up reconciliation
                batch = [self._queue[i] for i in range(min(self.max_batch, len(self._queue)))]
            try:
                self.index.record_instances(batch)
            except Exception as exc:  # noqa: BLE001 - e.g. disk full under SQLite: retry later
                with self._cond:
                    if self._failing is None:
                        log.error("index_write_failed", error=type(exc).__name__, queued=len(self._queue))
                    self._failing = exc
                    self._cond.wait(self.retry_seconds)
                continue
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self._committed += len(batch)
                self.batches += 1
                if self._failing is not None:
                    log.info("index_write_recovered", rows=len(batch))
                    self._failing = None
                self._cond.notify_all()
