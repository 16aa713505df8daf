"""``/healthz``: is this node able to do its job right now?

Checks (each ``{"ok": bool, "detail": ...}``):

- ``scp``: a socket listens on ``[node] port`` (read from ``/proc/net/tcp*`` so health
  checks do not show up as empty associations in the SCP's log; a TCP connect where
  ``/proc`` is missing);
- ``database``: the index, outbox and dashboard databases take a write lock and
  ``data_dir`` takes a file (disk not full or read-only);
- ``models``: at least one model package loads (loaded once when the web server starts,
  like the analysis worker does; the refused packages are listed);
- ``destinations``: every ``[[destinations]]`` answers C-ECHO; results are cached for
  ``[web] health_cache_seconds`` so a scraper cannot flood PACS with associations.

HTTP 200 when every check passes, else 503; the body names the failing checks.  No
patient data in it.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aenode.config import Config
from aenode.logs import get_logger

log = get_logger("aenode.web")


class Health:
    def __init__(self, config: Config):
        self.config = config
        self._echo_lock = threading.Lock()
        self._echo_cache: dict[str, tuple[float, bool, str]] = {}
        self._models: dict[str, Any] | None = None
        self._models_lock = threading.Lock()

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

    def scp(self) -> dict[str, Any]:
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
            with socket.create_connection((host, self.config.node.port), timeout=2.0):
                pass
        except OSError as exc:
            return {"ok": False, "detail": f"not listening on port {self.config.node.port} ({type(exc).__name__})"}
        return {"ok": True, "detail": f"listening on port {self.config.node.port}"}

    def database(self) -> dict[str, Any]:
        data_dir = Path(self.config.node.data_dir)
        problems = []
        for name in ("index.sqlite", "outbox.sqlite", "web.sqlite"):
            path = data_dir / name
            if not path.exists():
                continue
            try:
                db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
                try:
                    db.execute("BEGIN IMMEDIATE")
                    db.execute("ROLLBACK")
                finally:
                    db.close()
            except sqlite3.Error as exc:
                problems.append(f"{name}: {exc}")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".health-", dir=data_dir)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as exc:
            problems.append(f"data_dir not writable ({exc.strerror})")
        if problems:
            return {"ok": False, "detail": "; ".join(problems)}
        return {"ok": True, "detail": "writable"}

    def _load_models(self) -> dict[str, Any]:
        with self._models_lock:
            if self._models is None:
                try:
                    from aenode.infer.registry import ModelRegistry

                    reg = ModelRegistry.from_config(self.config)
                    self._models = {"loaded": [f"{m.name}" for m in reg], "refused": dict(reg.failed)}
                except Exception as exc:  # noqa: BLE001 - report, do not crash the endpoint
                    self._models = {"loaded": [], "refused": {"registry": f"{type(exc).__name__}: {exc}"}}
            return self._models

    def models(self) -> dict[str, Any]:
        m = self._load_models()
        ok = bool(m["loaded"])
        detail: dict[str, Any] = {"loaded": m["loaded"]}
        if m["refused"]:
            detail["refused"] = m["refused"]
        if not ok:
            detail["problem"] = f"no model loaded from {self.config.model.path}"
        return {"ok": ok, "detail": detail}

    def destinations(self) -> dict[str, Any]:
        from aenode.deliver.dicom import Peer, echo

        out: dict[str, Any] = {}
        ok = True
        now = time.monotonic()
        ttl = self.config.web.health_cache_seconds
        with self._echo_lock:
            for d in self.config.destinations:
                cached = self._echo_cache.get(d.name)
                if cached is None or now - cached[0] > ttl:
                    try:
                        good, why = echo(Peer(d.ae_title, d.host, d.port), self.config.node.ae_title,
                                         timeout=min(5.0, self.config.delivery.timeout_seconds))
                    except Exception as exc:  # noqa: BLE001
                        good, why = False, type(exc).__name__
                    cached = (now, good, why)
                    self._echo_cache[d.name] = cached
                out[d.name] = {"ok": cached[1], "detail": cached[2],
                               "checked_seconds_ago": round(now - cached[0], 1)}
                ok = ok and cached[1]
        return {"ok": ok, "detail": out or "none configured"}

    def check(self) -> tuple[bool, dict[str, Any]]:
        checks = {"scp": self.scp(), "database": self.database(), "models": self.models(),
                  "destinations": self.destinations()}
        failed = [k for k, v in checks.items() if not v["ok"]]
        return not failed, {"status": "ok" if not failed else "unhealthy", "failed": failed, "checks": checks}
