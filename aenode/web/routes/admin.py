"""Administration: the audit log (infection control, radiologist) and the delivery outbox
(any role; no payloads)."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from aenode.store.datadir import DataDir
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


# Local validation reports written by ``aenode evaluate --report`` (issue 13).
_REPORT_NAME = re.compile(r"^[A-Za-z0-9@._-]{1,200}$")
_REPORT_FILES = {"report.html": "text/html; charset=utf-8", "report.json": "application/json",
                 "confusion.png": "image/png", "reliability.png": "image/png"}


@router.get("/reports/latest")
def latest_report(web: WebDep, p: AuditPage) -> RedirectResponse:
    pointer = DataDir.of(web.config.node.data_dir).latest_report
    try:
        name = str(json.loads(pointer.read_text())["name"])
    except (OSError, ValueError, KeyError):
        raise HTTPException(404, "no validation report yet (aenode evaluate DIR --report OUT)") from None
    if not _REPORT_NAME.match(name):
        raise HTTPException(404, "no such report")
    return RedirectResponse(f"/reports/{name}/report.html", status_code=303)


@router.get("/reports/{name}/{file}")
def report_file(name: str, file: str, web: WebDep, p: AuditPage) -> FileResponse:
    if not _REPORT_NAME.match(name) or file not in _REPORT_FILES:
        raise HTTPException(404, "no such report")
    path = DataDir.of(web.config.node.data_dir).reports / name / file
    if not path.is_file():
        raise HTTPException(404, "no such report")
    return FileResponse(path, media_type=_REPORT_FILES[file])
