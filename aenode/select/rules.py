"""Rules that pick the series a model analyses (see ``[selection]`` in a model manifest)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aenode.store.meta import CT_IMAGE_STORAGE, InstanceHeader

_IMAGE_SOP_CLASSES = {CT_IMAGE_STORAGE}  # single-frame CT; the loader reads these


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Preference = Literal["thinnest", "kernel", "most_slices", "coverage", "latest"]
_DEFAULT_PREFERENCE: tuple[Preference, ...] = ("thinnest", "kernel", "most_slices")


class SelectionRules(_Section):
    """The `[selection]` table of a model manifest: which series that model may analyse."""

    modality: list[str] = Field(default_factory=lambda: ["CT"], min_length=1)
    image_type: list[str] = Field(default_factory=lambda: ["ORIGINAL", "PRIMARY", "AXIAL"])
    slice_thickness_mm: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [0.5, 3.0], min_length=2, max_length=2)
    min_slices: int = Field(40, ge=1)
    min_coverage_mm: float = Field(150.0, ge=0)
    max_tilt_deg: float = Field(0.5, ge=0)  # beyond this the loader resamples or refuses
    tilt: Literal["resample", "refuse"] = "resample"
    axial_tolerance_deg: float = Field(35.0, ge=0, le=60)  # generous: tilted gantries
    # Preference when several series qualify, applied in order.
    prefer: list[Preference] = Field(default_factory=lambda: list(_DEFAULT_PREFERENCE))
    # Words in ConvolutionKernel or SeriesDescription that mark a lung/sharp reconstruction.
    kernel_keywords: list[str] = Field(
        default_factory=lambda: ["LUNG", "SHARP", "B60", "B70", "B60F", "B70F", "BONE", "YC", "FC51", "FC52", "FC86"])
    # Series descriptions that are never analysed (besides the node's own output).
    exclude_descriptions: list[str] = Field(default_factory=lambda: ["LOCALIZER", "SCOUT", "TOPOGRAM", "MIP", "MPR"])

    @model_validator(mode="after")
    def _range(self) -> SelectionRules:
        if self.slice_thickness_mm[0] > self.slice_thickness_mm[1]:
            raise ValueError("slice_thickness_mm: minimum above maximum")
        return self


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
    instances: tuple[InstanceHeader, ...] = field(repr=False, default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid, "description": self.description, "instances": self.n_instances,
            "modality": self.modality, "image_type": "\\".join(self.image_type),
            "slice_thickness_mm": self.slice_thickness,
            "coverage_mm": None if self.coverage_mm is None else round(self.coverage_mm, 1),
            "kernel": self.kernel,
        }


def group_series(instances: Iterable[InstanceHeader]) -> dict[str, list[InstanceHeader]]:
    out: dict[str, list[InstanceHeader]] = {}
    for inst in instances:
        out.setdefault(inst.series_uid, []).append(inst)
    return out


def _mode(values: Sequence[Any]) -> Any:
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=counts.get) if counts else None  # type: ignore[arg-type]


def summarise_series(series_uid: str, instances: Sequence[InstanceHeader]) -> SeriesSummary:
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
    instances: Iterable[InstanceHeader],
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
