"""Ingest benchmarks (issue 3): how fast and how lean ``aenode serve`` receives.

Modes (default: all):
  speed     one 400-slice 512x512 CT study over one association with DCMTK storescu, to
            DCMTK storescp, Orthanc (when installed; else "orthanc: not available") and
            ``aenode serve`` in the same run; prints each time (best and median of --repeat)
            and the ratio aenode/storescp; then the cost of durability on the same disk in
            the same run, per instance of the study's size: the journal record aenode syncs
            before answering (write into a preallocated, already written segment +
            fdatasync), a fresh file's fsync + rename + fsync(directory) (the previous
            design), and an append + fdatasync to a growing file.  DCMTK storescp does not
            sync at all; "storescp + one fdatasync per instance" is the floor of any design
            that keeps aenode's promise.
  parallel  four associations sending four studies at once to aenode: aggregate MB/s
            (--receive-workers N: N receive processes on the port, [workers] receive)
  rss       ~1 GB (big multi-frame objects) to aenode: peak RSS growth of the server

Usage: python benchmarks/bench_ingest.py [--mode speed|parallel|rss|all] [--repeat 5]
Everything runs on loopback with TCP_NODELAY=1 in the DCMTK/Orthanc environments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from machine import cpu_name
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from aenode.store.spool import fsync_dir  # the node's own: what its durability costs

STORESCU = "/usr/bin/storescu"   # not a pyenv shim of pynetdicom's app
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- data ------------------------------------------------------------------------------


def _ct(study: str, series: str, i: int, rows: int, frames: int, rng) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName, ds.PatientID = "BENCH^PATIENT", "BENCH1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.2", "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber, ds.SliceThickness = i + 1, 1.0
    ds.ImagePositionPatient = [0.0, 0.0, float(i)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(-1024, 2000, rows * rows * frames, dtype=np.int16).tobytes()
    return ds


def make_study(out: Path, slices: int, rows: int = 512, frames: int = 1, seed: int = 1) -> Path:
    """The phantom generator's study if available, else random-pixel CT files."""
    out.mkdir(parents=True, exist_ok=True)
    if frames == 1 and rows == 512:
        try:
            from aenode.phantom import generate_study  # type: ignore[import-not-found]
        except ImportError:
            pass
        else:
            generate_study(out, "typical", seed=seed, slices=slices, extra_series=False)
            return out
    rng = np.random.default_rng(seed)
    study, series = generate_uid(), generate_uid()
    for i in range(slices):
        _ct(study, series, i, rows, frames, rng).save_as(out / f"ct{i:04d}.dcm", enforce_file_format=True)
    return out


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*.dcm") if f.is_file()) / 1e6


# ---- receivers ---------------------------------------------------------------------------


def wait_echo(port: int, aet: str, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        r = subprocess.run([ECHOSCU, "-aec", aet, "127.0.0.1", str(port)], capture_output=True, env=ENV)
        if r.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"no C-ECHO answer on port {port}")


class Receiver:
    name = ""
    aet = "ANY-SCP"

    def __init__(self, work: Path):
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None: ...

    def reset(self) -> None:
        """Forget what was received so that every send is a first send."""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class StoreSCP(Receiver):
    name = "dcmtk storescp"

    def start(self) -> None:
        self.out = self.work / "storescp"
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([STORESCP, "-od", str(self.out), str(self.port)], env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_echo(self.port, self.aet)

    def reset(self) -> None:
        for f in self.out.iterdir():
            f.unlink()


class Orthanc(Receiver):
    name = "orthanc"
    aet = "ORTHANC"

    def start(self) -> None:
        self.dir = self.work / "orthanc"
        self._launch()

    def _launch(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        cfg = {"Name": "bench", "StorageDirectory": str(self.dir / "db"), "IndexDirectory": str(self.dir / "db"),
               "DicomAet": self.aet, "DicomPort": self.port, "HttpPort": free_port(),
               "RemoteAccessAllowed": False, "DicomCheckCalledAet": False, "Plugins": [],
               "HttpServerEnabled": True, "StorageCompression": False}
        (self.dir / "orthanc.json").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen([ORTHANC, str(self.dir / "orthanc.json")], env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_echo(self.port, self.aet)

    def reset(self) -> None:
        self.stop()
        self._launch()


class Aenode(Receiver):
    name = "aenode serve"
    aet = "AENODE"
    receive_workers = 1  # [workers] receive (--receive-workers)

    def start(self) -> None:
        self.data = self.work / "aenode-data"
        shutil.rmtree(self.data, ignore_errors=True)
        self._launch()

    def _launch(self) -> None:
        cfg = self.work / "aenode.toml"
        cfg.write_text(f'[node]\nae_title = "{self.aet}"\nhost = "127.0.0.1"\nport = {self.port}\n'
                       f'data_dir = "{self.data}"\nmax_associations = 16\n'
                       '[stability]\nquiet_seconds = 30\n'
                       f'[workers]\nreceive = {self.receive_workers}\n')
        log_path = self.work / "aenode.log"
        self.log = open(log_path, "ab")
        start = log_path.stat().st_size
        self.proc = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(cfg)],
                                     stdout=self.log, stderr=self.log)
        wait_echo(self.port, self.aet)
        self._wait_started(log_path, start)

    @staticmethod
    def _wait_started(log_path: Path, start: int, timeout: float = 60.0) -> None:
        """Until every analysis process has logged ``results_warmed_up``: the receive
        answers C-ECHO before the analysis processes finish loading their models and
        warming highdicom up, and on a small machine that start-up would otherwise run
        inside the timed send (the benchmark measures receiving, not starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = []
            with open(log_path, "rb") as f:
                f.seek(start)
                for line in f:
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        continue
            started = [e for e in events if e.get("event") == "supervisor_started"]
            if started:
                want = list(started[-1].get("processes", [])).count("analysis")
                ready = [e for e in events if e.get("event") == "analysis_worker_ready"]
                warmed = [e for e in events if e.get("event") in ("results_warmed_up", "results_warm_up_failed")]
                with_models = any(e.get("models") for e in ready)
                if len(ready) >= want and (not with_models or len(warmed) >= want):
                    return  # (without models there is nothing to warm up)
            time.sleep(0.05)
        print(f"# aenode: analysis warm-up not seen in {timeout:.0f} s; timing anyway")

    def wait_indexed(self, n: int, timeout: float = 120.0) -> float:
        """``time.perf_counter()`` once the index holds ``n`` instances."""
        import sqlite3

        end = time.monotonic() + timeout
        db = sqlite3.connect(f"file:{self.data / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            while time.monotonic() < end:
                if db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] >= n:
                    return time.perf_counter()
                time.sleep(0.005)
        finally:
            db.close()
        raise RuntimeError(f"aenode: {n} instances not indexed within {timeout:.0f} s")

    def reset(self) -> None:
        """A fresh data directory, except the receive journal: a node that has been running
        reuses its journal segments (written, so its syncs convert no extents), see
        aenode/store/journal.py; the warm-up send made them."""
        self.stop()
        journal, kept = self.data / "journal", self.work / "aenode-journal"
        shutil.rmtree(kept, ignore_errors=True)
        if journal.exists():
            journal.rename(kept)
        shutil.rmtree(self.data, ignore_errors=True)
        if kept.exists():
            self.data.mkdir(parents=True)
            kept.rename(journal)
        self._launch()

def send(port: int, aet: str, folder: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([STORESCU, "-aec", aet, "127.0.0.1", str(port), "+sd", "+r", "+sp", "*.dcm", str(folder)],
                       env=ENV, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed ({r.returncode}): {r.stderr[-400:]}")
    return dt


# ---- modes -------------------------------------------------------------------------------


def fsync_cost(folder: Path, samples: int = 60) -> dict:
    """Seconds per instance (files of the study's size, on the benchmark's disk): the journal
    record aenode syncs before answering (pwrite into a preallocated, already written
    segment + fdatasync), the previous design's commit (fsync file, rename, fsync directory),
    the same without syncs, and an append + fdatasync to a growing file."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    data = files[len(files) // 2].read_bytes()
    d = folder.parent / "fsync-probe"
    shutil.rmtree(d, ignore_errors=True)
    (d / "tmp").mkdir(parents=True)
    (d / "dst").mkdir()

    stride = (len(data) + 512 + 4095) // 4096 * 4096
    segment = os.open(d / "segment", os.O_RDWR | os.O_CREAT, 0o600)
    zeros = bytes(1 << 20)
    for off in range(0, stride * samples + len(zeros), len(zeros)):  # written, as a recycled segment is
        os.pwrite(segment, zeros, off)
    os.fsync(segment)
    commit = nosync = journal = append = 0.0
    growing = os.open(d / "growing", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for i in range(samples):  # interleaved, so that a busy disk weighs on all alike
        t = time.perf_counter()
        os.pwrite(segment, data, i * stride + 512)
        os.pwrite(segment, bytes(512), i * stride)
        os.fdatasync(segment)
        journal += time.perf_counter() - t
        t = time.perf_counter()
        fd = os.open(d / "tmp" / f"a{i}", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.replace(d / "tmp" / f"a{i}", d / "dst" / f"a{i}")
        fsync_dir(d / "dst")
        commit += time.perf_counter() - t
        t = time.perf_counter()
        fd = os.open(d / "tmp" / f"b{i}", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.replace(d / "tmp" / f"b{i}", d / "dst" / f"b{i}")
        nosync += time.perf_counter() - t
        t = time.perf_counter()
        os.write(growing, data)
        os.fdatasync(growing)
        append += time.perf_counter() - t
    os.close(growing)
    os.close(segment)
    shutil.rmtree(d, ignore_errors=True)
    return {"journal_s": journal / samples, "commit_s": commit / samples, "no_sync_s": nosync / samples,
            "append_fdatasync_s": append / samples, "bytes": len(data)}


def mode_speed(work: Path, repeat: int, slices: int) -> dict:
    study = make_study(work / "study", slices)
    mb = folder_mb(study)
    print(f"study: {slices} slices, {mb:.0f} MB")
    out: dict = {}
    indexed: list[float] = []
    for cls in (StoreSCP, Orthanc, Aenode):
        rx = cls(work)
        if cls is Orthanc and not Path(ORTHANC).exists():
            print("orthanc: not available")
            continue
        rx.start()
        try:
            send(rx.port, rx.aet, study)  # warm-up, not timed (page cache, journal segments)
            times = []
            for _ in range(repeat):
                rx.reset()
                # No dirty pages left by the previous send (of any receiver): its writeback
                # would otherwise land in this one's time (storescp's best and worst runs
                # differed 2x on the 2-core VM without this).
                os.sync()
                t0 = time.perf_counter()
                times.append(send(rx.port, rx.aet, study))
                if isinstance(rx, Aenode):
                    indexed.append(rx.wait_indexed(slices) - t0)
        finally:
            rx.stop()
        out[rx.name] = {"best": min(times), "median": statistics.median(times), "all": times}
        print(f"{rx.name:15s} best {min(times):6.2f} s  median {statistics.median(times):6.2f} s"
              f"  ({mb / min(times):.0f} MB/s)  runs {[round(t, 2) for t in times]}")
    out["aenode indexed"] = {"best": min(indexed), "median": statistics.median(indexed), "all": indexed}
    print(f"aenode: every instance indexed (and in its spool file) after best {min(indexed):.2f} s, median"
          f" {statistics.median(indexed):.2f} s from the start of the send (the materialiser yields to the"
          f" receive, aenode/receive/materialise.py)")
    a, s = out["aenode serve"], out["dcmtk storescp"]
    print(f"ratio aenode/storescp: best {a['best'] / s['best']:.2f}  median {a['median'] / s['median']:.2f}")
    if "orthanc" in out:
        print(f"ratio aenode/orthanc: best {a['best'] / out['orthanc']['best']:.2f}")
    cost = fsync_cost(study)
    out["fsync"] = cost
    n = slices
    print(f"durability on this disk, per {cost['bytes'] / 1e3:.0f} KB instance (same run):\n"
          f"  journal record, fdatasync of a written segment (aenode) {cost['journal_s'] * 1e3:.2f} ms"
          f" (x{n} = {cost['journal_s'] * n:.2f} s)\n"
          f"  file fsync + rename + fsync dir (previous design)      {cost['commit_s'] * 1e3:.2f} ms"
          f" (x{n} = {cost['commit_s'] * n:.2f} s)\n"
          f"  append + fdatasync, growing file                        {cost['append_fdatasync_s'] * 1e3:.2f} ms\n"
          f"  write + rename, no sync                                 {cost['no_sync_s'] * 1e3:.2f} ms")
    per = s["best"] / n
    floor = s["best"] + cost["journal_s"] * n
    print(f"storescp per instance {per * 1e3:.2f} ms; one fdatasync is {cost['journal_s'] / per:.2f} of it"
          f" -> storescp + one fdatasync per instance {floor:.2f} s, ratio {floor / s['best']:.2f}"
          f" (target 1.5 {'reachable' if floor / s['best'] <= 1.5 else 'out of reach on this disk'});"
          f" aenode/(storescp + syncs) {a['best'] / floor:.2f}")
    return out


def mode_parallel(work: Path, slices: int) -> dict:
    studies = [make_study(work / f"par{i}", slices, seed=10 + i) for i in range(4)]
    mb = sum(folder_mb(s) for s in studies)
    rx = Aenode(work)
    rx.start()
    time.sleep(5 * rx.receive_workers)  # the extra listeners start after the first answers
    try:
        errors: list[BaseException] = []

        def one(folder: Path) -> None:
            try:
                send(rx.port, rx.aet, folder)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=one, args=(s,)) for s in studies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        dt = time.perf_counter() - t0
        if errors:
            raise errors[0]
    finally:
        rx.stop()
    print(f"[workers] receive = {rx.receive_workers}: 4 associations, 4 studies x {slices} slices, {mb:.0f} MB in {dt:.2f} s: {mb / dt:.0f} MB/s aggregate")
    return {"seconds": dt, "mb": mb, "mb_per_s": mb / dt}


def mode_rss(work: Path, objects: int, frames: int) -> dict:
    import psutil

    big = make_study(work / "big", objects, rows=512, frames=frames, seed=99)
    mb = folder_mb(big)
    rx = Aenode(work)
    rx.start()
    try:
        proc = psutil.Process(rx.proc.pid)
        time.sleep(0.5)

        def rss() -> int:
            """The whole tree: ``aenode serve`` receives in a child process."""
            total = 0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            return total

        base = rss()
        peak = base
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        dt = send(rx.port, rx.aet, big)
        done.set()
        sampler.join()
    finally:
        rx.stop()
    growth = (peak - base) / 1e6
    print(f"rss: sent {objects} objects x {frames} frames ({mb:.0f} MB) in {dt:.1f} s; server RSS (all processes) "
          f"{base / 1e6:.0f} MB -> peak {peak / 1e6:.0f} MB (growth {growth:.0f} MB, limit 200 MB)")
    return {"mb": mb, "seconds": dt, "rss_base_mb": base / 1e6, "rss_peak_mb": peak / 1e6, "growth_mb": growth}


def _filesystem(path: str) -> str:
    """The device and file system type under ``path`` (/proc/mounts), so that a figure says
    which disk it was measured on."""
    best = ("?", "?", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            if path.startswith(mnt) and len(mnt) >= len(best[2]):
                best = (dev, fstype, mnt)
    except OSError:
        pass
    return f"{best[0]} ({best[1]}, mounted at {best[2] or '?'})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["speed", "parallel", "rss", "all"], default="all")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--parallel-slices", type=int, default=100)
    ap.add_argument("--rss-objects", type=int, default=4)
    ap.add_argument("--rss-frames", type=int, default=512, help="512 frames of 512x512 int16 = 256 MB each")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--receive-workers", type=int, default=1, help="[workers] receive of aenode serve")
    ap.add_argument("--dcmtk", type=Path, help="folder of DCMTK's storescu/storescp/echoscu (default /usr/bin); "
                                               "the GPU machine has them unpacked elsewhere")
    args = ap.parse_args()
    if args.dcmtk:
        global STORESCU, STORESCP, ECHOSCU
        STORESCU, STORESCP, ECHOSCU = (str(args.dcmtk / n) for n in ("storescu", "storescp", "echoscu"))
    print(f"machine: {os.cpu_count()} CPUs, {cpu_name()}; data folder on {_filesystem(tempfile.gettempdir())}")
    Aenode.receive_workers = args.receive_workers
    work = Path(tempfile.mkdtemp(prefix="aenode-bench-"))
    try:
        if args.mode in ("speed", "all"):
            mode_speed(work, args.repeat, args.slices)
        if args.mode in ("parallel", "all"):
            mode_parallel(work, args.parallel_slices)
        if args.mode in ("rss", "all"):
            mode_rss(work, args.rss_objects, args.rss_frames)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
