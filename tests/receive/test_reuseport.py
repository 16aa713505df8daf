"""Several receive processes on one port (``[workers] receive = N``, SO_REUSEPORT)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from aenode.config import parse_config
from aenode.node import Supervisor
from aenode.store.index import Index

from .conftest import echoscu, free_port, storescu, wait_for
from .dicomgen import write_study

_LISTENER = """
import sys, signal, threading
from aenode.config import load_config
from aenode.logs import configure_logging
from aenode.node import Node
configure_logging("INFO", json=True, stream=sys.stdout)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
node = Node(load_config(sys.argv[1]), (), receive_slot=int(sys.argv[2])).start()
print("LISTENING", flush=True)
stop.wait()
node.stop()
"""


def _config_text(port: int, data_dir) -> str:
    return (f'[node]\nae_title = "AENODE"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data_dir}"\n'
            'max_associations = 32\n[stability]\nquiet_seconds = 30\nafter_release_seconds = 30\n'
            '[limits]\nmax_connections_per_peer = 32\n[workers]\nreceive = 2\n')


def test_supervisor_starts_one_slot_per_receive_process():
    config = parse_config({"node": {"ae_title": "AENODE"}, "workers": {"receive": 3, "analysis": 1}})
    roles = [role for role, _, _ in Supervisor(config)._slots]
    assert roles[:4] == ["receive", "receive", "receive", "analysis"]  # slot 0 starts (and listens) first


def test_two_receive_processes_on_one_port_both_take_associations(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    cfg = tmp_path / "node.toml"
    cfg.write_text(_config_text(port, data))
    studies = [write_study(tmp_path / f"s{k}", n=4, size=32) for k in range(16)]
    logs = [tmp_path / f"r{slot}.log" for slot in (0, 1)]
    procs = []
    try:
        for slot in (0, 1):  # slot 0 first: it reconciles, then the extra listener joins
            proc = subprocess.Popen([sys.executable, "-c", _LISTENER, str(cfg), str(slot)],
                                    stdout=open(logs[slot], "w"), stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_for(lambda log=logs[slot]: "LISTENING" in log.read_text(), timeout=60, interval=0.1)
        assert echoscu(port).returncode == 0
        results = []

        def send(k: int) -> None:
            results.append(storescu(port, tmp_path / f"s{k}"))

        threads = [threading.Thread(target=send, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
            time.sleep(0.02)  # distinct source ports; the kernel hashes each connection
        for t in threads:
            t.join()
        assert all(r.returncode == 0 for r in results), [r.stderr[-300:] for r in results]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)

    per_process = []
    for log in logs:
        events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        per_process.append(sum(e.get("instances", 0) for e in events if e.get("event") == "association"))
    assert all(n > 0 for n in per_process), per_process  # both processes took associations
    assert sum(per_process) == 64
    index = Index.for_data_dir(data)
    try:
        for study_uid, paths in studies:  # nothing lost, nothing twice
            rows = index.instances(study_uid)
            assert len(rows) == len(paths) == 4
            assert all(r.path.exists() for r in rows)
    finally:
        index.close()
    assert not [p for p in (data / "spool" / ".tmp").rglob("*") if p.is_file()]
