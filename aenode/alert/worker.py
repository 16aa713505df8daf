"""The alert worker: recorded results -> alert decisions -> outbox rows.

``AlertWorker(config, index, outbox=..., store=...)`` with ``run(stop_event)``.  Each pass:

1. reads the results recorded since the last pass through ``Index.results_after`` (the
   index's result id is the cursor; the index records a result only once its SR/SC are
   durably written and enqueued, so an alert never precedes the report it is about);
2. per (study, model) takes the newest revision not decided on yet; records the built-in
   "dashboard" decision (alerting or not) and, per configured channel, applies
   :mod:`aenode.alert.rules` against the last alert on that channel;
3. commits the decisions (with their payloads) and the cursor in one transaction;
4. enqueues every outbox-channel alert not yet in the outbox (``kind`` = channel,
   ``object_id`` = the alert key; a repeat is a no-op) and wakes the delivery worker.

Delivery, retries, backoff, ``failed`` and ``aenode retry`` are the outbox's
(:mod:`aenode.deliver`); the senders are in :mod:`aenode.alert.senders`.  The contract is
at-least-once with a stable key per (study, revision, model, channel).
"""

from __future__ import annotations

import json
import threading
import time

from aenode.alert.base import alert_key
from aenode.alert.channels import configured_channels
from aenode.alert.payload import build_payload, phi_of, read_header
from aenode.alert.rules import ModelRules, action, channel_classes, decide, model_rules, result_category
from aenode.alert.senders import register_senders
from aenode.alert.store import DASHBOARD, AlertRow, AlertStore
from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.deliver.worker import notify
from aenode.logs import get_logger, phi_values
from aenode.store.index import Index, ResultRow

log = get_logger("aenode.alert")

DASHBOARD_SCHEMA = "aenode.alert.dashboard/v1"


def is_shadow(r: ResultRow) -> bool:
    """A result of a model in ``[models.NAME] mode = "shadow"`` (recorded by the analysis worker)."""
    return isinstance(r.detail, dict) and r.detail.get("mode") == "shadow"


class AlertWorker:
    def __init__(self, config: Config, index: Index, *, outbox: Outbox | None = None,
                 store: AlertStore | None = None, batch: int = 500):
        register_senders()
        self.config = config
        self.index = index
        self.batch = batch
        self._own_outbox = outbox is None
        self.outbox = outbox if outbox is not None else Outbox.for_config(config)
        self._own_store = store is None
        self.store = store if store is not None else AlertStore.for_data_dir(config.node.data_dir, url=config.database.url)
        self._lock = threading.Lock()
        self._full_batch = False  # the last pass read a whole batch: more may be waiting

    # ---- one pass --------------------------------------------------------------------

    def decide_new(self) -> int:
        """Steps 1-3; returns how many outbox-channel alerts were decided."""
        rows = self.index.results_after(self.store.cursor(), self.batch)
        self._full_batch = len(rows) >= self.batch
        if not rows:
            return 0
        newest: dict[tuple[str, str], ResultRow] = {}
        for r in rows:
            k = (r.study_uid, r.model)
            if k not in newest or (r.revision, r.id) >= (newest[k].revision, newest[k].id):
                newest[k] = r
        channels = list(configured_channels(self.config))
        seen: list[tuple[str, str, int]] = []
        decided: list[AlertRow] = []
        for (study_uid, model), r in newest.items():
            if r.revision <= self.store.seen_revision(study_uid, model):
                continue  # an older revision recorded late, or a replaced row
            seen.append((study_uid, model, r.revision))
            decided += self._decide_one(r, channels)
        self.store.commit_decisions(max(r.id for r in rows), seen, decided)
        sent = 0
        for a in decided:
            log.info("alert_decided", study_uid=a.study_uid, revision=a.revision, model=a.model,
                     channel=a.channel, category=a.category, update=a.is_update, alerting=a.alerting,
                     alert_id=a.key)
            sent += a.channel != DASHBOARD
        return sent

    def _dashboard(self, r: ResultRow, rules: ModelRules | None, now: float) -> AlertRow:
        """The decision the dashboard shows: every newest revision, alerting or not."""
        decision = None
        if rules is not None:
            decision = decide(rules, rules.alert_classes, result_category(r.category, r.detail), r.probabilities)
        # A shadow model's result is shown to admins but never alerts (issue 13: safe roll-out).
        alerting = bool(decision and decision.alerting) and not is_shadow(r)
        category = decision.category if decision is not None else (r.category or "none")
        prev = self.store.last_alert(r.study_uid, r.model, DASHBOARD)
        payload = {"schema": DASHBOARD_SCHEMA, "alerting": alerting, "category": category,
                   "probability": decision.probability if decision is not None else None,
                   "result_category": r.category}
        return AlertRow(alert_key(r.study_uid, r.revision, r.model, DASHBOARD), r.study_uid, r.revision,
                        r.model, DASHBOARD, category, alerting, prev is not None,
                        prev.category if prev is not None else None,
                        json.dumps(payload, sort_keys=True), now, False)

    def _decide_one(self, r: ResultRow, channels: list[str]) -> list[AlertRow]:
        study_uid, model, revision = r.study_uid, r.model, r.revision
        detail = r.detail if isinstance(r.detail, dict) else None
        now = time.time()
        rules = model_rules(self.config, model, detail)
        category = result_category(r.category, detail)  # "out-of-domain" when the gate fired
        if rules is None and r.category:
            log.error("alert_rules_unknown", model=model, study_uid=study_uid,
                      hint="no manifest for this model under [model] path; no alert decided")
        out = [self._dashboard(r, rules, now)]
        if rules is None or not channels or not category or is_shadow(r):
            return out
        if self.index.is_backfilled(study_uid):
            # A past study retrieved by ``aenode backfill`` for surveillance: the dashboard
            # shows its result, infection control is never alerted about it.
            log.info("alert_skipped", study_uid=study_uid, model=model, reason="backfilled")
            return out
        header: dict[str, str | None] | None = None
        for channel in channels:
            decision = decide(rules, channel_classes(self.config, channel, rules), category,
                              r.probabilities)
            if decision is None:
                continue
            prev = self.store.last_alert(study_uid, model, channel)
            prev_d = None if prev is None else {"alerting": prev.alerting, "category": prev.category}
            act = action(prev_d, decision)
            if act is None:
                continue
            _, update = act
            if header is None:
                header = read_header(self.index, study_uid, r.selected_series)
            key = alert_key(study_uid, revision, model, channel)
            previous = prev.category if (prev is not None and update) else None
            payload = build_payload(
                config=self.config, key=key, channel=channel, study_uid=study_uid, revision=revision,
                model=rules.model, model_version=rules.version or (detail or {}).get("version"),
                category=decision.category, category_code=rules.code(decision.category),
                probability=decision.probability, result_category=r.category,
                probabilities=r.probabilities, header=header, update=update, previous_category=previous,
                previous_category_code=rules.code(previous), alerting=decision.alerting, created=now)
            out.append(AlertRow(key, study_uid, revision, model, channel, decision.category,
                                decision.alerting, update, previous,
                                json.dumps(payload, sort_keys=True, ensure_ascii=False), now, False))
        return out

    def enqueue_pending(self) -> int:
        """Step 4; returns how many alerts were handed to the outbox."""
        n = 0
        for a in self.store.unqueued():
            with phi_values(phi_of(a.payload)):
                self.outbox.enqueue(a.channel, a.channel, a.key, a.payload_json, study_uid=a.study_uid)
            self.store.mark_enqueued(a.key)
            n += 1
        if n:
            notify()
        return n

    def run_once(self) -> int:
        with self._lock:
            decided = self.decide_new()
            self.enqueue_pending()
        return decided

    def run(self, stop_event: threading.Event) -> None:
        # The new-results query is one primary-key range scan: poll often, so an alert
        # leaves within ~0.25 s of the result even with a slow outbox poll.
        poll = min(self.config.delivery.poll_seconds, 0.25)
        log.info("alert_worker_started", channels=list(configured_channels(self.config)))
        try:
            while not stop_event.is_set():
                try:
                    self.run_once()
                    while self._full_batch and not stop_event.is_set():
                        self.run_once()
                except Exception:  # noqa: BLE001 - keep the worker alive (e.g. a locked DB)
                    log.exception("alert_loop_failed")
                stop_event.wait(poll)
        finally:
            self.close()
            log.info("alert_worker_stopped")

    def close(self) -> None:
        if self._own_store:
            self.store.close()
        if self._own_outbox:
            self.outbox.close()
