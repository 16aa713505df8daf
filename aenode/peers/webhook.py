"""A webhook receiver: ``http.server`` in a thread that records every POST.

It answers queued status codes first (e.g. 503, to play an outage), then 200.  With
``cert``/``key`` it serves HTTPS (the node refuses ``http://`` webhooks unless the channel
says ``insecure = true``).
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aenode.peers.orthanc import free_port


class WebhookServer:
    def __init__(self, port: int | None = None, statuses: list[int] | None = None, *,
                 cert: Path | None = None, key: Path | None = None):
        self.requests: list[dict[str, Any]] = []
        self.statuses = list(statuses or [])
        self.port = port or free_port()
        self.tls, self.cert = cert is not None, cert
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = outer.statuses.pop(0) if outer.statuses else 200
                outer.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                       "body": body, "status": status,
                                       "tls": isinstance(self.connection, ssl.SSLSocket)})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert), str(key) if key else None)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if 200 <= r["status"] < 300]

    def json(self, i: int = -1) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.accepted[i]["body"])
        return data

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
