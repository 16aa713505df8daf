"""Fuzzing (Hypothesis) of everything a peer's bytes reach before they are trusted.

Targets and their documented rejections (anything else is a crash, and fails):

* a connection's byte stream as the node handles it: PDU framing and checks
  (receive/pdu.py), pynetdicom's A-ASSOCIATE-RQ decoder and the negotiation
  (``server.ConnectionHandler``: a decoder exception becomes ``PDURefused("undecodable_pdu")``),
  then the association's data phase (receive/association.py, dimse.py) with a C-STORE
  handler that answers success: ``PDURefused`` / ``PeerClosed``;
* the C-STORE data path (``StorageSCP.store`` on a received file, real spool and index):
  a status among 0x0000, 0xA700, 0xA900, 0xC000, and the index holds exactly the
  instances answered 0x0000;
* the header reader (``aenode.store.meta.read_meta`` / ``meta_from_dataset``, and
  receive/checks.py): ``BadInstance`` / ``LimitExceeded``.

The normal run is bounded (a few seconds); ``-m slow`` runs many more examples plus a plain
random mutation loop over the framing for a fixed time and prints executions and crashes.
"""

from __future__ import annotations

import io
import os
import random
import time
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid
from pynetdicom.pdu import A_ASSOCIATE_RQ

from aenode.config import LimitsConfig, parse_config
from aenode.receive.association import Association, Negotiated, negotiate
from aenode.receive.checks import LimitExceeded, check_geometry, read_header
from aenode.receive.pdu import PDUReader, PDURefused, PeerClosed, parse_associate_header
from aenode.receive.scp import StorageSCP, supported_contexts
from aenode.receive.spoolfile import SpoolTempFile, part10_header
from aenode.store.index import Index
from aenode.store.meta import BadInstance, meta_from_dataset, read_meta
from aenode.store.spool import Spool
from aenode.store.stabilise import ActivityTracker

from .dicomgen import CT, ct_slice
from .rawdicom import associate_rq, command, p_data, pdv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values

FAST = settings(max_examples=1000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=20000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
LIMITS = LimitsConfig(max_pdu_bytes=64 * 1024, max_associate_request_bytes=16 * 1024)

CONTEXTS = supported_contexts()


class FeedSocket:
    """The peer's bytes, handed out ``chunk`` at a time; b"" (closed) at the end."""

    def __init__(self, data: bytes, chunk: int = 1 << 20):
        self.data, self.pos, self.chunk = data, 0, max(1, chunk)
        self.sent = bytearray()

    def settimeout(self, _t: float) -> None:
        pass

    def recv_into(self, view: memoryview, nbytes: int = 0) -> int:
        n = min(len(view), self.chunk, len(self.data) - self.pos)
        view[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def sendall(self, data: bytes) -> None:
        self.sent += data


class _MemorySink:
    def __init__(self) -> None:
        self.size, self.closed = 0, False

    def write(self, data: memoryview) -> int:
        self.size += len(data)
        return len(data)

    begin = write  # the Part 10 header

    def finish(self) -> None:
        self.closed = True

    discard = finish


class _Link:
    def __init__(self, reader: PDUReader):
        self.reader, self.outcome, self.reason = reader, "closed", None
        self.answers: list[tuple[int, int | None]] = []

    def answered(self, status: int, size: int | None) -> None:
        self.answers.append((status, size))

    def refused(self, exc: PDURefused) -> None:
        self.outcome, self.reason = "refused", exc.reason

    def new_temp_file(self) -> _MemorySink:
        return _MemorySink()


class _Service:
    def __init__(self) -> None:
        self.stored = 0

    def on_store(self, assoc, command, context, data) -> int:
        self.stored += data is not None
        return 0x0000


def connection(data: bytes, chunk: int = 1 << 20) -> int:
    """Run a peer's byte stream through what the node does with it; the number of PDUs accepted."""
    sock = FeedSocket(data, chunk)
    reader = PDUReader(LIMITS, clock=lambda: 0.0)
    accepted = 0
    try:
        first = reader.read_associate_request(sock, deadline=1.0)  # type: ignore[arg-type]
        header = parse_associate_header(first)
        try:
            request = A_ASSOCIATE_RQ()
            request.decode(bytes(first))
            negotiated = negotiate(request, CONTEXTS, LIMITS.max_pdu_bytes)
        except Exception:  # noqa: BLE001 - ConnectionHandler: any decoder failure is undecodable_pdu
            raise PDURefused("undecodable_pdu") from None
        accepted += 1
        if not isinstance(negotiated, Negotiated):
            return accepted
        assoc = Association(sock, _Link(reader), _Service(), negotiated,  # type: ignore[arg-type]
                            header.calling_ae, 1.0)
        while assoc.handle(reader.read(sock)):  # type: ignore[arg-type]
            accepted += 1
        accepted += 1
    except (PDURefused, PeerClosed):
        return accepted
    return accepted


def _valid_stream() -> bytes:
    store = command(0x0001, CT, 7, "1.2.3.4", data_set=True)
    return (associate_rq() + p_data(pdv(1, 3, command(0x0030, "1.2.840.10008.1.1")))
            + p_data(pdv(3, 1, store[:20]), pdv(3, 3, store[20:])) + p_data(pdv(3, 0, b"\x08\x00" * 50))
            + p_data(pdv(3, 2, b"\x10\x00" * 20)) + bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0)))


VALID = _valid_stream()


def test_valid_stream_is_accepted():
    assert connection(VALID) == 6
    assert connection(VALID, chunk=1) == 6  # byte by byte


def test_valid_stream_is_answered():
    """The echo and the store each get their response, then the release its A-RELEASE-RP."""
    sock = FeedSocket(VALID)
    reader = PDUReader(LIMITS, clock=lambda: 0.0)
    request = A_ASSOCIATE_RQ()
    request.decode(bytes(reader.read_associate_request(sock, deadline=1.0)))  # type: ignore[arg-type]
    negotiated = negotiate(request, CONTEXTS, LIMITS.max_pdu_bytes)
    assert isinstance(negotiated, Negotiated) and set(negotiated.contexts) == {1, 3}
    service, link = _Service(), _Link(reader)
    assoc = Association(sock, link, service, negotiated, "RAWSCU", 1.0)  # type: ignore[arg-type]
    while assoc.handle(reader.read(sock)):  # type: ignore[arg-type]
        pass
    assert service.stored == 1
    meta = part10_header(CT, "1.2.3.4", "1.2.840.10008.1.2.1", "RAWSCU")
    assert link.answers == [(0x0000, len(meta) + 140)]  # the File Meta the node wrote + 140 bytes sent
    assert bytes(sock.sent).count(b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x80") == 1  # (0000,0100) = 0x8030 C-ECHO-RSP
    assert bytes(sock.sent).count(b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x80") == 1  # (0000,0100) = 0x8001 C-STORE-RSP
    assert bytes(sock.sent).endswith(bytes((6, 0, 0, 0, 0, 4, 0, 0, 0, 0)))


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        op = rnd.randrange(5)
        pos = rnd.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rnd.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 2:
            del buf[pos:pos + rnd.randint(1, 16)]
        elif op == 3 and len(buf) > pos + 6:  # a huge or odd length field
            buf[pos:pos + 4] = rnd.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x01\x00\x01",
                                           rnd.randbytes(4)])
        else:
            buf = buf[:pos]
    return bytes(buf)


pdu_streams = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda seed: _mutate(VALID, random.Random(seed)), st.integers(0, 2**32)),
    st.builds(lambda kind, length, body: bytes((kind, 0)) + length.to_bytes(4, "big") + body,
              st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=512)),
)


def _check_framing(data: bytes, chunk: int) -> None:
    accepted = connection(data, chunk)
    assert 0 <= accepted <= len(data) // 6


@FAST
@given(pdu_streams, st.integers(1, 64))
def test_fuzz_pdu_framing(data, chunk):
    _check_framing(data, chunk)


@pytest.mark.slow
@SLOW
@given(pdu_streams, st.integers(1, 64))
def test_fuzz_pdu_framing_long(data, chunk):
    _check_framing(data, chunk)


# ---- the header reader -----------------------------------------------------------------


def _file_bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


SEED_FILE = _file_bytes(ct_slice("1.2.3.4", "1.2.3.4.5", 0, size=8))


def _header_reader(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    try:
        read_meta(path)
    except BadInstance:
        pass
    try:
        meta, ds = read_header(path)
        meta_from_dataset(ds)
        check_geometry(ds, LimitsConfig())
    except (BadInstance, LimitExceeded):
        pass


dicom_files = st.one_of(
    st.builds(lambda seed: _mutate(SEED_FILE, random.Random(seed)), st.integers(0, 2**32)),
    st.binary(max_size=1024),
)


@FAST
@given(dicom_files)
def test_fuzz_header_reader(tmp_path, data):
    _header_reader(data, tmp_path / "h.dcm")


@pytest.mark.slow
@SLOW
@given(dicom_files)
def test_fuzz_header_reader_long(tmp_path, data):
    _header_reader(data, tmp_path / "h.dcm")


# ---- the C-STORE data path -------------------------------------------------------------


class _Store:
    def __init__(self, root: Path):
        config = parse_config({"node": {"data_dir": str(root)}})
        self.spool = Spool(root)
        self.spool.prepare()
        self.index = Index.for_data_dir(root)
        self.scp = StorageSCP(config, self.index, self.spool, ActivityTracker())
        self.stored: set[str] = set()

    def run(self, data: bytes, sop_uid: str, abstract: str) -> int:
        tmp = SpoolTempFile(self.spool.tmp_dir, LimitsConfig().max_instance_bytes)
        tmp.write(data)
        status = self.scp.store(tmp, command_sop_uid=sop_uid, command_sop_class=CT, abstract_syntax=abstract,
                                transfer_syntax="1.2.840.10008.1.2.1", calling_ae="FUZZ", sender=self)
        tmp.finish()  # what the association does after the handler (unlink: gone if committed)
        assert status in (0x0000, 0xA700, 0xA900, 0xC000), hex(status)
        if status == 0:
            self.stored.add(sop_uid)
        return status


@pytest.fixture(scope="module")
def store_target(tmp_path_factory):
    target = _Store(tmp_path_factory.mktemp("fuzzstore"))
    yield target
    assert target.scp.flush_index(30)  # rows follow the response (aenode/receive/indexer.py)
    assert target.index.known_instances() == target.stored  # indexed exactly when answered 0x0000
    assert not os.listdir(target.spool.tmp_dir)
    target.scp.writer.stop()
    target.index.close()


def _store_input(seed: int, mutate: bool, abstract_ok: bool) -> tuple[bytes, str, str]:
    sop = generate_uid()
    data = _file_bytes(ct_slice(generate_uid(), generate_uid(), 0, size=8, sop_uid=sop))
    if mutate:
        data = _mutate(data, random.Random(seed))
    return data, sop, CT if abstract_ok else "1.2.840.10008.5.1.4.1.1.4"


store_inputs = st.builds(_store_input, st.integers(0, 2**32), st.booleans(), st.booleans())


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(store_inputs)
def test_fuzz_store_path(store_target, case):
    data, sop, abstract = case
    status = store_target.run(data, sop, abstract)
    if abstract != CT:
        assert status != 0


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(store_inputs)
def test_fuzz_store_path_long(store_target, case):
    data, sop, abstract = case
    status = store_target.run(data, sop, abstract)
    if abstract != CT:
        assert status != 0


@pytest.mark.slow
def test_fuzz_framing_mutation_loop():
    """A plain mutation loop for volume: runs for AENODE_FUZZ_SECONDS (default 60 s)."""
    seconds = float(os.environ.get("AENODE_FUZZ_SECONDS", "60"))
    rnd = random.Random(15)
    seeds = [VALID, associate_rq(), p_data(pdv(1, 3, command(0x0030, "1.2.840.10008.1.1")))]
    runs = crashes = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            data = _mutate(rnd.choice(seeds), rnd)
            try:
                connection(data, rnd.choice((1, 7, 1 << 20)))
            except Exception:  # noqa: BLE001 - counted, then reported
                crashes += 1
            runs += 1
    print(f"framing mutation loop: {runs} executions, {crashes} crashes in {seconds:.0f} s")
    assert crashes == 0
