"""The one place that wires the node: stores, stages and workers, from the configuration.

Data flow (each stage reads its input from a store and writes its result to one, so a
crash at any point resumes from the last durable step)::

    SCP (receive) -> spool + index (store) -> stabiliser -> analysis worker
        (select -> load -> infer -> report SR/SC -> outbox)  -> delivery worker (PACS)
                                            index results    -> alert worker -> outbox
                                                               -> web (dashboard, API)

Every object a stage needs is built here and handed to it; no stage builds another's.
``aenode serve`` runs :func:`run_node`; tests run :func:`running_node`.  ``aenode status``
reads the stores through :func:`study_status`.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.process
import multiprocessing.synchronize
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

from aenode.alert.senders import register_senders
from aenode.alert.status import alert_status
from aenode.alert.store import AlertStore
from aenode.alert.worker import AlertWorker
from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.deliver.publish import OutboxPublisher
from aenode.deliver.worker import DeliveryWorker, WakeEvent, share_wakeup
from aenode.infer.registry import ModelRegistry
from aenode.infer.worker import AnalysisWorker, claim_prefix
from aenode.logs import configure_logging, get_logger
from aenode.receive.scp import StorageSCP
from aenode.store.datadir import DataDir
from aenode.store.index import Index, ResultRow, node_identity
from aenode.store.retention import Retention, remove_purged_orphans
from aenode.store.spool import Spool
from aenode.store.stabilise import ActivityTracker, Stabiliser, reconcile, share_completion_event
from aenode.surveil.worker import SurveillanceWorker
from aenode.web.worker import WebWorker

log = get_logger("aenode.node")

WorkerName = Literal["analysis", "alert", "delivery", "web", "retention", "surveillance"]
ALL_WORKERS: tuple[WorkerName, ...] = ("analysis", "alert", "delivery", "web", "retention", "surveillance")


class _OutboxDelivery:
    """Retention's view of the outbox: is everything queued for a study delivered?"""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def settled(self, study_uid: str) -> bool:
        return all(r.state == "sent" for r in self.outbox.rows(study_uid=study_uid))


class _Worker:
    """What the node needs of a worker: a loop that ends when the event is set."""

    def __init__(self, name: str, run: Callable[[threading.Event], None]):
        self.name = name
        self.run = run


class Node:
    """A running node in this process (threads).  ``stop()`` shuts it down cleanly."""

    def __init__(self, config: Config, workers: Collection[WorkerName] = ALL_WORKERS, *, receive: bool = True,
                 receive_slot: int = 0):
        register_senders()  # the outbox can send every configured alert channel
        unknown = set(workers) - set(ALL_WORKERS)
        if unknown:
            raise ValueError(f"unknown worker(s): {', '.join(sorted(unknown))}")
        self.config = config
        self.data_dir = DataDir.of(config.node.data_dir)
        self.identity = node_identity(config.node.name, config.node.port)
        url = config.database.url
        self.receive = receive
        self.receive_slot = receive_slot  # > 0: an extra listener on the port ([workers] receive)
        self.spool = Spool(self.data_dir.root, self.identity if url else None, receive_slot)
        if receive:
            self.spool.prepare()
        self.index = Index.for_data_dir(self.data_dir.root, url=url)
        self.outbox = Outbox.for_config(config)
        self.alert_store = AlertStore.for_data_dir(self.data_dir.root, url=url)
        self.tracker = ActivityTracker()
        self.stop_event = threading.Event()
        self.scp = StorageSCP(config, self.index, self.spool, self.tracker)
        self.stabiliser = Stabiliser(self.index, self.tracker, config.stability.quiet_seconds,
                                     config.stability.after_release_seconds, shared=url is not None)
        self._names = tuple(w for w in ALL_WORKERS if w in workers)
        self._threads: list[threading.Thread] = []
        self.web: WebWorker | None = None
        self.workers: list[_Worker] = []

    @property
    def port(self) -> int:
        return self.scp.port

    def _build_workers(self) -> list[_Worker]:
        built: list[_Worker] = []
        if "analysis" in self._names:
            registry = ModelRegistry.from_config(self.config)
            registry.warm_up()
            hold = None if self.config.backfill.send_results else self.index.is_backfilled
            analysis = AnalysisWorker(self.config, self.index, registry,
                                      OutboxPublisher(self.config, self.outbox, hold=hold))
            built.append(_Worker("analysis", analysis.run))
        if "alert" in self._names:
            alerts = AlertWorker(self.config, self.index, outbox=self.outbox, store=self.alert_store)
            built.append(_Worker("alert", alerts.run))
        if "delivery" in self._names:
            delivery = DeliveryWorker(self.config, outbox=self.outbox)
            built.append(_Worker("delivery", delivery.run))
        if "web" in self._names:
            self.web = WebWorker(self.config, self.index, outbox=self.outbox, alerts=self.alert_store)
            built.append(_Worker("web", self.web.run))
        if "surveillance" in self._names and self.config.surveillance.enabled:
            surveillance = SurveillanceWorker(self.config, self.index, outbox=self.outbox)
            built.append(_Worker("surveillance", surveillance.run))
        if "retention" in self._names and self.config.retention.enabled:
            r = self.config.retention
            retention = Retention(self.index, self.spool, _OutboxDelivery(self.outbox),
                                  keep_seconds=r.keep_days * 86400, interval_seconds=r.interval_seconds)
            built.append(_Worker("retention", retention.run))
        return built

    def start(self, *, recover: bool = True) -> Node:
        """Start the listener (when this node receives) and the workers; ``recover``: first
        hand back analyses a previous run left unfinished (the supervisor does that once)."""
        if recover:
            requeued = self.index.recover_interrupted(self.identity if self.config.database.url else None)
            if requeued:
                log.info("analyses_requeued", studies=requeued)
        if self.receive:
            self.scp.recover()  # journal replay first: it rewrites files reconciliation would index
            if self.receive_slot == 0:  # once per node, not per extra listener
                orphans = remove_purged_orphans(self.index, self.spool)
                if orphans:
                    log.info("purged_orphans_removed", files=orphans)
                reconcile(self.index, self.spool)
            self.scp.start()
            self._spawn("stabiliser", self.stabiliser.run)
        self.workers = self._build_workers()
        for worker in self.workers:
            self._spawn(worker.name, worker.run)
        log.info("node_started", ae_title=self.config.node.ae_title,
                 port=self.port if self.receive else None, workers=[w.name for w in self.workers])
        return self

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        def guarded() -> None:
            try:
                target(self.stop_event)
            except Exception:  # noqa: BLE001 - a failing stage must not take the node down silently
                log.exception("stage_failed", stage=name)

        t = threading.Thread(target=guarded, name=f"aenode-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        if self.receive:
            self.scp.stop()
        for t in self._threads:
            t.join(timeout=10)
        self.alert_store.close()
        self.outbox.close()
        self.index.close()
        log.info("node_stopped")


@contextlib.contextmanager
def running_node(config: Config, workers: Collection[WorkerName] = ALL_WORKERS) -> Iterator[Node]:
    """Start a node in-process (tests, demo); ``workers=()`` runs receive + stabilise only."""
    node = Node(config, workers).start()
    try:
        yield node
    finally:
        node.stop()


# ---- aenode serve: one supervisor, one process per heavy stage --------------------------

Role = Literal["receive", "analysis", "delivery", "web"]
ROLE_WORKERS: dict[Role, tuple[WorkerName, ...]] = {
    "receive": ("retention",),          # plus the SCP and the stabiliser
    "analysis": ("analysis",),
    "delivery": ("delivery", "alert"),
    "web": ("web",),
}
_RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def usable_cores() -> int:
    """The cores this process may run on: a node pinned with taskset or a container's
    cpuset gets fewer than the host has, and sizing from the host's count oversubscribes."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def analysis_processes(config: Config, cores: int | None = None) -> int:
    """``[workers] analysis``, else half the cores (at least 1, at most 8): the other half
    receives, delivers and serves, and decoding in each analysis process is itself partly
    parallel."""
    if config.workers.analysis is not None:
        return config.workers.analysis
    n = cores if cores is not None else usable_cores()
    return max(1, min(8, n // 2))


def _die_with_parent() -> None:
    """A child must not outlive a supervisor killed with SIGKILL (it would keep the port)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the supervisor's clean shutdown still stops the children
    if os.getppid() == 1:
        os._exit(1)  # the parent died before prctl took effect


def _child(config: Config, role: Role, wakeups: tuple[WakeEvent, WakeEvent], ready: WakeEvent, log_level: str,
           threads: int, slot: int = 0) -> None:
    """Body of one child process of ``aenode serve``."""
    _die_with_parent()
    configure_logging(log_level)
    share_wakeup(wakeups[0])
    share_completion_event(wakeups[1])
    if role == "analysis":
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by Supervisor._start
    # Receive slots 1.. are extra listeners on the port ([workers] receive): SCP and
    # stabiliser only; retention and reconciliation run in slot 0.
    extra_listener = role == "receive" and slot > 0
    node = Node(config, () if extra_listener else ROLE_WORKERS[role], receive=(role == "receive"),
                receive_slot=slot if role == "receive" else 0).start(recover=False)
    ready.set()
    log.info("process_started", role=role, pid=os.getpid())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()


class Supervisor:
    """Starts the node's processes, restarts one that dies, stops them all on SIGTERM."""

    def __init__(self, config: Config, log_level: str = "INFO"):
        self.config = config
        self.log_level = log_level
        # fork: the supervisor has imported the stack but runs no threads and holds no ONNX
        # session or database connection, so a forked child starts in milliseconds with
        # nothing inherited that could be in use.
        self._ctx = multiprocessing.get_context("fork")
        self._wakeups = (self._ctx.Event(), self._ctx.Event())  # outbox rows; completed studies
        n = analysis_processes(config)
        self.threads = config.workers.threads_per_analysis or max(1, usable_cores() // n)
        analysis: list[Role] = ["analysis"] * n
        receivers: list[Role] = ["receive"] * config.workers.receive
        roles: list[Role] = [*receivers, *analysis, "delivery"]
        if config.web.enabled:
            roles.append("web")
        self._slots: list[tuple[Role, multiprocessing.process.BaseProcess | None, int]] = [
            (r, None, 0) for r in roles]
        self._restart_at: dict[int, float] = {}
        self.identity = node_identity(config.node.name, config.node.port)

    def _start(self, slot: int) -> multiprocessing.synchronize.Event:
        role, _, restarts = self._slots[slot]
        ready = self._ctx.Event()
        proc = self._ctx.Process(target=_child, name=f"aenode-{role}",
                                 args=(self.config, role, self._wakeups, ready, self.log_level, self.threads, slot))
        # The child is forked with the supervisor's signal handlers: a SIGTERM between the
        # fork and _child's own handler would only set the supervisor's (copied) flag and
        # the child would run on until killed.  Blocked here, it waits for _child's handler.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._slots[slot] = (role, proc, restarts)
        return ready

    def start(self) -> None:
        url = self.config.database.url
        index = Index.for_data_dir(self.config.node.data_dir, url=url)
        try:
            # On a shared database only this node's own interrupted studies (and expired
            # leases): the others belong to live nodes.
            requeued = index.recover_interrupted(self.identity if url else None)
        finally:
            index.close()
        if requeued:
            log.info("analyses_requeued", studies=requeued)
        # Numeric libraries in each analysis process get their share of the cores.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(self.threads))
        # The listener first: scanners can send while the rest starts (model sessions take
        # a while to warm up).
        receiving = self._start(0)
        if not receiving.wait(120):
            log.error("process_slow_to_start", role="receive")
        for slot in range(1, len(self._slots)):
            self._start(slot)
        log.info("supervisor_started", processes=[r for r, _, _ in self._slots],
                 threads_per_analysis=self.threads)

    def check(self) -> None:
        """Restart processes that died (with backoff); call periodically."""
        now = time.monotonic()
        for slot, (role, proc, restarts) in enumerate(self._slots):
            if proc is None or proc.exitcode is None:
                continue
            if slot not in self._restart_at:
                delay = _RESTART_BACKOFF[min(restarts, len(_RESTART_BACKOFF) - 1)]
                self._restart_at[slot] = now + delay
                log.error("process_died", role=role, pid=proc.pid, exitcode=proc.exitcode,
                          restart_in_s=delay)
                if role == "analysis" and proc.pid is not None:
                    index = Index.for_data_dir(self.config.node.data_dir, url=self.config.database.url)
                    try:
                        handed_back = index.release_claims(claim_prefix(proc.pid, self.identity))
                    finally:
                        index.close()
                    if handed_back:
                        log.info("analyses_requeued", studies=handed_back, role=role)
            elif now >= self._restart_at[slot]:
                del self._restart_at[slot]
                self._slots[slot] = (role, proc, restarts + 1)
                self._start(slot)
                log.info("process_restarted", role=role, restarts=restarts + 1)

    def stop(self, timeout: float = 20.0) -> None:
        procs = [p for _, p, _ in self._slots if p is not None and p.exitcode is None]
        for p in procs:
            p.terminate()  # SIGTERM: each child stops its node cleanly
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.exitcode is None:
                log.warning("process_killed", pid=p.pid)
                p.kill()
                p.join(5)
        log.info("supervisor_stopped")


def run_node(config: Config, log_level: str = "INFO") -> None:
    """``aenode serve``: run until SIGTERM or SIGINT."""
    supervisor = Supervisor(config, log_level)
    done = threading.Event()

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        done.set()

    previous = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor.start()
        while not done.wait(0.5):
            supervisor.check()
    finally:
        supervisor.stop()
        for s, h in previous.items():
            signal.signal(s, h)


# ---- aenode status ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Summary:
    selected_series: str | None
    model: str | None
    result_revision: int | None
    category: str | None
    probabilities: dict[str, float] | None
    involvement: float | None
    result_uids: list[str] | None
    result_state: str | None = None   # "analysed", or "out-of-domain" (no category; domain says why)
    domain: str | None = None         # the domain gate's reason, with the measured values

    @classmethod
    def of(cls, r: ResultRow | None) -> _Summary:
        if r is None:
            return cls(None, None, None, None, None, None, None)
        detail = r.detail or {}
        uids = detail.get("result_uids")
        gate = detail.get("domain")
        return cls(r.selected_series, r.model, r.revision, r.category, r.probabilities, r.involvement,
                   list(uids) if isinstance(uids, list) else None, detail.get("state", "analysed"),
                   gate.get("reason") if isinstance(gate, dict) else None)


def study_status(config: Config) -> list[dict[str, Any]]:
    """One dict per study for ``aenode status`` (no patient data: UIDs and states only).

    The summary fields come from ``[model] primary``'s newest result (else the first
    model by name); ``results`` lists the newest result of every model.
    """
    layout = DataDir.of(config.node.data_dir)
    url = config.database.url
    if url is None and not layout.index_db.exists():
        return []
    index = Index.for_data_dir(layout.root, url=url)
    outbox = Outbox.for_config(config)
    try:
        out: list[dict[str, Any]] = []
        for s in index.studies():
            newest: dict[str, ResultRow] = {}
            for r in index.results(s.study_uid):  # ordered by revision
                newest[r.model] = r
            by_name = [newest[m] for m in sorted(newest)]
            primary = newest.get(config.model.primary) or (by_name[0] if by_name else None)
            out.append({
                "study_uid": s.study_uid, "state": s.state, "revision": s.revision,
                "instances": s.instance_count, "reason": s.reason,
                "images_deleted_at": s.purged_at,
                **_Summary.of(primary).__dict__,
                "results": [_Summary.of(x).__dict__ for x in by_name],
                "delivery": outbox.summary_for_study(s.study_uid) or None,
                "alert": alert_status(layout.root, s.study_uid, outbox=outbox, url=url) or None,
            })
        return out
    finally:
        index.close()
        outbox.close()
