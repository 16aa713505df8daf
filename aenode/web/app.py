"""The FastAPI application: pages for people, a JSON API, ``/healthz`` and ``/metrics``.

Routes (role needed; see :mod:`aenode.web.auth` for the role table):

==========================================  =======================  =====================
route                                       who                      what
==========================================  =======================  =====================
GET  /healthz                               anyone                   health JSON, 200/503
GET  /login, POST /login                    anyone                   sign in (CSRF cookie)
POST /logout                                any role (CSRF)          sign out
GET  /metrics                               any role                 Prometheus text
GET  / -> /alerts                           any role                 alerts page (live)
GET  /studies, /studies/{uid}               any role                 study list / page
GET  /studies/{uid}/sc.png?model=&revision=  any role                 the SC as PNG
POST /studies/{uid}/acknowledge             infection-control, rad.  form (CSRF)
POST /studies/{uid}/confirm                 radiologist              form (CSRF)
GET  /audit                                 infection-control, rad.  audit log page
GET  /api/alerts[?unacknowledged=true]      any role                 JSON
GET  /api/studies, /api/studies/{uid}       any role                 JSON
GET  /api/studies/{uid}/results             any role                 JSON (all revisions)
GET  /api/outbox                            any role                 JSON (no payloads)
POST /api/studies/{uid}/acknowledge         infection-control, rad.  JSON (CSRF if cookie)
POST /api/studies/{uid}/confirm             radiologist              JSON (CSRF if cookie)
GET  /api/audit                             infection-control, rad.  JSON
==========================================  =======================  =====================

Pages carry patient ID and accession (name / birth date only if ``[alerts]`` includes
them) and are sent with ``Cache-Control: no-store``; logs never carry them.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from aenode.config import Config
from aenode.logs import get_logger
from aenode.web.auth import (
    ANY_ROLE,
    CAN_ACKNOWLEDGE,
    CAN_AUDIT,
    CAN_CONFIRM,
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Authenticator,
    Principal,
    csrf_ok,
)
from aenode.web.data import NodeData, valid_uid
from aenode.web.health import Health
from aenode.web.metrics import build_registry
from aenode.web.store import INFECTION_STATUSES, WebStore

log = get_logger("aenode.web")

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self';"
                                " frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
NOTE_MAX = 1000


class NotAuthenticated(Exception):
    def __init__(self, page: bool):
        self.page = page


class AckBody(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    note: str | None = Field(None, max_length=NOTE_MAX)
    category: str | None = None  # optional guard: the alert category the client saw
    revision: int | None = None


class ConfirmBody(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    category: str = Field(min_length=1, max_length=64)
    infection_status: str
    radiologist_id: str = Field(min_length=1, max_length=64)
    note: str | None = Field(None, max_length=NOTE_MAX)


def _fmt_time(value: float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aenode.web", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = _fmt_time
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.1f} %"
    env.filters["urlq"] = lambda v: quote(str(v), safe="")
    return env


class WebApp:
    """State shared by the routes of one application."""

    def __init__(self, config: Config, index: Any | None = None, *, announce: bool = True):
        from aenode.store.index import Index

        self.config = config
        self._own_index = index is None
        self.index = index if index is not None else Index.for_data_dir(config.node.data_dir)
        self.store = WebStore.for_data_dir(config.node.data_dir)
        self.auth = Authenticator(config, announce=announce)
        self.data = NodeData(config, self.index, self.store)
        self.health = Health(config)
        self.registry = build_registry(config, self.data)
        self.env = _templates()
        self.secure_cookies = (config.alerts.dashboard_url or "").startswith("https://")

    def close(self) -> None:
        self.store.close()
        if self._own_index:
            self.index.close()

    # ---- authentication ------------------------------------------------------------

    def principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return self.auth.from_bearer(token.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.auth.from_session(cookie) if cookie else None

    def need(self, roles: frozenset[str], *, page: bool):
        def dependency(request: Request) -> Principal:
            p = self.principal(request)
            if p is None:
                raise NotAuthenticated(page)
            if not p.can(roles):
                log.info("web_forbidden", user=p.name, role=p.role, path=request.url.path)
                raise HTTPException(403, "your role may not do this")
            return p
        return Depends(dependency)

    def render(self, name: str, request: Request, principal: Principal | None, status: int = 200,
               **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            user=principal, csrf=(principal.csrf if principal else None), csrf_field=CSRF_FIELD,
            can_ack=bool(principal and principal.can(CAN_ACKNOWLEDGE)),
            can_confirm=bool(principal and principal.can(CAN_CONFIRM)),
            can_audit=bool(principal and principal.can(CAN_AUDIT)),
            node_name=self.config.node.name, path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status)


def _check_uid(uid: str) -> str:
    if not valid_uid(uid):
        raise HTTPException(404, "no such study")
    return uid


def _safe_next(value: str | None) -> str:
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/alerts"
    return value


def create_app(config: Config, index: Any | None = None, *, announce: bool = True) -> FastAPI:
    """The application for ``config``; ``index`` is the running node's (else one is opened)."""
    web = WebApp(config, index, announce=announce)
    app = FastAPI(title="aenode", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = web
    viewer_page = web.need(ANY_ROLE, page=True)
    viewer_api = web.need(ANY_ROLE, page=False)
    ack_page = web.need(CAN_ACKNOWLEDGE, page=True)
    ack_api = web.need(CAN_ACKNOWLEDGE, page=False)
    confirm_page = web.need(CAN_CONFIRM, page=True)
    confirm_api = web.need(CAN_CONFIRM, page=False)
    audit_page = web.need(CAN_AUDIT, page=True)
    audit_api = web.need(CAN_AUDIT, page=False)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(request: Request, exc: NotAuthenticated):
        if exc.page:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return JSONResponse({"detail": "authentication required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="aenode"'})

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if request.url.path.startswith(("/api/", "/metrics", "/healthz")) or \
                "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        p = web.principal(request)
        return web.render("error.html", request, p, status=exc.status_code, status_code=exc.status_code,
                          detail=exc.detail)

    # ---- public ----------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok, body = web.health.check()
        if not ok:
            log.warning("health_failed", failed=body["failed"])
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        suffix = Path(name).suffix
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            raise HTTPException(404, "not found")
        try:
            data = resources.files("aenode.web").joinpath("static", name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise HTTPException(404, "not found") from None
        return Response(data, media_type=STATIC_TYPES[suffix], headers={"Cache-Control": "max-age=300"})

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None, error: str | None = None) -> HTMLResponse:
        token = web.auth.new_login_csrf()
        resp = web.render("login.html", request, None, next=_safe_next(next), login_csrf=token,
                          error=error, default_admin=str(web.auth.generated_admin_file or ""))
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=web.secure_cookies, path="/login")
        return resp

    @app.post("/login")
    def login(request: Request, username: str = Form(""), password: str = Form(""),
              csrf_token: str = Form(""), next: str = Form("/alerts")) -> Response:
        if not web.auth.check_login_csrf(request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
            raise HTTPException(403, "CSRF token missing or wrong; reload the login page")
        role = web.auth.check_password(username, password)
        if role is None:
            log.info("web_login_failed", user=username[:64])
            return RedirectResponse(f"/login?error=1&next={quote(_safe_next(next), safe='')}", status_code=303)
        cookie, _ = web.auth.new_session(username)
        web.store.audit(username, role, "login")
        log.info("web_login", user=username, role=role)
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(SESSION_COOKIE, cookie, max_age=web.auth.max_age, httponly=True, samesite="lax",
                        secure=web.secure_cookies, path="/")
        resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return resp

    @app.post("/logout")
    def logout(csrf_token: str = Form(""), p: Principal = viewer_page) -> Response:
        if not csrf_ok(p, csrf_token):
            raise HTTPException(403, "CSRF token missing or wrong")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # ---- metrics ---------------------------------------------------------------------

    @app.get("/metrics")
    def metrics(p: Principal = viewer_api) -> Response:
        return Response(generate_latest(web.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- pages -----------------------------------------------------------------------

    @app.get("/")
    def root(p: Principal = viewer_page) -> Response:
        return RedirectResponse("/alerts", status_code=303)

    @app.get("/alerts", response_class=HTMLResponse)
    def alerts_page(request: Request, unacknowledged: bool = False, p: Principal = viewer_page) -> HTMLResponse:
        return web.render("alerts.html", request, p, alerts=web.data.alerts(unacknowledged=unacknowledged),
                          unacknowledged=unacknowledged)

    @app.get("/studies", response_class=HTMLResponse)
    def studies_page(request: Request, p: Principal = viewer_page) -> HTMLResponse:
        return web.render("studies.html", request, p, studies=web.data.studies())

    @app.get("/studies/{uid}", response_class=HTMLResponse)
    def study_page(request: Request, uid: str, p: Principal = viewer_page) -> HTMLResponse:
        study = web.data.study(_check_uid(uid))
        if study is None:
            raise HTTPException(404, "no such study")
        return web.render("study.html", request, p, s=study, statuses=INFECTION_STATUSES,
                          flash=request.query_params.get("done"))

    @app.get("/studies/{uid}/sc.png")
    def sc_png(uid: str, model: str = Query(..., max_length=64), revision: int = Query(..., ge=1),
               p: Principal = viewer_page) -> Response:
        png = web.data.sc_png(_check_uid(uid), model, revision)
        if png is None:
            raise HTTPException(404, "no secondary capture for this result")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    @app.get("/audit", response_class=HTMLResponse)
    def audit_view(request: Request, p: Principal = audit_page) -> HTMLResponse:
        return web.render("audit.html", request, p, entries=web.store.audit_log())

    # ---- actions ---------------------------------------------------------------------

    def do_ack(uid: str, body: AckBody, p: Principal) -> dict[str, Any]:
        _check_uid(uid)
        alert = web.data.current_alert(uid, body.model)
        if alert is None:
            raise HTTPException(404, "no alert for this study and model")
        if (body.category is not None and body.category != alert["category"]) or \
                (body.revision is not None and body.revision != alert["revision"]):
            raise HTTPException(409, "the alert changed since it was shown; reload")
        a = web.store.acknowledge(uid, body.model, alert["category"], alert["revision"], p.name, p.role,
                                  body.note or None)
        log.info("alert_acknowledged", study_uid=uid, model=body.model, category=alert["category"],
                 revision=alert["revision"], user=p.name)
        return {"study_uid": uid, "model": a.model, "category": a.category, "revision": a.revision,
                "user": a.user, "at": a.at, "note": a.note}

    def do_confirm(uid: str, body: ConfirmBody, p: Principal) -> dict[str, Any]:
        _check_uid(uid)
        r = web.data.result_row(uid, body.model)
        if r is None:
            raise HTTPException(404, "no result for this study and model")
        from aenode.alert.rules import model_rules

        rules = model_rules(config, body.model, r.detail)
        classes = list(rules.classes) if rules else list((r.probabilities or {}).keys())
        if body.category not in classes:
            raise HTTPException(422, f"category: must be one of {', '.join(classes)}")
        if body.infection_status not in INFECTION_STATUSES:
            raise HTTPException(422, f"infection_status: must be one of {', '.join(INFECTION_STATUSES)}")
        c = web.store.confirm(study_uid=uid, model=body.model, revision=r.revision, ai_category=r.category,
                              category=body.category, infection_status=body.infection_status,
                              radiologist_id=body.radiologist_id.strip(), user=p.name, role=p.role,
                              note=body.note or None)
        log.info("result_confirmed" if c.agrees else "result_corrected", study_uid=uid, model=body.model,
                 revision=r.revision, user=p.name)
        verified = None
        if config.web.reissue_verified_sr and c.agrees:
            from aenode.web.verify import reissue_verified_sr

            try:
                path = reissue_verified_sr(config, web.data.result_dir(uid, body.model, r.revision), uid,
                                           radiologist_id=c.radiologist_id, user=p.name, confirmation_id=c.id,
                                           at=c.at)
            except FileNotFoundError:
                path = None
                log.warning("verified_sr_skipped", study_uid=uid, reason="no SR for this result")
            if path is not None:
                web.store.set_verified_sr(c.id, str(path), p.name, p.role, uid)
                verified = str(path.relative_to(config.node.data_dir))
        return {"id": c.id, "study_uid": uid, "model": c.model, "revision": c.revision,
                "ai_category": c.ai_category, "category": c.category, "agrees": c.agrees,
                "infection_status": c.infection_status, "radiologist_id": c.radiologist_id,
                "user": c.user, "at": c.at, "verified_sr": verified}

    @app.post("/studies/{uid}/acknowledge")
    def ack_form(uid: str, model: str = Form(...), note: str = Form(""), category: str | None = Form(None),
                 revision: int | None = Form(None), csrf_token: str = Form(""),
                 p: Principal = ack_page) -> Response:
        if not csrf_ok(p, csrf_token):
            raise HTTPException(403, "CSRF token missing or wrong")
        do_ack(uid, AckBody(model=model, note=note[:NOTE_MAX] or None, category=category, revision=revision), p)
        return RedirectResponse(f"/studies/{uid}?done=acknowledged", status_code=303)

    @app.post("/studies/{uid}/confirm")
    def confirm_form(uid: str, model: str = Form(...), category: str = Form(...),
                     infection_status: str = Form(...), radiologist_id: str = Form(...), note: str = Form(""),
                     csrf_token: str = Form(""), p: Principal = confirm_page) -> Response:
        if not csrf_ok(p, csrf_token):
            raise HTTPException(403, "CSRF token missing or wrong")
        if not radiologist_id.strip() or len(radiologist_id) > 64:
            raise HTTPException(422, "radiologist ID: required, at most 64 characters")
        do_confirm(uid, ConfirmBody(model=model, category=category, infection_status=infection_status,
                                    radiologist_id=radiologist_id, note=note[:NOTE_MAX] or None), p)
        return RedirectResponse(f"/studies/{uid}?done=confirmed", status_code=303)

    # ---- JSON API --------------------------------------------------------------------

    def api_csrf(request: Request, p: Principal) -> None:
        if not csrf_ok(p, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, "CSRF token missing or wrong (X-CSRF-Token header)")

    @app.get("/api/alerts")
    def api_alerts(unacknowledged: bool = False, limit: int = Query(200, ge=1, le=5000),
                   p: Principal = viewer_api) -> dict[str, Any]:
        return {"alerts": web.data.alerts(unacknowledged=unacknowledged, limit=limit)}

    @app.get("/api/studies")
    def api_studies(limit: int = Query(500, ge=1, le=100000), p: Principal = viewer_api) -> dict[str, Any]:
        return {"studies": web.data.studies(limit=limit)}

    @app.get("/api/studies/{uid}")
    def api_study(uid: str, p: Principal = viewer_api) -> dict[str, Any]:
        s = web.data.study(_check_uid(uid))
        if s is None:
            raise HTTPException(404, "no such study")
        return s

    @app.get("/api/studies/{uid}/results")
    def api_results(uid: str, p: Principal = viewer_api) -> dict[str, Any]:
        s = web.data.study(_check_uid(uid), patient=False)
        if s is None:
            raise HTTPException(404, "no such study")
        return {"study_uid": uid, "current": s["results"], "history": s["history"]}

    @app.get("/api/outbox")
    def api_outbox(p: Principal = viewer_api) -> dict[str, Any]:
        return web.data.outbox()

    @app.post("/api/studies/{uid}/acknowledge")
    def api_ack(request: Request, uid: str, body: AckBody, p: Principal = ack_api) -> dict[str, Any]:
        api_csrf(request, p)
        return do_ack(uid, body, p)

    @app.post("/api/studies/{uid}/confirm")
    def api_confirm(request: Request, uid: str, body: ConfirmBody, p: Principal = confirm_api) -> dict[str, Any]:
        api_csrf(request, p)
        return do_confirm(uid, body, p)

    @app.get("/api/audit")
    def api_audit(limit: int = Query(500, ge=1, le=10000), p: Principal = audit_api) -> dict[str, Any]:
        return {"audit": web.store.audit_log(limit)}

    return app
