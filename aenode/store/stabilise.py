"""Study completion ("stabilisation") and start-up reconciliation.

A ``receiving`` study becomes ``complete`` when no instance has arrived for
``stability.quiet_seconds`` (measured from the persisted last-arrival time, so the rule
survives a restart), or ``stability.after_release_seconds`` after the association that
sent it was released while no other association is still sending to it (in memory: after
a restart only the quiet timer applies).

Several nodes on one database (``[database] url``): the quiet timer uses the shared
last-arrival time, so a study sent to two nodes completes once, after the quiet period
since the last instance on either; ``mark_complete`` is conditional, so only one node's
stabiliser wins.  The release shortcut only knows this node's associations, so a node
takes it only when it received every instance of the study's current revision itself
(counted here, compared with the index); a study shared with another node waits for the
quiet period.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

from aenode.logs import get_logger
from aenode.store.index import Index
from aenode.store.meta import BadInstance, read_meta
from aenode.store.spool import Spool

log = get_logger("aenode.store")


class WakeEvent(Protocol):
    """``threading.Event`` in one process; ``multiprocessing.Event`` across ``aenode serve``'s."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


_completed: WakeEvent = threading.Event()


def share_completion_event(event: WakeEvent) -> None:
    """Use an event shared by the node's processes: a study completed in the receive
    process wakes the analysis processes at once instead of at their next poll."""
    global _completed
    _completed = event


def wait_for_completed(timeout: float) -> bool:
    """Wait until a study may have become complete (or ``timeout``); for the analysis worker."""
    woken = _completed.wait(timeout)
    _completed.clear()
    return woken


class ActivityTracker:
    """Which open associations are sending to which study (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._by_assoc: dict[object, set[str]] = defaultdict(set)
        self._senders: dict[str, int] = defaultdict(int)
        self._released_at: dict[str, float] = {}
        self._received: dict[str, int] = defaultdict(int)   # instances received here, per study
        self._last_local: dict[str, float] = {}

    def instance(self, assoc_key: object, study_uid: str) -> None:
        with self._lock:
            self._received[study_uid] += 1
            self._last_local[study_uid] = self._clock()
            studies = self._by_assoc[assoc_key]
            if study_uid not in studies:
                studies.add(study_uid)
                self._senders[study_uid] += 1

    def now(self) -> float:
        return self._clock()

    def ended(self, assoc_key: object, at: float | None = None) -> None:
        """The association ended (``at``: when, if earlier than now; the release rule counts
        from then)."""
        now = self._clock() if at is None else at
        with self._lock:
            for study in self._by_assoc.pop(assoc_key, ()):
                self._senders[study] -= 1
                if self._senders[study] <= 0:
                    del self._senders[study]
                self._released_at[study] = now

    def state(self, study_uid: str) -> tuple[bool, float | None]:
        """(someone is sending now, time of the last release)."""
        with self._lock:
            return self._senders.get(study_uid, 0) > 0, self._released_at.get(study_uid)

    def received(self, study_uid: str) -> int:
        """Instances of the study this node received since it last left ``receiving``
        (re-sent duplicates count again, which only ever disables the shortcut)."""
        with self._lock:
            return self._received.get(study_uid, 0)

    def forget(self, study_uid: str) -> None:
        with self._lock:
            self._released_at.pop(study_uid, None)
            self._received.pop(study_uid, None)
            self._last_local.pop(study_uid, None)

    def keep_only(self, receiving: set[str], listed_at: float) -> None:
        """Drop what is known about studies no longer receiving (another node completed
        them), so a later revision starts counting afresh; a study that received here
        since ``listed_at`` (when ``receiving`` was read) is kept."""
        with self._lock:
            for study in [s for s in {*self._received, *self._released_at} if s not in receiving
                          and self._last_local.get(s, 0.0) < listed_at]:
                self._received.pop(study, None)
                self._released_at.pop(study, None)
                self._last_local.pop(study, None)


class Stabiliser:
    def __init__(self, index: Index, tracker: ActivityTracker, quiet_seconds: float,
                 after_release_seconds: float, interval: float | None = None,
                 clock: Callable[[], float] = time.time, shared: bool = False):
        self.index = index
        self.shared = shared   # other nodes write the same index ([database] url)
        self._clock = clock
        self.tracker = tracker
        self.quiet = quiet_seconds
        self.after_release = after_release_seconds
        self.interval = interval or max(0.05, min(0.5, min(quiet_seconds, after_release_seconds or quiet_seconds) / 5))

    def due(self, study_uid: str, last_arrival: float, now: float) -> bool:
        if now - last_arrival >= self.quiet:
            return True
        if self.after_release <= 0:
            return False
        sending, released = self.tracker.state(study_uid)
        if not (not sending and released is not None and released >= last_arrival
                and now - released >= self.after_release):
            return False
        # Shared index: another node may still be receiving this study; only a study this
        # node received entirely may complete before the quiet period.
        return not self.shared or self.tracker.received(study_uid) == self.index.receiving_instance_count(study_uid)

    def tick(self) -> list[str]:
        """Declare every study complete whose quiet period has passed; returns their UIDs."""
        now = self._clock()
        done = []
        receiving = self.index.receiving_studies()
        if self.shared:
            self.tracker.keep_only({uid for uid, _ in receiving}, now)
        for study_uid, last in receiving:
            if self.due(study_uid, last, now) and self.index.mark_complete(study_uid, last):
                self.tracker.forget(study_uid)
                done.append(study_uid)
                _completed.set()
                log.info("study_complete", study_uid=study_uid, quiet_for=round(now - last, 3))
        return done

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - keep stabilising; the database may be busy
                log.exception("stabiliser_error")
            stop.wait(self.interval)


def reconcile(index: Index, spool: Spool) -> int:
    """Index spool files missing from the index (e.g. after a power loss)."""
    known = index.known_instances()
    added = 0
    for path in spool.files():
        if path.stem in known:
            continue
        try:
            meta = read_meta(path)
            own = meta.own_output
            st = path.stat()
            index.record_instance(meta, path, st.st_size, calling_ae=None,
                                  received_at=st.st_mtime, own_output=own)
            added += 1
        except (BadInstance, OSError) as exc:
            log.warning("reconcile_skipped_file", file=spool.relative(path), error=type(exc).__name__)
    if added:
        log.info("reconciled", instances=added)
    return added
