"""The delivery worker: drains the outbox, with backoff, until stopped.

Pipeline factory signature: ``DeliveryWorker(config, index)``; ``run(stop_event)``.
In-process producers call :func:`notify` after enqueueing so delivery starts at once
instead of at the next poll.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from aenode.deliver.dicom import DeliveryError
from aenode.deliver.outbox import Outbox
from aenode.deliver.senders import get_sender
from aenode.logs import get_logger

log = get_logger("aenode.deliver")

_wakeup = threading.Event()

# Modules that register senders for other kinds (imported when present).
SENDER_MODULES: tuple[str, ...] = ("aenode.alert.senders",)


def _load_sender_modules() -> None:
    import importlib

    for name in SENDER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name and name.startswith(exc.name)):
                raise


def notify() -> None:
    """Wake the delivery workers of this process (new rows were enqueued)."""
    _wakeup.set()


class DeliveryWorker:
    def __init__(self, config, index=None, *, outbox: Outbox | None = None, batch: int = 50):
        self.config = config
        self.index = index
        self.outbox = outbox or Outbox.for_config(config)
        self._own_outbox = outbox is None
        self.batch = batch
        _load_sender_modules()

    def resume_interrupted(self) -> int:
        """Make rows a crashed process left ``sending`` due now (call once at start)."""
        return self.outbox.release_leases()

    def run_once(self) -> int:
        """Attempt every due row once; returns how many rows were attempted."""
        rows = self.outbox.claim_due(limit=self.batch)
        if not rows:
            return 0
        groups = defaultdict(list)
        for r in rows:
            groups[(r.kind, r.destination)].append(r)
        for (kind, destination), group in groups.items():
            sender = get_sender(kind)
            if sender is None:
                results = {r.id: DeliveryError(f"no sender registered for kind {kind!r}") for r in group}
            else:
                try:
                    results = sender(self.config, destination, group)
                except Exception as exc:  # noqa: BLE001 - a sender bug is a failed attempt, not a dead worker
                    results = {r.id: DeliveryError(f"{type(exc).__name__}: {exc}") for r in group}
            for r in group:
                err = results.get(r.id, DeliveryError("sender returned no result"))
                if err is None:
                    self.outbox.mark_sent(r.id)
                    log.info("delivered", row=r.id, kind=kind, destination=destination, attempt=r.attempts + 1)
                else:
                    state = self.outbox.mark_failed_attempt(r.id, str(err), permanent=getattr(err, "permanent", False))
                    (log.error if state == "failed" else log.warning)(
                        "delivery attempt failed", row=r.id, kind=kind, destination=destination,
                        attempt=r.attempts + 1, state=state, error=str(err))
        return len(rows)

    def run(self, stop_event: threading.Event) -> None:
        poll = self.config.delivery.poll_seconds
        log.info("delivery worker started", destinations=len(self.config.destinations),
                 resumed_rows=self.resume_interrupted())
        try:
            while not stop_event.is_set():
                _wakeup.clear()
                try:
                    n = self.run_once()
                except Exception:  # noqa: BLE001 - keep the worker alive (e.g. a locked DB)
                    log.exception("delivery loop error")
                    n = 0
                if n:
                    continue
                due = self.outbox.next_due_in()
                wait = poll if due is None else min(poll, max(due, 0.01))
                # wake on new rows, on stop, or at the next due time
                if _wakeup.wait(wait):
                    continue
        finally:
            log.info("delivery worker stopped")
            if self._own_outbox:
                self.outbox.close()
