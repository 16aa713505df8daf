"""Surveillance (issue 14): the epidemic curve, involvement distribution and EARS surge
signals over the de-identified surveillance records (infection control, radiologist).
The page and its JSON carry counts only: no patient data, no study UIDs."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from aenode.surveil.view import page
from aenode.surveil.worker import surveillance_model
from aenode.web.context import AuditApi, AuditPage, WebApp, WebDep

router = APIRouter()

_DATE = r"^\d{4}-\d{2}-\d{2}$"


def _context(request: Request, web: WebApp, since: str | None, until: str | None, by: str) -> dict[str, object]:
    store = web.surveillance
    s = web.config.surveillance
    ctx = page(store.records(since, until, surveillance_model(web.config)), store.signals(),
               s.surge_categories, s.method, by)
    ctx.update(since=since or "", until=until or "", site=web.config.site.name)
    return ctx


@router.get("/surveillance", response_class=HTMLResponse)
def surveillance_page(request: Request, web: WebDep, p: AuditPage,
                      since: str | None = Query(None, alias="from", pattern=_DATE),
                      until: str | None = Query(None, pattern=_DATE),
                      by: str = Query("week", pattern="^(week|day)$")) -> HTMLResponse:
    ctx = _context(request, web, since, until, by)
    return web.render("surveillance.html", request, p, 200, **ctx)


@router.get("/api/surveillance")
def api_surveillance(request: Request, web: WebDep, p: AuditApi,
                     since: str | None = Query(None, alias="from", pattern=_DATE),
                     until: str | None = Query(None, pattern=_DATE),
                     by: str = Query("week", pattern="^(week|day)$")) -> dict[str, object]:
    ctx = _context(request, web, since, until, by)
    return {k: ctx[k] for k in ("by", "total", "confirmed", "buckets", "surge", "method", "ears", "signals")}
