"""Several ``aenode serve`` processes on one PostgreSQL and one spool, with the real peers:
used by the two-node test and by ``benchmarks/bench_scaleout.py``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from aenode.config import REPO_MODELS_DIR
from aenode.peers.orthanc import Orthanc, free_port
from aenode.peers.webhook import WebhookServer

STORESCU = "/usr/bin/storescu"   # DCMTK (pynetdicom installs a script of the same name)
ECHOSCU = "/usr/bin/echoscu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class NodeProcess:
    name: str
    port: int
    config: Path
    log: Path
    web_port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), "TCP_NODELAY": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            ok = subprocess.run([ECHOSCU, "-aec", "AENODE", "127.0.0.1", str(self.port)],
                                capture_output=True, env=DCMTK_ENV, timeout=30).returncode == 0
            if ok and '"node_started"' in self.log.read_text():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill9()

    def events(self, event: str) -> list[dict]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


def node_toml(path: Path, *, name: str, port: int, web_port: int, data_dir: Path, url: str | None,
              orthanc: Orthanc, webhook: WebhookServer, quiet: float = 1.0, after_release: float = 0.3,
              lease: float = 60.0) -> Path:
    database = f'[database]\nurl = "{url}"\nlease_seconds = {lease}\n' if url else ""
    path.write_text(f"""[node]
ae_title = "AENODE"
host = "127.0.0.1"
port = {port}
data_dir = "{data_dir}"
name = "{name}"
[stability]
quiet_seconds = {quiet}
after_release_seconds = {after_release}
[delivery]
poll_seconds = 0.2
backoff_base_seconds = 0.5
backoff_cap_seconds = 2.0
[model]
path = "{REPO_MODELS_DIR}"
[web]
port = {web_port}
[retention]
enabled = false
[[destinations]]
type = "dicom"
name = "pacs"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
[alerts.webhook]
url = "{webhook.url}"
insecure = true
{database}""")
    return path


def make_nodes(tmp: Path, count: int, *, url: str | None, orthanc: Orthanc, webhook: WebhookServer,
               data_dir: Path | None = None, **kw: float) -> list[NodeProcess]:
    """``count`` nodes sharing ``data_dir`` (one spool) and ``url`` (one database)."""
    data = data_dir or tmp / "shared-data"
    nodes = []
    for k in range(count):
        port, web_port = free_port(), free_port()
        name = f"node{chr(ord('a') + k)}"
        cfg = node_toml(tmp / f"{name}.toml", name=name, port=port, web_port=web_port, data_dir=data,
                        url=url, orthanc=orthanc, webhook=webhook, **kw)
        nodes.append(NodeProcess(name, port, cfg, tmp / f"{name}.log", web_port))
    return nodes


def send(port: int, files: list[Path], aet: str = "CT01") -> subprocess.Popen:
    """DCMTK storescu, one association, the given files in order."""
    return subprocess.Popen([STORESCU, "-aet", aet, "-aec", "AENODE", "127.0.0.1", str(port), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=DCMTK_ENV)


def analysed_counts(nodes: list[NodeProcess]) -> Counter[str]:
    """How many times each study was analysed, over every node's log."""
    return Counter(e["study_uid"] for n in nodes for e in n.events("study_analysed"))


def orthanc_sr_counts(orthanc: Orthanc) -> Counter[str]:
    """SR instances per study in the PACS."""
    got: Counter[str] = Counter()
    for iid in orthanc.instances():
        tags = orthanc.tags(iid)
        if tags.get("Modality") == "SR":
            got[str(tags.get("StudyInstanceUID"))] += 1
    return got
