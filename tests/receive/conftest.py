"""Fixtures for the receive tests: free ports, configs, a running node, DCMTK helpers."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aenode.config import parse_config
from aenode.logs import configure_logging
from aenode.node import running_node

STORESCU = "/usr/bin/storescu"  # DCMTK, not a pyenv shim of pynetdicom's apps
ECHOSCU = "/usr/bin/echoscu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tmp_path: Path, port: int | None = None, **sections):
    data = {
        "node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": port or free_port(),
                 "data_dir": str(tmp_path / "data"), **sections.pop("node", {})},
        "stability": {"quiet_seconds": 1.0, "after_release_seconds": 0.3, **sections.pop("stability", {})},
        **sections,
    }
    return parse_config(data)


def write_toml(path: Path, config) -> Path:
    n = config.node
    text = (f'[node]\nae_title = "{n.ae_title}"\nhost = "{n.host}"\nport = {n.port}\n'
            f'data_dir = "{n.data_dir}"\nmax_associations = {n.max_associations}\n'
            f'[stability]\nquiet_seconds = {config.stability.quiet_seconds}\n'
            f'after_release_seconds = {config.stability.after_release_seconds}\n')
    for s in config.sources:
        text += f'[[sources]]\nae_title = "{s.ae_title}"\n' + (f'host = "{s.host}"\n' if s.host else "")
    path.write_text(text)
    return path


def storescu(port: int, *paths: Path, aec: str = "AENODE", aet: str = "STORESCU", extra: tuple = (),
             timeout: float = 120) -> subprocess.CompletedProcess:
    args = [STORESCU, "-v", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)]
    for p in paths:
        args += ["+sd", str(p)] if Path(p).is_dir() else [str(p)]
    args += list(extra)  # options may follow the peer address; a trailing path is allowed too
    return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)


def echoscu(port: int, aec: str = "AENODE", aet: str = "ECHOSCU") -> subprocess.CompletedProcess:
    return subprocess.run([ECHOSCU, "-v", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=DCMTK_ENV, timeout=60)


def wait_for(predicate, timeout: float = 15, interval: float = 0.05):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def log_buffer():
    """Capture the node's structured log lines in memory (for no-PHI assertions)."""
    buf = io.StringIO()
    configure_logging("DEBUG", json=True, stream=buf)
    yield buf
    configure_logging("INFO", json=True, stream=sys.stderr)


@pytest.fixture
def node(tmp_path):
    config = make_config(tmp_path)
    with running_node(config, workers=()) as handle:
        yield handle


@pytest.fixture
def node_factory(tmp_path):
    """Start a node with config overrides: ``node_factory(sources=[...], node={...})``."""
    started = []

    def start(**sections):
        config = make_config(tmp_path, **sections)
        cm = running_node(config, workers=())
        handle = cm.__enter__()
        started.append(cm)
        return handle

    yield start
    for cm in reversed(started):
        cm.__exit__(None, None, None)
