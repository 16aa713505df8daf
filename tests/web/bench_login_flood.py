"""C-ECHO latency of the node's SCP while 40 threads flood the dashboard's login, vs idle,
in one run: ``python -m tests.web.bench_login_flood [ECHOES]``.

Phases, each in its own process against a fresh node (``aenode.node.running_node``, SCP
+ web worker on loopback), the flood from another process: idle; flood with the default bound (``login_concurrency`` 1, ``login_queue``
8); flood with the widest bound the configuration allows (8 verifications, queue 1000),
the closest to the unbounded behaviour before issue 15.  The flood uses 40 loopback source
addresses and fresh user names, so the throttle does not end it: only the verification
bound protects the receiver.  C-ECHO by DCMTK ``/usr/bin/echoscu`` (TCP_NODELAY=1)."""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from aenode.config import REPO_MODELS_DIR, parse_config
from aenode.logs import configure_logging
from aenode.node import running_node
from aenode.peers import wait_for
from aenode.web.auth import hash_password
from benchmarks.machine import describe as machine
from tests.web.conftest import free_port, web_section

ECHOSCU = "/usr/bin/echoscu"


def echo_once(port: int) -> float:
    t = time.perf_counter()
    r = subprocess.run([ECHOSCU, "-aet", "BENCH", "-aec", "AENODE", "127.0.0.1", str(port)],
                       capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"})
    assert r.returncode == 0, r.stderr
    return time.perf_counter() - t


def rss_mb() -> float:
    """Peak resident memory of this process (one process per phase, so one peak per phase)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def flood(url: str, seconds: float) -> None:
    """40 threads, 40 loopback source addresses, fresh user names; prints the status counts."""
    stop = threading.Event()
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def flooder(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60, transport=httpx.HTTPTransport(
                local_address=f"127.0.1.{i + 1}")) as c:
            n = 0
            while not stop.is_set():
                page = c.get("/login")
                m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                assert m
                r = c.post("/login", data={"username": f"flood{i}-{n}", "password": "wrong-password",
                                           "csrf_token": m.group(1)})
                n += 1
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1

    threads = [threading.Thread(target=flooder, args=(i,), daemon=True) for i in range(40)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    print(json.dumps(codes), flush=True)


PHASES: dict[str, tuple[str, bool, dict[str, object]]] = {
    "idle": ("idle", False, {}),
    "bounded": ("40-thread login flood, default bound (1 running, 8 queued)", True, {}),
    "wide": ("40-thread login flood, widest bound (8 running, 1000 queued)", True,
             {"login_concurrency": 8, "login_queue": 1000}),
}


def phase(key: str, echoes: int) -> None:
    """One node in this process; the flood (if any) from a separate process, so the
    clients do not compete with the node for this interpreter's GIL."""
    name, flooding, web = PHASES[key]
    configure_logging("WARNING")
    root = Path(tempfile.mkdtemp(prefix="aenode-bench-flood-"))
    atexit.register(shutil.rmtree, root, True)
    config = parse_config({
        "node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": free_port(), "data_dir": str(root / "d")},
        "model": {"path": str(REPO_MODELS_DIR)},
        "web": web_section({"vera": hash_password("vera-password-1")}, **web),
    })
    codes: dict[str, int] = {}
    with running_node(config, workers=("web",)) as node:
        w = node.web
        assert w is not None and wait_for(lambda: w.ready.is_set(), 20)
        proc = None
        if flooding:
            proc = subprocess.Popen([sys.executable, "-m", "tests.web.bench_login_flood", "--flood", w.url,
                                     str(2.0 + echoes * 0.6)], stdout=subprocess.PIPE, text=True)
            time.sleep(2.0)
        lat = [echo_once(node.port) for _ in range(echoes)]
        if proc is not None:
            out, _ = proc.communicate(timeout=300)
            codes = json.loads(out.strip().splitlines()[-1])
    lat.sort()
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    print(f"| {name} | {statistics.median(lat) * 1000:.0f} ms | {p95 * 1000:.0f} ms | {max(lat) * 1000:.0f} ms |"
          f" {codes.get('303', 0)} / {codes.get('429', 0)} | {rss_mb():.0f} MB |", flush=True)


def main(echoes: int) -> None:
    print(f"machine: {machine()}")
    print("| phase | C-ECHO median | p95 | max | logins verified / answered 429 | peak RSS (node process) |")
    print("|---|---|---|---|---|---|", flush=True)
    for key in PHASES:
        subprocess.run([sys.executable, "-m", "tests.web.bench_login_flood", "--phase", key, str(echoes)],
                       check=True, timeout=600)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        flood(sys.argv[2], float(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--phase":
        phase(sys.argv[2], int(sys.argv[3]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
