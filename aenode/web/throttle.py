"""Login throttling and a bound on password-hash work.

Two independent defences against password guessing and login floods:

- :class:`LoginThrottle` counts failed logins per account (at each client address) and per
  client address.  After ``ACCOUNT_FREE_FAILURES`` failures on one account from one
  address, further attempts on that account from that address wait (exponential back-off,
  capped at ``[web] login_max_delay_seconds``); after ``ADDRESS_FREE_FAILURES`` failures
  from one address (on any accounts) that address is blocked (from one minute, doubling,
  capped at ``[web] login_max_block_seconds``).  Refused attempts are neither verified nor
  counted, so hammering a block does not extend it.  Because the account rule is kept per
  address, an attacker cannot lock anyone out from another address: the admin at their
  own workstation is never delayed by someone else's failures, and the attacker's own
  address is blocked long before it guesses much (20 guesses per block period).
  Distributed guessing from many addresses is slowed by the per-address block and logged
  (``web_login_guessing``) for the operator.
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
from typing import TypeVar

ACCOUNT_FREE_FAILURES = 5    # failed logins on one account from one address before attempts wait
ADDRESS_FREE_FAILURES = 20   # failed logins from one address (any account) before it is blocked
ADDRESS_FIRST_BLOCK = 60.0   # seconds of the first address block (doubling after that)
GUESSING_WARN_EVERY = 50     # log web_login_guessing every this many failures on one account
MAX_TRACKED = 10000          # keys kept (oldest forgotten first), so memory stays bounded

K = TypeVar("K", str, tuple[str, str])


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
        self._pairs: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._addresses: OrderedDict[str, _Failures] = OrderedDict()
        self._per_account: OrderedDict[str, int] = OrderedDict()

    @staticmethod
    def _backoff(count: int, free: int, first: float, cap: float) -> float:
        if count < free:
            return 0.0
        return min(cap, first * 2.0 ** min(count - free, 30))

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until this account may be tried from this address (0: go ahead)."""
        now = self.clock()
        with self._lock:
            wait = 0.0
            for f in (self._addresses.get(address), self._pairs.get((account, address))):
                if f is not None and f.until > now:
                    wait = max(wait, f.until - now)
            return wait

    @staticmethod
    def _bump(table: OrderedDict[K, _Failures], key: K, delay: Callable[[int], float], cap: float,
              now: float) -> None:
        f = table.get(key)
        if f is None or now - f.last > 2 * cap:  # quiet long enough: start over
            f = _Failures(0, now, 0.0)
        f.count += 1
        f.last = now
        f.until = now + delay(f.count)
        table[key] = f
        table.move_to_end(key)
        while len(table) > MAX_TRACKED:
            table.popitem(last=False)

    def failed(self, account: str, address: str) -> int:
        """Count a failed login; returns the account's failures from every address."""
        now = self.clock()
        with self._lock:
            self._bump(self._pairs, (account, address),
                       lambda n: self._backoff(n, self.account_free, 1.0, self.max_delay), self.max_delay, now)
            self._bump(self._addresses, address,
                       lambda n: self._backoff(n, self.address_free, ADDRESS_FIRST_BLOCK, self.max_block),
                       self.max_block, now)
            total = self._per_account.pop(account, 0) + 1
            self._per_account[account] = total
            while len(self._per_account) > MAX_TRACKED:
                self._per_account.popitem(last=False)
            return total

    def succeeded(self, account: str, address: str) -> None:
        with self._lock:
            self._pairs.pop((account, address), None)
            self._addresses.pop(address, None)
            self._per_account.pop(account, None)


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
