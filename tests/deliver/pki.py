"""A throwaway PKI for TLS tests, made with the openssl command line tool: a CA, a server
certificate for 127.0.0.1 / localhost, a client certificate, and a second unrelated CA."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "/usr/bin/openssl"


@dataclass(frozen=True)
class PKI:
    ca: Path
    other_ca: Path  # signs nothing we use: a client trusting only this one must refuse the server
    server_cert: Path
    server_key: Path
    server_pem: Path  # key + certificate in one file (Orthanc's HTTPS wants that)
    client_cert: Path
    client_key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
         "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _leaf(d: Path, name: str, ca: str, san: str | None) -> None:
    _run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
         "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName = {san}\n" if san else "basicConstraints = CA:FALSE\n")
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
         "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt", cwd=d)


def make_pki(d: Path) -> PKI:
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", "IP:127.0.0.1, DNS:localhost")
    _leaf(d, "client", "ca", None)
    pem = d / "server-full.pem"
    pem.write_bytes((d / "server.key").read_bytes() + (d / "server.crt").read_bytes())
    return PKI(ca=d / "ca.pem", other_ca=d / "other-ca.pem", server_cert=d / "server.crt",
               server_key=d / "server.key", server_pem=pem, client_cert=d / "client.crt",
               client_key=d / "client.key")
