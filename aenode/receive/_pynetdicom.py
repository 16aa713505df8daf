"""Every use of pynetdicom internals in aenode, and the assumptions each one rests on.

The rest of the receive stage uses pynetdicom's public API only (``AE``, ``evt``,
``AE.make_server(server_class=..., request_handler=...)``, ``Event.request`` /
``Event.context`` / ``Event.assoc``, ``pynetdicom.pdu.A_ASSOCIATE_RQ.decode``).  What
the node needs beyond that (speed: no 1 ms polling; safety: bounded PDU reads, no leaked
temporary files) is done here, against the internals of the versions in
:data:`TESTED_RANGE`.  Each assumption has a name; :func:`check_assumptions` verifies all
of them (by introspection and by building an acceptor association without starting it),
:func:`install` refuses to run when one is broken, and
tests/receive/test_pynetdicom_assumptions.py fails naming the broken one after an upgrade.

Assumptions
-----------
``reactor_sleeps``
    ``pynetdicom.dul`` and ``pynetdicom.association`` call ``time.sleep`` through their
    module attribute ``time``; the DUL reactor idles with ``time.sleep(self._run_loop_delay)``
    (``_run_loop_delay`` is 0.001) and the association reactor with ``time.sleep(0.001)``.
    We give both modules a proxy of :mod:`time` that turns these 1 ms sleeps, on our
    acceptor threads only, into waits on the socket and a wake-up channel (DUL) or on the
    DIMSE message queue (association).  Broken: every instance pays ~3 ms of polling.
``dul_subclass``
    An acceptor's ``assoc.dul`` is a plain :class:`DULServiceProvider` (a
    ``threading.Thread`` whose ``run()`` is ``Thread.run``) that :class:`FastDUL` (a
    subclass adding methods and attributes only) can take over by assigning ``__class__``
    before the thread starts.
``dul_read_hook``
    The DUL reactor reads each incoming PDU by calling ``self._read_pdu_data()`` when
    ``self.socket.ready``; that method reports by putting an event name on
    ``self.event_queue`` ('Evt17' transport closed, or the event of
    ``self._decode_pdu(bytes) -> (pdu, event)``) and the decoded PDU on ``self._recv_pdu``.
    :class:`FastDUL` replaces it with the bounded reader of ``pdu.py``.  Broken: PDU
    lengths, PDU and message deadlines are no longer enforced.
``associate_injection``
    A new acceptor's DUL has 'Evt5' queued by its ``AssociationSocket``; queueing 'Evt6'
    and putting the decoded ``A_ASSOCIATE_RQ`` on ``_recv_pdu`` before ``start()`` makes
    the state machine (Sta1 -Evt5-> Sta2 -Evt6-> Sta3) handle an A-ASSOCIATE-RQ that the
    node read itself (with its own deadline and size bound) as if the DUL had read it.
``create_association``
    ``RequestHandler._create_association()`` builds the acceptor ``Association`` (socket,
    contexts, AE titles, bound event handlers) without starting it; its thread is named
    '...AcceptorThread...' which is how ``AE.active_associations`` counts it.
``chunked_store``
    With ``_config.STORE_RECV_CHUNKED_DATASET = True`` a C-STORE data set is streamed into
    ``dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")`` (a module
    global looked up at call time, called on the DUL thread) through ``.write()`` and
    ``.file.flush()``; that object is the request's ``C_STORE._dataset_file`` and
    ``StorageServiceClass.SCP`` closes it and unlinks ``.name`` after the handler returns.
    Broken: data sets are held in memory, or written outside the spool.
``dimse_queue``
    The association reactor takes decoded messages from ``assoc.dimse.msg_queue``, a
    :class:`queue.Queue` (its ``not_empty`` condition and ``_qsize()`` are used to wait).
``release_hook``
    An acceptor answers the peer's A-RELEASE-RQ on the association thread (the thread that
    runs the C-STORE handlers) in ``Association._run_reactor``: ``self.acse.is_release_requested()``
    takes the A-RELEASE primitive (``result`` None) with ``self.dul.receive_pdu(wait=False)``,
    which triggers ``evt.EVT_ACSE_RECV`` with it, before ``send_release(is_response=True)``.
    The SCP's EVT_ACSE_RECV handler therefore runs after the association's last C-STORE
    handler and before the release is answered (it waits there for the association's index
    rows, see ``indexer.py``).  Broken: a sender that released may briefly not find its
    instances in the index (they are durable and indexed moments later).
``log_handlers``
    ``_config.LOG_HANDLER_LEVEL`` decides, when a server is created, whether pynetdicom
    binds its per-PDU "standard" log handlers (the node logs one line per association).
"""

from __future__ import annotations

import inspect
import queue
import select
import socket
import tempfile
import threading
import time as _time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import IO, Any, Protocol

from pynetdicom import _config
from pynetdicom import association as _association_mod
from pynetdicom import dimse_messages as _dimse_messages_mod
from pynetdicom import dul as _dul_mod
from pynetdicom import fsm as _fsm_mod
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

from aenode.receive.pdu import PDUReader, PDURefused, PeerClosed, abort_pdu
from aenode.receive.spoolfile import JournalEntry, SpoolTempFile

TESTED_RANGE = "pynetdicom>=3.0.0,<3.1"
ASSUMPTIONS = ("reactor_sleeps", "dul_subclass", "dul_read_hook", "associate_injection", "create_association",
               "chunked_store", "dimse_queue", "release_hook", "log_handlers")
IDLE_WAIT = 0.02  # longest a reactor waits before re-checking timers and kill flags
_MESSAGE_WAIT = 0.005
# How often the hooks ran (tests check that the fast paths are really taken).
counters: Counter[str] = Counter()


class PynetdicomIncompatible(RuntimeError):
    """The installed pynetdicom breaks an assumption this module relies on."""


@dataclass(frozen=True)
class Broken:
    assumption: str
    detail: str

    def __str__(self) -> str:
        return f"pynetdicom assumption '{self.assumption}' broken: {self.detail}"


class DulLink(Protocol):
    """What a connection gives its DUL thread (see ``server.Connection``)."""

    reader: PDUReader

    def refused(self, exc: PDURefused) -> None: ...

    def failed(self, exc: BaseException) -> None: ...

    def new_temp_file(self) -> JournalEntry | SpoolTempFile: ...


# ---- reactor_sleeps --------------------------------------------------------------------


class _TimeProxy:
    """Stands in for :mod:`time` inside pynetdicom's ``dul`` and ``association`` modules."""

    def __init__(self, real: ModuleType):
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sleep(self, seconds: float) -> None:
        if seconds == 0.001:
            current = threading.current_thread()
            if isinstance(current, FastDUL):
                counters["dul_idle_waits"] += 1
                current._idle_wait()
                return
            if isinstance(current, Association) and isinstance(current.dul, FastDUL):
                counters["association_idle_waits"] += 1
                _association_idle_wait(current)
                return
        self._real.sleep(seconds)


def _association_idle_wait(assoc: Association) -> None:
    q = assoc.dimse.msg_queue
    with q.not_empty:
        if not q._qsize():
            q.not_empty.wait(_MESSAGE_WAIT)


# ---- dul_subclass / dul_read_hook ------------------------------------------------------


class FastDUL(DULServiceProvider):
    """The DUL of one acceptor association: bounded reads, event-driven idle waits."""

    _aenode_link: DulLink
    _aenode_wake: tuple[socket.socket, socket.socket]
    _aenode_refused: bool

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - the state machine re-raises after killing the DUL
            self._aenode_link.failed(exc)
            self._shutdown()

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        try:
            self._aenode_wake[1].send(b"\0")
        except OSError:
            pass

    def _raw_socket(self) -> socket.socket | None:
        wrapper = self.socket
        return wrapper.socket if wrapper is not None else None

    def _shutdown(self) -> None:
        sock = self._raw_socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _refuse(self, exc: PDURefused) -> None:
        """Abort: tell the peer (best effort), then act as if the transport closed."""
        if self._aenode_refused:
            return
        self._aenode_refused = True
        self._aenode_link.refused(exc)
        sock = self._raw_socket()
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(abort_pdu())
            except (OSError, ValueError):
                pass
        self._shutdown()
        self.event_queue.put("Evt17")

    def _read_pdu_data(self) -> None:
        if self._aenode_refused:
            return
        sock = self._raw_socket()
        if sock is None:
            self.event_queue.put("Evt17")
            return
        counters["bounded_reads"] += 1
        try:
            data = self._aenode_link.reader.read(sock)
        except PeerClosed:
            self.event_queue.put("Evt17")
            return
        except PDURefused as exc:
            self._refuse(exc)
            return
        try:
            pdu, event = self._decode_pdu(data)
        except Exception:  # noqa: BLE001 - any decode failure is an invalid PDU
            self._refuse(PDURefused("undecodable_pdu"))
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _idle_wait(self) -> None:
        """Run by the DUL thread in place of its 1 ms sleep."""
        if not self._aenode_refused:
            try:
                self._aenode_link.reader.check_idle()
            except PDURefused as exc:
                self._refuse(exc)
                return
        if not self.to_provider_queue.empty() or not self.event_queue.empty():
            return
        wake = self._aenode_wake[0]
        watch: list[Any] = [wake]
        sock = self._raw_socket()
        if sock is not None:
            pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
            if pending is not None and pending():
                return
            watch.append(sock)
        try:
            ready, _, _ = select.select(watch, [], [], IDLE_WAIT)
        except (OSError, ValueError):
            return
        if wake in ready:
            try:
                wake.recv(4096)
            except OSError:
                pass


def create_acceptor(handler: RequestHandler, request: A_ASSOCIATE_RQ, link: DulLink) -> Association:
    """An acceptor association for ``handler``'s socket, given its pre-read A-ASSOCIATE-RQ.

    Not started; call ``assoc.start()``, then :func:`finish_acceptor` once it has ended.
    """
    install()
    assoc = handler._create_association()
    dul = assoc.dul
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    dul.__class__ = FastDUL
    assert isinstance(dul, FastDUL)
    dul._aenode_link = link
    dul._aenode_wake = (wake_r, wake_w)
    dul._aenode_refused = False
    dul.event_queue.put("Evt6")
    dul._recv_pdu.put(request)
    return assoc


def finish_acceptor(assoc: Association, timeout: float | None) -> bool:
    """Wait for an acceptor's threads to end, then release what :func:`create_acceptor` made.

    Returns False when a thread was still running after ``timeout`` (it is left to end on
    its own; its socket has been shut down by then).
    """
    dul = assoc.dul
    deadline = None if timeout is None else _time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - _time.monotonic())

    if assoc.is_alive():
        assoc.join(left())
    if dul.is_alive():
        dul.join(left())
    done = not assoc.is_alive() and not dul.is_alive()
    if isinstance(dul, FastDUL) and done:
        for end in dul._aenode_wake:
            end.close()
    return done


def raw_socket(assoc: Association) -> socket.socket | None:
    wrapper = assoc.dul.socket
    return wrapper.socket if wrapper is not None else None


# ---- chunked_store ---------------------------------------------------------------------


def _named_temporary_file(*args: Any, **kwargs: Any) -> IO[bytes] | JournalEntry | SpoolTempFile:
    current = threading.current_thread()
    if isinstance(current, FastDUL):
        counters["spool_temp_files"] += 1
        return current._aenode_link.new_temp_file()
    # Not one of the node's acceptors (e.g. a C-GET requestor): pynetdicom's default.
    return tempfile.NamedTemporaryFile(*args, **kwargs)


def stored_file(request: C_STORE) -> JournalEntry | SpoolTempFile | None:
    """Where a C-STORE request's data set was streamed, if it is one of ours."""
    f = getattr(request, "_dataset_file", None)
    return f if isinstance(f, (JournalEntry, SpoolTempFile)) else None


# ---- release_hook ----------------------------------------------------------------------


def is_release_request(primitive: object) -> bool:
    """True for the peer's A-RELEASE-RQ as passed to an ``EVT_ACSE_RECV`` handler."""
    return isinstance(primitive, A_RELEASE) and primitive.result is None


# ---- log_handlers ----------------------------------------------------------------------


def quiet_server(make: Callable[[], AssociationServer]) -> AssociationServer:
    """Create a server without pynetdicom's per-PDU log handlers."""
    previous = _config.LOG_HANDLER_LEVEL
    _config.LOG_HANDLER_LEVEL = "none"
    try:
        return make()
    finally:
        _config.LOG_HANDLER_LEVEL = previous


# ---- install and check -----------------------------------------------------------------

_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Apply the process-wide hooks (idempotent); raise if an assumption is broken."""
    global _installed
    with _install_lock:
        if _installed:
            return
        broken = check_assumptions()
        if broken:
            raise PynetdicomIncompatible("; ".join(str(b) for b in broken)
                                         + f" (aenode is tested with {TESTED_RANGE})")
        _config.STORE_RECV_CHUNKED_DATASET = True
        _dimse_messages_mod.NamedTemporaryFile = _named_temporary_file  # type: ignore[assignment]
        for mod in (_dul_mod, _association_mod):
            if not isinstance(mod.time, _TimeProxy):
                mod.time = _TimeProxy(_time)  # type: ignore[attr-defined]
        _installed = True


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _check(broken: list[Broken], name: str, ok: bool, detail: str) -> None:
    if not ok:
        broken.append(Broken(name, detail))


def check_assumptions() -> list[Broken]:
    """Every broken assumption (empty: the installed pynetdicom is one we can drive)."""
    broken: list[Broken] = []
    dul_time = getattr(_dul_mod, "time", None)
    assoc_time = getattr(_association_mod, "time", None)
    _check(broken, "reactor_sleeps",
           isinstance(dul_time, (ModuleType, _TimeProxy)) and isinstance(assoc_time, (ModuleType, _TimeProxy)),
           "pynetdicom.dul / pynetdicom.association no longer import the time module")
    _check(broken, "reactor_sleeps",
           "time.sleep(self._run_loop_delay)" in _source(DULServiceProvider.run_reactor),
           "DULServiceProvider.run_reactor does not idle with time.sleep(self._run_loop_delay)")
    _check(broken, "reactor_sleeps", "time.sleep(0.001)" in _source(Association._run_reactor),
           "Association._run_reactor does not idle with time.sleep(0.001)")

    _check(broken, "dul_subclass", DULServiceProvider.run is threading.Thread.run,
           "DULServiceProvider overrides Thread.run")
    _check(broken, "dul_subclass", "__slots__" not in vars(DULServiceProvider),
           "DULServiceProvider declares __slots__ (no __class__ assignment)")

    for attr in ("_read_pdu_data", "_decode_pdu", "_is_transport_event", "send_pdu"):
        _check(broken, "dul_read_hook", callable(getattr(DULServiceProvider, attr, None)),
               f"DULServiceProvider.{attr} is missing")
    transport = _source(getattr(DULServiceProvider, "_is_transport_event", None))
    _check(broken, "dul_read_hook", "self._read_pdu_data()" in transport and "socket.ready" in transport,
           "DULServiceProvider._is_transport_event no longer reads through self._read_pdu_data()")
    reader = _source(getattr(DULServiceProvider, "_read_pdu_data", None))
    _check(broken, "dul_read_hook",
           all(s in reader for s in ("self._decode_pdu(", "self.event_queue.put(", "self._recv_pdu.put(", '"Evt17"')),
           "DULServiceProvider._read_pdu_data reports differently (event_queue / _recv_pdu / Evt17)")
    table = getattr(_fsm_mod, "TRANSITION_TABLE", {})
    for key, action in ((("Evt5", "Sta1"), "AE-5"), (("Evt6", "Sta2"), "AE-6"), (("Evt17", "Sta6"), "AA-4"),
                        (("Evt17", "Sta2"), "AA-5"), (("Evt17", "Sta13"), "AR-5"), (("Evt10", "Sta6"), "DT-2")):
        _check(broken, "dul_read_hook" if key[0] != "Evt6" else "associate_injection",
               table.get(key) == action, f"state machine: {key} no longer leads to {action}")

    _check(broken, "associate_injection", 'event_queue.put("Evt5")' in _source(AssociationSocket.__init__),
           "AssociationSocket no longer queues Evt5 for an accepted socket")
    _check(broken, "associate_injection", callable(getattr(A_ASSOCIATE_RQ, "decode", None)),
           "pynetdicom.pdu.A_ASSOCIATE_RQ.decode is missing")

    create = getattr(RequestHandler, "_create_association", None)
    _check(broken, "create_association", callable(create), "RequestHandler._create_association is missing")
    _check(broken, "create_association", "AcceptorThread" in _source(create)
           and "AcceptorThread" in _source(AssociationServer.active_associations.fget),  # type: ignore[attr-defined]
           "acceptor threads are no longer named/counted as 'AcceptorThread'")

    _check(broken, "chunked_store", hasattr(_config, "STORE_RECV_CHUNKED_DATASET"),
           "_config.STORE_RECV_CHUNKED_DATASET is missing")
    _check(broken, "chunked_store", hasattr(_dimse_messages_mod, "NamedTemporaryFile"),
           "dimse_messages no longer looks up NamedTemporaryFile as a module global")
    decode = _source(getattr(getattr(_dimse_messages_mod, "DIMSEMessage", None), "decode_msg", None))
    _check(broken, "chunked_store",
           all(s in decode for s in ("NamedTemporaryFile(", "_data_set_file.write(", ".file.flush()",
                                     "STORE_RECV_CHUNKED_DATASET")),
           "DIMSEMessage.decode_msg streams data sets differently")
    _check(broken, "chunked_store", "_dataset_file" in _source(_dimse_messages_mod.DIMSEMessage.message_to_primitive)
           and hasattr(C_STORE(), "_dataset_file"),
           "C_STORE._dataset_file no longer carries the streamed file")
    store = _source(StorageServiceClass.SCP)
    _check(broken, "chunked_store",
           "req._dataset_file.close()" in store and "os.unlink(req._dataset_file.name)" in store,
           "StorageServiceClass.SCP no longer closes and unlinks the streamed file after the handler")

    released = _source(ACSE.is_release_requested)
    _check(broken, "release_hook", "self.dul.receive_pdu(wait=False)" in released and "A_RELEASE" in released,
           "ACSE.is_release_requested no longer takes the primitive with dul.receive_pdu")
    _check(broken, "release_hook", "EVT_ACSE_RECV" in _source(DULServiceProvider.receive_pdu),
           "DULServiceProvider.receive_pdu no longer triggers EVT_ACSE_RECV")
    run = _source(Association._run_reactor)
    ask, answer = run.find("self.acse.is_release_requested()"), run.find("send_release(is_response=True)")
    _check(broken, "release_hook", 0 <= ask < answer,
           "Association._run_reactor no longer checks for the release request before answering it")

    _check(broken, "log_handlers", hasattr(_config, "LOG_HANDLER_LEVEL")
           and "LOG_HANDLER_LEVEL" in _source(AssociationServer._bind_defaults),
           "_config.LOG_HANDLER_LEVEL no longer controls the standard handlers")

    # Build (never start) an acceptor to check the run-time shape of what we take over.
    try:
        from pynetdicom import AE

        assoc = Association(AE(), "acceptor")
        dul = assoc.dul
        _check(broken, "dul_subclass", type(dul) is DULServiceProvider,
               f"assoc.dul is a {type(dul).__name__}, not a DULServiceProvider")
        _check(broken, "reactor_sleeps", getattr(dul, "_run_loop_delay", None) == 0.001,
               "DULServiceProvider._run_loop_delay is no longer 0.001")
        for attr in ("event_queue", "to_provider_queue", "_recv_pdu"):
            _check(broken, "dul_read_hook", isinstance(getattr(dul, attr, None), queue.Queue),
                   f"DULServiceProvider.{attr} is not a queue.Queue")
        q = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
        _check(broken, "dimse_queue", isinstance(q, queue.Queue) and hasattr(q, "not_empty")
               and callable(getattr(q, "_qsize", None)), "assoc.dimse.msg_queue is not a queue.Queue")
    except Exception as exc:  # noqa: BLE001 - report, do not crash the check
        broken.append(Broken("create_association", f"cannot build an acceptor Association ({exc!r})"))
    return broken


def installed_version() -> str:
    from importlib.metadata import version

    return version("pynetdicom")


__all__ = ["ASSUMPTIONS", "TESTED_RANGE", "Broken", "counters", "DulLink", "FastDUL", "PynetdicomIncompatible", "check_assumptions",
           "create_acceptor", "finish_acceptor", "install", "installed_version", "is_release_request", "quiet_server",
           "raw_socket", "stored_file"]
