"""Wires the node's stages for ``aenode serve``.

SCP (receive) -> spool + index -> stabiliser thread -> registered workers.  Workers are
listed by import path and loaded lazily, so a stage that is not built yet is skipped with
a log line.  A worker is ``factory(config, index)`` returning an object with
``run(stop_event)``; it takes work with :meth:`Index.claim_next_complete` and reports
with :meth:`Index.finish_study` / :meth:`Index.record_result`.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from aenode.config import Config
from aenode.logs import get_logger
from aenode.store.index import Index
from aenode.store.spool import Spool
from aenode.store.stabilise import ActivityTracker, Stabiliser, reconcile

log = get_logger("aenode.pipeline")

# "module:factory" of downstream workers, in order.
WORKERS: tuple[str, ...] = (
    "aenode.infer.worker:AnalysisWorker",
    "aenode.alert.worker:AlertWorker",  # recorded results -> alert outbox rows
    "aenode.deliver.worker:DeliveryWorker",  # results (and alerts) out through the outbox
    "aenode.web.worker:WebWorker",  # dashboard, API, /healthz, /metrics on [web] host, port
)


def _load_factory(spec: str) -> Any | None:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            log.info("worker_not_installed", worker=spec)
            return None
        raise
    factory = getattr(module, attr, None)
    if factory is None:
        log.warning("worker_factory_missing", worker=spec)
    return factory


class NodeHandle:
    """A running node in this process (threads).  ``stop()`` shuts it down cleanly."""

    def __init__(self, config: Config, workers: tuple[str, ...] | None = None):
        from aenode.receive.scp import StorageSCP

        self.config = config
        self.data_dir = config.node.data_dir
        self.spool = Spool(self.data_dir)
        self.spool.prepare()
        self.index = Index.for_data_dir(self.data_dir)
        self.tracker = ActivityTracker()
        self.stop_event = threading.Event()
        self.scp = StorageSCP(config, self.index, self.spool, self.tracker)
        self.stabiliser = Stabiliser(self.index, self.tracker, config.stability.quiet_seconds,
                                     config.stability.after_release_seconds)
        self._threads: list[threading.Thread] = []
        self._worker_specs = WORKERS if workers is None else workers
        self.workers: list[Any] = []

    @property
    def port(self) -> int:
        return self.scp.port

    def start(self) -> NodeHandle:
        requeued = self.index.recover_interrupted()
        if requeued:
            log.info("analyses_requeued", studies=requeued)
        reconcile(self.index, self.spool)
        self.scp.start()
        self._spawn("aenode-stabiliser", self.stabiliser.run)
        for spec in self._worker_specs:
            factory = _load_factory(spec)
            if factory is None:
                continue
            try:
                worker = factory(self.config, self.index)
            except Exception:  # noqa: BLE001 - ingest keeps running; studies wait in `complete`
                log.exception("worker_start_failed", worker=spec)
                continue
            self.workers.append(worker)
            self._spawn(f"aenode-worker-{spec}", worker.run)
        log.info("node_started", ae_title=self.config.node.ae_title, port=self.port,
                 workers=len(self.workers))
        return self

    def _spawn(self, name: str, target: Any) -> None:
        def guarded() -> None:
            try:
                target(self.stop_event)
            except Exception:  # noqa: BLE001 - a failing stage must not take the node down silently
                log.exception("stage_failed", stage=name)

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self.stop_event.set()
        self.scp.stop()
        for t in self._threads:
            t.join(timeout=10)
        self.index.close()
        log.info("node_stopped")


@contextlib.contextmanager
def running_node(config: Config, workers: tuple[str, ...] | None = None) -> Iterator[NodeHandle]:
    """Start a node in-process for tests; ``workers=()`` runs receive + stabilise only."""
    node = NodeHandle(config, workers).start()
    try:
        yield node
    finally:
        node.stop()


def run_node(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    node = NodeHandle(config)
    done = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        log.info("signal", signal=signal.Signals(signum).name)
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
