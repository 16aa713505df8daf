"""A data directory with a known batch of studies: chosen dates, sexes, ages, categories
and findings, written as real DICOM headers in the spool and results in the index."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from aenode.config import REPO_MODELS_DIR, Config, parse_config
from aenode.store.index import Index
from aenode.store.meta import read_meta

CANARY_NAME = "CANARY^SURVEIL^NAME"
CANARY_ID = "PID-SURV-9137"
CANARY_BIRTH = "19530917"
ACCESSION = "ACC-SURV-55"
MODEL = "covid-typicality"
SITE = {"name": "Test General Hospital", "postal_code": "113-8655", "prefecture": "Tokyo"}


def probs(category: str) -> dict[str, float]:
    p = {c: 0.05 for c in ("typical", "indeterminate", "atypical", "negative")}
    p[category] = 0.85
    return p


def write_header(path: Path, study_uid: str, series_uid: str, *, date: dt.date, sex: str,
                 age: str | None, birth: str | None) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientName = CANARY_NAME
    ds.PatientID = CANARY_ID
    ds.AccessionNumber = ACCESSION
    if birth:
        ds.PatientBirthDate = birth
    if age:
        ds.PatientAge = age
    ds.PatientSex = sex
    ds.StudyDate = date.strftime("%Y%m%d")
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "CT-64"
    ds.SeriesNumber = 2
    ds.InstanceNumber = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


@dataclass(frozen=True)
class Case:
    date: dt.date
    category: str
    sex: str = "F"
    age: str | None = "045Y"
    birth: str | None = None
    findings: dict | None = None
    involvement: float | None = None


def add_study(index: Index, data_dir: Path, case: Case, revision: int = 1) -> str:
    study_uid, series_uid = generate_uid(), generate_uid()
    f = write_header(data_dir / "spool" / study_uid / series_uid / "1.dcm", study_uid, series_uid,
                     date=case.date, sex=case.sex, age=case.age, birth=case.birth)
    index.record_instance(read_meta(f), f, f.stat().st_size, "CT01", received_at=time.time())
    record_result(index, study_uid, series_uid, case, revision)
    return study_uid


def record_result(index: Index, study_uid: str, series_uid: str | None, case: Case, revision: int = 1) -> int:
    detail = {"version": "test", "lesion_volume_ml": 120.0, "lung_volume_ml": 4000.0}
    if case.findings is not None:
        detail["findings"] = case.findings
    return index.record_result(study_uid, revision, MODEL, case.category, probs(case.category),
                               selected_series=series_uid, involvement=case.involvement, detail=detail)


def config(data_dir: Path, **sections) -> Config:
    data = {
        "node": {"data_dir": str(data_dir), "name": "surveil-node"},
        "model": {"path": str(REPO_MODELS_DIR)},
        "site": SITE,
        "delivery": {"backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.5, "poll_seconds": 0.05},
    }
    data.update(sections)
    return parse_config(data)


MONDAY = dt.date(2024, 1, 1)  # 2024-W01


def batch() -> list[Case]:
    """Twelve ISO weeks: weeks 1-11 hold one Typical and two Negative studies each; week 12
    holds four Typical and two Indeterminate (a surge), one Atypical and one Negative.
    Week 12's cases have chosen sexes, ages (one from the birth date only) and findings."""
    cases: list[Case] = []
    for w in range(11):
        d = MONDAY + dt.timedelta(weeks=w)
        cases += [Case(d, "typical", "M", "067Y", involvement=12.0),
                  Case(d + dt.timedelta(days=1), "negative", "F", "034Y", involvement=0.5),
                  Case(d + dt.timedelta(days=2), "negative", "M", "052Y", involvement=1.0)]
    d12 = MONDAY + dt.timedelta(weeks=11)
    bilat_peri = {"laterality": "bilateral", "distribution": "peripheral", "ggo": None,
                  "consolidation": None, "crazy_paving": None}
    cases += [Case(d12, "typical", "F", "045Y", findings=bilat_peri, involvement=30.0),
              Case(d12, "typical", "F", "041Y", findings=bilat_peri, involvement=55.0),
              Case(d12 + dt.timedelta(days=1), "typical", "M", None, CANARY_BIRTH, findings=bilat_peri,
                   involvement=20.0),   # born 1953-09-17, CT 2024-03-19: 70 -> "70-79"
              Case(d12 + dt.timedelta(days=2), "typical", "M", "088Y", findings=bilat_peri, involvement=80.0),
              Case(d12 + dt.timedelta(days=3), "indeterminate", "F", "029Y",
                   findings={"laterality": "unilateral", "distribution": "central"}, involvement=8.0),
              Case(d12 + dt.timedelta(days=3), "indeterminate", "O", "003M", involvement=6.0),
              Case(d12 + dt.timedelta(days=4), "atypical", "F", "060Y", involvement=4.0),
              Case(d12 + dt.timedelta(days=4), "negative", "U", None, involvement=0.0)]
    return cases
