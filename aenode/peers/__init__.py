"""Real peers of the node, started locally: a PACS (Orthanc) and an alert receiver.

The tests and ``aenode demo`` use them so that every integration path runs against the
real thing on loopback ports, not a mock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` seconds pass.

    Returns its last value (so callers can assert on it or use it); peers answer
    asynchronously, and a bounded poll is how tests and the demo wait for them.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    return predicate()
