"""Research export: de-identified DICOM + labels.csv + dataset.json, idempotent and resumable,
canaries in every attribute the profile names, dciodvfy on the output, sent to a real Orthanc."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from aenode.cli import main
from aenode.export.deid import (
    PATIENT_CHARACTERISTICS,
    PROFILE_TABLE,
    BurnedInAnnotationRefused,
    Deidentifier,
    clean_descriptor,
    load_or_create_secret,
)
from aenode.store.datadir import DataDir
from tests.export.conftest import NodeData
from tests.orthanc import Orthanc

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"   # Comprehensive 3D SR


def dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def _config_file(node: NodeData, tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "aenode.toml"
    f.write_text(f'[node]\ndata_dir = "{node.data_dir}"\n[model]\npath = "{node.config.model.path}"\n{extra}')
    return f


def _export(node: NodeData, tmp_path: Path, out: Path, *args: str, capsys=None, extra: str = "") -> dict:
    code = main(["export", "--out", str(out), "--config", str(_config_file(node, tmp_path, extra)), "--json", *args])
    assert code == 0
    assert capsys is not None
    return json.loads(capsys.readouterr().out)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_layout_labels_and_no_identifiers(node_data, tmp_path, capsys):
    out = tmp_path / "ds"
    summary = _export(node_data, tmp_path, out, capsys=capsys)
    assert summary["studies"] == 4 and summary["written"] == 4
    assert summary["excluded_burned_in"] == 4          # each study's SC, never exported
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == 4
    assert sorted(r["category"] for r in rows if r["category"]) == sorted(node_data.confirmed.values())
    assert {r["ai_category"] for r in rows} <= {"typical", "indeterminate", "atypical", "negative"}
    for r in rows:
        assert set(json.loads(r["ai_probabilities"])) == {"typical", "indeterminate", "atypical", "negative"}
        assert r["model"] == "covid-typicality" and r["model_version"] and r["mode"] == "active"
        assert r["age_band"] and r["sex"] in {"M", "F"} and r["slice_thickness_mm"] == "2.5"
        assert r["scanner_model"] and int(r["instances"]) == 130   # 128 slices + the SR + the SEG
        assert r["study_instance_uid"].startswith("2.25.") and r["study_instance_uid"] not in node_data.studies
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["counts"]["studies"] == 4 and doc["counts"]["confirmed"] == 3
    assert [c["code"] for c in doc["profile"]["method_codes"]] == ["113100", "113107", "113108", "113105"]

    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 4 * 130
    forbidden = [b"CNRY", *(uid.encode() for uid in node_data.studies), b"CNRYPID"]
    classes = set()
    for f in files:
        raw = f.read_bytes()
        assert not any(bad in raw for bad in forbidden), f
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        classes.add(ds.SOPClassUID)
        assert ds.PatientIdentityRemoved == "YES"
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113107", "113108", "113105"]
        assert f.parent.parent.name == ds.StudyInstanceUID and f.stem == ds.SOPInstanceUID
    assert SC_CLASS not in classes and SR_CLASS in classes
    ct = next(f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "CT")
    sr = next(f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "SR")
    assert dciodvfy_errors(ct) == [] and dciodvfy_errors(sr) == []
    # The SR's evidence still points at the exported slices (UIDs remapped consistently).
    sr_ds = pydicom.dcmread(sr)
    refs = {i.ReferencedSOPInstanceUID for s in sr_ds.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    exported = {f.stem for f in sr.parent.parent.rglob("*.dcm")}
    assert refs and refs <= exported


def test_reexport_is_identical_and_resumes(node_data, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    _export(node_data, tmp_path, a, capsys=capsys)
    again = _export(node_data, tmp_path, a, capsys=capsys)
    assert again["resumed"] == 4 and again["written"] == 0
    # An interrupted export: one study's files half there, no record -> written again.
    victim = next(p for p in (a / ".state").iterdir())
    victim.unlink()
    resumed = _export(node_data, tmp_path, a, capsys=capsys)
    assert resumed["resumed"] == 3 and resumed["written"] == 1
    _export(node_data, tmp_path, b, capsys=capsys)
    assert _digest(a) == _digest(b)     # same pseudonyms, UIDs, dates and bytes


def test_selection_confirmed_only_and_dates(node_data, tmp_path, capsys):
    got = _export(node_data, tmp_path, tmp_path / "c", "--confirmed-only", capsys=capsys)
    assert got["studies"] == 3 and got["skipped"] == {"not confirmed": 1}
    got = _export(node_data, tmp_path, tmp_path / "d", "--from", "2030-01-01", capsys=capsys)
    assert got["studies"] == 0 and got["skipped"] == {"outside dates": 4}
    with pytest.raises(SystemExit):
        main(["export", "--out", str(tmp_path / "e"), "--from", "2024-13-01"])


def test_secret_is_private_and_stable(node_data, tmp_path):
    path = DataDir.of(node_data.data_dir).export_secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == load_or_create_secret(path)
    fresh = tmp_path / "s" / "secret"
    assert load_or_create_secret(fresh) != load_or_create_secret(path)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600


# ---- canaries in every attribute Table E.1-1 names -------------------------------------------

_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "CS", "UR"}


def _canary_dataset(template: Path) -> tuple[Dataset, list[str], int]:
    """A real CT instance with an identifying value in every profile attribute it can hold."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table

    ds = pydicom.dcmread(template)
    uids: list[str] = []
    planted = 0
    retained = {Tag(k) for k in PATIENT_CHARACTERISTICS}
    tags = {t for name in ("D_TAGS", "Z_TAGS", "X_TAGS", "U_TAGS", "Z_D_TAGS", "X_Z_TAGS", "X_D_TAGS",
                           "X_Z_D_TAGS", "X_Z_U_STAR_TAGS") for t in getattr(table, name) if len(t) == 2}
    for n, (g, e) in enumerate(sorted(tags)):
        tag = Tag(g, e)
        if g in (0x0000, 0x0002) or tag in retained:   # command set, file meta: never in a dataset
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in _TEXT_VRS:
            ds.add_new(tag, vr, f"CNRY{n:04d}")
        elif vr == "DA":
            ds.add_new(tag, vr, "19671231")
        elif vr == "DT":
            ds.add_new(tag, vr, "19671231101010")
        elif vr == "UI":
            uid = f"1.2.826.0.1.3680043.10.999.{n}"
            uids.append(uid)
            ds.add_new(tag, vr, uid)
        elif vr == "SQ":
            item = Dataset()
            item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            uid = f"1.2.826.0.1.3680043.10.998.{n}"
            uids.append(uid)
            item.ReferencedSOPInstanceUID = uid
            item.InstitutionName = f"CNRY{n:04d}"
            item.PersonName = "CNRYNESTED^PERSON"
            ds.add_new(tag, vr, Sequence([item]))
        else:
            continue
        planted += 1
    # Private tags and free-text descriptions.
    ds.private_block(0x0009, "CNRY CORP", create=True).add_new(0x01, "LO", "CNRYPRIVATE")
    ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x27, "SH", "0.984:1")
    ds.SeriesDescription = "AXIAL CNRYDESCRIPTION 2.5mm LUNG"
    ds.StudyDescription = "CT CHEST CNRYSTUDY"
    ds.ImageComments = "called CNRYCOMMENT at home"
    ds.PatientID = "CNRYPATIENTID"
    ds.PatientName = "CNRY^NAME"
    return ds, uids, planted


def test_canary_in_every_profile_attribute(node_data, tmp_path):
    template = next(node_data.data_dir.joinpath("spool").rglob("002_axial_thin/1.dcm"))
    ds, uids, planted = _canary_dataset(template)
    assert planted > 300      # the table's attributes, not a handful
    Deidentifier(b"k" * 32).deidentify(ds)
    out = tmp_path / "canary.dcm"
    ds.save_as(out, enforce_file_format=True)
    raw = out.read_bytes()
    assert b"CNRY" not in raw
    assert b"19671231" not in raw           # dates shifted
    assert not [u for u in uids if u.encode() in raw]
    back = pydicom.dcmread(out)
    assert back.SeriesDescription == "AXIAL 2.5mm LUNG"      # Clean Descriptors keeps the safe words
    assert back.PatientAge and back.PatientSex               # Retain Patient Characteristics
    assert back.private_block(0x0043, "GEMS_PARM_01")[0x27].value == "0.984:1"   # safe private list
    with pytest.raises(KeyError):
        back.private_block(0x0009, "CNRY CORP")
    assert PROFILE_TABLE in " ".join(back.DeidentificationMethod)


def test_dates_shift_per_patient_and_uids_are_keyed(node_data):
    d1, d2 = Deidentifier(b"a" * 32), Deidentifier(b"b" * 32)
    assert d1.uid("1.2.3.4") == Deidentifier(b"a" * 32).uid("1.2.3.4") != d2.uid("1.2.3.4")
    assert len(d1.uid("1.2.3.4")) <= 64 and d1.uid("1.2.840.10008.1.2.1") == "1.2.840.10008.1.2.1"
    shifts = {d1.date_shift_days(f"P{i}") for i in range(50)}
    assert len(shifts) > 40 and min(shifts) >= 30


def test_burned_in_annotation_refused(node_data):
    template = next(node_data.data_dir.joinpath("spool").rglob("002_axial_thin/1.dcm"))
    ds = pydicom.dcmread(template)
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationRefused):
        Deidentifier(b"k" * 32).deidentify(ds)
    sc = next(node_data.data_dir.joinpath("results").rglob("sc.dcm"))
    with pytest.raises(BurnedInAnnotationRefused):
        Deidentifier(b"k" * 32).deidentify(pydicom.dcmread(sc))


def test_clean_descriptor():
    assert clean_descriptor("CT CHEST w/o contrast Dr. Yamada 1.25mm B70f") == "CT CHEST w contrast 1.25mm B70f"
    assert clean_descriptor("Tanaka Taro") == ""


def test_send_to_research_archive(node_data, tmp_path, capsys):
    archive = Orthanc(tmp_path / "archive", aet="RESEARCH").start()
    try:
        extra = (f'[[destinations]]\nname = "research"\nae_title = "RESEARCH"\nhost = "127.0.0.1"\n'
                 f"port = {archive.dicom_port}\n")
        got = _export(node_data, tmp_path, tmp_path / "sent", "--send", "research", capsys=capsys, extra=extra)
        assert got["sent"] == {"sent": 4 * 130}
        assert len(archive.instances()) == 4 * 130
        for tags in archive.all_tags()[:20]:
            assert "CNRY" not in json.dumps(tags)
            assert tags["PatientIdentityRemoved"] == "YES"
        # A second send enqueues nothing new (the outbox keys on the exported SOP UID).
        again = _export(node_data, tmp_path, tmp_path / "sent", "--send", "research", capsys=capsys, extra=extra)
        assert again["sent"] == {"sent": 4 * 130} and len(archive.instances()) == 4 * 130
    finally:
        archive.stop()


def test_send_over_dicomweb(node_data, tmp_path, capsys):
    archive = Orthanc(tmp_path / "archive-web", aet="RESEARCHWEB", dicomweb=True).start()
    try:
        extra = (f'[[destinations]]\nname = "research-web"\ntype = "dicomweb"\n'
                 f'url = "{archive.dicomweb_url}"\ninsecure = true\n')
        got = _export(node_data, tmp_path, tmp_path / "sent-web", "--confirmed-only", "--send", "research-web",
                      capsys=capsys, extra=extra)
        assert got["studies"] == 3 and got["sent"] == {"sent": 3 * 130}
        assert len(archive.instances()) == 3 * 130
        assert {t["PatientIdentityRemoved"] for t in archive.all_tags()[:10]} == {"YES"}
    finally:
        archive.stop()
