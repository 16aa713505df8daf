"""Studies: list and study pages and API, all result revisions, and a radiologist's
confirmation or correction (CSRF; may re-issue a verified SR)."""

from __future__ import annotations

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from aenode.web.auth import CAN_AUDIT
from aenode.web.context import (
    ConfirmApi,
    ConfirmPage,
    ViewerApi,
    ViewerPage,
    WebDep,
    require_api_csrf,
    require_form_csrf,
)
from aenode.web.services import NOTE_MAX, Confirmed, ConfirmRequest, check_uid
from aenode.web.store import INFECTION_STATUSES

router = APIRouter()


class ConfirmBody(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    category: str = Field(min_length=1, max_length=64)
    infection_status: str
    radiologist_id: str = Field(min_length=1, max_length=64)
    note: str | None = Field(None, max_length=NOTE_MAX)


def _confirmed_json(uid: str, got: Confirmed) -> dict[str, object]:
    c = got.confirmation
    return {"id": c.id, "study_uid": uid, "model": c.model, "revision": c.revision,
            "ai_category": c.ai_category, "category": c.category, "agrees": c.agrees,
            "infection_status": c.infection_status, "radiologist_id": c.radiologist_id,
            "user": c.user, "at": c.at, "verified_sr": got.verified_sr}


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request, web: WebDep, p: ViewerPage) -> HTMLResponse:
    return web.render("studies.html", request, p, studies=web.data.studies())


@router.get("/studies/{uid}", response_class=HTMLResponse)
def study_page(request: Request, uid: str, web: WebDep, p: ViewerPage) -> HTMLResponse:
    study = web.data.study(check_uid(uid), shadow=p.can(CAN_AUDIT))   # shadow models: admins only
    if study is None:
        raise HTTPException(404, "no such study")
    return web.render("study.html", request, p, s=study, statuses=INFECTION_STATUSES,
                      flash=request.query_params.get("done"))


@router.get("/api/studies")
def api_studies(web: WebDep, p: ViewerApi, limit: int = Query(500, ge=1, le=100000)) -> dict[str, object]:
    return {"studies": web.data.studies(limit=limit)}


@router.get("/api/studies/{uid}")
def api_study(uid: str, web: WebDep, p: ViewerApi) -> dict[str, object]:
    s = web.data.study(check_uid(uid))
    if s is None:
        raise HTTPException(404, "no such study")
    return s


@router.get("/api/studies/{uid}/results")
def api_results(uid: str, web: WebDep, p: ViewerApi) -> dict[str, object]:
    s = web.data.study(check_uid(uid), patient=False)
    if s is None:
        raise HTTPException(404, "no such study")
    return {"study_uid": uid, "current": s["results"], "history": s["history"]}


@router.post("/studies/{uid}/confirm")
def confirm_form(uid: str, web: WebDep, p: ConfirmPage, model: str = Form(...), category: str = Form(...),
                 infection_status: str = Form(...), radiologist_id: str = Form(...), note: str = Form(""),
                 csrf_token: str = Form("")) -> Response:
    require_form_csrf(p, csrf_token)
    web.actions.confirm(uid, ConfirmRequest(model, category, infection_status, radiologist_id,
                                            note[:NOTE_MAX] or None), p)
    return RedirectResponse(f"/studies/{uid}?done=confirmed", status_code=303)


@router.post("/api/studies/{uid}/confirm")
def api_confirm(request: Request, uid: str, body: ConfirmBody, web: WebDep, p: ConfirmApi) -> dict[str, object]:
    require_api_csrf(request, p)
    got = web.actions.confirm(uid, ConfirmRequest(body.model, body.category, body.infection_status,
                                                  body.radiologist_id, body.note), p)
    return _confirmed_json(uid, got)
