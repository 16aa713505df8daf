"""Issue 15 items 1-4 and 9a, each reproduced against a real ``aenode serve`` subprocess.

Raw sockets for the PDU attacks (no real peer sends such bytes), DCMTK for DICOM.  The
server runs with tight ``[limits]`` (served.TEST_LIMITS) so that deadlines pass in seconds;
tests/receive/test_limits.py checks the defaults.  Attackers use other loopback addresses
(127.0.x.y) than the well-behaved peer (127.0.0.1), as they would on a network.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from aenode.store.index import Index

from . import served as served_mod
from .conftest import echoscu, free_port, storescu, wait_for
from .dicomgen import CT, ct_slice, save
from .rawdicom import (
    MR,
    RawAssociation,
    closed_by_peer,
    command,
    connect,
    p_data,
    pdv,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    port = free_port()
    cfg = served_mod.write_config(root / "node.toml", port, root / "data", served_mod.TEST_LIMITS)
    node = served_mod.start(cfg, port, root / "data", root / "node.log", echoscu)
    yield node
    assert node.stop() == 0, node.log_text()[-3000:]
    assert "CANARY" not in node.log_text()


def _indexed(served, study_uid: str, settle: float = 1.0) -> int:
    """Instances of the study in the index once nothing was added for ``settle`` seconds
    (rows follow an association's end, aenode/receive/materialise.py)."""
    index = Index.for_data_dir(served.data_dir)
    try:
        count, since = -1, time.monotonic()
        while time.monotonic() - since < settle:
            now = len(index.instances(study_uid))
            if now != count:
                count, since = now, time.monotonic()
            time.sleep(0.05)
        return count
    finally:
        index.close()


def _logged(served, *needles: str, timeout: float = 10) -> str:
    """The node's log once it contains every needle (its lines are written as connections end)."""
    wait_for(lambda: all(n in served.log_text() for n in needles), timeout=timeout, interval=0.1)
    return served.log_text()


def _echo_seconds(port: int) -> float:
    t0 = time.monotonic()
    r = echoscu(port)
    assert r.returncode == 0, r.stdout + r.stderr
    return time.monotonic() - t0


# ---- 1. memory from a declared PDU length ----------------------------------------------


def test_declared_pdu_length_allocates_nothing(served):
    reset = served.reset_peak()  # VmHWM back to the current RSS (needs root or the same user)
    before = served.rss_mb() if reset else served.peak_rss_mb()
    attackers = []
    for i in range(4):  # A-ASSOCIATE-RQ header declaring 4 GiB, no AE title needed
        s = connect(served.port, source=f"127.0.1.{i + 1}")
        s.sendall(b"\x01\x00\xff\xff\xff\xff")
        attackers.append(s)
    assert all(closed_by_peer(s, 2.0) for s in attackers)
    for declared in (0xFFFFFFFF, 4 * MiB + 1):  # P-DATA-TF on an established association
        a = RawAssociation(served.port, source="127.0.1.9")
        assert a.ok
        a.send(b"\x04\x00" + struct.pack(">L", declared) + b"\0" * 1024)
        assert closed_by_peer(a.sock, 2.0)
        a.close()
    growth = served.peak_rss_mb() - before
    assert growth < 100, f"peak RSS grew {growth:.0f} MB"
    _logged(served, '"pdu_too_large"', '"max_associate_request_bytes"', '"max_pdu_bytes"')
    assert _echo_seconds(served.port) < 2


def test_largest_pdu_is_still_received(served):
    """A peer that uses our whole advertised PDU (4 MiB) is served (read as it arrives)."""
    ae = AE(ae_title="BIGPDU")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", served.port, ae_title="AENODE", max_pdu=0)
    assert assoc.is_established and assoc.acceptor.maximum_length == 4 * MiB
    study = generate_uid()
    try:
        ds = ct_slice(study, generate_uid(), 0, size=1024, frames=3)  # 6 MiB: two 4 MiB PDUs
        assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()
    assert _indexed(served, study) == 1


# ---- 2. deflate and pixel bombs --------------------------------------------------------


def test_deflated_is_never_negotiated(served, tmp_path):
    a = RawAssociation(served.port, contexts=((3, CT, (str(DeflatedExplicitVRLittleEndian),)),))
    assert a.ok and a.contexts == {3: 4}  # result 4: transfer syntaxes not supported
    a.release()
    # DCMTK proposing deflate first: the node picks an uncompressed syntax, nothing is inflated.
    study = generate_uid()
    ds = ct_slice(study, generate_uid(), 0, size=512)
    ds.PixelData = bytes(512 * 512 * 2)  # zeros: the file is a few KB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 64 * 1024
    r = storescu(served.port, path, extra=("-xd",))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _indexed(served, study) == 1
    index = Index.for_data_dir(served.data_dir)
    try:
        (row,) = index.instances(study)
        assert row.transfer_syntax == "1.2.840.10008.1.2.1"
    finally:
        index.close()


_BOMBS = {  # declared geometry -> the [limits] key (or reason) named in the log line
    "max_rows": {"Rows": 8192, "Columns": 64},
    "max_columns": {"Rows": 64, "Columns": 8192},
    "max_frames": {"Rows": 8, "Columns": 8, "NumberOfFrames": 100},
    "max_decoded_instance_bytes": {"Rows": 4096, "Columns": 4096, "NumberOfFrames": 4},
    "bad_header": {"BitsAllocated": 128},
}


def test_pixel_bombs_refused_before_storing(served, tmp_path):
    studies = {}
    for name, attrs in _BOMBS.items():
        study = generate_uid()
        ds = ct_slice(study, generate_uid(), 0, size=8)  # 128 bytes of pixel data on the wire
        for k, v in attrs.items():
            setattr(ds, k, v)
        save(ds, tmp_path / "bombs" / f"{name}.dcm")
        studies[name] = study
    r = storescu(served.port, tmp_path / "bombs", extra=("--no-halt",))
    out = (r.stdout + r.stderr).lower()
    assert out.count("error: cannotunderstand") == len(_BOMBS), out  # 0xC000 for each
    log = _logged(served, '"bad_header"', '"max_decoded_instance_bytes"')
    for name, study in studies.items():
        assert _indexed(served, study) == 0
        key = '"limit": "' + name + '"' if name.startswith("max_") else '"reason": "bad_header"'
        assert key in log, name
    assert not served.tmp_files()


# ---- 3. no leaks on dropped associations -----------------------------------------------


def test_dropped_associations_leak_nothing(served):
    wait_for(lambda: not served.tmp_files(), timeout=10)
    baseline = served.fds()
    dropped, attempt, end = 0, 0, time.monotonic() + 90
    fragment = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" * 100  # part of a data set, never finished
    while dropped < 1000 and time.monotonic() < end:
        attempt += 1
        a = RawAssociation(served.port, source=f"127.0.2.{1 + attempt % 250}")
        if not a.ok or 3 not in a.contexts:  # the node is still tidying the previous ones
            a.close()
            time.sleep(0.005)
            continue
        a.send(p_data(pdv(3, 3, command(0x0001, CT, 1, generate_uid(), data_set=True))))
        a.send(p_data(pdv(3, 0, fragment)))
        if attempt % 2:  # half of them reset instead of closing
            a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()
        dropped += 1
    assert dropped == 1000
    wait_for(lambda: served.fds() <= baseline and not served.tmp_files(), timeout=30, interval=0.2)
    assert _echo_seconds(served.port) < 2


# ---- 4. slot starvation ----------------------------------------------------------------


class _Attack(threading.Thread):
    """Re-opens its attack whenever the node cuts it, until stopped; records how long each lasted."""

    def __init__(self, port: int, source: str, kind: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.source, self.kind, self.stop_event = port, source, kind, stop
        self.lifetimes: list[float] = []
        self.established = 0
        self.replies: list[bytes] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                self._once()
            except OSError:
                pass
            self.lifetimes.append(time.monotonic() - t0)
            time.sleep(0.05)

    def _note(self, a: RawAssociation) -> None:
        self.established += a.ok
        self.replies.append(a.reply[:10])

    def _drip(self, sock: socket.socket, data: bytes, every: float) -> None:
        for i in range(len(data)):
            if self.stop_event.is_set():
                return
            sock.sendall(data[i:i + 1])
            if closed_by_peer(sock, every):
                return

    def _once(self) -> None:
        if self.kind == "idle":  # TCP connection, never an A-ASSOCIATE-RQ
            s = connect(self.port, self.source)
            closed_by_peer(s, 30)
            s.close()
        elif self.kind == "associate_trickle":  # the A-ASSOCIATE-RQ, one byte at a time
            s = connect(self.port, self.source)
            from .rawdicom import associate_rq
            self._drip(s, associate_rq(), 0.2)
            s.close()
        elif self.kind == "pdu_trickle":  # established, then one PDU one byte at a time
            a = RawAssociation(self.port, self.source)
            self._note(a)
            if a.ok:
                self._drip(a.sock, p_data(pdv(1, 3, command(0x0030, "1.2.840.10008.1.1"))), 0.2)
            a.close()
        elif self.kind == "message_trickle":  # established, whole PDUs of a never-ending command
            a = RawAssociation(self.port, self.source)
            self._note(a)
            while a.ok and not self.stop_event.is_set():
                a.send(p_data(pdv(1, 1, b"\x00\x00\x00\x00")))
                if closed_by_peer(a.sock, 0.3):
                    break
            a.close()


def test_slot_starvation_echo_answers_quickly(served):
    idle = [_echo_seconds(served.port) for _ in range(5)]
    stop = threading.Event()
    attacks = ([_Attack(served.port, "127.0.3.1", "idle", stop) for _ in range(20)]  # one peer
               + [_Attack(served.port, f"127.0.4.{i + 1}", "idle", stop) for i in range(40)]  # many peers
               + [_Attack(served.port, f"127.0.5.{i + 1}", "associate_trickle", stop) for i in range(4)]
               + [_Attack(served.port, f"127.0.6.{i + 1}", "pdu_trickle", stop) for i in range(3)]
               + [_Attack(served.port, f"127.0.7.{i + 1}", "message_trickle", stop) for i in range(2)])
    for a in attacks:
        a.start()
    try:
        time.sleep(2.5)  # every kind has been cut at least once
        under_attack = [_echo_seconds(served.port) for _ in range(8)]
    finally:
        stop.set()
        for a in attacks:
            a.join(10)
    print(f"C-ECHO idle median {statistics.median(idle):.3f} s, under attack median "
          f"{statistics.median(under_attack):.3f} s max {max(under_attack):.3f} s")
    assert max(under_attack) < 2.0
    by_kind: dict[str, list[float]] = {}
    for a in attacks:
        by_kind.setdefault(a.kind, []).extend(a.lifetimes)
        if a.kind in ("pdu_trickle", "message_trickle"):
            assert a.established, (a.kind, a.replies[:3])
    # Every kind was cut by the node within its bound (slack: the client's clock starts at
    # connect, the node's at accept, on a 2-core machine shared with the attackers).
    limits = served_mod.TEST_LIMITS
    assert min(by_kind["idle"]) < 0.5  # per-peer cap / pending cap: closed at once
    assert max(by_kind["associate_trickle"]) < limits["associate_timeout_seconds"] + 2.0
    assert max(by_kind["pdu_trickle"]) < limits["pdu_timeout_seconds"] + 2.0
    assert max(by_kind["message_trickle"]) < limits["message_timeout_seconds"] + 2.0
    _logged(served, '"associate_timeout"', '"pdu_timeout"', '"message_timeout"', '"connection_refused"',
            '"evicted"')


# ---- 9a. SOP Class versus presentation context ---------------------------------------


def test_sop_class_differs_from_context_refused(served):
    study = generate_uid()
    ds = ct_slice(study, generate_uid(), 0)
    ds.SOPClassUID = MR  # the data set says MR; the context (and command) say CT
    a = RawAssociation(served.port)
    assert a.ok and a.contexts.get(3) == 0
    try:
        status = a.store(ds, context_id=3, sop_class=CT)
    finally:
        a.release()
    assert status == 0xA900
    assert _indexed(served, study) == 0
    _logged(served, '"sop_class_mismatch"')


def test_node_survived(served):
    """After every attack above: still serving, nothing left in the spool's temp folder."""
    assert _echo_seconds(served.port) < 2
    study = generate_uid()
    path = save(ct_slice(study, generate_uid(), 0), Path(served.data_dir).parent / "last.dcm")
    assert storescu(served.port, path).returncode == 0
    assert _indexed(served, study) == 1
    assert not served.tmp_files()
