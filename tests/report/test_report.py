"""SR and SC content, validity (dciodvfy, dsrdump), deterministic UIDs, revisions, marks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from aenode.config import parse_config
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import publish_result
from aenode.report import result_uids
from aenode.report.models import ReportInput, SourceRef
from aenode.report.publish import write_dataset
from aenode.report.sc import build_sc, key_slices
from aenode.report.sr import build_sr
from aenode.store.marks import is_node_output
from tests.report.factory import CLASSES, MODEL, make_input


def dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]

def dsrdump(path: Path) -> str:
    r = subprocess.run(["/usr/bin/dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout

@pytest.mark.parametrize("category,lesion", [("typical", True), ("negative", False), ("indeterminate", True)])
def test_sr_and_sc_are_valid_dicom(tmp_path, category, lesion):
    inp = make_input(n=30, category=category, lesion=lesion)
    sr_path, sc_path = tmp_path / "sr.dcm", tmp_path / "sc.dcm"
    write_dataset(build_sr(inp), sr_path)
    write_dataset(build_sc(inp), sc_path)
    assert dciodvfy_errors(sr_path) == []
    assert dciodvfy_errors(sc_path) == []
    dump = dsrdump(sr_path)
    assert inp.category_concept.meaning in dump
    assert "UNVERIFIED" in dump
    assert '(233604007,SCT,"Pneumonia")' in dump and '(39607008,SCT,"Lung")' in dump
    assert "Algorithm Name" in dump and MODEL.name in dump and "Algorithm Manufacturer" in dump
    for c in CLASSES:
        assert f'NUM:(,,"{c.meaning}")' in dump
    assert "{probability}" in dump
    assert '(%,UCUM,"percent")' in dump  # involvement given (0 % for negative)

def test_sr_content(tmp_path):
    inp = make_input(n=25)
    sr = build_sr(inp)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.SeriesDescription.startswith("AI RESULT - NOT FOR DIAGNOSTIC USE")
    assert sr.StudyInstanceUID == inp.study_instance_uid and sr.PatientID == "PH0001"
    ev = sr.CurrentRequestedProcedureEvidenceSequence
    assert len(ev) == 1 and len(ev[0].ReferencedSeriesSequence) == 1
    series = ev[0].ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == inp.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedSOPSequence] == [
        r.sop_instance_uid for r in inp.source_refs]
    schemes = {i.CodingSchemeDesignator: i for i in sr.CodingSchemeIdentificationSequence}
    assert schemes["99AENODE"].CodingSchemeName == "aenode COVID-19 CT categories"
    assert "PredecessorDocumentsSequence" not in sr

def test_sc_content():
    inp = make_input(n=40, size=64)
    sc = build_sc(inp)
    assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == inp.study_instance_uid
    assert sc.SeriesInstanceUID != inp.series_instance_uid
    shown = key_slices(inp.lesion_map, 40)
    assert [i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence] == [
        inp.source_refs[z].sop_instance_uid for z in shown]
    per_slice = inp.lesion_map.reshape(40, -1).sum(axis=1)
    assert all(per_slice[z] > 0 for z in shown)  # lesion slices chosen
    px = sc.pixel_array
    assert px.ndim == 3 and px.shape[2] == 3 and px.shape[1] >= 512
    # overlay tint present (orange: red > blue clearly somewhere in the image area)
    assert ((px[..., 0].astype(int) - px[..., 2]) > 60).any()

def test_key_slices_negative_are_representative():
    assert key_slices(None, 100) == [30, 45, 59, 74]
    assert key_slices(np.zeros((100, 4, 4), np.uint8), 100) == [30, 45, 59, 74]
    assert key_slices(None, 1) == [0]

def test_uids_deterministic_and_revision_names_predecessor():
    study = "1.2.826.0.1.3680043.8.498.1"
    series = "1.2.826.0.1.3680043.8.498.2"
    refs = [SourceRef("1.2.840.10008.5.1.4.1.1.2", f"1.2.826.0.1.3680043.8.498.3.{i}") for i in range(10)]
    a = build_sr(make_input(study_uid=study, series_uid=series, refs=refs, with_volume=False))
    b = build_sr(make_input(study_uid=study, series_uid=series, refs=refs, with_volume=False))
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    u1 = result_uids(study, series, MODEL.sha256, 1)
    assert a.SOPInstanceUID == u1.sr_sop_instance_uid and len(a.SOPInstanceUID) <= 64
    r2 = build_sr(make_input(study_uid=study, series_uid=series, refs=refs, with_volume=False, revision=2))
    assert r2.SOPInstanceUID != a.SOPInstanceUID and r2.SeriesInstanceUID != a.SeriesInstanceUID
    pred = r2.PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == study
    assert pred.ReferencedSeriesSequence[0].SeriesInstanceUID == a.SeriesInstanceUID
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    # other model -> other UIDs
    assert result_uids(study, series, "cd" * 32, 1).sr_sop_instance_uid != u1.sr_sop_instance_uid
    sc1 = build_sc(make_input(study_uid=study, series_uid=series, refs=refs))
    sc2 = build_sc(make_input(study_uid=study, series_uid=series, refs=refs))
    assert sc1.SOPInstanceUID == sc2.SOPInstanceUID == u1.sc_sop_instance_uid

def test_revision_sr_is_valid(tmp_path):
    inp = make_input(n=12, revision=3, with_volume=False)
    p = tmp_path / "sr3.dcm"
    write_dataset(build_sr(inp), p)
    assert dciodvfy_errors(p) == []
    assert "Predecessor Docs    : 1" in dsrdump(p)

def test_is_node_output():
    inp = make_input(n=8)
    assert is_node_output(build_sr(inp)) and is_node_output(build_sc(inp))
    ct = Dataset()
    ct.SeriesDescription = "CHEST 1.25 LUNG"
    ct.Manufacturer = "SIEMENS"
    assert not is_node_output(ct)
    assert not is_node_output({})
    # description rewritten by a PACS: the manufacturer + software marks still count
    renamed = Dataset()
    renamed.SeriesDescription = "Key images"
    renamed.Manufacturer = "aenode"
    renamed.SoftwareVersions = "aenode 0.1.0"
    assert is_node_output(renamed)
    assert is_node_output(ct, calling_ae="AENODE", node_ae_title="AENODE")
    assert not is_node_output(ct, calling_ae="CT01", node_ae_title="AENODE")

@pytest.mark.parametrize("change,match", [
    (dict(probabilities=[1.2, 0, 0, 0]), "probabilities"),
    (dict(probabilities=[0.5, 0.5]), "probabilities"),
    (dict(category="covid"), "category"),
    (dict(revision=0), "revision"),
    (dict(series_instance_uid="1.2.abc"), "series_instance_uid"),
    (dict(source_refs=[]), "source_refs"),
    (dict(lung_involvement_percent=101.0), "lung_involvement"),
    (dict(volume=np.zeros((3, 4, 4), np.int16)), "volume"),
    (dict(volume=np.zeros((8, 4, 4), np.float32)), "volume"),
    (dict(coding_schemes=[]), "coding_schemes"),
])
def test_report_input_refuses_bad_input(change, match):
    good = make_input(n=8, size=4)
    fields = {f: getattr(good, f) for f in ("header", "series_instance_uid", "source_refs", "classes",
                                            "probabilities", "category", "model", "coding_schemes",
                                            "lung_involvement_percent", "revision")}
    fields.update(volume=None, lesion_map=None)
    fields.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        ReportInput(**fields)

def test_publish_result_writes_and_enqueues_idempotently(tmp_path):
    config = parse_config({"node": {"data_dir": str(tmp_path), "ae_title": "AENODE"},
                           "destinations": [{"name": "pacs", "ae_title": "P1", "host": "127.0.0.1", "port": 104},
                                            {"name": "backup", "ae_title": "P2", "host": "127.0.0.1", "port": 105}]})
    inp = make_input(n=10)
    paths = publish_result(config, inp)
    assert [p.name for p in paths] == ["sr.dcm", "sc.dcm"]
    assert all(p.is_file() and str(p).startswith(str(tmp_path / "results" / inp.study_instance_uid)) for p in paths)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = publish_result(config, inp)  # a retry: same files kept, no new rows
    assert again == paths and [p.stat().st_mtime_ns for p in paths] == mtimes
    with Outbox.for_config(config) as box:
        rows = box.rows()
        assert len(rows) == 4 and {r.state for r in rows} == {"pending"}
        assert {(r.destination, r.object_id) for r in rows} == {
            (d, dcmread(p).SOPInstanceUID) for d in ("pacs", "backup") for p in paths}
        summary = box.summary_for_study(inp.study_instance_uid)
        assert set(summary) == {"pacs", "backup"} and summary["pacs"]["state"] == "pending"
