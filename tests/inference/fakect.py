"""Small hand-made CT series for unit tests of selection and loading (no phantom needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"


def write_series(
    out: Path,
    *,
    n: int = 20,
    size: int = 32,
    spacing: float = 2.0,
    thickness: float | None = None,
    pixel_mm: float = 1.0,
    tilt_deg: float = 0.0,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    modality: str = "CT",
    description: str = "CHEST",
    kernel: str = "LUNG",
    skip: tuple[int, ...] = (),
    duplicate: tuple[int, ...] = (),
    constant: bool = False,
    study_uid: str | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    seed: int = 0,
) -> tuple[str, list[Path], np.ndarray]:
    """Write a series; returns (series UID, files, the HU volume written, z ascending)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series_uid = generate_uid()
    study_uid = study_uid or generate_uid()
    vol = np.full((n, size, size), -1000, dtype=np.int16) if constant else (
        rng.integers(-1000, 400, size=(n, size, size)).astype(np.int16))
    files = []
    t = math.radians(tilt_deg)
    for k in range(n):
        if k in skip:
            continue
        for copy in range(2 if k in duplicate else 1):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CT
            sop = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID = CT
            ds.SOPInstanceUID = sop
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.Modality = modality
            ds.ImageType = image_type.split("\\")
            ds.SeriesDescription = description
            ds.SeriesNumber = 2
            ds.ConvolutionKernel = kernel
            ds.InstanceNumber = k + 1
            ds.SliceThickness = thickness if thickness is not None else spacing
            # tilt: slices shift posteriorly (y) as z advances
            ds.ImagePositionPatient = [-size / 2 * pixel_mm, -size / 2 * pixel_mm + k * spacing * math.tan(t),
                                       -100.0 + k * spacing]
            ds.ImageOrientationPatient = list(orientation)
            ds.PixelSpacing = [pixel_mm, pixel_mm]
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.PixelData = (vol[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
            if transfer_syntax != ExplicitVRLittleEndian:
                ds.compress(transfer_syntax)
            path = out / f"{series_uid[-8:]}_{k:04d}_{copy}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return series_uid, files, vol


__all__ = ["write_series", "RLELossless"]
