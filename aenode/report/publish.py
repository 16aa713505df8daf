"""Write a result's SR and SC durably and enqueue them for every destination.

``publish_result(config, report_input)`` is the one call the analysis stage makes after
it recorded a study's result.  Files go to
``<data_dir>/results/<study UID>/<model name>/r<revision>/{sr,sc}.dcm`` (fsynced, atomic
rename); an existing file of the same revision is kept as it is, so a retry after a crash
re-enqueues the very same bytes and UIDs.  Then one outbox row per (object,
destination), kind ``dicom``; the delivery worker of this process is woken.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

from aenode.logs import get_logger
from aenode.report.models import ReportInput
from aenode.report.uids import result_uids

log = get_logger("aenode.report")

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def results_path(data_dir: str | Path, study_uid: str, model: str, revision: int) -> Path:
    """Where one result revision's SR and SC live (the web and the demo read them here)."""
    return Path(data_dir) / "results" / study_uid / _SAFE.sub("_", model) / f"r{int(revision)}"


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
        with _suppress():
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def write_results(data_dir: str | Path, inp: ReportInput, *, node_name: str = "aenode") -> list[Path]:
    """Build and write the SR (and the SC when ``inp`` has a volume); returns the paths.
    Files already written for this revision are not rebuilt."""
    from aenode.report.sc import build_sc
    from aenode.report.sr import build_sr

    uids = result_uids(inp.study_instance_uid, inp.series_instance_uid, inp.model.sha256, inp.revision)
    out_dir = result_dir(data_dir, inp)
    paths = []
    sr_path = out_dir / "sr.dcm"
    if not sr_path.is_file():
        write_dataset(build_sr(inp, node_name=node_name, uids=uids), sr_path)
    paths.append(sr_path)
    if inp.volume is not None:
        sc_path = out_dir / "sc.dcm"
        if not sc_path.is_file():
            write_dataset(build_sc(inp, uids=uids), sc_path)
        paths.append(sc_path)
    return paths


def enqueue_results(config, paths: list[Path], study_uid: str, *, outbox=None) -> list[int]:
    """One ``dicom`` outbox row per (file, destination); returns the row ids."""
    from pydicom import dcmread

    from aenode.deliver.outbox import Outbox
    from aenode.deliver.worker import notify

    own = outbox is None
    box = outbox or Outbox.for_config(config)
    ids = []
    try:
        for p in paths:
            sop_uid = str(dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for dest in config.destinations:
                ids.append(box.enqueue("dicom", dest.name, sop_uid, str(p), study_uid=study_uid))
    finally:
        if own:
            box.close()
    notify()
    return ids


def publish_result(config, report_input: ReportInput, *, outbox=None) -> list[Path]:
    """Write the SR/SC of ``report_input`` under ``config.node.data_dir`` and enqueue them
    for every ``config.destinations`` entry.  Idempotent per revision."""
    if not isinstance(report_input, ReportInput):
        raise TypeError("report_input: must be a ReportInput")
    paths = write_results(config.node.data_dir, report_input, node_name=config.node.name)
    ids = enqueue_results(config, paths, report_input.study_instance_uid, outbox=outbox)
    log.info("result published", objects=len(paths), outbox_rows=len(ids), revision=report_input.revision,
             model=report_input.model.name)
    return paths
