"""A throwaway PostgreSQL server for tests: ``initdb`` into a temporary folder, loopback
only, a free port, stopped and removed at the end.  Needs only Debian's ``postgresql``
package (no running service, no configuration).

As root, ``initdb`` and ``postgres`` refuse to run, so both run as the ``postgres`` user
(``runuser``); as anyone else they run as that user.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("AENODE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One running server; :meth:`new_database` hands out an empty database per test."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.port = port
        self._ids = itertools.count(1)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres:canary-secret@127.0.0.1:{self.port}/{dbname}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its URL."""
        name = f"{prefix}{os.getpid()}_{next(self._ids)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def connections(self, dbname: str) -> int:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname=%s", (dbname,)).fetchone()
        return int(row[0]) if row else 0


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def pg_server(*, durable: bool = False) -> Iterator[PgServer]:
    """Start a server; ``durable=False`` turns fsync off (tests only: faster, same SQL)."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"PostgreSQL not found in {PG_BIN} (Debian package 'postgresql')")
    root = Path(tempfile.mkdtemp(prefix="aenode-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    pwfile = root / "pw"
    pwfile.write_text("canary-secret\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        shutil.chown(pwfile, "postgres")
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256",
                                 f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-sync"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = _free_port()
    opts = [f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock}",
            "-c max_connections=300 -c shared_buffers=32MB"]
    if not durable:
        opts.append("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    log = root / "server.log"
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                 "-o", " ".join(opts), "start"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = PgServer(root, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(server.url(), connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield server
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def restart(server: PgServer) -> None:
    """Stop and start the same server (tests that the stores reconnect)."""
    data = server.root / "data"
    subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "restart"]),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
