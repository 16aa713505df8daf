"""Typed input of the report stage, validated when constructed.

:class:`ReportInput` carries everything needed to build the SR and the secondary capture
for one analysed series: a copy of the patient/study header of one source instance, the
analysed series' instance references in slice order, the model's coded classes and
probabilities, the model identity, the revision, and (for the SC) the HU volume and the
optional lesion map.  Bad input raises ``ValueError`` (or ``TypeError``) naming the field,
before anything is written.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

# Patient and study module attributes copied from a source instance into the results.
HEADER_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet",
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientWeight", "PatientSize", "OtherPatientIDsSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDescription", "IssuerOfAccessionNumberSequence",
)
# Type 2 attributes highdicom needs to be present (possibly empty).
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _check_uid(value: str, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{what}: not a valid DICOM UID: {value!r}")
    return value


def _check_text(value: str, what: str, max_len: int = 64) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}: must be a non-empty string")
    if len(value) > max_len:
        raise ValueError(f"{what}: longer than {max_len} characters")
    if "\\" in value:
        raise ValueError(f"{what}: must not contain a backslash")
    return value


@dataclass(frozen=True)
class SourceRef:
    """One instance of the analysed series."""

    sop_class_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        _check_uid(self.sop_class_uid, "SourceRef.sop_class_uid")
        _check_uid(self.sop_instance_uid, "SourceRef.sop_instance_uid")


@dataclass(frozen=True)
class ClassConcept:
    """A model output class and its code (usually in the model's private scheme)."""

    name: str
    code_value: str
    scheme_designator: str
    meaning: str

    def __post_init__(self) -> None:
        _check_text(self.name, "ClassConcept.name")
        _check_text(self.code_value, "ClassConcept.code_value", 16)
        _check_text(self.scheme_designator, "ClassConcept.scheme_designator", 16)
        _check_text(self.meaning, "ClassConcept.meaning", 64)


@dataclass(frozen=True)
class CodingScheme:
    """A private coding scheme, declared in the Coding Scheme Identification Sequence."""

    designator: str
    name: str
    version: str
    responsible_organization: str | None = None
    uid: str | None = None

    def __post_init__(self) -> None:
        _check_text(self.designator, "CodingScheme.designator", 16)
        _check_text(self.name, "CodingScheme.name", 64)
        _check_text(self.version, "CodingScheme.version", 16)
        if self.uid is not None:
            _check_uid(self.uid, "CodingScheme.uid")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    manufacturer: str
    sha256: str

    def __post_init__(self) -> None:
        _check_text(self.name, "ModelInfo.name")
        _check_text(self.version, "ModelInfo.version")
        _check_text(self.manufacturer, "ModelInfo.manufacturer")
        if not isinstance(self.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("ModelInfo.sha256: must be 64 lowercase hexadecimal digits")


@dataclass(frozen=True)
class PredecessorRef:
    """An earlier SR this one replaces (Predecessor Documents Sequence)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR

    def __post_init__(self) -> None:
        for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "sop_class_uid"):
            _check_uid(getattr(self, name), f"PredecessorRef.{name}")


def header_from_dataset(ds: Dataset) -> Dataset:
    """A copy of the patient/study attributes of ``ds`` (a source instance of the study)."""
    out = Dataset()
    for kw in HEADER_KEYWORDS:
        if kw in ds:
            out[kw] = ds[kw]  # pydicom copies the element on assignment to a new dataset
    for kw in _TYPE2:
        if kw not in out:
            setattr(out, kw, None)
    return out


@dataclass(frozen=True, eq=False)
class SegmentationInput:
    """What the DICOM Segmentation needs: the analysed series' instance headers (no pixels,
    aligned with ``ReportInput.source_refs``) and the full-resolution masks on that grid."""

    source_images: Sequence[Dataset]
    lesion: np.ndarray                # bool or uint8 (z, y, x)
    lung: np.ndarray | None = None    # bool or uint8 (z, y, x)

    def __post_init__(self) -> None:
        imgs = tuple(self.source_images)
        if not imgs or not all(isinstance(d, Dataset) for d in imgs):
            raise ValueError("segmentation.source_images: at least one pydicom Dataset")
        object.__setattr__(self, "source_images", imgs)
        for name in ("lesion", "lung"):
            m = getattr(self, name)
            if m is None:
                continue
            if not isinstance(m, np.ndarray) or m.ndim != 3 or m.dtype not in (np.bool_, np.uint8):
                raise ValueError(f"segmentation.{name}: must be a bool or uint8 array (z, y, x)")
            if m.shape[0] != len(imgs):
                raise ValueError(f"segmentation.{name}: {m.shape[0]} slices but {len(imgs)} source images")


@dataclass(frozen=True, eq=False)
class ReportInput:
    """What the report stage needs to build the SR and SC of one analysed series.

    ``classes`` and ``probabilities`` are aligned; ``category`` is the name of one class, or
    None when the study is outside the model's validated domain -- then ``out_of_domain``
    says why, with the measured value, and the SR and SC carry no category.
    ``source_refs`` lists the analysed series' instances in slice order (the order of the
    volume's z axis when a volume is given).
    """

    header: Dataset
    series_instance_uid: str
    source_refs: Sequence[SourceRef]
    classes: Sequence[ClassConcept]
    probabilities: Sequence[float]
    category: str | None
    model: ModelInfo
    coding_schemes: Sequence[CodingScheme] = ()
    lung_involvement_percent: float | None = None
    revision: int = 1
    predecessors: Sequence[PredecessorRef] | None = None
    volume: np.ndarray | None = field(default=None, repr=False)
    lesion_map: np.ndarray | None = field(default=None, repr=False)
    # Instead of a full lesion_map: the slices the SC shows, each with its lesion mask.
    # Cheaper (only those slices are resampled from the model grid) and what the analysis
    # stage passes.
    overlay: Mapping[int, np.ndarray] | None = field(default=None, repr=False)
    out_of_domain: str | None = None  # the domain gate's reason (measured values)
    # The domain gate's measured values by check name (lung_median_hu, lung_volume_ml).
    domain_values: Mapping[str, float] = field(default_factory=dict)
    segmentation: SegmentationInput | None = field(default=None, repr=False)
    # Or: how to compute it, called only when the SEG is written (after the SR and SC).
    segmentation_source: Callable[[], SegmentationInput | None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.header, Dataset):
            raise TypeError("header: must be a pydicom Dataset (see header_from_dataset)")
        _check_uid(str(self.header.get("StudyInstanceUID", "")), "header.StudyInstanceUID")
        for kw in _TYPE2:
            if kw not in self.header:
                raise ValueError(f"header.{kw}: missing (use header_from_dataset)")
        _check_uid(self.series_instance_uid, "series_instance_uid")
        refs = tuple(self.source_refs)
        if not refs:
            raise ValueError("source_refs: at least one instance of the analysed series is required")
        if not all(isinstance(r, SourceRef) for r in refs):
            raise TypeError("source_refs: items must be SourceRef")
        if len({r.sop_instance_uid for r in refs}) != len(refs):
            raise ValueError("source_refs: duplicate SOP instance UIDs")
        object.__setattr__(self, "source_refs", refs)
        classes = tuple(self.classes)
        if len(classes) < 2 or not all(isinstance(c, ClassConcept) for c in classes):
            raise ValueError("classes: at least two ClassConcept items are required")
        if len({c.name for c in classes}) != len(classes):
            raise ValueError("classes: names must be unique")
        object.__setattr__(self, "classes", classes)
        probs = tuple(float(p) for p in self.probabilities)
        if len(probs) != len(classes):
            raise ValueError(f"probabilities: {len(probs)} values for {len(classes)} classes")
        for i, p in enumerate(probs):
            if not math.isfinite(p) or not 0.0 <= p <= 1.0:
                raise ValueError(f"probabilities[{i}]: {p} is not in [0, 1]")
        object.__setattr__(self, "probabilities", probs)
        if self.category is None:
            if not self.out_of_domain:
                raise ValueError("category: None needs out_of_domain (the reason there is no category)")
        elif self.out_of_domain is not None:
            raise ValueError("out_of_domain: a study outside the domain has no category")
        elif self.category not in {c.name for c in classes}:
            raise ValueError(f"category: {self.category!r} is not one of the classes")
        if self.segmentation is not None:
            if len(self.segmentation.source_images) != len(refs):
                raise ValueError("segmentation: source_images must match source_refs")
            if self.volume is not None and self.segmentation.lesion.shape != self.volume.shape:
                raise ValueError("segmentation.lesion: must have the volume's shape")
        if not isinstance(self.model, ModelInfo):
            raise TypeError("model: must be a ModelInfo")
        schemes = tuple(self.coding_schemes)
        object.__setattr__(self, "coding_schemes", schemes)
        declared = {s.designator for s in schemes} | {"DCM", "SCT", "LN", "UCUM"}
        for c in classes:
            if c.scheme_designator not in declared:
                raise ValueError(f"coding_schemes: scheme {c.scheme_designator!r} of class {c.name!r} is not declared")
        if self.lung_involvement_percent is not None:
            v = float(self.lung_involvement_percent)
            if not math.isfinite(v) or not 0.0 <= v <= 100.0:
                raise ValueError(f"lung_involvement_percent: {v} is not in [0, 100]")
            object.__setattr__(self, "lung_involvement_percent", v)
        if not isinstance(self.revision, int) or isinstance(self.revision, bool) or self.revision < 1:
            raise ValueError(f"revision: must be an integer >= 1, got {self.revision!r}")
        if self.predecessors is not None:
            preds = tuple(self.predecessors)
            if not all(isinstance(p, PredecessorRef) for p in preds):
                raise TypeError("predecessors: items must be PredecessorRef")
            object.__setattr__(self, "predecessors", preds)
        if self.volume is not None:
            vol = self.volume
            if not isinstance(vol, np.ndarray) or vol.ndim != 3 or not np.issubdtype(vol.dtype, np.integer):
                raise ValueError("volume: must be an integer (int16 HU) numpy array of shape (z, y, x)")
            if vol.shape[0] != len(refs):
                raise ValueError(f"volume: {vol.shape[0]} slices but {len(refs)} source_refs")
            if min(vol.shape) < 1:
                raise ValueError("volume: empty")
        if self.overlay is not None:
            if self.volume is None or self.lesion_map is not None:
                raise ValueError("overlay: needs a volume, and excludes lesion_map")
            if not self.overlay:
                raise ValueError("overlay: at least one slice")
            for z, m in self.overlay.items():
                if not 0 <= z < self.volume.shape[0]:
                    raise ValueError(f"overlay: slice {z} outside the volume")
                if not isinstance(m, np.ndarray) or m.shape != self.volume.shape[1:] or m.dtype not in (
                        np.bool_, np.uint8):
                    raise ValueError("overlay: each mask must be a bool or uint8 array of one slice's shape")
        if self.lesion_map is not None:
            if self.volume is None:
                raise ValueError("lesion_map: given without a volume")
            lm = self.lesion_map
            if not isinstance(lm, np.ndarray) or lm.shape != self.volume.shape:
                raise ValueError("lesion_map: must be a numpy array with the volume's shape")
            if lm.dtype != bool and not np.issubdtype(lm.dtype, np.integer):
                raise ValueError("lesion_map: must be bool or uint8")

    # Convenience -----------------------------------------------------------------
    @property
    def study_instance_uid(self) -> str:
        return str(self.header.StudyInstanceUID)

    @property
    def category_concept(self) -> ClassConcept:
        if self.category is None:
            raise ValueError("category_concept: outside the validated domain there is no category")
        return next(c for c in self.classes if c.name == self.category)

    @property
    def category_probability(self) -> float:
        if self.category is None:
            raise ValueError("category_probability: outside the validated domain there is no category")
        return self.probabilities[[c.name for c in self.classes].index(self.category)]
