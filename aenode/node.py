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
import signal
import threading
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
from aenode.deliver.worker import DeliveryWorker
from aenode.infer.registry import ModelRegistry
from aenode.infer.worker import AnalysisWorker
from aenode.logs import get_logger
from aenode.receive.scp import StorageSCP
from aenode.store.datadir import DataDir
from aenode.store.index import Index, ResultRow, node_identity
from aenode.store.retention import Retention, remove_purged_orphans
from aenode.store.spool import Spool
from aenode.store.stabilise import ActivityTracker, Stabiliser, reconcile
from aenode.web.worker import WebWorker

log = get_logger("aenode.node")

WorkerName = Literal["analysis", "alert", "delivery", "web", "retention"]
ALL_WORKERS: tuple[WorkerName, ...] = ("analysis", "alert", "delivery", "web", "retention")


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

    def __init__(self, config: Config, workers: Collection[WorkerName] = ALL_WORKERS):
        register_senders()  # the outbox can send every configured alert channel
        unknown = set(workers) - set(ALL_WORKERS)
        if unknown:
            raise ValueError(f"unknown worker(s): {', '.join(sorted(unknown))}")
        self.config = config
        self.data_dir = DataDir.of(config.node.data_dir)
        self.identity = node_identity(config.node.name, config.node.port)
        url = config.database.url
        self.spool = Spool(self.data_dir.root, self.identity if url else None)
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
            analysis = AnalysisWorker(self.config, self.index, registry, OutboxPublisher(self.config, self.outbox))
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
        if "retention" in self._names and self.config.retention.enabled:
            r = self.config.retention
            retention = Retention(self.index, self.spool, _OutboxDelivery(self.outbox),
                                  keep_seconds=r.keep_days * 86400, interval_seconds=r.interval_seconds)
            built.append(_Worker("retention", retention.run))
        return built

    def start(self) -> Node:
        requeued = self.index.recover_interrupted(self.identity if self.config.database.url else None)
        if requeued:
            log.info("analyses_requeued", studies=requeued)
        orphans = remove_purged_orphans(self.index, self.spool)
        if orphans:
            log.info("purged_orphans_removed", files=orphans)
        reconcile(self.index, self.spool)
        self.scp.start()
        self._spawn("stabiliser", self.stabiliser.run)
        self.workers = self._build_workers()
        for worker in self.workers:
            self._spawn(worker.name, worker.run)
        log.info("node_started", ae_title=self.config.node.ae_title, port=self.port,
                 workers=[w.name for w in self.workers])
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


def run_node(config: Config) -> None:
    """``aenode serve``: run until SIGTERM or SIGINT."""
    node = Node(config)
    done = threading.Event()

    def _signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        done.set()

    previous = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        while not done.wait(1.0):
            pass
    finally:
        node.stop()
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

    @classmethod
    def of(cls, r: ResultRow | None) -> _Summary:
        if r is None:
            return cls(None, None, None, None, None, None, None)
        uids = (r.detail or {}).get("result_uids")
        return cls(r.selected_series, r.model, r.revision, r.category, r.probabilities, r.involvement,
                   list(uids) if isinstance(uids, list) else None)


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
