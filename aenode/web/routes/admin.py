"""Administration: the audit log (infection control, radiologist) and the delivery outbox
(any role; no payloads)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from aenode.web.context import AuditApi, AuditPage, ViewerApi, WebDep

router = APIRouter()


@router.get("/audit", response_class=HTMLResponse)
def audit_view(request: Request, web: WebDep, p: AuditPage) -> HTMLResponse:
    return web.render("audit.html", request, p, entries=[e.as_dict() for e in web.store.audit_log()])


@router.get("/api/audit")
def api_audit(web: WebDep, p: AuditApi, limit: int = Query(500, ge=1, le=10000)) -> dict[str, object]:
    return {"audit": [e.as_dict() for e in web.store.audit_log(limit)]}


@router.get("/api/outbox")
def api_outbox(web: WebDep, p: ViewerApi) -> dict[str, object]:
    return web.data.outbox()
