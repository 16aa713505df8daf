"""Latency fixes for pynetdicom's acceptor (it polls with 1 ms sleeps by default).

A C-STORE from a scanner is synchronous: the next instance is sent only after the
response to the previous one, so every polling delay is paid once per instance.  Out
of the box pynetdicom 3 sleeps up to 1 ms in the DUL reactor before noticing an incoming
PDU, up to 1 ms in the association reactor before serving a decoded message, and up to
1 ms again before sending the response, and reads the socket 4 KiB at a time.

Here, per acceptor association only (requestor associations and other servers in the
process are unaffected):

* the DUL reactor's idle sleep becomes a ``select`` on the socket and a wake-up pipe
  that :meth:`FastDUL.send_pdu` writes to, so it reacts to either at once;
* the association reactor's idle sleep becomes a wait on the DIMSE message queue;
* ``AssociationSocket.recv`` reads straight into one buffer of the PDU's size.

The sleeps are reached through the ``time`` module that pynetdicom's ``dul`` and
``association`` modules imported; we give those modules a proxy that forwards everything
to :mod:`time` except ``sleep`` on threads that opted in.
"""

from __future__ import annotations

import os
import select
import threading
import time as _time
import weakref

from pynetdicom import association as _association_mod
from pynetdicom import dul as _dul_mod
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket

IDLE_WAIT = 0.02  # longest a reactor waits before re-checking timers and kill flags


class _TimeProxy:
    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        waiter = getattr(threading.current_thread(), "_aenode_idle_wait", None)
        if waiter is not None and seconds == 0.001:
            waiter()
        else:
            self._real.sleep(seconds)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Route pynetdicom's reactor sleeps through :class:`_TimeProxy` (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        for mod in (_dul_mod, _association_mod):
            if not isinstance(mod.time, _TimeProxy):
                mod.time = _TimeProxy(_time)
        _installed = True


class FastSocket(AssociationSocket):
    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = sock.recv_into(view[got:], nr_bytes - got)
            if not n:
                view.release()
                return buf[:got]
            got += n
        view.release()
        return buf


class FastDUL(DULServiceProvider):
    _wake_r: int
    _wake_w: int

    def send_pdu(self, primitive) -> None:  # type: ignore[override]
        super().send_pdu(primitive)
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass

    def _aenode_idle_wait(self) -> None:
        # Run by the DUL thread itself (its ``time.sleep(self._run_loop_delay)``).
        if not self.to_provider_queue.empty() or not self.event_queue.empty():
            return
        wrapper = self.socket
        sock = getattr(wrapper, "socket", None)
        watch = [self._wake_r]
        if sock is not None:
            pending = getattr(sock, "pending", None)
            if pending is not None and pending():
                return
            watch.append(sock)
        try:
            ready, _, _ = select.select(watch, [], [], IDLE_WAIT)
        except (OSError, ValueError):
            return
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except (BlockingIOError, OSError):
                pass


def _assoc_idle_wait(assoc) -> None:
    q = assoc.dimse.msg_queue
    with q.not_empty:
        if not q._qsize():
            q.not_empty.wait(0.005)


def accelerate(assoc) -> None:
    """Apply the fixes to a freshly created acceptor association (before start())."""
    install()
    dul = assoc.dul
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    dul._wake_r, dul._wake_w = r, w
    weakref.finalize(dul, os.close, r)
    weakref.finalize(dul, os.close, w)
    dul.__class__ = FastDUL
    # Thread-level hook looked up by _TimeProxy.sleep (the DUL is its own thread).
    dul._aenode_idle_wait = dul._aenode_idle_wait  # bound method on the instance
    assoc._aenode_idle_wait = lambda a=weakref.proxy(assoc): _assoc_idle_wait(a)
    if type(dul.socket) is AssociationSocket:
        dul.socket.__class__ = FastSocket
