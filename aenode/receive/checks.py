"""What the C-STORE handler checks in a received instance's header before keeping it.

The header is read once (pixel data is never read or decoded here).  Only what decides the
response is checked before it: the identifying UIDs (:func:`header_uids`), the SOP class
and the image geometry; the full header record (``aenode.store.meta``) is built after the
response (``materialise.py``).  The image geometry it declares is bounded by ``[limits]``, so
that no instance whose pixels would decode to more than ``max_decoded_instance_bytes``
(or with more than ``max_rows`` / ``max_columns`` / ``max_frames``) reaches the analysis
stages, however small it is on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset

from aenode.config import LimitsConfig
from aenode.store.meta import BadInstance, InstanceHeader, meta_from_dataset
from aenode.store.uids import clean_uid

# Never negotiated: inflating a data set has no bound known in advance (a 1 MB stream can
# expand to gigabytes on the receiving thread).
DEFLATED_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
})


class LimitExceeded(Exception):
    """The header declares more than a ``[limits]`` key allows."""

    def __init__(self, limit: str, value: int, allowed: int):
        super().__init__(f"{limit}: {value} > {allowed}")
        self.limit = limit
        self.value = value
        self.allowed = allowed


@dataclass(frozen=True, slots=True)
class PixelGeometry:
    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int

    @property
    def decoded_bytes(self) -> int:
        bits = self.rows * self.columns * self.frames * self.samples_per_pixel * self.bits_allocated
        return (bits + 7) // 8


def read_dataset(source: str | Path | BinaryIO) -> Dataset:
    """The header of a received instance (stops before the pixel data)."""
    try:
        return pydicom.dcmread(source if not isinstance(source, Path) else str(source),
                               stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a bad instance
        raise BadInstance(f"unreadable header ({type(exc).__name__})") from None


def read_header(path: str | Path) -> tuple[InstanceHeader, Dataset]:
    """The instance's header record and the header itself (stops before the pixel data)."""
    ds = read_dataset(path)
    return meta_from_dataset(ds), ds


@dataclass(frozen=True, slots=True)
class HeaderUIDs:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


HEADER_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Rows", "Columns",
                   "NumberOfFrames", "SamplesPerPixel", "BitsAllocated")
"""The attributes :func:`header_uids` and :func:`check_geometry` read."""


def header_uids(ds: Dataset) -> HeaderUIDs:
    """The identifying UIDs, validated as :func:`aenode.store.meta.meta_from_dataset` does
    (they become the spool path); BadInstance when one is missing or malformed."""
    try:
        study = clean_uid(ds.get("StudyInstanceUID"))
        series = clean_uid(ds.get("SeriesInstanceUID"))
        sop = clean_uid(ds.get("SOPInstanceUID"))
        sop_class = clean_uid(ds.get("SOPClassUID"))
    except Exception as exc:  # noqa: BLE001 - malformed element values
        raise BadInstance(f"malformed header ({type(exc).__name__})") from None
    if not (study and series and sop and sop_class):
        raise BadInstance("missing or malformed Study/Series/SOP Instance or SOP Class UID")
    return HeaderUIDs(study, series, sop, sop_class)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - malformed element value
        raise BadInstance(f"malformed {keyword}") from None
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        raise BadInstance(f"malformed {keyword}")
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise BadInstance(f"malformed {keyword}") from None
    if number < 0:
        raise BadInstance(f"malformed {keyword}")
    return number


def pixel_geometry(ds: Dataset) -> PixelGeometry | None:
    """The image geometry the header declares (None: not an image)."""
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None and columns is None:
        return None
    frames = _int(ds, "NumberOfFrames")
    samples = _int(ds, "SamplesPerPixel")
    bits = _int(ds, "BitsAllocated")
    if bits is not None and not (bits == 1 or (bits % 8 == 0 and 8 <= bits <= 64)):
        raise BadInstance("Bits Allocated is not 1 or a multiple of 8 up to 64")
    if samples is not None and not 1 <= samples <= 4:
        raise BadInstance("Samples per Pixel is not 1 to 4")
    return PixelGeometry(rows or 0, columns or 0, 1 if frames is None else frames, samples or 1,
                         16 if bits is None else bits)


def check_geometry(ds: Dataset, limits: LimitsConfig) -> PixelGeometry | None:
    """Raise :class:`LimitExceeded` (or :class:`BadInstance`) for an image beyond the limits."""
    geometry = pixel_geometry(ds)
    if geometry is None:
        return None
    for limit, value, allowed in (("max_rows", geometry.rows, limits.max_rows),
                                  ("max_columns", geometry.columns, limits.max_columns),
                                  ("max_frames", geometry.frames, limits.max_frames),
                                  ("max_decoded_instance_bytes", geometry.decoded_bytes,
                                   limits.max_decoded_instance_bytes)):
        if value > allowed:
            raise LimitExceeded(limit, value, allowed)
    return geometry
