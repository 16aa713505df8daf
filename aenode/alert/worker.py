"""The alert worker: recorded results -> alert decisions -> outbox rows.

Pipeline factory: ``AlertWorker(config, index)`` with ``run(stop_event)``.  Each pass:

1. reads the index's ``results`` rows added since the last pass (``results.id`` cursor);
2. per (study, model) takes the newest revision not decided on yet and, per configured
   channel, applies :mod:`aenode.alert.rules` against the last alert on that channel;
3. commits the decisions (with their payloads) and the cursor in one transaction;
4. enqueues every alert not yet in the outbox (``kind`` = channel, ``object_id`` = the
   alert key; a repeat is a no-op) and wakes the delivery worker.

Delivery, retries, backoff, ``failed`` and ``aenode retry`` are the outbox's
(:mod:`aenode.deliver`); the senders are in :mod:`aenode.alert.senders`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import aenode.alert.senders  # noqa: F401 - registers the alert kinds with the outbox
from aenode.alert.base import CHANNELS, alert_key
from aenode.alert.payload import build_payload, phi_of, read_header
from aenode.alert.rules import action, channel_classes, decide, model_rules
from aenode.alert.store import AlertRow, AlertStore
from aenode.config import Config
from aenode.logs import get_logger, phi_values

log = get_logger("aenode.alert")


def configured_channels(config: Config) -> list[str]:
    return [c for c in CHANNELS if getattr(config.alerts, c) is not None]


class AlertWorker:
    def __init__(self, config: Config, index: Any, *, outbox: Any | None = None,
                 store: AlertStore | None = None, batch: int = 500):
        self.config = config
        self.index = index
        self.batch = batch
        self._own_outbox = outbox is None
        if outbox is None:
            from aenode.deliver.outbox import Outbox

            outbox = Outbox.for_config(config)
        self.outbox = outbox
        self._own_store = store is None
        self.store = store or AlertStore.for_data_dir(config.node.data_dir)
        self._results_db = sqlite3.connect(f"file:{index.db_path}?mode=ro", uri=True, timeout=30.0,
                                           check_same_thread=False)
        self._results_db.execute("PRAGMA busy_timeout=30000")
        self._lock = threading.Lock()

    # ---- one pass --------------------------------------------------------------------

    def _new_results(self, after: int) -> list[tuple]:
        return self._results_db.execute(
            "SELECT id, study_uid, revision, model, category, probabilities_json, selected_series,"
            " detail_json FROM results WHERE id > ? ORDER BY id LIMIT ?", (after, self.batch)).fetchall()

    def decide_new(self) -> int:
        """Steps 1-3; returns how many alerts were decided."""
        rows = self._new_results(self.store.cursor())
        if not rows:
            return 0
        newest: dict[tuple[str, str], tuple] = {}
        for r in rows:
            k = (r[1], r[3])
            if k not in newest or (r[2], r[0]) >= (newest[k][2], newest[k][0]):
                newest[k] = r
        channels = configured_channels(self.config)
        seen: list[tuple[str, str, int]] = []
        decided: list[AlertRow] = []
        for (study_uid, model), r in newest.items():
            revision = int(r[2])
            if revision <= self.store.seen_revision(study_uid, model):
                continue  # an older revision recorded late, or a replaced row
            seen.append((study_uid, model, revision))
            decided += self._decide_one(study_uid, model, revision, r, channels)
        self.store.commit_decisions(max(r[0] for r in rows), seen, decided)
        for a in decided:
            log.info("alert_decided", study_uid=a.study_uid, revision=a.revision, model=a.model,
                     channel=a.channel, category=a.category, update=a.is_update, alerting=a.alerting,
                     alert_id=a.key)
        return len(decided)

    def _decide_one(self, study_uid: str, model: str, revision: int, r: tuple,
                    channels: list[str]) -> list[AlertRow]:
        category = r[4]
        probabilities = json.loads(r[5]) if r[5] else None
        detail = json.loads(r[7]) if r[7] else None
        if not channels or not category:
            return []
        rules = model_rules(self.config, model, detail if isinstance(detail, dict) else None)
        if rules is None:
            log.error("alert_rules_unknown", model=model, study_uid=study_uid,
                      hint="no manifest for this model under [model] path; no alert decided")
            return []
        out: list[AlertRow] = []
        header: dict[str, Any] | None = None
        now = time.time()
        for channel in channels:
            decision = decide(rules, channel_classes(self.config, channel, rules), category, probabilities)
            if decision is None:
                continue
            prev = self.store.last_alert(study_uid, model, channel)
            prev_d = None if prev is None else {"alerting": prev.alerting, "category": prev.category}
            act = action(prev_d, decision)
            if act is None:
                continue
            _, update = act
            if header is None:
                header = read_header(self.index, study_uid, r[6])
            key = alert_key(study_uid, revision, model, channel)
            previous = prev.category if (prev is not None and update) else None
            payload = build_payload(
                config=self.config, key=key, channel=channel, study_uid=study_uid, revision=revision,
                model=rules.model, model_version=rules.version or (detail or {}).get("version"),
                category=decision.category, category_code=rules.code(decision.category),
                probability=decision.probability, result_category=category, probabilities=probabilities,
                header=header, update=update, previous_category=previous,
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
            try:
                from aenode.deliver.worker import notify

                notify()
            except ImportError:  # pragma: no cover - outbox without in-process wake-up
                pass
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
        log.info("alert worker started", channels=configured_channels(self.config))
        try:
            while not stop_event.is_set():
                try:
                    while self.run_once() and not stop_event.is_set():
                        pass
                except Exception:  # noqa: BLE001 - keep the worker alive (e.g. a locked DB)
                    log.exception("alert loop error")
                stop_event.wait(poll)
        finally:
            self.close()
            log.info("alert worker stopped")

    def close(self) -> None:
        self._results_db.close()
        if self._own_store:
            self.store.close()
        if self._own_outbox:
            self.outbox.close()
