"""A webhook receiver: ``http.server`` in a thread that records every POST.

It answers queued status codes first (e.g. 503, to play an outage), then 200.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aenode.peers.orthanc import free_port


class WebhookServer:
    def __init__(self, port: int | None = None, statuses: list[int] | None = None):
        self.requests: list[dict] = []
        self.statuses = list(statuses or [])
        self.port = port or free_port()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = outer.statuses.pop(0) if outer.statuses else 200
                outer.requests.append({"path": self.path, "headers": dict(self.headers.items()),
                                       "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[dict]:
        return [r for r in self.requests if 200 <= r["status"] < 300]

    def json(self, i: int = -1) -> dict:
        return json.loads(self.accepted[i]["body"])

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
