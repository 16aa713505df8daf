"""Write a de-identified research dataset from the node's analysed studies.

Layout of ``--out DIR`` (the "export layout" that ``aenode evaluate`` and ``training/``
read)::

    DIR/dataset.json                         profile, selection, counts, models
    DIR/labels.csv                           one row per study (pseudonymous key)
    DIR/<study key>/<series UID>/<SOP UID>.dcm
    DIR/.state/<study key>.json              per-study record: the resume point

The study key is the study's de-identified Study Instance UID.  Every value derived from
an identifier is keyed by the site secret, so a second export of the same study writes
the same files with the same names (idempotent), and an interrupted export resumes at
the first study without a record.  Files are written to a temporary name, fsynced and
renamed, and a study's record is written only after all its files: a crash never leaves
a study that looks complete but is not.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.dataset import Dataset

from aenode.config import Config
from aenode.export.deid import (
    METHOD_CODES,
    PROFILE_TABLE,
    BurnedInAnnotationRefused,
    Deidentifier,
    load_or_create_secret,
)
from aenode.logs import get_logger
from aenode.report.publish import results_path
from aenode.store.datadir import DataDir
from aenode.store.index import ANALYSED, Index, ResultRow

log = get_logger("aenode.export")

FORMAT = "aenode-export/1"
LABEL_COLUMNS = ("study_instance_uid", "category", "infection_status", "ai_category", "ai_probabilities",
                 "model", "model_version", "mode", "age_band", "sex", "manufacturer", "scanner_model",
                 "slice_thickness_mm", "kvp", "kernel", "instances")


class ConfirmationLike(Protocol):
    """A radiologist's confirmation (the web stage's ``Confirmation`` fits)."""

    @property
    def model(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def infection_status(self) -> str: ...
    @property
    def at(self) -> float: ...


class ConfirmationSource(Protocol):
    """Where the radiologists' labels come from (the web stage's ``WebStore``), handed in
    by the command line because the web stage comes after this one."""

    def confirmations(self, study_uid: str | None = None) -> Sequence[ConfirmationLike]: ...


@dataclass(frozen=True)
class Selection:
    since: dt.date | None = None          # first arrival on or after (local date)
    until: dt.date | None = None          # first arrival on or before
    confirmed_only: bool = False
    model: str | None = None              # None: [model] primary

    def as_dict(self) -> dict[str, object]:
        return {"from": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat() if self.until else None,
                "confirmed_only": self.confirmed_only, "model": self.model}


@dataclass
class StudyRecord:
    """One exported study (``.state/<key>.json``): its files and its labels row."""

    files: list[str]
    bytes: int
    excluded_burned_in: int
    labels: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> StudyRecord:
        doc = json.loads(path.read_text())
        return cls([str(f) for f in doc["files"]], int(doc["bytes"]), int(doc["excluded_burned_in"]),
                   {str(k): str(v) for k, v in doc["labels"].items()})

    def as_dict(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "excluded_burned_in": self.excluded_burned_in,
                "labels": self.labels}


@dataclass
class ExportSummary:
    studies: int = 0            # in the dataset (written now or before)
    written: int = 0            # written by this run
    resumed: int = 0            # already complete from an earlier run
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> studies not exported
    instances: int = 0
    bytes: int = 0
    excluded_burned_in: int = 0
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)          # every file of the dataset

    def as_dict(self) -> dict[str, object]:
        return {"studies": self.studies, "written": self.written, "resumed": self.resumed,
                "skipped": self.skipped, "instances": self.instances, "bytes": self.bytes,
                "excluded_burned_in": self.excluded_burned_in, "seconds": round(self.seconds, 3)}


def age_band(age: str | None) -> str:
    """A DICOM AS value ("063Y") as a ten-year band ("60-69"); 90 and over together."""
    if not age or len(age) != 4 or not age[:3].isdigit():
        return ""
    years = int(age[:3]) if age[3] == "Y" else 0
    if years >= 90:
        return "90+"
    lo = years // 10 * 10
    return f"{lo}-{lo + 9}"


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, doc: object) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _atomic_write(path, write)


def _saver(ds: Dataset) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        ds.save_as(tmp, enforce_file_format=True)
    return write


def _newest_confirmation(source: ConfirmationSource | None, study_uid: str, model: str) -> ConfirmationLike | None:
    if source is None:
        return None
    mine = [c for c in source.confirmations(study_uid) if c.model == model]
    return max(mine, key=lambda c: c.at) if mine else None


class Exporter:
    def __init__(self, config: Config, out: Path, *, confirmations: ConfirmationSource | None = None,
                 progress: Callable[[str], None] | None = None):
        self.config = config
        self.out = out
        self.layout = DataDir.of(config.node.data_dir)
        self.deid = Deidentifier(load_or_create_secret(self.layout.export_secret))
        self.confirmations = confirmations
        self.progress = progress or (lambda _line: None)

    def _candidates(self, index: Index, sel: Selection, model: str) -> tuple[list[ResultRow], Counter[str]]:
        skipped: Counter[str] = Counter()
        chosen: list[ResultRow] = []
        for study in index.studies():
            if study.state != ANALYSED:
                skipped["not analysed"] += 1
                continue
            day = dt.datetime.fromtimestamp(study.first_arrival).date()
            if (sel.since and day < sel.since) or (sel.until and day > sel.until):
                skipped["outside dates"] += 1
                continue
            results = [r for r in index.results(study.study_uid) if r.model == model]
            if not results:
                skipped[f"no {model} result"] += 1
                continue
            newest = max(results, key=lambda r: (r.revision, r.id))
            if sel.confirmed_only and _newest_confirmation(self.confirmations, study.study_uid, model) is None:
                skipped["not confirmed"] += 1
                continue
            chosen.append(newest)
        return chosen, skipped

    def run(self, sel: Selection) -> ExportSummary:
        t0 = time.perf_counter()
        model = sel.model or self.config.model.primary
        summary = ExportSummary()
        index = Index.for_data_dir(self.config.node.data_dir, url=self.config.database.url)
        try:
            chosen, skipped = self._candidates(index, sel, model)
            summary.skipped = dict(skipped)
            records: list[StudyRecord] = []
            for n, result in enumerate(chosen, 1):
                record, resumed = self._study(index, result)
                if record is None:
                    why = "no files left (retention)"
                    summary.skipped[why] = summary.skipped.get(why, 0) + 1
                    continue
                records.append(record)
                summary.studies += 1
                summary.resumed += resumed
                summary.written += not resumed
                summary.instances += len(record.files)
                summary.bytes += record.bytes
                summary.excluded_burned_in += record.excluded_burned_in
                summary.files += [self.out / f for f in record.files]
                self.progress(f"[{n}/{len(chosen)}] study {record.labels['study_instance_uid']}: "
                              f"{'already exported' if resumed else 'written'}; {summary.instances} files, "
                              f"{summary.bytes / 1e6:.1f} MB")
            self._write_labels(records)
            summary.seconds = time.perf_counter() - t0
            self._write_manifest(sel, model, records, summary)
        finally:
            index.close()
        log.info("export_complete", studies=summary.studies, written=summary.written, resumed=summary.resumed,
                 instances=summary.instances, bytes=summary.bytes, seconds=round(summary.seconds, 2))
        return summary

    # ---- one study -------------------------------------------------------------------------

    def _study(self, index: Index, result: ResultRow) -> tuple[StudyRecord | None, bool]:
        study_uid = result.study_uid
        key = self.deid.uid(study_uid)
        state_file = self.out / ".state" / f"{key}.json"
        if state_file.is_file():
            done = StudyRecord.read(state_file)
            if all((self.out / f).is_file() for f in done.files):
                return done, True
        sources: list[Path] = []
        if result.selected_series:
            sources += [i.path for i in index.instances(study_uid, result.selected_series) if i.path is not None]
        rdir = results_path(self.config.node.data_dir, study_uid, result.model, result.revision)
        sources += sorted(rdir.glob("*.dcm")) if rdir.is_dir() else []
        files: list[str] = []
        size = 0
        burned = 0
        header: Dataset | None = None
        for src in sources:
            if not src.is_file():
                continue
            ds = pydicom.dcmread(src)
            try:
                self.deid.deidentify(ds)
            except BurnedInAnnotationRefused as why:
                burned += 1
                log.info("export_instance_excluded", study_uid=study_uid, reason=str(why))
                continue
            if header is None and ds.get("Modality") != "SR":
                header = ds
            rel = Path(key) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
            _atomic_write(self.out / rel, _saver(ds))
            files.append(str(rel))
            size += (self.out / rel).stat().st_size
        if not files or header is None:
            return None, False
        labels = self._labels(study_uid, key, result, header)
        labels["instances"] = str(len(files))
        record = StudyRecord(files, size, burned, labels)
        _write_json(state_file, record.as_dict())
        log.info("export_study_written", study_uid=study_uid, files=len(files), bytes=size)
        return record, False

    def _labels(self, study_uid: str, key: str, result: ResultRow, header: Dataset) -> dict[str, str]:
        conf = _newest_confirmation(self.confirmations, study_uid, result.model)
        detail = result.detail or {}
        thickness = header.get("SliceThickness")
        kvp = header.get("KVP")
        return {
            "study_instance_uid": key,
            "category": conf.category if conf else "",
            "infection_status": conf.infection_status if conf else "",
            "ai_category": result.category or "",
            "ai_probabilities": json.dumps(result.probabilities or {}, sort_keys=True),
            "model": result.model,
            "model_version": str(detail.get("version", "")),
            "mode": str(detail.get("mode", "active")),
            "age_band": age_band(str(header.get("PatientAge", "") or "")),
            "sex": str(header.get("PatientSex", "") or ""),
            "manufacturer": str(header.get("Manufacturer", "") or ""),
            "scanner_model": str(header.get("ManufacturerModelName", "") or ""),
            "slice_thickness_mm": "" if thickness in (None, "") else f"{float(thickness):g}",
            "kvp": "" if kvp in (None, "") else f"{float(kvp):g}",
            "kernel": str(header.get("ConvolutionKernel", "") or ""),
            "instances": "",   # the number of files written, set by the caller
        }

    # ---- dataset files ----------------------------------------------------------------------

    def _write_labels(self, records: list[StudyRecord]) -> None:
        rows = sorted((r.labels for r in records), key=lambda x: x["study_instance_uid"])

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=LABEL_COLUMNS)
                w.writeheader()
                w.writerows(rows)
        _atomic_write(self.out / "labels.csv", write)

    def _write_manifest(self, sel: Selection, model: str, records: list[StudyRecord],
                        summary: ExportSummary) -> None:
        labels = [r.labels for r in records]
        by_category = Counter(lab["category"] or "unconfirmed" for lab in labels)
        by_ai = Counter(lab["ai_category"] or "none" for lab in labels)
        versions = sorted({lab["model_version"] for lab in labels})
        doc = {
            "format": FORMAT,
            "profile": {
                "standard": "DICOM PS3.15 Annex E",
                "method_codes": [{"code": c, "scheme": "DCM", "meaning": m} for c, m in METHOD_CODES],
                "attribute_table": f"dicom-anonymizer {PROFILE_TABLE}",
                "uids": "remapped: 2.25 form of HMAC-SHA256(site secret, original UID)",
                "dates": "shifted back 30-1854 days per patient (keyed by the site secret); times kept",
                "private_tags": "removed except a safe list of technical acquisition values",
                "burned_in": "instances with BurnedInAnnotation YES and secondary captures are excluded",
            },
            "selection": sel.as_dict() | {"model": model},
            "counts": {"studies": summary.studies, "confirmed": sum(1 for lab in labels if lab["category"]),
                       "instances": summary.instances, "bytes": summary.bytes,
                       "excluded_burned_in": summary.excluded_burned_in,
                       "by_category": dict(sorted(by_category.items())), "by_ai_category": dict(sorted(by_ai.items()))},
            "models": {model: versions},
        }
        _write_json(self.out / "dataset.json", doc)
