"""Public-health reports over surveillance records: CSV, FHIR R4 MeasureReport, JRS CSV.

- CSV: every record column (no identity: there is none to leave out);
- FHIR: a ``MeasureReport`` (type summary) following the HL7 SANER public-health measure
  conventions: the site as subject (a Location reference by postal code), the reporting
  period, an initial-population count and a stratifier by AI category, plus one group
  per category.  Built as plain JSON and validated with ``fhir.resources`` (R4B models:
  MeasureReport is unchanged between R4 4.0.1 and R4B 4.3.0, and fhir.resources ships
  no separate R4 package in its pydantic-2 releases);
- JRS: exactly the registration fields of the Japan Radiological Society's 2020 CT
  viral-pneumonia surveillance (Machitori et al., Jpn J Radiol 2020) for confirmed
  records: CT date, age, sex, COVID-19 status, CT findings, postal code, radiologist.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
from typing import Any

from fhir.resources.R4B.measurereport import MeasureReport

from aenode.config import Config
from aenode.surveil.records import SurveillanceRecord

CSV_COLUMNS = (
    "study_date", "iso_week", "age_band", "sex", "model", "revision", "category", "probabilities",
    "involvement_percent", "lesion_volume_ml", "lung_volume_ml", "laterality", "distribution", "ggo",
    "consolidation", "crazy_paving", "confirmed_category", "infection_status", "radiologist_id", "scanner",
    "site_name", "postal_code", "prefecture", "backfilled")

JRS_COLUMNS = (
    "ct_date", "age", "sex", "covid19_status", "no_significant_findings", "bilateral", "unilateral",
    "ground_glass_opacity", "crazy_paving", "consolidation", "postal_code", "radiologist_licence_number",
    "radiologist_name")

MEASURE_URL = "https://aenode.invalid/fhir/Measure/ct-viral-pneumonia-categories"
CATEGORY_SYSTEM = "https://aenode.invalid/fhir/CodeSystem/ai-category"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
POSTAL_SYSTEM = "urn:aenode:site:postal-code"


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def records_csv(records: list[SurveillanceRecord]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in records:
        f = r.findings
        w.writerow([_cell(x) for x in (
            r.study_date, r.week, r.age_band, r.sex, r.model, r.revision, r.category,
            json.dumps(r.probabilities, sort_keys=True), r.involvement, r.lesion_volume_ml, r.lung_volume_ml,
            f.laterality, f.distribution, f.ggo, f.consolidation, f.crazy_paving, r.confirmed_category,
            r.infection_status, r.radiologist_id, r.scanner, r.site_name, r.postal_code, r.prefecture,
            r.backfilled)])
    return buf.getvalue()


_STATUS = {"pcr-positive": "positive", "pcr-negative": "negative", "unknown": "unknown"}


def jrs_csv(records: list[SurveillanceRecord], negative_category: str = "negative") -> str:
    """Confirmed records only (the registry took radiologists' registrations); findings
    the model does not give stay empty rather than guessed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(JRS_COLUMNS)
    for r in records:
        if r.confirmed_category is None:
            continue
        f = r.findings
        normal = r.confirmed_category == negative_category
        lat = None if normal else f.laterality
        w.writerow([_cell(x) for x in (
            r.study_date, r.age_band, r.sex, _STATUS.get(r.infection_status or "", "other"), normal,
            None if lat is None else lat == "bilateral", None if lat is None else lat == "unilateral",
            f.ggo, f.crazy_paving, f.consolidation, r.postal_code, r.radiologist_id, "")])
    return buf.getvalue()


def _population(count: int) -> dict[str, Any]:
    return {"code": {"coding": [{"system": POPULATION_SYSTEM, "code": "initial-population"}]}, "count": count}


def fhir_measure_report(config: Config, records: list[SurveillanceRecord], since: str, until: str,
                        *, created: float) -> dict[str, Any]:
    """The MeasureReport as a JSON-able dict, validated (raises ``ValueError`` if not)."""
    site = config.site
    counts: dict[str, int] = {}
    for r in records:
        counts[r.category or "none"] = counts.get(r.category or "none", 0) + 1
    confirmed = sum(1 for r in records if r.confirmed_category is not None)

    def coded(cat: str) -> dict[str, Any]:
        return {"coding": [{"system": CATEGORY_SYSTEM, "code": cat}], "text": cat}

    subject: dict[str, Any] = {"type": "Location", "display": site.name or config.node.name}
    if site.postal_code:
        subject["identifier"] = {"system": POSTAL_SYSTEM, "value": site.postal_code}
    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": MEASURE_URL,
        "subject": subject,
        "date": _dt.datetime.fromtimestamp(created, _dt.UTC).isoformat(timespec="seconds"),
        "reporter": {"display": config.node.name},
        "period": {"start": since, "end": until},
        "group": [
            {"code": {"text": "chest CT by AI category"}, "population": [_population(len(records))],
             "stratifier": [{"code": [{"text": "ai-category"}],
                             "stratum": [{"value": coded(c), "population": [_population(n)]}
                                         for c, n in sorted(counts.items())]}]},
            {"code": {"text": "radiologist-confirmed"}, "population": [_population(confirmed)]},
            *({"code": coded(c), "population": [_population(n)]} for c, n in sorted(counts.items())),
        ],
    }
    if site.prefecture:
        report["subject"]["display"] = f"{subject['display']} ({site.prefecture})"
    MeasureReport.model_validate(report)  # raises pydantic.ValidationError (a ValueError)
    return report


def fhir_measure_report_json(config: Config, records: list[SurveillanceRecord], since: str, until: str,
                             *, created: float) -> str:
    return json.dumps(fhir_measure_report(config, records, since, until, created=created), sort_keys=True,
                      ensure_ascii=False)
