"""The surveillance worker: index results -> de-identified records -> EARS signals.

Each pass (like the alert worker):

1. reads results recorded since its cursor (``Index.results_after``) for the surveillance
   model (``[surveillance] model``, else ``[model] primary``);
2. reads the few header fields a record needs (study date, age, sex, scanner) from one
   stored instance, turns them into a record (age band, no identity) and commits the
   records with the cursor in one transaction;
3. recomputes the weekly EARS series over all records and records any new signal
   (keyed by site, model, week and method: exactly once per signal);
4. hands every signal not yet queued to the outbox, ``kind`` = alert channel, ``object_id``
   = the signal key (a repeat after a crash is a no-op), and queues the periodic FHIR
   report when ``[surveillance.submit]`` is due.
"""

from __future__ import annotations

import threading
import time

import pydicom

from aenode.alert.payload import dashboard_link
from aenode.alert.senders import register_senders
from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.deliver.worker import notify
from aenode.logs import get_logger
from aenode.store.index import Index, ResultRow
from aenode.surveil.records import HeaderFacts, SurveillanceRecord, build_record
from aenode.surveil.reports import fhir_measure_report_json
from aenode.surveil.store import SurveillanceStore
from aenode.surveil.submit import SUBMIT_KIND, register_submit_sender
from aenode.surveil.trends import signals_of, surge_series

log = get_logger("aenode.surveil")

_KEYWORDS = ("StudyDate", "PatientAge", "PatientSex", "PatientBirthDate", "Manufacturer", "ManufacturerModelName")


def read_facts(index: Index, study_uid: str, series_uid: str | None) -> HeaderFacts:
    """The record's header facts from one readable instance (analysed series first)."""
    rows = index.instances(study_uid)
    rows.sort(key=lambda r: (r.series_uid != series_uid, r.own_output))
    for row in rows:
        if row.path is None or row.own_output:
            continue
        try:
            ds = pydicom.dcmread(str(row.path), stop_before_pixels=True, specific_tags=list(_KEYWORDS))
        except Exception as exc:  # noqa: BLE001 - try the next instance
            log.warning("surveillance_header_unreadable", study_uid=study_uid, error=type(exc).__name__)
            continue
        return HeaderFacts.of({k: (str(ds.get(k)).strip() or None) if ds.get(k) is not None else None
                               for k in _KEYWORDS})
    log.warning("surveillance_header_missing", study_uid=study_uid)
    return HeaderFacts(None, None, "U", None)


def surveillance_model(config: Config) -> str:
    return config.surveillance.model or config.model.primary


class SurveillanceWorker:
    def __init__(self, config: Config, index: Index, *, outbox: Outbox | None = None,
                 store: SurveillanceStore | None = None, batch: int = 500):
        register_senders()  # the outbox can send the alert channels signals go to
        register_submit_sender()
        self.config = config
        self.index = index
        self.batch = batch
        self.model = surveillance_model(config)
        self._own_outbox = outbox is None
        self.outbox = outbox if outbox is not None else Outbox.for_config(config)
        self._own_store = store is None
        self.store = store if store is not None else SurveillanceStore.for_data_dir(config.node.data_dir, url=config.database.url)
        self._lock = threading.Lock()
        self._full_batch = False

    def _record(self, r: ResultRow, now: float) -> SurveillanceRecord:
        site = self.config.site
        return build_record(
            study_uid=r.study_uid, model=r.model, revision=r.revision, category=r.category,
            probabilities=r.probabilities, involvement=r.involvement,
            detail=r.detail if isinstance(r.detail, dict) else None,
            header=read_facts(self.index, r.study_uid, r.selected_series), site_name=site.name,
            postal_code=site.postal_code, prefecture=site.prefecture,
            backfilled=self.index.is_backfilled(r.study_uid), now=now)

    def record_new(self) -> int:
        """Steps 1-2; returns how many records were written."""
        rows = self.index.results_after(self.store.cursor(), self.batch)
        self._full_batch = len(rows) >= self.batch
        if not rows:
            return 0
        now = time.time()
        newest: dict[str, ResultRow] = {}
        for r in rows:
            if r.model != self.model:
                continue
            if r.study_uid not in newest or (r.revision, r.id) >= (newest[r.study_uid].revision,
                                                                    newest[r.study_uid].id):
                newest[r.study_uid] = r
        records = [self._record(r, now) for r in newest.values()]
        self.store.commit_records(max(r.id for r in rows), records)
        for r in newest.values():
            log.info("surveillance_recorded", study_uid=r.study_uid, model=r.model, revision=r.revision)
        return len(records)

    def detect(self) -> int:
        """Step 3; returns how many new signals were recorded."""
        s = self.config.surveillance
        site = self.config.site
        points = surge_series(self.store.records(model=self.model), s.surge_categories)
        link = dashboard_link(self.config, "x").rsplit("/studies/", 1)[0] + "/surveillance"
        new = self.store.add_signals(signals_of(
            points, method=s.method, min_count=s.min_count, model=self.model, surge=s.surge_categories,
            site_name=site.name, postal_code=site.postal_code, prefecture=site.prefecture,
            node=self.config.node.name, link=link, now=time.time()))
        for sig in new:
            log.warning("surveillance_signal", week=sig.week, method=sig.method, count=sig.count,
                        statistic=round(sig.statistic, 3), alert_id=sig.key)
        return len(new)

    def enqueue(self) -> int:
        """Step 4: signals to every configured alert channel named in
        ``[surveillance] alert_channels``; the periodic FHIR report when due."""
        configured = self.config.alerts.channels()
        channels = [c for c in self.config.surveillance.alert_channels if c in configured]
        n = 0
        for sig in self.store.unqueued_signals():
            for channel in channels:
                self.outbox.enqueue(channel, channel, sig.key, sig.payload_json)
                n += 1
            self.store.mark_signal_enqueued(sig.key)
        submit = self.config.surveillance.submit
        if submit is not None:
            now = time.time()
            last = self.store.last_submission()
            if last is None or now - last >= submit.interval_hours * 3600:
                until = time.strftime("%Y-%m-%d", time.localtime(now))
                since = time.strftime("%Y-%m-%d", time.localtime(now - (submit.period_days - 1) * 86400))
                body = fhir_measure_report_json(self.config, self.store.records(since, until, self.model),
                                                since, until, created=now)
                self.outbox.enqueue(SUBMIT_KIND, SUBMIT_KIND, f"measurereport-{since}-{until}-{int(now)}", body)
                self.store.note_submission(now)
                log.info("surveillance_report_queued", period_start=since, period_end=until)
                n += 1
        if n:
            notify()
        return n

    def run_once(self) -> int:
        with self._lock:
            written = self.record_new()
            if written:
                self.detect()
            self.enqueue()
        return written

    def run(self, stop_event: threading.Event) -> None:
        log.info("surveillance_worker_started", model=self.model)
        try:
            self.detect()  # signals of records kept from before a restart
            while not stop_event.is_set():
                try:
                    self.run_once()
                    while self._full_batch and not stop_event.is_set():
                        self.run_once()
                except Exception:  # noqa: BLE001 - keep the worker alive (e.g. a locked DB)
                    log.exception("surveillance_loop_failed")
                stop_event.wait(max(self.config.delivery.poll_seconds, 0.5))
        finally:
            self.close()
            log.info("surveillance_worker_stopped")

    def close(self) -> None:
        if self._own_store:
            self.store.close()
        if self._own_outbox:
            self.outbox.close()
