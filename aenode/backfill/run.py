"""Backfill: C-FIND (study level, modality CT, date range) then C-MOVE per unseen study.

- **Resumable**: every study found is remembered in the surveillance store with its
  state (pending / retrieved / failed); a second run skips what was retrieved, retries
  what failed, and skips studies the node already holds (``Index.has_study``).
- **Never alerts**: each study is marked in the index as backfilled *before* its C-MOVE
  (``Index.mark_backfilled``); the alert worker decides only the dashboard state for
  such studies, and the analysis worker writes their SR/SC to PACS only with
  ``[backfill] send_results = true``.
- **Rate-limited**: C-MOVE requests start at most ``max_per_hour`` per hour (evenly
  spaced, so the PACS never sees a burst).
- The C-MOVE destination is ``[node] ae_title``: the PACS must know that AE (Orthanc:
  ``DicomModalities``), and the node (``aenode serve``) must be running to receive.

The DICOM client is pynetdicom (the maintained Python DIMSE implementation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE

from aenode.config import Config, DicomDestination
from aenode.logs import get_logger
from aenode.store.index import Index
from aenode.surveil.store import SurveillanceStore

log = get_logger("aenode.backfill")

# Study Root Query/Retrieve Information Model - FIND / - MOVE (PS3.4 C.6.2); by UID
# because pynetdicom builds its sop_class names at run time, which mypy cannot see.
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
StudyRootQueryRetrieveInformationModelMove = UID("1.2.840.10008.5.1.4.1.2.2.2")


class BackfillError(Exception):
    """The backfill cannot start or the PACS refused the query (message names the cause)."""


@dataclass
class Progress:
    found: int = 0
    already_held: int = 0
    retrieved: int = 0
    failed: int = 0
    skipped_done: int = 0
    move_started: list[float] = field(default_factory=list)   # monotonic times, for the rate check

    def line(self, total: int) -> str:
        done = self.retrieved + self.failed + self.already_held + self.skipped_done
        return (f"[{done}/{total}] retrieved {self.retrieved}, failed {self.failed}, already held "
                f"{self.already_held}, done earlier {self.skipped_done}")


def source_of(config: Config, name: str | None) -> DicomDestination:
    name = name or config.backfill.source
    if not name:
        raise BackfillError("no source: give --source NAME or set [backfill] source")
    for d in config.destinations:
        if d.name == name:
            if not isinstance(d, DicomDestination):
                raise BackfillError(f"[backfill] source {name!r}: must be a DICOM destination (type = \"dicom\")")
            return d
    raise BackfillError(f"[backfill] source {name!r}: no [[destinations]] entry of that name")


def _dicom_range(since: str, until: str) -> str:
    return f"{since.replace('-', '')}-{until.replace('-', '')}"


def _iso(da: str | None) -> str | None:
    if not da or len(da) != 8 or not da.isdigit():
        return None
    return f"{da[:4]}-{da[4:6]}-{da[6:]}"


def _ae(config: Config) -> AE:
    ae = AE(ae_title=config.node.ae_title)
    timeout = config.delivery.timeout_seconds
    ae.acse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    return ae


def find_studies(config: Config, src: DicomDestination, since: str, until: str) -> list[tuple[str, str | None]]:
    """C-FIND at study level: (study UID, study date YYYY-MM-DD) of every CT study in range."""
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyDate = _dicom_range(since, until)
    q.ModalitiesInStudy = "CT"
    q.StudyInstanceUID = ""
    ae = _ae(config)
    ae.dimse_timeout = config.delivery.timeout_seconds
    assoc = ae.associate(src.host, src.port, ae_title=src.ae_title)
    if not assoc.is_established:
        raise BackfillError(f"source {src.name}: association refused or no answer ({src.host}:{src.port})")
    out: list[tuple[str, str | None]] = []
    try:
        for status, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:
                raise BackfillError(f"source {src.name}: C-FIND got no answer")
            if code in (0xFF00, 0xFF01) and ident is not None:
                uid = str(ident.get("StudyInstanceUID", "") or "")
                if uid:
                    out.append((uid, _iso(str(ident.get("StudyDate", "") or ""))))
            elif code != 0x0000:
                raise BackfillError(f"source {src.name}: C-FIND failed with status 0x{code:04X}")
    finally:
        assoc.release()
    return out


def move_study(config: Config, src: DicomDestination, study_uid: str) -> str | None:
    """C-MOVE one study to the node's AE title; None on success, else the reason."""
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study_uid
    ae = _ae(config)
    ae.dimse_timeout = config.backfill.move_timeout_seconds
    assoc = ae.associate(src.host, src.port, ae_title=src.ae_title)
    if not assoc.is_established:
        return "association refused or no answer"
    try:
        last = None
        failed = 0
        for status, _ident in assoc.send_c_move(q, config.node.ae_title, StudyRootQueryRetrieveInformationModelMove):
            last = getattr(status, "Status", None)
            failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
        if last is None:
            return "no C-MOVE response"
        if last != 0x0000:
            return f"C-MOVE status 0x{last:04X} ({failed} failed sub-operations)"
        return None
    finally:
        assoc.release()


def backfill(config: Config, since: str, until: str, *, source: str | None = None,
             max_per_hour: int | None = None, index: Index | None = None,
             store: SurveillanceStore | None = None, report: Callable[[str], None] = print,
             sleep: Callable[[float], None] = time.sleep) -> Progress:
    """Run one backfill; returns the counts.  Safe to interrupt and run again."""
    src = source_of(config, source)
    rate = max_per_hour or config.backfill.max_per_hour
    interval = 3600.0 / rate
    own_index, own_store = index is None, store is None
    idx = index if index is not None else Index.for_data_dir(config.node.data_dir, url=config.database.url)
    st = store if store is not None else SurveillanceStore.for_data_dir(config.node.data_dir, url=config.database.url)
    prog = Progress()
    try:
        found = find_studies(config, src, since, until)
        prog.found = len(found)
        new = st.backfill_found(found)
        log.info("backfill_found", source=src.name, studies=len(found), new=new, period_start=since,
                 period_end=until)
        items = st.backfill_items(since, until)
        report(f"backfill: {len(items)} CT studies from {src.name} between {since} and {until}; "
               f"at most {rate} per hour")
        last_start: float | None = None
        for item in items:
            if item.state == "retrieved":
                prog.skipped_done += 1
                continue
            if idx.has_study(item.study_uid) and not idx.is_backfilled(item.study_uid):
                st.backfill_done(item.study_uid, "retrieved", "already held by the node")
                prog.already_held += 1
                continue
            if last_start is not None:
                wait = last_start + interval - time.monotonic()
                if wait > 0:
                    sleep(wait)
            idx.mark_backfilled([item.study_uid])
            last_start = time.monotonic()
            prog.move_started.append(last_start)
            reason = move_study(config, src, item.study_uid)
            if reason is None:
                st.backfill_done(item.study_uid, "retrieved")
                prog.retrieved += 1
                log.info("backfill_retrieved", study_uid=item.study_uid, study_date=item.study_date)
            else:
                st.backfill_done(item.study_uid, "failed", reason)
                prog.failed += 1
                log.warning("backfill_failed", study_uid=item.study_uid, reason=reason)
            report(prog.line(len(items)))
        return prog
    finally:
        if own_store:
            st.close()
        if own_index:
            idx.close()
