"""The web server as a node worker: ``WebWorker(config, index, outbox=..., alerts=...)``.

uvicorn serves the FastAPI app from a thread of the node process and shares the node's
stores (those not handed in are opened from ``data_dir``).  The listening socket is bound when the worker is created; if that fails (port taken) the
error is logged and the rest of the node keeps receiving and analysing studies (monitoring
sees ``/healthz`` missing).
``[web] enabled = false`` turns it off.  A non-loopback ``web.host`` without
``[[web.users]]`` is refused by the configuration (and again here, defensively).
"""

from __future__ import annotations

import socket
import threading

import uvicorn
from fastapi import FastAPI

from aenode.alert.store import AlertStore
from aenode.config import Config, _is_loopback
from aenode.deliver.outbox import Outbox
from aenode.logs import get_logger
from aenode.store.index import Index
from aenode.web.app import create_app
from aenode.web.context import WebApp

log = get_logger("aenode.web")


class WebWorker:
    def __init__(self, config: Config, index: Index, *, outbox: Outbox | None = None,
                 alerts: AlertStore | None = None):
        self.config = config
        self.enabled = config.web.enabled
        self.sock: socket.socket | None = None
        self.server: uvicorn.Server | None = None
        self.app: FastAPI | None = None
        self.port: int | None = None
        self.ready = threading.Event()
        if not self.enabled:
            log.info("web_disabled")
            return
        if not config.web.users and not _is_loopback(config.web.host):
            raise RuntimeError("web: refusing to serve on a non-loopback host without [[web.users]]")
        self.app = create_app(config, index, outbox=outbox, alerts=alerts)
        family = socket.AF_INET6 if ":" in config.web.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.web.host, config.web.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            self.web.close()
            log.error("web_bind_failed", host=config.web.host, port=config.web.port, errno=exc.errno,
                      error=exc.strerror)
            self.enabled = False
            return
        sock.set_inheritable(True)
        self.sock = sock
        self.port = sock.getsockname()[1]

    @property
    def web(self) -> WebApp:
        assert self.app is not None
        web: WebApp = self.app.state.web
        return web

    @property
    def url(self) -> str:
        host = self.config.web.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def run(self, stop_event: threading.Event) -> None:
        if not self.enabled or self.sock is None or self.app is None:
            return
        cfg = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                             timeout_graceful_shutdown=3, server_header=False)
        server = self.server = uvicorn.Server(cfg)

        def watch() -> None:
            while not stop_event.wait(0.2):
                if server.started and not self.ready.is_set():
                    self.ready.set()
            server.should_exit = True

        watcher = threading.Thread(target=watch, name="aenode-web-stop", daemon=True)
        watcher.start()
        log.info("web_started", host=self.config.web.host, port=self.port)
        try:
            server.run(sockets=[self.sock])
        finally:
            self.sock.close()
            self.web.close()
            log.info("web_stopped")
