"""Run one model over a labelled set of studies, offline (as ``aenode predict`` does).

A labelled set is a folder in the export layout (``labels.csv`` beside the studies) or
any folder of DICOM studies with a CSV whose columns include ``study_instance_uid`` and
``category`` (the radiologists' class name, as in the model's manifest).
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from aenode.evaluate.metrics import Case
from aenode.infer.analyse import analyse_instances
from aenode.infer.cli import scan_folder
from aenode.infer.engine import Model
from aenode.store.meta import InstanceHeader


class LabelsError(Exception):
    """The labels file cannot be used (names the file, the row and the problem)."""


def read_labels(path: Path, classes: list[str]) -> dict[str, str]:
    """Study Instance UID -> radiologist's category; rows without a category are unlabelled."""
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"study_instance_uid", "category"} - set(reader.fieldnames or [])
        if missing:
            raise LabelsError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        out: dict[str, str] = {}
        for line, row in enumerate(reader, 2):
            category = (row["category"] or "").strip().lower()
            if not category:
                continue
            if category not in classes:
                raise LabelsError(f"{path}: line {line}: category {row['category']!r} is not one of the "
                                  f"model's classes ({', '.join(classes)})")
            out[(row["study_instance_uid"] or "").strip()] = category
    return out


@dataclass
class Evaluation:
    cases: list[Case] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)      # labelled, not found in the folder
    unlabelled: int = 0                                   # found, no label
    seconds: float = 0.0


def _scanner_model(headers: list[InstanceHeader], series_uid: str | None) -> str:
    for h in headers:
        if h.series_uid == series_uid and h.path is not None:
            ds = pydicom.dcmread(h.path, stop_before_pixels=True, specific_tags=["ManufacturerModelName"])
            return str(ds.get("ManufacturerModelName", "") or "")
    return ""


def evaluate_folder(root: Path, labels: dict[str, str], model: Model, *, own_ae_titles: list[str] | None = None,
                    progress: Callable[[str], None] | None = None) -> Evaluation:
    t0 = time.perf_counter()
    headers, _corrupt, _other = scan_folder(root)
    by_study: dict[str, list[InstanceHeader]] = defaultdict(list)
    for h in headers:
        by_study[h.study_uid].append(h)
    result = Evaluation(missing=sorted(set(labels) - set(by_study)),
                        unlabelled=len(set(by_study) - set(labels)))
    todo = [uid for uid in sorted(by_study) if uid in labels]
    for n, uid in enumerate(todo, 1):
        t = time.perf_counter()
        analysis = analyse_instances(by_study[uid], [model], own_ae_titles=own_ae_titles or [])
        outcome = analysis.outcomes[0]
        p = outcome.prediction
        series = outcome.selected_series
        thickness = next((h.slice_thickness for h in by_study[uid] if h.series_uid == series), None)
        result.cases.append(Case(
            key=uid, truth=labels[uid], predicted=p.category if p else None,
            probabilities=dict(p.probabilities) if p else {},
            out_of_domain=bool(p and p.detail.get("out_of_domain")),
            scanner_model=_scanner_model(by_study[uid], series),
            slice_thickness_mm=None if thickness is None else float(thickness),
            seconds=time.perf_counter() - t))
        if progress:
            progress(f"[{n}/{len(todo)}] {outcome.state}: {p.category if p else outcome.reason}")
    result.seconds = time.perf_counter() - t0
    return result
