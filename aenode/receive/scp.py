"""The Storage SCP: access control, TLS and durable C-STORE.

Data path: each C-STORE data set is streamed, P-DATA fragment by fragment, into the
connection's receive journal segment (``spoolfile.JournalEntry``, ``aenode/store/journal.py``;
nothing is decoded or held in memory).  The C-STORE handler then reads the header
elements that decide the response (identifying UIDs, image geometry against ``[limits]``,
the node's own-output marks) from the data set's first bytes, which the sink keeps in
memory (``headscan.py``; pydicom reads the whole header instead when those bytes are
anything unusual, and for every refusal), checks them against the presentation context
and the command, seals the record with one ``fdatasync`` and only then answers success:
the journal record is the durable record.  After the response ``materialise.Materialiser``
writes it out as the spool file, builds its header record and queues its index row to
``indexer.IndexWriter`` (group commit), waiting while this process is receiving; once an
association has ended its instances are materialised and indexed before the stabiliser
hears of it, and start-up replays any journal record a crash left.  (A connection for
which no journal segment can be had gets the older path: temporary file, fsync, rename,
folder sync.)  Connections are bounded in ``server.py``, PDUs in ``pdu.py``; each
association runs on one thread (``association.py``, DIMSE messages in ``dimse.py``);
pynetdicom provides the A-ASSOCIATE codecs and the presentation context negotiation.

C-STORE statuses: 0x0000 stored; 0xA700 out of resources (disk full, I/O error, index
unavailable: the sender should retry); 0xA900 the data set's SOP Class differs from the
presentation context or the command; 0xC000 cannot understand (unreadable header,
malformed or inconsistent UIDs, a ``[limits]`` bound exceeded); 0x0110 processing failure.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from aenode.config import Config, TLSConfig
from aenode.logs import get_logger, identifiers_of, phi_values
from aenode.receive.association import Association
from aenode.receive.checks import (
    DEFLATED_TRANSFER_SYNTAXES,
    HEADER_KEYWORDS,
    HeaderUIDs,
    LimitExceeded,
    check_geometry,
    header_uids,
    read_dataset,
)
from aenode.receive.dimse import STATUS_SUCCESS, Command
from aenode.receive.headscan import scan_header
from aenode.receive.indexer import IndexWriter
from aenode.receive.materialise import Materialiser, Sealed
from aenode.receive.server import AssociationServer
from aenode.receive.spoolfile import InstanceTooLarge, JournalEntry, SpoolTempFile
from aenode.store.index import Index, InstanceRecord
from aenode.store.journal import Journal, RecordInfo
from aenode.store.marks import MARK_KEYWORDS, is_node_output
from aenode.store.meta import META_KEYWORDS, BadInstance, meta_from_dataset
from aenode.store.spool import Spool, UnsafePath
from aenode.store.stabilise import ActivityTracker
from aenode.store.uids import clean_uid

log = get_logger("aenode.receive")

STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
# How long an association's end waits for its index rows to be committed.
END_FLUSH_SECONDS = 10.0

HANDLER_TAGS = frozenset(int(tag_for_keyword(k)) for k in  # type: ignore[arg-type]
                         ("SpecificCharacterSet", *HEADER_KEYWORDS, *MARK_KEYWORDS, *META_KEYWORDS))
"""The header elements the C-STORE handler reads (before it answers: its checks; after: the
header record the materialiser builds from the same reading)."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    """Why the handler refuses a header: the status, the ``store_refused`` line's fields,
    whether the header's patient identifiers must be masked in it."""

    status: int
    fields: dict[str, object]
    mask_phi: bool = False


def decodable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom (with the installed plugins) can decode, deflate excepted."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    out = []
    for ts in AllTransferSyntaxes:
        if str(ts) in DEFLATED_TRANSFER_SYNTAXES:
            continue
        try:
            if get_decoder(ts).is_available:
                out.append(str(ts))
        except (NotImplementedError, ValueError, KeyError):
            continue
    # Explicit VR Little Endian first: it is what most SCUs prefer.
    out.sort(key=lambda t: t != "1.2.840.10008.1.2.1")
    return out


def supported_contexts() -> list[PresentationContext]:
    """What the node accepts: Verification, and every Storage SOP Class in every transfer
    syntax it can decode."""
    syntaxes = decodable_transfer_syntaxes()
    contexts = [build_context(Verification)]
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        contexts.append(build_context(cx.abstract_syntax, syntaxes))
    return contexts


class StorageSCP:
    """The node's DICOM listener.  ``start()`` returns once it accepts connections."""

    def __init__(self, config: Config, index: Index, spool: Spool, tracker: ActivityTracker):
        self.config = config
        self.limits = config.limits
        self.index = index
        self.spool = spool
        self.tracker = tracker
        self.writer = IndexWriter(index)
        self.own_ae = config.node.ae_title
        self.journal = Journal(spool.journal_dir)
        self.materialiser = Materialiser(self.journal, spool, self.writer, self.own_ae,
                                         max_defer_seconds=config.stability.quiet_seconds / 4)
        self._recovered = False
        tls = config.node.tls
        self.handshake_timeout = tls.handshake_timeout_seconds if tls else 10.0
        self.ssl_context = self._make_ssl_context(tls) if tls else None
        self._sources: list[tuple[str, set[str] | None]] = []
        for src in config.sources:
            ips: set[str] | None = None
            if src.host:
                try:
                    ips = {str(ai[4][0]) for ai in socket.getaddrinfo(src.host, None)}
                except OSError:
                    ips = {src.host}
            self._sources.append((src.ae_title, ips))
        self.server: AssociationServer | None = None
        self._thread: threading.Thread | None = None
        self.contexts: list[PresentationContext] = []

    @staticmethod
    def _make_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if tls.ca:
            ctx.load_verify_locations(str(tls.ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.verify_client else (
            ssl.CERT_OPTIONAL if tls.ca else ssl.CERT_NONE)
        return ctx

    def allowed_callers(self, peer_ip: str) -> list[str] | None:
        """Calling AE titles accepted from ``peer_ip`` (None: any caller)."""
        if not self._sources:
            return None
        return [ae for ae, ips in self._sources if ips is None or peer_ip in ips]

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def stats(self) -> dict[str, int]:
        """Connection counters (open, pending, associations, refusals) for health checks."""
        return self.server.stats() if self.server is not None else {}

    def start(self) -> None:
        limits = self.limits
        self.contexts = supported_contexts()
        self.recover()
        address = (self.config.node.host, self.config.node.port)
        server = AssociationServer(address, scp=self)
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="aenode-scp-accept", daemon=True)
        self._thread.start()
        log.info("scp_listening", ae_title=self.own_ae, host=self.config.node.host, port=self.port,
                 tls=self.ssl_context is not None, transfer_syntaxes=len(self.contexts[-1].transfer_syntax),
                 max_associations=self.config.node.max_associations, max_pdu_bytes=limits.max_pdu_bytes)

    def recover(self) -> None:
        """Start the index writer and the materialiser, replaying what a crash left in the
        journal (idempotent; ``start()`` calls it).  The node calls it before start-up
        reconciliation: a spool file materialised but not yet synced when the power went
        must be rewritten from its journal record before reconciliation indexes it."""
        if self._recovered:
            return
        self.writer.start()
        self.materialiser.start(self.index)
        self._recovered = True

    def stop(self) -> None:
        server = self.server
        if server is not None:
            server.shutdown()
            for conn in server.open_connections():
                if conn.assoc is not None and conn.assoc.is_established:
                    try:
                        conn.assoc.abort()
                    except Exception:  # noqa: BLE001 - best effort on the way out
                        pass
                conn.shutdown()
            end = time.monotonic() + 5
            while server.open_connections() and time.monotonic() < end:
                time.sleep(0.02)
            self.server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.materialiser.stop()
        self.writer.stop()
        self._recovered = False

    def flush_index(self, timeout: float | None = None) -> bool:
        """Wait until every instance answered so far is materialised and indexed."""
        return self.materialiser.flush(timeout)

    def association_ended(self, assoc: object) -> None:
        """Tell the stabiliser, once the association's instances are materialised and
        indexed (so that a study is never completed while its last rows are still queued);
        its release rule counts from the end itself, so that the catching up (the
        materialiser waits for a pause in the receive) overlaps the rule's wait."""
        ended = self.tracker.now()
        self.materialiser.flush(END_FLUSH_SECONDS)
        self.tracker.ended(assoc, at=ended)

    # ---- what the associations call (association.Service) -----------------------------

    def on_store(self, assoc: Association, command: Command, context: PresentationContext,
                 data: JournalEntry | SpoolTempFile | None) -> int:
        return self.store(data, command_sop_uid=command.sop_instance_uid, command_sop_class=command.sop_class_uid,
                          abstract_syntax=context.abstract_syntax, transfer_syntax=context.transfer_syntax[0],
                          calling_ae=assoc.calling_ae, sender=assoc)

    # ---- the C-STORE data path -------------------------------------------------------

    def store(self, tmp: JournalEntry | SpoolTempFile | None, *, command_sop_uid: object,
              command_sop_class: object, abstract_syntax: object, transfer_syntax: object, calling_ae: str,
              sender: object) -> int:
        """Check, seal and queue one received data set; the C-STORE status to answer.

        ``sender`` identifies the association for the stabiliser (``ActivityTracker``).
        """
        if tmp is None:
            log.warning("store_refused", reason="no_data_set", calling_ae=calling_ae)
            return STATUS_CANNOT_UNDERSTAND
        if isinstance(tmp.error, InstanceTooLarge):
            log.warning("store_refused", reason="limit_exceeded", limit="max_instance_bytes",
                        value=tmp.size, allowed=tmp.max_bytes, calling_ae=calling_ae)
            return STATUS_CANNOT_UNDERSTAND
        if tmp.error is not None:
            return self._resource_failure(tmp.error, "write")
        sop_uid_cmd = clean_uid(command_sop_uid)
        if sop_uid_cmd is None:
            log.warning("store_refused", reason="malformed_affected_sop_instance_uid", calling_ae=calling_ae)
            return STATUS_CANNOT_UNDERSTAND
        if str(transfer_syntax) in DEFLATED_TRANSFER_SYNTAXES:  # never negotiated; defence in depth
            log.warning("store_refused", reason="deflated_transfer_syntax", sop_instance_uid=sop_uid_cmd,
                        calling_ae=calling_ae)
            return STATUS_CANNOT_UNDERSTAND
        ds = scan_header(tmp.head, str(transfer_syntax), HANDLER_TAGS, complete=tmp.head_is_whole)
        verdict = None if ds is None else self._verdict(ds, sop_uid_cmd, command_sop_class, abstract_syntax, calling_ae)
        if not isinstance(verdict, HeaderUIDs):
            # The whole header, read by pydicom, decides every refusal (and what it logs).
            try:
                with tmp.reader() as fh:
                    ds = read_dataset(fh)
            except (BadInstance, OSError) as exc:
                log.warning("store_refused", reason="bad_header", detail=str(exc) if isinstance(exc, BadInstance)
                            else type(exc).__name__, sop_instance_uid=sop_uid_cmd, calling_ae=calling_ae)
                return STATUS_CANNOT_UNDERSTAND
            verdict = self._verdict(ds, sop_uid_cmd, command_sop_class, abstract_syntax, calling_ae)
            if isinstance(verdict, _Refusal):
                if verdict.mask_phi:
                    with phi_values(identifiers_of(ds)):
                        log.warning("store_refused", **verdict.fields)
                else:
                    log.warning("store_refused", **verdict.fields)
                return verdict.status
        assert ds is not None
        uids = verdict
        own = calling_ae == self.own_ae or is_node_output(ds)
        # Patient identifiers are looked up (to mask them in log lines) only where a line
        # may quote the header: the refusals above; the rest logs UIDs, codes and numbers.
        if isinstance(tmp, JournalEntry):
            status = self._seal(tmp, ds, uids.study_uid, uids.series_uid,
                                uids.sop_instance_uid, uids.sop_class_uid, str(transfer_syntax), calling_ae, own)
        else:
            status = self._commit(tmp, ds, str(transfer_syntax), calling_ae, own)
        if status != STATUS_SUCCESS:
            return status
        if not own:
            self.tracker.instance(sender, uids.study_uid)
        return STATUS_SUCCESS

    def _verdict(self, ds: Dataset, sop_uid_cmd: str, command_sop_class: object, abstract_syntax: object,
                 calling_ae: str) -> HeaderUIDs | _Refusal:
        """The header's identifying UIDs when it passes the handler's checks, else why not."""
        try:
            uids = header_uids(ds)
            check_geometry(ds, self.limits)
        except LimitExceeded as exc:
            return _Refusal(STATUS_CANNOT_UNDERSTAND, {
                "reason": "limit_exceeded", "limit": exc.limit, "value": exc.value, "allowed": exc.allowed,
                "sop_instance_uid": sop_uid_cmd, "calling_ae": calling_ae}, mask_phi=True)
        except BadInstance as exc:
            return _Refusal(STATUS_CANNOT_UNDERSTAND, {
                "reason": "bad_header", "detail": str(exc), "sop_instance_uid": sop_uid_cmd,
                "calling_ae": calling_ae}, mask_phi=True)
        if uids.sop_class_uid != str(abstract_syntax) or uids.sop_class_uid != clean_uid(command_sop_class):
            return _Refusal(STATUS_SOP_CLASS_MISMATCH, {
                "reason": "sop_class_mismatch", "sop_class_uid": uids.sop_class_uid,
                "abstract_syntax": str(abstract_syntax), "sop_instance_uid": sop_uid_cmd, "calling_ae": calling_ae})
        if uids.sop_instance_uid != sop_uid_cmd:
            return _Refusal(STATUS_CANNOT_UNDERSTAND, {
                "reason": "sop_instance_uid_mismatch", "sop_instance_uid": sop_uid_cmd, "calling_ae": calling_ae})
        return uids

    def _seal(self, entry: JournalEntry, ds: Dataset, study: str, series: str, sop: str, sop_class: str,
              transfer_syntax: str, calling_ae: str, own: bool) -> int:
        """The journal path: one fdatasync, the rest after the response (materialise.py)."""
        info = RecordInfo(study, series, sop, sop_class, transfer_syntax, calling_ae, time.time_ns(),
                          entry.size, entry.crc)
        try:
            self.spool.path_for(study, series, sop)  # validated again: they become a path
            self.journal.seal(entry.segment, entry.offset, info)
        except UnsafePath:
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            return self._resource_failure(exc, "commit")
        finally:
            entry.close()
        failing = self.materialiser.failing or self.writer.failing
        # The record is durable: it is materialised and indexed (and retried) whatever happens next.
        self.materialiser.submit(Sealed(entry.segment, entry.offset, info, ds, own))
        if failing:
            # The spool or the index cannot be written now (e.g. the disk filled up): tell the
            # sender to retry so that it does not take the study as tracked.
            return self._resource_failure(OSError("spool or index writer failing"), "index")
        return STATUS_SUCCESS

    def _commit(self, tmp: SpoolTempFile, ds: Dataset, transfer_syntax: str, calling_ae: str, own: bool) -> int:
        """The file path (fallback): fsync, rename, folder sync, then the index row."""
        try:
            meta = meta_from_dataset(ds, transfer_syntax)
        except BadInstance as exc:
            log.warning("store_refused", reason="bad_header", detail=str(exc), calling_ae=calling_ae)
            return STATUS_CANNOT_UNDERSTAND
        try:
            final = self.spool.commit(tmp.path, meta.study_uid, meta.series_uid, meta.sop_instance_uid,
                                      fd=tmp.fileno())
        except UnsafePath:
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            return self._resource_failure(exc, "commit")
        failing = self.writer.failing
        self.writer.submit(InstanceRecord(meta, final, tmp.size, calling_ae, time.time(), own))
        if failing:
            return self._resource_failure(OSError("index writer failing"), "index")
        return STATUS_SUCCESS

    def _resource_failure(self, exc: BaseException, stage: str) -> int:
        code = errno.errorcode.get(getattr(exc, "errno", None) or 0, None)
        log.error("store_out_of_resources", stage=stage, error=type(exc).__name__, errno=code)
        return STATUS_OUT_OF_RESOURCES


__all__ = ["STATUS_CANNOT_UNDERSTAND", "STATUS_OUT_OF_RESOURCES", "STATUS_PROCESSING_FAILURE",
           "STATUS_SOP_CLASS_MISMATCH", "STATUS_SUCCESS", "StorageSCP", "decodable_transfer_syntaxes",
           "supported_contexts"]
