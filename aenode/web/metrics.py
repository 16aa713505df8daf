"""``/metrics``: Prometheus exposition computed from the node's databases at scrape time.

Nothing is counted in memory, so the numbers survive restarts, cover every process that
writes the databases, and the other stages need no instrumentation.  No label carries
patient data: labels are states, configured destination/channel names, model names and
stage names only.

Metrics:

- ``aenode_instances_received_total{origin}`` / ``aenode_received_bytes_total{origin}``:
  unique SOP instances (and their bytes) in the index; ``origin`` is ``external`` or
  ``own_output`` (the node's own SR/SC routed back by PACS);
- ``aenode_studies{state}``: studies per state (receiving ... error);
- ``aenode_results_total{model,category}``: results recorded (every revision);
- ``aenode_stage_seconds{stage}`` (histogram): per-stage analysis timings recorded by the
  analysis worker (``detail.timings_s``: selection, loading, preprocessing, inference...)
  and ``stage="result"``: last instance received -> result recorded;
- ``aenode_delivery_seconds{kind}`` (histogram): outbox row created -> sent;
- ``aenode_outbox_rows{kind,destination,state}``: outbox depth per destination and
  channel (``kind`` is ``dicom`` or the alert channel);
- ``aenode_outbox_failed_attempts_total{kind,destination}``: attempts that failed;
- ``aenode_alerts_total{channel,category}``: alerts decided per channel;
- ``aenode_dashboard_alerts{acknowledged}``: open dashboard alerts;
- ``aenode_confirmations_total{agrees}``: radiologist confirmations (true) and corrections.

Plus prometheus_client's process and platform collectors.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from aenode.config import Config
from aenode.logs import get_logger
from aenode.store.index import STATES

log = get_logger("aenode.web")

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def _ro(path: Path) -> sqlite3.Connection | None:
    if not path.is_file():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    db.execute("PRAGMA busy_timeout=10000")
    return db


def _histogram(name: str, doc: str, label: str, samples: dict[str, list[float]],
               buckets: tuple[float, ...]) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc, labels=[label])
    for key, values in sorted(samples.items()):
        counts = []
        for b in buckets:
            counts.append((str(b), sum(1 for v in values if v <= b)))
        counts.append(("+Inf", len(values)))
        h.add_metric([key], counts, sum_value=float(sum(values)))
    return h


class NodeCollector:
    def __init__(self, config: Config, web_data: Any | None = None):
        self.config = config
        self.data_dir = Path(config.node.data_dir)
        self.web_data = web_data

    def describe(self) -> list:  # no description: collect() at registration would read the databases
        return []

    def collect(self) -> Iterator[Any]:
        for part in (self._index, self._outbox, self._alerts, self._web):
            try:
                yield from part()
            except sqlite3.Error as exc:
                log.warning("metrics_source_failed", source=part.__name__, error=type(exc).__name__)

    def _index(self) -> Iterator[Any]:
        db = _ro(self.data_dir / "index.sqlite")
        inst = CounterMetricFamily("aenode_instances_received", "Unique SOP instances stored, by origin",
                                   labels=["origin"])
        size = CounterMetricFamily("aenode_received_bytes", "Bytes of the stored instances, by origin",
                                   labels=["origin"])
        studies = GaugeMetricFamily("aenode_studies", "Studies per state", labels=["state"])
        results = CounterMetricFamily("aenode_results", "Results recorded (every revision), per model and category",
                                      labels=["model", "category"])
        stages: dict[str, list[float]] = {}
        if db is not None:
            try:
                got = {r[0]: (r[1], r[2] or 0) for r in db.execute(
                    "SELECT own_output, COUNT(*), SUM(size) FROM instances GROUP BY own_output")}
                by_state = dict(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
                res = db.execute(
                    "SELECT r.model, r.category, r.detail_json, r.created, r.revision, s.last_arrival, s.revision"
                    " FROM results r JOIN studies s ON s.study_uid=r.study_uid").fetchall()
            finally:
                db.close()
        else:
            got, by_state, res = {}, {}, []
        for flag, origin in ((0, "external"), (1, "own_output")):
            n, b = got.get(flag, (0, 0))
            inst.add_metric([origin], n)
            size.add_metric([origin], b)
        for state in STATES:
            studies.add_metric([state], by_state.get(state, 0))
        newest: dict[tuple[str, str], int] = {}
        for model, category, detail_json, created, rev, last_arrival, study_rev in res:
            newest[(model, category or "none")] = newest.get((model, category or "none"), 0) + 1
            try:
                timings = (json.loads(detail_json) or {}).get("timings_s") if detail_json else None
            except ValueError:
                timings = None
            if isinstance(timings, dict):
                for stage, secs in timings.items():
                    if isinstance(secs, (int, float)):
                        stages.setdefault(str(stage), []).append(float(secs))
            if rev == study_rev and created >= last_arrival:
                stages.setdefault("result", []).append(created - last_arrival)
        for (model, category), n in sorted(newest.items()):
            results.add_metric([model, category], n)
        yield inst
        yield size
        yield studies
        yield results
        yield _histogram("aenode_stage_seconds", "Per-stage latency (analysis timings; result = last instance"
                         " received to result recorded)", "stage", stages, STAGE_BUCKETS)

    def _outbox(self) -> Iterator[Any]:
        db = _ro(self.data_dir / "outbox.sqlite")
        depth = GaugeMetricFamily("aenode_outbox_rows", "Outbox rows per kind (dicom or alert channel), destination and state",
                     labels=["kind", "destination", "state"])
        failed = CounterMetricFamily("aenode_outbox_failed_attempts",
                                     "Delivery attempts that failed, per kind and destination",
                                     labels=["kind", "destination"])
        latency: dict[str, list[float]] = {}
        known = {("dicom", d.name) for d in self.config.destinations}
        known |= {(c, c) for c in ("webhook", "smtp", "hl7") if getattr(self.config.alerts, c) is not None}
        counts: dict[tuple[str, str, str], int] = {}
        fails: dict[tuple[str, str], int] = {}
        if db is not None:
            try:
                for kind, dest, state, n, attempts_failed in db.execute(
                        "SELECT kind, destination, state, COUNT(*), SUM(attempts - (state='sent'))"
                        " FROM outbox GROUP BY kind, destination, state"):
                    counts[(kind, dest, state)] = n
                    fails[(kind, dest)] = fails.get((kind, dest), 0) + int(attempts_failed or 0)
                    known.add((kind, dest))
                for kind, secs in db.execute(
                        "SELECT kind, sent_at - created_at FROM outbox WHERE state='sent' AND sent_at IS NOT NULL"):
                    latency.setdefault(kind, []).append(max(0.0, float(secs)))
            finally:
                db.close()
        for kind, dest in sorted(known):
            for state in ("pending", "sending", "sent", "failed"):
                depth.add_metric([kind, dest, state], counts.get((kind, dest, state), 0))
            failed.add_metric([kind, dest], fails.get((kind, dest), 0))
        yield depth
        yield failed
        yield _histogram("aenode_delivery_seconds", "Outbox row created to sent, per kind", "kind",
                         latency, DELIVERY_BUCKETS)

    def _alerts(self) -> Iterator[Any]:
        db = _ro(self.data_dir / "alerts.sqlite")
        fam = CounterMetricFamily("aenode_alerts", "Alerts decided per channel and category",
                                  labels=["channel", "category"])
        if db is not None:
            try:
                for channel, category, n in db.execute(
                        "SELECT channel, CASE WHEN alerting THEN category ELSE 'cleared' END, COUNT(*)"
                        " FROM alerts GROUP BY 1, 2"):
                    fam.add_metric([channel, category], n)
            finally:
                db.close()
        yield fam

    def _web(self) -> Iterator[Any]:
        if self.web_data is None:
            return
        open_alerts = GaugeMetricFamily("aenode_dashboard_alerts", "Dashboard alerts (newest result alerting)",
                                        labels=["acknowledged"])
        alerts = self.web_data.alerts(limit=100000, patient=False)
        acked = sum(1 for a in alerts if a["acknowledged"])
        open_alerts.add_metric(["true"], acked)
        open_alerts.add_metric(["false"], len(alerts) - acked)
        yield open_alerts
        conf = CounterMetricFamily("aenode_confirmations", "Radiologist confirmations (agrees=true) and"
                                   " corrections (agrees=false)", labels=["agrees"])
        cs = self.web_data.store.confirmations()
        conf.add_metric(["true"], sum(1 for c in cs if c.agrees))
        conf.add_metric(["false"], sum(1 for c in cs if not c.agrees))
        yield conf


def build_registry(config: Config, web_data: Any | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    reg.register(NodeCollector(config, web_data))
    return reg
