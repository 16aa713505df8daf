"""What the dashboard's actions do, apart from HTTP: acknowledging an alert, confirming or
correcting a result (and re-issuing a verified SR).  Routes parse and authorise; these
functions check the request against the stores and record it.  They raise
:class:`ActionError` subclasses, which the application maps to HTTP statuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from aenode.config import Config
from aenode.logs import get_logger
from aenode.surveil.store import SurveillanceStore
from aenode.web.auth import Principal
from aenode.web.data import NodeData, valid_uid
from aenode.web.store import INFECTION_STATUSES, Acknowledgement, Confirmation, WebStore
from aenode.web.verify import reissue_verified_sr

log = get_logger("aenode.web")

NOTE_MAX = 1000


class ActionError(Exception):
    status = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class NotFound(ActionError):
    status = 404


class Conflict(ActionError):
    status = 409


class Invalid(ActionError):
    status = 422


def check_uid(uid: str) -> str:
    if not valid_uid(uid):
        raise NotFound("no such study")
    return uid


@dataclass(frozen=True)
class AckRequest:
    model: str
    note: str | None = None
    category: str | None = None  # optional guard: the alert category the client saw
    revision: int | None = None  # optional guard: the result revision the client saw


@dataclass(frozen=True)
class ConfirmRequest:
    model: str
    category: str
    infection_status: str
    radiologist_id: str
    note: str | None = None


@dataclass(frozen=True)
class Confirmed:
    confirmation: Confirmation
    verified_sr: str | None  # relative to data_dir, when a verified SR was issued


class Actions:
    """The dashboard's write actions against the node's data."""

    def __init__(self, config: Config, data: NodeData, store: WebStore,
                 surveillance: SurveillanceStore | None = None):
        self.config = config
        self.data = data
        self.store = store
        self.surveillance = surveillance

    def acknowledge(self, uid: str, req: AckRequest, who: Principal) -> Acknowledgement:
        """Acknowledge the alert the alert stage currently shows for (study, model)."""
        check_uid(uid)
        alert = self.data.current_alert(uid, req.model)
        if alert is None:
            raise NotFound("no alert for this study and model")
        if (req.category is not None and req.category != alert.category) or \
                (req.revision is not None and req.revision != alert.revision):
            raise Conflict("the alert changed since it was shown; reload")
        ack = self.store.acknowledge(uid, req.model, alert.category, alert.revision, who.name, who.role,
                                     req.note or None)
        log.info("alert_acknowledged", study_uid=uid, model=req.model, category=alert.category,
                 revision=alert.revision, user=who.name)
        return ack

    def confirm(self, uid: str, req: ConfirmRequest, who: Principal) -> Confirmed:
        """Record a radiologist's confirmation or correction of the newest result; when it
        agrees and ``[web] reissue_verified_sr`` is on, issue the verified SR."""
        check_uid(uid)
        r = self.data.result_row(uid, req.model)
        if r is None:
            raise NotFound("no result for this study and model")
        rules = self.data.rules(r)
        classes = list(rules.classes) if rules else list((r.probabilities or {}).keys())
        if req.category not in classes:
            raise Invalid(f"category: must be one of {', '.join(classes)}")
        if req.infection_status not in INFECTION_STATUSES:
            raise Invalid(f"infection_status: must be one of {', '.join(INFECTION_STATUSES)}")
        radiologist_id = req.radiologist_id.strip()
        if not radiologist_id or len(radiologist_id) > 64:
            raise Invalid("radiologist ID: required, at most 64 characters")
        c = self.store.confirm(study_uid=uid, model=req.model, revision=r.revision, ai_category=r.category,
                               category=req.category, infection_status=req.infection_status,
                               radiologist_id=radiologist_id, user=who.name, role=who.role,
                               note=req.note or None)
        log.info("result_confirmed" if c.agrees else "result_corrected", study_uid=uid, model=req.model,
                 revision=r.revision, user=who.name)
        if self.surveillance is not None:
            try:  # the surveillance record follows the confirmation (aenode.surveil)
                self.surveillance.record_confirmation(uid, req.model, c.category, c.infection_status,
                                                      c.radiologist_id, at=c.at)
            except Exception:  # noqa: BLE001 - the confirmation itself is stored; log and go on
                log.exception("surveillance_confirmation_failed", study_uid=uid, model=req.model)
        verified = None
        if self.config.web.reissue_verified_sr and c.agrees:
            try:
                path = reissue_verified_sr(self.config, self.data.result_dir(uid, req.model, r.revision), uid,
                                           outbox=self.data.outbox_store,
                                           radiologist_id=c.radiologist_id, user=who.name, confirmation_id=c.id,
                                           at=c.at)
            except FileNotFoundError:
                log.warning("verified_sr_skipped", study_uid=uid, reason="no_sr_for_result")
            else:
                self.store.set_verified_sr(c.id, str(path), who.name, who.role, uid)
                verified = str(path.relative_to(self.config.node.data_dir))
        return Confirmed(c, verified)
