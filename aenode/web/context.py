"""State shared by the routes of one application, and the dependencies routes declare.

:class:`WebApp` holds the configuration, the node's stores (handed in by the wiring
code, typed), the dashboard's own store, authentication, read models, actions, health and
metrics.  Routes reach it through the ``WebDep`` dependency and ask for a role with the
``*Page`` / ``*Api`` principal dependencies (pages redirect to the login form, the API
answers 401).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Annotated, Protocol, cast
from urllib.parse import quote

import jinja2
from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from prometheus_client import CollectorRegistry

from aenode.alert.store import AlertStore
from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.logs import get_logger
from aenode.store.index import Index
from aenode.surveil.store import SurveillanceStore
from aenode.web.auth import (
    ANY_ROLE,
    CAN_ACKNOWLEDGE,
    CAN_AUDIT,
    CAN_CONFIRM,
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    Authenticator,
    Principal,
    csrf_ok,
)
from aenode.web.data import NodeData
from aenode.web.health import Health, HealthStores
from aenode.web.metrics import build_registry
from aenode.web.services import Actions
from aenode.web.store import WebStore

log = get_logger("aenode.web")


class Closeable(Protocol):
    def close(self) -> None: ...


class NotAuthenticated(Exception):
    def __init__(self, page: bool):
        self.page = page


def _fmt_time(value: float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * float(value):.1f} %"


def _urlq(value: object) -> str:
    return quote(str(value), safe="")


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("aenode.web", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["ts"] = _fmt_time
    env.filters["pct"] = _pct
    env.filters["urlq"] = _urlq
    return env


class WebApp:
    """Everything the routes of one application share."""

    def __init__(self, config: Config, index: Index, outbox: Outbox, alerts: AlertStore, store: WebStore,
                 owned: Sequence[Closeable] = ()):
        self.config = config
        self._owned = list(owned)
        self.index = index
        self.outbox = outbox
        self.alerts = alerts
        self.store = store
        self.auth = Authenticator(config, store)
        self.data = NodeData(config, index, alerts, outbox, store)
        self.surveillance = SurveillanceStore.for_data_dir(config.node.data_dir, url=config.database.url)  # /surveillance, confirmations
        self._owned.append(self.surveillance)
        self.actions = Actions(config, self.data, store, surveillance=self.surveillance)
        self.health = Health(config, HealthStores(index, outbox, alerts, store))
        self.registry: CollectorRegistry = build_registry(config, index, outbox, alerts, self.data)
        self.env = templates()

    def close(self) -> None:
        """Close the stores this application opened itself (not the node's)."""
        for s in reversed(self._owned):
            s.close()
        self._owned.clear()

    def principal(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return self.auth.from_bearer(token.strip())
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.auth.from_session(cookie) if cookie else None

    def render(self, name: str, request: Request, principal: Principal | None, status: int = 200,
               **ctx: object) -> HTMLResponse:
        html = self.env.get_template(name).render(
            user=principal, csrf=(principal.csrf if principal else None), csrf_field=CSRF_FIELD,
            can_ack=bool(principal and principal.can(CAN_ACKNOWLEDGE)),
            can_confirm=bool(principal and principal.can(CAN_CONFIRM)),
            can_audit=bool(principal and principal.can(CAN_AUDIT)),
            node_name=self.config.node.name, path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status)


def web_of(request: Request) -> WebApp:
    return cast(WebApp, request.app.state.web)


WebDep = Annotated[WebApp, Depends(web_of)]


def need(roles: frozenset[str], *, page: bool) -> Callable[[Request], Principal]:
    """A dependency that yields the request's principal if it has one of ``roles``."""

    def dependency(request: Request) -> Principal:
        p = web_of(request).principal(request)
        if p is None:
            raise NotAuthenticated(page)
        if not p.can(roles):
            log.info("web_forbidden", user=p.name, role=p.role, path=request.url.path)
            raise HTTPException(403, "your role may not do this")
        return p
    return dependency


ViewerPage = Annotated[Principal, Depends(need(ANY_ROLE, page=True))]
ViewerApi = Annotated[Principal, Depends(need(ANY_ROLE, page=False))]
AckPage = Annotated[Principal, Depends(need(CAN_ACKNOWLEDGE, page=True))]
AckApi = Annotated[Principal, Depends(need(CAN_ACKNOWLEDGE, page=False))]
ConfirmPage = Annotated[Principal, Depends(need(CAN_CONFIRM, page=True))]
ConfirmApi = Annotated[Principal, Depends(need(CAN_CONFIRM, page=False))]
AuditPage = Annotated[Principal, Depends(need(CAN_AUDIT, page=True))]
AuditApi = Annotated[Principal, Depends(need(CAN_AUDIT, page=False))]


def require_form_csrf(p: Principal, supplied: str) -> None:
    if not csrf_ok(p, supplied):
        raise HTTPException(403, "CSRF token missing or wrong")


def require_api_csrf(request: Request, p: Principal) -> None:
    if not csrf_ok(p, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, "CSRF token missing or wrong (X-CSRF-Token header)")
