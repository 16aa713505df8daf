"""What the receive path's two background threads share.

The index writer and the materialiser each take work from the handler threads and do it
after the response; both promise an association's release "everything you handed me
before this call is done", and both must give up at once while their thread cannot make
progress (a full disk), so that nobody blocks on it.  One condition, one thread, one
failure state and one wait, here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class BackgroundWorker:
    """A queue worker's shared state: ``_submitted`` counts what was handed over, the
    subclass counts what is done and sets ``_failing`` while it cannot make progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._submitted = 0
        self._failing: BaseException | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def failing(self) -> bool:
        """True while the last attempt failed (the work stays queued for a retry)."""
        return self._failing is not None

    def _healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._failing is None

    def _wait_until(self, reached: Callable[[], bool], deadline: float | None) -> bool:
        """With ``_cond`` held: wait until ``reached()``; False as soon as the thread cannot
        make progress or ``deadline`` (a ``time.monotonic()`` value) has passed."""
        while not reached():
            if not self._healthy():
                return False
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._cond.wait(left)
        return True

    def _end_thread(self, timeout: float) -> None:
        """Tell the thread to stop (it drains what it can first) and wait for it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
