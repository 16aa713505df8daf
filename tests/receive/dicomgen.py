"""Small synthetic DICOM files for the receive tests (until/unless aenode.phantom is used)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CANARY = "CANARY^PHI^SHOULD^NOT^LEAK"
CT = "1.2.840.10008.5.1.4.1.1.2"


def ct_slice(study_uid: str, series_uid: str, i: int, size: int = 64, patient: str = CANARY,
             sop_uid: str | None = None, ts=ExplicitVRLittleEndian, seed: int = 0,
             frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    sop = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = patient
    ds.PatientID = "CANARYID123"
    ds.AccessionNumber = "CANARYACC9"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop
    ds.SOPClassUID = CT
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = "Chest"
    ds.SeriesNumber = 2
    ds.InstanceNumber = i + 1
    ds.SliceThickness = 1.0
    ds.ImagePositionPatient = [0.0, 0.0, float(i)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.StudyDate = "20200101"
    rng = np.random.default_rng(seed + i)
    if frames > 1:
        ds.NumberOfFrames = frames
        arr = rng.integers(-1000, 1000, (frames, size, size), dtype=np.int16)
    else:
        arr = rng.integers(-1000, 1000, (size, size), dtype=np.int16)
    ds.PixelData = arr.tobytes()
    if str(ts) != str(ExplicitVRLittleEndian):
        ds.compress(ts)
    return ds


def write_study(out: Path, n: int = 5, size: int = 64, study_uid: str | None = None, ts=ExplicitVRLittleEndian,
                seed: int = 0) -> tuple[str, list[Path]]:
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i in range(n):
        ds = ct_slice(study_uid, series_uid, i, size=size, ts=ts, seed=seed)
        p = out / f"s{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return study_uid, paths


LOCALIZER_TYPE = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def localizer(study_uid: str, size: int = 64) -> Dataset:
    ds = ct_slice(study_uid, generate_uid(), 0, size=size, seed=7)
    ds.ImageType = LOCALIZER_TYPE
    ds.SeriesDescription = "Topogram"
    ds.SeriesNumber = 1
    return ds


def dose_report(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = DOSE_SR
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = CANARY
    ds.PatientID = "CANARYID123"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = sop
    ds.SOPClassUID = DOSE_SR
    ds.Modality = "SR"
    ds.SeriesNumber = 999
    ds.SeriesDescription = "Dose Report"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    return ds


def save(ds: Dataset, path: Path, ts=None) -> Path:
    """Save; ``ts`` re-encodes uncompressed data as implicit VR or compresses it."""
    from pydicom.uid import ImplicitVRLittleEndian

    if ts is not None and str(ts) == str(ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif ts is not None and str(ts) != str(ExplicitVRLittleEndian):
        ds.compress(ts)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
