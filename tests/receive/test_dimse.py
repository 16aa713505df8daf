"""The node's own DIMSE/ACSE layer (receive/dimse.py, receive/association.py), checked
against pydicom's decoder, pynetdicom's PDU codecs and a pynetdicom requestor that asks for
what a modality may ask: role selection, an asynchronous operations window, a small PDU."""

from __future__ import annotations

import io
import json
import time

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from aenode.receive.association import REJECT_APPLICATION_CONTEXT, Negotiated, negotiate
from aenode.receive.dimse import (
    C_ECHO_RSP,
    C_STORE_RSP,
    IMPLEMENTATION_CLASS_UID,
    Command,
    command_pdus,
    decode_command,
    response,
)
from aenode.receive.pdu import PDURefused
from aenode.receive.scp import supported_contexts
from aenode.receive.spoolfile import part10_header

from .conftest import wait_for
from .dicomgen import CT, ct_slice
from .rawdicom import (
    APPLICATION_CONTEXT,
    RawAssociation,
    associate_rq,
    command,
    encode_dataset,
    p_data,
    pdv,
    recv_pdu,
)

CONTEXTS = supported_contexts()


def _implicit(raw: bytes) -> pydicom.Dataset:
    return read_dataset(io.BytesIO(raw), is_implicit_VR=True, is_little_endian=True)


@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45"])  # even and odd lengths
def test_store_response_decodes_as_a_c_store_rsp(sop_instance):
    request = decode_command(command(0x0001, CT, 517, sop_instance, data_set=True))
    assert request == Command(0x0001, 517, CT, sop_instance, True)
    raw = response(request, 0xA700)
    ds = _implicit(raw)
    assert ds.CommandGroupLength == len(raw) - 12  # everything after (0000,0000) itself
    assert ds.CommandField == C_STORE_RSP and ds.MessageIDBeingRespondedTo == 517
    assert ds.Status == 0xA700 and ds.CommandDataSetType == 0x0101
    assert ds.AffectedSOPClassUID == CT and ds.AffectedSOPInstanceUID == sop_instance


def test_echo_response_has_no_instance_uid():
    request = decode_command(command(0x0030, "1.2.840.10008.1.1", 9))
    assert request.is_echo and not request.has_data_set
    ds = _implicit(response(request, 0))
    assert ds.CommandField == C_ECHO_RSP and ds.MessageIDBeingRespondedTo == 9 and ds.Status == 0
    assert "AffectedSOPInstanceUID" not in ds


def test_malformed_command_is_refused():
    with pytest.raises(PDURefused):
        decode_command(command(0x0001, CT, 1, "1.2.3")[:-3])


@pytest.mark.parametrize("peer_max", [0, 16, 40, 1000])
def test_command_fragments_fit_the_peers_pdu(peer_max):
    raw = response(decode_command(command(0x0001, CT, 3, "1.2.3.4.5.6.7", data_set=True)), 0)
    stream = command_pdus(5, raw, peer_max)
    pieces, offset, controls = b"", 0, []
    while offset < len(stream):
        assert stream[offset] == 0x04
        length = int.from_bytes(stream[offset + 2:offset + 6], "big")
        assert peer_max == 0 or length <= peer_max
        item = int.from_bytes(stream[offset + 6:offset + 10], "big")
        assert item == length - 4 and stream[offset + 10] == 5
        controls.append(stream[offset + 11])
        pieces += stream[offset + 12:offset + 6 + length]
        offset += 6 + length
    assert pieces == raw
    assert controls[-1] == 0x03 and all(c == 0x01 for c in controls[:-1])
    assert (len(controls) == 1) == (peer_max in (0, 1000))


@pytest.mark.parametrize("uid", ["1.2.3.4", "1.2.3.45"])
def test_part10_header_is_what_pydicom_reads(uid):
    header = part10_header(CT, uid, ExplicitVRLittleEndian, "SCU1")
    body = ct_slice(generate_uid(), generate_uid(), 0)
    body.SOPInstanceUID = uid
    ours = pydicom.dcmread(io.BytesIO(header + encode_dataset(body)))
    meta = ours.file_meta
    assert meta.MediaStorageSOPInstanceUID == uid and meta.MediaStorageSOPClassUID == CT
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID and meta.SourceApplicationEntityTitle == "SCU1"
    assert meta.FileMetaInformationGroupLength == len(header) - 132 - 12
    assert ours.SOPInstanceUID == uid and ours.Rows == body.Rows  # the data set follows intact


def _request(*, async_window: bool = False, roles: bool = False, app_context: str | None = None) -> A_ASSOCIATE_RQ:
    raw = associate_rq(contexts=((1, Verification, (ImplicitVRLittleEndian,)),
                                 (3, CTImageStorage, (ExplicitVRLittleEndian,)),
                                 (5, "1.2.3.4.5.6", (ExplicitVRLittleEndian,))))  # not a storage class
    rq = A_ASSOCIATE_RQ()
    rq.decode(raw)
    primitive = rq.to_primitive()
    if app_context:
        primitive.application_context_name = app_context
    if async_window:
        window = AsynchronousOperationsWindowNegotiation()
        window.maximum_number_operations_invoked = 8
        window.maximum_number_operations_performed = 8
        primitive.user_information.append(window)
    if roles:
        primitive.user_information.append(build_role(CTImageStorage, scu_role=True, scp_role=False))
    out = A_ASSOCIATE_RQ()
    out.from_primitive(primitive)
    return out


def _accept(negotiated: Negotiated) -> list:
    ac = A_ASSOCIATE_AC()
    ac.decode(negotiated.pdu)
    return ac.to_primitive().user_information


def test_negotiation_accepts_storage_and_verification_only():
    negotiated = negotiate(_request(), CONTEXTS, 65536)
    assert isinstance(negotiated, Negotiated)
    assert sorted(negotiated.contexts) == [1, 3]
    assert negotiated.contexts[3].transfer_syntax == [ExplicitVRLittleEndian]
    assert negotiated.peer_max_pdu == 16384  # what associate_rq proposes
    ac = A_ASSOCIATE_AC()
    ac.decode(negotiated.pdu)
    results = {cx.context_id: cx.result for cx in ac.to_primitive().presentation_context_definition_results_list}
    assert results == {1: 0, 3: 0, 5: 3}  # 3: abstract syntax not supported
    info = _accept(negotiated)
    assert [i.maximum_length_received for i in info if isinstance(i, MaximumLengthNotification)] == [65536]
    assert [i.implementation_class_uid for i in info if isinstance(i, ImplementationClassUIDNotification)] \
        == [IMPLEMENTATION_CLASS_UID]
    assert not any(isinstance(i, (AsynchronousOperationsWindowNegotiation, SCP_SCU_RoleSelectionNegotiation))
                   for i in info)


def test_negotiation_answers_a_window_of_one_and_keeps_default_roles():
    """An asynchronous window is answered 1/1; a role proposal gets no reply item, so the
    default roles apply (requestor SCU, node SCP: PS3.7 D.3.3.4), as with pynetdicom's own
    acceptor, which the negotiation is."""
    negotiated = negotiate(_request(async_window=True, roles=True), CONTEXTS, 65536)
    assert isinstance(negotiated, Negotiated)
    info = _accept(negotiated)
    windows = [i for i in info if isinstance(i, AsynchronousOperationsWindowNegotiation)]
    assert [(w.maximum_number_operations_invoked, w.maximum_number_operations_performed) for w in windows] == [(1, 1)]
    assert not [i for i in info if isinstance(i, SCP_SCU_RoleSelectionNegotiation)]
    assert sorted(negotiated.contexts) == [1, 3]


def test_other_application_context_is_rejected():
    assert negotiate(_request(app_context="1.2.3.4"), CONTEXTS, 65536) == REJECT_APPLICATION_CONTEXT
    assert APPLICATION_CONTEXT == "1.2.840.10008.3.1.1.1"


def test_pynetdicom_requestor_with_a_small_pdu_a_window_and_roles(node):
    """Our responses arrive fragmented to the peer's 512-byte PDU, and the negotiated
    window and roles do not upset a real requestor."""
    ae = AE(ae_title="PYSCU")
    ae.maximum_pdu_size = 512
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AENODE",
                         ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=False)])
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        ds = ct_slice(generate_uid(), generate_uid(), 0)
        status = assoc.send_c_store(ds)
        assert status.Status == 0
    finally:
        assoc.release()
    assert not assoc.is_established and assoc.is_released
    rows = node.index.instances(ds.StudyInstanceUID)
    assert [r.sop_instance_uid for r in rows] == [ds.SOPInstanceUID]
    stored = pydicom.dcmread(rows[0].path)
    assert stored.file_meta.SourceApplicationEntityTitle == "PYSCU"


def test_data_on_a_context_never_accepted_aborts(node):
    """A PDV on context 7 (never proposed) is a protocol error: A-ABORT, nothing stored."""
    raw = RawAssociation(node.port)
    assert raw.ok
    raw.sock.sendall(p_data(pdv(7, 3, command(0x0001, CT, 1, "1.2.3.4", data_set=True))))
    reply = recv_pdu(raw.sock)
    assert reply[:1] == b"\x07"  # A-ABORT
    assert node.index.studies() == []


def test_idle_association_is_aborted_after_the_idle_timeout(node_factory, log_buffer):
    node = node_factory(limits={"idle_timeout_seconds": 1.0})
    raw = RawAssociation(node.port)
    assert raw.ok
    t0 = time.monotonic()
    reply = recv_pdu(raw.sock, timeout=5.0)
    waited = time.monotonic() - t0
    assert reply[:1] == b"\x07" and 0.9 <= waited < 3.0  # A-ABORT once the second has passed
    wait_for(lambda: '"idle_timeout"' in log_buffer.getvalue(), timeout=5)
    line = next(json.loads(x) for x in log_buffer.getvalue().splitlines() if '"idle_timeout"' in x)
    assert line["event"] == "association" and line["outcome"] == "aborted"


def test_release_is_answered_and_logged(node, log_buffer):
    raw = RawAssociation(node.port)
    assert raw.ok
    raw.sock.sendall(bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0)))  # A-RELEASE-RQ
    assert recv_pdu(raw.sock)[:1] == b"\x06"  # A-RELEASE-RP
    wait_for(lambda: '"released"' in log_buffer.getvalue(), timeout=5)
