"""Throughput and latency of ``aenode serve`` end to end (issue 11).

A batch of generated 300-slice chest CT studies is sent by DCMTK ``storescu`` (several at
a time, each study by its own sender process) to a real ``aenode serve`` with both
reference models; a DCMTK ``storescp`` plays the PACS and receives the SR/SC.  For each
configuration (execution provider x analysis processes) the node starts fresh and the
batch is timed from the first C-STORE to the last SR in the PACS.

Anchors measured in the same run:
- the sender's own ceiling: the same batch, same concurrency, straight into DCMTK
  ``storescp`` (studies/min the sender can deliver at all);
- CPU vs CUDA execution provider with the same number of analysis processes.

Also: GPU utilisation (``nvidia-smi``, when present), the node's CPU use, where the time
goes per stage (from the results' timings), error events in the node's log, and the latency
of single studies sent one at a time to the idle node (``--latency-runs``, median): last
C-STORE answered -> first SR in the PACS, minus the configured wait after release, with the
timeline of each step from the node's log events (:func:`timeline`).

    python benchmarks/bench_throughput.py --studies 12 --workers 1,2 --providers cpu
    python benchmarks/bench_throughput.py --studies 48 --workers 4,8,12 --providers cuda,cpu --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import describe  # noqa: E402

PATTERNS = ("typical", "indeterminate", "atypical", "negative")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _generate(args: tuple[Path, str, int, int]) -> Path:
    from aenode.phantom import generate_study

    out, pattern, seed, slices = args
    if not (out / "done").exists():
        shutil.rmtree(out, ignore_errors=True)
        # A 320 mm chest: 300 slices of about 1.07 mm (thin enough for both models' rules).
        generate_study(out, pattern, seed=seed, slices=slices, extra_series=False,
                       slice_thickness=round(320.0 / slices, 3))
        (out / "done").write_text("ok")
    return out


def generate(cache: Path, n: int, slices: int) -> list[Path]:
    jobs = [(cache / f"s{i:03d}", PATTERNS[i % 4], 5000 + i, slices) for i in range(n)]
    with ProcessPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1)) as pool:
        return list(pool.map(_generate, jobs))


def _series_dirs(study: Path) -> list[str]:
    return [str(p) for p in sorted(study.iterdir()) if p.is_dir() and p.name != "ground_truth"]


def _env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def send_all(tool: Path, port: int, aec: str, studies: list[Path], concurrency: int) -> float:
    """Send every study (one storescu process per study, ``concurrency`` at a time)."""
    def one(study: Path) -> None:
        r = subprocess.run([str(tool), "-aec", aec, "-aet", "CT_SCANNER", "127.0.0.1", str(port), "+sd",
                            *_series_dirs(study)], capture_output=True, text=True, env=_env())
        if r.returncode != 0:
            raise RuntimeError(f"storescu failed: {r.stderr[-400:]}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, studies))
    return time.perf_counter() - t0


class Pacs:
    """DCMTK storescp writing into a folder; counts the SRs that arrived."""

    def __init__(self, tool: Path, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = subprocess.Popen([str(tool), "--fork", "-od", str(folder), "+B", "-aet", "PACS",
                                      str(self.port)], env=_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def count(self, prefix: str = "SR") -> int:
        return sum(1 for p in self.folder.iterdir() if p.name.startswith(prefix))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        subprocess.run(["pkill", "-f", f"storescp.*{self.port}"], check=False)


class GpuSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        # nvidia-smi ignores CUDA_VISIBLE_DEVICES and prints every GPU of the host: sample only
        # the node's (on a shared host the others may be busy with other work)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        only = ["-i", visible] if visible else []
        proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                 "-lms", "200", *only], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        while not self.stop_event.is_set():
            line = proc.stdout.readline()
            if not line:
                break
            try:
                self.samples.append(float(line.strip().split()[0]))
            except (ValueError, IndexError):
                pass
        proc.terminate()


def _cpu_seconds(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
        return total
    except psutil.Error:
        return 0.0


def run_node(cfg_text: str, work: Path) -> tuple[subprocess.Popen, Path]:
    cfg = work / "node.toml"
    cfg.write_text(cfg_text)
    log = work / "node.log"
    proc = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(cfg)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    return proc, log


def wait_ready(echoscu: Path, port: int, log: Path, analysis: int, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = subprocess.run([str(echoscu), "-aec", "AENODE", "127.0.0.1", str(port)], capture_output=True,
                           env=_env())
        ready = log.read_text(errors="replace").count('"analysis_worker_ready"') >= analysis
        if r.returncode == 0 and ready:
            return
        time.sleep(0.3)
    raise RuntimeError("the node did not come up:\n" + log.read_text(errors="replace")[-3000:])


def all_final(data_dir: Path, n: int) -> bool:
    from aenode.store.index import FINAL_STATES, Index

    index = Index.for_data_dir(data_dir)
    try:
        states = [s.state for s in index.studies()]
    finally:
        index.close()
    return len(states) >= n and all(s in FINAL_STATES for s in states)


def stage_times(data_dir: Path) -> dict[str, float]:
    from aenode.store.index import Index

    index = Index.for_data_dir(data_dir)
    try:
        stats = index.stats().stage_seconds
    finally:
        index.close()
    return {k: round(statistics.median(v), 3) for k, v in sorted(stats.items()) if v}


def _study_uid(study: Path) -> str:
    import pydicom

    first = next(p for d in _series_dirs(study) for p in sorted(Path(d).glob("*.dcm")))
    return str(pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)


def _ts(line: dict[str, object]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


# The latency path, in order: (label, log event, extra condition on the line).
TIMELINE = (
    ("association released", "association", None),
    ("completion detected", "study_complete", None),
    ("claimed", "study_claimed", None),
    ("series loaded", "series_loaded", None),
    ("input prepared", "input_prepared", None),
    ("first model run", "model_run", None),
    ("first SR queued", "result_queued", "sr"),
    ("first SR sent (C-STORE answered)", "delivery_sent", "first"),
)


def timeline(data_dir: Path, log: Path, study: Path, pacs: Path, seen_at: float) -> dict[str, object]:
    """Where the latency goes: each step of the one study's path, in seconds after its last
    C-STORE was answered (the node's ``received_at``), from the node's log events."""
    from aenode.store.index import Index

    uid = _study_uid(study)
    index = Index.for_data_dir(data_dir)
    try:
        t0 = max(i.received_at or 0.0 for i in index.instances(uid))
    finally:
        index.close()
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and "timestamp" in line and _ts(line) >= t0 - 1.0:
            lines.append(line)
    out: dict[str, object] = {}
    for label, event, cond in TIMELINE:
        hits = [ln for ln in lines if ln.get("event") == event
                and (event == "association" and int(ln.get("instances") or 0) > 0 or ln.get("study_uid") == uid)]
        if cond == "sr":
            hits = [ln for ln in hits if ln.get("object") == "sr"]
        if not hits:
            continue
        hit = hits[0]
        out[label] = round(_ts(hit) - t0, 3)
        for k in ("seconds", "inference_s", "interpret_s", "send_s", "method"):
            if k in hit:
                out[f"{label}: {k}"] = hit[k]
    srs = [p for p in pacs.iterdir() if p.name.startswith("SR")]
    if srs:
        out["first SR file in the PACS (mtime)"] = round(min(p.stat().st_mtime for p in srs) - t0, 3)
    out["SR seen by the benchmark"] = round(seen_at - t0, 3)
    return out


def median_timeline(timelines: list[dict[str, object]]) -> dict[str, object]:
    """Each step's median over the latency runs (text fields: the first run's)."""
    out: dict[str, object] = {}
    for key in (timelines[0] if timelines else {}):
        values = [t[key] for t in timelines if key in t]
        nums = [float(v) for v in values if isinstance(v, (int, float))]  # type: ignore[arg-type]
        out[key] = round(statistics.median(nums), 3) if len(nums) == len(values) else values[0]
    return out


def log_errors(log: Path) -> dict[str, int]:
    """Error-level events in the node's log, by name (a CUDA failure shows up here)."""
    counts: dict[str, int] = {}
    for raw in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("level") in ("error", "critical"):
            name = str(line.get("event"))
            counts[name] = counts.get(name, 0) + 1
    return counts


def one_config(args: argparse.Namespace, tools: dict[str, Path], studies: list[Path], latency_studies: list[Path],
               provider: str, workers: int, base: Path) -> dict[str, object]:
    work = base / f"{provider}-{workers}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pacs = Pacs(tools["storescp"], work / "pacs")
    port = free_port()
    providers = '["cuda", "cpu"]' if provider == "cuda" else '["cpu"]'
    cfg = (f'[node]\nae_title = "AENODE"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{work / "data"}"\n'
           f'max_associations = 64\n'
           f'[stability]\nquiet_seconds = {args.quiet}\nafter_release_seconds = {args.after_release}\n'
           f'[model]\nproviders = {providers}\n[web]\nenabled = false\n'
           f'[workers]\nanalysis = {workers}\nreceive = {args.receive}\n'
           f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n')
    node, log = run_node(cfg, work)
    try:
        wait_ready(tools["echoscu"], port, log, workers)
        gpu = GpuSampler()
        gpu.start()
        cpu0, t0 = _cpu_seconds(node.pid), time.perf_counter()
        sending = send_all(tools["storescu"], port, "AENODE", studies, args.concurrency) if studies else 0.0
        want = 2 * len(studies)  # both models write an SR per study
        deadline = time.monotonic() + args.timeout
        next_check = time.monotonic() + 5
        while pacs.count("SR") < want and time.monotonic() < deadline:
            time.sleep(0.05)
            if time.monotonic() >= next_check:  # every 5 s: all analysed, some SR never coming?
                next_check += 5
                if all_final(work / "data", len(studies)):
                    time.sleep(3)  # give delivery a moment, then stop waiting
                    break
        elapsed = max(time.perf_counter() - t0, 1e-9)
        cpu = _cpu_seconds(node.pid) - cpu0
        gpu.stop_event.set()
        got = pacs.count("SR")
        # Latency: more studies, each alone, to an idle node (the batch's SCs delivered
        # first): last C-STORE answered -> its first SR in the PACS.
        latencies: list[float] = []
        timelines: list[dict[str, object]] = []
        for k, study in enumerate(latency_studies):
            # Everything sent before (both models' SR and SC) is in the PACS: the node is idle,
            # and the next SR to arrive is this study's.
            settle = time.monotonic() + 60
            while (pacs.count("SC") < want + 2 * k or pacs.count("SR") < want + 2 * k) \
                    and time.monotonic() < settle:
                time.sleep(0.05)
            time.sleep(1.0)
            before = pacs.count("SR")
            seen = {p.name for p in (work / "pacs").iterdir()}
            send_all(tools["storescu"], port, "AENODE", [study], 1)
            t_sent = time.perf_counter()
            while pacs.count("SR") < before + 1 and time.perf_counter() - t_sent < 120:
                time.sleep(0.01)
            latencies.append(time.perf_counter() - t_sent)
            seen_at = time.time()
            fresh = work / f"pacs-latency{k}"
            fresh.mkdir()
            for f in (work / "pacs").iterdir():
                if f.name not in seen:
                    os.link(f, fresh / f.name)
            time.sleep(0.5)  # the node's log lines of the study are flushed
            timelines.append(timeline(work / "data", log, study, fresh, seen_at))
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(60)
        pacs.stop()
    return {
        "provider": provider, "analysis_processes": workers, "receive_processes": args.receive,
        "studies": len(studies), "sr_received": got,
        "seconds": round(elapsed, 2),
        "studies_per_min": round(60 * len(studies) * min(1.0, got / max(1, 2 * len(studies))) / elapsed, 1),
        "sending_seconds": round(sending, 2), "node_cpu_cores_busy": round(cpu / elapsed, 2),
        "gpu_util_mean": round(statistics.mean(gpu.samples), 1) if gpu.samples else None,
        "gpu_util_max": max(gpu.samples) if gpu.samples else None,
        "latency_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_minus_release_wait_s": round(statistics.median(latencies) - args.after_release, 2)
        if latencies else None,
        "latency_runs_s": [round(x, 3) for x in latencies],
        "stage_median_s": stage_times(work / "data"),
        "latency_timeline_median_s": median_timeline(timelines),
        "log_errors": log_errors(log),
    }


def sender_ceiling(args: argparse.Namespace, tools: dict[str, Path], studies: list[Path], base: Path) -> dict:
    """The same batch straight into DCMTK storescp: what the sender can deliver at all."""
    sink = Pacs(tools["storescp"], base / "ceiling")
    try:
        seconds = send_all(tools["storescu"], sink.port, "PACS", studies, args.concurrency)
    finally:
        sink.stop()
        shutil.rmtree(base / "ceiling", ignore_errors=True)
    size = sum(f.stat().st_size for s in studies for f in s.rglob("*.dcm"))
    return {"seconds": round(seconds, 2), "studies_per_min": round(60 * len(studies) / seconds, 1),
            "MB_per_s": round(size / seconds / 1e6, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, default=12)
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--receive", type=int, default=1, help="[workers] receive: listener processes on the port")
    p.add_argument("--workers", default="1,2", help="analysis processes to try, comma-separated")
    p.add_argument("--providers", default="cpu", help="cuda,cpu")
    p.add_argument("--quiet", type=float, default=5.0)
    p.add_argument("--after-release", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--latency-runs", type=int, default=3, help="studies sent alone after the batch (median)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "aenode-bench-studies")
    p.add_argument("--dcmtk", type=Path, default=Path("/usr/bin"), help="folder with storescu, storescp, echoscu")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    tools = {t: args.dcmtk / t for t in ("storescu", "storescp", "echoscu")}
    print(f"# machine: {describe()}", flush=True)
    t0 = time.perf_counter()
    studies = generate(args.cache, args.studies + args.latency_runs, args.slices)
    # Studies of their own for the latency runs (new UIDs for each configuration's node too:
    # every node starts with an empty data_dir).
    latency_studies = studies[len(studies) - args.latency_runs:]
    studies = studies[:len(studies) - args.latency_runs]
    print(f"# {len(studies)} studies of {args.slices} slices generated in {time.perf_counter() - t0:.1f} s",
          flush=True)
    base = Path(tempfile.mkdtemp(prefix="aenode-bench-"))
    out: dict[str, object] = {"machine": describe(), "args": {k: str(v) for k, v in vars(args).items()}}
    if studies:
        out["sender_ceiling"] = ceiling = sender_ceiling(args, tools, studies, base)
        print(f"sender ceiling (storescu -> storescp, {args.concurrency} at a time): {ceiling}", flush=True)
    runs = []
    for provider in args.providers.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            r = one_config(args, tools, studies, latency_studies, provider, w, base)
            runs.append(r)
            print(json.dumps(r), flush=True)
            if args.json:  # after every configuration, so a cut-off run keeps what it measured
                args.json.write_text(json.dumps({**out, "runs": runs}, indent=2))
    out["runs"] = runs
    print("\n# latency: last C-STORE answered -> first SR in the PACS (s, median of the runs), per step")
    for r in runs:
        print(f"## {r['provider']}, {r['analysis_processes']} analysis: {r['latency_minus_release_wait_s']} s after "
              f"the {args.after_release} s release wait (runs {r['latency_runs_s']}); errors in the log: "
              f"{r['log_errors'] or 'none'}")
        for k, v in dict(r["latency_timeline_median_s"]).items():  # type: ignore[call-overload]
            print(f"   {k}: {v}")
        print(f"   per study (median of the batch's results): {r['stage_median_s']}")
    cpu_best = max((r["studies_per_min"] for r in runs if r["provider"] == "cpu"), default=None)
    cuda_best = max((r["studies_per_min"] for r in runs if r["provider"] == "cuda"), default=None)
    if cpu_best and cuda_best:
        out["cuda_cpu_ratio"] = round(float(cuda_best) / float(cpu_best), 2)  # type: ignore[arg-type]
        print(f"CUDA/CPU (best of each): {out['cuda_cpu_ratio']}")
    shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
