"""``aenode serve`` runs the heavy stages in separate processes under one supervisor
(issue 11): a dead process is restarted and its claimed studies handed back, SIGTERM
stops everything cleanly, and a supervisor killed with SIGKILL takes its children along."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from aenode.config import Config
from aenode.node import analysis_processes
from aenode.store.index import ANALYSING, COMPLETE, Index
from aenode.store.meta import InstanceHeader
from tests.receive.conftest import echoscu, free_port, wait_for


def _serve(tmp_path: Path, extra: str = "") -> tuple[subprocess.Popen, int, Path]:
    port, web = free_port(), free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nae_title = "AENODE"\nhost = "127.0.0.1"\nport = {port}\n'
                   f'data_dir = "{tmp_path / "data"}"\n[web]\nport = {web}\n'
                   f'[workers]\nanalysis = 2\nthreads_per_analysis = 1\n{extra}')
    log = tmp_path / "node.log"
    proc = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(cfg)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    return proc, port, log


def _roles(proc: subprocess.Popen) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for child in psutil.Process(proc.pid).children():
        try:
            name = child.name()
        except psutil.NoSuchProcess:
            continue
        out.setdefault(name, []).append(child.pid)
    return out


def test_processes_restart_and_stop_cleanly(tmp_path):
    proc, port, log = _serve(tmp_path)
    try:
        assert wait_for(lambda: echoscu(port).returncode == 0, timeout=60, interval=0.2)
        children = wait_for(lambda: (c := psutil.Process(proc.pid).children()) and len(c) >= 5 and c, 60)
        pids = {c.pid for c in children}
        assert len(pids) >= 5  # receive, 2 analysis, delivery, web

        # Kill every child except the listener: each comes back, the listener keeps serving.
        listener = next(c for c in children if any(
            conn.status == psutil.CONN_LISTEN and conn.laddr.port == port for conn in c.net_connections()))
        victims = [c for c in children if c.pid != listener.pid]
        for v in victims:
            os.kill(v.pid, signal.SIGKILL)
        assert echoscu(port).returncode == 0
        wait_for(lambda: len({c.pid for c in psutil.Process(proc.pid).children()} - pids) >= len(victims), 60,
                 interval=0.2)
        text = log.read_text()
        assert text.count('"process_died"') >= len(victims) and '"process_restarted"' in text
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0
    assert all(not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)


def test_children_die_with_a_killed_supervisor(tmp_path):
    proc, port, _ = _serve(tmp_path)
    assert wait_for(lambda: echoscu(port).returncode == 0, timeout=60, interval=0.2)
    children = wait_for(lambda: (c := psutil.Process(proc.pid).children()) and len(c) >= 5 and c, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    gone = wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 20)
    assert gone, "children outlived the supervisor"
    assert echoscu(port).returncode != 0  # the port is free for the restarted node


def test_claims_of_a_dead_analysis_process_are_handed_back(tmp_path):
    index = Index.for_data_dir(tmp_path)
    try:
        for k, worker in enumerate(("infer-111-1", "infer-222-1")):
            uid = f"1.2.3.{k + 1}"
            index.record_instance(InstanceHeader(study_uid=uid, series_uid=uid + ".1", sop_instance_uid=uid + ".1.1",
                                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.2"),
                                  tmp_path / f"{k}.dcm", 1, "CT", received_at=1.0)
            assert index.mark_complete(uid, 1.0)
            assert index.claim_next_complete(worker) is not None
        assert index.release_claims("infer-111-") == 1
        assert index.study("1.2.3.1").state == COMPLETE     # the dead process's study
        assert index.study("1.2.3.2").state == ANALYSING    # the live one's stays with it
    finally:
        index.close()


def test_default_analysis_processes_leave_cores_for_the_rest():
    assert analysis_processes(Config(), cores=2) == 1
    assert analysis_processes(Config(), cores=16) == 8
    assert analysis_processes(Config(), cores=64) == 8
    assert analysis_processes(Config.model_validate({"workers": {"analysis": 3}}), cores=2) == 3


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs CPU affinity and at least two cores")
def test_default_sizing_counts_the_cores_the_node_may_use_not_the_host():
    # A node pinned to one core (taskset, a container's cpuset) on a bigger host: sizing
    # from os.cpu_count() would start more analysis threads than it can run.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from aenode.node import usable_cores; print(usable_cores(), os.cpu_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == 1 and int(out[1]) >= 2


def _report_mask(config, role, wakeups, ready, log_level, threads, slot):
    """Stands in for ``node._child``: writes the signal mask the child started with."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    Path(config.node.data_dir, f"mask-{role}").write_text(",".join(str(int(s)) for s in sorted(mask)))


def test_children_start_with_stop_signals_blocked(tmp_path, monkeypatch):
    """A SIGTERM that reaches a child before it has its own handler must wait for that
    handler (a child forked with the supervisor's handler would ignore it and run on until
    killed): the child starts with SIGTERM/SIGINT blocked, the supervisor's mask is restored."""
    from aenode import node
    from aenode.config import parse_config

    config = parse_config({"node": {"data_dir": str(tmp_path), "port": free_port()}})
    monkeypatch.setattr(node, "_child", _report_mask)
    supervisor = node.Supervisor(config)
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    supervisor._start(0)
    _, proc, _ = supervisor._slots[0]
    assert proc is not None
    proc.join(30)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    started = {int(s) for s in (tmp_path / "mask-receive").read_text().split(",") if s}
    assert {int(signal.SIGTERM), int(signal.SIGINT)} <= started
