"""Attack figures (issue 15): a real ``aenode serve`` with the DEFAULT [limits], on loopback.

For each attack, in one run: the server's peak RSS while it lasts (VmHWM, reset before each
attack) against the idle baseline, and C-ECHO latency (DCMTK echoscu from 127.0.0.1, which
the attackers never use) while it lasts against idle.  Then 1,000 associations dropped in
the middle of a C-STORE: open file descriptors and spool temp files before and after.

Usage: python benchmarks/bench_attacks.py [--seconds 6] [--drops 1000]
Prints a Markdown table.  Every attack is bounded in count and time and targets 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import describe  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from tests.receive import served as served_mod  # noqa: E402
from tests.receive.conftest import echoscu, free_port, storescu  # noqa: E402
from tests.receive.dicomgen import ct_slice, save  # noqa: E402
from tests.receive.rawdicom import (  # noqa: E402
    CT,
    RawAssociation,
    associate_rq,
    closed_by_peer,
    command,
    connect,
    p_data,
    pdv,
)

MiB = 1024 * 1024


def echo_latency(port: int, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        try:
            ok = echoscu(port).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        out.append(time.monotonic() - t0 if ok else float("inf"))
        time.sleep(0.2)
    return out


def hold(sock: socket.socket, stop: threading.Event) -> None:
    """Keep the connection until the node closes it or the attack is stopped."""
    while not stop.is_set() and not closed_by_peer(sock, 0.5):
        pass


def looping(stop: threading.Event, body: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        while not stop.is_set():
            try:
                body()
            except OSError:
                time.sleep(0.01)
    return run


def attack_declared_length(port: int, i: int, stop: threading.Event) -> Callable[[], None]:
    def body() -> None:
        s = connect(port, f"127.0.10.{1 + i}")
        s.sendall(b"\x01\x00\xff\xff\xff\xff")
        hold(s, stop)
        s.close()
    return looping(stop, body)


def attack_pdata_length(port: int, i: int, stop: threading.Event) -> Callable[[], None]:
    def body() -> None:
        a = RawAssociation(port, f"127.0.11.{1 + i}")
        if a.ok:
            a.send(b"\x04\x00\xff\xff\xff\xff" + b"\0" * 1024)
            hold(a.sock, stop)
        a.close()
        time.sleep(0.02)
    return looping(stop, body)


def attack_full_pdu_held(port: int, i: int, stop: threading.Event) -> Callable[[], None]:
    """The worst a peer may legally make us hold: one 4 MiB PDU, all but its last byte."""
    def body() -> None:
        a = RawAssociation(port, f"127.0.12.{1 + i}")
        if a.ok:
            a.send(b"\x04\x00" + struct.pack(">L", 4 * MiB) + b"\0" * (4 * MiB - 1))
            hold(a.sock, stop)
        a.close()
        time.sleep(0.05)
    return looping(stop, body)


def attack_idle(port: int, i: int, stop: threading.Event) -> Callable[[], None]:
    source = "127.0.13.1" if i < 100 else f"127.0.14.{i - 99}"  # 100 from one peer, the rest from many

    def body() -> None:
        s = connect(port, source)
        hold(s, stop)
        s.close()
    return looping(stop, body)


def attack_trickle(port: int, i: int, stop: threading.Event) -> Callable[[], None]:
    def body() -> None:
        if i % 2:
            s = connect(port, f"127.0.15.{1 + i}")
            data = associate_rq()
        else:
            a = RawAssociation(port, f"127.0.15.{1 + i}")
            if not a.ok:
                a.close()
                return
            s, data = a.sock, p_data(pdv(1, 3, command(0x0030, "1.2.840.10008.1.1")))
        for k in range(len(data)):
            if stop.is_set():
                break
            s.sendall(data[k:k + 1])
            if closed_by_peer(s, 1.0):
                break
        s.close()
    return looping(stop, body)


def attack_pixel_bombs(port: int, i: int, stop: threading.Event, folder: Path) -> Callable[[], None]:
    def body() -> None:
        storescu(port, folder, extra=("--no-halt",))
    return looping(stop, body)


def run_attack(node: served_mod.Served, name: str, threads: list[Callable[[], None]], stop: threading.Event,
               seconds: float) -> dict[str, object]:
    node.reset_peak()
    before = node.rss_mb()
    workers = [threading.Thread(target=t, daemon=True) for t in threads]
    for w in workers:
        w.start()
    time.sleep(1.0)
    echo = echo_latency(node.port, max(3, int(seconds / 0.3)))
    stop.set()
    for w in workers:
        w.join(20)
    return {"attack": name, "connections": len(threads), "rss_before": before, "peak": node.peak_rss_mb(),
            "echo_median": statistics.median(echo), "echo_max": max(echo)}


def drops(node: served_mod.Served, n: int) -> dict[str, float]:
    time.sleep(1.0)
    base = node.fds()
    done = attempt = 0
    t0 = time.monotonic()
    while done < n and time.monotonic() - t0 < 300:
        attempt += 1
        a = RawAssociation(node.port, f"127.0.16.{1 + attempt % 250}")
        if not a.ok:
            a.close()
            time.sleep(0.005)
            continue
        a.send(p_data(pdv(3, 3, command(0x0001, CT, 1, generate_uid(), data_set=True))))
        a.send(p_data(pdv(3, 0, b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" * 100)))
        if attempt % 2:
            a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()
        done += 1
    sending = time.monotonic() - t0
    peak_fds = node.fds()
    end = time.monotonic() + 60
    while time.monotonic() < end and (node.fds() > base or node.tmp_files()):
        time.sleep(0.2)
    return {"drops": done, "seconds": sending, "fds_before": base, "fds_right_after": peak_fds,
            "fds_after": node.fds(), "tmp_files_after": len(node.tmp_files()),
            "settled_s": time.monotonic() - t0 - sending}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="echo sampling time per attack")
    ap.add_argument("--drops", type=int, default=1000)
    args = ap.parse_args()
    os.environ.setdefault("TCP_NODELAY", "1")
    root = Path(tempfile.mkdtemp(prefix="bench-attacks-"))
    port = free_port()
    cfg = served_mod.write_config(root / "node.toml", port, root / "data", None, max_associations=16)
    node = served_mod.start(cfg, port, root / "data", root / "node.log", echoscu)
    bombs = root / "bombs"
    for k, attrs in enumerate(({"Rows": 16384, "Columns": 64}, {"Rows": 8192, "Columns": 8192, "NumberOfFrames": 64},
                               {"BitsAllocated": 128})):
        ds = ct_slice(generate_uid(), generate_uid(), 0, size=8)
        for key, v in attrs.items():
            setattr(ds, key, v)
        save(ds, bombs / f"b{k}.dcm")
    print(f"machine: {describe()}; aenode serve with default [limits], max_associations 16\n")
    rows = []
    try:
        node.reset_peak()
        idle_rss = node.rss_mb()
        idle_echo = echo_latency(node.port, max(3, int(args.seconds / 0.3)))
        rows.append({"attack": "none (idle)", "connections": 0, "rss_before": idle_rss, "peak": node.peak_rss_mb(),
                     "echo_median": statistics.median(idle_echo), "echo_max": max(idle_echo)})
        attacks: list[tuple[str, int, Callable[..., Callable[[], None]]]] = [
            ("A-ASSOCIATE-RQ declaring 4 GiB", 16, attack_declared_length),
            ("P-DATA-TF declaring 4 GiB", 8, attack_pdata_length),
            ("full 4 MiB PDU held open", 14, attack_full_pdu_held),
            ("idle TCP (100 one peer + 100 peers)", 200, attack_idle),
            ("1-byte tricklers (RQ and PDU)", 16, attack_trickle),
        ]
        for name, n, make in attacks:
            stop = threading.Event()
            rows.append(run_attack(node, name, [make(node.port, i, stop) for i in range(n)], stop, args.seconds))
            print(rows[-1], flush=True)
        stop = threading.Event()
        rows.append(run_attack(node, "pixel bombs (DCMTK, refused 0xC000)", [attack_pixel_bombs(node.port, 0, stop, bombs)],
                               stop, args.seconds))
        print("| attack | connections | RSS before (MB) | peak RSS (MB) | growth (MB) | C-ECHO median (s) | C-ECHO max (s) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['attack']} | {r['connections']} | {r['rss_before']:.0f} | {r['peak']:.0f} | "
                  f"{float(r['peak']) - float(r['rss_before']):.0f} | {r['echo_median']:.3f} | {r['echo_max']:.3f} |")
        d = drops(node, args.drops)
        print(f"\n{d['drops']} associations dropped mid C-STORE in {d['seconds']:.1f} s: open fds {d['fds_before']} before,"
              f" {d['fds_right_after']} right after, {d['fds_after']} {d['settled_s']:.1f} s later;"
              f" spool temp files left: {d['tmp_files_after']}")
    finally:
        rc = node.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"node exit code {rc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
