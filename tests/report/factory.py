"""Synthetic ReportInput for tests and benchmarks (no files, no model)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from aenode.report.models import ClassConcept, CodingScheme, ModelInfo, ReportInput, SourceRef, header_from_dataset

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SCHEME = CodingScheme("99AENODE", "aenode COVID-19 CT categories", "1.0", "aenode project")
CLASSES = (
    ClassConcept("typical", "TYPICAL", "99AENODE", "Typical appearance"),
    ClassConcept("indeterminate", "INDETERMINATE", "99AENODE", "Indeterminate appearance"),
    ClassConcept("atypical", "ATYPICAL", "99AENODE", "Atypical appearance"),
    ClassConcept("negative", "NEGATIVE", "99AENODE", "Negative for pneumonia"),
)
MODEL = ModelInfo("covid-ct-ref", "1.0.0", "aenode project", "ab" * 32)


def make_header(study_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "PHANTOM^TEST"
    ds.PatientID = "PH0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST"
    return header_from_dataset(ds)


def make_input(*, n: int = 40, size: int = 64, category: str = "typical", lesion: bool = True,
               with_volume: bool = True, revision: int = 1, study_uid: str | None = None,
               series_uid: str | None = None, refs=None, header=None, seed: int = 0) -> ReportInput:
    rng = np.random.default_rng(seed)
    series_uid = series_uid or generate_uid()
    refs = refs or [SourceRef(CT_IMAGE, generate_uid()) for _ in range(n)]
    n = len(refs)
    vol = lm = None
    if with_volume:
        vol = np.full((n, size, size), -1000, dtype=np.int16)
        yy, xx = np.mgrid[:size, :size]
        body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2
        lung = body & ((yy - size / 2) ** 2 / 0.6 + (np.abs(xx - size / 2) - size * 0.2) ** 2 < (size * 0.18) ** 2)
        vol[:, body] = 40
        vol[:, lung] = -850
        vol += rng.integers(-20, 20, size=vol.shape, dtype=np.int16)
        lm = np.zeros(vol.shape, dtype=np.uint8)
        if lesion:
            z0 = n // 3
            lm[z0:z0 + max(1, n // 5), size // 3:size // 2, size // 4:size // 3] = 1
            vol[lm.astype(bool)] = -300
    probs = {"typical": [0.82, 0.1, 0.05, 0.03], "negative": [0.02, 0.05, 0.03, 0.9],
             "indeterminate": [0.2, 0.6, 0.1, 0.1], "atypical": [0.1, 0.1, 0.7, 0.1]}[category]
    return ReportInput(
        header=header or make_header(study_uid), series_instance_uid=series_uid, source_refs=refs,
        classes=CLASSES, probabilities=probs, category=category, model=MODEL, coding_schemes=[SCHEME],
        lung_involvement_percent=(12.5 if lesion else 0.0) if with_volume else None,
        revision=revision, volume=vol, lesion_map=lm if with_volume else None,
    )
