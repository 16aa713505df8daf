"""Load one CT series into an int16 Hounsfield-unit volume, checking its geometry.

Memory stays near the size of the int16 volume itself: the array is preallocated and
filled slice by slice; rescaling happens per slice, so there is never a float64 (or even
float32) copy of the whole study.  Geometry problems are either repaired and reported
(missing slices interpolated, duplicate positions dropped, gantry tilt resampled) or
refused with a reason that names the problem; never silently accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from aenode.store.db import is_transient
from aenode.store.meta import BadInstance, InstanceHeader, read_meta

_NATIVE_LE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}
# What a slice's pixels need (the Image Pixel module and the rescale): the rest of the
# header is in the index already, so it is not parsed again for every slice.
_PIXEL_TAGS = ["PixelSpacing", "Rows", "Columns", "SamplesPerPixel", "NumberOfFrames", "BitsAllocated",
               "BitsStored", "HighBit", "PixelRepresentation", "PhotometricInterpretation",
               "PlanarConfiguration", "RescaleSlope", "RescaleIntercept", "PixelData"]
# 1,000 slices of 768 x 768: far beyond a chest CT, small enough (1.2 GB int16) to refuse
# a header-declared pixel bomb before allocating it.
DEFAULT_MAX_VOXELS = 1000 * 768 * 768


class LoadError(Exception):
    """The series cannot be turned into a trustworthy volume; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class Volume:
    """An int16 HU volume, array axes (z, y, x) = (slice, row, column).

    ``direction`` holds the patient-space unit vectors of the x (row direction), y
    (column direction) and z (slice normal) array axes as its columns (DICOM LPS).
    """

    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sop_instance_uids: list[str | None]
    paths: list[str]
    warnings: list[str] = field(default_factory=list)
    tilt_deg: float = 0.0
    missing_slices: int = 0
    duplicate_slices: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return int(z), int(y), int(x)

    def to_sitk(self) -> Any:
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.hu)
        img.SetSpacing((float(self.spacing_zyx[2]), float(self.spacing_zyx[1]), float(self.spacing_zyx[0])))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction.reshape(-1)))
        return img


def _read_header(path: str | Path) -> InstanceHeader:
    try:
        return read_meta(path)
    except BadInstance as exc:
        raise LoadError(f"corrupt or unreadable file {Path(path).name}: {exc}") from None


def _path(info: InstanceHeader) -> str:
    if info.path is None:
        raise LoadError(f"instance {info.sop_instance_uid} has no stored file")
    return str(info.path)


def _pixel_slice(ds: pydicom.Dataset, out: np.ndarray, name: str) -> None:
    """Decode one slice's pixels into ``out`` (int16, HU) with its rescale."""
    rows, cols = out.shape
    if int(ds.get("Rows", 0)) != rows or int(ds.get("Columns", 0)) != cols:
        raise LoadError(f"file {name}: matrix {ds.get('Rows')}x{ds.get('Columns')} differs from {rows}x{cols}")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise LoadError(f"file {name}: not a single-frame greyscale image")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    bits = int(ds.get("BitsAllocated", 16))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    if "PixelData" not in ds:
        raise LoadError(f"file {name}: no pixel data")
    if ts in _NATIVE_LE and bits == 16:
        raw = ds.PixelData
        if len(raw) < rows * cols * 2:
            raise LoadError(f"file {name}: pixel data truncated ({len(raw)} bytes for {rows}x{cols})")
        arr = np.frombuffer(raw, dtype="<i2" if signed else "<u2", count=rows * cols).reshape(rows, cols)
        stored = int(ds.get("BitsStored", 16))
        if stored < 16:
            # Native data may carry junk above BitsStored: mask and sign-extend.
            if signed:
                shift = 16 - stored
                arr = ((arr.astype(np.int16) << shift) >> shift)
            else:
                arr = arr & np.uint16((1 << stored) - 1)
    else:
        try:
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file
            if is_transient(exc):
                raise  # out of memory: the study is retried, not refused
            raise LoadError(f"file {name}: pixel data cannot be decoded ({type(exc).__name__}: {exc})") from None
        if arr.shape != (rows, cols):
            raise LoadError(f"file {name}: decoded pixels have shape {arr.shape}, expected {(rows, cols)}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1.0 and intercept.is_integer():
        if arr.dtype == np.int16 and intercept == 0:
            out[...] = arr
            return
        tmp = arr.astype(np.int32)
        tmp += int(intercept)
        np.clip(tmp, -32768, 32767, out=tmp)
        out[...] = tmp
    else:
        tmp = arr.astype(np.float32)
        np.multiply(tmp, np.float32(slope), out=tmp)
        np.add(tmp, np.float32(intercept), out=tmp)
        np.clip(np.rint(tmp, out=tmp), -32768, 32767, out=tmp)
        out[...] = tmp


def load_series(
    instances: Sequence[InstanceHeader] | Sequence[str | Path],
    *,
    spacing_tolerance: float = 0.1,
    max_missing_fraction: float = 0.05,
    max_tilt_deg: float = 0.5,
    tilt: Literal["resample", "refuse"] = "resample",
    pad_hu: int = -1000,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read the files of one series into a :class:`Volume`.

    ``spacing_tolerance`` is relative (0.1 = gaps may differ from the nominal spacing by
    10 %).  Gaps that are whole multiples of the nominal spacing are missing slices: up to
    ``max_missing_fraction`` of the series they are filled by linear interpolation and
    reported; more, and the series is refused.  ``max_voxels`` bounds the volume before
    anything is allocated, so a header that declares a huge matrix cannot exhaust memory.
    """
    infos = [i if isinstance(i, InstanceHeader) else _read_header(i) for i in instances]
    if not infos:
        raise LoadError("no instances to load")
    if any(i.image_position is None or i.image_orientation is None for i in infos):
        infos = [_read_header(_path(i)) if i.image_position is None or i.image_orientation is None else i
                 for i in infos]
    if any(i.image_position is None or i.image_orientation is None for i in infos):
        raise LoadError("ImagePositionPatient or ImageOrientationPatient missing")

    orient = np.array(infos[0].image_orientation, dtype=np.float64)
    for i in infos:
        if np.max(np.abs(np.array(i.image_orientation) - orient)) > 1e-3:
            raise LoadError("slices have different orientations")
    row, col = orient[:3], orient[3:]
    row /= np.linalg.norm(row)
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)

    positions = np.array([i.image_position for i in infos], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    infos = [infos[k] for k in order]
    positions, along = positions[order], along[order]

    warnings: list[str] = []
    # Duplicates: same position along the normal.
    keep = np.ones(len(infos), dtype=bool)
    keep[1:] = np.diff(along) > 1e-3
    duplicates = int((~keep).sum())
    if duplicates:
        warnings.append(f"{duplicates} duplicate slice position(s) ignored (first instance kept)")
        infos = [i for i, k in zip(infos, keep) if k]
        positions, along = positions[keep], along[keep]
    if len(infos) < 2:
        raise LoadError("fewer than two distinct slice positions")

    gaps = np.diff(along)
    nominal = float(np.median(gaps))
    steps = np.rint(gaps / nominal).astype(int)
    if np.any(steps < 1) or np.any(np.abs(gaps - steps * nominal) > spacing_tolerance * nominal):
        worst = float(np.max(np.abs(gaps - np.maximum(steps, 1) * nominal)))
        raise LoadError(
            f"irregular slice spacing (nominal {nominal:.3g} mm, a gap deviates by {worst:.3g} mm, "
            f"tolerance {spacing_tolerance:.0%})")
    missing = int((steps - 1).sum())
    n_out = len(infos) + missing
    if missing:
        if missing > max_missing_fraction * n_out:
            raise LoadError(f"{missing} missing slice(s) of {n_out}, more than {max_missing_fraction:.0%}")
        warnings.append(f"{missing} missing slice(s) filled by linear interpolation")

    # Gantry tilt: the slice-to-slice displacement is not along the slice normal.
    disp = positions[-1] - positions[0]
    tilt_deg = math.degrees(math.acos(min(1.0, abs(float(disp @ normal)) / max(float(np.linalg.norm(disp)), 1e-9))))
    if tilt_deg > max_tilt_deg and tilt == "refuse":
        raise LoadError(f"gantry tilt {tilt_deg:.1f} deg (> {max_tilt_deg:g}); refused, not resampled")

    first = pydicom.dcmread(_path(infos[0]), stop_before_pixels=True) if infos[0].rows is None else None
    rows = int(infos[0].rows if infos[0].rows is not None else first.Rows)  # type: ignore[union-attr]
    cols = int(infos[0].columns if infos[0].columns is not None else first.Columns)  # type: ignore[union-attr]
    if rows <= 0 or cols <= 0 or n_out * rows * cols > max_voxels:
        raise LoadError(f"volume of {n_out} x {rows} x {cols} voxels exceeds the limit of {max_voxels}"
                        " ([limits] max_volume_voxels)")
    hu = np.empty((n_out, rows, cols), dtype=np.int16)
    slot = np.concatenate([[0], np.cumsum(steps)])  # output index of each read slice
    pixel_spacing: tuple[float, float] | None = None
    for k, info in enumerate(infos):
        name = Path(_path(info)).name
        try:
            ds = pydicom.dcmread(_path(info), specific_tags=_PIXEL_TAGS)
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                raise  # out of memory or an I/O fault: the study is retried, not refused
            raise LoadError(f"corrupt or unreadable file {name}: {type(exc).__name__}") from None
        if pixel_spacing is None:
            ps = ds.get("PixelSpacing")
            if ps is None or len(ps) != 2 or min(float(v) for v in ps) <= 0:
                raise LoadError(f"file {name}: PixelSpacing missing or invalid")
            pixel_spacing = (float(ps[0]), float(ps[1]))
        _pixel_slice(ds, hu[slot[k]], name)

    # Fill missing slices by linear interpolation between their neighbours.
    for gap in np.nonzero(steps > 1)[0]:
        a, b = int(slot[gap]), int(slot[gap + 1])
        lo, hi = hu[a].astype(np.float32), hu[b].astype(np.float32)
        for j in range(a + 1, b):
            w = (j - a) / (b - a)
            hu[j] = np.rint(lo * (1 - w) + hi * w).astype(np.int16)

    if int(hu.min()) == int(hu.max()):
        raise LoadError(f"decoded pixels are all constant ({int(hu.min())} HU); nothing to analyse")

    assert pixel_spacing is not None
    if tilt_deg > max_tilt_deg:
        # Shear correction: shift every slice in-plane so the stack is orthogonal.
        from scipy import ndimage

        for k in range(n_out):
            offset = (positions[0] + normal * (k * nominal)) - positions[0]  # on the normal
            # where slice k actually lies (interpolate positions for filled slices)
            src = min(int(np.searchsorted(slot, k, side="right")) - 1, len(infos) - 1)
            if slot[src] == k:
                actual = positions[src]
            else:
                w = (k - slot[src]) / (slot[src + 1] - slot[src])
                actual = positions[src] * (1 - w) + positions[src + 1] * w
            shift_mm = (actual - positions[0]) - offset
            dx = float(shift_mm @ row) / pixel_spacing[1]
            dy = float(shift_mm @ col) / pixel_spacing[0]
            if abs(dx) > 1e-3 or abs(dy) > 1e-3:
                hu[k] = ndimage.shift(hu[k], (dy, dx), order=1, mode="constant", cval=pad_hu)
        warnings.append(f"gantry tilt {tilt_deg:.1f} deg: slices resampled onto an orthogonal grid")

    uids: list[str | None] = [None] * n_out
    paths: list[str] = [""] * n_out
    for k, info in enumerate(infos):
        uids[slot[k]] = info.sop_instance_uid
        paths[slot[k]] = _path(info)
    direction = np.stack([row, col, normal], axis=1)
    return Volume(
        hu=hu,
        spacing_zyx=(nominal, pixel_spacing[0], pixel_spacing[1]),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=direction,
        sop_instance_uids=uids,
        paths=paths,
        warnings=warnings,
        tilt_deg=tilt_deg,
        missing_slices=missing,
        duplicate_slices=duplicates,
    )
