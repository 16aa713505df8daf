"""The delivery worker: drains the outbox, with backoff, until stopped.

Wiring (``aenode.node``): ``DeliveryWorker(config, outbox=...)``; ``run(stop_event)``.
In-process producers call :func:`notify` after enqueueing so delivery starts at once
instead of at the next poll.  Rows are routed by ``kind`` to the sender registered for
it: destination types (``dicom``, ``dicomweb``) register theirs when
:mod:`aenode.deliver.destinations` is imported (here); alert channels register theirs
in :mod:`aenode.alert.senders`, which the alert stage imports.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Protocol

import aenode.deliver.destinations  # noqa: F401 - registers the destination types' senders
from aenode.config import Config
from aenode.deliver.errors import DeliveryError
from aenode.deliver.outbox import Outbox, OutboxRow
from aenode.deliver.senders import get_sender
from aenode.logs import get_logger

log = get_logger("aenode.deliver")

class WakeEvent(Protocol):
    """``threading.Event`` in one process; ``multiprocessing.Event`` across ``aenode serve``'s."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


_wakeup: WakeEvent = threading.Event()


def notify() -> None:
    """Wake the delivery worker (new rows were enqueued)."""
    _wakeup.set()


def share_wakeup(event: WakeEvent) -> None:
    """Use an event shared by the node's processes, so an analysis process's new rows wake
    the delivery process at once instead of at its next poll."""
    global _wakeup
    _wakeup = event


class DeliveryWorker:
    def __init__(self, config: Config, index: object = None, *, outbox: Outbox | None = None, batch: int = 50):
        # ``index`` is accepted (and unused) so the first wave's factory signature keeps working.
        self.config = config
        self.outbox = outbox or Outbox.for_config(config)
        self._own_outbox = outbox is None
        self.batch = batch

    def resume_interrupted(self) -> int:
        """Make rows a crashed process left ``sending`` due now (call once at start).

        Those rows may have reached the receiver before the crash: this resend is the
        at-least-once half of the contract, with the row's unchanged key."""
        return self.outbox.release_leases()

    def _attempt(self, kind: str, destination: str, group: list[OutboxRow]) -> dict[int, DeliveryError | None]:
        sender = get_sender(kind)
        if sender is None:
            return {r.id: DeliveryError(f"no sender registered for kind {kind!r}") for r in group}
        try:
            return sender(self.config, destination, group)
        except Exception as exc:  # noqa: BLE001 - a sender bug is a failed attempt, not a dead worker
            return {r.id: DeliveryError(f"{type(exc).__name__}: {exc}") for r in group}

    def run_once(self) -> int:
        """Attempt every due row once; returns how many rows were attempted."""
        rows = self.outbox.claim_due(limit=self.batch)
        if not rows:
            return 0
        groups: dict[tuple[str, str], list[OutboxRow]] = defaultdict(list)
        for r in rows:
            groups[(r.kind, r.destination)].append(r)
        for (kind, destination), group in groups.items():
            t0 = time.perf_counter()
            results = self._attempt(kind, destination, group)
            send_s = round(time.perf_counter() - t0, 4)
            for r in group:
                err = results.get(r.id, DeliveryError("sender returned no result"))
                if err is None:
                    self.outbox.mark_sent(r.id)
                    log.info("delivery_sent", row=r.id, kind=kind, destination=destination,
                             attempt=r.attempts + 1, study_uid=r.study_uid, send_s=send_s, batch=len(group))
                else:
                    state = self.outbox.mark_failed_attempt(r.id, str(err), permanent=err.permanent)
                    (log.error if state == "failed" else log.warning)(
                        "delivery_failed" if state == "failed" else "delivery_retrying", row=r.id, kind=kind,
                        destination=destination, attempt=r.attempts + 1, state=state, error=str(err),
                        study_uid=r.study_uid)
        return len(rows)

    def run(self, stop_event: threading.Event) -> None:
        poll = self.config.delivery.poll_seconds
        log.info("delivery_worker_started", destinations=len(self.config.destinations),
                 resumed_rows=self.resume_interrupted())
        try:
            while not stop_event.is_set():
                _wakeup.clear()
                try:
                    n = self.run_once()
                except Exception:  # noqa: BLE001 - keep the worker alive (e.g. a locked DB)
                    log.exception("delivery_loop_failed")
                    n = 0
                if n:
                    continue
                due = self.outbox.next_due_in()
                wait = poll if due is None else min(poll, max(due, 0.01))
                # wake on new rows, on stop, or at the next due time
                if _wakeup.wait(wait):
                    continue
        finally:
            log.info("delivery_worker_stopped")
            if self._own_outbox:
                self.outbox.close()
