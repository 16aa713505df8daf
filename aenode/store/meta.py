"""Instance metadata read from a DICOM header without decoding pixel data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.tag import Tag

from aenode.logs import PHI_KEYWORDS
from aenode.store.uids import clean_uid

# Fallback mark of the node's own output (SR/SC) when aenode.report is not installed;
# aenode.report.marks.is_node_output is the authority.  Such series are stored but
# never analysed.
OWN_MANUFACTURER = "aenode"


def _own_output_mark(ds: Any) -> bool:
    try:
        from aenode.report.marks import is_node_output
    except ImportError:
        return str(ds.get("Manufacturer") or "").strip().lower() == OWN_MANUFACTURER
    return bool(is_node_output(ds))

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"

_KEYWORDS = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
    "ImageType", "SeriesDescription", "SeriesNumber", "SliceThickness", "ImagePositionPatient",
    "ImageOrientationPatient", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
    "Manufacturer", "SoftwareVersions",
)
_TAGS = [Tag(k) for k in (*_KEYWORDS, *sorted(PHI_KEYWORDS))]


class BadInstance(ValueError):
    """The header cannot be read or lacks valid identifying UIDs."""


@dataclass(slots=True)
class InstanceMeta:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str | None = None
    image_type: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    slice_thickness: float | None = None
    image_position: str | None = None      # JSON list of 3 floats
    image_orientation: str | None = None   # JSON list of 6 floats
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    manufacturer: str | None = None
    own_mark: bool = False                 # carries the node's output marks
    phi: tuple[str, ...] = ()              # identifiers to mask in logs; never stored

    @property
    def is_ct_image(self) -> bool:
        return self.sop_class_uid in (CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE)

    @property
    def is_own_output(self) -> bool:
        return self.own_mark


def _num(value: Any, kind: type) -> Any:
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _floats(value: Any, n: int) -> str | None:
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return json.dumps(vals) if len(vals) == n else None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def read_meta(path: str | Path, transfer_syntax: str | None = None) -> InstanceMeta:
    """Read the header of a DICOM file (with file meta) up to the pixel data."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_TAGS, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad instance
        raise BadInstance(f"unreadable header ({type(exc).__name__})") from None
    return meta_from_dataset(ds, transfer_syntax)


def meta_from_dataset(ds: Any, transfer_syntax: str | None = None) -> InstanceMeta:
    from aenode.logs import identifiers_of

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
            ts = str(fm.TransferSyntaxUID) if fm is not None and "TransferSyntaxUID" in fm else ""
        return InstanceMeta(
            study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid=sop_class,
            transfer_syntax=ts,
            modality=_text(ds.get("Modality")),
            image_type=_text(ds.get("ImageType")),
            series_description=_text(ds.get("SeriesDescription")),
            series_number=_num(ds.get("SeriesNumber"), int),
            slice_thickness=_num(ds.get("SliceThickness"), float),
            image_position=_floats(ds.get("ImagePositionPatient"), 3),
            image_orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            instance_number=_num(ds.get("InstanceNumber"), int),
            rows=_num(ds.get("Rows"), int),
            columns=_num(ds.get("Columns"), int),
            number_of_frames=_num(ds.get("NumberOfFrames"), int),
            manufacturer=_text(ds.get("Manufacturer")),
            own_mark=_own_output_mark(ds),
            phi=phi,
        )
    except BadInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed element values
        raise BadInstance(f"malformed header ({type(exc).__name__})") from None
