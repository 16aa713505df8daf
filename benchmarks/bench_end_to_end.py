"""End to end: last C-STORE response of a 400-slice study -> the SR stored in Orthanc.

    python benchmarks/bench_end_to_end.py [--repeats 3] [--quiet 1.0] [--after-release 0.2] [--all-models]

Why: the node's promise is "the result is in the PACS a few seconds after the scanner
finished sending" (target <= 3 s with a short quiet period, CPU only).  The other
benchmarks time one stage each; this one runs the whole node in-process
(``aenode.pipeline.running_node``: SCP, stabiliser, analysis worker with the reference
model, SR/SC publishing, delivery outbox) against a real Orthanc, and splits the time
by stage from timestamps the node already persists:

- t0 = the latest ``instances.received_at`` of the study in the index (the node's clock
  when it indexed the last instance, i.e. just before the last C-STORE response);
  storescu's exit (right after the association release) is shown next to it;
- ``complete``: the stabiliser's ``study_complete`` log event (captured in-process);
  which rule fired (quiet period or association release) is reported;
- ``analysing``: ``studies.state_changed`` while the study is claimed (polled);
- result recorded: ``results.created``; the worker's ``detail.timings_s`` (load,
  preprocess, inference) split the analysis stage;
- SR / SC written: mtime of ``<data_dir>/results/<study>/<model>/r<rev>/{sr,sc}.dcm``;
- outbox rows enqueued: ``outbox.created_at``;
- SR visible in Orthanc: ``GET /instances`` + tags (Modality SR), polled every 20 ms
  once the outbox holds the study's rows (earlier REST polling competes for the 2 cores).
  The delivery worker sends SR and SC on one association and marks both rows ``sent``
  (``outbox.sent_at``) after the SC and the release, so ``sent_at`` comes after the SR is
  already in Orthanc; it is printed per run, not a stage.

Since issue 11 the SR leaves before the rest: the worker writes and queues each model's SR
as soon as its category exists, then builds the SC (its lesion-map projection) and records
the result row; the stage table follows that order and the steps after the SR are printed
separately.  Timing wrappers the script installs around node functions before the node
starts (measurement only, the node's behaviour is unchanged) split the publishing:
``report_input_from_outcome`` (the adapter, which projects the lesion map back onto the
series grid for the SEG: ``Prediction.lesion_mask_on_series``), ``build_sr``, ``build_sc``
and ``write_dataset``.

Studies are generated before the node starts (phantom generation is CPU-heavy); each
repeat uses a new seed, so a new Study Instance UID.  One warm-up study (not counted)
pays the first-use costs (imports, first ONNX run); its total is printed too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402
from machine import describe  # noqa: E402

from aenode.config import Config, parse_config  # noqa: E402
from aenode.node import Node, running_node  # noqa: E402
from aenode.peers.orthanc import Orthanc, free_port  # noqa: E402
from aenode.phantom import generate_study  # noqa: E402
from aenode.report.publish import results_path  # noqa: E402

STORESCU = "/usr/bin/storescu"  # DCMTK; pynetdicom's own `storescu` script shadows it on PATH
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
TARGET_S = 3.0
PRIMARY_MODEL = "covid-typicality"
ALL_MODELS = ["covid-typicality", "lung-involvement"]

# ---- log capture: the stabiliser's completion time, without touching node code -------------

_events: list[tuple[float, str, dict[str, Any]]] = []
_events_lock = threading.Lock()
_CAPTURED = {"study_complete", "study analysed", "result published", "delivered"}


def _capture(_logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if event_dict.get("event") in _CAPTURED:
        with _events_lock:
            _events.append((time.time(), str(event_dict["event"]), dict(event_dict)))
    if method in ("debug", "info"):
        raise structlog.DropEvent
    return event_dict


def quiet_logging() -> None:
    structlog.configure(
        processors=[_capture, structlog.processors.add_log_level, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)


def event_time(name: str, **match: Any) -> tuple[float, dict[str, Any]] | None:
    with _events_lock:
        for t, ev, d in _events:
            if ev == name and all(d.get(k) == v for k, v in match.items()):
                return t, d
    return None


# ---- timing probes around node functions (measurement only) ----------------------------------

_probes: list[tuple[str, float]] = []


def _timed(name: str, fn: Any) -> Any:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            with _events_lock:
                _probes.append((name, time.perf_counter() - t))
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def install_probes() -> None:
    """Wrap the publish path's steps; must run before the node (its worker binds the adapter)."""
    from aenode.deliver import publish as deliver_publish
    from aenode.infer.engine import Prediction
    from aenode.report import adapters, publish, sc, sr

    # wrapped where it is called: aenode.deliver.publish binds it by name
    deliver_publish.report_input_from_outcome = _timed(  # type: ignore[attr-defined]
        "adapter (ReportInput)", adapters.report_input_from_outcome)
    Prediction.lesion_mask_on_series = _timed("lesion map -> series grid (for the SEG)",
                                              Prediction.lesion_mask_on_series)
    # aenode.report.publish binds build_sr/build_sc by name: wrap them where they are called
    publish.build_sr = _timed("SR build (highdicom)", sr.build_sr)  # type: ignore[attr-defined]
    publish.build_sc = _timed("SC build", sc.build_sc)  # type: ignore[attr-defined]
    publish.write_dataset = _timed("write_dataset (SR, SC: fsync + rename)", publish.write_dataset)


PROBE_ORDER = ("adapter (ReportInput)", "lesion map -> series grid (for the SEG)", "SR build (highdicom)",
               "SC build", "write_dataset (SR, SC: fsync + rename)")


def take_probes() -> dict[str, float]:
    """Seconds per probe since the last call, summed (e.g. over models), in PROBE_ORDER."""
    with _events_lock:
        got = list(_probes)
        _probes.clear()
    return {name: sum(dt for n, dt in got if n == name) for name in PROBE_ORDER if any(n == name for n, _ in got)}


# ---- one run ---------------------------------------------------------------------------------


@dataclass
class Run:
    study_uid: str
    marks: dict[str, float] = field(default_factory=dict)      # absolute time.time() stamps
    info: dict[str, Any] = field(default_factory=dict)
    analysis_split: dict[str, float] = field(default_factory=dict)
    publish_split: dict[str, float] = field(default_factory=dict)

    def stages(self) -> dict[str, float]:
        """The SR's path in the order the node now takes it: each model's SR is written and
        queued as soon as its category exists; the SC, the result row and the SEG follow."""
        m = self.marks
        seq = [("stabilise (quiet/release)", "t0", "complete"),
               ("claim (woken by the completion)", "complete", "analysing"),
               ("analysis + SR build + write (split below)", "analysing", "sr_written"),
               ("SR queued, sent, seen over REST", "sr_written", "orthanc"),
               ("total: last C-STORE -> SR in Orthanc", "t0", "orthanc")]
        return {name: m[b] - m[a] for name, a, b in seq}

    def after_sr(self) -> dict[str, float]:
        """Seconds from the SR seen in Orthanc to the steps off its path (the SC's write may
        come first: it is written while the SR is on its way)."""
        m = self.marks
        return {"SC written": m["sc_written"] - m["orthanc"],
                "result recorded (after the SEG's masks)": m["result"] - m["orthanc"],
                "every outbox row of the study sent": m["sent"] - m["orthanc"]}


def ro_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False)


def orthanc_srs(pacs: Orthanc, seen: dict[str, dict], study_uid: str) -> int:
    """SR instances of ``study_uid`` that Orthanc holds (tags cached per instance id)."""
    for iid in pacs.instances():
        if iid not in seen:
            seen[iid] = pacs.tags(iid)
    return sum(1 for t in seen.values() if t.get("Modality") == "SR" and t.get("StudyInstanceUID") == study_uid)


def send_and_time(node: Node, pacs: Orthanc, config: Config, folder: Path, study_uid: str,
                  n_models: int, poll: float, timeout: float = 120.0) -> Run:
    data_dir = Path(config.node.data_dir)
    run = Run(study_uid)
    seen: dict[str, dict] = {}
    orthanc_srs(pacs, seen, study_uid)  # cache what is already there
    take_probes()
    t_send = time.time()
    proc = subprocess.run([STORESCU, "-aec", config.node.ae_title, "127.0.0.1", str(node.port), "+sd", str(folder)],
                          capture_output=True, text=True, env=DCMTK_ENV, check=False)
    t_exit = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-500:]}")
    run.marks["storescu_exit"] = t_exit
    run.info["storescu_s"] = t_exit - t_send
    idx = ro_connect(data_dir / "index.sqlite")
    box: sqlite3.Connection | None = None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            now = time.time()
            st = idx.execute("SELECT state, state_changed FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if st and st[0] == "complete":
                run.marks.setdefault("complete_polled", now)
            if st and st[0] == "analysing":
                run.marks.setdefault("analysing", st[1])  # exact claim time
            released = node.tracker.state(study_uid)[1]   # forgotten once complete: catch it before
            if released is not None:
                run.marks.setdefault("released", released)
            if box is None and (data_dir / "outbox.sqlite").exists():
                box = ro_connect(data_dir / "outbox.sqlite")
            rows = (0, 0) if box is None else box.execute(
                "SELECT COUNT(*), COALESCE(SUM(state!='sent'), 0) FROM outbox WHERE study_uid=?",
                (study_uid,)).fetchone()
            # Orthanc's REST API only once the SR is enqueued: polling it (HTTP + JSON) every
            # 20 ms during the analysis slowed preprocessing ~2x on 2 cores (observer effect).
            if "orthanc" not in run.marks and rows[0] and orthanc_srs(pacs, seen, study_uid) >= n_models:
                run.marks["orthanc"] = time.time()
            if "orthanc" in run.marks and not rows[1] and st and st[0] in ("analysed", "skipped", "error"):
                run.info["final_state"] = st[0]
                run.marks["finished"] = st[1]
                break
            time.sleep(poll)
        else:
            raise TimeoutError(f"study {study_uid}: no SR in Orthanc after {timeout:.0f} s")
        # Persisted timestamps, read once everything is done.
        run.marks["t0"] = idx.execute("SELECT MAX(received_at) FROM instances WHERE study_uid=?",
                                      (study_uid,)).fetchone()[0]
        run.info["instances"] = idx.execute("SELECT COUNT(*) FROM instances WHERE study_uid=?",
                                            (study_uid,)).fetchone()[0]
        results = idx.execute("SELECT model, revision, created, detail_json FROM results WHERE study_uid=?",
                              (study_uid,)).fetchall()
        if len(results) < n_models:
            raise RuntimeError(f"study {study_uid}: {len(results)} results for {n_models} models")
        run.marks["result"] = max(r[2] for r in results)
        sr_m, sc_m = [], []
        for model, revision, _created, detail in results:
            d = results_path(data_dir, study_uid, model, revision)
            sr_m.append((d / "sr.dcm").stat().st_mtime)
            sc_m.append((d / "sc.dcm").stat().st_mtime)
            for k, v in (json.loads(detail or "{}").get("timings_s") or {}).items():
                run.analysis_split[f"{model}: {k}"] = float(v)
        run.marks["sr_written"], run.marks["sc_written"] = max(sr_m), max(sc_m)  # max: the end is every model's SR
        assert box is not None
        rows = box.execute("SELECT state, created_at, sent_at FROM outbox WHERE study_uid=? AND kind='dicom'",
                           (study_uid,)).fetchall()
        if not rows or any(r[0] != "sent" for r in rows):
            raise RuntimeError(f"study {study_uid}: outbox rows not all sent: {rows}")
        run.marks["enqueued"] = max(r[1] for r in rows)
        run.marks["sent"] = max(r[2] for r in rows)
    finally:
        idx.close()
        if box is not None:
            box.close()
    run.publish_split = take_probes()
    done = event_time("study_complete", study_uid=study_uid)
    if done is None:
        raise RuntimeError("stabiliser's study_complete event not captured")
    run.marks["complete"] = done[0]
    quiet_for = float(done[1].get("quiet_for", 0.0))
    run.info["rule"] = "quiet period" if quiet_for >= config.stability.quiet_seconds else "association release"
    run.info["quiet_for"] = quiet_for
    return run


# ---- main ------------------------------------------------------------------------------------


def machine() -> str:
    load = os.getloadavg()
    return f"{describe()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed studies (each a new seed / study UID)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed studies first (imports, first ONNX run)")
    ap.add_argument("--slices", type=int, default=400)
    ap.add_argument("--pattern", default="typical")
    ap.add_argument("--seed", type=int, default=101, help="first seed; one more per study")
    ap.add_argument("--quiet", type=float, default=1.0, help="stability.quiet_seconds")
    ap.add_argument("--after-release", type=float, default=0.2, help="stability.after_release_seconds")
    ap.add_argument("--all-models", action="store_true", help="also run lung-involvement")
    ap.add_argument("--poll", type=float, default=0.02, help="seconds between polls of index/outbox/Orthanc")
    args = ap.parse_args()
    quiet_logging()
    install_probes()
    models = ALL_MODELS if args.all_models else [PRIMARY_MODEL]
    print(f"# machine: {machine()}")

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp_s:
        tmp = Path(tmp_s)
        studies = []
        n = args.warmup + args.repeats
        for i in range(n):
            t = time.perf_counter()
            res = generate_study(tmp / "studies" / f"s{i}", args.pattern, seed=args.seed + i, slices=args.slices,
                                 slice_thickness=1.0, extra_series=False)
            _uid, _desc, n_files, folder = res.series[0]
            studies.append((res.study_instance_uid, Path(folder), n_files))
            print(f"# generated study {i + 1}/{n}: {n_files} files in {time.perf_counter() - t:.1f} s", flush=True)

        pacs = Orthanc(tmp / "orthanc").start()
        try:
            config = parse_config({
                "node": {"ae_title": "AENODE", "host": "127.0.0.1", "port": free_port(),
                         "data_dir": str(tmp / "data")},
                "stability": {"quiet_seconds": args.quiet, "after_release_seconds": args.after_release},
                "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                  "port": pacs.dicom_port}],
                "web": {"enabled": False},
                "model": {"providers": ["cpu"], "enabled": models},
            })
            runs: list[Run] = []
            with running_node(config) as node:
                for i, (study_uid, folder, _n_files) in enumerate(studies):
                    r = send_and_time(node, pacs, config, folder, study_uid, len(models), args.poll)
                    total = r.marks["orthanc"] - r.marks["t0"]
                    tag = "warm-up" if i < args.warmup else f"run {i - args.warmup + 1}"
                    print(f"# {tag}: {r.info['instances']} instances, storescu {r.info['storescu_s']:.2f} s "
                          f"(exit {r.marks['storescu_exit'] - r.marks['t0']:+.3f} s after last received), "
                          f"complete by {r.info['rule']} ({r.info['quiet_for']:.3f} s after last arrival), "
                          f"total {total:.3f} s (outbox rows sent at +{r.marks['sent'] - r.marks['t0']:.3f} s), "
                          f"final state {r.info['final_state']}", flush=True)
                    if i >= args.warmup:
                        runs.append(r)
        finally:
            pacs.stop()

    print(f"\n# {args.slices}-slice {args.pattern} study, quiet_seconds={args.quiet}, "
          f"after_release_seconds={args.after_release}, poll {args.poll} s, models: {', '.join(models)}, {len(runs)} runs")
    print("| stage | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    stage_rows = [r.stages() for r in runs]
    for name in stage_rows[0]:
        vals = [s[name] for s in stage_rows]
        bold = "**" if name.startswith("total") else ""
        print(f"| {bold}{name}{bold} | {bold}{statistics.median(vals):.3f}{bold} | {min(vals):.3f} | {max(vals):.3f} |")
    print("\n# analysis stage split (the worker's detail.timings_s; load is per study, shared by models)")
    print("| part | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for key in runs[0].analysis_split:
        vals = [r.analysis_split[key] for r in runs if key in r.analysis_split]
        print(f"| {key} | {statistics.median(vals):.3f} | {min(vals):.3f} | {max(vals):.3f} |")
    print("\n# relative to the SR seen in Orthanc (steps off its path)")
    print("| step | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for key in runs[0].after_sr():
        vals = [r.after_sr()[key] for r in runs]
        print(f"| {key} | {statistics.median(vals):+.3f} | {min(vals):+.3f} | {max(vals):+.3f} |")
    print("\n# publish path split (timing wrappers; summed over models; the adapter and its lesion map "
          "projection, the SC build and the SC's write follow the SR)")
    print("| part | median s | min s | max s |")
    print("| --- | --- | --- | --- |")
    for key in runs[0].publish_split:
        vals = [r.publish_split[key] for r in runs if key in r.publish_split]
        print(f"| {key} | {statistics.median(vals):.3f} | {min(vals):.3f} | {max(vals):.3f} |")
    exits = [r.marks["storescu_exit"] - r.marks["t0"] for r in runs]
    total = statistics.median(s["total: last C-STORE -> SR in Orthanc"] for s in stage_rows)
    print(f"\n# storescu exits {statistics.median(exits):.3f} s (median) after the last instance was indexed; "
          f"rules fired: {', '.join(sorted({r.info['rule'] for r in runs}))}")
    print(f"# median total {total:.3f} s; target {TARGET_S:.1f} s; ratio total / target = {total / TARGET_S:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
