"""The alert document: what an infection-control team needs to act, and no more.

Clinical safety (DESIGN.md): alerts carry the minimum patient data - patient ID and
accession number; the patient's name and birth date only when the configuration turns
them on (``[alerts] include_patient_name`` / ``include_birth_date``).  Nothing else is
copied from the DICOM header.  The header is read from one stored instance of the study
(``stop_before_pixels``), preferring the analysed series.

The document is built once per alert and stored, so every retry sends the same bytes (the
webhook signature, the e-mail and the HL7 message are all rendered from it).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pydicom

from aenode.alert.rules import NOT_ASSESSED_MESSAGE, OUT_OF_DOMAIN
from aenode.config import Config
from aenode.logs import get_logger
from aenode.store.index import Index

log = get_logger("aenode.alert")

SCHEMA = "aenode.alert/v1"
DISCLAIMER = ("AI decision support for triage and infection control, not a diagnosis; "
              "the result is unverified until a radiologist confirms it.")

# Always (when present) / only when configured.
_HEADER_ALWAYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "PatientID",
                  "StationName", "InstitutionName")
_HEADER_NAME = "PatientName"
_HEADER_BIRTH = "PatientBirthDate"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_header(index: Index, study_uid: str, series_uid: str | None = None) -> dict[str, str | None]:
    """The alert's header fields from one readable stored instance of the study.

    Returns every keyword in the two lists above (values ``None`` when absent); which of
    them reach the alert is decided by :func:`build_payload`.
    """
    keywords = (*_HEADER_ALWAYS, _HEADER_NAME, _HEADER_BIRTH)
    rows = index.instances(study_uid)
    preferred = [r for r in rows if series_uid and r.series_uid == series_uid]
    others = [r for r in rows if not (series_uid and r.series_uid == series_uid) and not r.own_output]
    for row in (*preferred, *others):
        if row.path is None:
            continue
        try:
            ds = pydicom.dcmread(str(row.path), stop_before_pixels=True,
                                 specific_tags=list(keywords))
        except Exception as exc:  # noqa: BLE001 - try the next instance
            log.warning("alert_header_unreadable", study_uid=study_uid, error=type(exc).__name__)
            continue
        return {kw: _text(ds.get(kw)) for kw in keywords}
    log.warning("alert_header_missing", study_uid=study_uid)
    return {kw: (study_uid if kw == "StudyInstanceUID" else None) for kw in keywords}


def dashboard_link(config: Config, study_uid: str) -> str:
    base = config.alerts.dashboard_url or f"http://{config.web.host}:{config.web.port}"
    return f"{base.rstrip('/')}/studies/{study_uid}"


def _iso_datetime(date: str | None, time_: str | None) -> str | None:
    """DICOM DA + TM -> ISO 8601 local time (no zone: DICOM times are local), or None."""
    if not date or len(date) != 8 or not date.isdigit():
        return None
    out = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    if time_:
        t = time_.split(".")[0]
        if t.isdigit() and len(t) >= 2:
            t = (t + "0000")[:6]
            out += f"T{t[:2]}:{t[2:4]}:{t[4:6]}"
    return out


def build_payload(
    *,
    config: Config,
    key: str,
    channel: str,
    study_uid: str,
    revision: int,
    model: str,
    model_version: str | None,
    category: str,
    category_code: dict[str, str] | None,
    probability: float | None,
    result_category: str | None,
    probabilities: dict[str, float] | None,
    header: dict[str, str | None],
    update: bool,
    previous_category: str | None,
    alerting: bool,
    previous_category_code: dict[str, str] | None = None,
    created: float,
) -> dict[str, Any]:
    """The JSON-able alert document (the webhook body; e-mail and HL7 render from it).

    ``alerting`` False means an update that lowers the category below the channel's alert
    classes ("cleared"): ``category`` is then the new result category.
    """
    alerts = config.alerts
    patient: dict[str, Any] = {"id": header.get("PatientID")}
    if alerts.include_patient_name:
        patient["name"] = header.get(_HEADER_NAME)
    if alerts.include_birth_date:
        patient["birth_date"] = header.get(_HEADER_BIRTH)
    return {
        "schema": SCHEMA,
        "alert_id": key,
        "channel": channel,
        "update": update,
        "previous_category": previous_category,
        "previous_category_code": previous_category_code if update else None,
        "cleared": bool(update and not alerting),
        # "not-assessed": the domain gate fired, the AI gave no category (issue 12).
        "kind": "not-assessed" if category == OUT_OF_DOMAIN else "category",
        "message": NOT_ASSESSED_MESSAGE if category == OUT_OF_DOMAIN else None,
        "category": category,
        "category_code": category_code,
        "probability": None if probability is None else round(float(probability), 4),
        "result_category": result_category,
        "probabilities": ({k: round(float(v), 4) for k, v in probabilities.items()}
                          if probabilities else None),
        "model": {"name": model, "version": model_version},
        "study": {
            "study_instance_uid": header.get("StudyInstanceUID") or study_uid,
            "result_revision": revision,
            "study_date": header.get("StudyDate"),
            "study_time": header.get("StudyTime"),
            "study_datetime": _iso_datetime(header.get("StudyDate"), header.get("StudyTime")),
            "accession_number": header.get("AccessionNumber"),
            "station_name": header.get("StationName"),
            "institution_name": header.get("InstitutionName"),
        },
        "patient": patient,
        "node": config.node.name,
        "link": dashboard_link(config, study_uid),
        "created": _dt.datetime.fromtimestamp(created, _dt.UTC).isoformat(timespec="seconds"),
        "disclaimer": DISCLAIMER,
    }


def phi_of(payload: dict[str, Any]) -> list[str]:
    """Patient identifiers in a payload, to register with :func:`aenode.logs.phi_values`."""
    study = payload.get("study", {})
    patient = payload.get("patient", {})
    return [v for v in (patient.get("id"), patient.get("name"), patient.get("birth_date"),
                        study.get("accession_number")) if v]
