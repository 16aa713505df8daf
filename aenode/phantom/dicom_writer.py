"""CT Image Storage writer: shared header elements built once, per-slice elements added fresh.

Storage: unsigned 12-bit in 16 (BitsStored 12), RescaleIntercept -1024, RescaleSlope 1, so
HU -1024..3071 round-trip exactly and every syntax (incl. JPEG Lossless at precision 12)
decodes to the same stored values.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)

from .identity import Identity, add_seconds, uid
from .jpeg_lossless import encode_frame

TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit": str(ExplicitVRLittleEndian),
    "implicit": str(ImplicitVRLittleEndian),
    "jpeg-lossless": str(JPEGLosslessSV1),
    "jpeg2000-lossless": str(JPEG2000Lossless),
    "rle": str(RLELossless),
}
IMPLEMENTATION_UID = uid("implementation")
IMPLEMENTATION_VERSION = "AENODE_PHANTOM1"
MANUFACTURER = "AENODE Synthetic"
MODEL = "PhantomScan 64"
BITS_STORED = 12


def resolve_transfer_syntax(ts: str | None) -> str:
    """Accept a short name or a UID; raise ValueError naming the choices otherwise."""
    if ts is None:
        return TRANSFER_SYNTAXES["explicit"]
    t = str(ts).strip()
    if t.lower() in TRANSFER_SYNTAXES:
        return TRANSFER_SYNTAXES[t.lower()]
    if t in TRANSFER_SYNTAXES.values():
        return t
    choices = ", ".join(f"{k} ({v})" for k, v in TRANSFER_SYNTAXES.items())
    raise ValueError(f"unknown transfer syntax {ts!r}; supported: {choices}")


@dataclass
class StudyContext:
    """What every object of one study shares."""

    ident: Identity
    study_uid: str
    frame_of_reference_uid: str
    study_id: str
    description: str
    kvp: float = 120.0
    ma: float = 200.0
    ctdivol: float = 8.0
    table_height: float = 150.0
    manufacturer: str = MANUFACTURER
    model_name: str = MODEL


def _file_meta(sop_class: str, sop_uid: str, ts: str) -> FileMetaDataset:
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = UID(sop_class)
    fm.MediaStorageSOPInstanceUID = UID(sop_uid)
    fm.TransferSyntaxUID = UID(ts)
    fm.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    fm.ImplementationVersionName = IMPLEMENTATION_VERSION
    return fm


def common_header(ctx: StudyContext, ds: Dataset | None = None) -> Dataset:
    """Patient, General Study, Patient Study and General Equipment modules."""
    ds = ds if ds is not None else Dataset()
    i = ctx.ident
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = i.patient_name
    ds.PatientID = i.patient_id
    ds.PatientBirthDate = i.birth_date
    ds.PatientSex = i.sex
    ds.PatientAge = i.age
    ds.PatientSize = f"{i.size_m:.2f}"
    ds.PatientWeight = f"{i.weight_kg:.1f}"
    ds.PatientIdentityRemoved = "NO"  # synthetic, never identified
    ds.StudyInstanceUID = ctx.study_uid
    ds.StudyDate = i.study_date
    ds.StudyTime = i.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = ctx.study_id
    ds.AccessionNumber = i.accession
    ds.StudyDescription = ctx.description
    ds.Manufacturer = ctx.manufacturer
    ds.InstitutionName = "AENODE PHANTOM HOSPITAL"
    ds.StationName = "PHCT01"
    ds.ManufacturerModelName = ctx.model_name
    ds.DeviceSerialNumber = "PH0000001"
    ds.SoftwareVersions = "aenode-phantom 1.0"
    return ds


def ct_series_header(ctx: StudyContext, series_uid: str, series_number: int, description: str,
                     time_offset_s: float, rows: int, cols: int) -> Dataset:
    """Everything constant across the images of one CT series."""
    ds = common_header(ctx)
    i = ctx.ident
    t = add_seconds(i.study_time, time_offset_s)
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = i.study_date
    ds.InstanceCreationTime = t
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate = i.study_date
    ds.SeriesTime = t
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    ds.ProtocolName = "CHEST ROUTINE"
    ds.FrameOfReferenceUID = ctx.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionDate = i.study_date
    ds.AcquisitionTime = t
    ds.ContentDate = i.study_date
    ds.ContentTime = t
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.KVP = f"{ctx.kvp:g}"
    ds.AcquisitionNumber = 1
    ds.TableHeight = f"{ctx.table_height:.1f}"
    ds.GantryDetectorTilt = "0"
    ds.RotationDirection = "CW"
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "541.0"
    ds.DataCollectionDiameter = "500"
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = str(int(round(ctx.kvp * ctx.ma / 1000.0)))
    ds.FocalSpots = "1.2"
    ds.XRayTubeCurrent = int(round(ctx.ma))
    ds.ExposureTime = 500
    ds.Exposure = int(round(ctx.ma * 0.5))
    ds.RevolutionTime = 0.5
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 40.0
    ds.SpiralPitchFactor = 0.984
    ds.TableSpeed = 78.7
    ds.TableFeedPerRotation = 39.37
    ds.CTDIvol = float(round(ctx.ctdivol, 2))
    ph = Dataset()
    ph.CodeValue, ph.CodingSchemeDesignator, ph.CodeMeaning = "113691", "DCM", "IEC Body Dosimetry Phantom"
    ds.CTDIPhantomTypeCodeSequence = [ph]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PatientOrientation = ""  # Type 2C, IOP present
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return ds


def frame_bytes(stored: np.ndarray, ts: str) -> bytes:
    """Pixel data for one 2-D uint16 frame in the given transfer syntax (encapsulated if compressed)."""
    if ts in (TRANSFER_SYNTAXES["explicit"], TRANSFER_SYNTAXES["implicit"]):
        return np.ascontiguousarray(stored, dtype="<u2").tobytes()
    if ts == TRANSFER_SYNTAXES["jpeg-lossless"]:
        frame = encode_frame(stored, BITS_STORED)
    else:
        from pydicom.pixels.encoders import JPEG2000LosslessEncoder, RLELosslessEncoder
        enc = JPEG2000LosslessEncoder if ts == TRANSFER_SYNTAXES["jpeg2000-lossless"] else RLELosslessEncoder
        frame = enc.encode(np.ascontiguousarray(stored, dtype=np.uint16), rows=stored.shape[0],
                           columns=stored.shape[1], samples_per_pixel=1, bits_allocated=16,
                           bits_stored=BITS_STORED, pixel_representation=0,
                           photometric_interpretation="MONOCHROME2", number_of_frames=1)
    return encapsulate([frame])


def finish_and_write(base: Dataset, extra: dict, stored: np.ndarray, ts: str, path: Path) -> None:
    """Copy the shared header (shared, never mutated), add per-image attributes and pixels, write."""
    ds = Dataset()
    ds._dict = dict(base._dict)
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.file_meta = _file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts)
    ds.PixelData = frame_bytes(stored, ts)
    if ts not in (TRANSFER_SYNTAXES["explicit"], TRANSFER_SYNTAXES["implicit"]):
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds["PixelData"].VR = "OW"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_ct_series(vol_hu: np.ndarray, z_positions, origin_xy, spacing_zyx, thickness: float,
                    base: Dataset, series_uid: str, out: Path, ts: str, window=((40, 400), (-600, 1500)),
                    image_type=("ORIGINAL", "PRIMARY", "AXIAL"), kernel_name: str = "LUNG",
                    workers: int = 2) -> list[Path]:
    """Write one file per slice (1.dcm, 2.dcm, ...), instance 1 = most superior slice."""
    out.mkdir(parents=True, exist_ok=True)
    base.ImageType = list(image_type)
    base.ConvolutionKernel = kernel_name
    base.SliceThickness = f"{thickness:g}"
    base.SpacingBetweenSlices = f"{spacing_zyx[0]:g}"
    base.PixelSpacing = [f"{spacing_zyx[1]:.6g}", f"{spacing_zyx[2]:.6g}"]
    base.ReconstructionDiameter = f"{spacing_zyx[2] * vol_hu.shape[2]:.1f}"
    base.WindowCenter = [str(w[0]) for w in window]
    base.WindowWidth = [str(w[1]) for w in window]
    base.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    paths = [out / f"{k + 1}.dcm" for k in range(vol_hu.shape[0])]

    def one(k: int) -> None:
        z = float(z_positions[k])
        stored = (vol_hu[k].astype(np.int32) + 1024).astype(np.uint16)
        extra = {
            "SOPInstanceUID": uid(series_uid, k + 1),
            "InstanceNumber": k + 1,
            "ImagePositionPatient": [f"{origin_xy[0]:.4f}", f"{origin_xy[1]:.4f}", f"{z:.4f}"],
            "SliceLocation": f"{z:.4f}",
        }
        finish_and_write(base, extra, stored, ts, paths[k])

    # Threads help the JPEG/RLE encoders; OpenJPEG's encoder is not thread-safe here (crashes).
    if workers > 1 and ts in (TRANSFER_SYNTAXES["jpeg-lossless"], TRANSFER_SYNTAXES["rle"]):
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(one, range(vol_hu.shape[0])))
    else:
        for k in range(vol_hu.shape[0]):
            one(k)
    return paths

