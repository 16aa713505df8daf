"""The one record of an instance's header: what every stage knows about a stored instance.

Read from a DICOM header without decoding pixel data (ingest, ``aenode predict``) or from
the index; selection and loading take it as it is.  No patient data is kept in it:
``phi`` holds the identifiers only so that logs can mask them, and is never stored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from aenode.logs import PHI_KEYWORDS, identifiers_of
from aenode.store.marks import is_node_output
from aenode.store.uids import clean_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

META_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "ImageType", "SeriesDescription", "SeriesNumber", "SliceThickness", "ImagePositionPatient",
    "ImageOrientationPatient", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
    "Manufacturer", "SoftwareVersions", "ConvolutionKernel",
)
"""What :func:`meta_from_dataset` reads for the header record (besides the identifiers it masks)."""
_TAGS = [Tag(k) for k in (*META_KEYWORDS, *sorted(PHI_KEYWORDS))]


class BadInstance(ValueError):
    """The header cannot be read or lacks valid identifying UIDs."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """Header facts of one instance, plus where and how the node stored it."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str | None = None
    modality: str | None = None
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    series_number: int | None = None
    convolution_kernel: str = ""
    slice_thickness: float | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, float, float, float, float, float] | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    manufacturer: str | None = None
    own_output: bool = False            # carries the node's output marks (its own SR/SC)
    # Storage facts: None for a file read outside the spool.
    path: Path | None = None            # absolute
    calling_ae: str | None = None
    size: int | None = None
    received_at: float | None = None
    revision: int | None = None         # the study revision the instance arrived in
    phi: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @property
    def is_ct_image(self) -> bool:
        return self.sop_class_uid in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)

    def stored(self, path: Path, *, calling_ae: str | None = None, size: int | None = None,
               received_at: float | None = None, revision: int | None = None) -> InstanceHeader:
        """The same header with its storage facts filled in."""
        return dataclasses.replace(self, path=path, calling_ae=calling_ae, size=size,
                                   received_at=received_at, revision=revision)


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def split_multi(value: Any) -> tuple[str, ...]:
    """A multi-valued code string (``ORIGINAL\\PRIMARY\\AXIAL``) as upper-case parts."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts: list[Any] = value.replace("/", "\\").split("\\")
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = [value]
    return tuple(str(p).strip().upper() for p in parts if str(p).strip())


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def read_meta(path: str | Path, transfer_syntax: str | None = None) -> InstanceHeader:
    """Read the header of a DICOM file (with file meta) up to the pixel data."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_TAGS, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad instance
        raise BadInstance(f"unreadable header ({type(exc).__name__})") from None
    header = meta_from_dataset(ds, transfer_syntax)
    return dataclasses.replace(header, path=Path(path).resolve())


def meta_from_dataset(ds: Dataset, transfer_syntax: str | None = None) -> InstanceHeader:
    """The header record of a dataset; BadInstance when its identifying UIDs are unusable."""
    try:
        phi = tuple(identifiers_of(ds))
        study = clean_uid(ds.get("StudyInstanceUID"))
        series = clean_uid(ds.get("SeriesInstanceUID"))
        sop = clean_uid(ds.get("SOPInstanceUID"))
        sop_class = clean_uid(ds.get("SOPClassUID"))
        if not (study and series and sop and sop_class):
            raise BadInstance("missing or malformed Study/Series/SOP Instance or SOP Class UID")
        ts = transfer_syntax
        if ts is None:
            fm = getattr(ds, "file_meta", None)
            ts = str(fm.TransferSyntaxUID) if fm is not None and "TransferSyntaxUID" in fm else None
        position = _floats(ds.get("ImagePositionPatient"), 3)
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        return InstanceHeader(
            study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid=sop_class,
            transfer_syntax=ts or None,
            modality=_text(ds.get("Modality")),
            image_type=split_multi(ds.get("ImageType")),
            series_description=_text(ds.get("SeriesDescription")) or "",
            series_number=_int(ds.get("SeriesNumber")),
            convolution_kernel="\\".join(split_multi(ds.get("ConvolutionKernel"))),
            slice_thickness=_float(ds.get("SliceThickness")),
            image_position=position,  # type: ignore[arg-type]
            image_orientation=orientation,  # type: ignore[arg-type]
            instance_number=_int(ds.get("InstanceNumber")),
            rows=_int(ds.get("Rows")),
            columns=_int(ds.get("Columns")),
            number_of_frames=_int(ds.get("NumberOfFrames")),
            manufacturer=_text(ds.get("Manufacturer")),
            own_output=is_node_output(ds),
            phi=phi,
        )
    except BadInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed element values
        raise BadInstance(f"malformed header ({type(exc).__name__})") from None
