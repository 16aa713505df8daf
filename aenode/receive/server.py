"""Connections of the DICOM listener, from TCP accept to close, with bounded resources.

One :class:`Connection` per TCP connection.  Before a peer is given anything costly it is
bounded by ``[limits]`` (see docs/SECURITY.md):

* at accept: at most ``max_connections_per_peer`` open connections per IP address (more
  are closed at once) and at most ``max_pending_connections`` that have not completed
  their A-ASSOCIATE-RQ (beyond that the oldest pending one is dropped, so idle sockets
  cannot lock out a newcomer);
* while pending: the TLS handshake within ``[node.tls] handshake_timeout_seconds`` and the
  whole A-ASSOCIATE-RQ within ``associate_timeout_seconds``, at most
  ``max_associate_request_bytes``, read by the node itself (pdu.py); the called and calling
  AE titles and ``[node] max_associations`` are checked before pynetdicom sees the request;
* once admitted: the association runs on its own thread (``association.py``) with the
  bounded reader of ``pdu.py`` (PDU size, PDU and message deadlines, idle timeout);
* at the end, whatever happened: the socket is closed, every temporary spool file still
  open is closed and removed, the journal segment goes back to the pool, the slot is given back, and one ``association`` log line says
  how it ended.
"""

from __future__ import annotations

import errno
import queue
import socket
import socketserver
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynetdicom.pdu import A_ASSOCIATE_RQ

from aenode.config import LimitsConfig
from aenode.logs import get_logger
from aenode.receive.association import Association, Negotiated, negotiate
from aenode.receive.dimse import STATUS_SUCCESS
from aenode.receive.pdu import (
    AssociateHeader,
    PDUReader,
    PDURefused,
    PeerClosed,
    abort_pdu,
    parse_associate_header,
    reject_pdu,
    send_quietly,
)
from aenode.receive.spoolfile import JournalEntry, SpoolTempFile
from aenode.store.journal import Journal, Segment

if TYPE_CHECKING:
    from aenode.receive.scp import StorageSCP

log = get_logger("aenode.receive")

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 table 9-21
REJECT_CALLING_AE = (1, 1, 3)  # permanent, service user, calling AE title not recognized
REJECT_CALLED_AE = (1, 1, 7)  # permanent, service user, called AE title not recognized
REJECT_LIMIT = (2, 3, 2)  # transient, service provider (presentation), local limit exceeded


class RateLimit:
    """At most ``per_second`` events (bursts up to ``burst``); counts what it drops."""

    def __init__(self, per_second: float = 5.0, burst: int = 50, clock: Callable[[], float] = time.monotonic):
        self.rate = per_second
        self.burst = float(burst)
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()
        self.dropped = 0
        self._lock = threading.Lock()

    def allow(self) -> tuple[bool, int]:
        """(log this one?, how many were dropped since the last one logged)."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                dropped, self.dropped = self.dropped, 0
                return True, dropped
            self.dropped += 1
            return False, 0


@dataclass(eq=False)
class Connection:
    """One TCP connection; also what its association reports to (``association.Link``)."""

    sock: socket.socket
    peer: str
    peer_port: int | None
    limits: LimitsConfig
    tmp_dir: Path
    journal: Journal | None = None
    accepted_at: float = field(default_factory=time.monotonic)
    reader: PDUReader = field(init=False)
    admitted: bool = False
    evicted: bool = False
    assoc: Association | None = None
    calling_ae: str | None = None
    called_ae: str | None = None
    outcome: str = "closed"
    reason: str | None = None
    limit: str | None = None
    instances: int = 0
    bytes: int = 0
    failures: int = 0
    temp_files: list[JournalEntry | SpoolTempFile] = field(default_factory=list)
    segment: Segment | None = None   # this connection's journal segment, taken at its first data set
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.reader = PDUReader(self.limits)

    # -- association.Link --
    def refused(self, exc: PDURefused) -> None:
        self.outcome, self.reason, self.limit = "refused", exc.reason, exc.limit

    def failed(self, exc: BaseException) -> None:
        self.outcome, self.reason = "failed", type(exc).__name__

    def answered(self, status: int, size: int | None) -> None:
        if status == STATUS_SUCCESS and size is not None:
            self.instances += 1
            self.bytes += size
        elif status != STATUS_SUCCESS:
            self.failures += 1

    def new_temp_file(self) -> JournalEntry | SpoolTempFile:
        """Where the next data set goes: this connection's journal segment, or a temporary
        file when the segment still holds an entry (defence in depth: the association answers
        each data set before it reads the next) or no segment can be had (the file path then
        reports the error)."""
        f: JournalEntry | SpoolTempFile | None = None
        with self._lock:
            seg = self.segment
            if self.journal is not None and (seg is None or seg.entry is None):
                try:
                    if seg is not None and seg.full:
                        self.journal.give_back(seg, time.monotonic())
                        seg = self.segment = None
                    if seg is None:
                        seg = self.segment = self.journal.take()
                    f = seg.entry = JournalEntry(seg, self.limits.max_instance_bytes)
                except OSError:
                    f = None
            if f is None:
                f = SpoolTempFile(self.tmp_dir, self.limits.max_instance_bytes)
            self.temp_files = [t for t in self.temp_files if not t.closed]
            self.temp_files.append(f)
        return f

    # --
    def shutdown(self) -> None:
        """Unblock whatever thread reads this connection (safe from any thread)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def release_files(self) -> None:
        with self._lock:
            files, self.temp_files = self.temp_files, []
            seg, self.segment = self.segment, None
        for f in files:
            f.discard()
        if seg is not None and self.journal is not None:
            seg.entry = None
            self.journal.give_back(seg, time.monotonic())


class AssociationServer(socketserver.TCPServer):
    """The listener: accepts connections within the node's bounds and hands each to a
    pending worker (``ConnectionHandler``)."""

    allow_reuse_address = True
    # listen() backlog: socketserver's 5 overflows under a burst of connections and the
    # kernel then drops SYNs, which costs a well-behaved peer a 1 s retransmission.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], scp: StorageSCP):
        self.scp = scp
        self.reuse_port = scp.config.workers.receive > 1
        self.limits: LimitsConfig = scp.config.limits
        self.max_associations = scp.config.node.max_associations
        self.tmp_dir = scp.spool.tmp_dir
        self._lock = threading.Lock()
        self._per_peer: Counter[str] = Counter()
        self._pending: OrderedDict[Connection, None] = OrderedDict()
        self._by_socket: dict[socket.socket, Connection] = {}
        self._admitted = 0
        self._open: set[Connection] = set()
        self.counters: Counter[str] = Counter()
        self._refusal_log = RateLimit()
        self._connection_log = RateLimit()
        self._accept_log = RateLimit(per_second=1.0, burst=5)
        # Pending connections are served by threads started once, here: starting a thread per
        # accepted connection costs a GIL hand-over each, which under a connection flood made
        # accept() fall behind and the kernel drop every peer's SYN (C-ECHO waited ~60 s).
        self._work: queue.SimpleQueue[tuple[socket.socket, Any] | None] = queue.SimpleQueue()
        super().__init__(address, ConnectionHandler)
        self._workers = [threading.Thread(target=self._pending_worker, name=f"aenode-scp-pending-{k}", daemon=True)
                         for k in range(self.limits.max_pending_connections)]
        for worker in self._workers:
            worker.start()

    def server_bind(self) -> None:
        # Several receive processes ([workers] receive > 1) share the port: the kernel
        # spreads new connections over their listening sockets (same user only).
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    # ---- accept ----------------------------------------------------------------------

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        try:
            client, address = self.socket.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.counters["accept_failed"] += 1
                ok, dropped = self._accept_log.allow()
                if ok:
                    log.error("accept_failed", errno=errno.errorcode.get(exc.errno or 0), suppressed=dropped)
                time.sleep(0.05)  # let connections end instead of spinning on accept()
            raise
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        peer = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        port = client_address[1] if isinstance(client_address, tuple) and len(client_address) > 1 else None
        evict: Connection | None = None
        with self._lock:
            if self._per_peer[peer] >= self.limits.max_connections_per_peer:
                self.counters["refused_per_peer"] += 1
                refused = True
            else:
                refused = False
                if len(self._pending) >= self.limits.max_pending_connections:
                    evict, _ = self._pending.popitem(last=False)
                    evict.evicted = True
                    self.counters["evicted_pending"] += 1
                conn = Connection(request, peer, port, self.limits, self.tmp_dir, self.scp.journal)
                self._per_peer[peer] += 1
                self._pending[conn] = None
                self._by_socket[request] = conn
                self._open.add(conn)
        if evict is not None:
            evict.shutdown()
        if refused:
            ok, dropped = self._refusal_log.allow()
            if ok:
                log.warning("connection_refused", peer=peer, limit="max_connections_per_peer",
                            value=self.limits.max_connections_per_peer, suppressed=dropped)
            return False
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        self._work.put((request, client_address))  # no thread started here (see __init__)

    def _pending_worker(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 - the handler cleans up; never lose the worker
                self.handle_error(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.error("connection_error", error="unexpected exception in the connection thread")

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
        for _ in self._workers:
            self._work.put(None)

    # ---- bookkeeping -------------------------------------------------------------------

    def take(self, request: socket.socket) -> Connection:
        with self._lock:
            return self._by_socket.pop(request)

    def admit(self, conn: Connection) -> bool:
        """Move ``conn`` from pending to the associations (False: no slot, or evicted)."""
        with self._lock:
            if conn.evicted:
                return False
            self._pending.pop(conn, None)
            if self._admitted >= self.max_associations:
                return False
            self._admitted += 1
            conn.admitted = True
            return True

    def unpend(self, conn: Connection) -> None:
        with self._lock:
            self._pending.pop(conn, None)

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._pending.pop(conn, None)
            self._by_socket.pop(conn.sock, None)
            if conn in self._open:
                self._open.discard(conn)
                self._per_peer[conn.peer] -= 1
                if self._per_peer[conn.peer] <= 0:
                    del self._per_peer[conn.peer]
                if conn.admitted:
                    self._admitted -= 1

    def open_connections(self) -> list[Connection]:
        with self._lock:
            return list(self._open)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"open": len(self._open), "pending": len(self._pending), "associations": self._admitted,
                    "peers": len(self._per_peer), **self.counters}

    def log_connection(self, conn: Connection) -> None:
        if not conn.admitted:  # never became an association: log at a bounded rate
            ok, dropped = self._connection_log.allow()
            if not ok:
                return
        else:
            dropped = 0
        log.info("association", calling_ae=conn.calling_ae or None, called_ae=conn.called_ae or None,
                 peer=conn.peer, peer_port=conn.peer_port, instances=conn.instances, bytes=conn.bytes,
                 failures=conn.failures, duration_s=round(time.monotonic() - conn.accepted_at, 3),
                 outcome=conn.outcome, reason=conn.reason, limit=conn.limit,
                 **({"suppressed": dropped} if dropped else {}))


class ConnectionHandler(socketserver.BaseRequestHandler):
    """One connection: the pending phase on a pending worker, then its own thread once admitted."""

    server: AssociationServer

    def handle(self) -> None:
        server = self.server
        conn = server.take(self.request)
        handed_off = False
        try:
            handed_off = self._serve(conn)
        except Exception as exc:  # noqa: BLE001 - a connection must never take the listener down
            conn.failed(exc)
        finally:
            if not handed_off:
                self._finish(conn)

    def _run(self, conn: Connection, assoc: Association) -> None:
        """The admitted association's own thread: run it to its end, then clean up."""
        try:
            assoc.run()
        except Exception as exc:  # noqa: BLE001 - clean up whatever happened
            conn.failed(exc)
        finally:
            self._finish(conn)

    def _serve(self, conn: Connection) -> bool:
        """The pending phase; True once the association runs on its own thread."""
        server, scp, limits = self.server, self.server.scp, self.server.limits
        if scp.ssl_context is not None:
            raw = self.request
            try:
                raw.settimeout(scp.handshake_timeout)
                tls = scp.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                conn.sock = tls  # the raw socket object is detached now; eviction shuts this one
                tls.do_handshake()
            except (OSError, ssl.SSLError, ValueError) as exc:
                conn.outcome, conn.reason = "tls_failed", type(exc).__name__
                return False
            self.request = tls
        sock: socket.socket = self.request
        try:
            data = conn.reader.read_associate_request(sock, conn.accepted_at + limits.associate_timeout_seconds)
            header = parse_associate_header(data)
            request = A_ASSOCIATE_RQ()
            try:
                request.decode(bytes(data))
            except Exception:  # noqa: BLE001 - any decode failure is an invalid PDU
                raise PDURefused("undecodable_pdu") from None
        except PeerClosed:
            conn.outcome = "evicted" if conn.evicted else "closed"
            return False
        except PDURefused as exc:
            conn.refused(exc)
            send_quietly(sock, abort_pdu())
            return False
        finally:
            server.unpend(conn)
        conn.calling_ae, conn.called_ae = header.calling_ae, header.called_ae
        rejection = self._check(conn, header)
        negotiated: Negotiated | None = None
        if rejection is None:
            try:
                result = negotiate(request, scp.contexts, limits.max_pdu_bytes)
            except Exception:  # noqa: BLE001 - pynetdicom's codec failing on a peer's odd request
                conn.refused(PDURefused("undecodable_pdu"))
                send_quietly(sock, abort_pdu())
                return False
            if isinstance(result, Negotiated):
                negotiated = result
            else:
                rejection = (result, "application_context")
        if rejection is None and not server.admit(conn):
            rejection = (REJECT_LIMIT, "max_associations")
        if rejection is not None:
            (result_, source, reason), why = rejection
            conn.outcome, conn.reason = "rejected", why
            send_quietly(sock, reject_pdu(result_, source, reason))
            return False
        assert negotiated is not None
        sock.settimeout(limits.idle_timeout_seconds)
        assoc = Association(sock, conn, scp, negotiated, header.calling_ae, limits.idle_timeout_seconds)
        conn.assoc = assoc
        threading.Thread(target=self._run, args=(conn, assoc), name="aenode-scp-association", daemon=True).start()
        return True

    def _check(self, conn: Connection, header: AssociateHeader) -> tuple[tuple[int, int, int], str] | None:
        scp = self.server.scp
        if header.called_ae != scp.own_ae:
            return REJECT_CALLED_AE, "called_ae"
        allowed = scp.allowed_callers(conn.peer)
        if allowed is not None and header.calling_ae not in allowed:
            return REJECT_CALLING_AE, "calling_ae"
        return None

    def _finish(self, conn: Connection) -> None:
        server = self.server
        assoc = conn.assoc
        if assoc is not None and conn.outcome == "established":
            conn.outcome = "dropped"  # closed without release or abort
        for sock in {id(s): s for s in (self.request, conn.sock)}.values():
            try:
                sock.close()
            except OSError:
                pass
        if assoc is not None:  # the peer is gone: it need not wait for the index rows
            server.scp.association_ended(assoc)
        conn.release_files()
        server.log_connection(conn)
        server._forget(conn)
