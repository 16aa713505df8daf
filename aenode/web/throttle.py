"""Login throttling and a bound on password-hash work.

Two independent defences against password guessing and login floods:

- :class:`LoginThrottle` counts failed logins per account and per client address.  An
  address that keeps failing is blocked (exponential, capped at
  ``[web] login_max_block_seconds``); an account that keeps failing makes every further
  attempt on it wait (exponential, capped at ``[web] login_max_delay_seconds``).  Refused
  attempts are not verified and not counted, so an attacker cannot extend a block by
  hammering it, and the account delay is capped and expires on its own: the attacker can
  slow the admin down, never lock them out (the attacker's own address is blocked far
  longer than the account is delayed).
- :class:`VerifierGate` lets at most ``[web] login_concurrency`` argon2 verifications run
  at once (each costs 64 MiB and a core for ~50 ms) with at most ``[web] login_queue``
  waiting; beyond that a login is answered 429 at once.  This keeps a login flood from
  starving the DICOM receiver of CPU and memory.

Both live in memory (a restart forgets them; they are rate limits, not records).  Hand
written: the maintained rate limiters (slowapi, limits) count requests in fixed windows,
not failed logins with exponential back-off per account and address.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ACCOUNT_FREE_FAILURES = 5    # failed logins per account before attempts are delayed
ADDRESS_FREE_FAILURES = 20   # failed logins per address (any account) before it is blocked
MAX_TRACKED = 10000          # keys kept (oldest forgotten first), so memory stays bounded


@dataclass
class _Failures:
    count: int
    last: float
    until: float  # refused until this time (clock)


class LoginThrottle:
    """Failed-login bookkeeping; ``clock`` is injectable so tests need not sleep."""

    def __init__(self, *, max_delay: float = 30.0, max_block: float = 3600.0,
                 account_free: int = ACCOUNT_FREE_FAILURES, address_free: int = ADDRESS_FREE_FAILURES,
                 clock: Callable[[], float] = time.monotonic):
        self.max_delay = max_delay
        self.max_block = max_block
        self.account_free = account_free
        self.address_free = address_free
        self.clock = clock
        self._lock = threading.Lock()
        self._accounts: OrderedDict[str, _Failures] = OrderedDict()
        self._addresses: OrderedDict[str, _Failures] = OrderedDict()

    @staticmethod
    def _backoff(count: int, free: int, cap: float) -> float:
        if count < free:
            return 0.0
        return min(cap, 2.0 ** min(count - free, 30))

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until this account may be tried from this address (0: go ahead)."""
        now = self.clock()
        with self._lock:
            wait = 0.0
            for table, key in ((self._addresses, address), (self._accounts, account)):
                f = table.get(key)
                if f is not None and f.until > now:
                    wait = max(wait, f.until - now)
            return wait

    def _bump(self, table: OrderedDict[str, _Failures], key: str, free: int, cap: float, now: float) -> None:
        f = table.get(key)
        if f is None or now - f.last > 2 * cap:  # quiet long enough: start over
            f = _Failures(0, now, 0.0)
        f.count += 1
        f.last = now
        f.until = now + self._backoff(f.count, free, cap)
        table[key] = f
        table.move_to_end(key)
        while len(table) > MAX_TRACKED:
            table.popitem(last=False)

    def failed(self, account: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            self._bump(self._accounts, account, self.account_free, self.max_delay, now)
            self._bump(self._addresses, address, self.address_free, self.max_block, now)

    def succeeded(self, account: str, address: str) -> None:
        with self._lock:
            self._accounts.pop(account, None)
            self._addresses.pop(address, None)


class Busy(Exception):
    """Too many logins are being verified; the client should retry later (HTTP 429)."""


class VerifierGate:
    """At most ``concurrency`` password verifications at once, ``queue`` more waiting."""

    def __init__(self, concurrency: int = 1, queue: int = 8, wait_seconds: float = 10.0):
        self._slots = threading.BoundedSemaphore(concurrency)
        self._queue = queue
        self._wait = wait_seconds
        self._waiting = 0
        self._lock = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self._slots.acquire(blocking=False):
            try:
                yield
            finally:
                self._slots.release()
            return
        with self._lock:
            if self._waiting >= self._queue:
                raise Busy
            self._waiting += 1
        try:
            got = self._slots.acquire(timeout=self._wait)
        finally:
            with self._lock:
                self._waiting -= 1
        if not got:
            raise Busy
        try:
            yield
        finally:
            self._slots.release()
