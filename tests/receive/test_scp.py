"""The Storage SCP against real DCMTK peers (echoscu, storescu) and raw sockets."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE

from aenode.store import spool as spool_mod
from aenode.store.index import COMPLETE, SKIPPED

from .conftest import echoscu, storescu, wait_for, write_toml
from .dicomgen import CT, ct_slice, dose_report, localizer, save


def _study(tmp_path: Path, ts, n: int = 3) -> tuple[str, Path, list]:
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / f"in-{str(ts)[-8:]}"
    originals = []
    if str(ts) == str(JPEGLosslessSV1):
        # pydicom has no SV1 encoder: DCMTK's dcmcjpeg writes it.
        for i in range(n):
            ds = ct_slice(study_uid, series_uid, i)
            raw = save(ds, tmp_path / "raw" / f"{i}.dcm")
            folder.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dcmcjpeg", "+e1", str(raw), str(folder / f"ct{i}.dcm")], check=True)
            originals.append(ds.pixel_array)
    else:
        for i in range(n):
            ds = ct_slice(study_uid, series_uid, i)
            originals.append(ds.pixel_array.copy())
            save(ds, folder / f"ct{i}.dcm", ts)
    save(localizer(study_uid), folder / "loc.dcm", ts if str(ts) != str(JPEGLosslessSV1) else None)
    save(dose_report(study_uid), folder / "dose.dcm")
    return study_uid, folder, originals


def test_echo(node):
    r = echoscu(node.port)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1,
                                JPEG2000Lossless, RLELossless], ids=lambda t: t.name.split(" ")[0])
def test_study_in_each_transfer_syntax(node, tmp_path, ts):
    study_uid, folder, originals = _study(tmp_path, ts)
    # storescu proposes uncompressed syntaxes unless told: ask for the file's own one.
    flags = {str(JPEGLosslessSV1): ("-xs",), str(JPEG2000Lossless): ("-xv",), str(RLELossless): ("-xr",),
             str(ImplicitVRLittleEndian): ("-xi",)}.get(str(ts), ())
    r = storescu(node.port, folder, extra=flags)
    assert r.returncode == 0, r.stderr
    assert node.scp.flush_index(10)  # rows follow the association (aenode/receive/materialise.py)
    rows = node.index.instances(study_uid)
    assert len(rows) == 5  # 3 slices + localizer + dose report
    cts = sorted((i for i in rows if i.image_type and "AXIAL" in i.image_type), key=lambda i: i.instance_number)
    assert [i.transfer_syntax for i in cts] == [str(ts)] * 3
    for row, original in zip(cts, originals):
        assert row.path.is_file() and row.size == row.path.stat().st_size
        ds = pydicom.dcmread(row.path)
        assert np.array_equal(ds.pixel_array, original)  # lossless, bytes as sent
        assert row.rows == 64 and row.image_position == (0.0, 0.0, float(row.instance_number - 1))
    assert {i.sop_class_uid for i in rows} == {CT, "1.2.840.10008.5.1.4.1.1.88.67"}
    wait_for(lambda: node.index.study(study_uid).state == COMPLETE, timeout=10)


def test_unknown_caller_rejected(node_factory):
    node = node_factory(sources=[{"ae_title": "GOODSCU"}, {"ae_title": "FARSCU", "host": "10.9.9.9"}])
    bad = echoscu(node.port, aet="BADSCU")
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stdout + bad.stderr
    far = echoscu(node.port, aet="FARSCU")  # allowed only from another host
    assert "Calling AE Title Not Recognized" in far.stdout + far.stderr
    assert echoscu(node.port, aet="GOODSCU").returncode == 0


def test_wrong_called_ae_rejected(node):
    r = echoscu(node.port, aec="NOTME")
    assert r.returncode != 0
    assert "Called AE Title Not Recognized" in r.stdout + r.stderr


def test_association_limit(node_factory):
    node = node_factory(node={"max_associations": 1})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = ae.associate("127.0.0.1", node.port, ae_title="AENODE")
    assert held.is_established
    try:
        r = echoscu(node.port)
        assert r.returncode != 0
        assert "Local Limit Exceeded" in r.stdout + r.stderr
    finally:
        held.release()
    wait_for(lambda: echoscu(node.port).returncode == 0, timeout=10, interval=0.2)


def test_duplicate_instance_stored_once(node, tmp_path):
    study_uid = generate_uid()
    path = save(ct_slice(study_uid, generate_uid(), 0), tmp_path / "one.dcm")
    assert storescu(node.port, path).returncode == 0
    assert storescu(node.port, path).returncode == 0
    rows = node.index.instances(study_uid)
    assert len(rows) == 1 and node.index.study(study_uid).instance_count == 1
    files = list((node.data_dir.spool / study_uid).rglob("*.dcm"))
    assert files == [rows[0].path]
    assert not list((node.data_dir.spool / ".tmp").iterdir())


def _send_pynetdicom(port: int, ds, calling: str = "PYSCU") -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="AENODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return status.Status
    finally:
        assoc.release()


@pytest.mark.parametrize("field,value", [
    ("SOPInstanceUID", "1.2.3.abc"),
    ("StudyInstanceUID", "../../../../tmp/evil"),
    ("SeriesInstanceUID", "1." + "2" * 70),
    ("StudyInstanceUID", "1.02.3"),
])
def test_malformed_uid_refused_no_path(node, field, value):
    ds = ct_slice(generate_uid(), generate_uid(), 0)
    setattr(ds, field, value)
    if field == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = value
    status = _send_pynetdicom(node.port, ds)
    assert status == 0xC000
    spool = node.data_dir.spool
    names = [p.name for p in spool.rglob("*")]
    assert not any("evil" in n or "abc" in n or n.startswith("1.02") for n in names)
    assert not Path("/tmp/evil").exists()
    assert node.index.studies() == []
    assert not list((spool / ".tmp").iterdir())


def test_garbage_and_truncated_pdus_do_not_stop_the_node(node, tmp_path):
    junk = socket.create_connection(("127.0.0.1", node.port))
    junk.sendall(b"\xde\xad\xbe\xef" * 64)
    stuck = socket.create_connection(("127.0.0.1", node.port))
    stuck.sendall(b"\x01\x00\x00\x00\x10\x00" + b"\x00" * 10)  # A-ASSOCIATE-RQ cut short, kept open
    half = socket.create_connection(("127.0.0.1", node.port))
    half.sendall(b"\x04\x00")  # two bytes of a PDU header, then closed
    half.close()
    try:
        assert echoscu(node.port).returncode == 0
        study_uid = generate_uid()
        path = save(ct_slice(study_uid, generate_uid(), 0), tmp_path / "ok.dcm")
        assert storescu(node.port, path).returncode == 0
        assert node.scp.flush_index(10)
        assert len(node.index.instances(study_uid)) == 1
    finally:
        junk.close()
        stuck.close()


def test_own_output_is_stored_never_analysed(node, tmp_path):
    study_uid = generate_uid()
    path = save(ct_slice(study_uid, generate_uid(), 0), tmp_path / "own.dcm")
    assert storescu(node.port, path, aet="AENODE").returncode == 0
    assert node.scp.flush_index(10)
    assert len(node.index.instances(study_uid)) == 1
    time.sleep(1.5)
    assert node.index.study(study_uid).state == SKIPPED


def test_disk_full_via_hook_answers_a700_and_recovers(node, tmp_path, log_buffer):
    """The spool cannot be written (ENOSPC when a spool file is placed): an instance already
    sealed in the journal is durable and answered 0x0000, later ones 0xA700 while the spool
    stays full, and once it takes files again every sealed instance is materialised and indexed."""
    from pynetdicom import AE

    study_uid, series_uid = generate_uid(), generate_uid()
    slices = [ct_slice(study_uid, series_uid, i) for i in range(2)]

    def full(_final):
        raise OSError(errno.ENOSPC, "No space left on device")

    ae = AE(ae_title="SCU")
    ae.add_requested_context(slices[0].SOPClassUID, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AENODE")
    assert assoc.is_established
    spool_mod.write_hook = full
    try:
        assert assoc.send_c_store(slices[0]).Status == 0x0000  # sealed in the journal
        wait_for(lambda: node.scp.materialiser.failing, timeout=10)
        assert assoc.send_c_store(slices[1]).Status == 0xA700  # the sender is told to retry
        assert node.index.instances(study_uid) == []
    finally:
        spool_mod.write_hook = None
    assert '"store_out_of_resources"' in log_buffer.getvalue()
    assert '"materialise_failed"' in log_buffer.getvalue()
    wait_for(lambda: not node.scp.materialiser.failing, timeout=10)
    assoc.release()
    assert {r.sop_instance_uid for r in node.index.instances(study_uid)} == {ds.SOPInstanceUID for ds in slices}


def test_disk_full_on_a_small_filesystem(tmp_path):
    from aenode.node import running_node

    from .conftest import make_config

    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], capture_output=True)
    assert mounted.returncode == 0, f"this test needs root to mount a tmpfs: {mounted.stderr!r}"
    try:
        study_uid, series_uid = generate_uid(), generate_uid()
        files = [save(ct_slice(study_uid, series_uid, i, size=256), tmp_path / "in" / f"{i}.dcm") for i in range(12)]
        config = make_config(tmp_path, node={"data_dir": str(mnt / "data")})
        with running_node(config, workers=()) as node:
            r = storescu(node.port, *files)
            out = (r.stdout + r.stderr).lower()
            assert "outofresources" in out  # 0xA700; the association goes on
            node.scp.flush_index(10)
            stored = len(node.index.instances(study_uid))
            assert 0 < stored < 12
            assert echoscu(node.port).returncode == 0  # still serving
            subprocess.run(["mount", "-o", "remount,size=20m", str(mnt)], check=True)
            r = storescu(node.port, *files)
            assert r.returncode == 0, r.stderr
            assert node.scp.flush_index(10)
            assert len(node.index.instances(study_uid)) == 12
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_status_json_and_logs_carry_no_phi(node, tmp_path, log_buffer):
    study_uid, folder, _ = _study(tmp_path, ExplicitVRLittleEndian)
    assert storescu(node.port, folder).returncode == 0
    assert node.scp.flush_index(10)
    wait_for(lambda: node.index.study(study_uid).state == COMPLETE, timeout=10)
    node.index.record_result(study_uid, 1, "covid-typicality", "typical", {"typical": 0.9, "negative": 0.1},
                             selected_series="1.2.3", detail={"result_uids": ["1.2.3.4"]})
    # A second model's result is listed, but the summary columns stay the primary model's.
    node.index.record_result(study_uid, 1, "a-second-model", "mild", {"mild": 0.7}, selected_series="1.2.3")
    cfg = write_toml(tmp_path / "node.toml", node.config)
    r = subprocess.run([sys.executable, "-m", "aenode", "status", "--config", str(cfg), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (row,) = [s for s in doc["studies"] if s["study_uid"] == study_uid]
    assert row["state"] == COMPLETE and row["instances"] == 5
    assert row["category"] == "typical" and row["probabilities"]["typical"] == 0.9
    assert row["result_uids"] == ["1.2.3.4"] and row["delivery"] is None and row["alert"] is None
    assert [(x["model"], x["category"]) for x in row["results"]] == [
        ("a-second-model", "mild"), ("covid-typicality", "typical")]
    table = subprocess.run([sys.executable, "-m", "aenode", "status", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert study_uid in table.stdout
    logs = log_buffer.getvalue()
    assert '"association"' in logs and "STORESCU" in logs
    for text in (r.stdout, r.stderr, table.stdout, table.stderr, logs):
        for needle in ("CANARY", "PHI^SHOULD", "CANARYID123", "CANARYACC9"):
            assert needle not in text


_FLAGS = {str(JPEGLosslessSV1): ("-xs",), str(JPEG2000Lossless): ("-xv",), str(RLELossless): ("-xr",),
          str(ImplicitVRLittleEndian): ("-xi",)}


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLosslessSV1,
                                JPEG2000Lossless, RLELossless], ids=lambda t: t.name.split(" ")[0])
def test_phantom_study_in_each_transfer_syntax(node, tmp_path, ts):
    import aenode.phantom as phantom
    out = tmp_path / "phantom"
    phantom.generate_study(out, "typical", seed=3, slices=8, transfer_syntax=str(ts), extra_series=True)
    sent = sorted(out.rglob("*.dcm"))
    r = storescu(node.port, extra=("+sd", "+r", "+sp", "*.dcm", *_FLAGS.get(str(ts), ()), str(out)))
    assert r.returncode == 0, r.stderr
    study_uid = pydicom.dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID
    assert node.scp.flush_index(10)
    rows = node.index.instances(study_uid)
    assert len(rows) == len(sent)  # every series incl. localizer and dose report
    assert any(i.sop_class_uid == CT and i.transfer_syntax == str(ts) for i in rows)
    assert any(i.modality == "SR" for i in rows)
    wait_for(lambda: node.index.study(study_uid).state == COMPLETE, timeout=10)
