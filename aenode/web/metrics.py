"""``/metrics``: Prometheus exposition computed from the node's databases at scrape time.

Nothing is counted in memory, so the numbers survive restarts, cover every process that
writes the databases, and the other stages need no instrumentation.  Each store is read
through its own typed summary (``Index.stats()``, ``Outbox.stats()``,
``AlertStore.counts()``, ``WebStore.confirmation_counts()``); this module runs no SQL.  No label carries
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

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from aenode.alert.store import AlertStore
from aenode.config import Config
from aenode.deliver.outbox import Outbox
from aenode.logs import get_logger
from aenode.store.db import StoreError
from aenode.store.index import STATES, Index
from aenode.web.data import NodeData

log = get_logger("aenode.web")

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
OUTBOX_STATES = ("pending", "sending", "sent", "failed")


def _histogram(name: str, doc: str, label: str, samples: dict[str, list[float]],
               buckets: tuple[float, ...]) -> HistogramMetricFamily:
    h = HistogramMetricFamily(name, doc, labels=[label])
    for key, values in sorted(samples.items()):
        counts = []
        for b in buckets:
            counts.append((str(b), float(sum(1 for v in values if v <= b))))
        counts.append(("+Inf", float(len(values))))
        h.add_metric([key], counts, sum_value=float(sum(values)))
    return h


class NodeCollector(Collector):
    def __init__(self, config: Config, index: Index, outbox: Outbox, alerts: AlertStore, data: NodeData):
        self.config = config
        self.index = index
        self.outbox = outbox
        self.alerts = alerts
        self.data = data

    def describe(self) -> list[Metric]:  # no description: collect() at registration would read the databases
        return []

    def collect(self) -> Iterator[Metric]:
        parts: tuple[Callable[[], Iterator[Metric]], ...] = (self._index, self._outbox, self._alerts, self._web)
        for part in parts:
            try:
                yield from part()
            except StoreError as exc:
                log.warning("metrics_source_failed", source=part.__name__.lstrip("_"), error=str(exc))

    def _index(self) -> Iterator[Metric]:
        st = self.index.stats()
        inst = CounterMetricFamily("aenode_instances_received", "Unique SOP instances stored, by origin",
                                   labels=["origin"])
        size = CounterMetricFamily("aenode_received_bytes", "Bytes of the stored instances, by origin",
                                   labels=["origin"])
        for origin in ("external", "own_output"):
            n, b = st.instances.get(origin, (0, 0))
            inst.add_metric([origin], n)
            size.add_metric([origin], b)
        studies = GaugeMetricFamily("aenode_studies", "Studies per state", labels=["state"])
        for state in STATES:
            studies.add_metric([state], st.studies_by_state.get(state, 0))
        results = CounterMetricFamily("aenode_results", "Results recorded (every revision), per model and category",
                                      labels=["model", "category"])
        for (model, category), n in sorted(st.results_by_model_category.items()):
            results.add_metric([model, category], n)
        yield inst
        yield size
        yield studies
        yield results
        yield _histogram("aenode_stage_seconds", "Per-stage latency (analysis timings; result = last instance"
                         " received to result recorded)", "stage", st.stage_seconds, STAGE_BUCKETS)

    def _outbox(self) -> Iterator[Metric]:
        st = self.outbox.stats()
        depth = GaugeMetricFamily("aenode_outbox_rows",
                                  "Outbox rows per kind (dicom or alert channel), destination and state",
                                  labels=["kind", "destination", "state"])
        failed = CounterMetricFamily("aenode_outbox_failed_attempts",
                                     "Delivery attempts that failed, per kind and destination",
                                     labels=["kind", "destination"])
        known = {("dicom", d.name) for d in self.config.destinations}
        known |= {(c, c) for c in ("webhook", "smtp", "hl7") if getattr(self.config.alerts, c, None) is not None}
        known |= {(k, d) for (k, d, _) in st.rows} | set(st.failed_attempts)
        for kind, dest in sorted(known):
            for state in OUTBOX_STATES:
                depth.add_metric([kind, dest, state], st.rows.get((kind, dest, state), 0))
            failed.add_metric([kind, dest], st.failed_attempts.get((kind, dest), 0))
        yield depth
        yield failed
        yield _histogram("aenode_delivery_seconds", "Outbox row created to sent, per kind", "kind",
                         st.sent_seconds, DELIVERY_BUCKETS)

    def _alerts(self) -> Iterator[Metric]:
        fam = CounterMetricFamily("aenode_alerts", "Alerts decided per channel and category",
                                  labels=["channel", "category"])
        for (channel, category), n in sorted(self.alerts.counts().items()):
            fam.add_metric([channel, category], n)
        yield fam

    def _web(self) -> Iterator[Metric]:
        open_alerts = GaugeMetricFamily("aenode_dashboard_alerts", "Dashboard alerts (newest result alerting)",
                                        labels=["acknowledged"])
        alerts = self.data.alerts(limit=100000, patient=False)
        acked = sum(1 for a in alerts if a["acknowledged"])
        open_alerts.add_metric(["true"], acked)
        open_alerts.add_metric(["false"], len(alerts) - acked)
        yield open_alerts
        conf = CounterMetricFamily("aenode_confirmations", "Radiologist confirmations (agrees=true) and"
                                   " corrections (agrees=false)", labels=["agrees"])
        counts = self.data.store.confirmation_counts()
        conf.add_metric(["true"], counts[True])
        conf.add_metric(["false"], counts[False])
        yield conf


def build_registry(config: Config, index: Index, outbox: Outbox, alerts: AlertStore,
                   data: NodeData) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    reg.register(NodeCollector(config, index, outbox, alerts, data))
    return reg
