"""A randomized kill -9 loop against a real ``aenode serve`` (issue 15).

The node runs as ``python -m aenode serve --config FILE`` (a supervisor and a process
per stage); DCMTK ``storescu`` is the modality, a real Orthanc the PACS,
:class:`aenode.peers.webhook.WebhookServer` the alert receiver.  Each iteration starts
the node, sends the next piece of work, waits for a randomly chosen phase (ingest,
analysis, delivery, alerting: seen in the node's JSON log) plus a random delay and sends
SIGKILL to a random target: every process at once, the supervisor alone (its children
must follow it), or the stage's own process first (the supervisor must restart it).  What ``storescu`` did not get "success" for is
sent again in the next iteration, as a modality would.  At the end the node runs until
everything settles and :meth:`KillLoop.check` compares what the peers hold with what the
node acknowledged and recorded.

The log lines are read only for *when* to kill (event names, never their fields), so
the loop does not depend on log wording beyond the documented event names.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

import aenode.phantom as phantom
from aenode.alert.base import alert_key
from aenode.alert.store import AlertStore
from aenode.deliver.outbox import Outbox
from aenode.infer.manifest import load_manifest
from aenode.peers.orthanc import Orthanc, free_port
from aenode.peers.webhook import WebhookServer
from aenode.report.uids import result_uids
from aenode.store.datadir import DataDir
from aenode.store.index import Index

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
STORESCU = "/usr/bin/storescu"  # DCMTK's, by full path: pynetdicom installs a script of the same name
NODE_AE = "AENODE"
WEBHOOK = "webhook"
PHASES = ("ingest", "analysis", "delivery", "alerting")
# The event (a documented log event name) after which a kill lands in each phase, and
# the random delay added after it: analysis of one small study takes a couple of seconds,
# publishing and sending one SR/SC or one alert a fraction of one.  Ingest has no event
# (the node logs an association when it ends): the kill comes at a random point of a
# storescu run instead, scaled by how long runs have taken so far.
TRIGGERS: dict[str, tuple[tuple[str, ...], float]] = {
    "analysis": (("study_complete", "analyses_requeued"), 2.5),
    "delivery": (("result_published",), 0.4),
    "alerting": (("alert_decided",), 0.3),
}
# What a kill hits: every process at once, the supervisor alone (its children must
# follow), or the process of the phase's stage alone (the supervisor restarts it; the
# iteration then ends with one of the other two).
TARGETS = ("group", "supervisor", "supervisor", "child")
ROLE_OF_PHASE = {"ingest": "receive", "analysis": "analysis", "delivery": "delivery", "alerting": "delivery"}
UNPARSABLE = "<not one JSON object>"  # log lines merged or cut (see test_log_lines.py)
FINAL_STATES = ("analysed", "skipped", "error")
SC_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"
_SENDING = re.compile(r"Sending file: (.+)$")


def toml_value(v: object) -> str:
    """TOML for the few value types the test configuration uses (no tomli_w installed;
    JSON strings, numbers, booleans and flat lists are valid TOML as written)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v if not isinstance(v, Path) else str(v))


def write_toml(path: Path, tables: dict[str, dict[str, object]], arrays: dict[str, list[dict[str, object]]]) -> None:
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for name, items in arrays.items():
        for item in items:
            lines.append(f"[[{name}]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass
class Study:
    uid: str
    series_uid: str
    files: list[Path]           # in slice order
    sop_of: dict[Path, str]


@dataclass
class Batch:
    """One storescu run's worth of files (what is left of it after a partial send)."""

    study: str
    files: list[Path]
    late: bool = False          # slices sent after the study was complete: a new revision


def storescu(port: int, files: list[Path], timeout: float = 60.0) -> tuple[set[Path], int]:
    """Send ``files`` in one association; returns the files storescu got "Success" for.

    Parsed from ``-v`` output: "Sending file: X" then "Received Store Response (Success)".
    """
    proc = subprocess.run([STORESCU, "-v", "-aet", "CT01", "-aec", NODE_AE, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout,
                          env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    ok: set[Path] = set()
    current: Path | None = None
    for line in (proc.stdout + proc.stderr).splitlines():
        m = _SENDING.search(line)
        if m:
            current = Path(m.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            ok.add(current)
            current = None
    return ok, proc.returncode


class NodeProcess:
    """``aenode serve`` as a child process; its JSON log goes to a file and feeds event counts."""

    def __init__(self, config_file: Path, log_file: Path):
        self.config_file, self.log_file = config_file, log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: Counter[str] = Counter()   # since the last start
        self.total: Counter[str] = Counter()    # over all runs
        self.pids: dict[str, int] = {}          # role -> pid of its newest process
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TCP_NODELAY": "1", "OMP_NUM_THREADS": "1"}
        self.events = Counter()
        self.pids = {}
        # A session of its own: "group" kills take the supervisor and every child at once.
        self.proc = subprocess.Popen([sys.executable, "-m", "aenode", "serve", "--config", str(self.config_file)],
                                     cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with open(self.log_file, "ab") as log:
            for raw in proc.stderr:
                log.write(raw)
                try:
                    line = json.loads(raw)
                    event = line.get("event")
                except (ValueError, AttributeError):
                    self.total[UNPARSABLE] += 1
                    continue
                if event == "process_started" and isinstance(line.get("pid"), int):
                    self.pids[str(line.get("role"))] = line["pid"]
                if isinstance(event, str):
                    with self._cond:
                        self.events[event] += 1
                        self.total[event] += 1
                        self._cond.notify_all()

    def wait_event(self, *names: str, timeout: float) -> bool:
        """Wait until the node has logged one of ``names`` since it started."""
        def seen() -> bool:
            return any(self.events[n] > 0 for n in names)

        with self._cond:
            return self._cond.wait_for(lambda: seen() or not self.alive(), timeout) and seen()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, target: str = "group") -> str | None:
        """SIGKILL the whole process group (``group``: power cut, OOM killer of the unit)
        or the supervisor alone (``supervisor``: its children must follow it, else they
        keep the DICOM port).  Returns a problem found, else None."""
        assert self.proc is not None
        problem = None
        if target == "group":
            self._killpg()
        else:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        if self._reader is not None:
            # The log pipe closes when the last process holding it is gone.
            self._reader.join(15)
            if self._reader.is_alive():
                problem = "processes of aenode serve outlived its supervisor's SIGKILL by 15 s"
                self._killpg()
                self._reader.join(10)
        return problem

    def _killpg(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nobody left in the group

    def kill_child(self, role: str) -> bool:
        """SIGKILL the newest process of ``role`` (the supervisor should restart it)."""
        pid = self.pids.get(role)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        if self._reader is not None:
            self._reader.join(10)
        return rc


@dataclass(frozen=True)
class Snapshot:
    """What the settling loop compares between polls."""

    studies: dict[str, tuple[str, int]]   # study -> (state, revision)
    outbox: dict[str, int]                # state -> rows
    decisions: int                        # alert decisions recorded


@dataclass
class Figures:
    seed: int
    iterations: int = 0
    kills: int = 0
    kills_by_phase: Counter[str] = field(default_factory=Counter)
    kills_by_target: Counter[str] = field(default_factory=Counter)
    triggered_by_phase: Counter[str] = field(default_factory=Counter)
    storescu_runs: int = 0
    storescu_incomplete: int = 0
    acknowledged: int = 0
    resent_files: int = 0
    losses: list[str] = field(default_factory=list)
    requeued: int = 0           # analyses the node re-queued at a restart
    log_lines_unparsable: int = 0  # node log lines that were not one JSON object each
    reconciled: int = 0         # restarts that indexed spool files a kill left unindexed
    revisions: int = 0          # study revisions analysed in the end (late slices, partial sends)
    pacs_objects: int = 0       # result objects (SR, SC) Orthanc holds
    webhooks: int = 0           # webhook deliveries accepted
    webhook_repeats: int = 0    # of which repeats of a key already delivered (at-least-once)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"kill-loop seed={self.seed} iterations={self.iterations} kills={self.kills} "
                f"by_phase={dict(self.kills_by_phase)} iterations_reaching_phase={dict(self.triggered_by_phase)} "
                f"by_target={dict(self.kills_by_target)} "
                f"storescu_runs={self.storescu_runs} interrupted_runs={self.storescu_incomplete} "
                f"acknowledged={self.acknowledged} resent_files={self.resent_files} "
                f"requeued={self.requeued} reconciled={self.reconciled} revisions={self.revisions} pacs_objects={self.pacs_objects} webhooks={self.webhooks} "
                f"webhook_repeats={self.webhook_repeats} log_lines_unparsable={self.log_lines_unparsable} "
                f"losses={len(self.losses)} seconds={self.seconds:.0f}")


class KillLoop:
    """The studies, the peers and the node of one kill loop (see the module docstring)."""

    def __init__(self, workdir: Path, *, seed: int, studies: int, slices: int = 54, late_chunks: int = 1,
                 late_slices: int = 3):
        self.workdir = workdir
        self.rng = random.Random(seed)
        self._gaps = random.Random(seed + 1)  # the sender thread's own, so it never shifts self.rng
        self.figures = Figures(seed)
        self.data_dir = workdir / "data"
        self.studies: dict[str, Study] = {}
        self.queue: list[Batch] = []       # work not yet started, in order
        self.pending: list[Batch] = []     # started but not acknowledged in full: resend first
        self._sending = threading.Event()  # a storescu run of this iteration has started
        self._seconds_per_file: list[float] = [0.03]
        self.incidents: list[str] = []     # problems seen while killing (processes left over...)
        self.acked: dict[str, set[str]] = {}   # study -> SOP instance UIDs storescu got success for
        self.orthanc = Orthanc(workdir / "orthanc")
        self.webhook = WebhookServer()
        self.port = free_port()
        self._generate(studies, slices, late_chunks, late_slices)
        self.config_file = workdir / "aenode.toml"
        self.node = NodeProcess(self.config_file, workdir / "node.log")

    # ---- set-up ------------------------------------------------------------------------
    def _generate(self, n: int, slices: int, late_chunks: int, late_slices: int) -> None:
        """Small typical studies (3 mm, >= 150 mm coverage so the reference model selects
        them); the first ``slices`` go in one to three storescu runs, then
        ``late_chunks`` runs of ``late_slices`` more arrive after the study completed."""
        late_work: list[Batch] = []
        for i in range(n):
            out = self.workdir / "studies" / f"s{i:02d}"
            total = slices + late_chunks * late_slices
            res = phantom.generate_study(out, "typical", seed=1000 + i, slices=total, slice_thickness=3.0,
                                         extra_series=False)
            series_uid, _desc, _n, folder = res.series[0]
            files = sorted(Path(folder).glob("*.dcm"), key=lambda p: int(p.stem))
            sop_of = {f: str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                      for f in files}
            study = Study(res.study_instance_uid, series_uid, files, sop_of)
            self.studies[study.uid] = study
            self.acked[study.uid] = set()
            first = files[:slices]
            parts = self.rng.randint(1, 3)
            cuts = sorted(self.rng.sample(range(1, len(first)), parts - 1))
            for a, b in zip([0, *cuts], [*cuts, len(first)], strict=True):
                self.queue.append(Batch(study.uid, first[a:b]))
            for c in range(late_chunks):
                lo = slices + c * late_slices
                late_work.append(Batch(study.uid, files[lo:lo + late_slices], late=True))
        # Late slices come after the other studies' first sends, so their study has
        # completed (and been analysed) in between: each one makes a new revision.
        self.queue += late_work

    def write_config(self) -> None:
        write_toml(self.config_file, {
            "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": self.port, "data_dir": self.data_dir,
                     "name": "killloop"},
            "stability": {"quiet_seconds": 1.0, "after_release_seconds": 0.3},
            "model": {"path": MODELS, "providers": ["cpu"]},
            "web": {"enabled": False},
            "retention": {"enabled": False},
            "delivery": {"poll_seconds": 0.1, "backoff_base_seconds": 0.2, "backoff_cap_seconds": 1.0,
                         "max_attempts": 1000, "timeout_seconds": 10},
            "alerts.webhook": {"url": self.webhook.url, "insecure": True, "secret": "kill-loop-s3cret",
                               "timeout_seconds": 5},
        }, {"destinations": [{"name": "pacs", "ae_title": self.orthanc.aet, "host": "127.0.0.1",
                               "port": self.orthanc.dicom_port}]})

    def __enter__(self) -> KillLoop:
        for attempt in range(3):
            try:
                self.orthanc.start()
                break
            except RuntimeError:
                # free_port() picks a port that another process on this shared machine
                # may take before Orthanc binds it: pick new ones.
                if attempt == 2:
                    raise
                self.orthanc = Orthanc(self.workdir / f"orthanc{attempt + 1}")
        self.webhook.start()
        self.write_config()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.node.proc is not None:
            self.node.kill("group")
        self.webhook.stop()
        self.orthanc.stop()

    # ---- the loop ----------------------------------------------------------------------
    def _send(self, batch: Batch) -> bool:
        """One storescu run; what was not acknowledged goes back to ``pending``."""
        self._sending.set()
        t0 = time.monotonic()
        ok, rc = storescu(self.port, batch.files)
        if len(ok) == len(batch.files):
            self._seconds_per_file.append((time.monotonic() - t0) / len(batch.files))
        self.figures.storescu_runs += 1
        for f in ok:
            self.acked[batch.study].add(self.studies[batch.study].sop_of[f])
        rest = [f for f in batch.files if f not in ok]
        if rest:
            self.figures.storescu_incomplete += 1
            self.figures.resent_files += len(rest)
            self.pending.append(Batch(batch.study, rest, batch.late))
        return not rest and rc == 0

    def _sender(self, stop: threading.Event, batches: int) -> None:
        """Resend what is pending, then up to ``batches`` new pieces of work, while the node runs."""
        work, self.pending = self.pending, []
        work += [self.queue.pop(0) for _ in range(min(batches, len(self.queue)))]
        for i, batch in enumerate(work):
            if stop.is_set():
                self.pending += work[i:]
                return
            self._send(batch)
            stop.wait(self._gaps.uniform(0.0, 0.3))

    def iteration(self) -> None:
        """Start the node, send, kill -9 at a random moment of a randomly chosen phase."""
        self.figures.iterations += 1
        phase = self.rng.choice(PHASES)
        target = self.rng.choice(TARGETS)
        batches = 1
        if phase == "ingest":
            files = len((self.pending + self.queue)[0].files) if self.pending or self.queue else 20
            delay = self.rng.uniform(0.0, 1.2 * files * sorted(self._seconds_per_file)[len(self._seconds_per_file) // 2])
        else:
            events, spread = TRIGGERS[phase]
            delay = self.rng.uniform(0.0, spread)
        self.node.start()
        if not self.node.wait_event("node_started", timeout=60):
            raise AssertionError(f"node did not start: see {self.node.log_file}")
        stop = threading.Event()
        self._sending.clear()
        sender = threading.Thread(target=self._sender, args=(stop, batches), daemon=True)
        sender.start()
        reached = self._sending.wait(15.0) if phase == "ingest" else self.node.wait_event(*events, timeout=10.0)
        if reached:
            self.figures.triggered_by_phase[phase] += 1
            time.sleep(delay)
        if target == "child":
            # One stage's process dies; the supervisor restarts it while the others go on.
            role = ROLE_OF_PHASE[phase]
            if self.node.kill_child(role):
                self._count_kill(phase, f"child:{role}")
                if not self.node.wait_event("process_restarted", timeout=20.0):
                    self.incidents.append(f"the supervisor did not restart the {role} process within 20 s")
                time.sleep(self.rng.uniform(0.0, 2.0))
            target = self.rng.choice(("supervisor", "group"))
        problem = self.node.kill(target)
        if problem:
            self.incidents.append(problem)
        stop.set()
        sender.join(120)
        self._count_kill(phase, target)

    def _count_kill(self, phase: str, target: str) -> None:
        self.figures.kills += 1
        self.figures.kills_by_phase[phase] += 1
        self.figures.kills_by_target[target] += 1

    def run(self, kills: int) -> Figures:
        """``kills`` iterations with a kill, then a final run that lets everything settle."""
        t0 = time.monotonic()
        print(f"kill-loop seed={self.figures.seed} studies={len(self.studies)} batches={len(self.queue)}", flush=True)
        while self.figures.kills < kills:
            self.iteration()
        self.settle()
        self.figures.seconds = time.monotonic() - t0
        self.figures.acknowledged = sum(len(s) for s in self.acked.values())
        self.figures.requeued = self.node.total["analyses_requeued"]
        self.figures.reconciled = self.node.total["reconciled"]
        self.figures.log_lines_unparsable = self.node.total[UNPARSABLE]
        return self.figures

    def settle(self, timeout: float = 300.0) -> None:
        """Send whatever is left (retrying like a modality), wait until the node is idle, stop it."""
        self.figures.iterations += 1
        self.node.start()
        if not self.node.wait_event("node_started", timeout=60):
            raise AssertionError(f"node did not start: see {self.node.log_file}")
        for _attempt in range(5):
            work, self.pending = self.pending + self.queue, []
            self.queue = []
            for batch in work:
                self._send(batch)
            if not self.pending:
                break
        assert not self.pending, f"storescu could not finish {len(self.pending)} batches against a running node"
        deadline = time.monotonic() + timeout
        stable, last = 0, None
        while stable < 3:
            if time.monotonic() > deadline:
                raise AssertionError(f"node did not settle in {timeout:.0f} s: {last}")
            time.sleep(1.0)
            snap = self.snapshot()
            idle = snap is not None and all(state in FINAL_STATES for state, _rev in snap.studies.values()) \
                and not snap.outbox.get("pending") and not snap.outbox.get("sending")
            stable = stable + 1 if idle and snap == last else 0
            last = snap
        rc = self.node.stop()
        assert rc == 0, f"aenode serve exited with {rc} on SIGTERM"

    def snapshot(self) -> Snapshot | None:
        """Study states, outbox counts and the alert decision count (a second reader of
        the node's stores while it runs; they are WAL databases)."""
        layout = DataDir.of(self.data_dir)
        if not layout.index_db.exists():
            return None
        index = Index.for_data_dir(self.data_dir)
        try:
            studies = {s.study_uid: (s.state, s.revision) for s in index.studies()}
        finally:
            index.close()
        with Outbox(layout.outbox_db) as box:
            outbox = box.counts()
        with AlertStore(layout.alerts_db) as store:
            decisions = sum(store.counts().values())
        return Snapshot(studies, outbox, decisions)

    # ---- what must hold afterwards -----------------------------------------------------
    def check(self) -> list[str]:
        """Every loss or duplicate found, as one line each (empty when all holds)."""
        losses: list[str] = list(self.incidents)
        losses += self._check_instances()
        losses += self._check_results()
        losses += self._check_alerts()
        self.figures.losses = losses
        return losses

    def _check_instances(self) -> list[str]:
        out: list[str] = []
        index = Index.for_data_dir(self.data_dir)
        try:
            for uid, study in self.studies.items():
                stored = {i.sop_instance_uid: i for i in index.instances(uid)}
                file_of = {sop: f for f, sop in study.sop_of.items()}
                for sop in sorted(self.acked[uid]):
                    row = stored.get(sop)
                    if row is None or row.path is None:
                        out.append(f"acknowledged instance {sop} of {uid} not indexed")
                        continue
                    if not Path(row.path).is_file():
                        out.append(f"acknowledged instance {sop} of {uid} indexed but not in the spool")
                        continue
                    got = dcmread(row.path)
                    sent = dcmread(file_of[sop])
                    if str(got.SOPInstanceUID) != sop or got.PixelData != sent.PixelData:
                        out.append(f"spooled instance {sop} of {uid} differs from what was sent")
                if set(stored) - set(study.sop_of.values()):
                    out.append(f"study {uid}: indexed instances that were never sent")
            # After a clean stop the spool holds exactly the indexed files: nothing renamed
            # into place and then forgotten (a kill between rename and index is reconciled
            # at the next start), no temporary file left over.
            indexed = {Path(i.path).resolve() for uid in self.studies for i in index.instances(uid)
                       if i.path is not None}
        finally:
            index.close()
        spool = DataDir.of(self.data_dir).spool
        on_disk = {p.resolve() for p in spool.rglob("*") if p.is_file()}
        unindexed = sorted(on_disk - indexed)
        if unindexed:
            out.append(f"{len(unindexed)} file(s) in the spool not indexed, e.g. {unindexed[0].relative_to(spool)}")
        return out

    def _orthanc_instances(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID -> Modality of every instance Orthanc holds for the study (one
        entry per stored instance: Orthanc keys instances by their UIDs, so a copy with the
        same UIDs is an overwrite, and a copy with new UIDs shows up as a second entry)."""
        found = self.orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid},
                                                  "Expand": True, "RequestedTags": ["Modality"]})
        assert isinstance(found, list)
        out: dict[str, str] = {}
        for inst in found:
            tags = self.orthanc.get(f"/instances/{inst['ID']}/simplified-tags")
            out[str(tags["SOPInstanceUID"])] = str(tags.get("Modality", ""))
        return out

    @staticmethod
    def model_shas() -> dict[str, str]:
        return {m.name: m.sha256 for m in (load_manifest(p) for p in sorted(MODELS.iterdir())
                                           if (p / "model.toml").is_file())}

    @staticmethod
    def model_seg(model: str) -> bool:
        """Whether the model's manifest asks for a SEG beside the SR and SC."""
        from aenode.infer.manifest import load_manifest

        return any(load_manifest(p).outputs.seg for p in MODELS.iterdir()
                   if (p / "model.toml").is_file() and load_manifest(p).name == model)

    def model_names(self) -> list[str]:
        return sorted(self.model_shas())

    def _check_results(self) -> list[str]:
        out: list[str] = []
        shas = self.model_shas()
        index = Index.for_data_dir(self.data_dir)
        try:
            for uid, study in self.studies.items():
                row = index.study(uid)
                if row is None or row.state != "analysed":
                    out.append(f"study {uid} ended {row.state if row else 'unknown'} ({row.reason if row else ''})")
                    continue
                newest = {r.model: r for r in index.results(uid)}  # ordered by revision: the last wins
                in_pacs = {sop: mod for sop, mod in self._orthanc_instances(uid).items() if mod != "CT"}
                self.figures.pacs_objects += len(in_pacs)
                self.figures.revisions += row.revision
                # every result object the node could legitimately have produced: any revision
                # up to the current one, any series, any model (UIDs are deterministic)
                allowed: dict[str, tuple[str, int, str]] = {}
                for model, sha in shas.items():
                    for rev in range(1, row.revision + 1):
                        for series in {study.series_uid, *(s.series_uid for s in index.series(uid))}:
                            u = result_uids(uid, series, sha, rev)
                            allowed[u.sr_sop_instance_uid] = (model, rev, "SR")
                            allowed[u.sc_sop_instance_uid] = (model, rev, "SC")
                            allowed[u.seg_sop_instance_uid] = (model, rev, "SEG")
                strays = sorted(set(in_pacs) - set(allowed))
                if strays:
                    out.append(f"study {uid}: {len(strays)} result object(s) in Orthanc with unexpected UIDs")
                for model in shas:
                    r = newest.get(model)
                    if r is None or r.revision != row.revision:
                        out.append(f"study {uid}: no {model} result for revision {row.revision}")
                        continue
                    uids = [str(u) for u in (r.detail or {}).get("result_uids") or []]
                    # A SEG only for a result with a category: outside the model's domain (a
                    # short early revision) the node writes the SR and SC that say so, no SEG.
                    seg = self.model_seg(model) and r.category is not None
                    expected = Counter({"SR": 1, "SC": 1, **({"SEG": 1} if seg else {})})
                    if len(uids) != sum(expected.values()):
                        out.append(f"study {uid} {model}: result lists {len(uids)} objects, expected "
                                   f"{' + '.join(expected)}")
                    for obj in uids:
                        if obj not in in_pacs:
                            out.append(f"study {uid} {model} r{r.revision}: {obj} not in Orthanc")
                    current = Counter(role for sop, (m, rev, role) in allowed.items()
                                      if m == model and rev == row.revision and sop in in_pacs)
                    if current != expected:
                        out.append(f"study {uid} {model} r{row.revision}: Orthanc holds {dict(current)}, "
                                   f"expected {dict(expected)}")
        finally:
            index.close()
        return out

    def _check_alerts(self) -> list[str]:
        out: list[str] = []
        keys: dict[tuple[str, int, str], set[str]] = {}
        self.figures.webhooks = len(self.webhook.accepted)
        for req in self.webhook.accepted:
            body = json.loads(req["body"])
            k = (body["study"]["study_instance_uid"], int(body["study"]["result_revision"]), body["model"]["name"])
            key = req["headers"].get("Idempotency-Key", "")
            keys.setdefault(k, set()).add(key)
            if key != alert_key(k[0], k[1], k[2], WEBHOOK) or body.get("alert_id") != key:
                out.append(f"webhook for {k} carries key {key!r}, not the alert key of its revision")
        self.figures.webhook_repeats = self.figures.webhooks - len(keys)
        for k, ks in keys.items():
            if len(ks) != 1:
                out.append(f"webhook deliveries for {k} carry {len(ks)} different Idempotency-Keys")
        with AlertStore(DataDir.of(self.data_dir).alerts_db) as store, Outbox(DataDir.of(self.data_dir).outbox_db) as box:
            failed = [r for r in box.rows() if r.state != "sent"]
            if failed:
                out.append(f"{len(failed)} outbox row(s) not sent: {sorted({(r.kind, r.state) for r in failed})}")
            for uid in self.studies:
                for model in sorted(self.model_names()):
                    dash = store.current_alert(uid, model)
                    if dash is None or not dash.alerting:
                        continue
                    last = store.last_alert(uid, model, WEBHOOK)
                    if last is None or not last.alerting:
                        out.append(f"study {uid} {model} alerts on the dashboard but no webhook alert was decided")
                        continue
                    if last.key not in keys.get((uid, last.revision, model), set()):
                        out.append(f"study {uid} {model}: webhook alert r{last.revision} never arrived")
        return out
