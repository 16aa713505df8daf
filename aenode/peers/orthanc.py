"""A real Orthanc PACS on free loopback ports, for tests and the demo.

Each instance has its own temporary configuration, storage and index; REST is on
127.0.0.1 only (RemoteAccessAllowed false).  ``stop()`` and ``start()`` again keep the
same ports and storage (a PACS that was down for a while).

On request: the DICOMweb plugin (Debian ``orthanc-dicomweb``, ``dicomweb=True``; STOW-RS
etc. under :attr:`Orthanc.dicomweb_url`), HTTP basic authentication
(``users={"name": "password"}``; the runner's own REST calls use the first user) and
DICOM TLS on the DICOM port (``dicom_tls=(cert, key, trusted_ca)``; a client
certificate is then optional).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from aenode.peers import wait_for

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _PortTaken(Exception):
    """Orthanc could not bind a port chosen for it."""


class Orthanc:
    def __init__(self, workdir: Path, *, aet: str = "ORTHANC", modalities: dict | None = None,
                 extra: dict | None = None, dicomweb: bool = False, users: dict[str, str] | None = None,
                 dicom_tls: tuple[Path, Path, Path] | None = None):
        self.workdir = Path(workdir).resolve()  # Orthanc runs with this as its cwd
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        cfg = {
            "Name": "aenode-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": modalities or {},
            "Plugins": [],
            "StableAge": 2,
            "ConcurrentJobs": 2,
            "LimitJobs": 10,
            "SaveJobs": False,
        }
        if dicomweb:
            if not DICOMWEB_PLUGIN.is_file():
                raise RuntimeError(f"DICOMweb plugin not installed ({DICOMWEB_PLUGIN}): apt install orthanc-dicomweb")
            cfg["Plugins"] = [str(DICOMWEB_PLUGIN)]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
        self._auth: str | None = None
        if users:
            cfg["AuthenticationEnabled"] = True
            cfg["RegisteredUsers"] = dict(users)
            name, password = next(iter(users.items()))
            self._auth = "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
        if dicom_tls is not None:
            cert, key, trusted = dicom_tls
            cfg.update({"DicomTlsEnabled": True, "DicomTlsCertificate": str(cert), "DicomTlsPrivateKey": str(key),
                        "DicomTlsTrustedCertificates": str(trusted), "DicomTlsRemoteCertificateRequired": False})
        cfg.update(extra or {})
        self.config_path = self.workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(cfg, indent=2))
        self.log_path = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb plugin (STOW-RS is ``POST {dicomweb_url}/studies``)."""
        return f"{self.url}/dicom-web"

    def _request(self, path: str, data: bytes | None = None, method: str = "GET") -> urllib.request.Request:
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self._auth:
            req.add_header("Authorization", self._auth)
        return req

    def start(self, timeout: float = 30.0, attempts: int = 3) -> Orthanc:
        """Start and wait for the REST API.  A port that another process took between
        ``free_port()`` and Orthanc's bind (a race on a busy machine) is retried on new ports."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RuntimeError("Orthanc: its ports kept being taken by other processes") from None
                self.http_port, self.dicom_port = free_port(), free_port()
                cfg = json.loads(self.config_path.read_text())
                cfg["HttpPort"], cfg["DicomPort"] = self.http_port, self.dicom_port
                self.config_path.write_text(json.dumps(cfg, indent=2))
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> Orthanc:
        env = {**os.environ, "TCP_NODELAY": "1"}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     env=env, cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(self.log_path, "rb") as fh:
                    fh.seek(offset)
                    text = fh.read().decode(errors="replace")
                if "already in use" in text:
                    raise _PortTaken()
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {text[-2000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer /system in time")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    # REST -----------------------------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self._request(path), timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body) -> object:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = self._request(path, data, "POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def instances(self) -> list[str]:
        return self.get("/instances")

    def tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags")

    def all_tags(self) -> list[dict]:
        return [self.tags(i) for i in self.instances()]

    def wait_for(self, predicate, timeout: float = 30.0, interval: float = 0.1):
        return wait_for(predicate, timeout, interval)
