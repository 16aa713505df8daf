"""Real peers for the alert tests, all on 127.0.0.1 with free ports.

- :class:`WebhookServer`: from :mod:`aenode.peers.webhook` (the demo uses it too).
- :class:`SMTPServer`: aiosmtpd; plain, STARTTLS (optionally requiring AUTH) or implicit TLS.
- :class:`MLLPServer`: an MLLP listener (optionally inside TLS, optionally requiring a
  client certificate) that parses each message with hl7apy and ACKs with the queued
  codes first (e.g. ``AE``), then ``AA``.
"""

from __future__ import annotations

import email
import email.policy
import socketserver
import ssl
import subprocess
import threading
import time
from pathlib import Path

from hl7apy.core import Message
from hl7apy.parser import parse_message

from aenode.alert.channels.hl7 import frame, read_frame
from aenode.peers import wait_for  # noqa: F401 - the alert tests import it from here
from aenode.peers.orthanc import free_port
from aenode.peers.webhook import WebhookServer  # noqa: F401 - re-exported for the tests


def self_signed(dir_: Path, name: str = "cert") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (openssl, which the machine has)."""
    cert, key = dir_ / f"{name}.pem", dir_ / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


# ---- SMTP -----------------------------------------------------------------------------

class SMTPServer:
    def __init__(self, port: int | None = None, *, security: str = "none", cert: Path | None = None,
                 key: Path | None = None, auth: tuple[str, str] | None = None):
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: list[dict] = []
        self.port = port or free_port()
        self.security, self.cert = security, cert
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                outer.messages.append({
                    "from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                    "raw": envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode(),
                    "tls": server.transport.get_extra_info("ssl_object") is not None,
                    "auth": session.authenticated,
                })
                return "250 OK"

        kwargs: dict = {}
        ctx = None
        if security != "none":
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert), str(key))
        if security == "starttls":
            kwargs.update(tls_context=ctx, require_starttls=True)
        elif security == "tls":
            kwargs.update(ssl_context=ctx)
        if auth:
            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = (auth_data.login.decode(), auth_data.password.decode()) == auth
                return AuthResult(success=ok)
            kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                      server_hostname="localhost", **kwargs)

    def parsed(self, i: int = -1) -> email.message.EmailMessage:
        return email.message_from_bytes(self.messages[i]["raw"], policy=email.policy.default)

    def start(self) -> SMTPServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


# ---- MLLP -----------------------------------------------------------------------------

class MLLPServer:
    def __init__(self, port: int | None = None, codes: list[str] | None = None, silent: int = 0, *,
                 cert: Path | None = None, key: Path | None = None, client_ca: Path | None = None):
        """``codes``: ACK codes answered first (then AA); ``silent``: messages left unanswered
        first; ``cert``/``key``: serve MLLP inside TLS; ``client_ca``: require a client
        certificate signed by it."""
        self.messages: list[dict] = []
        self.tls_failures = 0
        self.tls, self.cert = cert is not None, cert
        ctx = None
        if cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert), str(key))
            if client_ca is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(str(client_ca))
        self.codes = list(codes or [])
        self.silent = silent
        self.port = port or free_port()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.settimeout(5)
                if ctx is not None:
                    try:
                        self.request = ctx.wrap_socket(self.request, server_side=True)
                    except (ssl.SSLError, OSError):
                        outer.tls_failures += 1
                        return
                try:
                    raw = read_frame(self.request)
                except (ConnectionError, OSError, ValueError):
                    return
                text = raw.decode("utf-8")
                msg = parse_message(text.replace("\n", "\r"), find_groups=True)
                control_id = msg.msh.msh_10.to_er7()
                if outer.silent > 0:
                    outer.silent -= 1
                    outer.messages.append({"text": text, "control_id": control_id, "ack": None})
                    time.sleep(1.5)
                    return
                code = outer.codes.pop(0) if outer.codes else "AA"
                outer.messages.append({"text": text, "control_id": control_id, "ack": code, "msg": msg,
                                       "tls": isinstance(self.request, ssl.SSLSocket)})
                ack = Message("ACK", version="2.5")
                ack.msh.msh_3 = "TESTRCV"
                ack.msh.msh_9 = "ACK^R01^ACK"
                ack.msh.msh_10 = "ACK" + control_id[:17]
                ack.msh.msh_11 = "P"
                ack.msa.msa_1 = code
                ack.msa.msa_2 = control_id
                self.request.sendall(frame(ack.to_er7()))

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def accepted(self) -> list[dict]:
        return [m for m in self.messages if m["ack"] == "AA"]

    def start(self) -> MLLPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
