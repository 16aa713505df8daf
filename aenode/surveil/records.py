"""One surveillance record per analysed study: what an epidemiologist needs, no identity.

A record keeps the study date, an age band (never the age's source or the birth date),
sex, the AI category and probabilities, descriptive findings from the model's maps, the
scanner, and the site (``[site]``).  No names, no patient or accession IDs, no UIDs: the
store keys records by a one-way hash of the study UID so a revised result or a later
confirmation updates the same record, and the exports leave even that out.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

AGE_BANDS = ("0-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79", "80-89", "90+")
SEXES = ("F", "M", "O", "U")  # DICOM PatientSex F/M/O; U = unknown or absent

_AGE = re.compile(r"^(\d{3})([DWMY])$")


def record_key(study_uid: str, model: str) -> str:
    """Stable pseudonymous key of (study, model); one-way, never exported."""
    text = "\x1f".join(("aenode-surveil-v1", study_uid, model))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _dicom_date(value: str | None) -> _dt.date | None:
    if not value:
        return None
    v = value.strip()
    if len(v) != 8 or not v.isdigit():
        return None
    try:
        return _dt.date(int(v[:4]), int(v[4:6]), int(v[6:]))
    except ValueError:
        return None


def age_years(patient_age: str | None, birth_date: str | None, study_date: _dt.date | None) -> int | None:
    """Age in whole years from PatientAge (``045Y``, ``006M``...), else from the birth date
    and the study date; None when neither gives a plausible age."""
    m = _AGE.match((patient_age or "").strip().upper())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        years = {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[unit]
        return years if 0 <= years <= 130 else None
    born = _dicom_date(birth_date)
    if born is None or study_date is None or born > study_date:
        return None
    years = study_date.year - born.year - ((study_date.month, study_date.day) < (born.month, born.day))
    return years if years <= 130 else None


def age_band(years: int | None) -> str | None:
    if years is None:
        return None
    return AGE_BANDS[min(years // 10, len(AGE_BANDS) - 1)]


def sex_code(value: str | None) -> str:
    v = (value or "").strip().upper()
    return v if v in ("F", "M", "O") else "U"


def iso_week(d: _dt.date) -> str:
    y, w, _ = d.isocalendar()
    return f"{y}-W{w:02d}"


@dataclass(frozen=True)
class Findings:
    """Descriptive CT findings; None = the model does not say (never guessed)."""

    laterality: str | None = None      # "bilateral" | "unilateral" | "none"
    distribution: str | None = None    # "peripheral" | "central" | "diffuse"
    ggo: bool | None = None
    consolidation: bool | None = None
    crazy_paving: bool | None = None

    @classmethod
    def of(cls, detail: dict[str, Any] | None) -> Findings:
        """From a result's ``detail["findings"]`` (written by the analysis worker)."""
        f = (detail or {}).get("findings")
        if not isinstance(f, dict):
            return cls()

        def flag(k: str) -> bool | None:
            v = f.get(k)
            return bool(v) if isinstance(v, bool) else None

        lat = f.get("laterality")
        dist = f.get("distribution")
        return cls(lat if lat in ("bilateral", "unilateral", "none") else None,
                   dist if dist in ("peripheral", "central", "diffuse") else None,
                   flag("ggo"), flag("consolidation"), flag("crazy_paving"))


@dataclass(frozen=True)
class HeaderFacts:
    """What a record takes from the DICOM header (read once, then forgotten)."""

    study_date: _dt.date | None
    age_band: str | None
    sex: str
    scanner: str | None

    @classmethod
    def of(cls, header: dict[str, str | None]) -> HeaderFacts:
        d = _dicom_date(header.get("StudyDate"))
        years = age_years(header.get("PatientAge"), header.get("PatientBirthDate"), d)
        scanner = " ".join(x for x in (header.get("Manufacturer"), header.get("ManufacturerModelName")) if x)
        return cls(d, age_band(years), sex_code(header.get("PatientSex")), scanner or None)


@dataclass(frozen=True)
class SurveillanceRecord:
    """One record as stored and exported (plus the confirmation, when there is one)."""

    key: str
    model: str
    revision: int
    study_date: str | None          # YYYY-MM-DD
    week: str | None                # ISO week, YYYY-Www
    age_band: str | None
    sex: str
    category: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    involvement: float | None = None
    lesion_volume_ml: float | None = None
    lung_volume_ml: float | None = None
    findings: Findings = field(default_factory=Findings)
    scanner: str | None = None
    site_name: str = ""
    postal_code: str = ""
    prefecture: str = ""
    backfilled: bool = False
    updated: float = 0.0
    confirmed_category: str | None = None
    infection_status: str | None = None
    radiologist_id: str | None = None


def build_record(*, study_uid: str, model: str, revision: int, category: str | None,
                 probabilities: dict[str, float] | None, involvement: float | None,
                 detail: dict[str, Any] | None, header: HeaderFacts, site_name: str, postal_code: str,
                 prefecture: str, backfilled: bool, now: float) -> SurveillanceRecord:
    """The record of one result revision (pure: the worker reads, this decides)."""
    d = detail or {}

    def num(k: str) -> float | None:
        v = d.get(k)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return SurveillanceRecord(
        key=record_key(study_uid, model), model=model, revision=revision,
        study_date=header.study_date.isoformat() if header.study_date else None,
        week=iso_week(header.study_date) if header.study_date else None,
        age_band=header.age_band, sex=header.sex, category=category,
        probabilities={k: round(float(v), 4) for k, v in (probabilities or {}).items()},
        involvement=None if involvement is None else round(float(involvement), 2),
        lesion_volume_ml=num("lesion_volume_ml"), lung_volume_ml=num("lung_volume_ml"),
        findings=Findings.of(d), scanner=header.scanner, site_name=site_name, postal_code=postal_code,
        prefecture=prefecture, backfilled=backfilled, updated=now)
