"""The FastAPI application: pages for people, a JSON API, ``/healthz`` and ``/metrics``.

Routes (role needed; see :mod:`aenode.web.auth` for the role table), one router per area
in :mod:`aenode.web.routes`:

==========================================  =======================  =====================
route                                       who                      what
==========================================  =======================  =====================
GET  /healthz                   (ops)       anyone                   health JSON, 200/503
GET  /metrics                   (ops)       any role                 Prometheus text
GET  /login, POST /login        (session)   anyone                   sign in (CSRF cookie)
POST /logout                    (session)   any role (CSRF)          sign out
GET  / -> /alerts               (alerts)    any role                 alerts page (live)
GET  /api/alerts[?unacknowledged=true]      any role                 JSON
POST /studies/{uid}/acknowledge (alerts)    infection-control, rad.  form (CSRF)
POST /api/studies/{uid}/acknowledge         infection-control, rad.  JSON (CSRF if cookie)
GET  /studies, /studies/{uid}   (studies)   any role                 study list / page
GET  /api/studies, /api/studies/{uid}       any role                 JSON
GET  /api/studies/{uid}/results             any role                 JSON (all revisions)
POST /studies/{uid}/confirm     (studies)   radiologist              form (CSRF)
POST /api/studies/{uid}/confirm             radiologist              JSON (CSRF if cookie)
GET  /studies/{uid}/sc.png?model=&revision= any role (images)        the SC as PNG
GET  /audit, /api/audit         (admin)     infection-control, rad.  audit log page / JSON
GET  /api/outbox                (admin)     any role                 JSON (no payloads)
GET  /surveillance, /api/surveillance       infection-control, rad.  surveillance page / JSON
==========================================  =======================  =====================

Pages carry patient ID and accession (name / birth date only if ``[alerts]`` includes
them) and are sent with ``Cache-Control: no-store``; logs never carry them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from aenode.alert.store import AlertStore
from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.store.index import Index
from aenode.web.context import Closeable, NotAuthenticated, WebApp, web_of
from aenode.web.routes import admin, images, ops, session, studies, surveillance
from aenode.web.routes import alerts as alert_routes
from aenode.web.services import ActionError
from aenode.web.store import WebStore

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self';"
                                " frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/metrics", "/healthz")) or \
        "text/html" not in request.headers.get("accept", "")


def create_app(config: Config, index: Index, *, outbox: Outbox | None = None, alerts: AlertStore | None = None,
               store: WebStore | None = None) -> FastAPI:
    """The application for ``config`` over the node's stores.  Stores not handed in are
    opened from ``data_dir`` and closed by ``app.state.web.close()``."""
    owned: list[Closeable] = []
    if outbox is None:
        outbox = Outbox.for_config(config)
        owned.append(outbox)
    if alerts is None:
        alerts = AlertStore.for_data_dir(config.node.data_dir, url=config.database.url)
        owned.append(alerts)
    if store is None:
        store = WebStore.for_data_dir(config.node.data_dir, url=config.database.url)
        owned.append(store)
    web = WebApp(config, index, outbox, alerts, store, owned)
    app = FastAPI(title="aenode", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = web
    for r in (ops.router, session.router, alert_routes.router, studies.router, images.router, admin.router,
              surveillance.router):
        app.include_router(r)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(NotAuthenticated)
    async def _unauthenticated(request: Request, exc: NotAuthenticated) -> Response:
        if exc.page:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return JSONResponse({"detail": "authentication required"}, status_code=401,
                            headers={"WWW-Authenticate": 'Bearer realm="aenode"'})

    def _error(request: Request, status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))
        w = web_of(request)
        return w.render("error.html", request, w.principal(request), status=status, status_code=status,
                        detail=detail)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(ActionError)
    async def _action_error(request: Request, exc: ActionError) -> Response:
        return _error(request, exc.status, exc.detail)

    return app

