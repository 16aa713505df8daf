"""``/healthz``: is this node able to do its job right now?

Checks (each ``{"ok": bool, "detail": ...}``):

- ``scp``: a socket listens on ``[node] port`` (read from ``/proc/net/tcp*`` so health
  checks do not show up as empty associations in the SCP's log; a TCP connect where
  ``/proc`` is missing);
- ``database``: every store answers its cheap read-only ``check()`` (index, outbox,
  alerts, dashboard) and ``data_dir`` is writable with free space (``os.access`` and
  ``statvfs``: no file is written, no write lock taken, no fsync);
- ``models``: at least one model package loads (loaded once when the web server starts,
  like the analysis worker does; the refused packages are listed);
- ``destinations``: every ``[[destinations]]`` answers the deliver stage's probe for its
  type (C-ECHO for ``dicom``, an authenticated QIDO request for ``dicomweb``); results are
  cached for ``[web] health_cache_seconds`` so a scraper cannot flood PACS with requests.

The whole answer is computed by one request at a time and reused for up to
``BODY_CACHE_SECONDS`` (never longer than ``health_cache_seconds``), so a flood of
``/healthz`` costs no more than one check per interval.  HTTP 200 when every check
passes, else 503; the body names the failing checks.  No patient data in it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from aenode.alert.store import AlertStore
from aenode.config import Config
from aenode.deliver.destinations import probe
from aenode.deliver.outbox import Outbox
from aenode.infer.registry import ModelRegistry
from aenode.logs import get_logger
from aenode.store.db import StoreError
from aenode.store.index import Index
from aenode.web.store import WebStore

log = get_logger("aenode.web")

BODY_CACHE_SECONDS = 2.0
MIN_FREE_BYTES = 64 * 1024 * 1024  # below this a study cannot be spooled: unhealthy

Check = dict[str, object]


@dataclass(frozen=True)
class HealthStores:
    """The stores whose ``check()`` /healthz calls (all cheap and read-only)."""

    index: Index
    outbox: Outbox
    alerts: AlertStore
    web: WebStore


class Health:
    def __init__(self, config: Config, stores: HealthStores):
        self.config = config
        self.stores = stores
        self._lock = threading.Lock()  # one computation at a time; the others reuse it
        self._body: tuple[float, bool, dict[str, object]] | None = None
        self._echo_cache: dict[str, tuple[float, bool, str]] = {}
        self._models: dict[str, object] | None = None

    # ---- checks ----------------------------------------------------------------------

    @staticmethod
    def _listening_ports() -> set[int] | None:
        ports: set[int] = set()
        found = False
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(name).read_text().splitlines()[1:]
            except OSError:
                continue
            found = True
            for line in lines:
                f = line.split()
                if len(f) > 3 and f[3] == "0A":  # TCP_LISTEN
                    ports.add(int(f[1].rsplit(":", 1)[1], 16))
        return ports if found else None

    def scp(self) -> Check:
        port = self.config.node.port
        listening = self._listening_ports()
        if listening is not None:
            if port in listening:
                return {"ok": True, "detail": f"listening on port {port}"}
            return {"ok": False, "detail": f"not listening on port {port}"}
        host = self.config.node.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        try:
            with socket.create_connection((host, port), timeout=2.0):
                pass
        except OSError as exc:
            return {"ok": False, "detail": f"not listening on port {port} ({type(exc).__name__})"}
        return {"ok": True, "detail": f"listening on port {port}"}

    def database(self) -> Check:
        problems = []
        s = self.stores
        for name, store in (("index", s.index), ("outbox", s.outbox), ("alerts", s.alerts), ("web", s.web)):
            try:
                store.check()
            except StoreError as exc:
                problems.append(f"{name}: {exc}")
        data_dir = Path(self.config.node.data_dir)
        try:
            st = os.statvfs(data_dir)
            free = st.f_bavail * st.f_frsize
            if not os.access(data_dir, os.W_OK) or st.f_flag & os.ST_RDONLY:
                problems.append("data_dir not writable")
            elif free < MIN_FREE_BYTES:
                problems.append(f"data_dir almost full ({free // (1024 * 1024)} MiB free)")
        except OSError as exc:
            problems.append(f"data_dir unavailable ({exc.strerror})")
        if problems:
            return {"ok": False, "detail": "; ".join(problems)}
        return {"ok": True, "detail": "readable, data_dir writable"}

    def _load_models(self) -> dict[str, object]:
        if self._models is None:
            try:
                reg = ModelRegistry.from_config(self.config)
                self._models = {"loaded": [m.name for m in reg], "refused": dict(reg.failed)}
            except Exception as exc:  # noqa: BLE001 - report, do not crash the endpoint
                self._models = {"loaded": [], "refused": {"registry": f"{type(exc).__name__}: {exc}"}}
        return self._models

    def models(self) -> Check:
        m = self._load_models()
        ok = bool(m["loaded"])
        detail: dict[str, object] = {"loaded": m["loaded"]}
        if m["refused"]:
            detail["refused"] = m["refused"]
        if not ok:
            detail["problem"] = f"no model loaded from {self.config.model.path}"
        return {"ok": ok, "detail": detail}

    def destinations(self) -> Check:
        out: dict[str, object] = {}
        ok = True
        now = time.monotonic()
        ttl = self.config.web.health_cache_seconds
        for d in self.config.destinations:
            cached = self._echo_cache.get(d.name)
            if cached is None or now - cached[0] > ttl:
                good, why = probe(self.config, d, timeout=min(5.0, self.config.delivery.timeout_seconds))
                cached = (now, good, why)
                self._echo_cache[d.name] = cached
            out[d.name] = {"ok": cached[1], "detail": cached[2], "checked_seconds_ago": round(now - cached[0], 1)}
            ok = ok and cached[1]
        return {"ok": ok, "detail": out or "none configured"}

    def check(self) -> tuple[bool, dict[str, object]]:
        ttl = min(BODY_CACHE_SECONDS, self.config.web.health_cache_seconds)
        with self._lock:
            now = time.monotonic()
            if self._body is not None and now - self._body[0] < ttl:
                return self._body[1], self._body[2]
            checks = {"scp": self.scp(), "database": self.database(), "models": self.models(),
                      "destinations": self.destinations()}
            failed = [k for k, v in checks.items() if not v["ok"]]
            body: dict[str, object] = {"status": "ok" if not failed else "unhealthy", "failed": failed,
                                       "checks": checks}
            self._body = (time.monotonic(), not failed, body)
            if failed:
                log.warning("health_failed", failed=failed)
            return not failed, body
