"""The other objects a scanner sends with a chest CT: a frontal localizer (projection image),
a 5 mm soft-tissue-kernel axial series, and an X-Ray Radiation Dose SR (TID 10011)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import XRayRadiationDoseSRStorage

from .acquisition import Acquisition
from .anatomy import fov_for, sample_patient
from .dicom_writer import StudyContext, _file_meta, common_header, ct_series_header, finish_and_write
from .identity import add_seconds, uid
from .noise import NoisePool, apply_kernel
from .volume import generate_volume


def render_localizer(pattern: str, seed: int, z_center: float, length_mm: float = 560.0,
                     size: int = 512, variant: str | None = None,
                     acquisition: Acquisition | None = None) -> tuple[np.ndarray, float, float, float]:
    """Frontal (AP) projection of a coarse phantom: returns (stored uint16 image rows=z, cols=x,
    row spacing (z), column spacing (x), x of the first column)."""
    p = sample_patient(seed)
    fov = fov_for(p)
    nz = 160
    acq = replace(acquisition or Acquisition(), slice_thickness_mm=None, kernel="standard")
    v = generate_volume(pattern, seed, shape_zyx=(nz, 96, 128), spacing_zyx=(length_mm / nz, fov / 96, fov / 128),
                        noise=False, z_center=z_center, variant=variant, threads=1, acquisition=acq)
    mu = np.clip(v.hu.astype(np.float32) + 1000.0, 0, None) / 1000.0  # relative to water
    proj = mu.sum(axis=1) * (fov / 96)  # mm of water-equivalent path, (z, x)
    img = Image.fromarray(proj.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(img, np.float32)
    a = a / max(float(a.max()), 1.0) * 3000.0
    rng = np.random.default_rng([seed, 131])
    a += rng.normal(0, 12.0, a.shape).astype(np.float32)
    stored = np.clip(np.rint(a), 0, 4095).astype(np.uint16)
    return stored, length_mm / size, fov / size, -fov / 2 + fov / size / 2


def write_localizer(ctx: StudyContext, pattern: str, seed: int, z_center: float, out: Path,
                    series_uid: str, variant: str | None = None, acquisition: Acquisition | None = None) -> list[Path]:
    stored, dz, dx, x0 = render_localizer(pattern, seed, z_center, variant=variant, acquisition=acquisition)
    base = ct_series_header(ctx, series_uid, 1, "LOCALIZER AP", 0, stored.shape[0], stored.shape[1])
    base.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    base.ConvolutionKernel = "STANDARD"
    base.RescaleIntercept = "0"
    base.RescaleSlope = "1"
    base.RescaleType = "US"
    base.KVP = "120"
    base.XRayTubeCurrent = 20
    base.Exposure = 8
    base.CTDIvol = 0.1
    base.SliceThickness = "0.6"
    base.PixelSpacing = [f"{dz:.6g}", f"{dx:.6g}"]  # row spacing (along z), column spacing (along x)
    base.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    base.WindowCenter = "1500"
    base.WindowWidth = "3000"
    for kw in ("ReconstructionDiameter", "SpiralPitchFactor", "TableSpeed", "TableFeedPerRotation"):
        if kw in base:
            del base[kw]
    top = z_center + 560.0 / 2 - dz / 2
    out.mkdir(parents=True, exist_ok=True)
    path = out / "1.dcm"
    finish_and_write(base, {"SOPInstanceUID": uid(series_uid, 1), "InstanceNumber": 1,
                            "ImagePositionPatient": [f"{x0:.4f}", "0", f"{top:.4f}"]},
                     stored, "1.2.840.10008.1.2.1", path)
    return [path]


def thick_volume(pattern: str, seed: int, n: int, in_plane: tuple[int, int], spacing_yx, z_center: float,
                 thickness: float = 5.0, variant: str | None = None,
                 acquisition: Acquisition | None = None) -> np.ndarray:
    """5 mm slices as the average of two 2.5 mm sub-slices, smooth kernel, lower noise."""
    acq = replace(acquisition or Acquisition(), slice_thickness_mm=None, kernel="standard")
    v = generate_volume(pattern, seed, shape_zyx=(2 * n,) + tuple(in_plane),
                        spacing_zyx=(thickness / 2,) + tuple(spacing_yx), noise=False, z_center=z_center,
                        variant=variant, acquisition=acq)
    h = v.hu.astype(np.float32).reshape(n, 2, *in_plane).mean(axis=1)
    h = apply_kernel(h, "smooth")
    pool = NoisePool(seed + 7919, in_plane, n, "smooth", (thickness,) + tuple(spacing_yx), dose=acq.dose)
    for k in range(n):
        h[k] += pool.slice_noise(k)
    return np.clip(np.rint(h), -1024, 3071).astype(np.int16)


# -- Dose SR ---------------------------------------------------------------------------
def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _item(rel: str | None, vtype: str, concept, **kw) -> Dataset:
    it = Dataset()
    if rel:
        it.RelationshipType = rel
    it.ValueType = vtype
    it.ConceptNameCodeSequence = [_code(*concept)]
    if vtype == "CONTAINER":
        it.ContinuityOfContent = "SEPARATE"
    for k, v in kw.items():
        setattr(it, k, v)
    return it


def _num(concept, value: float, unit) -> Dataset:
    mv = Dataset()
    mv.NumericValue = f"{value:.6g}"
    mv.MeasurementUnitsCodeSequence = [_code(*unit)]
    return _item("CONTAINS", "NUM", concept, MeasuredValueSequence=[mv])


def _content(items) -> Sequence:
    return Sequence(list(items))


MGY = ("mGy", "UCUM", "mGy")
MGYCM = ("mGy.cm", "UCUM", "mGy.cm")
MM = ("mm", "UCUM", "mm")
SEC = ("s", "UCUM", "s")
KV = ("kV", "UCUM", "kV")
MA = ("mA", "UCUM", "mA")
RATIO = ("{ratio}", "UCUM", "ratio")


def _acquisition(event_uid: str, kind: tuple, length: float, ctdi: float, kvp: float, ma: float,
                 exp_time: float, pitch: float | None, protocol: str) -> Dataset:
    params = [
        _num(("113824", "DCM", "Exposure Time"), exp_time, SEC),
        _num(("113825", "DCM", "Scanning Length"), length, MM),
        _num(("113826", "DCM", "Nominal Single Collimation Width"), 0.625, MM),
        _num(("113827", "DCM", "Nominal Total Collimation Width"), 40.0, MM),
    ]
    if pitch is not None:
        params.append(_num(("113828", "DCM", "Pitch Factor"), pitch, RATIO))
    params.append(_num(("113823", "DCM", "Number of X-Ray Sources"), 1, ("{X-Ray sources}", "UCUM", "X-Ray sources")))
    src = _item("CONTAINS", "CONTAINER", ("113831", "DCM", "CT X-Ray Source Parameters"))
    src.ContentSequence = _content([
        _item("CONTAINS", "TEXT", ("113832", "DCM", "Identification of the X-Ray Source"), TextValue="A"),
        _num(("113733", "DCM", "KVP"), kvp, KV),
        _num(("113833", "DCM", "Maximum X-Ray Tube Current"), ma * 1.2, MA),
        _num(("113734", "DCM", "X-Ray Tube Current"), ma, MA),
        _num(("113834", "DCM", "Exposure Time per Rotation"), 0.5, SEC),
    ])
    params.append(src)
    cp = _item("CONTAINS", "CONTAINER", ("113822", "DCM", "CT Acquisition Parameters"))
    cp.ContentSequence = _content(params)
    acq = _item("CONTAINS", "CONTAINER", ("113819", "DCM", "CT Acquisition"))
    items = [
        _item("CONTAINS", "TEXT", ("125203", "DCM", "Acquisition Protocol"), TextValue=protocol),
        _item("CONTAINS", "CODE", ("123014", "DCM", "Target Region"),
              ConceptCodeSequence=[_code("51185008", "SCT", "Chest")]),
        _item("CONTAINS", "CODE", ("113820", "DCM", "CT Acquisition Type"), ConceptCodeSequence=[_code(*kind)]),
        _item("CONTAINS", "UIDREF", ("113769", "DCM", "Irradiation Event UID"), UID=event_uid),
        cp,
    ]
    if ctdi > 0:
        dose = _item("CONTAINS", "CONTAINER", ("113829", "DCM", "CT Dose"))
        dose.ContentSequence = _content([
            _num(("113830", "DCM", "Mean CTDIvol"), ctdi, MGY),
            _item("CONTAINS", "CODE", ("113835", "DCM", "CTDIw Phantom Type"),
                  ConceptCodeSequence=[_code("113691", "DCM", "IEC Body Dosimetry Phantom")]),
            _num(("113838", "DCM", "DLP"), ctdi * length / 10.0, MGYCM),
        ])
        items.append(dose)
    acq.ContentSequence = _content(items)
    return acq


def write_dose_sr(ctx: StudyContext, series_uid: str, out: Path, scan_length: float,
                  scan_seconds: float) -> list[Path]:
    """X-Ray Radiation Dose SR with one localizer event and one helical event."""
    i = ctx.ident
    sop_uid = uid(series_uid, 1)
    ds = common_header(ctx)
    ds.SOPClassUID = XRayRadiationDoseSRStorage
    ds.SOPInstanceUID = sop_uid
    t_end = add_seconds(i.study_time, 60)
    ds.InstanceCreationDate = i.study_date
    ds.InstanceCreationTime = t_end
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 997
    ds.SeriesDescription = "Dose Report"
    ds.SeriesDate = i.study_date
    ds.SeriesTime = t_end
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.InstanceNumber = 1
    ds.ContentDate = i.study_date
    ds.ContentTime = t_end
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    # Root container: CT Radiation Dose (TID 10011).
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("113701", "DCM", "X-Ray Radiation Dose Report")]
    ds.ContinuityOfContent = "SEPARATE"
    tpl = Dataset()
    tpl.MappingResource = "DCMR"
    tpl.TemplateIdentifier = "10011"
    ds.ContentTemplateSequence = [tpl]
    dt0 = i.study_date + i.study_time
    dt1 = i.study_date + add_seconds(i.study_time, scan_seconds + 20)
    ctdi, length = ctx.ctdivol, scan_length
    scope = _item("CONTAINS", "CODE", ("113705", "DCM", "Scope of Accumulation"),
                  ConceptCodeSequence=[_code("113014", "DCM", "Study")])
    scope.ContentSequence = _content([_item("HAS PROPERTIES", "UIDREF", ("110180", "DCM", "Study Instance UID"),
                                            UID=ctx.study_uid)])
    acc = _item("CONTAINS", "CONTAINER", ("113811", "DCM", "CT Accumulated Dose Data"))
    acc.ContentSequence = _content([
        _num(("113812", "DCM", "Total Number of Irradiation Events"), 2, ("{events}", "UCUM", "events")),
        _num(("113813", "DCM", "CT Dose Length Product Total"), ctdi * length / 10.0 + 0.5, MGYCM),
    ])
    obs = [
        _item("HAS OBS CONTEXT", "CODE", ("121005", "DCM", "Observer Type"),
              ConceptCodeSequence=[_code("121007", "DCM", "Device")]),
        _item("HAS OBS CONTEXT", "UIDREF", ("121012", "DCM", "Device Observer UID"), UID=uid("device")),
        _item("HAS OBS CONTEXT", "TEXT", ("121013", "DCM", "Device Observer Name"), TextValue="PHCT01"),
        _item("HAS OBS CONTEXT", "TEXT", ("121014", "DCM", "Device Observer Manufacturer"),
              TextValue=ds.Manufacturer),
        _item("HAS OBS CONTEXT", "TEXT", ("121015", "DCM", "Device Observer Model Name"),
              TextValue=ds.ManufacturerModelName),
        _item("HAS OBS CONTEXT", "TEXT", ("121016", "DCM", "Device Observer Serial Number"),
              TextValue=ds.DeviceSerialNumber),
    ]
    proc = _item("HAS CONCEPT MOD", "CODE", ("121058", "DCM", "Procedure reported"),
                 ConceptCodeSequence=[_code("77477000", "SCT", "Computed Tomography X-Ray")])
    proc.ContentSequence = _content([_item("HAS CONCEPT MOD", "CODE", ("363703001", "SCT", "Has Intent"),
                                           ConceptCodeSequence=[_code("261004008", "SCT", "Diagnostic Intent")])])
    ds.ContentSequence = _content([
        proc, *obs,
        _item("HAS OBS CONTEXT", "DATETIME", ("113809", "DCM", "Start of X-Ray Irradiation"), DateTime=dt0),
        _item("HAS OBS CONTEXT", "DATETIME", ("113810", "DCM", "End of X-Ray Irradiation"), DateTime=dt1),
        scope, acc,
        _acquisition(uid(series_uid, "event", 1), ("113805", "DCM", "Constant Angle Acquisition"), 560.0, 0.0,
                     120.0, 20.0, 3.2, None, "LOCALIZER"),
        _acquisition(uid(series_uid, "event", 2), ("116152004", "SCT", "Spiral Acquisition"), length, ctdi,
                     ctx.kvp, ctx.ma, scan_seconds, 0.984, "CHEST ROUTINE"),
    ])
    # Enhanced General Equipment module is required by this IOD (all already in common_header).
    ds.file_meta = _file_meta(str(XRayRadiationDoseSRStorage), sop_uid, "1.2.840.10008.1.2.1")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "1.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return [path]
