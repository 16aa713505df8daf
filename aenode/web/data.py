"""Read models of the dashboard and API: alerts, studies, results, delivery state.

Reads the other stages only through their stores' typed methods (the index, the alert
store, the outbox) and the dashboard's own :class:`~aenode.web.store.WebStore`; writes
nothing.  Dashboard alerts are the alert stage's decisions on its built-in ``"dashboard"``
channel (:meth:`AlertStore.current_alerts`), so the dashboard never decides "is this
alerting?" again; each alert also shows the state of every configured channel.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Generic, TypeVar

from aenode.alert.payload import read_header
from aenode.alert.rules import ModelRules, model_rules
from aenode.alert.status import alert_status
from aenode.alert.store import AlertRow, AlertStore
from aenode.alert.worker import is_shadow as _is_shadow
from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.logs import get_logger
from aenode.report.preview import sc_png_bytes
from aenode.report.publish import results_path
from aenode.store.index import Index, ResultRow
from aenode.store.uids import is_valid_uid
from aenode.web.store import Acknowledgement, Confirmation, WebStore

log = get_logger("aenode.web")

JSON = dict[str, object]
V = TypeVar("V")


class _LRU(Generic[V]):
    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return None

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


def valid_uid(uid: str) -> bool:
    """A UID that may reach a path or a query (the project's one validator, no padding)."""
    return uid == uid.strip("\x00 ") and is_valid_uid(uid)


def _ack_json(ack: Acknowledgement | None) -> JSON | None:
    if ack is None:
        return None
    return {"user": ack.user, "at": ack.at, "note": ack.note, "revision": ack.revision}


class NodeData:
    """Query helper bound to one configuration and the node's stores; thread-safe."""

    def __init__(self, config: Config, index: Index, alerts: AlertStore, outbox: Outbox, store: WebStore):
        self.config = config
        self.index = index
        self.alerts_store = alerts
        self.outbox_store = outbox
        self.store = store
        self.data_dir = Path(config.node.data_dir)
        self._headers: _LRU[dict[str, str | None]] = _LRU(2048)
        self._png: _LRU[bytes] = _LRU(32)

    # ---- helpers ---------------------------------------------------------------------

    def header(self, study_uid: str, series_uid: str | None = None) -> dict[str, str | None]:
        """Patient ID, accession, study date (name/birth date only when alerts include them)."""
        got = self._headers.get(study_uid)
        if got is None:
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

    def rules(self, r: ResultRow) -> ModelRules | None:
        """The result's model rules: its classes and their codes (display, validation)."""
        return model_rules(self.config, r.model, r.detail)

    def _acks(self) -> dict[tuple[str, str, str], Acknowledgement]:
        """Every acknowledgement by (study, model, category), newest winning (one query)."""
        return {(a.study_uid, a.model, a.category): a for a in self.store.acknowledgements()}

    @staticmethod
    def _alert_json(a: AlertRow, ack: Acknowledgement | None) -> JSON:
        payload = a.payload
        code = payload.get("category_code") or {}
        return {"category": a.category, "probability": payload.get("probability"),
                "category_meaning": code.get("meaning") if isinstance(code, dict) else None,
                "result_category": payload.get("result_category"), "acknowledged": _ack_json(ack)}

    # ---- alerts ----------------------------------------------------------------------

    def alerts(self, *, unacknowledged: bool = False, limit: int = 200, patient: bool = True) -> list[JSON]:
        out: list[JSON] = []
        acks = self._acks()
        for a in self.alerts_store.current_alerts(limit=100000 if unacknowledged else limit):
            item: JSON = {"study_uid": a.study_uid, "revision": a.revision, "model": a.model,
                          "created": a.created,
                          **self._alert_json(a, acks.get((a.study_uid, a.model, a.category)))}
            if unacknowledged and item["acknowledged"] is not None:
                continue
            if patient:
                item["patient"] = self.header(a.study_uid)
            out.append(item)
            if len(out) >= limit:
                break
        return out

    def current_alert(self, study_uid: str, model: str) -> AlertRow | None:
        """The alert stage's current dashboard decision for (study, model) if it alerts."""
        a = self.alerts_store.current_alert(study_uid, model)
        return a if a is not None and a.alerting else None

    # ---- studies ---------------------------------------------------------------------

    def studies(self, limit: int = 500) -> list[JSON]:
        rows = self.index.studies()[-limit:]
        latest: dict[str, list[ResultRow]] = {}
        for r in self.index.latest_results(limit=100000):
            latest.setdefault(r.study_uid, []).append(r)
        out: list[JSON] = []
        for s in reversed(rows):
            results = [r for r in latest.get(s.study_uid, []) if not _is_shadow(r)]
            out.append({
                "study_uid": s.study_uid, "state": s.state, "revision": s.revision,
                "instances": s.instance_count, "first_arrival": s.first_arrival,
                "last_arrival": s.last_arrival, "reason": s.reason,
                "results": [{"model": r.model, "revision": r.revision, "category": r.category} for r in results],
            })
        return out

    def result_dir(self, study_uid: str, model: str, revision: int) -> Path:
        return results_path(self.data_dir, study_uid, model, revision)

    def result_row(self, study_uid: str, model: str) -> ResultRow | None:
        rows = [r for r in self.index.results(study_uid) if r.model == model]
        return rows[-1] if rows else None

    def study(self, study_uid: str, *, patient: bool = True, shadow: bool = False) -> JSON | None:
        """One study's page data; ``shadow``: add the shadow models' results with their
        agreement figures (admins only: they are never shown as results)."""
        s = self.index.study(study_uid)
        if s is None:
            return None
        everything = self.index.results(study_uid)
        results = [r for r in everything if not _is_shadow(r)]
        newest: dict[str, ResultRow] = {}
        for r in results:
            newest[r.model] = r  # ordered by revision
        series = self.index.series(study_uid)
        confirmations = self.store.confirmations(study_uid)
        current: list[JSON] = []
        for model, r in sorted(newest.items()):
            rules = self.rules(r)
            decision = self.current_alert(study_uid, model)
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
                "has_seg": (rdir / "seg.dcm").is_file(),
                # "out-of-domain": the domain gate fired, no category (reason with the measured values)
                "state": (r.detail or {}).get("state", "analysed"),
                "domain": (r.detail or {}).get("domain"),
                "alert": None if decision is None else self._alert_json(
                    decision, self.store.acknowledgement(study_uid, model, decision.category)),
                "confirmation": next(({"category": c.category, "agrees": c.agrees, "user": c.user, "at": c.at,
                                       "infection_status": c.infection_status, "radiologist_id": c.radiologist_id,
                                       "revision": c.revision}
                                      for c in reversed(confirmations) if c.model == model), None),
            })
        delivery = {name: {k: v for k, v in d.items() if k != "ids"}  # row ids are for `aenode retry`
                    for name, d in self.outbox_store.summary_for_study(study_uid).items()}
        channels = alert_status(self.data_dir, study_uid, outbox=self.outbox_store, url=self.config.database.url)
        channels.pop("dashboard", None)  # the dashboard's own "channel" is shown as the alert itself
        selected = [r.selected_series for r in newest.values() if r.selected_series]
        out: JSON = {
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
            "alert_channels": channels,
            "acknowledgements": [a.__dict__ for a in self.store.acknowledgements(study_uid)],
            "confirmations": [c.__dict__ for c in confirmations],
        }
        out["shadow"] = self._shadow_results(everything, newest, confirmations) if shadow else []
        if patient:
            out["patient"] = self.header(study_uid, selected[0] if selected else None)
        return out

    # ---- shadow models (issue 13: safe roll-out) ----------------------------------------

    def _shadow_results(self, everything: list[ResultRow], active: dict[str, ResultRow],
                        confirmations: list[Confirmation]) -> list[JSON]:
        newest: dict[str, ResultRow] = {}
        for r in everything:
            if _is_shadow(r):
                newest[r.model] = r
        primary = active.get(self.config.model.primary)
        truth = confirmations[-1].category if confirmations else None
        return [{"model": m, "revision": r.revision, "version": (r.detail or {}).get("version"),
                 "category": r.category, "probabilities": r.probabilities, "created": r.created,
                 "active_model": primary.model if primary else None,
                 "active_category": primary.category if primary else None,
                 "radiologist_category": truth, "agreement": self.shadow_agreement(m)}
                for m, r in sorted(newest.items())]

    def shadow_agreement(self, model: str) -> JSON:
        """How often shadow ``model`` agrees with the radiologists' confirmations and with the
        primary (active) model, overall and per month of the result."""
        latest = self.index.latest_results(limit=1_000_000)
        shadow = {r.study_uid: r for r in latest if r.model == model}
        primary = {r.study_uid: r for r in latest if r.model == self.config.model.primary and not _is_shadow(r)}
        truth: dict[str, str] = {}
        for c in self.store.confirmations():
            truth[c.study_uid] = c.category   # ordered by time: the newest wins
        months: dict[str, dict[str, int]] = {}
        totals = {"radiologist_n": 0, "radiologist_agree": 0, "active_n": 0, "active_agree": 0}
        for uid, r in shadow.items():
            month = time.strftime("%Y-%m", time.localtime(r.created))
            m = months.setdefault(month, dict.fromkeys(totals, 0))
            for key, other in (("radiologist", truth.get(uid)),
                               ("active", primary[uid].category if uid in primary else None)):
                if other is None:
                    continue
                for bucket in (m, totals):
                    bucket[f"{key}_n"] += 1
                    bucket[f"{key}_agree"] += int(r.category == other)
        return {**totals, "by_month": dict(sorted(months.items()))}

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

    def outbox(self) -> JSON:
        rows = self.outbox_store.rows()
        counts = self.outbox_store.counts()
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
