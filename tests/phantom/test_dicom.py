"""DICOM objects: dciodvfy-clean, consistent geometry, exact decode in every syntax,
deterministic, truth beside (not inside) the files, CLI."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from aenode.phantom import TRANSFER_SYNTAXES, generate_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, generate_study(out, "typical", 42, slices=12)


def _dciodvfy(path):
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    text = r.stdout + r.stderr
    return [l for l in text.splitlines() if l.startswith("Error")], [l for l in text.splitlines() if l.startswith("Warning")]


def test_all_objects_pass_dciodvfy(study):
    out, r = study
    files = [r.ct_files[0], r.ct_files[-1]]
    for _, _desc, _n, folder in r.series:
        files.append(sorted(__import__("pathlib").Path(folder).glob("*.dcm"))[0])
    assert len(r.series) == 4
    for f in files:
        errors, _ = _dciodvfy(f)
        assert errors == [], (f, errors)


def test_series_kinds(study):
    out, r = study
    by = {d: pydicom.dcmread(sorted(__import__("pathlib").Path(f).glob("*.dcm"))[0]) for _, d, _, f in r.series}
    loc = by["LOCALIZER AP"]
    assert list(loc.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert by["Dose Report"].SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.67"
    thick = by["AXIAL 5mm STANDARD"]
    assert float(thick.SliceThickness) == 5.0 and thick.ConvolutionKernel == "STANDARD"
    assert len({d.StudyInstanceUID for d in by.values()}) == 1
    assert len({d.SeriesInstanceUID for d in by.values()}) == 4


def test_ct_header_and_geometry(study):
    out, r = study
    ds = [pydicom.dcmread(f) for f in r.ct_files]
    d0 = ds[0]
    assert d0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert list(d0.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert (d0.Rows, d0.Columns) == (512, 512)
    assert float(d0.RescaleSlope) == 1 and float(d0.RescaleIntercept) == -1024
    assert d0.PatientName == "PHANTOM^TYPICAL^0042"
    for kw in ("PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
               "FrameOfReferenceUID", "Manufacturer", "ManufacturerModelName", "KVP", "ConvolutionKernel",
               "XRayTubeCurrent", "ExposureTime", "CTDIvol", "SliceLocation", "PixelSpacing"):
        assert kw in d0, kw
    assert d0.ConvolutionKernel == "LUNG"
    z = np.array([float(d.ImagePositionPatient[2]) for d in ds])
    assert np.allclose(-np.diff(z), float(d0.SpacingBetweenSlices))
    assert np.isclose(float(d0.SliceThickness), 1.25)
    assert [d.InstanceNumber for d in ds] == list(range(1, 13))
    assert [float(v) for v in d0.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    ps = [float(v) for v in d0.PixelSpacing]
    assert np.isclose(ps[1] * 512, float(d0.ReconstructionDiameter), atol=0.2)
    assert len({d.SOPInstanceUID for d in ds}) == 12
    # pixels: HU decode back to the volume exactly
    vol = r.volume
    for k in (0, 11):
        hu = ds[k].pixel_array.astype(np.int32) * int(ds[k].RescaleSlope) + int(ds[k].RescaleIntercept)
        assert np.array_equal(hu, vol.hu[k])
        assert np.isclose(float(ds[k].ImagePositionPatient[2]), vol.z_positions[k], atol=1e-3)


def test_truth_beside_not_inside(study):
    out, r = study
    assert r.truth_dir == out / "ground_truth"
    truth = json.loads((r.truth_dir / "truth.json").read_text())
    assert truth["category"] == "Typical appearance" and truth["seed"] == 42
    assert truth["series_instance_uids"]["axial"] == r.series[1][0]
    m = np.load(r.truth_dir / "masks.npz")
    assert m["lesion_mask"].shape == (12, 512, 512) and m["lung_mask"].shape == (12, 512, 512)
    assert not list(r.truth_dir.glob("*.dcm"))
    for _, _, _, folder in r.series:
        for f in __import__("pathlib").Path(folder).glob("*.dcm"):
            ds = pydicom.dcmread(f)
            assert not any(e.tag.is_private for e in ds.iterall())
            raw = f.read_bytes()
            assert b"peripheral" not in raw and b"Typical" not in raw and b"ground" not in raw.lower()


@pytest.mark.parametrize("name", ["implicit", "jpeg-lossless", "jpeg2000-lossless", "rle"])
def test_transfer_syntaxes_decode_exactly(tmp_path, name):
    ref = generate_study(tmp_path / "ref", "atypical", 3, slices=3, extra_series=False)
    got = generate_study(tmp_path / name, "atypical", 3, slices=3, extra_series=False,
                         transfer_syntax=TRANSFER_SYNTAXES[name])
    for a, b in zip(ref.ct_files, got.ct_files):
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        assert db.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[name]
        assert np.array_equal(da.pixel_array, db.pixel_array)
    errors, _ = _dciodvfy(got.ct_files[0])
    assert errors == []


def test_transfer_syntax_by_uid_and_unknown(tmp_path):
    r = generate_study(tmp_path / "a", "negative", 1, slices=2, extra_series=False,
                       transfer_syntax="1.2.840.10008.1.2.5")
    assert pydicom.dcmread(r.ct_files[0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    with pytest.raises(ValueError, match="transfer syntax"):
        generate_study(tmp_path / "b", "negative", 1, slices=2, transfer_syntax="1.2.3.4")


def test_deterministic(tmp_path):
    def digest(r):
        return [hashlib.sha256(f.read_bytes()).hexdigest() for f in r.ct_files]
    a = generate_study(tmp_path / "a", "indeterminate", 7, slices=4)
    b = generate_study(tmp_path / "b", "indeterminate", 7, slices=4)
    c = generate_study(tmp_path / "c", "indeterminate", 8, slices=4)
    assert digest(a) == digest(b)
    assert [s[0] for s in a.series] == [s[0] for s in b.series]
    for (_, _, _, fa), (_, _, _, fb) in zip(a.series, b.series):
        pa = sorted(__import__("pathlib").Path(fa).glob("*.dcm"))
        pb = sorted(__import__("pathlib").Path(fb).glob("*.dcm"))
        assert [p.read_bytes() for p in pa] == [p.read_bytes() for p in pb]
    assert a.study_instance_uid == b.study_instance_uid != c.study_instance_uid
    da, dc = pydicom.dcmread(a.ct_files[0]), pydicom.dcmread(c.ct_files[0])
    assert da.SOPInstanceUID != dc.SOPInstanceUID
    assert not np.array_equal(da.pixel_array, dc.pixel_array)


def test_study_options(tmp_path):
    r = generate_study(tmp_path, "negative", 2, slices=5, slice_thickness=5.0, extra_series=False,
                       patient_name="TEST^ONE", patient_id="X1", study_instance_uid="2.25.1234")
    ds = pydicom.dcmread(r.ct_files[0])
    assert ds.PatientName == "TEST^ONE" and ds.PatientID == "X1" and ds.StudyInstanceUID == "2.25.1234"
    assert float(ds.SliceThickness) == 5.0 and len(r.series) == 1
    with pytest.raises(ValueError, match="thickness"):
        generate_study(tmp_path, "negative", 2, slices=5, slice_thickness=7.0)
    with pytest.raises(ValueError, match="pattern"):
        generate_study(tmp_path, "covid", 2, slices=5)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "aenode.phantom", *args], capture_output=True, text=True)


def test_cli(tmp_path):
    r = _cli("--pattern", "typical", "--out", str(tmp_path / "o"), "--seed", "4", "--slices", "3",
             "--no-extra-series", "--transfer-syntax", "1.2.840.10008.1.2.4.70")
    assert r.returncode == 0, r.stderr
    assert "AXIAL" in r.stdout and "done in" in r.stdout
    assert len(list((tmp_path / "o" / "002_axial_thin").glob("*.dcm"))) == 3
    bad = _cli("--pattern", "covid", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown pattern 'covid'" in bad.stderr
    bad = _cli("--pattern", "typical", "--out", str(tmp_path / "x"), "--transfer-syntax", "1.2.3")
    assert bad.returncode == 2 and "transfer syntax" in bad.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = _cli("--pattern", "typical", "--out", str(blocker / "sub"), "--slices", "2")
    assert bad.returncode == 2 and "output directory" in bad.stderr


def test_register_with_argparse():
    import argparse

    from aenode.phantom.cli import register
    p = argparse.ArgumentParser(prog="aenode")
    register(p.add_subparsers(dest="cmd"))
    a = p.parse_args(["phantom", "--pattern", "negative", "--out", "/tmp/x", "--slice-thickness", "2.5"])
    assert a.func is not None and a.slice_thickness == 2.5 and a.pattern == "negative"
