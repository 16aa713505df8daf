"""The Storage SCP: association handling, access control, TLS and durable C-STORE.

Data path: pynetdicom (with ``STORE_RECV_CHUNKED_DATASET``) streams each dataset's
P-DATA fragments straight into a temporary file in the spool's ``.tmp`` folder (our
:func:`_spool_tempfile` replaces its ``NamedTemporaryFile``), so nothing is decoded or
held in memory.  The C-STORE handler reads the header (stop before pixel data), checks
the UIDs, fsyncs, renames into place, fsyncs the directory, indexes the instance and only
then answers success.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from aenode.config import Config
from aenode.logs import get_logger, phi_values
from aenode.receive import fast
from aenode.store.index import Index
from aenode.store.meta import BadInstance, read_meta
from aenode.store.spool import Spool, UnsafePath
from aenode.store.stabilise import ActivityTracker
from aenode.store.uids import clean_uid

log = get_logger("aenode.receive")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

# Largest PDU we accept (advertised in A-ASSOCIATE-AC); bounds memory per association.
MAX_PDU = 4 * 1024 * 1024
NETWORK_TIMEOUT = 60.0


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom (with the installed plugins) can decode."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    out = []
    for ts in AllTransferSyntaxes:
        try:
            if get_decoder(ts).is_available:
                out.append(str(ts))
        except (NotImplementedError, ValueError, KeyError):
            continue
    # Explicit VR Little Endian first: it is what most SCUs prefer.
    out.sort(key=lambda t: t != "1.2.840.10008.1.2.1")
    return out


# ---- chunked receive into the spool's temporary folder -------------------------------


def _load_sync_file_range():
    """Linux sync_file_range(2): start writeback early so the final fsync waits less."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):
        return None


_sync_file_range = None  # _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_CHUNK = 256 * 1024


class _SpoolTempFile:
    """Quacks like the NamedTemporaryFile pynetdicom writes a received dataset to.

    A write error (ENOSPC, EIO) is remembered instead of raised in the network thread,
    so the C-STORE handler can answer 0xA700 and the association carries on.
    """

    def __init__(self, directory: str | None, suffix: str):
        import tempfile

        fd, name = tempfile.mkstemp(suffix=suffix, dir=directory)
        self.name = name
        self._fd = fd
        self.error: OSError | None = None
        self.size = 0
        self._flushed_to = 0
        self.file = self  # pynetdicom calls .file.flush()
        self.closed = False

    def write(self, data) -> int:
        if self.error is None:
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                self.size += len(data)
                if _sync_file_range is not None and self.size - self._flushed_to >= _WRITEBACK_CHUNK:
                    _sync_file_range(self._fd, self._flushed_to, self.size - self._flushed_to,
                                     _SYNC_FILE_RANGE_WRITE)
                    self._flushed_to = self.size
            except OSError as exc:
                self.error = exc
        return len(data)

    def flush(self) -> None:
        pass

    def tell(self) -> int:
        return self.size

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)


def _spool_tempfile(delete: bool = False, mode: str = "wb", suffix: str = ".dcm", **_: Any):
    server = getattr(getattr(threading.current_thread(), "assoc", None), "_server", None)
    directory = getattr(server, "aenode_tmp_dir", None)
    return _SpoolTempFile(directory, suffix)


def _install_chunked_receive() -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True
    _dimse_messages.NamedTemporaryFile = _spool_tempfile  # type: ignore[assignment]


# ---- server / per-connection handling -------------------------------------------------


class _AEView:
    """The AE as one association sees it: the allowed callers depend on the peer host."""

    def __init__(self, ae: AE, require_calling_aet: list[str]):
        self._real_ae = ae
        self.require_calling_aet = require_calling_aet

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real_ae, name)

    def __eq__(self, other: object) -> bool:
        return other is self._real_ae or other is self

    def __hash__(self) -> int:
        return hash(self._real_ae)


class _Server(ThreadedAssociationServer):
    daemon_threads = True
    aenode_scp: StorageSCP
    aenode_tmp_dir: str

    def get_request(self):  # no TLS here: the handshake runs in the connection's thread
        client, address = self.socket.accept()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return client, address


class _Handler(RequestHandler):
    def handle(self) -> None:
        scp: StorageSCP = self.server.aenode_scp
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else str(self.client_address)
        if scp.ssl_context is not None:
            raw = self.request
            try:
                raw.settimeout(scp.handshake_timeout)
                tls = scp.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                tls.do_handshake()
                self.request = tls
            except (OSError, ssl.SSLError) as exc:
                log.warning("tls_handshake_failed", peer=peer, error=type(exc).__name__)
                try:
                    raw.close()
                except OSError:
                    pass
                return
        self.request.settimeout(NETWORK_TIMEOUT)
        assoc = self._create_association()
        assoc._ae = _AEView(self.server.ae, scp.allowed_callers(peer))
        fast.accelerate(assoc)
        assoc.aenode_stats = {"t0": time.monotonic(), "instances": 0, "bytes": 0,
                              "outcome": "closed", "peer": peer}
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class StorageSCP:
    """The node's DICOM listener.  ``start()`` returns once it accepts connections."""

    def __init__(self, config: Config, index: Index, spool: Spool, tracker: ActivityTracker):
        self.config = config
        self.index = index
        self.spool = spool
        self.tracker = tracker
        self.own_ae = config.node.ae_title
        self.handshake_timeout = config.node.tls.handshake_timeout_seconds if config.node.tls else 10.0
        self.ssl_context = self._make_ssl_context() if config.node.tls else None
        self._sources: list[tuple[str, set[str] | None]] = []
        for src in config.sources:
            ips = None
            if src.host:
                try:
                    ips = {ai[4][0] for ai in socket.getaddrinfo(src.host, None)}
                except OSError:
                    ips = {src.host}
            self._sources.append((src.ae_title, ips))
        self.server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ae: AE | None = None

    def _make_ssl_context(self) -> ssl.SSLContext:
        tls = self.config.node.tls
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca:
            ctx.load_verify_locations(str(tls.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_client else (
            ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
        return ctx

    def allowed_callers(self, peer_ip: str) -> list[str]:
        if not self._sources:
            return []  # accept any caller
        allowed = [ae for ae, ips in self._sources if ips is None or peer_ip in ips]
        return allowed or ["\\"]  # a title no caller can have: reject everyone

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def start(self) -> None:
        _install_chunked_receive()
        fast.install()
        ae = AE(ae_title=self.own_ae)
        ae.maximum_pdu_size = MAX_PDU
        ae.maximum_associations = self.config.node.max_associations
        ae.require_called_aet = True
        ae.network_timeout = NETWORK_TIMEOUT
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        syntaxes = decodable_transfer_syntaxes()
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: STATUS_SUCCESS),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_outcome, ["rejected"]),
            (evt.EVT_RELEASED, self._on_outcome, ["released"]),
            (evt.EVT_ABORTED, self._on_outcome, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        # pynetdicom's "standard" log handlers run on every PDU and DIMSE message; our
        # own association log line replaces them (they are bound at server creation).
        previous_level = _config.LOG_HANDLER_LEVEL
        _config.LOG_HANDLER_LEVEL = "none"
        try:
            server = ae.make_server((self.config.node.host, self.config.node.port),
                                    ae_title=self.own_ae, evt_handlers=handlers,
                                    server_class=_Server, request_handler=_Handler)
        finally:
            _config.LOG_HANDLER_LEVEL = previous_level
        server.aenode_scp = self
        server.aenode_tmp_dir = str(self.spool.tmp_dir)
        ae._servers.append(server)
        self.ae, self.server = ae, server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="aenode-scp-accept", daemon=True)
        self._thread.start()
        log.info("scp_listening", ae_title=self.own_ae, host=self.config.node.host, port=self.port,
                 tls=self.ssl_context is not None, transfer_syntaxes=len(syntaxes),
                 max_associations=self.config.node.max_associations)

    def stop(self) -> None:
        if self.ae is not None:
            for assoc in list(self.ae.active_associations):
                try:
                    assoc.abort()
                except Exception:  # noqa: BLE001
                    pass
            self.ae.shutdown()
            self.ae = None
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---- event handlers --------------------------------------------------------------

    def _stats(self, assoc) -> dict:
        stats = getattr(assoc, "aenode_stats", None)
        if stats is None:
            stats = assoc.aenode_stats = {"t0": time.monotonic(), "instances": 0, "bytes": 0,
                                          "outcome": "closed", "peer": None}
        return stats

    def _on_accepted(self, event) -> None:
        self._stats(event.assoc)["outcome"] = "established"

    def _on_outcome(self, event, outcome: str) -> None:
        self._stats(event.assoc)["outcome"] = outcome
        if outcome != "rejected":
            self.tracker.ended(event.assoc)

    def _on_close(self, event) -> None:
        assoc = event.assoc
        self.tracker.ended(assoc)
        stats = self._stats(assoc)
        if stats.get("logged"):
            return
        stats["logged"] = True
        if stats["outcome"] == "established":
            stats["outcome"] = "dropped"  # connection closed without release or abort
        requestor = assoc.requestor
        log.info("association", calling_ae=(requestor.ae_title or "").strip() or None,
                 called_ae=(assoc.acceptor.ae_title or "").strip() or None,
                 peer=stats.get("peer") or requestor.address, peer_port=requestor.port,
                 instances=stats["instances"], bytes=stats["bytes"],
                 failures=stats.get("failures", 0),
                 duration_s=round(time.monotonic() - stats["t0"], 3), outcome=stats["outcome"])

    def _on_store(self, event) -> int:
        req = event.request
        assoc = event.assoc
        stats = self._stats(assoc)
        tmp_file = getattr(req, "_dataset_file", None)
        calling_ae = (assoc.requestor.ae_title or "").strip()
        status = self._store(req, tmp_file, calling_ae, assoc, stats)
        if status != STATUS_SUCCESS:
            stats["failures"] = stats.get("failures", 0) + 1
        return status

    def _store(self, req, tmp_file, calling_ae: str, assoc, stats: dict) -> int:
        sop_uid_cmd = clean_uid(req.AffectedSOPInstanceUID)
        if tmp_file is None or not isinstance(tmp_file, _SpoolTempFile):
            log.error("store_no_spool_file")
            return STATUS_PROCESSING_FAILURE
        tmp_path = Path(tmp_file.name)
        if tmp_file.error is not None:
            return self._resource_failure(tmp_file.error, "write")
        if sop_uid_cmd is None:
            log.warning("store_refused", reason="malformed Affected SOP Instance UID", calling_ae=calling_ae)
            return STATUS_CANNOT_UNDERSTAND
        try:
            meta = read_meta(tmp_path)
        except BadInstance as exc:
            log.warning("store_refused", reason=str(exc), sop_instance_uid=sop_uid_cmd, calling_ae=calling_ae)
            return STATUS_CANNOT_UNDERSTAND
        with phi_values(meta.phi):
            if meta.sop_instance_uid != sop_uid_cmd:
                log.warning("store_refused", reason="SOP Instance UID differs from the command",
                            sop_instance_uid=sop_uid_cmd, calling_ae=calling_ae)
                return STATUS_CANNOT_UNDERSTAND
            try:
                final = self.spool.commit(tmp_path, meta.study_uid, meta.series_uid,
                                          meta.sop_instance_uid, fd=tmp_file.fileno())
            except UnsafePath:
                return STATUS_CANNOT_UNDERSTAND
            except OSError as exc:
                return self._resource_failure(exc, "commit")
            own = calling_ae == self.own_ae or meta.own_output
            try:
                self.index.record_instance(meta, final, tmp_file.size, calling_ae,
                                           time.time(), own_output=own)
            except Exception as exc:  # noqa: BLE001 - e.g. the disk filled up under SQLite
                # The file is durable; start-up reconciliation indexes it.  Tell the
                # sender to retry so that the study is tracked now.
                return self._resource_failure(exc, "index")
            if not own:
                self.tracker.instance(assoc, meta.study_uid)
            stats["instances"] += 1
            stats["bytes"] += tmp_file.size
            return STATUS_SUCCESS

    def _resource_failure(self, exc: BaseException, stage: str) -> int:
        code = errno.errorcode.get(getattr(exc, "errno", None) or 0, None)
        log.error("store_out_of_resources", stage=stage, error=type(exc).__name__, errno=code)
        return STATUS_OUT_OF_RESOURCES
