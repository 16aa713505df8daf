"""``aenode export --send NAME``: the exported files through the outbox to a destination.

Each file is one outbox row (kind = the destination's type, object id ``export:<SOP UID>``),
so a second export enqueues nothing new, a failed file is retried with the outbox's
backoff (here, or by ``aenode serve``'s delivery worker) and shows in ``aenode retry``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from aenode.config import Config
from aenode.deliver.destinations import find_destination
from aenode.deliver.outbox import Outbox
from aenode.deliver.worker import DeliveryWorker


def send_files(config: Config, destination: str, files: list[Path], *, wait_seconds: float = 60.0,
               progress: Callable[[str], None] | None = None) -> dict[str, int]:
    """Enqueue ``files`` for ``destination`` and deliver them; returns rows per state.

    Delivery stops when every row is sent or failed, or after ``wait_seconds`` when some
    wait for a retry (they stay queued: ``aenode serve`` or the next export sends them)."""
    dest = find_destination(config, destination)
    if dest is None:
        raise KeyError(f"--send: no destination named {destination!r} in [[destinations]]")
    say = progress or (lambda _line: None)
    outbox = Outbox.for_config(config)
    try:
        ids = []
        for f in files:
            if f.suffix != ".dcm":
                continue
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
            ids.append(outbox.enqueue(dest.type, dest.name, f"export:{ds.SOPInstanceUID}", f,
                                      study_uid=str(ds.StudyInstanceUID)))
        worker = DeliveryWorker(config, outbox=outbox)
        deadline = time.monotonic() + wait_seconds
        wanted = set(ids)
        while True:
            worker.run_once()
            states: dict[str, int] = {}
            for row_id in wanted:
                row = outbox.get(row_id)
                state = row.state if row else "missing"
                states[state] = states.get(state, 0) + 1
            say(f"send to {destination}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
            if not states.get("pending") and not states.get("sending"):
                return states
            if time.monotonic() >= deadline:
                return states
            due = outbox.next_due_in()
            time.sleep(min(max(due or 0.2, 0.05), max(deadline - time.monotonic(), 0.05), 2.0))
    finally:
        outbox.close()
