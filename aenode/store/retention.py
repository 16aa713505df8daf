"""Retention: received images are deleted a while after their study's results left.

Patient images must not accumulate without bound.  A study's spooled instances are
deleted ``[retention] keep_days`` after its analysis ended, and only once everything
queued for it (SR/SC to PACS, alerts) has been delivered.  Results, the study's record
and the audit stay; ``aenode status`` and the dashboard show when the images were
deleted.

Order of a deletion, safe at every step: the instance rows go and the deletion time is
recorded in one transaction; then the files are unlinked (only those not rewritten since,
so a re-sent instance that arrives meanwhile is kept) and their folders fsynced.  A crash
in between leaves orphan files, which the next pass (and start-up reconciliation)
recognise by that time and delete instead of re-indexing.  A late instance after the
deletion opens a new revision like any late instance.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from aenode.logs import get_logger
from aenode.store.index import Index
from aenode.store.spool import Spool, fsync_dir

log = get_logger("aenode.store")


class DeliveryState(Protocol):
    """What retention needs from the delivery stage (given by :mod:`aenode.node`)."""

    def settled(self, study_uid: str) -> bool:
        """True when nothing queued for the study is still pending, sending or failed."""


class Retention:
    def __init__(self, index: Index, spool: Spool, delivery: DeliveryState, *, keep_seconds: float,
                 interval_seconds: float = 600.0, clock: Callable[[], float] = time.time):
        self.index = index
        self.spool = spool
        self.delivery = delivery
        self.keep_seconds = keep_seconds
        self.interval_seconds = interval_seconds
        self._clock = clock

    def run_once(self) -> int:
        """Delete what is due; returns the number of studies whose images were deleted."""
        done = 0
        for claim in self.index.purge_candidates(self._clock() - self.keep_seconds):
            if not self.delivery.settled(claim.study_uid):
                continue
            purged = self.index.purge_instances(claim.study_uid, claim.revision)
            if purged is None:
                continue  # reopened by a late instance meanwhile
            at, paths = purged
            removed = self._unlink(paths, at)
            self._remove_orphans(claim.study_uid, at)
            done += 1
            log.info("study_images_deleted", study_uid=claim.study_uid, revision=claim.revision, files=removed)
        return done

    def _unlink(self, paths: list[Path], purged_at: float) -> int:
        removed = 0
        folders = set()
        for path in paths:
            try:
                if path.stat().st_mtime > purged_at:
                    continue  # re-sent after the deletion: it belongs to the next revision
                path.unlink()
                removed += 1
                folders.add(path.parent)
            except FileNotFoundError:
                continue
        for folder in folders:
            fsync_dir(folder)
            try:
                folder.rmdir()  # empty series folder
                self.spool.forget_dir(folder)
                fsync_dir(folder.parent)
            except OSError:
                pass
        return removed

    def _remove_orphans(self, study_uid: str, purged_at: float) -> None:
        """Files of the study written before its deletion but never indexed (a crash)."""
        folder = self.spool.root / study_uid
        if not folder.is_dir():
            return
        known = {i.path for i in self.index.instances(study_uid)}
        stale = [p for p in folder.glob("*/*.dcm") if p not in known and p.stat().st_mtime <= purged_at]
        self._unlink(stale, purged_at)
        try:
            folder.rmdir()
            self.spool.forget_dir(folder)
            fsync_dir(folder.parent)
        except OSError:
            pass

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - try again next interval (e.g. a busy disk)
                log.exception("retention_failed")
            stop.wait(self.interval_seconds)


def remove_purged_orphans(index: Index, spool: Spool) -> int:
    """At start-up, before reconciliation: files of purged studies that a crash left behind."""
    purged = index.purged_studies()
    removed = 0
    for study_uid, at in purged.items():
        folder = spool.root / study_uid
        if not folder.is_dir():
            continue
        known = {i.path for i in index.instances(study_uid)}
        for p in folder.glob("*/*.dcm"):
            if p not in known and p.stat().st_mtime <= at:
                os.unlink(p)
                removed += 1
    return removed
