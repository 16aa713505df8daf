"""Rules that pick the series a model analyses (see ``[selection]`` in a model manifest)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aenode.infer.manifest import SelectionRules

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
_IMAGE_SOP_CLASSES = {CT_IMAGE_STORAGE}  # single-frame CT; the loader reads these


def _split_multi(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip().upper() for p in value.replace("/", "\\").split("\\") if p.strip())
    return tuple(str(p).strip().upper() for p in value if str(p).strip())


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\\,\s\[\]]+", value) if p]
    else:
        parts = list(value)
    try:
        out = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class InstanceInfo:
    """Header facts about one stored instance; no patient data."""

    path: str
    series_uid: str
    sop_class_uid: str = CT_IMAGE_STORAGE
    sop_instance_uid: str | None = None
    modality: str | None = None
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    series_number: int | None = None
    convolution_kernel: str = ""
    slice_thickness: float | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, ...] | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    transfer_syntax: str | None = None
    calling_ae: str | None = None
    own_output: bool = False  # the store marked it as the node's own SR/SC output

    @classmethod
    def from_row(cls, row: Any) -> InstanceInfo:
        """From an index row (object with attributes, or a mapping); tolerant of naming."""

        def get(*names: str) -> Any:
            for n in names:
                if isinstance(row, dict):
                    if n in row and row[n] is not None:
                        return row[n]
                elif getattr(row, n, None) is not None:
                    return getattr(row, n)
            return None

        def as_int(v: Any) -> int | None:
            try:
                return None if v is None or v == "" else int(v)
            except (TypeError, ValueError):
                return None

        return cls(
            path=str(get("path", "file_path", "abs_path", "filename")),
            series_uid=str(get("series_uid", "series_instance_uid")),
            sop_class_uid=str(get("sop_class_uid", "sop_class") or CT_IMAGE_STORAGE),
            sop_instance_uid=get("sop_instance_uid", "sop_uid"),
            modality=get("modality"),
            image_type=_split_multi(get("image_type")),
            series_description=str(get("series_description") or ""),
            series_number=as_int(get("series_number")),
            convolution_kernel=str(get("convolution_kernel", "kernel") or ""),
            slice_thickness=_float(get("slice_thickness")),
            image_position=_floats(get("image_position", "image_position_patient", "position"), 3),  # type: ignore[arg-type]
            image_orientation=_floats(get("image_orientation", "image_orientation_patient", "orientation"), 6),
            instance_number=as_int(get("instance_number")),
            rows=as_int(get("rows")),
            columns=as_int(get("columns", "cols")),
            transfer_syntax=get("transfer_syntax", "transfer_syntax_uid"),
            calling_ae=get("calling_ae", "calling_ae_title", "source_ae"),
            own_output=bool(get("own_output") or False),
        )

    @classmethod
    def from_dataset(cls, ds: Any, path: str | Path) -> InstanceInfo:
        """From a pydicom dataset read with ``stop_before_pixels=True``."""
        meta = getattr(ds, "file_meta", None)
        kernel = ds.get("ConvolutionKernel")
        try:
            from aenode.report.marks import is_node_output

            own = bool(is_node_output(ds))
        except ImportError:  # the report stage is not installed
            own = False
        return cls(
            path=str(path),
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            sop_class_uid=str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
            modality=ds.get("Modality"),
            image_type=_split_multi(ds.get("ImageType")),
            series_description=str(ds.get("SeriesDescription", "") or ""),
            series_number=int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else None,
            convolution_kernel="\\".join(_split_multi(kernel)) if kernel is not None else "",
            slice_thickness=_float(ds.get("SliceThickness")),
            image_position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            image_orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            instance_number=int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
            rows=ds.get("Rows"),
            columns=ds.get("Columns"),
            transfer_syntax=str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None,
            own_output=own,
        )


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    description: str
    n_instances: int
    modality: str | None
    image_type: tuple[str, ...]
    sop_class_uid: str
    slice_thickness: float | None
    coverage_mm: float | None
    normal_angle_deg: float | None  # angle between the slice normal and the patient z axis
    kernel: str
    series_number: int | None
    calling_ae: str | None
    consistent: bool  # one orientation and one matrix size throughout
    own_output: bool = False
    instances: tuple[InstanceInfo, ...] = field(repr=False, default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid, "description": self.description, "instances": self.n_instances,
            "modality": self.modality, "image_type": "\\".join(self.image_type),
            "slice_thickness_mm": self.slice_thickness,
            "coverage_mm": None if self.coverage_mm is None else round(self.coverage_mm, 1),
            "kernel": self.kernel,
        }


def group_series(instances: Iterable[InstanceInfo]) -> dict[str, list[InstanceInfo]]:
    out: dict[str, list[InstanceInfo]] = {}
    for inst in instances:
        out.setdefault(inst.series_uid, []).append(inst)
    return out


def _mode(values: Sequence[Any]) -> Any:
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=counts.get) if counts else None  # type: ignore[arg-type]


def summarise_series(series_uid: str, instances: Sequence[InstanceInfo]) -> SeriesSummary:
    first = instances[0]
    orientations = {tuple(round(v, 3) for v in i.image_orientation) for i in instances if i.image_orientation}
    sizes = {(i.rows, i.columns) for i in instances}
    thickness = _mode([i.slice_thickness for i in instances if i.slice_thickness is not None])
    normal_angle = coverage = None
    orient = first.image_orientation
    if orient is not None:
        row, col = np.array(orient[:3]), np.array(orient[3:])
        normal = np.cross(row, col)
        norm = float(np.linalg.norm(normal))
        if norm > 1e-6:
            normal /= norm
            normal_angle = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
            pos = [np.dot(normal, i.image_position) for i in instances if i.image_position is not None]
            if pos:
                coverage = float(max(pos) - min(pos))
    return SeriesSummary(
        series_uid=series_uid,
        description=first.series_description,
        n_instances=len(instances),
        modality=first.modality,
        image_type=first.image_type,
        sop_class_uid=first.sop_class_uid,
        slice_thickness=thickness,
        coverage_mm=coverage,
        normal_angle_deg=normal_angle,
        kernel=first.convolution_kernel,
        series_number=first.series_number,
        calling_ae=first.calling_ae,
        consistent=len(orientations) <= 1 and len(sizes) <= 1,
        own_output=any(i.own_output for i in instances),
        instances=tuple(instances),
    )


def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^A-Z0-9]+", text.upper()) if w}


def ineligibility(
    s: SeriesSummary,
    rules: SelectionRules,
    *,
    own_ae_titles: Iterable[str] = (),
    own_series_uids: Iterable[str] = (),
) -> str | None:
    """Why a series cannot be analysed, or None when it qualifies."""
    if s.own_output or s.series_uid in set(own_series_uids) or (s.calling_ae and s.calling_ae in set(own_ae_titles)):
        return "the node's own output"
    if s.sop_class_uid not in _IMAGE_SOP_CLASSES:
        return f"not a single-frame CT image series (SOP class {s.sop_class_uid})"
    allowed = {m.upper() for m in rules.modality}
    if (s.modality or "").upper() not in allowed:
        return f"modality {s.modality or 'missing'} is not {'/'.join(sorted(allowed))}"
    if "LOCALIZER" in s.image_type:
        return "localizer (ImageType LOCALIZER)"
    it = s.image_type
    have, need = "\\".join(it) or "missing", "\\".join(rules.image_type)
    for i, want in enumerate(rules.image_type):
        want = want.upper()
        if want in ("ORIGINAL", "DERIVED", "PRIMARY", "SECONDARY"):
            if len(it) <= i or it[i] != want:
                return f"ImageType {have} is not {need}"
        elif want not in it:
            return f"ImageType {have} lacks {want}"
    desc_words = _words(s.description)
    for word in rules.exclude_descriptions:
        if word.upper() in desc_words:
            return f"series description marks it as {word.upper()}"
    if not s.consistent:
        return "mixed orientations or matrix sizes within the series"
    if s.normal_angle_deg is None:
        return "missing ImagePositionPatient/ImageOrientationPatient"
    if s.normal_angle_deg > rules.axial_tolerance_deg:
        return f"not axial (slice normal {s.normal_angle_deg:.0f} deg from the patient axis)"
    lo, hi = rules.slice_thickness_mm
    if s.slice_thickness is None:
        return "missing SliceThickness"
    if not lo <= s.slice_thickness <= hi:
        return f"slice thickness {s.slice_thickness:g} mm outside {lo:g}-{hi:g} mm"
    if s.n_instances < rules.min_slices:
        return f"{s.n_instances} slices, fewer than {rules.min_slices}"
    if s.coverage_mm is None or s.coverage_mm < rules.min_coverage_mm:
        return f"z coverage {s.coverage_mm or 0:.0f} mm, less than {rules.min_coverage_mm:g} mm"
    return None


def _preference_key(s: SeriesSummary, rules: SelectionRules) -> tuple:
    keys: list[Any] = []
    kw = {k.upper() for k in rules.kernel_keywords}
    for pref in rules.prefer:
        if pref == "thinnest":
            keys.append(s.slice_thickness or 1e9)
        elif pref == "kernel":
            words = _words(s.kernel) | _words(s.description)
            keys.append(0 if words & kw else 1)
        elif pref == "most_slices":
            keys.append(-s.n_instances)
        elif pref == "coverage":
            keys.append(-(s.coverage_mm or 0))
        elif pref == "latest":
            keys.append(-(s.series_number or 0))
    keys.append(s.series_uid)  # deterministic tie-break
    return tuple(keys)


@dataclass
class SelectionResult:
    selected: SeriesSummary | None
    eligible: list[SeriesSummary]
    skipped: dict[str, str]  # series UID -> reason
    summaries: dict[str, SeriesSummary]

    @property
    def reason(self) -> str | None:
        """Why nothing was selected (None when a series was)."""
        if self.selected is not None:
            return None
        if not self.summaries:
            return "no image instances in the study"
        parts = [f"{self.summaries[uid].description or uid}: {why}" for uid, why in self.skipped.items()]
        return "no eligible series (" + "; ".join(parts) + ")"

    def as_dict(self) -> dict[str, Any]:
        return {
            "selected": None if self.selected is None else self.selected.as_dict(),
            "skipped": [
                {**self.summaries[uid].as_dict(), "reason": why} for uid, why in self.skipped.items()
            ],
            "reason": self.reason,
        }


def select_series(
    instances: Iterable[InstanceInfo],
    rules: SelectionRules,
    *,
    own_ae_titles: Iterable[str] = (),
    own_series_uids: Iterable[str] = (),
) -> SelectionResult:
    """Apply ``rules`` to a study's instances: the preferred eligible series, and why others not."""
    own_ae = tuple(own_ae_titles)
    own_series = tuple(own_series_uids)
    summaries = {uid: summarise_series(uid, insts) for uid, insts in group_series(instances).items()}
    eligible: list[SeriesSummary] = []
    skipped: dict[str, str] = {}
    for uid, s in summaries.items():
        why = ineligibility(s, rules, own_ae_titles=own_ae, own_series_uids=own_series)
        if why is None:
            eligible.append(s)
        else:
            skipped[uid] = why
    eligible.sort(key=lambda s: _preference_key(s, rules))
    selected = eligible[0] if eligible else None
    for other in eligible[1:]:
        skipped[other.series_uid] = f"eligible, but series {selected.description or selected.series_uid} is preferred"  # type: ignore[union-attr]
    return SelectionResult(selected=selected, eligible=eligible, skipped=skipped, summaries=summaries)
