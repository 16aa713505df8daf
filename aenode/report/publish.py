"""Write a result's SR and SC durably (queueing them for PACS is the deliver stage's).

Files go to ``<data_dir>/results/<study UID>/<model name>/r<revision>/{sr,sc,seg}.dcm``
(fsynced, atomic rename); an existing file of the same revision is kept as it is, so a
retry after a crash re-enqueues the very same bytes and UIDs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

from pydicom.dataset import Dataset

from aenode.report.models import ReportInput
from aenode.report.sc import build_sc
from aenode.report.seg import build_seg
from aenode.report.sr import build_sr
from aenode.report.uids import result_uids
from aenode.store.datadir import DataDir

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
# The objects of one result, in the order they are written (``write_results(parts=...)``).
RESULT_PARTS = ("sr", "sc", "seg")


def results_path(data_dir: str | Path, study_uid: str, model: str, revision: int) -> Path:
    """Where one result revision's SR and SC live (the web and the demo read them here)."""
    return DataDir.of(data_dir).results / study_uid / _SAFE.sub("_", model) / f"r{int(revision)}"


def result_dir(data_dir: str | Path, inp: ReportInput) -> Path:
    return results_path(data_dir, inp.study_instance_uid, inp.model.name, inp.revision)


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file atomically (temp file, fsync, rename, fsync dir)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)




def write_results(data_dir: str | Path, inp: ReportInput, *, node_name: str = "aenode",
                  on_written: Callable[[Path], None] | None = None,
                  parts: Collection[str] = RESULT_PARTS) -> list[Path]:
    """Build and write the SR (and the SC when ``inp`` has a volume, the SEG when it has a
    segmentation); returns the paths.
    Files already written for this revision are not rebuilt.  ``on_written`` is called
    with each file as soon as it is durable, so the SR can leave before the SC is drawn.
    ``parts`` (of :data:`RESULT_PARTS`) limits the objects handled in this call: the
    analysis sends every model's SR before any model's SC and SEG."""
    unknown = set(parts) - set(RESULT_PARTS)
    if unknown:
        raise ValueError(f"unknown result parts {sorted(unknown)}; known: {', '.join(RESULT_PARTS)}")
    uids = result_uids(inp.study_instance_uid, inp.series_instance_uid, inp.model.sha256, inp.revision)
    out_dir = result_dir(data_dir, inp)
    paths: list[Path] = []
    if "sr" in parts:
        sr_path = out_dir / "sr.dcm"
        if not sr_path.is_file():
            write_dataset(build_sr(inp, node_name=node_name, uids=uids), sr_path)
        paths.append(sr_path)
        if on_written is not None:
            on_written(sr_path)
    if "sc" in parts and inp.volume is not None:
        sc_path = out_dir / "sc.dcm"
        if not sc_path.is_file():
            write_dataset(build_sc(inp, uids=uids), sc_path)
        paths.append(sc_path)
        if on_written is not None:
            on_written(sc_path)
    seg_path = out_dir / "seg.dcm"
    if "seg" not in parts:
        return paths
    if inp.segmentation is None and inp.segmentation_source is not None and not seg_path.is_file():
        inp = dataclasses.replace(inp, segmentation=inp.segmentation_source())
    if inp.segmentation is not None or seg_path.is_file():
        if not seg_path.is_file():
            write_dataset(build_seg(inp, node_name=node_name, uids=uids), seg_path)
        paths.append(seg_path)
        if on_written is not None:
            on_written(seg_path)
    return paths
