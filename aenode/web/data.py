"""Read models of the dashboard and API: alerts, studies, results, delivery state.

Reads the node's databases (index, alerts, outbox) and the dashboard's own store; writes
nothing but through :class:`aenode.web.store.WebStore`.  Dashboard alerts are derived
from the newest result revision of each (study, model) with the model manifest's alert
rules (:mod:`aenode.alert.rules`), so they exist even when no alert channel is
configured; each alert also shows the state of every configured channel.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aenode.config import Config
from aenode.logs import get_logger
from aenode.report.preview import sc_png_bytes
from aenode.report.publish import results_path

log = get_logger("aenode.web")

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and bool(UID_RE.match(uid))


class _LRU:
    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


class NodeData:
    """Query helper bound to one configuration; thread-safe."""

    def __init__(self, config: Config, index: Any, store: Any):
        self.config = config
        self.index = index
        self.store = store
        self.data_dir = Path(config.node.data_dir)
        self._headers = _LRU(2048)
        self._png = _LRU(32)

    # ---- helpers ---------------------------------------------------------------------

    def _latest_results(self, limit: int = 500) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.index.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(
                "SELECT r.id, r.study_uid, r.revision, r.model, r.category, r.probabilities_json,"
                " r.selected_series, r.involvement, r.detail_json, r.created FROM results r"
                " JOIN (SELECT study_uid, model, MAX(revision) AS rev FROM results GROUP BY study_uid, model) m"
                " ON r.study_uid=m.study_uid AND r.model=m.model AND r.revision=m.rev"
                " ORDER BY r.created DESC, r.id DESC LIMIT ?", (limit,)).fetchall()
        finally:
            db.close()

    def header(self, study_uid: str, series_uid: str | None = None) -> dict[str, str | None]:
        """Patient ID, accession, study date (name/birth date only when alerts include them)."""
        got = self._headers.get(study_uid)
        if got is None:
            from aenode.alert.payload import read_header

            h = read_header(self.index, study_uid, series_uid)
            got = {"patient_id": h.get("PatientID"), "accession_number": h.get("AccessionNumber"),
                   "study_date": h.get("StudyDate"), "study_time": h.get("StudyTime")}
            if self.config.alerts.include_patient_name:
                got["patient_name"] = h.get("PatientName")
            if self.config.alerts.include_birth_date:
                got["birth_date"] = h.get("PatientBirthDate")
            if any(v for k, v in got.items() if k != "study_time"):
                self._headers.put(study_uid, got)
        return got

    def _decision(self, model: str, category: str | None, probs: dict | None, detail: dict | None):
        from aenode.alert.rules import decide, model_rules

        rules = model_rules(self.config, model, detail)
        if rules is None or not category:
            return None, None
        return decide(rules, rules.alert_classes, category, probs), rules

    def _acks(self) -> dict[tuple[str, str, str], Any]:
        out: dict[tuple[str, str, str], Any] = {}
        for a in self.store.acknowledgements():
            out[(a.study_uid, a.model, a.category)] = a  # newest wins (ordered by time)
        return out

    # ---- alerts ----------------------------------------------------------------------

    def alerts(self, *, unacknowledged: bool = False, limit: int = 200, patient: bool = True) -> list[dict]:
        acks = self._acks()
        out = []
        for r in self._latest_results(limit=5000):
            probs = json.loads(r[5]) if r[5] else None
            detail = json.loads(r[8]) if r[8] else None
            decision, rules = self._decision(r[3], r[4], probs, detail)
            if decision is None or not decision.alerting:
                continue
            ack = acks.get((r[1], r[3], decision.category))
            if unacknowledged and ack is not None:
                continue
            code = rules.code(decision.category) if rules else None
            item = {
                "study_uid": r[1], "revision": r[2], "model": r[3], "category": decision.category,
                "category_meaning": (code or {}).get("meaning"), "probability": decision.probability,
                "result_category": r[4], "created": r[9],
                "acknowledged": None if ack is None else {
                    "user": ack.user, "at": ack.at, "note": ack.note, "revision": ack.revision},
            }
            if patient:
                item["patient"] = self.header(r[1], r[6])
            out.append(item)
            if len(out) >= limit:
                break
        return out

    def current_alert(self, study_uid: str, model: str) -> dict | None:
        for a in self.alerts(limit=100000, patient=False):
            if a["study_uid"] == study_uid and a["model"] == model:
                return a
        return None

    # ---- studies ---------------------------------------------------------------------

    def studies(self, limit: int = 500) -> list[dict]:
        rows = self.index.studies()[-limit:]
        latest: dict[str, list[tuple]] = {}
        for r in self._latest_results(limit=100000):
            latest.setdefault(r[1], []).append(r)
        out = []
        for s in reversed(rows):
            results = latest.get(s.study_uid, [])
            out.append({
                "study_uid": s.study_uid, "state": s.state, "revision": s.revision,
                "instances": s.instance_count, "first_arrival": s.first_arrival,
                "last_arrival": s.last_arrival, "reason": s.reason,
                "results": [{"model": r[3], "revision": r[2], "category": r[4]} for r in results],
            })
        return out

    def result_dir(self, study_uid: str, model: str, revision: int) -> Path:
        return results_path(self.data_dir, study_uid, model, revision)

    def study(self, study_uid: str, *, patient: bool = True) -> dict | None:
        s = self.index.study(study_uid)
        if s is None:
            return None
        results = self.index.results(study_uid)
        newest: dict[str, Any] = {}
        for r in results:
            newest[r.model] = r  # ordered by revision
        series = self.index.series(study_uid)
        acks = self._acks()
        confirmations = self.store.confirmations(study_uid)
        current = []
        for model, r in newest.items():
            decision, rules = self._decision(model, r.category, r.probabilities, r.detail)
            alert = None
            if decision is not None and decision.alerting:
                ack = acks.get((study_uid, model, decision.category))
                alert = {"category": decision.category, "probability": decision.probability,
                         "acknowledged": None if ack is None else {
                             "user": ack.user, "at": ack.at, "note": ack.note, "revision": ack.revision}}
            rdir = self.result_dir(study_uid, model, r.revision)
            classes = list(rules.classes) if rules else sorted((r.probabilities or {}).keys())
            current.append({
                "model": model, "revision": r.revision, "category": r.category,
                "category_meaning": ((rules.code(r.category) if rules else None) or {}).get("meaning"),
                "classes": classes,
                "probabilities": r.probabilities, "involvement": r.involvement,
                "selected_series": r.selected_series, "created": r.created,
                "version": (r.detail or {}).get("version"),
                "has_sc": (rdir / "sc.dcm").is_file(), "has_sr": (rdir / "sr.dcm").is_file(),
                "alert": alert,
                "confirmation": next(({"category": c.category, "agrees": c.agrees, "user": c.user, "at": c.at,
                                       "infection_status": c.infection_status, "radiologist_id": c.radiologist_id,
                                       "revision": c.revision}
                                      for c in reversed(confirmations) if c.model == model), None),
            })
        current.sort(key=lambda r: r["model"])
        from aenode.alert.status import alert_status
        from aenode.deliver.outbox import Outbox

        box = Outbox.for_config(self.config)
        try:
            delivery = box.summary_for_study(study_uid)
            alerts = alert_status(self.data_dir, study_uid, outbox=box)
        finally:
            box.close()
        for d in delivery.values():
            d.pop("ids", None)
        selected = {r["selected_series"] for r in current}
        out = {
            "study_uid": s.study_uid, "state": s.state, "revision": s.revision, "instances": s.instance_count,
            "first_arrival": s.first_arrival, "last_arrival": s.last_arrival, "reason": s.reason,
            "series": [{"series_uid": x.series_uid, "modality": x.modality, "number": x.series_number,
                        "description": x.series_description, "instances": x.instance_count,
                        "own_output": x.own_output, "analysed": x.series_uid in selected} for x in series],
            "results": current,
            "history": [{"model": r.model, "revision": r.revision, "category": r.category,
                         "probabilities": r.probabilities, "involvement": r.involvement,
                         "selected_series": r.selected_series, "created": r.created} for r in results],
            "delivery": delivery,
            "alert_channels": alerts,
            "acknowledgements": [a.__dict__ for a in self.store.acknowledgements(study_uid)],
            "confirmations": [c.__dict__ for c in confirmations],
        }
        if patient:
            out["patient"] = self.header(study_uid, next(iter(selected), None))
        return out

    def result_row(self, study_uid: str, model: str) -> Any | None:
        rows = [r for r in self.index.results(study_uid) if r.model == model]
        return rows[-1] if rows else None

    # ---- images ----------------------------------------------------------------------

    def sc_png(self, study_uid: str, model: str, revision: int) -> bytes | None:
        path = self.result_dir(study_uid, model, revision) / "sc.dcm"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        key = (str(path), mtime)
        got = self._png.get(key)
        if got is not None:
            return got
        data = sc_png_bytes(path)
        self._png.put(key, data)
        return data

    # ---- outbox ----------------------------------------------------------------------

    def outbox(self) -> dict[str, Any]:
        from aenode.deliver.outbox import Outbox

        box = Outbox.for_config(self.config)
        try:
            rows = box.rows()
            counts = box.counts()
        finally:
            box.close()
        per: dict[tuple[str, str], dict[str, int]] = {}
        for r in rows:
            d = per.setdefault((r.kind, r.destination), {})
            d[r.state] = d.get(r.state, 0) + 1
        problems = [{"id": r.id, "kind": r.kind, "destination": r.destination, "study_uid": r.study_uid,
                     "state": r.state, "attempts": r.attempts, "last_error": r.last_error,
                     "next_attempt_at": r.next_attempt_at}
                    for r in rows if r.state in ("failed", "pending") and r.attempts > 0]
        return {"counts": counts,
                "destinations": [{"kind": k, "destination": d, "counts": c} for (k, d), c in sorted(per.items())],
                "problems": problems[-200:]}
