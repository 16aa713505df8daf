"""Alerts: the live alerts page and API (the alert stage's "dashboard" decisions) and
acknowledging an alert (infection control, radiologist; CSRF)."""

from __future__ import annotations

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from aenode.web.context import AckApi, AckPage, ViewerApi, ViewerPage, WebDep, require_api_csrf, require_form_csrf
from aenode.web.services import NOTE_MAX, AckRequest
from aenode.web.store import Acknowledgement

router = APIRouter()


class AckBody(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    note: str | None = Field(None, max_length=NOTE_MAX)
    category: str | None = None  # optional guard: the alert category the client saw
    revision: int | None = None


def _ack_json(uid: str, a: Acknowledgement) -> dict[str, object]:
    return {"study_uid": uid, "model": a.model, "category": a.category, "revision": a.revision,
            "user": a.user, "at": a.at, "note": a.note}


@router.get("/")
def root(p: ViewerPage) -> Response:
    return RedirectResponse("/alerts", status_code=303)


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, web: WebDep, p: ViewerPage, unacknowledged: bool = False) -> HTMLResponse:
    return web.render("alerts.html", request, p, alerts=web.data.alerts(unacknowledged=unacknowledged),
                      unacknowledged=unacknowledged)


@router.get("/api/alerts")
def api_alerts(web: WebDep, p: ViewerApi, unacknowledged: bool = False,
               limit: int = Query(200, ge=1, le=5000)) -> dict[str, object]:
    return {"alerts": web.data.alerts(unacknowledged=unacknowledged, limit=limit)}


@router.post("/studies/{uid}/acknowledge")
def ack_form(uid: str, web: WebDep, p: AckPage, model: str = Form(...), note: str = Form(""),
             category: str | None = Form(None), revision: int | None = Form(None),
             csrf_token: str = Form("")) -> Response:
    require_form_csrf(p, csrf_token)
    web.actions.acknowledge(uid, AckRequest(model, note[:NOTE_MAX] or None, category, revision), p)
    return RedirectResponse(f"/studies/{uid}?done=acknowledged", status_code=303)


@router.post("/api/studies/{uid}/acknowledge")
def api_ack(request: Request, uid: str, body: AckBody, web: WebDep, p: AckApi) -> dict[str, object]:
    require_api_csrf(request, p)
    a = web.actions.acknowledge(uid, AckRequest(body.model, body.note, body.category, body.revision), p)
    return _ack_json(uid, a)
