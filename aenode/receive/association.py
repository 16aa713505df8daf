"""One accepted association, from the A-ASSOCIATE-AC to its release or abort, on one thread.

pynetdicom decodes the A-ASSOCIATE-RQ (``server.py``), negotiates the presentation contexts
and SCP/SCU roles (:func:`pynetdicom.presentation.negotiate_as_acceptor`) and encodes the
A-ASSOCIATE-AC here: its public codecs.  The data phase is the node's own loop, because
pynetdicom's runs every association on two threads (the DUL and the association reactor)
that hand each PDU and each DIMSE message over queues, build a pydicom ``Dataset`` and a
primitive for every command set, and poll; measured on a 400-instance study that took 1.6
times DCMTK storescp with a handler that did nothing (docs/BENCHMARKS.md, "Ingest").  The
loop here reads a PDU (bounded by ``pdu.PDUReader``), streams data set fragments straight
into the connection's journal entry, asks the :class:`Service` for the C-STORE status and
writes the response (``dimse.py``) on the same thread: one thread per association, no
queues, no polling.

What the node negotiates as an acceptor: the presentation contexts it supports (Verification
and every Storage SOP Class with the transfer syntaxes it can decode), role selection
replies as pynetdicom computes them, an asynchronous operations window of 1/1 when one is
proposed (one operation at a time, answered in order), and no other extended negotiation
(user identity and SOP class extended items are ignored, which PS3.7 D.3.3 allows).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from aenode.receive.dimse import (
    COMMAND,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    LAST,
    STATUS_SUCCESS,
    Command,
    command_pdus,
    decode_command,
    response,
)
from aenode.receive.pdu import (
    A_ABORT,
    A_RELEASE_RQ,
    C_CANCEL_RQ,
    P_DATA_TF,
    PDUReader,
    PDURefused,
    PeerClosed,
    abort_pdu,
    pdv_items,
    send_quietly,
)
from aenode.receive.spoolfile import JournalEntry, SpoolTempFile, part10_header

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # DICOM Application Context Name (PS3.7 A.2.1)
RELEASE_RP = bytes((0x06, 0, 0, 0, 0, 4, 0, 0, 0, 0))
# A-ASSOCIATE-RJ (result, source, reason), PS3.8 table 9-21
REJECT_APPLICATION_CONTEXT = (1, 1, 2)  # permanent, service user, application context name not supported


class Link(Protocol):
    """What the association needs from its connection (``server.Connection``)."""

    reader: PDUReader
    outcome: str
    reason: str | None

    def refused(self, exc: PDURefused) -> None: ...

    def new_temp_file(self) -> JournalEntry | SpoolTempFile: ...

    def answered(self, status: int, size: int | None) -> None:
        """A C-STORE was answered ``status``; ``size``: bytes of its data set, if any."""


class Service(Protocol):
    """The SCP behind the association (``scp.StorageSCP``)."""

    def on_store(self, assoc: Association, command: Command, context: PresentationContext,
                 data: JournalEntry | SpoolTempFile | None) -> int: ...


@dataclass(frozen=True)
class Negotiated:
    """The outcome of :func:`negotiate`: the A-ASSOCIATE-AC to send and what it accepted."""

    pdu: bytes
    contexts: dict[int, PresentationContext]
    peer_max_pdu: int


def negotiate(request: A_ASSOCIATE_RQ, supported: Sequence[PresentationContext],
              max_pdu: int) -> Negotiated | tuple[int, int, int]:
    """Accept ``request`` (the A-ASSOCIATE-AC and the accepted contexts) or the
    (result, source, reason) to reject it with."""
    primitive = request.to_primitive()
    if str(primitive.application_context_name) != APPLICATION_CONTEXT:
        return REJECT_APPLICATION_CONTEXT
    peer_max = 0
    roles: dict[UID, tuple[bool | None, bool | None]] = {}
    async_proposed = False
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None:
            roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
        elif isinstance(item, AsynchronousOperationsWindowNegotiation):
            async_proposed = True
    results, role_items = negotiate_as_acceptor(primitive.presentation_context_definition_list,
                                                list(supported), roles or None)
    accept = A_ASSOCIATE()
    accept.application_context_name = APPLICATION_CONTEXT
    accept.calling_ae_title = primitive.calling_ae_title
    accept.called_ae_title = primitive.called_ae_title
    accept.result = 0x00
    accept.result_source = 0x01
    accept.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    info: list[object] = [length, uid, version, *role_items]
    if async_proposed:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 1
        window.maximum_number_operations_performed = 1
        info.append(window)
    accept.user_information = info  # type: ignore[assignment]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(accept)
    accepted = {int(cx.context_id): cx for cx in results if cx.result == 0x00 and cx.context_id is not None}
    return Negotiated(ac.encode(), accepted, peer_max)


class Association:
    """An accepted association; :meth:`run` serves it until release, abort or error."""

    def __init__(self, sock: socket.socket, link: Link, service: Service, negotiated: Negotiated,
                 calling_ae: str, idle_timeout: float):
        self.sock = sock
        self.link = link
        self.service = service
        self.contexts = negotiated.contexts
        self.peer_max_pdu = negotiated.peer_max_pdu
        self.calling_ae = calling_ae
        self.idle_timeout = idle_timeout
        self.is_established = False
        self._send_lock = threading.Lock()
        self._command = bytearray()
        self._pending: tuple[Command, int, JournalEntry | SpoolTempFile] | None = None
        self._accept_pdu = negotiated.pdu

    def run(self) -> None:
        """Send the A-ASSOCIATE-AC, then serve PDUs until the association ends.

        Sets ``link.outcome``: 'released', 'aborted' (by the peer, on an idle timeout or by
        :meth:`abort`) or 'refused' (a protocol or limit violation, see ``pdu.py``); a peer
        that just closes leaves 'established' (the connection logs it as 'dropped')."""
        try:
            self._send(self._accept_pdu)
        except PeerClosed:
            return
        self.is_established = True
        self.link.outcome = "established"
        try:
            while self._serve_one():
                pass
        except PeerClosed:
            pass
        except PDURefused as exc:
            self.link.refused(exc)
            self._send_quietly(abort_pdu())
        finally:
            self.is_established = False
            self._drop_pending()

    def abort(self) -> None:
        """A-ABORT from the node (shutting down); safe from any thread."""
        if self.is_established:
            self.link.outcome = "aborted"
            self._send_quietly(abort_pdu(source=0))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- the data phase -----------------------------------------------------------------

    def _serve_one(self) -> bool:
        """Wait for and handle one PDU; False once the association has ended."""
        if not self._wait_readable():
            self.link.outcome, self.link.reason = "aborted", "idle_timeout"
            self._send_quietly(abort_pdu())
            return False
        return self.handle(self.link.reader.read(self.sock))

    def handle(self, pdu: bytearray) -> bool:
        """Act on one PDU read by ``pdu.PDUReader``; False once the association has ended."""
        kind = pdu[0]
        if kind == P_DATA_TF:
            self._data(pdu)
            return True
        if kind == A_RELEASE_RQ:
            self._send(RELEASE_RP)
            self.link.outcome = "released"
            return False
        if kind == A_ABORT:
            self.link.outcome = "aborted"
            return False
        raise PDURefused("unexpected_pdu")

    def _wait_readable(self) -> bool:
        """False when nothing arrived within the idle timeout; raises ``PDURefused`` when a
        message in progress passes its deadline first."""
        reader = self.link.reader
        pending = getattr(self.sock, "pending", None)  # TLS: bytes already decrypted
        if pending is not None and pending():
            return True
        deadline = time.monotonic() + self.idle_timeout
        while True:
            reader.check_idle()
            now = time.monotonic()
            if now >= deadline:
                return False
            wait = deadline - now
            if reader.watch.started is not None:  # wake for the message deadline too
                wait = min(wait, max(0.0, reader.watch.started + reader.limits.message_timeout_seconds - now) + 0.01)
            try:
                ready, _, _ = select.select([self.sock], [], [], wait)
            except (OSError, ValueError):
                raise PeerClosed() from None
            if ready:
                return True

    def _data(self, pdu: bytearray) -> None:
        """The PDVs of one P-DATA-TF (framing and commands already checked by the reader)."""
        with memoryview(pdu) as view:
            for context_id, control, start, end in pdv_items(pdu):
                if context_id not in self.contexts:
                    raise PDURefused("unknown_presentation_context")
                if control & COMMAND:
                    self._command += view[start:end]
                    if control & LAST:
                        command = decode_command(self._command)
                        self._command = bytearray()
                        self._on_command(command, context_id)
                    continue
                if self._pending is None:
                    raise PDURefused("unexpected_data_set")
                command, pending_context, sink = self._pending
                if context_id != pending_context:
                    raise PDURefused("presentation_context_changed")
                sink.write(view[start:end])
                if control & LAST:
                    self._pending = None
                    self._answer(command, context_id, sink)

    def _on_command(self, command: Command, context_id: int) -> None:
        if command.field == C_CANCEL_RQ:
            return  # nothing to cancel: each operation is answered before the next is read
        if command.is_echo:
            self._send(command_pdus(context_id, response(command, STATUS_SUCCESS), self.peer_max_pdu))
        elif command.has_data_set:
            sink = self.link.new_temp_file()
            sink.begin(part10_header(command.sop_class_uid, command.sop_instance_uid,
                                     str(self.contexts[context_id].transfer_syntax[0]), self.calling_ae))
            self._pending = (command, context_id, sink)
        else:
            self._answer(command, context_id, None)

    def _answer(self, command: Command, context_id: int, sink: JournalEntry | SpoolTempFile | None) -> None:
        try:
            status = self.service.on_store(self, command, self.contexts[context_id], sink)
        finally:
            if sink is not None:
                sink.finish()
        self.link.answered(status, None if sink is None else sink.size)
        self._send(command_pdus(context_id, response(command, status), self.peer_max_pdu))

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending[2].discard()
            self._pending = None

    # ---- sending ------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except (OSError, ValueError):
            raise PeerClosed() from None

    def _send_quietly(self, data: bytes) -> None:
        with self._send_lock:
            send_quietly(self.sock, data)
