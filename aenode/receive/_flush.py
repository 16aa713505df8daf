"""The wait behind ``flush()`` of the receive path's two background threads.

The index writer and the materialiser both promise an association's release "everything
you handed me before this call is done", and both must give up at once while their thread
cannot make progress (a full disk), so that nobody blocks on it: one loop, shared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wait_until(cond: threading.Condition, reached: Callable[[], bool], healthy: Callable[[], bool],
               deadline: float | None) -> bool:
    """With ``cond`` held: wait until ``reached()``; False as soon as ``healthy()`` is
    false or ``deadline`` (a ``time.monotonic()`` value) has passed."""
    while not reached():
        if not healthy():
            return False
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        cond.wait(left)
    return True
